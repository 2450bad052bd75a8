//! Per-device resources shared by every queue on one RDMA device: the
//! protection domain, one completion queue with its channel, (on the target)
//! a shared receive queue with its receive buffers, and the data pool. A
//! poller task drains the completion queue and hands each completion to its
//! owner.
//!
//! When the device is removed, [`Devices::retire`](super::Devices) takes it
//! out of use: its queues close on their own removal events, the poller goes
//! on delivering their flushed completions until it holds the last
//! reference, then lets go of every resource and closes the device, so that
//! the kernel can complete the removal.
//!
//! The completion queue is sized against its queue pairs, as SPDK sizes a
//! poll group's: the shared receive queue's receives and each QP's
//! completions (on the target one per command it may serve, on the host
//! its sends and receives) reserve their entries, and the CQ grows with
//! `ibv_resize_cq` when the reservations pass its size, to twice what they
//! need if the device allows. A QP whose completions would not fit even
//! then is refused: an overrun CQ stops the whole device. A flush of a
//! failed QP can also complete its unsignaled requests; the CQ is grown
//! for those too where the device allows, but a QP is not refused for them
//! (Linux's target sizes its CQs the same way).
//!
//! The shared receive queue is created with room for many receives
//! (`SRQ_CAPACITY`, within the device's limit) but starts with
//! `--rdma-srq-size` posted; each target QP reserves a receive per command
//! of its depth, and when the reservations pass what is posted another
//! chunk of buffers is registered and posted. Without that, a host with
//! many queues (one per CPU, 128 deep) could have more commands in flight
//! than receives posted, and its sends would wait on RNR retries, slowly
//! enough for the host to time out and reset the controller.
//!
//! Polling is adaptive: while completions keep coming the poller polls,
//! yielding between polls; after a few empty polls it arms the queue and
//! sleeps on the completion channel. On a 2-core machine, busy polling would
//! starve the host side of the same machine.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::pool::{RecvBuffers, SlotPool};
use super::verbs::{
    Access, CmId, CompletionChannel, CompletionQueue, DeviceContext, DeviceKey, DeviceLimits,
    ProtectionDomain, SharedReceiveQueue, WorkCompletion,
};
use crate::transport::reschedule::reschedule;

/// Top byte of a work request id: what completed.
const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_OP: u64 = 2;
/// Receives a shared receive queue is created with room for (within the
/// device's limit): its work queue costs about 64 bytes per entry, the
/// buffers are registered only as queue pairs need them.
/// 16384 receives of 8 KiB in-capsule data pin about 134 MB at most.
const SRQ_CAPACITY: u32 = 16384;
/// How often a retired device's poller looks whether it is the last user.
const RETIRED_CHECK: Duration = Duration::from_millis(20);

/// The index part of a work request id (below its kind byte).
fn wr_index(wr_id: u64) -> u64 {
    wr_id & ((1 << KIND_SHIFT) - 1)
}

/// Work request id of receive buffer `i`.
pub fn recv_wr_id(i: u32) -> u64 {
    KIND_RECV << KIND_SHIFT | i as u64
}

/// Status of a synthetic completion: the work request chain was not posted.
pub const STATUS_NOT_POSTED: u32 = u32::MAX;
/// Status of a synthetic completion: only the head of the chain was posted
/// (its memory may still be in use).
pub const STATUS_PARTLY_POSTED: u32 = u32::MAX - 1;

/// Sizing of a device's shared resources.
#[derive(Clone, Copy, Debug)]
pub struct DeviceConfig {
    /// Completion queue entries.
    pub cq_entries: u32,
    /// Shared receive queue entries (target); 0 for none (host).
    pub srq_entries: u32,
    /// Bytes per receive buffer (command capsule plus in-capsule data).
    pub recv_size: usize,
    /// Bytes per data slot.
    pub slot_size: usize,
    /// Data slots.
    pub slots: u32,
    /// Whether peers may read and write the data slots (host side).
    pub remote_access: bool,
    /// How long the poller keeps polling after the last completion before
    /// it sleeps on the completion channel.
    pub poll_spin: Duration,
}

/// A receive delivered to the queue that owns its QP.
#[derive(Debug)]
pub struct Received {
    /// The completion.
    pub wc: WorkCompletion,
    /// For shared-receive-queue receives: the bytes, already copied out
    /// (the buffer is posted again).
    pub data: Option<Bytes>,
}

