//! `fabricd`: the node daemon. Each subcommand is one role.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fabric::daemon::{logging, target};

/// The storage fabric's node daemon.
#[derive(Parser)]
#[command(name = "fabricd", version, about)]
struct Cli {
    /// Worker threads serving every role's I/O [default: half the CPUs,
    /// at least 1]. More threads spread connections over more cores but
    /// add wake-ups between them: a queue and the RDMA device's completion
    /// poller on different threads cost a thread switch per completion.
    /// With 1, everything runs on the main thread (tokio's current-thread
    /// scheduler). At most 256.
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
    /// Log filter when RUST_LOG is unset: a level (trace, debug, info,
    /// warn, error, off) or TARGET=LEVEL pairs, comma-separated.
    #[arg(long, global = true, default_value = "info", value_name = "FILTER",
          value_parser = logging::parse_filter)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// Half the CPUs, at least one: leaves room for the backends' and the
/// kernel's work (network stack, RDMA, io_uring), as SPDK's default of one
/// reactor core does on small machines.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

#[derive(Subcommand)]
enum Command {
    /// Serve a standalone NVMe-oF target.
    Target(Box<target::TargetArgs>),
    /// Run a replica of the metadata group.
    Meta(Box<meta::cli::MetaArgs>),
}

type RoleFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

fn main() -> ExitCode {
    let cli = match cmdline::parse::<Cli>("fabricd") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let fut: RoleFuture = match cli.command {
        Command::Target(args) => Box::pin(target::run(*args)),
        Command::Meta(args) => Box::pin(async move { Ok(meta::run(*args).await?) }),
    };
    logging::init(&cli.log_level);
    let workers = cli
        .worker_threads
        .map_or_else(default_worker_threads, usize::from);
    // One worker: tokio's current-thread scheduler. It runs the same tasks
    // on one thread without the multi-thread scheduler's bookkeeping on
    // every wake-up (idle-worker tracking, poll-time statistics); see
    // perf/RESULTS.md, 2026-11-27.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fabricd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabricd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
