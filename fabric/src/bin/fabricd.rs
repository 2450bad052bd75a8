//! `fabricd`: the node daemon. Each subcommand is one role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fabric::daemon::{logging, target};

/// The storage fabric's node daemon.
#[derive(Parser)]
#[command(name = "fabricd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a standalone NVMe-oF target.
    Target(target::TargetArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One line naming the bad argument; --help has the rest.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("fabricd: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let (level, fut) = match cli.command {
        Command::Target(args) => (args.log_level.clone(), target::run(args)),
    };
    logging::init(&level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
