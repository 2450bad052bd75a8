//! Identify data structures (4096 bytes each): controller, namespace, active
//! namespace list and namespace identification descriptors.

use super::le::{
    array_at, put_bytes, put_nul_padded, put_padded, put_u16, put_u32, put_u64, string_at, u16_at,
    u32_at, u64_at,
};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// Controller type reported in Identify Controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerType {
    /// I/O controller.
    Io = 1,
    /// Discovery controller.
    Discovery = 2,
}

/// CMIC bits.
pub mod cmic {
    /// The subsystem may have more than one port.
    pub const MULTI_PORT: u8 = 1 << 0;
    /// The subsystem may have more than one controller.
    pub const MULTI_CONTROLLER: u8 = 1 << 1;
    /// Asymmetric namespace access reporting.
    pub const ANA: u8 = 1 << 3;
}

/// OAES bits (optional asynchronous events supported).
pub mod oaes {
    /// Namespace attribute notices.
    pub const NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
    /// ANA change notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Discovery log page change notices.
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;
}

/// ONCS bits (optional NVM commands supported).
pub mod oncs {
    /// Dataset Management.
    pub const DSM: u16 = 1 << 2;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u16 = 1 << 3;
}

/// The Identify Controller fields this project sets or reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI vendor ID.
    pub vid: u16,
    /// Serial number (20 ASCII characters).
    pub serial: String,
    /// Model number (40 ASCII characters).
    pub model: String,
    /// Firmware revision (8 ASCII characters).
    pub firmware: String,
    /// IEEE OUI.
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
    /// Maximum data transfer size: 2^mdts pages of 4 KiB (0 = unlimited).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version.
    pub version: u32,
    /// Optional asynchronous events supported.
    pub oaes: u32,
    /// Controller attributes.
    pub ctratt: u32,
    /// Controller type.
    pub cntrltype: u8,
    /// Optional admin command support.
    pub oacs: u16,
    /// Abort command limit (0's based).
    pub acl: u8,
    /// Asynchronous event request limit (0's based).
    pub aerl: u8,
    /// Firmware updates.
    pub frmw: u8,
    /// Log page attributes.
    pub lpa: u8,
    /// Error log page entries (0's based).
    pub elpe: u8,
    /// Warning composite temperature threshold (Kelvin).
    pub wctemp: u16,
    /// Critical composite temperature threshold (Kelvin).
    pub cctemp: u16,
    /// Keep alive support granularity, 100 ms units (0 = unsupported).
    pub kas: u16,
    /// ANA transition time in seconds.
    pub anatt: u8,
    /// ANA capabilities.
    pub anacap: u8,
    /// Largest ANA group ID.
    pub anagrpmax: u32,
    /// Number of ANA group IDs.
    pub nanagrpid: u32,
    /// SQ entry size (required and max, log2 nibbles).
    pub sqes: u8,
    /// CQ entry size.
    pub cqes: u8,
    /// Maximum outstanding commands.
    pub maxcmd: u16,
    /// Number of namespaces (largest valid NSID).
    pub nn: u32,
    /// Optional NVM command support.
    pub oncs: u16,
    /// Volatile write cache.
    pub vwc: u8,
    /// SGL support.
    pub sgls: u32,
    /// Maximum number of allowed namespaces.
    pub mnan: u32,
    /// Subsystem NQN.
    pub subnqn: String,
    /// I/O queue command capsule supported size, 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, 16-byte units.
    pub iorcsz: u32,
    /// In-capsule data offset, 16-byte units.
    pub icdoff: u16,
    /// Fabrics controller attributes.
    pub fcatt: u8,
    /// Maximum SGL data block descriptors.
    pub msdbd: u8,
}

