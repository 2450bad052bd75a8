//! Clone: a destination device usable at once over a read-only source,
//! filled in the background ("hydration"), like dm-clone.
//!
//! The device is cut into regions (default 1 MiB). A region is either
//! hydrated (its data is on the destination) or not (it is read from the
//! source). Writes to a region that is not hydrated first copy it, unless
//! they cover it whole; then the region is marked hydrated. Discard and
//! write-zeroes count as writes. A per-region lock (striped) keeps the copy
//! and a write to the same region apart.
//!
//! The hydration map lives on its own metadata device:
//!
//! ```text
//! byte 0     header (4 KiB): magic "FABCLON1", version u32 (1),
//!            block size u32, region bytes u64, size in blocks u64,
//!            CRC32C of bytes 0..4092 at 4092; little-endian
//! byte 4096  bitmap, 1 = hydrated (checksummed blocks, see bits.rs)
//! ```
//!
//! A bit is only persisted after the destination was flushed with the
//! region's data on it (bits are encoded *before* that flush, so a bit set
//! later waits for the next persist). A lost bit after a crash costs a
//! re-copy of the region: correct, since the source is read-only and writes
//! not yet flushed may be lost anyway. A damaged bitmap block is an error at
//! open, because guessing "not hydrated" would hide written data.

use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::info;

use crate::bits::{AtomicBits, BITMAP_BLOCK, BITS_PER_BLOCK};
use crate::buf;
use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult, DeviceRef};
use crate::le::{put, u32_at, u64_at};
use crate::split;
use crate::task::{BackgroundTask, RateLimit, StopSignal, Throttle};

/// Default region size.
pub const DEFAULT_REGION_BYTES: u64 = 1 << 20;
/// Largest region: hydrating one reads it whole into one buffer.
pub const MAX_REGION_BYTES: u64 = 64 << 20;
const HEADER: usize = 4096;
const MAGIC: &[u8; 8] = b"FABCLON1";
const VERSION: u32 = 1;
const LOCK_STRIPES: u64 = 64;
/// Hydration persists its progress at least this often.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Hydration progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneProgress {
    /// Regions in the device.
    pub regions_total: u64,
    /// Regions on the destination.
    pub regions_hydrated: u64,
    /// Bytes copied from the source since open (by hydration and by
    /// partial writes).
    pub bytes_copied: u64,
}

impl CloneProgress {
    /// Whether every region is on the destination (the source can go).
    pub fn complete(&self) -> bool {
        self.regions_hydrated == self.regions_total
    }
}

/// A clone of `source` on `dest`, hydrated region by region.
pub struct CloneDevice {
    source: DeviceRef,
    dest: DeviceRef,
    meta: DeviceRef,
    block_size: u32,
    num_blocks: u64,
    region_blocks: u64,
    hydrated: AtomicBits,
    /// On-disk bitmap blocks changed since the last persist.
    changed: AtomicBits,
    locks: Vec<Mutex<()>>,
    persist_lock: Mutex<()>,
    bytes_copied: SyncMutex<u64>,
}

enum Op {
    Write(Bytes),
    Zeroes,
    Discard,
}

fn corrupt(why: impl std::fmt::Display) -> BlockError {
    BlockError::Medium(format!("clone metadata: {why}"))
}

fn encode_header(block_size: u32, region_bytes: u64, blocks: u64) -> Vec<u8> {
    let mut b = vec![0u8; HEADER];
    put(&mut b, 0, MAGIC);
    put(&mut b, 8, &VERSION.to_le_bytes());
    put(&mut b, 12, &block_size.to_le_bytes());
    put(&mut b, 16, &region_bytes.to_le_bytes());
    put(&mut b, 24, &blocks.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HEADER - 4]);
    put(&mut b, HEADER - 4, &crc.to_le_bytes());
    b
}

fn decode_header(b: &[u8]) -> BlockResult<(u32, u64, u64)> {
    if b.len() < HEADER || &b[0..8] != MAGIC {
        return Err(corrupt("no clone header"));
    }
    if crc32c::crc32c(&b[..HEADER - 4]) != u32_at(b, HEADER - 4) {
        return Err(corrupt("header checksum mismatch"));
    }
    if u32_at(b, 8) != VERSION {
        return Err(corrupt(format!("unsupported version {}", u32_at(b, 8))));
    }
    let (bs, region, blocks) = (u32_at(b, 12), u64_at(b, 16), u64_at(b, 24));
    if !bs.is_power_of_two()
        || !(512..=4096).contains(&bs)
        || !region.is_power_of_two()
        || region < bs as u64
        || region > MAX_REGION_BYTES
    {
        return Err(corrupt("bad block or region size"));
    }
    Ok((bs, region, blocks))
}

