//! raid0: data striped in fixed chunks round-robin over the members.
//!
//! Chunk `c` of the array lives on member `c % n` at member chunk `c / n`.
//! Every member contributes the same number of whole chunks (the smallest
//! member decides), so capacity is `n * chunks_per_member * chunk`. A
//! request is cut at chunk boundaries; pieces run concurrently.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult, DeviceRef};
use crate::split::{self, Piece};

/// Default chunk size in bytes.
pub const DEFAULT_CHUNK_BYTES: u32 = 16 << 10;

/// Members striped in chunks.
pub struct Raid0 {
    devs: Vec<DeviceRef>,
    block_size: u32,
    chunk_blocks: u64,
    num_blocks: u64,
}

impl Raid0 {
    /// Stripe over `members` (at least one, same block size) in chunks of
    /// `chunk_bytes` (a power-of-two multiple of the block size).
    pub fn new(members: Vec<DeviceRef>, chunk_bytes: u32) -> BlockResult<Raid0> {
        let first = members
            .first()
            .ok_or_else(|| BlockError::Unsupported("raid0 needs at least one member".into()))?;
        let block_size = first.block_size();
        if !chunk_bytes.is_power_of_two() || chunk_bytes < block_size {
            return Err(BlockError::Unsupported(format!(
                "chunk size {chunk_bytes} must be a power of two of at least the block size {block_size}"
            )));
        }
        if members.iter().any(|m| m.block_size() != block_size) {
            return Err(BlockError::Unsupported(
                "raid0 members differ in block size".into(),
            ));
        }
        let chunk_blocks = (chunk_bytes / block_size) as u64;
        let per_member = members.iter().map(|m| m.num_blocks()).min().unwrap_or(0) / chunk_blocks;
        Ok(Raid0 {
            num_blocks: per_member * chunk_blocks * members.len() as u64,
            devs: members,
            block_size,
            chunk_blocks,
        })
    }

    fn pieces(&self, lba: u64, blocks: u64) -> Vec<Piece> {
        let n = self.devs.len() as u64;
        split::units(lba, blocks, self.chunk_blocks)
            .map(|(at, len)| {
                let chunk = at / self.chunk_blocks;
                Piece {
                    dev: (chunk % n) as usize,
                    lba: (chunk / n) * self.chunk_blocks + at % self.chunk_blocks,
                    blocks: len,
                }
            })
            .collect()
    }
}

#[async_trait]
impl BlockDevice for Raid0 {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn optimal_io_blocks(&self) -> u32 {
        (self.chunk_blocks * self.devs.len() as u64).min(u32::MAX as u64) as u32
    }

    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        let blocks = check_io(self, lba, buf.len())?;
        let pieces = self.pieces(lba, blocks);
        split::read(&self.devs, &pieces, self.block_size as usize, buf).await
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        let blocks = check_io(self, lba, data.len())?;
        let pieces = self.pieces(lba, blocks);
        split::write(&self.devs, &pieces, self.block_size as usize, data).await
    }

    async fn flush(&self) -> BlockResult<()> {
        split::flush(&self.devs).await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        split::discard(&self.devs, &self.pieces(lba, blocks), true).await
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        split::discard(&self.devs, &self.pieces(lba, blocks), false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{buf, MemoryDevice};
    use std::sync::Arc;

    #[tokio::test]
    async fn stripes_chunks_round_robin() {
        let m: Vec<DeviceRef> = (0..3)
            .map(|_| Arc::new(MemoryDevice::new(10 * 4096, 4096)) as DeviceRef)
            .collect();
        let r = Raid0::new(m.clone(), 8192).unwrap();
        assert_eq!(r.num_blocks(), 3 * 10);
        let data: Vec<u8> = (0..7 * 4096).map(|i| (i / 4096) as u8 + 1).collect();
        r.write(1, Bytes::from(data.clone())).await.unwrap();
        assert_eq!(
            &r.read(1, buf::alloc(7 * 4096)).await.unwrap()[..],
            &data[..]
        );
        // Array block 6 is chunk 3 -> member 0, member block 2.
        assert_eq!(m[0].read(2, buf::alloc(4096)).await.unwrap()[0], 6);
        assert_eq!(m[2].read(1, buf::alloc(4096)).await.unwrap()[0], 5);
        assert!(Raid0::new(m, 1000).is_err());
    }
}
