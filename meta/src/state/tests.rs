//! Unit tests of the state machine on a real rocksdb.

use std::sync::Arc;

use prost::Message as _;
use rocksdb::DB;

use super::*;
use crate::objects::MetaObject;
use crate::peer::{command, PutDiskNode};
use crate::proto::{
    CreateClusterRequest, CreateHostRequest, CreateSnapshotRequest, DiskNode, DiskNodeSpec,
    EventType, ObjectKind, ObjectRef, Operation, OperationState, Snapshot, SnapshotState,
    UpdateOperationRequest, Volume,
};

struct Fixture {
    _dir: tempfile::TempDir,
    sm: StateMachine,
    index: u64,
}

impl Fixture {
    fn new(history: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(DB::open_default(dir.path()).expect("open rocksdb"));
        Fixture {
            _dir: dir,
            sm: StateMachine::new(db, history),
            index: 10,
        }
    }

    fn apply(&mut self, kind: command::Kind) -> CommandResult {
        self.index += 1;
        let data = Command { kind: Some(kind) }.encode_to_vec();
        self.sm
            .apply_command(self.index, 2, None, &data)
            .expect("store works")
    }

    fn ok(&mut self, kind: command::Kind) -> CommandResult {
        let r = self.apply(kind);
        assert_eq!(r.error_code, 0, "rejected: {}", r.error_message);
        r
    }

    fn rejected(&mut self, kind: command::Kind) -> MetaError {
        let r = self.apply(kind);
        result_error(&r).expect("command should be rejected")
    }
}

fn cluster() -> command::Kind {
    command::Kind::CreateCluster(CreateClusterRequest {
        name: "c".into(),
        extent_size_bytes: 1 << 30,
        ..Default::default()
    })
}

fn disk(name: &str) -> command::Kind {
    command::Kind::PutDiskNode(PutDiskNode {
        spec: Some(DiskNodeSpec {
            name: name.into(),
            address: "tcp:127.0.0.1:4420".into(),
            capacity_bytes: 10 << 30,
            failure_domain: String::new(),
        }),
        upsert: false,
    })
}

fn volume_on(name: &str, node: &str, offset: u64) -> command::Kind {
    command::Kind::CreateVolume(Volume {
        name: name.into(),
        size_bytes: 1 << 30,
        replicas: 1,
        legs: vec![crate::proto::Leg {
            index: 0,
            owner: String::new(),
            groups: vec![crate::proto::Raid1Group {
                size_bytes: 1 << 30,
                members: vec![crate::proto::LogicalDisk {
                    disk_node: node.into(),
                    offset_bytes: offset,
                    length_bytes: 1 << 30,
                }],
            }],
        }],
        ..Default::default()
    })
}

fn delete(kind: ObjectKind, name: &str) -> command::Kind {
    command::Kind::Delete(ObjectRef {
        kind: kind as i32,
        name: name.into(),
    })
}

#[test]
fn objects_need_a_cluster_and_unique_names() {
    let mut f = Fixture::new(100);
    assert!(
        matches!(f.rejected(disk("d1")), MetaError::FailedPrecondition(m) if m.contains("cluster create"))
    );
    f.ok(cluster());
    assert!(matches!(f.rejected(cluster()), MetaError::AlreadyExists(_)));
    let r = f.ok(disk("d1"));
    assert_eq!(r.revision, 2);
    let err = f.rejected(disk("d1"));
    assert_eq!(
        err,
        MetaError::AlreadyExists("disk node 'd1' already exists".into())
    );
    f.ok(command::Kind::CreateHost(CreateHostRequest {
        name: "h1".into(),
        nqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
    }));
    let err = f.rejected(command::Kind::CreateHost(CreateHostRequest {
        name: "h2".into(),
        nqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
    }));
    assert!(matches!(err, MetaError::AlreadyExists(m) if m.contains("'h1'")));
    // Rejections change nothing but still advance the applied index.
    assert_eq!(f.sm.reader().revision().expect("revision"), 3);
    assert_eq!(f.sm.reader().applied().expect("applied").0, f.index);
}

