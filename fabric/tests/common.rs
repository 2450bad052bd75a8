//! Helpers shared by the integration tests: an in-process target on a
//! loopback port.

#![allow(dead_code)]

use std::sync::Arc;

use fabric::target::{PortAddress, SubsystemConfig, Target, TargetConfig};
use fabric::transport::{target_transport, ListenerHandle};
use raid::{MemoryDevice, NullDevice};

/// The NQN the test target serves.
pub const NQN: &str = "nqn.2026-11.io.fabric:test";

/// A running target.
pub struct TestTarget {
    pub target: Arc<Target>,
    pub address: PortAddress,
    pub listener: Option<ListenerHandle>,
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.target.shutdown();
    }
}

/// A target with one memory namespace of `size` bytes (and a null namespace
/// as NSID 2) on an ephemeral loopback TCP port, with discovery.
pub async fn start(size: u64, allowed_hosts: Vec<String>) -> TestTarget {
    start_with(size, allowed_hosts, TargetConfig::default()).await
}

/// As [`start`], with target settings.
pub async fn start_with(size: u64, allowed_hosts: Vec<String>, cfg: TargetConfig) -> TestTarget {
    let target = Target::new(cfg).unwrap();
    let mut sc = SubsystemConfig::new(NQN);
    sc.allowed_hosts = allowed_hosts;
    let sub = target.add_subsystem(sc).unwrap();
    sub.add_namespace(1, Arc::new(MemoryDevice::new(size, 4096)), 1)
        .unwrap();
    sub.add_namespace(2, Arc::new(NullDevice::new(size, 512)), 2)
        .unwrap();
    let port = target.add_port("tcp://127.0.0.1:0".parse().unwrap(), true);
    let listener = target_transport(port.address().kind)
        .unwrap()
        .listen(target.clone(), port)
        .await
        .unwrap();
    let address = listener.local.clone();
    TestTarget {
        target,
        address,
        listener: Some(listener),
    }
}
