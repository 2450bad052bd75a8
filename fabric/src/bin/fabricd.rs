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
    #[command(subcommand)]
    command: Command,
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
    let (level, fut): (String, RoleFuture) = match cli.command {
        Command::Target(args) => (args.log_level.clone(), Box::pin(target::run(*args))),
        Command::Meta(args) => (
            "info".into(),
            Box::pin(async move { Ok(meta::run(*args).await?) }),
        ),
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
