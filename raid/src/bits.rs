//! A bitmap of regions kept in memory as atomics and stored on disk in
//! checksummed 4 KiB blocks.
//!
//! On-disk layout: block `i` of the bitmap area holds bits
//! `i * BITS_PER_BLOCK ..` in its first 4092 bytes (bit `n` is bit `n % 8`
//! of byte `n / 8`, i.e. little-endian bit order) followed by the CRC32C of
//! those 4092 bytes, little-endian. Each block is checked on its own, so a
//! torn bitmap write loses at most one block, and the owner decides what a
//! bad block means (raid1 treats it as "all dirty", clone refuses to open).

use std::sync::atomic::{AtomicU64, Ordering};

/// Size of one on-disk bitmap block.
pub const BITMAP_BLOCK: usize = 4096;
const PAYLOAD: usize = BITMAP_BLOCK - 4;
/// Bits stored in one on-disk bitmap block.
pub const BITS_PER_BLOCK: u64 = PAYLOAD as u64 * 8;

/// A fixed-size set of bits that many tasks test and change at once.
pub struct AtomicBits {
    words: Vec<AtomicU64>,
    len: u64,
}

impl AtomicBits {
    /// `len` bits, all clear.
    pub fn new(len: u64) -> AtomicBits {
        AtomicBits {
            words: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether bit `i` is set (bits past the end read as clear).
    #[inline]
    pub fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (i % 64)) != 0)
    }

    /// Set bit `i` to `on`; returns the previous value.
    #[inline]
    pub fn set(&self, i: u64, on: bool) -> bool {
        let Some(w) = self.words.get((i / 64) as usize) else {
            return false;
        };
        let mask = 1u64 << (i % 64);
        let old = if on {
            w.fetch_or(mask, Ordering::SeqCst)
        } else {
            w.fetch_and(!mask, Ordering::SeqCst)
        };
        old & mask != 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::SeqCst).count_ones() as u64)
            .sum()
    }

    /// Indices of set bits, in order.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, w)| {
            let mut word = w.load(Ordering::SeqCst);
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros() as u64;
                word &= word - 1;
                Some(wi as u64 * 64 + bit)
            })
        })
    }

    /// Number of on-disk blocks needed for `len` bits.
    pub fn disk_blocks(len: u64) -> u64 {
        len.div_ceil(BITS_PER_BLOCK).max(1)
    }

    /// Encode on-disk block `block`, with the bits in `extra` (sorted)
    /// forced on.
    pub fn encode_block(&self, block: u64, extra: &[u64]) -> Vec<u8> {
        let mut out = vec![0u8; BITMAP_BLOCK];
        let first = block * BITS_PER_BLOCK;
        let last = (first + BITS_PER_BLOCK).min(self.len);
        for i in first..last {
            if self.get(i) || extra.binary_search(&i).is_ok() {
                let bit = i - first;
                out[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        let crc = crc32c::crc32c(&out[..PAYLOAD]);
        out[PAYLOAD..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decode on-disk block `block` into this bitmap (OR-ing bits in).
    /// Returns `false`, changing nothing, if the checksum does not match.
    pub fn merge_block(&self, block: u64, data: &[u8]) -> bool {
        let Some((payload, crc)) = data.get(..BITMAP_BLOCK).map(|d| d.split_at(PAYLOAD)) else {
            return false;
        };
        if crc32c::crc32c(payload).to_le_bytes() != crc {
            return false;
        }
        let first = block * BITS_PER_BLOCK;
        for (byte_idx, &byte) in payload.iter().enumerate() {
            if byte == 0 {
                continue;
            }
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    self.set(first + byte_idx as u64 * 8 + bit, true);
                }
            }
        }
        true
    }

    /// Set every bit covered by on-disk block `block`.
    pub fn fill_block(&self, block: u64) {
        let first = block * BITS_PER_BLOCK;
        for i in first..(first + BITS_PER_BLOCK).min(self.len) {
            self.set(i, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_merge_round_trip_and_corruption_is_detected() {
        let len = BITS_PER_BLOCK + 100;
        let a = AtomicBits::new(len);
        for i in [0, 7, 64, BITS_PER_BLOCK - 1, BITS_PER_BLOCK + 99] {
            a.set(i, true);
        }
        let b = AtomicBits::new(len);
        for blk in 0..AtomicBits::disk_blocks(len) {
            assert!(b.merge_block(blk, &a.encode_block(blk, &[])));
        }
        assert_eq!(a.ones().collect::<Vec<_>>(), b.ones().collect::<Vec<_>>());
        let mut bad = a.encode_block(0, &[3]);
        assert!(AtomicBits::new(len).merge_block(0, &bad));
        bad[10] ^= 1;
        let c = AtomicBits::new(len);
        assert!(!c.merge_block(0, &bad));
        assert!(!c.merge_block(0, &bad[..100]));
        assert_eq!(c.count(), 0);
        assert!(!c.get(len + 5));
        assert!(!c.set(len + 5, true));
    }
}
