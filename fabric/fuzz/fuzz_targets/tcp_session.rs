//! The TCP target on a fuzzed session over a real loopback socket. After the
//! fuzzer's choice of prelude (nothing, ICReq, ICReq + admin Connect to the
//! subsystem or to discovery, or an
//! I/O queue Connect on a live controller) comes a fuzzed sequence of
//! command capsules, H2CData PDUs (fuzzed, or answering an R2T the target
//! sent, perturbed), H2CTermReqs and raw bytes, framed with the negotiated
//! digests or deliberately corrupted, written in fuzzed pieces. Then the host
//! stops sending. The target must only send well-formed PDUs, must close the
//! connection within 5 s of the host going quiet (no hang), and nothing may
//! panic (libFuzzer turns a panic on any thread into a crash).
#![no_main]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use fabric::target::{PortAddress, SubsystemConfig, Target, TargetConfig, TransportKind};
use fabric::transport::{target_transport, ListenerHandle};
use fabric::wire::fabrics::{cc, ConnectCommand, ConnectData, PropertyCommand};
use fabric::wire::sgl::SglDescriptor;
use fabric::wire::tcp::{encode, DataHeader, Decoded, Digests, IcReq, Pdu, PduDecoder, PduHeader, R2t, Role};
use fabric::wire::{Command, Completion, CNTLID_DYNAMIC, DISCOVERY_NQN};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

const NQN: &str = "nqn.2026-11.io.fabric:fuzz";
const HOSTNQN: &str = "nqn.2026-11.io.fabric:fuzz-host";
/// How long the target may take to close after the host went quiet.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

struct World {
    rt: tokio::runtime::Runtime,
    address: PortAddress,
    // Held for the process's life (reachable, so not reported as leaks).
    _target: Arc<Target>,
    _listener: ListenerHandle,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = common::runtime();
        let (target, listener) = rt.block_on(async {
            let target = Target::new(TargetConfig::default()).unwrap();
            let sub = target.add_subsystem(SubsystemConfig::new(NQN)).unwrap();
            sub.add_namespace(1, Arc::new(raid::MemoryDevice::new(1 << 20, 4096)), 1)
                .unwrap();
            sub.add_namespace(2, Arc::new(raid::NullDevice::new(1 << 20, 512)), 2)
                .unwrap();
            let port = target.add_port("tcp://127.0.0.1:0".parse().unwrap(), true);
            let tcp = target_transport(TransportKind::Tcp).unwrap();
            let listener = tcp.listen(target.clone(), port).await.unwrap();
            (target, listener)
        });
        World {
            rt,
            address: listener.local.clone(),
            _target: target,
            _listener: listener,
        }
    })
}

