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
#![warn(missing_docs)]
//!
//! Composites: [`Linear`], [`Raid0`], [`Raid1`], [`ThinPool`] and its
//! [`ThinDevice`]s, [`CloneDevice`], [`SuspendableDevice`], [`ErrorDevice`].
//! Background work (resync, hydration, periodic thin commits) runs as
//! [`BackgroundTask`]s paced by a [`RateLimit`]. For tests, [`FaultDevice`]
//! injects failures and power loss and [`model`] holds reference models.
//! The workspace's binaries read their size arguments with [`parse_size`].

pub mod bits;
pub mod buf;
pub mod clone;
mod device;
pub mod error;
pub mod fault;
pub mod file;
mod gate;
mod le;
pub mod linear;
pub mod mem;
pub mod model;
pub mod null;
pub mod raid0;
pub mod raid1;
mod size;
mod split;
pub mod suspend;
pub mod task;
pub mod thin;
mod uring;

pub use bytes::{Bytes, BytesMut};
pub use clone::{CloneDevice, CloneProgress};
pub use device::{check_io, check_range, BlockDevice, BlockError, BlockResult, DeviceRef};
pub use error::ErrorDevice;
pub use fault::{FaultDevice, Power};
pub use file::{FileDevice, FileOptions};
pub use linear::Linear;
pub use mem::MemoryDevice;
pub use null::NullDevice;
pub use raid0::Raid0;
pub use raid1::{MemberHealth, Raid1, Raid1OpenOptions, Raid1Options, Raid1Status, ResyncProgress};
pub use size::{format_size, parse_size, SizeError};
pub use suspend::{SuspendGuard, SuspendableDevice};
pub use task::{BackgroundTask, RateLimit};
pub use thin::{PoolStatus, ThinDevice, ThinOptions, ThinPool};
