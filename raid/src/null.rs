//! A device that discards writes and reads zeroes: for measuring everything
//! above the storage.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::device::{check_io, check_range, BlockDevice, BlockResult};

/// Zeroes that shared reads hand out: reads up to this size touch no
/// memory, as with the kernel's null_blk.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

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

    fn read_shared(&self, lba: u64, len: usize) -> Option<Bytes> {
        (len <= ZEROES.len() && check_io(self, lba, len).is_ok())
            .then(|| Bytes::from_static(&ZEROES[..len]))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_are_zeroes_shared_or_filled_and_writes_vanish() {
        let dev = NullDevice::new(1 << 30, 4096);
        dev.write(0, Bytes::from(vec![9u8; 8192])).await.unwrap();
        let shared = dev.read_shared(0, 8192).expect("shared zeroes");
        assert_eq!(&shared[..], &[0u8; 8192][..]);
        let filled = dev.read(0, BytesMut::from(&[7u8; 4096][..])).await.unwrap();
        assert!(filled.iter().all(|&b| b == 0));
        // Out of range, partial blocks and reads above the shared zeroes
        // fall back to `read`, which reports the error or fills a buffer.
        assert!(dev.read_shared(dev.num_blocks(), 4096).is_none());
        assert!(dev.read_shared(0, 100).is_none());
        assert!(dev.read_shared(0, 2 << 20).is_none());
        assert!(dev
            .read(dev.num_blocks(), BytesMut::zeroed(4096))
            .await
            .is_err());
    }
}
