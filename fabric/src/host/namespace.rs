//! A namespace of a remote controller as a [`BlockDevice`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use raid::{check_io, check_range, BlockDevice, BlockError, BlockResult};

use crate::transport::{HostData, TransportError};
use crate::wire::opcode::io;
use crate::wire::status::sct;
use crate::wire::{Command, Status};

use super::{ok, rw_command, HostController};

/// Most blocks one Read, Write or Write Zeroes command carries (NLB is 16 bits).
const MAX_NLB: u64 = 1 << 16;
/// Ranges per Dataset Management command.
const DSM_RANGES: usize = 256;

/// A remote namespace.
pub struct RemoteNamespace {
    ctrl: Arc<HostController>,
    nsid: u32,
    block_size: u32,
    num_blocks: AtomicU64,
    max_blocks: u64,
}

/// A namespace's size in bytes, refused when it does not fit in 64 bits
/// (the layers above compute byte offsets from it).
fn checked_size(nsid: u32, blocks: u64, block_size: u32) -> Result<u64, TransportError> {
    blocks.checked_mul(block_size as u64).ok_or_else(|| {
        TransportError::Protocol(format!(
            "namespace {nsid} reports {blocks} blocks of {block_size} bytes, more than 64-bit offsets reach"
        ))
    })
}

impl RemoteNamespace {
    /// Identify namespace `nsid` of `ctrl` and wrap it.
    pub async fn open(
        ctrl: Arc<HostController>,
        nsid: u32,
    ) -> Result<RemoteNamespace, TransportError> {
        let id = ctrl.identify_namespace(nsid).await?;
        let block_size = id.block_size();
        if block_size == 0 || id.nsze == 0 {
            return Err(TransportError::Protocol(format!(
                "namespace {nsid} is not active or has no valid format"
            )));
        }
        checked_size(nsid, id.nsze, block_size)?;
        let mdts_blocks = (ctrl.max_transfer / block_size as u64).max(1);
        Ok(RemoteNamespace {
            ctrl,
            nsid,
            block_size,
            num_blocks: AtomicU64::new(id.nsze),
            max_blocks: mdts_blocks.min(MAX_NLB),
        })
    }

    /// Namespace ID.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// The controller it is reached through.
    pub fn controller(&self) -> &Arc<HostController> {
        &self.ctrl
    }

    /// Re-read the namespace size (after the remote device grew).
    pub async fn refresh(&self) -> Result<u64, TransportError> {
        let id = self.ctrl.identify_namespace(self.nsid).await?;
        checked_size(self.nsid, id.nsze, self.block_size)?;
        self.num_blocks.store(id.nsze, Ordering::Release);
        Ok(id.nsze)
    }

    /// `(lba, blocks)` pieces of at most one command each.
    fn pieces(&self, lba: u64, blocks: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
        let mut at = 0u64;
        std::iter::from_fn(move || {
            (at < blocks).then(|| {
                let n = max.min(blocks - at);
                let p = (lba + at, n);
                at += n;
                p
            })
        })
    }
}

/// The block error for a failed remote command.
pub fn block_error(e: TransportError) -> BlockError {
    match e {
        TransportError::Status(s) if s.same_code(Status::LBA_OUT_OF_RANGE) => {
            BlockError::Remote(s.to_string())
        }
        TransportError::Status(s) if s.same_code(Status::CAPACITY_EXCEEDED) => {
            BlockError::NoSpace(format!("remote: {s}"))
        }
        TransportError::Status(s) if s.sct() == sct::PATH => {
            BlockError::Offline(format!("remote path: {s}"))
        }
        TransportError::Status(s) if s.sct() == sct::MEDIA => {
            BlockError::Medium(format!("remote: {s}"))
        }
        TransportError::Status(s) => BlockError::Remote(s.to_string()),
        other => BlockError::Offline(other.to_string()),
    }
}

#[async_trait]
impl BlockDevice for RemoteNamespace {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    fn max_transfer_bytes(&self) -> u64 {
        u64::MAX
    }

    async fn read(&self, lba: u64, mut buf: BytesMut) -> BlockResult<BytesMut> {
        let blocks = check_io(self, lba, buf.len())?;
        let bs = self.block_size;
        let parts = self
            .pieces(lba, blocks, self.max_blocks)
            .map(|(l, n)| async move {
                self.ctrl
                    .read(self.nsid, l, n as u32, bs)
                    .await
                    .map(|d| (l, d))
            });
        for (l, data) in try_join_all(parts).await.map_err(block_error)? {
            let at = ((l - lba) * bs as u64) as usize;
            let dst = buf
                .get_mut(at..at + data.len())
                .ok_or_else(|| BlockError::Remote("read returned too much data".into()))?;
            dst.copy_from_slice(&data);
        }
        Ok(buf)
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        let blocks = check_io(self, lba, data.len())?;
        let bs = self.block_size as u64;
        let parts = self.pieces(lba, blocks, self.max_blocks).map(|(l, n)| {
            let at = ((l - lba) * bs) as usize;
            let part = data.slice(at..at + (n * bs) as usize);
            self.ctrl.write(self.nsid, l, part, bs as u32)
        });
        try_join_all(parts).await.map_err(block_error).map(|_| ())
    }

    async fn flush(&self) -> BlockResult<()> {
        self.ctrl.flush(self.nsid).await.map_err(block_error)
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        let parts = self.pieces(lba, blocks, MAX_NLB).map(|(l, n)| async move {
            let cmd = rw_command(io::WRITE_ZEROES, self.nsid, l, n as u32);
            ok(self.ctrl.io(cmd, HostData::None).await?).map(|_| ())
        });
        try_join_all(parts).await.map_err(block_error).map(|_| ())
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        let ranges: Vec<(u64, u64)> = self.pieces(lba, blocks, u32::MAX as u64).collect();
        for chunk in ranges.chunks(DSM_RANGES) {
            let mut data = BytesMut::with_capacity(chunk.len() * 16);
            for (l, n) in chunk {
                data.extend_from_slice(&0u32.to_le_bytes());
                data.extend_from_slice(&(*n as u32).to_le_bytes());
                data.extend_from_slice(&l.to_le_bytes());
            }
            let cmd = Command {
                nsid: self.nsid,
                cdw10: chunk.len() as u32 - 1,
                cdw11: 1 << 2,
                ..Command::new(io::DATASET_MANAGEMENT)
            };
            ok(self
                .ctrl
                .io(cmd, HostData::Out(data.freeze()))
                .await
                .map_err(block_error)?)
            .map_err(block_error)?;
        }
        Ok(())
    }
}
