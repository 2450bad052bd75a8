//! Asynchronous events, features, properties and controller IDs, through our
//! host library against our target.

mod common;

use std::sync::Arc;
use std::time::Duration;

use fabric::host::{HostController, HostOptions};
use fabric::target::{AsyncEvent, SubsystemConfig, Target, TargetConfig};
use fabric::transport::{target_transport, HostData};
use fabric::wire::fabrics::{csts, property};
use fabric::wire::identify::oaes;
use fabric::wire::log_page::AnaState;
use fabric::wire::opcode::{admin, feature, log};
use fabric::wire::{Command, Status};
use raid::MemoryDevice;

async fn set_feature(
    ctrl: &HostController,
    fid: u8,
    value: u32,
) -> fabric::transport::CommandResult {
    let cmd = Command {
        cdw10: fid as u32,
        cdw11: value,
        ..Command::new(admin::SET_FEATURES)
    };
    ctrl.admin(cmd, HostData::None).await.unwrap()
}

async fn get_feature(
    ctrl: &HostController,
    fid: u8,
    select: u32,
) -> fabric::transport::CommandResult {
    let cmd = Command {
        cdw10: fid as u32 | select << 8,
        ..Command::new(admin::GET_FEATURES)
    };
    ctrl.admin(cmd, HostData::None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ana_and_namespace_changes_complete_async_event_requests() {
    let t = common::start(8 << 20, vec![]).await;
    let ctrl = Arc::new(
        HostController::connect(&t.address, common::NQN, &HostOptions::default())
            .await
            .unwrap(),
    );
    assert!(set_feature(
        &ctrl,
        feature::ASYNC_EVENT_CONFIG,
        oaes::NAMESPACE_ATTRIBUTE | oaes::ANA_CHANGE
    )
    .await
    .cqe
    .status
    .is_success());

    // An AER waits until something happens.
    let aer = {
        let c = ctrl.clone();
        tokio::spawn(async move {
            c.admin(Command::new(admin::ASYNC_EVENT_REQUEST), HostData::None)
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!aer.is_finished(), "AER completed without an event");
    t.target.set_ana_state(1, 1, AnaState::Change).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), aer)
        .await
        .expect("no ANA event")
        .unwrap();
    assert_eq!(r.cqe.result, AsyncEvent::AnaChange.completion_dw0());
    assert_eq!(r.cqe.result & 7, 2);
    assert_eq!((r.cqe.result >> 16) & 0xff, log::ANA as u32);
    let (_, groups) = ctrl.ana_log().await.unwrap();
    assert_eq!(groups[0].state, AnaState::Change);

    // A namespace added while connected: the event is queued until an AER
    // arrives, and the changed namespace list names it (once).
    let sub = t.target.subsystem(common::NQN).unwrap();
    sub.add_namespace(7, Arc::new(MemoryDevice::new(1 << 20, 4096)), 3)
        .unwrap();
    let r = ctrl
        .admin(Command::new(admin::ASYNC_EVENT_REQUEST), HostData::None)
        .await
        .unwrap();
    assert_eq!(
        r.cqe.result,
        AsyncEvent::NamespaceAttribute.completion_dw0()
    );
    let changed = ctrl
        .get_log_page(log::CHANGED_NAMESPACES, 0, 4096, 0, 0)
        .await
        .unwrap();
    assert_eq!(&changed[..8], &[7, 0, 0, 0, 0, 0, 0, 0]);
    let changed = ctrl
        .get_log_page(log::CHANGED_NAMESPACES, 0, 4096, 0, 0)
        .await
        .unwrap();
    assert!(
        changed.iter().all(|&b| b == 0),
        "list not cleared by reading it"
    );
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2, 7]);

    // Only AERL + 1 requests may wait at once.
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let c = ctrl.clone();
        waiting.push(tokio::spawn(async move {
            c.admin(Command::new(admin::ASYNC_EVENT_REQUEST), HostData::None)
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = ctrl
        .admin(Command::new(admin::ASYNC_EVENT_REQUEST), HostData::None)
        .await
        .unwrap();
    assert_eq!(r.cqe.status, Status::AER_LIMIT_EXCEEDED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_and_properties() {
    let t = common::start(8 << 20, vec![]).await;
    let ctrl = HostController::connect(
        &t.address,
        common::NQN,
        &HostOptions {
            io_queues: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Number of queues was negotiated at connect.
    let r = get_feature(&ctrl, feature::NUMBER_OF_QUEUES, 0).await;
    assert_eq!(r.cqe.result, 1 | 1 << 16);
    // Keep alive timer: set and read back.
    assert!(set_feature(&ctrl, feature::KEEP_ALIVE_TIMER, 7000)
        .await
        .cqe
        .status
        .is_success());
    assert_eq!(
        get_feature(&ctrl, feature::KEEP_ALIVE_TIMER, 0)
            .await
            .cqe
            .result,
        7000
    );
    // Volatile write cache: on by default, can be turned off.
    assert_eq!(
        get_feature(&ctrl, feature::VOLATILE_WRITE_CACHE, 0)
            .await
            .cqe
            .result,
        1
    );
    assert!(set_feature(&ctrl, feature::VOLATILE_WRITE_CACHE, 0)
        .await
        .cqe
        .status
        .is_success());
    assert_eq!(
        get_feature(&ctrl, feature::VOLATILE_WRITE_CACHE, 0)
            .await
            .cqe
            .result,
        0
    );
    // Capabilities: changeable.
    assert_eq!(
        get_feature(&ctrl, feature::KEEP_ALIVE_TIMER, 3)
            .await
            .cqe
            .result,
        1 << 2
    );
    // Saving is not supported; unknown features are invalid.
    let cmd = Command {
        cdw10: feature::KEEP_ALIVE_TIMER as u32 | 1 << 31,
        cdw11: 1,
        ..Command::new(admin::SET_FEATURES)
    };
    assert_eq!(
        ctrl.admin(cmd, HostData::None).await.unwrap().cqe.status,
        Status::FEATURE_NOT_SAVEABLE
    );
    assert_eq!(
        set_feature(&ctrl, 0x77, 0).await.cqe.status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        set_feature(&ctrl, feature::ARBITRATION, 1).await.cqe.status,
        Status::FEATURE_NOT_CHANGEABLE
    );
    // Interrupt coalescing is prohibited on fabrics.
    assert_eq!(
        get_feature(&ctrl, feature::INTERRUPT_COALESCING, 0)
            .await
            .cqe
            .status,
        Status::INVALID_FIELD
    );
    // The 128-bit host identifier comes back as data.
    let cmd = Command {
        cdw10: feature::HOST_IDENTIFIER as u32,
        cdw11: 1,
        ..Command::new(admin::GET_FEATURES)
    };
    let r = ctrl.admin(cmd, HostData::In(16)).await.unwrap();
    assert!(r.cqe.status.is_success());
    assert_eq!(r.data.unwrap().len(), 16);

    // Properties: version 1.4, ready, unknown offsets refused.
    assert_eq!(
        ctrl.property_get(property::VS, false).await.unwrap(),
        0x0001_0400
    );
    assert_eq!(
        ctrl.property_get(property::CSTS, false).await.unwrap() as u32 & csts::RDY,
        csts::RDY
    );
    assert!(ctrl.property_get(0x40, false).await.is_err());
    assert!(
        ctrl.property_get(property::CAP, false).await.is_err(),
        "CAP is 8 bytes"
    );
    // Normal shutdown is reported complete.
    ctrl.property_set(property::CC, (0x0046_0001 | 1 << 14) as u64)
        .await
        .unwrap();
    assert_eq!(
        ctrl.property_get(property::CSTS, false).await.unwrap() as u32 & csts::SHST_COMPLETE,
        csts::SHST_COMPLETE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keep_alive_keeps_a_short_timeout_controller_alive() {
    let t = common::start(8 << 20, vec![]).await;
    let opts = HostOptions {
        kato: Duration::from_millis(600),
        ..Default::default()
    };
    let ctrl = HostController::connect(&t.address, common::NQN, &opts)
        .await
        .unwrap();
    // Idle for several timeouts: the host's keep alives hold the controller.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(ctrl.is_connected());
    assert_eq!(
        t.target.subsystem(common::NQN).unwrap().controllers().len(),
        1
    );
    let ns = ctrl.namespace(1).await.unwrap();
    raid::BlockDevice::flush(&ns).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_ids_come_from_the_configured_range_and_revoked_hosts_are_fenced() {
    let target = Target::new(TargetConfig::default()).unwrap();
    let mut sc = SubsystemConfig::new(common::NQN);
    (sc.cntlid_min, sc.cntlid_max) = (100, 101);
    let sub = target.add_subsystem(sc).unwrap();
    sub.add_namespace(1, Arc::new(MemoryDevice::new(1 << 20, 4096)), 1)
        .unwrap();
    let port = target.add_port("tcp://127.0.0.1:0".parse().unwrap(), false);
    let l = target_transport(port.address().kind)
        .unwrap()
        .listen(target.clone(), port)
        .await
        .unwrap();
    // A port without discovery does not answer for it.
    let Err(err) = HostController::discover(&l.local, &HostOptions::default()).await else {
        panic!("discovery on a port that does not serve it");
    };
    assert!(err.to_string().contains("CONNECT_INVALID_PARAM"), "{err}");
    let (opts_a, opts_b) = (HostOptions::default(), HostOptions::default());
    let a = HostController::connect(&l.local, common::NQN, &opts_a)
        .await
        .unwrap();
    let b = HostController::connect(&l.local, common::NQN, &opts_b)
        .await
        .unwrap();
    let mut ids = vec![a.cntlid, b.cntlid];
    ids.sort();
    assert_eq!(ids, vec![100, 101]);
    // The range is exhausted: the next host is told the controller is busy.
    let err = HostController::connect(&l.local, common::NQN, &HostOptions::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("CONNECT_CONTROLLER_BUSY"), "{err}");
    // Revoking a host's access tears its controller down (the fence); the
    // other host keeps working.
    sub.set_allowed_hosts(vec![opts_b.hostnqn.clone()]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "revoked host still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.is_connected());
    raid::BlockDevice::flush(&b.namespace(1).await.unwrap())
        .await
        .unwrap();
    let err = HostController::connect(&l.local, common::NQN, &opts_a)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("CONNECT_INVALID_HOST"), "{err}");
    target.shutdown();
}
