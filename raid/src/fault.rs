//! A fault-injecting wrapper for tests: member failures and power loss.
//!
//! * Failures: [`FaultDevice::set_failed`] makes every I/O fail, and
//!   [`FaultDevice::fail_after_writes`] lets a number of writes through
//!   first; a raid1 member or a thin metadata device can die at any moment.
//!   [`FaultDevice::set_full_from`] makes writes at or past a block fail
//!   with [`BlockError::NoSpace`] (a sparse file on a full file system).
//! * Power loss: a device made with [`FaultDevice::volatile`] keeps written
//!   blocks in a simulated volatile cache (reads see them) until `flush`
//!   writes them through. [`FaultDevice::crash`] then keeps a pseudo-random
//!   subset of the cached blocks and drops the rest, block by block, so
//!   unflushed multi-block writes can tear and land out of order, as on a
//!   real disk with a write cache.
//!
//! * A power cut at a chosen point of a run: devices sharing a [`Power`]
//!   all stop at once after a given number of writes and flushes (the
//!   operations that change what a crash leaves), so a crash can fall in
//!   the middle of a resync, a commit or a metadata update. Nothing reaches
//!   the devices after the cut; [`FaultDevice::crash`] then decides what
//!   the volatile caches lose, and [`Power::restore`] switches back on.
//!
//! It wraps a real device; only the cache and the failures are simulated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::RwLock;

use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult, DeviceRef};

/// A power supply shared by devices: cut after a number of writes and
/// flushes, restored on request.
#[derive(Debug)]
pub struct Power {
    /// Writes and flushes still allowed (u64::MAX = no limit).
    left: AtomicU64,
    off: AtomicBool,
}

impl Power {
    /// Power that stays on until cut.
    pub fn new() -> Arc<Power> {
        Arc::new(Power {
            left: AtomicU64::new(u64::MAX),
            off: AtomicBool::new(false),
        })
    }

    /// Let `n` more writes or flushes through (on all devices together),
    /// then cut the power: the one after fails, and every I/O after it.
    pub fn cut_after(&self, n: u64) {
        self.left.store(n, Ordering::SeqCst);
    }

    /// Whether the power is off.
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::SeqCst)
    }

    /// Switch the power back on, with no cut pending.
    pub fn restore(&self) {
        self.left.store(u64::MAX, Ordering::SeqCst);
        self.off.store(false, Ordering::SeqCst);
    }

    /// Account for one I/O; `false` once the power is off.
    fn take(&self, changes: bool) -> bool {
        if changes {
            let left = self.left.load(Ordering::SeqCst);
            if left == 0 {
                self.off.store(true, Ordering::SeqCst);
            } else if left != u64::MAX {
                self.left.fetch_sub(1, Ordering::SeqCst);
            }
        }
        !self.is_off()
    }
}

/// The kinds of I/O the injected faults tell apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Io {
    Read,
    Write,
    Flush,
}

/// Wraps a device and injects failures and power loss.
pub struct FaultDevice {
    inner: DeviceRef,
    volatile: bool,
    power: Option<Arc<Power>>,
    failed: AtomicBool,
    /// Writes still allowed before the device fails (u64::MAX = no limit).
    writes_left: AtomicU64,
    /// Writes reaching this block or beyond fail with no space (u64::MAX = off).
    full_from: AtomicU64,
    /// Unflushed blocks: `None` means zeroed. Guarded for the whole of a
    /// flush so that reads never see a half-written-back state.
    cache: RwLock<()>,
    blocks: Mutex<BTreeMap<u64, Option<Bytes>>>,
}

impl FaultDevice {
    /// Pass-through wrapper: writes go straight to `inner`.
    pub fn new(inner: DeviceRef) -> FaultDevice {
        Self::build(inner, false)
    }

    /// Wrapper with a volatile write cache, for crash tests.
    pub fn volatile(inner: DeviceRef) -> FaultDevice {
        Self::build(inner, true)
    }

    /// Put the device on `power` (see [`Power`]).
    pub fn on_power(mut self, power: Arc<Power>) -> FaultDevice {
        self.power = Some(power);
        self
    }

