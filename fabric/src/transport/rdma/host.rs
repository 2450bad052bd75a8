//! The NVMe/RDMA host side: one queue pair per queue, commands sent from
//! per-command send buffers, data in keyed SGLs pointing at registered
//! slots (copied in and out), small writes in the capsule.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::target::PortAddress;
use crate::transport::{CommandResult, HostData, HostQueue, QueueParams, TransportError};
use crate::wire::rdma::{decode_accept, decode_reject, ConnectRequest, RECFMT};
use crate::wire::sgl::SglDescriptor;
use crate::wire::{Command, Completion};

use super::device::{recv_wr_id, CqShare, Device, Received};
use super::events::CmEvents;
use super::pool::{PoolBuf, RecvBuffers, SendBuffers};
use super::verbs::{CmEventKind, CmId, QpCaps, QueuePair, SendOp, SendWr};
use super::Devices;
use crate::transport::pending::{closed, wait, Entry, PendingCommands};

/// Time allowed for address and route resolution and for the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Response capsules are 16 bytes; receive buffers leave room for more.
const RECV_SIZE: usize = 64;

/// Transport state of an outstanding command: its data buffer.
struct Pending {
    buf: Option<PoolBuf>,
    read_len: usize,
}

type Shared = PendingCommands<Pending>;

/// A host queue over NVMe/RDMA.
pub struct RdmaHostQueue {
    id: Option<CmId>,
    qp: QueuePair,
    sends: SendBuffers,
    recv: RecvBuffers,
    shared: Arc<Shared>,
    inline_data_size: u32,
    timeout: Duration,
    /// Command sends waiting for their doorbell.
    queued: Mutex<QueuedSends>,
    /// The transport's devices (a removed device is retired in it).
    devices: Arc<Devices>,
    /// The QP's completion queue entries (given back after `Drop` has
    /// destroyed the QP).
    _cq_share: CqShare,
    /// Dropped last: the id's QP and the buffers above use it.
    dev: Arc<Device>,
}

/// Command sends queued by the commands submitted in one poll of their
/// caller's task, posted together with one doorbell (on rxe, one system
/// call) by the first of them polled again.
#[derive(Default)]
struct QueuedSends {
    wrs: Vec<SendWr>,
    /// Sequence number of the next send queued.
    next: u64,
    /// Sends before this sequence number have been posted (or failed).
    posted: u64,
}

async fn wait_for(
    events: &CmEvents,
    want: CmEventKind,
) -> Result<super::verbs::CmEvent, TransportError> {
    let ev = tokio::time::timeout(CONNECT_TIMEOUT, events.next())
        .await
        .map_err(|_| TransportError::Timeout(CONNECT_TIMEOUT))?
        .map_err(|e| TransportError::io("rdma_cm event", e))?;
    if ev.kind == want {
        return Ok(ev);
    }
    Err(match ev.kind {
        CmEventKind::Rejected => match decode_reject(&ev.private_data) {
            Some(status) => TransportError::Protocol(format!(
                "controller rejected the connection (NVMe/RDMA status {status:#x})"
            )),
            None => TransportError::Protocol(format!("connection rejected (status {})", ev.status)),
        },
        kind => TransportError::Protocol(format!(
            "expected {want:?}, got {kind:?} (status {})",
            ev.status
        )),
    })
}

