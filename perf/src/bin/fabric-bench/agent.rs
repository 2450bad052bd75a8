//! Split and pair modes: both targets run alone in a guest, the clients
//! elsewhere, as hosts and targets sit on different machines in a
//! deployment. The guest's CPU then counts the targets' work only, not the
//! Linux host's or the clients'.
//!
//! `fabric-bench serve` (in that guest) sets up the kernel target and
//! `fabricd target` on one address, over TCP and optionally RDMA, and
//! answers on a small line protocol: `cpu` → `BUSY_NS TOTAL_NS FABRICD_NS
//! VCPU_NS` (the last `-` outside a `ci/guest-run` guest),
//! `info` → `CPUS KERNEL_RELEASE`, `quit` → `bye` (then it tears both
//! targets down and exits). In split mode (`ci/guest-run --forward`)
//! fabric-perf runs on this machine and reaches the targets and this agent
//! through forwarded ports; in pair mode (`ci/guest-run --link`) `fabric-bench
//! run --mode pair` runs in a second guest on the same virtual Ethernet,
//! with fio through its Linux host as well, over TCP and RDMA.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use perf::cpu::SystemCpu;

use crate::fabricd::Fabricd;
use crate::kernel;
use crate::runner::{self, KERNEL_NQN, KERNEL_SVC, OURS_SVC};

/// The agent's port in the guest. `perf/bench.sh --split` forwards ports
/// BASE, BASE + 1 and BASE + 2 on this machine to the kernel target's port
/// (4420), ours (4421) and this one.
pub const AGENT_SVC: u16 = 7000;
/// How long a reply may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What `fabric-bench serve` needs.
pub struct ServeConfig {
    /// The fabricd binary.
    pub fabricd: PathBuf,
    /// The guest's address both targets listen on.
    pub ip: String,
    /// Transports to serve (tcp, rdma).
    pub transports: Vec<String>,
    /// More `fabricd target` arguments.
    pub extra_args: Vec<String>,
    /// Size of each backend in GiB.
    pub size_gib: u64,
    /// Where fabricd's log goes.
    pub out: PathBuf,
}

/// Serve both targets until an agent client sends `quit`.
pub fn serve(cfg: &ServeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let (mut k, sizes) = kernel::target_with_backends(KERNEL_NQN, cfg.size_gib)?;
    let mut listen = Vec::new();
    for (port_id, t) in (1..).zip(&cfg.transports) {
        k.add_port(port_id, t, &cfg.ip, KERNEL_SVC)?;
        listen.push(format!("{t}://{}:{OURS_SVC}", cfg.ip));
    }
    let mut args = runner::ours_args(&listen, sizes);
    args.extend(cfg.extra_args.iter().cloned());
    let log = cfg.out.join("fabricd-serve.log");
    let ours = Fabricd::start(&cfg.fabricd, &args, &log, runner::READY_TIMEOUT)?;
    let listener = TcpListener::bind(("0.0.0.0", AGENT_SVC))
        .with_context(|| format!("cannot listen on port {AGENT_SVC}"))?;
    println!(
        "fabric-bench serve: ready ({} on {}: kernel target on {KERNEL_SVC}, ours on {OURS_SVC}, agent on {AGENT_SVC})",
        cfg.transports.join(" and "),
        cfg.ip
    );
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        match answer(stream, &|| ours.cpu()) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => eprintln!("fabric-bench serve: {e:#}"),
        }
    }
    println!("fabric-bench serve: stopping");
    Ok(())
}

/// Answer one request, with `fabricd_cpu` reading our target's CPU time;
/// true when it was `quit`.
fn answer(
    stream: TcpStream,
    fabricd_cpu: &dyn Fn() -> anyhow::Result<Duration>,
) -> anyhow::Result<bool> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(64)).read_line(&mut line)?;
    let (reply, quit) = match line.trim() {
        "cpu" => {
            let s = perf::cpu::system_cpu()?;
            let t = fabricd_cpu()?;
            let vcpu =
                perf::cpu::guest_vcpu_time()?.map_or("-".to_string(), |v| v.as_nanos().to_string());
            let reply = format!(
                "{} {} {} {vcpu}\n",
                s.busy.as_nanos(),
                s.total.as_nanos(),
                t.as_nanos()
            );
            (reply, false)
        }
        "info" => {
            let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
            (format!("{cpus} {}\n", release.trim()), false)
        }
        "quit" => ("bye\n".to_string(), true),
        other => (format!("error: unknown request {other:?}\n"), false),
    };
    (&stream).write_all(reply.as_bytes())?;
    Ok(quit)
}

