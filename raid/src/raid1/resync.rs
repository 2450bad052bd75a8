//! Resync: copying regions from an in-sync member to recovering ones.
//!
//! A pass walks the regions in order. A target needs a region if it is
//! dirty in the bitmap, or, for a member being rebuilt, if it lies at or
//! past the member's checkpoint (everything below was copied before). Each
//! needed region is copied in [`RESYNC_IO`]-sized pieces, each under the
//! exclusive lock of the region's stripe, so no write to the region is in
//! flight during the copy and writes that arrive later go to the target as
//! well. When a pass ends, the targets that survived it are flushed and
//! then promoted to in-sync (event counter up, superblocks written). A
//! member that joined during the pass waits for the next one. Progress is
//! kept in [`ResyncProgress`]; speed is capped by a [`RateLimit`].
//!
//! Checkpoints: after every [`Raid1::set_resync_checkpoint_bytes`] bytes
//! copied (default [`DEFAULT_CHECKPOINT_BYTES`]), and when a pass is
//! stopped, the rebuilt targets are flushed and then the superblocks record
//! the first region not yet done, so a rebuild interrupted by a crash or a
//! stop goes on from there: a crash costs at most one interval (plus the
//! regions dirty in the bitmap) of copying again. A checkpoint costs a
//! flush of the targets and a superblock write with a flush on every
//! member, so it is kept that rare; none is written at the end of a pass,
//! which promotes the targets instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Member, Raid1, SlotState};
use crate::buf;
use crate::device::BlockResult;
use crate::task::{BackgroundTask, RateLimit, StopSignal, Throttle};

/// Bytes copied per locked step.
pub const RESYNC_IO: u64 = 1 << 20;
/// First delay before re-adding a member that left for lack of space.
pub const READD_FIRST: Duration = Duration::from_secs(30);
/// Longest delay between two such re-adds.
pub const READD_MAX: Duration = Duration::from_secs(600);
/// After a failed pass (a read error on the source, say), the background
/// resync tries again after this long, then twice as long each time.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two failed passes.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Default bytes a rebuild copies between two checkpoints.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 1 << 30;

/// How far resync has come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncProgress {
    /// Whether a pass is running.
    pub active: bool,
    /// Slots being resynced by the current (or last) pass.
    pub targets: Vec<usize>,
    /// Regions in the array.
    pub regions_total: u64,
    /// Regions the current pass has gone past.
    pub regions_done: u64,
    /// Bytes copied since the array was opened.
    pub bytes_copied: u64,
    /// Passes completed since the array was opened.
    pub passes: u64,
    /// Checkpoints written since the array was opened.
    pub checkpoints: u64,
}

/// A member being resynced by a pass.
struct Target {
    member: Member,
    /// Regions from here on are copied whatever the bitmap says (the
    /// checkpoint of a rebuild; the end of the array for a member that
    /// only needs its dirty regions).
    from: u64,
}

impl Target {
    fn needs(&self, region: u64, dirty: bool) -> bool {
        dirty || region >= self.from
    }
}

