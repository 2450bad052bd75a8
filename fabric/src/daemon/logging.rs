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
    // A bare word is a target for EnvFilter ("inf" would enable the target
    // `inf` and nothing else, silencing the daemon): take only levels.
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is neither a level ({}) nor TARGET=LEVEL",
                LEVELS.join(", ")
            ));
        }
    }
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
        for typo in ["inf", "debugg", "nonsense", "info,fabric"] {
            assert!(parse_filter(typo).is_err(), "{typo}");
        }
        assert!(parse_filter("WARN").is_ok());
    }
}