/// The agent as a client sees it.
#[derive(Clone, Debug)]
pub struct Agent {
    /// `HOST:PORT` of the agent (or of a port forwarded to it).
    pub address: String,
}

impl Agent {
    fn request(&self, what: &str) -> anyhow::Result<String> {
        let stream = TcpStream::connect(&self.address)
            .with_context(|| format!("cannot reach the guest's agent at {}", self.address))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        (&stream).write_all(format!("{what}\n").as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = String::new();
        BufReader::new((&stream).take(256)).read_line(&mut reply)?;
        if reply.is_empty() {
            bail!(
                "the guest's agent at {} closed without a reply",
                self.address
            );
        }
        Ok(reply)
    }

    /// The guest's CPU time so far, and fabricd's.
    pub fn cpu(&self) -> anyhow::Result<GuestCpu> {
        let reply = self.request("cpu")?;
        parse_cpu(&reply).with_context(|| format!("unexpected agent reply {reply:?}"))
    }

    /// The guest's CPU count and kernel release.
    pub fn info(&self) -> anyhow::Result<(usize, String)> {
        let reply = self.request("info")?;
        reply
            .trim()
            .split_once(' ')
            .and_then(|(n, k)| Some((n.parse().ok()?, k.to_string())))
            .with_context(|| format!("unexpected agent reply {reply:?}"))
    }

    /// Wait until the agent answers (the guest boots and sets up first).
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // QEMU's forwarding accepts before the guest listens, then
            // closes: only a reply means ready.
            match self.cpu() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("the guest was not ready within {timeout:?}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Ask the agent to tear the targets down and exit.
    pub fn quit(&self) -> anyhow::Result<()> {
        self.request("quit").map(drop)
    }
}

/// The targets' guest's CPU time so far, as the agent reports it.
#[derive(Clone, Copy, Debug)]
pub struct GuestCpu {
    /// Busy and total time from the guest's `/proc/stat`.
    pub system: SystemCpu,
    /// fabricd's CPU time.
    pub fabricd: Duration,
    /// The guest's vCPU time as the machine running it counts it
    /// ([`perf::cpu::guest_vcpu_time`]), when known.
    pub vcpu: Option<Duration>,
}

fn parse_cpu(reply: &str) -> Option<GuestCpu> {
    let mut f = reply.split_whitespace();
    let mut ns = || f.next()?.parse::<u64>().ok().map(Duration::from_nanos);
    let (busy, total, fabricd) = (ns()?, ns()?, ns()?);
    let vcpu = match f.next()? {
        "-" => None,
        v => Some(Duration::from_nanos(v.parse().ok()?)),
    };
    f.next().is_none().then_some(GuestCpu {
        system: SystemCpu { busy, total },
        fabricd,
        vcpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_replies_parse_and_garbage_does_not() {
        let c = parse_cpu("2000000000 8000000000 1500000000 1900000000\n").unwrap();
        assert_eq!(c.system.busy, Duration::from_secs(2));
        assert_eq!(c.system.total, Duration::from_secs(8));
        assert_eq!(c.fabricd, Duration::from_millis(1500));
        assert_eq!(c.vcpu, Some(Duration::from_millis(1900)));
        assert_eq!(parse_cpu("1 2 3 -\n").unwrap().vcpu, None);
        assert!(parse_cpu("error: unknown request").is_none());
        assert!(parse_cpu("1 2 3").is_none());
        assert!(parse_cpu("1 2 3 x").is_none());
        assert!(parse_cpu("1 2 3 4 5").is_none());
    }

    #[test]
    fn the_agent_answers_cpu_and_quit_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let agent = Agent {
            address: l.local_addr().unwrap().to_string(),
        };
        let server = std::thread::spawn(move || {
            let mut answered = 0;
            for s in l.incoming() {
                answered += 1;
                if answer(s.unwrap(), &|| Ok(Duration::from_millis(1500))).unwrap() {
                    return answered;
                }
            }
            answered
        });
        let c = agent.cpu().unwrap();
        let s = c.system;
        assert!(s.total >= s.busy && s.total > Duration::ZERO);
        assert_eq!(c.fabricd, Duration::from_millis(1500));
        let again = agent.cpu().unwrap().system;
        assert!(again.total >= s.total);
        let (cpus, release) = agent.info().unwrap();
        assert!(cpus > 0 && !release.is_empty());
        let unknown = agent.request("reboot").unwrap();
        assert!(unknown.starts_with("error: unknown request"), "{unknown}");
        agent.quit().unwrap();
        assert_eq!(server.join().unwrap(), 5);
    }
}
