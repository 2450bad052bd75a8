//! The NVMe/RDMA target: a listener per port and a task per queue pair.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Semaphore};

use crate::target::queue::STALLED;
use crate::target::{Port, Queue, Response, Target, Transfer, TransportCaps};
use crate::transport::read_buffers::ReadBuffers;
use crate::transport::{ListenerHandle, TransportError};
use crate::wire::completion::CQE_SIZE;
use crate::wire::rdma::{encode_accept, encode_reject, reject, ConnectRequest};
use crate::wire::sgl::{kind, subtype, SglDescriptor};
use crate::wire::{Command, Status};

use super::device::{
    CqShare, Device, Received, RecvShare, STATUS_NOT_POSTED, STATUS_PARTLY_POSTED,
};
use super::events::CmEvents;
use super::pool::PoolBuf;
use super::verbs::{
    CmEvent, CmEventKind, CmId, QpCaps, QueuePair, SendOp, SendWr, Sge, WorkCompletion,
};
use super::Devices;

/// Admin queues have at most this many entries (the fabrics minimum the
/// Linux host uses; larger requests are rejected).
const ADMIN_QUEUE_ENTRIES: u32 = 32;
/// How long a closing connection waits for its in-flight commands.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a listener whose device was removed tries its address again.
const RELISTEN_INTERVAL: Duration = Duration::from_secs(1);

type Connections = Arc<Mutex<HashMap<usize, mpsc::UnboundedSender<CmEventKind>>>>;

/// Listen on `port`'s address; with `wait`, a machine without an RDMA
/// device yet gets a listener that waits for one (the port is advertised
/// once it serves), else that is an error.
pub(super) async fn listen(
    devices: Arc<Devices>,
    caps: TransportCaps,
    target: Arc<Target>,
    port: Arc<Port>,
    wait: bool,
) -> Result<ListenerHandle, TransportError> {
    let addr = port.address();
    let sock: SocketAddr = addr
        .socket_string()
        .parse()
        .map_err(|_| TransportError::Unavailable(format!("bad RDMA address {addr}")))?;
    let (events, id) = if wait && !super::RdmaTransport::available() {
        tracing::warn!(%addr, "no RDMA device yet: this listener waits for one (TCP listeners go on)");
        target.remove_port(port.id);
        (None, None)
    } else {
        let events = CmEvents::new().map_err(|e| TransportError::io("rdma_cm event channel", e))?;
        let id = bind_and_listen(&events, sock)
            .map_err(|e| TransportError::io(format!("cannot listen on {addr}"), e))?;
        if let Some(local) = id.local_addr() {
            port.set_bound_port(local.port());
        }
        (Some(events), Some(id))
    };
    let local = port.address();
    let token = target.shutdown_token().child_token();
    let stop = token.clone();
    let task = tokio::spawn(async move {
        let conns: Connections = Arc::new(Mutex::new(HashMap::new()));
        let mut events = events;
        let mut listening = id;
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break,
                ev = next_event(events.as_ref()) => ev,
                _ = tokio::time::sleep(RELISTEN_INTERVAL), if listening.is_none() => {
                    if events.is_none() && super::RdmaTransport::available() {
                        events = CmEvents::new()
                            .inspect_err(|e| tracing::debug!(error = %e, "no rdma_cm event channel yet"))
                            .ok();
                    }
                    if let Some(events) = &events {
                        listening = relisten(events, &target, &port);
                    }
                    continue;
                }
            };
            match ev {
                Ok(mut ev) if ev.kind == CmEventKind::ConnectRequest => {
                    // An event came from the channel, so there is one.
                    let id = events.as_ref().and_then(|e| ev.take_new_id(e.channel()));
                    if let Some(id) = id {
                        accept(&devices, &target, &port, caps, &conns, id, &ev);
                    }
                }
                // The device is going away: give up the listening id and the
                // device (the kernel waits for every user to let go), stop
                // advertising the port, and listen again once the address
                // is back on a device. Connections end on their own removal
                // events.
                Ok(ev)
                    if ev.kind == CmEventKind::DeviceRemoval
                        && listening.as_ref().is_some_and(|l| l.key() == ev.id_key) =>
                {
                    tracing::error!(address = %port.address(), "RDMA device removed; this listener pauses until the device is back (TCP listeners go on)");
                    target.remove_port(port.id);
                    if let Some(id) = listening.take() {
                        if let Some(key) = id.device() {
                            devices.retire(key);
                        }
                        destroy(id);
                    }
                }
                Ok(ev) => route_event(&conns, &ev),
                Err(e) => {
                    tracing::error!(error = %e, "rdma_cm events failed; listener stopped");
                    break;
                }
            }
        }
    });
    Ok(ListenerHandle { local, token, task })
}

