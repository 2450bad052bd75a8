//! The meta role's command line and TOML configuration.
//!
//! Every setting can come from a flag or from the `--config` file; a flag
//! wins over the file, the file over the default. The defaults run a single
//! embedded replica on 127.0.0.1:7400 with its data in `./fabric-meta`.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::node::NodeConfig;
use crate::tls::{Tls, TlsSettingNames};

/// Default address of the gRPC endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Most ticks without a leader before an election (Raft randomizes the
/// timeout up to twice the setting).
pub const MAX_ELECTION_TICKS: usize = 10_000;
/// Longest Raft tick, in ms (a minute: with the default 10 ticks, an
/// election after 10 to 20 minutes without a leader).
pub const MAX_TICK_MS: u64 = 60_000;
/// Longest wait for a request's write or read, in ms (an hour).
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 3_600_000;
/// Longest silence before a node is marked offline, in seconds (a week).
pub const MAX_OFFLINE_AFTER_SECS: u64 = 7 * 86_400;

/// A numeric setting from its flag, else the file's key, else `default`,
/// checked to be within `1..=max`; an error names the flag or the key,
/// whichever gave the value. (Larger values used to be taken, and meant
/// "never": a group that never elects, a node never marked offline.)
fn bounded<T>(
    (flag, key): (&'static str, &'static str),
    (from_flag, from_file): (Option<T>, Option<T>),
    default: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: Copy + PartialOrd + From<u8> + std::fmt::Display,
{
    let (setting, value) = match (from_flag, from_file) {
        (Some(v), _) => (flag, v),
        (None, Some(v)) => (key, v),
        (None, None) => return Ok(default),
    };
    let reason = if value < T::from(1) {
        "must be positive".to_string()
    } else if value > max {
        format!("{value} is more than {max}")
    } else {
        return Ok(value);
    };
    Err(ConfigError::Invalid { setting, reason })
}

/// Flags of `fabricd meta`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetaArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Raft id of this replica (1 or more) [default: 1].
    #[arg(long, value_name = "N")]
    pub id: Option<u64>,
    /// Directory of this replica's rocksdb [default: ./fabric-meta].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve gRPC on (clients and peers), HOST:PORT without a
    /// scheme [default: 127.0.0.1:7400].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// All replicas of the group, this one included, as ID=HOST:PORT,...
    /// (empty: a single replica at --listen).
    #[arg(long, value_name = "ID=ADDR,...", value_parser = parse_peers)]
    pub peers: Option<BTreeMap<u64, String>>,
    /// Start empty and wait to be added to a running group (fabric-ctl cluster add-replica).
    #[arg(long)]
    pub join: bool,
    /// Raft tick in milliseconds, at most 60000 [default: 100].
    #[arg(long, value_name = "MS")]
    pub tick_ms: Option<u64>,
    /// Ticks without a leader before an election, more than
    /// --heartbeat-ticks and at most 10000 [default: 10].
    #[arg(long, value_name = "N")]
    pub election_ticks: Option<usize>,
    /// Ticks between leader heartbeats [default: 2].
    #[arg(long, value_name = "N")]
    pub heartbeat_ticks: Option<usize>,
    /// Applied log entries kept before the log is compacted [default: 1000].
    #[arg(long, value_name = "N")]
    pub compact_after: Option<u64>,
    /// Revisions of changes kept for watches [default: 10000].
    #[arg(long, value_name = "N")]
    pub watch_history: Option<u64>,
    /// How long a request waits for its write or read to complete, in ms,
    /// at most 3600000 [default: 5000].
    #[arg(long, value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Seconds without heartbeat before a node is marked offline, at most
    /// 604800 (a week) [default: 10].
    #[arg(long, value_name = "SECS")]
    pub offline_after_secs: Option<u64>,
    /// Largest Raft message or batch between replicas, in bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// This replica's TLS certificate (PEM; it must name the replica's
    /// address and serves as its client certificate towards the others).
    /// With --tls-key and --tls-ca the replica serves only mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that every replica's and client's
    /// certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Testing only: allow cutting this replica's Raft traffic over RaftPeer.Isolate.
    #[arg(long)]
    pub fault_injection: bool,
}

