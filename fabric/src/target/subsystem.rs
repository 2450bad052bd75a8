//! NVM subsystems: an NQN, its namespaces, the hosts allowed in and the
//! controllers connected to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use raid::DeviceRef;

use crate::wire::fabrics::{valid_nqn, MAX_NQN_LEN};

use super::controller::Controller;
use super::namespace::Namespace;
use super::TargetError;

/// How to create a subsystem.
#[derive(Clone, Debug)]
pub struct SubsystemConfig {
    /// NVMe qualified name.
    pub nqn: String,
    /// Serial number (at most 20 ASCII characters; derived from the NQN if unset).
    pub serial: Option<String>,
    /// Model number (at most 40 ASCII characters).
    pub model: String,
    /// Host NQNs allowed to connect; empty means any host.
    pub allowed_hosts: Vec<String>,
    /// First controller ID this target hands out.
    pub cntlid_min: u16,
    /// Last controller ID this target hands out.
    pub cntlid_max: u16,
}

impl SubsystemConfig {
    /// A subsystem open to any host, with the full controller ID range.
    pub fn new(nqn: impl Into<String>) -> SubsystemConfig {
        SubsystemConfig {
            nqn: nqn.into(),
            serial: None,
            model: "fabric NVMe-oF target".into(),
            allowed_hosts: Vec::new(),
            cntlid_min: 1,
            cntlid_max: crate::wire::CNTLID_MAX,
        }
    }
}

/// Largest NSID a subsystem accepts (Identify NN and MNAN).
pub const MAX_NAMESPACES: u32 = 1024;

/// Number of ANA groups (ANAGRPMAX and NANAGRPID).
pub const ANA_GROUPS: u32 = 32;

/// I/O counters behind the SMART log.
#[derive(Default)]
pub struct IoStats {
    /// Read commands completed.
    pub reads: AtomicU64,
    /// Write commands completed.
    pub writes: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Commands failed with a media error.
    pub media_errors: AtomicU64,
}

/// An NVM subsystem (or the discovery subsystem).
pub struct Subsystem {
    /// NQN.
    pub nqn: String,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Whether this is the discovery subsystem.
    pub is_discovery: bool,
    allowed_hosts: RwLock<Vec<String>>,
    namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    controllers: Mutex<HashMap<u16, Arc<Controller>>>,
    cntlid_range: (u16, u16),
    next_cntlid: Mutex<u16>,
    /// I/O counters.
    pub stats: IoStats,
}

impl Subsystem {
    pub(crate) fn new(cfg: SubsystemConfig, is_discovery: bool) -> Result<Subsystem, TargetError> {
        let bad = |what: &str, nqn: &str| {
            TargetError::Config(format!(
                "{what} {nqn:?} is not a valid NQN (nqn. and then at most {} printable ASCII characters)",
                MAX_NQN_LEN - 4
            ))
        };
        if !valid_nqn(&cfg.nqn) {
            return Err(bad("subsystem NQN", &cfg.nqn));
        }
        if let Some(host) = cfg.allowed_hosts.iter().find(|h| !valid_nqn(h)) {
            return Err(bad("allowed host NQN", host));
        }
        if cfg.cntlid_min == 0
            || cfg.cntlid_min > cfg.cntlid_max
            || cfg.cntlid_max > crate::wire::CNTLID_MAX
        {
            return Err(TargetError::Config(format!(
                "controller ID range {}-{} must lie within 1-{}",
                cfg.cntlid_min,
                cfg.cntlid_max,
                crate::wire::CNTLID_MAX
            )));
        }
        let serial = match cfg.serial {
            Some(s) if s.len() > 20 || !s.is_ascii() => {
                return Err(TargetError::Config(format!(
                    "serial {s:?} must be at most 20 ASCII characters"
                )))
            }
            Some(s) => s,
            None => format!(
                "{:016x}",
                crc32c::crc32c(cfg.nqn.as_bytes()) as u64 | (cfg.nqn.len() as u64) << 32
            ),
        };
        if cfg.model.len() > 40 || !cfg.model.is_ascii() {
            return Err(TargetError::Config(format!(
                "model {:?} must be at most 40 ASCII characters",
                cfg.model
            )));
        }
        Ok(Subsystem {
            nqn: cfg.nqn,
            serial,
            model: cfg.model,
            is_discovery,
            allowed_hosts: RwLock::new(cfg.allowed_hosts),
            namespaces: RwLock::new(BTreeMap::new()),
            controllers: Mutex::new(HashMap::new()),
            cntlid_range: (cfg.cntlid_min, cfg.cntlid_max),
            next_cntlid: Mutex::new(cfg.cntlid_min),
            stats: IoStats::default(),
        })
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let hosts = self.allowed_hosts.read().unwrap_or_else(|e| e.into_inner());
        hosts.is_empty() || hosts.iter().any(|h| h == hostnqn)
    }

