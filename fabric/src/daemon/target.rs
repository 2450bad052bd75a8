//! `fabricd target`: a standalone NVMe-oF target, from flags or a TOML file.
//!
//! Flags override the file; list flags (`--listen`, `--namespace`,
//! `--allow-host`) replace the file's list when given. With neither, the
//! target serves a 1 GiB memory namespace on `tcp://127.0.0.1:4420`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use raid::{parse_size, Raid1OpenOptions};
use serde::Deserialize;

use super::agent::{AgentArgs, AgentSettings};
pub use super::namespace::{NamespaceSpec, OpenNamespace};
use crate::target::{PortAddress, SubsystemConfig, Target, TargetConfig, TransportKind};
use crate::transport::rdma::{RdmaConfig, RdmaTransport};
use crate::transport::tcp::TcpTransport;
use crate::transport::{target_transport, TargetTransport};

/// The NQN served when none is given.
pub const DEFAULT_NQN: &str = "nqn.2026-11.io.fabric:target";
/// The address listened on when none is given.
pub const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:4420";
/// The namespace served when none is given.
pub const DEFAULT_NAMESPACE: &str = "mem:1G";

/// Arguments of `fabricd target`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TargetArgs {
    /// TOML file with the same settings as the flags, but --log-level,
    /// --worker-threads and --assemble-stale (keys with underscores:
    /// `rdma_slots = 1024`; flags win).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; repeat for several [default: tcp://127.0.0.1:4420].
    #[arg(long = "listen", value_name = "tcp://ADDR:PORT")]
    pub listen: Vec<PortAddress>,
    /// Subsystem NQN [default: nqn.2026-11.io.fabric:target].
    #[arg(long, value_name = "NQN")]
    pub nqn: Option<String>,
    /// Namespace backend, NSIDs in order from 1; repeat for several
    /// (SIZE takes K, M, G, T suffixes, powers of two; `raid1:` mirrors
    /// files or devices: created over blank ones, with SIZE creating missing
    /// files, and reassembled on later starts) [default: mem:1G].
    #[arg(
        long = "namespace",
        value_name = "mem:SIZE | null:SIZE | file:PATH[:SIZE] | raid1:PATH,PATH[:SIZE]"
    )]
    pub namespaces: Vec<NamespaceSpec>,
    /// Host NQN allowed to connect; repeat for several [default: any host].
    #[arg(long = "allow-host", value_name = "NQN")]
    pub allow_hosts: Vec<String>,
    /// Also serve the discovery subsystem on the listen addresses.
    #[arg(long)]
    pub discovery: bool,
    /// Serial number reported in Identify (at most 20 characters).
    #[arg(long)]
    pub serial: Option<String>,
    /// Logical block size of every namespace, in bytes [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub block_size: Option<u32>,
    /// Largest transfer of one command (power of two, at least 4K) [default: 1M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub max_transfer: Option<u64>,
    /// Controller IDs this target hands out, MIN-MAX (distinct per node of a
    /// multipath subsystem) [default: 1-65519].
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_range)]
    pub cntlid_range: Option<(u16, u16)>,
    /// RDMA: data slots registered per device [default: 512]; slots x
    /// slot size from one --max-transfer to 4G.
    #[arg(long, value_name = "N")]
    pub rdma_slots: Option<u32>,
    /// RDMA: bytes per data slot (power of two, 4K to 1M) [default: 128K].
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub rdma_slot_size: Option<u64>,
    /// RDMA: shared receive buffers posted per device to start with (16 to
    /// 65536); more are posted as queue pairs connect, one per command of
    /// their depth [default: 1024].
    #[arg(long, value_name = "N")]
    pub rdma_srq_size: Option<u32>,
    /// RDMA: completion queue entries per device to start with (64 to
    /// 4194304); the queue grows as queue pairs need, within the device's
    /// limit [default: 16384].
    #[arg(long, value_name = "N")]
    pub rdma_cq_size: Option<u32>,
    /// RDMA: in-capsule data accepted on I/O queues (a multiple of 16, up
    /// to 64K) [default: 8K].
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub rdma_inline: Option<u64>,
    /// RDMA: microseconds a device's completion poller keeps polling after
    /// the last completion before it sleeps (0 to 10000) [default: 300].
    #[arg(long, value_name = "MICROSECONDS")]
    pub rdma_poll_us: Option<u64>,
    /// TCP: microseconds an idle connection keeps reading its socket
    /// before it sleeps (0 to 10000; lower latency at low queue depth for
    /// up to this much CPU per idle spell) [default: 0, off].
    #[arg(long, value_name = "MICROSECONDS")]
    pub tcp_poll_us: Option<u64>,
    /// Recovery, for one start (flag only; repeat for several): if none
    /// of the in-sync members of raid1 namespace NSID is present, assemble
    /// it as a new array from the member that left last. Writes
    /// acknowledged after it left are lost; the missing members, should
    /// they return, are refused next to it.
    #[arg(long = "assemble-stale", value_name = "NSID")]
    pub assemble_stale: Vec<u32>,
    /// Registration with the meta group.
    #[command(flatten)]
    pub agent: AgentArgs,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?}: expected MIN-MAX with 1 <= MIN <= MAX <= 65519");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        a.trim().parse::<u16>().map_err(|_| bad())?,
        b.trim().parse::<u16>().map_err(|_| bad())?,
    );
    if a == 0 || a > b || b > crate::wire::CNTLID_MAX {
        return Err(bad());
    }
    Ok((a, b))
}

