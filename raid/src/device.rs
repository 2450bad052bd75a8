//! The [`BlockDevice`] trait and its error type.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Result of a block operation.
pub type BlockResult<T> = Result<T, BlockError>;

/// A shared handle to any block device.
pub type DeviceRef = Arc<dyn BlockDevice>;

/// Why a block operation failed.
#[derive(Debug, Error)]
pub enum BlockError {
    /// The range reaches past the end of the device.
    #[error("blocks {lba}..{end} are beyond the end of the device ({capacity} blocks)", end = lba.saturating_add(*blocks))]
    OutOfRange {
        /// First block of the request.
        lba: u64,
        /// Number of blocks requested.
        blocks: u64,
        /// Device capacity in blocks.
        capacity: u64,
    },
    /// The buffer length is not a whole number of blocks.
    #[error("transfer of {len} bytes is not a multiple of the {block_size}-byte block size")]
    BadLength {
        /// Buffer length in bytes.
        len: usize,
        /// Device block size in bytes.
        block_size: u32,
    },
    /// The request is larger than the device accepts in one operation.
    #[error("transfer of {len} bytes exceeds the device maximum of {max} bytes")]
    TooLarge {
        /// Requested bytes.
        len: u64,
        /// Maximum bytes per operation.
        max: u64,
    },
    /// An operating-system I/O error (its message names the device).
    #[error("{0}")]
    Io(std::io::Error),
    /// A thin pool (or similar) has no free space left.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The device (or every member that could serve the request) is gone.
    #[error("device offline: {0}")]
    Offline(String),
    /// The data could not be read back intact.
    #[error("medium error: {0}")]
    Medium(String),
    /// The device does not do this operation.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A remote device answered with an error.
    #[error("remote error: {0}")]
    Remote(String),
}

/// A device of fixed-size logical blocks, addressed by LBA.
///
/// Reads take a buffer whose length is the number of bytes to read (a whole
/// number of blocks), fill it and give it back. Writes take shared bytes.
/// Every operation checks its range against the current capacity and fails
/// with [`BlockError::OutOfRange`] rather than touching anything outside it.
#[async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    /// Logical block size in bytes (a power of two, at least 512).
    fn block_size(&self) -> u32;

    /// Capacity in logical blocks. May grow while the device is in use.
    fn num_blocks(&self) -> u64;

    /// Preferred I/O size in blocks (0 when the device has no preference).
    fn optimal_io_blocks(&self) -> u32 {
        0
    }

    /// Largest transfer accepted by one read or write, in bytes.
    fn max_transfer_bytes(&self) -> u64 {
        u64::MAX
    }

    /// Read `buf.len()` bytes starting at block `lba` into `buf`.
    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut>;

    /// The `len` bytes at block `lba` as a shared buffer, when the device
    /// has them without reading into a buffer of the caller's (the null
    /// device's zeroes), so that a target sends them without a copy.
    /// `None`, the default, means "use [`read`](Self::read)", which also
    /// reports any error.
    fn read_shared(&self, _lba: u64, _len: usize) -> Option<Bytes> {
        None
    }

    /// Write `data` (a whole number of blocks) starting at block `lba`.
    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()>;

    /// Make every completed write durable.
    async fn flush(&self) -> BlockResult<()>;

    /// Set `blocks` blocks starting at `lba` to zero.
    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()>;

    /// Tell the device the range is unused; later reads return zeroes.
    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()>;
}

impl From<std::io::Error> for BlockError {
    fn from(e: std::io::Error) -> Self {
        BlockError::Io(e)
    }
}

/// Check that `len` bytes at `lba` form whole blocks inside `dev` and within
/// its transfer limit; returns the number of blocks.
///
/// Generic so that a device checking itself calls its own size methods
/// directly (inlined) rather than through the vtable.
#[inline]
pub fn check_io<D: BlockDevice + ?Sized>(dev: &D, lba: u64, len: usize) -> BlockResult<u64> {
    let bs = dev.block_size();
    // Block sizes are powers of two (NVMe's are 2^LBADS); a mask and a
    // shift instead of a division on every I/O.
    let (blocks, rest) = if bs.is_power_of_two() {
        crate::split::div_rem_pow2(len as u64, bs as u64)
    } else {
        ((len / bs as usize) as u64, (len % bs as usize) as u64)
    };
    if rest != 0 {
        return Err(BlockError::BadLength {
            len,
            block_size: bs,
        });
    }
    if len as u64 > dev.max_transfer_bytes() {
        return Err(BlockError::TooLarge {
            len: len as u64,
            max: dev.max_transfer_bytes(),
        });
    }
    check_range(dev, lba, blocks)?;
    Ok(blocks)
}

/// Check that `blocks` blocks at `lba` lie inside `dev`.
#[inline]
pub fn check_range<D: BlockDevice + ?Sized>(dev: &D, lba: u64, blocks: u64) -> BlockResult<()> {
    let capacity = dev.num_blocks();
    match lba.checked_add(blocks) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(BlockError::OutOfRange {
            lba,
            blocks,
            capacity,
        }),
    }
}

#[async_trait]
impl<T: BlockDevice + ?Sized> BlockDevice for Arc<T> {
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn num_blocks(&self) -> u64 {
        (**self).num_blocks()
    }
    fn optimal_io_blocks(&self) -> u32 {
        (**self).optimal_io_blocks()
    }
    fn max_transfer_bytes(&self) -> u64 {
        (**self).max_transfer_bytes()
    }
    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        (**self).read(lba, buf).await
    }
    fn read_shared(&self, lba: u64, len: usize) -> Option<Bytes> {
        (**self).read_shared(lba, len)
    }
    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        (**self).write(lba, data).await
    }
    async fn flush(&self) -> BlockResult<()> {
        (**self).flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        (**self).write_zeroes(lba, blocks).await
    }
    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        (**self).discard(lba, blocks).await
    }
}
