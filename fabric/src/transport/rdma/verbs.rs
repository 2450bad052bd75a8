//! A small safe layer over rdma-core (libibverbs and librdmacm, through the
//! `rdma-sys` bindings). This file holds the `unsafe` code of the RDMA
//! transport: each wrapper owns one verbs or rdma_cm object and frees it on
//! drop, and each `unsafe` block says why it is sound.
//!
//! Why `rdma-sys` and our own layer: it binds all of verbs and rdma_cm
//! against the system's rdma-core, including the inline post/poll functions.
//! The `ibv`/`ibverbs` crate cannot post RDMA READ/WRITE, use SRQs,
//! completion channels or rdma_cm; `async-rdma` is GPL-3.0 and unmaintained.
//!
//! Thread safety: rdma-core's verbs (posting, polling, registration) are
//! thread safe, so the wrappers are `Send + Sync`. Work requests name memory
//! by address and key: [`QueuePair::post_send`] and the receive posts are
//! `unsafe fn`s whose callers keep that memory alive and untouched until the
//! work request completes.

use std::ffi::c_void;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::Arc;

use rdma_sys::*;

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn check(rc: i32, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error(what))
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(last_error("fcntl(F_GETFL)"));
    }
    // SAFETY: as above.
    check(
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) },
        "fcntl(F_SETFL)",
    )
}

/// How many RDMA devices the system has (0 when rdma-core finds none or the
/// kernel has no RDMA support).
pub fn device_count() -> usize {
    let mut n = 0i32;
    // SAFETY: ibv_get_device_list writes the count and returns a list we
    // free right away; we read nothing from it.
    unsafe {
        let list = ibv_get_device_list(&mut n);
        if list.is_null() {
            return 0;
        }
        ibv_free_device_list(list);
    }
    n.max(0) as usize
}

/// A socket address in the form rdma_cm takes.
struct RawAddr {
    storage: libc::sockaddr_storage,
}

impl RawAddr {
    fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is large and aligned enough for
                // any sockaddr; we copy sockaddr_in into its start.
                unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            }
        }
        RawAddr { storage }
    }

    fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        &mut self.storage as *mut _ as *mut libc::sockaddr
    }
}

/// Read a sockaddr written by rdma_cm.
///
/// # Safety
/// `sa` must point to a valid, initialized sockaddr of its family's size.
unsafe fn read_addr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a valid sockaddr; we read the family and
    // then the struct of that family.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::new(
                    IpAddr::V6(ip),
                    u16::from_be(sin6.sin6_port),
                ))
            }
            _ => None,
        }
    }
}

/// An rdma_cm event channel: connection events for its ids arrive here.
pub struct EventChannel {
    ch: *mut rdma_event_channel,
}

// SAFETY: librdmacm event channels may be used from any thread.
unsafe impl Send for EventChannel {}
// SAFETY: as above; rdma_get_cm_event is thread safe.
unsafe impl Sync for EventChannel {}

/// The kinds of rdma_cm events this transport handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmEventKind {
    /// Address resolved (host).
    AddrResolved,
    /// Route resolved (host).
    RouteResolved,
    /// A host asks to connect (target).
    ConnectRequest,
    /// The connection is up.
    Established,
    /// The peer rejected the connection.
    Rejected,
    /// The connection went down.
    Disconnected,
    /// The device is going away.
    DeviceRemoval,
    /// The QP left the time-wait state.
    TimewaitExit,
    /// Resolution or connection failed.
    Error,
    /// Anything else.
    Other,
}

/// One rdma_cm event; acknowledged when dropped.
pub struct CmEvent {
    ev: *mut rdma_cm_event,
    /// Its kind.
    pub kind: CmEventKind,
    /// The event's status (errno-like, 0 for success).
    pub status: i32,
    /// Private data that came with it (connect request, accept, reject).
    pub private_data: Vec<u8>,
    /// Key of the rdma_cm id it concerns (see [`CmId::key`]).
    pub id_key: usize,
    /// RDMA READs the peer will answer (connect request, accept).
    pub responder_resources: u8,
    /// RDMA READs the peer will issue.
    pub initiator_depth: u8,
    taken: bool,
}

// SAFETY: an event is owned by one holder until acknowledged.
unsafe impl Send for CmEvent {}

impl EventChannel {
    /// A new, non-blocking event channel.
    pub fn new() -> io::Result<EventChannel> {
        // SAFETY: plain constructor; checked for null.
        let ch = unsafe { rdma_create_event_channel() };
        if ch.is_null() {
            return Err(last_error("rdma_create_event_channel"));
        }
        let chan = EventChannel { ch };
        set_nonblocking(chan.fd())?;
        Ok(chan)
    }

    /// The fd to wait on for readiness.
    pub fn fd(&self) -> RawFd {
        // SAFETY: `ch` is a valid channel for our lifetime.
        unsafe { (*self.ch).fd }
    }

