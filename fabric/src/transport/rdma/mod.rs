//! NVMe/RDMA: the RDMA transport binding of NVMe-oF over rdma_cm and verbs
//! (RoCE, InfiniBand, iWARP; tested on soft-RoCE).
//!
//! * Connections: rdma_cm with the NVMe-oF private data (queue ID, host
//!   queue sizes) on connect and accept, and a reject status for bad
//!   requests. One RC queue pair per NVMe queue.
//! * Memory: per device, one region of data slots and (target) one of
//!   receive buffers, registered once when the device is first used
//!   ([`pool`]). Exhausted slots make a command wait, not fail.
//! * Target data path: commands arrive on a shared receive queue; keyed SGL
//!   data is fetched with RDMA READ and returned with RDMA WRITE followed by
//!   the response SEND (SEND with invalidate when the host asked for remote
//!   invalidation); small writes arrive in the capsule; multi-descriptor
//!   SGLs (a last-segment descriptor in the capsule) are served too.
//! * Completions: one completion queue per device, grown as its queue pairs
//!   need and drained by an adaptive poller ([`device`]).
//! * Device removal: the listeners on the device stop advertising their
//!   ports, its queues close, and once the last of them is gone (a host
//!   queue goes when its owner drops it) its resources are released and the
//!   device closed, so the kernel completes the removal while the process
//!   runs; a listener takes up its address again when the device returns.
//!
//! The foreign calls and their wrappers are in [`verbs`]; the other files'
//! `unsafe` blocks are posts of work requests (whose memory must outlive
//! them), raw copies in and out of registered memory ([`pool`]) and fd
//! registrations, each with its `SAFETY:` justification.

mod device;
mod events;
mod host;
pub mod pool;
mod target;
pub mod verbs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::target::{Port, Target, TransportCaps, TransportKind};
use crate::transport::{
    HostQueue, HostTransport, ListenerHandle, QueueParams, TargetTransport, TransportError,
};

use device::{Device, DeviceConfig};
use verbs::{CmId, DeviceKey};

/// Settings of the RDMA transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdmaConfig {
    /// In-capsule data accepted on I/O queues (target).
    pub inline_data_size: u32,
    /// Shared receive queue entries per device (target).
    pub srq_entries: u32,
    /// Completion queue entries per device to start with (it grows as its
    /// queue pairs need; see [`device`]).
    pub cq_entries: u32,
    /// Bytes of one data slot; a host's single transfer is at most this.
    pub slot_size: usize,
    /// Data slots per device.
    pub slots: u32,
    /// How long a device's completion poller keeps polling after the last
    /// completion before it sleeps on the completion channel.
    pub poll_spin: std::time::Duration,
    /// SGL data block descriptors accepted per command.
    pub sgl_descriptors: u8,
}

/// Default [`RdmaConfig::poll_spin`]: long enough, in the emulated guest,
/// to catch the next command of a queue-depth-1 stream without sleeping
/// (perf/RESULTS.md, 2026-11-27); a busy device never sleeps.
pub const DEFAULT_POLL_SPIN: std::time::Duration = std::time::Duration::from_micros(300);

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            inline_data_size: 8192,
            srq_entries: 1024,
            cq_entries: 16384,
            slot_size: 128 * 1024,
            slots: 512,
            poll_spin: DEFAULT_POLL_SPIN,
            sgl_descriptors: 16,
        }
    }
}

static SHARED: std::sync::OnceLock<Arc<RdmaTransport>> = std::sync::OnceLock::new();

/// The NVMe/RDMA transport. Devices are set up on first use and kept.
#[derive(Default)]
pub struct RdmaTransport {
    devices: Arc<Devices>,
}

/// The devices in use, target side (with a shared receive queue) and host
/// side, set up on first use and kept until they are removed.
#[derive(Default)]
pub(super) struct Devices {
    config: RdmaConfig,
    target: Mutex<HashMap<DeviceKey, Arc<Device>>>,
    host: Mutex<HashMap<DeviceKey, Arc<Device>>>,
}

/// Receive buffer size: a 64-byte capsule plus the largest in-capsule data
/// (admin queues accept 8 KiB).
fn recv_size(cfg: &RdmaConfig) -> usize {
    64 + cfg
        .inline_data_size
        .max(crate::target::queue::ADMIN_INLINE_DATA) as usize
}

