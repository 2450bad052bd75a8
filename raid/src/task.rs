//! Background work: a stoppable tokio task and a bytes-per-second throttle.
//!
//! Resync, hydration and periodic thin commits all run as one loop each in
//! a tokio task. The loop checks a stop signal between steps (never in the
//! middle of a copy), so stopping leaves no half-done step behind. The rate
//! limit is shared through an atomic so the control plane can change it
//! while the task runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::device::{BlockError, BlockResult};

/// Handle to a background task: stop it, or wait for it to finish.
pub struct BackgroundTask {
    stop: watch::Sender<bool>,
    join: JoinHandle<BlockResult<()>>,
}

/// The task's side of the stop signal.
#[derive(Clone)]
pub struct StopSignal {
    rx: watch::Receiver<bool>,
    /// Keeps the channel open for [`StopSignal::never`].
    _keep: Option<Arc<watch::Sender<bool>>>,
}

impl StopSignal {
    /// A signal that never fires: for running a background loop inline.
    pub fn never() -> StopSignal {
        let (tx, rx) = watch::channel(false);
        StopSignal {
            rx,
            _keep: Some(Arc::new(tx)),
        }
    }

    /// Wait until asked to stop.
    pub async fn stopped(&mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// Whether the task was asked to stop.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow()
    }

    /// Sleep for `d`, returning early (with `true`) if asked to stop.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        if self.is_stopped() {
            return true;
        }
        let slept = tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.rx.wait_for(|s| *s) => false,
        };
        !slept || self.is_stopped()
    }
}

impl BackgroundTask {
    /// Spawn `body` on the current tokio runtime.
    pub fn spawn<F, Fut>(body: F) -> BackgroundTask
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: std::future::Future<Output = BlockResult<()>> + Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        let join = tokio::spawn(body(StopSignal { rx, _keep: None }));
        BackgroundTask { stop, join }
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Ask the task to stop and wait for it; returns its result.
    pub async fn stop(self) -> BlockResult<()> {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Wait for the task to end by itself; returns its result.
    pub async fn join(self) -> BlockResult<()> {
        self.join
            .await
            .map_err(|e| BlockError::Io(std::io::Error::other(format!("background task: {e}"))))?
    }
}

/// A rate limit in bytes per second, changeable while in use (0 = none).
#[derive(Clone, Default)]
pub struct RateLimit(Arc<AtomicU64>);

impl RateLimit {
    /// A limit of `bytes_per_sec` (0 means unlimited).
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit(Arc::new(AtomicU64::new(bytes_per_sec)))
    }

    /// Change the limit.
    pub fn set(&self, bytes_per_sec: u64) {
        self.0.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The current limit.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Paces a loop to a [`RateLimit`]: call [`Throttle::pace`] after each step.
pub(crate) struct Throttle {
    limit: RateLimit,
    since: Instant,
    bytes: u64,
}

impl Throttle {
    pub(crate) fn new(limit: RateLimit) -> Throttle {
        Throttle {
            limit,
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// Account for `bytes` just moved; sleeps as long as the loop is ahead
    /// of the limit. Returns `true` if asked to stop while sleeping.
    pub(crate) async fn pace(&mut self, bytes: u64, stop: &mut StopSignal) -> bool {
        let rate = self.limit.get();
        if rate == 0 {
            self.since = Instant::now();
            self.bytes = 0;
            return stop.is_stopped();
        }
        self.bytes += bytes;
        let due = self.since + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            return stop.sleep(due - now).await;
        }
        if now - self.since > Duration::from_secs(1) {
            // Do not bank credit for idle time longer than a second.
            self.since = now;
            self.bytes = 0;
        }
        stop.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttle_sleeps_to_the_rate_and_stop_wakes_it() {
        let paced = BackgroundTask::spawn(|mut stop| async move {
            let mut t = Throttle::new(RateLimit::new(1000));
            let start = Instant::now();
            for _ in 0..3 {
                assert!(!t.pace(1000, &mut stop).await);
            }
            // Paused clock: time advances only by the throttle's sleeps.
            assert!(Instant::now() - start >= Duration::from_secs(3));
            Ok(())
        });
        paced.join().await.unwrap();
        let endless = BackgroundTask::spawn(|mut stop| async move {
            let mut t = Throttle::new(RateLimit::new(1));
            while !t.pace(1 << 20, &mut stop).await {}
            Ok(())
        });
        endless.stop().await.unwrap();
    }
}
