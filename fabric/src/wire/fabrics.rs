//! Fabrics commands: Connect (with its 1024-byte data), Property Get/Set and
//! Disconnect, and the controller properties (CAP, VS, CC, CSTS).

use super::command::Command;
use super::le::{array_at, put_nul_padded, string_at, u16_at};
use super::opcode::{fctype, FABRICS};
use super::sgl::SglDescriptor;

/// Length of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;

/// Byte offsets inside the Connect data (for IPO in error completions).
pub mod connect_data_offset {
    /// HOSTID.
    pub const HOSTID: u16 = 0;
    /// CNTLID.
    pub const CNTLID: u16 = 16;
    /// SUBNQN.
    pub const SUBNQN: u16 = 256;
    /// HOSTNQN.
    pub const HOSTNQN: u16 = 512;
}

/// Byte offsets inside the Connect command (for IPO in error completions).
pub mod connect_cmd_offset {
    /// RECFMT.
    pub const RECFMT: u16 = 40;
    /// QID.
    pub const QID: u16 = 42;
    /// SQSIZE.
    pub const SQSIZE: u16 = 44;
    /// CATTR.
    pub const CATTR: u16 = 46;
    /// KATO.
    pub const KATO: u16 = 48;
}

/// CATTR bit: the host asks to disable SQ flow control.
pub const CATTR_DISABLE_SQ_FLOW: u8 = 1 << 2;

/// The Connect command's own fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCommand {
    /// Record format (0).
    pub recfmt: u16,
    /// Queue ID (0 = admin).
    pub qid: u16,
    /// Submission queue size (0's based).
    pub sqsize: u16,
    /// Connect attributes.
    pub cattr: u8,
    /// Keep alive timeout in milliseconds.
    pub kato_ms: u32,
}

impl ConnectCommand {
    /// Read the Connect fields of a fabrics command.
    pub fn from_command(c: &Command) -> ConnectCommand {
        ConnectCommand {
            recfmt: c.cdw10 as u16,
            qid: (c.cdw10 >> 16) as u16,
            sqsize: c.cdw11 as u16,
            cattr: (c.cdw11 >> 16) as u8,
            kato_ms: c.cdw12,
        }
    }

    /// Build the Connect command (its data pointer describes `data_sgl`).
    pub fn to_command(&self, cid: u16, data_sgl: SglDescriptor) -> Command {
        Command {
            cid,
            nsid: fctype::CONNECT as u32,
            dptr: data_sgl,
            cdw10: self.recfmt as u32 | (self.qid as u32) << 16,
            cdw11: self.sqsize as u32 | (self.cattr as u32) << 16,
            cdw12: self.kato_ms,
            ..Command::new(FABRICS)
        }
    }
}

/// The Connect command's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Controller ID (0xFFFF for the admin queue of a dynamic controller).
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
}

impl ConnectData {
    /// Decode; `None` if shorter than 1024 bytes.
    pub fn decode(b: &[u8]) -> Option<ConnectData> {
        if b.len() < CONNECT_DATA_LEN {
            return None;
        }
        Some(ConnectData {
            hostid: array_at(b, 0),
            cntlid: u16_at(b, 16),
            subnqn: string_at(b, 256, 256),
            hostnqn: string_at(b, 512, 256),
        })
    }

    /// Encode as 1024 bytes.
    pub fn encode(&self) -> [u8; CONNECT_DATA_LEN] {
        let mut b = [0u8; CONNECT_DATA_LEN];
        b[0..16].copy_from_slice(&self.hostid);
        b[16..18].copy_from_slice(&self.cntlid.to_le_bytes());
        put_nul_padded(&mut b, 256, 256, &self.subnqn);
        put_nul_padded(&mut b, 512, 256, &self.hostnqn);
        b
    }

    /// Whether the raw NQN fields are NUL-terminated within their 256 bytes,
    /// as the specification requires.
    pub fn nqns_terminated(raw: &[u8]) -> bool {
        let term = |off: usize| raw.get(off..off + 256).is_some_and(|f| f.contains(&0));
        term(256) && term(512)
    }
}

/// Longest NQN in bytes (the Connect data's fields are 256 bytes with a
/// terminating NUL; the specification allows 223).
pub const MAX_NQN_LEN: usize = 223;

/// Whether `nqn` is a well-formed NVMe Qualified Name as we accept it in
/// configuration: `nqn.` and then printable ASCII without spaces, at most
/// [`MAX_NQN_LEN`] bytes (`nqn.2014-08.org.nvmexpress:uuid:...` included).
/// What a host sends in a Connect is matched as it is, not checked.
pub fn valid_nqn(nqn: &str) -> bool {
    nqn.len() > 4
        && nqn.len() <= MAX_NQN_LEN
        && nqn.starts_with("nqn.")
        && nqn.bytes().all(|b| b.is_ascii_graphic())
}

/// IPO/IATTR result dword of a Connect that failed with invalid parameters:
/// `in_data` says whether the offset is into the data or the command.
pub fn connect_error_location(offset: u16, in_data: bool) -> u32 {
    (in_data as u32) << 16 | offset as u32
}

/// Controller property offsets.
pub mod property {
    /// Controller capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version (4 bytes).
    pub const VS: u32 = 0x08;
    /// Controller configuration (4 bytes).
    pub const CC: u32 = 0x14;
    /// Controller status (4 bytes).
    pub const CSTS: u32 = 0x1c;
    /// NVM subsystem reset (4 bytes).
    pub const NSSR: u32 = 0x20;
}

/// Property Get/Set fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyCommand {
    /// Whether the property is 8 bytes wide (else 4).
    pub eight_bytes: bool,
    /// Property offset.
    pub offset: u32,
    /// Value to set (Property Set only).
    pub value: u64,
}