impl CloneDevice {
    /// Start a new clone of `source` onto `dest` (at least as large), with
    /// its hydration map on `meta`.
    pub async fn create(
        source: DeviceRef,
        dest: DeviceRef,
        meta: DeviceRef,
        region_bytes: u64,
    ) -> BlockResult<Arc<CloneDevice>> {
        let bs = source.block_size();
        if dest.block_size() != bs || meta.block_size() != bs || bs as usize > HEADER {
            return Err(BlockError::Unsupported(
                "clone devices need one block size of at most 4 KiB".into(),
            ));
        }
        if !region_bytes.is_power_of_two()
            || region_bytes < bs as u64
            || region_bytes > MAX_REGION_BYTES
        {
            return Err(BlockError::Unsupported(format!(
                "bad region size {region_bytes} (a power of two from one block to {MAX_REGION_BYTES} bytes)"
            )));
        }
        if dest.num_blocks() < source.num_blocks() {
            return Err(BlockError::Unsupported(
                "clone destination is smaller than the source".into(),
            ));
        }
        let clone = CloneDevice::assemble(source, dest, meta, region_bytes)?;
        for blk in 0..AtomicBits::disk_blocks(clone.hydrated.len()) {
            clone
                .write_bitmap_block(blk, &clone.hydrated.encode_block(blk, &[]))
                .await?;
        }
        let header = encode_header(bs, region_bytes, clone.num_blocks);
        clone.meta.write(0, buf::aligned(&header)).await?;
        clone.meta.flush().await?;
        info!(blocks = clone.num_blocks, "clone created");
        Ok(Arc::new(clone))
    }

    /// Reopen a clone; hydration goes on from the persisted map.
    pub async fn open(
        source: DeviceRef,
        dest: DeviceRef,
        meta: DeviceRef,
    ) -> BlockResult<Arc<CloneDevice>> {
        let bs = meta.block_size();
        if bs as usize > HEADER || meta.num_blocks() * (bs as u64) < HEADER as u64 {
            return Err(BlockError::Unsupported(
                "not a clone metadata device".into(),
            ));
        }
        let (hbs, region_bytes, blocks) = decode_header(&meta.read(0, buf::alloc(HEADER)).await?)?;
        if hbs != bs || source.block_size() != bs || dest.block_size() != bs {
            return Err(corrupt("block size differs from the devices'"));
        }
        if source.num_blocks() != blocks || dest.num_blocks() < blocks {
            return Err(corrupt(
                "source or destination size differs from the recorded one",
            ));
        }
        let clone = CloneDevice::assemble(source, dest, meta, region_bytes)?;
        for blk in 0..AtomicBits::disk_blocks(clone.hydrated.len()) {
            let data = clone
                .meta
                .read(clone.bitmap_lba(blk), buf::alloc(BITMAP_BLOCK))
                .await?;
            if !clone.hydrated.merge_block(blk, &data) {
                return Err(corrupt(format!("hydration bitmap block {blk} is damaged")));
            }
        }
        info!(
            hydrated = clone.hydrated.count(),
            regions = clone.hydrated.len(),
            "clone opened"
        );
        Ok(Arc::new(clone))
    }

    fn assemble(
        source: DeviceRef,
        dest: DeviceRef,
        meta: DeviceRef,
        region_bytes: u64,
    ) -> BlockResult<CloneDevice> {
        let bs = source.block_size();
        let num_blocks = source.num_blocks();
        let region_blocks = region_bytes / bs as u64;
        let regions = num_blocks.div_ceil(region_blocks);
        let need = HEADER as u64 + AtomicBits::disk_blocks(regions) * BITMAP_BLOCK as u64;
        if meta.num_blocks() * (bs as u64) < need {
            return Err(BlockError::Unsupported(format!(
                "clone metadata device needs {need} bytes"
            )));
        }
        Ok(CloneDevice {
            source,
            dest,
            meta,
            block_size: bs,
            num_blocks,
            region_blocks,
            hydrated: AtomicBits::new(regions),
            changed: AtomicBits::new(AtomicBits::disk_blocks(regions)),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            persist_lock: Mutex::new(()),
            bytes_copied: SyncMutex::new(0),
        })
    }

    fn bitmap_lba(&self, blk: u64) -> u64 {
        (HEADER as u64 + blk * BITMAP_BLOCK as u64) / self.block_size as u64
    }

    async fn write_bitmap_block(&self, blk: u64, img: &[u8]) -> BlockResult<()> {
        self.meta
            .write(self.bitmap_lba(blk), buf::aligned(img))
            .await
    }

