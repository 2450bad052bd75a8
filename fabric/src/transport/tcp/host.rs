//! The NVMe/TCP host side: one connection per queue.
//!
//! `submit` registers the command under a free CID and hands it to the
//! writer task, which encodes what is queued into one batch and writes it
//! with the data buffers as they are (no copy); the reader task matches
//! responses, C2HData and R2Ts to their commands. At most `queue_size - 1`
//! commands are outstanding.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::target::PortAddress;
use crate::transport::{
    CommandResult, HostData, HostQueue, HostTransport, QueueParams, TransportError,
};
use crate::wire::sgl::SglDescriptor;
use crate::wire::tcp::{
    encode, encode_term, fes, DataHeader, Decoded, Digests, IcReq, Pdu, PduDecoder, PduError,
    PduHeader, R2t, Role,
};
use crate::wire::{Command, Completion, Status};

use super::batch::Batch;
use super::{poll_read, read_buffer_needed, read_one_pdu, TcpTransport, IC_TIMEOUT};
use crate::transport::pending::{closed, wait, Entry, PendingCommands};

/// Largest data transfer of one command on a host queue: reads and writes
/// are split to it, and it bounds the data of one PDU from the controller
/// (so a controller cannot make the host reserve memory for a PDU it
/// announces without a limit).
const MAX_HOST_TRANSFER: u32 = 16 << 20;

/// Transport state of an outstanding command.
struct Pending {
    /// Data to send when the controller asks for it (R2T).
    out: Option<Bytes>,
    /// Bytes of `out` the controller has asked for so far (R2T offsets
    /// only move forward, so no byte is sent twice).
    out_requested: usize,
    /// Data received so far, and how much the command reads.
    read: Option<ReadData>,
    failed: Option<Status>,
}

/// The data of a read as it arrives.
enum ReadData {
    /// None yet; this many bytes are expected.
    Expected(usize),
    /// All of it, in one C2HData PDU: kept as received, without a copy.
    Whole(Bytes),
    /// Gathered from several PDUs; the expected length.
    Parts(BytesMut, usize),
}

impl ReadData {
    fn received(&self) -> usize {
        match self {
            ReadData::Expected(_) => 0,
            ReadData::Whole(b) => b.len(),
            ReadData::Parts(b, _) => b.len(),
        }
    }

    fn expected(&self) -> usize {
        match self {
            ReadData::Expected(n) | ReadData::Parts(_, n) => *n,
            ReadData::Whole(b) => b.len(),
        }
    }

    /// Add the next piece (its offset already checked).
    fn add(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, ReadData::Expected(0)) {
            ReadData::Expected(n) if data.len() == n => ReadData::Whole(data),
            ReadData::Expected(n) => {
                let mut b = BytesMut::with_capacity(n);
                b.extend_from_slice(&data);
                ReadData::Parts(b, n)
            }
            ReadData::Parts(mut b, n) => {
                b.extend_from_slice(&data);
                ReadData::Parts(b, n)
            }
            whole @ ReadData::Whole(_) => whole,
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            ReadData::Expected(_) => Bytes::new(),
            ReadData::Whole(b) => b,
            ReadData::Parts(b, _) => b.freeze(),
        }
    }
}

type Shared = PendingCommands<Pending>;

/// What the writer task sends, encoding it into its batch.
enum Outgoing {
    /// A command capsule with its in-capsule data.
    Command(Command, Option<Bytes>),
    /// H2CData for an R2T: `data` is the requested part of the command's data.
    Data {
        hdr: DataHeader,
        last: bool,
        data: Bytes,
    },
    /// A TermReq ending the connection.
    Term(Bytes),
}

/// A host queue over NVMe/TCP.
pub struct TcpHostQueue {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    inline_data_size: u32,
    timeout: std::time::Duration,
}