/// The settings file (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    peers: Option<BTreeMap<String, String>>,
    join: Option<bool>,
    tick_ms: Option<u64>,
    election_ticks: Option<usize>,
    heartbeat_ticks: Option<usize>,
    compact_after: Option<u64>,
    watch_history: Option<u64>,
    request_timeout_ms: Option<u64>,
    offline_after_secs: Option<u64>,
    max_message_bytes: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    fault_injection: Option<bool>,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting has an unusable value.
    #[error("{setting}: {reason}")]
    Invalid {
        /// Flag or key.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The resolved settings of a replica.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// Directory of the rocksdb.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: String,
    /// Seconds without heartbeat before a node is marked offline.
    pub offline_after: Duration,
    /// Whether RaftPeer.Isolate works.
    pub fault_injection: bool,
    /// The Raft node's settings.
    pub node: NodeConfig,
}

/// Parses `ID=HOST:PORT,...`.
pub fn parse_peers(value: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not ID=HOST:PORT"))?;
        let id = parse_id(id).map_err(|e| format!("'{item}': {e}"))?;
        check_address(addr).map_err(|e| format!("'{item}': {e}"))?;
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("replica {id} is listed twice"));
        }
    }
    Ok(peers)
}

fn parse_id(id: &str) -> Result<u64, String> {
    match id.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("'{id}' is not a replica id (1 or more)")),
        Ok(n) => Ok(n),
    }
}

/// Splits a gRPC address, `HOST:PORT` without a scheme: HOST is a host
/// name, an IPv4 address or an IPv6 address in brackets.
pub fn split_address(addr: &str) -> Result<(&str, u16), String> {
    let bad = |why: &str| format!("'{addr}' is not HOST:PORT ({why})");
    if let Some((scheme, _)) = addr.split_once("://") {
        return Err(bad(&format!("drop the {scheme}:// prefix")));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !host_ok {
        return Err(bad(
            "the host is not a name, an IPv4 address or an [IPv6] address",
        ));
    }
    Ok((host, port))
}

/// Checks that `listen` serves the address the other replicas know this
/// one by (`own`, its entry in `--peers`): the same port, and the same IP
/// unless `listen` is a wildcard or either side is a host name. (Behind a
/// port mapping they differ rightly, so this is a warning at start.)
pub(crate) fn check_own_address(listen: &str, own: &str) -> Result<(), String> {
    let (listen_host, listen_port) = split_address(listen)?;
    let (own_host, own_port) = split_address(own)?;
    let ip = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
    };
    let other_ip = match (ip(listen_host), ip(own_host)) {
        (Some(l), Some(o)) => !l.is_unspecified() && l != o,
        _ => false,
    };
    if listen_port != own_port || other_ip {
        return Err(format!(
            "{listen} is not this replica's address in --peers ({own}), \
             which the other replicas send to"
        ));
    }
    Ok(())
}

/// Checks a gRPC address as [`split_address`] takes it.
pub fn check_address(addr: &str) -> Result<(), String> {
    split_address(addr).map(|_| ())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    cmdline::read_toml(path).map_err(|e| ConfigError::File {
        path: e.path,
        reason: e.reason,
    })
}

