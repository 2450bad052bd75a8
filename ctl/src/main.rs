//! `fabric-ctl`: the administration CLI of the storage fabric. It talks gRPC
//! to the meta group (any replica; `--endpoint` or `FABRIC_META_ENDPOINT`).

mod args;
mod commands;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;
use meta::tls::{Tls, TLS_FLAGS};
use tonic::Code;

use args::{Cli, Command};

/// The exit code for an error (see [`args::EXIT_CODES`]).
fn exit_code(error: &anyhow::Error) -> u8 {
    let Some(status) = error.downcast_ref::<tonic::Status>() else {
        return 1;
    };
    match status.code() {
        Code::InvalidArgument => 2,
        Code::NotFound => 3,
        Code::AlreadyExists => 4,
        Code::FailedPrecondition | Code::Aborted => 5,
        Code::Unavailable | Code::DeadlineExceeded => 6,
        _ => 1,
    }
}

/// The one-line message for an error.
fn message(error: &anyhow::Error) -> String {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) => status.message().to_string(),
        None => format!("{error:#}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match cmdline::parse::<Cli>("fabric-ctl") {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Command::Completions { shell } = cli.command {
        // Generated into memory: clap_complete panics on a write error (a
        // closed pipe, as with `| head`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "fabric-ctl", &mut script);
        return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fabric-ctl: writing the completions: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let tls = match Tls::load(
        cli.tls_cert.as_deref(),
        cli.tls_key.as_deref(),
        cli.tls_ca.as_deref(),
        TLS_FLAGS,
    ) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("fabric-ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let deadline = Duration::from_secs(cli.timeout);
    let result = match meta::MetaClient::with_tls(&cli.endpoint, deadline, tls.as_ref()) {
        Ok(client) => commands::run(&client, cli.command, cli.json).await,
        Err(status) => Err(status.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabric-ctl: {}", message(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}
