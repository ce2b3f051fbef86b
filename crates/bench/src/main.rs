//! The `bench` command line: parses flags and runs the `bench` library; see
//! `docs/BENCHMARKS.md`. Its hidden `floor` subcommand is the floor process the benchmark
//! starts for itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bench::{Options, floor::FloorConfig, instructions, subject::Binaries, throttled};
use clap::{Args, Parser, Subcommand, ValueEnum};
use print_abort_worker::config::QueueType;
use tokio::io::AsyncReadExt;

/// Measures print-abort-worker against a bare lapin loop (the floor) on the local broker
/// and the Graph simulator, or under a per-tenant Graph limit (`--scenario throttled`), and
/// prints a markdown report.
#[derive(Debug, Parser)]
#[command(name = "bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    sweep: SweepArgs,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// The floor loop, started by the benchmark itself.
    #[command(hide = true)]
    Floor(FloorArgs),
}

#[derive(Debug, Args)]
struct SweepArgs {
    /// What to measure: `sweep`, the worker against the floor (drain, latency, CPU and
    /// memory); or `throttled`, Graph limiting the worker's tenant while more work is
    /// offered than the limit lets through (goodput, 429s, failures, pauses).
    /// Or `instructions`: the instructions one command costs the worker and the floor,
    /// counted by valgrind's callgrind over two drains (see --instruction-drains).
    #[arg(long, value_enum, default_value_t = Scenario::Sweep)]
    scenario: Scenario,
    /// Instructions scenario: the two batch sizes drained under callgrind; the difference
    /// of the totals over the difference of the sizes is the cost of one command.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,3000",
        value_name = "N,N"
    )]
    instruction_drains: Vec<usize>,
    /// Instructions scenario: where callgrind's output files are kept (for
    /// callgrind_annotate).
    #[arg(long, default_value = "target/callgrind")]
    callgrind_dir: PathBuf,
    /// Commands pre-loaded for each measurement.
    #[arg(long, default_value_t = 5000)]
    commands: usize,
    /// Graph latencies to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0ms,50ms", value_parser = humantime::parse_duration)]
    latencies: Vec<Duration>,
    /// worker.concurrency values to sweep, comma-separated (prefetch is twice each); the
    /// throttled scenario runs each at each limit.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    concurrency: Vec<usize>,
    /// Throttled scenario: the tenant's Graph limits, requests per second, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "20,50,200",
        value_name = "RPS"
    )]
    throttle_limits: Vec<f64>,
    /// Throttled scenario: how long each cell offers load, from the worker's first outcome;
    /// the first sixth is warm-up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    throttle_duration: Duration,
    /// Throttled scenario: also measure this print-abort-worker build in every cell, just
    /// before the --worker one, and report the two side by side (before and after a change).
    #[arg(long, value_name = "PATH")]
    baseline_worker: Option<PathBuf>,
    /// Also drain this many commands at concurrency 64, sampling the worker's memory
    /// every second (100000 shows whether it stays flat).
    #[arg(long, value_name = "N")]
    memory_soak: Option<usize>,
    /// How long the paced (latency) phase of each measurement publishes.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    latency_phase: Duration,
    /// Write the results into DOCS_DIR/BENCHMARKS.md (the scenario's own block of it) and
    /// the plots next to it.
    #[arg(long)]
    write_docs: bool,
    #[arg(long, default_value = "docs")]
    docs_dir: PathBuf,
    /// The broker.
    #[arg(
        long,
        env = "BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_url: String,
    /// The command queue's type, as `amqp.queue_type`.
    #[arg(long, value_enum, default_value_t = QueueKind::Quorum)]
    queue_type: QueueKind,
    /// Run the worker under this command, for profiling (for example
    /// "valgrind --tool=dhat --dhat-out-file=/tmp/dhat.out"); split on spaces. CPU and
    /// memory figures are then the wrapper's.
    #[arg(long, value_name = "COMMAND")]
    worker_wrapper: Option<String>,
    /// Measure this print-abort-worker binary instead of the one beside the bench, to
    /// compare two builds (say, before and after a change) with the same floor.
    #[arg(long, value_name = "PATH")]
    worker: Option<PathBuf>,
    /// The worker's log.level (a tracing filter).
    #[arg(long, default_value = bench::subject::DEFAULT_LOG_LEVEL)]
    worker_log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Sweep,
    Throttled,
    Instructions,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum QueueKind {
    Quorum,
    Classic,
}

#[derive(Debug, Args)]
struct FloorArgs {
    #[arg(long, env = bench::floor::URL_VARIABLE, hide_env_values = true)]
    amqp_url: String,
    #[arg(long)]
    queue: String,
    #[arg(long)]
    exchange: String,
    #[arg(long)]
    concurrency: usize,
    #[arg(long)]
    prefetch: u16,
}