/// Shared resources of one device. Fields drop in order: receive queue and
/// buffers, data pool, completion queue, channel, then the PD (each holds
/// the device context open as long as it needs it).
pub struct Device {
    key: DeviceKey,
    /// Shared receive queue (target side).
    pub srq: Option<SharedReceiveQueue>,
    recv: Option<Receives>,
    /// Data buffers.
    pub data: Arc<SlotPool>,
    /// The completion queue every QP of the device uses.
    pub cq: CompletionQueue,
    channel: CompletionChannel,
    /// Protection domain.
    pub pd: Arc<ProtectionDomain>,
    /// Device limits.
    pub limits: DeviceLimits,
    routes: Mutex<HashMap<u32, mpsc::UnboundedSender<Received>>>,
    ops: Mutex<Slab<oneshot::Sender<WorkCompletion>>>,
    poll_spin: Duration,
    retired: CancellationToken,
    /// Completion queue entries reserved by the live QPs; the lock also
    /// serialises resizing the CQ.
    cq_reserved: Mutex<CqReserved>,
}

/// Completion queue entries the device's QPs may need.
#[derive(Default, Clone, Copy, Debug)]
struct CqReserved {
    /// In normal operation: these must fit.
    normal: u32,
    /// When every QP is flushed at once (unsignaled requests included).
    flushed: u32,
}

/// The shared receive queue's buffers: chunks of `chunk` buffers, added
/// as queue pairs need receives posted; receive `i` is buffer `i % chunk`
/// of chunk `i / chunk`.
struct Receives {
    chunk: u32,
    /// Receives the SRQ has room for.
    capacity: u32,
    /// Bytes per buffer.
    size: usize,
    chunks: Vec<OnceLock<RecvBuffers>>,
    counts: Mutex<ReceiveCounts>,
}

/// Receives posted to the SRQ and reserved by live QPs.
#[derive(Default)]
struct ReceiveCounts {
    posted: u32,
    reserved: u32,
    /// The SRQ could not grow to the reservations: warned once.
    warned: bool,
    /// A post failed part way through a chunk: no more growing (receive
    /// `i` must stay buffer `i % chunk` of its chunk).
    stuck: bool,
}

impl Receives {
    /// Buffer of receive `i`, with its index in its chunk.
    fn buffer(&self, i: u32) -> Option<(&RecvBuffers, u32)> {
        let chunk = self.chunks.get((i / self.chunk) as usize)?.get()?;
        Some((chunk, i % self.chunk))
    }
}

/// Receives held for one target QP while it lives.
pub struct RecvShare {
    dev: Arc<Device>,
    receives: u32,
}

impl Drop for RecvShare {
    fn drop(&mut self) {
        if let Some(r) = &self.dev.recv {
            let mut counts = lock(&r.counts);
            counts.reserved = counts.reserved.saturating_sub(self.receives);
        }
    }
}

/// Completion queue entries held for one QP while it lives; the owner
/// drops it after destroying the QP.
pub struct CqShare {
    dev: Arc<Device>,
    entries: CqReserved,
}

impl Drop for CqShare {
    fn drop(&mut self) {
        let mut r = lock(&self.dev.cq_reserved);
        r.normal = r.normal.saturating_sub(self.entries.normal);
        r.flushed = r.flushed.saturating_sub(self.entries.flushed);
    }
}

/// The size to resize a CQ of `capacity` entries to when `want` may be
/// needed: none when it fits (or the device allows no more), else twice
/// `want` (fewer resizes as QPs come) within `max_cqe`.
fn grown_cq_size(capacity: u32, want: u32, max_cqe: u32) -> Option<u32> {
    let size = want.saturating_mul(2).min(max_cqe);
    (want > capacity && size > capacity).then_some(size)
}