    /// Hydration progress.
    pub fn progress(&self) -> CloneProgress {
        CloneProgress {
            regions_total: self.hydrated.len(),
            regions_hydrated: self.hydrated.count(),
            bytes_copied: *self.bytes_copied.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn region_range(&self, r: u64) -> (u64, u64) {
        let start = r * self.region_blocks;
        (start, self.region_blocks.min(self.num_blocks - start))
    }

    fn mark(&self, r: u64) {
        self.hydrated.set(r, true);
        self.changed.set(r / BITS_PER_BLOCK, true);
    }

    /// Copy region `r` from source to destination (caller holds its lock).
    async fn copy_region(&self, r: u64) -> BlockResult<u64> {
        let (start, blocks) = self.region_range(r);
        let len = (blocks * self.block_size as u64) as usize;
        let data = self.source.read(start, buf::alloc(len)).await?;
        self.dest.write(start, data.freeze()).await?;
        *self.bytes_copied.lock().unwrap_or_else(|e| e.into_inner()) += len as u64;
        Ok(len as u64)
    }

    /// Hydrate region `r` if it is not yet; returns the bytes copied.
    async fn hydrate(&self, r: u64) -> BlockResult<u64> {
        if self.hydrated.get(r) {
            return Ok(0);
        }
        let _lock = self.locks[(r % LOCK_STRIPES) as usize].lock().await;
        if self.hydrated.get(r) {
            return Ok(0);
        }
        let n = self.copy_region(r).await?;
        self.mark(r);
        Ok(n)
    }

    /// Make the hydration map durable (destination flushed first).
    pub async fn persist(&self) -> BlockResult<()> {
        let _one = self.persist_lock.lock().await;
        let blocks: Vec<u64> = self.changed.ones().collect();
        let images: Vec<(u64, Vec<u8>)> = blocks
            .iter()
            .map(|&b| {
                self.changed.set(b, false);
                (b, self.hydrated.encode_block(b, &[]))
            })
            .collect();
        let result = async {
            self.dest.flush().await?;
            for (b, img) in &images {
                self.write_bitmap_block(*b, img).await?;
            }
            self.meta.flush().await
        }
        .await;
        if result.is_err() {
            for b in blocks {
                self.changed.set(b, true);
            }
        }
        result
    }

    /// Hydrate every region now (paced by `limit`), persisting as it goes.
    pub async fn hydrate_now(&self, limit: &RateLimit) -> BlockResult<()> {
        self.hydrate_loop(limit, &mut StopSignal::never()).await
    }

    /// Hydrate in the background; the task ends when everything is copied.
    pub fn start_hydration(self: &Arc<Self>, limit: RateLimit) -> BackgroundTask {
        let clone = self.clone();
        BackgroundTask::spawn(
            move |mut stop| async move { clone.hydrate_loop(&limit, &mut stop).await },
        )
    }

    async fn hydrate_loop(&self, limit: &RateLimit, stop: &mut StopSignal) -> BlockResult<()> {
        let mut throttle = Throttle::new(limit.clone());
        let mut persisted = Instant::now();
        for r in 0..self.hydrated.len() {
            let n = self.hydrate(r).await?;
            if throttle.pace(n, stop).await {
                break;
            }
            if persisted.elapsed() >= PERSIST_EVERY {
                self.persist().await?;
                persisted = Instant::now();
            }
        }
        self.persist().await?;
        if self.progress().complete() {
            info!("clone fully hydrated");
        }
        Ok(())
    }

    async fn write_op(&self, lba: u64, blocks: u64, op: Op) -> BlockResult<()> {
        let bs = self.block_size as usize;
        let mut at = 0usize;
        let pieces: Vec<(u64, u64, Option<Bytes>)> = split::units(lba, blocks, self.region_blocks)
            .map(|(l, n)| {
                let data = match &op {
                    Op::Write(d) => Some(d.slice(at..at + n as usize * bs)),
                    _ => None,
                };
                at += n as usize * bs;
                (l, n, data)
            })
            .collect();
        let ops = pieces.into_iter().map(|(l, n, data)| {
            let op = &op;
            async move {
                let r = l / self.region_blocks;
                let apply = |data: Option<Bytes>| async move {
                    match (op, data) {
                        (_, Some(d)) => self.dest.as_ref().write(l, d).await,
                        (Op::Discard, None) => self.dest.discard(l, n).await,
                        _ => self.dest.write_zeroes(l, n).await,
                    }
                };
                if self.hydrated.get(r) {
                    return apply(data).await;
                }
                let _lock = self.locks[(r % LOCK_STRIPES) as usize].lock().await;
                if !self.hydrated.get(r) {
                    let whole = self.region_range(r) == (l, n);
                    if !whole {
                        self.copy_region(r).await?;
                    }
                    apply(data).await?;
                    self.mark(r);
                    return Ok(());
                }
                apply(data).await
            }
        });
        try_join_all(ops).await.map(|_| ())
    }
}

#[async_trait]
impl BlockDevice for CloneDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        let blocks = check_io(self, lba, buf.len())?;
        let bs = self.block_size as usize;
        let pieces: Vec<(u64, u64)> = split::units(lba, blocks, self.region_blocks).collect();
        let parts = split::cut(buf, pieces.iter().map(|p| p.1 as usize * bs));
        let reads = pieces.iter().zip(parts).map(|(&(l, _), part)| {
            let from = if self.hydrated.get(l / self.region_blocks) {
                &self.dest
            } else {
                &self.source
            };
            from.as_ref().read(l, part)
        });
        Ok(split::glue(try_join_all(reads).await?))
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        let blocks = check_io(self, lba, data.len())?;
        self.write_op(lba, blocks, Op::Write(data)).await
    }

