//! [`ThinDevice`]: one thin volume or snapshot of a [`ThinPool`].
//!
//! A request is cut at thin-block boundaries. Reads of unmapped blocks
//! return zeroes without touching the data device. Writes go in place to
//! blocks the device owns alone, and through the pool's provisioning path
//! otherwise. Discard and write-zeroes unmap whole blocks and zero partial
//! ones; they take the device's gate exclusively so that no write is still
//! in flight to a block being freed.
//!
//! The steady state (a request inside one thin block, the gate open, the
//! mapping in the device's cache, see `cache.rs`) runs in the trait
//! method's own future, with no lock and no nested future; everything else
//! takes the general, boxed path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;

use super::pool::{DevGate, ThinPool};
use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult};
use crate::gate::Pass;
use crate::split::{self, div_rem_pow2};

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
        match self.pool.lookup(&self.gate, vb) {
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

    /// Pass the device's gate, waiting while it is closed (the slow path
    /// of [`ThinDevice::pass_now`]); fails if the device was deleted.
    async fn pass(&self) -> BlockResult<Pass<'_>> {
        let pass = self.gate.io.enter().await;
        self.check_live()?;
        Ok(pass)
    }

    /// Pass the device's gate if it is open; fails if the device was
    /// deleted.
    #[inline]
    fn pass_now(&self) -> Option<BlockResult<Pass<'_>>> {
        let pass = self.gate.io.try_enter()?;
        Some(self.check_live().map(|()| pass))
    }

    #[inline]
    fn check_live(&self) -> BlockResult<()> {
        if self.gate.deleted.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        Ok(())
    }

    /// Any read: waits at the gate, cuts the request at thin blocks.
    async fn read_slow(&self, lba: u64, blocks: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        let _pass = self.pass().await?;
        let bs = self.pool.block_size as usize;
        let pieces: Vec<_> = self.pieces(lba, blocks).collect();
        let parts = split::cut(buf, pieces.iter().map(|p| p.2 as usize * bs));
        let reads = pieces
            .iter()
            .zip(parts)
            .map(|(&(vb, off, _), part)| self.read_piece(vb, off, part));
        Ok(split::glue(try_join_all(reads).await?))
    }

    /// Any write: waits at the gate, cuts the request at thin blocks and
    /// provisions or breaks sharing where needed.
    async fn write_slow(&self, lba: u64, blocks: u64, data: Bytes) -> BlockResult<()> {
        let _pass = self.pass().await?;
        let bs = self.pool.block_size as usize;
        let mut at = 0;
        let writes = self.pieces(lba, blocks).map(|(vb, off, n)| {
            let part = data.slice(at..at + n as usize * bs);
            at += n as usize * bs;
            self.pool.write_block(&self.gate, vb, off, n, Some(part))
        });
        try_join_all(writes).await.map(|_| ())
    }

    async fn unmap_range(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        let _quiet = self.gate.io.close().await;
        self.check_live()?;
        for (vb, off, n) in self.pieces(lba, blocks) {
            if n == self.pool.bpb {
                self.pool.unmap(&self.gate, vb).await?;
            } else {
                self.pool.write_block(&self.gate, vb, off, n, None).await?;
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

    async fn read(&self, lba: u64, mut buf: BytesMut) -> BlockResult<BytesMut> {
        let blocks = check_io(self, lba, buf.len())?;
        let bpb = self.pool.bpb;
        let (vb, off) = div_rem_pow2(lba, bpb);
        // One thin block, gate open (steady state): no nested future.
        if off + blocks <= bpb {
            if let Some(pass) = self.pass_now() {
                let _pass = pass?;
                let Some(m) = self.pool.lookup(&self.gate, vb) else {
                    buf.fill(0);
                    return Ok(buf);
                };
                let data = self.pool.data.as_ref();
                return data.read(m.block * bpb + off, buf).await;
            }
        }
        Box::pin(self.read_slow(lba, blocks, buf)).await
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        let blocks = check_io(self, lba, data.len())?;
        let bpb = self.pool.bpb;
        let (vb, off) = div_rem_pow2(lba, bpb);
        // One thin block of this device's alone, gate open (steady state):
        // in place, no nested future.
        if off + blocks <= bpb {
            if let Some(pass) = self.pass_now() {
                let _pass = pass?;
                if let Some(block) = self.pool.exclusive_block(&self.gate, vb) {
                    return self.pool.data.as_ref().write(block * bpb + off, data).await;
                }
            }
        }
        Box::pin(self.write_slow(lba, blocks, data)).await
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
