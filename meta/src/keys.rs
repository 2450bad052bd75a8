//! The layout of keys in the replica's rocksdb.
//!
//! One database holds both halves, told apart by prefix:
//! * `raft/`: the Raft log (`raft/log/<index, 8 bytes big-endian>`), the hard
//!   state and the truncation point (index and term of the last compacted
//!   entry). Written with sync, before messages that depend on them are sent.
//! * `sm/`: the state machine: objects (`sm/o/<kind>/<name>`), the cluster
//!   revision, the applied index and term, the Raft configuration, replica
//!   addresses, the watch history (`sm/ev/<revision><sequence>`) and the
//!   results of recent commands by request id (`sm/req/`, for exactly-once
//!   re-proposals). A
//!   snapshot is every `sm/` key, so restoring one replaces exactly this half.
//!
//! Big-endian numbers keep the byte order of keys equal to numeric order.

use crate::proto::ObjectKind;

/// Prefix of every state-machine key.
pub const SM_PREFIX: &[u8] = b"sm/";
/// Cluster revision (u64).
pub const SM_REVISION: &[u8] = b"sm/revision";
/// Applied index and its term (two u64).
pub const SM_APPLIED: &[u8] = b"sm/applied";
/// The Raft configuration as of the applied index (eraftpb ConfState).
pub const SM_CONF_STATE: &[u8] = b"sm/conf_state";
/// Highest revision whose events were pruned from the watch history (u64).
pub const SM_EVENTS_PRUNED: &[u8] = b"sm/events_pruned";
/// Prefix of replica addresses, by Raft id.
pub const SM_MEMBER_PREFIX: &[u8] = b"sm/member/";
/// Prefix of the watch history.
pub const SM_EVENT_PREFIX: &[u8] = b"sm/ev/";
/// Prefix of remembered command results, by request id.
pub const SM_REQUEST_PREFIX: &[u8] = b"sm/req/";
/// Prefix of the index of remembered results, by applied index then id.
pub const SM_REQUEST_INDEX_PREFIX: &[u8] = b"sm/reqidx/";
/// The Raft id of the replica the database belongs to (u64).
pub const RAFT_REPLICA_ID: &[u8] = b"raft/replica_id";
/// Raft hard state (eraftpb HardState).
pub const RAFT_HARD_STATE: &[u8] = b"raft/hard_state";
/// Index and term of the last entry removed from the log (two u64).
pub const RAFT_TRUNCATED: &[u8] = b"raft/truncated";
/// Prefix of log entries.
pub const RAFT_LOG_PREFIX: &[u8] = b"raft/log/";

/// The path segment of a kind in object keys.
fn kind_segment(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Cluster => "cluster",
        ObjectKind::DiskNode => "disk_node",
        ObjectKind::ControllerNode => "controller_node",
        ObjectKind::Host => "host",
        ObjectKind::Volume => "volume",
        ObjectKind::Snapshot => "snapshot",
        ObjectKind::Operation => "operation",
        ObjectKind::Unspecified => "unspecified",
    }
}

/// Prefix of every object of a kind.
pub fn object_prefix(kind: ObjectKind) -> Vec<u8> {
    format!("sm/o/{}/", kind_segment(kind)).into_bytes()
}

/// Key of one object.
pub fn object_key(kind: ObjectKind, name: &str) -> Vec<u8> {
    let mut key = object_prefix(kind);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Key of a replica's address.
pub fn member_key(id: u64) -> Vec<u8> {
    [SM_MEMBER_PREFIX, &id.to_be_bytes()].concat()
}

/// Key of one watch event: revision, then its position within the revision.
pub fn event_key(revision: u64, seq: u32) -> Vec<u8> {
    [SM_EVENT_PREFIX, &revision.to_be_bytes(), &seq.to_be_bytes()].concat()
}

/// Key of a remembered command result.
pub fn request_key(id: u64) -> Vec<u8> {
    [SM_REQUEST_PREFIX, &id.to_be_bytes()].concat()
}

/// Key that orders remembered results by the index that applied them.
pub fn request_index_key(index: u64, id: u64) -> Vec<u8> {
    [
        SM_REQUEST_INDEX_PREFIX,
        &index.to_be_bytes(),
        &id.to_be_bytes(),
    ]
    .concat()
}

/// Key of one log entry.
pub fn log_key(index: u64) -> Vec<u8> {
    [RAFT_LOG_PREFIX, &index.to_be_bytes()].concat()
}

/// The u64 at the end of a key (log index, member id), if the key is long enough.
pub fn trailing_u64(key: &[u8], prefix_len: usize) -> Option<u64> {
    let bytes: [u8; 8] = key.get(prefix_len..prefix_len + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Encodes a pair of u64.
pub fn encode_pair(a: u64, b: u64) -> Vec<u8> {
    [a.to_be_bytes(), b.to_be_bytes()].concat()
}

/// Decodes a pair of u64 (None when the value has another length).
pub fn decode_pair(value: &[u8]) -> Option<(u64, u64)> {
    if value.len() != 16 {
        return None;
    }
    Some((trailing_u64(value, 0)?, trailing_u64(value, 8)?))
}

/// Decodes a u64 (None when the value has another length).
pub fn decode_u64(value: &[u8]) -> Option<u64> {
    if value.len() != 8 {
        return None;
    }
    trailing_u64(value, 0)
}

/// The smallest key greater than every key with this prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_numerically() {
        assert!(log_key(255) < log_key(256));
        assert!(log_key(1) < log_key(u64::MAX));
        assert_eq!(
            trailing_u64(&log_key(4242), RAFT_LOG_PREFIX.len()),
            Some(4242)
        );
        assert_eq!(trailing_u64(b"raft/log/12", RAFT_LOG_PREFIX.len()), None);
    }

    #[test]
    fn pairs_and_prefix_ends() {
        assert_eq!(decode_pair(&encode_pair(3, 9)), Some((3, 9)));
        assert_eq!(decode_pair(b"short"), None);
        assert_eq!(prefix_end(b"sm/"), b"sm0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        let prefix = object_prefix(ObjectKind::Volume);
        assert!(object_key(ObjectKind::Volume, "zzz") < prefix_end(&prefix));
    }
}
