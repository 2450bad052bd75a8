//! The commands a host queue has outstanding, by command ID, the queue's
//! free slots, and whether the queue is closed: shared by the transports'
//! host sides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use slab::Slab;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{CommandResult, TransportError};

/// Where a command's result goes.
pub(crate) type Done = oneshot::Sender<Result<CommandResult, TransportError>>;

/// One outstanding command: its result channel and transport state.
pub(crate) struct Entry<P> {
    pub done: Done,
    pub state: P,
    /// Its slot of the queue, free again when the entry is dropped: when
    /// the response has been handled, not when the submitter stops waiting.
    _slot: OwnedSemaphorePermit,
}

/// Outstanding commands; their slab keys are their command IDs.
///
/// When the queue closes, the transport state of the commands that were
/// still outstanding is kept until the table itself is dropped: an RDMA
/// peer may write into their buffers until the connection is torn down, so
/// the buffers must not return to their pool before that.
pub(crate) struct PendingCommands<P> {
    table: Mutex<Slab<Entry<P>>>,
    retired: Mutex<Vec<P>>,
    /// Commands the queue may still have outstanding.
    slots: Arc<Semaphore>,
    closed: AtomicBool,
    token: CancellationToken,
}

impl<P> PendingCommands<P> {
    /// A queue that takes at most `slots` commands at a time.
    pub fn new(slots: usize) -> PendingCommands<P> {
        PendingCommands {
            table: Mutex::new(Slab::with_capacity(slots)),
            retired: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            closed: AtomicBool::new(false),
            token: CancellationToken::new(),
        }
    }

    /// Wait for a free slot; fails once the queue is closed.
    pub async fn reserve(&self) -> Result<OwnedSemaphorePermit, TransportError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())
    }

    /// The table, locked.
    pub fn lock(&self) -> MutexGuard<'_, Slab<Entry<P>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a command in its `slot`; returns its ID and where its
    /// result arrives.
    pub fn insert(
        &self,
        state: P,
        slot: OwnedSemaphorePermit,
    ) -> Result<
        (
            u16,
            oneshot::Receiver<Result<CommandResult, TransportError>>,
        ),
        TransportError,
    > {
        let (done, rx) = oneshot::channel();
        let mut table = self.lock();
        if self.is_closed() {
            return Err(closed());
        }
        let cid = table.insert(Entry {
            done,
            state,
            _slot: slot,
        });
        u16::try_from(cid).map(|c| (c, rx)).map_err(|_| {
            table.remove(cid);
            TransportError::Protocol("more than 65536 commands outstanding".into())
        })
    }

    /// Whether no command is outstanding.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Take a command out (completed or abandoned).
    pub fn remove(&self, cid: u16) -> Option<Entry<P>> {
        self.lock().try_remove(cid as usize)
    }

    /// Close the queue: fail every outstanding command with `why`.
    pub fn fail_all(&self, why: &str) {
        self.closed.store(true, Ordering::Release);
        self.slots.close();
        self.token.cancel();
        let drained: Vec<Entry<P>> = self.lock().drain().collect();
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for e in drained {
            let _ = e.done.send(Err(TransportError::Closed(why.to_string())));
            retired.push(e.state);
        }
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Cancelled when the queue closes.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// The error of a command on a closed queue.
pub(crate) fn closed() -> TransportError {
    TransportError::Closed("queue closed".into())
}

/// Wait for a command's result, closing the queue if it times out (its fate
/// is unknown, so the queue can no longer be trusted).
pub(crate) async fn wait<P>(
    pending: &PendingCommands<P>,
    rx: oneshot::Receiver<Result<CommandResult, TransportError>>,
    timeout: std::time::Duration,
) -> Result<CommandResult, TransportError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(closed()),
        Err(_) => {
            pending.fail_all("command timed out");
            Err(TransportError::Timeout(timeout))
        }
    }
}
