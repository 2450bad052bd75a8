//! Controllers: one per host association with a subsystem, created by the
//! admin queue's Connect. A controller owns its properties (CC, CSTS), its
//! features, its asynchronous events, its error log and the keep-alive timer
//! that tears it down when the host goes silent, or when this process was
//! not running for so long that the host may have given up on it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::wire::fabrics::{cc, csts};
use crate::wire::identify::oaes;
use crate::wire::log_page::ErrorEntry;
use crate::wire::opcode::log;
use crate::wire::Status;

use super::port::Port;
use super::subsystem::Subsystem;
use super::Limits;

/// Outstanding Asynchronous Event Requests allowed (AERL + 1).
pub const MAX_AERS: usize = 4;
/// Error log entries kept (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;
/// Keep-alive timeout of a discovery controller whose host asked for none
/// (as the Linux target does), so that stale discovery sessions end.
pub const DISCOVERY_DEFAULT_KATO_MS: u32 = 120_000;

/// Asynchronous events a controller reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncEvent {
    /// A namespace was added, removed or changed.
    NamespaceAttribute,
    /// An ANA group changed state.
    AnaChange,
    /// The discovery log changed.
    DiscoveryChange,
}

impl AsyncEvent {
    fn config_bit(self) -> u32 {
        match self {
            AsyncEvent::NamespaceAttribute => oaes::NAMESPACE_ATTRIBUTE,
            AsyncEvent::AnaChange => oaes::ANA_CHANGE,
            AsyncEvent::DiscoveryChange => oaes::DISCOVERY_CHANGE,
        }
    }

    fn log_page(self) -> u8 {
        match self {
            AsyncEvent::NamespaceAttribute => log::CHANGED_NAMESPACES,
            AsyncEvent::AnaChange => log::ANA,
            AsyncEvent::DiscoveryChange => log::DISCOVERY,
        }
    }

    /// The AER completion dword 0: notice type, event information, log page.
    pub fn completion_dw0(self) -> u32 {
        const NOTICE: u32 = 2;
        let info: u32 = match self {
            AsyncEvent::NamespaceAttribute => 0x00,
            AsyncEvent::AnaChange => 0x03,
            AsyncEvent::DiscoveryChange => 0xf0,
        };
        NOTICE | info << 8 | (self.log_page() as u32) << 16
    }
}

struct AenState {
    config: u32,
    waiters: VecDeque<oneshot::Sender<u32>>,
    pending: VecDeque<u32>,
    masked_logs: BTreeSet<u8>,
    changed_namespaces: BTreeSet<u32>,
}

struct State {
    cc: u32,
    csts: u32,
    io_queues_granted: u16,
    /// Connected queues by ID, with the token that closes each.
    connected_queues: BTreeMap<u16, CancellationToken>,
    aen: AenState,
    errors: VecDeque<ErrorEntry>,
    error_count: u64,
    write_cache: bool,
}

/// Who a controller serves: the host NQN and host identifier of its Connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    /// Host NQN.
    pub nqn: String,
    /// Host identifier.
    pub id: [u8; 16],
}

/// How often the keep-alive monitor notes the time: a quarter of KATO,
/// from 100 ms to 1 s.
fn monitor_period_ms(kato_ms: u32) -> u64 {
    (u64::from(kato_ms) / 4).clamp(100, 1000)
}

