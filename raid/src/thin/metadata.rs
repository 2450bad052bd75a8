//! On-disk format of the thin pool metadata device.
//!
//! The metadata device is an array of 4 KiB pages, little-endian throughout.
//!
//! * Pages 0 and 1 are the two superblock slots. A commit with transaction
//!   id `t` writes slot `t % 2`; open takes the valid slot with the higher
//!   id, so a torn superblock write falls back to the previous commit.
//! * Every other page is a mapping page (one node of a thin device's radix
//!   tree) or a device-table page, or free. Pages are never changed in place
//!   once committed (copy-on-write), so the tree a superblock points to
//!   stays intact until a later superblock no longer needs it.
//!
//! Superblock:
//!
//! ```text
//!    0 magic "FABTHIN1"          8
//!    8 version (1)               u32
//!   12 device block size         u32
//!   16 transaction id            u64
//!   24 thin block bytes          u64
//!   32 data blocks (pool size)   u64
//!   40 metadata pages            u64
//!   48 first device-table page   u64 (0 = no devices)
//!   56 number of thin devices    u64
//! 4092 CRC32C of bytes 0..4092
//! ```
//!
//! Page header (32 bytes), then the body:
//!
//! ```text
//!    0 magic "TPG1"              u32
//!    4 CRC32C of bytes 8..4096   u32
//!    8 page number               u64 (catches misdirected writes)
//!   16 kind (1 map, 2 devices)   u8
//!   17 level (map pages)         u8 (0 = leaf)
//!   18 entry count (devices)     u16
//!   20 zero                      u32
//!   24 next page (devices)       u64 (0 = last)
//! ```
//!
//! Map page body: [`FANOUT`] u64 entries. In a leaf, `0` is unmapped and
//! `n` maps to data block `n - 1`; above the leaves an entry is the page
//! number of a child (0 = none). Device-table body: up to
//! [`DEVS_PER_PAGE`] entries of 32 bytes: id u64, root page u64, size in
//! device blocks u64, tree levels u8, 7 zero bytes.

use crate::device::{BlockError, BlockResult};
use crate::le::{put, u16_at, u32_at, u64_at};

/// Bytes per metadata page.
pub const PAGE: usize = 4096;
const HEADER: usize = 32;
/// Entries per map page.
pub const FANOUT: u64 = ((PAGE - HEADER) / 8) as u64;
/// Device-table entries per page.
pub const DEVS_PER_PAGE: usize = (PAGE - HEADER) / 32;
/// Deepest tree allowed (FANOUT^5 blocks is far beyond any device).
pub const MAX_LEVELS: u8 = 5;
/// First page that is not a superblock.
pub const FIRST_PAGE: u64 = 2;

const SB_MAGIC: &[u8; 8] = b"FABTHIN1";
const PAGE_MAGIC: u32 = u32::from_le_bytes(*b"TPG1");
const VERSION: u32 = 1;
const KIND_MAP: u8 = 1;
const KIND_DEVS: u8 = 2;
const CRC_AT: usize = PAGE - 4;

/// Thrown at anything malformed read back from the metadata device.
pub fn corrupt(why: impl std::fmt::Display) -> BlockError {
    BlockError::Medium(format!("thin metadata: {why}"))
}

/// The pool superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Device block size of data and metadata devices.
    pub block_size: u32,
    /// Transaction id of this commit.
    pub txn: u64,
    /// Bytes per thin block.
    pub block_bytes: u64,
    /// Thin blocks in the data device at commit time.
    pub data_blocks: u64,
    /// Pages in the metadata device at commit time.
    pub meta_pages: u64,
    /// First device-table page (0 = none).
    pub devtable: u64,
    /// Number of thin devices.
    pub devices: u64,
}