/// The TOML file's form (every key optional).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    /// Listen addresses.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Subsystem NQN.
    pub nqn: Option<String>,
    /// Namespace specs.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Allowed host NQNs.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Serve discovery.
    #[serde(default)]
    pub discovery: bool,
    /// Serial number.
    pub serial: Option<String>,
    /// Block size.
    pub block_size: Option<u32>,
    /// Largest transfer (size string).
    pub max_transfer: Option<String>,
    /// Controller ID range "MIN-MAX".
    pub cntlid_range: Option<String>,
    /// RDMA data slots per device.
    pub rdma_slots: Option<u32>,
    /// RDMA bytes per data slot (size string).
    pub rdma_slot_size: Option<String>,
    /// RDMA shared receive queue entries per device.
    pub rdma_srq_size: Option<u32>,
    /// RDMA completion queue entries per device to start with.
    pub rdma_cq_size: Option<u32>,
    /// RDMA in-capsule data (size string).
    pub rdma_inline: Option<String>,
    /// RDMA completion polling after the last completion, µs.
    pub rdma_poll_us: Option<u64>,
    /// TCP idle polling, µs.
    pub tcp_poll_us: Option<u64>,
    /// Meta endpoints to register with.
    pub meta: Option<String>,
    /// Disk node name.
    pub node_name: Option<String>,
    /// Advertised address.
    pub advertise: Option<String>,
    /// Failure domain.
    pub failure_domain: Option<String>,
    /// TLS client certificate for the meta group.
    pub meta_tls_cert: Option<PathBuf>,
    /// Its key.
    pub meta_tls_key: Option<PathBuf>,
    /// The CA of the meta group.
    pub meta_tls_ca: Option<PathBuf>,
}

/// Settings after merging the file and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSettings {
    /// Listen addresses.
    pub listen: Vec<PortAddress>,
    /// NQN.
    pub nqn: String,
    /// Namespaces.
    pub namespaces: Vec<NamespaceSpec>,
    /// Allowed hosts (empty: any).
    pub allow_hosts: Vec<String>,
    /// Serve discovery.
    pub discovery: bool,
    /// Serial.
    pub serial: Option<String>,
    /// Block size.
    pub block_size: u32,
    /// Largest transfer.
    pub max_transfer: u32,
    /// Controller ID range.
    pub cntlid_range: (u16, u16),
    /// RDMA transport settings.
    pub rdma: RdmaConfig,
    /// TCP transport settings.
    pub tcp: TcpTransport,
    /// raid1 namespaces to assemble from a member that left
    /// (`--assemble-stale`), by NSID.
    pub assemble_stale: Vec<u32>,
    /// Registration with the meta group, if asked for.
    pub agent: Option<AgentSettings>,
}

