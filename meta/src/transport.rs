//! Replica-to-replica transport: Raft messages over gRPC (`RaftPeer.Send`).
//!
//! Each destination has one sender task that drains its queue into batches
//! (one unary call per batch, or more when the batch would be over the
//! message size bound). Raft tolerates loss, so a failed batch is
//! dropped, the queue is emptied (its heartbeats and appends are stale by
//! the time the peer is back) and Raft is told the peer is unreachable.
//!
//! Inbound, rust-protobuf (which has an advisory about recursion on
//! untrusted input) only ever parses bytes that passed these checks: the
//! gRPC message and each Raft message are bounded in size, the claimed
//! sender must be a known replica (configured, or added by a membership
//! change) and, when its address is an IP address, the connection must come
//! from that IP. Without TLS that is a guard against strays and mistakes,
//! not authentication. With TLS ([`crate::tls`]) the connection's client
//! certificate chains to the CA (checked in the handshake) and must be
//! valid for the sender's known address: a client's certificate cannot
//! speak for a replica.
//!
//! Fault injection: when enabled at start, `RaftPeer.Isolate` makes the
//! replica drop every Raft message it sends or receives, which cuts it off
//! from the group while its client API stays up (used by the tests).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::transport::CertificateDer;
use tonic::{Request, Response, Status};

use crate::peer::raft_peer_client::RaftPeerClient;
use crate::peer::raft_peer_server::RaftPeer;
use crate::peer::{IsolateRequest, IsolateResponse, RaftAck, RaftBatch};
use crate::tls::{certificate_is_for, endpoint, status_text, Tls};

/// What the transport tells the Raft driver about deliveries.
#[derive(Debug)]
pub enum Feedback {
    /// A message arrived from a peer.
    Message(Box<Message>),
    /// Sending to this peer failed.
    Unreachable(u64),
    /// A snapshot to this peer was delivered (true) or lost (false).
    SnapshotSent(u64, bool),
}

/// Where feedback goes.
pub type FeedbackSink = Arc<dyn Fn(Feedback) + Send + Sync>;

/// Most messages per outbound batch.
const MAX_BATCH: usize = 256;

/// Outbound queues and inbound checks of one replica.
pub struct Transport {
    id: u64,
    addresses: RwLock<BTreeMap<u64, String>>,
    links: Mutex<HashMap<u64, Link>>,
    isolated: Arc<AtomicBool>,
    max_message_bytes: usize,
    tls: Option<Tls>,
    feedback: FeedbackSink,
    runtime: tokio::runtime::Handle,
    /// When a refused connection was last logged.
    refusal_logged: Mutex<Option<Instant>>,
}

/// At most one warning about refused Raft traffic per this interval (a
/// misconfigured replica retries every heartbeat).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

struct Link {
    address: String,
    queue: mpsc::UnboundedSender<Message>,
}

