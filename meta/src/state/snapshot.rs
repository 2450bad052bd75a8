//! Raft snapshots of the state machine: every `sm/` key, read from one
//! rocksdb snapshot so that the objects, the applied index and the
//! configuration agree.

use prost::Message as _;
use raft::eraftpb::Snapshot;
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::error::MetaError;
use crate::keys;
use crate::peer::{KeyValue, SnapshotData};
use crate::storage::decode;

/// Builds a snapshot of the state machine as of its applied index.
pub fn build(db: &DB) -> Result<Snapshot, MetaError> {
    let view = db.snapshot();
    let mut data = SnapshotData::default();
    for item in view.iterator(IteratorMode::From(keys::SM_PREFIX, Direction::Forward)) {
        let (key, value) = item?;
        if !key.starts_with(keys::SM_PREFIX) {
            break;
        }
        data.entries.push(KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
        });
    }
    let (index, term) = match view.get(keys::SM_APPLIED)? {
        Some(v) => keys::decode_pair(&v).ok_or_else(|| MetaError::Corrupt("applied".into()))?,
        None => (0, 0),
    };
    let conf = match view.get(keys::SM_CONF_STATE)? {
        Some(v) => decode(&v)?,
        None => Default::default(),
    };
    let mut snap = Snapshot::default();
    snap.set_data(data.encode_to_vec().into());
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(conf);
    Ok(snap)
}

/// Adds to `batch` the writes that replace the state machine with the
/// snapshot's content. Rejects keys outside the state machine.
pub fn restore_into(batch: &mut WriteBatch, data: &[u8]) -> Result<(), MetaError> {
    let data = SnapshotData::decode(data)?;
    batch.delete_range(keys::SM_PREFIX.to_vec(), keys::prefix_end(keys::SM_PREFIX));
    for kv in data.entries {
        if !kv.key.starts_with(keys::SM_PREFIX) {
            return Err(MetaError::Corrupt(
                "snapshot holds a key outside the state machine".into(),
            ));
        }
        batch.put(kv.key, kv.value);
    }
    Ok(())
}
