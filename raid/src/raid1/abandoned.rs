//! Writes whose callers stop waiting for them.
//!
//! A write's future may be dropped while its member I/Os run (a host's
//! connection torn down, a timeout above). Cut off there, the write could
//! have reached one member and not another, or still reach one later (an
//! io_uring op or a remote command goes on without its future), and a
//! member that failed it would never be dropped: the members would
//! disagree on a range the array calls in sync, and the bitmap would go
//! clean over it. So a write's member I/Os are one owned future, held by
//! its [`Unsettled`] guard with the write's region passes and in-flight
//! marks; dropped before every member answered, the guard hands all of
//! them to a task that finishes the write: it waits for every member's
//! answer, drops the members that failed it, and only then lets go of
//! the regions (until then resync does not copy them and no bit of theirs
//! is cleared). The members that failed a write are always dropped in a
//! task of its own, which the write waits for, so that a caller giving up
//! then cannot leave a drop half recorded. [`Raid1::close`] waits for
//! such tasks.
//!
//! Left as md leaves it: a later write to the same blocks while a given-up
//! one is still under way may land in a different order on two members,
//! as any two overlapping writes in flight at once may. `fabricd`'s
//! targets never give a write up (they let a closed connection's commands
//! finish), so this serves the library's other callers.
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

/// A member that failed a write: its slot, which join of it, the error.
type Failure = (usize, u64, BlockError);

impl MemberResults {
    /// Whether an in-sync member of `live` took the write, and the members
    /// that failed it.
    fn outcome(self, live: &[Member]) -> (bool, Vec<Failure>) {
        fn split(
            live: &[Member],
            results: impl IntoIterator<Item = BlockResult<()>>,
        ) -> (bool, Vec<Failure>) {
            let (mut ok, mut failed) = (false, Vec::new());
            for (m, r) in live.iter().zip(results) {
                match r {
                    Ok(()) => ok |= m.recovering.is_none(),
                    Err(e) => failed.push((m.slot, m.join_id, e)),
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

/// A write from its first member I/O until every member answered (see
/// the module's docs).
pub(super) struct Unsettled<'a> {
    raid: &'a Raid1,
    live: Arc<Live>,
    /// Regions `first..=last` of the write.
    regions: (u64, u64),
    /// The member I/Os, until they have all answered.
    io: Option<MemberWrites>,
    inflight: Option<InFlight<'a>>,
    locks: Option<RegionGuards<'a>>,
}

impl<'a> Unsettled<'a> {
    /// Starts guarding the write of regions `regions` whose member I/Os
    /// (over `live`) are `io`, holding its in-flight marks and passes.
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
            inflight: Some(inflight),
            locks: Some(locks),
        }
    }

    /// Waits for every member's answer and settles the write: the members
    /// that failed it are dropped; it succeeds if an in-sync member took
    /// it, once every earlier drop is on the superblocks.
    pub(super) async fn run(mut self) -> BlockResult<()> {
        let results = match self.io.as_mut() {
            Some(io) => io.as_mut().await,
            None => MemberResults::Many(Vec::new()),
        };
        self.io = None;
        let (ok, failed) = results.outcome(&self.live);
        if !failed.is_empty() {
            // The regions stay held until the drop is made, even if this
            // caller gives up meanwhile: the task holds them.
            let held = self
                .raid
                .me
                .get()
                .and_then(Weak::upgrade)
                .map(|me| self.hand_over(me, true));
            self.raid.drop_failed_apart(failed, held).await?;
        }
        if !ok {
            return Err(BlockError::Offline("raid1: no in-sync member".into()));
        }
        self.raid.drops_committed().await
    }

    /// The write's in-flight marks and passes, for a task to release;
    /// `finished`: every member answered.
    fn hand_over(&mut self, me: Arc<Raid1>, finished: bool) -> Held {
        if let Some(inflight) = self.inflight.take() {
            inflight.detach();
        }
        Held {
            stripes: self
                .locks
                .take()
                .map(RegionGuards::detach)
                .unwrap_or_default(),
            regions: self.regions,
            finished,
            raid: me.clone(),
            _counted: Background::start(me),
        }
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        let Some(io) = self.io.take() else {
            return;
        };
        let raid = self.raid;
        let me = raid.me.get().and_then(Weak::upgrade);
        let runtime = tokio::runtime::Handle::try_current();
        let (Some(me), Ok(runtime)) = (me, runtime) else {
            // The array is going away: its bits stay set (the in-flight
            // marks are kept), so the next open resyncs these regions.
            warn!(regions = ?self.regions, "raid1 write given up while the array closes");
            if let Some(inflight) = self.inflight.take() {
                inflight.detach();
            }
            return;
        };
        debug!(regions = ?self.regions, "raid1 write given up by its caller; finished in the background");
        // The marks and passes go to the task, which releases them.
        let mut held = self.hand_over(me, false);
        let live = self.live.clone();
        runtime.spawn(async move {
            let (_, failed) = io.await.outcome(&live);
            held.finished = true;
            if !failed.is_empty() {
                let raid = held.raid.clone();
                if let Err(e) = raid.drop_failed_apart(failed, Some(held)).await {
                    warn!(error = %e, "raid1 write given up by its caller failed");
                }
            }
        });
    }
}

/// What a given-up write's task holds, released when it ends, run or not.
struct Held {
    raid: Arc<Raid1>,
    stripes: Vec<usize>,
    regions: (u64, u64),
    /// Whether every member answered: only then do the in-flight marks
    /// end (a task cut off by a runtime shutting down keeps the bits set).
    finished: bool,
    _counted: Background,
}

impl Drop for Held {
    fn drop(&mut self) {
        let raid = &self.raid;
        if self.finished {
            raid.intent.end(self.regions.0, self.regions.1);
        }
        for &s in &self.stripes {
            raid.locks[s].leave_detached();
        }
    }
}

/// A task of this module, counted while it runs (see
/// [`Raid1::close`]).
struct Background(Arc<Raid1>);

impl Background {
    fn start(raid: Arc<Raid1>) -> Background {
        raid.background.fetch_add(1, Ordering::SeqCst);
        Background(raid)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.0.background.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.background_done.notify_waiters();
        }
    }
}

impl Raid1 {
    /// Drop the members that failed a write (still the same joins), in a
    /// task of its own that this waits for: a caller giving up meanwhile
    /// cannot leave a drop applied but not recorded, or a member that left
    /// not told so. `held`, the write's regions, is released once the drop
    /// is made.
    async fn drop_failed_apart(&self, failed: Vec<Failure>, held: Option<Held>) -> BlockResult<()> {
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return Err(BlockError::Offline("raid1: the array is closing".into()));
        };
        // Counted from here, so that `close` cannot miss a task not yet
        // started.
        let counted = Background::start(me.clone());
        let record = async move {
            let _counted = counted;
            let _held = held;
            let mut meta = me.meta.lock().await;
            let live = me.live();
            let failed = failed
                .into_iter()
                .filter(|(slot, join, _)| {
                    live.iter().any(|m| m.slot == *slot && m.join_id == *join)
                })
                .map(|(slot, _, e)| (slot, e))
                .collect();
            me.drop_failed_members(&mut meta, failed, "write failed")
                .await
        };
        tokio::spawn(record)
            .await
            .map_err(|e| BlockError::Offline(format!("raid1: recording a failed member: {e}")))?
    }
}