/// Refuses an NQN the NVMe specification does not allow, naming `setting`.
fn check_nqn(setting: &str, nqn: &str) -> anyhow::Result<()> {
    if !crate::wire::fabrics::valid_nqn(nqn) {
        bail!(
            "{setting} {nqn:?} is not a valid NQN (nqn. and then at most {} printable ASCII characters)",
            crate::wire::fabrics::MAX_NQN_LEN - 4
        );
    }
    Ok(())
}

/// A list setting: the flags' values, else the file's, else the default.
fn list_setting<T>(flags: &[T], file: &[String], key: &str, default: &str) -> anyhow::Result<Vec<T>>
where
    T: FromStr<Err = String> + Clone,
{
    if !flags.is_empty() {
        return Ok(flags.to_vec());
    }
    if file.is_empty() {
        return Ok(vec![default
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?]);
    }
    file.iter()
        .map(|s| {
            s.parse()
                .map_err(|e: String| anyhow::anyhow!("config {key}: {e}"))
        })
        .collect()
}

/// A single setting: the flag's value, else the file's (parsed), else none.
fn scalar_setting<T>(
    flag: Option<T>,
    file: &Option<String>,
    key: &str,
    parse: fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    match (flag, file) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(s)) => parse(s)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("config {key}: {e}")),
        (None, None) => Ok(None),
    }
}

/// Largest RDMA data pool per device (slots x slot size): it is pinned.
const MAX_RDMA_POOL: u64 = 4 << 30;

/// Refuses an RDMA data pool larger than the machine's memory (`ram`):
/// it is registered, so pinned, when the first host connects through a
/// device, and would fail there ("cannot allocate memory") instead of here.
fn pinned_pool_fits(pool: u64, ram: Option<u64>) -> anyhow::Result<()> {
    match ram {
        Some(ram) if pool >= ram => bail!(
            "--rdma-slots x --rdma-slot-size (rdma_slots x rdma_slot_size) is {} MiB, not less \
             than this machine's memory ({} MiB): the pool is pinned in RAM",
            pool >> 20,
            ram >> 20
        ),
        _ => Ok(()),
    }
}

/// A polling time in µs, at most 10 ms.
fn poll_time(us: u64, name: &str) -> anyhow::Result<Duration> {
    if us > 10_000 {
        bail!("{name} {us} must be from 0 to 10000");
    }
    Ok(Duration::from_micros(us))
}

fn read_file(path: &Path) -> anyhow::Result<TargetFile> {
    Ok(cmdline::read_toml(path)?)
}

