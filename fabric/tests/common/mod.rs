//! Helpers shared by the integration tests: an in-process target on a
//! loopback port.

#![allow(dead_code)]

use std::sync::Arc;

use fabric::target::{PortAddress, SubsystemConfig, Target, TargetConfig};
use fabric::transport::{target_transport, ListenerHandle, TargetTransport};
use raid::{MemoryDevice, NullDevice};

/// The NQN the test target serves.
pub const NQN: &str = "nqn.2026-11.io.fabric:test";

/// A running target.
pub struct TestTarget {
    pub target: Arc<Target>,
    pub address: PortAddress,
    pub listener: Option<ListenerHandle>,
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.target.shutdown();
    }
}

/// A target with one memory namespace of `size` bytes (and a null namespace
/// as NSID 2) on an ephemeral loopback TCP port, with discovery.
pub async fn start(size: u64, allowed_hosts: Vec<String>) -> TestTarget {
    start_with(size, allowed_hosts, TargetConfig::default()).await
}

/// As [`start`], with target settings.
pub async fn start_with(size: u64, allowed_hosts: Vec<String>, cfg: TargetConfig) -> TestTarget {
    let tcp = target_transport(fabric::target::TransportKind::Tcp).unwrap();
    start_on(size, allowed_hosts, cfg, tcp).await
}

/// As [`start_with`], listening with `transport` (a TCP one).
pub async fn start_on(
    size: u64,
    allowed_hosts: Vec<String>,
    cfg: TargetConfig,
    transport: Arc<dyn TargetTransport>,
) -> TestTarget {
    let target = Target::new(cfg).unwrap();
    let mut sc = SubsystemConfig::new(NQN);
    sc.allowed_hosts = allowed_hosts;
    let sub = target.add_subsystem(sc).unwrap();
    sub.add_namespace(1, Arc::new(MemoryDevice::new(size, 4096)), 1)
        .unwrap();
    sub.add_namespace(2, Arc::new(NullDevice::new(size, 512)), 2)
        .unwrap();
    let port = target.add_port("tcp://127.0.0.1:0".parse().unwrap(), true);
    let listener = transport.listen(target.clone(), port).await.unwrap();
    let address = listener.local.clone();
    TestTarget {
        target,
        address,
        listener: Some(listener),
    }
}

use bytes::{Bytes, BytesMut};
use fabric::wire::fabrics::{ConnectCommand, ConnectData};
use fabric::wire::sgl::SglDescriptor;
use fabric::wire::tcp::{
    encode, Decoded, Digests, IcReq, Pdu, PduDecoder, PduHeader, Role, TermReq,
};
use fabric::wire::{Command, Completion, CNTLID_DYNAMIC};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A hand-driven NVMe/TCP host connection for sending malformed traffic.
pub struct RawConn {
    pub stream: TcpStream,
    pub dec: PduDecoder,
    pub buf: BytesMut,
    pub digests: Digests,
}

/// What a raw connection received.
#[derive(Debug)]
pub enum Received {
    Pdu(Pdu),
    Closed,
}

impl RawConn {
    /// Connect and (if `initialize`) exchange ICReq/ICResp.
    pub async fn open(t: &TestTarget, initialize: bool, digests: Digests) -> RawConn {
        let stream = TcpStream::connect(t.address.socket_string()).await.unwrap();
        let mut c = RawConn {
            stream,
            dec: PduDecoder::new(Role::Host, 1 << 24),
            buf: BytesMut::new(),
            digests: Digests::default(),
        };
        if initialize {
            c.send_pdu(
                &PduHeader::IcReq(IcReq {
                    pfv: 0,
                    hpda: 0,
                    digests,
                    maxr2t: 0,
                }),
                &[],
            )
            .await;
            match c.recv().await {
                Received::Pdu(Pdu::IcResp(r)) => assert_eq!(r.digests, digests),
                other => panic!("expected ICResp, got {other:?}"),
            }
            c.digests = digests;
            c.dec.digests = digests;
        }
        c
    }

