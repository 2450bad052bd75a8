//! Scatter-gather list descriptors (16 bytes), the data pointer of every
//! fabrics command.

use super::le::{array_at, u32_at, u64_at};

/// Descriptor type (upper nibble of the identifier byte).
pub mod kind {
    /// Data block.
    pub const DATA_BLOCK: u8 = 0x0;
    /// Segment.
    pub const SEGMENT: u8 = 0x2;
    /// Last segment.
    pub const LAST_SEGMENT: u8 = 0x3;
    /// Keyed data block (RDMA).
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// Transport data block (TCP).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
}

/// Descriptor sub type (lower nibble).
pub mod subtype {
    /// Address.
    pub const ADDRESS: u8 = 0x0;
    /// Offset into the in-capsule data.
    pub const OFFSET: u8 = 0x1;
    /// Transport specific (NVMe/TCP uses 0xA).
    pub const TRANSPORT_A: u8 = 0xa;
    /// RDMA: invalidate the key with the response.
    pub const INVALIDATE: u8 = 0xf;
}

/// One SGL descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    /// Address (or offset for in-capsule data).
    pub address: u64,
    /// Length in bytes (24 bits for keyed descriptors).
    pub length: u32,
    /// Remote key (keyed descriptors only).
    pub key: u32,
    /// Identifier byte: type in bits 7:4, sub type in bits 3:0.
    pub id: u8,
}

impl SglDescriptor {
    /// Decode 16 bytes.
    pub fn decode(b: &[u8; 16]) -> SglDescriptor {
        let id = b[15];
        if id >> 4 == kind::KEYED_DATA_BLOCK {
            let len: [u8; 4] = [b[8], b[9], b[10], 0];
            SglDescriptor {
                address: u64_at(b, 0),
                length: u32::from_le_bytes(len),
                key: u32_at(b, 11),
                id,
            }
        } else {
            SglDescriptor {
                address: u64_at(b, 0),
                length: u32_at(b, 8),
                key: 0,
                id,
            }
        }
    }

    /// Encode as 16 bytes.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.address.to_le_bytes());
        if self.kind() == kind::KEYED_DATA_BLOCK {
            b[8..11].copy_from_slice(&self.length.to_le_bytes()[..3]);
            b[11..15].copy_from_slice(&self.key.to_le_bytes());
        } else {
            b[8..12].copy_from_slice(&self.length.to_le_bytes());
        }
        b[15] = self.id;
        b
    }

    /// Descriptor type.
    pub fn kind(&self) -> u8 {
        self.id >> 4
    }

    /// Descriptor sub type.
    pub fn subtype(&self) -> u8 {
        self.id & 0xf
    }

    /// In-capsule data of `len` bytes at offset 0.
    pub fn in_capsule(len: u32) -> SglDescriptor {
        SglDescriptor {
            address: 0,
            length: len,
            key: 0,
            id: kind::DATA_BLOCK << 4 | subtype::OFFSET,
        }
    }

    /// NVMe/TCP: `len` bytes moved by R2T/H2CData or C2HData PDUs.
    pub fn transport_data_block(len: u32) -> SglDescriptor {
        SglDescriptor {
            address: 0,
            length: len,
            key: 0,
            id: kind::TRANSPORT_DATA_BLOCK << 4 | subtype::TRANSPORT_A,
        }
    }

    /// RDMA: a keyed data block at `address` with remote key `key`.
    pub fn keyed(address: u64, len: u32, key: u32, invalidate: bool) -> SglDescriptor {
        SglDescriptor {
            address,
            length: len & 0x00ff_ffff,
            key,
            id: kind::KEYED_DATA_BLOCK << 4
                | if invalidate {
                    subtype::INVALIDATE
                } else {
                    subtype::ADDRESS
                },
        }
    }

    /// Decode a list of descriptors (a segment) from bytes; `None` if the
    /// length is not a multiple of 16.
    pub fn decode_list(b: &[u8]) -> Option<Vec<SglDescriptor>> {
        if b.len() % 16 != 0 {
            return None;
        }
        Some(
            b.chunks_exact(16)
                .map(|c| SglDescriptor::decode(&array_at(c, 0)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_round_trip_keeps_24_bit_length_and_key() {
        let d = SglDescriptor::keyed(0x1122_3344_5566_7788, 0x12_3456, 0xdead_beef, true);
        let e = d.encode();
        assert_eq!(e[15], 0x4f);
        assert_eq!(SglDescriptor::decode(&e), d);
    }

    #[test]
    fn plain_round_trip() {
        for d in [
            SglDescriptor::in_capsule(4096),
            SglDescriptor::transport_data_block(1 << 20),
        ] {
            assert_eq!(SglDescriptor::decode(&d.encode()), d);
        }
        assert_eq!(SglDescriptor::in_capsule(1).id, 0x01);
        assert_eq!(SglDescriptor::transport_data_block(1).id, 0x5a);
        assert!(SglDescriptor::decode_list(&[0u8; 17]).is_none());
        assert_eq!(
            SglDescriptor::decode_list(&[0u8; 32]).map(|v| v.len()),
            Some(2)
        );
    }
}