/// The next event of `events`; never, without a channel.
async fn next_event(events: Option<&CmEvents>) -> std::io::Result<CmEvent> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// A listening id on `addr`.
fn bind_and_listen(events: &CmEvents, addr: SocketAddr) -> std::io::Result<CmId> {
    let id = CmId::new(events.channel())?;
    id.bind(addr)?;
    id.listen(128)?;
    Ok(id)
}

/// Listen on `port`'s address again after its device was removed; the port
/// is advertised again once that works (the device, or another one with the
/// address, is back).
fn relisten(events: &CmEvents, target: &Target, port: &Arc<Port>) -> Option<CmId> {
    let addr = port.address();
    let sock = addr.socket_string().parse().ok()?;
    match bind_and_listen(events, sock) {
        Ok(id) => {
            // A port 0 listener gets a port of its own each time.
            if let Some(local) = id.local_addr() {
                port.set_bound_port(local.port());
            }
            tracing::info!(address = %port.address(), "RDMA device back; the listener serves again");
            target.restore_port(port.clone());
            Some(id)
        }
        Err(e) => {
            tracing::debug!(address = %addr, error = %e, "RDMA address not on a device yet");
            None
        }
    }
}

fn route_event(conns: &Connections, ev: &CmEvent) {
    let tx = conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&ev.id_key)
        .cloned();
    match tx {
        Some(tx) => {
            let _ = tx.send(ev.kind);
        }
        None => tracing::debug!(kind = ?ev.kind, "rdma_cm event for no connection"),
    }
}

/// Destroy an id off the runtime threads (rdma_destroy_id may block until
/// its events are acknowledged).
fn destroy(id: CmId) {
    tokio::task::spawn_blocking(move || drop(id));
}

fn refuse(id: CmId, status: u16, why: &str) {
    tracing::warn!(status, why, peer = ?id.peer_addr(), "rejecting an RDMA connection");
    let _ = id.reject(&encode_reject(status));
    destroy(id);
}

fn accept(
    devices: &Arc<Devices>,
    target: &Arc<Target>,
    port: &Arc<Port>,
    caps: TransportCaps,
    conns: &Connections,
    id: CmId,
    ev: &CmEvent,
) {
    let req = match ConnectRequest::decode(&ev.private_data) {
        Ok(r) => r,
        Err(status) => return refuse(id, status, "malformed private data"),
    };
    let depth = req.hsqsize as u32 + 1;
    let max = if req.qid == 0 {
        ADMIN_QUEUE_ENTRIES
    } else {
        target.config().max_queue_entries as u32
    };
    if depth < 2 || depth > max {
        return refuse(id, reject::INVALID_HSQSIZE, "host SQ size out of range");
    }
    if (req.hrqsize as u32) < depth {
        return refuse(
            id,
            reject::INVALID_HRQSIZE,
            "host RQ size smaller than its SQ",
        );
    }
    let dev = match devices.device(&id, true) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "RDMA device set-up failed");
            return refuse(id, reject::NO_RESOURCES, "device set-up failed");
        }
    };
    // The send queue is bounded by the device.
    let per_cmd = send_wrs_per_command(
        target.config().max_transfer,
        dev.data.slot_size(),
        caps.sgl_descriptors,
    );
    let send_wr = depth
        .saturating_mul(per_cmd)
        .min(dev.limits.max_qp_wr.max(16));
    // A command has one signaled request in flight at a time (its READ
    // chain's or its response's), and a queue serves at most twice its
    // depth of commands (`Queue::max_outstanding`) within its send queue;
    // a flush completes all of the send queue.
    let cq_share = match dev.reserve_cq((2 * depth).min(send_wr), send_wr) {
        Ok(share) => share,
        Err(why) => {
            tracing::error!(why, "no room for another queue pair's completions");
            return refuse(id, reject::NO_RESOURCES, "completion queue full");
        }
    };
    // A receive posted for each command the host may send.
    let recv_share = dev.reserve_receives(depth);
    let qp_caps = QpCaps {
        max_send_wr: send_wr,
        max_recv_wr: 0,
        max_sge: 1,
        max_inline_data: 64,
    };
    let qp = match id.create_qp(&dev.pd, &dev.cq, dev.srq.as_ref(), qp_caps) {
        Ok(qp) => qp,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a queue pair");
            return refuse(id, reject::NO_RESOURCES, "queue pair creation failed");
        }
    };
    let (rx_tx, rx) = mpsc::unbounded_channel();
    dev.route(qp.num(), rx_tx);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.key(), ev_tx);
    // rdma_cm reports the request from our side: `initiator_depth` is how
    // many RDMA READs we may have outstanding (the host's responder
    // resources), `responder_resources` how many the host will issue.
    let responder = ev.responder_resources.min(dev.limits.max_qp_rd_atom);
    let initiator = ev.initiator_depth.min(dev.limits.max_qp_init_rd_atom);
    if let Err(e) = id.accept(&encode_accept(depth as u16), responder, initiator) {
        tracing::warn!(error = %e, "rdma_accept failed");
        dev.unroute(qp.num());
        conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id.key());
        destroy(id);
        return;
    }
    tracing::debug!(qid = req.qid, depth, peer = ?id.peer_addr(), "RDMA queue accepted");
    let conn = Arc::new(Conn {
        core: Queue::new(target.clone(), port.clone(), caps),
        qp,
        sq: Arc::new(Semaphore::new(send_wr as usize)),
        sq_entries: send_wr as usize,
        depth,
        dev,
        max_descriptors: caps.sgl_descriptors as usize,
        read_buffers: ReadBuffers::default(),
        posts: Mutex::default(),
        held_buffers: Mutex::default(),
        _cq_share: cq_share,
        _recv_share: recv_share,
    });
    tokio::spawn(run(conn, id, rx, ev_rx, conns.clone(), devices.clone()));
}

