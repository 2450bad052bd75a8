//! NVMe status: a status code (SC), its type (SCT) and the Do Not Retry bit.
//!
//! Stored as the completion's 15-bit status field without the phase tag:
//! bits 7:0 SC, 10:8 SCT, 12:11 CRD, 13 More, 14 DNR.

use std::fmt;

/// An NVMe completion status.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

const DNR: u16 = 1 << 14;

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
}

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = ($sct:expr, $sc:expr, $dnr:expr);)*) => {
        impl Status {
            $($(#[$doc])* pub const $name: Status = Status::new($sct, $sc, $dnr);)*
        }
        fn name_of(s: Status) -> Option<&'static str> {
            let plain = s.0 & 0x7ff;
            $(if plain == Status::$name.0 & 0x7ff { return Some(stringify!($name)); })*
            None
        }
    };
}

statuses! {
    /// Successful completion.
    SUCCESS = (sct::GENERIC, 0x00, false);
    /// Invalid command opcode.
    INVALID_OPCODE = (sct::GENERIC, 0x01, true);
    /// Invalid field in command.
    INVALID_FIELD = (sct::GENERIC, 0x02, true);
    /// Command ID conflict.
    CID_CONFLICT = (sct::GENERIC, 0x03, true);
    /// Data transfer error.
    DATA_TRANSFER_ERROR = (sct::GENERIC, 0x04, false);
    /// Internal error.
    INTERNAL = (sct::GENERIC, 0x06, false);
    /// Command abort requested.
    ABORT_REQUESTED = (sct::GENERIC, 0x07, false);
    /// Command aborted due to SQ deletion.
    ABORTED_SQ_DELETION = (sct::GENERIC, 0x08, false);
    /// Invalid namespace or format.
    INVALID_NAMESPACE = (sct::GENERIC, 0x0b, true);
    /// Command sequence error.
    COMMAND_SEQUENCE_ERROR = (sct::GENERIC, 0x0c, true);
    /// Invalid SGL last segment descriptor.
    SGL_INVALID_LAST_SEGMENT = (sct::GENERIC, 0x0d, true);
    /// Invalid number of SGL descriptors.
    SGL_INVALID_COUNT = (sct::GENERIC, 0x0e, true);
    /// Data SGL length invalid.
    SGL_INVALID_DATA_LENGTH = (sct::GENERIC, 0x0f, true);
    /// SGL descriptor type invalid.
    SGL_INVALID_TYPE = (sct::GENERIC, 0x11, true);
    /// SGL offset invalid.
    SGL_INVALID_OFFSET = (sct::GENERIC, 0x16, true);
    /// Transient transport error.
    TRANSIENT_TRANSPORT_ERROR = (sct::GENERIC, 0x22, false);
    /// Host identifier inconsistent format.
    HOST_ID_INCONSISTENT = (sct::GENERIC, 0x18, true);
    /// Keep alive timer expired.
    KEEP_ALIVE_EXPIRED = (sct::GENERIC, 0x19, false);
    /// Keep alive timeout invalid.
    KEEP_ALIVE_INVALID = (sct::GENERIC, 0x1a, true);
    /// LBA out of range.
    LBA_OUT_OF_RANGE = (sct::GENERIC, 0x80, true);
    /// Capacity exceeded (Do Not Retry, as Linux's target sends it: a full
    /// pool or file system fails the same write again at once).
    CAPACITY_EXCEEDED = (sct::GENERIC, 0x81, true);
    /// Namespace not ready.
    NAMESPACE_NOT_READY = (sct::GENERIC, 0x82, false);
    /// Invalid queue identifier.
    INVALID_QUEUE_ID = (sct::COMMAND_SPECIFIC, 0x01, true);
    /// Invalid queue size.
    INVALID_QUEUE_SIZE = (sct::COMMAND_SPECIFIC, 0x02, true);
    /// Asynchronous event request limit exceeded.
    AER_LIMIT_EXCEEDED = (sct::COMMAND_SPECIFIC, 0x05, true);
    /// Invalid log page.
    INVALID_LOG_PAGE = (sct::COMMAND_SPECIFIC, 0x09, true);
    /// Feature identifier not saveable.
    FEATURE_NOT_SAVEABLE = (sct::COMMAND_SPECIFIC, 0x0d, true);
    /// Feature not changeable.
    FEATURE_NOT_CHANGEABLE = (sct::COMMAND_SPECIFIC, 0x0e, true);
    /// Feature not namespace specific.
    FEATURE_NOT_PER_NAMESPACE = (sct::COMMAND_SPECIFIC, 0x0f, true);
    /// Fabrics: incompatible format.
    CONNECT_INCOMPATIBLE_FORMAT = (sct::COMMAND_SPECIFIC, 0x80, true);
    /// Fabrics: controller busy.
    CONNECT_CONTROLLER_BUSY = (sct::COMMAND_SPECIFIC, 0x81, false);
    /// Fabrics: connect invalid parameters.
    CONNECT_INVALID_PARAMETERS = (sct::COMMAND_SPECIFIC, 0x82, true);
    /// Fabrics: connect invalid host.
    CONNECT_INVALID_HOST = (sct::COMMAND_SPECIFIC, 0x84, true);
    /// Write fault.
    WRITE_FAULT = (sct::MEDIA, 0x80, false);
    /// Unrecovered read error.
    UNRECOVERED_READ_ERROR = (sct::MEDIA, 0x81, false);
    /// Access denied.
    ACCESS_DENIED = (sct::MEDIA, 0x86, true);
    /// Internal path error.
    INTERNAL_PATH_ERROR = (sct::PATH, 0x00, false);
    /// Asymmetric access persistent loss.
    ANA_PERSISTENT_LOSS = (sct::PATH, 0x01, false);
    /// Asymmetric access inaccessible.
    ANA_INACCESSIBLE = (sct::PATH, 0x02, false);
    /// Asymmetric access transition.
    ANA_TRANSITION = (sct::PATH, 0x03, false);
}

