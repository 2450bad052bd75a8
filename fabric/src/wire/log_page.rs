//! Log page formats: error information, SMART / health, firmware slot,
//! changed namespace list, commands supported and effects, asymmetric
//! namespace access (ANA) and discovery.

use super::command::Command;
use super::le::{
    put_bytes, put_nul_padded, put_u16, put_u32, put_u64, string_at, u16_at, u32_at, u64_at,
};
use super::opcode::admin;
use super::status::Status;

/// Get Log Page fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogPage {
    /// Log page identifier.
    pub lid: u8,
    /// Log specific field.
    pub lsp: u8,
    /// Retain asynchronous event.
    pub rae: bool,
    /// Number of bytes requested.
    pub len: u64,
    /// Byte offset into the log.
    pub offset: u64,
    /// Log specific identifier.
    pub lsi: u16,
}

impl GetLogPage {
    /// Read the fields of a Get Log Page command.
    pub fn from_command(c: &Command) -> GetLogPage {
        let numd = ((c.cdw10 >> 16) | (c.cdw11 & 0xffff) << 16) as u64 + 1;
        GetLogPage {
            lid: c.cdw10 as u8,
            lsp: ((c.cdw10 >> 8) & 0x7f) as u8,
            rae: c.cdw10 & (1 << 15) != 0,
            len: numd * 4,
            offset: c.cdw12 as u64 | (c.cdw13 as u64) << 32,
            lsi: (c.cdw11 >> 16) as u16,
        }
    }

    /// Build a Get Log Page command for `len` bytes (a multiple of 4, > 0).
    pub fn to_command(&self, cid: u16, nsid: u32) -> Command {
        let numd = (self.len / 4).saturating_sub(1) as u32;
        Command {
            cid,
            nsid,
            cdw10: self.lid as u32
                | ((self.lsp as u32) << 8)
                | (self.rae as u32) << 15
                | (numd & 0xffff) << 16,
            cdw11: numd >> 16 | (self.lsi as u32) << 16,
            cdw12: self.offset as u32,
            cdw13: (self.offset >> 32) as u32,
            ..Command::new(admin::GET_LOG_PAGE)
        }
    }
}

/// Size of one error information log entry.
pub const ERROR_ENTRY_LEN: usize = 64;

/// One error information log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorEntry {
    /// Error count (unique, increasing; 0 = empty entry).
    pub error_count: u64,
    /// Submission queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cid: u16,
    /// Status.
    pub status: Status,
    /// Parameter error location.
    pub param_location: u16,
    /// LBA.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
}

impl ErrorEntry {
    /// Encode as 64 bytes.
    pub fn encode(&self) -> [u8; ERROR_ENTRY_LEN] {
        let mut b = [0u8; ERROR_ENTRY_LEN];
        put_u64(&mut b, 0, self.error_count);
        put_u16(&mut b, 8, self.sqid);
        put_u16(&mut b, 10, self.cid);
        put_u16(&mut b, 12, self.status.to_cqe_field(false));
        put_u16(&mut b, 14, self.param_location);
        put_u64(&mut b, 16, self.lba);
        put_u32(&mut b, 24, self.nsid);
        b
    }

    /// Decode 64 bytes.
    pub fn decode(b: &[u8]) -> ErrorEntry {
        ErrorEntry {
            error_count: u64_at(b, 0),
            sqid: u16_at(b, 8),
            cid: u16_at(b, 10),
            status: Status::from_cqe_field(u16_at(b, 12)),
            param_location: u16_at(b, 14),
            lba: u64_at(b, 16),
            nsid: u32_at(b, 24),
        }
    }
}

/// Size of the SMART / health log.
pub const SMART_LEN: usize = 512;

/// SMART / health information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmartLog {
    /// Critical warning bits.
    pub critical_warning: u8,
    /// Composite temperature in Kelvin.
    pub temperature_k: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub spare_threshold: u8,
    /// Percentage used.
    pub percent_used: u8,
    /// Data units read (1000 x 512 bytes).
    pub data_units_read: u64,
    /// Data units written (1000 x 512 bytes).
    pub data_units_written: u64,
    /// Host read commands.
    pub host_reads: u64,
    /// Host write commands.
    pub host_writes: u64,
    /// Power cycles.
    pub power_cycles: u64,
    /// Power-on hours.
    pub power_on_hours: u64,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u64,
    /// Media and data integrity errors.
    pub media_errors: u64,
    /// Number of error information log entries.
    pub error_log_entries: u64,
}