impl RdmaTransport {
    /// A transport with these settings.
    pub fn new(config: RdmaConfig) -> RdmaTransport {
        RdmaTransport {
            devices: Arc::new(Devices {
                config,
                ..Default::default()
            }),
        }
    }

    /// Settings.
    pub fn config(&self) -> &RdmaConfig {
        &self.devices.config
    }

    /// The process-wide transport (devices are shared by every listener
    /// and host queue).
    pub fn shared() -> Arc<RdmaTransport> {
        SHARED
            .get_or_init(|| Arc::new(RdmaTransport::default()))
            .clone()
    }

    /// Set the process-wide transport's settings; fails once it is in use.
    pub fn configure(config: RdmaConfig) -> Result<(), TransportError> {
        SHARED
            .set(Arc::new(RdmaTransport::new(config)))
            .map_err(|_| TransportError::Unavailable("the RDMA transport is already in use".into()))
    }

    /// Whether this machine has an RDMA device.
    pub fn available() -> bool {
        verbs::device_count() > 0
    }

    fn caps(&self) -> TransportCaps {
        TransportCaps {
            kind: TransportKind::Rdma,
            inline_data_size: self.config().inline_data_size,
            keyed_sgls: true,
            sgl_descriptors: self.config().sgl_descriptors,
        }
    }
}

impl Devices {
    /// The device of `id`, set up (buffers registered) on first use.
    fn device(&self, id: &CmId, target: bool) -> Result<Arc<Device>, TransportError> {
        let key = id
            .device()
            .ok_or_else(|| TransportError::Unavailable("rdma_cm id has no device".into()))?;
        let registry = if target { &self.target } else { &self.host };
        let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&key) {
            return Ok(d.clone());
        }
        let cfg = DeviceConfig {
            cq_entries: self.config.cq_entries,
            srq_entries: if target { self.config.srq_entries } else { 0 },
            recv_size: recv_size(&self.config),
            slot_size: self.config.slot_size,
            slots: self.config.slots,
            remote_access: !target,
            poll_spin: self.config.poll_spin,
        };
        let dev = Device::open(id, cfg).map_err(|e| TransportError::io("RDMA device set-up", e))?;
        tracing::info!(
            slots = self.config.slots,
            slot_size = self.config.slot_size,
            srq = cfg.srq_entries,
            side = if target { "target" } else { "host" },
            "RDMA device ready (buffers registered)"
        );
        map.insert(key, dev.clone());
        Ok(dev)
    }

    /// Take the device `key` out of use (it was removed): it is released
    /// once its queues have closed, and a device that comes back under the
    /// same key later gets a fresh set-up.
    fn retire(&self, key: DeviceKey) {
        for registry in [&self.target, &self.host] {
            let dev = registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            if let Some(dev) = dev {
                dev.retire();
            }
        }
    }
}

fn unavailable() -> TransportError {
    TransportError::Unavailable(
        "no RDMA device found: RDMA listeners and connections are unavailable on this machine"
            .into(),
    )
}

#[async_trait]
impl TargetTransport for RdmaTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Rdma
    }

    fn caps(&self) -> TransportCaps {
        RdmaTransport::caps(self)
    }

    async fn listen(
        &self,
        target: Arc<Target>,
        port: Arc<Port>,
    ) -> Result<ListenerHandle, TransportError> {
        if !Self::available() {
            return Err(unavailable());
        }
        target::listen(self.devices.clone(), self.caps(), target, port, false).await
    }
}

impl RdmaTransport {
    /// Listen on `port`, or, on a machine with no RDMA device yet, start a
    /// listener that waits for one and serves (and is advertised) once the
    /// address is on a device: for a target with other listeners to serve
    /// meanwhile.
    pub async fn listen_or_wait(
        &self,
        target: Arc<Target>,
        port: Arc<Port>,
    ) -> Result<ListenerHandle, TransportError> {
        target::listen(self.devices.clone(), self.caps(), target, port, true).await
    }
}

#[async_trait]
impl HostTransport for RdmaTransport {
    async fn connect(
        &self,
        address: &crate::target::PortAddress,
        params: &QueueParams,
    ) -> Result<Arc<dyn HostQueue>, TransportError> {
        if !Self::available() {
            return Err(unavailable());
        }
        host::connect(self.devices.clone(), address, params).await
    }
}