struct ChannelFd(Arc<Device>);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.channel.fd()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Device {
    /// Set up the device `id` is bound to and start its poller.
    pub fn open(id: &CmId, cfg: DeviceConfig) -> std::io::Result<Arc<Device>> {
        let context = DeviceContext::hold(id)?;
        let limits = context.limits()?;
        let pd = ProtectionDomain::new(&context)?;
        let channel = CompletionChannel::new(&context)?;
        let cq_entries = cfg.cq_entries.min(limits.max_cqe.max(1));
        let cq = CompletionQueue::new(cq_entries, &channel)?;
        let access = Access {
            remote_read: cfg.remote_access,
            remote_write: cfg.remote_access,
        };
        let data = SlotPool::new(&pd, cfg.slots, cfg.slot_size, access)?;
        let srq_entries = cfg.srq_entries.min(limits.max_srq_wr.max(1));
        let (srq, recv) = if cfg.srq_entries > 0 {
            let n = srq_entries;
            let capacity = SRQ_CAPACITY.max(n).min(limits.max_srq_wr.max(n));
            let (srq, capacity) = match SharedReceiveQueue::new(&pd, capacity) {
                Ok(srq) => (srq, capacity),
                Err(e) => {
                    tracing::warn!(error = %e, capacity, "RDMA shared receive queue of {n} only");
                    (SharedReceiveQueue::new(&pd, n)?, n)
                }
            };
            let first = RecvBuffers::new(&pd, n, cfg.recv_size)?;
            for i in 0..n {
                // SAFETY: buffer `i` is owned by the device for its lifetime
                // and only read after its receive completes.
                unsafe { srq.post_recv(recv_wr_id(i), first.sge(i))? };
            }
            let chunks: Vec<OnceLock<RecvBuffers>> =
                (0..capacity.div_ceil(n)).map(|_| OnceLock::new()).collect();
            let _ = chunks[0].set(first);
            let recv = Receives {
                chunk: n,
                capacity,
                size: cfg.recv_size,
                chunks,
                counts: Mutex::new(ReceiveCounts {
                    posted: n,
                    ..Default::default()
                }),
            };
            (Some(srq), Some(recv))
        } else {
            (None, None)
        };
        let dev = Arc::new(Device {
            key: context.key(),
            srq,
            recv,
            data,
            cq,
            channel,
            pd,
            limits,
            routes: Mutex::new(HashMap::new()),
            ops: Mutex::new(Slab::new()),
            poll_spin: cfg.poll_spin,
            retired: CancellationToken::new(),
            cq_reserved: Mutex::new(CqReserved {
                normal: srq_entries,
                flushed: srq_entries,
            }),
        });
        dev.cq.arm()?;
        // SAFETY: the fd belongs to the completion channel owned by the
        // device, which the registered object keeps alive.
        let fd =
            unsafe { AsyncFd::register_with_interest(ChannelFd(dev.clone()), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        tokio::spawn(poll_loop(fd));
        Ok(dev)
    }

    /// The device's identity.
    pub fn key(&self) -> DeviceKey {
        self.key
    }

    /// Take the device out of use (it was removed): its poller releases
    /// it once every queue on it has let go.
    pub fn retire(&self) {
        self.pd.context().mark_removed();
        self.retired.cancel();
    }

    /// Reserve completion queue entries for a QP: `normal` that its
    /// completions can take in normal operation, `flushed` when it is
    /// flushed. Grows the CQ when needed; an error when `normal` does not
    /// fit even so.
    pub fn reserve_cq(self: &Arc<Self>, normal: u32, flushed: u32) -> Result<CqShare, String> {
        self.add_cq_reservation(normal, flushed)?;
        Ok(CqShare {
            dev: self.clone(),
            entries: CqReserved { normal, flushed },
        })
    }

    /// Reserve a receive for each of a target QP's `depth` commands,
    /// posting more receive buffers to the shared receive queue when the
    /// reservations pass what is posted (within its capacity; a WARN once
    /// when they cannot be met: commands then wait on RNR retries).
    pub fn reserve_receives(self: &Arc<Self>, depth: u32) -> RecvShare {
        let share = RecvShare {
            dev: self.clone(),
            receives: depth,
        };
        let (Some(srq), Some(r)) = (&self.srq, &self.recv) else {
            return share;
        };
        let mut counts = lock(&r.counts);
        counts.reserved = counts.reserved.saturating_add(depth);
        let before = counts.posted;
        while counts.reserved > counts.posted && counts.posted < r.capacity && !counts.stuck {
            let first = counts.posted;
            let count = r.chunk.min(r.capacity - first);
            let Some(slot) = r.chunks.get((first / r.chunk) as usize) else {
                break;
            };
            // Registered once per chunk (kept if the completion queue has
            // no room for them yet, for the next try).
            let buffers = match slot.get() {
                Some(b) => b,
                None => match RecvBuffers::new(&self.pd, count, r.size) {
                    Ok(b) => slot.get_or_init(|| b),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot register more shared receive buffers");
                        break;
                    }
                },
            };
            if let Err(e) = self.add_cq_reservation(count, count) {
                tracing::warn!(error = %e, "no room for more shared receives' completions");
                break;
            }
            let mut posted = 0;
            for i in 0..count {
                // SAFETY: the chunk's buffers are owned by the device for
                // its lifetime and only read after their receive completes.
                match unsafe { srq.post_recv(recv_wr_id(first + i), buffers.sge(i)) } {
                    Ok(()) => posted += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot post a shared receive");
                        break;
                    }
                }
            }
            counts.posted += posted;
            if posted < count {
                counts.stuck = true;
                break;
            }
        }
        if counts.posted > before {
            tracing::info!(
                from = before,
                posted = counts.posted,
                reserved = counts.reserved,
                "RDMA shared receive queue grown"
            );
        }
        if counts.reserved > counts.posted && !counts.warned {
            counts.warned = true;
            tracing::warn!(
                posted = counts.posted,
                reserved = counts.reserved,
                "the RDMA shared receive queue holds fewer receives than its queue pairs' \
                 commands: hosts' commands may wait on RNR retries"
            );
        }
        share
    }

