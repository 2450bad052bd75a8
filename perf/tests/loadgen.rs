//! fabric-perf's load generator against our target over TCP on loopback.

use std::sync::Arc;
use std::time::Duration;

use fabric::target::{PortAddress, SubsystemConfig, Target, TargetConfig};
use fabric::transport::target_transport;
use perf::loadgen::{run, run_stoppable, LoadSpec, PerfError};
use perf::report::RunReport;
use perf::workload::Workload;
use raid::{FaultDevice, MemoryDevice, NullDevice};

const NQN: &str = "nqn.2026-11.io.fabric:perf-test";

/// A target with a 64 MiB memory namespace (1), a null one (2), a
/// 16 TiB null one (3) and a 64 MiB one whose writes all fail for lack of
/// space (4), with discovery, on an ephemeral loopback port.
async fn target() -> (Arc<Target>, PortAddress) {
    let target = Target::new(TargetConfig::default()).unwrap();
    let sub = target.add_subsystem(SubsystemConfig::new(NQN)).unwrap();
    sub.add_namespace(1, Arc::new(MemoryDevice::new(64 << 20, 4096)), 1)
        .unwrap();
    sub.add_namespace(2, Arc::new(NullDevice::new(64 << 20, 512)), 1)
        .unwrap();
    sub.add_namespace(3, Arc::new(NullDevice::new(16 << 40, 512)), 1)
        .unwrap();
    let full = FaultDevice::new(Arc::new(MemoryDevice::new(64 << 20, 4096)));
    full.set_full_from(Some(0));
    sub.add_namespace(4, Arc::new(full), 1).unwrap();
    let port = target.add_port("tcp://127.0.0.1:0".parse().unwrap(), true);
    let listener = target_transport(port.address().kind)
        .unwrap()
        .listen(target.clone(), port)
        .await
        .unwrap();
    (target, listener.local.clone())
}

fn spec(address: PortAddress) -> LoadSpec {
    LoadSpec {
        address,
        nqn: Some(NQN.into()),
        nsid: 1,
        workload: Workload::Randread,
        read_mix: 50,
        io_size: 4096,
        iodepth: 8,
        queues: 2,
        time: None,
        ios: Some(2000),
        ramp: Duration::ZERO,
        verify: false,
        offset: 0,
        size: None,
        hostnqn: None,
        digests: false,
        seed: 1,
        poll: Duration::ZERO,
    }
}

#[tokio::test]
async fn randrw_with_verify_checks_every_block_it_wrote() {
    let (t, addr) = target().await;
    let s = LoadSpec {
        workload: Workload::Randrw,
        read_mix: 30,
        size: Some(4 << 20),
        verify: true,
        ..spec(addr)
    };
    let r = run(&s, false).await.unwrap();
    assert!((2000..2000 + 16).contains(&r.ios), "{}", r.ios);
    assert_eq!(r.errors, 0);
    assert_eq!(r.setup.queues, 2);
    let (reads, writes) = (r.read.unwrap(), r.write.unwrap());
    assert_eq!(reads.ios + writes.ios, r.ios);
    assert!(writes.ios > reads.ios, "30% reads: {reads:?} {writes:?}");
    let v = r.verify.unwrap();
    assert_eq!(v.mismatches, 0);
    // The final pass reads back every block written (at most 1024 in 4 MiB).
    assert!(v.blocks_checked >= 500, "{v:?}");
    let latency = r.latency.expect("I/Os completed, so latencies");
    assert!(latency.p50_us > 0.0 && latency.max_us >= latency.p99_us);
    assert!(r.iops > 0.0 && r.mb_per_s > 0.0);
    t.shutdown();
}

