//! The NVMe/TCP target: a listener and one task per connection.
//!
//! Each connection runs a reader loop (PDUs in, commands into the core) and a
//! writer task (responses, data and R2Ts out, batched into few syscalls).
//! Commands execute concurrently inside the reader task; their responses go
//! to the writer in completion order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use slab::Slab;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::target::queue::STALLED;
use crate::target::{
    Port, Queue, Request, Response, Target, Transfer, TransportCaps, TransportKind,
};
use crate::transport::{ListenerHandle, TargetTransport, TransportError};
use crate::wire::sgl::{kind, subtype};
use crate::wire::tcp::{
    encode, encode_term, fes, DataDigestMismatch, DataHeader, Decoded, Digests, IcReq, IcResp, Pdu,
    PduDecoder, PduError, PduHeader, R2t, Role,
};
use crate::wire::{Command, Completion, Status};

use super::batch::Batch;
use super::{poll_read, read_buffer_needed, TcpTransport, IC_TIMEOUT};
use crate::transport::read_buffers::ReadBuffers;

/// How long a closing connection waits for its in-flight commands.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait]
impl TargetTransport for TcpTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn caps(&self) -> TransportCaps {
        TcpTransport::caps(self)
    }

    async fn listen(
        &self,
        target: Arc<Target>,
        port: Arc<Port>,
    ) -> Result<ListenerHandle, TransportError> {
        let addr = port.address();
        let listener = TcpListener::bind(addr.socket_string())
            .await
            .map_err(|e| TransportError::io(format!("cannot listen on {addr}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| TransportError::io("local address", e))?;
        port.set_bound_port(bound.port());
        let local = port.address();
        let token = target.shutdown_token().child_token();
        let caps = TcpTransport::caps(self);
        let poll = self.poll;
        let stop = token.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            tracing::debug!(%peer, port = port.id, "tcp connection");
                            tokio::spawn(serve(stream, target.clone(), port.clone(), caps, poll));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        });
        Ok(ListenerHandle { local, token, task })
    }
}

/// What the reader hands the writer.
enum Out {
    Response(Response),
    R2t(R2t),
    Term(PduError),
}

/// A write waiting for its data (R2T sent).
struct H2cTransfer {
    req: Request,
    buf: BytesMut,
    len: usize,
    failed: bool,
}

async fn serve(
    stream: TcpStream,
    target: Arc<Target>,
    port: Arc<Port>,
    caps: TransportCaps,
    poll: Duration,
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let max_transfer = target.config().max_transfer;
    let mut dec = PduDecoder::new(
        Role::Controller,
        max_transfer.max(crate::target::queue::ADMIN_INLINE_DATA) as usize,
    );
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let Some(icreq) = initialize(&mut rd, &mut wr, &dec, &mut rbuf).await else {
        tracing::debug!(?peer, "connection initialization failed");
        return;
    };
    let digests = icreq.digests;
    let resp = IcResp {
        pfv: 0,
        cpda: 0,
        digests,
        maxh2cdata: max_transfer,
    };
    let mut out = BytesMut::new();
    encode(
        &PduHeader::IcResp(resp),
        &[],
        Digests::default(),
        0,
        &mut out,
    );
    if wr.write_all(&out).await.is_err() {
        return;
    }
    dec.digests = digests;
    let entries_before_connect = target.config().max_queue_entries as u32;
    let queue = Queue::new(target, port, caps);
    let (tx, rx) = mpsc::unbounded_channel();
    let buffers = Arc::new(ReadBuffers::default());
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut writer = tokio::spawn(write_loop(
        wr,
        rx,
        digests,
        icreq.hpda,
        queue.clone(),
        buffers.clone(),
        outstanding.clone(),
    ));
    let mut conn = Connection {
        queue: queue.clone(),
        tx,
        transfers: Slab::new(),
        buffers,
        outstanding,
        entries_before_connect,
        poll,
    };
    let reason = conn.run(&mut rd, &dec, rbuf).await;
    tracing::debug!(?peer, qid = ?queue.qid(), reason, "tcp connection closed");
    drop(conn.tx);
    // A peer that stops reading must not keep the writer (and its socket
    // and buffers) alive for ever.
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        tracing::debug!(
            ?peer,
            "responses not taken by the host in time; dropping them"
        );
        writer.abort();
    }
}