    /// The next event, or `None` if none is pending.
    pub fn next_event(&self) -> io::Result<Option<CmEvent>> {
        let mut ev: *mut rdma_cm_event = ptr::null_mut();
        // SAFETY: valid channel; rdma_get_cm_event fills `ev` on success.
        let rc = unsafe { rdma_get_cm_event(self.ch, &mut ev) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(io::Error::new(e.kind(), format!("rdma_get_cm_event: {e}"))),
            };
        }
        // SAFETY: `ev` is a valid event until acknowledged (in Drop); its
        // private data pointer and length describe a buffer owned by it.
        unsafe {
            let kind = match (*ev).event {
                rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
                rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
                rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST => CmEventKind::ConnectRequest,
                rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established,
                rdma_cm_event_type::RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected,
                rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
                rdma_cm_event_type::RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
                rdma_cm_event_type::RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEventKind::TimewaitExit,
                rdma_cm_event_type::RDMA_CM_EVENT_ADDR_ERROR
                | rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_ERROR
                | rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_ERROR
                | rdma_cm_event_type::RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Error,
                _ => CmEventKind::Other,
            };
            let conn = &(*ev).param.conn;
            let private_data = if conn.private_data.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(
                    conn.private_data as *const u8,
                    conn.private_data_len as usize,
                )
                .to_vec()
            };
            Ok(Some(CmEvent {
                ev,
                kind,
                status: (*ev).status,
                private_data,
                id_key: (*ev).id as usize,
                responder_resources: conn.responder_resources,
                initiator_depth: conn.initiator_depth,
                taken: false,
            }))
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id on the channel is destroyed before it (ids keep
        // an Arc of their channel).
        unsafe { rdma_destroy_event_channel(self.ch) };
    }
}

impl CmEvent {
    /// For a connect request: take ownership of the new id.
    pub fn take_new_id(&mut self, channel: Arc<EventChannel>) -> Option<CmId> {
        if self.kind != CmEventKind::ConnectRequest || self.taken {
            return None;
        }
        self.taken = true;
        // SAFETY: the event is valid; for a connect request its `id` is a
        // new rdma_cm id that the application owns and must destroy.
        let id = unsafe { (*self.ev).id };
        Some(CmId {
            id,
            _channel: channel,
        })
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
        // SAFETY: each event from rdma_get_cm_event is acknowledged once.
        unsafe { rdma_ack_cm_event(self.ev) };
    }
}

/// An rdma_cm id: one listening endpoint or one connection (with its QP).
pub struct CmId {
    id: *mut rdma_cm_id,
    _channel: Arc<EventChannel>,
}

// SAFETY: rdma_cm ids may be used from any thread; calls on one id are
// not made concurrently by this transport except posting, which is thread safe.
unsafe impl Send for CmId {}
// SAFETY: as above.
unsafe impl Sync for CmId {}

/// The verbs device context of an id (owned by rdma_cm).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceKey(usize);

/// Limits of a device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLimits {
    /// Work requests per queue.
    pub max_qp_wr: u32,
    /// Completion queue entries.
    pub max_cqe: u32,
    /// Shared receive queue work requests.
    pub max_srq_wr: u32,
    /// Outstanding RDMA READs a QP may answer.
    pub max_qp_rd_atom: u8,
    /// Outstanding RDMA READs a QP may issue.
    pub max_qp_init_rd_atom: u8,
    /// Scatter-gather entries per work request.
    pub max_sge: u32,
}

impl CmId {
    /// A new id on `channel` for reliable connected (TCP port space) use.
    pub fn new(channel: Arc<EventChannel>) -> io::Result<CmId> {
        let mut id: *mut rdma_cm_id = ptr::null_mut();
        // SAFETY: valid channel; `id` receives the new id on success.
        check(
            unsafe {
                rdma_create_id(
                    channel.ch,
                    &mut id,
                    ptr::null_mut(),
                    rdma_port_space::RDMA_PS_TCP,
                )
            },
            "rdma_create_id",
        )?;
        Ok(CmId {
            id,
            _channel: channel,
        })
    }

    /// A key identifying this id in events.
    pub fn key(&self) -> usize {
        self.id as usize
    }