/// One host connection: a writer, and a reader task that checks every PDU
/// the target sends and remembers its R2Ts.
struct Session {
    wr: OwnedWriteHalf,
    digests: Digests,
    r2ts: Arc<Mutex<Vec<R2t>>>,
    responses: Arc<Mutex<Vec<Completion>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Connect; PDUs go out, and are read, with `digests` (the
    /// initialization PDUs never carry any).
    async fn open(w: &World, digests: Digests) -> Session {
        let stream = TcpStream::connect(w.address.socket_string()).await.unwrap();
        let _ = stream.set_nodelay(true);
        let (mut rd, wr) = stream.into_split();
        let r2ts = Arc::new(Mutex::new(Vec::new()));
        let responses = Arc::new(Mutex::new(Vec::new()));
        let (r2, rs) = (r2ts.clone(), responses.clone());
        let reader = tokio::spawn(async move {
            let mut dec = PduDecoder::new(Role::Host, 1 << 24);
            dec.digests = digests;
            let mut buf = BytesMut::new();
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(Decoded::Pdu(p))) => {
                        match p {
                            Pdu::R2t(r) => r2.lock().unwrap().push(r),
                            Pdu::CapsuleResp(c) => rs.lock().unwrap().push(c),
                            _ => {}
                        }
                        continue;
                    }
                    Ok(Some(Decoded::BadDataDigest(_))) => panic!("the target sent a bad data digest"),
                    Ok(None) => {}
                    Err(e) => panic!("the target sent a malformed PDU: {e}"),
                }
                buf.reserve(64 * 1024);
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        Session {
            wr,
            digests,
            r2ts,
            responses,
            reader,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.wr.write_all(bytes).await.is_ok()
    }

    async fn send_pdu(&mut self, h: &PduHeader, data: &[u8]) -> bool {
        let mut out = BytesMut::new();
        encode(h, data, self.digests, 0, &mut out);
        self.send(&out).await
    }

    /// Wait up to 2 s for the response to `cid`.
    async fn response(&mut self, cid: u16) -> Option<Completion> {
        for _ in 0..2000 {
            if let Some(c) = self.responses.lock().unwrap().iter().find(|c| c.cid == cid) {
                return Some(*c);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    /// ICReq asking for the session's digests; false if it could not be
    /// sent.
    async fn initialize(&mut self) -> bool {
        let ic = PduHeader::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            digests: self.digests,
            maxr2t: 0,
        });
        let mut out = BytesMut::new();
        encode(&ic, &[], Digests::default(), 0, &mut out);
        self.send(&out).await
    }

    async fn connect(&mut self, subnqn: &str, qid: u16, cntlid: u16) -> Option<Completion> {
        let cmd = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: 0,
            kato_ms: 0,
        }
        .to_command(0x7000 + qid, SglDescriptor::in_capsule(1024));
        let data = ConnectData {
            hostid: [7; 16],
            cntlid,
            subnqn: subnqn.into(),
            hostnqn: HOSTNQN.into(),
        };
        if !self.send_pdu(&PduHeader::CapsuleCmd(cmd), &data.encode()).await {
            return None;
        }
        self.response(cmd.cid).await
    }

    /// Stop sending; the target must then close the connection in time.
    async fn finish(mut self) {
        let _ = self.wr.shutdown().await;
        if tokio::time::timeout(CLOSE_WITHIN, &mut self.reader).await.is_err() {
            panic!("the target kept the connection open {CLOSE_WITHIN:?} after the host went quiet");
        }
    }
}

/// A command with fuzzed fields, biased toward ones the target parses
/// deeply (reads, writes, DSM, admin log pages and features).
fn command(u: &mut Unstructured) -> ArbResult<(Command, Vec<u8>)> {
    let opcode = *u.choose(&[
        0x00, 0x01, 0x02, 0x08, 0x09, 0x0c, 0x04, 0x06, 0x7f, 0x02, 0x0a, 0x18, 0xff,
    ])?;
    let opcode = if u.ratio(1, 8)? { u.arbitrary()? } else { opcode };
    let mut cmd = Command::decode(&[0u8; 64]);
    cmd.opcode = opcode;
    cmd.cid = u.int_in_range(0..=7)?;
    cmd.nsid = *u.choose(&[1, 2, 0, 0xffff_ffff, 3])?;
    cmd.flags = if u.ratio(1, 8)? { u.arbitrary()? } else { 0x40 };
    cmd.cdw10 = if u.ratio(1, 2)? {
        u.int_in_range(0..=300)?
    } else {
        u.arbitrary()?
    };
    cmd.cdw11 = if u.ratio(3, 4)? { 0 } else { u.arbitrary()? };
    cmd.cdw12 = if u.ratio(1, 2)? {
        u.int_in_range(0..=40)?
    } else {
        u.arbitrary()?
    };
    cmd.cdw13 = u.arbitrary()?;
    let mut data = Vec::new();
    cmd.dptr = match u.int_in_range(0..=3)? {
        0 => {
            let len = u.int_in_range(0..=20_000usize)?;
            data = vec![0x5a; len];
            SglDescriptor::in_capsule(len as u32)
        }
        1 => SglDescriptor::transport_data_block(u.int_in_range(0..=300_000)?),
        2 => {
            let len = u.int_in_range(0..=16_384u32)?;
            data = vec![0xa5; u.int_in_range(0..=16_384usize)?];
            SglDescriptor::in_capsule(len)
        }
        _ => {
            let raw: [u8; 16] = u.arbitrary()?;
            SglDescriptor::decode(&raw)
        }
    };
    Ok((cmd, data))
}

/// An H2CData PDU: for an R2T the target sent, perturbed, or made up.
fn h2c_data(u: &mut Unstructured, r2ts: &[R2t]) -> ArbResult<(PduHeader, Vec<u8>)> {
    let mut hdr = match r2ts.last() {
        Some(r) if u.ratio(3, 4)? => DataHeader {
            cccid: r.cccid,
            ttag: r.ttag,
            datao: r.offset,
            datal: r.length,
        },
        _ => DataHeader {
            cccid: u.int_in_range(0..=7)?,
            ttag: u.int_in_range(0..=8)?,
            datao: u.int_in_range(0..=8192)?,
            datal: u.int_in_range(0..=8192)?,
        },
    };
    match u.int_in_range(0..=5)? {
        0 => hdr.datal = hdr.datal.saturating_sub(u.int_in_range(0..=4096)?),
        1 => hdr.datao = hdr.datao.wrapping_add(u.int_in_range(0..=4096)?),
        2 => hdr.ttag = hdr.ttag.wrapping_add(1),
        3 => hdr.datal = u.arbitrary()?,
        _ => {}
    }
    let len = (hdr.datal as usize).min(70_000);
    let len = if u.ratio(1, 8)? { u.int_in_range(0..=len)? } else { len };
    let last = !u.ratio(1, 4)?;
    Ok((
        PduHeader::Data {
            h2c: true,
            hdr,
            last,
            success: false,
        },
        vec![0x3c; len],
    ))
}

async fn session(w: &World, u: &mut Unstructured<'_>) -> ArbResult<()> {
    let digests = Digests {
        header: u.ratio(1, 4)?,
        data: u.ratio(1, 4)?,
    };
    let prelude = u.int_in_range(0..=4u8)?;
    // The admin queue the I/O queue's controller lives on, kept open
    // while the I/O queue is fuzzed.
    let mut admin = None;
    // Without an ICReq nothing was negotiated.
    let negotiated = if prelude >= 1 { digests } else { Digests::default() };
    let mut s = Session::open(w, negotiated).await;
    if prelude >= 1 && !s.initialize().await {
        s.finish().await;
        return Ok(());
    }
    if prelude == 2 || prelude == 4 {
        let subnqn = if prelude == 2 { NQN } else { DISCOVERY_NQN };
        let r = s
            .connect(subnqn, 0, CNTLID_DYNAMIC)
            .await
            .expect("no answer to an admin Connect");
        assert!(r.status.is_success(), "admin Connect failed: {r:?}");
    }
    if prelude == 3 {
        let mut a = Session::open(w, Digests::default()).await;
        assert!(a.initialize().await);
        let r = a
            .connect(NQN, 0, CNTLID_DYNAMIC)
            .await
            .expect("no answer to an admin Connect");
        assert!(r.status.is_success(), "admin Connect failed: {r:?}");
        let cntlid = r.result as u16;
        let mut en = PropertyCommand::set(0x7100, 0x14, cc::ENABLE_DEFAULT as u64, false);
        en.dptr = SglDescriptor::transport_data_block(0);
        assert!(a.send_pdu(&PduHeader::CapsuleCmd(en), &[]).await);
        let r = a.response(0x7100).await;
        assert!(
            r.is_some_and(|c| c.status.is_success()),
            "enabling the controller: {r:?}"
        );
        let r = s.connect(NQN, 1, cntlid).await.expect("no answer to an I/O Connect");
        assert!(r.status.is_success(), "I/O Connect failed: {r:?}");
        admin = Some(a);
    }
    while !u.is_empty() {
        let mut out = BytesMut::new();
        match u.int_in_range(0..=9u8)? {
            0..=3 => {
                let (cmd, data) = command(u)?;
                encode(&PduHeader::CapsuleCmd(cmd), &data, s.digests, 0, &mut out);
            }
            4..=6 => {
                let r2ts = s.r2ts.lock().unwrap().clone();
                let (h, data) = h2c_data(u, &r2ts)?;
                encode(&h, &data, s.digests, 0, &mut out);
            }
            7 => {
                // Wait a moment for the target's R2Ts and responses.
                tokio::time::sleep(Duration::from_millis(u.int_in_range(0..=20)?)).await;
                continue;
            }
            8 => {
                let h = if u.ratio(1, 2)? {
                    PduHeader::TermReq {
                        h2c: true,
                        fes: u.arbitrary()?,
                        fei: u.arbitrary()?,
                    }
                } else {
                    PduHeader::IcReq(IcReq {
                        pfv: 0,
                        hpda: 0,
                        digests,
                        maxr2t: 0,
                    })
                };
                encode(&h, &[], s.digests, 0, &mut out);
            }
            _ => common::raw_bytes(u, &mut out)?,
        }
        let ok = common::send(u, &mut s.wr, out).await?;
        if !ok {
            break;
        }
    }
    s.finish().await;
    if let Some(a) = admin {
        a.finish().await;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut u = Unstructured::new(data);
    w.rt.block_on(async {
        let _ = session(w, &mut u).await;
    });
});