#[test]
fn volumes_take_extents_and_give_them_back() {
    let mut f = Fixture::new(100);
    f.ok(cluster());
    f.ok(disk("d1"));
    f.ok(volume_on("v1", "d1", 0));
    let err = f.rejected(volume_on("v2", "d1", 1 << 29));
    assert!(matches!(err, MetaError::Aborted(m) if m.contains("no longer free")));
    let node = f.sm.reader().get(ObjectKind::DiskNode, "d1").expect("read");
    let node = node.and_then(DiskNode::from_object).expect("disk node");
    assert_eq!(node.extents.len(), 1);
    assert_eq!(node.extents[0].volume, "v1");

    let err = f.rejected(delete(ObjectKind::DiskNode, "d1"));
    assert!(matches!(err, MetaError::FailedPrecondition(m) if m.contains("v1")));
    f.ok(delete(ObjectKind::Volume, "v1"));
    let node = f.sm.reader().get(ObjectKind::DiskNode, "d1").expect("read");
    assert!(node
        .and_then(DiskNode::from_object)
        .expect("disk node")
        .extents
        .is_empty());
    f.ok(delete(ObjectKind::DiskNode, "d1"));
    let err = f.rejected(delete(ObjectKind::DiskNode, "d1"));
    assert_eq!(
        err,
        MetaError::NotFound("disk node 'd1' does not exist".into())
    );
}

#[test]
fn snapshot_operations_advance_in_order_and_finish_the_snapshot() {
    let mut f = Fixture::new(100);
    f.ok(cluster());
    f.ok(disk("d1"));
    f.ok(volume_on("v1", "d1", 0));
    let snap = f.ok(command::Kind::CreateSnapshot(CreateSnapshotRequest {
        volume: "v1".into(),
        name: "s1".into(),
    }));
    let snap = snap
        .object
        .and_then(Snapshot::from_object)
        .expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Creating as i32);
    let step = |i: u32, expected: u64| {
        command::Kind::UpdateOperation(UpdateOperationRequest {
            name: snap.operation.clone(),
            expected_revision: expected,
            step: i,
            state: OperationState::Done as i32,
            message: String::new(),
        })
    };
    let err = f.rejected(step(1, 0));
    assert!(matches!(err, MetaError::FailedPrecondition(m) if m.contains("suspend-volume")));
    let err = f.rejected(delete(ObjectKind::Volume, "v1"));
    assert!(matches!(err, MetaError::FailedPrecondition(m) if m.contains("s1")));
    let err = f.rejected(delete(ObjectKind::Snapshot, "v1@s1"));
    assert!(matches!(err, MetaError::FailedPrecondition(m) if m.contains("still being created")));

    let op = f
        .ok(step(0, snap.revision))
        .object
        .and_then(Operation::from_object);
    let op = op.expect("operation");
    assert_eq!(op.state, OperationState::Running as i32);
    // A stale writer (another leader) loses.
    assert!(matches!(
        f.rejected(step(1, snap.revision)),
        MetaError::Aborted(_)
    ));
    f.ok(step(1, op.revision));
    f.ok(step(2, 0));
    let snap =
        f.sm.reader()
            .get(ObjectKind::Snapshot, "v1@s1")
            .expect("read");
    let snap = snap.and_then(Snapshot::from_object).expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Ready as i32);
    f.ok(delete(ObjectKind::Snapshot, "v1@s1"));
    f.ok(delete(ObjectKind::Volume, "v1"));
}

