//! `fabric-bench`: the side-by-side benchmark of our NVMe-oF target against
//! the Linux kernel target (nvmet).
//!
//! `fabric-bench run` measures the matrix (transports x backends x
//! workloads x clients, both targets alternating, several repetitions) in
//! the guest where the kernel target exists, or natively (ours only, TCP
//! loopback), or with both targets alone in the guest and fabric-perf on
//! this machine (split), or with both targets alone in one guest and both
//! clients in a second one (pair); `fabric-bench serve` is the targets'
//! side of the last two.
//! `fabric-bench report` turns the samples into the table (with
//! medians and ratios ours/kernel), JSON, a PNG chart, and an entry in
//! perf/RESULTS.md. `perf/bench.sh` runs both, in the guest, in one command.

mod agent;
mod chart;
mod clients;
mod fabricd;
mod kernel;
mod linux_host;
mod matrix;
mod results;
mod runner;
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use matrix::{Backend, Client, Mode, SampleSet, CASES};

/// Side-by-side benchmark: fabricd target against the Linux kernel target.
#[derive(Parser, Debug)]
#[command(
    name = "fabric-bench",
    version,
    about = "fabric-bench: the side-by-side benchmark of fabricd against the Linux kernel target \
             (run, report, and serve for the split and pair modes)",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure the matrix and write DIR/samples.json (in the guest for
    /// --mode guest: run it through ci/guest-run, as perf/bench.sh does).
    Run(RunArgs),
    /// Summarize DIR/samples.json: table, JSON, PNG chart, RESULTS.md entry.
    Report(ReportArgs),
    /// The targets' guest in split and pair modes: serve both targets and
    /// answer CPU readings until told to quit (run through `ci/guest-run
    /// --forward` or `--link`, as `perf/bench.sh --split` and `--pair` do).
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory for fabricd's log.
    #[arg(long, default_value = "perf/out/serve")]
    out: PathBuf,
    /// Size of each backend device in GiB.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    size_gib: u64,
    /// The fabricd binary [default: next to this program].
    #[arg(long)]
    fabricd: Option<PathBuf>,
    /// The guest's address both targets listen on (10.0.2.15 is its
    /// address on QEMU's user-mode network).
    #[arg(long, default_value = "10.0.2.15")]
    ip: std::net::Ipv4Addr,
    /// Transports to serve, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = ["tcp", "rdma"], default_values_t = ["tcp".to_string()])]
    transports: Vec<String>,
    /// More `fabricd target` options, as one whitespace-separated string
    /// (for A/B runs, e.g. "--rdma-poll-us 0").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    fabricd_args: String,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// guest: ours and the kernel target, fio and fabric-perf (needs the
    /// guest's kernel modules); native: ours and fabric-perf over TCP on
    /// this machine's loopback; split: both targets in a guest running
    /// `fabric-bench serve`, fabric-perf here over TCP; pair: both targets
    /// in another guest running `fabric-bench serve` (--target-host), fio
    /// and fabric-perf here, over TCP and RDMA.
    #[arg(long, value_enum, default_value_t = Mode::Guest)]
    mode: Mode,
    /// Directory for samples and logs.
    #[arg(long, default_value = "perf/out/bench")]
    out: PathBuf,
    /// The CI smoke run: one repetition of 2 seconds (unless --reps or
    /// --seconds say otherwise).
    #[arg(long)]
    short: bool,
    /// Repetitions per target [default: 3, or 1 with --short].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: Option<u32>,
    /// Seconds per sample [default: 8, or 2 with --short].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: Option<u64>,
    /// Transports, comma-separated [default: tcp,rdma in the guest, tcp natively].
    #[arg(long, value_delimiter = ',', value_parser = ["tcp", "rdma"])]
    transports: Vec<String>,
    /// Backends, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Backend::Null, Backend::Mem])]
    backends: Vec<Backend>,
    /// Clients, comma-separated [default: fio,fabric-perf in the guest, fabric-perf natively].
    #[arg(long, value_enum, value_delimiter = ',')]
    clients: Vec<Client>,
    /// Size of each backend device in GiB.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    size_gib: u64,
    /// The fabricd binary [default: next to this program].
    #[arg(long)]
    fabricd: Option<PathBuf>,
    /// The fabric-perf binary [default: next to this program].
    #[arg(long)]
    fabric_perf: Option<PathBuf>,
    /// Split mode: this machine's ports PORT, PORT+1 and PORT+2 are
    /// forwarded to the guest's kernel target, ours and its agent.
    #[arg(long, default_value_t = 14420, value_parser = clap::value_parser!(u16).range(1..=65533))]
    guest_port: u16,
    /// Pair mode: the targets' guest [default: $PEER_IP, which `ci/guest-run
    /// --link` sets].
    #[arg(long)]
    target_host: Option<std::net::Ipv4Addr>,
    /// Check the options and exit without measuring (perf/bench.sh does
    /// this before it starts a guest).
    #[arg(long)]
    check_args: bool,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The directory `fabric-bench run` wrote.
    dir: PathBuf,
    /// Fail (exit 1) unless every row has numbers for each side (sides whose
    /// transport is unavailable in this build excepted).
    #[arg(long)]
    check: bool,
    /// Append the table to this Markdown file (perf/RESULTS.md).
    #[arg(long)]
    results: Option<PathBuf>,
    /// The command line to record with the results.
    #[arg(long, default_value = "fabric-bench")]
    command: String,
    /// The commit measured [default: `git describe --always --dirty` here].
    #[arg(long)]
    commit: Option<String>,
    /// Skip the PNG chart.
    #[arg(long)]
    no_chart: bool,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Where the targets are in split and pair modes.
fn remote(a: &RunArgs) -> anyhow::Result<Option<runner::Remote>> {
    Ok(match a.mode {
        Mode::Guest | Mode::Native => None,
        Mode::Split => Some(runner::Remote {
            host: "127.0.0.1".into(),
            kernel_port: a.guest_port,
            ours_port: a.guest_port + 1,
            agent_port: a.guest_port + 2,
        }),
        Mode::Pair => {
            let host = match a.target_host {
                Some(h) => h.to_string(),
                None => std::env::var("PEER_IP").map_err(|_| {
                    anyhow::anyhow!("--target-host: not given and no PEER_IP (run in a guest started with ci/guest-run --link)")
                })?,
            };
            Some(runner::Remote {
                host,
                kernel_port: runner::KERNEL_SVC,
                ours_port: runner::OURS_SVC,
                agent_port: agent::AGENT_SVC,
            })
        }
    })
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    // Native and split runs have no Linux host here, and split mode's
    // guest is reached through forwarded TCP ports only.
    let native = matches!(a.mode, Mode::Native | Mode::Split);
    // The pair mode's target is known in the clients' guest only.
    let remote = match (a.check_args, a.mode) {
        (true, Mode::Pair) => None,
        _ => remote(&a)?,
    };
    let check_args = a.check_args;
    let cfg = runner::RunConfig {
        mode: a.mode,
        out: a.out.clone(),
        transports: match (a.transports.is_empty(), native) {
            (false, _) => a.transports,
            (true, true) => vec!["tcp".into()],
            (true, false) => vec!["tcp".into(), "rdma".into()],
        },
        backends: a.backends,
        clients: match (a.clients.is_empty(), native) {
            (false, _) => a.clients,
            (true, true) => vec![Client::FabricPerf],
            (true, false) => vec![Client::Fio, Client::FabricPerf],
        },
        cases: CASES.to_vec(),
        reps: a.reps.unwrap_or(if a.short { 1 } else { 3 }),
        seconds: a.seconds.unwrap_or(if a.short { 2 } else { 8 }),
        size_gib: a.size_gib,
        fabricd: a.fabricd.unwrap_or_else(|| sibling("fabricd")),
        fabric_perf: a.fabric_perf.unwrap_or_else(|| sibling("fabric-perf")),
        remote,
    };
    if native && cfg.clients.contains(&Client::Fio) {
        anyhow::bail!("--clients fio needs the Linux host: use --mode guest");
    }
    if cfg.mode == Mode::Split && cfg.transports.iter().any(|t| t != "tcp") {
        anyhow::bail!("--transports: split mode reaches the guest over TCP only");
    }
    let perf_needed = cfg.clients.contains(&Client::FabricPerf);
    for (flag, path, needed) in [
        ("--fabricd", &cfg.fabricd, cfg.remote.is_none()),
        ("--fabric-perf", &cfg.fabric_perf, perf_needed),
    ] {
        if needed && !path.is_file() {
            anyhow::bail!("{flag}: no program at {}", path.display());
        }
    }
    if check_args {
        return Ok(());
    }
    let set = runner::run(&cfg)?;
    emit(&format!(
        "\n{}samples: {}\n",
        summary::markdown(&summary::summarize(&set)),
        cfg.out.join("samples.json").display()
    ))
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let cfg = agent::ServeConfig {
        fabricd: a.fabricd.unwrap_or_else(|| sibling("fabricd")),
        size_gib: a.size_gib,
        out: a.out,
        ip: a.ip.to_string(),
        transports: a.transports,
        extra_args: a
            .fabricd_args
            .split_whitespace()
            .map(String::from)
            .collect(),
    };
    if !cfg.fabricd.is_file() {
        anyhow::bail!("--fabricd: no program at {}", cfg.fabricd.display());
    }
    agent::serve(&cfg)
}

fn load(dir: &Path) -> anyhow::Result<SampleSet> {
    let path = dir.join("samples.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a sample set", path.display()))
}