#[tokio::test]
async fn polling_queues_carry_writes_and_reads_intact() {
    let (t, addr) = target().await;
    // 32 KiB writes go by R2T (above the in-capsule size), reads as
    // C2HData: both paths while the reader polls instead of sleeping.
    let s = LoadSpec {
        workload: Workload::Randrw,
        io_size: 32 << 10,
        iodepth: 2,
        queues: 1,
        ios: Some(600),
        size: Some(2 << 20),
        verify: true,
        poll: Duration::from_millis(2),
        ..spec(addr)
    };
    let r = run(&s, false).await.unwrap();
    assert_eq!(r.errors, 0);
    assert!(r.read.unwrap().ios > 0 && r.write.unwrap().ios > 0);
    let v = r.verify.unwrap();
    assert_eq!(v.mismatches, 0);
    assert!(v.blocks_checked >= 32, "{v:?}");
    t.shutdown();
}

#[tokio::test]
async fn verify_finds_data_that_is_not_what_was_written() {
    let (t, addr) = target().await;
    // Write the pattern of seed 1, then read it back expecting seed 2's:
    // the null namespace keeps nothing, so every block mismatches.
    let s = LoadSpec {
        nsid: 2,
        workload: Workload::Read,
        size: Some(256 << 10),
        verify: true,
        ios: Some(64),
        ..spec(addr)
    };
    let r = run(&s, false).await.unwrap();
    let v = r.verify.unwrap();
    assert!(v.blocks_checked > 0);
    assert_eq!(v.mismatches, v.blocks_checked, "{v:?}");
    t.shutdown();
}

#[tokio::test]
async fn discovery_finds_the_subsystem_and_time_bounds_the_run() {
    let (t, addr) = target().await;
    let s = LoadSpec {
        nqn: None,
        workload: Workload::Read,
        io_size: 128 << 10,
        queues: 1,
        ios: None,
        time: Some(Duration::from_millis(300)),
        ramp: Duration::from_millis(100),
        ..spec(addr)
    };
    let r = run(&s, false).await.unwrap();
    assert_eq!(r.setup.nqn, NQN);
    assert!(r.ios > 0);
    assert!(r.seconds >= 0.25 && r.seconds < 5.0, "{}", r.seconds);
    assert!(r.write.is_none());
    t.shutdown();
}

#[tokio::test]
async fn impossible_runs_are_refused_with_reasons() {
    let (t, addr) = target().await;
    let bad_size = LoadSpec {
        io_size: 4096 + 512,
        ..spec(addr.clone())
    };
    let e = run(&bad_size, false).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("--block-size 4608 must be a multiple"),
        "{e}"
    );
    // Each region refusal names the flag that is out of bounds.
    for (offset, size, queues, named) in [
        (64 << 20, Some(4096), 2, "--offset 67108864 is past the end"),
        (60 << 20, Some(8 << 20), 2, "runs past the end"),
        (0, Some(4096), 2, "fewer than --queues 2"),
    ] {
        let region = LoadSpec {
            offset,
            size,
            queues,
            ..spec(addr.clone())
        };
        match run(&region, false).await {
            Err(PerfError::Invalid(e)) => assert!(e.contains(named), "{e}"),
            other => panic!("{named}: {other:?}"),
        }
    }
    let no_ns = LoadSpec {
        nsid: 9,
        ..spec(addr.clone())
    };
    assert!(run(&no_ns, false).await.is_err());
    // A subsystem the target does not serve: the refusal says what it may mean.
    let no_subsystem = LoadSpec {
        nqn: Some("nqn.2026-11.io.fabric:nope".into()),
        ..spec(addr.clone())
    };
    let e = run(&no_subsystem, false).await.unwrap_err();
    assert!(e.to_string().contains("no such subsystem there"), "{e}");
    // Verifying 2^35 units would need a 4 GiB table before the first I/O.
    let verify_all = LoadSpec {
        nsid: 3,
        io_size: 512,
        verify: true,
        ..spec(addr.clone())
    };
    let e = run(&verify_all, false).await.unwrap_err();
    assert!(e.to_string().contains("give a smaller --size"), "{e}");
    let verify_some = LoadSpec {
        size: Some(1 << 20),
        ..verify_all
    };
    let checked = run(&verify_some, false).await.unwrap().verify.unwrap();
    assert!(checked.blocks_checked > 0, "{checked:?}");
    let long_poll = LoadSpec {
        poll: Duration::from_secs(1),
        ..spec(addr.clone())
    };
    let e = run(&long_poll, false).await.unwrap_err();
    assert!(e.to_string().contains("--poll-us 1000000"), "{e}");
    let rdma_poll = LoadSpec {
        address: "rdma://127.0.0.1:4420".parse().unwrap(),
        poll: Duration::from_micros(300),
        ..spec(addr.clone())
    };
    let e = run(&rdma_poll, false).await.unwrap_err();
    assert!(e.to_string().contains("tcp:// only"), "{e}");
    let rdma_digests = LoadSpec {
        address: "rdma://127.0.0.1:4420".parse().unwrap(),
        digests: true,
        ..spec(addr.clone())
    };
    let e = run(&rdma_digests, false).await.unwrap_err();
    assert!(e.to_string().contains("--digests applies to tcp://"), "{e}");
    for nsid in [0, u32::MAX] {
        let e = run(
            &LoadSpec {
                nsid,
                ..spec(addr.clone())
            },
            false,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("--nsid"), "{e}");
    }
    let rdma = LoadSpec {
        address: "rdma://127.0.0.1:4420".parse().unwrap(),
        ..spec(addr)
    };
    let e = run(&rdma, false).await.unwrap_err();
    assert!(matches!(e, PerfError::Transport { .. }), "{e}");
    t.shutdown();
}