#[test]
fn watch_history_is_kept_for_the_configured_revisions() {
    let mut f = Fixture::new(3);
    f.ok(cluster());
    for i in 0..5 {
        f.ok(disk(&format!("d{i}")));
    }
    // Revisions 1..=6 exist; the last 3 are kept.
    let events = f.sm.reader().events_after(3, 100).expect("events");
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert!(events.iter().all(|e| e.r#type == EventType::Put as i32));
    let err = f.sm.reader().events_after(1, 100).expect_err("pruned");
    assert!(matches!(err, MetaError::FailedPrecondition(m) if m.contains("compacted")));
    // A volume deletion is one revision with several events; paging never
    // splits it.
    f.ok(volume_on("v1", "d0", 0));
    f.ok(delete(ObjectKind::Volume, "v1"));
    let events = f.sm.reader().events_after(7, 1).expect("events");
    assert_eq!(events.len(), 2, "disk node update and volume delete");
    assert_eq!(events[1].r#type, EventType::Delete as i32);
}

#[test]
fn undecodable_commands_are_rejected_not_fatal() {
    let mut f = Fixture::new(10);
    let r =
        f.sm.apply_command(11, 1, None, b"\xff\xff\xff")
            .expect("store works");
    assert!(matches!(
        result_error(&r),
        Some(MetaError::InvalidArgument(_))
    ));
    f.index = 11;
    f.ok(cluster());
}

#[test]
fn a_command_applied_twice_under_one_request_id_runs_once() {
    let mut f = Fixture::new(100);
    f.ok(cluster());
    let data = Command {
        kind: Some(disk("d1")),
    }
    .encode_to_vec();
    let first =
        f.sm.apply_command(20, 2, Some(7), &data)
            .expect("store works");
    assert_eq!(first.error_code, 0);
    // The same proposal committed again (re-sent after a leader change).
    let again =
        f.sm.apply_command(21, 3, Some(7), &data)
            .expect("store works");
    assert_eq!(again, first, "the remembered result, not AlreadyExists");
    assert_eq!(f.sm.reader().applied().expect("applied"), (21, 3));
    // Another id is a new command.
    let other =
        f.sm.apply_command(22, 3, Some(8), &data)
            .expect("store works");
    assert!(matches!(
        result_error(&other),
        Some(MetaError::AlreadyExists(_))
    ));
    // Results are forgotten once REQUEST_MEMORY entries later.
    let later = 22 + REQUEST_MEMORY;
    f.sm.apply_command(later, 3, Some(9), &data)
        .expect("store works");
    let forgotten =
        f.sm.apply_command(later + 1, 3, Some(7), &data)
            .expect("store works");
    assert!(matches!(
        result_error(&forgotten),
        Some(MetaError::AlreadyExists(_))
    ));
}

#[test]
fn a_state_change_naming_an_address_applies_only_there() {
    let mut f = Fixture::new(100);
    f.ok(cluster());
    f.ok(disk("d1"));
    let set = |address: &str| {
        command::Kind::SetNodeState(crate::peer::SetNodeState {
            kind: crate::proto::NodeKind::Disk as i32,
            name: "d1".into(),
            state: crate::proto::NodeState::Online as i32,
            address: address.into(),
        })
    };
    let err = f.rejected(set("tcp:127.0.0.1:4421"));
    assert!(
        matches!(&err, MetaError::FailedPrecondition(m) if m.contains("registered at tcp:127.0.0.1:4420")),
        "{err:?}"
    );
    let state = |f: &Fixture| {
        let node = f.sm.reader().get(ObjectKind::DiskNode, "d1").expect("read");
        node.and_then(DiskNode::from_object)
            .expect("disk node")
            .state
    };
    assert_ne!(state(&f), crate::proto::NodeState::Online as i32);
    f.ok(set("tcp:127.0.0.1:4420"));
    assert_eq!(state(&f), crate::proto::NodeState::Online as i32);
    f.ok(set(""));
}

#[test]
fn an_online_node_is_not_deleted() {
    use crate::proto::{ControllerNodeSpec, NodeKind, NodeState};
    let mut f = Fixture::new(100);
    f.ok(cluster());
    f.ok(disk("d1"));
    f.ok(command::Kind::PutControllerNode(
        crate::peer::PutControllerNode {
            spec: Some(ControllerNodeSpec {
                name: "c1".into(),
                address: "tcp:127.0.0.1:4430".into(),
            }),
            upsert: false,
        },
    ));
    let set = |kind: NodeKind, name: &str, state: NodeState| {
        command::Kind::SetNodeState(crate::peer::SetNodeState {
            kind: kind as i32,
            name: name.into(),
            state: state as i32,
            address: String::new(),
        })
    };
    for (kind, object, name, what) in [
        (NodeKind::Disk, ObjectKind::DiskNode, "d1", "disk node"),
        (
            NodeKind::Controller,
            ObjectKind::ControllerNode,
            "c1",
            "controller node",
        ),
    ] {
        f.ok(set(kind, name, NodeState::Online));
        let err = f.rejected(delete(object, name));
        assert!(
            matches!(&err, MetaError::FailedPrecondition(m) if m.starts_with(&format!("{what} '{name}' is online"))),
            "{err:?}"
        );
        assert!(f.sm.reader().get(object, name).expect("read").is_some());
        f.ok(set(kind, name, NodeState::Offline));
        f.ok(delete(object, name));
    }
}

#[test]
fn registering_without_a_failure_domain_keeps_the_recorded_one() {
    let mut f = Fixture::new(100);
    f.ok(cluster());
    let put = |domain: &str, upsert: bool| {
        command::Kind::PutDiskNode(PutDiskNode {
            spec: Some(DiskNodeSpec {
                name: "d1".into(),
                address: "tcp:127.0.0.1:4420".into(),
                capacity_bytes: 10 << 30,
                failure_domain: domain.into(),
            }),
            upsert,
        })
    };
    let domain = |f: &Fixture| {
        let node = f.sm.reader().get(ObjectKind::DiskNode, "d1").expect("read");
        node.and_then(DiskNode::from_object)
            .expect("disk node")
            .failure_domain
    };
    f.ok(put("rack1", false));
    f.ok(put("", true));
    assert_eq!(domain(&f), "rack1");
    f.ok(put("rack2", true));
    assert_eq!(domain(&f), "rack2");
}

/// Two nodes registering one name: the second, at another address, is
/// refused while the first is online, and registers once it is offline.
#[test]
fn a_name_online_at_another_address_is_not_registered_again() {
    use crate::proto::{NodeKind, NodeState};
    let mut f = Fixture::new(100);
    f.ok(cluster());
    let put = |address: &str| {
        command::Kind::PutDiskNode(PutDiskNode {
            spec: Some(DiskNodeSpec {
                name: "d1".into(),
                address: address.into(),
                capacity_bytes: 10 << 30,
                failure_domain: String::new(),
            }),
            upsert: true,
        })
    };
    let address = |f: &Fixture| {
        let node = f.sm.reader().get(ObjectKind::DiskNode, "d1").expect("read");
        node.and_then(DiskNode::from_object)
            .expect("disk node")
            .address
    };
    f.ok(put("tcp:10.0.0.1:4420"));
    f.ok(put("tcp:10.0.0.1:4420"));
    let err = f.rejected(put("tcp:10.0.0.2:4420"));
    assert!(
        matches!(&err, MetaError::FailedPrecondition(m) if m.contains("online at tcp:10.0.0.1:4420")),
        "{err:?}"
    );
    assert_eq!(address(&f), "tcp:10.0.0.1:4420");
    f.ok(command::Kind::SetNodeState(crate::peer::SetNodeState {
        kind: NodeKind::Disk as i32,
        name: "d1".into(),
        state: NodeState::Offline as i32,
        address: String::new(),
    }));
    f.ok(put("tcp:10.0.0.2:4420"));
    assert_eq!(address(&f), "tcp:10.0.0.2:4420");
}
