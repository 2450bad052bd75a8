//! `fabric-perf`: an NVMe-oF load generator on the fabric host library.
//!
//! Runs read, write, randread, randwrite or randrw at a block size and queue
//! depth over one or more I/O queues against any NVMe-oF target, over TCP or
//! RDMA (the address's scheme), and reports IOPS, bandwidth, latency
//! percentiles (hdrhistogram) and CPU time per I/O, as text or `--json`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fabric::target::PortAddress;
use perf::duration::{parse_duration, parse_nonzero_duration};
use perf::loadgen::{self, LoadSpec};
use perf::workload::Workload;

/// NVMe-oF load generator (our own host stack, over tcp:// or rdma://).
#[derive(Parser, Debug)]
#[command(
    name = "fabric-perf",
    version,
    about = "fabric-perf: an NVMe-oF load generator (tcp:// or rdma://) reporting IOPS, \
             bandwidth, latency percentiles and CPU time per I/O",
    long_about = None,
    allow_negative_numbers = true
)]
struct Args {
    /// Target address: tcp://ADDR:PORT or rdma://ADDR:PORT.
    #[arg(long, short = 'a', value_name = "tcp://ADDR:PORT")]
    address: PortAddress,
    /// Subsystem NQN [default: the first NVM subsystem of the discovery log at ADDRESS].
    #[arg(long, short = 'n', value_name = "NQN", value_parser = nqn_arg)]
    nqn: Option<String>,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Access pattern.
    #[arg(long, short = 'w', value_enum, default_value_t = Workload::Randread)]
    workload: Workload,
    /// Reads in percent of a randrw workload [default: 50].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    rwmixread: Option<u8>,
    /// Bytes per I/O (K, M suffixes).
    #[arg(long, short = 'b', default_value = "4K", allow_hyphen_values = true, value_parser = parse_size_arg)]
    block_size: u64,
    /// Outstanding I/Os per queue (1 to 1023).
    #[arg(long, short = 'q', default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=loadgen::MAX_IODEPTH as i64))]
    iodepth: u32,
    /// I/O queues, one connection each; each keeps IODEPTH I/Os in flight
    /// (the target may grant fewer).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    queues: u16,
    /// Measured time (10s, 500ms, 2m) [default: 10s, or unlimited with
    /// --ios]; with --ios too, whichever comes first ends the run.
    #[arg(long, short = 't', allow_hyphen_values = true, value_parser = parse_nonzero_duration)]
    time: Option<Duration>,
    /// Stop after this many measured I/Os (all queues together).
    #[arg(long, value_name = "N")]
    ios: Option<std::num::NonZeroU64>,
    /// Time run before measuring starts.
    #[arg(long, default_value = "0s", allow_hyphen_values = true, value_parser = parse_duration)]
    ramp: Duration,
    /// Write a pattern, check every read of a written block, and read every
    /// written block back at the end; mismatches fail the run (read-only
    /// workloads write the region first).
    #[arg(long)]
    verify: bool,
    /// Start of the region used, in bytes (K, M, G suffixes).
    #[arg(long, default_value = "0", allow_hyphen_values = true, value_parser = parse_size_arg)]
    offset: u64,
    /// Length of the region used [default: to the end of the namespace].
    #[arg(long, allow_hyphen_values = true, value_parser = parse_size_arg)]
    size: Option<u64>,
    /// Host NQN [default: a random UUID NQN].
    #[arg(long, value_name = "NQN", value_parser = nqn_arg)]
    hostnqn: Option<String>,
    /// NVMe/TCP header and data digests (CRC32C).
    #[arg(long)]
    digests: bool,
    /// Seed of the random offsets and of the verify pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// tcp:// only: microseconds (up to 10000) a queue waiting for
    /// responses keeps reading without sleeping each time it finds nothing
    /// (0: sleep at once). RDMA completions are always polled, by each
    /// device, for 300 µs after the last one.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    poll_us: u64,
    /// Runtime threads, 1 to 256 (1: everything on one thread, the cheapest
    /// per I/O).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No live progress line even on a terminal.
    #[arg(long)]
    quiet: bool,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    raid::parse_size(s).map_err(|e| e.to_string())
}