/// The monitor's ticks for `kato_ms`; a late tick is not made up for.
fn monitor_ticks(kato_ms: u32) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(Duration::from_millis(monitor_period_ms(kato_ms)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

fn kato_duration(kato_ms: u32) -> Duration {
    Duration::from_millis(u64::from(kato_ms))
}

/// The gap between the keep-alive monitor's runs that tears a controller
/// down: one period plus a stall of half its KATO, at least 1 s (sub-second
/// KATOs exist only in tests; Linux's host takes whole seconds). 0 (never)
/// without KATO.
fn stall_limit_ms(kato_ms: u32) -> u64 {
    match kato_ms {
        0 => 0,
        ms => (u64::from(ms) / 2).max(1000) + monitor_period_ms(ms),
    }
}

/// A controller.
pub struct Controller {
    /// Controller ID.
    pub cntlid: u16,
    /// The subsystem.
    pub subsystem: Arc<Subsystem>,
    /// The port its admin queue connected through.
    pub port: Arc<Port>,
    /// The host it serves.
    pub host: HostIdentity,
    /// Limits of the transport and target.
    pub limits: Limits,
    state: Mutex<State>,
    created: Instant,
    /// Whether a command came since the keep-alive monitor last looked.
    activity: AtomicBool,
    kato: watch::Sender<u32>,
    /// When the keep-alive monitor last ran, in ms since `created`.
    monitor_ran: AtomicU64,
    /// Gap between the monitor's runs that means this process stalled (see
    /// [`Controller::stalled_past_keep_alive`]); 0 without KATO.
    stall_limit_ms: AtomicU64,
    dead: AtomicBool,
    token: CancellationToken,
}

impl Controller {
    pub(crate) fn new(
        cntlid: u16,
        subsystem: Arc<Subsystem>,
        port: Arc<Port>,
        host: HostIdentity,
        kato_ms: u32,
        limits: Limits,
        token: CancellationToken,
    ) -> Arc<Controller> {
        Arc::new(Controller {
            cntlid,
            subsystem,
            port,
            host,
            limits,
            state: Mutex::new(State {
                cc: 0,
                csts: 0,
                io_queues_granted: limits.max_io_queues,
                connected_queues: BTreeMap::new(),
                aen: AenState {
                    config: 0,
                    waiters: VecDeque::new(),
                    pending: VecDeque::new(),
                    masked_logs: BTreeSet::new(),
                    changed_namespaces: BTreeSet::new(),
                },
                errors: VecDeque::new(),
                error_count: 0,
                write_cache: true,
            }),
            created: Instant::now(),
            activity: AtomicBool::new(true),
            kato: watch::Sender::new(kato_ms),
            monitor_ran: AtomicU64::new(0),
            stall_limit_ms: AtomicU64::new(stall_limit_ms(kato_ms)),
            dead: AtomicBool::new(false),
            token,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this is a discovery controller.
    pub fn is_discovery(&self) -> bool {
        self.subsystem.is_discovery
    }

    /// Cancelled when the controller is torn down.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether the controller has been torn down.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Note host activity (any command resets the keep-alive timer: the
    /// controller advertises traffic based keep alive). A flag, read before
    /// it is written: no clock read per command, and the queues' threads
    /// keep sharing its cache line while it is set.
    pub fn touch(&self) {
        if !self.activity.load(Ordering::Relaxed) {
            self.activity.store(true, Ordering::Relaxed);
        }
    }

    /// Start the keep-alive monitor (no-op while KATO is 0). As in Linux's
    /// target, the timer runs a whole KATO at a time and expires when no
    /// command came during one, so a silent host is found after one to two
    /// KATOs (a host sends its keep alives at least every KATO / 2).
    ///
    /// Between expiries the monitor also notes the time every
    /// [`monitor_period_ms`], which is how a stall of this whole process is
    /// seen (see [`Controller::stalled_past_keep_alive`]).
    pub(crate) fn start_keep_alive(self: &Arc<Self>) {
        self.touch();
        self.note_monitor_ran();
        let weak = Arc::downgrade(self);
        let token = self.token.clone();
        let mut kato_rx = self.kato.subscribe();
        tokio::spawn(async move {
            let mut kato = *kato_rx.borrow_and_update();
            let expiry = tokio::time::sleep(kato_duration(kato));
            tokio::pin!(expiry);
            let mut ticks = monitor_ticks(kato);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    // A new KATO starts a whole timer; no sender: controller gone.
                    r = kato_rx.changed() => {
                        if r.is_err() {
                            return;
                        }
                        kato = *kato_rx.borrow_and_update();
                        expiry.as_mut().reset(tokio::time::Instant::now() + kato_duration(kato));
                        ticks = monitor_ticks(kato);
                    }
                    _ = &mut expiry, if kato != 0 => {
                        let Some(ctrl) = weak.upgrade() else { return };
                        if !ctrl.activity.swap(false, Ordering::Relaxed) {
                            ctrl.shutdown("keep-alive timeout expired");
                            return;
                        }
                        expiry.as_mut().reset(tokio::time::Instant::now() + kato_duration(kato));
                    }
                    _ = ticks.tick(), if kato != 0 => {
                        let Some(ctrl) = weak.upgrade() else { return };
                        if ctrl.stalled_past_keep_alive() {
                            return;
                        }
                        ctrl.note_monitor_ran();
                    }
                }
            }
        });
    }

    fn ms_since_created(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn note_monitor_ran(&self) {
        self.monitor_ran
            .store(self.ms_since_created(), Ordering::Release);
    }

    /// Whether this controller is gone or must go because this process
    /// stopped running for half its KATO (at least 1 s) or more (SIGSTOP, a
    /// paused virtual machine, a frozen cgroup, a machine starved of CPU),
    /// seen as its keep-alive monitor overdue by that much; such a
    /// controller is torn down here. Transports ask before running commands
    /// they received: a host whose keep alive went unanswered for a KATO
    /// gives up on the controller and retries its commands on another path,
    /// and may write newer data there; the stale commands still in this
    /// process's socket or receive buffers would then overwrite it. (Half a KATO leaves room
    /// for clocks and scheduling; a stall that short only costs the host a
    /// reconnect.) One clock read and two atomic loads.
    pub fn stalled_past_keep_alive(&self) -> bool {
        if self.is_dead() {
            return true;
        }
        let limit = self.stall_limit_ms.load(Ordering::Relaxed);
        if limit == 0 {
            return false;
        }
        let ran = self.monitor_ran.load(Ordering::Acquire);
        let gap = self.ms_since_created().saturating_sub(ran);
        if gap <= limit {
            return false;
        }
        tracing::warn!(
            cntlid = self.cntlid,
            stalled_ms = gap,
            kato_ms = self.kato_ms(),
            "this process did not run for half the keep-alive timeout or more; \
             the host may have retried its commands elsewhere, so the controller \
             goes before running any it sent before"
        );
        self.shutdown("process stalled past the keep-alive timeout");
        true
    }

    /// The keep-alive timeout in milliseconds (0: none).
    pub fn kato_ms(&self) -> u32 {
        *self.kato.borrow()
    }

    /// Change the keep-alive timeout.
    pub fn set_kato_ms(&self, ms: u32) {
        self.touch();
        self.note_monitor_ran();
        self.stall_limit_ms
            .store(stall_limit_ms(ms), Ordering::Relaxed);
        self.kato.send_replace(ms);
    }

    /// Tear the controller down: every queue connection closes and the
    /// controller leaves its subsystem. Idempotent.
    pub fn shutdown(&self, reason: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(cntlid = self.cntlid, subnqn = %self.subsystem.nqn, hostnqn = %self.host.nqn, reason, "controller torn down");
        let tokens = {
            let mut st = self.lock();
            st.aen.waiters.clear();
            std::mem::take(&mut st.connected_queues)
        };
        self.token.cancel();
        for t in tokens.values() {
            t.cancel();
        }
        self.subsystem.unregister_controller(self.cntlid);
    }

    /// Attach a queue; fails if the ID is out of range or already connected.
    pub(crate) fn attach_queue(&self, qid: u16, token: CancellationToken) -> Result<(), Status> {
        let mut st = self.lock();
        // Checked under the lock: a shutdown that began earlier has marked
        // the controller dead; one that begins later finds this queue.
        if qid > st.io_queues_granted || self.dead.load(Ordering::Acquire) {
            return Err(Status::CONNECT_INVALID_PARAMETERS);
        }
        if qid > 0 && st.csts & csts::RDY == 0 {
            return Err(Status::COMMAND_SEQUENCE_ERROR);
        }
        match st.connected_queues.entry(qid) {
            Entry::Occupied(_) => Err(Status::CONNECT_INVALID_PARAMETERS),
            Entry::Vacant(v) => {
                v.insert(token);
                Ok(())
            }
        }
    }

    /// Detach a queue whose connection ended; the admin queue's end tears
    /// the controller down.
    pub(crate) fn detach_queue(&self, qid: u16) {
        self.lock().connected_queues.remove(&qid);
        if qid == 0 {
            self.shutdown("admin queue disconnected");
        }
    }

    /// Number of I/O queues granted (Set Features Number of Queues).
    pub fn io_queues(&self) -> u16 {
        self.lock().io_queues_granted
    }

    /// Grant up to `requested` I/O queues; returns the number granted.
    pub(crate) fn grant_io_queues(&self, requested: u32) -> u16 {
        let granted = requested.min(self.limits.max_io_queues as u32) as u16;
        self.lock().io_queues_granted = granted.max(1);
        granted.max(1)
    }

    /// Controller configuration.
    pub fn cc(&self) -> u32 {
        self.lock().cc
    }

    /// Controller status.
    pub fn csts(&self) -> u32 {
        self.lock().csts
    }

    /// Apply a write to CC: enabling checks the queue entry sizes and page
    /// size and sets RDY (or CFS when they are unsupported); disabling clears
    /// RDY; a shutdown notification completes at once.
    pub(crate) fn write_cc(&self, new: u32) {
        let mut st = self.lock();
        let old = st.cc;
        st.cc = new;
        if new & cc::EN != 0 && old & cc::EN == 0 {
            let ok = cc::iosqes(new) == 6
                && cc::iocqes(new) == 4
                && cc::mps(new) == 0
                && cc::css(new) == 0;
            st.csts = if ok { csts::RDY } else { csts::CFS };
        } else if new & cc::EN == 0 && old & cc::EN != 0 {
            st.csts = 0;
        }
        if new & cc::SHN_MASK != 0 {
            st.csts |= csts::SHST_COMPLETE;
        } else {
            st.csts &= !csts::SHST_COMPLETE;
        }
    }

    /// Whether the volatile write cache is enabled (when off, every write is
    /// made durable before it completes).
    pub fn write_cache(&self) -> bool {
        self.lock().write_cache
    }

    pub(crate) fn set_write_cache(&self, on: bool) {
        self.lock().write_cache = on;
    }

    /// Asynchronous event configuration.
    pub fn aen_config(&self) -> u32 {
        self.lock().aen.config
    }

    pub(crate) fn set_aen_config(&self, config: u32) {
        self.lock().aen.config = config;
    }

    /// Raise an asynchronous event: completes a waiting AER or queues it.
    /// Ignored when the host did not enable it, or while an earlier event
    /// of the same log page has not been read yet.
    pub fn raise(&self, event: AsyncEvent) {
        let mut st = self.lock();
        let aen = &mut st.aen;
        if aen.config & event.config_bit() == 0 || !aen.masked_logs.insert(event.log_page()) {
            return;
        }
        let dw0 = event.completion_dw0();
        while let Some(w) = aen.waiters.pop_front() {
            match w.send(dw0) {
                Ok(()) => return,
                Err(_) => continue,
            }
        }
        aen.pending.push_back(dw0);
    }

    /// Record a changed namespace and raise the notice.
    pub(crate) fn namespace_changed(&self, nsid: u32) {
        self.lock().aen.changed_namespaces.insert(nsid);
        self.raise(AsyncEvent::NamespaceAttribute);
    }

    /// Take the changed namespace list (cleared unless `retain`).
    pub(crate) fn changed_namespaces(&self, retain: bool) -> Vec<u32> {
        let mut st = self.lock();
        let list: Vec<u32> = st.aen.changed_namespaces.iter().copied().collect();
        if !retain {
            st.aen.changed_namespaces.clear();
        }
        list
    }

    /// A log page was read: without RAE its event may be reported again.
    pub(crate) fn log_page_read(&self, lid: u8, retain: bool) {
        if !retain {
            self.lock().aen.masked_logs.remove(&lid);
        }
    }

    /// Wait for an asynchronous event (an AER command): `Err` with the limit
    /// status when too many are outstanding.
    pub(crate) fn wait_event(&self) -> Result<oneshot::Receiver<u32>, Status> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if let Some(dw0) = st.aen.pending.pop_front() {
            let _ = tx.send(dw0);
            return Ok(rx);
        }
        st.aen.waiters.retain(|w| !w.is_closed());
        if st.aen.waiters.len() >= MAX_AERS {
            return Err(Status::AER_LIMIT_EXCEEDED);
        }
        st.aen.waiters.push_back(tx);
        Ok(rx)
    }

    /// Add an entry to the error log.
    pub(crate) fn record_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        let mut st = self.lock();
        st.error_count += 1;
        let entry = ErrorEntry {
            error_count: st.error_count,
            sqid,
            cid,
            status,
            param_location: 0xffff,
            lba,
            nsid,
        };
        if st.errors.len() == ERROR_LOG_ENTRIES {
            st.errors.pop_back();
        }
        st.errors.push_front(entry);
    }

    /// Error log entries, newest first.
    pub fn error_log(&self) -> Vec<ErrorEntry> {
        self.lock().errors.iter().copied().collect()
    }

    /// Total errors recorded.
    pub fn error_count(&self) -> u64 {
        self.lock().error_count
    }

    /// Seconds since the controller was created.
    pub fn uptime(&self) -> Duration {
        self.created.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::SubsystemConfig;

    fn controller() -> Arc<Controller> {
        let subsystem =
            Arc::new(Subsystem::new(SubsystemConfig::new("nqn.2026-11.test:c"), false).unwrap());
        let port = Arc::new(Port::new(1, "tcp://127.0.0.1:0".parse().unwrap(), false));
        let limits = Limits {
            max_transfer: 1 << 20,
            max_queue_entries: 128,
            max_io_queues: 4,
            inline_data_size: 0,
            keyed_sgls: false,
            sgl_descriptors: 1,
        };
        let host = HostIdentity {
            nqn: "nqn.2026-11.test:host".into(),
            id: [1; 16],
        };
        Controller::new(
            1,
            subsystem,
            port,
            host,
            0,
            limits,
            CancellationToken::new(),
        )
    }

    #[test]
    fn a_queue_id_connects_once_and_again_after_it_ends() {
        let ctrl = controller();
        ctrl.attach_queue(0, CancellationToken::new()).unwrap();
        ctrl.write_cc(cc::EN | 6 << 16 | 4 << 20);
        let mut last = CancellationToken::new();
        // Queue 1 reconnecting over and over keeps one entry, not one per
        // connect.
        for _ in 0..100 {
            last = CancellationToken::new();
            ctrl.attach_queue(1, last.clone()).unwrap();
            assert_eq!(
                ctrl.attach_queue(1, CancellationToken::new()),
                Err(Status::CONNECT_INVALID_PARAMETERS)
            );
            ctrl.detach_queue(1);
        }
        assert_eq!(ctrl.lock().connected_queues.len(), 1);
        ctrl.attach_queue(1, last.clone()).unwrap();
        assert_eq!(
            ctrl.attach_queue(5, CancellationToken::new()),
            Err(Status::CONNECT_INVALID_PARAMETERS)
        );
        // The admin queue's end closes every queue still connected.
        ctrl.detach_queue(0);
        assert!(last.is_cancelled());
        assert!(ctrl.lock().connected_queues.is_empty());
    }
}
