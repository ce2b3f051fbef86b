//! The side-by-side benchmark (`cargo run --release -p bench`, see
//! `docs/BENCHMARKS.md`).
//!
//! It measures the worker — the release `print-abort-worker run` process, configured through
//! `PRINT_ABORT__…` variables, calling the in-process Graph simulator — next to a *floor*: a
//! bare lapin loop that does only what any at-least-once AMQP worker must (consume, publish
//! one persistent message with a confirm, ack), on the same broker, the same queue type,
//! the same prefetch and concurrency, moments apart. On a shared machine absolute figures
//! drift from run to run; the worker's share of the floor measured in the same run drifts
//! much less, so that is what the targets are set on.
//!
//! The parts:
//! - [`load`] connects, names a fresh topology per measurement, and publishes commands;
//! - [`subject`] starts, watches and stops the measured processes;
//! - [`procfs`] reads CPU time and memory of them, the broker and the machine;
//! - [`floor`] is the floor's loop, run as `bench floor`;
//! - [`measure`] drains pre-loaded commands, then times paced ones end to end;
//! - [`report`] judges the figures against the targets and writes the markdown, [`plot`]
//!   the SVG plots;
//! - [`throttled`] is a scenario of its own (`--scenario throttled`): Graph limiting the
//!   worker's tenant, with more work offered than the limit lets through;
//! - [`instructions`] another (`--scenario instructions`): the instructions one command
//!   costs the worker and the floor, counted by callgrind.
//!
//! The bench is a tool at the top, like a `main`: its errors are shown to a person, never
//! matched on, so they are `anyhow` errors with context.

pub mod floor;
pub mod instructions;
pub mod load;
pub mod measure;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod subject;
pub mod throttled;

use std::time::Duration;

use anyhow::bail;
use chrono::Utc;

use graph_sim::{Faults, GraphSim, SimConfig};
use load::Broker;
use measure::{Bench, PacedRate, Plan};
use print_abort_worker::config::QueueType;
use report::{Machine, Report, Row, Soak};
use subject::{Binaries, SubjectKind};

/// The soak runs where the memory target is set, with instant Graph replies so it is over
/// soonest.
pub const SOAK_CONCURRENCY: usize = report::RSS_TARGET_CONCURRENCY;
pub const SOAK_GRAPH_LATENCY: Duration = Duration::ZERO;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Commands pre-loaded for each measurement.
    pub commands: usize,
    /// Graph latencies to sweep (the simulator's injected latency).
    pub latencies: Vec<Duration>,
    /// `worker.concurrency` values to sweep; prefetch is twice each.
    pub concurrency: Vec<usize>,
    /// Commands of the memory soak; `None` skips it.
    pub memory_soak: Option<usize>,
    /// How long the paced (latency) phase of each measurement publishes.
    pub latency_phase: Duration,
    pub amqp_url: String,
    pub queue_type: QueueType,
    pub binaries: Binaries,
    /// How the run was started, quoted in the report so anyone can repeat it.
    pub command_line: String,
}

/// Runs the sweep (and the soak, when asked) and returns the report. Progress goes to
/// stderr, one line per measurement.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    validate(options)?;
    let broker = Broker::connect(&options.amqp_url).await?;
    let result = sweep(&broker, options).await;
    broker.close().await;
    result
}

fn validate(options: &Options) -> anyhow::Result<()> {
    if options.commands < 2 {
        bail!("--commands must be at least 2");
    }
    if options.latencies.is_empty() || options.concurrency.is_empty() {
        bail!("--latencies and --concurrency need at least one value each");
    }
    if options.concurrency.contains(&0) {
        bail!("--concurrency values must be at least 1");
    }
    if options.memory_soak.is_some_and(|commands| commands < 2) {
        bail!("--memory-soak must be at least 2 commands");
    }
    Ok(())
}