impl Superblock {
    /// Encode into one page.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        put(&mut b, 0, SB_MAGIC);
        put(&mut b, 8, &VERSION.to_le_bytes());
        put(&mut b, 12, &self.block_size.to_le_bytes());
        put(&mut b, 16, &self.txn.to_le_bytes());
        put(&mut b, 24, &self.block_bytes.to_le_bytes());
        put(&mut b, 32, &self.data_blocks.to_le_bytes());
        put(&mut b, 40, &self.meta_pages.to_le_bytes());
        put(&mut b, 48, &self.devtable.to_le_bytes());
        put(&mut b, 56, &self.devices.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        put(&mut b, CRC_AT, &crc.to_le_bytes());
        b
    }

    /// Decode and validate one slot.
    pub fn decode(b: &[u8]) -> BlockResult<Superblock> {
        if b.len() < PAGE || &b[..8] != SB_MAGIC {
            return Err(corrupt("no thin pool superblock"));
        }
        if crc32c::crc32c(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
            return Err(corrupt("superblock checksum mismatch"));
        }
        if u32_at(b, 8) != VERSION {
            return Err(corrupt(format!("unsupported version {}", u32_at(b, 8))));
        }
        let sb = Superblock {
            block_size: u32_at(b, 12),
            txn: u64_at(b, 16),
            block_bytes: u64_at(b, 24),
            data_blocks: u64_at(b, 32),
            meta_pages: u64_at(b, 40),
            devtable: u64_at(b, 48),
            devices: u64_at(b, 56),
        };
        let bs = sb.block_size as u64;
        if !sb.block_size.is_power_of_two() || !(512..=PAGE as u64).contains(&bs) {
            return Err(corrupt(format!("bad block size {bs}")));
        }
        if !sb.block_bytes.is_power_of_two() || sb.block_bytes < bs {
            return Err(corrupt(format!("bad thin block size {}", sb.block_bytes)));
        }
        if sb.meta_pages <= FIRST_PAGE
            || (sb.devtable != 0 && !(FIRST_PAGE..sb.meta_pages).contains(&sb.devtable))
        {
            return Err(corrupt("bad metadata size or device table location"));
        }
        Ok(sb)
    }
}

/// A node of a thin device's mapping tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPage {
    /// 0 for leaves.
    pub level: u8,
    /// [`FANOUT`] entries.
    pub entries: Vec<u64>,
}

impl MapPage {
    /// An empty node.
    pub fn empty(level: u8) -> MapPage {
        MapPage {
            level,
            entries: vec![0; FANOUT as usize],
        }
    }
}

/// One thin device in the device table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevEntry {
    /// Device id (chosen by the caller).
    pub id: u64,
    /// Root page of its tree (0 = nothing mapped).
    pub root: u64,
    /// Size in device blocks.
    pub size: u64,
    /// Levels of its tree.
    pub levels: u8,
}

fn seal(b: &mut [u8], page_no: u64) {
    put(b, 0, &PAGE_MAGIC.to_le_bytes());
    put(b, 8, &page_no.to_le_bytes());
    let crc = crc32c::crc32c(&b[8..PAGE]);
    put(b, 4, &crc.to_le_bytes());
}

fn open_page(b: &[u8], page_no: u64, kind: u8) -> BlockResult<()> {
    if b.len() < PAGE || u32_at(b, 0) != PAGE_MAGIC {
        return Err(corrupt(format!("page {page_no}: bad magic")));
    }
    if crc32c::crc32c(&b[8..PAGE]) != u32_at(b, 4) {
        return Err(corrupt(format!("page {page_no}: checksum mismatch")));
    }
    if u64_at(b, 8) != page_no {
        return Err(corrupt(format!(
            "page {page_no}: holds page {}",
            u64_at(b, 8)
        )));
    }
    if b[16] != kind {
        return Err(corrupt(format!(
            "page {page_no}: kind {} where {kind} expected",
            b[16]
        )));
    }
    Ok(())
}

/// Encode a map page stored at `page_no`.
pub fn encode_map(page_no: u64, page: &MapPage) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    b[16] = KIND_MAP;
    b[17] = page.level;
    for (i, e) in page.entries.iter().enumerate() {
        put(&mut b, HEADER + i * 8, &e.to_le_bytes());
    }
    seal(&mut b, page_no);
    b
}

