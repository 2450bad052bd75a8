//! Opcodes and identifiers: admin, I/O and fabrics commands, features, log
//! pages and Identify CNS values.

/// Admin command opcodes.
pub mod admin {
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// NVM command set I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// The fabrics command opcode; the type is in the command's FCTYPE byte.
pub const FABRICS: u8 = 0x7f;

/// Fabrics command types (FCTYPE).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTH_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTH_RECEIVE: u8 = 0x06;
    /// Disconnect (an I/O queue).
    pub const DISCONNECT: u8 = 0x08;
}

/// Feature identifiers.
pub mod feature {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// Temperature threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Error recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile write cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Write atomicity normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous event configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Timestamp.
    pub const TIMESTAMP: u8 = 0x0e;
    /// Keep alive timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    /// Host behavior support.
    pub const HOST_BEHAVIOR: u8 = 0x16;
    /// Host identifier.
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Log page identifiers.
pub mod log {
    /// Supported log pages.
    pub const SUPPORTED: u8 = 0x00;
    /// Error information.
    pub const ERROR: u8 = 0x01;
    /// SMART / health information.
    pub const SMART: u8 = 0x02;
    /// Firmware slot information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// Changed namespace list.
    pub const CHANGED_NAMESPACES: u8 = 0x04;
    /// Commands supported and effects.
    pub const COMMAND_EFFECTS: u8 = 0x05;
    /// Asymmetric namespace access.
    pub const ANA: u8 = 0x0c;
    /// Discovery.
    pub const DISCOVERY: u8 = 0x70;
}

/// Identify CNS values.
pub mod cns {
    /// Identify namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace ID list.
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace identification descriptor list.
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific identify namespace.
    pub const CS_NAMESPACE: u8 = 0x05;
    /// I/O command set specific identify controller.
    pub const CS_CONTROLLER: u8 = 0x06;
    /// Active namespace list for an I/O command set.
    pub const CS_ACTIVE_NAMESPACES: u8 = 0x07;
    /// I/O command set independent identify namespace.
    pub const CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
}

/// Data transfer direction implied by an opcode's two low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// No data.
    None,
    /// Host to controller (the command writes data).
    HostToController,
    /// Controller to host (the command returns data).
    ControllerToHost,
    /// Both (not used by any command we serve).
    Bidirectional,
}

impl Direction {
    /// The direction encoded in `opcode` bits 1:0.
    pub fn of_opcode(opcode: u8) -> Direction {
        match opcode & 3 {
            0 => Direction::None,
            1 => Direction::HostToController,
            2 => Direction::ControllerToHost,
            _ => Direction::Bidirectional,
        }
    }
}
