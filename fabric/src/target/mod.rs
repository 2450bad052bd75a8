//! The target core: subsystems, namespaces, ports with ANA states,
//! controllers and the commands they execute. Transports (TCP, RDMA) feed
//! commands into a [`Queue`] and move the data it asks for; the core never
//! knows which transport it runs on.
//!
//! One file per command family, as in the Linux kernel's target:
//! `cmd_fabrics` (Connect, Property Get/Set, Disconnect), `cmd_admin`
//! (dispatch, Keep Alive, Abort, Asynchronous Event Request), `cmd_identify`,
//! `cmd_log_page`, `cmd_features` and `cmd_io`.

mod cmd_admin;
mod cmd_fabrics;
mod cmd_features;
mod cmd_identify;
mod cmd_io;
mod cmd_log_page;
pub mod controller;
pub mod namespace;
pub mod port;
pub mod queue;
pub mod request;
pub mod subsystem;
mod warn_limit;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use controller::{AsyncEvent, Controller};
pub use namespace::Namespace;
pub use port::{Port, PortAddress, TransportKind};
pub use queue::Queue;
pub use request::{Request, Response, Transfer};
pub use subsystem::{Subsystem, SubsystemConfig};

use crate::wire::log_page::{subtype, AnaState, DiscoveryEntry, TREQ_DISABLE_SQ_FLOW};
use crate::wire::{CNTLID_DYNAMIC, DISCOVERY_NQN};

/// Errors configuring a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A configuration value was rejected.
    #[error("{0}")]
    Config(String),
    /// A subsystem with this NQN exists already.
    #[error("subsystem {0} already exists")]
    Exists(String),
    /// No such subsystem or port.
    #[error("{0} not found")]
    NotFound(String),
}

/// Target-wide settings.
#[derive(Clone, Copy, Debug)]
pub struct TargetConfig {
    /// Largest data transfer of one command, in bytes (a power of two from
    /// 4 KiB; reported as MDTS).
    pub max_transfer: u32,
    /// Queue entries per queue (CAP.MQES + 1).
    pub max_queue_entries: u16,
    /// I/O queues per controller.
    pub max_io_queues: u16,
    /// Time a new connection has to send its Connect command; a connection
    /// still not connected then is closed.
    pub connect_timeout: Duration,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            max_transfer: 1 << 20,
            max_queue_entries: 1024,
            max_io_queues: 64,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl TargetConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), TargetError> {
        if !self.max_transfer.is_power_of_two() || self.max_transfer < 4096 {
            return Err(TargetError::Config(format!(
                "maximum transfer {} must be a power of two of at least 4096 bytes",
                self.max_transfer
            )));
        }
        if self.max_queue_entries < 2 {
            return Err(TargetError::Config("queue size must be at least 2".into()));
        }
        if self.max_io_queues == 0 {
            return Err(TargetError::Config(
                "at least one I/O queue is needed".into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(TargetError::Config(
                "the connect timeout must not be zero".into(),
            ));
        }
        Ok(())
    }
}

/// What a controller may do, from the target's settings and its transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest data transfer of one command in bytes.
    pub max_transfer: u32,
    /// Queue entries per queue.
    pub max_queue_entries: u16,
    /// I/O queues per controller.
    pub max_io_queues: u16,
    /// In-capsule data bytes accepted on I/O queues.
    pub inline_data_size: u32,
    /// Whether keyed SGL data blocks are supported (RDMA).
    pub keyed_sgls: bool,
    /// SGL data block descriptors accepted per command (MSDBD).
    pub sgl_descriptors: u8,
}

/// A transport's capabilities, given to [`Queue::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportCaps {
    /// Which transport.
    pub kind: TransportKind,
    /// In-capsule data bytes accepted on I/O queues.
    pub inline_data_size: u32,
    /// Whether keyed SGL data blocks are supported.
    pub keyed_sgls: bool,
    /// SGL data block descriptors accepted per command (MSDBD).
    pub sgl_descriptors: u8,
}

