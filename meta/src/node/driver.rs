//! The Raft driver: one OS thread that owns the raft-rs `RawNode`, steps
//! incoming messages, ticks, persists, applies committed entries and answers
//! the callers waiting on proposals and reads.
//!
//! Decisions:
//! * A plain thread with a std channel: every step does blocking rocksdb
//!   I/O (synced appends), which must not stall the async runtime, and a
//!   single owner needs no locking around raft-rs.
//! * A proposal carries a random 8-byte id in its entry's context; whichever
//!   replica proposed it answers its caller when it applies the entry with
//!   that id. Followers hand proposals to raft-rs, which forwards them to the
//!   leader, so no write is ever applied outside the log. When the leader
//!   changes, writes still waiting are proposed again (a dead leader may have
//!   lost them); the state machine applies each id once, so this is safe.
//! * Reads use Raft's read index (`ReadOnlySafe`): the leader confirms it
//!   still leads with a heartbeat round, then the caller reads once this
//!   replica has applied up to the returned index. raft-rs silently drops a
//!   read request while the leader has not committed an entry of its own term
//!   or while the follower knows no leader, so pending reads are re-issued
//!   every few ticks until answered or abandoned.
//! * The log is compacted to the applied index once it holds more than
//!   `compact_after` applied entries; peers that fall behind get a snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, Entry, EntryType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole, INVALID_ID};
use tokio::sync::watch;

use crate::error::MetaError;
use crate::node::{NodeView, Reply};
use crate::peer::CommandResult;
use crate::state::StateMachine;
use crate::storage::{decode, RaftStorage};
use crate::transport::{Feedback, Transport};

/// What the driver is asked to do.
pub(crate) enum Input {
    /// Something from the transport.
    Transport(Feedback),
    /// Replicate a command.
    Propose {
        data: Vec<u8>,
        reply: Reply<CommandResult>,
    },
    /// Replicate a membership change.
    ConfChange {
        change: ConfChange,
        reply: Reply<CommandResult>,
    },
    /// Confirm a linearizable read point.
    Read { reply: Reply<()> },
    /// Hand leadership to the given replica.
    TransferLeader(u64),
    /// Stop the driver.
    Stop,
}

/// A write waiting to be applied.
pub(crate) struct PendingWrite {
    /// The command, kept to re-propose it under a new leader (None for a
    /// membership change, which is not re-sent).
    data: Option<Vec<u8>>,
    /// Leader the proposal was last handed to.
    leader: u64,
    reply: Reply<CommandResult>,
}

pub(crate) struct PendingRead {
    issued: Option<Instant>,
    reply: Reply<()>,
}

/// Ticks between re-issues of an unanswered read.
const READ_RETRY_TICKS: u32 = 3;

/// The driver's state.
pub(crate) struct Driver {
    pub raw: RawNode<RaftStorage>,
    pub sm: StateMachine,
    pub transport: Arc<Transport>,
    pub inbox: Receiver<Input>,
    pub view: Arc<RwLock<NodeView>>,
    pub revision: watch::Sender<u64>,
    pub configured_peers: BTreeMap<u64, String>,
    pub tick: Duration,
    pub compact_after: u64,
    pub proposals: HashMap<u64, PendingWrite>,
    pub reads: HashMap<u64, PendingRead>,
    pub read_waits: Vec<(u64, Reply<()>)>,
    pub applied: u64,
}

fn request_id(context: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(context.try_into().ok()?))
}

