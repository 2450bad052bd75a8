//! The 64-byte submission queue entry.

use super::le::{u32_at, u64_at};
use super::sgl::SglDescriptor;

/// Size of a submission queue entry.
pub const SQE_SIZE: usize = 64;

/// PSDT value (flags bits 7:6) selecting SGLs for the data pointer.
pub const PSDT_SGL: u8 = 0x40;

/// A submission queue entry, decoded into its dwords.
///
/// Command families read their fields through helpers (`cdw10` etc.); the
/// fabrics command type lives in byte 4, where other commands keep the NSID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Opcode.
    pub opcode: u8,
    /// Flags: FUSE in bits 1:0, PSDT in bits 7:6.
    pub flags: u8,
    /// Command identifier.
    pub cid: u16,
    /// Namespace ID (for fabrics commands, byte 0 is FCTYPE).
    pub nsid: u32,
    /// Dword 2.
    pub cdw2: u32,
    /// Dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: one SGL descriptor.
    pub dptr: SglDescriptor,
    /// Dword 10.
    pub cdw10: u32,
    /// Dword 11.
    pub cdw11: u32,
    /// Dword 12.
    pub cdw12: u32,
    /// Dword 13.
    pub cdw13: u32,
    /// Dword 14.
    pub cdw14: u32,
    /// Dword 15.
    pub cdw15: u32,
}

impl Command {
    /// Decode a submission queue entry.
    pub fn decode(b: &[u8; SQE_SIZE]) -> Command {
        Command {
            opcode: b[0],
            flags: b[1],
            cid: u16::from_le_bytes([b[2], b[3]]),
            nsid: u32_at(b, 4),
            cdw2: u32_at(b, 8),
            cdw3: u32_at(b, 12),
            mptr: u64_at(b, 16),
            dptr: SglDescriptor::decode(&super::le::array_at(b, 24)),
            cdw10: u32_at(b, 40),
            cdw11: u32_at(b, 44),
            cdw12: u32_at(b, 48),
            cdw13: u32_at(b, 52),
            cdw14: u32_at(b, 56),
            cdw15: u32_at(b, 60),
        }
    }

    /// Encode as 64 bytes.
    pub fn encode(&self) -> [u8; SQE_SIZE] {
        let mut b = [0u8; SQE_SIZE];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[8..12].copy_from_slice(&self.cdw2.to_le_bytes());
        b[12..16].copy_from_slice(&self.cdw3.to_le_bytes());
        b[16..24].copy_from_slice(&self.mptr.to_le_bytes());
        b[24..40].copy_from_slice(&self.dptr.encode());
        for (i, dw) in [
            self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15,
        ]
        .iter()
        .enumerate()
        {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&dw.to_le_bytes());
        }
        b
    }

    /// A command with this opcode, SGL data pointer flags and nothing else.
    pub fn new(opcode: u8) -> Command {
        Command {
            opcode,
            flags: PSDT_SGL,
            ..Default::default()
        }
    }

    /// The fabrics command type (byte 4).
    pub fn fctype(&self) -> u8 {
        self.nsid as u8
    }

    /// FUSE bits.
    pub fn fuse(&self) -> u8 {
        self.flags & 3
    }

    /// PSDT bits (data pointer type), still in bits 7:6.
    pub fn psdt(&self) -> u8 {
        self.flags & 0xc0
    }

    /// Starting LBA of a read/write/write-zeroes command (CDW10-11).
    pub fn slba(&self) -> u64 {
        self.cdw10 as u64 | (self.cdw11 as u64) << 32
    }

    /// Number of logical blocks of a read/write/write-zeroes command (1-based).
    pub fn nlb(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }

    /// Force Unit Access bit of a read/write command.
    pub fn fua(&self) -> bool {
        self.cdw12 & (1 << 30) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = Command {
            opcode: 0x02,
            flags: PSDT_SGL,
            cid: 0xbeef,
            nsid: 1,
            cdw10: 0x1000,
            cdw11: 0x2,
            cdw12: 7 | 1 << 30,
            dptr: SglDescriptor::transport_data_block(4096),
            ..Default::default()
        };
        let d = Command::decode(&c.encode());
        assert_eq!(d, c);
        assert_eq!(d.slba(), 0x2_0000_1000);
        assert_eq!(d.nlb(), 8);
        assert!(d.fua());
    }
}