#[async_trait]
impl HostTransport for TcpTransport {
    async fn connect(
        &self,
        address: &PortAddress,
        params: &QueueParams,
    ) -> Result<Arc<dyn HostQueue>, TransportError> {
        // An address that never answers would otherwise take the kernel's
        // SYN retries (about two minutes) to fail.
        let connect = TcpStream::connect(address.socket_string());
        let stream = tokio::time::timeout(IC_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {IC_TIMEOUT:?}"),
                ))
            })
            .map_err(|e| TransportError::io(format!("cannot connect to {address}"), e))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut out = BytesMut::new();
        let icreq = IcReq {
            pfv: 0,
            hpda: 0,
            digests: params.digests,
            maxr2t: 0,
        };
        encode(
            &PduHeader::IcReq(icreq),
            &[],
            Digests::default(),
            0,
            &mut out,
        );
        wr.write_all(&out)
            .await
            .map_err(|e| TransportError::io("send ICReq", e))?;
        let mut dec = PduDecoder::new(Role::Host, MAX_HOST_TRANSFER as usize);
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let resp = match read_one_pdu(&mut rd, &dec, &mut rbuf).await? {
            Pdu::IcResp(r) => r,
            Pdu::C2hTermReq(t) => {
                return Err(TransportError::Protocol(format!(
                    "controller refused the connection (FES {:#x})",
                    t.fes
                )))
            }
            _ => return Err(TransportError::Protocol("expected ICResp".into())),
        };
        if resp.digests != params.digests {
            return Err(TransportError::Protocol(format!(
                "controller enabled digests {:?}, asked for {:?}",
                resp.digests, params.digests
            )));
        }
        dec.digests = resp.digests;
        let shared = Arc::new(Shared::new(params.queue_size.saturating_sub(1) as usize));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(wr, rx, shared.clone(), resp.digests, resp.cpda));
        let queue = Arc::new(TcpHostQueue {
            shared: shared.clone(),
            tx: tx.clone(),
            inline_data_size: params.inline_data_size,
            timeout: params.timeout,
        });
        let reader = Reader {
            shared,
            tx,
            maxh2cdata: resp.maxh2cdata as usize,
            poll: params.poll,
        };
        tokio::spawn(reader.run(rd, dec, rbuf));
        Ok(queue)
    }
}

