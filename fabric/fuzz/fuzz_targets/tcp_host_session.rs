//! The TCP host library against a fuzzed controller. A host queue on a real
//! loopback socket has reads, writes and flushes outstanding; the fake
//! controller answers them with a fuzzed sequence of response capsules,
//! C2HData PDUs, R2Ts (for commands it saw, perturbed, or made up),
//! C2HTermReqs and raw bytes, written in fuzzed pieces, then closes the
//! connection. The host must only send well-formed PDUs, never hand back a
//! successful read with the wrong length, end every command within 3 s of
//! the close (no hang), and never panic.
#![no_main]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fabric::target::{PortAddress, TransportKind};
use fabric::transport::{host_transport, HostData, HostQueue, QueueParams};
use fabric::wire::opcode::io;
use fabric::wire::tcp::{encode, DataHeader, Decoded, Digests, IcResp, Pdu, PduDecoder, PduHeader, R2t, Role};
use fabric::wire::{Command, Completion, Status};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long the host may take to end its commands after the close.
const END_WITHIN: Duration = Duration::from_secs(3);

struct World {
    rt: tokio::runtime::Runtime,
    listener: TcpListener,
    address: PortAddress,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = common::runtime();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let address = PortAddress {
            kind: TransportKind::Tcp,
            host: "127.0.0.1".into(),
            port,
        };
        World { rt, listener, address }
    })
}

