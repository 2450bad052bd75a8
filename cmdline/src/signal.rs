//! The signals that stop a daemon cleanly.
//!
//! `fabricd` stops on Ctrl-C (SIGINT), SIGTERM and SIGHUP alike: it has no
//! configuration to reload, and SIGHUP's default action (the one a closed
//! terminal or a dropped SSH session sends) would end the process without
//! flushing its namespaces or telling the metadata group, so the next start
//! would find a dirty mirror to resync.

use tokio::signal::unix::{signal, SignalKind};

/// Waits for SIGINT, SIGTERM or SIGHUP and returns the signal's name. A
/// signal whose handler cannot be installed is left out (Ctrl-C always
/// works).
pub async fn shutdown_requested() -> &'static str {
    let wait = |kind: SignalKind| {
        let mut stream = signal(kind).ok();
        async move {
            match stream.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    };
    let (term, hup) = (wait(SignalKind::terminate()), wait(SignalKind::hangup()));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term => "SIGTERM",
        _ = hup => "SIGHUP",
    }
}