    /// Bind to a local address.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        let mut a = RawAddr::new(addr);
        // SAFETY: valid id; rdma_bind_addr copies the address.
        check(
            unsafe { rdma_bind_addr(self.id, a.as_mut_ptr()) },
            "rdma_bind_addr",
        )
    }

    /// Listen for connection requests.
    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        // SAFETY: valid, bound id.
        check(unsafe { rdma_listen(self.id, backlog) }, "rdma_listen")
    }

    /// Start resolving `dst` (an AddrResolved or Error event follows).
    pub fn resolve_addr(
        &self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout_ms: i32,
    ) -> io::Result<()> {
        let mut d = RawAddr::new(dst);
        let mut s = src.map(RawAddr::new);
        let sp = s.as_mut().map_or(ptr::null_mut(), |s| s.as_mut_ptr());
        // SAFETY: valid id; the addresses are copied by the call.
        check(
            unsafe { rdma_resolve_addr(self.id, sp, d.as_mut_ptr(), timeout_ms) },
            "rdma_resolve_addr",
        )
    }

    /// Start resolving the route (a RouteResolved or Error event follows).
    pub fn resolve_route(&self, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: valid id with a resolved address.
        check(
            unsafe { rdma_resolve_route(self.id, timeout_ms) },
            "rdma_resolve_route",
        )
    }

    /// The device this id is bound to, once bound or resolved.
    pub fn device(&self) -> Option<DeviceKey> {
        self.context().ok().map(|ctx| DeviceKey(ctx as usize))
    }

    /// The verbs context of the device the id is bound to.
    fn context(&self) -> io::Result<*mut ibv_context> {
        // SAFETY: valid id; `verbs` is null until bound to a device, and
        // then owned by rdma_cm for as long as any id uses the device.
        let ctx = unsafe { (*self.id).verbs };
        if ctx.is_null() {
            return Err(io::Error::other("rdma_cm id not bound to a device"));
        }
        Ok(ctx)
    }

    /// Local address (after binding or resolution).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: valid id; rdma_get_local_addr returns a pointer into it.
        unsafe { read_addr(rdma_get_local_addr(&*self.id)) }
    }

    /// Peer address (after resolution or a connect request).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as above.
        unsafe { read_addr(rdma_get_peer_addr(&*self.id)) }
    }

    /// Create this id's RC queue pair on `pd`, completing into `cq`,
    /// receiving from `srq` if given.
    pub fn create_qp(
        &self,
        pd: &ProtectionDomain,
        cq: &CompletionQueue,
        srq: Option<&SharedReceiveQueue>,
        caps: QpCaps,
    ) -> io::Result<QueuePair> {
        // SAFETY: ibv_qp_init_attr is plain data; zero is a valid start.
        let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.cq;
        attr.recv_cq = cq.cq;
        attr.srq = srq.map_or(ptr::null_mut(), |s| s.srq);
        attr.cap.max_send_wr = caps.max_send_wr;
        attr.cap.max_recv_wr = if srq.is_some() { 0 } else { caps.max_recv_wr };
        attr.cap.max_send_sge = caps.max_sge;
        attr.cap.max_recv_sge = 1;
        attr.cap.max_inline_data = caps.max_inline_data;
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        attr.sq_sig_all = 0;
        // SAFETY: valid id, PD, CQ and SRQ. They outlive the QP: it goes
        // with its id, and every owner of an id with a QP holds an Arc of the
        // device those belong to until after the id is destroyed (the
        // target's connection task, the host queue's field order).
        check(
            unsafe { rdma_create_qp(self.id, pd.pd, &mut attr) },
            "rdma_create_qp",
        )?;
        // SAFETY: rdma_create_qp stored the QP in the id.
        let qp = unsafe { (*self.id).qp };
        // SAFETY: reading the QP number of a valid QP.
        let num = unsafe { (*qp).qp_num };
        Ok(QueuePair {
            qp,
            num,
            max_inline: attr.cap.max_inline_data,
            id: self.id,
        })
    }

    fn conn_param(private: &[u8], responder: u8, initiator: u8) -> rdma_conn_param {
        rdma_conn_param {
            private_data: private.as_ptr() as *const c_void,
            private_data_len: private.len().min(255) as u8,
            responder_resources: responder,
            initiator_depth: initiator,
            flow_control: 1,
            retry_count: 7,
            rnr_retry_count: 7,
            srq: 0,
            qp_num: 0,
        }
    }

    /// Connect (host side) with `private` data.
    pub fn connect(&self, private: &[u8], responder: u8, initiator: u8) -> io::Result<()> {
        let mut p = Self::conn_param(private, responder, initiator);
        // SAFETY: valid id with a QP; the private data is copied by the call.
        check(unsafe { rdma_connect(self.id, &mut p) }, "rdma_connect")
    }

    /// Accept a connection request with `private` data.
    pub fn accept(&self, private: &[u8], responder: u8, initiator: u8) -> io::Result<()> {
        let mut p = Self::conn_param(private, responder, initiator);
        // SAFETY: valid id from a connect request, with a QP.
        check(unsafe { rdma_accept(self.id, &mut p) }, "rdma_accept")
    }

    /// Reject a connection request with `private` data.
    pub fn reject(&self, private: &[u8]) -> io::Result<()> {
        // SAFETY: valid id from a connect request; data copied by the call.
        check(
            unsafe {
                rdma_reject(
                    self.id,
                    private.as_ptr() as *const c_void,
                    private.len().min(255) as u8,
                )
            },
            "rdma_reject",
        )
    }

    /// Disconnect (the QP moves to the error state; pending work flushes).
    pub fn disconnect(&self) {
        // SAFETY: valid id; disconnecting an unconnected id just fails.
        unsafe { rdma_disconnect(self.id) };
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the QP (if any) belongs to this id and is destroyed with
        // it; no work request of it is used after this point because its
        // owner (the connection) is being dropped.
        unsafe {
            if !(*self.id).qp.is_null() {
                rdma_destroy_qp(self.id);
            }
            rdma_destroy_id(self.id);
        }
    }
}

