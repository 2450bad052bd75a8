//! fabric-perf, an NVMe-oF load generator built on the fabric host library,
//! and the pieces fabric-bench (the side-by-side benchmark against the Linux
//! kernel target) shares with it.

pub mod cpu;
pub mod duration;
pub mod loadgen;
pub mod pattern;
pub mod report;
pub mod stats;
pub mod workload;