/// Read the ICReq; on anything else answer with a C2HTermReq and give up.
async fn initialize(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    dec: &PduDecoder,
    rbuf: &mut BytesMut,
) -> Option<IcReq> {
    let read = async {
        loop {
            match dec.decode(rbuf) {
                Ok(Some(Decoded::Pdu(Pdu::IcReq(r)))) => return Ok(r),
                Ok(Some(
                    Decoded::Pdu(p) | Decoded::BadDataDigest(DataDigestMismatch { pdu: p }),
                )) => {
                    return Err(PduError {
                        fes: fes::PDU_SEQUENCE_ERROR,
                        fei: 0,
                        reason: "first PDU is not an ICReq",
                        header: p.header_bytes(),
                    })
                }
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            rbuf.reserve(256);
            match rd.read_buf(rbuf).await {
                Ok(0) | Err(_) => {
                    return Err(PduError {
                        fes: 0,
                        fei: 0,
                        reason: "closed",
                        header: Bytes::new(),
                    })
                }
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(IC_TIMEOUT, read).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) if e.fes != 0 => {
            tracing::warn!(error = %e, "bad connection initialization");
            let mut out = BytesMut::new();
            encode_term(&e, false, &mut out);
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            None
        }
        _ => None,
    }
}

type Inflight = FuturesUnordered<futures::future::BoxFuture<'static, Response>>;

struct Connection {
    queue: Arc<Queue>,
    tx: mpsc::UnboundedSender<Out>,
    transfers: Slab<H2cTransfer>,
    /// Read buffers recycled from responses already written.
    buffers: Arc<ReadBuffers>,
    /// Commands received whose response the writer has not taken yet.
    outstanding: Arc<AtomicUsize>,
    /// Queue entries assumed before Connect says how many there are.
    entries_before_connect: u32,
    /// How long to keep reading without sleeping once idle
    /// ([`TcpTransport::poll`]).
    poll: Duration,
}

impl Connection {
    /// Serve until the connection ends; returns why.
    async fn run(
        &mut self,
        rd: &mut OwnedReadHalf,
        dec: &PduDecoder,
        mut rbuf: BytesMut,
    ) -> &'static str {
        let mut inflight: Inflight = FuturesUnordered::new();
        let token = self.queue.token().clone();
        // One waiter for the whole connection, not one registered and
        // dropped per loop turn (a lock each way, per command).
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let reason = loop {
            // Handle every complete PDU already received.
            let mut stop = None;
            loop {
                match dec.decode(&mut rbuf) {
                    Ok(Some(d)) => {
                        if let Err(why) = self.handle(d, &mut inflight) {
                            stop = Some(why);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(qid = ?self.queue.qid(), error = %e, "fatal PDU error; terminating the connection");
                        let _ = self.tx.send(Out::Term(e));
                        stop = Some("fatal PDU error");
                        break;
                    }
                }
            }
            if let Some(why) = stop {
                break why;
            }
            if let Some(capacity) = read_buffer_needed(&rbuf) {
                rbuf.reserve(capacity - rbuf.len());
            }
            if inflight.is_empty() && !self.poll.is_zero() {
                match poll_read(rd, &mut rbuf, self.poll, || true).await {
                    Some(Ok(0)) => break "peer closed",
                    Some(Ok(_)) if self.queue.stalled_past_keep_alive() => break STALLED,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => break "read error",
                    None => {}
                }
            }
            tokio::select! {
                Some(resp) = inflight.next(), if !inflight.is_empty() => {
                    let close = resp.close_queue;
                    let _ = self.tx.send(Out::Response(resp));
                    if close {
                        break "disconnect command";
                    }
                }
                read = rd.read_buf(&mut rbuf) => match read {
                    Ok(0) => break "peer closed",
                    Ok(_) if self.queue.stalled_past_keep_alive() => break STALLED,
                    Ok(_) => {}
                    Err(_) => break "read error",
                },
                _ = &mut cancelled => break "controller or target shut down",
                // The timer only runs until Connect (no timer work per command).
                _ = self.queue.connect_timed_out(), if self.queue.qid().is_none() => {
                    break "no Connect command in time"
                }
            }
        };
        // Release the queue (outstanding AERs end), then let commands already
        // accepted finish so their writes land before the connection is gone;
        // their responses still go out if the socket is alive. Commands
        // still running after DRAIN_TIMEOUT go on in the background, as over
        // RDMA: a backend's write is never cut off half done (a mirror's
        // members would disagree).
        self.queue.close();
        let drain = async {
            while let Some(resp) = inflight.next().await {
                let _ = self.tx.send(Out::Response(resp));
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::error!(
                qid = ?self.queue.qid(),
                commands = inflight.len(),
                "commands of a closed connection did not finish; they go on in the background"
            );
            tokio::spawn(async move { while inflight.next().await.is_some() {} });
        }
        reason
    }

    fn respond(&self, resp: Response) {
        let _ = self.tx.send(Out::Response(resp));
    }

    fn start(&self, req: Request, data: Option<Bytes>, inflight: &mut Inflight) {
        inflight.push(Box::pin(self.queue.clone().execute(req, data)));
    }

    fn handle(&mut self, d: Decoded, inflight: &mut Inflight) -> Result<(), &'static str> {
        if matches!(
            &d,
            Decoded::Pdu(Pdu::CapsuleCmd { .. })
                | Decoded::BadDataDigest(DataDigestMismatch {
                    pdu: Pdu::CapsuleCmd { .. }
                })
        ) {
            // Every command gets exactly one response; the writer counts it
            // off when it takes the response.
            let limit = self.queue.max_outstanding(self.entries_before_connect);
            if self.outstanding.fetch_add(1, Ordering::AcqRel) >= limit {
                tracing::warn!(qid = ?self.queue.qid(), limit, "host exceeded its queue depth; closing the connection");
                return Err("too many outstanding commands");
            }
        }
        match d {
            Decoded::Pdu(Pdu::CapsuleCmd { cmd, data }) => self.command(cmd, data, inflight),
            Decoded::Pdu(Pdu::H2cData { hdr, last, data }) => {
                self.h2c_data(hdr, last, data, false, inflight)
            }
            Decoded::Pdu(Pdu::H2cTermReq(t)) => {
                tracing::warn!(fes = t.fes, fei = t.fei, "host terminated the connection");
                Err("host sent H2CTermReq")
            }
            Decoded::Pdu(p) => {
                self.fatal(
                    fes::PDU_SEQUENCE_ERROR,
                    0,
                    "unexpected PDU after initialization",
                    &p,
                );
                Err("PDU sequence error")
            }
            Decoded::BadDataDigest(m) => match m.pdu {
                Pdu::CapsuleCmd { cmd, .. } => {
                    tracing::warn!(cid = cmd.cid, "data digest error in a command capsule");
                    self.respond(self.queue.fail(&cmd, Status::TRANSIENT_TRANSPORT_ERROR));
                    Ok(())
                }
                Pdu::H2cData { hdr, last, data } => self.h2c_data(hdr, last, data, true, inflight),
                _ => Err("data digest error"),
            },
        }
    }

    /// End the connection with a C2HTermReq about the PDU `offending`.
    fn fatal(&self, fes: u16, fei: u32, reason: &'static str, offending: &Pdu) {
        tracing::warn!(qid = ?self.queue.qid(), reason, "terminating the connection");
        let _ = self.tx.send(Out::Term(PduError {
            fes,
            fei,
            reason,
            header: offending.header_bytes(),
        }));
    }

    fn command(
        &mut self,
        cmd: Command,
        data: Bytes,
        inflight: &mut Inflight,
    ) -> Result<(), &'static str> {
        let sgl = cmd.dptr;
        let in_capsule = match (sgl.kind(), sgl.subtype()) {
            (kind::DATA_BLOCK, subtype::OFFSET) => {
                if sgl.address != 0 {
                    self.respond(self.queue.fail(&cmd, Status::SGL_INVALID_OFFSET));
                    return Ok(());
                }
                if sgl.length as usize != data.len()
                    || data.len() > self.queue.max_inline_data() as usize
                {
                    self.respond(self.queue.fail(&cmd, Status::SGL_INVALID_DATA_LENGTH));
                    return Ok(());
                }
                true
            }
            (kind::TRANSPORT_DATA_BLOCK, subtype::TRANSPORT_A | 0) if data.is_empty() => false,
            _ => {
                self.respond(self.queue.fail(&cmd, Status::SGL_INVALID_TYPE));
                return Ok(());
            }
        };
        let req = match self.queue.prepare(cmd, sgl.length) {
            Ok(r) => r,
            Err(resp) => {
                self.respond(resp);
                return Ok(());
            }
        };
        match req.transfer {
            Transfer::ToController(n) if !in_capsule => {
                let entry = self.transfers.vacant_entry();
                let ttag = entry.key();
                if ttag > u16::MAX as usize {
                    self.respond(self.queue.fail(&cmd, Status::INTERNAL));
                    return Ok(());
                }
                entry.insert(H2cTransfer {
                    req,
                    buf: BytesMut::new(),
                    len: n as usize,
                    failed: false,
                });
                let _ = self.tx.send(Out::R2t(R2t {
                    cccid: cmd.cid,
                    ttag: ttag as u16,
                    offset: 0,
                    length: n,
                }));
            }
            Transfer::ToController(_) => self.start(req, Some(data), inflight),
            Transfer::ToHost(n) if req.needs_read_buffer() => {
                let mut req = req;
                req.provide_buffer(self.buffers.take(n as usize));
                self.start(req, None, inflight)
            }
            _ => self.start(req, None, inflight),
        }
        Ok(())
    }

    fn h2c_data(
        &mut self,
        hdr: DataHeader,
        last: bool,
        data: Bytes,
        bad_digest: bool,
        inflight: &mut Inflight,
    ) -> Result<(), &'static str> {
        // What a TermReq about this PDU carries.
        let offending = || Pdu::H2cData {
            hdr,
            last,
            data: data.clone(),
        };
        let Some(t) = self.transfers.get_mut(hdr.ttag as usize) else {
            self.fatal(
                fes::INVALID_HEADER_FIELD,
                10,
                "H2CData for an unknown transfer tag",
                &offending(),
            );
            return Err("unknown transfer tag");
        };
        if t.req.cmd.cid != hdr.cccid {
            self.fatal(
                fes::INVALID_HEADER_FIELD,
                8,
                "H2CData command ID does not match its transfer tag",
                &offending(),
            );
            return Err("bad CCCID");
        }
        if hdr.datao as usize != t.buf.len() || t.buf.len() + data.len() > t.len {
            self.fatal(
                fes::DATA_OUT_OF_RANGE,
                12,
                "H2CData outside the requested range",
                &offending(),
            );
            return Err("data out of range");
        }
        t.failed |= bad_digest;
        let complete = t.buf.len() + data.len() == t.len;
        if last && !complete {
            self.fatal(
                fes::PDU_SEQUENCE_ERROR,
                1,
                "LAST_PDU before all requested data",
                &offending(),
            );
            return Err("early LAST_PDU");
        }
        if !complete {
            t.buf.extend_from_slice(&data);
            return Ok(());
        }
        let t = self.transfers.remove(hdr.ttag as usize);
        if t.failed {
            tracing::warn!(cid = hdr.cccid, "data digest error in H2CData");
            self.respond(
                self.queue
                    .fail(&t.req.cmd, Status::TRANSIENT_TRANSPORT_ERROR),
            );
            return Ok(());
        }
        // A transfer that arrived in one PDU is used without copying.
        let full = if t.buf.is_empty() {
            data
        } else {
            let mut b = t.buf;
            b.extend_from_slice(&data);
            b.freeze()
        };
        self.start(t.req, Some(full), inflight);
        Ok(())
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    digests: Digests,
    hpda: u8,
    queue: Arc<Queue>,
    buffers: Arc<ReadBuffers>,
    outstanding: Arc<AtomicUsize>,
) {
    let mut batch = Batch::default();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut terminate = false;
        while let Some(out) = next.take() {
            match out {
                Out::Response(resp) => {
                    outstanding.fetch_sub(1, Ordering::AcqRel);
                    put_response(&mut batch, resp, digests, hpda, queue.sq_flow_disabled())
                }
                Out::R2t(r) => batch.push_pdu(&PduHeader::R2t(r), Bytes::new(), digests, hpda),
                Out::Term(e) => {
                    encode_term(&e, false, batch.head());
                    terminate = true;
                }
            }
            if !batch.is_full() && !terminate {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = batch.write_to(&mut wr, |d| buffers.give_back(d)).await {
                tracing::debug!(error = %e, "write failed");
                return;
            }
        }
        if terminate {
            let _ = wr.shutdown().await;
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Encode a response: C2HData with its data (and the SUCCESS flag when the
/// host disabled SQ flow control and the completion has nothing else to
/// say: the host then makes up a completion with a zero result, as Linux
/// and SPDK do), then the response capsule unless the flag made it
/// unnecessary.
fn put_response(
    batch: &mut Batch,
    resp: Response,
    digests: Digests,
    hpda: u8,
    sq_flow_disabled: bool,
) {
    let cqe: Completion = resp.cqe;
    let mut need_capsule = true;
    if let Some(data) = resp
        .data
        .filter(|d| !d.is_empty() && cqe.status.is_success())
    {
        let success = sq_flow_disabled && cqe.result == 0 && cqe.result_hi == 0;
        let hdr = DataHeader {
            cccid: cqe.cid,
            ttag: 0,
            datao: 0,
            datal: data.len() as u32,
        };
        let h = PduHeader::Data {
            h2c: false,
            hdr,
            last: true,
            success,
        };
        batch.push_pdu(&h, data, digests, hpda);
        need_capsule = !success;
    }
    if need_capsule {
        batch.push_pdu(&PduHeader::CapsuleResp(cqe), Bytes::new(), digests, hpda);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::{Decoded, Pdu, PduDecoder, Role};

    /// The PDUs `put_response` writes for a 512-byte read with `result`.
    async fn pdus_for_read(result: u32, sq_flow_disabled: bool) -> Vec<Pdu> {
        let mut cqe = Completion::new(7, Status::SUCCESS);
        cqe.result = result;
        let resp = Response {
            cqe,
            data: Some(Bytes::from(vec![1u8; 512])),
            close_queue: false,
        };
        let mut batch = Batch::default();
        put_response(&mut batch, resp, Digests::default(), 0, sq_flow_disabled);
        let mut wire = Vec::new();
        batch.write_to(&mut wire, |_| {}).await.unwrap();
        let dec = PduDecoder::new(Role::Host, 1 << 20);
        let mut buf = BytesMut::from(&wire[..]);
        let mut pdus = Vec::new();
        while let Some(Decoded::Pdu(p)) = dec.decode(&mut buf).unwrap() {
            pdus.push(p);
        }
        pdus
    }

    #[tokio::test]
    async fn c2h_success_only_when_the_completion_says_nothing_more() {
        let kinds = |pdus: &[Pdu]| -> Vec<(bool, bool)> {
            pdus.iter()
                .map(|p| match p {
                    Pdu::C2hData { success, .. } => (true, *success),
                    _ => (false, false),
                })
                .collect()
        };
        // Flow control off, zero result: C2HData with SUCCESS, no capsule.
        assert_eq!(kinds(&pdus_for_read(0, true).await), [(true, true)]);
        // A result the host must see: the capsule carries it.
        let pdus = pdus_for_read(5, true).await;
        assert_eq!(kinds(&pdus), [(true, false), (false, false)]);
        assert!(matches!(pdus[1], Pdu::CapsuleResp(c) if c.result == 5));
        // Flow control on: always the capsule.
        assert_eq!(
            kinds(&pdus_for_read(0, false).await),
            [(true, false), (false, false)]
        );
    }
}