/// Queue pair sizing.
#[derive(Clone, Copy, Debug)]
pub struct QpCaps {
    /// Send work requests.
    pub max_send_wr: u32,
    /// Receive work requests (without an SRQ).
    pub max_recv_wr: u32,
    /// Scatter-gather entries per send.
    pub max_sge: u32,
    /// Bytes that may be sent inline.
    pub max_inline_data: u32,
}

/// A device context held open: rdma_cm owns the verbs context of each
/// device and closes it once no id uses the device and the device is gone,
/// so this holds an id of its own (the anchor) bound to the device. Every
/// object created on the context holds an `Arc` of this, so the context
/// outlives them all, whatever order their owners let go in.
///
/// A device that was removed ([`mark_removed`](Self::mark_removed)) is let
/// go of when the last object goes: the context's device files are closed.
/// rdma_cm would do that itself only when it next lists the devices and at
/// least one is left (librdmacm v44 to at least v64), and devices without
/// "disassociate" support (rxe) finish their removal only once every
/// process has closed them.
pub struct DeviceContext {
    ctx: *mut ibv_context,
    removed: std::sync::atomic::AtomicBool,
    _anchor: CmId,
}

// SAFETY: verbs contexts are usable from any thread.
unsafe impl Send for DeviceContext {}
// SAFETY: as above.
unsafe impl Sync for DeviceContext {}

impl DeviceContext {
    /// Hold the device `id` is bound to (by binding an anchor id to `id`'s
    /// local address).
    pub fn hold(id: &CmId) -> io::Result<Arc<DeviceContext>> {
        let ctx = id.context()?;
        let mut local = id
            .local_addr()
            .ok_or_else(|| io::Error::other("rdma_cm id has no local address"))?;
        local.set_port(0);
        let anchor = CmId::new(Arc::new(EventChannel::new()?))?;
        anchor.bind(local)?;
        if anchor.context()? != ctx {
            return Err(io::Error::other(format!(
                "{local} is on another RDMA device than the connection"
            )));
        }
        Ok(Arc::new(DeviceContext {
            ctx,
            removed: Default::default(),
            _anchor: anchor,
        }))
    }

    /// The device was removed: close its files once nothing uses it.
    pub fn mark_removed(&self) {
        self.removed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Close the device files of the context by putting /dev/null in their
    /// place: the kernel sees the device closed, while every fd number the
    /// context owns stays open for rdma_cm, whose later calls on it fail
    /// cleanly and whose own close of the context closes /dev/null.
    fn close_device_files(&self) -> io::Result<()> {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        // SAFETY: the context is valid: rdma_cm frees it only once no id
        // uses its device, and our anchor id still does; its fds are plain
        // integers in it.
        let fds = unsafe { [(*self.ctx).cmd_fd, (*self.ctx).async_fd] };
        for fd in fds.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: dup2 atomically replaces an fd that the context owns
            // with /dev/null; no object of ours is left on the context (each
            // holds an Arc of this), so nothing of ours uses it again.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
                return Err(last_error("dup2"));
            }
        }
        Ok(())
    }

    /// The device's identity (the same as [`CmId::device`] of its ids).
    pub fn key(&self) -> DeviceKey {
        DeviceKey(self.ctx as usize)
    }

    /// Query the device's limits.
    pub fn limits(&self) -> io::Result<DeviceLimits> {
        // SAFETY: ibv_device_attr is plain data; ibv_query_device fills it.
        let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        check(
            // SAFETY: the context is held open by `self`.
            unsafe { ibv_query_device(self.ctx, &mut attr) },
            "ibv_query_device",
        )?;
        Ok(DeviceLimits {
            max_qp_wr: attr.max_qp_wr.max(0) as u32,
            max_cqe: attr.max_cqe.max(0) as u32,
            max_srq_wr: attr.max_srq_wr.max(0) as u32,
            max_qp_rd_atom: attr.max_qp_rd_atom.clamp(0, 255) as u8,
            max_qp_init_rd_atom: attr.max_qp_init_rd_atom.clamp(0, 255) as u8,
            max_sge: attr.max_sge.max(0) as u32,
        })
    }
}

impl Drop for DeviceContext {
    fn drop(&mut self) {
        if self.removed.load(std::sync::atomic::Ordering::Acquire) {
            match self.close_device_files() {
                Ok(()) => tracing::info!("removed RDMA device closed"),
                Err(e) => tracing::error!(error = %e, "cannot close a removed RDMA device"),
            }
        }
        // The anchor id goes after this, as a field.
    }
}

