//! The Raft log on rocksdb: raft-rs's [`Storage`] over the `raft/` keys, plus
//! the writes the driver makes (append, hard state, compaction, snapshot
//! install). Snapshots are built from the state machine's `sm/` keys.
//!
//! Decisions:
//! * Log appends and hard-state changes go in one write batch with `sync`:
//!   Raft's safety depends on them surviving a crash before any message that
//!   promises them leaves the node.
//! * A freshly bootstrapped group starts from a synthetic snapshot at
//!   [`BOOTSTRAP_INDEX`] that holds the initial configuration, so the log of
//!   every group starts above index 1. A replica added later therefore always
//!   receives a snapshot (which carries the configuration) instead of a log
//!   replay that would miss the bootstrap configuration, which is not a log
//!   entry.
//! * Entries are decoded with rust-protobuf only from our own disk; a decode
//!   failure is reported as a storage error, never a panic.

use std::collections::BTreeMap;
use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::error::MetaError;
use crate::keys;
use crate::state::snapshot;

/// Index (and term) of the synthetic snapshot a bootstrapped group starts from.
pub const BOOTSTRAP_INDEX: u64 = 5;

/// Free space a replica keeps on its data directory's file system: an
/// append that finds less stops the replica (the driver ends with this
/// error) before rocksdb fails a write-ahead-log append, after which the
/// librocksdb 7.8 that Debian ships (built with assertions) aborts the
/// process on its next write.
pub const RESERVED_BYTES: u64 = 16 << 20;

/// An error if `free` bytes on the file system of `dir` are below
/// [`RESERVED_BYTES`].
fn check_reserve(dir: &std::path::Path, free: u64) -> Result<(), MetaError> {
    if free >= RESERVED_BYTES {
        return Ok(());
    }
    Err(MetaError::Storage(format!(
        "{}: {} KiB free, less than the {} MiB a replica keeps in reserve; \
         this replica stops (free space, then start it again)",
        dir.display(),
        free >> 10,
        RESERVED_BYTES >> 20
    )))
}

/// raft-rs storage over rocksdb.
pub struct RaftStorage {
    db: Arc<DB>,
}

