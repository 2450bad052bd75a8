//! The write-intent bitmap, in memory.
//!
//! A set bit ("dirty") means the region may differ between members. The
//! protocol:
//!
//! * A write first counts itself in flight on its regions and marks them
//!   touched, then checks the dirty bits. Only bits already on disk are set
//!   in memory, so a write that finds its regions dirty goes straight to the
//!   members. Otherwise the array persists the bits on every member and
//!   flushes before setting them here (the slow path, once per region).
//! * Bits are cleared lazily, on flush, only when no member is missing or
//!   recovering, and only for regions neither touched since the previous
//!   clearing pass nor in flight. The pass runs only if the flush's member
//!   flushes began after the previous pass (overlapping flushes: the first
//!   to get there clears, the others do not), so such a region's data is
//!   durable and identical everywhere. The
//!   clearer first clears the bit and then re-checks the counters, setting
//!   it back if a write slipped in; with sequentially consistent atomics a
//!   racing writer either is seen by the clearer or sees the cleared bit and
//!   takes the slow path.
//! * While the array is degraded no bit is cleared, so the bitmap holds
//!   every region written since a member went away: exactly what that member
//!   needs copied when it returns.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::bits::{AtomicBits, BITS_PER_BLOCK};

/// Dirty, touched and in-flight state of every region.
pub(crate) struct WriteIntent {
    pub dirty: AtomicBits,
    touched: AtomicBits,
    inflight: Vec<AtomicU32>,
}

/// Counts a write in flight on regions `first..=last` until dropped.
pub(crate) struct InFlight<'a> {
    wi: &'a WriteIntent,
    first: u64,
    last: u64,
}

impl WriteIntent {
    pub fn new(regions: u64) -> WriteIntent {
        WriteIntent {
            dirty: AtomicBits::new(regions),
            touched: AtomicBits::new(regions),
            inflight: (0..regions).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Start a write on regions `first..=last`.
    #[inline]
    pub fn begin(&self, first: u64, last: u64) -> InFlight<'_> {
        debug_assert!(first <= last);
        let mut r = first;
        loop {
            if let Some(c) = self.inflight.get(r as usize) {
                c.fetch_add(1, Ordering::SeqCst);
            }
            self.touch(r);
            if r >= last {
                break;
            }
            r += 1;
        }
        InFlight {
            wi: self,
            first,
            last,
        }
    }

    /// Mark region `r` touched. A plain load first: in steady state the bit
    /// is already set, and seeing it set is as good as setting it (the
    /// clearer's reset is then ordered after this write's progress).
    #[inline]
    fn touch(&self, r: u64) {
        if !self.touched.get(r) {
            self.touched.set(r, true);
        }
    }

    /// Whether every region of `first..=last` is dirty.
    #[inline]
    pub fn all_dirty(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|r| self.dirty.get(r))
    }

    /// Regions of `first..=last` not yet dirty (sorted).
    pub fn clean_in(&self, first: u64, last: u64) -> Vec<u64> {
        (first..=last).filter(|&r| !self.dirty.get(r)).collect()
    }

    /// Clear the bits of quiet regions; returns the on-disk bitmap blocks
    /// that changed. Call only with every member in sync and just flushed.
    pub fn clear_quiet(&self) -> Vec<u64> {
        let mut changed = Vec::new();
        let dirty: Vec<u64> = self.dirty.ones().collect();
        for r in dirty {
            if self.touched.set(r, false) {
                continue;
            }
            self.dirty.set(r, false);
            let busy = self
                .inflight
                .get(r as usize)
                .is_some_and(|c| c.load(Ordering::SeqCst) != 0);
            if busy || self.touched.get(r) {
                self.dirty.set(r, true);
            } else if changed.last() != Some(&(r / BITS_PER_BLOCK)) {
                changed.push(r / BITS_PER_BLOCK);
            }
        }
        changed
    }
}

impl WriteIntent {
    /// End a write on regions `first..=last` (what dropping its
    /// [`InFlight`] does; for one that was [`InFlight::detach`]ed).
    #[inline]
    pub fn end(&self, first: u64, last: u64) {
        let mut r = first;
        loop {
            self.touch(r);
            if let Some(c) = self.inflight.get(r as usize) {
                c.fetch_sub(1, Ordering::SeqCst);
            }
            if r >= last {
                break;
            }
            r += 1;
        }
    }
}

impl InFlight<'_> {
    /// Keep the write in flight without this guard: whoever holds it now
    /// ends it with [`WriteIntent::end`].
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        self.wi.end(self.first, self.last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_clear_only_after_a_quiet_pass_and_never_while_in_flight() {
        let wi = WriteIntent::new(8);
        drop(wi.begin(1, 1));
        let g = wi.begin(2, 2);
        drop(wi.begin(3, 3));
        for r in [1, 2, 3] {
            wi.dirty.set(r, true);
        }
        // First pass: everything was touched.
        assert!(wi.clear_quiet().is_empty());
        // Second pass: 1 and 3 are quiet; 2 is still in flight.
        assert_eq!(wi.clear_quiet(), vec![0]);
        assert_eq!(wi.dirty.ones().collect::<Vec<_>>(), vec![2]);
        drop(g);
        assert!(wi.clear_quiet().is_empty());
        wi.clear_quiet();
        assert_eq!(wi.dirty.count(), 0);
        assert_eq!(wi.clean_in(0, 2), vec![0, 1, 2]);
    }
}
