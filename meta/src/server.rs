//! The meta role's entry point: opens the replica's rocksdb, starts the Raft
//! node, serves the `Meta` and `RaftPeer` services on one address, and stops
//! cleanly on a signal or when the Raft driver fails.

use std::future::Future;
use std::sync::Arc;

use rocksdb::{Options, DB};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::cli::{ConfigError, MetaArgs, MetaConfig};
use crate::error::MetaError;
use crate::liveness::Liveness;
use crate::node;
use crate::peer::raft_peer_server::RaftPeerServer;
use crate::proto::meta_server::MetaServer;
use crate::service::MetaService;
use crate::transport::PeerService;

/// Why the role stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {reason}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The data directory or the store failed.
    #[error("data directory {dir}: {reason}")]
    Store {
        /// The directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// The replica failed while running.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// Runs the meta role until SIGINT or SIGTERM.
pub async fn run(args: MetaArgs) -> Result<(), RunError> {
    let config = args.resolve()?;
    if let Some(own) = config.node.peers.get(&config.node.id) {
        if let Err(why) = crate::cli::check_own_address(&config.listen, own) {
            tracing::warn!("--listen {why} (right only behind a port mapping)");
        }
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| RunError::Listen {
            address: config.listen.clone(),
            reason: e.to_string(),
        })?;
    serve(config, listener, shutdown_signal()).await
}

/// Whether a bound address (`IP:PORT`) is a loopback one.
fn is_loopback(address: &str) -> bool {
    address
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

async fn shutdown_signal() {
    let signal = cmdline::signal::shutdown_requested().await;
    tracing::info!(signal, "shutting down");
}

/// Opens the replica's database (created when missing).
pub fn open_db(config: &MetaConfig) -> Result<Arc<DB>, RunError> {
    let dir = config.data_dir.join("db");
    let store_err = |reason: String| RunError::Store {
        dir: config.data_dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(&dir).map_err(|e| store_err(e.to_string()))?;
    tracing::debug!(dir = %dir.display(), "opening the replica's store");
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // rocksdb preallocates each write-ahead log at about the memtable's
    // size: at its default (64 MiB) that hides how full the disk is from
    // the free-space reserve of `storage::RESERVED_BYTES`. The metadata
    // is small; 4 MiB memtables are plenty.
    opts.set_write_buffer_size(4 << 20);
    let db = DB::open(&opts, &dir).map_err(|e| store_err(open_failure(e)))?;
    Ok(Arc::new(db))
}

/// Why the database did not open, in words: rocksdb's lock error names a
/// system call, not the likely cause (another replica on the directory).
fn open_failure(e: rocksdb::Error) -> String {
    let raw = e.into_string();
    // Another process, or (in tests) this one: each rocksdb's wording.
    if raw.contains("While lock file") || raw.contains("lock hold by current process") {
        format!("in use by another process (is another `fabricd meta` running on it?): {raw}")
    } else {
        raw
    }
}

/// Serves a replica on an already bound listener until `shutdown` completes.
pub async fn serve(
    config: MetaConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let db = open_db(&config)?;
    let (node, driver) = node::start(db, config.node.clone(), tokio::runtime::Handle::current())?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // The data directory in full: the default is relative to the working
    // directory, and a start from another one makes a new group.
    let data_dir =
        std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    tracing::info!(
        id = config.node.id,
        listen = %local,
        tls = config.node.tls.is_some(),
        data_dir = %data_dir.display(),
        "meta replica serving"
    );

    let liveness = Arc::new(Liveness::new(config.offline_after));
    let monitor = {
        let liveness = liveness.clone();
        let node = node.clone();
        tokio::spawn(async move { liveness.monitor(node).await })
    };
    let max = config.node.max_message_bytes;
    let peer = RaftPeerServer::new(PeerService::new(
        node.transport().clone(),
        config.fault_injection,
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let meta = MetaServer::new(MetaService::new(
        node.clone(),
        liveness,
        config.node.tls.clone(),
    ));

    // Stop serving on the signal, or when the driver thread ends (a store
    // failure). The driver stops first: that ends the open watch streams,
    // which graceful shutdown would otherwise wait for.
    let watched = node.clone();
    let stop = async move {
        let driver_stopped = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if watched.view().stopped {
                    return;
                }
            }
        };
        tokio::select! {
            () = shutdown => {},
            () = driver_stopped => {},
        }
        watched.stop();
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.node.tls {
        server = server
            .tls_config(tls.server_config())
            .map_err(|e| RunError::Serve(format!("TLS: {}", crate::tls::chain(&e))))?;
    } else if !is_loopback(&local) {
        tracing::warn!(
            listen = %local,
            "serving without TLS on an address other hosts can reach: anyone who reaches it \
             can change the cluster (give --tls-cert, --tls-key and --tls-ca)"
        );
    }
    let served = server
        .add_service(meta)
        .add_service(peer)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await;
    monitor.abort();
    let driver_result = tokio::task::spawn_blocking(move || driver.join())
        .await
        .map_err(|e| RunError::Serve(e.to_string()))?
        .map_err(|_| RunError::Serve("the raft thread panicked".into()))?;
    served.map_err(|e| RunError::Serve(e.to_string()))?;
    driver_result?;
    tracing::info!(id = config.node.id, "meta replica stopped");
    Ok(())
}
