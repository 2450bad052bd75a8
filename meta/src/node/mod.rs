//! A replica of the meta group: starts the Raft driver thread and offers
//! async calls to propose commands, change membership and confirm
//! linearizable reads.
//!
//! Timeouts decide what a caller is told: a write not seen applied in time is
//! [`MetaError::OutcomeUnknown`] (it may still commit); a read point not
//! confirmed in time is [`MetaError::Unavailable`] (reads are always safe to
//! retry).

mod driver;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType};
use raft::{RawNode, ReadOnlyOption, StateRole};
use rocksdb::DB;

use tokio::sync::{oneshot, watch};

use crate::error::MetaError;
use crate::peer::{Command, CommandResult};
use crate::state::{result_error, StateMachine, StateReader};
use crate::storage::RaftStorage;
use crate::tls::Tls;
use crate::transport::{FeedbackSink, Transport};
use driver::{Driver, Input};

/// Where the driver answers a caller.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, MetaError>>;

/// Settings of one replica's Raft node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This replica's Raft id (non-zero).
    pub id: u64,
    /// Replica addresses (`host:port`) by id, this one included. On first
    /// start (without `join`) they are the initial voters.
    pub peers: BTreeMap<u64, String>,
    /// Start empty and wait to be added to an existing group.
    pub join: bool,
    /// Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election (randomized up to twice that).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries kept in the log before it is compacted.
    pub compact_after: u64,
    /// Revisions of watch events kept.
    pub watch_history: u64,
    /// How long a caller waits for a write to apply or a read to be confirmed.
    pub request_timeout: Duration,
    /// Bound on one Raft message and one transport batch, in bytes.
    pub max_message_bytes: usize,
    /// Mutual TLS towards the other replicas and from clients (none: plain
    /// text).
    pub tls: Option<Tls>,
}

/// What a replica knows about itself and the group (a local view).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Raft id.
    pub id: u64,
    /// Raft role.
    pub role: StateRole,
    /// Leader as known here (0: none).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// First index still in the log.
    pub first_log_index: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
    /// Known replica addresses.
    pub addresses: BTreeMap<u64, String>,
    /// The driver has stopped (the replica no longer serves).
    pub stopped: bool,
}

impl NodeView {
    /// This replica has applied its own removal from the group.
    pub fn removed(&self) -> bool {
        !self.voters.is_empty()
            && !self.voters.contains(&self.id)
            && !self.learners.contains(&self.id)
    }
}

/// A handle on the local replica.
#[derive(Clone)]
pub struct MetaNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    inbox: mpsc::Sender<Input>,
    view: Arc<RwLock<NodeView>>,
    revision: watch::Receiver<u64>,
    reader: StateReader,
    transport: Arc<Transport>,
    request_timeout: Duration,
}

/// The other replicas' addresses: those the group recorded (at its
/// bootstrap, or with the membership change that added them) win over
/// `--peers`, which a WARN then names. A member of the configuration with
/// no address at all (a store bootstrapped before addresses were recorded,
/// restarted without `--peers`) is an error, not a replica that waits
/// forever for messages it cannot send.
fn replica_addresses(
    id: u64,
    peers: &BTreeMap<u64, String>,
    recorded: BTreeMap<u64, String>,
    conf: &raft::eraftpb::ConfState,
) -> Result<BTreeMap<u64, String>, MetaError> {
    for (peer, address) in peers.iter().filter(|(p, _)| **p != id) {
        match recorded.get(peer) {
            Some(r) if r != address => tracing::warn!(
                replica = peer,
                "--peers gives {address}, the group recorded {r}: using {r} \
                 (to move a replica, remove it and add it back)"
            ),
            _ => {}
        }
    }
    let mut addresses = peers.clone();
    addresses.extend(recorded);
    let missing: Vec<String> = conf
        .voters
        .iter()
        .chain(&conf.learners)
        .filter(|m| **m != id && !addresses.contains_key(m))
        .map(u64::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(MetaError::InvalidArgument(format!(
            "--peers: the group's replica(s) {} have no known address; list every replica \
             as on the first start (ID=HOST:PORT,...)",
            missing.join(", ")
        )));
    }
    Ok(addresses)
}

