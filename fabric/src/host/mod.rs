//! The host library: connect to an NVMe-oF controller over any transport
//! (admin queue plus I/O queues), run admin commands, and read and write
//! namespaces. A remote namespace is a [`raid::BlockDevice`]
//! ([`RemoteNamespace`]), so a controller node can stack raid on remote
//! disks.

mod namespace;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use namespace::RemoteNamespace;

use crate::target::PortAddress;
use crate::transport::{
    host_transport, CommandResult, HostData, HostQueue, QueueParams, TransportError,
};
use crate::wire::fabrics::{
    cc, csts, property, Capabilities, ConnectCommand, ConnectData, PropertyCommand,
};
use crate::wire::identify::{
    decode_descriptors, decode_nsid_list, IdentifyController, IdentifyNamespace,
    NamespaceDescriptor, IDENTIFY_LEN,
};
use crate::wire::log_page::{
    decode_ana_log, decode_discovery_entries, decode_discovery_header, AnaGroup, DiscoveryEntry,
    GetLogPage, DISCOVERY_RECORD_LEN,
};
use crate::wire::opcode::{admin, cns, feature, io, log};
use crate::wire::sgl::SglDescriptor;
use crate::wire::tcp::Digests;
use crate::wire::{Command, Status, CNTLID_DYNAMIC, DISCOVERY_NQN};

/// How a host connects.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// I/O queues to ask for.
    pub io_queues: u16,
    /// Entries per I/O queue (fitted to the controller's CAP.MQES).
    pub queue_size: u16,
    /// Connect I/O queues at `queue_size` even above CAP.MQES (the target
    /// then refuses them): for probing a target's limits.
    pub queue_size_exact: bool,
    /// Keep-alive timeout (zero: none).
    pub kato: Duration,
    /// NVMe/TCP header and data digests.
    pub digests: Digests,
    /// Per-command timeout.
    pub timeout: Duration,
    /// TCP: how long an I/O queue waiting for responses keeps reading
    /// without sleeping (zero: off). Saves a wake-up per response at low
    /// queue depth for up to this much CPU per wait.
    pub poll: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        let id = uuid::Uuid::new_v4();
        HostOptions {
            hostnqn: format!("nqn.2014-08.org.nvmexpress:uuid:{id}"),
            hostid: *id.as_bytes(),
            io_queues: 2,
            queue_size: 128,
            queue_size_exact: false,
            kato: Duration::from_secs(5),
            digests: Digests::default(),
            timeout: Duration::from_secs(30),
            poll: Duration::ZERO,
        }
    }
}

/// Entries of the admin queue.
const ADMIN_QUEUE_SIZE: u16 = 32;
/// Most in-capsule data the host sends, whatever the controller's IOCCSZ
/// allows (the RDMA host holds a send buffer of this size per queue entry).
const MAX_INLINE_DATA: u32 = 64 << 10;
/// In-capsule data an admin queue carries: NVMe/TCP admin capsules take
/// 8 KiB; NVMe/RDMA admin capsules carry none (targets size their admin
/// receive buffers for the command alone).
fn admin_inline(kind: crate::target::TransportKind) -> u32 {
    match kind {
        crate::target::TransportKind::Tcp => 8192,
        crate::target::TransportKind::Rdma => 0,
    }
}

/// A connected controller, seen from the host.
pub struct HostController {
    /// Where it is.
    pub address: PortAddress,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Controller ID.
    pub cntlid: u16,
    /// Identify Controller data read at connect.
    pub identify: IdentifyController,
    /// Largest transfer of one I/O command: the controller's MDTS and what
    /// the transport's queues carry.
    pub max_transfer: u64,
    admin: Arc<dyn HostQueue>,
    io: Vec<Arc<dyn HostQueue>>,
    next_io: AtomicUsize,
    token: CancellationToken,
    opts: HostOptions,
}

