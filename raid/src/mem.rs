//! A RAM-backed device, allocated lazily in chunks so that a large device
//! costs memory only for what was written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::device::{check_io, check_range, BlockDevice, BlockResult};

const CHUNK: usize = 1 << 20;

type Chunk = Mutex<Option<Box<[u8]>>>;

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

fn lock(chunk: &Chunk) -> std::sync::MutexGuard<'_, Option<Box<[u8]>>> {
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
                Some(data) => dst.copy_from_slice(&data[off..off + n]),
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
            let mem = guard.get_or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
            mem[off..off + n].copy_from_slice(&data[at..at + n]);
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
            } else if let Some(mem) = guard.as_mut() {
                mem[off..off + n].fill(0);
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
