//! Linear (concat): members laid end to end.
//!
//! The member table is an `Arc` swapped whole when a member is appended, so
//! the I/O path takes one short read lock and never waits for a change.
//! Appending is how a thin pool's data device grows online (a new raid1
//! group is added at the end); members cannot be removed.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult, DeviceRef};
use crate::split::{self, Piece};

struct Table {
    devs: Vec<DeviceRef>,
    /// `starts[i]` is the first array block of member `i`; one extra entry
    /// holds the total size.
    starts: Vec<u64>,
}

/// Members concatenated into one device.
pub struct Linear {
    block_size: u32,
    table: RwLock<Arc<Table>>,
}

impl Linear {
    /// Concatenate `members` (at least one, all of the same block size).
    pub fn new(members: Vec<DeviceRef>) -> BlockResult<Linear> {
        let first = members
            .first()
            .ok_or_else(|| BlockError::Unsupported("linear needs at least one member".into()))?;
        let lin = Linear {
            block_size: first.block_size(),
            table: RwLock::new(Arc::new(Table {
                devs: Vec::new(),
                starts: vec![0],
            })),
        };
        for m in members {
            lin.append(m)?;
        }
        Ok(lin)
    }

    /// Add `dev` at the end; the device grows by its size.
    pub fn append(&self, dev: DeviceRef) -> BlockResult<()> {
        if dev.block_size() != self.block_size {
            return Err(BlockError::Unsupported(format!(
                "member block size {} differs from {}",
                dev.block_size(),
                self.block_size
            )));
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut devs = table.devs.clone();
        let mut starts = table.starts.clone();
        let end = starts.last().copied().unwrap_or(0) + dev.num_blocks();
        devs.push(dev);
        starts.push(end);
        *table = Arc::new(Table { devs, starts });
        Ok(())
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.table().devs.len()
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Table {
    fn pieces(&self, lba: u64, blocks: u64) -> Vec<Piece> {
        let mut out = Vec::with_capacity(1);
        let (mut at, end) = (lba, lba + blocks);
        // Index of the last member starting at or before `at`.
        let mut i = self.starts.partition_point(|&s| s <= at).saturating_sub(1);
        while at < end && i < self.devs.len() {
            let n = end.min(self.starts[i + 1]) - at;
            if n > 0 {
                out.push(Piece {
                    dev: i,
                    lba: at - self.starts[i],
                    blocks: n,
                });
            }
            at += n;
            i += 1;
        }
        out
    }
}

#[async_trait]
impl BlockDevice for Linear {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.table().starts.last().copied().unwrap_or(0)
    }

    fn max_transfer_bytes(&self) -> u64 {
        let t = self.table();
        t.devs
            .iter()
            .map(|d| d.max_transfer_bytes())
            .min()
            .unwrap_or(u64::MAX)
    }

    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        let blocks = check_io(self, lba, buf.len())?;
        let t = self.table();
        split::read(
            &t.devs,
            &t.pieces(lba, blocks),
            self.block_size as usize,
            buf,
        )
        .await
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        let blocks = check_io(self, lba, data.len())?;
        let t = self.table();
        split::write(
            &t.devs,
            &t.pieces(lba, blocks),
            self.block_size as usize,
            data,
        )
        .await
    }

    async fn flush(&self) -> BlockResult<()> {
        split::flush(&self.table().devs).await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        let t = self.table();
        split::discard(&t.devs, &t.pieces(lba, blocks), true).await
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        let t = self.table();
        split::discard(&t.devs, &t.pieces(lba, blocks), false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{buf, MemoryDevice};

    #[tokio::test]
    async fn spans_members_and_grows_by_append() {
        let a: DeviceRef = Arc::new(MemoryDevice::new(8 * 512, 512));
        let b: DeviceRef = Arc::new(MemoryDevice::new(4 * 512, 512));
        let lin = Linear::new(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(lin.num_blocks(), 12);
        let data: Vec<u8> = (0..4 * 512).map(|i| (i / 512) as u8 + 1).collect();
        lin.write(6, Bytes::from(data.clone())).await.unwrap();
        assert_eq!(&lin.read(6, buf::alloc(2048)).await.unwrap()[..], &data[..]);
        assert_eq!(b.read(0, buf::alloc(512)).await.unwrap()[0], 3);
        assert_eq!(a.read(7, buf::alloc(512)).await.unwrap()[0], 2);
        assert!(lin.write(12, Bytes::from(vec![0; 512])).await.is_err());
        lin.append(Arc::new(MemoryDevice::new(4 * 512, 512)))
            .unwrap();
        assert_eq!(lin.num_blocks(), 16);
        lin.write(12, Bytes::from(vec![9; 1024])).await.unwrap();
        lin.discard(7, 2).await.unwrap();
        let back = lin.read(6, buf::alloc(8 * 512)).await.unwrap();
        assert_eq!(back[0], 1);
        assert!(back[512..1536].iter().all(|&x| x == 0));
        assert_eq!(back[6 * 512], 9);
    }
}
