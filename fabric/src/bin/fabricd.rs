//! `fabricd`: the node daemon. Each subcommand is one role.

use clap::{Parser, Subcommand};

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
    Target,
    /// Run a replica of the metadata group.
    Meta(Box<meta::cli::MetaArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Target => anyhow::bail!("the target role is not built yet"),
        Command::Meta(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt().with_env_filter(filter).init();
            tokio::runtime::Runtime::new()?.block_on(meta::run(*args))?;
            Ok(())
        }
    }
}
