//! What each replicated command does to the cluster objects.
//!
//! Every rule here is a deterministic function of the current state and the
//! command, so every replica reaches the same result. A rejected command
//! changes nothing and yields the error every replica agrees on.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::MetaError;
use crate::objects::{snapshot_key, MetaObject, CLUSTER_NAME_KEY};
use crate::peer::{command, Command, PutControllerNode, PutDiskNode, SetNodeState};
use crate::placement::range_is_free;
use crate::proto::{
    Cluster, ControllerNode, CreateHostRequest, CreateSnapshotRequest, DiskNode, Extent, Host,
    NodeKind, NodeState, Object, ObjectKind, ObjectRef, Operation, OperationState, OperationStep,
    Snapshot, SnapshotState, UpdateOperationRequest, Volume,
};
use crate::state::txn::Txn;

/// Kind of the operation that creates a snapshot.
pub const SNAPSHOT_CREATE: &str = "snapshot-create";

/// Steps of a snapshot: quiesce the volume on every active controller, take
/// the thin snapshot on every leg, resume (crash-consistent across legs).
pub const SNAPSHOT_STEPS: [&str; 3] = ["suspend-volume", "snapshot-legs", "resume-volume"];

/// Why a command that needs the cluster object fails without it.
pub const NO_CLUSTER: &str = "the cluster is not created yet (fabric-ctl cluster create NAME)";

/// Applies one command; `Ok(None)` when it wrote no object worth returning.
pub fn execute(txn: &mut Txn, cmd: Command) -> Result<Option<Object>, MetaError> {
    let Some(kind) = cmd.kind else {
        return Err(MetaError::InvalidArgument("empty command".into()));
    };
    match kind {
        command::Kind::CreateCluster(req) => {
            if let Some(existing) = txn.get::<Cluster>(CLUSTER_NAME_KEY)? {
                return Err(MetaError::AlreadyExists(format!(
                    "cluster '{}' already exists",
                    existing.name
                )));
            }
            Ok(Some(txn.put(Cluster {
                name: req.name,
                extent_size_bytes: req.extent_size_bytes,
                raid0_chunk_bytes: req.raid0_chunk_bytes,
                thin_block_bytes: req.thin_block_bytes,
                raid1_region_bytes: req.raid1_region_bytes,
                ..Default::default()
            })))
        }
        command::Kind::PutDiskNode(put) => put_disk_node(txn, put).map(Some),
        command::Kind::PutControllerNode(put) => put_controller_node(txn, put).map(Some),
        command::Kind::CreateHost(req) => create_host(txn, req).map(Some),
        command::Kind::CreateVolume(volume) => create_volume(txn, volume).map(Some),
        command::Kind::CreateSnapshot(req) => create_snapshot(txn, req).map(Some),
        command::Kind::UpdateOperation(req) => update_operation(txn, req).map(Some),
        command::Kind::Delete(target) => delete(txn, target).map(|()| None),
        command::Kind::SetNodeState(set) => set_node_state(txn, set).map(Some),
    }
}

fn require_cluster(txn: &Txn) -> Result<Cluster, MetaError> {
    txn.get::<Cluster>(CLUSTER_NAME_KEY)?
        .ok_or_else(|| MetaError::FailedPrecondition(NO_CLUSTER.into()))
}

fn get_or_not_found<T: MetaObject>(txn: &Txn, name: &str, what: &str) -> Result<T, MetaError> {
    txn.get::<T>(name)?
        .ok_or_else(|| MetaError::NotFound(format!("{what} '{name}' does not exist")))
}

/// Refuses to register a node whose name is online at another address:
/// that is another node with the same name (checked here, as the command
/// applies, so two nodes registering at once cannot both take the name).
/// Registering again waits until the group marks that one offline.
fn online_elsewhere(
    what: &str,
    name: &str,
    state: i32,
    recorded: &str,
    address: &str,
) -> Result<(), MetaError> {
    if state == NodeState::Online as i32 && recorded != address {
        return Err(MetaError::FailedPrecondition(format!(
            "{what} '{name}' is online at {recorded}, not at {address}: another node has \
             this name (it can register once that one is offline)"
        )));
    }
    Ok(())
}

