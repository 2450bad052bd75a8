//! Thin provisioning: a pool of large blocks shared by thin devices and
//! their snapshots.
//!
//! * [`ThinPool`] owns a data device (cut into thin blocks, default 1 MiB)
//!   and a metadata device (see [`metadata`] for the on-disk format and
//!   `state.rs` for the in-memory rules).
//! * [`ThinDevice`] is one thin volume or snapshot, a [`crate::BlockDevice`].
//!
//! Crash consistency: metadata is copy-on-write; a commit flushes the data
//! device, writes the new pages, flushes, writes the superblock slot of the
//! new transaction, and flushes again. A flush on any thin device commits.
//! So after a crash the pool is exactly as of the last completed commit, and
//! every block mapped there holds data that was durable before the mapping.
//!
//! Decisions: large blocks (1 MiB) keep the metadata small enough to hold
//! in RAM and to re-derive reference counts at open; a new block is zero-
//! filled (or copied from the shared block) before it is mapped so no stale
//! data of another volume can ever be read; a full pool fails writes that
//! need a new block with [`crate::BlockError::NoSpace`] (NVMe: capacity
//! exceeded) and nothing else, and writes succeed again once the data
//! device has grown. Snapshot and delete wait for the origin's in-flight
//! I/O (the cluster still quiesces hosts first for cross-leg consistency).

mod cache;
mod device;
pub mod metadata;
mod pool;
mod state;

pub use device::ThinDevice;
pub use pool::{PoolStatus, ThinOptions, ThinPool, DEFAULT_BLOCK_BYTES};

#[cfg(test)]
mod tests;