/// A protection domain (holding its device context open).
pub struct ProtectionDomain {
    pd: *mut ibv_pd,
    context: Arc<DeviceContext>,
}

// SAFETY: PDs are usable from any thread.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// Allocate a PD on `context`.
    pub fn new(context: &Arc<DeviceContext>) -> io::Result<Arc<ProtectionDomain>> {
        // SAFETY: the context is held open by `context`.
        let pd = unsafe { ibv_alloc_pd(context.ctx) };
        if pd.is_null() {
            return Err(last_error("ibv_alloc_pd"));
        }
        Ok(Arc::new(ProtectionDomain {
            pd,
            context: context.clone(),
        }))
    }

    /// The device context.
    pub fn context(&self) -> &Arc<DeviceContext> {
        &self.context
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: every MR and SRQ of the PD holds an Arc of it, so they are
        // gone; QPs are destroyed before the owner of the id lets go of the
        // device (see `CmId::create_qp`). The context is still held.
        unsafe { ibv_dealloc_pd(self.pd) };
    }
}

/// Access rights of registered memory.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// The peer may RDMA READ it.
    pub remote_read: bool,
    /// The peer may RDMA WRITE it.
    pub remote_write: bool,
}

/// A registered memory region over memory it owns.
///
/// The memory is a raw allocation: the device (and, for remotely
/// accessible regions, the peer) writes it behind the compiler's back, so
/// accesses are raw copies at an address, made while no work request uses
/// those bytes. The one exception is [`slice`](Self::slice), a shared
/// borrow of bytes that nothing can write while it lives (no work request
/// on them and no remote write access to the region).
pub struct MemoryRegion {
    mr: *mut ibv_mr,
    mem: ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    len: usize,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: registrations are usable from any thread; the memory is only
// accessed through raw copies under the pool's ownership discipline.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Allocate `len` zeroed bytes aligned to 4 KiB and register them.
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize, access: Access) -> io::Result<MemoryRegion> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let mem =
            ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("cannot allocate {len} bytes to register"),
                )
            })?;
        let mut flags = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
        if access.remote_read {
            flags |= ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
        }
        if access.remote_write {
            flags |= ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        }
        // SAFETY: valid PD; the memory is owned by the returned value and
        // outlives the registration (deregistered in Drop before it is freed).
        let mr = unsafe {
            ibv_reg_mr(
                pd.pd,
                mem.as_ptr() as *mut c_void,
                layout.size(),
                flags as i32,
            )
        };
        if mr.is_null() {
            let e = last_error("ibv_reg_mr");
            // SAFETY: allocated above with this layout, never registered.
            unsafe { std::alloc::dealloc(mem.as_ptr(), layout) };
            return Err(e);
        }
        Ok(MemoryRegion {
            mr,
            mem,
            layout,
            len,
            _pd: pd.clone(),
        })
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.mem.as_ptr() as u64
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: valid MR.
        unsafe { (*self.mr).lkey }
    }

    /// Remote key.
    pub fn rkey(&self) -> u32 {
        // SAFETY: valid MR.
        unsafe { (*self.mr).rkey }
    }

    /// Whether `off..off + n` lies inside the region.
    fn in_bounds(&self, off: usize, n: usize) -> bool {
        off.checked_add(n).is_some_and(|end| end <= self.len)
    }

    /// Copy `src` into the region at `off`.
    ///
    /// # Safety
    /// No work request may be reading or writing `off..off + src.len()`.
    pub unsafe fn write_at(&self, off: usize, src: &[u8]) {
        assert!(
            self.in_bounds(off, src.len()),
            "write past the end of a memory region"
        );
        // SAFETY: in bounds (checked) of our allocation, which `src` (a
        // Rust reference) cannot overlap; the caller guarantees no DMA on
        // these bytes and the pool hands each slot to one owner at a time.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.mem.as_ptr().add(off), src.len()) };
    }

    /// Copy `dst.len()` bytes out of the region at `off`.
    ///
    /// # Safety
    /// No work request may be writing `off..off + dst.len()`.
    pub unsafe fn read_at(&self, off: usize, dst: &mut [u8]) {
        assert!(
            self.in_bounds(off, dst.len()),
            "read past the end of a memory region"
        );
        // SAFETY: in bounds (checked); no concurrent DMA by the caller's guarantee.
        unsafe {
            ptr::copy_nonoverlapping(self.mem.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        };
    }

    /// The bytes `off..off + len` of the region, borrowed.
    ///
    /// # Safety
    /// Nothing may write those bytes while the borrow lives: no work
    /// request, and no peer (the region has no remote write access).
    pub unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            self.in_bounds(off, len),
            "slice past the end of a memory region"
        );
        // SAFETY: in bounds (checked) of our allocation, which lives as long
        // as `self`; the caller guarantees that nothing writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.mem.as_ptr().add(off), len) }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: no work request uses the region any more (its pool and
        // the connections using it are gone); it is deregistered before its
        // memory, allocated in `new` with this layout, is freed.
        unsafe {
            ibv_dereg_mr(self.mr);
            std::alloc::dealloc(self.mem.as_ptr(), self.layout);
        }
    }
}

