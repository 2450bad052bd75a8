//! Logging set-up for the daemon: `tracing` to stderr, filtered by
//! `RUST_LOG` or `--log-level`.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber; `level` is used when `RUST_LOG` is unset.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
