//! The NVMe/TCP host side against a controller that breaks the protocol: a
//! hand-driven fake controller on a loopback port sends short read data,
//! repeated R2Ts and malformed PDUs, and the host must fail the command or
//! the connection, never return wrong data or send more than it was asked.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fabric::target::{PortAddress, TransportKind};
use fabric::transport::{
    host_transport, CommandResult, HostData, HostQueue, QueueParams, TransportError,
};
use fabric::wire::opcode::io;
use fabric::wire::tcp::{
    encode, DataHeader, Decoded, Digests, IcResp, Pdu, PduDecoder, PduHeader, R2t, Role,
};
use fabric::wire::{Command, Completion, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The controller end of one connection, driven by hand.
struct FakeController {
    stream: TcpStream,
    dec: PduDecoder,
    buf: BytesMut,
}

impl FakeController {
    /// Accept one connection and answer its ICReq.
    async fn accept(listener: &TcpListener) -> FakeController {
        let (stream, _) = listener.accept().await.unwrap();
        let mut c = FakeController {
            stream,
            dec: PduDecoder::new(Role::Controller, 1 << 20),
            buf: BytesMut::new(),
        };
        assert!(matches!(c.recv().await, Some(Pdu::IcReq(_))));
        c.send(
            &PduHeader::IcResp(IcResp {
                pfv: 0,
                cpda: 0,
                digests: Digests::default(),
                maxh2cdata: 1 << 20,
            }),
            &[],
        )
        .await;
        c
    }

    async fn send(&mut self, h: &PduHeader, data: &[u8]) {
        let mut out = BytesMut::new();
        encode(h, data, Digests::default(), 0, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next PDU from the host; `None` once it closed the connection or
    /// sent nothing for a second.
    async fn recv(&mut self) -> Option<Pdu> {
        let fut = async {
            loop {
                match self.dec.decode(&mut self.buf) {
                    Ok(Some(Decoded::Pdu(p))) => return Some(p),
                    Ok(Some(Decoded::BadDataDigest(_))) | Err(_) => return None,
                    Ok(None) => {}
                }
                self.buf.reserve(4096);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(1), fut)
            .await
            .ok()
            .flatten()
    }

    /// Complete command `cid` successfully.
    async fn succeed(&mut self, cid: u16) {
        let resp = PduHeader::CapsuleResp(Completion::new(cid, Status::SUCCESS));
        self.send(&resp, &[]).await;
    }

    /// The next command capsule.
    async fn recv_cmd(&mut self) -> Command {
        match self.recv().await {
            Some(Pdu::CapsuleCmd { cmd, .. }) => cmd,
            other => panic!("expected a command capsule, got {other:?}"),
        }
    }
}

/// A listener for the fake controller and a host queue connected to it.
async fn connected() -> (FakeController, std::sync::Arc<dyn HostQueue>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let address = PortAddress {
        kind: TransportKind::Tcp,
        host: "127.0.0.1".into(),
        port,
    };
    let params = QueueParams {
        qid: 1,
        queue_size: 32,
        inline_data_size: 0,
        digests: Digests::default(),
        timeout: Duration::from_secs(5),
        poll: Duration::ZERO,
    };
    let (fake, queue) = tokio::join!(FakeController::accept(&listener), async {
        host_transport(TransportKind::Tcp)
            .unwrap()
            .connect(&address, &params)
            .await
            .unwrap()
    });
    (fake, queue)
}

/// Submit `cmd` on `queue` from another task.
fn submit_in_background(
    queue: &std::sync::Arc<dyn HostQueue>,
    cmd: Command,
    data: HostData,
) -> tokio::task::JoinHandle<Result<CommandResult, TransportError>> {
    let queue = queue.clone();
    tokio::spawn(async move { queue.submit(cmd, data).await })
}

#[tokio::test]
async fn read_data_cut_short_fails_the_command() {
    let (mut fake, queue) = connected().await;
    let read = submit_in_background(&queue, Command::new(io::READ), HostData::In(4096));
    let cmd = fake.recv_cmd().await;
    // 1 KiB of the 4 KiB asked for, then a successful response.
    let hdr = DataHeader {
        cccid: cmd.cid,
        ttag: 0,
        datao: 0,
        datal: 1024,
    };
    fake.send(
        &PduHeader::Data {
            h2c: false,
            hdr,
            last: true,
            success: false,
        },
        &[0xab; 1024],
    )
    .await;
    fake.succeed(cmd.cid).await;
    let r = read.await.unwrap().unwrap();
    assert!(
        r.data.is_none() && r.cqe.status == Status::DATA_TRANSFER_ERROR,
        "a short read must fail, got {} with {:?} bytes",
        r.cqe.status,
        r.data.map(|d| d.len())
    );
}

#[tokio::test]
async fn a_repeated_r2t_does_not_make_the_host_send_its_data_twice() {
    let (mut fake, queue) = connected().await;
    let data = Bytes::from(vec![0x5a; 64 << 10]);
    let write = submit_in_background(&queue, Command::new(io::WRITE), HostData::Out(data));
    let cmd = fake.recv_cmd().await;
    let r2t = R2t {
        cccid: cmd.cid,
        ttag: 1,
        offset: 0,
        length: 64 << 10,
    };
    fake.send(&PduHeader::R2t(r2t), &[]).await;
    fake.send(&PduHeader::R2t(r2t), &[]).await;
    let (mut sent, mut term) = (0usize, false);
    while let Some(p) = fake.recv().await {
        match p {
            Pdu::H2cData { data, .. } => sent += data.len(),
            Pdu::H2cTermReq(t) => {
                // It carries the R2T's header, and no field offset.
                assert_eq!(t.data, Pdu::R2t(r2t).header_bytes());
                assert_eq!((t.data.len(), t.fei), (24, 0));
                term = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sent, 64 << 10, "the data was asked for once, sent {sent}");
    assert!(term, "a repeated R2T is a protocol error");
    assert!(write.await.unwrap().is_err());
}

#[tokio::test]
async fn a_malformed_pdu_gets_one_term_req() {
    let (mut fake, queue) = connected().await;
    let _pending = submit_in_background(&queue, Command::new(io::FLUSH), HostData::None);
    fake.recv_cmd().await;
    // A response capsule with a wrong header length.
    let mut out = BytesMut::new();
    encode(
        &PduHeader::CapsuleResp(Completion::new(0, Status::SUCCESS)),
        &[],
        Digests::default(),
        0,
        &mut out,
    );
    out[2] = 30;
    fake.stream.write_all(&out).await.unwrap();
    let mut terms = 0;
    while let Some(p) = fake.recv().await {
        match p {
            Pdu::H2cTermReq(_) => terms += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(terms, 1, "the host must send exactly one H2CTermReq");
}

/// Fill the queue (32 entries carry 31 commands) with flushes the fake
/// controller receives and leaves unanswered; their tasks and CIDs.
async fn fill_queue(
    fake: &mut FakeController,
    queue: &std::sync::Arc<dyn HostQueue>,
) -> (
    Vec<tokio::task::JoinHandle<Result<CommandResult, TransportError>>>,
    Vec<u16>,
) {
    let tasks: Vec<_> = (0..31)
        .map(|_| submit_in_background(queue, Command::new(io::FLUSH), HostData::None))
        .collect();
    let mut cids = Vec::new();
    for _ in 0..31 {
        cids.push(fake.recv_cmd().await.cid);
    }
    (tasks, cids)
}

#[tokio::test]
async fn abandoned_commands_keep_their_slots_until_answered() {
    let (mut fake, queue) = connected().await;
    // Abandon a full queue's commands once they are on the wire.
    let (abandoned, cids) = fill_queue(&mut fake, &queue).await;
    for task in &abandoned {
        task.abort();
    }
    for task in abandoned {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    // Still outstanding at the controller: the next command must wait.
    let next = submit_in_background(&queue, Command::new(io::FLUSH), HostData::None);
    assert!(
        fake.recv().await.is_none(),
        "a 32nd command was sent while 31 were outstanding"
    );
    // One answered: the waiting command goes out, and completes.
    fake.succeed(cids[0]).await;
    let cid = fake.recv_cmd().await.cid;
    fake.succeed(cid).await;
    let r = next.await.unwrap().unwrap();
    assert_eq!(r.cqe.status, Status::SUCCESS);
}

#[tokio::test]
async fn closing_the_queue_ends_a_submit_waiting_for_a_slot() {
    let (mut fake, queue) = connected().await;
    let (outstanding, _) = fill_queue(&mut fake, &queue).await;
    let waiting = submit_in_background(&queue, Command::new(io::FLUSH), HostData::None);
    tokio::task::yield_now().await;
    queue.close();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert!(r.expect("the waiting submit hung").unwrap().is_err());
    for task in outstanding {
        assert!(task.await.unwrap().is_err());
    }
}