/// Send work requests one command may need: its data moves in one RDMA
/// READ or WRITE per stretch that lies in one data slot and one host
/// descriptor (at most slots + descriptors - 1 stretches), then its
/// response.
fn send_wrs_per_command(max_transfer: u32, slot_size: usize, descriptors: u8) -> u32 {
    let slots = (max_transfer as usize).div_ceil(slot_size.max(1));
    u32::try_from(slots)
        .unwrap_or(u32::MAX)
        .saturating_add(descriptors.max(1) as u32)
}

/// One queue pair's connection.
struct Conn {
    core: Arc<Queue>,
    qp: QueuePair,
    dev: Arc<Device>,
    /// Free send queue entries.
    sq: Arc<Semaphore>,
    /// Send queue entries in all.
    sq_entries: usize,
    /// Queue entries the host asked for in its connect request.
    depth: u32,
    max_descriptors: usize,
    /// Buffers reads land in before they are copied into a registered slot.
    read_buffers: ReadBuffers,
    /// Work requests queued by commands, posted by the connection task.
    posts: Mutex<PostQueue>,
    /// Buffers a failed post may still use: they go back to the pool when
    /// the connection drops, after its queue pair was destroyed.
    held_buffers: Mutex<Vec<PoolBuf>>,
    /// The QP's completion queue entries, given back with the connection.
    _cq_share: CqShare,
    /// The QP's share of the shared receives, given back with it.
    _recv_share: RecvShare,
}

/// Work request chains waiting to be posted. Commands queue theirs while
/// the connection task polls them, and the task posts all that is queued
/// with one `ibv_post_send` (one doorbell; on rxe, one system call) before
/// it waits again, instead of one per command.
#[derive(Default)]
struct PostQueue {
    wrs: Vec<SendWr>,
    /// Per chain: its first request and the id of its signaled last one.
    chains: Vec<(usize, u64)>,
    /// Inline payloads (response capsules): the request and its bytes,
    /// owned here until the post has copied them.
    inline: Vec<(usize, [u8; CQE_SIZE])>,
}

/// Why posting work requests and waiting for them failed.
struct PostFailure {
    reason: String,
    /// Whether requests may still use their memory (part of a chain was
    /// posted, or its completion never came): the buffers must not go back
    /// to the pool while the queue pair lives.
    memory_in_use: bool,
    /// Whether the request was flushed because the queue pair had already
    /// gone to the error state (the host disconnected or the queue is
    /// closing): expected, not worth a warning.
    queue_closed: bool,
}

impl PostFailure {
    fn before_posting(reason: impl Into<String>) -> PostFailure {
        PostFailure {
            reason: reason.into(),
            memory_in_use: false,
            queue_closed: false,
        }
    }

    /// Log why a command's transfer failed (its queue closes).
    fn log(&self, what: &str, cid: u16) {
        if self.queue_closed {
            tracing::debug!(error = %self, cid, "{what} flushed: the queue was already closing");
        } else {
            tracing::warn!(error = %self, cid, "{what} failed; closing the queue");
        }
    }
}

impl std::fmt::Display for PostFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

type Inflight = FuturesUnordered<futures::future::BoxFuture<'static, bool>>;

/// The connection's commands in flight; each poll of them ends by posting
/// the work requests they queued.
struct Commands {
    futs: Inflight,
    conn: Arc<Conn>,
}

impl Commands {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<bool>> {
        let r = self.futs.poll_next_unpin(cx);
        self.conn.flush_posts();
        r
    }

