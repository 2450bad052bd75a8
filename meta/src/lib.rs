//! The metadata group of the storage fabric.
//!
//! A Raft group (raft-rs) whose log and state live in rocksdb keeps the
//! desired state of every cluster object; a tonic gRPC service serves it to
//! node agents and `fabric-ctl`. One replica is the embedded default, three or
//! five in production.
//!
//! Modules, bottom up: [`keys`] (rocksdb layout), [`storage`] (the Raft log),
//! [`state`] (the objects and the commands that change them), [`placement`],
//! [`node`] (the Raft driver), [`transport`] (replica to replica), [`tls`]
//! (mutual TLS between replicas and clients),
//! [`service`] (the gRPC API), [`client`], [`cli`] and [`run`] (the role's
//! entry point), and [`lincheck`] (a linearizability checker for tests).

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod error;
pub mod json;
pub mod keys;
pub mod lincheck;
pub mod liveness;
pub mod node;
pub mod objects;
pub mod placement;
mod raft_logger;
pub mod server;
pub mod service;
pub mod state;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod validate;

/// The public API types and the `Meta` service (package `fabric.meta.v1`).
#[allow(missing_docs)]
pub mod proto {
    tonic::include_proto!("fabric.meta.v1");
}

/// Internal types: replicated commands, snapshots, the replica transport
/// (package `fabric.meta.peer.v1`).
#[allow(missing_docs)]
pub mod peer {
    tonic::include_proto!("fabric.meta.peer.v1");
}

pub use client::MetaClient;
pub use error::MetaError;
pub use server::{run, serve, RunError};
