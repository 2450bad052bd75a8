//! A RAM-backed device, allocated lazily in chunks so that a large device
//! costs memory only for what was written. Each chunk knows which of its
//! pages were written: reads of the others give zeroes without touching
//! the chunk's memory, which the kernel has not backed yet (reading it
//! would fault every page in).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::device::{check_io, check_range, BlockDevice, BlockResult};

const CHUNK: usize = 1 << 20;
/// Granularity of the written-page map.
const PAGE: usize = 4096;
const PAGES: usize = CHUNK / PAGE;

type Chunk = Mutex<Option<ChunkData>>;

/// One chunk's memory and which of its pages hold data. A page without
/// its bit is all zeroes in memory too (fresh, or zeroed by a discard), so
/// a partial write to it leaves zeroes around the written bytes.
struct ChunkData {
    mem: Box<[u8]>,
    written: [u64; PAGES / 64],
}

impl ChunkData {
    fn new() -> ChunkData {
        ChunkData {
            mem: vec![0u8; CHUNK].into_boxed_slice(),
            written: [0; PAGES / 64],
        }
    }

    fn is_written(&self, page: usize) -> bool {
        self.written[page / 64] & (1 << (page % 64)) != 0
    }

    fn set_written(&mut self, page: usize, on: bool) {
        if on {
            self.written[page / 64] |= 1 << (page % 64);
        } else {
            self.written[page / 64] &= !(1 << (page % 64));
        }
    }

    /// Copy the bytes at `off` into `dst`: memory for written pages,
    /// zeroes for the others.
    fn read(&self, off: usize, dst: &mut [u8]) {
        let mut at = 0;
        while at < dst.len() {
            // A run of pages that are all written or all not.
            let written = self.is_written((off + at) / PAGE);
            let mut end = at;
            while end < dst.len() && self.is_written((off + end) / PAGE) == written {
                end = (((off + end) / PAGE + 1) * PAGE - off).min(dst.len());
            }
            let run = &mut dst[at..end];
            if written {
                run.copy_from_slice(&self.mem[off + at..off + end]);
            } else {
                run.fill(0);
            }
            at = end;
        }
    }

    fn write(&mut self, off: usize, src: &[u8]) {
        self.mem[off..off + src.len()].copy_from_slice(src);
        for page in off / PAGE..(off + src.len()).div_ceil(PAGE) {
            self.set_written(page, true);
        }
    }

    /// Zero `n` bytes at `off`; pages wholly inside hold no data after.
    fn discard(&mut self, off: usize, n: usize) {
        for page in off / PAGE..(off + n).div_ceil(PAGE) {
            if !self.is_written(page) {
                continue;
            }
            let start = (page * PAGE).max(off);
            let end = ((page + 1) * PAGE).min(off + n);
            self.mem[start..end].fill(0);
            if end - start == PAGE {
                self.set_written(page, false);
            }
        }
    }
}

/// Data held in memory; lost when the process ends.
pub struct MemoryDevice {
    block_size: u32,
    num_blocks: AtomicU64,
    chunks: RwLock<Vec<Chunk>>,
}

impl MemoryDevice {
    /// A device of `bytes` bytes (rounded down to whole blocks) with blocks
    /// of `block_size` bytes (a power of two from 512 to 1 MiB).
    pub fn new(bytes: u64, block_size: u32) -> Self {
        assert!(
            block_size.is_power_of_two() && (512..=CHUNK as u32).contains(&block_size),
            "block size {block_size} must be a power of two from 512 to 1M"
        );
        let dev = MemoryDevice {
            block_size,
            num_blocks: AtomicU64::new(0),
            chunks: RwLock::new(Vec::new()),
        };
        dev.resize(bytes);
        dev
    }

    /// Grow (or shrink) the device to `bytes` bytes. Shrinking drops the data
    /// past the new end.
    pub fn resize(&self, bytes: u64) {
        let blocks = bytes / self.block_size as u64;
        let nchunks = (blocks * self.block_size as u64).div_ceil(CHUNK as u64) as usize;
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        chunks.resize_with(nchunks, || Mutex::new(None));
        self.num_blocks.store(blocks, Ordering::Release);
    }

    /// Run `f` over each (chunk, offset-in-chunk, length) piece of a byte range.
    fn for_each_piece(
        &self,
        start: u64,
        len: usize,
        mut f: impl FnMut(&Chunk, usize, usize, usize),
    ) {
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < len {
            let pos = start + done as u64;
            let idx = (pos / CHUNK as u64) as usize;
            let off = (pos % CHUNK as u64) as usize;
            let n = (CHUNK - off).min(len - done);
            if let Some(chunk) = chunks.get(idx) {
                f(chunk, off, n, done);
            }
            done += n;
        }
    }
}