impl Raid1 {
    /// Resync progress.
    pub fn resync_progress(&self) -> ResyncProgress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Copy at least `bytes` (rounded up to whole regions) between two
    /// resync checkpoints: the most a crash makes a rebuild copy again.
    pub fn set_resync_checkpoint_bytes(&self, bytes: u64) {
        self.checkpoint_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    fn update_progress(&self, f: impl FnOnce(&mut ResyncProgress)) {
        f(&mut self.progress.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Resync until no member is recovering (or one pass fails).
    pub async fn resync_now(&self, limit: &RateLimit) -> BlockResult<()> {
        let mut stop = StopSignal::never();
        while self.resync_pass(limit, &mut stop).await? {}
        Ok(())
    }

    /// Run resync in the background: passes whenever a member is
    /// recovering, sleeping in between; members that left for lack of
    /// space are re-added after [`READD_FIRST`], then after twice as long
    /// each time (at most [`READD_MAX`]) while the array stays degraded. A
    /// failed pass is logged and tried again after [`RETRY_FIRST`], then
    /// after twice as long each time (at most [`RETRY_MAX`]), or at once
    /// when a member joins: the task ends only when stopped, so one read
    /// error does not leave the array without redundancy until a restart.
    /// A stopped pass leaves a checkpoint behind.
    pub fn start_resync(self: &Arc<Self>, limit: RateLimit) -> BackgroundTask {
        self.start_resync_with(limit, READD_FIRST)
    }

    /// [`Raid1::start_resync`] with the first re-add delay given (tests).
    pub fn start_resync_with(
        self: &Arc<Self>,
        limit: RateLimit,
        readd_first: Duration,
    ) -> BackgroundTask {
        let raid = self.clone();
        BackgroundTask::spawn(move |mut stop| async move {
            let mut readd_after = readd_first;
            let mut retry_after = RETRY_FIRST;
            while !stop.is_stopped() {
                let wake = raid.wake_resync.notified();
                match raid.resync_pass(&limit, &mut stop).await {
                    Ok(true) => {
                        retry_after = RETRY_FIRST;
                        continue;
                    }
                    Ok(false) => retry_after = RETRY_FIRST,
                    Err(e) => {
                        warn!(error = %e, retry_in = ?retry_after, "raid1 resync pass failed; it is tried again");
                        tokio::select! {
                            _ = wake => {}
                            _ = stop.stopped() => {}
                            _ = tokio::time::sleep(retry_after) => {}
                        }
                        retry_after = (retry_after * 2).min(RETRY_MAX);
                        continue;
                    }
                }
                if !raid.degraded.load(Ordering::SeqCst) {
                    readd_after = readd_first;
                }
                let parked = raid.has_parked();
                tokio::select! {
                    _ = wake => {}
                    _ = stop.stopped() => {}
                    _ = tokio::time::sleep(readd_after), if parked => {
                        if raid.readd_parked().await > 0 {
                            info!(after = ?readd_after, "raid1 members re-added after running out of space");
                        }
                        readd_after = (readd_after * 2).min(READD_MAX);
                    }
                }
            }
            Ok(())
        })
    }

    /// One pass; returns whether it finished with something done.
    async fn resync_pass(&self, limit: &RateLimit, stop: &mut StopSignal) -> BlockResult<bool> {
        let regions = self.geo.regions();
        let targets: Vec<Target> = {
            let meta = self.meta.lock().await;
            self.live()
                .iter()
                .filter_map(|m| {
                    let from = match m.recovering? {
                        true => meta.slots.get(m.slot).map_or(0, |s| s.resync_from),
                        false => regions,
                    };
                    Some(Target {
                        member: m.clone(),
                        from,
                    })
                })
                .collect()
        };
        if targets.is_empty() {
            return Ok(false);
        }
        let slots: Vec<usize> = targets.iter().map(|t| t.member.slot).collect();
        self.update_progress(|p| {
            p.active = true;
            p.targets = slots.clone();
            p.regions_total = regions;
            p.regions_done = 0;
        });
        info!(targets = ?slots, from = ?targets.iter().map(|t| t.from).collect::<Vec<_>>(), "raid1 resync pass started");
        let mut throttle = Throttle::new(limit.clone());
        let result = self.copy_regions(&targets, &mut throttle, stop).await;
        self.update_progress(|p| p.active = false);
        if !result? {
            return Ok(false);
        }
        // The copies must be durable before any superblock says in-sync.
        self.flush_targets(&targets.iter().collect::<Vec<_>>())
            .await?;
        let mut meta = self.meta.lock().await;
        let mut members = self.live().to_vec();
        let mut promoted = 0;
        for m in members.iter_mut() {
            if targets.iter().any(|t| t.member.join_id == m.join_id) {
                promoted += 1;
                m.recovering = None;
                if let Some(slot) = meta.slots.get_mut(m.slot) {
                    slot.state = SlotState::InSync;
                    slot.resync_from = 0;
                }
            }
        }
        self.set_members(members);
        meta.events += 1;
        self.commit_meta(&mut meta).await?;
        self.update_progress(|p| p.passes += 1);
        info!(promoted, "raid1 resync pass finished");
        Ok(true)
    }

    /// Copy what `targets` need, checkpointing on the way; returns `false`
    /// if stopped early.
    async fn copy_regions(
        &self,
        targets: &[Target],
        throttle: &mut Throttle,
        stop: &mut StopSignal,
    ) -> BlockResult<bool> {
        let rb = self.geo.region_blocks();
        let bs = self.geo.block_size as u64;
        let step = (RESYNC_IO / bs).max(1);
        let regions = self.geo.regions();
        let mut since_checkpoint = 0;
        for r in 0..regions {
            let dirty = self.intent.dirty.get(r);
            let needs: Vec<&Target> = targets.iter().filter(|t| t.needs(r, dirty)).collect();
            if !needs.is_empty() {
                let end = ((r + 1) * rb).min(self.geo.data_blocks);
                let mut at = r * rb;
                while at < end {
                    let n = step.min(end - at);
                    self.copy_piece(&needs, at, n).await?;
                    at += n;
                    since_checkpoint += n * bs;
                    if throttle.pace(n * bs, stop).await {
                        // Stopped: the regions before `r` are done, and `r`
                        // too if this was its last piece.
                        let done = if at < end { r } else { r + 1 };
                        self.checkpoint(targets, done).await?;
                        return Ok(false);
                    }
                }
            }
            self.update_progress(|p| p.regions_done = r + 1);
            if stop.is_stopped() {
                self.checkpoint(targets, r + 1).await?;
                return Ok(false);
            }
            let last = r + 1 == regions;
            if !last && since_checkpoint >= self.checkpoint_bytes.load(Ordering::Relaxed) {
                self.checkpoint(targets, r + 1).await?;
                since_checkpoint = 0;
            }
        }
        Ok(true)
    }

    /// Record that the rebuilt targets hold regions `0..done`: flush them,
    /// then write the checkpoint to every member's superblock.
    async fn checkpoint(&self, targets: &[Target], done: u64) -> BlockResult<()> {
        let rebuilt: Vec<&Target> = targets
            .iter()
            .filter(|t| t.from < self.geo.regions() && done > t.from)
            .collect();
        if rebuilt.is_empty() {
            return Ok(());
        }
        self.flush_targets(&rebuilt).await?;
        let mut meta = self.meta.lock().await;
        let live = self.live();
        for t in rebuilt {
            let still_here = live.iter().any(|m| m.join_id == t.member.join_id);
            match meta.slots.get_mut(t.member.slot) {
                Some(slot) if still_here && slot.state == SlotState::Rebuilding => {
                    slot.resync_from = slot.resync_from.max(done);
                }
                _ => {}
            }
        }
        self.commit_meta(&mut meta).await?;
        self.update_progress(|p| p.checkpoints += 1);
        info!(done, "raid1 resync checkpoint");
        Ok(())
    }

    /// Flush the targets still in the array; drop those that fail.
    async fn flush_targets(&self, targets: &[&Target]) -> BlockResult<()> {
        let live = self.live();
        let here: Vec<&Member> = live
            .iter()
            .filter(|m| targets.iter().any(|t| t.member.join_id == m.join_id))
            .collect();
        let results = futures::future::join_all(here.iter().map(|m| m.dev.flush())).await;
        self.drop_failed(&here, results, "resync flush failed")
            .await
    }

    /// Drop the members (still the same joins) whose result is an error,
    /// and record it.
    async fn drop_failed(
        &self,
        members: &[&Member],
        results: Vec<BlockResult<()>>,
        why: &str,
    ) -> BlockResult<()> {
        if results.iter().all(|r| r.is_ok()) {
            return Ok(());
        }
        let mut meta = self.meta.lock().await;
        let live = self.live();
        let failed = members
            .iter()
            .zip(results)
            .filter(|(m, _)| live.iter().any(|l| l.join_id == m.join_id))
            .filter_map(|(m, r)| r.err().map(|e| (m.slot, e)))
            .collect();
        self.drop_failed_members(&mut meta, failed, why).await
    }

    /// Copy `blocks` at array block `lba` to those of `needs` still here.
    async fn copy_piece(&self, needs: &[&Target], lba: u64, blocks: u64) -> BlockResult<()> {
        let region = self.geo.region_of(lba);
        let _lock = self.locks[(region % super::LOCK_STRIPES) as usize]
            .close()
            .await;
        let live = self.live();
        let here: Vec<&Member> = live
            .iter()
            .filter(|m| needs.iter().any(|t| t.member.join_id == m.join_id))
            .collect();
        if here.is_empty() {
            return Ok(());
        }
        let len = (blocks * self.geo.block_size as u64) as usize;
        let at = lba + self.geo.data_offset;
        let data = self.read_in_sync(at, buf::alloc(len)).await?.freeze();
        let results =
            futures::future::join_all(here.iter().map(|m| m.dev.write(at, data.clone()))).await;
        self.drop_failed(&here, results, "resync write failed")
            .await?;
        self.update_progress(|p| p.bytes_copied += len as u64);
        Ok(())
    }
}
