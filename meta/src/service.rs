//! The `Meta` gRPC service.
//!
//! Every replica serves it. Writes become replicated commands (raft-rs hands
//! a follower's proposal to the leader); reads wait for a Raft read index and
//! then read the local state machine, so they are linearizable on any
//! replica. Heartbeats are the exception: liveness is leader state, so a
//! follower forwards them to the leader over gRPC. Watches stream the local
//! watch history, which is complete and ordered on every replica.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use raft::StateRole;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::MetaError;
use crate::liveness::{set_state, Liveness};
use crate::node::{MetaNode, NodeView};
use crate::objects::{kind_label, snapshot_key, MetaObject, CLUSTER_NAME_KEY, SNAPSHOT_SEPARATOR};
use crate::peer::{command, Command, PutControllerNode, PutDiskNode};
use crate::placement::place_volume;
use crate::proto::meta_client::MetaClient as GrpcClient;
use crate::proto::meta_server::Meta;
use crate::proto::{
    AddReplicaRequest, Cluster, ControllerNode, ControllerNodeSpec, CreateClusterRequest,
    CreateHostRequest, CreateSnapshotRequest, CreateVolumeRequest, DeleteResponse, DiskNode,
    DiskNodeSpec, HeartbeatRequest, HeartbeatResponse, ListRequest, ListResponse,
    MembershipResponse, NodeKind, NodeState, Object, ObjectKind, ObjectRef, RaftRole,
    RemoveReplicaRequest, Replica, StatusRequest, StatusResponse, UpdateOperationRequest, Volume,
    WatchEvent, WatchRequest,
};
use crate::state::apply::{check_node_address, NO_CLUSTER};
use crate::tls::{chain, endpoint, Tls};
use crate::validate;

/// Attempts at placing a volume when placement races with other changes.
const PLACEMENT_ATTEMPTS: usize = 3;
/// Events read from the history per step of a watch.
const WATCH_BATCH: usize = 256;

/// The service of one replica.
pub struct MetaService {
    node: MetaNode,
    liveness: Arc<Liveness>,
    leaders: Mutex<HashMap<String, GrpcClient<Channel>>>,
    tls: Option<Tls>,
}

fn single(kind: command::Kind) -> Command {
    Command { kind: Some(kind) }
}

/// The role `status` reports: Raft's, or `Removed` once the replica has
/// applied its own removal (Raft still calls it a follower).
fn role(view: &NodeView) -> RaftRole {
    if view.removed() {
        return RaftRole::Removed;
    }
    match view.role {
        StateRole::Follower => RaftRole::Follower,
        StateRole::Candidate => RaftRole::Candidate,
        StateRole::PreCandidate => RaftRole::PreCandidate,
        StateRole::Leader => RaftRole::Leader,
    }
}

impl MetaService {
    /// Serves `node`, judging liveness with `liveness`; `tls` is how it
    /// reaches other replicas (the leader, a replica being added).
    pub fn new(node: MetaNode, liveness: Arc<Liveness>, tls: Option<Tls>) -> Self {
        MetaService {
            node,
            liveness,
            leaders: Mutex::new(HashMap::new()),
            tls,
        }
    }

    /// Replicates a command and returns the object it wrote.
    async fn write(&self, kind: command::Kind) -> Result<Response<Object>, Status> {
        let result = self.node.propose(&single(kind)).await?;
        let object = result
            .object
            .ok_or_else(|| Status::internal("the command returned no object"))?;
        Ok(Response::new(object))
    }

    /// Reads one object after a read barrier.
    async fn read<T: MetaObject>(&self, name: &str) -> Result<Option<T>, MetaError> {
        self.node.read_barrier().await?;
        Ok(self
            .node
            .reader()
            .get(T::KIND, name)?
            .and_then(T::from_object))
    }

    /// Every object of a kind, from the local state (after a barrier).
    fn list_all<T: MetaObject>(&self) -> Result<Vec<T>, MetaError> {
        let (items, _) = self.node.reader().list(T::KIND, "")?;
        Ok(items.into_iter().filter_map(T::from_object).collect())
    }

