//! The raid1 member superblock and the member layout.
//!
//! Every member starts with the same layout:
//!
//! ```text
//! byte 0            superblock, copy 0 (4 KiB)
//! byte 4096         superblock, copy 1 (4 KiB; arrays of version 3 on)
//! byte 8192         write-intent bitmap (whole 4 KiB blocks, see bits.rs;
//!                   at byte 4096 in arrays of versions 1 and 2)
//! data_offset       array data (aligned to 1 MiB)
//! ```
//!
//! Two copies, because a 4 KiB write is not atomic on a disk with 512-byte
//! sectors: a power cut in a commit can leave a copy half old, half new,
//! and its checksum fails. Commits to a member alternate between the
//! copies (copy = write sequence mod 2), so the copy not being written
//! always holds the member's previous commit; a reader takes the valid
//! copy with the higher write sequence. Arrays made before version 3 keep
//! their one copy (their bitmap starts where copy 1 would be).
//!
//! Superblock, all integers little-endian:
//!
//! ```text
//!   0  magic "FABRAID1"           8
//!   8  version (1)                u32
//!  12  member index (slot)        u32
//!  16  array UUID                 16
//!  32  member UUID                16
//!  48  event counter              u64
//!  56  block size                 u32
//!  60  number of slots            u32
//!  64  region bytes               u64
//!  72  data offset (blocks)       u64
//!  80  data blocks (array size)   u64
//!  88  slot table: per slot 24 bytes = member UUID (16), state (u8), 7 zero
//! 472  resync checkpoints (version 2): per slot u64, see below
//! 600  write sequence of this member (version 3): u64, see above
//! 4092 CRC32C of bytes 0..4092
//! ```
//!
//! The event counter goes up on every membership change (a failure, a
//! member added, a resync finished). The superblock with the highest count
//! is the truth about the slot table; a member whose own count is lower
//! missed changes and is stale. The member UUID in the slot table tells a
//! returning member (bitmap resync) from an unrelated or replaced disk.
//!
//! A resync checkpoint `c` of a rebuilding slot says that regions `0..c`
//! were copied to its member and made durable there before `c` was
//! written, so a rebuild interrupted by a crash or a stop copies only the
//! regions from `c` on, plus the regions dirty in the bitmap (which keeps
//! every region written since the array became degraded). Version 1
//! superblocks (no checkpoints) are read as checkpoint 0.

use crate::bits::{AtomicBits, BITMAP_BLOCK};
use crate::buf;
use crate::device::{BlockDevice, BlockError, BlockResult};
use crate::le::{put, u32_at, u64_at};

/// Bytes of one superblock copy.
pub const SB_BYTES: usize = 4096;
/// Most members an array can have.
pub const MAX_MEMBERS: usize = 16;
const MAGIC: &[u8; 8] = b"FABRAID1";
const VERSION: u32 = 3;
/// The first version with two superblock copies.
const TWO_COPIES: u32 = 3;
const SLOTS_AT: usize = 88;
const SLOT_BYTES: usize = 24;
const CHECKPOINTS_AT: usize = SLOTS_AT + MAX_MEMBERS * SLOT_BYTES;
const SEQ_AT: usize = CHECKPOINTS_AT + MAX_MEMBERS * 8;
const CRC_AT: usize = SB_BYTES - 4;
const DATA_ALIGN: u64 = 1 << 20;
/// Most bitmap regions of an array: the write-intent state in memory is
/// about 4 bytes per region (64 MiB at this bound; 64 TiB members at the
/// default region size).
pub const MAX_REGIONS: u64 = 1 << 24;

/// Persisted state of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No member.
    Empty = 0,
    /// Holds the same data as every other in-sync member.
    InSync = 1,
    /// Missed writes: needs the dirty regions of the bitmap copied.
    Stale = 2,
    /// A replacement: needs every region copied.
    Rebuilding = 3,
}

/// One entry of the slot table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// UUID of the member disk that owns the slot.
    pub uuid: [u8; 16],
    /// Its state.
    pub state: SlotState,
    /// While rebuilding: regions below this were already copied to the
    /// member (see the module notes); 0 otherwise.
    pub resync_from: u64,
}

/// Geometry shared by every member of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Block size of members and array.
    pub block_size: u32,
    /// Bytes per bitmap region.
    pub region_bytes: u64,
    /// First member block of array data.
    pub data_offset: u64,
    /// Array size in blocks.
    pub data_blocks: u64,
    /// Superblock copies on each member: 2, or 1 in arrays made before
    /// version 3.
    pub superblock_copies: u32,
}

