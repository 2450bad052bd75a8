//! The command line of `fabric-ctl`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use meta::validate::{MAX_CONTROLLERS, MAX_LEGS, MAX_REPLICAS};

/// Exit codes that scripts can rely on.
pub const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 other error; 2 bad usage or invalid argument; \
3 not found; 4 already exists; 5 refused by the cluster's state (failed precondition, \
lost race); 6 meta group unavailable or outcome unknown (a write may still take effect).";

/// Administer the storage fabric through its meta group.
#[derive(Debug, Parser)]
#[command(name = "fabric-ctl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Meta replicas to talk to, comma-separated host:port (or
    /// http://host:port, or https://host:port with the TLS settings).
    #[arg(long, global = true, env = meta::client::ENDPOINT_ENV, default_value = meta::client::DEFAULT_ENDPOINT, value_parser = parse_endpoints)]
    pub endpoint: String,
    /// Client certificate (PEM) for a meta group that serves mutual TLS;
    /// with --tls-key and --tls-ca.
    #[arg(long, global = true, env = "FABRIC_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "FABRIC_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) the replicas' certificates chain to.
    #[arg(long, global = true, env = "FABRIC_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to keep retrying while the meta group is unavailable (1 to 86400).
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The cluster object and the meta group's replicas.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Disk nodes.
    #[command(subcommand)]
    Dn(NodeCmd<DiskNodeArgs>),
    /// Controller nodes.
    #[command(subcommand)]
    Cn(NodeCmd<ControllerNodeArgs>),
    /// Hosts allowed to connect to volumes.
    #[command(subcommand)]
    Host(HostCmd),
    /// Volumes.
    #[command(subcommand)]
    Vol(VolCmd),
    /// Snapshots.
    #[command(subcommand)]
    Snap(SnapCmd),
    /// Long-running operations.
    #[command(subcommand)]
    Op(OpCmd),
    /// Stream changes to every object (across the loss of a replica: the
    /// stream resumes on another one after the last revision printed).
    Watch {
        /// Print changes after this revision (default: from now on).
        #[arg(long, value_name = "REVISION")]
        after: Option<u64>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `fabric-ctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Create the cluster object (once).
    Create {
        /// Name of the cluster.
        name: String,
        /// Extent allocation unit (e.g. 1G) [default: 1G].
        #[arg(long, value_parser = parse_positive_size)]
        extent_size: Option<u64>,
        /// Raid0 chunk [default: 16K].
        #[arg(long, value_parser = parse_positive_size)]
        raid0_chunk: Option<u64>,
        /// Thin-pool block [default: 1M].
        #[arg(long, value_parser = parse_positive_size)]
        thin_block: Option<u64>,
        /// Raid1 bitmap region [default: 4M].
        #[arg(long, value_parser = parse_positive_size)]
        raid1_region: Option<u64>,
    },
    /// Show the cluster object.
    Get,
    /// Delete the cluster object (only when nothing else exists).
    Delete,
    /// List the meta group's replicas.
    List,
    /// Show the connected replica's Raft status.
    Status,
    /// Add a replica (started with --join) to the meta group.
    AddReplica {
        /// Its Raft id.
        id: u64,
        /// Its gRPC address (host:port).
        #[arg(value_parser = parse_replica_address)]
        address: String,
    },
    /// Remove a replica from the meta group.
    RemoveReplica {
        /// Its Raft id.
        id: u64,
    },
}

/// Subcommands shared by disk and controller nodes.
#[derive(Debug, Subcommand)]
pub enum NodeCmd<A: Args> {
    /// Declare a node (it shows online once its agent heartbeats).
    Create(A),
    /// Create or update a node and mark it online, as its agent does at start.
    Register(A),
    /// Send one heartbeat on behalf of a node.
    Heartbeat {
        /// Node name.
        name: String,
    },
    /// Show a node.
    Get {
        /// Node name.
        name: String,
    },
    /// List the nodes.
    List,
    /// Delete a node (only when it is not online and nothing uses it).
    Delete {
        /// Node name.
        name: String,
    },
}

/// A disk node's description.
#[derive(Debug, Args)]
pub struct DiskNodeArgs {
    /// Node name.
    pub name: String,
    /// NVMe-oF address its logical disks are exported on, tcp:IP:PORT or
    /// rdma:IP:PORT (e.g. tcp:10.0.0.5:4420, tcp:[fd00::5]:4420; tcp://
    /// and rdma:// as fabricd writes them are taken too).
    #[arg(long, value_parser = parse_nvmf_address)]
    pub address: String,
    /// Usable capacity of its device (e.g. 2T).
    #[arg(long, value_parser = parse_positive_size)]
    pub capacity: u64,
    /// Failure-domain tag (rack, power feed) [default: none; `register`
    /// without it keeps the tag recorded].
    #[arg(long)]
    pub failure_domain: Option<String>,
}

/// A controller node's description.
#[derive(Debug, Args)]
pub struct ControllerNodeArgs {
    /// Node name.
    pub name: String,
    /// NVMe-oF address hosts and peers connect to, tcp:IP:PORT or
    /// rdma:IP:PORT (tcp:// and rdma:// as fabricd writes them are taken too).
    #[arg(long, value_parser = parse_nvmf_address)]
    pub address: String,
}

/// `fabric-ctl host ...`
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Create a host.
    Create {
        /// Host name.
        name: String,
        /// Host NQN.
        #[arg(long)]
        nqn: String,
    },
    /// Show a host.
    Get {
        /// Host name.
        name: String,
    },
    /// List the hosts.
    List,
    /// Delete a host (only when no volume allows it).
    Delete {
        /// Host name.
        name: String,
    },
}

/// `fabric-ctl vol ...`
#[derive(Debug, Subcommand)]
pub enum VolCmd {
    /// Create a volume and place it.
    Create {
        /// Volume name.
        name: String,
        /// Size (e.g. 100G).
        #[arg(long, value_parser = parse_positive_size)]
        size: u64,
        /// Mirrors per raid1 group, 1 to 3 [default: 2].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_REPLICAS)))]
        replicas: Option<u32>,
        /// Stripe legs, 1 to 64 [default: one per active controller].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LEGS)))]
        legs: Option<u32>,
        /// Active controllers, 1 to 16 [default: 1].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONTROLLERS)))]
        active: Option<u32>,
        /// Standby controllers, 0 to 16 [default: 1 when a spare controller exists].
        #[arg(long, value_parser = clap::value_parser!(u32).range(..=i64::from(MAX_CONTROLLERS)))]
        standby: Option<u32>,
        /// Host allowed to connect (repeat for more).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Show a volume and its layout.
    Get {
        /// Volume name.
        name: String,
    },
    /// List the volumes.
    List,
    /// Delete a volume (only without snapshots).
    Delete {
        /// Volume name.
        name: String,
    },
}

/// `fabric-ctl snap ...`
#[derive(Debug, Subcommand)]
pub enum SnapCmd {
    /// Snapshot a volume.
    Create {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// Show a snapshot.
    Get {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots (of one volume, or all).
    List {
        /// Volume name.
        volume: Option<String>,
    },
    /// Delete a snapshot.
    Delete {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        name: String,
    },
}

/// `fabric-ctl op ...`
#[derive(Debug, Subcommand)]
pub enum OpCmd {
    /// Show an operation and its steps.
    Get {
        /// Operation name.
        name: String,
    },
    /// List operations.
    List,
    /// Delete a finished operation.
    Delete {
        /// Operation name.
        name: String,
    },
    /// Cancel an unfinished operation: its first step not done is marked
    /// failed with the reason, which fails the operation (a snapshot it
    /// was creating becomes failed and can be deleted). Whoever runs the
    /// step finds the operation failed at its next update and stops.
    Cancel {
        /// Operation name.
        name: String,
        /// Why, recorded as the step's message.
        #[arg(long, default_value = "cancelled by fabric-ctl op cancel")]
        reason: String,
    },
}

/// Longest `--timeout`: a day.
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// A size of at least one byte (0 would silently mean the server's default).
fn parse_positive_size(text: &str) -> Result<u64, String> {
    match raid::parse_size(text) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Comma-separated `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`.
fn parse_endpoints(text: &str) -> Result<String, String> {
    meta::client::parse_endpoints(text).map(|_| text.to_string())
}

/// A replica's gRPC address, `HOST:PORT`.
fn parse_replica_address(text: &str) -> Result<String, String> {
    meta::cli::check_address(text).map(|()| text.to_string())
}

/// An NVMe-oF address as the meta group records it: `tcp:IP:PORT` or
/// `rdma:IP:PORT`, an IPv6 address in brackets, the port not 0. The form
/// `fabricd` takes, `tcp://IP:PORT`, is accepted and recorded without `//`
/// (`rdma://` likewise).
fn parse_nvmf_address(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("'{text}' is not tcp:IP:PORT or rdma:IP:PORT ({why})");
    let (transport, rest) = text.split_once(':').ok_or_else(|| bad("no transport"))?;
    if !matches!(transport, "tcp" | "rdma") {
        return Err(bad("the transport is not tcp or rdma"));
    }
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => host.parse::<Ipv4Addr>().is_ok(),
    };
    if !ip {
        return Err(bad("not an IPv4 address or an [IPv6] address"));
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(format!("{transport}:{rest}")),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-line error of parsing `args`.
    fn error(args: &[&str]) -> String {
        let argv = std::iter::once("fabric-ctl").chain(args.iter().copied());
        let e = Cli::try_parse_from(argv).expect_err("refused");
        cmdline::one_line_error(&e.to_string())
    }

    fn parses(args: &[&str]) -> Cli {
        let argv = std::iter::once("fabric-ctl").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("valid")
    }

    #[test]
    fn timeout_is_one_second_to_a_day() {
        assert_eq!(
            parses(&["--timeout", "86400", "cluster", "get"]).timeout,
            86_400
        );
        for bad in ["0", "86401", "9223372036854775807", "18446744073709551615"] {
            let e = error(&["--timeout", bad, "cluster", "list"]);
            assert!(e.contains("--timeout") && e.contains("1..=86400"), "{e}");
        }
    }

    #[test]
    fn zero_counts_and_sizes_are_refused() {
        let e = error(&["cluster", "create", "demo", "--extent-size", "0"]);
        assert!(
            e.contains("--extent-size") && e.contains("more than 0"),
            "{e}"
        );
        for flag in ["--replicas", "--legs", "--active"] {
            let e = error(&["vol", "create", "v1", "--size", "1G", flag, "0"]);
            assert!(e.contains(flag), "{e}");
        }
        let e = error(&["vol", "create", "v1", "--size", "1G", "--replicas", "4"]);
        assert!(e.contains("--replicas") && e.contains("1..=3"), "{e}");
        let e = error(&["vol", "create", "v1", "--size", "0"]);
        assert!(e.contains("--size"), "{e}");
        parses(&["vol", "create", "v1", "--size", "1G", "--standby", "0"]);
    }

    #[test]
    fn node_addresses_are_transport_ip_port() {
        for good in ["tcp:10.0.0.5:4420", "rdma:[fd00::5]:4420"] {
            parses(&["dn", "create", "d", "--address", good, "--capacity", "2T"]);
            parses(&["cn", "create", "c", "--address", good]);
        }
        for bad in [
            "bogus",
            "10.0.0.5:4420",
            "udp:10.0.0.5:4420",
            "tcp:///10.0.0.5:4420",
            "tcp:host:4420",
            "tcp:fd00::5:4420",
            "tcp:10.0.0.5:0",
            "tcp:10.0.0.5:70000",
        ] {
            let e = error(&["dn", "create", "d", "--address", bad, "--capacity", "2T"]);
            assert!(e.contains("--address") && e.contains("tcp:IP:PORT"), "{e}");
        }
        assert_eq!(
            parse_nvmf_address("tcp://10.0.0.5:4420").as_deref(),
            Ok("tcp:10.0.0.5:4420"),
            "fabricd's form is recorded without //"
        );
        let e = error(&["cluster", "add-replica", "2", "tcp://127.0.0.1:7401"]);
        assert!(e.contains("ADDRESS") && e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn endpoints_are_host_port_http_or_https() {
        let cli = parses(&[
            "--endpoint",
            "a:1, http://127.0.0.1:7400/,https://b:2",
            "cluster",
            "get",
        ]);
        assert_eq!(cli.endpoint, "a:1, http://127.0.0.1:7400/,https://b:2");
        for bad in [
            "ftp://127.0.0.1:15998",
            "127.0.0.1:70000",
            "127.0.0.1:0",
            "foo",
            "a:1,foo",
            ",",
        ] {
            let e = error(&["--endpoint", bad, "cluster", "list"]);
            assert!(e.contains("--endpoint"), "{e}");
        }
    }
}