    /// Places a volume on a fresh view of the cluster and proposes it.
    async fn place_and_create(
        &self,
        req: &CreateVolumeRequest,
    ) -> Result<Response<Object>, Status> {
        let mut last = None;
        for _ in 0..PLACEMENT_ATTEMPTS {
            let cluster = self
                .read::<Cluster>(CLUSTER_NAME_KEY)
                .await?
                .ok_or_else(|| MetaError::FailedPrecondition(NO_CLUSTER.into()))?;
            // Checked here too so that a placement failure cannot hide it.
            if self
                .node
                .reader()
                .get(ObjectKind::Volume, &req.name)?
                .is_some()
            {
                return Err(MetaError::AlreadyExists(format!(
                    "volume '{}' already exists",
                    req.name
                ))
                .into());
            }
            let disks = self.list_all::<DiskNode>()?;
            let controllers = self.list_all::<ControllerNode>()?;
            let volumes = self.list_all::<Volume>()?;
            let volume = place_volume(&cluster, &disks, &controllers, &volumes, req)
                .map_err(|e| MetaError::FailedPrecondition(e.to_string()))?;
            match self.write(command::Kind::CreateVolume(volume)).await {
                Err(status) if status.code() == tonic::Code::Aborted => last = Some(status),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Status::aborted("placement kept racing; retry")))
    }