pub(super) async fn connect(
    devices: Arc<Devices>,
    address: &PortAddress,
    params: &QueueParams,
) -> Result<Arc<dyn HostQueue>, TransportError> {
    let dst: SocketAddr = address
        .socket_string()
        .parse()
        .map_err(|_| TransportError::Unavailable(format!("bad RDMA address {address}")))?;
    // Declared before the id so that, on an error below, it is given back
    // after the id (and its QP, whose posted receives a flush completes)
    // is gone: locals drop in reverse order of declaration.
    let cq_share: CqShare;
    let events = CmEvents::new().map_err(|e| TransportError::io("rdma_cm event channel", e))?;
    let id = CmId::new(events.channel()).map_err(|e| TransportError::io("rdma_create_id", e))?;
    let ctx = |what: &str| format!("{what} {address}");
    id.resolve_addr(None, dst, 2000)
        .map_err(|e| TransportError::io(ctx("cannot resolve"), e))?;
    wait_for(&events, CmEventKind::AddrResolved).await?;
    id.resolve_route(2000)
        .map_err(|e| TransportError::io(ctx("cannot route to"), e))?;
    wait_for(&events, CmEventKind::RouteResolved).await?;
    let dev = devices.device(&id, false)?;
    let depth = params.queue_size.max(2) as u32;
    let send_wr = (depth * 2).min(dev.limits.max_qp_wr.max(4));
    cq_share = dev
        .reserve_cq(send_wr + depth, send_wr + depth)
        .map_err(|why| TransportError::Unavailable(format!("RDMA queue pair: {why}")))?;
    let caps = QpCaps {
        max_send_wr: send_wr,
        max_recv_wr: depth,
        max_sge: 1,
        max_inline_data: 0,
    };
    let qp = id
        .create_qp(&dev.pd, &dev.cq, None, caps)
        .map_err(|e| TransportError::io("create queue pair", e))?;
    let recv = RecvBuffers::new(&dev.pd, depth, RECV_SIZE)
        .map_err(|e| TransportError::io("receive buffers", e))?;
    for i in 0..depth {
        // SAFETY: the buffers live in `recv`, owned by the queue, which
        // destroys its QP (in Drop) before they are deregistered; each is read
        // only after its completion and reposted after that.
        unsafe { qp.post_recv(recv_wr_id(i), recv.sge(i)) }
            .map_err(|e| TransportError::io("post receive", e))?;
    }
    let send_size = 64 + params.inline_data_size as usize;
    let sends = SendBuffers::new(&dev.pd, depth, send_size)
        .map_err(|e| TransportError::io("send buffers", e))?;
    let (rx_tx, rx) = mpsc::unbounded_channel();
    dev.route(qp.num(), rx_tx);
    let private = ConnectRequest {
        recfmt: RECFMT,
        qid: params.qid,
        hrqsize: depth as u16,
        hsqsize: (depth - 1) as u16,
        cntlid: 0,
    };
    let responder = dev.limits.max_qp_rd_atom.min(16);
    if let Err(e) = id.connect(&private.encode(), responder, 0) {
        dev.unroute(qp.num());
        return Err(TransportError::io(ctx("cannot connect to"), e));
    }
    let ev = match wait_for(&events, CmEventKind::Established).await {
        Ok(ev) => ev,
        Err(e) => {
            dev.unroute(qp.num());
            return Err(e);
        }
    };
    if let Some(crqsize) = decode_accept(&ev.private_data) {
        tracing::debug!(qid = params.qid, crqsize, "RDMA queue established");
    }
    drop(ev);
    let shared = Arc::new(Shared::new(depth as usize - 1));
    let queue = Arc::new(RdmaHostQueue {
        id: Some(id),
        qp,
        dev: dev.clone(),
        sends,
        recv,
        shared: shared.clone(),
        inline_data_size: params.inline_data_size,
        timeout: params.timeout,
        queued: Mutex::default(),
        devices,
        _cq_share: cq_share,
    });
    tokio::spawn(receive_loop(queue.clone(), rx, events));
    Ok(queue)
}

/// Match responses to commands, repost receive buffers, and watch the
/// connection's events.
async fn receive_loop(
    q: Arc<RdmaHostQueue>,
    mut rx: mpsc::UnboundedReceiver<Received>,
    events: CmEvents,
) {
    let token = q.shared.token().clone();
    // One waiter for the queue's life, not one per completion.
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    let why = loop {
        tokio::select! {
            r = rx.recv() => {
                let Some(Received { wc, .. }) = r else { break "device stopped".to_string() };
                if !wc.ok() {
                    break format!("receive failed (status {})", wc.status);
                }
                let index = (wc.wr_id & 0xffff_ffff) as u32;
                let Some(bytes) = q.recv.take(index, wc.byte_len as usize) else {
                    break "receive completion out of range".to_string();
                };
                // SAFETY: the buffer was copied out above; it goes back to
                // the receive queue untouched.
                if let Err(e) = unsafe { q.qp.post_recv(wc.wr_id, q.recv.sge(index)) } {
                    break format!("cannot repost a receive: {e}");
                }
                let Some(cqe) = bytes.get(..16).and_then(|b| <&[u8; 16]>::try_from(b).ok()) else {
                    break "response capsule shorter than a completion".to_string();
                };
                q.complete(Completion::decode(cqe), wc.invalidated_rkey);
            }
            ev = events.next() => match ev {
                Ok(ev) if ev.kind == CmEventKind::DeviceRemoval => {
                    q.devices.retire(q.dev.key());
                    break "device removed".to_string();
                }
                Ok(ev) if matches!(ev.kind, CmEventKind::Disconnected | CmEventKind::Error) => {
                    break format!("connection lost ({:?})", ev.kind);
                }
                Ok(_) => {}
                Err(e) => break format!("rdma_cm events failed: {e}"),
            },
            _ = &mut cancelled => break "queue closed".to_string(),
        }
    };
    tracing::debug!(why, "RDMA host queue closing");
    q.shared.fail_all(&why);
    q.dev.unroute(q.qp.num());
    if let Some(id) = q.id.as_ref() {
        id.disconnect();
    }
}

impl RdmaHostQueue {
    fn queued(&self) -> std::sync::MutexGuard<'_, QueuedSends> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Post every queued send unless send `seq` was already posted. A send
    /// that could not be posted fails the queue (its command sees its send
    /// fail).
    fn post_queued(&self, seq: u64) -> std::io::Result<()> {
        let mut q = self.queued();
        if q.posted > seq {
            return Ok(());
        }
        // SAFETY: each send's buffer (its CID's) is not reused before its
        // command completes, which is after this send completed (awaited in
        // `submit`) or the queue failed; data buffers live in `pending`
        // until the response arrives.
        let r = unsafe { self.qp.post_send(&q.wrs) };
        q.posted = q.next;
        if let Err(e) = &r {
            // Requests past the refused one were not posted: their
            // commands' send waits end at once.
            for wr in q.wrs.iter().skip(e.posted) {
                self.dev.cancel_op(wr.wr_id);
            }
        }
        q.wrs.clear();
        drop(q);
        r.map_err(|e| {
            self.shared.fail_all("post failed");
            e.error
        })
    }