impl PropertyCommand {
    /// Read the fields of a Property Get or Set.
    pub fn from_command(c: &Command) -> PropertyCommand {
        PropertyCommand {
            eight_bytes: c.cdw10 & 7 == 1,
            offset: c.cdw11,
            value: c.cdw12 as u64 | (c.cdw13 as u64) << 32,
        }
    }

    /// Whether the size attribute holds a defined value (0 or 1).
    pub fn size_valid(c: &Command) -> bool {
        c.cdw10 & 7 <= 1
    }

    /// A Property Get command.
    pub fn get(cid: u16, offset: u32, eight_bytes: bool) -> Command {
        Command {
            cid,
            nsid: fctype::PROPERTY_GET as u32,
            cdw10: eight_bytes as u32,
            cdw11: offset,
            ..Command::new(FABRICS)
        }
    }

    /// A Property Set command.
    pub fn set(cid: u16, offset: u32, value: u64, eight_bytes: bool) -> Command {
        Command {
            cid,
            nsid: fctype::PROPERTY_SET as u32,
            cdw10: eight_bytes as u32,
            cdw11: offset,
            cdw12: value as u32,
            cdw13: (value >> 32) as u32,
            ..Command::new(FABRICS)
        }
    }
}

/// Controller Capabilities fields we report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Maximum queue entries supported (0's based).
    pub mqes: u16,
    /// Worst-case time to become ready, in 500 ms units.
    pub timeout_500ms: u8,
}

impl Capabilities {
    /// Encode as the CAP property: contiguous queues required, NVM command
    /// set, 4 KiB pages.
    pub fn encode(&self) -> u64 {
        let css_nvm = 1u64 << 37;
        self.mqes as u64 | 1 << 16 | (self.timeout_500ms as u64) << 24 | css_nvm
    }

    /// Decode the fields we use.
    pub fn decode(cap: u64) -> Capabilities {
        Capabilities {
            mqes: cap as u16,
            timeout_500ms: (cap >> 24) as u8,
        }
    }
}

/// Controller Configuration fields.
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// Shutdown notification mask (bits 15:14).
    pub const SHN_MASK: u32 = 3 << 14;
    /// Normal shutdown.
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// The CC value a host writes to enable a controller: 64-byte SQEs,
    /// 16-byte CQEs, 4 KiB pages, NVM command set.
    pub const ENABLE_DEFAULT: u32 = EN | 6 << 16 | 4 << 20;

    /// I/O submission queue entry size (log2).
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xf
    }
    /// I/O completion queue entry size (log2).
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xf
    }
    /// Memory page size (2 ^ (12 + MPS)).
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xf
    }
    /// I/O command set selected.
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 7
    }
}

/// Controller Status fields.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller fatal status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// NVMe version 1.4 as reported in VS and Identify.
pub const VERSION_1_4: u32 = 0x0001_0400;

/// A Disconnect command (deletes the I/O queue it is sent on).
pub fn disconnect_command(cid: u16) -> Command {
    Command {
        cid,
        nsid: fctype::DISCONNECT as u32,
        ..Command::new(FABRICS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_round_trip() {
        let cc = ConnectCommand {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: CATTR_DISABLE_SQ_FLOW,
            kato_ms: 5000,
        };
        let cmd = cc.to_command(9, SglDescriptor::in_capsule(1024));
        let back = Command::decode(&cmd.encode());
        assert_eq!(back.fctype(), fctype::CONNECT);
        assert_eq!(ConnectCommand::from_command(&back), cc);
        let data = ConnectData {
            hostid: [7; 16],
            cntlid: 0xffff,
            subnqn: "nqn.2026-11.io.fabric:a".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:x".into(),
        };
        let raw = data.encode();
        assert!(ConnectData::nqns_terminated(&raw));
        assert_eq!(ConnectData::decode(&raw), Some(data));
        assert_eq!(ConnectData::decode(&raw[..1000]), None);
        assert!(!ConnectData::nqns_terminated(&[b'a'; 1024]));
    }

    #[test]
    fn nqns_checked_for_configuration() {
        for good in [
            "nqn.2014-08.org.nvmexpress.discovery",
            "nqn.2014-08.org.nvmexpress:uuid:0c3d8a1e-7c1f-4a5e-9d2b-6e4f5a3b2c1d",
            &format!("nqn.{}", "a".repeat(MAX_NQN_LEN - 4)),
        ] {
            assert!(valid_nqn(good), "{good}");
        }
        for bad in [
            "",
            "nqn.",
            "foo",
            "testnqn",
            "nqn.with space",
            "nqn.tab\t",
            "nqn.h\u{e9}llo",
            &format!("nqn.{}", "a".repeat(MAX_NQN_LEN - 3)),
        ] {
            assert!(!valid_nqn(bad), "{bad}");
        }
    }

    #[test]
    fn property_round_trip() {
        let set = PropertyCommand::set(1, property::CC, cc::ENABLE_DEFAULT as u64, false);
        let p = PropertyCommand::from_command(&Command::decode(&set.encode()));
        assert_eq!(p.offset, property::CC);
        assert_eq!(p.value, cc::ENABLE_DEFAULT as u64);
        assert!(!p.eight_bytes);
        assert_eq!(cc::iosqes(cc::ENABLE_DEFAULT), 6);
        assert_eq!(cc::iocqes(cc::ENABLE_DEFAULT), 4);
        let cap = Capabilities {
            mqes: 1023,
            timeout_500ms: 10,
        };
        assert_eq!(Capabilities::decode(cap.encode()), cap);
    }
}