/// Decode the map page stored at `page_no`.
pub fn decode_map(page_no: u64, b: &[u8]) -> BlockResult<MapPage> {
    open_page(b, page_no, KIND_MAP)?;
    Ok(MapPage {
        level: b[17],
        entries: (0..FANOUT as usize)
            .map(|i| u64_at(b, HEADER + i * 8))
            .collect(),
    })
}

/// Encode a device-table page at `page_no` linking to `next`.
pub fn encode_devs(page_no: u64, devs: &[DevEntry], next: u64) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    b[16] = KIND_DEVS;
    put(&mut b, 18, &(devs.len() as u16).to_le_bytes());
    put(&mut b, 24, &next.to_le_bytes());
    for (i, d) in devs.iter().take(DEVS_PER_PAGE).enumerate() {
        let at = HEADER + i * 32;
        put(&mut b, at, &d.id.to_le_bytes());
        put(&mut b, at + 8, &d.root.to_le_bytes());
        put(&mut b, at + 16, &d.size.to_le_bytes());
        b[at + 24] = d.levels;
    }
    seal(&mut b, page_no);
    b
}

/// Decode a device-table page: its entries and the next page.
pub fn decode_devs(page_no: u64, b: &[u8]) -> BlockResult<(Vec<DevEntry>, u64)> {
    open_page(b, page_no, KIND_DEVS)?;
    let count = u16_at(b, 18) as usize;
    if count > DEVS_PER_PAGE {
        return Err(corrupt(format!("page {page_no}: {count} device entries")));
    }
    let devs = (0..count)
        .map(|i| {
            let at = HEADER + i * 32;
            DevEntry {
                id: u64_at(b, at),
                root: u64_at(b, at + 8),
                size: u64_at(b, at + 16),
                levels: b[at + 24],
            }
        })
        .collect();
    Ok((devs, u64_at(b, 24)))
}

/// Tree levels needed to address `vblocks` thin blocks.
pub fn levels_for(vblocks: u64) -> u8 {
    let mut levels = 1;
    let mut span = FANOUT;
    while span < vblocks && levels < MAX_LEVELS {
        span = span.saturating_mul(FANOUT);
        levels += 1;
    }
    levels
}

/// Thin blocks addressable by a tree of `levels` levels.
pub fn span(levels: u8) -> u64 {
    FANOUT.saturating_pow(levels as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_damage_is_caught() {
        let mut p = MapPage::empty(1);
        p.entries[0] = 7;
        p.entries[FANOUT as usize - 1] = 9;
        let b = encode_map(5, &p);
        assert_eq!(decode_map(5, &b).unwrap(), p);
        assert!(decode_map(6, &b).is_err(), "misdirected");
        assert!(decode_devs(5, &b).is_err(), "wrong kind");
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert!(decode_map(5, &bad).is_err());
        let devs = vec![DevEntry {
            id: 3,
            root: 5,
            size: 100,
            levels: 2,
        }];
        let b = encode_devs(8, &devs, 0);
        assert_eq!(decode_devs(8, &b).unwrap(), (devs, 0));
        let sb = Superblock {
            block_size: 4096,
            txn: 3,
            block_bytes: 1 << 20,
            data_blocks: 10,
            meta_pages: 64,
            devtable: 8,
            devices: 1,
        };
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        let mut s = sb.clone();
        s.devtable = 64;
        assert!(Superblock::decode(&s.encode()).is_err());
        assert!(Superblock::decode(&[0u8; 10]).is_err());
    }

    #[test]
    fn levels_cover_the_size() {
        assert_eq!(levels_for(1), 1);
        assert_eq!(levels_for(FANOUT), 1);
        assert_eq!(levels_for(FANOUT + 1), 2);
        assert_eq!(levels_for(u64::MAX), MAX_LEVELS);
        assert!(span(levels_for(1 << 30)) >= 1 << 30);
    }
}