async fn connect_queue(
    address: &PortAddress,
    params: QueueParams,
    subnqn: &str,
    cntlid: u16,
    opts: &HostOptions,
) -> Result<(Arc<dyn HostQueue>, u16), TransportError> {
    let transport = host_transport(address.kind)?;
    let queue = transport.connect(address, &params).await?;
    let kato_ms = if params.qid == 0 {
        opts.kato.as_millis().min(u32::MAX as u128) as u32
    } else {
        0
    };
    let cmd = ConnectCommand {
        recfmt: 0,
        qid: params.qid,
        sqsize: params.queue_size - 1,
        cattr: 0,
        kato_ms,
    }
    .to_command(0, SglDescriptor::in_capsule(1024));
    let data = ConnectData {
        hostid: opts.hostid,
        cntlid,
        subnqn: subnqn.to_string(),
        hostnqn: opts.hostnqn.clone(),
    };
    let r = queue
        .submit(cmd, HostData::Out(Bytes::copy_from_slice(&data.encode())))
        .await?;
    if !r.cqe.status.is_success() {
        queue.close();
        return Err(TransportError::Status(r.cqe.status));
    }
    Ok((queue, r.cqe.result as u16))
}

fn ok(r: CommandResult) -> Result<CommandResult, TransportError> {
    if r.cqe.status.is_success() {
        Ok(r)
    } else {
        Err(TransportError::Status(r.cqe.status))
    }
}

impl HostController {
    /// Connect to `subnqn` at `address`: admin queue, enable, identify, then
    /// the I/O queues (none for a discovery controller).
    pub async fn connect(
        address: &PortAddress,
        subnqn: &str,
        opts: &HostOptions,
    ) -> Result<Arc<HostController>, TransportError> {
        let params = QueueParams {
            qid: 0,
            queue_size: ADMIN_QUEUE_SIZE,
            inline_data_size: admin_inline(address.kind),
            digests: opts.digests,
            timeout: opts.timeout,
            poll: Duration::ZERO,
        };
        let (admin, cntlid) = connect_queue(address, params, subnqn, CNTLID_DYNAMIC, opts).await?;
        let mut ctrl = HostController {
            address: address.clone(),
            subnqn: subnqn.to_string(),
            cntlid,
            identify: IdentifyController::default(),
            max_transfer: u64::MAX,
            admin,
            io: Vec::new(),
            next_io: AtomicUsize::new(0),
            token: CancellationToken::new(),
            opts: opts.clone(),
        };
        let cap = ctrl.enable().await?;
        ctrl.identify = ctrl.identify_controller().await?;
        if ctrl.identify.cntlid != cntlid {
            return Err(TransportError::Protocol(format!(
                "Identify reports controller {} but Connect returned {cntlid}",
                ctrl.identify.cntlid
            )));
        }
        if subnqn != DISCOVERY_NQN && opts.io_queues > 0 {
            let granted = ctrl.set_queue_count(opts.io_queues).await?;
            let inline = ctrl
                .identify
                .ioccsz
                .saturating_mul(16)
                .saturating_sub(64)
                .min(MAX_INLINE_DATA);
            // CAP.MQES is the largest queue the controller takes (0's based).
            let queue_size = if opts.queue_size_exact {
                opts.queue_size
            } else {
                opts.queue_size.min(cap.mqes.saturating_add(1))
            }
            .max(2);
            if queue_size < opts.queue_size {
                tracing::warn!(
                    asked = opts.queue_size,
                    queue_size,
                    "the controller's I/O queues are smaller than asked (CAP.MQES)"
                );
            }
            for qid in 1..=granted.min(opts.io_queues) {
                let params = QueueParams {
                    qid,
                    queue_size,
                    inline_data_size: inline,
                    digests: opts.digests,
                    timeout: opts.timeout,
                    poll: opts.poll,
                };
                let (q, _) = connect_queue(address, params, subnqn, cntlid, opts).await?;
                ctrl.io.push(q);
            }
        }
        let queue_max = ctrl
            .io
            .iter()
            .map(|q| q.max_transfer() as u64)
            .min()
            .unwrap_or(u64::MAX);
        ctrl.max_transfer = ctrl
            .identify
            .max_transfer_bytes()
            .unwrap_or(u64::MAX)
            .min(queue_max);
        let ctrl = Arc::new(ctrl);
        ctrl.start_keep_alive();
        Ok(ctrl)
    }