/// Starts the replica on an open database: bootstraps a new group when the
/// store is empty (unless joining), then runs the Raft driver on its own
/// thread. Sender tasks of the transport run on `runtime`.
pub fn start(
    db: Arc<DB>,
    config: NodeConfig,
    runtime: tokio::runtime::Handle,
) -> Result<(MetaNode, JoinHandle<Result<(), MetaError>>), MetaError> {
    let storage = RaftStorage::new(db.clone());
    storage.claim_replica_id(config.id)?;
    if !storage.is_initialized()? {
        if config.join {
            tracing::info!(
                id = config.id,
                "empty replica: waiting to be added to the group"
            );
        } else {
            let voters: Vec<u64> = config.peers.keys().copied().collect();
            tracing::info!(id = config.id, ?voters, "bootstrapping a new group");
            storage.bootstrap(&config.peers)?;
        }
    }
    let conf = crate::storage::read_conf_state(&db)?;
    let sm = StateMachine::new(db, config.watch_history);
    let reader = sm.reader().clone();
    let (applied, _) = reader.applied()?;
    // A crash used to be able to leave the state machine past the stored
    // commit index (the driver applied before it persisted the index; it
    // no longer does). What was applied had been committed, so the index
    // catches up instead of the replica refusing to start.
    let commit = storage.hard_state()?.commit;
    if applied > commit {
        tracing::warn!(
            applied,
            commit,
            "stored commit index behind the applied index; raising it"
        );
        storage.set_commit(applied)?;
    }

    let (inbox_tx, inbox_rx) = mpsc::channel();
    let feedback_tx = inbox_tx.clone();
    let feedback: FeedbackSink = Arc::new(move |f| {
        let _ = feedback_tx.send(Input::Transport(f));
    });
    let addresses = replica_addresses(config.id, &config.peers, reader.members()?, &conf)?;
    let transport = Transport::new(
        config.id,
        addresses,
        config.max_message_bytes,
        config.tls.clone(),
        feedback,
        runtime,
    );

    let raft_config = raft::Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    };
    raft_config
        .validate()
        .map_err(|e| MetaError::InvalidArgument(format!("raft settings: {e}")))?;
    let mut raw = RawNode::new(&raft_config, storage, &crate::raft_logger::logger())
        .map_err(|e| MetaError::Storage(format!("cannot start raft: {e}")))?;
    // A replica that is the group's only voter would win the election its
    // timeout starts anyway: hold it now, so that the group answers from
    // the start instead of an election timeout later.
    if conf.voters == [config.id] {
        raw.campaign()
            .map_err(|e| MetaError::Storage(format!("cannot start an election: {e}")))?;
    }

    let view = Arc::new(RwLock::new(NodeView {
        id: config.id,
        role: StateRole::Follower,
        leader_id: 0,
        term: 0,
        commit_index: 0,
        applied_index: applied,
        first_log_index: 0,
        voters: Vec::new(),
        learners: Vec::new(),
        addresses: BTreeMap::new(),
        stopped: false,
    }));
    let (revision_tx, revision_rx) = watch::channel(reader.revision()?);
    let driver = Driver {
        raw,
        sm,
        transport: transport.clone(),
        inbox: inbox_rx,
        view: view.clone(),
        revision: revision_tx,
        configured_peers: config.peers.clone(),
        tick: config.tick,
        compact_after: config.compact_after.max(1),
        proposals: HashMap::new(),
        reads: HashMap::new(),
        read_waits: Vec::new(),
        applied,
    };
    let thread_view = view.clone();
    let handle = std::thread::Builder::new()
        .name(format!("raft-{}", config.id))
        .spawn(move || {
            let result = driver.run();
            if let Err(e) = &result {
                tracing::error!("raft driver stopped: {e}");
            }
            if let Ok(mut v) = thread_view.write() {
                v.stopped = true;
            }
            result
        })
        .map_err(|e| MetaError::Storage(format!("cannot start the raft thread: {e}")))?;
    let node = MetaNode {
        inner: Arc::new(Inner {
            id: config.id,
            inbox: inbox_tx,
            view,
            revision: revision_rx,
            reader,
            transport,
            request_timeout: config.request_timeout,
        }),
    };
    Ok((node, handle))
}