impl Transport {
    /// A transport for replica `id` that knows the given replica addresses
    /// (`host:port` of their gRPC endpoints), over mutual TLS when `tls`
    /// is given. Sender tasks run on `runtime`.
    pub fn new(
        id: u64,
        addresses: BTreeMap<u64, String>,
        max_message_bytes: usize,
        tls: Option<Tls>,
        feedback: FeedbackSink,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Transport {
            id,
            addresses: RwLock::new(addresses),
            links: Mutex::new(HashMap::new()),
            isolated: Arc::new(AtomicBool::new(false)),
            max_message_bytes,
            tls,
            feedback,
            runtime,
            refusal_logged: Mutex::new(None),
        })
    }

    /// Replaces the known replica addresses.
    pub fn set_addresses(&self, addresses: BTreeMap<u64, String>) {
        if let Ok(mut a) = self.addresses.write() {
            *a = addresses;
        }
    }

    /// The known replica addresses.
    pub fn addresses(&self) -> BTreeMap<u64, String> {
        self.addresses.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Cuts (true) or restores (false) all Raft traffic.
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::SeqCst);
    }

    /// Whether Raft traffic is cut.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    /// Queues messages for their destinations.
    pub fn send(&self, messages: Vec<Message>) {
        if self.is_isolated() {
            return;
        }
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        for msg in messages {
            let to = msg.to;
            let Some(address) = self.addresses.read().ok().and_then(|a| a.get(&to).cloned()) else {
                tracing::warn!(to, "no address for replica; message dropped");
                continue;
            };
            let stale = links
                .get(&to)
                .is_none_or(|l| l.address != address || l.queue.is_closed());
            if stale {
                let (tx, rx) = mpsc::unbounded_channel();
                self.runtime.spawn(run_link(
                    to,
                    address.clone(),
                    rx,
                    self.isolated.clone(),
                    self.max_message_bytes,
                    self.tls.clone(),
                    self.feedback.clone(),
                ));
                links.insert(to, Link { address, queue: tx });
            }
            if let Some(link) = links.get(&to) {
                let _ = link.queue.send(msg);
            }
        }
    }

    /// Logs refused Raft traffic (`why`) from `remote`, at most once per
    /// [`REFUSAL_LOG_INTERVAL`].
    fn log_refusal(&self, remote: Option<SocketAddr>, why: &str) {
        let Ok(mut last) = self.refusal_logged.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(?remote, "raft traffic refused: {why}");
    }

    /// Whether a connection from `remote`, with the client certificate
    /// `cert` (TLS), may come from replica `from` (`None`: from any known
    /// replica).
    fn accepts(
        &self,
        from: Option<u64>,
        remote: Option<SocketAddr>,
        cert: Option<&CertificateDer<'_>>,
    ) -> bool {
        let Ok(addresses) = self.addresses.read() else {
            return false;
        };
        // With TLS the certificate decides (a replica behind NAT, or with
        // several addresses, connects from another IP than its own).
        let matches = |address: &String| match (&self.tls, cert) {
            (Some(_), Some(cert)) => certificate_is_for(cert, address),
            (Some(_), None) => false,
            (None, _) => match (address.parse::<SocketAddr>(), remote) {
                (Ok(configured), Some(remote)) => {
                    configured.ip().to_canonical() == remote.ip().to_canonical()
                }
                _ => true,
            },
        };
        match from {
            Some(id) => addresses.get(&id).is_some_and(matches),
            None => addresses.values().any(matches),
        }
    }
}

/// Sends one destination's queue, batch by batch.
async fn run_link(
    to: u64,
    address: String,
    mut queue: mpsc::UnboundedReceiver<Message>,
    isolated: Arc<AtomicBool>,
    max_message_bytes: usize,
    tls: Option<Tls>,
    feedback: FeedbackSink,
) {
    let endpoint = match endpoint(&address, tls.as_ref()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10)),
        Err(e) => {
            tracing::error!(to, "cannot reach replica: {e}");
            return;
        }
    };
    let mut client = RaftPeerClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(max_message_bytes)
        .max_decoding_message_size(max_message_bytes);
    let mut failing = false;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if isolated.load(Ordering::SeqCst) {
            continue; // queued before the cut: dropped like the rest
        }
        let mut encoded = Vec::with_capacity(batch.len());
        for m in &batch {
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            match m.write_to_bytes() {
                Ok(b) if b.len() + FRAMING_BYTES <= max_message_bytes => {
                    encoded.push((b, snapshot))
                }
                Ok(b) => {
                    tracing::error!(
                        to,
                        bytes = b.len(),
                        max_message_bytes,
                        snapshot,
                        "raft message over the size bound; dropped (a snapshot this large \
                         needs a larger max-message-bytes on every replica)"
                    );
                    if snapshot {
                        feedback(Feedback::SnapshotSent(to, false));
                    }
                }
                Err(e) => {
                    tracing::error!(to, "cannot encode raft message: {e}");
                    if snapshot {
                        feedback(Feedback::SnapshotSent(to, false));
                    }
                }
            }
        }
        let sizes: Vec<usize> = encoded.iter().map(|(b, _)| b.len()).collect();
        let mut rest = encoded.into_iter();
        let mut delivered = true;
        for run in calls(&sizes, max_message_bytes) {
            let part: Vec<(Vec<u8>, bool)> = rest.by_ref().take(run).collect();
            let snapshots = part.iter().filter(|(_, snapshot)| *snapshot).count();
            if delivered {
                let messages = part.into_iter().map(|(b, _)| b).collect();
                let sent = client.send(RaftBatch { messages }).await;
                delivered = sent.is_ok();
                // Said once per outage: a replica that is down, or that
                // refuses this one (TLS certificates), shows in the log.
                match (sent, failing) {
                    (Err(status), false) => {
                        let why = status_text(&status);
                        tracing::warn!(to, %address, "cannot send to replica: {why}");
                        failing = true;
                    }
                    (Ok(_), true) => {
                        tracing::info!(to, %address, "replica reachable again");
                        failing = false;
                    }
                    _ => {}
                }
            }
            // After a failed call the rest of the batch is dropped as well.
            for _ in 0..snapshots {
                feedback(Feedback::SnapshotSent(to, delivered));
            }
        }
        if !delivered {
            tracing::debug!(to, %address, "replica unreachable");
            feedback(Feedback::Unreachable(to));
            while queue.try_recv().is_ok() {}
        }
    }
}