    /// The next command to finish: whether it closes the queue.
    async fn next(&mut self) -> Option<bool> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Wait for every command to finish.
    async fn drain(&mut self) {
        while self.next().await.is_some() {}
    }

    /// Start serving a received capsule; `Err` when the host is past its
    /// queue depth (commands hold memory until their response is sent, so
    /// such a host is closed, not served).
    fn start(&mut self, received: Received) -> Result<(), &'static str> {
        let Received {
            data: Some(capsule),
            ..
        } = received
        else {
            return Ok(());
        };
        // Within twice the RDMA depth too, whatever the Connect's SQ size:
        // the completion queue's share was reserved for that.
        let max =
            (2 * self.conn.depth as usize).min(self.conn.core.max_outstanding(self.conn.depth));
        if self.futs.len() >= max {
            return Err("host exceeded its queue depth");
        }
        self.futs.push(Box::pin(handle(self.conn.clone(), capsule)));
        Ok(())
    }
}

async fn run(
    conn: Arc<Conn>,
    id: CmId,
    mut rx: mpsc::UnboundedReceiver<Received>,
    mut events: mpsc::UnboundedReceiver<CmEventKind>,
    conns: Connections,
    devices: Arc<Devices>,
) {
    let mut commands = Commands {
        futs: FuturesUnordered::new(),
        conn: conn.clone(),
    };
    let token = conn.core.token().clone();
    // One waiter for the whole connection, not one registered and dropped
    // per loop turn (a lock each way, per command).
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    let why = loop {
        tokio::select! {
            r = rx.recv() => match r {
                // Take every capsule already delivered, so that their
                // commands run, and post, together.
                Some(_) if conn.core.stalled_past_keep_alive() => break STALLED,
                Some(received) => {
                    let mut next = Some(received);
                    let mut refused = None;
                    while let Some(received) = next.take() {
                        if let Err(why) = commands.start(received) {
                            refused = Some(why);
                            break;
                        }
                        next = rx.try_recv().ok();
                    }
                    if let Some(why) = refused {
                        break why;
                    }
                }
                None => break "receive route closed",
            },
            Some(close) = commands.next(), if !commands.futs.is_empty() => {
                if close {
                    break "queue closed by command";
                }
            }
            ev = events.recv() => match ev {
                Some(CmEventKind::Established) => {}
                Some(CmEventKind::DeviceRemoval) => {
                    devices.retire(conn.dev.key());
                    break "device removed";
                }
                Some(kind) => break match kind {
                    CmEventKind::Disconnected => "host disconnected",
                    _ => "connection error",
                },
                None => break "listener stopped",
            },
            _ = &mut cancelled => break "controller or target shut down",
            // The timer only runs until Connect (no timer work per command).
            _ = conn.core.connect_timed_out(), if conn.core.qid().is_none() => {
                break "no Connect command in time"
            }
        }
    };
    conn.core.close();
    id.disconnect();
    conn.dev.unroute(conn.qp.num());
    conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id.key());
    // Every posted work request completes (flushed if need be) once the QP is
    // in the error state; buffers go back only after that. A command stuck
    // in its backend keeps the QP (it may still post) until it finishes.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, commands.drain()).await;
    if drained.is_err() {
        tracing::error!(qid = ?conn.core.qid(), "in-flight RDMA commands did not finish; the queue pair and its buffers stay until they do");
        tokio::spawn(async move {
            commands.drain().await;
            drop(commands);
            destroy_queue_pair(id, conn, why).await;
        });
        return;
    }
    drop(commands);
    destroy_queue_pair(id, conn, why).await;
}

/// Destroy a closed connection's id and QP, then let go of the connection:
/// of the device the QP was created on, and of the buffers failed posts
/// left in use.
async fn destroy_queue_pair(id: CmId, conn: Arc<Conn>, why: &str) {
    let _ = tokio::task::spawn_blocking(move || drop(id)).await;
    let pool = conn.dev.data.clone();
    drop(conn);
    tracing::info!(
        why,
        free_slots = pool.free_slots(),
        slots = pool.slots(),
        "RDMA queue closed"
    );
}

/// Where a command's data is.
enum DataRef {
    None,
    InCapsule(Bytes),
    Remote {
        ranges: Vec<(u64, u32, u32)>,
        invalidate: Option<u32>,
    },
}

impl DataRef {
    fn invalidate(&self) -> Option<u32> {
        match self {
            DataRef::Remote { invalidate, .. } => *invalidate,
            _ => None,
        }
    }
}

