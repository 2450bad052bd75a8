//! Running the matrix: set up the targets, then for each transport, client,
//! backend and workload run every repetition against both targets, ours and
//! the kernel's alternating, and record each run as a [`Sample`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::agent::Agent;
use crate::clients::{self, ClientResult};
use crate::fabricd::Fabricd;
use crate::kernel::{self, KernelTarget};
use crate::linux_host::{self, Connection};
use crate::matrix::{is_unavailable, Backend, Case, Client, Mode, Sample, SampleSet, Side};

/// Our target's subsystem.
pub const OURS_NQN: &str = "nqn.2026-11.io.fabric:bench-ours";
/// The kernel target's subsystem.
pub const KERNEL_NQN: &str = "nqn.2026-11.io.fabric:bench-kernel";
/// The kernel target's port number (ours listens on the next one).
pub const KERNEL_SVC: u16 = 4420;
/// Our target's port in the guest.
pub const OURS_SVC: u16 = 4421;
/// How long fabricd may take to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the targets' guest (split and pair modes) may take to boot
/// and set up.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Guest or native.
    pub mode: Mode,
    /// Where samples and logs go.
    pub out: PathBuf,
    /// Transports (tcp, rdma).
    pub transports: Vec<String>,
    /// Backends.
    pub backends: Vec<Backend>,
    /// Clients.
    pub clients: Vec<Client>,
    /// Workloads.
    pub cases: Vec<Case>,
    /// Repetitions per side.
    pub reps: u32,
    /// Seconds per sample.
    pub seconds: u64,
    /// Size of each backend in GiB.
    pub size_gib: u64,
    /// The fabricd binary.
    pub fabricd: PathBuf,
    /// The fabric-perf binary.
    pub fabric_perf: PathBuf,
    /// Split and pair modes: where `fabric-bench serve` runs the targets.
    pub remote: Option<Remote>,
}

/// Where the targets are when another machine (a guest running
/// `fabric-bench serve`) runs them: split and pair modes.
#[derive(Clone, Debug)]
pub struct Remote {
    /// The address they are reached at.
    pub host: String,
    /// The kernel target's port.
    pub kernel_port: u16,
    /// Our target's port.
    pub ours_port: u16,
    /// The agent's port.
    pub agent_port: u16,
}

/// A target side as the clients see it, or why it cannot be used.
struct Endpoint {
    side: Side,
    nqn: &'static str,
    address: String,
    fabricd: Option<Fabricd>,
    connection: Option<Connection>,
    connect_error: Option<String>,
    error: Option<String>,
}

impl Endpoint {
    fn failed(side: Side, nqn: &'static str, e: impl std::fmt::Display) -> Endpoint {
        Endpoint {
            side,
            nqn,
            address: String::new(),
            fabricd: None,
            connection: None,
            connect_error: None,
            error: Some(e.to_string()),
        }
    }

    /// Why this side cannot run `client` now, if it cannot.
    fn problem(&mut self, client: Client) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        if client == Client::Fio {
            if let Some(e) = &self.connect_error {
                return Some(e.clone());
            }
        }
        let d = self.fabricd.as_mut()?;
        (!d.is_running()).then(|| format!("fabricd exited: {}", crate::fabricd::last_line(d.log())))
    }
}

fn host_address(transport: &str) -> String {
    match transport {
        "rdma" => std::env::var("RDMA_IP").unwrap_or_else(|_| "10.77.0.1".into()),
        _ => "127.0.0.1".into(),
    }
}

/// `fabricd target` arguments: listening on each of `listen`, a null and a
/// mem namespace of `sizes` bytes.
pub fn ours_args(listen: &[String], sizes: (u64, u64)) -> Vec<String> {
    let mut args: Vec<String> = listen
        .iter()
        .flat_map(|l| ["--listen".to_string(), l.clone()])
        .collect();
    args.extend([
        "--nqn".into(),
        OURS_NQN.into(),
        "--namespace".into(),
        format!("null:{}", sizes.0),
        "--namespace".into(),
        format!("mem:{}", sizes.1),
        "--log-level".into(),
        "warn,fabric::daemon=info".into(),
    ]);
    args
}

fn start_ours(cfg: &RunConfig, transport: &str, sizes: (u64, u64)) -> Endpoint {
    if let Some(r) = &cfg.remote {
        // Already running in the targets' guest.
        return remote_endpoint(Side::Ours, OURS_NQN, transport, &r.host, r.ours_port);
    }
    // The native mode's host is shared: take any free port.
    let svc = if cfg.mode == Mode::Native {
        0
    } else {
        OURS_SVC
    };
    let args = ours_args(
        &[format!("{transport}://{}:{svc}", host_address(transport))],
        sizes,
    );
    let log = cfg.out.join(format!("fabricd-{transport}.log"));
    match Fabricd::start(&cfg.fabricd, &args, &log, READY_TIMEOUT) {
        Ok(d) => match crate::fabricd::ready_address(d.log()) {
            Some(address) => Endpoint {
                side: Side::Ours,
                nqn: OURS_NQN,
                address,
                fabricd: Some(d),
                connection: None,
                connect_error: None,
                error: None,
            },
            None => Endpoint::failed(Side::Ours, OURS_NQN, "fabricd's ready line has no address"),
        },
        Err(e) => Endpoint::failed(Side::Ours, OURS_NQN, format!("{e:#}")),
    }
}

