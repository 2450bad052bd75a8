//! In-process meta replicas for the integration tests: each serves on its
//! own loopback port and data directory (under the target dir), and stops
//! when its handle is dropped.

#![allow(dead_code)]

pub mod pki;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meta::cli::MetaArgs;
use meta::proto::{RaftRole, StatusResponse};
use meta::MetaClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running in-process replica.
pub struct Replica {
    pub id: u64,
    pub address: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), meta::RunError>>>,
}

impl Replica {
    /// Stops the replica and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = task.await.expect("replica task");
            result.expect("replica stopped cleanly");
        }
    }

    /// A client of this replica only.
    pub fn client(&self) -> MetaClient {
        MetaClient::new(&self.address, Duration::from_secs(10)).expect("client")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A fresh directory under the target dir.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("meta-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// Binds a loopback listener on a free port.
pub async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("address").to_string();
    (l, a)
}

/// Fast Raft settings for tests.
pub fn args(id: u64, dir: &Path, peers: &BTreeMap<u64, String>, join: bool) -> MetaArgs {
    MetaArgs {
        id: Some(id),
        data_dir: Some(dir.join(format!("replica-{id}"))),
        listen: peers.get(&id).cloned(),
        peers: Some(peers.clone()),
        join,
        tick_ms: Some(50),
        compact_after: Some(20),
        request_timeout_ms: Some(3000),
        offline_after_secs: Some(1),
        ..Default::default()
    }
}

/// Logs to the test output (RUST_LOG filters; warnings by default).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Starts a replica on a bound listener.
pub fn start(args: MetaArgs, listener: TcpListener) -> Replica {
    init_logs();
    let config = args.resolve().expect("valid settings");
    let id = config.node.id;
    let address = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(meta::serve(config, listener, async move {
        let _ = stopped.await;
    }));
    Replica {
        id,
        address,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Polls `check` until it returns Some, or panics with `what` after 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `replica` reports a leader, and returns its status.
pub async fn leader_known(replica: &Replica) -> StatusResponse {
    let client = replica.client();
    eventually("a leader", || async {
        client.status().await.ok().filter(|s| s.leader_id != 0)
    })
    .await
}

/// Whether a status is a leader's.
pub fn is_leader(s: &StatusResponse) -> bool {
    s.role == RaftRole::Leader as i32
}

/// The path of a replica's data.
pub fn data_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("replica-{id}"))
}
