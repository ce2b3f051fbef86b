//! The command line of `print-abort-worker`: its subcommands and flags (clap), and how
//! each one runs — configuration errors exit with code 2, runtime failures with code 1.
//! `main.rs` parses the arguments with [`Cli`] and hands them to [`run`].

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::{EXIT_CONFIG, ToolError, check, dlq, enqueue, load_worker_settings};
use crate::auth::error_chain;
use crate::config::{ConfigError, LogSettings};
use crate::{Settings, telemetry};

/// Turns RabbitMQ abort commands into Microsoft Graph print-job aborts.
#[derive(Debug, Parser)]
#[command(name = "print-abort-worker", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker daemon until SIGTERM or SIGINT.
    Run {
        /// A TOML file layered over config/default.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the whole pipeline against a built-in Graph simulator and print the outcomes.
    Demo {
        /// A TOML file layered over config/default.toml (only the broker URL is used).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Publish an abort command (or a JSON Lines file of them) with a publisher confirm.
    Enqueue(EnqueueArgs),
    /// Check configuration, broker, topology, token and permission; stop at the first problem.
    Check {
        /// A TOML file layered over config/default.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Inspect and replay dead-lettered commands.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// The printer id.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    printer: Option<String>,
    /// The print job id.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    job: Option<String>,
    /// Why the job is aborted; sent to Graph.
    #[arg(long, value_name = "TEXT", conflicts_with = "file")]
    reason: Option<String>,
    /// The command id (default: a new UUID).
    #[arg(long, value_name = "ID", conflicts_with = "file")]
    command_id: Option<String>,
    /// The tenant the job belongs to, for multi-tenant workers.
    #[arg(long, value_name = "TENANT", conflicts_with = "file")]
    tenant: Option<String>,
    /// Make the command expire after this long, e.g. "10m".
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "file")]
    expires_in: Option<Duration>,
    /// Wait for the outcome event, print it, and exit non-zero unless it succeeded.
    #[arg(long, conflicts_with = "file")]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Send every line of a JSON Lines file of commands; bad lines are reported, not sent.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// A TOML file layered over config/default.toml (only the broker settings are used).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Carries out one command of the command line; the exit code says how it went.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Run { config } => execute(
            load_worker_settings(config.as_deref()),
            None,
            |settings| async {
                crate::run(settings, super::shutdown_signal()).await?;
                Ok(ExitCode::SUCCESS)
            },
        ),
        Command::Demo { config } => {
            // The table is the output; the worker's warnings about the bad samples are not.
            execute(
                Settings::load_for_broker(config.as_deref()),
                Some(quiet("error")),
                |settings| async {
                    let ok = super::demo::run(settings).await?;
                    Ok(if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                },
            )
        }
        Command::Enqueue(args) => run_enqueue(args),
        Command::Check { config } => match check::configuration(config.as_deref()) {
            // The checklist is the output; the worker's own warnings are not.
            Ok(settings) => execute(Ok(settings), Some(quiet("error")), |settings| async move {
                Ok(check::verify(&settings).await)
            }),
            Err(code) => code,
        },
        Command::Dlq { command } => execute(
            Settings::load_for_broker(command.config()),
            Some(quiet("warn")),
            |settings| dlq::run(settings, command),
        ),
    }
}

/// glibc gives threads that allocate at the same time arenas of their own, up to eight per
/// CPU, and each keeps its own free memory; the worker's commands move between runtime
/// threads, so their memory ends up spread over several arenas. One arena (every thread
/// still has its lock-free cache for small blocks) took the peak RSS of a 100 000-command
/// soak at concurrency 64 from 20.2 to 19.4 MiB with no change in CPU time
/// (docs/BENCHMARKS.md). `MALLOC_ARENA_MAX` in the environment still decides when set.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator and is called before any other thread
        // exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Logging for the tools whose output is their own printing.
fn quiet(level: &str) -> LogSettings {
    LogSettings {
        level: level.into(),
        ..LogSettings::default()
    }
}

fn run_enqueue(args: EnqueueArgs) -> ExitCode {
    let quiet = quiet("warn");
    let settings = Settings::load_for_broker(args.config.as_deref());
    if let Some(file) = args.file {
        return execute(settings, Some(quiet), |settings| async move {
            let summary = enqueue::send_file(&settings, &file, true).await?;
            eprintln!(
                "sent {} commands; {} lines not sent",
                summary.sent,
                summary.skipped.len()
            );
            Ok(if summary.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        });
    }
    let command = enqueue::OneCommand {
        printer: args.printer.unwrap_or_default(),
        job: args.job.unwrap_or_default(),
        reason: args.reason,
        command_id: args.command_id,
        tenant: args.tenant,
        expires_in: args.expires_in,
    };
    if let Err(error) = command.body() {
        eprintln!("print-abort-worker: {}", error_chain(&error));
        return ExitCode::from(EXIT_CONFIG);
    }
    let wait = args.wait.then_some(args.timeout);
    execute(settings, Some(quiet), |settings| async move {
        let succeeded = enqueue::send_one(&settings, &command, wait).await?;
        Ok(if succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// Reports a configuration error with exit code 2, else sets up logging and a runtime and
/// runs `task`; a task error is a runtime failure with exit code 1.
fn execute<F, Fut>(
    settings: Result<Settings, ConfigError>,
    log: Option<LogSettings>,
    task: F,
) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = Result<ExitCode, ToolError>> + Send + 'static,
{
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("print-abort-worker: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(log.as_ref().unwrap_or(&settings.log));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("print-abort-worker: the async runtime could not start: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The task runs on a runtime worker rather than on this thread inside block_on: the
    // tasks it spawns then start in that worker's local queue, without a cross-thread wake
    // per command.
    let outcome = runtime.block_on(async move {
        tokio::spawn(task(settings))
            .await
            .unwrap_or_else(|error| Err(ToolError::Task("main", error)))
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            let error = error_chain(&error);
            tracing::error!("{error}");
            eprintln!("print-abort-worker: {error}");
            ExitCode::FAILURE
        }
    }
}