    /// Send raw bytes.
    pub async fn send_raw(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// Encode and send a PDU with the negotiated digests.
    pub async fn send_pdu(&mut self, h: &PduHeader, data: &[u8]) {
        let mut out = BytesMut::new();
        encode(h, data, self.digests, 0, &mut out);
        self.send_raw(&out).await;
    }

    /// Send a command capsule (in-capsule `data`, SGL set to match).
    pub async fn send_cmd(&mut self, mut cmd: Command, data: &[u8]) {
        if !data.is_empty() {
            cmd.dptr = SglDescriptor::in_capsule(data.len() as u32);
        } else if cmd.dptr == SglDescriptor::default() {
            cmd.dptr = SglDescriptor::transport_data_block(0);
        }
        self.send_pdu(&PduHeader::CapsuleCmd(cmd), data).await;
    }

    /// Receive one PDU, or `Closed` (EOF or reset), within 10 s.
    pub async fn recv(&mut self) -> Received {
        let fut = async {
            loop {
                match self.dec.decode(&mut self.buf) {
                    Ok(Some(Decoded::Pdu(p))) => return Received::Pdu(p),
                    Ok(Some(Decoded::BadDataDigest(d))) => return Received::Pdu(d.pdu),
                    Ok(None) => {}
                    Err(e) => panic!("target sent a malformed PDU: {e}"),
                }
                self.buf.reserve(4096);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Received::Closed,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("no answer from the target within 10 s")
    }

    /// Receive the response capsule for a command.
    pub async fn recv_cqe(&mut self) -> Completion {
        loop {
            match self.recv().await {
                Received::Pdu(Pdu::CapsuleResp(c)) => return c,
                Received::Pdu(Pdu::C2hData { .. }) => continue,
                other => panic!("expected a response capsule, got {other:?}"),
            }
        }
    }

    /// Send Connect for `qid` and return its completion.
    pub async fn connect(
        &mut self,
        qid: u16,
        cntlid: u16,
        hostnqn: &str,
        hostid: [u8; 16],
    ) -> Completion {
        let cmd = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: 0,
            kato_ms: 0,
        }
        .to_command(1, SglDescriptor::in_capsule(1024));
        let data = ConnectData {
            hostid,
            cntlid,
            subnqn: NQN.into(),
            hostnqn: hostnqn.into(),
        };
        self.send_cmd(cmd, &data.encode()).await;
        self.recv_cqe().await
    }

    /// Connect the admin queue and enable the controller; returns the controller ID.
    pub async fn connect_admin(&mut self, hostnqn: &str, hostid: [u8; 16]) -> u16 {
        let c = self.connect(0, CNTLID_DYNAMIC, hostnqn, hostid).await;
        assert!(c.status.is_success(), "admin connect failed: {}", c.status);
        let en = fabric::wire::fabrics::PropertyCommand::set(
            2,
            0x14,
            fabric::wire::fabrics::cc::ENABLE_DEFAULT as u64,
            false,
        );
        self.send_cmd(en, &[]).await;
        assert!(self.recv_cqe().await.status.is_success());
        c.result as u16
    }

    /// Send Keep Alive as command `cid` and expect it to succeed (the
    /// connection and its controller still work).
    pub async fn expect_keep_alive(&mut self, cid: u16) {
        self.send_cmd(
            Command {
                cid,
                ..Command::new(fabric::wire::opcode::admin::KEEP_ALIVE)
            },
            &[],
        )
        .await;
        let cqe = self.recv_cqe().await;
        assert!(
            cqe.cid == cid && cqe.status.is_success(),
            "keep alive failed: {cqe:?}"
        );
    }

    /// Expect a C2HTermReq with `fes` followed by the connection closing.
    pub async fn expect_term(&mut self, fes: u16) -> TermReq {
        let t = match self.recv().await {
            Received::Pdu(Pdu::C2hTermReq(t)) => t,
            other => panic!("expected C2HTermReq, got {other:?}"),
        };
        assert_eq!(t.fes, fes, "wrong FES in {t:?}");
        assert!(
            matches!(self.recv().await, Received::Closed),
            "connection not closed after the TermReq"
        );
        t
    }
}

/// Bytes of a 4 KiB block of `v`.
pub fn block(v: u8) -> Bytes {
    Bytes::from(vec![v; 4096])
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
