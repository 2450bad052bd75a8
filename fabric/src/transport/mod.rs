//! Transports: how commands, responses and data travel between a host and a
//! target. The target core and the host library see only the two traits
//! here, so both run unchanged over TCP and RDMA (the Linux kernel target's
//! ops table, as Rust traits).

mod pending;
pub mod rdma;
mod read_buffers;
mod reschedule;
pub mod tcp;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::target::{Port, PortAddress, Target, TransportCaps, TransportKind};
use crate::wire::tcp::Digests;
use crate::wire::{Command, Completion, Status};

/// Errors of transports and of the host library.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket or device error.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        error: std::io::Error,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(String),
    /// A command did not complete in time.
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    /// A command completed with an error status.
    #[error("command failed: {0}")]
    Status(Status),
    /// This transport cannot be used here.
    #[error("{0}")]
    Unavailable(String),
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> TransportError {
        TransportError::Io {
            context: context.into(),
            error,
        }
    }
}

/// A running listener; dropping the handle does not stop it, [`ListenerHandle::stop`] does.
pub struct ListenerHandle {
    /// The address actually bound.
    pub local: PortAddress,
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    /// Stop accepting connections (existing ones stay until they end).
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

/// The target side of a transport.
#[async_trait]
pub trait TargetTransport: Send + Sync + 'static {
    /// Which transport.
    fn kind(&self) -> TransportKind;

    /// What the transport offers (in-capsule data size, keyed SGLs).
    fn caps(&self) -> TransportCaps;

    /// Bind `port`'s address and serve connections into `target` until the
    /// target shuts down or the handle is stopped. Returns once listening.
    async fn listen(
        &self,
        target: Arc<Target>,
        port: Arc<Port>,
    ) -> Result<ListenerHandle, TransportError>;
}

/// Data moved by a host command.
#[derive(Clone, Debug)]
pub enum HostData {
    /// None.
    None,
    /// Send these bytes to the controller.
    Out(Bytes),
    /// Receive this many bytes from the controller.
    In(u32),
}

impl HostData {
    /// Bytes moved.
    pub fn len(&self) -> u32 {
        match self {
            HostData::None => 0,
            HostData::Out(b) => b.len() as u32,
            HostData::In(n) => *n,
        }
    }

    /// Whether nothing moves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A completed host command.
#[derive(Clone, Debug)]
pub struct CommandResult {
    /// Its completion.
    pub cqe: Completion,
    /// Data received (for [`HostData::In`] commands that succeeded).
    pub data: Option<Bytes>,
}

/// Parameters of one host queue connection.
#[derive(Clone, Debug)]
pub struct QueueParams {
    /// Queue ID (0: admin).
    pub qid: u16,
    /// Queue entries.
    pub queue_size: u16,
    /// In-capsule data the controller accepts on this queue.
    pub inline_data_size: u32,
    /// Digests to ask for (TCP).
    pub digests: Digests,
    /// Per-command timeout.
    pub timeout: Duration,
    /// TCP: how long the queue, while it waits for responses, keeps
    /// reading without sleeping each time it finds nothing (zero: it
    /// sleeps at once). RDMA polls per device instead (`RdmaConfig`).
    pub poll: Duration,
}

/// One queue of the host side.
#[async_trait]
pub trait HostQueue: Send + Sync {
    /// Submit `cmd` (the queue assigns its CID and data pointer) and wait for
    /// its completion.
    async fn submit(&self, cmd: Command, data: HostData) -> Result<CommandResult, TransportError>;

    /// Close the connection; pending and later commands fail.
    fn close(&self);

    /// Whether the connection is closed.
    fn is_closed(&self) -> bool;

    /// Largest data transfer of one command this queue can carry.
    fn max_transfer(&self) -> u32 {
        u32::MAX
    }
}

/// The host side of a transport.
#[async_trait]
pub trait HostTransport: Send + Sync {
    /// Connect one queue to `address` (the NVMe Connect command is sent by
    /// the caller over the returned queue).
    async fn connect(
        &self,
        address: &PortAddress,
        params: &QueueParams,
    ) -> Result<Arc<dyn HostQueue>, TransportError>;
}

/// The target side of `kind`.
pub fn target_transport(kind: TransportKind) -> Result<Arc<dyn TargetTransport>, TransportError> {
    match kind {
        TransportKind::Tcp => Ok(Arc::new(tcp::TcpTransport::default())),
        TransportKind::Rdma => Ok(rdma::RdmaTransport::shared()),
    }
}

/// The host side of `kind`.
pub fn host_transport(kind: TransportKind) -> Result<Arc<dyn HostTransport>, TransportError> {
    match kind {
        TransportKind::Tcp => Ok(Arc::new(tcp::TcpTransport::default())),
        TransportKind::Rdma => Ok(rdma::RdmaTransport::shared()),
    }
}
