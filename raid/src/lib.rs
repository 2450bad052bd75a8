//! The block device layer.
//!
//! Everything that stores data implements [`BlockDevice`]: the local backends
//! in this crate (memory, null, file or block device through O_DIRECT and
//! io_uring) and, in the `fabric` crate, a namespace reached over NVMe-oF.
//! Composites (raid0, raid1, thin, clone, ...) are `BlockDevice`s over other
//! `BlockDevice`s, so a stack runs the same over local files and remote disks.
//!
//! Buffers: reads fill a caller-supplied [`BytesMut`] of exactly the bytes to
//! read and hand it back; writes take [`Bytes`], which composites can slice
//! and clone without copying. [`buf::alloc`] gives buffers aligned for
//! O_DIRECT.

pub mod buf;
mod device;
pub mod file;
pub mod mem;
pub mod null;
mod size;
mod uring;

pub use bytes::{Bytes, BytesMut};
pub use device::{check_io, check_range, BlockDevice, BlockError, BlockResult, DeviceRef};
pub use file::{FileDevice, FileOptions};
pub use mem::MemoryDevice;
pub use null::NullDevice;
pub use size::{format_size, parse_size, SizeError};
