//! The Meta API on one in-process replica: object lifecycle and error codes,
//! watch from a revision, heartbeats and offline marking, restart from disk.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use meta::proto::{
    ControllerNode, ControllerNodeSpec, CreateClusterRequest, CreateHostRequest,
    CreateVolumeRequest, DiskNode, DiskNodeSpec, EventType, HeartbeatRequest, Host, NodeKind,
    NodeState, ObjectKind, SnapshotState, Volume,
};
use support::*;
use tonic::Code;

const GIB: u64 = 1 << 30;

/// The only replica of a group, stored in `dir` (on a new port each time),
/// once it knows it leads.
async fn lone_replica(dir: &Path) -> Replica {
    let (l, addr) = listener().await;
    let peers = BTreeMap::from([(1, addr)]);
    let replica = start(args(1, dir, &peers, false), l);
    leader_known(&replica).await;
    replica
}

fn disk(name: &str, domain: &str) -> DiskNodeSpec {
    DiskNodeSpec {
        name: name.into(),
        address: "tcp:127.0.0.1:4420".into(),
        capacity_bytes: 100 * GIB,
        failure_domain: domain.into(),
    }
}

/// A controller node's heartbeat from `address`.
fn beat(name: &str, address: &str, stopping: bool) -> HeartbeatRequest {
    HeartbeatRequest {
        kind: NodeKind::Controller as i32,
        name: name.into(),
        address: address.into(),
        stopping,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_errors_watch_and_restart() {
    let dir = temp_dir();
    let replica = lone_replica(dir.path()).await;
    let c = replica.client();

    let err = c
        .create_disk_node(disk("d1", ""))
        .await
        .expect_err("no cluster yet");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("cluster create"),
        "{}",
        err.message()
    );
    c.create_cluster(CreateClusterRequest {
        name: "test".into(),
        ..Default::default()
    })
    .await
    .expect("cluster");
    let start_rev = c.status().await.expect("status").revision;

    for (name, domain) in [("d1", "r1"), ("d2", "r2"), ("d3", "r1")] {
        c.create_disk_node(disk(name, domain))
            .await
            .expect("disk node");
    }
    let err = c
        .create_disk_node(disk("d1", ""))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    for name in ["c1", "c2"] {
        c.create_controller_node(ControllerNodeSpec {
            name: name.into(),
            address: "tcp:127.0.0.1:4421".into(),
        })
        .await
        .expect("controller");
    }
    c.create_host(CreateHostRequest {
        name: "h1".into(),
        nqn: "nqn.2014-08.org.nvmexpress:uuid:h1".into(),
    })
    .await
    .expect("host");
    let err = c
        .create_host(CreateHostRequest {
            name: "bad name".into(),
            nqn: "nqn.x".into(),
        })
        .await
        .expect_err("invalid name");
    assert_eq!(err.code(), Code::InvalidArgument);

    let vol = c
        .create_volume(CreateVolumeRequest {
            name: "v1".into(),
            size_bytes: 4 * GIB,
            replicas: 2,
            legs: 2,
            active_controllers: 1,
            hosts: vec!["h1".into()],
            ..Default::default()
        })
        .await
        .expect("volume");
    assert_eq!(vol.legs.len(), 2);
    assert_eq!(vol.paths.len(), 2, "one active and the default standby");
    for leg in &vol.legs {
        let nodes: Vec<&str> = leg.groups[0]
            .members
            .iter()
            .map(|m| m.disk_node.as_str())
            .collect();
        // r1 holds d1 and d3: a group never has both.
        assert!(
            !(nodes.contains(&"d1") && nodes.contains(&"d3")),
            "same domain in {nodes:?}"
        );
    }
    let err = c
        .create_volume(CreateVolumeRequest {
            name: "v2".into(),
            size_bytes: GIB,
            replicas: 3,
            ..Default::default()
        })
        .await
        .expect_err("only two failure domains");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("distinct disk nodes"),
        "{}",
        err.message()
    );

    let err = c
        .delete(ObjectKind::Host, "h1")
        .await
        .expect_err("host in use");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("v1"), "{}", err.message());
    let snap = c.create_snapshot("v1", "s1").await.expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Creating as i32);
    let err = c
        .delete(ObjectKind::Volume, "v1")
        .await
        .expect_err("has a snapshot");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c.get::<Volume>("nope").await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "volume 'nope' does not exist");

    // The watch replays every change after the cluster's creation, in order.
    let mut stream = c.watch(start_rev).await.expect("watch");
    let mut kinds = Vec::new();
    let mut last = start_rev;
    while kinds.len() < 12 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        assert!(event.revision >= last, "revisions go forward");
        last = event.revision;
        kinds.push(meta::objects::kind_of(
            event.object.as_ref().expect("object"),
        ));
        assert_eq!(event.r#type, EventType::Put as i32);
    }
    assert_eq!(kinds[..3], [ObjectKind::DiskNode; 3]);
    // A live change arrives too.
    c.delete(ObjectKind::Host, "h9")
        .await
        .expect_err("no such host");
    c.create_host(CreateHostRequest {
        name: "h2".into(),
        nqn: "nqn.2014-08.org.nvmexpress:uuid:h2".into(),
    })
    .await
    .expect("host");
    let live = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("event");
        if meta::objects::kind_of(e.object.as_ref().expect("object")) == ObjectKind::Host {
            break e;
        }
    };
    assert!(live.revision > last);

    // Heartbeats bring a node online; silence takes it offline (1 s here).
    let err = c
        .heartbeat(NodeKind::Disk, "d9")
        .await
        .expect_err("unregistered");
    assert_eq!(err.code(), Code::NotFound);
    c.heartbeat(NodeKind::Controller, "c1")
        .await
        .expect("heartbeat");
    // A heartbeat naming an address is taken only at the recorded one.
    let at = c.get::<ControllerNode>("c1").await.expect("c1").address;
    c.send_heartbeat(beat("c1", &at, false))
        .await
        .expect("heartbeat from the recorded address");
    let err = c
        .send_heartbeat(beat("c1", "tcp:192.0.2.1:4420", false))
        .await
        .expect_err("another address");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&at), "{}", err.message());
    assert_eq!(
        c.get::<ControllerNode>("c1").await.expect("c1").state,
        NodeState::Online as i32
    );
    eventually("c1 offline", || async {
        let n = c.get::<ControllerNode>("c1").await.ok()?;
        (n.state == NodeState::Offline as i32).then_some(())
    })
    .await;
    // A stopping agent's last word marks the node offline at once, unless
    // it names another address than the recorded one, or none.
    c.heartbeat(NodeKind::Controller, "c1")
        .await
        .expect("heartbeat");
    for (address, code) in [
        ("tcp:192.0.2.1:4420", Code::FailedPrecondition),
        ("", Code::InvalidArgument),
    ] {
        let err = c
            .send_heartbeat(beat("c1", address, true))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{address}: {}", err.message());
    }
    assert_eq!(
        c.get::<ControllerNode>("c1").await.expect("c1").state,
        NodeState::Online as i32
    );
    c.send_heartbeat(beat("c1", &at, true))
        .await
        .expect("stopping");
    assert_eq!(
        c.get::<ControllerNode>("c1").await.expect("c1").state,
        NodeState::Offline as i32
    );

    // Everything is back after a restart from the same directory.
    let before = c.list::<DiskNode>("").await.expect("list").0;
    replica.stop().await;
    let replica = lone_replica(dir.path()).await;
    let c = replica.client();
    assert_eq!(c.list::<DiskNode>("").await.expect("list").0, before);
    assert_eq!(c.get::<Host>("h2").await.expect("h2").name, "h2");
    assert_eq!(c.get::<Volume>("v1").await.expect("v1"), vol);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_replica_leads_from_the_start_and_after_a_restart() {
    let dir = temp_dir();
    for _ in 0..2 {
        let (l, addr) = listener().await;
        let peers = BTreeMap::from([(1, addr)]);
        // An election timeout of 200 s, ten times what `leader_known`
        // waits: only the election a lone voter holds at start can make
        // it leader in time.
        let a = meta::cli::MetaArgs {
            election_ticks: Some(4000),
            ..args(1, dir.path(), &peers, false)
        };
        let replica = start(a, l);
        let s = leader_known(&replica).await;
        assert!(is_leader(&s), "{s:?}");
        assert_eq!(s.leader_id, 1);
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_applied_past_its_commit_index_starts_again() {
    let dir = temp_dir();
    let replica = lone_replica(dir.path()).await;
    let c = replica.client();
    c.create_cluster(CreateClusterRequest {
        name: "test".into(),
        ..Default::default()
    })
    .await
    .expect("cluster");
    c.create_host(CreateHostRequest {
        name: "h1".into(),
        nqn: "nqn.2014-08.org.nvmexpress:uuid:h1".into(),
    })
    .await
    .expect("host");
    replica.stop().await;

    // What a crash between applying and storing the commit index could
    // leave: the state machine two entries past the stored commit index.
    // Settings only (the data directory): no replica runs on this address.
    let peers = BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
    let a = args(1, dir.path(), &peers, false);
    {
        let db = meta::server::open_db(&a.resolve().expect("settings")).expect("db");
        let store = meta::storage::RaftStorage::new(db);
        let commit = store.hard_state().expect("hard state").commit;
        assert!(commit > 2, "{commit}");
        store
            .set_commit(commit - 2)
            .expect("lower the commit index");
    }

    let replica = lone_replica(dir.path()).await;
    let c = replica.client();
    assert_eq!(c.get::<Host>("h1").await.expect("h1").name, "h1");
    replica.stop().await;
}