impl Status {
    /// A status of type `sct` with code `sc`, with the DNR bit if `dnr`.
    pub const fn new(sct: u8, sc: u8, dnr: bool) -> Status {
        Status(((sct as u16 & 7) << 8) | sc as u16 | if dnr { DNR } else { 0 })
    }

    /// From a completion's status field (phase tag in bit 0).
    pub const fn from_cqe_field(field: u16) -> Status {
        Status(field >> 1)
    }

    /// As a completion's status field with the given phase tag.
    pub const fn to_cqe_field(self, phase: bool) -> u16 {
        (self.0 << 1) | phase as u16
    }

    /// Status code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status code type.
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }

    /// Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & DNR != 0
    }

    /// Whether this is a success.
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }

    /// Same code without the DNR bit (a retry may succeed).
    pub const fn retryable(self) -> Status {
        Status(self.0 & !DNR)
    }

    /// Whether two statuses have the same type and code (ignoring DNR, More, CRD).
    pub const fn same_code(self, other: Status) -> bool {
        self.0 & 0x7ff == other.0 & 0x7ff
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name_of(*self) {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "status sct={:#x} sc={:#04x}", self.sct(), self.sc())?,
        }
        if self.dnr() {
            write!(f, " (DNR)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_cqe_encoding() {
        let s = Status::CONNECT_INVALID_PARAMETERS;
        assert_eq!(s.sct(), 1);
        assert_eq!(s.sc(), 0x82);
        assert!(s.dnr());
        let field = s.to_cqe_field(true);
        assert_eq!(field & 1, 1);
        assert_eq!(Status::from_cqe_field(field), s);
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::LBA_OUT_OF_RANGE.is_success());
        assert_eq!(Status::ANA_INACCESSIBLE.0, 0x302);
        assert_eq!(
            format!("{}", Status::INVALID_OPCODE),
            "INVALID_OPCODE (DNR)"
        );
        assert!(Status::INVALID_FIELD
            .retryable()
            .same_code(Status::INVALID_FIELD));
    }
}
