//! A command between parsing and completion: what the transport must move
//! and what the core will do.

use bytes::Bytes;
use raid::BlockError;

use crate::wire::fabrics::{ConnectCommand, PropertyCommand};
use crate::wire::log_page::GetLogPage;
use crate::wire::{Command, Completion, Status};

use super::namespace::Namespace;
use std::sync::Arc;

/// Data the transport moves for a command before or after execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// No data.
    None,
    /// Fetch this many bytes from the host before execution.
    ToController(u32),
    /// Send this many bytes to the host after execution.
    ToHost(u32),
}

impl Transfer {
    /// Bytes moved in either direction.
    pub fn len(self) -> u32 {
        match self {
            Transfer::None => 0,
            Transfer::ToController(n) | Transfer::ToHost(n) => n,
        }
    }

    /// Whether nothing is moved.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// A parsed, validated command ready to execute.
pub struct Request {
    /// The command as received.
    pub cmd: Command,
    /// Data movement the transport performs.
    pub transfer: Transfer,
    pub(crate) op: Op,
    pub(crate) sq_head: u16,
    pub(crate) buffer: Option<bytes::BytesMut>,
}

impl Request {
    /// Give the buffer a read's data is to land in (for example one from a
    /// transport's pre-registered pool). It must be exactly
    /// `transfer.len()` bytes; otherwise it is ignored and the core allocates.
    pub fn provide_buffer(&mut self, buf: bytes::BytesMut) {
        self.buffer = Some(buf);
    }

    /// Whether the request reads into a buffer, one that a transport may
    /// [provide](Self::provide_buffer): not when the namespace hands out
    /// its data shared ([`raid::BlockDevice::read_shared`]).
    pub fn needs_read_buffer(&self) -> bool {
        matches!(self.op, Op::Read { shared: None, .. })
    }
}

/// What a request does.
pub(crate) enum Op {
    Connect(ConnectCommand),
    PropertyGet(PropertyCommand),
    PropertySet(PropertyCommand),
    Disconnect,
    Identify {
        cns: u8,
        cntid: u16,
        csi: u8,
    },
    GetLogPage(GetLogPage),
    SetFeatures {
        fid: u8,
        save: bool,
    },
    GetFeatures {
        fid: u8,
        select: u8,
    },
    AsyncEventRequest,
    KeepAlive,
    Abort,
    Read {
        ns: Arc<Namespace>,
        lba: u64,
        /// The data, when the device hands it out shared
        /// ([`raid::BlockDevice::read_shared`]): nothing left to read.
        shared: Option<bytes::Bytes>,
    },
    Write {
        ns: Arc<Namespace>,
        lba: u64,
        fua: bool,
    },
    Flush {
        ns: Option<Arc<Namespace>>,
    },
    WriteZeroes {
        ns: Arc<Namespace>,
        lba: u64,
        blocks: u64,
    },
    DatasetManagement {
        ns: Arc<Namespace>,
        ranges: u32,
        deallocate: bool,
    },
}

/// The outcome of a request.
#[derive(Debug)]
pub struct Response {
    /// Completion queue entry.
    pub cqe: Completion,
    /// Data for the host (controller-to-host commands that succeeded).
    pub data: Option<Bytes>,
    /// The queue is to be closed once this response is sent (Disconnect).
    pub close_queue: bool,
}

impl Response {
    /// A response with a completion only.
    pub fn completion(cqe: Completion) -> Response {
        Response {
            cqe,
            data: None,
            close_queue: false,
        }
    }
}

/// The NVMe status for a failed block operation. Errors that another path
/// might not have (the device is offline here) are path errors, so that a
/// multipath host retries elsewhere.
pub fn status_of(e: &BlockError, is_write: bool) -> Status {
    match e {
        BlockError::OutOfRange { .. } => Status::LBA_OUT_OF_RANGE,
        BlockError::BadLength { .. } | BlockError::TooLarge { .. } => Status::INVALID_FIELD,
        BlockError::NoSpace(_) => Status::CAPACITY_EXCEEDED,
        BlockError::Offline(_) => Status::INTERNAL_PATH_ERROR,
        BlockError::Unsupported(_) => Status::INVALID_OPCODE,
        BlockError::Io(_) | BlockError::Medium(_) if is_write => Status::WRITE_FAULT,
        BlockError::Io(_) | BlockError::Medium(_) => Status::UNRECOVERED_READ_ERROR,
        BlockError::Remote(_) => Status::INTERNAL,
    }
}
