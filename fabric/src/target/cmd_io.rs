//! NVM I/O commands: Read, Write, Flush, Write Zeroes and Dataset
//! Management (deallocate).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use raid::BlockError;

use crate::wire::le::{u32_at, u64_at};
use crate::wire::opcode::io;
use crate::wire::{Command, Status, NSID_ALL};

use super::namespace::Namespace;
use super::queue::{Failure, Outcome, Queue, Session};
use super::request::{status_of, Op, Transfer};
use super::warn_limit::WarnLimit;

/// Size of one Dataset Management range.
const DSM_RANGE_LEN: u32 = 16;

/// Parse an I/O command whose data pointer describes `sgl_len` bytes.
pub(crate) fn parse(
    q: &Queue,
    _s: &Session,
    cmd: &Command,
    sgl_len: u32,
) -> Result<(Op, Transfer), Failure> {
    let sub = &q
        .controller()
        .ok_or(Failure::from(Status::COMMAND_SEQUENCE_ERROR))?
        .subsystem;
    let namespace = || -> Result<Arc<Namespace>, Failure> {
        let ns = sub
            .namespace(cmd.nsid)
            .ok_or(Failure::from(Status::INVALID_NAMESPACE))?;
        let status = q.port.ana_state(ns.ana_group).io_status();
        if !status.is_success() {
            return Err(status.into());
        }
        Ok(ns)
    };
    let in_range = |ns: &Namespace, lba: u64, blocks: u64| -> Result<(), Failure> {
        match lba.checked_add(blocks) {
            Some(end) if end <= ns.device.num_blocks() => Ok(()),
            _ => Err(Status::LBA_OUT_OF_RANGE.into()),
        }
    };
    match cmd.opcode {
        io::READ | io::WRITE => {
            let ns = namespace()?;
            let (lba, blocks) = (cmd.slba(), cmd.nlb() as u64);
            let len = blocks * ns.block_size() as u64;
            if len > q.max_transfer() as u64 {
                return Err(Status::INVALID_FIELD.into());
            }
            in_range(&ns, lba, blocks)?;
            let len = len as u32;
            Ok(if cmd.opcode == io::READ {
                let shared = ns.device.read_shared(lba, len as usize);
                (Op::Read { ns, lba, shared }, Transfer::ToHost(len))
            } else {
                (
                    Op::Write {
                        ns,
                        lba,
                        fua: cmd.fua(),
                    },
                    Transfer::ToController(len),
                )
            })
        }
        io::FLUSH => {
            let ns = if cmd.nsid == NSID_ALL {
                None
            } else {
                Some(namespace()?)
            };
            Ok((Op::Flush { ns }, Transfer::None))
        }
        io::WRITE_ZEROES => {
            let ns = namespace()?;
            let (lba, blocks) = (cmd.slba(), cmd.nlb() as u64);
            in_range(&ns, lba, blocks)?;
            Ok((Op::WriteZeroes { ns, lba, blocks }, Transfer::None))
        }
        io::DATASET_MANAGEMENT => {
            let ns = namespace()?;
            let ranges = (cmd.cdw10 & 0xff) + 1;
            let deallocate = cmd.cdw11 & (1 << 2) != 0;
            // Hosts may send a buffer of all 256 ranges whatever NR says (Linux
            // does): take it, and use the first NR + 1.
            let need = ranges * DSM_RANGE_LEN;
            let len = if (need..=DSM_RANGE_LEN * 256).contains(&sgl_len) {
                sgl_len
            } else {
                need
            };
            Ok((
                Op::DatasetManagement {
                    ns,
                    ranges,
                    deallocate,
                },
                Transfer::ToController(len),
            ))
        }
        _ => Err(Status::INVALID_OPCODE.into()),
    }
}

fn fail(e: BlockError, is_write: bool, s: &Session) -> Failure {
    let status = status_of(&e, is_write);
    if status.sct() == crate::wire::status::sct::MEDIA {
        s.ctrl
            .subsystem
            .stats
            .media_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    match IO_FAILURE_LOG.admit() {
        Some(0) => tracing::warn!(error = %e, %status, "I/O failed"),
        Some(n) => tracing::warn!(error = %e, %status, "I/O failed ({n} more failures not logged)"),
        None => {}
    }
    status.into()
}

/// Failed I/O commands logged per second, at most (a dead or full device
/// fails every command).
static IO_FAILURE_LOG: WarnLimit = WarnLimit::new(10);

pub(crate) async fn execute(
    s: &Session,
    cmd: &Command,
    op: Op,
    data: Option<Bytes>,
    buffer: Option<BytesMut>,
) -> Result<Outcome, Failure> {
    let stats = &s.ctrl.subsystem.stats;
    match op {
        Op::Read { ns, lba, shared } => {
            let len = cmd.nlb() as usize * ns.block_size() as usize;
            let buf = match shared {
                Some(shared) => shared,
                None => {
                    let buf = buffer
                        .filter(|b| b.len() == len)
                        .unwrap_or_else(|| raid::buf::alloc(len));
                    let buf = ns
                        .device
                        .read(lba, buf)
                        .await
                        .map_err(|e| fail(e, false, s))?;
                    buf.freeze()
                }
            };
            stats.reads.fetch_add(1, Ordering::Relaxed);
            stats.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
            Ok(Outcome {
                result: 0,
                data: Some(buf),
                close_queue: false,
            })
        }
        Op::Write { ns, lba, fua } => {
            let data = data.unwrap_or_default();
            let len = data.len() as u64;
            ns.device
                .write(lba, data)
                .await
                .map_err(|e| fail(e, true, s))?;
            if fua || !s.ctrl.write_cache() {
                ns.device.flush().await.map_err(|e| fail(e, true, s))?;
            }
            stats.writes.fetch_add(1, Ordering::Relaxed);
            stats.bytes_written.fetch_add(len, Ordering::Relaxed);
            Ok(Outcome::none())
        }
        Op::Flush { ns } => {
            let targets = match ns {
                Some(ns) => vec![ns],
                None => s.ctrl.subsystem.namespaces(),
            };
            for ns in targets {
                ns.device.flush().await.map_err(|e| fail(e, true, s))?;
            }
            Ok(Outcome::none())
        }
        Op::WriteZeroes { ns, lba, blocks } => {
            ns.device
                .write_zeroes(lba, blocks)
                .await
                .map_err(|e| fail(e, true, s))?;
            Ok(Outcome::none())
        }
        Op::DatasetManagement {
            ns,
            ranges,
            deallocate,
        } => {
            let data = data.unwrap_or_default();
            if !deallocate {
                return Ok(Outcome::none());
            }
            let capacity = ns.device.num_blocks();
            let mut list = Vec::with_capacity(ranges as usize);
            for r in data
                .chunks_exact(DSM_RANGE_LEN as usize)
                .take(ranges as usize)
            {
                let (blocks, lba) = (u32_at(r, 4) as u64, u64_at(r, 8));
                if lba.checked_add(blocks).is_none_or(|end| end > capacity) {
                    return Err(Status::LBA_OUT_OF_RANGE.into());
                }
                if blocks > 0 {
                    list.push((lba, blocks));
                }
            }
            for (lba, blocks) in list {
                ns.device
                    .discard(lba, blocks)
                    .await
                    .map_err(|e| fail(e, true, s))?;
            }
            Ok(Outcome::none())
        }
        _ => Err(Status::INVALID_OPCODE.into()),
    }
}