impl SmartLog {
    /// Encode as 512 bytes (128-bit counters with the high half zero).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SMART_LEN];
        b[0] = self.critical_warning;
        put_u16(&mut b, 1, self.temperature_k);
        b[3] = self.available_spare;
        b[4] = self.spare_threshold;
        b[5] = self.percent_used;
        for (i, v) in [
            self.data_units_read,
            self.data_units_written,
            self.host_reads,
            self.host_writes,
            0, // controller busy time
            self.power_cycles,
            self.power_on_hours,
            self.unsafe_shutdowns,
            self.media_errors,
            self.error_log_entries,
        ]
        .iter()
        .enumerate()
        {
            put_u64(&mut b, 32 + 16 * i, *v);
        }
        b
    }

    /// Decode the fields above.
    pub fn decode(b: &[u8]) -> SmartLog {
        let c = |i: usize| u64_at(b, 32 + 16 * i);
        SmartLog {
            critical_warning: b.first().copied().unwrap_or(0),
            temperature_k: u16_at(b, 1),
            available_spare: b.get(3).copied().unwrap_or(0),
            spare_threshold: b.get(4).copied().unwrap_or(0),
            percent_used: b.get(5).copied().unwrap_or(0),
            data_units_read: c(0),
            data_units_written: c(1),
            host_reads: c(2),
            host_writes: c(3),
            power_cycles: c(5),
            power_on_hours: c(6),
            unsafe_shutdowns: c(7),
            media_errors: c(8),
            error_log_entries: c(9),
        }
    }
}

/// Firmware slot log with `revision` active in slot 1.
pub fn encode_firmware_slot(revision: &str) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 1;
    let mut rev = [b' '; 8];
    let n = revision.len().min(8);
    rev[..n].copy_from_slice(&revision.as_bytes()[..n]);
    put_bytes(&mut b, 8, &rev);
    b
}

/// Changed namespace list: up to 1024 NSIDs; more than that is reported as
/// the single entry 0xFFFFFFFF.
pub fn encode_changed_namespaces(ids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    if ids.len() > 1024 {
        put_u32(&mut b, 0, 0xffff_ffff);
    } else {
        for (i, id) in ids.iter().enumerate() {
            put_u32(&mut b, 4 * i, *id);
        }
    }
    b
}

/// Commands supported and effects: each listed opcode marked supported,
/// the write-like ones also as changing logical block content.
pub fn encode_command_effects(admin_ops: &[u8], io_ops: &[u8], io_writes: &[u8]) -> Vec<u8> {
    const CSUPP: u32 = 1;
    const LBCC: u32 = 1 << 1;
    let mut b = vec![0u8; 4096];
    for &op in admin_ops {
        put_u32(&mut b, 4 * op as usize, CSUPP);
    }
    for &op in io_ops {
        let effects = if io_writes.contains(&op) {
            CSUPP | LBCC
        } else {
            CSUPP
        };
        put_u32(&mut b, 1024 + 4 * op as usize, effects);
    }
    b
}

/// ANA states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnaState {
    /// Optimized.
    Optimized = 0x01,
    /// Non-optimized.
    NonOptimized = 0x02,
    /// Inaccessible.
    Inaccessible = 0x03,
    /// Persistent loss.
    PersistentLoss = 0x04,
    /// Change (transitioning).
    Change = 0x0f,
}

impl AnaState {
    /// From the wire value.
    pub fn from_u8(v: u8) -> Option<AnaState> {
        Some(match v {
            0x01 => AnaState::Optimized,
            0x02 => AnaState::NonOptimized,
            0x03 => AnaState::Inaccessible,
            0x04 => AnaState::PersistentLoss,
            0x0f => AnaState::Change,
            _ => return None,
        })
    }

    /// The status an I/O command gets in this state (success if accessible).
    pub fn io_status(self) -> Status {
        match self {
            AnaState::Optimized | AnaState::NonOptimized => Status::SUCCESS,
            AnaState::Inaccessible => Status::ANA_INACCESSIBLE,
            AnaState::PersistentLoss => Status::ANA_PERSISTENT_LOSS,
            AnaState::Change => Status::ANA_TRANSITION,
        }
    }
}