#[async_trait]
impl HostQueue for TcpHostQueue {
    async fn submit(
        &self,
        mut cmd: Command,
        data: HostData,
    ) -> Result<CommandResult, TransportError> {
        if self.is_closed() {
            return Err(closed());
        }
        if data.len() > MAX_HOST_TRANSFER {
            return Err(TransportError::Unavailable(format!(
                "transfer of {} bytes exceeds the NVMe/TCP host limit of {MAX_HOST_TRANSFER} bytes",
                data.len()
            )));
        }
        let slot = self.shared.reserve().await?;
        let (inline, out, read) = match &data {
            HostData::Out(b) if b.len() <= self.inline_data_size as usize => {
                (Some(b.clone()), None, None)
            }
            HostData::Out(b) => (None, Some(b.clone()), None),
            HostData::In(n) => (None, None, Some(ReadData::Expected(*n as usize))),
            HostData::None => (None, None, None),
        };
        let (cid, rx) = self.shared.insert(
            Pending {
                out,
                out_requested: 0,
                read,
                failed: None,
            },
            slot,
        )?;
        cmd.cid = cid;
        cmd.dptr = match &inline {
            Some(b) => SglDescriptor::in_capsule(b.len() as u32),
            None => SglDescriptor::transport_data_block(data.len()),
        };
        if self.tx.send(Outgoing::Command(cmd, inline)).is_err() {
            self.shared.remove(cid);
            return Err(closed());
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
        MAX_HOST_TRANSFER
    }
}

impl Drop for TcpHostQueue {
    fn drop(&mut self) {
        self.shared.fail_all("queue dropped");
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
    digests: Digests,
    cpda: u8,
) {
    let mut batch = Batch::default();
    // One waiter for the queue's life, not one per batch.
    let cancelled = shared.token().cancelled();
    tokio::pin!(cancelled);
    loop {
        let first = tokio::select! {
            // Queued PDUs first: a TermReq queued as the queue closes still goes out.
            biased;
            m = rx.recv() => m,
            _ = &mut cancelled => None,
        };
        let mut next = first;
        while let Some(m) = next.take() {
            match m {
                Outgoing::Command(cmd, inline) => batch.push_pdu(
                    &PduHeader::CapsuleCmd(cmd),
                    inline.unwrap_or_default(),
                    digests,
                    cpda,
                ),
                Outgoing::Data { hdr, last, data } => {
                    let h = PduHeader::Data {
                        h2c: true,
                        hdr,
                        last,
                        success: false,
                    };
                    batch.push_pdu(&h, data, digests, cpda)
                }
                Outgoing::Term(pdu) => batch.push_data(pdu),
            }
            if !batch.is_full() {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            break;
        }
        if let Err(e) = batch.write_to(&mut wr, drop).await {
            shared.fail_all(&format!("write failed: {e}"));
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Data at least this large is worth taking back once the caller drops it.
const RECYCLE_MIN: usize = 32 * 1024;
/// Buffers of handed-out data watched at most.
const RECYCLE_KEEP: usize = 16;

/// Receive buffers whose data went to callers, taken back once the callers
/// have dropped it. A fresh buffer per large read made the allocator return
/// the memory to the kernel and fault it in again, zero-filled, for the
/// next one: about 25 page faults per 128 KiB read, which cost more than
/// the data's copy from the socket.
#[derive(Default)]
struct HandedOut {
    data: Vec<Bytes>,
    /// Room for one more PDU like the last one if it was large (its data
    /// and room for its header), else 0: a buffer grown for less would take
    /// only part of such a PDU, which then moves to a larger one.
    pdu_room: usize,
}

/// Room for a C2HData PDU's header, digests and padding besides its data.
const PDU_HEADER_ROOM: usize = 128;

impl HandedOut {
    /// Note a C2HData's `data`, and watch its buffer (a clone of it) if it
    /// is large.
    fn keep(&mut self, data: &Bytes) {
        if data.len() < RECYCLE_MIN {
            self.pdu_room = 0;
            return;
        }
        self.pdu_room = data.len() + PDU_HEADER_ROOM;
        if self.data.len() < RECYCLE_KEEP {
            self.data.push(data.clone());
        }
    }

    /// Move `rbuf`'s bytes into a buffer of at least `capacity` bytes, and
    /// at least the size of a PDU like the last large one: a taken-back one
    /// if one is large enough, else a new one of just that size.
    fn regrow(&mut self, rbuf: &mut BytesMut, capacity: usize) {
        let want = capacity.max(self.pdu_room);
        let mut i = 0;
        while i < self.data.len() {
            if !self.data[i].is_unique() {
                i += 1;
                continue;
            }
            if let Ok(mut buf) = self.data.swap_remove(i).try_into_mut() {
                buf.clear();
                if buf.try_reclaim(want) {
                    buf.extend_from_slice(rbuf);
                    *rbuf = buf;
                    return;
                }
            }
        }
        let mut buf = BytesMut::with_capacity(want);
        buf.extend_from_slice(rbuf);
        *rbuf = buf;
    }
}

struct Reader {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    maxh2cdata: usize,
    /// How long to keep reading without sleeping while commands wait.
    poll: Duration,
}

impl Reader {
    async fn run(self, mut rd: OwnedReadHalf, dec: PduDecoder, mut rbuf: BytesMut) {
        // One waiter for the queue's life, not one per PDU.
        let token = self.shared.token().clone();
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let mut handed_out = HandedOut::default();
        let why = loop {
            match dec.decode(&mut rbuf) {
                Ok(Some(d)) => {
                    if let Decoded::Pdu(Pdu::C2hData { data, .. }) = &d {
                        handed_out.keep(data);
                    }
                    if let Err(why) = self.handle(d) {
                        break why;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "fatal PDU error from the controller");
                    let mut b = BytesMut::new();
                    encode_term(&e, true, &mut b);
                    let _ = self.tx.send(Outgoing::Term(b.freeze()));
                    break format!("fatal PDU error: {}", e.reason);
                }
            }
            if let Some(capacity) = read_buffer_needed(&rbuf) {
                handed_out.regrow(&mut rbuf, capacity);
            }
            // A read ends where a large PDU in progress ends: the next PDU
            // then starts a buffer of its own (taken back, sized to a PDU)
            // instead of being copied out of this one for want of room.
            let missing = PduDecoder::missing(&rbuf).unwrap_or(0);
            let limit = if missing >= RECYCLE_MIN {
                missing as u64
            } else {
                u64::MAX
            };
            if limit == u64::MAX && !self.poll.is_zero() {
                let shared = &self.shared;
                let waiting = || !shared.is_empty() && !shared.is_closed();
                match poll_read(&rd, &mut rbuf, self.poll, waiting).await {
                    Some(Ok(0)) => break "controller closed the connection".to_string(),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break format!("read failed: {e}"),
                    None => {}
                }
            }
            let mut limited = (&mut rd).take(limit);
            tokio::select! {
                r = limited.read_buf(&mut rbuf) => match r {
                    Ok(0) => break "controller closed the connection".to_string(),
                    Ok(_) => {}
                    Err(e) => break format!("read failed: {e}"),
                },
                _ = &mut cancelled => break "queue closed".to_string(),
            }
        };
        self.shared.fail_all(&why);
    }

    fn complete(&self, cqe: Completion) {
        let Some(Entry {
            done, state: mut p, ..
        }) = self.shared.remove(cqe.cid)
        else {
            tracing::warn!(cid = cqe.cid, "completion for an unknown command");
            return;
        };
        // A success that did not bring all the data asked for is a failed
        // transfer, never a short read.
        let short = p
            .read
            .as_ref()
            .is_some_and(|r| r.received() != r.expected());
        let failed = p
            .failed
            .or(short.then_some(Status::DATA_TRANSFER_ERROR))
            .filter(|_| cqe.status.is_success());
        let result = match failed {
            Some(status) => CommandResult {
                cqe: Completion { status, ..cqe },
                data: None,
            },
            None => CommandResult {
                cqe,
                data: p
                    .read
                    .take()
                    .filter(|_| cqe.status.is_success())
                    .map(ReadData::into_bytes),
            },
        };
        let _ = done.send(Ok(result));
    }

    fn handle(&self, d: Decoded) -> Result<(), String> {
        match d {
            Decoded::Pdu(Pdu::CapsuleResp(cqe)) => self.complete(cqe),
            Decoded::Pdu(Pdu::C2hData {
                hdr, success, data, ..
            }) => {
                self.c2h_data(hdr, data, false)?;
                if success {
                    self.complete(Completion::new(hdr.cccid, Status::SUCCESS));
                }
            }
            Decoded::BadDataDigest(m) => match m.pdu {
                Pdu::C2hData {
                    hdr, success, data, ..
                } => {
                    self.c2h_data(hdr, data, true)?;
                    if success {
                        self.complete(Completion::new(hdr.cccid, Status::SUCCESS));
                    }
                }
                _ => return Err("data digest error".into()),
            },
            Decoded::Pdu(Pdu::R2t(r)) => self.r2t(r)?,
            Decoded::Pdu(Pdu::C2hTermReq(t)) => {
                return Err(format!(
                    "controller terminated the connection (FES {:#x}, FEI {})",
                    t.fes, t.fei
                ));
            }
            Decoded::Pdu(_) => return Err("unexpected PDU from the controller".into()),
        }
        Ok(())
    }

    fn c2h_data(&self, hdr: DataHeader, data: Bytes, bad_digest: bool) -> Result<(), String> {
        let mut pending = self.shared.lock();
        let Some(p) = pending.get_mut(hdr.cccid as usize).map(|e| &mut e.state) else {
            return Err(format!("C2HData for unknown command {}", hdr.cccid));
        };
        let Some(buf) = p.read.as_mut() else {
            return Err(format!(
                "C2HData for command {} that reads nothing",
                hdr.cccid
            ));
        };
        let received = buf.received();
        if hdr.datao as usize != received || received + data.len() > buf.expected() {
            return Err(format!(
                "C2HData out of order or range for command {}",
                hdr.cccid
            ));
        }
        buf.add(data);
        if bad_digest {
            p.failed = Some(Status::DATA_TRANSFER_ERROR);
        }
        Ok(())
    }

    fn r2t(&self, r: R2t) -> Result<(), String> {
        let (start, len) = (r.offset as usize, r.length as usize);
        let out = {
            let mut pending = self.shared.lock();
            let p = pending
                .get_mut(r.cccid as usize)
                .map(|e| &mut e.state)
                .ok_or_else(|| format!("R2T for unknown command {}", r.cccid))?;
            let out = p
                .out
                .clone()
                .ok_or_else(|| format!("R2T for command {} that writes nothing", r.cccid))?;
            // Each byte is asked for once: an R2T may not go back over data
            // already requested (as the Linux host checks), which also bounds
            // what one command can make the host send.
            let in_range = len > 0
                && start >= p.out_requested
                && start.checked_add(len).is_some_and(|end| end <= out.len());
            if in_range {
                p.out_requested = start + len;
                Some(out)
            } else {
                None
            }
        };
        let Some(out) = out else {
            let e = PduError {
                fes: fes::DATA_OUT_OF_RANGE,
                fei: 0,
                reason: "R2T outside the command's data",
                header: Pdu::R2t(r).header_bytes(),
            };
            let mut b = BytesMut::new();
            encode_term(&e, true, &mut b);
            let _ = self.tx.send(Outgoing::Term(b.freeze()));
            return Err("R2T outside the command's data".into());
        };
        let mut off = start;
        while off < start + len {
            let n = self.maxh2cdata.min(start + len - off);
            let hdr = DataHeader {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off as u32,
                datal: n as u32,
            };
            let data = Outgoing::Data {
                hdr,
                last: off + n == start + len,
                data: out.slice(off..off + n),
            };
            self.tx.send(data).map_err(|_| "writer gone".to_string())?;
            off += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_data_in_one_piece_is_kept_without_a_copy() {
        let pdu = Bytes::from(vec![7u8; 4096]);
        let ptr = pdu.as_ptr();
        let mut r = ReadData::Expected(4096);
        r.add(pdu);
        assert_eq!(r.received(), 4096);
        assert_eq!(r.into_bytes().as_ptr(), ptr);
    }

    #[test]
    fn read_data_in_pieces_is_gathered() {
        let mut r = ReadData::Expected(6);
        r.add(Bytes::from_static(b"abc"));
        assert_eq!((r.received(), r.expected()), (3, 6));
        r.add(Bytes::from_static(b"def"));
        assert_eq!(&r.into_bytes()[..], b"abcdef");
        assert!(ReadData::Expected(8).into_bytes().is_empty());
    }

    #[test]
    fn receive_buffers_come_back_once_their_data_is_dropped() {
        let mut handed = HandedOut::default();
        // A receive buffer holding one large PDU's data, split off and
        // handed to a caller, while the reader moves on to a new buffer.
        let mut rbuf = BytesMut::with_capacity(256 * 1024);
        rbuf.extend_from_slice(&[7u8; 200 * 1024]);
        let data = rbuf.split_to(128 * 1024).freeze();
        let old = data.as_ptr();
        handed.keep(&data);
        let mut next = BytesMut::new();
        next.extend_from_slice(b"partial");
        // Still held by the caller and by the old buffer's tail: not reused.
        handed.regrow(&mut next, 64 * 1024);
        assert_ne!(next.as_ptr(), old);
        drop(rbuf);
        drop(data);
        let mut next = BytesMut::new();
        next.extend_from_slice(b"partial");
        handed.regrow(&mut next, 128 * 1024);
        assert_eq!(next.as_ptr(), old, "the dropped buffer serves again");
        assert_eq!(&next[..], b"partial");
        assert!(next.capacity() >= 7 + 128 * 1024);
        assert!(handed.data.is_empty());
        // Small data is not watched.
        handed.keep(&Bytes::from(vec![0u8; 100]));
        assert!(handed.data.is_empty());
    }

    #[test]
    fn buffers_grow_to_a_whole_pdu_while_the_last_one_was_large() {
        let mut handed = HandedOut::default();
        let large = Bytes::from(vec![0u8; 128 * 1024]);
        handed.keep(&large);
        // Between PDUs, room for a whole one like it: a read cannot end
        // part way into the next for want of room.
        let mut rbuf = BytesMut::new();
        handed.regrow(&mut rbuf, 1024);
        assert!(rbuf.capacity() >= 128 * 1024 + PDU_HEADER_ROOM);
        // After small data, buffers stay small.
        handed.keep(&Bytes::from(vec![0u8; 4096]));
        let mut rbuf = BytesMut::new();
        handed.regrow(&mut rbuf, 1024);
        assert!(rbuf.capacity() < 64 * 1024);
        drop(large);
    }
}