/// Bytes a message takes in a `RaftBatch` beyond its own (field tag and
/// length prefix, with room to spare).
const FRAMING_BYTES: usize = 16;

/// How many of the messages (of `sizes` bytes, in order) go in each call,
/// so that no call's `RaftBatch` is over `max` bytes; a message that does
/// not fit alone gets a call of its own (callers drop those first).
fn calls(sizes: &[usize], max: usize) -> Vec<usize> {
    let mut runs = Vec::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    for &size in sizes {
        let size = size.saturating_add(FRAMING_BYTES);
        if count > 0 && bytes.saturating_add(size) > max {
            runs.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes = bytes.saturating_add(size);
    }
    if count > 0 {
        runs.push(count);
    }
    runs
}

/// The `RaftPeer` service: receives messages for the local replica.
pub struct PeerService {
    transport: Arc<Transport>,
    fault_injection: bool,
}

impl PeerService {
    /// Serves the transport's replica; `fault_injection` enables `Isolate`.
    pub fn new(transport: Arc<Transport>, fault_injection: bool) -> Self {
        PeerService {
            transport,
            fault_injection,
        }
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let t = &self.transport;
        if t.is_isolated() {
            return Err(Status::unavailable("replica is isolated (fault injection)"));
        }
        let remote = request.remote_addr();
        let certs = request.peer_certs();
        let cert = certs.as_ref().and_then(|c| c.first());
        if !t.accepts(None, remote, cert) {
            t.log_refusal(remote, "not a connection from a known replica");
            return Err(Status::permission_denied(
                "not a connection from a known replica",
            ));
        }
        for bytes in request.into_inner().messages {
            if bytes.len() > t.max_message_bytes {
                return Err(Status::invalid_argument("raft message over the size bound"));
            }
            let msg = Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            if msg.to != t.id {
                return Err(Status::invalid_argument(format!(
                    "raft message for replica {} delivered to replica {}",
                    msg.to, t.id
                )));
            }
            if !t.accepts(Some(msg.from), remote, cert) {
                t.log_refusal(
                    remote,
                    &format!(
                        "raft message from replica {}, not its address or certificate",
                        msg.from
                    ),
                );
                return Err(Status::permission_denied(format!(
                    "replica {} is not a known peer at this address",
                    msg.from
                )));
            }
            (t.feedback)(Feedback::Message(Box::new(msg)));
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn isolate(
        &self,
        request: Request<IsolateRequest>,
    ) -> Result<Response<IsolateResponse>, Status> {
        if !self.fault_injection {
            return Err(Status::failed_precondition(
                "fault injection is disabled (start the replica with --fault-injection)",
            ));
        }
        let isolated = request.into_inner().isolated;
        tracing::warn!(
            isolated,
            "fault injection: raft traffic {}",
            if isolated { "cut" } else { "restored" }
        );
        self.transport.set_isolated(isolated);
        Ok(Response::new(IsolateResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_stay_within_the_bound_and_keep_every_message_in_order() {
        let max = 1000;
        assert_eq!(calls(&[], max), Vec::<usize>::new());
        // Three that fit together, two more in the next call.
        assert_eq!(calls(&[100, 200, 300, 900, 10], max), vec![3, 2]);
        // One over the bound alone is a call of its own.
        assert_eq!(calls(&[100, 990, 10], max), vec![1, 1, 1]);
        for sizes in [vec![984; 5], vec![1, 2, 3, 500, 470, 30], vec![0; 300]] {
            let runs = calls(&sizes, max);
            assert_eq!(runs.iter().sum::<usize>(), sizes.len());
            let mut at = 0;
            for run in runs {
                assert!(run > 0);
                let bytes: usize = sizes[at..at + run].iter().map(|s| s + FRAMING_BYTES).sum();
                assert!(bytes <= max, "{sizes:?}: a call of {bytes} bytes");
                at += run;
            }
        }
    }
}