    /// Replace the allowed host list (empty: any host). Connected
    /// controllers of hosts no longer allowed are torn down (the fence).
    pub fn set_allowed_hosts(&self, hosts: Vec<String>) {
        *self
            .allowed_hosts
            .write()
            .unwrap_or_else(|e| e.into_inner()) = hosts;
        for ctrl in self.controllers() {
            if !self.host_allowed(&ctrl.host.nqn) {
                ctrl.shutdown("host access revoked");
            }
        }
    }

    /// The namespace with this NSID.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&nsid)
            .cloned()
    }

    /// All namespaces in NSID order.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Add a namespace backed by `device` in ANA group `ana_group`; connected
    /// controllers get a namespace attribute notice.
    pub fn add_namespace(
        &self,
        nsid: u32,
        device: DeviceRef,
        ana_group: u32,
    ) -> Result<Arc<Namespace>, TargetError> {
        if self.is_discovery {
            return Err(TargetError::Config(
                "the discovery subsystem has no namespaces".into(),
            ));
        }
        if nsid == 0 || nsid > MAX_NAMESPACES {
            return Err(TargetError::Config(format!(
                "NSID {nsid} must be from 1 to {MAX_NAMESPACES}"
            )));
        }
        if ana_group == 0 || ana_group > ANA_GROUPS {
            return Err(TargetError::Config(format!(
                "ANA group {ana_group} must be from 1 to {ANA_GROUPS}"
            )));
        }
        let ns = Namespace::new(&self.nqn, nsid, device, ana_group);
        {
            let mut map = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(&nsid) {
                return Err(TargetError::Config(format!(
                    "NSID {nsid} already exists in {}",
                    self.nqn
                )));
            }
            map.insert(nsid, ns.clone());
        }
        self.notify_namespace_changed(nsid);
        Ok(ns)
    }

    /// Remove a namespace; connected controllers get a notice.
    pub fn remove_namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        let ns = self
            .namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&nsid);
        if ns.is_some() {
            self.notify_namespace_changed(nsid);
        }
        ns
    }

    fn notify_namespace_changed(&self, nsid: u32) {
        for ctrl in self.controllers() {
            ctrl.namespace_changed(nsid);
        }
    }

    /// The connected controllers.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cntlid)
            .cloned()
    }

    /// Register a new controller built by `make` with a free ID; `None` when
    /// every ID of the range is in use.
    pub(crate) fn register_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Option<Arc<Controller>> {
        let mut ctrls = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.next_cntlid.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = self.cntlid_range;
        let span = (hi - lo) as u32 + 1;
        for _ in 0..span {
            let id = *next;
            *next = if id >= hi { lo } else { id + 1 };
            if let std::collections::hash_map::Entry::Vacant(slot) = ctrls.entry(id) {
                return Some(slot.insert(make(id)).clone());
            }
        }
        None
    }

    pub(crate) fn unregister_controller(&self, cntlid: u16) {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cntlid);
    }
}
