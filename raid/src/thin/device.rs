//! [`ThinDevice`]: one thin volume or snapshot of a [`ThinPool`].
//!
//! A request is cut at thin-block boundaries. Reads of unmapped blocks
//! return zeroes without touching the data device. Writes go in place to
//! blocks the device owns alone, and through the pool's provisioning path
//! otherwise. Discard and write-zeroes unmap whole blocks and zero partial
//! ones; they take the device's gate exclusively so that no write is still
//! in flight to a block being freed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;

use super::pool::{DevGate, ThinPool};
use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult};
use crate::split;

/// A thin device (or snapshot) in a pool.
pub struct ThinDevice {
    pool: Arc<ThinPool>,
    gate: Arc<DevGate>,
}

impl ThinDevice {
    pub(crate) fn new(pool: Arc<ThinPool>, gate: Arc<DevGate>) -> ThinDevice {
        ThinDevice { pool, gate }
    }

    /// The device id in its pool.
    pub fn id(&self) -> u64 {
        self.gate.id
    }

    /// The pool it lives in.
    pub fn pool(&self) -> &Arc<ThinPool> {
        &self.pool
    }

    fn gone(&self) -> BlockError {
        BlockError::Offline(format!("thin device {} was deleted", self.gate.id))
    }

    /// (thin block, offset in it, device blocks) per thin block touched.
    fn pieces(&self, lba: u64, blocks: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let bpb = self.pool.bpb;
        split::units(lba, blocks, bpb).map(move |(at, n)| (at / bpb, at % bpb, n))
    }

    async fn read_piece(&self, vb: u64, off: u64, mut part: BytesMut) -> BlockResult<BytesMut> {
        match self.pool.lookup(self.gate.id, vb) {
            Some(m) => {
                let data = self.pool.data.as_ref();
                data.read(m.block * self.pool.bpb + off, part).await
            }
            None => {
                part.fill(0);
                Ok(part)
            }
        }
    }

    async fn unmap_range(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        let _quiet = self.gate.io.close().await;
        if self.gate.deleted.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        let id = self.gate.id;
        for (vb, off, n) in self.pieces(lba, blocks) {
            if n == self.pool.bpb {
                self.pool.unmap(id, vb).await?;
            } else {
                self.pool.write_block(id, vb, off, n, None).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlockDevice for ThinDevice {
    fn block_size(&self) -> u32 {
        self.pool.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.gate.size.load(Ordering::SeqCst)
    }

    fn optimal_io_blocks(&self) -> u32 {
        self.pool.bpb.min(u32::MAX as u64) as u32
    }

    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        let blocks = check_io(self, lba, buf.len())?;
        let _pass = self.gate.io.enter().await;
        if self.gate.deleted.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        let bs = self.pool.block_size as usize;
        let pieces: Vec<_> = self.pieces(lba, blocks).collect();
        if let [(vb, off, _)] = pieces[..] {
            return self.read_piece(vb, off, buf).await;
        }
        let parts = split::cut(buf, pieces.iter().map(|p| p.2 as usize * bs));
        let reads = pieces
            .iter()
            .zip(parts)
            .map(|(&(vb, off, _), part)| self.read_piece(vb, off, part));
        Ok(split::glue(try_join_all(reads).await?))
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        let blocks = check_io(self, lba, data.len())?;
        let _pass = self.gate.io.enter().await;
        if self.gate.deleted.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        let bs = self.pool.block_size as usize;
        let (vb, off) = (lba / self.pool.bpb, lba % self.pool.bpb);
        if off + blocks <= self.pool.bpb {
            return self
                .pool
                .write_block(self.gate.id, vb, off, blocks, Some(data))
                .await;
        }
        let mut at = 0;
        let writes = self.pieces(lba, blocks).map(|(vb, off, n)| {
            let part = data.slice(at..at + n as usize * bs);
            at += n as usize * bs;
            self.pool.write_block(self.gate.id, vb, off, n, Some(part))
        });
        try_join_all(writes).await.map(|_| ())
    }

    /// Commits the pool.
    async fn flush(&self) -> BlockResult<()> {
        self.pool.commit().await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.unmap_range(lba, blocks).await
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.unmap_range(lba, blocks).await
    }
}
