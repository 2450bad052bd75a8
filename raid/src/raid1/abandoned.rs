//! Writes whose callers stop waiting for them.
//!
//! A write's future may be dropped while its member I/Os run (a host's
//! connection torn down, a timeout above): the write may then have reached
//! one member and not another, and a member that failed it was never
//! dropped. Left so, the members would disagree on a range the array
//! calls in sync (reads alternate between old and new data), and the
//! bitmap would go clean over it. So the write's [`Unsettled`] guard, when
//! dropped armed, has the range copied from an in-sync member to every
//! other live member in a task of its own (under the region's exclusive
//! lock, as resync copies, so no newer write is overwritten; a member that
//! fails the copy is dropped), and no bitmap bit is cleared until every
//! such copy is done.
//!
//! Until the copy runs, reads of that range may see either content: the
//! write was never acknowledged, so either is what the caller may find.
//! The guard costs the steady-state write nothing but a flag.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use futures::future::join_all;
use tracing::{debug, warn};

use super::resync::RESYNC_IO;
use super::{Raid1, LOCK_STRIPES};
use crate::buf;

/// Armed from a write's first member I/O until its outcome is settled;
/// dropped armed, it has the write's range made the same on every member.
pub(super) struct Unsettled<'a> {
    raid: &'a Raid1,
    lba: u64,
    blocks: u64,
    armed: bool,
}

impl<'a> Unsettled<'a> {
    /// Arms the guard for `blocks` array blocks at `lba`.
    pub(super) fn new(raid: &'a Raid1, lba: u64, blocks: u64) -> Unsettled<'a> {
        Unsettled {
            raid,
            lba,
            blocks,
            armed: true,
        }
    }

    /// The write's outcome is settled: nothing to repair.
    pub(super) fn settled(mut self) {
        self.armed = false;
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let raid = self.raid;
        // Counted before anything else: no clearing pass may run from here.
        raid.repairs_pending.fetch_add(1, Ordering::SeqCst);
        let me = raid.me.get().and_then(Weak::upgrade);
        let runtime = tokio::runtime::Handle::try_current();
        let (lba, blocks) = (self.lba, self.blocks);
        match (me, runtime) {
            (Some(me), Ok(runtime)) => {
                debug!(
                    lba,
                    blocks, "raid1 write given up by its caller; its range is repaired"
                );
                runtime.spawn(async move {
                    me.repair_range(lba, blocks).await;
                    me.repairs_pending.fetch_sub(1, Ordering::SeqCst);
                });
            }
            // The array is going away (or no runtime is left): the bitmap
            // keeps its bits, and the next open resyncs the range.
            _ => warn!(
                lba,
                blocks,
                "raid1 write given up while the array closes; the next open resyncs its region"
            ),
        }
    }
}

impl Raid1 {
    /// Copy `blocks` array blocks at `lba` from an in-sync member to every
    /// live member, piece by piece, each under its region's exclusive lock.
    async fn repair_range(&self, lba: u64, blocks: u64) {
        let bs = u64::from(self.geo.block_size);
        let step = (RESYNC_IO / bs).max(1);
        let rb = self.geo.region_blocks();
        let end = lba.saturating_add(blocks).min(self.geo.data_blocks);
        let mut at = lba;
        while at < end {
            let region = self.geo.region_of(at);
            let n = step.min((region + 1) * rb - at).min(end - at);
            // In flight like a write, so that the bit stays until a flush
            // that began after the copy ended; writes take the stripe
            // shared, and the copy waits for them and keeps newer ones out
            // while it reads and writes.
            let _inflight = self.intent.begin(region, region);
            let _lock = self.locks[(region % LOCK_STRIPES) as usize].close().await;
            let live = self.live();
            let member_lba = at + self.geo.data_offset;
            let len = (n * bs) as usize;
            let copied = match self.read_in_sync(member_lba, buf::alloc(len)).await {
                Ok(data) => {
                    let data = data.freeze();
                    let results =
                        join_all(live.iter().map(|m| m.dev.write(member_lba, data.clone()))).await;
                    self.settle(&live, results).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = copied {
                warn!(lba = at, blocks = n, error = %e, "raid1 repair of a write given up failed");
            }
            at += n;
        }
    }
}