/// Read the data pointer: keyed (remote), in-capsule, or a last segment of
/// keyed descriptors in the capsule. Returns the data reference and its length.
fn parse_sgl(
    sgl: &SglDescriptor,
    inline: &Bytes,
    max_inline: usize,
    max_descriptors: usize,
) -> Result<(DataRef, u32), Status> {
    match (sgl.kind(), sgl.subtype()) {
        (kind::KEYED_DATA_BLOCK, subtype::ADDRESS | subtype::INVALIDATE) => {
            if sgl.length == 0 {
                return Ok((DataRef::None, 0));
            }
            let invalidate = (sgl.subtype() == subtype::INVALIDATE).then_some(sgl.key);
            Ok((
                DataRef::Remote {
                    ranges: vec![(sgl.address, sgl.length, sgl.key)],
                    invalidate,
                },
                sgl.length,
            ))
        }
        (kind::DATA_BLOCK, subtype::OFFSET) => {
            let off = usize::try_from(sgl.address).map_err(|_| Status::SGL_INVALID_OFFSET)?;
            let len = sgl.length as usize;
            if off > inline.len() {
                return Err(Status::SGL_INVALID_OFFSET);
            }
            if off + len > inline.len() || len > max_inline {
                return Err(Status::SGL_INVALID_DATA_LENGTH);
            }
            Ok((DataRef::InCapsule(inline.slice(off..off + len)), sgl.length))
        }
        (kind::LAST_SEGMENT, subtype::OFFSET) => {
            let off = usize::try_from(sgl.address).map_err(|_| Status::SGL_INVALID_OFFSET)?;
            let len = sgl.length as usize;
            let list = inline
                .get(off..off.saturating_add(len))
                .ok_or(Status::SGL_INVALID_OFFSET)?;
            let descs = SglDescriptor::decode_list(list).ok_or(Status::SGL_INVALID_LAST_SEGMENT)?;
            if descs.is_empty() || descs.len() > max_descriptors {
                return Err(Status::SGL_INVALID_COUNT);
            }
            let mut total = 0u64;
            let mut ranges = Vec::with_capacity(descs.len());
            for d in &descs {
                if d.kind() != kind::KEYED_DATA_BLOCK
                    || !matches!(d.subtype(), subtype::ADDRESS | subtype::INVALIDATE)
                {
                    return Err(Status::SGL_INVALID_TYPE);
                }
                total += d.length as u64;
                ranges.push((d.address, d.length, d.key));
            }
            let total = u32::try_from(total).map_err(|_| Status::SGL_INVALID_DATA_LENGTH)?;
            let invalidate = match descs.as_slice() {
                [d] if d.subtype() == subtype::INVALIDATE => Some(d.key),
                _ => None,
            };
            Ok((DataRef::Remote { ranges, invalidate }, total))
        }
        _ => Err(Status::SGL_INVALID_TYPE),
    }
}

/// RDMA READ or WRITE work requests moving the local `pieces` (in order) to
/// or from the host's `ranges`; zero-length ranges take no request.
fn transfer_wrs(
    pieces: impl Iterator<Item = Sge>,
    ranges: &[(u64, u32, u32)],
    read: bool,
) -> Vec<SendWr> {
    let mut wrs = Vec::new();
    let (mut r, mut r_off) = (0usize, 0u64);
    for sge in pieces {
        let mut done = 0u32;
        while done < sge.len {
            while ranges.get(r).is_some_and(|&(_, len, _)| len == 0) {
                r += 1;
            }
            let Some(&(addr, len, rkey)) = ranges.get(r) else {
                return wrs;
            };
            let n = (sge.len - done).min((len as u64 - r_off) as u32);
            let remote = addr.wrapping_add(r_off);
            let op = if read {
                SendOp::Read { addr: remote, rkey }
            } else {
                SendOp::Write { addr: remote, rkey }
            };
            wrs.push(SendWr {
                wr_id: 0,
                op,
                sge: Sge {
                    addr: sge.addr + done as u64,
                    len: n,
                    lkey: sge.lkey,
                },
                signaled: false,
                inline: false,
            });
            done += n;
            r_off += n as u64;
            if r_off == len as u64 {
                r += 1;
                r_off = 0;
            }
        }
    }
    wrs
}

