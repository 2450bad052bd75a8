//! The client of the meta group, for node agents, `fabric-ctl` and tests.
//!
//! It knows several replica endpoints and moves to the next one when a
//! replica cannot be reached. Retries are bounded by a deadline and follow
//! one rule: a read is retried on any transient failure; a write only when
//! it certainly was not applied (the connection was refused, or the replica
//! said so with [`RETRY_SAFE_HEADER`](crate::error::RETRY_SAFE_HEADER)), so
//! a retried create never turns into a misleading AlreadyExists.
//!
//! Agents reconcile with list-then-watch: `list` returns the objects and the
//! revision they were read at; `watch(revision)` streams every later change.
//! When the stream breaks, watch again from the last revision received; when
//! the watch answers FailedPrecondition (history compacted), list again.

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::error::{is_retry_safe, retry_safe};
use crate::objects::{snapshot_key, MetaObject};
use crate::proto::meta_client::MetaClient as GrpcClient;
use crate::proto::{
    AddReplicaRequest, Cluster, ControllerNode, ControllerNodeSpec, CreateClusterRequest,
    CreateHostRequest, CreateSnapshotRequest, CreateVolumeRequest, DiskNode, DiskNodeSpec,
    HeartbeatRequest, HeartbeatResponse, Host, ListRequest, MembershipResponse, NodeKind, Object,
    ObjectKind, ObjectRef, Operation, RemoveReplicaRequest, Snapshot, StatusRequest,
    StatusResponse, UpdateOperationRequest, Volume, WatchEvent, WatchRequest,
};
use crate::tls::{chain, endpoint, status_text, Tls};

/// Environment variable with the meta endpoints (comma-separated).
pub const ENDPOINT_ENV: &str = "FABRIC_META_ENDPOINT";
/// Endpoint used when none is given.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7400";

/// A client of the meta group.
pub struct MetaClient {
    endpoints: Vec<Endpoint>,
    deadline: Duration,
    current: Mutex<Option<(usize, GrpcClient<Channel>)>>,
    next: AtomicUsize,
    tls: bool,
}

/// Whether a status comes from a connection that was refused (the request
/// never reached a replica).
fn connection_refused(status: &Status) -> bool {
    refused(status.source())
}