    fn build(inner: DeviceRef, volatile: bool) -> FaultDevice {
        FaultDevice {
            inner,
            volatile,
            power: None,
            failed: AtomicBool::new(false),
            writes_left: AtomicU64::new(u64::MAX),
            full_from: AtomicU64::new(u64::MAX),
            cache: RwLock::new(()),
            blocks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Make every I/O fail (`true`) or work again (`false`).
    pub fn set_failed(&self, failed: bool) {
        self.failed.store(failed, Ordering::SeqCst);
        if !failed {
            self.writes_left.store(u64::MAX, Ordering::SeqCst);
        }
    }

    /// Let `n` more writes through, then fail every I/O.
    pub fn fail_after_writes(&self, n: u64) {
        self.writes_left.store(n, Ordering::SeqCst);
    }

    /// Make writes (not write-zeroes or discards) that reach block `lba` or beyond fail
    /// with [`BlockError::NoSpace`], as a sparse file's unallocated blocks do
    /// on a full file system; `None` gives the space back.
    pub fn set_full_from(&self, lba: Option<u64>) {
        self.full_from
            .store(lba.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn check_space(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        if blocks > 0 && lba.saturating_add(blocks) > self.full_from.load(Ordering::SeqCst) {
            return Err(BlockError::NoSpace("injected: file system full".into()));
        }
        Ok(())
    }

    /// Whether the device is failing I/O.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Number of written blocks not yet flushed.
    pub fn unflushed_blocks(&self) -> usize {
        self.lock_blocks().len()
    }

    /// Simulate power loss: keep a pseudo-random subset (chosen by `seed`)
    /// of the unflushed blocks, drop the rest, and work again afterwards.
    pub async fn crash(&self, seed: u64) -> BlockResult<()> {
        let _g = self.cache.write().await;
        let cached = std::mem::take(&mut *self.lock_blocks());
        let mut rng = seed | 1;
        for (lba, data) in cached {
            // xorshift64: deterministic per seed, no dependency.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng & 1 == 1 {
                self.write_through(lba, data).await?;
            }
        }
        self.inner.flush().await?;
        self.set_failed(false);
        Ok(())
    }

    fn lock_blocks(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Option<Bytes>>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_alive(&self, io: Io) -> BlockResult<()> {
        if self.power.as_ref().is_some_and(|p| !p.take(io != Io::Read)) {
            return Err(BlockError::Offline("power lost".into()));
        }
        if io == Io::Write {
            let left = self.writes_left.load(Ordering::SeqCst);
            if left == 0 {
                self.failed.store(true, Ordering::SeqCst);
            } else if left != u64::MAX {
                self.writes_left.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.is_failed() {
            return Err(BlockError::Offline("injected fault".into()));
        }
        Ok(())
    }

    async fn write_through(&self, lba: u64, data: Option<Bytes>) -> BlockResult<()> {
        match data {
            Some(d) => self.inner.write(lba, d).await,
            None => self.inner.write_zeroes(lba, 1).await,
        }
    }

    fn cache_blocks(&self, lba: u64, blocks: u64, data: Option<&Bytes>) {
        let bs = self.inner.block_size() as usize;
        let mut map = self.lock_blocks();
        for i in 0..blocks {
            let at = i as usize * bs;
            map.insert(lba + i, data.map(|d| d.slice(at..at + bs)));
        }
    }
}

#[async_trait]
impl BlockDevice for FaultDevice {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }

    fn max_transfer_bytes(&self) -> u64 {
        self.inner.max_transfer_bytes()
    }

    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        self.check_alive(Io::Read)?;
        if !self.volatile {
            return self.inner.read(lba, buf).await;
        }
        let _g = self.cache.read().await;
        let blocks = check_io(self, lba, buf.len())?;
        let mut buf = self.inner.read(lba, buf).await?;
        let bs = self.inner.block_size() as usize;
        let map = self.lock_blocks();
        for (&b, data) in map.range(lba..lba + blocks) {
            let at = (b - lba) as usize * bs;
            let dst = &mut buf[at..at + bs];
            match data {
                Some(d) => dst.copy_from_slice(d),
                None => dst.fill(0),
            }
        }
        Ok(buf)
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        self.check_alive(Io::Write)?;
        let bs = u64::from(self.inner.block_size());
        self.check_space(lba, data.len() as u64 / bs)?;
        if !self.volatile {
            return self.inner.write(lba, data).await;
        }
        let _g = self.cache.read().await;
        let blocks = check_io(self, lba, data.len())?;
        self.cache_blocks(lba, blocks, Some(&data));
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        self.check_alive(Io::Flush)?;
        if self.volatile {
            let _g = self.cache.write().await;
            let cached = std::mem::take(&mut *self.lock_blocks());
            for (lba, data) in cached {
                self.write_through(lba, data).await?;
            }
        }
        self.inner.flush().await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.check_alive(Io::Write)?;
        if !self.volatile {
            return self.inner.write_zeroes(lba, blocks).await;
        }
        let _g = self.cache.read().await;
        check_range(self, lba, blocks)?;
        self.cache_blocks(lba, blocks, None);
        Ok(())
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.write_zeroes(lba, blocks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{buf, MemoryDevice};

    #[tokio::test]
    async fn flushed_writes_survive_a_crash_and_unflushed_ones_may_not() {
        let mem: DeviceRef = Arc::new(MemoryDevice::new(1 << 20, 4096));
        let dev = FaultDevice::volatile(mem.clone());
        dev.write(0, Bytes::from(vec![1; 4096])).await.unwrap();
        dev.flush().await.unwrap();
        dev.write(1, Bytes::from(vec![2; 64 * 4096])).await.unwrap();
        assert_eq!(dev.read(1, buf::alloc(4096)).await.unwrap()[0], 2);
        assert_eq!(mem.read(1, buf::alloc(4096)).await.unwrap()[0], 0);
        assert_eq!(dev.unflushed_blocks(), 64);
        dev.crash(42).await.unwrap();
        assert_eq!(dev.read(0, buf::alloc(4096)).await.unwrap()[0], 1);
        let back = dev.read(1, buf::alloc(64 * 4096)).await.unwrap();
        let kept = back.chunks(4096).filter(|b| b[0] == 2).count();
        // 64 coin flips: torn somewhere in between.
        assert!(kept > 0 && kept < 64, "kept {kept}");
    }

    #[tokio::test]
    async fn a_power_cut_stops_every_device_on_it_at_once() {
        let power = Power::new();
        let dev = |p: &Arc<Power>| {
            FaultDevice::volatile(Arc::new(MemoryDevice::new(1 << 20, 4096))).on_power(p.clone())
        };
        let (a, b) = (dev(&power), dev(&power));
        power.cut_after(3);
        a.write(0, Bytes::from(vec![1; 4096])).await.unwrap();
        a.flush().await.unwrap();
        b.write(0, Bytes::from(vec![2; 4096])).await.unwrap();
        assert!(
            b.flush().await.is_err(),
            "the fourth change finds the power off"
        );
        assert!(a.read(0, buf::alloc(4096)).await.is_err());
        assert!(a.write(1, Bytes::from(vec![3; 4096])).await.is_err());
        // The crash keeps what was flushed; b's write was never flushed.
        a.crash(1).await.unwrap();
        b.crash(2).await.unwrap();
        assert!(a.read(0, buf::alloc(4096)).await.is_err(), "still off");
        power.restore();
        assert_eq!(a.read(0, buf::alloc(4096)).await.unwrap()[0], 1);
        assert!([0, 2].contains(&b.read(0, buf::alloc(4096)).await.unwrap()[0]));
        assert_eq!(a.read(1, buf::alloc(4096)).await.unwrap()[0], 0);
    }

    #[tokio::test]
    async fn fails_after_the_given_number_of_writes() {
        let dev = FaultDevice::new(Arc::new(MemoryDevice::new(1 << 20, 512)));
        dev.fail_after_writes(2);
        for _ in 0..2 {
            dev.write(0, Bytes::from(vec![1; 512])).await.unwrap();
        }
        assert!(matches!(
            dev.write(0, Bytes::from(vec![1; 512])).await,
            Err(BlockError::Offline(_))
        ));
        assert!(dev.read(0, buf::alloc(512)).await.is_err());
        dev.set_failed(false);
        assert_eq!(dev.read(0, buf::alloc(512)).await.unwrap()[0], 1);
    }
}