impl TargetArgs {
    /// Merge the config file (if any) with the flags and check the result.
    pub fn settings(&self) -> anyhow::Result<TargetSettings> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => TargetFile::default(),
        };
        let listen = list_setting(&self.listen, &file.listen, "listen", DEFAULT_LISTEN)?;
        if let Some(twice) = listen
            .iter()
            .enumerate()
            .find_map(|(i, a)| listen[..i].contains(a).then_some(a))
        {
            bail!("--listen (listen) {twice} is given twice");
        }
        let namespaces = list_setting(
            &self.namespaces,
            &file.namespaces,
            "namespaces",
            DEFAULT_NAMESPACE,
        )?;
        super::namespace::check_distinct_paths(&namespaces)?;
        for &nsid in &self.assemble_stale {
            let spec = (nsid as usize)
                .checked_sub(1)
                .and_then(|i| namespaces.get(i));
            match spec {
                Some(NamespaceSpec::Raid1(..)) => {}
                Some(_) => {
                    bail!("--assemble-stale {nsid}: namespace {nsid} is not a raid1 namespace")
                }
                None => bail!(
                    "--assemble-stale {nsid}: there is no namespace {nsid} (namespaces are 1 to {})",
                    namespaces.len()
                ),
            }
        }
        let max_transfer = scalar_setting(
            self.max_transfer,
            &file.max_transfer,
            "max_transfer",
            parse_size_arg,
        )?
        .unwrap_or(1 << 20);
        if !max_transfer.is_power_of_two() || !(4096..=1 << 24).contains(&max_transfer) {
            bail!("--max-transfer (max_transfer) {max_transfer} must be a power of two from 4K to 16M");
        }
        let block_size = self.block_size.or(file.block_size).unwrap_or(4096);
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            bail!(
                "--block-size (block_size) {block_size} must be a power of two from 512 to 65536"
            );
        }
        let cntlid_range = scalar_setting(
            self.cntlid_range,
            &file.cntlid_range,
            "cntlid_range",
            parse_range,
        )?
        .unwrap_or((1, crate::wire::CNTLID_MAX));
        let mut rdma = RdmaConfig::default();
        if let Some(n) = self.rdma_slots.or(file.rdma_slots) {
            if n == 0 {
                bail!("--rdma-slots (rdma_slots) must be at least 1");
            }
            rdma.slots = n;
        }
        let slot_size = scalar_setting(
            self.rdma_slot_size,
            &file.rdma_slot_size,
            "rdma_slot_size",
            parse_size_arg,
        )?;
        if let Some(sz) = slot_size {
            if !sz.is_power_of_two() || !(4096..=1 << 20).contains(&sz) {
                bail!(
                    "--rdma-slot-size (rdma_slot_size) {sz} must be a power of two from 4K to 1M"
                );
            }
            rdma.slot_size = sz as usize;
        }
        let pool = u64::from(rdma.slots) * rdma.slot_size as u64;
        if pool > MAX_RDMA_POOL {
            bail!(
                "--rdma-slots x --rdma-slot-size (rdma_slots x rdma_slot_size) is {} MiB: \
                 the pool registered (pinned) per RDMA device is at most {} MiB",
                pool >> 20,
                MAX_RDMA_POOL >> 20
            );
        }
        let rdma_listener = listen.iter().any(|a| a.kind == TransportKind::Rdma);
        if rdma_listener {
            pinned_pool_fits(pool, super::namespace::physical_memory())?;
        }
        // A transfer takes its slots at once: a pool smaller than the
        // largest one would leave such a command waiting for ever.
        if pool < max_transfer && rdma_listener {
            bail!(
                "--rdma-slots x --rdma-slot-size (rdma_slots x rdma_slot_size) is {} KiB, less \
                 than one --max-transfer (max_transfer) of {} KiB",
                pool >> 10,
                max_transfer >> 10
            );
        }
        if let Some(n) = self.rdma_srq_size.or(file.rdma_srq_size) {
            if !(16..=65536).contains(&n) {
                bail!("--rdma-srq-size (rdma_srq_size) {n} must be from 16 to 65536");
            }
            rdma.srq_entries = n;
        }
        if let Some(n) = self.rdma_cq_size.or(file.rdma_cq_size) {
            if !(64..=1 << 22).contains(&n) {
                bail!("--rdma-cq-size (rdma_cq_size) {n} must be from 64 to 4194304");
            }
            rdma.cq_entries = n;
        }
        let inline = scalar_setting(
            self.rdma_inline,
            &file.rdma_inline,
            "rdma_inline",
            parse_size_arg,
        )?;
        if let Some(sz) = inline {
            if sz > 65536 || sz % 16 != 0 {
                bail!("--rdma-inline (rdma_inline) {sz} must be a multiple of 16 up to 64K");
            }
            rdma.inline_data_size = sz as u32;
        }
        if let Some(us) = self.rdma_poll_us.or(file.rdma_poll_us) {
            rdma.poll_spin = poll_time(us, "--rdma-poll-us (rdma_poll_us)")?;
        }
        let mut tcp = TcpTransport::default();
        if let Some(us) = self.tcp_poll_us.or(file.tcp_poll_us) {
            tcp.poll = poll_time(us, "--tcp-poll-us (tcp_poll_us)")?;
        }
        let agent = self.agent.settings(&file, &listen)?;
        let nqn = self
            .nqn
            .clone()
            .or(file.nqn)
            .unwrap_or_else(|| DEFAULT_NQN.to_string());
        check_nqn("--nqn (nqn)", &nqn)?;
        let allow_hosts = if self.allow_hosts.is_empty() {
            file.allow_hosts
        } else {
            self.allow_hosts.clone()
        };
        for host in &allow_hosts {
            check_nqn("--allow-host (allow_hosts)", host)?;
        }
        Ok(TargetSettings {
            listen,
            nqn,
            namespaces,
            allow_hosts,
            discovery: self.discovery || file.discovery,
            serial: self.serial.clone().or(file.serial),
            block_size,
            max_transfer: max_transfer as u32,
            cntlid_range,
            rdma,
            tcp,
            assemble_stale: self.assemble_stale.clone(),
            agent,
        })
    }
}