impl Args {
    fn spec(&self) -> LoadSpec {
        LoadSpec {
            address: self.address.clone(),
            nqn: self.nqn.clone(),
            nsid: self.nsid,
            workload: self.workload,
            read_mix: self.rwmixread.unwrap_or(50),
            io_size: self.block_size,
            iodepth: self.iodepth,
            queues: self.queues,
            time: self
                .time
                .or((self.ios.is_none()).then_some(Duration::from_secs(10))),
            ios: self.ios.map(std::num::NonZeroU64::get),
            ramp: self.ramp,
            verify: self.verify,
            offset: self.offset,
            size: self.size,
            hostnqn: self.hostnqn.clone(),
            digests: self.digests,
            seed: self.seed,
            poll: Duration::from_micros(self.poll_us),
        }
    }
}

/// An NQN as a Connect command can carry it: 1 to 223 bytes without NUL.
/// Any name passes beyond that (the kernel target's subsystems may be
/// named anything), so a target's own rules decide the rest.
fn nqn_arg(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > fabric::wire::fabrics::MAX_NQN_LEN || s.contains('\0') {
        return Err(format!(
            "an NQN is 1 to {} bytes",
            fabric::wire::fabrics::MAX_NQN_LEN
        ));
    }
    Ok(s.to_string())
}

/// Exit status of a run stopped with Ctrl-C (128 + SIGINT, as a shell's):
/// its result is printed, but it is not the run asked for.
const INTERRUPTED: u8 = 130;

/// The first Ctrl-C ends the run early (its result is still printed); a
/// second one quits at once. `progress`: a live line is on the terminal.
async fn stop_on_interrupt(stop: Arc<AtomicBool>, progress: bool) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "{}fabric-perf: interrupted: finishing the I/Os in flight (Ctrl-C again to quit)",
        if progress { "\n" } else { "" }
    );
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(i32::from(INTERRUPTED));
    }
}

fn main() -> ExitCode {
    let args = match cmdline::parse::<Args>("fabric-perf") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fabric-perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.rwmixread.is_some() && args.workload != Workload::Randrw {
        eprintln!(
            "fabric-perf: --rwmixread applies to -w randrw only, not {}",
            args.workload.name()
        );
        return ExitCode::from(2);
    }
    let progress = !args.json && !args.quiet && std::io::stderr().is_terminal();
    let spec = args.spec();
    if let Err(e) = spec.validate() {
        eprintln!("fabric-perf: {e}");
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = runtime.block_on(async {
        let interrupt = tokio::spawn(stop_on_interrupt(stop.clone(), progress));
        let outcome = loadgen::run_stoppable(&spec, progress, stop).await;
        interrupt.abort();
        outcome
    });
    match outcome {
        Ok(report) => {
            let text = if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => j + "\n",
                    Err(e) => {
                        eprintln!("fabric-perf: cannot encode the result: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                report.text()
            };
            // Not print!: a closed or full stdout is an error here, not a panic.
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                eprintln!("fabric-perf: cannot write the result to stdout: {e}");
                return ExitCode::FAILURE;
            }
            let mismatches = report.verify.as_ref().map_or(0, |v| v.mismatches);
            let failed = report.errors > 0 || mismatches > 0 || report.failure.is_some();
            if let Some(failure) = &report.failure {
                eprintln!("fabric-perf: {failure}");
            }
            if failed {
                eprintln!(
                    "fabric-perf: {} I/O errors, {mismatches} verify mismatches",
                    report.errors
                );
            }
            match (report.interrupted, failed) {
                (true, _) => ExitCode::from(INTERRUPTED),
                (false, true) => ExitCode::FAILURE,
                (false, false) => ExitCode::SUCCESS,
            }
        }
        Err(e @ loadgen::PerfError::Interrupted) => {
            eprintln!("fabric-perf: {e}");
            ExitCode::from(INTERRUPTED)
        }
        Err(e) => {
            eprintln!("fabric-perf: {e}");
            ExitCode::FAILURE
        }
    }
}
