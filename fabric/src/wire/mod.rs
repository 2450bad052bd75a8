//! The NVMe and NVMe-oF wire formats, free of I/O: commands, completions,
//! status codes, SGL descriptors, the fabrics commands, Identify and log page
//! structures, and the NVMe/TCP PDUs. Everything here encodes to and decodes
//! from byte slices, so it can be unit tested and fuzzed on bytes.
//!
//! Decoders never panic on short or malformed input: fixed-size structures
//! take arrays, and variable-length ones check lengths first.

pub mod command;
pub mod completion;
pub mod fabrics;
pub mod identify;
pub mod le;
pub mod log_page;
pub mod opcode;
pub mod rdma;
pub mod sgl;
pub mod status;
pub mod tcp;

pub use command::Command;
pub use completion::Completion;
pub use sgl::SglDescriptor;
pub use status::Status;

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// NSID meaning "all namespaces".
pub const NSID_ALL: u32 = 0xffff_ffff;

/// Controller ID a host sends to ask for any controller (dynamic model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// Highest valid static controller ID.
pub const CNTLID_MAX: u16 = 0xffef;