    /// Add `normal` and `flushed` to the completion queue's reservations,
    /// growing it when needed; an error when `normal` does not fit even so.
    fn add_cq_reservation(&self, normal: u32, flushed: u32) -> Result<(), String> {
        let mut r = lock(&self.cq_reserved);
        let need = CqReserved {
            normal: r.normal.saturating_add(normal),
            flushed: r.flushed.saturating_add(flushed),
        };
        let capacity = self.cq.capacity();
        let want = need.flushed.max(need.normal);
        if let Some(size) = grown_cq_size(capacity, want, self.limits.max_cqe) {
            match self.cq.resize(size) {
                Ok(()) => {
                    tracing::info!(
                        from = capacity,
                        to = self.cq.capacity(),
                        "RDMA completion queue grown"
                    );
                    // The poller may be asleep on the armed queue; whether
                    // a resize keeps the arm is the provider's business.
                    if let Err(e) = self.cq.arm() {
                        tracing::warn!(error = %e, "cannot arm the resized completion queue");
                    }
                }
                Err(e) => tracing::warn!(error = %e, size, "cannot grow the RDMA completion queue"),
            }
        }
        let capacity = self.cq.capacity();
        if need.normal > capacity {
            return Err(format!(
                "the completion queue holds {capacity} entries and its queues would need {}",
                need.normal
            ));
        }
        if need.flushed > capacity {
            tracing::debug!(
                capacity,
                flushed = need.flushed,
                "RDMA completion queue smaller than a flush of every queue pair"
            );
        }
        *r = need;
        Ok(())
    }

    /// Deliver receives of QP `qp_num` to `tx`.
    pub fn route(&self, qp_num: u32, tx: mpsc::UnboundedSender<Received>) {
        lock(&self.routes).insert(qp_num, tx);
    }

    /// Stop delivering receives of QP `qp_num`.
    pub fn unroute(&self, qp_num: u32) {
        lock(&self.routes).remove(&qp_num);
    }

    /// A work request id whose completion arrives on the returned receiver.
    pub fn op(&self) -> (u64, oneshot::Receiver<WorkCompletion>) {
        let (tx, rx) = oneshot::channel();
        let key = lock(&self.ops).insert(tx) as u64;
        (KIND_OP << KIND_SHIFT | key, rx)
    }

    /// Forget an op whose work request could not be posted.
    pub fn cancel_op(&self, wr_id: u64) {
        lock(&self.ops).try_remove(wr_index(wr_id) as usize);
    }

    /// Complete an op with `status` without the device (its chain was not
    /// posted: [`STATUS_NOT_POSTED`], [`STATUS_PARTLY_POSTED`]).
    pub fn fail_op(&self, wr_id: u64, status: u32) {
        let tx = lock(&self.ops).try_remove(wr_index(wr_id) as usize);
        if let Some(tx) = tx {
            let _ = tx.send(WorkCompletion {
                wr_id,
                status,
                byte_len: 0,
                qp_num: 0,
                invalidated_rkey: None,
            });
        }
    }