/// A completion channel: its fd becomes readable when an armed CQ has a
/// new completion.
pub struct CompletionChannel {
    ch: *mut ibv_comp_channel,
    _context: Arc<DeviceContext>,
}

// SAFETY: completion channels are usable from any thread.
unsafe impl Send for CompletionChannel {}
// SAFETY: as above.
unsafe impl Sync for CompletionChannel {}

impl CompletionChannel {
    /// A non-blocking completion channel on `context`.
    pub fn new(context: &Arc<DeviceContext>) -> io::Result<CompletionChannel> {
        // SAFETY: the context is held open by `context`.
        let ch = unsafe { ibv_create_comp_channel(context.ctx) };
        if ch.is_null() {
            return Err(last_error("ibv_create_comp_channel"));
        }
        let c = CompletionChannel {
            ch,
            _context: context.clone(),
        };
        set_nonblocking(c.fd())?;
        Ok(c)
    }

    /// The fd to wait on.
    pub fn fd(&self) -> RawFd {
        // SAFETY: valid channel.
        unsafe { (*self.ch).fd }
    }

    /// Consume pending notifications (acknowledging them on `cq`); returns
    /// how many there were.
    pub fn drain(&self, cq: &CompletionQueue) -> u32 {
        let mut n = 0;
        loop {
            let mut ev_cq: *mut ibv_cq = ptr::null_mut();
            let mut ctx: *mut c_void = ptr::null_mut();
            // SAFETY: valid, non-blocking channel; fails with EAGAIN when empty.
            if unsafe { ibv_get_cq_event(self.ch, &mut ev_cq, &mut ctx) } != 0 {
                break;
            }
            n += 1;
        }
        if n > 0 {
            // SAFETY: every event we got is for `cq` (the channel serves one CQ).
            unsafe { ibv_ack_cq_events(cq.cq, n) };
        }
        n
    }
}

impl Drop for CompletionChannel {
    fn drop(&mut self) {
        // SAFETY: its CQ is destroyed first (the CQ owner drops before it).
        unsafe { ibv_destroy_comp_channel(self.ch) };
    }
}

/// Most completions taken by one [`CompletionQueue::poll`].
pub const POLL_BATCH: usize = 64;

/// One work completion.
#[derive(Clone, Copy, Debug)]
pub struct WorkCompletion {
    /// The work request's id.
    pub wr_id: u64,
    /// Success or the error status.
    pub status: u32,
    /// Bytes received (receives).
    pub byte_len: u32,
    /// The QP it belongs to.
    pub qp_num: u32,
    /// Whether the peer invalidated an rkey with its send.
    pub invalidated_rkey: Option<u32>,
}

impl WorkCompletion {
    /// Whether the work request succeeded.
    pub fn ok(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_SUCCESS
    }

    /// Whether the request was flushed because its QP went to the error state.
    pub fn flushed(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_WR_FLUSH_ERR
    }
}

/// A completion queue bound to a completion channel.
pub struct CompletionQueue {
    cq: *mut ibv_cq,
    _context: Arc<DeviceContext>,
}

