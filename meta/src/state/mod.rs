//! The replicated state machine: the cluster objects in rocksdb (`sm/` keys),
//! changed only by applying committed Raft entries, in log order.
//!
//! Each entry is applied in its own write batch together with the new applied
//! index, so after a crash the objects and the applied index always agree
//! and replay resumes exactly after the last applied entry. Every change
//! bumps the cluster revision by one and appends watch events; the last
//! `watch_history` revisions of events are kept.
//!
//! Exactly once: a command carries its proposal's request id, and the result
//! is remembered for the next [`REQUEST_MEMORY`] applied entries. A command
//! whose id was already applied (a proposal re-sent after a leader change,
//! which may have committed twice) is not executed again: it returns the
//! remembered result.

pub mod apply;
pub mod read;
pub mod snapshot;
mod txn;

use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::error::MetaError;
use crate::keys;
use crate::peer::{Command, CommandResult, ErrorCode};
use crate::storage::encode;
pub use read::StateReader;
use txn::Txn;

/// Applied entries for which command results stay remembered.
pub const REQUEST_MEMORY: u64 = 10_000;

/// Applies committed entries to the objects.
pub struct StateMachine {
    reader: StateReader,
    watch_history: u64,
}

/// The error a rejected command reports.
pub fn error_to_result(e: &MetaError, revision: u64) -> Option<CommandResult> {
    let code = match e {
        MetaError::NotFound(_) => ErrorCode::NotFound,
        MetaError::AlreadyExists(_) => ErrorCode::AlreadyExists,
        MetaError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
        MetaError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        MetaError::Aborted(_) => ErrorCode::Aborted,
        _ => return None,
    };
    Some(CommandResult {
        revision,
        object: None,
        error_code: code as i32,
        error_message: e.to_string(),
    })
}

/// The error carried by a command result, if it was rejected.
pub fn result_error(result: &CommandResult) -> Option<MetaError> {
    let msg = result.error_message.clone();
    match ErrorCode::try_from(result.error_code).unwrap_or(ErrorCode::Unspecified) {
        ErrorCode::Unspecified => None,
        ErrorCode::NotFound => Some(MetaError::NotFound(msg)),
        ErrorCode::AlreadyExists => Some(MetaError::AlreadyExists(msg)),
        ErrorCode::FailedPrecondition => Some(MetaError::FailedPrecondition(msg)),
        ErrorCode::InvalidArgument => Some(MetaError::InvalidArgument(msg)),
        ErrorCode::Aborted => Some(MetaError::Aborted(msg)),
    }
}

impl StateMachine {
    /// Applies to the replica's database, keeping `watch_history` revisions
    /// of watch events.
    pub fn new(db: Arc<DB>, watch_history: u64) -> Self {
        StateMachine {
            reader: StateReader::new(db),
            watch_history: watch_history.max(1),
        }
    }

    /// A read handle.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    fn write(&self, mut batch: WriteBatch, index: u64, term: u64) -> Result<(), MetaError> {
        batch.put(keys::SM_APPLIED, keys::encode_pair(index, term));
        self.reader.db().write(batch)?;
        Ok(())
    }

    /// Applies an entry that carries no command (a new leader's empty entry).
    pub fn apply_empty(&self, index: u64, term: u64) -> Result<(), MetaError> {
        self.write(WriteBatch::default(), index, term)
    }

    /// Applies a command entry proposed with `request` as its id.
    /// Rejections are results; only a failure of the local store is an error
    /// (and stops the replica).
    pub fn apply_command(
        &self,
        index: u64,
        term: u64,
        request: Option<u64>,
        data: &[u8],
    ) -> Result<CommandResult, MetaError> {
        let db = self.reader.db();
        if let Some(id) = request {
            if let Some(v) = db.get(keys::request_key(id))? {
                self.write(WriteBatch::default(), index, term)?;
                return Ok(CommandResult::decode(&*v)?);
            }
        }
        let current = self.reader.revision()?;
        let mut batch = WriteBatch::default();
        let result = match Command::decode(data) {
            Ok(cmd) => {
                let mut txn = Txn::new(db, current);
                match apply::execute(&mut txn, cmd) {
                    Ok(object) => {
                        let revision = if txn.is_empty() {
                            current
                        } else {
                            txn.revision()
                        };
                        if !txn.is_empty() {
                            txn.write_into(&mut batch);
                            self.prune_events(&mut batch, revision)?;
                        }
                        CommandResult {
                            revision,
                            object,
                            ..Default::default()
                        }
                    }
                    Err(e) => match error_to_result(&e, current) {
                        Some(rejected) => rejected,
                        None => return Err(e),
                    },
                }
            }
            Err(e) => {
                let e = MetaError::InvalidArgument(format!("undecodable command: {e}"));
                error_to_result(&e, current).unwrap_or_default()
            }
        };
        if let Some(id) = request {
            batch.put(keys::request_key(id), result.encode_to_vec());
            batch.put(keys::request_index_key(index, id), []);
            self.forget_requests(&mut batch, index)?;
        }
        self.write(batch, index, term)?;
        Ok(result)
    }

    /// Drops the results remembered for entries older than [`REQUEST_MEMORY`].
    fn forget_requests(&self, batch: &mut WriteBatch, index: u64) -> Result<(), MetaError> {
        let Some(cutoff) = index.checked_sub(REQUEST_MEMORY) else {
            return Ok(());
        };
        let prefix = keys::SM_REQUEST_INDEX_PREFIX;
        let db = self.reader.db();
        for item in db.iterator(IteratorMode::From(prefix, Direction::Forward)) {
            let (key, _) = item?;
            let applied_at = keys::trailing_u64(&key, prefix.len());
            let id = keys::trailing_u64(&key, prefix.len() + 8);
            match (key.starts_with(prefix), applied_at, id) {
                (true, Some(at), Some(id)) if at < cutoff => {
                    batch.delete(&key);
                    batch.delete(keys::request_key(id));
                }
                _ => break,
            }
        }
        Ok(())
    }

    fn prune_events(&self, batch: &mut WriteBatch, revision: u64) -> Result<(), MetaError> {
        let Some(floor) = revision.checked_sub(self.watch_history) else {
            return Ok(());
        };
        let pruned = read::read_u64(self.reader.db(), keys::SM_EVENTS_PRUNED)?;
        if floor > pruned {
            batch.delete_range(
                keys::event_key(pruned + 1, 0),
                keys::event_key(floor + 1, 0),
            );
            batch.put(keys::SM_EVENTS_PRUNED, floor.to_be_bytes());
        }
        Ok(())
    }

    /// Applies a membership change: the new configuration and the address of
    /// an added replica (carried in the change's context).
    pub fn apply_conf_change(
        &self,
        index: u64,
        term: u64,
        change: &ConfChange,
        conf: &ConfState,
    ) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        batch.put(keys::SM_CONF_STATE, encode(conf)?);
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Ok(addr) = std::str::from_utf8(change.get_context()) {
                    if !addr.is_empty() {
                        batch.put(keys::member_key(change.node_id), addr.as_bytes());
                    }
                }
            }
            ConfChangeType::RemoveNode => batch.delete(keys::member_key(change.node_id)),
        }
        self.write(batch, index, term)
    }
}

#[cfg(test)]
mod tests;
