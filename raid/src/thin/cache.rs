//! A per-device cache of thin block mappings, read without the pool lock.
//!
//! Every I/O of a thin device needs the mapping of its thin block; looking
//! it up in the pool state takes the pool-wide lock and walks the tree.
//! This direct-mapped cache answers the steady state with one atomic load.
//!
//! Consistency: entries are only stored, replaced and removed while the
//! pool state lock is held, each time from (or together with) the state
//! itself, so an entry is never older than the last change of its mapping.
//! The changes that can make an entry wrong are the device's own remaps
//! (which remove the entry) and a snapshot of the device (which empties the
//! cache: every block becomes shared). Changes elsewhere only turn shared
//! blocks exclusive (a sharer went away), which a stale entry reports
//! conservatively as shared; a write then looks the mapping up again.
//!
//! Entry layout (one `u64`, 0 = empty): bit 63 = exclusive, bits 40..63 =
//! the thin block number divided by the number of slots (the tag), bits
//! 0..40 = data block + 1. Mappings that do not fit are not cached.

use std::sync::atomic::{AtomicU64, Ordering};

use super::state::Mapping;

/// Slots per device (16 KiB: 2 GiB of hot data at 1 MiB thin blocks).
const SLOTS: u64 = 2048;
const BLOCK_BITS: u32 = 40;
const TAG_BITS: u32 = 23;
const EXCLUSIVE: u64 = 1 << 63;

/// The cache of one thin device.
pub(crate) struct MapCache {
    slots: Box<[AtomicU64]>,
}

impl MapCache {
    pub fn new() -> MapCache {
        MapCache {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, vb: u64) -> Option<&AtomicU64> {
        self.slots.get((vb % SLOTS) as usize)
    }

    /// The cached mapping of thin block `vb`, if any.
    #[inline]
    pub fn get(&self, vb: u64) -> Option<Mapping> {
        let e = self.slot(vb)?.load(Ordering::Acquire);
        let block_plus_one = e & ((1 << BLOCK_BITS) - 1);
        if block_plus_one == 0 || (e & !EXCLUSIVE) >> BLOCK_BITS != vb / SLOTS {
            return None;
        }
        Some(Mapping {
            block: block_plus_one - 1,
            exclusive: e & EXCLUSIVE != 0,
        })
    }

    /// Remember `m` as the mapping of `vb` (call with the state locked).
    pub fn put(&self, vb: u64, m: Mapping) {
        let (tag, block_plus_one) = (vb / SLOTS, m.block.wrapping_add(1));
        let Some(slot) = self.slot(vb) else { return };
        if tag >= 1 << TAG_BITS || block_plus_one == 0 || block_plus_one >= 1 << BLOCK_BITS {
            slot.store(0, Ordering::Release);
            return;
        }
        let flag = if m.exclusive { EXCLUSIVE } else { 0 };
        slot.store(flag | tag << BLOCK_BITS | block_plus_one, Ordering::Release);
    }

    /// Forget the mapping of `vb` (call with the state locked).
    pub fn forget(&self, vb: u64) {
        if let Some(slot) = self.slot(vb) {
            slot.store(0, Ordering::Release);
        }
    }

    /// Forget everything (call with the state locked).
    pub fn clear(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(block: u64, exclusive: bool) -> Mapping {
        Mapping { block, exclusive }
    }

    #[test]
    fn hits_misses_collisions_and_limits() {
        let c = MapCache::new();
        assert_eq!(c.get(5), None);
        c.put(5, m(0, true));
        c.put(6, m(77, false));
        assert_eq!(c.get(5), Some(m(0, true)));
        assert_eq!(c.get(6), Some(m(77, false)));
        // Same slot, other tag: a miss, and a put replaces the entry.
        assert_eq!(c.get(5 + SLOTS), None);
        c.put(5 + SLOTS, m(9, false));
        assert_eq!(c.get(5), None);
        assert_eq!(c.get(5 + SLOTS), Some(m(9, false)));
        c.forget(5 + SLOTS);
        assert_eq!(c.get(5 + SLOTS), None);
        // What does not fit is not cached (and clears the slot).
        c.put(7, m(1, true));
        c.put(7 + SLOTS * (1 << TAG_BITS), m(1, true));
        assert_eq!(c.get(7), None);
        assert_eq!(c.get(7 + SLOTS * (1 << TAG_BITS)), None);
        c.put(8, m(1 << BLOCK_BITS, true));
        assert_eq!(c.get(8), None);
        c.put(9, m(u64::MAX, true));
        assert_eq!(c.get(9), None);
        c.put(10, m((1 << BLOCK_BITS) - 2, true));
        assert_eq!(c.get(10), Some(m((1 << BLOCK_BITS) - 2, true)));
        c.clear();
        assert_eq!(c.get(6), None);
        assert_eq!(c.get(10), None);
    }
}
