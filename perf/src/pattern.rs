//! The verify pattern: every logical block written carries its LBA, the run's
//! seed and pseudo-random filler derived from both, so a block read back
//! proves it is the right data at the right place.

/// Fill `buf`, which covers whole `block_size`-byte blocks from `lba`.
pub fn fill(buf: &mut [u8], lba: u64, block_size: usize, seed: u64) {
    for (i, block) in buf.chunks_mut(block_size).enumerate() {
        fill_block(block, lba + i as u64, seed);
    }
}

/// The number of `block_size`-byte blocks of `buf` (from `lba`) that do not
/// hold the pattern.
pub fn mismatched_blocks(buf: &[u8], lba: u64, block_size: usize, seed: u64) -> u64 {
    let mut expect = vec![0u8; block_size];
    buf.chunks(block_size)
        .enumerate()
        .filter(|(i, block)| {
            let want = &mut expect[..block.len()];
            fill_block(want, lba + *i as u64, seed);
            *block != want
        })
        .count() as u64
}

fn fill_block(block: &mut [u8], lba: u64, seed: u64) {
    let mut x = (lba ^ seed.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for (i, word) in block.chunks_mut(8).enumerate() {
        let v = match i {
            0 => lba,
            1 => seed,
            _ => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            }
        };
        let bytes = v.to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_pattern_verifies_and_damage_is_counted_per_block() {
        let mut buf = vec![0u8; 4 * 4096];
        fill(&mut buf, 100, 4096, 9);
        assert_eq!(mismatched_blocks(&buf, 100, 4096, 9), 0);
        assert_eq!(&buf[..8], &100u64.to_le_bytes());
        assert_eq!(&buf[4096..4104], &101u64.to_le_bytes());
        buf[5000] ^= 1;
        buf[3 * 4096 + 17] ^= 0x80;
        assert_eq!(mismatched_blocks(&buf, 100, 4096, 9), 2);
    }

    #[test]
    fn wrong_place_or_wrong_seed_or_zeroes_do_not_verify() {
        let mut buf = vec![0u8; 2 * 512];
        fill(&mut buf, 7, 512, 1);
        assert_eq!(mismatched_blocks(&buf, 8, 512, 1), 2);
        assert_eq!(mismatched_blocks(&buf, 7, 512, 2), 2);
        assert_eq!(mismatched_blocks(&[0u8; 1024], 7, 512, 1), 2);
    }
}