    /// Flushes the destination and persists the hydration map.
    async fn flush(&self) -> BlockResult<()> {
        self.persist().await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        self.write_op(lba, blocks, Op::Zeroes).await
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        self.write_op(lba, blocks, Op::Discard).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDevice;

    const R: u64 = 64 << 10;

    fn mem(bytes: u64) -> DeviceRef {
        Arc::new(MemoryDevice::new(bytes, 4096))
    }

    async fn byte(dev: &dyn BlockDevice, lba: u64) -> u8 {
        dev.read(lba, buf::alloc(4096)).await.unwrap()[0]
    }

    #[tokio::test]
    async fn usable_at_once_hydrates_and_survives_reopen() {
        let (src, dst, meta) = (mem(1 << 20), mem(1 << 20), mem(64 << 10));
        for i in 0..256u64 {
            src.write(i, Bytes::from(vec![i as u8; 4096]))
                .await
                .unwrap();
        }
        let c = CloneDevice::create(src.clone(), dst.clone(), meta.clone(), R)
            .await
            .unwrap();
        assert_eq!(c.progress().regions_total, 16);
        assert_eq!(
            byte(&*c, 20).await,
            20,
            "unhydrated reads come from the source"
        );
        // Partial write to region 1: copies the region, then writes.
        c.write(17, Bytes::from(vec![0xAA; 4096])).await.unwrap();
        assert_eq!(byte(&*c, 17).await, 0xAA);
        assert_eq!(byte(&*c, 18).await, 18);
        assert_eq!(byte(&*dst, 18).await, 18);
        // Whole-region discard of region 2 copies nothing.
        c.discard(32, 16).await.unwrap();
        assert_eq!(byte(&*c, 33).await, 0);
        assert_eq!(c.progress().bytes_copied, R);
        c.flush().await.unwrap();
        drop(c);
        let c = CloneDevice::open(src.clone(), dst.clone(), meta.clone())
            .await
            .unwrap();
        assert_eq!(c.progress().regions_hydrated, 2);
        assert_eq!(byte(&*c, 33).await, 0);
        let task = c.start_hydration(RateLimit::new(0));
        task.join().await.unwrap();
        assert!(c.progress().complete());
        // Everything is on the destination now: the source can go.
        src.discard(0, 256).await.unwrap();
        for i in (0..256u64).filter(|i| !(32..48).contains(i) && *i != 17) {
            assert_eq!(byte(&*c, i).await, i as u8);
        }
        let c2 = CloneDevice::open(src, dst, meta.clone()).await.unwrap();
        assert!(c2.progress().complete());
        meta.write(1, Bytes::from(vec![1; 4096])).await.unwrap();
        assert!(matches!(
            CloneDevice::open(mem(1 << 20), mem(1 << 20), meta).await,
            Err(BlockError::Medium(_))
        ));
    }

    #[tokio::test]
    async fn region_sizes_past_the_bound_are_refused() {
        let (src, dst, meta) = (mem(1 << 20), mem(1 << 20), mem(64 << 10));
        assert!(matches!(
            CloneDevice::create(src.clone(), dst.clone(), meta.clone(), MAX_REGION_BYTES * 2).await,
            Err(BlockError::Unsupported(_))
        ));
        // A well-checksummed header asking for a region the size of the
        // whole address space (hydrating it would be one huge buffer).
        let header = encode_header(4096, 1 << 62, src.num_blocks());
        meta.write(0, buf::aligned(&header)).await.unwrap();
        assert!(matches!(
            CloneDevice::open(src, dst, meta).await,
            Err(BlockError::Medium(_))
        ));
    }
}