impl IdentifyController {
    /// Encode as 4096 bytes (power state 0 described, the rest zero).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u16(&mut b, 0, self.vid);
        put_u16(&mut b, 2, self.vid);
        put_padded(&mut b, 4, 20, &self.serial);
        put_padded(&mut b, 24, 40, &self.model);
        put_padded(&mut b, 64, 8, &self.firmware);
        b[72] = 6; // recommended arbitration burst
        put_bytes(&mut b, 73, &self.ieee);
        b[76] = self.cmic;
        b[77] = self.mdts;
        put_u16(&mut b, 78, self.cntlid);
        put_u32(&mut b, 80, self.version);
        put_u32(&mut b, 92, self.oaes);
        put_u32(&mut b, 96, self.ctratt);
        b[111] = self.cntrltype;
        put_u16(&mut b, 256, self.oacs);
        b[258] = self.acl;
        b[259] = self.aerl;
        b[260] = self.frmw;
        b[261] = self.lpa;
        b[262] = self.elpe;
        put_u16(&mut b, 266, self.wctemp);
        put_u16(&mut b, 268, self.cctemp);
        put_u16(&mut b, 320, self.kas);
        b[342] = self.anatt;
        b[343] = self.anacap;
        put_u32(&mut b, 344, self.anagrpmax);
        put_u32(&mut b, 348, self.nanagrpid);
        b[512] = self.sqes;
        b[513] = self.cqes;
        put_u16(&mut b, 514, self.maxcmd);
        put_u32(&mut b, 516, self.nn);
        put_u16(&mut b, 520, self.oncs);
        b[525] = self.vwc;
        put_u32(&mut b, 536, self.sgls);
        put_u32(&mut b, 540, self.mnan);
        put_nul_padded(&mut b, 768, 256, &self.subnqn);
        put_u32(&mut b, 1792, self.ioccsz);
        put_u32(&mut b, 1796, self.iorcsz);
        put_u16(&mut b, 1800, self.icdoff);
        b[1802] = self.fcatt;
        b[1803] = self.msdbd;
        // Power state 0: 25 W, entry and exit latency not reported.
        put_u16(&mut b, 2048, 2500);
        b
    }

    /// Decode (missing bytes read as zero).
    pub fn decode(b: &[u8]) -> IdentifyController {
        IdentifyController {
            vid: u16_at(b, 0),
            serial: string_at(b, 4, 20),
            model: string_at(b, 24, 40),
            firmware: string_at(b, 64, 8),
            ieee: array_at(b, 73),
            cmic: b.get(76).copied().unwrap_or(0),
            mdts: b.get(77).copied().unwrap_or(0),
            cntlid: u16_at(b, 78),
            version: u32_at(b, 80),
            oaes: u32_at(b, 92),
            ctratt: u32_at(b, 96),
            cntrltype: b.get(111).copied().unwrap_or(0),
            oacs: u16_at(b, 256),
            acl: b.get(258).copied().unwrap_or(0),
            aerl: b.get(259).copied().unwrap_or(0),
            frmw: b.get(260).copied().unwrap_or(0),
            lpa: b.get(261).copied().unwrap_or(0),
            elpe: b.get(262).copied().unwrap_or(0),
            wctemp: u16_at(b, 266),
            cctemp: u16_at(b, 268),
            kas: u16_at(b, 320),
            anatt: b.get(342).copied().unwrap_or(0),
            anacap: b.get(343).copied().unwrap_or(0),
            anagrpmax: u32_at(b, 344),
            nanagrpid: u32_at(b, 348),
            sqes: b.get(512).copied().unwrap_or(0),
            cqes: b.get(513).copied().unwrap_or(0),
            maxcmd: u16_at(b, 514),
            nn: u32_at(b, 516),
            oncs: u16_at(b, 520),
            vwc: b.get(525).copied().unwrap_or(0),
            sgls: u32_at(b, 536),
            mnan: u32_at(b, 540),
            subnqn: string_at(b, 768, 256),
            ioccsz: u32_at(b, 1792),
            iorcsz: u32_at(b, 1796),
            icdoff: u16_at(b, 1800),
            fcatt: b.get(1802).copied().unwrap_or(0),
            msdbd: b.get(1803).copied().unwrap_or(0),
        }
    }

    /// The maximum data transfer in bytes (`None` = unlimited).
    pub fn max_transfer_bytes(&self) -> Option<u64> {
        (self.mdts != 0).then(|| 4096u64 << self.mdts.min(40))
    }
}