fn report(a: ReportArgs) -> anyhow::Result<bool> {
    let set = load(&a.dir)?;
    let sum = summary::summarize(&set);
    let table = summary::markdown(&sum);
    std::fs::write(
        a.dir.join("summary.json"),
        serde_json::to_string_pretty(&sum)?,
    )?;
    std::fs::write(a.dir.join("table.md"), &table)?;
    let date = results::now();
    let title = match set.mode {
        Mode::Guest => format!("ours / kernel target, QEMU TCG guest, {date}"),
        Mode::Native => format!("fabricd + fabric-perf, TCP loopback, {date}"),
        Mode::Split => format!("ours / kernel target alone in a QEMU TCG guest, {date}"),
        Mode::Pair => {
            format!("ours / kernel target alone in a QEMU TCG guest, clients in another, {date}")
        }
    };
    emit(&table)?;
    // The chart is drawn after the table is out, and failing to draw it
    // (gnuplot missing, or no row with numbers) costs only the chart.
    let png = a.dir.join("chart.png");
    // Not a chart of an earlier report into the same directory.
    let _ = std::fs::remove_file(&png);
    let chart = if a.no_chart {
        None
    } else if !summary::has_figures(&sum) {
        eprintln!("fabric-bench: no chart: no row has numbers");
        None
    } else {
        match chart::draw(&sum, &title, &png) {
            Ok(()) => Some(png),
            Err(e) => {
                eprintln!("fabric-bench: no chart: {e:#}");
                None
            }
        }
    };
    if let Some(results_file) = &a.results {
        let where_ = match set.mode {
            Mode::Guest => format!(
                "guest: QEMU TCG, {} vCPUs, Linux {} (kernel target nvmet, Linux host nvme-tcp / nvme-rdma on soft-RoCE)",
                set.cpus, set.kernel
            ),
            Mode::Native => "native: TCP loopback on the host, no guest".to_string(),
            Mode::Split => format!(
                "split: both targets alone in a QEMU TCG guest ({} vCPUs, Linux {}), fabric-perf on the host over TCP (QEMU user-mode network, forwarded ports); CPU is the guest's, the targets' work only",
                set.cpus, set.kernel
            ),
            Mode::Pair => format!(
                "pair: both targets alone in a QEMU TCG guest ({} vCPUs, Linux {}), fio (Linux host nvme-tcp / nvme-rdma) and fabric-perf in a second guest, linked by QEMU's stream network over a Unix socket (soft-RoCE on both); CPU is the targets' guest's, the targets' work only",
                set.cpus, set.kernel
            ),
        };
        let mut entry = format!(
            "### {date}: {} mode, {} repetitions x {} s, medians\n\n\
             * command: `{}`\n* commit: {}\n* machine: {}\n* {where_}\n\n{table}",
            set.mode.name(),
            set.reps,
            set.seconds,
            a.command,
            a.commit.clone().unwrap_or_else(results::commit),
            results::machine(),
        );
        if let (Some(png), Some(dir)) = (&chart, results_file.parent()) {
            let name = format!(
                "results/{}-{}.png",
                set.mode.name(),
                date.replace([' ', ':'], "-").trim_end_matches("-UTC")
            );
            let dest = dir.join(&name);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::copy(png, &dest)
                .with_context(|| format!("cannot copy the chart to {}", dest.display()))?;
            entry += &format!("\n![chart]({name})\n");
        }
        results::append(results_file, &entry)?;
        emit(&format!("appended to {}\n", results_file.display()))?;
    }
    if a.check {
        let missing = summary::missing(&sum);
        if !missing.is_empty() {
            for m in &missing {
                eprintln!("fabric-bench: no numbers: {m}");
            }
            return Ok(false);
        }
        let unavailable = summary::unavailable_rows(&sum);
        emit(&format!(
            "fabric-bench: every row has numbers ({} rows{})\n",
            sum.rows.len() - unavailable,
            if unavailable > 0 {
                format!("; {unavailable} more for a transport unavailable here")
            } else {
                String::new()
            }
        ))?;
    }
    Ok(true)
}

/// Writes to stdout: a closed or full stdout is an error, not a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn main() -> ExitCode {
    let cli = match cmdline::parse::<Cli>("fabric-bench") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Run(a) => run(a).map(|()| true),
        Command::Report(a) => report(a),
        Command::Serve(a) => serve(a).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fabric-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