// SAFETY: polling and arming are thread safe in rdma-core.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// A CQ of `entries` entries on `channel`'s device, notifying `channel`.
    pub fn new(entries: u32, channel: &CompletionChannel) -> io::Result<CompletionQueue> {
        let context = &channel._context;
        // SAFETY: the context is held open; the channel outlives the CQ
        // (its owner drops the CQ first).
        let cq =
            unsafe { ibv_create_cq(context.ctx, entries as i32, ptr::null_mut(), channel.ch, 0) };
        if cq.is_null() {
            return Err(last_error("ibv_create_cq"));
        }
        Ok(CompletionQueue {
            cq,
            _context: context.clone(),
        })
    }

    /// Poll up to [`POLL_BATCH`] completions into `out` (cleared first).
    pub fn poll(&self, out: &mut Vec<WorkCompletion>) -> io::Result<usize> {
        out.clear();
        // On the stack and not initialized: this runs for every poll, also
        // the empty ones, and ibv_poll_cq fills in the entries it returns.
        let mut wcs = [const { std::mem::MaybeUninit::<ibv_wc>::uninit() }; POLL_BATCH];
        // SAFETY: valid CQ; ibv_poll_cq writes at most POLL_BATCH entries
        // into the array (MaybeUninit<ibv_wc> has ibv_wc's layout).
        let n = unsafe { ibv_poll_cq(self.cq, POLL_BATCH as i32, wcs.as_mut_ptr().cast()) };
        if n < 0 {
            return Err(io::Error::other("ibv_poll_cq failed"));
        }
        for wc in &wcs[..(n as usize).min(POLL_BATCH)] {
            // SAFETY: ibv_poll_cq initialized the first `n` entries.
            let wc = unsafe { wc.assume_init_ref() };
            let inv = if wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_INV.0 != 0 {
                // SAFETY: with IBV_WC_WITH_INV the union holds the rkey.
                Some(unsafe { wc.imm_data_invalidated_rkey_union.invalidated_rkey })
            } else {
                None
            };
            out.push(WorkCompletion {
                wr_id: wc.wr_id,
                status: wc.status,
                byte_len: wc.byte_len,
                qp_num: wc.qp_num,
                invalidated_rkey: inv,
            });
        }
        Ok(n as usize)
    }

    /// Entries the CQ holds (the device may round a request up).
    ///
    /// Not to be called while [`resize`](Self::resize) runs on another
    /// thread (the device's owner serialises both).
    pub fn capacity(&self) -> u32 {
        // SAFETY: valid CQ; `cqe` is written only by create and resize.
        unsafe { (*self.cq).cqe.max(0) as u32 }
    }

    /// Resize the CQ to hold at least `entries` entries. Completions in it
    /// are kept; polling and posting may go on meanwhile.
    pub fn resize(&self, entries: u32) -> io::Result<()> {
        let entries = i32::try_from(entries).unwrap_or(i32::MAX);
        // SAFETY: valid CQ; providers serialise resizing against polling
        // under the CQ's own lock.
        check(unsafe { ibv_resize_cq(self.cq, entries) }, "ibv_resize_cq")
    }

    /// Ask for a notification on the next completion.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: valid CQ.
        check(
            unsafe { ibv_req_notify_cq(self.cq, 0) },
            "ibv_req_notify_cq",
        )
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: every QP using the CQ is destroyed first.
        unsafe { ibv_destroy_cq(self.cq) };
    }
}

/// Post a one-SGE receive work request through `post` (which returns 0 or
/// an errno, as the verbs post functions do).
fn post_one_recv(
    wr_id: u64,
    sge: Sge,
    post: impl FnOnce(*mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> i32,
) -> io::Result<()> {
    let mut s = ibv_sge {
        addr: sge.addr,
        length: sge.len,
        lkey: sge.lkey,
    };
    let mut wr = ibv_recv_wr {
        wr_id,
        next: ptr::null_mut(),
        sg_list: &mut s,
        num_sge: 1,
    };
    let mut bad: *mut ibv_recv_wr = ptr::null_mut();
    // The work request and its SGE live across the call, which copies them.
    match post(&mut wr, &mut bad) {
        0 => Ok(()),
        rc => Err(io::Error::from_raw_os_error(rc)),
    }
}

/// A shared receive queue.
pub struct SharedReceiveQueue {
    srq: *mut ibv_srq,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: posting to an SRQ is thread safe.
unsafe impl Send for SharedReceiveQueue {}
// SAFETY: as above.
unsafe impl Sync for SharedReceiveQueue {}

/// A scatter-gather element: registered memory by address, length and key.
#[derive(Clone, Copy, Debug)]
pub struct Sge {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Local key of its registration.
    pub lkey: u32,
}

impl SharedReceiveQueue {
    /// An SRQ of `max_wr` receives on `pd`.
    pub fn new(pd: &Arc<ProtectionDomain>, max_wr: u32) -> io::Result<SharedReceiveQueue> {
        // SAFETY: plain data.
        let mut attr: ibv_srq_init_attr = unsafe { std::mem::zeroed() };
        attr.attr.max_wr = max_wr;
        attr.attr.max_sge = 1;
        // SAFETY: valid PD.
        let srq = unsafe { ibv_create_srq(pd.pd, &mut attr) };
        if srq.is_null() {
            return Err(last_error("ibv_create_srq"));
        }
        Ok(SharedReceiveQueue {
            srq,
            _pd: pd.clone(),
        })
    }

    /// Post a receive into `sge`.
    ///
    /// # Safety
    /// The memory of `sge` must stay registered and untouched until the
    /// receive completes.
    pub unsafe fn post_recv(&self, wr_id: u64, sge: Sge) -> io::Result<()> {
        // SAFETY: valid SRQ; the memory contract is the caller's.
        post_one_recv(wr_id, sge, |wr, bad| unsafe {
            ibv_post_srq_recv(self.srq, wr, bad)
        })
    }
}

impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        // SAFETY: every QP using the SRQ is destroyed first.
        unsafe { ibv_destroy_srq(self.srq) };
    }
}

/// A queue pair (owned by its [`CmId`], destroyed with it).
pub struct QueuePair {
    qp: *mut ibv_qp,
    num: u32,
    max_inline: u32,
    id: *mut rdma_cm_id,
}

// SAFETY: posting is thread safe.
unsafe impl Send for QueuePair {}
// SAFETY: as above.
unsafe impl Sync for QueuePair {}