fn kernel_endpoint(kernel: &mut Option<KernelTarget>, id: u16, transport: &str) -> Endpoint {
    let addr = host_address(transport);
    let Some(k) = kernel.as_mut() else {
        return Endpoint::failed(Side::Kernel, KERNEL_NQN, "no kernel target");
    };
    match k.add_port(id, transport, &addr, KERNEL_SVC) {
        Ok(()) => Endpoint {
            side: Side::Kernel,
            nqn: KERNEL_NQN,
            address: format!("{transport}://{addr}:{KERNEL_SVC}"),
            fabricd: None,
            connection: None,
            connect_error: None,
            error: None,
        },
        Err(e) => Endpoint::failed(Side::Kernel, KERNEL_NQN, format!("{e:#}")),
    }
}

/// A target that `fabric-bench serve` runs elsewhere, at `host:port`.
fn remote_endpoint(
    side: Side,
    nqn: &'static str,
    transport: &str,
    host: &str,
    port: u16,
) -> Endpoint {
    Endpoint {
        side,
        nqn,
        address: format!("{transport}://{host}:{port}"),
        fabricd: None,
        connection: None,
        connect_error: None,
        error: None,
    }
}

fn agent(cfg: &RunConfig) -> Option<Agent> {
    cfg.remote.as_ref().map(|r| Agent {
        address: format!("{}:{}", r.host, r.agent_port),
    })
}

fn save(set: &SampleSet, out: &Path) -> anyhow::Result<()> {
    let path = out.join("samples.json");
    std::fs::write(&path, serde_json::to_string_pretty(set)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn random_hostnqn() -> String {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    format!("nqn.2014-08.org.nvmexpress:uuid:{}", id.trim())
}

/// Run the whole matrix; samples are saved to `out/samples.json` as they come.
pub fn run(cfg: &RunConfig) -> anyhow::Result<SampleSet> {
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let mut set = SampleSet {
        mode: cfg.mode,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        seconds: cfg.seconds as f64,
        reps: cfg.reps,
        samples: Vec::new(),
    };
    let size = cfg.size_gib << 30;
    let (mut kernel, sizes) = if let Some(a) = agent(cfg) {
        // The machine measured is the targets' guest.
        a.wait_ready(GUEST_TIMEOUT)?;
        (set.cpus, set.kernel) = a.info()?;
        (None, (size, size))
    } else if cfg.mode == Mode::Guest {
        let (k, sizes) = kernel::target_with_backends(KERNEL_NQN, cfg.size_gib)?;
        (Some(k), sizes)
    } else {
        (None, (size, size))
    };
    let hostnqn = random_hostnqn();
    let total = cfg.transports.len()
        * cfg.clients.len()
        * cfg.backends.len()
        * cfg.cases.len()
        * cfg.reps as usize
        * if cfg.mode.has_kernel() { 2 } else { 1 };
    for (i, transport) in cfg.transports.iter().enumerate() {
        let mut sides = vec![start_ours(cfg, transport, sizes)];
        if let Some(r) = &cfg.remote {
            let k = remote_endpoint(Side::Kernel, KERNEL_NQN, transport, &r.host, r.kernel_port);
            sides.push(k);
        } else if cfg.mode == Mode::Guest {
            sides.push(kernel_endpoint(&mut kernel, i as u16 + 1, transport));
        }
        // The targets' guest keeps its backends across transports: fill
        // them once.
        if cfg.backends.contains(&Backend::Mem) && (cfg.remote.is_none() || i == 0) {
            fill_mem(cfg, &sides, sizes.1);
        }
        for &client in &cfg.clients {
            if client == Client::Fio {
                for s in sides.iter_mut().filter(|s| s.error.is_none()) {
                    let (host, svc) = split_address(&s.address);
                    match linux_host::connect(transport, &host, svc, s.nqn, &hostnqn) {
                        Ok(c) => s.connection = Some(c),
                        Err(e) => s.connect_error = Some(format!("nvme connect: {e:#}")),
                    }
                }
            }
            for &backend in &cfg.backends {
                for case in &cfg.cases {
                    for rep in 0..cfg.reps {
                        // Alternate which side goes first.
                        let order: Vec<usize> = if rep % 2 == 0 {
                            (0..sides.len()).collect()
                        } else {
                            (0..sides.len()).rev().collect()
                        };
                        for k in order {
                            let s =
                                measure(cfg, &mut sides[k], transport, client, backend, case, rep);
                            println!("[{}/{total}] {}", set.samples.len() + 1, describe(&s));
                            set.samples.push(s);
                            save(&set, &cfg.out)?;
                        }
                    }
                }
            }
            // Disconnect the Linux host before the next client.
            for s in sides.iter_mut() {
                s.connection = None;
                s.connect_error = None;
            }
        }
    }
    if let Some(a) = agent(cfg) {
        a.quit()?;
    }
    Ok(set)
}

/// Write the whole RAM backend of each side once before measuring. brd
/// and our `mem:` namespace both allocate a page on its first write, and
/// brd outlives a transport's fabricd: without this, ours would start
/// every transport empty against a kernel RAM disk already written.
fn fill_mem(cfg: &RunConfig, sides: &[Endpoint], bytes: u64) {
    for s in sides.iter().filter(|s| s.error.is_none()) {
        let nsid = Backend::Mem.nsid();
        match clients::fill(&cfg.fabric_perf, &s.address, s.nqn, nsid, bytes) {
            Ok(()) => println!("filled the {} side's mem backend", s.side.name()),
            Err(e) => println!(
                "filling the {} side's mem backend failed: {e:#}",
                s.side.name()
            ),
        }
    }
}

fn split_address(address: &str) -> (String, u16) {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(0)),
        None => (rest.to_string(), 0),
    }
}