fn put_disk_node(txn: &mut Txn, put: PutDiskNode) -> Result<Object, MetaError> {
    require_cluster(txn)?;
    let spec = put.spec.unwrap_or_default();
    let node = match txn.get::<DiskNode>(&spec.name)? {
        Some(_) if !put.upsert => {
            return Err(MetaError::AlreadyExists(format!(
                "disk node '{}' already exists",
                spec.name
            )))
        }
        Some(mut node) => {
            online_elsewhere(
                "disk node",
                &node.name,
                node.state,
                &node.address,
                &spec.address,
            )?;
            let allocated_end = node
                .extents
                .iter()
                .map(|e| e.offset_bytes.saturating_add(e.length_bytes))
                .max()
                .unwrap_or(0);
            if spec.capacity_bytes < allocated_end {
                return Err(MetaError::FailedPrecondition(format!(
                    "disk node '{}' cannot shrink to {} bytes: extents are allocated up to byte {}",
                    spec.name, spec.capacity_bytes, allocated_end
                )));
            }
            node.address = spec.address;
            node.capacity_bytes = spec.capacity_bytes;
            // No tag keeps the recorded one: a registration need not repeat
            // what `dn create` declared.
            if !spec.failure_domain.is_empty() {
                node.failure_domain = spec.failure_domain;
            }
            node.state = NodeState::Online as i32;
            node
        }
        None => DiskNode {
            name: spec.name,
            address: spec.address,
            capacity_bytes: spec.capacity_bytes,
            failure_domain: spec.failure_domain,
            state: if put.upsert {
                NodeState::Online as i32
            } else {
                0
            },
            ..Default::default()
        },
    };
    Ok(txn.put(node))
}

fn put_controller_node(txn: &mut Txn, put: PutControllerNode) -> Result<Object, MetaError> {
    require_cluster(txn)?;
    let spec = put.spec.unwrap_or_default();
    let node = match txn.get::<ControllerNode>(&spec.name)? {
        Some(_) if !put.upsert => {
            return Err(MetaError::AlreadyExists(format!(
                "controller node '{}' already exists",
                spec.name
            )))
        }
        Some(mut node) => {
            online_elsewhere(
                "controller node",
                &node.name,
                node.state,
                &node.address,
                &spec.address,
            )?;
            node.address = spec.address;
            node.state = NodeState::Online as i32;
            node
        }
        None => ControllerNode {
            name: spec.name,
            address: spec.address,
            state: if put.upsert {
                NodeState::Online as i32
            } else {
                0
            },
            ..Default::default()
        },
    };
    Ok(txn.put(node))
}

fn create_host(txn: &mut Txn, req: CreateHostRequest) -> Result<Object, MetaError> {
    require_cluster(txn)?;
    if txn.get::<Host>(&req.name)?.is_some() {
        return Err(MetaError::AlreadyExists(format!(
            "host '{}' already exists",
            req.name
        )));
    }
    if let Some(other) = txn.list::<Host>()?.into_iter().find(|h| h.nqn == req.nqn) {
        return Err(MetaError::AlreadyExists(format!(
            "host '{}' already has NQN {}",
            other.name, req.nqn
        )));
    }
    Ok(txn.put(Host {
        name: req.name,
        nqn: req.nqn,
        ..Default::default()
    }))
}