fn lock(chunk: &Chunk) -> std::sync::MutexGuard<'_, Option<ChunkData>> {
    chunk.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl BlockDevice for MemoryDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    async fn read(&self, lba: u64, mut buf: BytesMut) -> BlockResult<BytesMut> {
        check_io(self, lba, buf.len())?;
        let start = lba * self.block_size as u64;
        let len = buf.len();
        self.for_each_piece(start, len, |chunk, off, n, at| {
            let dst = &mut buf[at..at + n];
            match &*lock(chunk) {
                Some(data) => data.read(off, dst),
                None => dst.fill(0),
            }
        });
        Ok(buf)
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        check_io(self, lba, data.len())?;
        let start = lba * self.block_size as u64;
        self.for_each_piece(start, data.len(), |chunk, off, n, at| {
            let mut guard = lock(chunk);
            guard
                .get_or_insert_with(ChunkData::new)
                .write(off, &data[at..at + n]);
        });
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.discard(lba, blocks).await
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        let bs = self.block_size as u64;
        self.for_each_piece(lba * bs, (blocks * bs) as usize, |chunk, off, n, _| {
            let mut guard = lock(chunk);
            if n == CHUNK {
                *guard = None;
            } else if let Some(data) = guard.as_mut() {
                data.discard(off, n);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf;
    use crate::BlockError;

    #[tokio::test]
    async fn write_read_across_chunks_and_discard() {
        let dev = MemoryDevice::new(4 << 20, 4096);
        assert_eq!(dev.num_blocks(), 1024);
        let lba = (CHUNK / 4096) as u64 - 1; // straddles chunk 0 and 1
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        dev.write(lba, Bytes::from(data.clone())).await.unwrap();
        let back = dev.read(lba, buf::alloc(8192)).await.unwrap();
        assert_eq!(&back[..], &data[..]);
        dev.discard(lba, 1).await.unwrap();
        let back = dev.read(lba, buf::alloc(8192)).await.unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert_eq!(&back[4096..], &data[4096..]);
    }

    #[tokio::test]
    async fn unwritten_and_discarded_pages_read_as_zeroes() {
        let dev = MemoryDevice::new(2 << 20, 512);
        // 512 bytes into the middle of page 1 of chunk 0.
        dev.write(10, Bytes::from(vec![5u8; 512])).await.unwrap();
        let back = dev.read(0, buf::alloc(3 * 4096)).await.unwrap();
        for (i, &b) in back.iter().enumerate() {
            let want = if (5120..5632).contains(&i) { 5 } else { 0 };
            assert_eq!(b, want, "byte {i}");
        }
        // A run of written pages between unwritten ones, read in one piece.
        dev.write(16, Bytes::from(vec![9u8; 8192])).await.unwrap();
        let back = dev.read(8, buf::alloc(16384)).await.unwrap();
        assert!(back[1024..1536].iter().all(|&b| b == 5));
        assert!(back[..1024]
            .iter()
            .chain(&back[1536..4096])
            .all(|&b| b == 0));
        assert!(back[4096..12288].iter().all(|&b| b == 9));
        assert!(back[12288..].iter().all(|&b| b == 0));
        // Discarding a whole page, then writing part of it: the rest of
        // the page is zeroes, not the old data.
        dev.discard(16, 8).await.unwrap();
        dev.write(16, Bytes::from(vec![3u8; 512])).await.unwrap();
        let back = dev.read(16, buf::alloc(8192)).await.unwrap();
        assert!(back[..512].iter().all(|&b| b == 3));
        assert!(back[512..4096].iter().all(|&b| b == 0));
        assert!(back[4096..].iter().all(|&b| b == 9));
        // Part of a page discarded: zeroes there, the rest kept.
        dev.discard(25, 1).await.unwrap();
        let back = dev.read(24, buf::alloc(4096)).await.unwrap();
        assert!(back[..512].iter().all(|&b| b == 9));
        assert!(back[512..1024].iter().all(|&b| b == 0));
        assert!(back[1024..].iter().all(|&b| b == 9));
    }

    #[tokio::test]
    async fn out_of_range_and_bad_length_are_rejected() {
        let dev = MemoryDevice::new(1 << 20, 512);
        let end = dev.num_blocks();
        assert!(matches!(
            dev.read(end, buf::alloc(512)).await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write(0, Bytes::from(vec![0u8; 100])).await,
            Err(BlockError::BadLength { .. })
        ));
        assert!(matches!(
            dev.discard(u64::MAX, 2).await,
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn grows_online() {
        let dev = MemoryDevice::new(1 << 20, 4096);
        dev.resize(3 << 20);
        assert_eq!(dev.num_blocks(), 768);
        dev.write(700, Bytes::from(vec![7u8; 4096])).await.unwrap();
        let back = dev.read(700, buf::alloc(4096)).await.unwrap();
        assert!(back.iter().all(|&b| b == 7));
    }
}