    fn complete(&self, cqe: Completion, _invalidated: Option<u32>) {
        let Some(Entry { done, state: p, .. }) = self.shared.remove(cqe.cid) else {
            tracing::warn!(cid = cqe.cid, "completion for an unknown command");
            return;
        };
        let data = match (&p.buf, cqe.status.is_success()) {
            (Some(buf), true) if p.read_len > 0 => Some(buf.copy_out(p.read_len)),
            _ => None,
        };
        let _ = done.send(Ok(CommandResult { cqe, data }));
    }
}

/// Posts a queued send whose submitter stopped waiting before posting it,
/// so that the command still goes out and, once answered, frees its slot
/// (a send left queued would hold it until some later command posts).
struct PostIfAbandoned<'a> {
    queue: Option<&'a RdmaHostQueue>,
    seq: u64,
}

impl PostIfAbandoned<'_> {
    fn disarm(mut self) {
        self.queue = None;
    }
}

impl Drop for PostIfAbandoned<'_> {
    fn drop(&mut self) {
        if let Some(q) = self.queue {
            // A failed post fails the queue, and with it the command.
            let _ = q.post_queued(self.seq);
        }
    }
}

#[async_trait]
impl HostQueue for RdmaHostQueue {
    async fn submit(
        &self,
        mut cmd: Command,
        data: HostData,
    ) -> Result<CommandResult, TransportError> {
        if self.is_closed() {
            return Err(closed());
        }
        let slot = self.shared.reserve().await?;
        let slot_size = self.dev.data.slot_size();
        if data.len() as usize > slot_size {
            return Err(TransportError::Unavailable(format!(
                "transfer of {} bytes exceeds the RDMA buffer of {slot_size} bytes",
                data.len()
            )));
        }
        let (inline, buf, read_len) = match &data {
            HostData::Out(b) if b.len() <= self.inline_data_size as usize => {
                (Some(b.clone()), None, 0)
            }
            HostData::Out(b) => {
                let mut buf = self.dev.data.get(b.len()).await.ok_or_else(closed)?;
                buf.copy_in(b);
                (None, Some(buf), 0)
            }
            HostData::In(n) => (
                None,
                Some(self.dev.data.get(*n as usize).await.ok_or_else(closed)?),
                *n as usize,
            ),
            HostData::None => (None, None, 0),
        };
        cmd.dptr = match (&inline, &buf) {
            (Some(b), _) => SglDescriptor::in_capsule(b.len() as u32),
            (None, Some(buf)) => {
                let (addr, rkey) = buf.remote();
                SglDescriptor::keyed(addr, buf.len() as u32, rkey, false)
            }
            (None, None) => SglDescriptor::keyed(0, 0, 0, false),
        };
        let (cid, rx) = self.shared.insert(Pending { buf, read_len }, slot)?;
        cmd.cid = cid;
        let sqe = cmd.encode();
        let Some(sge) = self
            .sends
            .fill(cid as u32, &[&sqe, inline.as_deref().unwrap_or(&[])])
        else {
            // Never sent: the command and its buffer can go at once.
            self.shared.remove(cid);
            return Err(TransportError::Protocol(
                "command capsule does not fit its send buffer".into(),
            ));
        };
        let (wr_id, sent) = self.dev.op();
        let wr = SendWr {
            wr_id,
            op: SendOp::Send,
            sge,
            signaled: true,
            inline: false,
        };
        let seq = {
            let mut q = self.queued();
            q.wrs.push(wr);
            q.next += 1;
            q.next - 1
        };
        // Let the other commands submitted in this poll queue theirs; the
        // first one back posts them all.
        let abandoned = PostIfAbandoned {
            queue: Some(self),
            seq,
        };
        tokio::task::yield_now().await;
        abandoned.disarm();
        if let Err(e) = self.post_queued(seq) {
            return Err(TransportError::io("post send", e));
        }
        match sent.await {
            Ok(wc) if wc.ok() => {}
            _ => {
                self.shared.fail_all("command send failed");
                return Err(closed());
            }
        }
        wait(&self.shared, rx, self.timeout).await
    }

    fn close(&self) {
        self.shared.fail_all("queue closed by the host");
    }

    fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    fn max_transfer(&self) -> u32 {
        self.dev.data.slot_size() as u32
    }
}

impl Drop for RdmaHostQueue {
    fn drop(&mut self) {
        self.shared.fail_all("queue dropped");
        self.dev.unroute(self.qp.num());
        // Destroy the id and its QP before the buffers it used go away.
        if let Some(id) = self.id.take() {
            id.disconnect();
            drop(id);
        }
    }
}
