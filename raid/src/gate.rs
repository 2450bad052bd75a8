//! A gate many I/Os pass at once and one owner can close: closing stops
//! new passes and waits for the ones in flight (an async shared/exclusive
//! lock tuned for the I/O path).
//!
//! Passing costs two atomic operations when the gate is open; tokio's
//! `RwLock` also takes a mutex on every release, which showed up in the
//! per-I/O cost of raid1 and thin. The state is one counter: the number of
//! passes in flight, with the top bit meaning "closed". A pass that finds
//! the gate closed backs out and waits to be woken on reopen; the last pass
//! to leave a closed gate wakes the closer. Closers queue on a mutex.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use tokio::sync::{Mutex, MutexGuard, Notify};

const CLOSED: u64 = 1 << 63;

/// The gate.
pub(crate) struct Gate {
    state: AtomicU64,
    drained: Notify,
    reopened: Notify,
    closers: Mutex<()>,
}

/// A pass through an open gate; leaving on drop.
pub(crate) struct Pass<'a>(&'a Gate);

/// The gate closed by its holder; reopens on drop.
pub(crate) struct Closed<'a> {
    gate: &'a Gate,
    _one: MutexGuard<'a, ()>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            state: AtomicU64::new(0),
            drained: Notify::new(),
            reopened: Notify::new(),
            closers: Mutex::new(()),
        }
    }

    /// Pass the gate if it is open, without waiting.
    #[inline]
    pub fn try_enter(&self) -> Option<Pass<'_>> {
        if self.state.fetch_add(1, SeqCst) & CLOSED == 0 {
            return Some(Pass(self));
        }
        self.leave();
        None
    }

    /// Pass the gate, waiting while it is closed. Callers on the I/O path
    /// try [`Gate::try_enter`] first, which costs no future.
    pub async fn enter(&self) -> Pass<'_> {
        loop {
            if self.state.fetch_add(1, SeqCst) & CLOSED == 0 {
                return Pass(self);
            }
            let mut reopened = pin!(self.reopened.notified());
            reopened.as_mut().enable();
            self.leave();
            if self.state.load(SeqCst) & CLOSED != 0 {
                reopened.await;
            }
        }
    }

    /// Leave for a pass that was [`Pass::detach`]ed.
    pub fn leave_detached(&self) {
        self.leave();
    }

    fn leave(&self) {
        if self.state.fetch_sub(1, SeqCst) == CLOSED + 1 {
            self.drained.notify_one();
        }
    }

    /// Close the gate and wait until no pass is in flight.
    pub async fn close(&self) -> Closed<'_> {
        let one = self.closers.lock().await;
        self.state.fetch_or(CLOSED, SeqCst);
        while self.state.load(SeqCst) & !CLOSED != 0 {
            self.drained.notified().await;
        }
        Closed {
            gate: self,
            _one: one,
        }
    }
}

impl Pass<'_> {
    /// Keep the pass without this guard: whoever holds it now leaves with
    /// [`Gate::leave_detached`] (a task that outlives the borrow).
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.gate.state.fetch_and(!CLOSED, SeqCst);
        self.gate.reopened.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn close_waits_for_passes_and_blocks_new_ones() {
        let gate = Arc::new(Gate::new());
        let pass = gate.enter().await;
        let g = gate.clone();
        let closer = tokio::spawn(async move {
            let _closed = g.close().await;
            "closed"
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!closer.is_finished(), "a pass is still in flight");
        drop(pass);
        assert_eq!(closer.await.unwrap(), "closed");
        // Closed: a new pass waits until the gate reopens.
        let closed = gate.close().await;
        let g = gate.clone();
        let entering = tokio::spawn(async move {
            let _p = g.enter().await;
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!entering.is_finished());
        drop(closed);
        entering.await.unwrap();
        let _a = gate.enter().await;
        let _b = gate.enter().await;
    }
}