/// NSFEAT bit: thin provisioning.
pub const NSFEAT_THIN: u8 = 1 << 0;
/// NSFEAT bit: NPWG, NPWA, NPDG, NPDA and NOWS are valid.
pub const NSFEAT_OPTPERF: u8 = 1 << 4;
/// NMIC bit: the namespace may be attached to several controllers.
pub const NMIC_SHARED: u8 = 1 << 0;

/// The Identify Namespace fields this project sets or reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in blocks.
    pub nsze: u64,
    /// Namespace capacity in blocks.
    pub ncap: u64,
    /// Namespace utilization in blocks.
    pub nuse: u64,
    /// Namespace features.
    pub nsfeat: u8,
    /// Multi-path I/O and sharing capabilities.
    pub nmic: u8,
    /// Deallocate logical block features.
    pub dlfeat: u8,
    /// Preferred write granularity (0's based, blocks).
    pub npwg: u16,
    /// Optimal write size (0's based, blocks).
    pub nows: u16,
    /// ANA group ID.
    pub anagrpid: u32,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// Log2 of the block size (format 0, the only one).
    pub lbads: u8,
}

impl IdentifyNamespace {
    /// Encode as 4096 bytes: one LBA format, no metadata.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u64(&mut b, 0, self.nsze);
        put_u64(&mut b, 8, self.ncap);
        put_u64(&mut b, 16, self.nuse);
        b[24] = self.nsfeat;
        b[25] = 0; // one LBA format
        b[26] = 0; // format 0 in use
        b[30] = self.nmic;
        b[33] = self.dlfeat;
        put_u16(&mut b, 64, self.npwg);
        put_u16(&mut b, 72, self.nows);
        put_u32(&mut b, 92, self.anagrpid);
        put_bytes(&mut b, 104, &self.nguid);
        put_bytes(&mut b, 120, &self.eui64);
        b[128 + 2] = self.lbads;
        b
    }

    /// Decode (the block size of the format in use).
    pub fn decode(b: &[u8]) -> IdentifyNamespace {
        let flbas = b.get(26).copied().unwrap_or(0);
        let format = (flbas & 0xf) as usize | ((flbas as usize >> 5) & 3) << 4;
        IdentifyNamespace {
            nsze: u64_at(b, 0),
            ncap: u64_at(b, 8),
            nuse: u64_at(b, 16),
            nsfeat: b.get(24).copied().unwrap_or(0),
            nmic: b.get(30).copied().unwrap_or(0),
            dlfeat: b.get(33).copied().unwrap_or(0),
            npwg: u16_at(b, 64),
            nows: u16_at(b, 72),
            anagrpid: u32_at(b, 92),
            nguid: array_at(b, 104),
            eui64: array_at(b, 120),
            lbads: b.get(128 + 4 * format + 2).copied().unwrap_or(0),
        }
    }

    /// Block size in bytes (0 if the format is invalid).
    pub fn block_size(&self) -> u32 {
        if (9..=16).contains(&self.lbads) {
            1 << self.lbads
        } else {
            0
        }
    }
}

/// Encode an active namespace ID list (up to 1024 IDs).
pub fn encode_nsid_list(ids: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    for (i, id) in ids.into_iter().take(IDENTIFY_LEN / 4).enumerate() {
        put_u32(&mut b, 4 * i, id);
    }
    b
}

/// Decode an active namespace ID list (stops at the first zero).
pub fn decode_nsid_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32_at(c, 0))
        .take_while(|&id| id != 0)
        .collect()
}