fn create_volume(txn: &mut Txn, volume: Volume) -> Result<Object, MetaError> {
    require_cluster(txn)?;
    if txn.get::<Volume>(&volume.name)?.is_some() {
        return Err(MetaError::AlreadyExists(format!(
            "volume '{}' already exists",
            volume.name
        )));
    }
    for host in &volume.hosts {
        get_or_not_found::<Host>(txn, host, "host")?;
    }
    let raced = |what: String| {
        MetaError::Aborted(format!(
            "placement raced with another change: {what}; retry"
        ))
    };
    for path in &volume.paths {
        if txn.get::<ControllerNode>(&path.controller)?.is_none() {
            return Err(raced(format!(
                "controller node '{}' is gone",
                path.controller
            )));
        }
    }
    let mut nodes: BTreeMap<String, DiskNode> = BTreeMap::new();
    for leg in &volume.legs {
        for (g, group) in leg.groups.iter().enumerate() {
            for (m, member) in group.members.iter().enumerate() {
                if !nodes.contains_key(&member.disk_node) {
                    let node = txn.get::<DiskNode>(&member.disk_node)?.ok_or_else(|| {
                        raced(format!("disk node '{}' is gone", member.disk_node))
                    })?;
                    nodes.insert(member.disk_node.clone(), node);
                }
                let Some(node) = nodes.get_mut(&member.disk_node) else {
                    continue;
                };
                if !range_is_free(node, member.offset_bytes, member.length_bytes) {
                    return Err(raced(format!(
                        "bytes {}+{} of disk node '{}' are no longer free",
                        member.offset_bytes, member.length_bytes, node.name
                    )));
                }
                node.extents.push(Extent {
                    offset_bytes: member.offset_bytes,
                    length_bytes: member.length_bytes,
                    volume: volume.name.clone(),
                    leg: leg.index,
                    group: u32::try_from(g).unwrap_or(u32::MAX),
                    member: u32::try_from(m).unwrap_or(u32::MAX),
                });
                node.extents.sort_by_key(|e| e.offset_bytes);
            }
        }
    }
    for node in nodes.into_values() {
        txn.put(node);
    }
    Ok(txn.put(volume))
}