fn other(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl RaftStorage {
    /// Wraps the replica's database.
    pub fn new(db: Arc<DB>) -> Self {
        RaftStorage { db }
    }

    /// Tie the database to replica `id`, or check that it is its own: a
    /// data directory started under another replica's id would speak in
    /// Raft for a replica whose votes and log it does not hold. A
    /// database from before this check is claimed by the id it runs with.
    pub fn claim_replica_id(&self, id: u64) -> Result<(), MetaError> {
        match self.db.get(keys::RAFT_REPLICA_ID)? {
            Some(v) => {
                let bytes: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| MetaError::Corrupt(format!("replica id of {} bytes", v.len())))?;
                let owner = u64::from_be_bytes(bytes);
                if owner != id {
                    return Err(MetaError::FailedPrecondition(format!(
                        "this data directory belongs to replica {owner}, not {id} \
                         (start it with --id {owner}, or give replica {id} its own --data-dir)"
                    )));
                }
                Ok(())
            }
            None => Ok(self
                .db
                .put_opt(keys::RAFT_REPLICA_ID, id.to_be_bytes(), &synced())?),
        }
    }

    /// Whether this replica has any Raft state yet.
    pub fn is_initialized(&self) -> Result<bool, MetaError> {
        Ok(self.db.get(keys::RAFT_HARD_STATE)?.is_some()
            || self.db.get(keys::SM_CONF_STATE)?.is_some())
    }

    /// Writes the initial state of a new group whose voters are `peers`
    /// (Raft id to address).
    pub fn bootstrap(&self, peers: &BTreeMap<u64, String>) -> Result<(), MetaError> {
        let mut conf = ConfState::default();
        conf.set_voters(peers.keys().copied().collect());
        let mut hs = HardState::default();
        hs.set_term(BOOTSTRAP_INDEX);
        hs.set_commit(BOOTSTRAP_INDEX);
        let mut batch = WriteBatch::default();
        batch.put(keys::RAFT_HARD_STATE, encode(&hs)?);
        batch.put(
            keys::RAFT_TRUNCATED,
            keys::encode_pair(BOOTSTRAP_INDEX, BOOTSTRAP_INDEX),
        );
        batch.put(keys::SM_CONF_STATE, encode(&conf)?);
        // The members' addresses, as a membership change records them: a
        // restart needs no --peers.
        for (id, address) in peers {
            batch.put(keys::member_key(*id), address.as_bytes());
        }
        batch.put(
            keys::SM_APPLIED,
            keys::encode_pair(BOOTSTRAP_INDEX, BOOTSTRAP_INDEX),
        );
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Appends entries (replacing any conflicting suffix) and stores the hard
    /// state, durably, in one write.
    pub fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        if let Some(last) = entries.last() {
            let old_last = self.last_index_inner()?;
            for e in entries {
                batch.put(keys::log_key(e.index), encode(e)?);
            }
            if old_last > last.index {
                batch.delete_range(keys::log_key(last.index + 1), keys::log_key(old_last + 1));
            }
        }
        if let Some(hs) = hs {
            batch.put(keys::RAFT_HARD_STATE, encode(hs)?);
        }
        if !batch.is_empty() {
            if let Ok(fs) = rustix::fs::statvfs(self.db.path()) {
                check_reserve(self.db.path(), fs.f_bavail.saturating_mul(fs.f_frsize))?;
            }
            self.db.write_opt(batch, &synced())?;
        }
        Ok(())
    }

    /// Records a new commit index.
    pub fn set_commit(&self, commit: u64) -> Result<(), MetaError> {
        let mut hs = self.hard_state()?;
        hs.set_commit(commit);
        self.append(&[], Some(&hs))
    }

    /// Removes the entries up to and including `index` (which must be applied).
    pub fn compact(&self, index: u64) -> Result<(), MetaError> {
        let (truncated, _) = self.truncated()?;
        if index <= truncated {
            return Ok(());
        }
        let term = self.entry_term(index)?.ok_or_else(|| {
            MetaError::Storage(format!("cannot compact to {index}: entry missing"))
        })?;
        let mut batch = WriteBatch::default();
        batch.delete_range(keys::log_key(truncated + 1), keys::log_key(index + 1));
        batch.put(keys::RAFT_TRUNCATED, keys::encode_pair(index, term));
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Installs a snapshot received from the leader: replaces the state
    /// machine and empties the log.
    pub fn install_snapshot(&self, snap: &Snapshot) -> Result<(), MetaError> {
        let meta = snap.get_metadata();
        let mut batch = WriteBatch::default();
        snapshot::restore_into(&mut batch, snap.get_data())?;
        batch.put(keys::SM_CONF_STATE, encode(meta.get_conf_state())?);
        batch.put(keys::SM_APPLIED, keys::encode_pair(meta.index, meta.term));
        batch.delete_range(keys::log_key(0), keys::log_key(u64::MAX));
        batch.put(
            keys::RAFT_TRUNCATED,
            keys::encode_pair(meta.index, meta.term),
        );
        let mut hs = self.hard_state()?;
        hs.set_term(hs.term.max(meta.term));
        hs.set_commit(hs.commit.max(meta.index));
        batch.put(keys::RAFT_HARD_STATE, encode(&hs)?);
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// The stored hard state (default when none).
    pub fn hard_state(&self) -> Result<HardState, MetaError> {
        match self.db.get(keys::RAFT_HARD_STATE)? {
            Some(v) => decode(&v),
            None => Ok(HardState::default()),
        }
    }

    /// Index and term of the last removed entry ((0, 0) when none).
    pub fn truncated(&self) -> Result<(u64, u64), MetaError> {
        match self.db.get(keys::RAFT_TRUNCATED)? {
            Some(v) => {
                keys::decode_pair(&v).ok_or_else(|| MetaError::Corrupt("truncation point".into()))
            }
            None => Ok((0, 0)),
        }
    }

    fn last_index_inner(&self) -> Result<u64, MetaError> {
        let end = keys::prefix_end(keys::RAFT_LOG_PREFIX);
        let mut iter = self
            .db
            .iterator(IteratorMode::From(&end, Direction::Reverse));
        if let Some(item) = iter.next() {
            let (key, _) = item?;
            if key.starts_with(keys::RAFT_LOG_PREFIX) {
                return keys::trailing_u64(&key, keys::RAFT_LOG_PREFIX.len())
                    .ok_or_else(|| MetaError::Corrupt("log key".into()));
            }
        }
        Ok(self.truncated()?.0)
    }

    fn entry_term(&self, index: u64) -> Result<Option<u64>, MetaError> {
        let (truncated, term) = self.truncated()?;
        if index == truncated {
            return Ok(Some(term));
        }
        match self.db.get(keys::log_key(index))? {
            Some(v) => Ok(Some(decode::<Entry>(&v)?.term)),
            None => Ok(None),
        }
    }
}

/// Encodes a rust-protobuf message.
pub fn encode<M: PbMessage>(m: &M) -> Result<Vec<u8>, MetaError> {
    m.write_to_bytes()
        .map_err(|e| MetaError::Corrupt(e.to_string()))
}

/// Decodes a rust-protobuf message.
pub fn decode<M: PbMessage>(bytes: &[u8]) -> Result<M, MetaError> {
    M::parse_from_bytes(bytes).map_err(|e| MetaError::Corrupt(e.to_string()))
}

/// The Raft configuration stored in the state machine (empty when none).
pub fn read_conf_state(db: &DB) -> Result<ConfState, MetaError> {
    match db.get(keys::SM_CONF_STATE)? {
        Some(v) => decode(&v),
        None => Ok(ConfState::default()),
    }
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hard_state = self.hard_state().map_err(other)?;
        let conf_state = read_conf_state(&self.db).map_err(other)?;
        Ok(RaftState::new(hard_state, conf_state))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (truncated, _) = self.truncated().map_err(other)?;
        if low <= truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let mut entries = Vec::with_capacity(high.saturating_sub(low) as usize);
        let start = keys::log_key(low);
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item.map_err(other)?;
            let Some(index) = keys::trailing_u64(&key, keys::RAFT_LOG_PREFIX.len())
                .filter(|_| key.starts_with(keys::RAFT_LOG_PREFIX))
            else {
                break;
            };
            if index >= high {
                break;
            }
            if index != low + entries.len() as u64 {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            entries.push(decode::<Entry>(&value).map_err(other)?);
        }
        if (entries.len() as u64) < high.saturating_sub(low) {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (truncated, _) = self.truncated().map_err(other)?;
        if idx < truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entry_term(idx).map_err(other)? {
            Some(term) => Ok(term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated().map_err(other)?.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.last_index_inner().map_err(other)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = snapshot::build(&self.db).map_err(other)?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, RaftStorage) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = DB::open_default(dir.path()).expect("open rocksdb");
        (dir, RaftStorage::new(Arc::new(db)))
    }

    fn peers(ids: &[u64]) -> BTreeMap<u64, String> {
        ids.iter()
            .map(|&id| (id, format!("127.0.0.1:{}", 7400 + id)))
            .collect()
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn bootstrap_starts_above_the_synthetic_snapshot() {
        let (_dir, s) = open();
        s.claim_replica_id(2).expect("claimed");
        s.claim_replica_id(2).expect("its own");
        let err = s.claim_replica_id(1).expect_err("another replica's");
        assert!(
            err.to_string().contains("belongs to replica 2, not 1"),
            "{err}"
        );
        assert!(!s.is_initialized().expect("read"));
        s.bootstrap(&peers(&[1, 2, 3])).expect("bootstrap");
        assert!(s.is_initialized().expect("read"));
        let state = s.initial_state().expect("state");
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.first_index().expect("first"), BOOTSTRAP_INDEX + 1);
        assert_eq!(s.last_index().expect("last"), BOOTSTRAP_INDEX);
        assert_eq!(s.term(BOOTSTRAP_INDEX).expect("term"), BOOTSTRAP_INDEX);
    }

    #[test]
    fn appends_stop_short_of_a_full_file_system() {
        let dir = std::path::Path::new("/var/lib/fabric-meta");
        assert!(check_reserve(dir, RESERVED_BYTES).is_ok());
        match check_reserve(dir, RESERVED_BYTES - 1) {
            Err(MetaError::Storage(m)) => {
                assert!(m.starts_with("/var/lib/fabric-meta: 16383 KiB free"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn append_replaces_a_conflicting_suffix_and_compacts() {
        let (_dir, s) = open();
        s.bootstrap(&peers(&[1])).expect("bootstrap");
        let ents: Vec<Entry> = (6..=10).map(|i| entry(i, 6)).collect();
        s.append(&ents, None).expect("append");
        assert_eq!(s.last_index().expect("last"), 10);
        // A new leader overwrites from index 8 with a shorter suffix.
        s.append(&[entry(8, 7)], None).expect("append");
        assert_eq!(s.last_index().expect("last"), 8);
        assert_eq!(s.term(8).expect("term"), 7);
        let got = s
            .entries(6, 9, None, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(
            got.iter().map(|e| e.term).collect::<Vec<_>>(),
            vec![6, 6, 7]
        );
        s.compact(7).expect("compact");
        assert_eq!(s.first_index().expect("first"), 8);
        assert_eq!(s.term(7).expect("term of truncation point"), 6);
        assert!(matches!(
            s.entries(6, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.term(20),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn corrupt_entries_are_errors_not_panics() {
        let (_dir, s) = open();
        s.bootstrap(&peers(&[1])).expect("bootstrap");
        s.db.put(keys::log_key(6), b"\xff\xff\xff garbage")
            .expect("put");
        assert!(s
            .entries(6, 7, None, GetEntriesContext::empty(false))
            .is_err());
    }
}