/// Writes that all fail show as a write row with errors and no latency,
/// beside the reads that worked; not as a read-only run with zeroes.
#[tokio::test]
async fn failed_writes_are_reported_in_their_own_row() {
    let (t, addr) = target().await;
    let s = LoadSpec {
        nsid: 4,
        workload: Workload::Randrw,
        ..spec(addr)
    };
    let r = run(&s, false).await.expect("the run completes");
    let read = r.read.expect("a read row");
    let write = r.write.expect("a write row though no write completed");
    assert_eq!(write.ios, 0, "{write:?}");
    assert!(write.errors > 0 && write.latency.is_none(), "{write:?}");
    assert_eq!(read.errors, 0, "{read:?}");
    assert!(read.ios > 0 && read.latency.is_some(), "{read:?}");
    assert_eq!(r.errors, write.errors);
    assert_eq!(r.ios, read.ios);
    t.shutdown();
}

/// Stopped early (as on Ctrl-C), a run still reports what it measured,
/// marked interrupted, and its verify pass still reads back what it wrote.
#[tokio::test]
async fn a_stopped_run_reports_what_it_did() {
    let (t, addr) = target().await;
    let r = run_stoppable(
        &long_verifying_randrw(addr),
        false,
        stop_after(Duration::from_millis(300)),
    )
    .await
    .expect("the run completes");
    assert!(r.interrupted, "{r:?}");
    assert!(r.ios > 0 && r.seconds < 30.0, "{r:?}");
    let v = r.verify.clone().expect("verify result");
    assert!(v.blocks_checked > 0 && v.mismatches == 0, "{v:?}");
    assert!(r.text().contains("(interrupted)"));
    t.shutdown();
}

/// A minute of verified randrw over 1 MiB (to be cut short).
fn long_verifying_randrw(address: PortAddress) -> LoadSpec {
    LoadSpec {
        workload: Workload::Randrw,
        ios: None,
        time: Some(Duration::from_secs(60)),
        verify: true,
        size: Some(1 << 20),
        ..spec(address)
    }
}

/// Sets `stop` after `delay`.
fn stop_after(delay: Duration) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        set.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    stop
}