    /// Connect to the discovery controller at `address` and read its log.
    pub async fn discover(
        address: &PortAddress,
        opts: &HostOptions,
    ) -> Result<Vec<DiscoveryEntry>, TransportError> {
        let ctrl = HostController::connect(address, DISCOVERY_NQN, opts).await?;
        let entries = ctrl.discovery_log().await;
        ctrl.disconnect().await;
        entries
    }

    fn start_keep_alive(self: &Arc<Self>) {
        if self.opts.kato.is_zero() {
            return;
        }
        let period = self.opts.kato / 2;
        let weak = Arc::downgrade(self);
        let token = self.token.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let Some(ctrl) = weak.upgrade() else { return };
                if let Err(e) = ctrl
                    .admin(Command::new(admin::KEEP_ALIVE), HostData::None)
                    .await
                {
                    tracing::warn!(error = %e, address = %ctrl.address, "keep alive failed");
                    return;
                }
            }
        });
    }

    /// Enable the controller; its capabilities (CAP) come back.
    async fn enable(&self) -> Result<Capabilities, TransportError> {
        let cap = Capabilities::decode(self.property_get(property::CAP, true).await?);
        self.property_set(property::CC, cc::ENABLE_DEFAULT as u64)
            .await?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(500 * cap.timeout_500ms.max(1) as u64);
        let mut wait = Duration::from_millis(1);
        loop {
            let s = self.property_get(property::CSTS, false).await? as u32;
            if s & csts::CFS != 0 {
                return Err(TransportError::Protocol(
                    "controller reports fatal status after enable".into(),
                ));
            }
            if s & csts::RDY != 0 {
                return Ok(cap);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TransportError::Protocol(
                    "controller did not become ready".into(),
                ));
            }
            // CSTS.RDY has no notification: polling with backoff is the protocol.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }

    /// Read a property.
    pub async fn property_get(
        &self,
        offset: u32,
        eight_bytes: bool,
    ) -> Result<u64, TransportError> {
        let r = ok(self
            .admin
            .submit(PropertyCommand::get(0, offset, eight_bytes), HostData::None)
            .await?)?;
        Ok(r.cqe.result64())
    }

    /// Write a 4-byte property.
    pub async fn property_set(&self, offset: u32, value: u64) -> Result<(), TransportError> {
        ok(self
            .admin
            .submit(
                PropertyCommand::set(0, offset, value, false),
                HostData::None,
            )
            .await?)
        .map(|_| ())
    }

    /// Submit a raw admin command (the status is not checked).
    pub async fn admin(
        &self,
        cmd: Command,
        data: HostData,
    ) -> Result<CommandResult, TransportError> {
        self.admin.submit(cmd, data).await
    }

    /// Submit a raw I/O command on the next I/O queue (the status is not checked).
    pub async fn io(&self, cmd: Command, data: HostData) -> Result<CommandResult, TransportError> {
        if self.io.is_empty() {
            return Err(TransportError::Closed("no I/O queues".into()));
        }
        let i = self.next_io.fetch_add(1, Ordering::Relaxed) % self.io.len();
        self.io[i].submit(cmd, data).await
    }

    /// Number of I/O queues connected.
    pub fn io_queue_count(&self) -> usize {
        self.io.len()
    }

    /// I/O queue `index` (0-based), for callers that spread their own load
    /// over the queues (a load generator keeps one worker per queue).
    pub fn io_queue(&self, index: usize) -> Option<Arc<dyn HostQueue>> {
        self.io.get(index).cloned()
    }

    async fn identify(&self, c: u8, nsid: u32) -> Result<Bytes, TransportError> {
        let cmd = Command {
            nsid,
            cdw10: c as u32,
            ..Command::new(admin::IDENTIFY)
        };
        let r = ok(self.admin(cmd, HostData::In(IDENTIFY_LEN as u32)).await?)?;
        r.data
            .ok_or_else(|| TransportError::Protocol("Identify returned no data".into()))
    }

    /// Identify Controller.
    pub async fn identify_controller(&self) -> Result<IdentifyController, TransportError> {
        Ok(IdentifyController::decode(
            &self.identify(cns::CONTROLLER, 0).await?,
        ))
    }

    /// Identify Namespace.
    pub async fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, TransportError> {
        Ok(IdentifyNamespace::decode(
            &self.identify(cns::NAMESPACE, nsid).await?,
        ))
    }

    /// Active namespace IDs.
    pub async fn active_namespaces(&self) -> Result<Vec<u32>, TransportError> {
        Ok(decode_nsid_list(
            &self.identify(cns::ACTIVE_NAMESPACES, 0).await?,
        ))
    }

    /// Namespace identification descriptors.
    pub async fn namespace_descriptors(
        &self,
        nsid: u32,
    ) -> Result<Vec<NamespaceDescriptor>, TransportError> {
        Ok(decode_descriptors(
            &self.identify(cns::NAMESPACE_DESCRIPTORS, nsid).await?,
        ))
    }

    /// Read `len` bytes of log page `lid` from `offset`.
    pub async fn get_log_page(
        &self,
        lid: u8,
        nsid: u32,
        len: u32,
        offset: u64,
        lsp: u8,
    ) -> Result<Bytes, TransportError> {
        let g = GetLogPage {
            lid,
            lsp,
            rae: false,
            len: len as u64,
            offset,
            lsi: 0,
        };
        let r = ok(self.admin(g.to_command(0, nsid), HostData::In(len)).await?)?;
        r.data
            .ok_or_else(|| TransportError::Protocol("Get Log Page returned no data".into()))
    }

    /// The discovery log entries (read consistently against its generation).
    pub async fn discovery_log(&self) -> Result<Vec<DiscoveryEntry>, TransportError> {
        for _ in 0..10 {
            let head = self
                .get_log_page(log::DISCOVERY, 0, DISCOVERY_RECORD_LEN as u32, 0, 0)
                .await?;
            let (generation, numrec) = decode_discovery_header(&head);
            let len = DISCOVERY_RECORD_LEN as u64 * (numrec.min(1024) + 1);
            let full = self
                .get_log_page(log::DISCOVERY, 0, len as u32, 0, 0)
                .await?;
            if decode_discovery_header(&full).0 == generation {
                return Ok(decode_discovery_entries(&full, numrec));
            }
        }
        Err(TransportError::Protocol(
            "discovery log kept changing while being read".into(),
        ))
    }

    /// The ANA log: change count and groups.
    pub async fn ana_log(&self) -> Result<(u64, Vec<AnaGroup>), TransportError> {
        let limit = self.max_transfer.min(self.admin.max_transfer() as u64);
        let len = ana_log_len(&self.identify, limit)?;
        let b = self.get_log_page(log::ANA, 0, len, 0, 0).await?;
        decode_ana_log(&b).ok_or_else(|| TransportError::Protocol("malformed ANA log".into()))
    }

    /// Set Features Number of Queues: returns the I/O queues granted.
    async fn set_queue_count(&self, n: u16) -> Result<u16, TransportError> {
        let v = (n as u32 - 1) | (n as u32 - 1) << 16;
        let cmd = Command {
            cdw10: feature::NUMBER_OF_QUEUES as u32,
            cdw11: v,
            ..Command::new(admin::SET_FEATURES)
        };
        let r = ok(self.admin(cmd, HostData::None).await?)?;
        let granted = (r.cqe.result & 0xffff).min(r.cqe.result >> 16) as u16;
        Ok(granted.saturating_add(1))
    }

    /// A namespace as a block device.
    pub async fn namespace(self: &Arc<Self>, nsid: u32) -> Result<RemoteNamespace, TransportError> {
        RemoteNamespace::open(self.clone(), nsid).await
    }

    /// Read `blocks` blocks at `lba` of namespace `nsid` in one command.
    pub async fn read(
        &self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<Bytes, TransportError> {
        let len = blocks.checked_mul(block_size).ok_or_else(|| {
            TransportError::Protocol(format!(
                "a read of {blocks} blocks of {block_size} bytes is too large for one command"
            ))
        })?;
        let cmd = rw_command(io::READ, nsid, lba, blocks);
        let r = ok(self.io(cmd, HostData::In(len)).await?)?;
        r.data
            .filter(|d| d.len() == len as usize)
            .ok_or_else(|| TransportError::Protocol("Read returned no or short data".into()))
    }

    /// Write `data` at `lba` of namespace `nsid` in one command.
    pub async fn write(
        &self,
        nsid: u32,
        lba: u64,
        data: Bytes,
        block_size: u32,
    ) -> Result<(), TransportError> {
        let blocks = (data.len() / block_size as usize) as u32;
        ok(self
            .io(
                rw_command(io::WRITE, nsid, lba, blocks),
                HostData::Out(data),
            )
            .await?)
        .map(|_| ())
    }

    /// Flush namespace `nsid`.
    pub async fn flush(&self, nsid: u32) -> Result<(), TransportError> {
        ok(self
            .io(
                Command {
                    nsid,
                    ..Command::new(io::FLUSH)
                },
                HostData::None,
            )
            .await?)
        .map(|_| ())
    }

    /// Disconnect: shut the controller down and close every queue.
    pub async fn disconnect(&self) {
        self.token.cancel();
        let _ = self
            .property_set(property::CC, (cc::ENABLE_DEFAULT | cc::SHN_NORMAL) as u64)
            .await;
        for q in &self.io {
            q.close();
        }
        self.admin.close();
    }

    /// Whether the admin queue is still connected.
    pub fn is_connected(&self) -> bool {
        !self.admin.is_closed()
    }
}

impl Drop for HostController {
    fn drop(&mut self) {
        self.token.cancel();
        for q in &self.io {
            q.close();
        }
        self.admin.close();
    }
}

/// Bytes of the whole ANA log of a controller with this identity: a header,
/// a descriptor per group and every namespace ID once. The controller's
/// fields size it, so it must fit in one transfer of at most `limit` bytes
/// (as the Linux host requires) rather than size an allocation unchecked.
fn ana_log_len(id: &IdentifyController, limit: u64) -> Result<u32, TransportError> {
    let len = 16 + u64::from(id.nanagrpid) * 32 + u64::from(id.mnan.max(id.nn)) * 4;
    u32::try_from(len)
        .ok()
        .filter(|&len| u64::from(len) <= limit)
        .ok_or_else(|| {
            TransportError::Protocol(format!(
                "ANA log of {len} bytes (NANAGRPID {}, MNAN {}, NN {}) exceeds the largest transfer of {limit} bytes",
                id.nanagrpid, id.mnan, id.nn
            ))
        })
}

/// A Read or Write command.
pub fn rw_command(opcode: u8, nsid: u32, lba: u64, blocks: u32) -> Command {
    Command {
        nsid,
        cdw10: lba as u32,
        cdw11: (lba >> 32) as u32,
        cdw12: blocks.saturating_sub(1) & 0xffff,
        ..Command::new(opcode)
    }
}

/// A status error's status, if that is what `e` is.
pub fn status_of(e: &TransportError) -> Option<Status> {
    match e {
        TransportError::Status(s) => Some(*s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ana_log_length_is_checked_against_the_transfer_limit() {
        let id = IdentifyController {
            nanagrpid: 32,
            mnan: 1024,
            nn: 1024,
            ..Default::default()
        };
        assert_eq!(ana_log_len(&id, 1 << 20).unwrap(), 16 + 32 * 32 + 1024 * 4);
        // Fields a controller may report that would overflow 32 bits or ask
        // for gigabytes are refused, not allocated.
        let huge = IdentifyController {
            nanagrpid: u32::MAX,
            mnan: u32::MAX,
            ..Default::default()
        };
        assert!(ana_log_len(&huge, u64::MAX).is_err());
        let big = IdentifyController {
            nn: 1 << 28,
            ..Default::default()
        };
        assert!(ana_log_len(&big, 16 << 20).is_err());
    }
}