fn create_snapshot(txn: &mut Txn, req: CreateSnapshotRequest) -> Result<Object, MetaError> {
    get_or_not_found::<Volume>(txn, &req.volume, "volume")?;
    let key = snapshot_key(&req.volume, &req.name);
    if txn.get::<Snapshot>(&key)?.is_some() {
        return Err(MetaError::AlreadyExists(format!(
            "snapshot '{}' of volume '{}' already exists",
            req.name, req.volume
        )));
    }
    let operation = Operation {
        name: format!("op-{}", txn.revision()),
        kind: SNAPSHOT_CREATE.into(),
        target: format!("snapshot/{key}"),
        state: OperationState::Pending as i32,
        steps: SNAPSHOT_STEPS
            .iter()
            .map(|s| OperationStep {
                name: (*s).into(),
                state: OperationState::Pending as i32,
                message: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    let snapshot = Snapshot {
        name: req.name,
        volume: req.volume,
        state: SnapshotState::Creating as i32,
        operation: operation.name.clone(),
        ..Default::default()
    };
    txn.put(operation);
    Ok(txn.put(snapshot))
}

fn finished(state: i32) -> bool {
    state == OperationState::Done as i32 || state == OperationState::Failed as i32
}

fn state_label(state: i32) -> String {
    crate::json::short_name::<OperationState>(state)
}

fn update_operation(txn: &mut Txn, req: UpdateOperationRequest) -> Result<Object, MetaError> {
    let mut op = get_or_not_found::<Operation>(txn, &req.name, "operation")?;
    if req.expected_revision != 0 && op.revision != req.expected_revision {
        return Err(MetaError::Aborted(format!(
            "operation '{}' changed at revision {} (expected {}): read it again",
            op.name, op.revision, req.expected_revision
        )));
    }
    if finished(op.state) {
        return Err(MetaError::FailedPrecondition(format!(
            "operation '{}' is already {}",
            op.name,
            state_label(op.state)
        )));
    }
    let index = req.step as usize;
    let step_count = op.steps.len();
    if index >= step_count {
        return Err(MetaError::InvalidArgument(format!(
            "operation '{}' has {step_count} steps; there is no step {index}",
            op.name
        )));
    }
    let new_state = OperationState::try_from(req.state)
        .ok()
        .filter(|s| *s != OperationState::Unspecified)
        .ok_or_else(|| MetaError::InvalidArgument(format!("unknown step state {}", req.state)))?;
    if new_state != OperationState::Pending {
        if let Some((j, step)) = op.steps[..index]
            .iter()
            .enumerate()
            .find(|(_, s)| s.state != OperationState::Done as i32)
        {
            return Err(MetaError::FailedPrecondition(format!(
                "step {index} of operation '{}' cannot start: step {j} ('{}') is {}",
                op.name,
                step.name,
                state_label(step.state)
            )));
        }
    }
    if let Some(step) = op.steps.get_mut(index) {
        step.state = new_state as i32;
        step.message = req.message;
    }
    let states: Vec<i32> = op.steps.iter().map(|s| s.state).collect();
    op.state = if states.contains(&(OperationState::Failed as i32)) {
        OperationState::Failed
    } else if states.iter().all(|s| *s == OperationState::Done as i32) {
        OperationState::Done
    } else if states.iter().any(|s| *s != OperationState::Pending as i32) {
        OperationState::Running
    } else {
        OperationState::Pending
    } as i32;
    if op.kind == SNAPSHOT_CREATE && finished(op.state) {
        let key = op.target.strip_prefix("snapshot/").unwrap_or_default();
        if let Some(mut snap) = txn.get::<Snapshot>(key)? {
            snap.state = if op.state == OperationState::Done as i32 {
                SnapshotState::Ready
            } else {
                SnapshotState::Failed
            } as i32;
            txn.put(snap);
        }
    }
    Ok(txn.put(op))
}

fn names(items: impl IntoIterator<Item = String>) -> String {
    let set: BTreeSet<String> = items.into_iter().collect();
    set.into_iter().collect::<Vec<_>>().join(", ")
}

/// A node that heartbeats is not deleted: its daemon would register it
/// again at its next heartbeat, and the operator would see it come back.
fn refuse_online(state: i32, what: &str, name: &str) -> Result<(), MetaError> {
    if state == NodeState::Online as i32 {
        return Err(MetaError::FailedPrecondition(format!(
            "{what} '{name}' is online: stop its daemon first (it can be deleted once it shows offline)"
        )));
    }
    Ok(())
}

fn delete(txn: &mut Txn, target: ObjectRef) -> Result<(), MetaError> {
    let kind = ObjectKind::try_from(target.kind)
        .ok()
        .filter(|k| *k != ObjectKind::Unspecified)
        .ok_or_else(|| {
            MetaError::InvalidArgument(format!("unknown object kind {}", target.kind))
        })?;
    let name = target.name.as_str();
    match kind {
        ObjectKind::Cluster => {
            let cluster = txn
                .get::<Cluster>(CLUSTER_NAME_KEY)?
                .ok_or_else(|| MetaError::NotFound("the cluster is not created".into()))?;
            let counts = [
                (txn.list::<DiskNode>()?.len(), "disk node(s)"),
                (txn.list::<ControllerNode>()?.len(), "controller node(s)"),
                (txn.list::<Host>()?.len(), "host(s)"),
                (txn.list::<Volume>()?.len(), "volume(s)"),
            ];
            let left: Vec<String> = counts
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}"))
                .collect();
            if !left.is_empty() {
                return Err(MetaError::FailedPrecondition(format!(
                    "the cluster still has {}: delete them first",
                    left.join(", ")
                )));
            }
            txn.delete(kind, cluster.into_object());
        }
        ObjectKind::DiskNode => {
            let node = get_or_not_found::<DiskNode>(txn, name, "disk node")?;
            refuse_online(node.state, "disk node", name)?;
            if !node.extents.is_empty() {
                return Err(MetaError::FailedPrecondition(format!(
                    "disk node '{name}' holds extents of volume(s) {}",
                    names(node.extents.iter().map(|e| e.volume.clone()))
                )));
            }
            txn.delete(kind, node.into_object());
        }
        ObjectKind::ControllerNode => {
            let node = get_or_not_found::<ControllerNode>(txn, name, "controller node")?;
            refuse_online(node.state, "controller node", name)?;
            let users: Vec<String> = txn
                .list::<Volume>()?
                .into_iter()
                .filter(|v| v.paths.iter().any(|p| p.controller == name))
                .map(|v| v.name)
                .collect();
            if !users.is_empty() {
                return Err(MetaError::FailedPrecondition(format!(
                    "controller node '{name}' serves volume(s) {}",
                    names(users)
                )));
            }
            txn.delete(kind, node.into_object());
        }
        ObjectKind::Host => {
            let host = get_or_not_found::<Host>(txn, name, "host")?;
            let users: Vec<String> = txn
                .list::<Volume>()?
                .into_iter()
                .filter(|v| v.hosts.iter().any(|h| h == name))
                .map(|v| v.name)
                .collect();
            if !users.is_empty() {
                return Err(MetaError::FailedPrecondition(format!(
                    "host '{name}' is allowed on volume(s) {}",
                    names(users)
                )));
            }
            txn.delete(kind, host.into_object());
        }
        ObjectKind::Volume => {
            let volume = get_or_not_found::<Volume>(txn, name, "volume")?;
            let snaps: Vec<String> = txn
                .list::<Snapshot>()?
                .into_iter()
                .filter(|s| s.volume == name)
                .map(|s| s.name)
                .collect();
            if !snaps.is_empty() {
                return Err(MetaError::FailedPrecondition(format!(
                    "volume '{name}' has snapshot(s) {}: delete them first",
                    names(snaps)
                )));
            }
            let holders: BTreeSet<String> = volume
                .legs
                .iter()
                .flat_map(|l| &l.groups)
                .flat_map(|g| &g.members)
                .map(|m| m.disk_node.clone())
                .collect();
            for holder in holders {
                if let Some(mut node) = txn.get::<DiskNode>(&holder)? {
                    node.extents.retain(|e| e.volume != name);
                    txn.put(node);
                }
            }
            txn.delete(kind, volume.into_object());
        }
        ObjectKind::Snapshot => {
            let snap = get_or_not_found::<Snapshot>(txn, name, "snapshot")?;
            if let Some(op) = txn.get::<Operation>(&snap.operation)? {
                if !finished(op.state) {
                    return Err(MetaError::FailedPrecondition(format!(
                        "snapshot '{name}' is still being created by operation '{}' ({})",
                        op.name,
                        state_label(op.state)
                    )));
                }
            }
            txn.delete(kind, snap.into_object());
        }
        ObjectKind::Operation => {
            let op = get_or_not_found::<Operation>(txn, name, "operation")?;
            if !finished(op.state) {
                return Err(MetaError::FailedPrecondition(format!(
                    "operation '{name}' is {}: only finished operations can be deleted",
                    state_label(op.state)
                )));
            }
            txn.delete(kind, op.into_object());
        }
        ObjectKind::Unspecified => {}
    }
    Ok(())
}

/// Refuses a heartbeat or state change that names (`claimed`) another
/// address than the one `recorded` for the node (see
/// `SetNodeState.address`); an empty claim names none.
pub(crate) fn check_node_address(
    what: &str,
    name: &str,
    recorded: &str,
    claimed: &str,
) -> Result<(), MetaError> {
    if claimed.is_empty() || claimed == recorded {
        return Ok(());
    }
    Err(MetaError::FailedPrecondition(format!(
        "{what} '{name}' is registered at {recorded}, not at {claimed}"
    )))
}

fn set_node_state(txn: &mut Txn, set: SetNodeState) -> Result<Object, MetaError> {
    match NodeKind::try_from(set.kind) {
        Ok(NodeKind::Disk) => {
            let mut node = get_or_not_found::<DiskNode>(txn, &set.name, "disk node")?;
            check_node_address("disk node", &set.name, &node.address, &set.address)?;
            if node.state == set.state {
                return Ok(node.into_object());
            }
            node.state = set.state;
            Ok(txn.put(node))
        }
        Ok(NodeKind::Controller) => {
            let mut node = get_or_not_found::<ControllerNode>(txn, &set.name, "controller node")?;
            check_node_address("controller node", &set.name, &node.address, &set.address)?;
            if node.state == set.state {
                return Ok(node.into_object());
            }
            node.state = set.state;
            Ok(txn.put(node))
        }
        _ => Err(MetaError::InvalidArgument(format!(
            "unknown node kind {}",
            set.kind
        ))),
    }
}
