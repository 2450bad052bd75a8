//! Bad input over NVMe/TCP: malformed PDUs end that one connection with a
//! C2HTermReq; bad commands get the exact NVMe status; a well-behaved host's
//! I/O on another connection goes on and verifies throughout.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::RawConn;
use fabric::host::{rw_command, HostController, HostOptions};
use fabric::transport::HostData;
use fabric::wire::fabrics::connect_cmd_offset;
use fabric::wire::opcode::{admin, io};
use fabric::wire::sgl::SglDescriptor;
use fabric::wire::tcp::{fes, DataHeader, Digests, PduHeader};
use fabric::wire::{Command, Status};
use raid::{buf, BlockDevice};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000beef";
const HOSTID: [u8; 16] = [0xbe; 16];

/// A host doing verified writes and reads until told to stop; returns how
/// many rounds it completed.
fn good_host(t: &common::TestTarget, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let address = t.address.clone();
    tokio::spawn(async move {
        let ctrl = HostController::connect(&address, common::NQN, &HostOptions::default())
            .await
            .unwrap();
        let ns = ctrl.namespace(1).await.unwrap();
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) || rounds < 5 {
            let v = (rounds % 251) as u8;
            let lba = 1000 + rounds % 64;
            ns.write(lba, common::block(v))
                .await
                .expect("good host write failed");
            let back = ns
                .read(lba, buf::alloc(4096))
                .await
                .expect("good host read failed");
            assert!(
                back.iter().all(|&b| b == v),
                "good host read back wrong data"
            );
            rounds += 1;
        }
        rounds
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_end_only_their_connection() {
    let t = common::start(16 << 20, vec![]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_host(&t, stop.clone());

    // Truncated ICReq, then the peer goes away.
    let mut c = RawConn::open(&t, false, Digests::default()).await;
    c.send_raw(&[0, 0, 128, 0, 128, 0, 0]).await;
    drop(c);

    // ICReq with the wrong PDU length.
    let mut c = RawConn::open(&t, false, Digests::default()).await;
    let mut icreq = [0u8; 128];
    icreq[2] = 128;
    icreq[4] = 200;
    c.send_raw(&icreq).await;
    c.expect_term(fes::INVALID_HEADER_FIELD).await;

    // ICReq with an unsupported PDU format version.
    let mut c = RawConn::open(&t, false, Digests::default()).await;
    icreq[4] = 128;
    icreq[8] = 1;
    c.send_raw(&icreq).await;
    c.expect_term(fes::UNSUPPORTED_PARAMETER).await;

    // A command capsule as the first PDU: the TermReq carries its header
    // (as the spec asks and SPDK requires), and no field offset (the spec
    // defines one only for invalid fields and unsupported parameters).
    let mut c = RawConn::open(&t, false, Digests::default()).await;
    let cmd = Command {
        dptr: fabric::wire::sgl::SglDescriptor::transport_data_block(0),
        ..Command::new(admin::IDENTIFY)
    };
    c.send_cmd(cmd, &[]).await;
    let term = c.expect_term(fes::PDU_SEQUENCE_ERROR).await;
    let mut sent = bytes::BytesMut::new();
    fabric::wire::tcp::encode(
        &PduHeader::CapsuleCmd(cmd),
        &[],
        Digests::default(),
        0,
        &mut sent,
    );
    assert_eq!(term.data, sent[..72]);
    assert_eq!(term.fei, 0);

    // Wrong header length of a capsule.
    let mut c = RawConn::open(&t, true, Digests::default()).await;
    let mut capsule = vec![4u8, 0, 70, 0, 72, 0, 0, 0];
    capsule.extend_from_slice(&[0u8; 64]);
    c.send_raw(&capsule).await;
    c.expect_term(fes::INVALID_HEADER_FIELD).await;

    // Unknown PDU type.
    let mut c = RawConn::open(&t, true, Digests::default()).await;
    c.send_raw(&[0x42, 0, 24, 0, 24, 0, 0, 0]).await;
    c.send_raw(&[0u8; 16]).await;
    c.expect_term(fes::INVALID_HEADER_FIELD).await;

    // A PDU length beyond any limit.
    let mut c = RawConn::open(&t, true, Digests::default()).await;
    c.send_raw(&[4, 0, 72, 0, 0, 0, 0, 0x40]).await;
    c.expect_term(fes::DATA_LIMIT_EXCEEDED).await;

    // A bad header digest.
    let dg = Digests {
        header: true,
        data: false,
    };
    let mut c = RawConn::open(&t, true, dg).await;
    let mut out = bytes::BytesMut::new();
    fabric::wire::tcp::encode(
        &PduHeader::CapsuleCmd(Command::new(admin::KEEP_ALIVE)),
        &[],
        dg,
        0,
        &mut out,
    );
    out[20] ^= 0xff;
    c.send_raw(&out).await;
    c.expect_term(fes::HEADER_DIGEST_ERROR).await;

    // H2CData for a transfer tag that was never handed out.
    let mut c = RawConn::open(&t, true, Digests::default()).await;
    c.connect_admin(HOST, HOSTID).await;
    let hdr = DataHeader {
        cccid: 9,
        ttag: 77,
        datao: 0,
        datal: 4,
    };
    c.send_pdu(
        &PduHeader::Data {
            h2c: true,
            hdr,
            last: true,
            success: false,
        },
        b"abcd",
    )
    .await;
    let term = c.expect_term(fes::INVALID_HEADER_FIELD).await;
    // Its header comes back, with the offset of the bad field (TTAG).
    let mut sent = bytes::BytesMut::new();
    let h2c = PduHeader::Data {
        h2c: true,
        hdr,
        last: true,
        success: false,
    };
    fabric::wire::tcp::encode(&h2c, b"abcd", Digests::default(), 0, &mut sent);
    assert_eq!(term.data, sent[..24]);
    assert_eq!(term.fei, 10);

    // A connection that stops mid-PDU: the target just waits; the good host
    // is unaffected. Close it.
    let mut c = RawConn::open(&t, true, Digests::default()).await;
    c.send_raw(&[4, 0, 72, 0, 72, 0, 0, 0, 1, 2, 3]).await;
    drop(c);

    stop.store(true, Ordering::Relaxed);
    let rounds = good.await.unwrap();
    assert!(rounds >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_the_exact_status() {
    let t = common::start(16 << 20, vec![]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_host(&t, stop.clone());

    // Before Connect: command sequence error.
    let mut c = RawConn::open(&t, true, Digests::default()).await;
    c.send_cmd(
        Command {
            cid: 5,
            cdw10: 1,
            ..Command::new(admin::IDENTIFY)
        },
        &[],
    )
    .await;
    let cqe = c.recv_cqe().await;
    assert_eq!(cqe.cid, 5);
    assert_eq!(cqe.status, Status::COMMAND_SEQUENCE_ERROR);

    // Connect to an unknown subsystem: invalid parameters pointing at SUBNQN.
    let cmd = fabric::wire::fabrics::ConnectCommand {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato_ms: 0,
    }
    .to_command(6, SglDescriptor::in_capsule(1024));
    let data = fabric::wire::fabrics::ConnectData {
        hostid: HOSTID,
        cntlid: 0xffff,
        subnqn: "nqn.nope".into(),
        hostnqn: HOST.into(),
    };
    c.send_cmd(cmd, &data.encode()).await;
    let cqe = c.recv_cqe().await;
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, 1 << 16 | 256);

    // Connect with a data length that is not 1024.
    c.send_cmd(cmd, &data.encode()[..512]).await;
    assert_eq!(c.recv_cqe().await.status, Status::SGL_INVALID_DATA_LENGTH);

    // Now connect properly; a second Connect on the same queue is refused.
    let cntlid = c.connect_admin(HOST, HOSTID).await;
    assert_eq!(
        c.connect(0, 0xffff, HOST, HOSTID).await.status,
        Status::COMMAND_SEQUENCE_ERROR
    );

    // Unknown admin opcode; an I/O opcode on the admin queue.
    c.send_cmd(
        Command {
            cid: 7,
            ..Command::new(0xee)
        },
        &[],
    )
    .await;
    assert_eq!(c.recv_cqe().await.status, Status::INVALID_OPCODE);
    c.send_cmd(
        Command {
            cid: 8,
            nsid: 1,
            ..Command::new(0x7c)
        },
        &[],
    )
    .await;
    assert_eq!(c.recv_cqe().await.status, Status::INVALID_OPCODE);

    // PRPs instead of SGLs.
    c.send_cmd(
        Command {
            cid: 9,
            flags: 0,
            cdw10: 1,
            ..Command::new(admin::IDENTIFY)
        },
        &[],
    )
    .await;
    assert_eq!(c.recv_cqe().await.status, Status::INVALID_FIELD);

    // Identify with a data length other than 4096.
    let mut id = Command {
        cid: 10,
        cdw10: 1,
        ..Command::new(admin::IDENTIFY)
    };
    id.dptr = SglDescriptor::transport_data_block(512);
    c.send_cmd(id, &[]).await;
    assert_eq!(c.recv_cqe().await.status, Status::SGL_INVALID_DATA_LENGTH);

    // An unsupported SGL descriptor type (keyed, on TCP).
    let mut id = Command {
        cid: 11,
        cdw10: 1,
        ..Command::new(admin::IDENTIFY)
    };
    id.dptr = SglDescriptor::keyed(0x1000, 4096, 1, false);
    c.send_cmd(id, &[]).await;
    assert_eq!(c.recv_cqe().await.status, Status::SGL_INVALID_TYPE);

    // Identify Namespace of an NSID beyond NN.
    let mut id = Command {
        cid: 12,
        nsid: 5000,
        cdw10: 0,
        ..Command::new(admin::IDENTIFY)
    };
    id.dptr = SglDescriptor::transport_data_block(4096);
    c.send_cmd(id, &[]).await;
    assert_eq!(c.recv_cqe().await.status, Status::INVALID_NAMESPACE);

    // An unknown log page.
    let g = fabric::wire::log_page::GetLogPage {
        lid: 0x42,
        lsp: 0,
        rae: false,
        len: 512,
        offset: 0,
        lsi: 0,
    };
    let mut cmd = g.to_command(13, 0);
    cmd.dptr = SglDescriptor::transport_data_block(512);
    c.send_cmd(cmd, &[]).await;
    assert_eq!(c.recv_cqe().await.status, Status::INVALID_LOG_PAGE);

    // I/O queue with a queue ID beyond the queues granted.
    let mut q = RawConn::open(&t, true, Digests::default()).await;
    let cqe = q.connect(1000, cntlid, HOST, HOSTID).await;
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, connect_cmd_offset::QID as u32);
    // ... and with a controller ID that does not exist.
    let mut q = RawConn::open(&t, true, Digests::default()).await;
    let cqe = q.connect(1, cntlid.wrapping_add(100), HOST, HOSTID).await;
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, 1 << 16 | 16);
    // ... and the same queue ID twice.
    let mut q = RawConn::open(&t, true, Digests::default()).await;
    assert!(q.connect(1, cntlid, HOST, HOSTID).await.status.is_success());
    let mut q2 = RawConn::open(&t, true, Digests::default()).await;
    assert_eq!(
        q2.connect(1, cntlid, HOST, HOSTID).await.status,
        Status::CONNECT_INVALID_PARAMETERS
    );

    // I/O errors on the connected I/O queue.
    let ctrl = HostController::connect(&t.address, common::NQN, &HostOptions::default())
        .await
        .unwrap();
    let blocks = (16u64 << 20) / 4096;
    let expect =
        |r: Result<fabric::transport::CommandResult, fabric::transport::TransportError>,
         s: Status| {
            let cqe = r.expect("transport error").cqe;
            assert_eq!(cqe.status, s, "wrong status");
        };
    expect(
        ctrl.io(rw_command(io::READ, 1, blocks, 1), HostData::In(4096))
            .await,
        Status::LBA_OUT_OF_RANGE,
    );
    expect(
        ctrl.io(rw_command(io::READ, 1, u64::MAX, 1), HostData::In(4096))
            .await,
        Status::LBA_OUT_OF_RANGE,
    );
    expect(
        ctrl.io(
            rw_command(io::WRITE, 1, blocks - 1, 2),
            HostData::Out(Bytes::from(vec![0; 8192])),
        )
        .await,
        Status::LBA_OUT_OF_RANGE,
    );
    expect(
        ctrl.io(rw_command(io::READ, 9, 0, 1), HostData::In(4096))
            .await,
        Status::INVALID_NAMESPACE,
    );
    expect(
        ctrl.io(rw_command(io::READ, 0, 0, 1), HostData::In(4096))
            .await,
        Status::INVALID_NAMESPACE,
    );
    // 2 MiB is above the 1 MiB MDTS.
    expect(
        ctrl.io(rw_command(io::READ, 1, 0, 512), HostData::In(2 << 20))
            .await,
        Status::INVALID_FIELD,
    );
    // The data length must match NLB.
    expect(
        ctrl.io(rw_command(io::READ, 1, 0, 2), HostData::In(4096))
            .await,
        Status::SGL_INVALID_DATA_LENGTH,
    );
    expect(
        ctrl.io(
            Command {
                nsid: 1,
                ..Command::new(0x99)
            },
            HostData::None,
        )
        .await,
        Status::INVALID_OPCODE,
    );
    // Admin-only opcodes are not I/O (0x18 is Keep Alive).
    expect(
        ctrl.io(
            Command {
                nsid: 1,
                ..Command::new(admin::KEEP_ALIVE)
            },
            HostData::None,
        )
        .await,
        Status::INVALID_OPCODE,
    );
    // Dataset Management with a range past the end.
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    range[8..16].copy_from_slice(&(blocks - 4).to_le_bytes());
    let dsm = Command {
        nsid: 1,
        cdw10: 0,
        cdw11: 1 << 2,
        ..Command::new(io::DATASET_MANAGEMENT)
    };
    expect(
        ctrl.io(dsm, HostData::Out(Bytes::from(range))).await,
        Status::LBA_OUT_OF_RANGE,
    );
    // Error log records the failures.
    let log = ctrl.get_log_page(0x01, 0, 64, 0, 0).await.unwrap();
    let e = fabric::wire::log_page::ErrorEntry::decode(&log);
    assert!(e.error_count > 0);
    assert_eq!(e.status, Status::LBA_OUT_OF_RANGE);

    stop.store(true, Ordering::Relaxed);
    assert!(good.await.unwrap() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_digest_fails_the_command_not_the_connection() {
    let t = common::start(16 << 20, vec![]).await;
    let dg = Digests {
        header: true,
        data: true,
    };
    let mut c = RawConn::open(&t, true, dg).await;
    c.connect_admin(HOST, HOSTID).await;
    let mut out = bytes::BytesMut::new();
    let cmd = Command {
        cid: 3,
        cdw10: 0x0b,
        cdw11: 0,
        dptr: SglDescriptor::in_capsule(4),
        ..Command::new(admin::SET_FEATURES)
    };
    fabric::wire::tcp::encode(&PduHeader::CapsuleCmd(cmd), b"data", dg, 0, &mut out);
    let n = out.len();
    out[n - 1] ^= 0xff;
    c.send_raw(&out).await;
    let cqe = c.recv_cqe().await;
    assert_eq!(cqe.cid, 3);
    assert_eq!(cqe.status, Status::TRANSIENT_TRANSPORT_ERROR);
    // The connection still works.
    c.expect_keep_alive(4).await;
}

/// Writes waiting for their data (R2T sent) on an I/O queue of 32 entries.
async fn pending_writes(c: &mut RawConn, count: u16) {
    for cid in 0..count {
        let cmd = Command {
            cid,
            dptr: SglDescriptor::transport_data_block(4096),
            ..rw_command(io::WRITE, 1, cid as u64, 1)
        };
        c.send_pdu(&PduHeader::CapsuleCmd(cmd), &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_past_its_queue_depth_loses_its_connection() {
    let t = common::start(16 << 20, vec![]).await;
    let mut admin = RawConn::open(&t, true, Digests::default()).await;
    let cntlid = admin.connect_admin(HOST, HOSTID).await;
    let mut io_q = RawConn::open(&t, true, Digests::default()).await;
    assert!(io_q
        .connect(1, cntlid, HOST, HOSTID)
        .await
        .status
        .is_success());
    // SQSIZE 31: 32 entries; the target tolerates twice that outstanding
    // (as the Linux target does) and no more.
    pending_writes(&mut io_q, 64).await;
    for _ in 0..64 {
        assert!(matches!(
            io_q.recv().await,
            common::Received::Pdu(fabric::wire::tcp::Pdu::R2t(_))
        ));
    }
    pending_writes(&mut io_q, 1).await;
    assert!(
        matches!(io_q.recv().await, common::Received::Closed),
        "a command past twice the queue depth must close the connection"
    );
    // The admin queue is unaffected.
    admin.expect_keep_alive(9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_connects_is_closed() {
    let cfg = fabric::target::TargetConfig {
        connect_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let t = common::start_with(16 << 20, vec![], cfg).await;
    let mut idle = RawConn::open(&t, true, Digests::default()).await;
    let mut connected = RawConn::open(&t, true, Digests::default()).await;
    connected.connect_admin(HOST, HOSTID).await;
    assert!(
        matches!(idle.recv().await, common::Received::Closed),
        "a queue without Connect must be closed after the connect timeout"
    );
    // A connected queue (KATO 0) outlives the timeout.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    connected.expect_keep_alive(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_followed_by_a_malformed_pdu_leaves_no_controller() {
    use fabric::wire::fabrics::{ConnectCommand, ConnectData};
    use fabric::wire::tcp::encode;
    let t = common::start(16 << 20, vec![]).await;
    let sub = t.target.subsystem(common::NQN).expect("test subsystem");
    // The Connect and a PDU of an unknown type in one write: the connection
    // closes before its Connect has run, and the Connect runs in its drain.
    for _ in 0..20 {
        let mut c = RawConn::open(&t, true, Digests::default()).await;
        let cmd = ConnectCommand {
            recfmt: 0,
            qid: 0,
            sqsize: 31,
            cattr: 0,
            kato_ms: 0,
        }
        .to_command(1, SglDescriptor::in_capsule(1024));
        let data = ConnectData {
            hostid: HOSTID,
            cntlid: fabric::wire::CNTLID_DYNAMIC,
            subnqn: common::NQN.into(),
            hostnqn: HOST.into(),
        }
        .encode();
        let mut out = bytes::BytesMut::new();
        encode(
            &PduHeader::CapsuleCmd(cmd),
            &data,
            Digests::default(),
            0,
            &mut out,
        );
        out.extend_from_slice(&[0x7f, 0, 8, 0, 8, 0, 0, 0]);
        c.send_raw(&out).await;
        while !matches!(c.recv().await, common::Received::Closed) {}
    }
    // Every connection has ended; none may have left its controller behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !sub.controllers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        sub.controllers().is_empty(),
        "{} controllers left",
        sub.controllers().len()
    );
}