/// Runs `s`, stopped after 300 ms, and checks that it ended at once,
/// interrupted before its measured phase began.
async fn stopped_before_measuring(s: &LoadSpec) -> RunReport {
    let started = std::time::Instant::now();
    let r = run_stoppable(s, false, stop_after(Duration::from_millis(300)))
        .await
        .expect("the run completes");
    assert!(started.elapsed() < Duration::from_secs(30), "{r:?}");
    assert!(r.interrupted && r.ios == 0, "{r:?}");
    r
}

/// A read-only verifying run writes its region first: stopping it then
/// ends that pass too (it would take minutes here), and the read-back
/// covers what was written.
#[tokio::test]
async fn a_run_stopped_while_writing_its_verify_region_ends_at_once() {
    let (t, addr) = target().await;
    let s = LoadSpec {
        nsid: 3,
        verify: true,
        size: Some(32 << 30),
        ios: None,
        time: Some(Duration::from_secs(60)),
        ..spec(addr)
    };
    let r = stopped_before_measuring(&s).await;
    let v = r.verify.expect("verify result");
    assert!(v.blocks_checked > 0, "{v:?}");
    t.shutdown();
}

/// Stopped while the target does not answer its connection, a run ends
/// without waiting for the connect's timeout.
#[tokio::test]
async fn a_run_stopped_while_connecting_ends_at_once() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: PortAddress = format!("tcp://{}", silent.local_addr().unwrap())
        .parse()
        .unwrap();
    let accept = tokio::spawn(async move { silent.accept().await });
    let started = std::time::Instant::now();
    let e = run_stoppable(
        &spec(address),
        false,
        stop_after(Duration::from_millis(200)),
    )
    .await
    .expect_err("never connected");
    assert!(matches!(e, PerfError::Interrupted), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    accept.abort();
}

/// A connection lost during the run ends it with what was measured until
/// then and the failure named, not with the error alone.
#[tokio::test]
async fn a_connection_lost_mid_run_still_reports_the_figures() {
    let (t, addr) = target().await;
    let s = long_verifying_randrw(addr);
    let target = t.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        target.shutdown();
    });
    let r = run(&s, false).await.expect("a report despite the failure");
    let failure = r.failure.clone().expect("the failure is named");
    assert!(failure.contains("I/O failed"), "{failure}");
    assert!(r.ios > 0 && r.seconds < 30.0, "{r:?}");
    assert!(!r.interrupted, "{r:?}");
    assert!(r.text().contains("failed: I/O failed"), "{}", r.text());
}

/// A controller whose queues are smaller (CAP.MQES) than the depth asked
/// for: the host connects its queues at the controller's size and the
/// run goes on, instead of a refused Connect.
#[tokio::test]
async fn queues_deeper_than_the_controller_takes_are_fitted_to_it() {
    let target = Target::new(TargetConfig {
        max_queue_entries: 64,
        ..TargetConfig::default()
    })
    .unwrap();
    let sub = target.add_subsystem(SubsystemConfig::new(NQN)).unwrap();
    sub.add_namespace(1, Arc::new(MemoryDevice::new(16 << 20, 4096)), 1)
        .unwrap();
    let port = target.add_port("tcp://127.0.0.1:0".parse().unwrap(), false);
    let listener = target_transport(port.address().kind)
        .unwrap()
        .listen(target.clone(), port)
        .await
        .unwrap();
    let s = LoadSpec {
        iodepth: 128,
        ..spec(listener.local.clone())
    };
    let r = run(&s, false)
        .await
        .expect("runs at the controller's depth");
    assert_eq!((r.ios, r.errors), (2000, 0), "{r:?}");
    target.shutdown();
}

/// Stopped during a long ramp, a run ends without waiting the ramp out.
#[tokio::test]
async fn a_run_stopped_during_its_ramp_ends_at_once() {
    let (t, addr) = target().await;
    let s = LoadSpec {
        ramp: Duration::from_secs(60),
        ..long_verifying_randrw(addr)
    };
    stopped_before_measuring(&s).await;
    t.shutdown();
}