impl Geometry {
    /// Lay out members of `member_blocks` blocks.
    pub fn plan(block_size: u32, member_blocks: u64, region_bytes: u64) -> BlockResult<Geometry> {
        if !block_size.is_power_of_two() || !(512..=4096).contains(&block_size) {
            return Err(BlockError::Unsupported(format!(
                "raid1 member block size {block_size} must be 512..4096"
            )));
        }
        if !region_bytes.is_power_of_two() || region_bytes < block_size as u64 {
            return Err(BlockError::Unsupported(format!(
                "region size {region_bytes} must be a power of two of at least one block"
            )));
        }
        let bs = block_size as u64;
        let member_bytes = member_blocks.checked_mul(bs).ok_or_else(|| {
            BlockError::Unsupported(format!("member of {member_blocks} blocks is too large"))
        })?;
        if member_bytes.div_ceil(region_bytes) > MAX_REGIONS {
            return Err(BlockError::Unsupported(format!(
                "region size {region_bytes} is too small for a member of {member_bytes} bytes \
                 (at most {MAX_REGIONS} regions)"
            )));
        }
        let bitmap_bytes =
            AtomicBits::disk_blocks(member_bytes.div_ceil(region_bytes)) * BITMAP_BLOCK as u64;
        let copies = 2;
        let data_offset_bytes =
            (copies as u64 * SB_BYTES as u64 + bitmap_bytes).next_multiple_of(DATA_ALIGN);
        if member_bytes <= data_offset_bytes {
            return Err(BlockError::Unsupported(format!(
                "member of {member_bytes} bytes is too small for raid1 metadata"
            )));
        }
        Ok(Geometry {
            block_size,
            region_bytes,
            data_offset: data_offset_bytes / bs,
            data_blocks: (member_bytes - data_offset_bytes) / bs,
            superblock_copies: copies,
        })
    }

    /// Blocks per region (both are powers of two, checked in `plan`).
    pub fn region_blocks(&self) -> u64 {
        self.region_bytes >> self.block_size.trailing_zeros()
    }

    /// The region of array block `lba`.
    pub fn region_of(&self, lba: u64) -> u64 {
        crate::split::div_rem_pow2(lba, self.region_blocks()).0
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.data_blocks.div_ceil(self.region_blocks())
    }

    /// Member block where on-disk bitmap block `i` lives.
    pub fn bitmap_lba(&self, i: u64) -> u64 {
        (self.superblock_copies as u64 * SB_BYTES as u64 + i * BITMAP_BLOCK as u64)
            / self.block_size as u64
    }

    /// Member block where the superblock of write sequence `seq` goes.
    pub fn superblock_lba(&self, seq: u64) -> u64 {
        let copy = seq % self.superblock_copies.max(1) as u64;
        copy * SB_BYTES as u64 / self.block_size as u64
    }

    /// Number of on-disk bitmap blocks.
    pub fn bitmap_blocks(&self) -> u64 {
        AtomicBits::disk_blocks(self.regions())
    }
}

/// A decoded member superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// The array this member belongs to.
    pub array_uuid: [u8; 16],
    /// This member disk.
    pub member_uuid: [u8; 16],
    /// This member's slot.
    pub member_index: u32,
    /// Event counter when written.
    pub events: u64,
    /// Array geometry.
    pub geometry: Geometry,
    /// The slot table.
    pub slots: Vec<Slot>,
    /// Superblock writes to this member before this one (version 3; 0
    /// before): it went to copy `seq % 2`.
    pub seq: u64,
}

fn corrupt(why: impl std::fmt::Display) -> BlockError {
    BlockError::Medium(format!("raid1 superblock: {why}"))
}

fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