impl MetaArgs {
    /// Merges flags, file and defaults, and checks the result.
    pub fn resolve(&self) -> Result<MetaConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let invalid =
            |setting: &'static str, reason: String| ConfigError::Invalid { setting, reason };
        let id = self.id.or(file.id).unwrap_or(1);
        if id == 0 {
            return Err(invalid("--id", "must be 1 or more".into()));
        }
        let listen = self
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        check_address(&listen).map_err(|e| invalid("--listen", e))?;
        let mut peers = match (&self.peers, file.peers) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => {
                let mut parsed = BTreeMap::new();
                for (k, v) in p {
                    let id = parse_id(&k).map_err(|e| invalid("peers", e))?;
                    check_address(&v)
                        .map_err(|e| invalid("peers", format!("replica {id}: {e}")))?;
                    parsed.insert(id, v);
                }
                parsed
            }
            (None, None) => BTreeMap::new(),
        };
        if peers.is_empty() {
            peers.insert(id, listen.clone());
        }
        if !peers.contains_key(&id) {
            return Err(invalid(
                "--peers",
                format!("does not list this replica (--id {id})"),
            ));
        }
        let tick_ms = bounded(
            ("--tick-ms", "tick_ms"),
            (self.tick_ms, file.tick_ms),
            100,
            MAX_TICK_MS,
        )?;
        let heartbeat_ticks = self.heartbeat_ticks.or(file.heartbeat_ticks).unwrap_or(2);
        let election_ticks = bounded(
            ("--election-ticks", "election_ticks"),
            (self.election_ticks, file.election_ticks),
            10,
            MAX_ELECTION_TICKS,
        )?;
        if heartbeat_ticks == 0 || election_ticks <= heartbeat_ticks {
            return Err(invalid(
                "--election-ticks",
                format!(
                    "must exceed --heartbeat-ticks ({heartbeat_ticks}), which must be positive"
                ),
            ));
        }
        let max_message_bytes = self
            .max_message_bytes
            .or(file.max_message_bytes)
            .unwrap_or(64 << 20);
        if max_message_bytes < (1 << 20) {
            return Err(invalid(
                "--max-message-bytes",
                "must be at least 1 MiB".into(),
            ));
        }
        // Each file's setting is named as it was given: the file's key if
        // it came from there, else the flag.
        let pick =
            |flag: &Option<PathBuf>, key: Option<PathBuf>, names: (&'static str, &'static str)| {
                match (flag, key) {
                    (None, Some(p)) => (Some(p), names.1),
                    (flag, _) => (flag.clone(), names.0),
                }
            };
        let (cert, cert_name) = pick(&self.tls_cert, file.tls_cert, ("--tls-cert", "tls_cert"));
        let (key, key_name) = pick(&self.tls_key, file.tls_key, ("--tls-key", "tls_key"));
        let (ca, ca_name) = pick(&self.tls_ca, file.tls_ca, ("--tls-ca", "tls_ca"));
        let tls = Tls::load(
            cert.as_deref(),
            key.as_deref(),
            ca.as_deref(),
            TlsSettingNames {
                cert: cert_name,
                key: key_name,
                ca: ca_name,
            },
        )
        .map_err(|e| invalid(e.setting, e.reason))?;
        // The other replicas accept Raft messages only over a certificate
        // that names the sender's address (a lone replica has none).
        if let (Some(_), Some(cert), Some(own)) = (&tls, &cert, peers.get(&id)) {
            if peers.len() > 1 && !crate::tls::file_certificate_is_for(cert, own) {
                return Err(invalid(
                    cert_name,
                    format!(
                        "{} does not name the host of {own} (this replica in --peers) among \
                         its subject alternative names: the other replicas would refuse its \
                         Raft messages",
                        cert.display()
                    ),
                ));
            }
        }
        Ok(MetaConfig {
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("fabric-meta")),
            listen,
            offline_after: Duration::from_secs(bounded(
                ("--offline-after-secs", "offline_after_secs"),
                (self.offline_after_secs, file.offline_after_secs),
                10,
                MAX_OFFLINE_AFTER_SECS,
            )?),
            fault_injection: self.fault_injection || file.fault_injection.unwrap_or(false),
            node: NodeConfig {
                id,
                peers,
                join: self.join || file.join.unwrap_or(false),
                tick: Duration::from_millis(tick_ms),
                election_ticks,
                heartbeat_ticks,
                compact_after: bounded(
                    ("--compact-after", "compact_after"),
                    (self.compact_after, file.compact_after),
                    1000,
                    u64::MAX,
                )?,
                watch_history: bounded(
                    ("--watch-history", "watch_history"),
                    (self.watch_history, file.watch_history),
                    10_000,
                    u64::MAX,
                )?,
                request_timeout: Duration::from_millis(bounded(
                    ("--request-timeout-ms", "request_timeout_ms"),
                    (self.request_timeout_ms, file.request_timeout_ms),
                    5000,
                    MAX_REQUEST_TIMEOUT_MS,
                )?),
                max_message_bytes,
                tls,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_single_replica() {
        let config = MetaArgs::default().resolve().expect("defaults work");
        assert_eq!(config.node.id, 1);
        assert_eq!(
            config.node.peers.get(&1).map(String::as_str),
            Some(DEFAULT_LISTEN)
        );
        assert_eq!(config.data_dir, PathBuf::from("fabric-meta"));
    }

    #[test]
    fn config_has_a_short_flag_as_the_targets_does() {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            args: MetaArgs,
        }
        let cmd = <Cmd as clap::Parser>::try_parse_from(["meta", "-c", "m.toml"]).expect("parses");
        assert_eq!(cmd.args.config, Some(PathBuf::from("m.toml")));
    }

    #[test]
    fn peers_parse_and_must_include_self() {
        let peers = parse_peers("1=127.0.0.1:7401, 2=127.0.0.1:7402").expect("parses");
        assert_eq!(peers.len(), 2);
        assert!(parse_peers("1=x")
            .expect_err("no port")
            .contains("HOST:PORT"));
        assert!(parse_peers("0=a:1")
            .expect_err("id 0")
            .contains("replica id"));
        assert!(parse_peers("1=a:1,1=b:2")
            .expect_err("twice")
            .contains("twice"));
        let args = MetaArgs {
            id: Some(3),
            peers: Some(peers),
            ..Default::default()
        };
        let err = args.resolve().expect_err("3 is not listed").to_string();
        assert!(err.starts_with("--peers:"), "{err}");
    }

    #[test]
    fn a_replicas_certificate_must_name_its_address() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["10.0.0.1".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        let (cert_path, key_path) = (dir.path().join("r.crt"), dir.path().join("r.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        let resolve = |own: &str, peers: &str| {
            MetaArgs {
                id: Some(1),
                listen: Some(own.into()),
                peers: Some(parse_peers(&format!("1={own}{peers}")).expect("parses")),
                tls_cert: Some(cert_path.clone()),
                tls_key: Some(key_path.clone()),
                tls_ca: Some(cert_path.clone()),
                ..Default::default()
            }
            .resolve()
            .map(drop)
            .map_err(|e| e.to_string())
        };
        resolve("10.0.0.1:7400", ",2=10.0.0.2:7400").expect("named");
        // Alone, no replica checks it.
        resolve("10.0.0.3:7400", "").expect("a lone replica");
        let e = resolve("10.0.0.3:7400", ",2=10.0.0.2:7400").expect_err("not named");
        assert!(
            e.starts_with("--tls-cert: ") && e.contains("does not name the host of 10.0.0.3:7400"),
            "{e}"
        );
    }

    #[test]
    fn listen_that_does_not_serve_the_replicas_own_peers_entry_is_found() {
        for (listen, own) in [
            ("10.0.0.1:7400", "10.0.0.1:7400"),
            ("0.0.0.0:7400", "10.0.0.1:7400"),
            ("[::]:7400", "[fd00::1]:7400"),
            ("10.0.0.1:7400", "meta-1.example:7400"),
        ] {
            check_own_address(listen, own).unwrap_or_else(|e| panic!("{listen} {own}: {e}"));
        }
        for (listen, own) in [
            ("127.0.0.1:7440", "127.0.0.1:7441"),
            ("10.0.0.9:7400", "10.0.0.1:7400"),
        ] {
            let e = check_own_address(listen, own).expect_err(listen);
            assert!(
                e.starts_with(&format!(
                    "{listen} is not this replica's address in --peers ({own})"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn addresses_are_host_port_without_a_scheme() {
        for good in ["127.0.0.1:7400", "meta-1.example:7400", "[::1]:7400"] {
            check_address(good).expect(good);
        }
        for bad in [
            "tcp://127.0.0.1:15013",
            "http://a:1",
            "::1:7400",
            "a b:1",
            ":1",
            "a:70000",
        ] {
            let e = check_address(bad).expect_err(bad);
            assert!(e.contains("is not HOST:PORT"), "{e}");
        }
        let args = MetaArgs {
            listen: Some("tcp://127.0.0.1:15013".into()),
            ..Default::default()
        };
        let err = args.resolve().expect_err("scheme").to_string();
        assert!(
            err.starts_with("--listen: ") && err.contains("drop the tcp://"),
            "{err}"
        );
        let e = parse_peers("1=tcp://127.0.0.1:7401").expect_err("scheme");
        assert!(e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn numeric_settings_are_bounded_naming_flag_or_key() {
        let flags = |f: fn(&mut MetaArgs)| {
            let mut a = MetaArgs::default();
            f(&mut a);
            a.resolve().map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(flags(|a| a.election_ticks = Some(MAX_ELECTION_TICKS)).is_ok());
        assert!(flags(|a| a.tick_ms = Some(MAX_TICK_MS)).is_ok());
        assert!(flags(|a| a.request_timeout_ms = Some(MAX_REQUEST_TIMEOUT_MS)).is_ok());
        assert!(flags(|a| a.offline_after_secs = Some(MAX_OFFLINE_AFTER_SECS)).is_ok());
        for (err, prefix) in [
            (
                flags(|a| a.election_ticks = Some(usize::MAX)),
                "--election-ticks: ",
            ),
            (
                flags(|a| a.election_ticks = Some(MAX_ELECTION_TICKS + 1)),
                "--election-ticks: ",
            ),
            (flags(|a| a.tick_ms = Some(MAX_TICK_MS + 1)), "--tick-ms: "),
            (
                flags(|a| a.tick_ms = Some(0)),
                "--tick-ms: must be positive",
            ),
            (
                flags(|a| a.request_timeout_ms = Some(u64::MAX)),
                "--request-timeout-ms: ",
            ),
            (
                flags(|a| a.offline_after_secs = Some(u64::MAX)),
                "--offline-after-secs: ",
            ),
            (
                flags(|a| a.watch_history = Some(0)),
                "--watch-history: must be positive",
            ),
        ] {
            let err = err.expect_err(prefix);
            assert!(err.starts_with(prefix), "{err}");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        for (line, prefix) in [
            (
                "election_ticks = 10001",
                "election_ticks: 10001 is more than 10000",
            ),
            ("tick_ms = 60001", "tick_ms: 60001 is more than 60000"),
            ("compact_after = 0", "compact_after: must be positive"),
        ] {
            let path = dir.path().join("meta.toml");
            std::fs::write(&path, format!("{line}\n")).expect("write");
            let args = MetaArgs {
                config: Some(path),
                ..Default::default()
            };
            let err = args.resolve().expect_err(line).to_string();
            assert!(err.starts_with(prefix), "{err}");
        }
    }

    #[test]
    fn config_file_errors_are_one_line_naming_the_path_once() {
        let args = MetaArgs {
            config: Some("/dev/zero".into()),
            ..Default::default()
        };
        let err = args.resolve().expect_err("not a file").to_string();
        assert_eq!(err, "config file /dev/zero: not a regular file");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.toml");
        std::fs::write(&path, "id = 1\ntick_ms = \"5\"\n").expect("write");
        let args = MetaArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = args.resolve().expect_err("bad type").to_string();
        assert_eq!(err.matches("meta.toml").count(), 1, "{err}");
        assert!(err.contains("line 2 (`tick_ms = \"5\"`)"), "{err}");
    }

    #[test]
    fn file_settings_yield_to_flags_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:9002\"\ntick_ms = 50\n[peers]\n1 = \"127.0.0.1:9001\"\n2 = \"127.0.0.1:9002\"\n",
        )
        .expect("write");
        let args = MetaArgs {
            config: Some(path.clone()),
            tick_ms: Some(20),
            ..Default::default()
        };
        let config = args.resolve().expect("valid file");
        assert_eq!(config.node.id, 2);
        assert_eq!(config.node.peers.len(), 2);
        assert_eq!(config.node.tick, Duration::from_millis(20));
        std::fs::write(&path, "tick = 5\n").expect("write");
        let err = args.resolve().expect_err("unknown key").to_string();
        assert!(err.contains("meta.toml") && err.contains("tick"), "{err}");
    }

    #[test]
    fn partial_tls_settings_name_the_missing_one_as_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.toml");
        std::fs::write(&path, "tls_ca = \"/nonexistent/ca.pem\"\n").expect("write");
        let args = MetaArgs {
            config: Some(path),
            tls_cert: Some("/nonexistent/cert.pem".into()),
            ..Default::default()
        };
        let err = args.resolve().expect_err("no key").to_string();
        assert!(err.starts_with("--tls-key: "), "{err}");
        assert!(err.contains("--tls-cert, --tls-key and tls_ca"), "{err}");
        let args = MetaArgs {
            tls_key: Some("/nonexistent/key.pem".into()),
            ..args
        };
        let err = args.resolve().expect_err("unreadable").to_string();
        assert!(
            err.starts_with("--tls-cert: cannot read /nonexistent/cert.pem"),
            "{err}"
        );
    }
}
