//! Errors of the meta group and their gRPC status codes.
//!
//! Two kinds of failure are kept apart because clients act on them
//! differently: [`MetaError::Unavailable`] means the request was certainly not
//! applied (no leader, proposal dropped), so a retry is safe, and the status
//! carries [`RETRY_SAFE_HEADER`]; [`MetaError::OutcomeUnknown`] means a write
//! was proposed but not seen applied in time, so it may still take effect.

use tonic::{Code, Status};

/// Metadata key set on statuses whose request was certainly not applied.
pub const RETRY_SAFE_HEADER: &str = "fabric-retry-safe";

/// What can go wrong in the meta group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An object of that name (or key) exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The cluster's state does not allow the request; the text says why.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A conditional update lost a race; read again and retry.
    #[error("{0}")]
    Aborted(String),
    /// Not applied, and safe to retry (no leader, proposal dropped, stopping).
    #[error("{0}")]
    Unavailable(String),
    /// Proposed but not seen applied in time: it may still take effect.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The local store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// Stored or received data does not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for MetaError {
    fn from(e: rocksdb::Error) -> Self {
        MetaError::Storage(e.into_string())
    }
}

impl From<prost::DecodeError> for MetaError {
    fn from(e: prost::DecodeError) -> Self {
        MetaError::Corrupt(e.to_string())
    }
}

impl From<MetaError> for Status {
    fn from(e: MetaError) -> Status {
        let msg = e.to_string();
        match e {
            MetaError::NotFound(_) => Status::not_found(msg),
            MetaError::AlreadyExists(_) => Status::already_exists(msg),
            MetaError::FailedPrecondition(_) => Status::failed_precondition(msg),
            MetaError::InvalidArgument(_) => Status::invalid_argument(msg),
            MetaError::Aborted(_) => Status::aborted(msg),
            MetaError::Unavailable(_) => retry_safe(Status::unavailable(msg)),
            MetaError::OutcomeUnknown(_) => Status::deadline_exceeded(msg),
            MetaError::Storage(_) | MetaError::Corrupt(_) => Status::internal(msg),
        }
    }
}

/// Marks a status as certainly not applied.
pub fn retry_safe(mut status: Status) -> Status {
    status.metadata_mut().insert(
        RETRY_SAFE_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// Whether a status says its request was certainly not applied.
pub fn is_retry_safe(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.metadata().get(RETRY_SAFE_HEADER).is_some()
}
