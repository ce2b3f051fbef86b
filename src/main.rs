//! The `print-abort-worker` command line: parses arguments and starts the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use print_abort_worker::{Settings, telemetry};

/// Turns RabbitMQ abort commands into Microsoft Graph print-job aborts.
#[derive(Debug, Parser)]
#[command(name = "print-abort-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker daemon until SIGTERM or SIGINT.
    Run {
        /// A TOML file layered over config/default.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Exit code for usage and configuration errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let settings = match Settings::load(config.as_deref()) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("print-abort-worker: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init(&settings.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("print-abort-worker: the async runtime could not start: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(print_abort_worker::run(settings, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("print-abort-worker: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