// The same multi-threaded runtime as the worker's, so the floor runs on what the worker does.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Floor(args)) => run_floor(args).await,
        None => run_sweep(cli.sweep).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_sweep(mut args: SweepArgs) -> anyhow::Result<()> {
    let mut binaries = Binaries::beside_current_exe()?;
    if let Some(wrapper) = &args.worker_wrapper {
        binaries.worker_wrapper = wrapper.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(worker) = args.worker.take() {
        if !worker.is_file() {
            anyhow::bail!("--worker {} is not a file", worker.display());
        }
        binaries.worker = worker;
    }
    binaries.worker_log_level = args.worker_log_level.clone();
    let queue_type = match args.queue_type {
        QueueKind::Quorum => QueueType::Quorum,
        QueueKind::Classic => QueueType::Classic,
    };
    if args.scenario == Scenario::Throttled {
        return run_throttled(args, binaries, queue_type).await;
    }
    if args.scenario == Scenario::Instructions {
        return run_instructions(args, binaries, queue_type).await;
    }
    if args.baseline_worker.is_some() {
        anyhow::bail!(
            "--baseline-worker is for --scenario throttled; the sweep compares builds by running it once with each --worker"
        );
    }
    let options = Options {
        commands: args.commands,
        latencies: args.latencies,
        concurrency: args.concurrency,
        memory_soak: args.memory_soak,
        latency_phase: args.latency_phase,
        amqp_url: args.amqp_url,
        queue_type,
        binaries,
        command_line: command_line(),
    };
    let report = bench::run(&options).await?;
    let docs = args.write_docs.then_some(args.docs_dir.as_path());
    print_report(&report.markdown(), docs, "the sweep", |dir| {
        report.write_docs(dir)
    })
}

async fn run_throttled(
    args: SweepArgs,
    binaries: Binaries,
    queue_type: QueueType,
) -> anyhow::Result<()> {
    if args.memory_soak.is_some() {
        anyhow::bail!("--memory-soak is part of the sweep, not of --scenario throttled");
    }
    let baseline = match args.baseline_worker {
        Some(worker) if !worker.is_file() => {
            anyhow::bail!("--baseline-worker {} is not a file", worker.display());
        }
        // The same wrapper and log level, so only the build differs.
        Some(worker) => Some(Binaries {
            worker,
            ..binaries.clone()
        }),
        None => None,
    };
    let options = throttled::Options {
        limits: args.throttle_limits,
        concurrency: args.concurrency,
        duration: args.throttle_duration,
        amqp_url: args.amqp_url,
        queue_type,
        binaries,
        baseline,
        command_line: command_line(),
    };
    let report = throttled::run(&options).await?;
    let docs = args.write_docs.then_some(args.docs_dir.as_path());
    print_report(&report.markdown(), docs, "the throttled section", |dir| {
        report.write_docs(dir)
    })
}

async fn run_instructions(
    args: SweepArgs,
    binaries: Binaries,
    queue_type: QueueType,
) -> anyhow::Result<()> {
    let [small, large] = args.instruction_drains[..] else {
        anyhow::bail!("--instruction-drains takes two sizes, such as 1000,3000");
    };
    let [concurrency] = args.concurrency[..] else {
        anyhow::bail!("--scenario instructions counts at one --concurrency, such as 16");
    };
    let options = instructions::Options {
        drains: [small, large],
        concurrency,
        amqp_url: args.amqp_url,
        queue_type,
        binaries,
        out_dir: args.callgrind_dir,
        command_line: command_line(),
    };
    let report = instructions::run(&options).await?;
    let docs = args.write_docs.then_some(args.docs_dir.as_path());
    print_report(
        &report.markdown(),
        docs,
        "the instructions section",
        |dir| report.write_docs(dir),
    )
}

/// Prints a scenario's report and, with `--write-docs` (`docs` is then its folder), writes
/// `section` of BENCHMARKS.md with `write_docs`.
fn print_report(
    markdown: &str,
    docs: Option<&Path>,
    section: &str,
    write_docs: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    println!("{markdown}");
    if let Some(dir) = docs {
        write_docs(dir)?;
        eprintln!(
            "bench: wrote {section} of {}",
            dir.join("BENCHMARKS.md").display()
        );
    }
    Ok(())
}

/// How to repeat this run.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut line = "cargo run --release -p bench --".to_owned();
    for arg in args {
        line.push(' ');
        let arg = if arg.starts_with("amqp") {
            bench::load::redact(&arg)
        } else {
            arg
        };
        if arg.contains(char::is_whitespace) {
            line.push_str(&format!("'{arg}'"));
        } else {
            line.push_str(&arg);
        }
    }
    line
}

async fn run_floor(args: FloorArgs) -> anyhow::Result<()> {
    let config = FloorConfig {
        amqp_url: args.amqp_url,
        queue: args.queue,
        exchange: args.exchange,
        concurrency: args.concurrency,
        prefetch: args.prefetch,
    };
    bench::floor::run(config, stdin_closed()).await
}

/// The bench stops the floor by closing its stdin: no signal handling needed.
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while let Ok(read) = stdin.read(&mut buffer).await {
        if read == 0 {
            return;
        }
    }
}