impl Superblock {
    /// Encode into a `SB_BYTES` buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SB_BYTES];
        let g = &self.geometry;
        put(&mut b, 0, MAGIC);
        let version = if g.superblock_copies >= 2 { VERSION } else { 2 };
        put(&mut b, 8, &version.to_le_bytes());
        put(&mut b, 12, &self.member_index.to_le_bytes());
        put(&mut b, 16, &self.array_uuid);
        put(&mut b, 32, &self.member_uuid);
        put(&mut b, 48, &self.events.to_le_bytes());
        put(&mut b, 56, &g.block_size.to_le_bytes());
        put(&mut b, 60, &(self.slots.len() as u32).to_le_bytes());
        put(&mut b, 64, &g.region_bytes.to_le_bytes());
        put(&mut b, 72, &g.data_offset.to_le_bytes());
        put(&mut b, 80, &g.data_blocks.to_le_bytes());
        for (i, s) in self.slots.iter().enumerate() {
            let at = SLOTS_AT + i * SLOT_BYTES;
            put(&mut b, at, &s.uuid);
            b[at + 16] = s.state as u8;
            put(&mut b, CHECKPOINTS_AT + i * 8, &s.resync_from.to_le_bytes());
        }
        if version >= TWO_COPIES {
            put(&mut b, SEQ_AT, &self.seq.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        put(&mut b, CRC_AT, &crc.to_le_bytes());
        b
    }

    /// Decode and validate; anything malformed is a clear error.
    pub fn decode(b: &[u8]) -> BlockResult<Superblock> {
        if b.len() < SB_BYTES {
            return Err(corrupt("short read"));
        }
        if &b[0..8] != MAGIC {
            return Err(corrupt("no raid1 magic (not a member)"));
        }
        if crc32c::crc32c(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
            return Err(corrupt("checksum mismatch"));
        }
        let version = u32_at(b, 8);
        if !(1..=VERSION).contains(&version) {
            return Err(corrupt(format!("unsupported version {version}")));
        }
        let nslots = u32_at(b, 60) as usize;
        if nslots == 0 || nslots > MAX_MEMBERS {
            return Err(corrupt(format!("bad slot count {nslots}")));
        }
        let member_index = u32_at(b, 12);
        if member_index as usize >= nslots {
            return Err(corrupt(format!(
                "member index {member_index} >= {nslots} slots"
            )));
        }
        let mut slots = Vec::with_capacity(nslots);
        for i in 0..nslots {
            let at = SLOTS_AT + i * SLOT_BYTES;
            let state = match b[at + 16] {
                0 => SlotState::Empty,
                1 => SlotState::InSync,
                2 => SlotState::Stale,
                3 => SlotState::Rebuilding,
                x => return Err(corrupt(format!("slot {i} has bad state {x}"))),
            };
            let resync_from = if version >= 2 {
                u64_at(b, CHECKPOINTS_AT + i * 8)
            } else {
                0
            };
            slots.push(Slot {
                uuid: uuid_at(b, at),
                state,
                resync_from,
            });
        }
        let geometry = Geometry {
            block_size: u32_at(b, 56),
            region_bytes: u64_at(b, 64),
            data_offset: u64_at(b, 72),
            data_blocks: u64_at(b, 80),
            superblock_copies: if version >= TWO_COPIES { 2 } else { 1 },
        };
        let bs = geometry.block_size;
        if !bs.is_power_of_two() || !(512..=4096).contains(&bs) {
            return Err(corrupt(format!("bad block size {bs}")));
        }
        let rb = geometry.region_bytes;
        if !rb.is_power_of_two() || rb < bs as u64 {
            return Err(corrupt(format!("bad region size {rb}")));
        }
        if geometry.data_blocks == 0 {
            return Err(corrupt("empty array"));
        }
        // The array's end, in blocks and in bytes, must be representable,
        // and its write-intent state of a bounded size.
        let end = geometry.data_offset.checked_add(geometry.data_blocks);
        if end.and_then(|e| e.checked_mul(bs as u64)).is_none() {
            return Err(corrupt("array larger than any device"));
        }
        if geometry.regions() > MAX_REGIONS {
            return Err(corrupt(format!(
                "{} regions (at most {MAX_REGIONS})",
                geometry.regions()
            )));
        }
        if geometry.data_offset < geometry.bitmap_lba(geometry.bitmap_blocks()) {
            return Err(corrupt("data offset overlaps the bitmap"));
        }
        let seq = if version >= TWO_COPIES {
            u64_at(b, SEQ_AT)
        } else {
            0
        };
        // The next write takes `seq + 1`.
        if seq == u64::MAX {
            return Err(corrupt("write sequence at its end"));
        }
        if let Some(i) = slots
            .iter()
            .position(|s| s.resync_from > geometry.regions())
        {
            return Err(corrupt(format!("slot {i}: resync checkpoint past the end")));
        }
        Ok(Superblock {
            array_uuid: uuid_at(b, 16),
            member_uuid: uuid_at(b, 32),
            member_index,
            events: u64_at(b, 48),
            geometry,
            slots,
            seq,
        })
    }
}

/// Read the superblock of `dev`: of two copies, the valid one written
/// last (a copy torn by a power cut is passed over); an error when no copy
/// is valid.
pub async fn read_newest<D: BlockDevice + ?Sized>(dev: &D) -> BlockResult<Superblock> {
    let bs = dev.block_size() as usize;
    let span = 2 * SB_BYTES;
    if bs > SB_BYTES || dev.num_blocks() < (span / bs) as u64 {
        return Err(BlockError::Unsupported(
            "device too small or block size too large for raid1".into(),
        ));
    }
    let both = dev.read(0, buf::alloc(span)).await?;
    let first = Superblock::decode(&both[..SB_BYTES]);
    if matches!(&first, Ok(sb) if sb.geometry.superblock_copies == 1) {
        return first;
    }
    // Where an array of two copies keeps its second one; an older array
    // keeps bitmap blocks there, which never decode as a superblock.
    let second = Superblock::decode(&both[SB_BYTES..span])
        .ok()
        .filter(|sb| sb.geometry.superblock_copies == 2);
    match (first, second) {
        (Ok(a), Some(b)) if b.seq > a.seq => Ok(b),
        (Ok(a), _) => Ok(a),
        (Err(_), Some(b)) => Ok(b),
        (Err(e), None) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            array_uuid: [1; 16],
            member_uuid: [2; 16],
            member_index: 1,
            events: 7,
            geometry: Geometry::plan(4096, 4096, 1 << 20).unwrap(),
            slots: vec![
                Slot {
                    uuid: [3; 16],
                    state: SlotState::InSync,
                    resync_from: 0,
                },
                Slot {
                    uuid: [2; 16],
                    state: SlotState::Rebuilding,
                    resync_from: 9,
                },
            ],
            seq: 5,
        }
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let sb = sample();
        assert_eq!(sb.geometry.data_offset, 256);
        assert_eq!(sb.geometry.data_blocks, 4096 - 256);
        let bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes).unwrap(), sb);
        for at in [0, 9, 60, 100, 4000] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(Superblock::decode(&bad).is_err(), "flip at {at}");
        }
        assert!(Superblock::decode(&bytes[..100]).is_err());
        assert!(Superblock::decode(&[0u8; SB_BYTES]).is_err());
        // A well-checksummed superblock with a nonsense field is refused too.
        let mut s = sample();
        s.member_index = 5;
        assert!(Superblock::decode(&s.encode()).is_err());
        let mut s = sample();
        s.geometry.data_offset = 0;
        assert!(Superblock::decode(&s.encode()).is_err());
        let mut s = sample();
        s.slots[1].resync_from = s.geometry.regions() + 1;
        assert!(Superblock::decode(&s.encode()).is_err());
        let mut s = sample();
        s.seq = u64::MAX;
        assert!(Superblock::decode(&s.encode()).is_err(), "no next sequence");
    }

    #[test]
    fn geometry_past_any_device_or_the_region_bound_is_refused() {
        // The array's end overflows; then a size in reach but with more
        // regions than the in-memory state may hold (512-byte regions).
        for (region_bytes, data_offset, data_blocks) in
            [(1 << 20, 256, u64::MAX - 100), (512, 1 << 30, 1 << 40)]
        {
            let mut s = sample();
            s.geometry.block_size = 512;
            s.geometry.region_bytes = region_bytes;
            s.geometry.data_offset = data_offset;
            s.geometry.data_blocks = data_blocks;
            s.slots[1].resync_from = 0;
            let err = Superblock::decode(&s.encode()).unwrap_err();
            assert!(matches!(err, BlockError::Medium(_)), "{err}");
        }
        // Creating one is refused the same way.
        assert!(Geometry::plan(512, 1 << 40, 512).is_err());
        assert!(Geometry::plan(4096, u64::MAX, 1 << 20).is_err());
        assert!(Geometry::plan(4096, 1 << 30, 4 << 20).is_ok());
    }

    #[test]
    fn version_1_reads_as_no_checkpoint() {
        let mut b = sample().encode();
        put(&mut b, 8, &1u32.to_le_bytes());
        // Whatever version 1 left in the checkpoint area is not read.
        put(&mut b, CHECKPOINTS_AT, &u64::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        put(&mut b, CRC_AT, &crc.to_le_bytes());
        let sb = Superblock::decode(&b).unwrap();
        assert!(sb.slots.iter().all(|s| s.resync_from == 0));
        assert_eq!(sb.slots[1].state, SlotState::Rebuilding);
        assert_eq!((sb.geometry.superblock_copies, sb.seq), (1, 0));
        put(&mut b, 8, &4u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        put(&mut b, CRC_AT, &crc.to_le_bytes());
        assert!(
            Superblock::decode(&b).is_err(),
            "a future version is refused"
        );
    }

    #[test]
    fn arrays_before_version_3_keep_one_copy_and_their_bitmap_place() {
        let mut sb = sample();
        assert_eq!(sb.geometry.superblock_copies, 2);
        assert_eq!(sb.geometry.bitmap_lba(0), 2);
        assert_eq!(
            (sb.geometry.superblock_lba(6), sb.geometry.superblock_lba(7)),
            (0, 1)
        );
        sb.geometry.superblock_copies = 1;
        let b = sb.encode();
        assert_eq!(u32_at(&b, 8), 2, "written as version 2");
        let back = Superblock::decode(&b).unwrap();
        assert_eq!((back.geometry, back.seq), (sb.geometry, 0));
        assert_eq!(back.geometry.bitmap_lba(0), 1);
        assert_eq!(back.geometry.superblock_lba(7), 0);
    }
}
