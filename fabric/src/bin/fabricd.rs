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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Target => anyhow::bail!("the target role is not built yet"),
    }
}