/// A started target: the target, its listeners (with the addresses
/// actually bound) and its namespaces.
pub struct Started {
    /// The target.
    pub target: Arc<Target>,
    /// One per listening address.
    pub listeners: Vec<crate::transport::ListenerHandle>,
    /// The namespaces' backends, closed after the listeners have stopped.
    pub namespaces: Vec<OpenNamespace>,
}

/// Build the target from settings and start listening.
pub async fn start(s: &TargetSettings) -> anyhow::Result<Started> {
    let cfg = TargetConfig {
        max_transfer: s.max_transfer,
        ..TargetConfig::default()
    };
    let target = Target::new(cfg)?;
    let mut sc = SubsystemConfig::new(&s.nqn);
    sc.serial = s.serial.clone();
    sc.allowed_hosts = s.allow_hosts.clone();
    (sc.cntlid_min, sc.cntlid_max) = s.cntlid_range;
    let sub = target.add_subsystem(sc)?;
    super::namespace::check_paths_exist(&s.namespaces)?;
    let mut namespaces = Vec::new();
    for (i, spec) in s.namespaces.iter().enumerate() {
        let ns = spec
            .open_with(
                s.block_size,
                Raid1OpenOptions {
                    assemble_stale: s.assemble_stale.contains(&(i as u32 + 1)),
                },
            )
            .await
            .with_context(|| format!("namespace {}", i + 1))?;
        sub.add_namespace(i as u32 + 1, ns.device.clone(), 1)?;
        namespaces.push(ns);
    }
    for warning in super::free_space::overcommitted_file_systems(&s.namespaces) {
        tracing::warn!("{warning}");
    }
    if s.listen.iter().any(|a| a.kind == TransportKind::Rdma) {
        RdmaTransport::configure(s.rdma.clone())?;
    }
    let mut listeners = Vec::new();
    // A machine without an RDMA device (yet) serves its TCP listeners; its
    // RDMA ones wait for a device. Without a TCP listener that is an error.
    let some_tcp = s.listen.iter().any(|a| a.kind == TransportKind::Tcp);
    for addr in &s.listen {
        let port = target.add_port(addr.clone(), s.discovery);
        let handle = match addr.kind {
            TransportKind::Tcp => s.tcp.listen(target.clone(), port).await?,
            TransportKind::Rdma if some_tcp => {
                RdmaTransport::shared()
                    .listen_or_wait(target.clone(), port)
                    .await?
            }
            kind => target_transport(kind)?.listen(target.clone(), port).await?,
        };
        listeners.push(handle);
    }
    Ok(Started {
        target,
        listeners,
        namespaces,
    })
}