/// One send-side work request.
#[derive(Clone, Copy, Debug)]
pub enum SendOp {
    /// SEND the local data.
    Send,
    /// SEND the local data and invalidate the peer's `rkey`.
    SendInvalidate(u32),
    /// RDMA WRITE the local data to the peer's `addr`/`rkey`.
    Write {
        /// Remote address.
        addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA READ the peer's `addr`/`rkey` into the local buffer.
    Read {
        /// Remote address.
        addr: u64,
        /// Remote key.
        rkey: u32,
    },
}

/// A chain of send work requests that could not be posted whole.
#[derive(Debug, thiserror::Error)]
#[error("ibv_post_send: {error} ({posted} work requests of the chain posted)")]
pub struct PostSendError {
    /// Requests at the head of the chain that were posted and run on.
    pub posted: usize,
    /// Why the rest was refused.
    pub error: io::Error,
}

/// A send-side work request: operation, local memory, whether it completes
/// visibly (signaled), and whether its data is copied at post time (inline).
#[derive(Clone, Copy, Debug)]
pub struct SendWr {
    /// Id reported in its completion.
    pub wr_id: u64,
    /// What to do.
    pub op: SendOp,
    /// Local memory.
    pub sge: Sge,
    /// Generate a completion.
    pub signaled: bool,
    /// Copy the data into the work request (small sends only).
    pub inline: bool,
}

impl QueuePair {
    /// The QP number (completions name it).
    pub fn num(&self) -> u32 {
        self.num
    }

    /// Bytes that may be sent inline.
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }

    /// Post a chain of send work requests.
    ///
    /// On failure the error says how many requests at the head of the chain
    /// were posted all the same (verbs post a chain up to the first request
    /// they cannot take): those run on, so their memory stays in use.
    ///
    /// # Safety
    /// The memory of every non-inline SGE must stay registered and untouched
    /// (not written for sends and writes, not read or written for reads)
    /// until a signaled completion at or after it arrives, or, for requests
    /// posted by a chain that failed, until the QP is destroyed. The QP must
    /// still belong to a live [`CmId`].
    pub unsafe fn post_send(&self, wrs: &[SendWr]) -> Result<(), PostSendError> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<ibv_sge> = wrs
            .iter()
            .map(|w| ibv_sge {
                addr: w.sge.addr,
                length: w.sge.len,
                lkey: w.sge.lkey,
            })
            .collect();
        // SAFETY: ibv_send_wr is plain data (pointers and unions); zeroed is valid.
        let mut raw: Vec<ibv_send_wr> = (0..wrs.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (i, w) in wrs.iter().enumerate() {
            let r = &mut raw[i];
            r.wr_id = w.wr_id;
            r.sg_list = &mut sges[i];
            r.num_sge = if w.sge.len == 0 { 0 } else { 1 };
            let mut flags = 0;
            if w.signaled {
                flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if w.inline {
                flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
            r.send_flags = flags;
            match w.op {
                SendOp::Send => r.opcode = ibv_wr_opcode::IBV_WR_SEND,
                SendOp::SendInvalidate(rkey) => {
                    r.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_INV;
                    r.imm_data_invalidated_rkey_union.invalidated_rkey = rkey;
                }
                SendOp::Write { addr, rkey } => {
                    r.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                    r.wr.rdma = rdma_t {
                        remote_addr: addr,
                        rkey,
                    };
                }
                SendOp::Read { addr, rkey } => {
                    r.opcode = ibv_wr_opcode::IBV_WR_RDMA_READ;
                    r.wr.rdma = rdma_t {
                        remote_addr: addr,
                        rkey,
                    };
                }
            }
        }
        for i in 0..raw.len().saturating_sub(1) {
            let next: *mut ibv_send_wr = &mut raw[i + 1];
            raw[i].next = next;
        }
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: valid QP of a live id (caller); the WR chain and SGEs live
        // across the call, which copies them; the memory contract is the caller's.
        let rc = unsafe { ibv_post_send(self.qp, raw.as_mut_ptr(), &mut bad) };
        if rc == 0 {
            return Ok(());
        }
        // `bad` names the first request not posted; if it names none of
        // ours, assume the worst: the whole chain is in flight.
        let posted = raw
            .iter()
            .position(|w| ptr::eq(w, bad))
            .unwrap_or(raw.len());
        Err(PostSendError {
            posted,
            error: io::Error::from_raw_os_error(rc),
        })
    }

    /// Post a receive into `sge` (QPs without an SRQ).
    ///
    /// # Safety
    /// As [`SharedReceiveQueue::post_recv`].
    pub unsafe fn post_recv(&self, wr_id: u64, sge: Sge) -> io::Result<()> {
        // SAFETY: valid QP; the memory contract is the caller's.
        post_one_recv(wr_id, sge, |wr, bad| unsafe {
            ibv_post_recv(self.qp, wr, bad)
        })
    }

    /// The id owning this QP (for logging).
    pub fn id_key(&self) -> usize {
        self.id as usize
    }
}
