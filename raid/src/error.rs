//! A device that fails every I/O: what a missing leg or member is replaced
//! with so that the rest of a stack keeps its shape (like dm-error).

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::device::{BlockDevice, BlockError, BlockResult};

/// Fails every operation with [`BlockError::Offline`].
pub struct ErrorDevice {
    block_size: u32,
    num_blocks: u64,
    why: String,
}

impl ErrorDevice {
    /// A device of `num_blocks` blocks of `block_size` bytes whose errors
    /// carry the reason `why`.
    pub fn new(block_size: u32, num_blocks: u64, why: impl Into<String>) -> ErrorDevice {
        ErrorDevice {
            block_size,
            num_blocks,
            why: why.into(),
        }
    }

    fn fail<T>(&self) -> BlockResult<T> {
        Err(BlockError::Offline(self.why.clone()))
    }
}

#[async_trait]
impl BlockDevice for ErrorDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    async fn read(&self, _lba: u64, _buf: BytesMut) -> BlockResult<BytesMut> {
        self.fail()
    }
    async fn write(&self, _lba: u64, _data: Bytes) -> BlockResult<()> {
        self.fail()
    }
    async fn flush(&self) -> BlockResult<()> {
        self.fail()
    }
    async fn write_zeroes(&self, _lba: u64, _blocks: u64) -> BlockResult<()> {
        self.fail()
    }
    async fn discard(&self, _lba: u64, _blocks: u64) -> BlockResult<()> {
        self.fail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_operation_fails() {
        let d = ErrorDevice::new(512, 8, "leg 3 lost");
        assert_eq!(d.num_blocks(), 8);
        assert!(
            matches!(d.read(0, BytesMut::zeroed(512)).await, Err(BlockError::Offline(m)) if m == "leg 3 lost")
        );
        assert!(d.write(0, Bytes::from(vec![0; 512])).await.is_err());
        assert!(d.flush().await.is_err());
        assert!(d.write_zeroes(0, 1).await.is_err());
        assert!(d.discard(0, 1).await.is_err());
    }
}
