//! The 16-byte completion queue entry.

use super::le::{u16_at, u32_at};
use super::status::Status;

/// Size of a completion queue entry.
pub const CQE_SIZE: usize = 16;

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Command specific result, dword 0.
    pub result: u32,
    /// Command specific result, dword 1.
    pub result_hi: u32,
    /// Submission queue head pointer.
    pub sq_head: u16,
    /// Submission queue identifier.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Status.
    pub status: Status,
}

impl Completion {
    /// A completion of command `cid` with `status` and no result.
    pub fn new(cid: u16, status: Status) -> Completion {
        Completion {
            result: 0,
            result_hi: 0,
            sq_head: 0,
            sq_id: 0,
            cid,
            status,
        }
    }

    /// A successful completion with a 32-bit result.
    pub fn success(cid: u16, result: u32) -> Completion {
        Completion {
            result,
            ..Completion::new(cid, Status::SUCCESS)
        }
    }

    /// The 64-bit result (dwords 0 and 1), used by Property Get.
    pub fn result64(&self) -> u64 {
        self.result as u64 | (self.result_hi as u64) << 32
    }

    /// Decode 16 bytes.
    pub fn decode(b: &[u8; CQE_SIZE]) -> Completion {
        Completion {
            result: u32_at(b, 0),
            result_hi: u32_at(b, 4),
            sq_head: u16_at(b, 8),
            sq_id: u16_at(b, 10),
            cid: u16_at(b, 12),
            status: Status::from_cqe_field(u16_at(b, 14)),
        }
    }

    /// Encode as 16 bytes (phase tag 0: fabrics do not use it).
    pub fn encode(&self) -> [u8; CQE_SIZE] {
        let mut b = [0u8; CQE_SIZE];
        b[0..4].copy_from_slice(&self.result.to_le_bytes());
        b[4..8].copy_from_slice(&self.result_hi.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_cqe_field(false).to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = Completion {
            result: 1,
            result_hi: 2,
            sq_head: 3,
            sq_id: 4,
            cid: 5,
            status: Status::LBA_OUT_OF_RANGE,
        };
        assert_eq!(Completion::decode(&c.encode()), c);
        assert_eq!(c.result64(), 0x2_0000_0001);
    }
}