impl MetaNode {
    /// This replica's Raft id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Reads of the local state machine (linearizable after [`Self::read_barrier`]).
    pub fn reader(&self) -> &StateReader {
        &self.inner.reader
    }

    /// The transport (for the peer service).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.inner.transport
    }

    /// The replica's current view of itself and the group.
    pub fn view(&self) -> NodeView {
        match self.inner.view.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Follows the applied cluster revision.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.inner.revision.clone()
    }

    fn submit(&self, input: Input) -> Result<(), MetaError> {
        if matches!(
            input,
            Input::Propose { .. } | Input::ConfChange { .. } | Input::Read { .. }
        ) {
            self.check_member()?;
        }
        self.inner
            .inbox
            .send(input)
            .map_err(|_| MetaError::Unavailable("the replica is stopped".into()))
    }

    /// Refuses requests on a replica that has applied its own removal: its
    /// proposals would still reach the leader and commit, but it no longer
    /// receives the log and would report them as timed out. Unavailable
    /// (certainly not applied): a client moves on to another replica.
    fn check_member(&self) -> Result<(), MetaError> {
        let view = self.view();
        if !view.removed() {
            return Ok(());
        }
        let members: Vec<String> = view
            .voters
            .iter()
            .map(|id| match view.addresses.get(id) {
                Some(address) => format!("{id} at {address}"),
                None => id.to_string(),
            })
            .collect();
        Err(MetaError::Unavailable(format!(
            "replica {} was removed from the group; ask its members ({}) and stop this one",
            view.id,
            members.join(", ")
        )))
    }

    async fn wait_write(
        &self,
        rx: oneshot::Receiver<Result<CommandResult, MetaError>>,
    ) -> Result<CommandResult, MetaError> {
        let timeout = self.inner.request_timeout;
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => {
                return Err(MetaError::OutcomeUnknown(
                    "the replica stopped before the write was applied".into(),
                ))
            }
            Err(_) => {
                return Err(MetaError::OutcomeUnknown(format!(
                    "the write was not seen committed within {timeout:?} (no quorum?); \
                     it may still take effect"
                )))
            }
        };
        match result_error(&result) {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// Replicates a command and returns what applying it gave.
    pub async fn propose(&self, command: &Command) -> Result<CommandResult, MetaError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Propose {
            data: command.encode_to_vec(),
            reply,
        })?;
        self.wait_write(rx).await
    }

    /// Adds a voting replica with the given gRPC address.
    pub async fn add_replica(&self, id: u64, address: &str) -> Result<(), MetaError> {
        let mut change = ConfChange::default();
        change.set_change_type(ConfChangeType::AddNode);
        change.node_id = id;
        change.set_context(address.as_bytes().to_vec().into());
        self.change_membership(change).await
    }

    /// Removes a replica.
    pub async fn remove_replica(&self, id: u64) -> Result<(), MetaError> {
        let mut change = ConfChange::default();
        change.set_change_type(ConfChangeType::RemoveNode);
        change.node_id = id;
        self.change_membership(change).await
    }

    async fn change_membership(&self, change: ConfChange) -> Result<(), MetaError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::ConfChange { change, reply })?;
        self.wait_write(rx).await.map(|_| ())
    }

    /// Moves leadership to replica `to` and waits until this replica sees it
    /// lead.
    pub async fn transfer_leadership(&self, to: u64) -> Result<(), MetaError> {
        // None: the timeout is past the clock's range (no practical limit).
        let deadline = tokio::time::Instant::now().checked_add(self.inner.request_timeout);
        loop {
            if self.view().leader_id == to {
                return Ok(());
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err(MetaError::Unavailable(format!(
                    "leadership did not move to replica {to} in time; retry"
                )));
            }
            self.submit(Input::TransferLeader(to))?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Returns once the local state machine reflects every write committed
    /// before the call: reads made after it are linearizable.
    pub async fn read_barrier(&self) -> Result<(), MetaError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Read { reply })?;
        let timeout = self.inner.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(MetaError::Unavailable("the replica is stopped".into())),
            Err(_) => Err(MetaError::Unavailable(format!(
                "could not confirm the leader within {timeout:?} (no quorum?); retry"
            ))),
        }
    }

    /// Stops the driver thread.
    pub fn stop(&self) {
        let _ = self.inner.inbox.send(Input::Stop);
    }
}