impl std::str::FromStr for AnaState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "optimized" => AnaState::Optimized,
            "non-optimized" => AnaState::NonOptimized,
            "inaccessible" => AnaState::Inaccessible,
            "persistent-loss" => AnaState::PersistentLoss,
            "change" => AnaState::Change,
            _ => {
                return Err(format!(
                    "unknown ANA state {s:?} (optimized, non-optimized, inaccessible, persistent-loss, change)"
                ))
            }
        })
    }
}

/// LSP bit of the ANA log: return groups only (no NSID lists).
pub const ANA_LSP_RGO: u8 = 1;

/// One ANA group descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaGroup {
    /// Group ID.
    pub id: u32,
    /// Change count of this group.
    pub change_count: u64,
    /// State as seen through the controller reading the log.
    pub state: AnaState,
    /// Namespaces in the group (empty with RGO).
    pub nsids: Vec<u32>,
}

/// Encode the ANA log page.
pub fn encode_ana_log(change_count: u64, groups: &[AnaGroup], groups_only: bool) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    put_u64(&mut b, 0, change_count);
    put_u16(&mut b, 8, groups.len() as u16);
    for g in groups {
        let nsids: &[u32] = if groups_only { &[] } else { &g.nsids };
        let mut d = vec![0u8; 32 + 4 * nsids.len()];
        put_u32(&mut d, 0, g.id);
        put_u32(&mut d, 4, nsids.len() as u32);
        put_u64(&mut d, 8, g.change_count);
        d[16] = g.state as u8;
        for (i, id) in nsids.iter().enumerate() {
            put_u32(&mut d, 32 + 4 * i, *id);
        }
        b.extend_from_slice(&d);
    }
    b
}

/// Decode the ANA log page; `None` if it is cut short or a state is unknown.
pub fn decode_ana_log(b: &[u8]) -> Option<(u64, Vec<AnaGroup>)> {
    if b.len() < 16 {
        return None;
    }
    let count = u64_at(b, 0);
    let ngrps = u16_at(b, 8) as usize;
    let mut off = 16;
    let mut groups = Vec::with_capacity(ngrps.min(1024));
    for _ in 0..ngrps {
        let d = b.get(off..off + 32)?;
        let n = u32_at(d, 4) as usize;
        let ids = b.get(off + 32..off.checked_add(32)?.checked_add(n.checked_mul(4)?)?)?;
        groups.push(AnaGroup {
            id: u32_at(d, 0),
            change_count: u64_at(d, 8),
            state: AnaState::from_u8(d[16] & 0xf)?,
            nsids: ids.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
        });
        off += 32 + 4 * n;
    }
    Some((count, groups))
}

/// Transport types in discovery entries.
pub mod trtype {
    /// RDMA.
    pub const RDMA: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 3;
}

/// Address families in discovery entries.
pub mod adrfam {
    /// IPv4.
    pub const IPV4: u8 = 1;
    /// IPv6.
    pub const IPV6: u8 = 2;
}

/// Subsystem types in discovery entries.
pub mod subtype {
    /// A discovery subsystem (referral).
    pub const DISCOVERY: u8 = 1;
    /// An NVM subsystem.
    pub const NVM: u8 = 2;
}

/// TREQ bit: SQ flow control may be disabled.
pub const TREQ_DISABLE_SQ_FLOW: u8 = 1 << 2;

/// Size of the discovery log header and of each entry.
pub const DISCOVERY_RECORD_LEN: usize = 1024;

/// One discovery log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type.
    pub trtype: u8,
    /// Address family.
    pub adrfam: u8,
    /// Subsystem type.
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    /// Port ID.
    pub portid: u16,
    /// Controller ID (0xFFFF: dynamic).
    pub cntlid: u16,
    /// Admin max SQ size.
    pub asqsz: u16,
    /// Transport service ID (port number).
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Transport address.
    pub traddr: String,
    /// Transport specific address subtype (RDMA: QP type, provider, CM).
    pub tsas: [u8; 3],
}

