//! Our host library against our target over NVMe/TCP on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric::host::{HostController, HostOptions};
use fabric::target::subsystem::Subsystem;
use fabric::wire::log_page::AnaState;
use fabric::wire::tcp::Digests;
use raid::{buf, BlockDevice};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_verify_small_and_large_with_and_without_digests() {
    let t = common::start(64 << 20, vec![]).await;
    for digests in [
        Digests::default(),
        Digests {
            header: true,
            data: true,
        },
    ] {
        let opts = HostOptions {
            digests,
            io_queues: 3,
            ..Default::default()
        };
        let ctrl = HostController::connect(&t.address, common::NQN, &opts)
            .await
            .unwrap();
        assert_eq!(ctrl.io_queue_count(), 3);
        let ns = ctrl.namespace(1).await.unwrap();
        assert_eq!(ns.block_size(), 4096);
        assert_eq!(ns.num_blocks(), (64 << 20) / 4096);
        // 4 KiB (in-capsule), 64 KiB (R2T), 1 MiB (R2T, at MDTS) and 3 MiB (split).
        for (i, len) in [4096usize, 65536, 1 << 20, 3 << 20].into_iter().enumerate() {
            let data = pattern(i as u64 + digests.header as u64 * 10, len);
            let lba = (i as u64) * 1024;
            ns.write(lba, Bytes::from(data.clone())).await.unwrap();
            let back = ns.read(lba, buf::alloc(len)).await.unwrap();
            assert!(back[..] == data[..], "mismatch for {len} bytes");
        }
        ns.flush().await.unwrap();
        ctrl.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_commands_on_many_queues() {
    let t = common::start(16 << 20, vec![]).await;
    let opts = HostOptions {
        io_queues: 4,
        queue_size: 32,
        ..Default::default()
    };
    let ctrl = HostController::connect(&t.address, common::NQN, &opts)
        .await
        .unwrap();
    let ns = std::sync::Arc::new(ctrl.namespace(1).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..256u64 {
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, 8192);
            ns.write(i * 2, Bytes::from(data.clone())).await.unwrap();
            let back = ns.read(i * 2, buf::alloc(8192)).await.unwrap();
            assert!(back[..] == data[..]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_and_write_zeroes_read_back_zeroes() {
    let t = common::start(8 << 20, vec![]).await;
    let ctrl = HostController::connect(&t.address, common::NQN, &HostOptions::default())
        .await
        .unwrap();
    let ns = ctrl.namespace(1).await.unwrap();
    ns.write(0, Bytes::from(vec![0xaa; 16 * 4096]))
        .await
        .unwrap();
    ns.discard(2, 3).await.unwrap();
    ns.write_zeroes(8, 2).await.unwrap();
    let back = ns.read(0, buf::alloc(16 * 4096)).await.unwrap();
    for blk in 0..16 {
        let zero = (2..5).contains(&blk) || (8..10).contains(&blk);
        let b = &back[blk * 4096..(blk + 1) * 4096];
        assert!(
            b.iter().all(|&x| x == if zero { 0 } else { 0xaa }),
            "block {blk}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_the_port_and_identify_reports_ana() {
    let t = common::start(8 << 20, vec![]).await;
    let entries = HostController::discover(&t.address, &HostOptions::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].subnqn, common::NQN);
    assert_eq!(entries[0].traddr, "127.0.0.1");
    assert_eq!(entries[0].trsvcid, t.address.port.to_string());

    let ctrl = HostController::connect(&t.address, common::NQN, &HostOptions::default())
        .await
        .unwrap();
    assert_eq!(ctrl.identify.subnqn, common::NQN);
    assert!(ctrl.identify.kas > 0);
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);
    let descs = ctrl.namespace_descriptors(1).await.unwrap();
    assert!(descs.iter().any(|d| d.nidt == 2 && d.nid.len() == 16));
    let (_, groups) = ctrl.ana_log().await.unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].nsids, vec![1]);
    assert_eq!(groups[0].state, AnaState::Optimized);

    // An ANA change is visible in the log through this controller's port.
    t.target
        .set_ana_state(1, 1, AnaState::Inaccessible)
        .unwrap();
    let (_, groups) = ctrl.ana_log().await.unwrap();
    assert_eq!(groups[0].state, AnaState::Inaccessible);
    let ns = ctrl.namespace(1).await.unwrap();
    let err = ns.read(0, buf::alloc(4096)).await.unwrap_err();
    assert!(err.to_string().contains("ANA_INACCESSIBLE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_not_allowed_is_rejected_and_allowed_host_connects() {
    let good = HostOptions::default();
    let t = common::start(8 << 20, vec![good.hostnqn.clone()]).await;
    let bad = HostOptions::default();
    let err = HostController::connect(&t.address, common::NQN, &bad)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("CONNECT_INVALID_HOST"), "{err}");
    HostController::connect(&t.address, common::NQN, &good)
        .await
        .unwrap();
    // Discovery hides the subsystem from the host that may not use it.
    let entries = HostController::discover(&t.address, &bad).await.unwrap();
    assert!(entries.is_empty());
}

/// A host that sends no keep alives (KATO 0 at connect), whose controller
/// then gets a 300 ms timeout, as Set Features Keep Alive Timer would set it.
async fn host_without_keep_alives(t: &common::TestTarget) -> (Arc<HostController>, Arc<Subsystem>) {
    let opts = HostOptions {
        kato: Duration::ZERO,
        ..Default::default()
    };
    let ctrl = HostController::connect(&t.address, common::NQN, &opts)
        .await
        .unwrap();
    let sub = t.target.subsystem(common::NQN).unwrap();
    assert_eq!(sub.controllers().len(), 1);
    sub.controllers()[0].set_kato_ms(300);
    (ctrl, sub)
}

async fn assert_torn_down(ctrl: &HostController, sub: &Subsystem) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ctrl.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "controller not torn down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sub.controllers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_tears_the_controller_down() {
    let t = common::start(8 << 20, vec![]).await;
    let (ctrl, sub) = host_without_keep_alives(&t).await;
    assert_torn_down(&ctrl, &sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_traffic_keeps_the_controller_alive_without_keep_alives() {
    let t = common::start(8 << 20, vec![]).await;
    let (ctrl, sub) = host_without_keep_alives(&t).await;
    let ns = ctrl.namespace(1).await.unwrap();
    // Traffic based keep alive: reads every 50 ms for five timeouts.
    let busy_until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < busy_until {
        ns.read(0, buf::alloc(4096)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ctrl.is_connected());
    // Silent from here: torn down after one to two timeouts.
    assert_torn_down(&ctrl, &sub).await;
}

/// A target process that stops running for longer than half the keep-alive
/// timeout (SIGSTOP, a paused virtual machine; here the runtime's only
/// thread blocked) must not run the commands that reached its socket
/// meanwhile: the host may have given up on the controller, retried them on
/// another path and written newer data there.
#[tokio::test(flavor = "current_thread")]
async fn commands_received_across_a_stall_past_keep_alive_do_not_run() {
    use common::{block, RawConn, Received};
    use fabric::host::rw_command;
    use fabric::wire::opcode::io;
    let t = common::start(8 << 20, vec![]).await;
    let host = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000057a1";
    let mut admin = RawConn::open(&t, true, Digests::default()).await;
    let cntlid = admin.connect_admin(host, [7; 16]).await;
    let sub = t.target.subsystem(common::NQN).unwrap();
    // 2 s: a stall of 1.5 s or more (one monitor period past 1 s) counts.
    sub.controllers()[0].set_kato_ms(2000);
    let mut io_q = RawConn::open(&t, true, Digests::default()).await;
    assert!(io_q
        .connect(1, cntlid, host, [7; 16])
        .await
        .status
        .is_success());
    let write = |cid, lba| fabric::wire::Command {
        cid,
        ..rw_command(io::WRITE, 1, lba, 1)
    };
    // A short stall (0.5 s) is no reason to drop the controller.
    io_q.send_cmd(write(1, 0), &block(0xa1)).await;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        io_q.recv_cqe().await.status.is_success(),
        "a write across a short stall"
    );

    // The write to LBA 1 is in the target's socket before the thread blocks
    // (sending it does not yield to the target's task).
    io_q.send_cmd(write(2, 1), &block(0xa2)).await;
    std::thread::sleep(Duration::from_millis(2500));
    match io_q.recv().await {
        Received::Closed => {}
        other => panic!("the target ran a command received across its stall: {other:?}"),
    }
    assert!(matches!(admin.recv().await, Received::Closed));
    assert!(sub.controllers().is_empty(), "the controller is torn down");

    // A new association reads LBA 0 as written and LBA 1 untouched.
    let ctrl = HostController::connect(&t.address, common::NQN, &HostOptions::default())
        .await
        .unwrap();
    let ns = ctrl.namespace(1).await.unwrap();
    assert!(ns.read(0, buf::alloc(4096)).await.unwrap()[..] == block(0xa1)[..]);
    assert!(ns.read(1, buf::alloc(4096)).await.unwrap()[..] == [0u8; 4096][..]);
    ctrl.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_controller_without_keep_alive_gets_a_default_timeout() {
    let t = common::start(8 << 20, vec![]).await;
    let opts = HostOptions {
        kato: Duration::ZERO,
        ..Default::default()
    };
    let _ctrl = HostController::connect(&t.address, fabric::wire::DISCOVERY_NQN, &opts)
        .await
        .unwrap();
    let disc = t.target.subsystem(fabric::wire::DISCOVERY_NQN).unwrap();
    // A stale discovery session must end some day: 120 s, as on Linux.
    assert_eq!(disc.controllers()[0].kato_ms(), 120_000);
    // An NVM subsystem's controller keeps what the host asked for.
    let _io = HostController::connect(&t.address, common::NQN, &opts)
        .await
        .unwrap();
    let sub = t.target.subsystem(common::NQN).unwrap();
    assert_eq!(sub.controllers()[0].kato_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_target_serves_sparse_and_back_to_back_commands() {
    let tcp = fabric::transport::tcp::TcpTransport {
        poll: Duration::from_millis(2),
        ..Default::default()
    };
    let t = common::start_on(
        16 << 20,
        vec![],
        fabric::target::TargetConfig::default(),
        std::sync::Arc::new(tcp),
    )
    .await;
    let ctrl = HostController::connect(&t.address, common::NQN, &HostOptions::default())
        .await
        .unwrap();
    let ns = ctrl.namespace(1).await.unwrap();
    // Commands that arrive while the connection polls, and after it has
    // gone back to sleep (pauses longer than the polling period).
    for i in 0..40u64 {
        let data = pattern(i, 8192);
        ns.write(i * 2, Bytes::from(data.clone())).await.unwrap();
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let back = ns.read(i * 2, buf::alloc(8192)).await.unwrap();
        assert!(back[..] == data[..], "mismatch at {i}");
    }
    ctrl.disconnect().await;
    // A connection after the polling one closed is served as well.
    let ctrl = HostController::connect(&t.address, common::NQN, &HostOptions::default())
        .await
        .unwrap();
    let ns = ctrl.namespace(1).await.unwrap();
    let back = ns.read(0, buf::alloc(8192)).await.unwrap();
    assert!(back[..] == pattern(0, 8192)[..]);
    ctrl.disconnect().await;
}
