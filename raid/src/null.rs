//! A device that discards writes and reads zeroes: for measuring everything
//! above the storage.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::device::{check_io, check_range, BlockDevice, BlockResult};

/// Discards writes, returns zeroes.
pub struct NullDevice {
    block_size: u32,
    num_blocks: u64,
}

impl NullDevice {
    /// A device of `bytes` bytes (rounded down to whole blocks).
    pub fn new(bytes: u64, block_size: u32) -> Self {
        assert!(block_size.is_power_of_two() && block_size >= 512);
        NullDevice {
            block_size,
            num_blocks: bytes / block_size as u64,
        }
    }
}

#[async_trait]
impl BlockDevice for NullDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    async fn read(&self, lba: u64, mut buf: BytesMut) -> BlockResult<BytesMut> {
        check_io(self, lba, buf.len())?;
        buf.fill(0);
        Ok(buf)
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        check_io(self, lba, data.len()).map(|_| ())
    }

    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)
    }
}
