//! Resync: copying regions from an in-sync member to recovering ones.
//!
//! A pass walks the regions in order. For each region that a target needs
//! (every region for a full rebuild, dirty ones for a returning member) it
//! copies [`RESYNC_IO`]-sized pieces, each under the exclusive lock of the
//! region's stripe, so no write to the region is in flight during the copy
//! and writes that arrive later go to the target as well. When a pass ends,
//! the targets that survived it are promoted to in-sync (event counter up,
//! superblocks written). A member that joined during the pass waits for the
//! next one. Progress is kept in [`ResyncProgress`]; speed is capped by a
//! [`RateLimit`].

use std::sync::Arc;

use tracing::info;

use super::{Member, Raid1};
use crate::buf;
use crate::device::BlockResult;
use crate::task::{BackgroundTask, RateLimit, StopSignal, Throttle};

/// Bytes copied per locked step.
pub const RESYNC_IO: u64 = 1 << 20;

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
}

impl Raid1 {
    /// Resync progress.
    pub fn resync_progress(&self) -> ResyncProgress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    /// recovering, sleeping in between. A failed pass ends the task.
    pub fn start_resync(self: &Arc<Self>, limit: RateLimit) -> BackgroundTask {
        let raid = self.clone();
        BackgroundTask::spawn(move |mut stop| async move {
            while !stop.is_stopped() {
                let wake = raid.wake_resync.notified();
                if !raid.resync_pass(&limit, &mut stop).await? {
                    tokio::select! {
                        _ = wake => {}
                        _ = stop.stopped() => {}
                    }
                }
            }
            Ok(())
        })
    }

    /// One pass; returns whether there was anything to do.
    async fn resync_pass(&self, limit: &RateLimit, stop: &mut StopSignal) -> BlockResult<bool> {
        let targets: Vec<Member> = self
            .live()
            .iter()
            .filter(|m| m.recovering.is_some())
            .cloned()
            .collect();
        if targets.is_empty() {
            return Ok(false);
        }
        let regions = self.geo.regions();
        self.update_progress(|p| {
            p.active = true;
            p.targets = targets.iter().map(|m| m.slot).collect();
            p.regions_total = regions;
            p.regions_done = 0;
        });
        info!(targets = ?targets.iter().map(|m| m.slot).collect::<Vec<_>>(), "raid1 resync pass started");
        let mut throttle = Throttle::new(limit.clone());
        let result = self.copy_regions(&targets, &mut throttle, stop).await;
        self.update_progress(|p| p.active = false);
        if !result? {
            return Ok(false);
        }
        let mut meta = self.meta.lock().await;
        let mut members = self.live().to_vec();
        for m in members.iter_mut() {
            if targets.iter().any(|t| t.join_id == m.join_id) {
                m.recovering = None;
                meta.slots[m.slot].state = super::SlotState::InSync;
            }
        }
        self.set_members(members);
        meta.events += 1;
        self.commit_meta(&mut meta).await?;
        self.update_progress(|p| p.passes += 1);
        info!("raid1 resync pass finished");
        Ok(true)
    }

    /// Copy what `targets` need; returns `false` if stopped early.
    async fn copy_regions(
        &self,
        targets: &[Member],
        throttle: &mut Throttle,
        stop: &mut StopSignal,
    ) -> BlockResult<bool> {
        let rb = self.geo.region_blocks();
        let bs = self.geo.block_size as u64;
        let step = (RESYNC_IO / bs).max(1);
        for r in 0..self.geo.regions() {
            let dirty = self.intent.dirty.get(r);
            if targets.iter().any(|t| t.recovering == Some(true)) || dirty {
                let end = ((r + 1) * rb).min(self.geo.data_blocks);
                let mut at = r * rb;
                while at < end {
                    let n = step.min(end - at);
                    self.copy_piece(targets, at, n, dirty).await?;
                    at += n;
                    if throttle.pace(n * bs, stop).await {
                        return Ok(false);
                    }
                }
            }
            self.update_progress(|p| p.regions_done = r + 1);
            if stop.is_stopped() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Copy `blocks` at array block `lba` to the targets that need it.
    async fn copy_piece(
        &self,
        targets: &[Member],
        lba: u64,
        blocks: u64,
        dirty: bool,
    ) -> BlockResult<()> {
        let region = lba / self.geo.region_blocks();
        let _lock = self.locks[(region % super::LOCK_STRIPES) as usize]
            .close()
            .await;
        let live = self.live();
        let needs: Vec<&Member> = live
            .iter()
            .filter(|m| {
                targets.iter().any(|t| t.join_id == m.join_id)
                    && (dirty || m.recovering == Some(true))
            })
            .collect();
        if needs.is_empty() {
            return Ok(());
        }
        let len = (blocks * self.geo.block_size as u64) as usize;
        let at = lba + self.geo.data_offset;
        let data = self.read_in_sync(at, buf::alloc(len)).await?.freeze();
        let results =
            futures::future::join_all(needs.iter().map(|m| m.dev.write(at, data.clone()))).await;
        let mut meta = None;
        for (m, r) in needs.iter().zip(results) {
            if let Err(e) = r {
                let meta = match &mut meta {
                    Some(g) => g,
                    None => meta.insert(self.meta.lock().await),
                };
                self.drop_member(meta, m.slot, &format!("resync write failed: {e}"));
            }
        }
        if let Some(mut meta) = meta {
            self.commit_meta(&mut meta).await?;
        }
        self.update_progress(|p| p.bytes_copied += len as u64);
        Ok(())
    }
}
