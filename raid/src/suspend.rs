//! Suspend / resume: a device whose I/O can be paused and whose underlying
//! device can be swapped while paused (like a dm table reload).
//!
//! Every I/O holds a read guard on the current device for its whole
//! duration. [`SuspendableDevice::suspend`] takes the write guard: tokio's
//! lock is fair, so from the moment suspend is called new I/O queues behind
//! it, and the guard is granted once the I/O already in flight has drained.
//! The underlying device is then flushed. Dropping the [`SuspendGuard`] (or
//! calling [`SuspendGuard::resume`]) lets the queued I/O go on, to the new
//! device if one was swapped in.

use std::sync::{Arc, RwLock as SyncRwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

use crate::device::{BlockDevice, BlockError, BlockResult, DeviceRef};

/// A device that can be suspended, swapped and resumed.
pub struct SuspendableDevice {
    current: Arc<RwLock<DeviceRef>>,
    /// Copy of the current device for the synchronous queries, which must
    /// answer even while suspended.
    shown: Arc<SyncRwLock<DeviceRef>>,
}

/// Held while suspended: no I/O reaches the device until it is dropped.
pub struct SuspendGuard {
    guard: OwnedRwLockWriteGuard<DeviceRef>,
    shown: Arc<SyncRwLock<DeviceRef>>,
}

impl SuspendableDevice {
    /// Wrap `dev`.
    pub fn new(dev: DeviceRef) -> SuspendableDevice {
        SuspendableDevice {
            current: Arc::new(RwLock::new(dev.clone())),
            shown: Arc::new(SyncRwLock::new(dev)),
        }
    }

    /// Stop new I/O, wait for in-flight I/O to finish, flush the device.
    pub async fn suspend(&self) -> BlockResult<SuspendGuard> {
        let guard = self.current.clone().write_owned().await;
        guard.flush().await?;
        Ok(SuspendGuard {
            guard,
            shown: self.shown.clone(),
        })
    }

    fn shown(&self) -> DeviceRef {
        self.shown.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SuspendGuard {
    /// Replace the underlying device (same block size); returns the old one.
    pub fn swap(&mut self, dev: DeviceRef) -> BlockResult<DeviceRef> {
        if dev.block_size() != self.guard.block_size() {
            return Err(BlockError::Unsupported(format!(
                "cannot swap in a device of block size {} for {}",
                dev.block_size(),
                self.guard.block_size()
            )));
        }
        *self.shown.write().unwrap_or_else(|e| e.into_inner()) = dev.clone();
        Ok(std::mem::replace(&mut *self.guard, dev))
    }

    /// Let I/O flow again (same as dropping the guard).
    pub fn resume(self) {}
}

#[async_trait]
impl BlockDevice for SuspendableDevice {
    fn block_size(&self) -> u32 {
        self.shown().block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.shown().num_blocks()
    }
    fn optimal_io_blocks(&self) -> u32 {
        self.shown().optimal_io_blocks()
    }
    fn max_transfer_bytes(&self) -> u64 {
        self.shown().max_transfer_bytes()
    }
    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        self.current.read().await.read(lba, buf).await
    }
    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        self.current.read().await.write(lba, data).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.current.read().await.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.current.read().await.write_zeroes(lba, blocks).await
    }
    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.current.read().await.discard(lba, blocks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{buf, MemoryDevice};

    #[tokio::test]
    async fn io_waits_while_suspended_and_goes_to_the_swapped_device() {
        let old: DeviceRef = Arc::new(MemoryDevice::new(1 << 20, 4096));
        let new: DeviceRef = Arc::new(MemoryDevice::new(2 << 20, 4096));
        let dev = Arc::new(SuspendableDevice::new(old.clone()));
        dev.write(0, Bytes::from(vec![1; 4096])).await.unwrap();
        let mut guard = dev.suspend().await.unwrap();
        let d2 = dev.clone();
        let pending = tokio::spawn(async move { d2.write(1, Bytes::from(vec![2; 4096])).await });
        // Let the writer run until it blocks on the suspended device.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!pending.is_finished());
        assert_eq!(old.read(1, buf::alloc(4096)).await.unwrap()[0], 0);
        guard.swap(new.clone()).unwrap();
        assert_eq!(dev.num_blocks(), 512);
        guard.resume();
        pending.await.unwrap().unwrap();
        assert_eq!(new.read(1, buf::alloc(4096)).await.unwrap()[0], 2);
        assert_eq!(old.read(1, buf::alloc(4096)).await.unwrap()[0], 0);
        let mut g = dev.suspend().await.unwrap();
        assert!(g.swap(Arc::new(MemoryDevice::new(1 << 20, 512))).is_err());
    }
}
