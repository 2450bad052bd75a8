//! The command line of `fabric-ctl`.

use clap::{Args, Parser, Subcommand};

/// Exit codes that scripts can rely on.
pub const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 other error; 2 bad usage or invalid argument; \
3 not found; 4 already exists; 5 refused by the cluster's state (failed precondition, \
lost race); 6 meta group unavailable or outcome unknown (a write may still take effect).";

/// Administer the storage fabric through its meta group.
#[derive(Debug, Parser)]
#[command(name = "fabric-ctl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Meta replicas to talk to, comma-separated host:port or http://host:port.
    #[arg(long, global = true, env = meta::client::ENDPOINT_ENV, default_value = meta::client::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to keep retrying while the meta group is unavailable.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS")]
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
    /// Stream changes to every object.
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
        #[arg(long, value_parser = parse_size)]
        extent_size: Option<u64>,
        /// Raid0 chunk [default: 16K].
        #[arg(long, value_parser = parse_size)]
        raid0_chunk: Option<u64>,
        /// Thin-pool block [default: 1M].
        #[arg(long, value_parser = parse_size)]
        thin_block: Option<u64>,
        /// Raid1 bitmap region [default: 4M].
        #[arg(long, value_parser = parse_size)]
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
    /// Delete a node (only when nothing uses it).
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
    /// NVMe-oF address its logical disks are exported on (e.g. tcp:10.0.0.5:4420).
    #[arg(long)]
    pub address: String,
    /// Usable capacity of its device (e.g. 2T).
    #[arg(long, value_parser = parse_size)]
    pub capacity: u64,
    /// Failure-domain tag (rack, power feed).
    #[arg(long, default_value = "")]
    pub failure_domain: String,
}

/// A controller node's description.
#[derive(Debug, Args)]
pub struct ControllerNodeArgs {
    /// Node name.
    pub name: String,
    /// NVMe-oF address hosts and peers connect to.
    #[arg(long)]
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
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Mirrors per raid1 group [default: 2].
        #[arg(long)]
        replicas: Option<u32>,
        /// Stripe legs [default: one per active controller].
        #[arg(long)]
        legs: Option<u32>,
        /// Active controllers [default: 1].
        #[arg(long)]
        active: Option<u32>,
        /// Standby controllers [default: 1 when a spare controller exists].
        #[arg(long)]
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
}

fn parse_size(text: &str) -> Result<u64, String> {
    raid::parse_size(text).map_err(|e| e.to_string())
}