    fn dispatch(&self, wc: WorkCompletion) {
        let kind = wc.wr_id >> KIND_SHIFT;
        let index = wr_index(wc.wr_id);
        match kind {
            KIND_OP => {
                if let Some(tx) = lock(&self.ops).try_remove(index as usize) {
                    let _ = tx.send(wc);
                }
            }
            KIND_RECV => {
                let data = match (
                    &self.srq,
                    self.recv.as_ref().and_then(|r| r.buffer(index as u32)),
                ) {
                    (Some(srq), Some((recv, i))) => {
                        let data = if wc.ok() {
                            recv.take(i, wc.byte_len as usize)
                        } else {
                            None
                        };
                        // SAFETY: the buffer's contents were copied out above;
                        // it is handed back to the receive queue untouched.
                        if let Err(e) = unsafe { srq.post_recv(wc.wr_id, recv.sge(i)) } {
                            tracing::error!(error = %e, "cannot repost a shared receive buffer");
                        }
                        if !wc.ok() {
                            return;
                        }
                        data
                    }
                    _ => None,
                };
                let route = lock(&self.routes).get(&wc.qp_num).cloned();
                match route {
                    Some(tx) => {
                        let _ = tx.send(Received { wc, data });
                    }
                    None => {
                        tracing::debug!(qp = wc.qp_num, "receive for a queue pair that is gone")
                    }
                }
            }
            // Unsignaled requests (RDMA READs and WRITEs of a chain) carry
            // id 0 and complete visibly only in error, flushed when their
            // queue pair closes.
            0 => tracing::debug!(
                status = wc.status,
                "unsignaled work request completed in error"
            ),
            _ => tracing::error!(
                wr_id = wc.wr_id,
                "completion with an unknown work request id"
            ),
        }
    }
}

async fn poll_loop(fd: AsyncFd<ChannelFd>) {
    let dev = fd.get_ref().0.clone();
    let mut wcs = Vec::with_capacity(super::verbs::POLL_BATCH);
    let mut last_completion = Instant::now();
    loop {
        match dev.cq.poll(&mut wcs) {
            Ok(0) => {}
            Ok(_) => {
                last_completion = Instant::now();
                for wc in wcs.drain(..) {
                    dev.dispatch(wc);
                }
                tokio::task::yield_now().await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "polling the completion queue failed; RDMA device stopped");
                return;
            }
        }
        // A retired device is released once only this task holds it (the
        // registered fd and `dev`): no queue can post to it any more.
        let retired = dev.retired.is_cancelled();
        if retired && Arc::strong_count(&dev) <= 2 {
            break;
        }
        if last_completion.elapsed() < dev.poll_spin {
            // Let the tasks just woken run, then poll again; no system call
            // (tokio's `yield_now` would poll the I/O driver each time,
            // one `epoll_wait` per empty poll).
            reschedule().await;
            continue;
        }
        // Idle: arm, poll once more (a completion may have slipped in before
        // arming), then sleep until the channel fires.
        if let Err(e) = dev.cq.arm() {
            tracing::error!(error = %e, "cannot arm the completion queue; RDMA device stopped");
            return;
        }
        if matches!(dev.cq.poll(&mut wcs), Ok(n) if n > 0) {
            for wc in wcs.drain(..) {
                dev.dispatch(wc);
            }
            continue;
        }
        tokio::select! {
            ready = fd.readable() => match ready {
                Ok(mut guard) => {
                    guard.clear_ready();
                    dev.channel.drain(&dev.cq);
                    last_completion = Instant::now();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot wait on the completion channel; RDMA device stopped");
                    return;
                }
            },
            _ = dev.retired.cancelled(), if !retired => {
                tracing::warn!("RDMA device removed; it is released once its queues have closed");
            }
            _ = tokio::time::sleep(RETIRED_CHECK), if retired => {}
        }
    }
    // Drop the last references: the device's resources go, and its context
    // with the last of them (buffers still lent out, such as write data
    // held by a backend, go when they are returned).
    drop(dev);
    drop(fd);
    tracing::info!("RDMA device released");
}

#[cfg(test)]
mod tests {
    use super::grown_cq_size;

    #[test]
    fn the_completion_queue_grows_to_twice_its_need_within_the_device_limit() {
        assert_eq!(grown_cq_size(16384, 16384, 32767), None, "fits");
        assert_eq!(grown_cq_size(16384, 16385, 32767), Some(32767));
        assert_eq!(grown_cq_size(16384, 9000, 4_194_303), None);
        assert_eq!(grown_cq_size(1024, 3000, 4_194_303), Some(6000));
        assert_eq!(grown_cq_size(32767, 40000, 32767), None, "at the limit");
        assert_eq!(grown_cq_size(100, u32::MAX, u32::MAX), Some(u32::MAX));
    }
}