/// Namespace identification descriptor types.
pub mod nidt {
    /// IEEE EUI-64 (8 bytes).
    pub const EUI64: u8 = 1;
    /// NGUID (16 bytes).
    pub const NGUID: u8 = 2;
    /// UUID (16 bytes).
    pub const UUID: u8 = 3;
    /// Command set identifier (1 byte).
    pub const CSI: u8 = 4;
}

/// One namespace identification descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceDescriptor {
    /// Type (see [`nidt`]).
    pub nidt: u8,
    /// Identifier bytes.
    pub nid: Vec<u8>,
}

/// Encode a namespace identification descriptor list.
pub fn encode_descriptors(descs: &[NamespaceDescriptor]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut off = 0;
    for d in descs {
        if off + 4 + d.nid.len() > IDENTIFY_LEN {
            break;
        }
        b[off] = d.nidt;
        b[off + 1] = d.nid.len() as u8;
        put_bytes(&mut b, off + 4, &d.nid);
        off += 4 + d.nid.len();
    }
    b
}

/// Decode a namespace identification descriptor list.
pub fn decode_descriptors(b: &[u8]) -> Vec<NamespaceDescriptor> {
    let mut out = Vec::new();
    let mut off = 0;
    while let (Some(&nidt), Some(&nidl)) = (b.get(off), b.get(off + 1)) {
        if nidt == 0 || nidl == 0 {
            break;
        }
        let Some(nid) = b.get(off + 4..off + 4 + nidl as usize) else {
            break;
        };
        out.push(NamespaceDescriptor {
            nidt,
            nid: nid.to_vec(),
        });
        off += 4 + nidl as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_round_trip_and_offsets() {
        let id = IdentifyController {
            serial: "SN1".into(),
            model: "fabric".into(),
            firmware: "0.1".into(),
            cmic: cmic::ANA | cmic::MULTI_CONTROLLER,
            mdts: 5,
            cntlid: 7,
            kas: 10,
            anagrpmax: 32,
            nanagrpid: 32,
            sqes: 0x66,
            cqes: 0x44,
            nn: 1024,
            subnqn: "nqn.x".into(),
            ioccsz: 260,
            iorcsz: 1,
            sgls: 1 | 1 << 20,
            cntrltype: ControllerType::Io as u8,
            ..Default::default()
        };
        let b = id.encode();
        assert_eq!(b.len(), IDENTIFY_LEN);
        assert_eq!(u16_at(&b, 78), 7);
        assert_eq!(b[512], 0x66);
        assert_eq!(IdentifyController::decode(&b), id);
        assert_eq!(id.max_transfer_bytes(), Some(128 * 1024));
    }

    #[test]
    fn namespace_round_trip() {
        let ns = IdentifyNamespace {
            nsze: 1 << 20,
            ncap: 1 << 20,
            nuse: 1 << 20,
            nmic: NMIC_SHARED,
            anagrpid: 1,
            nguid: [9; 16],
            lbads: 12,
            ..Default::default()
        };
        let d = IdentifyNamespace::decode(&ns.encode());
        assert_eq!(d, ns);
        assert_eq!(d.block_size(), 4096);
    }

    #[test]
    fn lists_round_trip_and_bad_descriptors_stop() {
        assert_eq!(
            decode_nsid_list(&encode_nsid_list([1, 2, 7])),
            vec![1, 2, 7]
        );
        let descs = vec![
            NamespaceDescriptor {
                nidt: nidt::NGUID,
                nid: vec![1; 16],
            },
            NamespaceDescriptor {
                nidt: nidt::UUID,
                nid: vec![2; 16],
            },
            NamespaceDescriptor {
                nidt: nidt::CSI,
                nid: vec![0],
            },
        ];
        assert_eq!(decode_descriptors(&encode_descriptors(&descs)), descs);
        // A length running past the end stops decoding instead of panicking.
        assert!(decode_descriptors(&[2, 200, 0, 0, 1]).is_empty());
    }
}