fn describe(s: &Sample) -> String {
    let head = format!(
        "{} {} {} {} {} rep {}:",
        s.transport, s.backend, s.case, s.client, s.side, s.rep
    );
    match &s.error {
        Some(e) if s.unavailable => format!("{head} unavailable: {e}"),
        Some(e) => format!("{head} FAILED: {e}"),
        None => format!(
            "{head} {:.0} IOPS, p50 {:.0} us, p99 {:.0} us, machine CPU {:.2} s{}{}",
            s.iops,
            s.p50_us,
            s.p99_us,
            s.system_busy_s,
            s.vcpu_s
                .map_or(String::new(), |v| format!(" (vCPU threads {v:.2} s)")),
            s.target_cpu_s
                .map_or(String::new(), |t| format!(", fabricd CPU {t:.2} s"))
        ),
    }
}

fn measure(
    cfg: &RunConfig,
    side: &mut Endpoint,
    transport: &str,
    client: Client,
    backend: Backend,
    case: &Case,
    rep: u32,
) -> Sample {
    let mut s = Sample {
        transport: transport.to_string(),
        backend: backend.name().to_string(),
        case: case.label.to_string(),
        client: client.name().to_string(),
        side: side.side.name().to_string(),
        rep,
        ..Default::default()
    };
    let result = match side.problem(client) {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => run_client(cfg, side, client, backend, case, &mut s),
    };
    match result {
        Ok(r) => {
            s.ios = r.ios;
            s.iops = r.iops;
            s.p50_us = r.p50_us;
            s.p99_us = r.p99_us;
            s.client_cpu_s = r.cpu_s;
            if r.ios == 0 {
                s.error = Some("the client completed no I/O".into());
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            s.unavailable = is_unavailable(&msg);
            s.error = Some(msg);
        }
    }
    s
}

/// Run the client once, with CPU counters read around it.
fn run_client(
    cfg: &RunConfig,
    side: &Endpoint,
    client: Client,
    backend: Backend,
    case: &Case,
    s: &mut Sample,
) -> anyhow::Result<ClientResult> {
    let agent = agent(cfg);
    // The machine's busy time, its vCPU time as this machine counts it and
    // our target's CPU time: from the targets' agent in split and pair
    // modes (fabricd's only on our side), from here otherwise.
    let cpu = || -> anyhow::Result<_> {
        match &agent {
            Some(a) => {
                let c = a.cpu()?;
                let fabricd = (side.side == Side::Ours).then_some(c.fabricd);
                Ok((c.system, c.vcpu, fabricd))
            }
            None => Ok((
                perf::cpu::system_cpu()?,
                perf::cpu::guest_vcpu_time()?,
                side.fabricd.as_ref().map(Fabricd::cpu).transpose()?,
            )),
        }
    };
    let (sys0, v0, t0) = cpu()?;
    let r = match client {
        Client::Fio => {
            let conn = side.connection.as_ref().context("not connected")?;
            let dev = conn.namespace(backend.nsid(), DEVICE_TIMEOUT)?;
            clients::fio(&dev, case, cfg.seconds)?
        }
        Client::FabricPerf => clients::fabric_perf(
            &cfg.fabric_perf,
            &side.address,
            side.nqn,
            backend.nsid(),
            case,
            cfg.seconds,
        )?,
    };
    let (sys1, v1, t1) = cpu()?;
    s.system_busy_s = sys1.since(&sys0).busy.as_secs_f64();
    s.vcpu_s = v0.zip(v1).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    s.target_cpu_s = t0.zip(t1).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    Ok(r)
}