/// Whether an error or one of its sources is a refused connection.
fn refused(mut source: Option<&(dyn std::error::Error + 'static)>) -> bool {
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// What [`MetaClient::follow`] hands over.
#[derive(Debug)]
pub enum Followed {
    /// A change.
    Event(WatchEvent),
    /// The stream broke (`why`) and is being opened again after
    /// `after_revision`.
    Resuming {
        /// The last revision seen.
        after_revision: u64,
        /// What broke it.
        why: String,
    },
}

/// One meta endpoint as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// `HOST:PORT`.
    pub address: String,
    /// What its scheme asked for: TLS (`https://`), plain text
    /// (`http://`), or nothing (no scheme: whatever the client is set to).
    pub tls: Option<bool>,
}

/// Checks a comma-separated list of endpoints, each `HOST:PORT`,
/// `http://HOST:PORT` or `https://HOST:PORT`.
pub fn parse_endpoints(value: &str) -> Result<Vec<EndpointSpec>, String> {
    let specs = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|raw| {
            let (tls, addr) = match raw.split_once("://") {
                Some(("http", rest)) => (Some(false), rest),
                Some(("https", rest)) => (Some(true), rest),
                Some(_) => {
                    return Err(format!(
                        "'{raw}' is not HOST:PORT, http://HOST:PORT or https://HOST:PORT"
                    ))
                }
                None => (None, raw),
            };
            let addr = addr.strip_suffix('/').unwrap_or(addr);
            match crate::cli::split_address(addr) {
                Ok((_, 0)) => Err(format!("'{raw}': port 0 cannot be connected to")),
                Ok(_) => Ok(EndpointSpec {
                    address: addr.to_string(),
                    tls,
                }),
                Err(e) => Err(e),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        return Err("no endpoint given".into());
    }
    Ok(specs)
}

/// When a call that starts now and may retry for `deadline` must end; none
/// when that is past the clock's range (no practical limit).
fn deadline_from_now(deadline: Duration) -> Option<Instant> {
    Instant::now().checked_add(deadline)
}

/// Whether `deadline` (see [`deadline_from_now`]) has passed.
fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

impl MetaClient {
    /// A client of the replicas at `endpoints` (comma-separated
    /// `[http://]HOST:PORT`, see [`parse_endpoints`]), retrying each call for
    /// at most `deadline`.
    pub fn new(endpoints: &str, deadline: Duration) -> Result<Self, Status> {
        Self::with_tls(endpoints, deadline, None)
    }

    /// [`new`](Self::new), over mutual TLS when `tls` is given (then an
    /// endpoint may say `https://`, not `http://`, and the other way round).
    pub fn with_tls(
        endpoints: &str,
        deadline: Duration,
        tls: Option<&Tls>,
    ) -> Result<Self, Status> {
        let invalid = |e: String| Status::invalid_argument(format!("meta endpoints: {e}"));
        let endpoints = parse_endpoints(endpoints)
            .map_err(invalid)?
            .into_iter()
            .map(|spec| {
                match (spec.tls, tls.is_some()) {
                    (Some(true), false) => {
                        return Err(invalid(format!(
                            "https://{} needs TLS settings (a certificate, its key and the CA)",
                            spec.address
                        )))
                    }
                    (Some(false), true) => {
                        return Err(invalid(format!(
                            "http://{} is plain text, but TLS settings were given",
                            spec.address
                        )))
                    }
                    _ => {}
                }
                endpoint(&spec.address, tls)
                    .map(|e| {
                        e.connect_timeout(Duration::from_secs(1))
                            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    })
                    .map_err(invalid)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MetaClient {
            endpoints,
            deadline,
            current: Mutex::new(None),
            next: AtomicUsize::new(0),
            tls: tls.is_some(),
        })
    }

    /// The gRPC client of the current replica, connecting to the next one
    /// that answers when there is none.
    async fn client(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(usize, GrpcClient<Channel>), Status> {
        if let Some(current) = self.current.lock().ok().and_then(|c| c.clone()) {
            return Ok(current);
        }
        let start = self.next.load(Ordering::Relaxed);
        let mut last_error = String::new();
        let mut hint = "";
        let mut round = 0usize;
        loop {
            for k in 0..self.endpoints.len() {
                let i = (start + k) % self.endpoints.len();
                match self.endpoints[i].connect().await {
                    Ok(channel) => {
                        let client = GrpcClient::new(channel);
                        if let Ok(mut c) = self.current.lock() {
                            *c = Some((i, client.clone()));
                        }
                        return Ok((i, client));
                    }
                    Err(e) => {
                        last_error = format!("{}: {}", self.endpoints[i].uri(), chain(&e));
                        hint = self.tls_hint(&e, Code::Unavailable, "");
                    }
                }
            }
            round += 1;
            if passed(deadline) {
                return Err(retry_safe(Status::unavailable(format!(
                    "no meta replica reachable ({last_error}{hint})"
                ))));
            }
            tokio::time::sleep(backoff(round)).await;
        }
    }

    /// Forgets whichever replica is current (the next call moves on).
    fn drop_current(&self) {
        let index = self
            .current
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(i, _)| *i));
        if let Some(index) = index {
            self.drop_client(index);
        }
    }

    /// Forgets the current replica after a failure (the next call moves on).
    fn drop_client(&self, index: usize) {
        if let Ok(mut c) = self.current.lock() {
            if c.as_ref().is_some_and(|(i, _)| *i == index) {
                *c = None;
                self.next.store(index + 1, Ordering::Relaxed);
            }
        }
    }

    /// What may be wrong when a call or connection fails with `error` in a
    /// way TLS settings explain: a TLS error (this client's TLS against a
    /// plain-text replica, certificates not trusted), a replica that closed
    /// the connection at once (under TLS 1.3 a replica refuses a client's
    /// certificate after the client thinks the handshake done; a TLS
    /// replica drops a plain-text client), or an HTTP/2 protocol error (a
    /// TLS replica's bytes read as HTTP/2). Which of these a mismatch shows
    /// depends on timing.
    fn tls_hint(
        &self,
        error: &(dyn std::error::Error + 'static),
        code: Code,
        message: &str,
    ) -> &'static str {
        let mut source = Some(error);
        let mut tls_error = false;
        while let Some(e) = source {
            let inner = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            tls_error |= e.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>());
            source = e.source();
        }
        // HTTP/2 keeps only the text of an I/O error it saw (a TLS alert,
        // a closed connection).
        let text = chain(error).to_lowercase();
        let closed = code == Code::Cancelled
            || [
                "received fatal alert",
                "broken pipe",
                "connection reset",
                "connection closed",
                "eof",
            ]
            .iter()
            .any(|words| text.contains(words));
        if self.tls && (tls_error || closed) {
            "; does the replica serve TLS, and take this certificate?"
        } else if !self.tls && (closed || message.starts_with("h2 protocol error")) {
            "; is it a meta replica's address? If the replica serves TLS, give a client certificate, its key and the CA"
        } else {
            ""
        }
    }

    /// A call's final error. A failure of the connection (a status made
    /// here, with the transport error as its source, not a replica's
    /// answer) says which replica and why, with the TLS hint; its code
    /// and metadata stay.
    fn explain(&self, index: usize, status: Status) -> Status {
        let Some(source) = status.source() else {
            return status;
        };
        let uri = self.endpoints.get(index).map(|e| e.uri().to_string());
        let message = format!(
            "{}: {}{}",
            uri.unwrap_or_default(),
            status_text(&status),
            self.tls_hint(source, status.code(), status.message())
        );
        Status::with_metadata(status.code(), message, status.metadata().clone())
    }

    /// Calls `f` with retries: a read (`write == false`) on any transient
    /// failure, a write only when it certainly was not applied.
    pub async fn call<T, F, Fut>(&self, write: bool, f: F) -> Result<T, Status>
    where
        F: Fn(GrpcClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = deadline_from_now(self.deadline);
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            let (index, client) = self.client(deadline).await?;
            let status = match f(client).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let refused = connection_refused(&status);
            // Any transient failure moves on to the next replica: this one
            // may be down, or cut off from the leader.
            if refused || transient(&status) {
                self.drop_client(index);
            }
            let retry = if write {
                refused || is_retry_safe(&status)
            } else {
                refused || transient(&status)
            };
            if !retry || passed(deadline) {
                return Err(self.explain(index, status));
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Reads one object.
    pub async fn get<T: MetaObject>(&self, name: &str) -> Result<T, Status> {
        let target = ObjectRef {
            kind: T::KIND as i32,
            name: name.to_string(),
        };
        let object = self
            .call(false, |mut c| {
                let t = target.clone();
                async move { c.get(t).await }
            })
            .await?;
        T::from_object(object).ok_or_else(|| Status::internal("the replica returned another kind"))
    }

    /// Lists the objects of a kind (snapshots: of `volume`, or all when
    /// empty), with the revision of the listing.
    pub async fn list<T: MetaObject>(&self, volume: &str) -> Result<(Vec<T>, u64), Status> {
        let req = ListRequest {
            kind: T::KIND as i32,
            volume: volume.to_string(),
        };
        let reply = self
            .call(false, |mut c| {
                let r = req.clone();
                async move { c.list(r).await }
            })
            .await?;
        Ok((
            reply.items.into_iter().filter_map(T::from_object).collect(),
            reply.revision,
        ))
    }

    /// Deletes an object; returns the revision of the deletion.
    pub async fn delete(&self, kind: ObjectKind, name: &str) -> Result<u64, Status> {
        let target = ObjectRef {
            kind: kind as i32,
            name: name.to_string(),
        };
        let reply = self
            .call(true, |mut c| {
                let t = target.clone();
                async move { c.delete(t).await }
            })
            .await?;
        Ok(reply.revision)
    }

    async fn create<T: MetaObject, R, F, Fut>(&self, req: R, f: F) -> Result<T, Status>
    where
        R: Clone,
        F: Fn(GrpcClient<Channel>, R) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Object>, Status>>,
    {
        let object = self.call(true, |c| f(c, req.clone())).await?;
        T::from_object(object).ok_or_else(|| Status::internal("the replica returned another kind"))
    }

    /// Creates the cluster object.
    pub async fn create_cluster(&self, req: CreateClusterRequest) -> Result<Cluster, Status> {
        self.create(req, |mut c, r| async move { c.create_cluster(r).await })
            .await
    }

    /// Declares a disk node.
    pub async fn create_disk_node(&self, spec: DiskNodeSpec) -> Result<DiskNode, Status> {
        self.create(spec, |mut c, r| async move { c.create_disk_node(r).await })
            .await
    }

    /// Registers a disk node (its agent, at start) and marks it online.
    pub async fn register_disk_node(&self, spec: DiskNodeSpec) -> Result<DiskNode, Status> {
        self.create(
            spec,
            |mut c, r| async move { c.register_disk_node(r).await },
        )
        .await
    }

    /// Declares a controller node.
    pub async fn create_controller_node(
        &self,
        spec: ControllerNodeSpec,
    ) -> Result<ControllerNode, Status> {
        self.create(
            spec,
            |mut c, r| async move { c.create_controller_node(r).await },
        )
        .await
    }

    /// Registers a controller node (its agent, at start) and marks it online.
    pub async fn register_controller_node(
        &self,
        spec: ControllerNodeSpec,
    ) -> Result<ControllerNode, Status> {
        self.create(spec, |mut c, r| async move {
            c.register_controller_node(r).await
        })
        .await
    }

    /// Creates a host.
    pub async fn create_host(&self, req: CreateHostRequest) -> Result<Host, Status> {
        self.create(req, |mut c, r| async move { c.create_host(r).await })
            .await
    }

    /// Creates and places a volume.
    pub async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume, Status> {
        self.create(req, |mut c, r| async move { c.create_volume(r).await })
            .await
    }

    /// Creates a snapshot (and the operation that takes it).
    pub async fn create_snapshot(&self, volume: &str, name: &str) -> Result<Snapshot, Status> {
        let req = CreateSnapshotRequest {
            volume: volume.to_string(),
            name: name.to_string(),
        };
        self.create(req, |mut c, r| async move { c.create_snapshot(r).await })
            .await
    }

    /// Reads a snapshot.
    pub async fn get_snapshot(&self, volume: &str, name: &str) -> Result<Snapshot, Status> {
        self.get::<Snapshot>(&snapshot_key(volume, name)).await
    }

    /// Records a step of an operation (conditional on its revision when
    /// `expected_revision` is not 0).
    pub async fn update_operation(&self, req: UpdateOperationRequest) -> Result<Operation, Status> {
        self.create(req, |mut c, r| async move { c.update_operation(r).await })
            .await
    }

    /// Sends a heartbeat for a node whatever its recorded address.
    pub async fn heartbeat(&self, kind: NodeKind, name: &str) -> Result<HeartbeatResponse, Status> {
        self.send_heartbeat(HeartbeatRequest {
            kind: kind as i32,
            name: name.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Sends a node agent's heartbeat as `req` has it: refused
    /// (FAILED_PRECONDITION) when the node is recorded at another address
    /// than a non-empty `req.address`; with `req.stopping`, the node is
    /// marked offline now.
    pub async fn send_heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse, Status> {
        self.call(true, |mut c| {
            let r = req.clone();
            async move { c.heartbeat(r).await }
        })
        .await
    }

    /// Streams the changes after `after_revision` from one replica.
    pub async fn watch(&self, after_revision: u64) -> Result<Streaming<WatchEvent>, Status> {
        self.call(false, |mut c| async move {
            c.watch(WatchRequest { after_revision }).await
        })
        .await
    }

    /// Follows the changes after `after_revision`, giving each to `on`
    /// until it returns false. A stream that breaks (its replica stopped,
    /// froze or was cut off, or ended it) is opened again after the last
    /// revision seen, on the next replica, so no change is missed or
    /// repeated; `on` hears of it too. Ends with an error only when no
    /// replica opens it again within the client's deadline, or on an
    /// answer that is not transient (such as history already pruned).
    pub async fn follow(
        &self,
        mut after_revision: u64,
        mut on: impl FnMut(Followed) -> bool,
    ) -> Result<(), Status> {
        loop {
            let mut stream = self.watch(after_revision).await?;
            let why = loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        after_revision = event.revision;
                        if !on(Followed::Event(event)) {
                            return Ok(());
                        }
                    }
                    Ok(None) => break "the replica ended the stream".to_string(),
                    Err(s) if transient(&s) || connection_refused(&s) => break status_text(&s),
                    Err(s) => return Err(s),
                }
            };
            self.drop_current();
            if !on(Followed::Resuming {
                after_revision,
                why,
            }) {
                return Ok(());
            }
            tokio::time::sleep(backoff(1)).await;
        }
    }

    /// The view of the replica the client is connected to.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        self.call(
            false,
            |mut c| async move { c.status(StatusRequest {}).await },
        )
        .await
    }

    /// Adds a replica to the group.
    pub async fn add_replica(&self, id: u64, address: &str) -> Result<MembershipResponse, Status> {
        let req = AddReplicaRequest {
            id,
            address: address.to_string(),
        };
        self.call(true, |mut c| {
            let r = req.clone();
            async move { c.add_replica(r).await }
        })
        .await
    }

    /// Removes a replica from the group.
    pub async fn remove_replica(&self, id: u64) -> Result<MembershipResponse, Status> {
        self.call(true, |mut c| async move {
            c.remove_replica(RemoveReplicaRequest { id }).await
        })
        .await
    }
}

/// Between HTTP/2 pings on a connection with calls in flight: a replica
/// that stops answering (its host frozen or cut off, packets dropped)
/// fails the calls after this and [`KEEPALIVE_TIMEOUT`], and the client
/// moves on to the next replica, instead of waiting for TCP to give up
/// (many minutes).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

fn backoff(attempt: usize) -> Duration {
    let ms = 50u64.saturating_mul(1 << attempt.min(4) as u32);
    Duration::from_millis(ms.min(800))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_port_or_http() {
        assert_eq!(
            parse_endpoints("a:1, http://127.0.0.1:7400/,https://[::1]:2").expect("valid"),
            [
                EndpointSpec {
                    address: "a:1".into(),
                    tls: None
                },
                EndpointSpec {
                    address: "127.0.0.1:7400".into(),
                    tls: Some(false)
                },
                EndpointSpec {
                    address: "[::1]:2".into(),
                    tls: Some(true)
                }
            ]
        );
        // https without TLS settings cannot work; said at once.
        let e = MetaClient::new("https://a:1", Duration::from_secs(1))
            .err()
            .expect("https without TLS");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("needs TLS settings"),
            "{}",
            e.message()
        );
        for bad in [
            "ftp://127.0.0.1:15998",
            "127.0.0.1:70000",
            "foo",
            "a:0",
            " , ",
        ] {
            parse_endpoints(bad).expect_err(bad);
            let e = MetaClient::new(bad, Duration::from_secs(1))
                .err()
                .expect(bad);
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_timeout_past_the_clock_does_not_panic() {
        assert!(deadline_from_now(Duration::MAX).is_none());
        assert!(!passed(None));
        // Nothing listens on port 1: with no practical deadline the client
        // keeps retrying (adding Duration::MAX to now used to panic).
        let client = MetaClient::new("127.0.0.1:1", Duration::MAX).expect("client");
        let call = client.call(
            true,
            |mut c| async move { c.status(StatusRequest {}).await },
        );
        let outcome = tokio::time::timeout(Duration::from_millis(300), call).await;
        assert!(outcome.is_err(), "still retrying, as asked");
    }

    #[tokio::test]
    async fn a_replica_that_stops_answering_fails_the_call() {
        // Connections are accepted (by the kernel's backlog) and never
        // answered, as with a frozen replica.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = silent.local_addr().expect("address").to_string();
        let client = MetaClient::new(&address, Duration::from_millis(100)).expect("client");
        let call = client.call(
            false,
            |mut c| async move { c.status(StatusRequest {}).await },
        );
        let outcome = tokio::time::timeout(4 * (KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT), call)
            .await
            .expect("the call ends once the pings go unanswered");
        assert!(outcome.is_err(), "{outcome:?}");
    }
}