impl Conn {
    /// Give up `buf` after a failed post: back to the pool at once if no
    /// work request can touch it any more; otherwise held by the
    /// connection until its queue pair is destroyed (an RDMA READ still
    /// landing in a buffer handed to another command would corrupt that
    /// command's data).
    fn release_after_failure(&self, failure: &PostFailure, buf: PoolBuf) {
        if failure.memory_in_use {
            tracing::warn!(
                "work requests may still use an RDMA buffer; it returns when the queue pair is gone"
            );
            self.held_buffers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buf);
        }
    }

    fn posts(&self) -> MutexGuard<'_, PostQueue> {
        self.posts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Post every queued chain with one doorbell. A chain the device
    /// refused completes with a synthetic status (not or partly posted).
    fn flush_posts(&self) {
        let mut q = self.posts();
        if q.wrs.is_empty() {
            return;
        }
        let PostQueue {
            wrs,
            chains,
            inline,
        } = &mut *q;
        for (i, bytes) in inline.iter() {
            if let Some(wr) = wrs.get_mut(*i) {
                wr.sge.addr = bytes.as_ptr() as u64;
            }
        }
        // SAFETY: every SGE is inline data owned by the queue until this
        // call returns (copied by the post), or memory of a PoolBuf kept by
        // the command that queued the chain until its signaled completion
        // (`post_and_wait`), which comes after every earlier request of the
        // chain; a chain posted only in part completes with
        // STATUS_PARTLY_POSTED, and its command leaves the memory with the
        // connection until the QP is destroyed (`memory_in_use`).
        if let Err(e) = unsafe { self.qp.post_send(wrs) } {
            tracing::warn!(error = %e, requests = wrs.len(), "posting queued work requests failed");
            for (k, &(start, wr_id)) in chains.iter().enumerate() {
                let end = chains.get(k + 1).map_or(wrs.len(), |c| c.0);
                if end <= e.posted {
                    continue;
                }
                let status = if start < e.posted {
                    STATUS_PARTLY_POSTED
                } else {
                    STATUS_NOT_POSTED
                };
                self.dev.fail_op(wr_id, status);
            }
        }
        wrs.clear();
        chains.clear();
        inline.clear();
    }

    /// Queue `wrs` with the last one signaled (carrying `inline` as its
    /// data if given), and wait for its completion. The connection task
    /// posts the chain.
    async fn post_and_wait(
        &self,
        mut wrs: Vec<SendWr>,
        inline: Option<[u8; CQE_SIZE]>,
    ) -> Result<WorkCompletion, PostFailure> {
        // A chain longer than the send queue would wait for ever for
        // entries that never all come free.
        if wrs.len() > self.sq_entries {
            return Err(PostFailure::before_posting(format!(
                "{} work requests for one command exceed the send queue of {}",
                wrs.len(),
                self.sq_entries
            )));
        }
        let Some(last) = wrs.last_mut() else {
            return Err(PostFailure::before_posting("nothing to post"));
        };
        let (wr_id, done) = self.dev.op();
        last.wr_id = wr_id;
        last.signaled = true;
        let permits = match self.sq.acquire_many(wrs.len() as u32).await {
            Ok(p) => p,
            Err(_) => {
                self.dev.cancel_op(wr_id);
                return Err(PostFailure::before_posting("send queue closed"));
            }
        };
        {
            let mut q = self.posts();
            let start = q.wrs.len();
            if let Some(bytes) = inline {
                let at = start + wrs.len() - 1;
                q.inline.push((at, bytes));
            }
            q.chains.push((start, wr_id));
            q.wrs.append(&mut wrs);
        }
        let Ok(wc) = done.await else {
            return Err(PostFailure {
                reason: "completion lost".into(),
                memory_in_use: true,
                queue_closed: false,
            });
        };
        drop(permits);
        match wc.status {
            _ if wc.ok() => Ok(wc),
            STATUS_NOT_POSTED => Err(PostFailure::before_posting("post failed")),
            STATUS_PARTLY_POSTED => Err(PostFailure {
                reason: "post failed part way through a chain".into(),
                memory_in_use: true,
                queue_closed: false,
            }),
            // An error completion of the last request comes after the
            // earlier ones; the queue pair is in the error state.
            status => Err(PostFailure {
                queue_closed: wc.flushed(),
                ..PostFailure::before_posting(format!("work request failed with status {status}"))
            }),
        }
    }

    /// Send a response capsule, after `data_wrs` (RDMA WRITEs of read data).
    async fn respond(
        &self,
        resp: &Response,
        mut data_wrs: Vec<SendWr>,
        invalidate: Option<u32>,
    ) -> Result<(), PostFailure> {
        let cqe = resp.cqe.encode();
        let inline = self.qp.max_inline() as usize >= cqe.len();
        let op = match invalidate {
            Some(rkey) => SendOp::SendInvalidate(rkey),
            None => SendOp::Send,
        };
        if inline {
            // The address is filled in when the queue posts the chain.
            let sge = Sge {
                addr: 0,
                len: cqe.len() as u32,
                lkey: 0,
            };
            data_wrs.push(SendWr {
                wr_id: 0,
                op,
                sge,
                signaled: true,
                inline: true,
            });
            self.post_and_wait(data_wrs, Some(cqe)).await.map(|_| ())
        } else {
            let mut buf = self
                .dev
                .data
                .get(cqe.len())
                .await
                .ok_or_else(|| PostFailure::before_posting("no buffer for a response"))?;
            buf.copy_in(&cqe);
            let sge = buf
                .pieces()
                .next()
                .map(|(_, s)| s)
                .ok_or_else(|| PostFailure::before_posting("empty response buffer"))?;
            data_wrs.push(SendWr {
                wr_id: 0,
                op,
                sge,
                signaled: true,
                inline: false,
            });
            let r = self.post_and_wait(data_wrs, None).await.map(|_| ());
            if let Err(failure) = &r {
                self.release_after_failure(failure, buf);
            }
            r
        }
    }
}