async fn session(w: &World, u: &mut Unstructured<'_>) -> ArbResult<()> {
    let digests = Digests {
        header: u.ratio(1, 4)?,
        data: u.ratio(1, 4)?,
    };
    let params = QueueParams {
        qid: 1,
        queue_size: 8,
        inline_data_size: *u.choose(&[0, 4096, 8192])?,
        digests,
        timeout: Duration::from_secs(60),
        poll: if u.ratio(1, 4)? {
            Duration::from_micros(50)
        } else {
            Duration::ZERO
        },
    };
    let accept = async {
        let (stream, _) = w.listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut dec = PduDecoder::new(Role::Controller, 1 << 20);
        let mut buf = BytesMut::new();
        let ic = loop {
            match dec.decode(&mut buf) {
                Ok(Some(Decoded::Pdu(Pdu::IcReq(r)))) => break r,
                Ok(Some(_)) | Err(_) => panic!("the host's first PDU is not a valid ICReq"),
                Ok(None) => {}
            }
            assert!(
                rd.read_buf(&mut buf).await.unwrap() > 0,
                "the host closed before its ICReq"
            );
        };
        assert_eq!(ic.digests, digests);
        let mut out = BytesMut::new();
        let resp = IcResp {
            pfv: 0,
            cpda: 0,
            digests,
            maxh2cdata: 1 << 20,
        };
        encode(&PduHeader::IcResp(resp), &[], Digests::default(), 0, &mut out);
        wr.write_all(&out).await.unwrap();
        dec.digests = digests;
        (rd, wr, dec, buf)
    };
    let connect = async {
        host_transport(TransportKind::Tcp)
            .unwrap()
            .connect(&w.address, &params)
            .await
    };
    let ((mut rd, mut wr, dec, mut buf), queue) = tokio::join!(accept, connect);
    let queue: Arc<dyn HostQueue> = queue.expect("the host's connect failed against a valid ICResp");

    // The host's commands, each on a task of its own.
    let n = u.int_in_range(1..=8usize)?;
    let mut commands = Vec::new();
    for _ in 0..n {
        let len = 512 * u.int_in_range(1..=32u32)?;
        let (cmd, data) = match u.int_in_range(0..=2u8)? {
            0 => (Command::new(io::READ), HostData::In(len)),
            1 => (
                Command::new(io::WRITE),
                HostData::Out(Bytes::from(vec![0x77; len as usize])),
            ),
            _ => (Command::new(io::FLUSH), HostData::None),
        };
        let q = queue.clone();
        commands.push(tokio::spawn(async move {
            let want = data.len();
            let read = matches!(data, HostData::In(_));
            if let Ok(r) = q.submit(cmd, data).await {
                if read && r.cqe.status.is_success() {
                    let got = r.data.as_ref().map_or(0, |d| d.len());
                    assert_eq!(got as u32, want, "a successful read returned {got} of {want} bytes");
                }
            }
        }));
    }

    // The host's PDUs, checked as they come.
    // The commands the fake controller has seen from the host.
    let seen = Arc::new(Mutex::new(Vec::<Command>::new()));
    let seen_by_reader = seen.clone();
    let reader = tokio::spawn(async move {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Decoded::Pdu(Pdu::CapsuleCmd { cmd, .. }))) => seen_by_reader.lock().unwrap().push(cmd),
                Ok(Some(Decoded::Pdu(_))) => {}
                Ok(Some(Decoded::BadDataDigest(_))) => panic!("the host sent a bad data digest"),
                Err(e) => panic!("the host sent a malformed PDU: {e}"),
                Ok(None) => {}
            }
            buf.reserve(64 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });

    while !u.is_empty() {
        let cmds = seen.lock().unwrap().clone();
        let cid = match cmds.is_empty() || u.ratio(1, 8)? {
            true => u.int_in_range(0..=15u16)?,
            false => u.choose(&cmds)?.cid,
        };
        let len = cmds.iter().find(|c| c.cid == cid).map_or(4096, |c| c.dptr.length);
        let mut out = BytesMut::new();
        match u.int_in_range(0..=9u8)? {
            0..=2 => {
                let status = if u.ratio(3, 4)? {
                    Status::SUCCESS
                } else {
                    Status::INTERNAL
                };
                let mut cqe = Completion::new(cid, status);
                cqe.sq_head = u.arbitrary()?;
                cqe.result = u.arbitrary()?;
                encode(&PduHeader::CapsuleResp(cqe), &[], digests, 0, &mut out);
            }
            3..=5 => {
                let (mut datao, mut datal) = (0, len);
                match u.int_in_range(0..=4u8)? {
                    0 => datal = u.int_in_range(0..=len.saturating_add(4096))?,
                    1 => datao = u.int_in_range(0..=len)?,
                    2 => (datao, datal) = (u.arbitrary()?, u.int_in_range(0..=16_384)?),
                    _ => {}
                }
                let hdr = DataHeader {
                    cccid: cid,
                    ttag: 0,
                    datao,
                    datal,
                };
                let last = !u.ratio(1, 4)?;
                let success = last && u.ratio(1, 2)?;
                let data = vec![0x11; (datal as usize).min(70_000)];
                encode(
                    &PduHeader::Data {
                        h2c: false,
                        hdr,
                        last,
                        success,
                    },
                    &data,
                    digests,
                    0,
                    &mut out,
                );
            }
            6 | 7 => {
                let r2t = R2t {
                    cccid: cid,
                    ttag: u.arbitrary()?,
                    offset: if u.ratio(3, 4)? { 0 } else { u.int_in_range(0..=len)? },
                    length: if u.ratio(3, 4)? { len } else { u.arbitrary()? },
                };
                encode(&PduHeader::R2t(r2t), &[], digests, 0, &mut out);
            }
            8 => {
                tokio::time::sleep(Duration::from_millis(u.int_in_range(0..=20)?)).await;
                continue;
            }
            _ => common::raw_bytes(u, &mut out)?,
        }
        if !common::send(u, &mut wr, out).await? {
            break;
        }
    }
    // Close; every command must end (with an error or an answer) in time.
    drop(wr);
    let ended = async {
        for c in commands {
            if let Err(e) = c.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    };
    if tokio::time::timeout(END_WITHIN, ended).await.is_err() {
        panic!("host commands still pending {END_WITHIN:?} after the controller closed the connection");
    }
    queue.close();
    let _ = tokio::time::timeout(END_WITHIN, reader).await;
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut u = Unstructured::new(data);
    w.rt.block_on(async {
        let _ = session(w, &mut u).await;
    });
});