impl Driver {
    /// Runs until stopped or until the local store fails.
    pub fn run(mut self) -> Result<(), MetaError> {
        // What starting produced (a lone voter's election) is persisted and
        // shown at once, not after the first tick.
        self.on_ready()?;
        self.publish();
        let mut last_tick = Instant::now();
        loop {
            let wait = self.tick.saturating_sub(last_tick.elapsed());
            match self.inbox.recv_timeout(wait) {
                Ok(Input::Stop) => return Ok(()),
                Ok(input) => {
                    self.handle(input);
                    while let Ok(more) = self.inbox.try_recv() {
                        if matches!(more, Input::Stop) {
                            return Ok(());
                        }
                        self.handle(more);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let ticked = last_tick.elapsed() >= self.tick;
            if ticked {
                last_tick = Instant::now();
                self.raw.tick();
                self.housekeeping();
            }
            if self.on_ready()? || ticked {
                self.publish();
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Transport(Feedback::Message(msg)) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Input::Transport(Feedback::Unreachable(id)) => self.raw.report_unreachable(id),
            Input::Transport(Feedback::SnapshotSent(id, ok)) => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(id, status);
            }
            Input::Propose { data, reply } => {
                let id = rand::random::<u64>();
                match self.raw.propose(id.to_be_bytes().to_vec(), data.clone()) {
                    Ok(()) => self.track(id, Some(data), reply),
                    Err(e) => {
                        let _ = reply.send(Err(MetaError::Unavailable(format!(
                            "write not accepted ({e}): no leader yet; retry"
                        ))));
                    }
                }
            }
            Input::ConfChange { change, reply } => {
                let id = rand::random::<u64>();
                match self
                    .raw
                    .propose_conf_change(id.to_be_bytes().to_vec(), change)
                {
                    Ok(()) => self.track(id, None, reply),
                    Err(e) => {
                        let _ = reply.send(Err(MetaError::Unavailable(format!(
                            "membership change not accepted ({e}); retry"
                        ))));
                    }
                }
            }
            Input::Read { reply } => {
                let ctx = rand::random::<u64>();
                self.reads.insert(
                    ctx,
                    PendingRead {
                        issued: None,
                        reply,
                    },
                );
                self.issue_read(ctx);
            }
            Input::TransferLeader(to) => self.raw.transfer_leader(to),
            Input::Stop => {}
        }
    }

    fn track(&mut self, id: u64, data: Option<Vec<u8>>, reply: Reply<CommandResult>) {
        let leader = self.raw.raft.leader_id;
        self.proposals.insert(
            id,
            PendingWrite {
                data,
                leader,
                reply,
            },
        );
    }

    /// Re-sends the writes handed to an earlier leader: one that died or was
    /// deposed may have lost them. The state machine applies each request id
    /// once, so a write that did commit is not applied again.
    fn repropose(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == INVALID_ID {
            return;
        }
        // A caller that gave up was told the outcome is unknown; its write is
        // not revived (it may still commit if the old leader replicated it).
        self.proposals.retain(|_, p| !p.reply.is_closed());
        let stale: Vec<(u64, Vec<u8>)> = self
            .proposals
            .iter_mut()
            .filter(|(_, p)| p.leader != leader)
            .filter_map(|(id, p)| {
                p.leader = leader;
                p.data.clone().map(|d| (*id, d))
            })
            .collect();
        for (id, data) in stale {
            tracing::debug!(id, leader, "re-proposing a write under the new leader");
            let _ = self.raw.propose(id.to_be_bytes().to_vec(), data);
        }
    }

    /// Asks raft-rs for a read index, when it can answer one.
    fn issue_read(&mut self, ctx: u64) {
        let raft = &self.raw.raft;
        if raft.leader_id == INVALID_ID {
            if let Some(read) = self.reads.remove(&ctx) {
                let _ = read.reply.send(Err(MetaError::Unavailable(
                    "no leader known (election in progress); retry".into(),
                )));
            }
            return;
        }
        if raft.state == StateRole::Leader && !raft.commit_to_current_term() {
            return; // re-issued by housekeeping once the leader's entry commits
        }
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        if let Some(read) = self.reads.get_mut(&ctx) {
            read.issued = Some(Instant::now());
        }
    }

    /// Once per tick: forget abandoned callers, re-issue unanswered reads.
    fn housekeeping(&mut self) {
        self.proposals.retain(|_, p| !p.reply.is_closed());
        self.reads.retain(|_, r| !r.reply.is_closed());
        self.read_waits.retain(|(_, r)| !r.is_closed());
        let retry_after = self.tick.saturating_mul(READ_RETRY_TICKS);
        let due: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.issued.is_none_or(|t| t.elapsed() >= retry_after))
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in due {
            self.issue_read(ctx);
        }
    }

    /// Handles a ready state, if any; tells whether there was one.
    fn on_ready(&mut self) -> Result<bool, MetaError> {
        if !self.raw.has_ready() {
            return Ok(false);
        }
        let mut ready = self.raw.ready();
        let leader_changed = ready.ss().is_some();
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if *ready.snapshot() != Snapshot::default() {
            self.install_snapshot(ready.snapshot())?;
        }
        // The log and the commit index are durable before anything is
        // applied: a state machine ahead of the stored commit index would
        // stop the replica from starting again after a crash in between.
        let hs = ready.hs().cloned();
        self.raw.store().append(ready.entries(), hs.as_ref())?;
        self.apply(ready.take_committed_entries())?;
        for rs in ready.take_read_states() {
            let Some(ctx) = request_id(&rs.request_ctx) else {
                continue;
            };
            if let Some(read) = self.reads.remove(&ctx) {
                self.read_waits.push((rs.index, read.reply));
            }
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer_reads();
        self.maybe_compact()?;
        if leader_changed {
            self.repropose();
        }
        Ok(true)
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), MetaError> {
        let index = snap.get_metadata().index;
        tracing::info!(index, "installing a snapshot from the leader");
        self.raw.store().install_snapshot(snap)?;
        self.applied = index;
        self.refresh_addresses()?;
        let _ = self.revision.send(self.sm.reader().revision()?);
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), MetaError> {
        if entries.is_empty() {
            return Ok(());
        }
        for entry in entries {
            let (index, term) = (entry.index, entry.term);
            let id = request_id(&entry.context);
            let waiter = id
                .and_then(|id| self.proposals.remove(&id))
                .map(|p| p.reply);
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.sm.apply_empty(index, term)?;
                    None
                }
                EntryType::EntryNormal => {
                    Some(Ok(self.sm.apply_command(index, term, id, &entry.data)?))
                }
                EntryType::EntryConfChange => Some(self.apply_conf_change(&entry)?),
                EntryType::EntryConfChangeV2 => {
                    tracing::warn!(
                        index,
                        "ignoring a joint configuration change (never proposed here)"
                    );
                    self.sm.apply_empty(index, term)?;
                    None
                }
            };
            self.applied = index;
            if let (Some(waiter), Some(outcome)) = (waiter, outcome) {
                let _ = waiter.send(outcome);
            }
        }
        let _ = self.revision.send(self.sm.reader().revision()?);
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        entry: &Entry,
    ) -> Result<Result<CommandResult, MetaError>, MetaError> {
        let (index, term) = (entry.index, entry.term);
        let change: ConfChange = match decode(&entry.data) {
            Ok(c) => c,
            Err(e) => {
                self.sm.apply_empty(index, term)?;
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "undecodable membership change: {e}"
                ))));
            }
        };
        match self.raw.apply_conf_change(&change) {
            Ok(conf) => {
                self.sm.apply_conf_change(index, term, &change, &conf)?;
                self.refresh_addresses()?;
                tracing::info!(voters = ?conf.voters, learners = ?conf.learners, "membership changed");
                Ok(Ok(CommandResult {
                    revision: self.sm.reader().revision()?,
                    ..Default::default()
                }))
            }
            Err(e) => {
                self.sm.apply_empty(index, term)?;
                Ok(Err(MetaError::FailedPrecondition(format!(
                    "membership change refused: {e}"
                ))))
            }
        }
    }

    /// Tells the transport the replica addresses: configured ones, overridden
    /// by those recorded with membership changes.
    fn refresh_addresses(&self) -> Result<(), MetaError> {
        let mut addresses = self.configured_peers.clone();
        addresses.extend(self.sm.reader().members()?);
        self.transport.set_addresses(addresses);
        Ok(())
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .read_waits
            .drain(..)
            .partition(|(index, _)| *index <= applied);
        self.read_waits = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    fn maybe_compact(&mut self) -> Result<(), MetaError> {
        let store = self.raw.store();
        let (truncated, _) = store.truncated()?;
        if self.applied > truncated.saturating_add(self.compact_after) {
            store.compact(self.applied)?;
            tracing::debug!(upto = self.applied, "log compacted");
        }
        Ok(())
    }

    fn publish(&mut self) {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf().to_conf_state();
        let view = NodeView {
            id: raft.id,
            role: raft.state,
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            first_log_index: self.raw.store().truncated().map(|t| t.0 + 1).unwrap_or(0),
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            addresses: self.transport.addresses(),
            stopped: false,
        };
        if let Ok(mut v) = self.view.write() {
            if *v != view {
                *v = view;
            }
        }
    }
}
