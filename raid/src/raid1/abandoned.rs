//! Writes whose callers stop waiting for them.
//!
//! A write's future may be dropped while its member I/Os run (a host's
//! connection torn down, a timeout above). Cut off there, the write could
//! have reached one member and not another, or still reach one later (an
//! io_uring op or a remote command goes on without its future), and a
//! member that failed it would never be dropped: the members would
//! disagree on a range the array calls in sync, and the bitmap would go
//! clean over it. So a write's member I/Os are one owned future, held by
//! its [`Unsettled`] guard with the write's region locks and in-flight
//! marks; dropped before the outcome is settled, the guard hands all of
//! them to a task that finishes the write: it waits for every member's
//! answer, drops the members that failed, and only then lets go of the
//! regions. Until then resync does not copy those regions, no bit of
//! theirs is cleared, and new writes to their lock stripes wait (a host
//! that retries the write on another path must not race the old one on
//! some member: the two could land in different orders on two members);
//! [`Raid1::close`] waits for such tasks.
//!
//! The steady-state write pays one allocation and one reference count for
//! this (its member futures boxed as one owned future).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tracing::{debug, warn};

use super::bitmap::InFlight;
use super::{Live, Member, Raid1, RegionGuards};
use crate::device::{BlockError, BlockResult};

/// Every member's result of one write, in `Live` order (a two-way
/// mirror's without an allocation).
pub(super) enum MemberResults {
    Two([BlockResult<()>; 2]),
    Many(Vec<BlockResult<()>>),
}

impl MemberResults {
    /// Whether an in-sync member of `live` took the write, and the members
    /// (by slot) that failed it, with their errors.
    fn outcome(self, live: &[Member]) -> (bool, Vec<(usize, BlockError)>) {
        fn split(
            live: &[Member],
            results: impl IntoIterator<Item = BlockResult<()>>,
        ) -> (bool, Vec<(usize, BlockError)>) {
            let (mut ok, mut failed) = (false, Vec::new());
            for (m, r) in live.iter().zip(results) {
                match r {
                    Ok(()) => ok |= m.recovering.is_none(),
                    Err(e) => failed.push((m.slot, e)),
                }
            }
            (ok, failed)
        }
        match self {
            MemberResults::Two(two) => split(live, two),
            MemberResults::Many(many) => split(live, many),
        }
    }
}

/// The member I/Os of one write, as one owned future.
pub(super) type MemberWrites = Pin<Box<dyn Future<Output = MemberResults> + Send + 'static>>;

/// A write from its first member I/O until its outcome is settled (see
/// the module's docs).
pub(super) struct Unsettled<'a> {
    raid: &'a Raid1,
    live: Arc<Live>,
    /// Regions `first..=last` of the write.
    regions: (u64, u64),
    /// The member I/Os, until they have all answered.
    io: Option<MemberWrites>,
    /// Members that failed the write, until their drop is made.
    failed: Vec<(usize, BlockError)>,
    inflight: Option<InFlight<'a>>,
    locks: Option<RegionGuards<'a>>,
}

impl<'a> Unsettled<'a> {
    /// Starts guarding the write of regions `regions` whose member I/Os
    /// (over `live`) are `io`, holding its in-flight marks and locks.
    pub(super) fn new(
        raid: &'a Raid1,
        live: Arc<Live>,
        regions: (u64, u64),
        io: MemberWrites,
        inflight: InFlight<'a>,
        locks: RegionGuards<'a>,
    ) -> Unsettled<'a> {
        Unsettled {
            raid,
            live,
            regions,
            io: Some(io),
            failed: Vec::new(),
            inflight: Some(inflight),
            locks: Some(locks),
        }
    }

    /// Waits for every member's answer.
    pub(super) async fn results(&mut self) -> MemberResults {
        let results = match self.io.as_mut() {
            Some(io) => io.as_mut().await,
            None => MemberResults::Many(Vec::new()),
        };
        self.io = None;
        results
    }

    /// Settles the write from its members' `results`: drops the members
    /// that failed it; it succeeds if an in-sync member took it, once every
    /// earlier drop is on the superblocks.
    pub(super) async fn settle(mut self, results: MemberResults) -> BlockResult<()> {
        let ok;
        (ok, self.failed) = results.outcome(&self.live);
        if !self.failed.is_empty() {
            let mut meta = self.raid.meta.lock().await;
            let failed = std::mem::take(&mut self.failed);
            self.raid
                .drop_failed_members(&mut meta, failed, "write failed")
                .await?;
        }
        if !ok {
            return Err(BlockError::Offline("raid1: no in-sync member".into()));
        }
        self.raid.drops_committed().await
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.io.is_none() && self.failed.is_empty() {
            return;
        }
        let raid = self.raid;
        let me = raid.me.get().and_then(Weak::upgrade);
        let runtime = tokio::runtime::Handle::try_current();
        let (Some(me), Ok(runtime)) = (me, runtime) else {
            warn!(
                regions = ?self.regions,
                "raid1 write given up while the array closes; its members may differ there \
                 until the next open resyncs"
            );
            return;
        };
        debug!(regions = ?self.regions, "raid1 write given up by its caller; finished in the background");
        // The marks and locks go to the task: kept, released by it.
        let (first, last) = self.regions;
        if let Some(inflight) = self.inflight.take() {
            inflight.detach();
        }
        let stripes = self.locks.take().map(RegionGuards::detach);
        // Closed (where no resync copy has them already) so that writes
        // that come after wait for this one.
        let closed: Vec<usize> = stripes
            .iter()
            .flatten()
            .copied()
            .filter(|&s| raid.locks[s].try_close_detached())
            .collect();
        let (io, failed, live) = (
            self.io.take(),
            std::mem::take(&mut self.failed),
            self.live.clone(),
        );
        me.background.fetch_add(1, Ordering::SeqCst);
        runtime.spawn(async move {
            let failed = match io {
                Some(io) => io.await.outcome(&live).1,
                None => failed,
            };
            if !failed.is_empty() {
                let mut meta = me.meta.lock().await;
                if let Err(e) = me
                    .drop_failed_members(&mut meta, failed, "write failed")
                    .await
                {
                    warn!(error = %e, "raid1 write given up by its caller failed");
                }
            }
            me.intent.end(first, last);
            for s in stripes.into_iter().flatten() {
                me.locks[s].leave_detached();
            }
            for s in closed {
                me.locks[s].reopen_detached();
            }
            if me.background.fetch_sub(1, Ordering::SeqCst) == 1 {
                me.background_done.notify_waiters();
            }
        });
    }
}
