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

/// A `--log-level` value, checked: a filter `tracing` cannot parse would
/// otherwise turn logging off without a word.
pub fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log filter (e.g. info, debug, fabric=trace): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_checked() {
        assert_eq!(parse_filter("debug").as_deref(), Ok("debug"));
        assert!(parse_filter("fabric=trace,info").is_ok());
        assert!(parse_filter("bogus[").is_err());
        assert!(parse_filter("a=b=c").is_err());
    }
}