/// Serve one command; returns whether the connection must close.
async fn handle(conn: Arc<Conn>, capsule: Bytes) -> bool {
    let Some(sqe) = capsule
        .get(..64)
        .and_then(|b| <&[u8; 64]>::try_from(b).ok())
    else {
        tracing::warn!(
            len = capsule.len(),
            "command capsule shorter than a command; closing the queue"
        );
        return true;
    };
    let cmd = Command::decode(sqe);
    let inline = capsule.slice(64..);
    let (data_ref, sgl_len) = match parse_sgl(
        &cmd.dptr,
        &inline,
        conn.core.max_inline_data() as usize,
        conn.max_descriptors,
    ) {
        Ok(v) => v,
        Err(status) => {
            let resp = conn.core.fail(&cmd, status);
            return conn.respond(&resp, Vec::new(), None).await.is_err();
        }
    };
    let invalidate = data_ref.invalidate();
    let mut req = match conn.core.prepare(cmd, sgl_len) {
        Ok(r) => r,
        Err(resp) => {
            return conn.respond(&resp, Vec::new(), invalidate).await.is_err() || resp.close_queue
        }
    };
    let transfer = req.transfer;
    let data = match (transfer, &data_ref) {
        (Transfer::ToController(_), DataRef::InCapsule(b)) => Some(b.clone()),
        (Transfer::ToController(n), DataRef::Remote { ranges, .. }) => {
            let Some(buf) = conn.dev.data.get(n as usize).await else {
                let resp = conn.core.fail(&cmd, Status::INVALID_FIELD);
                return conn.respond(&resp, Vec::new(), invalidate).await.is_err();
            };
            let wrs = transfer_wrs(buf.pieces().map(|(_, s)| s), ranges, true);
            if let Err(e) = conn.post_and_wait(wrs, None).await {
                e.log("RDMA READ of command data", cmd.cid);
                conn.release_after_failure(&e, buf);
                return true;
            }
            Some(buf.into_bytes(n as usize))
        }
        (Transfer::ToHost(_), DataRef::InCapsule(_)) => {
            let resp = conn.core.fail(&cmd, Status::SGL_INVALID_TYPE);
            return conn.respond(&resp, Vec::new(), invalidate).await.is_err();
        }
        _ => None,
    };
    if let Transfer::ToHost(n) = transfer {
        if req.needs_read_buffer() {
            req.provide_buffer(conn.read_buffers.take(n as usize));
        }
    }
    let mut resp = conn.core.clone().execute(req, data).await;
    let result = match (resp.data.take(), &data_ref) {
        (Some(bytes), DataRef::Remote { ranges, .. }) if resp.cqe.status.is_success() => {
            let Some(mut buf) = conn.dev.data.get(bytes.len()).await else {
                return true;
            };
            buf.copy_in(&bytes);
            conn.read_buffers.give_back(bytes);
            let wrs = transfer_wrs(buf.pieces().map(|(_, s)| s), ranges, false);
            let r = conn.respond(&resp, wrs, invalidate).await;
            if let Err(failure) = &r {
                conn.release_after_failure(failure, buf);
            }
            r
        }
        _ => conn.respond(&resp, Vec::new(), invalidate).await,
    };
    match result {
        Ok(()) => resp.close_queue,
        Err(e) => {
            e.log("sending a response", resp.cqe.cid);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgl_forms_parse_and_bad_ones_get_statuses() {
        let inline = Bytes::from(vec![7u8; 100]);
        let keyed = SglDescriptor::keyed(0x1000, 4096, 9, true);
        let (d, n) = parse_sgl(&keyed, &inline, 8192, 16).unwrap();
        assert_eq!(n, 4096);
        assert_eq!(d.invalidate(), Some(9));
        let (d, n) = parse_sgl(&SglDescriptor::in_capsule(100), &inline, 8192, 16).unwrap();
        assert_eq!(n, 100);
        assert!(matches!(d, DataRef::InCapsule(b) if b.len() == 100));
        assert_eq!(
            parse_sgl(&SglDescriptor::in_capsule(101), &inline, 8192, 16).err(),
            Some(Status::SGL_INVALID_DATA_LENGTH)
        );
        let mut off = SglDescriptor::in_capsule(10);
        off.address = 200;
        assert_eq!(
            parse_sgl(&off, &inline, 8192, 16).err(),
            Some(Status::SGL_INVALID_OFFSET)
        );
        assert_eq!(
            parse_sgl(&SglDescriptor::transport_data_block(8), &inline, 8192, 16).err(),
            Some(Status::SGL_INVALID_TYPE)
        );
        // A last segment of two keyed descriptors in the capsule.
        let mut list = SglDescriptor::keyed(0x1000, 512, 1, false)
            .encode()
            .to_vec();
        list.extend_from_slice(&SglDescriptor::keyed(0x9000, 1024, 2, false).encode());
        let seg = SglDescriptor {
            address: 0,
            length: 32,
            key: 0,
            id: kind::LAST_SEGMENT << 4 | subtype::OFFSET,
        };
        let (d, n) = parse_sgl(&seg, &Bytes::from(list.clone()), 8192, 16).unwrap();
        assert_eq!(n, 1536);
        assert!(matches!(d, DataRef::Remote { ranges, invalidate: None } if ranges.len() == 2));
        assert_eq!(
            parse_sgl(&seg, &Bytes::from(list), 8192, 1).err(),
            Some(Status::SGL_INVALID_COUNT)
        );
    }

    /// The slots of a `len`-byte buffer, as the pool hands them out.
    fn slot_pieces(len: u32, slot: u32) -> Vec<Sge> {
        (0..len.div_ceil(slot))
            .map(|k| Sge {
                addr: 0x10_0000 * (k as u64 + 1),
                len: slot.min(len - k * slot),
                lkey: 1,
            })
            .collect()
    }

    proptest::proptest! {
        /// Any data pointer and capsule from the host: a status or a data
        /// reference inside what the capsule holds and the limits allow.
        #[test]
        fn any_data_pointer_parses_or_gets_a_status(
            raw in proptest::array::uniform16(proptest::prelude::any::<u8>()),
            capsule in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            list_form in proptest::prelude::any::<bool>(),
            max_descriptors in 1usize..=16,
        ) {
            let mut sgl = SglDescriptor::decode(&raw);
            if list_form {
                // Often a last segment pointing into the capsule.
                sgl.id = kind::LAST_SEGMENT << 4 | subtype::OFFSET;
                sgl.address %= 64;
                sgl.length %= 320;
            }
            let inline = Bytes::from(capsule);
            if let Ok((d, n)) = parse_sgl(&sgl, &inline, 256, max_descriptors) {
                match d {
                    DataRef::InCapsule(b) => {
                        proptest::prop_assert_eq!(b.len() as u32, n);
                        proptest::prop_assert!(b.len() <= 256 && b.len() <= inline.len());
                    }
                    DataRef::Remote { ranges, .. } => {
                        proptest::prop_assert!(!ranges.is_empty() && ranges.len() <= max_descriptors);
                        proptest::prop_assert_eq!(ranges.iter().map(|r| r.1 as u64).sum::<u64>(), n as u64);
                    }
                    DataRef::None => proptest::prop_assert_eq!(n, 0),
                }
            }
        }

        #[test]
        fn a_command_never_needs_more_send_entries_than_budgeted(
            cuts in proptest::collection::vec(0u32..=(1 << 20), 0..16),
            slot_kib in 1u32..=256,
        ) {
            // Up to 16 host descriptors (some of zero length) over 1 MiB.
            let total = 1u32 << 20;
            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(total);
            cuts.sort_unstable();
            let ranges: Vec<(u64, u32, u32)> = cuts
                .windows(2)
                .enumerate()
                .map(|(i, w)| (0x1_0000_0000 * (i as u64 + 1), w[1] - w[0], i as u32))
                .collect();
            proptest::prop_assume!(ranges.len() <= 16);
            let slot = slot_kib * 1024;
            for read in [true, false] {
                let wrs = transfer_wrs(slot_pieces(total, slot).into_iter(), &ranges, read);
                let budget = send_wrs_per_command(total, slot as usize, ranges.len() as u8);
                // The data requests and the response fit the budget.
                proptest::prop_assert!(wrs.len() < budget as usize);
                proptest::prop_assert!(wrs.iter().all(|w| w.sge.len > 0));
                proptest::prop_assert_eq!(wrs.iter().map(|w| w.sge.len as u64).sum::<u64>(), total as u64);
            }
        }
    }
}