/// An NVMe-oF target: subsystems exposed on ports.
pub struct Target {
    config: TargetConfig,
    subsystems: RwLock<BTreeMap<String, Arc<Subsystem>>>,
    discovery: Arc<Subsystem>,
    ports: RwLock<Vec<Arc<Port>>>,
    /// The last port ID handed out (IDs are never reused, so a port taken
    /// out can come back under its own).
    last_port_id: AtomicU16,
    generation: AtomicU64,
    token: CancellationToken,
}

impl Target {
    /// An empty target.
    pub fn new(config: TargetConfig) -> Result<Arc<Target>, TargetError> {
        config.validate()?;
        let mut disc = SubsystemConfig::new(DISCOVERY_NQN);
        disc.model = "fabric discovery controller".into();
        Ok(Arc::new(Target {
            config,
            subsystems: RwLock::new(BTreeMap::new()),
            discovery: Arc::new(Subsystem::new(disc, true)?),
            ports: RwLock::new(Vec::new()),
            last_port_id: AtomicU16::new(0),
            generation: AtomicU64::new(1),
            token: CancellationToken::new(),
        }))
    }

    /// Settings.
    pub fn config(&self) -> &TargetConfig {
        &self.config
    }

    /// Cancelled when the target shuts down; every connection watches it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.token
    }

    /// Stop serving: every connection closes.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Add a subsystem.
    pub fn add_subsystem(&self, cfg: SubsystemConfig) -> Result<Arc<Subsystem>, TargetError> {
        if cfg.nqn == DISCOVERY_NQN {
            return Err(TargetError::Config("the discovery NQN is reserved".into()));
        }
        let sub = Arc::new(Subsystem::new(cfg, false)?);
        {
            let mut map = self.subsystems.write().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(&sub.nqn) {
                return Err(TargetError::Exists(sub.nqn.clone()));
            }
            map.insert(sub.nqn.clone(), sub.clone());
        }
        self.discovery_changed();
        Ok(sub)
    }

    /// Remove a subsystem, tearing down its controllers.
    pub fn remove_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        let sub = self
            .subsystems
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(nqn)
            .ok_or_else(|| TargetError::NotFound(format!("subsystem {nqn}")))?;
        for c in sub.controllers() {
            c.shutdown("subsystem removed");
        }
        self.discovery_changed();
        Ok(())
    }

    /// The subsystem with this NQN (including the discovery subsystem).
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        self.subsystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(nqn)
            .cloned()
    }

    /// All NVM subsystems.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Add a port (the transport binds it); IDs are assigned in order from 1.
    pub fn add_port(&self, address: PortAddress, discovery: bool) -> Arc<Port> {
        let id = self
            .last_port_id
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let port = Arc::new(Port::new(id, address, discovery));
        self.restore_port(port.clone());
        port
    }

    /// Put back a port taken out with [`remove_port`](Self::remove_port)
    /// (its listener serves again).
    pub fn restore_port(&self, port: Arc<Port>) {
        let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
        if ports.iter().any(|p| p.id == port.id) {
            return;
        }
        ports.push(port);
        drop(ports);
        self.discovery_changed();
    }

    /// Remove a port from discovery (its listener is stopped by its owner).
    pub fn remove_port(&self, id: u16) {
        self.ports
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p.id != id);
        self.discovery_changed();
    }

    /// All ports.
    pub fn ports(&self) -> Vec<Arc<Port>> {
        self.ports.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Set ANA group `group`'s state on port `port_id`; controllers on that
    /// port get an ANA change notice.
    pub fn set_ana_state(
        &self,
        port_id: u16,
        group: u32,
        state: AnaState,
    ) -> Result<(), TargetError> {
        let port = self
            .ports()
            .into_iter()
            .find(|p| p.id == port_id)
            .ok_or_else(|| TargetError::NotFound(format!("port {port_id}")))?;
        if group == 0 || group > subsystem::ANA_GROUPS {
            return Err(TargetError::Config(format!(
                "ANA group {group} must be from 1 to {}",
                subsystem::ANA_GROUPS
            )));
        }
        if port.set_ana_state(group, state) {
            tracing::info!(port = port_id, group, ?state, "ANA state changed");
            for sub in self.subsystems() {
                for c in sub.controllers() {
                    if c.port.id == port_id {
                        c.raise(AsyncEvent::AnaChange);
                    }
                }
            }
        }
        Ok(())
    }

    /// Discovery log generation counter.
    pub fn discovery_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn discovery_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for c in self.discovery.controllers() {
            c.raise(AsyncEvent::DiscoveryChange);
        }
    }

    /// Discovery log entries for `hostnqn`: every subsystem it may connect
    /// to, on every port.
    pub fn discovery_entries(&self, hostnqn: &str) -> Vec<DiscoveryEntry> {
        let mut out = Vec::new();
        for port in self.ports() {
            let addr = port.address();
            for sub in self.subsystems() {
                if !sub.host_allowed(hostnqn) {
                    continue;
                }
                out.push(DiscoveryEntry {
                    trtype: addr.kind.trtype(),
                    adrfam: addr.adrfam(),
                    subtype: subtype::NVM,
                    treq: TREQ_DISABLE_SQ_FLOW,
                    portid: port.id,
                    cntlid: CNTLID_DYNAMIC,
                    asqsz: 32,
                    trsvcid: addr.port.to_string(),
                    subnqn: sub.nqn.clone(),
                    traddr: addr.host.clone(),
                    // RDMA: reliable connected QP, no provider specified, rdma_cm.
                    tsas: match addr.kind {
                        TransportKind::Rdma => [1, 1, 1],
                        TransportKind::Tcp => [0, 0, 0],
                    },
                });
            }
        }
        out
    }

    pub(crate) fn limits(&self, caps: &TransportCaps) -> Limits {
        Limits {
            max_transfer: self.config.max_transfer,
            max_queue_entries: self.config.max_queue_entries,
            max_io_queues: self.config.max_io_queues,
            inline_data_size: caps.inline_data_size,
            keyed_sgls: caps.keyed_sgls,
            sgl_descriptors: caps.sgl_descriptors.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_out_comes_back_under_its_id_and_ids_are_not_reused() {
        let t = Target::new(TargetConfig::default()).unwrap();
        let addr = |p: u16| format!("rdma://10.0.0.1:{p}").parse().unwrap();
        let a = t.add_port(addr(1), true);
        let b = t.add_port(addr(2), true);
        t.remove_port(b.id);
        let c = t.add_port(addr(3), true);
        assert_ne!(c.id, b.id);
        t.restore_port(b.clone());
        t.restore_port(b.clone());
        let mut ids: Vec<u16> = t.ports().iter().map(|p| p.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![a.id, b.id, c.id]);
    }

    #[test]
    fn subsystems_with_malformed_nqns_are_refused() {
        let t = Target::new(TargetConfig::default()).unwrap();
        let refusal = |cfg: SubsystemConfig| t.add_subsystem(cfg).err().unwrap().to_string();
        let e = refusal(SubsystemConfig::new("foo"));
        assert!(
            e.contains("subsystem NQN \"foo\" is not a valid NQN"),
            "{e}"
        );
        let mut cfg = SubsystemConfig::new("nqn.2026-11.io.fabric:a");
        cfg.allowed_hosts = vec!["nqn.2026-11.io.fabric:host".into(), String::new()];
        let e = refusal(cfg.clone());
        assert!(
            e.contains("allowed host NQN \"\" is not a valid NQN"),
            "{e}"
        );
        cfg.allowed_hosts.pop();
        assert!(t.add_subsystem(cfg).is_ok());
    }
}