    /// A client for the current leader, for forwarding heartbeats.
    fn leader_client(&self) -> Result<GrpcClient<Channel>, MetaError> {
        let view = self.node.view();
        let address = view
            .addresses
            .get(&view.leader_id)
            .filter(|_| view.leader_id != 0)
            .cloned()
            .ok_or_else(|| {
                MetaError::Unavailable("no leader known (election in progress); retry".into())
            })?;
        let mut clients = self
            .leaders
            .lock()
            .map_err(|_| MetaError::Unavailable("leader client cache poisoned".into()))?;
        if let Some(c) = clients.get(&address) {
            return Ok(c.clone());
        }
        let endpoint = endpoint(&address, self.tls.as_ref())
            .map_err(|e| MetaError::Unavailable(format!("leader: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            // A leader that stops answering fails the forwarded heartbeat
            // (which the agent sends again) instead of holding it.
            .timeout(Duration::from_secs(5));
        let client = GrpcClient::new(endpoint.connect_lazy());
        clients.insert(address, client.clone());
        Ok(client)
    }

    /// The members as of the applied configuration, with their addresses.
    fn replicas(&self) -> Result<Vec<Replica>, MetaError> {
        let conf = self.node.reader().conf_state()?;
        let addresses = self.node.transport().addresses();
        let member = |id: &u64, voter: bool| Replica {
            id: *id,
            address: addresses.get(id).cloned().unwrap_or_default(),
            voter,
        };
        let mut all: Vec<Replica> = conf.voters.iter().map(|id| member(id, true)).collect();
        all.extend(conf.learners.iter().map(|id| member(id, false)));
        all.sort_by_key(|r| r.id);
        Ok(all)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Meta for MetaService {
    async fn create_cluster(
        &self,
        request: Request<CreateClusterRequest>,
    ) -> Result<Response<Object>, Status> {
        let mut req = request.into_inner();
        validate::cluster(&mut req)?;
        self.write(command::Kind::CreateCluster(req)).await
    }

    async fn create_disk_node(
        &self,
        request: Request<DiskNodeSpec>,
    ) -> Result<Response<Object>, Status> {
        let spec = check_disk_node(request.into_inner())?;
        self.write(command::Kind::PutDiskNode(PutDiskNode {
            spec: Some(spec),
            upsert: false,
        }))
        .await
    }

    async fn register_disk_node(
        &self,
        request: Request<DiskNodeSpec>,
    ) -> Result<Response<Object>, Status> {
        let spec = check_disk_node(request.into_inner())?;
        let name = spec.name.clone();
        let reply = self
            .write(command::Kind::PutDiskNode(PutDiskNode {
                spec: Some(spec),
                upsert: true,
            }))
            .await?;
        self.liveness.record(NodeKind::Disk, &name);
        Ok(reply)
    }

    async fn create_controller_node(
        &self,
        request: Request<ControllerNodeSpec>,
    ) -> Result<Response<Object>, Status> {
        let spec = check_controller_node(request.into_inner())?;
        self.write(command::Kind::PutControllerNode(PutControllerNode {
            spec: Some(spec),
            upsert: false,
        }))
        .await
    }

    async fn register_controller_node(
        &self,
        request: Request<ControllerNodeSpec>,
    ) -> Result<Response<Object>, Status> {
        let spec = check_controller_node(request.into_inner())?;
        let name = spec.name.clone();
        let reply = self
            .write(command::Kind::PutControllerNode(PutControllerNode {
                spec: Some(spec),
                upsert: true,
            }))
            .await?;
        self.liveness.record(NodeKind::Controller, &name);
        Ok(reply)
    }

    async fn create_host(
        &self,
        request: Request<CreateHostRequest>,
    ) -> Result<Response<Object>, Status> {
        let req = request.into_inner();
        validate::name("name", &req.name)?;
        validate::nqn(&req.nqn)?;
        self.write(command::Kind::CreateHost(req)).await
    }

    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<Object>, Status> {
        let req = request.into_inner();
        validate::volume(&req)?;
        self.place_and_create(&req).await
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<Object>, Status> {
        let req = request.into_inner();
        validate::name("volume", &req.volume)?;
        validate::name("name", &req.name)?;
        self.write(command::Kind::CreateSnapshot(req)).await
    }

    async fn update_operation(
        &self,
        request: Request<UpdateOperationRequest>,
    ) -> Result<Response<Object>, Status> {
        let req = request.into_inner();
        validate::name("name", &req.name)?;
        validate::step_message(&req.message)?;
        self.write(command::Kind::UpdateOperation(req)).await
    }

    async fn get(&self, request: Request<ObjectRef>) -> Result<Response<Object>, Status> {
        let target = request.into_inner();
        let kind = validate::kind(target.kind)?;
        let name = if kind == ObjectKind::Cluster {
            CLUSTER_NAME_KEY
        } else {
            target.name.as_str()
        };
        self.node.read_barrier().await?;
        match self.node.reader().get(kind, name)? {
            Some(object) => Ok(Response::new(object)),
            None if kind == ObjectKind::Cluster => {
                Err(MetaError::NotFound("the cluster is not created".into()).into())
            }
            None => Err(MetaError::NotFound(format!(
                "{} '{name}' does not exist",
                kind_label(kind)
            ))
            .into()),
        }
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = request.into_inner();
        let kind = validate::kind(req.kind)?;
        let prefix = if kind == ObjectKind::Snapshot && !req.volume.is_empty() {
            validate::name("volume", &req.volume)?;
            format!("{}{SNAPSHOT_SEPARATOR}", req.volume)
        } else {
            String::new()
        };
        self.node.read_barrier().await?;
        let (items, revision) = self.node.reader().list(kind, &prefix)?;
        Ok(Response::new(ListResponse { items, revision }))
    }

    async fn delete(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let mut target = request.into_inner();
        let kind = validate::kind(target.kind)?;
        if kind == ObjectKind::Cluster {
            target.name = CLUSTER_NAME_KEY.into();
        } else if kind == ObjectKind::Snapshot {
            let (volume, name) = target.name.split_once(SNAPSHOT_SEPARATOR).ok_or_else(|| {
                MetaError::InvalidArgument(format!(
                    "snapshot '{}' must be named volume@snapshot",
                    target.name
                ))
            })?;
            validate::name("volume", volume)?;
            validate::name("snapshot", name)?;
            target.name = snapshot_key(volume, name);
        } else {
            validate::name("name", &target.name)?;
        }
        let result = self
            .node
            .propose(&single(command::Kind::Delete(target)))
            .await?;
        Ok(Response::new(DeleteResponse {
            revision: result.revision,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let kind = NodeKind::try_from(req.kind)
            .ok()
            .filter(|k| *k != NodeKind::Unspecified)
            .ok_or_else(|| {
                MetaError::InvalidArgument(format!("kind {} is not a node kind", req.kind))
            })?;
        validate::name("name", &req.name)?;
        if !req.address.is_empty() {
            validate::address("address", &req.address)?;
        } else if req.stopping {
            return Err(MetaError::InvalidArgument(
                "a stopping heartbeat must name the node's address".into(),
            )
            .into());
        }
        if self.node.view().role != StateRole::Leader {
            return self.leader_client()?.heartbeat(req).await;
        }
        let object_kind = match kind {
            NodeKind::Disk => ObjectKind::DiskNode,
            _ => ObjectKind::ControllerNode,
        };
        let mut object = self.node.reader().get(object_kind, &req.name)?;
        if object.is_none() {
            self.node.read_barrier().await?;
            object = self.node.reader().get(object_kind, &req.name)?;
        }
        let (state, address) = object.as_ref().and_then(node_liveness).ok_or_else(|| {
            MetaError::NotFound(format!(
                "{} '{}' is not registered",
                kind_label(object_kind),
                req.name
            ))
        })?;
        // Checked again when a state change applies (the record may
        // change before it commits).
        check_node_address(kind_label(object_kind), &req.name, address, &req.address)?;
        let wanted = if req.stopping {
            NodeState::Offline
        } else {
            self.liveness.record(kind, &req.name);
            NodeState::Online
        };
        let mut revision = self.node.reader().revision()?;
        if state != wanted as i32 {
            tracing::info!(?kind, name = %req.name, stopping = req.stopping, "heartbeat: marking {wanted:?}");
            revision = self
                .node
                .propose(&set_state(kind, &req.name, &req.address, wanted))
                .await?
                .revision;
        }
        Ok(Response::new(HeartbeatResponse {
            revision,
            offline_after_secs: u32::try_from(self.liveness.timeout().as_secs())
                .unwrap_or(u32::MAX),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let mut after = request.into_inner().after_revision;
        // Fail the call itself when the start is already compacted.
        self.node.reader().events_after(after, 1)?;
        let reader = self.node.reader().clone();
        let mut revisions = self.node.revisions();
        let (tx, rx) = mpsc::channel(WATCH_BATCH);
        tokio::spawn(async move {
            loop {
                let events = match reader.events_after(after, WATCH_BATCH) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if events.is_empty() {
                    tokio::select! {
                        changed = revisions.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                    }
                    continue;
                }
                for event in events {
                    after = event.revision;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let view = self.node.view();
        if view.stopped {
            return Err(MetaError::Unavailable("the replica has stopped".into()).into());
        }
        Ok(Response::new(StatusResponse {
            id: view.id,
            role: role(&view) as i32,
            leader_id: view.leader_id,
            term: view.term,
            commit_index: view.commit_index,
            applied_index: view.applied_index,
            first_log_index: view.first_log_index,
            revision: self.node.reader().revision()?,
            replicas: self.replicas()?,
        }))
    }

    async fn add_replica(
        &self,
        request: Request<AddReplicaRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let req = request.into_inner();
        if req.id == 0 {
            return Err(MetaError::InvalidArgument("id must be at least 1".into()).into());
        }
        validate::address("address", &req.address)?;
        // The form the transport matches peers (and their certificates) by.
        crate::cli::check_address(&req.address)
            .map_err(|e| MetaError::InvalidArgument(format!("address: {e}")))?;
        let endpoint = endpoint(&req.address, self.tls.as_ref())
            .map_err(MetaError::InvalidArgument)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2));
        if self.node.view().voters.contains(&req.id) {
            return Err(MetaError::AlreadyExists(format!(
                "replica {} is already a member",
                req.id
            ))
            .into());
        }
        // A voter that does not run would count against the quorum at once
        // (one replica plus a dead one is a group that cannot commit), so
        // the new replica must answer, as the id it is given, first.
        let not_ready = |why: String| {
            MetaError::FailedPrecondition(format!(
                "replica {} at {} {why}; start it with --join first",
                req.id, req.address
            ))
        };
        let status = match endpoint.connect().await {
            Ok(channel) => GrpcClient::new(channel)
                .status(StatusRequest {})
                .await
                .map_err(|e| not_ready(format!("does not answer ({})", e.message())))?
                .into_inner(),
            Err(e) => return Err(not_ready(format!("cannot be reached ({})", chain(&e))).into()),
        };
        if status.id != req.id {
            return Err(not_ready(format!("runs as replica {}", status.id)).into());
        }
        self.node.add_replica(req.id, &req.address).await?;
        Ok(Response::new(MembershipResponse {
            replicas: self.replicas()?,
        }))
    }

    async fn remove_replica(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let req = request.into_inner();
        let view = self.node.view();
        if !view.voters.contains(&req.id) && !view.learners.contains(&req.id) {
            return Err(MetaError::NotFound(format!("replica {} is not a member", req.id)).into());
        }
        if view.voters.len() == 1 && view.voters.contains(&req.id) {
            return Err(MetaError::FailedPrecondition(format!(
                "replica {} is the last voter; the group cannot lose it",
                req.id
            ))
            .into());
        }
        // A leader that removes itself keeps leading until it notices; hand
        // leadership over first so the group never waits out an election.
        if view.leader_id == req.id {
            if let Some(next) = view.voters.iter().copied().find(|id| *id != req.id) {
                self.node.transfer_leadership(next).await?;
            }
        }
        self.node.remove_replica(req.id).await?;
        Ok(Response::new(MembershipResponse {
            replicas: self.replicas()?,
        }))
    }
}

/// The liveness state and address of a disk or controller node object.
fn node_liveness(object: &Object) -> Option<(i32, &str)> {
    match &object.kind {
        Some(crate::proto::object::Kind::DiskNode(n)) => Some((n.state, &n.address)),
        Some(crate::proto::object::Kind::ControllerNode(n)) => Some((n.state, &n.address)),
        _ => None,
    }
}

fn check_disk_node(spec: DiskNodeSpec) -> Result<DiskNodeSpec, MetaError> {
    validate::name("name", &spec.name)?;
    validate::address("address", &spec.address)?;
    validate::failure_domain(&spec.failure_domain)?;
    if spec.capacity_bytes == 0 {
        return Err(MetaError::InvalidArgument(
            "capacity_bytes must be positive".into(),
        ));
    }
    Ok(spec)
}

fn check_controller_node(spec: ControllerNodeSpec) -> Result<ControllerNodeSpec, MetaError> {
    validate::name("name", &spec.name)?;
    validate::address("address", &spec.address)?;
    Ok(spec)
}