async fn sweep(broker: &Broker, options: &Options) -> anyhow::Result<Report> {
    let bench = Bench {
        broker,
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        queue_type: options.queue_type,
        binaries: &options.binaries,
        latency_phase: options.latency_phase,
        broker_pid: procfs::find_broker(),
    };
    let date = Utc::now();
    let mut rows = Vec::new();
    for &latency in &options.latencies {
        for &concurrency in &options.concurrency {
            let row = configuration(&bench, options.commands, latency, concurrency).await?;
            eprintln!(
                "bench: Graph {:>5}, concurrency {concurrency:>3}: worker {:>6.0}/s, floor {:>6.0}/s \
                 ({:.2} × floor); worker p50 {} ms, CPU-s/1000 worker {:.3} floor {:.3}, \
                 peak RSS MiB worker {:.1} floor {:.1}",
                humantime::format_duration(latency).to_string(),
                row.worker.drain.per_second,
                row.floor.drain.per_second,
                row.share_of_floor(),
                row.worker
                    .latency
                    .map_or_else(|| "–".to_owned(), |l| format!("{:.1}", l.p50_ms)),
                row.worker.cpu_seconds_per_1000,
                row.floor.cpu_seconds_per_1000,
                row.worker.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                row.floor.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            );
            rows.push(row);
        }
    }
    let soak = match options.memory_soak {
        Some(commands) => Some(soak(&bench, commands).await?),
        None => None,
    };
    Ok(Report {
        date,
        command_line: options.command_line.clone(),
        machine: Machine::probe(),
        commands: options.commands,
        queue_type: options.queue_type,
        latency_phase: options.latency_phase,
        rows,
        soak,
    })
}

/// The worker, then the floor at the worker's paced rate, against one simulator.
async fn configuration(
    bench: &Bench<'_>,
    commands: usize,
    latency: Duration,
    concurrency: usize,
) -> anyhow::Result<Row> {
    let sim = start_sim(latency).await?;
    let plan = |subject, paced| Plan {
        subject,
        commands,
        concurrency,
        paced: Some(paced),
        sample_memory: false,
        stall: measure::STALL,
    };
    let worker = measure::measure(
        bench,
        &sim,
        &plan(SubjectKind::Worker, PacedRate::HalfOfDrain),
    )
    .await?;
    // The same offered rate for both, so their latencies compare.
    let rate = worker.latency.map_or(PacedRate::HalfOfDrain, |latency| {
        PacedRate::PerSecond(latency.rate)
    });
    let floor = measure::measure(bench, &sim, &plan(SubjectKind::Floor, rate)).await?;
    let _ = sim.shutdown().await;
    Ok(Row {
        graph_latency: latency,
        concurrency,
        worker,
        floor,
    })
}

async fn soak(bench: &Bench<'_>, commands: usize) -> anyhow::Result<Soak> {
    eprintln!(
        "bench: memory soak, {commands} commands at concurrency {SOAK_CONCURRENCY}; pre-loading…"
    );
    let sim = start_sim(SOAK_GRAPH_LATENCY).await?;
    let plan = Plan {
        subject: SubjectKind::Worker,
        commands,
        concurrency: SOAK_CONCURRENCY,
        paced: None,
        sample_memory: true,
        stall: measure::STALL,
    };
    let figures = measure::measure(bench, &sim, &plan).await?;
    let _ = sim.shutdown().await;
    Ok(Soak {
        graph_latency: SOAK_GRAPH_LATENCY,
        concurrency: SOAK_CONCURRENCY,
        figures,
    })
}

/// A simulator that creates every job it is asked to abort, answering after `latency`.
async fn start_sim(latency: Duration) -> anyhow::Result<GraphSim> {
    let config = SimConfig {
        auto_create_jobs: true,
        faults: Faults {
            latency,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    GraphSim::start(config)
        .await
        .map_err(|error| anyhow::anyhow!("the Graph simulator could not start: {error}"))
}