impl DiscoveryEntry {
    fn encode_into(&self, b: &mut [u8]) {
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        put_u16(b, 4, self.portid);
        put_u16(b, 6, self.cntlid);
        put_u16(b, 8, self.asqsz);
        put_nul_padded(b, 32, 32, &self.trsvcid);
        put_nul_padded(b, 256, 256, &self.subnqn);
        put_nul_padded(b, 512, 256, &self.traddr);
        put_bytes(b, 768, &self.tsas);
    }

    fn decode(b: &[u8]) -> DiscoveryEntry {
        DiscoveryEntry {
            trtype: b.first().copied().unwrap_or(0),
            adrfam: b.get(1).copied().unwrap_or(0),
            subtype: b.get(2).copied().unwrap_or(0),
            treq: b.get(3).copied().unwrap_or(0),
            portid: u16_at(b, 4),
            cntlid: u16_at(b, 6),
            asqsz: u16_at(b, 8),
            trsvcid: string_at(b, 32, 32),
            subnqn: string_at(b, 256, 256),
            traddr: string_at(b, 512, 256),
            tsas: super::le::array_at(b, 768),
        }
    }
}

/// Encode the discovery log page.
pub fn encode_discovery_log(generation: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; DISCOVERY_RECORD_LEN * (1 + entries.len())];
    put_u64(&mut b, 0, generation);
    put_u64(&mut b, 8, entries.len() as u64);
    for (i, e) in entries.iter().enumerate() {
        let start = DISCOVERY_RECORD_LEN * (i + 1);
        e.encode_into(&mut b[start..start + DISCOVERY_RECORD_LEN]);
    }
    b
}

/// Decode the discovery log header: (generation, number of records).
pub fn decode_discovery_header(b: &[u8]) -> (u64, u64) {
    (u64_at(b, 0), u64_at(b, 8))
}

/// Decode the entries present in `b` (at most `numrec`).
pub fn decode_discovery_entries(b: &[u8], numrec: u64) -> Vec<DiscoveryEntry> {
    b.chunks_exact(DISCOVERY_RECORD_LEN)
        .skip(1)
        .take(numrec.min(4096) as usize)
        .map(DiscoveryEntry::decode)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_round_trip() {
        let g = GetLogPage {
            lid: 0x0c,
            lsp: 1,
            rae: true,
            len: 0x40000,
            offset: 4096,
            lsi: 0,
        };
        assert_eq!(GetLogPage::from_command(&g.to_command(1, 0)), g);
    }

    #[test]
    fn ana_round_trip_and_truncation() {
        let groups = vec![
            AnaGroup {
                id: 1,
                change_count: 3,
                state: AnaState::Optimized,
                nsids: vec![1, 2],
            },
            AnaGroup {
                id: 2,
                change_count: 4,
                state: AnaState::Inaccessible,
                nsids: vec![3],
            },
        ];
        let b = encode_ana_log(9, &groups, false);
        assert_eq!(b.len(), 16 + 32 + 8 + 32 + 4);
        assert_eq!(decode_ana_log(&b), Some((9, groups.clone())));
        assert_eq!(decode_ana_log(&b[..b.len() - 1]), None);
        let rgo = encode_ana_log(9, &groups, true);
        assert_eq!(rgo.len(), 16 + 64);
    }

    #[test]
    fn discovery_round_trip() {
        let e = DiscoveryEntry {
            trtype: trtype::TCP,
            adrfam: adrfam::IPV4,
            subtype: subtype::NVM,
            treq: 0,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 32,
            trsvcid: "4420".into(),
            subnqn: "nqn.a".into(),
            traddr: "127.0.0.1".into(),
            tsas: [0; 3],
        };
        let b = encode_discovery_log(5, &[e.clone(), e.clone()]);
        assert_eq!(decode_discovery_header(&b), (5, 2));
        assert_eq!(decode_discovery_entries(&b, 2), vec![e.clone(), e]);
    }

    #[test]
    fn smart_and_error_round_trip() {
        let s = SmartLog {
            temperature_k: 313,
            host_reads: 5,
            data_units_written: 7,
            ..Default::default()
        };
        assert_eq!(SmartLog::decode(&s.encode()), s);
        let e = ErrorEntry {
            error_count: 1,
            sqid: 1,
            cid: 2,
            status: Status::LBA_OUT_OF_RANGE,
            param_location: 0,
            lba: 9,
            nsid: 1,
        };
        assert_eq!(ErrorEntry::decode(&e.encode()), e);
    }
}