/// Run `fabricd target` until SIGINT or SIGTERM.
pub async fn run(args: TargetArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    #[cfg(feature = "meta-role")]
    let meta = match &settings.agent {
        Some(agent) => Some((super::agent::client(agent)?, agent)),
        None => None,
    };
    let Started {
        target,
        listeners,
        namespaces,
    } = start(&settings).await?;
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| match l.local.kind {
            TransportKind::Rdma if !RdmaTransport::available() => {
                format!("{} (waiting for an RDMA device)", l.local)
            }
            _ => l.local.to_string(),
        })
        .collect();
    tracing::info!(
        nqn = %settings.nqn,
        namespaces = settings.namespaces.len(),
        discovery = settings.discovery,
        "ready: serving on {}",
        addrs.join(", ")
    );
    let space_watch = super::free_space::spawn_watch(
        settings.namespaces.clone(),
        super::free_space::WATCH_INTERVAL,
    );
    // Registered at a listener that serves now (not an RDMA one waiting
    // for a device).
    #[cfg(feature = "meta-role")]
    let serving = listeners
        .iter()
        .find(|l| l.local.kind == TransportKind::Tcp || RdmaTransport::available());
    #[cfg(feature = "meta-role")]
    let agent = match (meta, serving) {
        (Some((client, agent)), Some(first)) => {
            let capacity = namespaces
                .iter()
                .map(|ns| u64::from(ns.device.block_size()).saturating_mul(ns.device.num_blocks()))
                .fold(0, u64::saturating_add);
            Some(super::agent::spawn(client, agent, &first.local, capacity))
        }
        _ => None,
    };
    let signal = cmdline::signal::shutdown_requested().await;
    space_watch.abort();
    tracing::info!(signal, "shutting down");
    // The meta group hears that the node stops while the target does.
    #[cfg(feature = "meta-role")]
    let leave = async move {
        if let Some(agent) = agent {
            agent.stop().await;
        }
    };
    #[cfg(not(feature = "meta-role"))]
    let leave = async {};
    let stop = async {
        target.shutdown();
        for l in listeners {
            l.stop().await;
        }
        // All at once: each raid1 may wait up to its departed-member timeout.
        let closes = namespaces
            .into_iter()
            .enumerate()
            .map(|(i, ns)| async move {
                if let Err(e) = ns.close().await {
                    tracing::warn!(
                        nsid = i + 1,
                        error = format!("{e:#}"),
                        "closing the namespace failed"
                    );
                }
            });
        futures::future::join_all(closes).await;
    };
    tokio::join!(leave, stop);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags_override_file() {
        let s = TargetArgs::default().settings().unwrap();
        assert_eq!(s.listen, vec![DEFAULT_LISTEN.parse().unwrap()]);
        assert_eq!(s.nqn, DEFAULT_NQN);
        assert_eq!(s.namespaces, vec![NamespaceSpec::Memory(1 << 30)]);
        assert_eq!(s.max_transfer, 1 << 20);

        let dir = std::env::temp_dir().join(format!("fabricd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "nqn = \"nqn.x:file\"\nnamespaces = [\"null:1M\"]\ndiscovery = true\nmax_transfer = \"128K\"\n").unwrap();
        let args = TargetArgs {
            config: Some(path.clone()),
            nqn: Some("nqn.x:flag".into()),
            ..Default::default()
        };
        let s = args.settings().unwrap();
        assert_eq!(s.nqn, "nqn.x:flag");
        assert_eq!(s.namespaces, vec![NamespaceSpec::Null(1 << 20)]);
        assert!(s.discovery);
        assert_eq!(s.max_transfer, 128 << 10);

        assert!(s.assemble_stale.is_empty());
        let stale = |nsids: Vec<u32>| {
            TargetArgs {
                namespaces: vec!["mem:1M".parse().unwrap(), "raid1:/a,/b".parse().unwrap()],
                assemble_stale: nsids,
                ..Default::default()
            }
            .settings()
        };
        assert_eq!(stale(vec![2]).unwrap().assemble_stale, vec![2]);
        let err = stale(vec![1]).unwrap_err().to_string();
        assert_eq!(
            err,
            "--assemble-stale 1: namespace 1 is not a raid1 namespace"
        );
        for nsid in [0, 3] {
            let err = stale(vec![nsid]).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "--assemble-stale {nsid}: there is no namespace {nsid} (namespaces are 1 to 2)"
                )
            );
        }

        // NQNs are checked with the setting named, from a flag or the file.
        for (flags, text, setting) in [
            (
                TargetArgs {
                    nqn: Some("bad".into()),
                    ..Default::default()
                },
                "",
                "--nqn (nqn) \"bad\"",
            ),
            (
                TargetArgs::default(),
                "nqn = \"bad\"\n",
                "--nqn (nqn) \"bad\"",
            ),
            (
                TargetArgs::default(),
                "allow_hosts = [\"h\"]\n",
                "--allow-host (allow_hosts) \"h\"",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = TargetArgs {
                config: Some(path.clone()),
                ..flags
            }
            .settings()
            .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("{setting} is not a valid NQN")),
                "{err}"
            );
        }

        // Unknown keys are refused; --assemble-stale is a flag only.
        for key in ["bogus = 1", "assemble_stale = true"] {
            std::fs::write(&path, format!("nqn = \"x\"\n{key}\n")).unwrap();
            let err = TargetArgs {
                config: Some(path.clone()),
                ..Default::default()
            }
            .settings()
            .unwrap_err();
            let name = key.split(' ').next().unwrap();
            assert!(err.to_string().contains(name), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn transport_settings_come_from_the_file_too() {
        let dir = std::env::temp_dir().join(format!("fabricd-cfg-rdma-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        let settings = |text: &str, flags: TargetArgs| {
            std::fs::write(&path, text).unwrap();
            TargetArgs {
                config: Some(path.clone()),
                ..flags
            }
            .settings()
        };
        let file =
            "rdma_slots = 64\nrdma_slot_size = \"64K\"\nrdma_srq_size = 256\nrdma_cq_size = 512\n\
                    rdma_inline = \"4K\"\nrdma_poll_us = 50\ntcp_poll_us = 20\n";
        let s = settings(file, TargetArgs::default()).unwrap();
        assert_eq!(s.rdma.slots, 64);
        assert_eq!(s.rdma.slot_size, 64 << 10);
        assert_eq!(s.rdma.srq_entries, 256);
        assert_eq!(s.rdma.cq_entries, 512);
        assert_eq!(s.rdma.inline_data_size, 4096);
        assert_eq!(s.rdma.poll_spin, Duration::from_micros(50));
        assert_eq!(s.tcp.poll, Duration::from_micros(20));
        let flags = TargetArgs {
            rdma_slots: Some(8),
            tcp_poll_us: Some(0),
            ..Default::default()
        };
        let s = settings(file, flags).unwrap();
        assert_eq!((s.rdma.slots, s.tcp.poll), (8, Duration::ZERO));
        for (bad, named) in [
            ("rdma_slots = 0", "rdma_slots"),
            ("rdma_slot_size = \"3K\"", "rdma_slot_size"),
            (
                "rdma_slots = 40000\nrdma_slot_size = \"1M\"",
                "rdma_slot_size",
            ),
            ("rdma_inline = \"lots\"", "rdma_inline"),
            ("tcp_poll_us = 20000", "tcp_poll_us"),
            ("block_size = 1000", "block_size"),
        ] {
            let err = settings(bad, TargetArgs::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
        let err = settings(
            "listen = [\"tcp://127.0.0.1:4420\", \"tcp://127.0.0.1:4420\"]\n",
            TargetArgs::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("given twice"), "{err}");
        // With an RDMA listener, the pool must hold one largest transfer.
        let rdma = "listen = [\"rdma://127.0.0.1:4420\"]\nrdma_slots = 1\n";
        let err = settings(rdma, TargetArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("less than one --max-transfer"), "{err}");
        let fits = format!("{rdma}max_transfer = \"128K\"\n");
        assert!(settings(&fits, TargetArgs::default()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_rdma_pool_must_fit_in_memory() {
        assert!(pinned_pool_fits(1 << 30, Some(4 << 30)).is_ok());
        assert!(pinned_pool_fits(4 << 30, None).is_ok());
        let err = pinned_pool_fits(4 << 30, Some(3 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--rdma-slots") && err.contains("4096 MiB") && err.contains("3072 MiB"),
            "{err}"
        );
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("1-100"), Ok((1, 100)));
        assert!(parse_range("0-5").is_err());
        assert!(parse_range("9-5").is_err());
        assert!(parse_range("1-65535").is_err());
    }
}
