//! Reads of the state machine, shared by the gRPC service (any thread) and
//! the apply path. Lists read one rocksdb snapshot, so their items and the
//! revision they report agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;
use rocksdb::{Direction, IteratorMode, DB};

use crate::error::MetaError;
use crate::keys;
use crate::proto::{Object, ObjectKind, WatchEvent};

/// A read-only handle on the state machine.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<DB>,
}

/// Decodes an object stored under `key`.
pub(crate) fn decode_object(value: &[u8]) -> Result<Object, MetaError> {
    Ok(Object::decode(value)?)
}

/// Reads a u64 value (0 when absent).
pub(crate) fn read_u64(db: &DB, key: &[u8]) -> Result<u64, MetaError> {
    match db.get(key)? {
        Some(v) => keys::decode_u64(&v).ok_or_else(|| MetaError::Corrupt("u64 value".into())),
        None => Ok(0),
    }
}

/// Scans every key under `prefix` of a database or a snapshot.
macro_rules! scan_prefix {
    ($source:expr, $prefix:expr, |$key:ident, $value:ident| $body:block) => {{
        let prefix: &[u8] = $prefix;
        for item in $source.iterator(IteratorMode::From(prefix, Direction::Forward)) {
            let ($key, $value) = item?;
            if !$key.starts_with(prefix) {
                break;
            }
            $body
        }
    }};
}
pub(crate) use scan_prefix;

impl StateReader {
    /// Reads from the replica's database.
    pub fn new(db: Arc<DB>) -> Self {
        StateReader { db }
    }

    /// The database (for the apply path).
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    /// One object, if it exists.
    pub fn get(&self, kind: ObjectKind, name: &str) -> Result<Option<Object>, MetaError> {
        match self.db.get(keys::object_key(kind, name))? {
            Some(v) => Ok(Some(decode_object(&v)?)),
            None => Ok(None),
        }
    }

    /// Every object of a kind whose name starts with `name_prefix`, sorted by
    /// name, and the revision they were read at.
    pub fn list(
        &self,
        kind: ObjectKind,
        name_prefix: &str,
    ) -> Result<(Vec<Object>, u64), MetaError> {
        let view = self.db.snapshot();
        let mut prefix = keys::object_prefix(kind);
        prefix.extend_from_slice(name_prefix.as_bytes());
        let mut items = Vec::new();
        scan_prefix!(view, &prefix, |_key, value| {
            items.push(decode_object(&value)?);
        });
        let revision = match view.get(keys::SM_REVISION)? {
            Some(v) => keys::decode_u64(&v).ok_or_else(|| MetaError::Corrupt("revision".into()))?,
            None => 0,
        };
        Ok((items, revision))
    }

    /// The cluster revision.
    pub fn revision(&self) -> Result<u64, MetaError> {
        read_u64(&self.db, keys::SM_REVISION)
    }

    /// The applied index and its term.
    pub fn applied(&self) -> Result<(u64, u64), MetaError> {
        match self.db.get(keys::SM_APPLIED)? {
            Some(v) => keys::decode_pair(&v).ok_or_else(|| MetaError::Corrupt("applied".into())),
            None => Ok((0, 0)),
        }
    }

    /// The Raft configuration as of the applied index.
    pub fn conf_state(&self) -> Result<raft::eraftpb::ConfState, MetaError> {
        crate::storage::read_conf_state(&self.db)
    }

    /// Addresses of replicas added by membership changes, by Raft id.
    pub fn members(&self) -> Result<BTreeMap<u64, String>, MetaError> {
        let mut members = BTreeMap::new();
        scan_prefix!(self.db, keys::SM_MEMBER_PREFIX, |key, value| {
            let id = keys::trailing_u64(&key, keys::SM_MEMBER_PREFIX.len())
                .ok_or_else(|| MetaError::Corrupt("member key".into()))?;
            let addr = String::from_utf8(value.to_vec())
                .map_err(|_| MetaError::Corrupt("member address".into()))?;
            members.insert(id, addr);
        });
        Ok(members)
    }

    /// The events with a revision above `after`, oldest first, stopping at the
    /// first revision boundary after `max` events. Fails
    /// with FailedPrecondition when some of them were pruned from the history.
    pub fn events_after(&self, after: u64, max: usize) -> Result<Vec<WatchEvent>, MetaError> {
        let view = self.db.snapshot();
        let pruned = match view.get(keys::SM_EVENTS_PRUNED)? {
            Some(v) => keys::decode_u64(&v).ok_or_else(|| MetaError::Corrupt("pruned".into()))?,
            None => 0,
        };
        if after < pruned {
            return Err(MetaError::FailedPrecondition(format!(
                "revision {after} is compacted (the watch history starts after {pruned}): \
                 list again and watch from the list's revision"
            )));
        }
        let start = keys::event_key(after.saturating_add(1), 0);
        let mut events = Vec::new();
        for item in view.iterator(IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(keys::SM_EVENT_PREFIX) {
                break;
            }
            let event = WatchEvent::decode(&*value)?;
            // Stop only between revisions, so a caller resuming after the
            // last revision it got misses nothing.
            if events.len() >= max
                && events.last().map(|e: &WatchEvent| e.revision) != Some(event.revision)
            {
                break;
            }
            events.push(event);
        }
        Ok(events)
    }
}
