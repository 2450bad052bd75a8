//! The roles of `fabricd`, the node daemon: each is a clap argument struct
//! and an async `run`.

pub mod agent;
pub mod free_space;
pub mod logging;
pub mod namespace;
pub mod target;
