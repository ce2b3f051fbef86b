//! The throttled scenario (`bench --scenario throttled`, see `docs/BENCHMARKS.md`): the
//! Graph simulator limits the worker's tenant to a fixed rate, as Graph limits each app in a
//! tenant, while the worker is offered more work than that rate lets through. It shows
//! whether the worker settles just under the limit — using it, seldom throttled, failing no
//! command and never pausing — or fights it.
//!
//! Each cell is one limit and one `worker.concurrency`. The worker starts on a standing
//! backlog of [`BACKLOG_PER_CONCURRENCY`] × concurrency commands (its prefetch of twice the
//! concurrency and as many again waiting in the queue), and every outcome is answered with
//! a new command, so the queue neither runs dry nor grows: whatever the limit, there is
//! always more work than the tenant may send, and the load reaches a steady state, where a
//! paced load above the limit would grow the queue, and with it the latency, without end.
//! Latency is then the wait behind the backlog, about `backlog ÷ goodput`: what any worker
//! holding that many deliveries meets at that limit, so it is the tail beyond it that tells
//! builds apart.
//!
//! The first [`WARM_UP_SHARE`] of the load is left out (start-up, the first token and the
//! first throttled burst, from which a worker can learn the limit); goodput, the share of
//! abort calls answered `429` (the simulator's counters) and latency (of the commands
//! published in the window, whenever their outcome came) are of the rest. After the load the
//! backlog is drained, so every command's outcome counts towards failures. Pauses are read
//! from the worker's `/readyz` every [`READINESS_POLL`] (its transitions to `paused`, or
//! the `pauses` counter of builds that have one), probes from its `/metrics`.
//!
//! With `--baseline-worker` every cell also measures a second build, just before the first
//! and on a simulator of its own, so a change is judged against the build before it on the
//! same machine minutes apart.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::load::{Broker, CommandPublisher, Topology};
use super::measure::{Collector, percentile};
use super::plot;
use super::report::{self, Machine};
use super::subject::{self, Binaries, Launch, Subject, SubjectKind};
use graph_sim::{Faults, GraphSim, SimConfig, SimStats, Throttle};
use print_abort_worker::config::QueueType;

/// Where the generated part of the throttled section of `BENCHMARKS.md` begins and ends.
pub const BEGIN_MARKER: &str =
    "<!-- bench:throttled:begin (written by `bench --scenario throttled --write-docs`) -->";
pub const END_MARKER: &str = "<!-- bench:throttled:end -->";

pub const THROTTLED_SVG: &str = "bench-throttled.svg";
pub const THROTTLED_OVER_TIME_SVG: &str = "bench-throttled-over-time.svg";

/// Goodput should reach this share of the tenant's limit in every cell.
pub const GOODPUT_SHARE_OF_LIMIT: f64 = 0.9;
/// At most this share of abort calls may be answered `429` in every cell.
pub const MAX_THROTTLED_SHARE: f64 = 0.05;

/// Graph's latency in every cell: slow enough that concurrency decides how many requests
/// are in flight when a `429` comes back, fast enough that even concurrency 16
/// (16 ÷ 50 ms = 320/s) could send 1.5 × the highest default limit.
pub const GRAPH_LATENCY: Duration = Duration::from_millis(50);

/// The standing backlog, in multiples of the concurrency: the worker's prefetch (twice the
/// concurrency) plus as many again in the queue, so a finished command's successor is
/// always there.
pub const BACKLOG_PER_CONCURRENCY: usize = 3;

/// The share of the load left out of the figures as warm-up.
pub const WARM_UP_SHARE: f64 = 1.0 / 6.0;

/// How often `/readyz` is read: a pause lasts at least the first probe interval (a second
/// by default), so none is missed.
pub const READINESS_POLL: Duration = Duration::from_millis(100);

/// The worker's first outcome must come within this of starting it.
const FIRST_OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// The drain gives up after this long without an outcome (a paused worker probing slowly,
/// say), or after twice the backlog's time at the limit plus this, whichever comes first.
const DRAIN_STALL: Duration = Duration::from_secs(30);

/// How often the load checks on the worker.
const TICK: Duration = Duration::from_secs(1);

/// How long a failed measurement waits for the broker to come back.
const RECONNECT_WAIT: Duration = Duration::from_secs(120);

/// How long one read of the worker's endpoints may take.
const OPS_TIMEOUT: Duration = Duration::from_secs(1);

/// The counter of health probes, in builds that have it.
const PROBES_METRIC: &str = "print_abort_probes_total";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tenant's limits, in Graph requests per second.
    pub limits: Vec<f64>,
    /// `worker.concurrency` values; prefetch is twice each.
    pub concurrency: Vec<usize>,
    /// How long each cell keeps the backlog topped up, from the worker's first outcome.
    pub duration: Duration,
    pub amqp_url: String,
    pub queue_type: QueueType,
    pub binaries: Binaries,
    /// A second build measured in every cell before `binaries`' worker, to compare two
    /// builds in one report; `None` measures one.
    pub baseline: Option<Binaries>,
    /// How the run was started, quoted in the report so anyone can repeat it.
    pub command_line: String,
}

/// Which of the two builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Worker,
    Baseline,
}

impl Build {
    pub fn name(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Baseline => "baseline",
        }
    }
}

/// The figures of one build in one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Commands kept waiting for the worker.
    pub backlog: usize,
    /// From starting the worker to its first outcome.
    pub startup_seconds: f64,
    /// The steady window goodput, 429s and latency are of.
    pub steady_seconds: f64,
    /// Succeeded commands per second over the steady window.
    pub goodput: f64,
    /// Abort calls the simulator answered in the steady window, and how many with `429`.
    pub abort_calls: u64,
    pub throttled_calls: u64,
    /// The same over the whole cell, start-up and drain included: what the tenant saw.
    pub abort_calls_total: u64,
    pub throttled_calls_total: u64,
    /// Of the commands published in the steady window.
    pub latency: Option<Latency>,
    /// Commands with an outcome, of `published`.
    pub outcomes: usize,
    pub published: u64,
    /// Outcomes other than `succeeded`.
    pub failed: usize,
    /// Outcomes seen more than once (redeliveries).
    pub duplicates: usize,
    pub dead_lettered: u32,
    /// Times the worker paused.
    pub pauses: u64,
    /// `pauses` is the worker's own count; without one (older builds) it is the pauses
    /// `/readyz` readings caught, a lower bound: a pause that ends and starts again between
    /// two readings shows as one.
    pub pauses_counted_by_worker: bool,
    /// How long it was paused, as `/readyz` readings saw it.
    pub paused_seconds: f64,
    /// Health probes, from `/metrics`; `None` when the build does not count them.
    pub probes: Option<u64>,
    /// The request rate the worker adapted to for the tenant, as `/readyz` showed it: the
    /// first one (learned from the first throttled reply that set one) and the last; `None`
    /// when the build shows none.
    pub first_rate: Option<f64>,
    pub last_rate: Option<f64>,
    /// Succeeded commands in each second from the first outcome to the end of the load,
    /// for the plot over time.
    pub goodput_per_second: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub commands: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    pub fn share_of_limit(&self, limit: f64) -> f64 {
        self.goodput / limit
    }

    /// The share of abort calls answered `429` in the steady window; zero without calls.
    pub fn throttled_share(&self) -> f64 {
        share(self.throttled_calls, self.abort_calls)
    }

    pub fn throttled_share_total(&self) -> f64 {
        share(self.throttled_calls_total, self.abort_calls_total)
    }

    /// Commands published that never had an outcome (the drain gave up).
    pub fn unfinished(&self) -> u64 {
        self.published
            .saturating_sub(u64::try_from(self.outcomes).unwrap_or(u64::MAX))
    }

    /// The targets this cell misses, by name; empty when it meets them all.
    pub fn missed(&self, limit: f64) -> Vec<&'static str> {
        let mut missed = Vec::new();
        if self.share_of_limit(limit) < GOODPUT_SHARE_OF_LIMIT {
            missed.push("goodput");
        }
        if self.throttled_share() > MAX_THROTTLED_SHARE {
            missed.push("429s");
        }
        if self.failed > 0 {
            missed.push("failures");
        }
        if self.pauses > 0 {
            missed.push("pauses");
        }
        missed
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One limit and one concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The tenant's limit, requests per second.
    pub limit: f64,
    pub concurrency: usize,
    pub worker: Figures,
    pub baseline: Option<Figures>,
}

impl Cell {
    /// The figures of each build measured, the baseline first.
    pub fn builds(&self) -> impl Iterator<Item = (Build, &Figures)> {
        self.baseline
            .iter()
            .map(|figures| (Build::Baseline, figures))
            .chain([(Build::Worker, &self.worker)])
    }

    /// `limit/s, concurrency`, as the table and the plot name a cell.
    pub fn label(&self) -> String {
        format!("{}/s, c{}", format_rate(self.limit), self.concurrency)
    }
}

/// Everything a throttled run measured, and how.
#[derive(Debug, Clone)]
pub struct Report {
    pub date: DateTime<Utc>,
    pub command_line: String,
    pub machine: Machine,
    pub queue_type: QueueType,
    pub duration: Duration,
    pub cells: Vec<Cell>,
    /// Measurements that failed once and were measured again, with why.
    pub remeasured: Vec<String>,
}

/// A target and how each build did against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub target: String,
    pub build: Build,
    pub figure: String,
    pub met: bool,
}

/// Runs every cell and returns the report. Progress goes to stderr, one line per build and
/// cell.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    validate(options)?;
    let broker = Broker::connect(&options.amqp_url).await?;
    let mut context = Context {
        broker,
        amqp_url: options.amqp_url.clone(),
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        queue_type: options.queue_type,
        duration: options.duration,
    };
    let result = cells(&mut context, options).await;
    context.broker.close().await;
    result
}

fn validate(options: &Options) -> anyhow::Result<()> {
    if options.limits.is_empty() || options.concurrency.is_empty() {
        bail!("--throttle-limits and --concurrency need at least one value each");
    }
    if let Some(limit) = options
        .limits
        .iter()
        .find(|limit| !(limit.is_finite() && **limit > 0.0))
    {
        bail!("--throttle-limits values must be positive numbers, not {limit}");
    }
    if options.concurrency.contains(&0) {
        bail!("--concurrency values must be at least 1");
    }
    // Under a second of steady window leaves goodput to the rounding of a few outcomes.
    if options.duration < Duration::from_secs(2) {
        bail!("--throttle-duration must be at least 2s");
    }
    Ok(())
}

/// What every measurement of a run shares.
struct Context {
    /// Replaced when a measurement fails, since the broker may have restarted under it.
    broker: Broker,
    amqp_url: String,
    /// A short id in every name and command of the run.
    run: String,
    queue_type: QueueType,
    duration: Duration,
}

async fn cells(context: &mut Context, options: &Options) -> anyhow::Result<Report> {
    let date = Utc::now();
    let mut cells = Vec::new();
    let mut remeasured = Vec::new();
    for &limit in &options.limits {
        for &concurrency in &options.concurrency {
            let baseline = match &options.baseline {
                Some(binaries) => Some(
                    measure_twice_at_most(
                        context,
                        Build::Baseline,
                        binaries,
                        limit,
                        concurrency,
                        &mut remeasured,
                    )
                    .await?,
                ),
                None => None,
            };
            let worker = measure_twice_at_most(
                context,
                Build::Worker,
                &options.binaries,
                limit,
                concurrency,
                &mut remeasured,
            )
            .await?;
            cells.push(Cell {
                limit,
                concurrency,
                worker,
                baseline,
            });
        }
    }
    Ok(Report {
        date,
        command_line: options.command_line.clone(),
        machine: Machine::probe(),
        queue_type: options.queue_type,
        duration: options.duration,
        cells,
        remeasured,
    })
}

/// [`measure`], and once more after a failure: on a shared machine someone else's test may
/// restart the broker in the middle of a minute-long cell, which says nothing about the
/// worker. A second failure ends the run. The report names every cell measured again.
async fn measure_twice_at_most(
    context: &mut Context,
    build: Build,
    binaries: &Binaries,
    limit: f64,
    concurrency: usize,
    remeasured: &mut Vec<String>,
) -> anyhow::Result<Figures> {
    let first = match measure(context, build, binaries, limit, concurrency).await {
        Ok(figures) => return Ok(figures),
        Err(error) => error,
    };
    let what = format!(
        "{} at {}/s, concurrency {concurrency}",
        build.name(),
        format_rate(limit)
    );
    eprintln!("bench: {what} failed; measuring it again: {first:#}");
    remeasured.push(format!(
        "{what} (the first attempt: {})",
        first.root_cause()
    ));
    context.broker.close().await;
    context.broker = reconnect(&context.amqp_url).await?;
    measure(context, build, binaries, limit, concurrency)
        .await
        .with_context(|| format!("{what} failed twice"))
}

/// A fresh connection, waiting up to [`RECONNECT_WAIT`] for a restarting broker.
async fn reconnect(url: &str) -> anyhow::Result<Broker> {
    let give_up = Instant::now() + RECONNECT_WAIT;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match Broker::connect(url).await {
            Ok(broker) => return Ok(broker),
            Err(error) if Instant::now() >= give_up => return Err(error),
            Err(_) => {}
        }
    }
}

/// One build in one cell, on a simulator and a topology of its own (so buckets, counters
/// and queues start fresh), both gone afterwards whatever happened.
async fn measure(
    context: &Context,
    build: Build,
    binaries: &Binaries,
    limit: f64,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    let sim = start_sim(limit).await?;
    let topology = Topology::fresh(
        &context.run,
        build.name(),
        context.broker.url(),
        context.queue_type,
    );
    topology.declare(&context.broker).await?;
    let plan = Plan {
        binaries,
        limit,
        concurrency,
    };
    let measured = measure_on(context, &sim, &topology, &plan).await;
    let deleted = topology.delete(&context.broker).await;
    let _ = sim.shutdown().await;
    let figures = match (measured, deleted) {
        (Ok(mut figures), Ok(dead_lettered)) => {
            figures.dead_lettered = dead_lettered;
            figures
        }
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => return Err(error),
        (Err(error), Err(cleanup)) => {
            eprintln!("bench: cleaning up failed too: {cleanup:#}");
            return Err(error);
        }
    };
    eprintln!(
        "bench: throttled {:>3}/s, concurrency {concurrency:>3}, {:<8}: goodput {:>6.1}/s \
         ({:.2} × limit), 429s {:.1} % (whole run {:.1} %), p50 {} ms, p99 {} ms, \
         {} failed, {} pauses, {} unfinished",
        format_rate(limit),
        build.name(),
        figures.goodput,
        figures.share_of_limit(limit),
        figures.throttled_share() * 100.0,
        figures.throttled_share_total() * 100.0,
        optional_ms(figures.latency.map(|l| l.p50_ms)),
        optional_ms(figures.latency.map(|l| l.p99_ms)),
        figures.failed,
        figures.pauses,
        figures.unfinished(),
    );
    Ok(figures)
}

/// A simulator that creates every job it is asked to abort, answers after
/// [`GRAPH_LATENCY`], and limits the worker's tenant to `limit` with the default bucket
/// (a second's worth).
async fn start_sim(limit: f64) -> anyhow::Result<GraphSim> {
    let config = SimConfig {
        auto_create_jobs: true,
        faults: Faults {
            latency: GRAPH_LATENCY,
            ..Faults::default()
        },
        throttle: Some(Throttle {
            tenants: vec![subject::TENANT.to_owned()],
            ..Throttle::new(limit)
        }),
        ..SimConfig::default()
    };
    GraphSim::start(config)
        .await
        .map_err(|error| anyhow::anyhow!("the Graph simulator could not start: {error}"))
}

/// What one measurement runs.
struct Plan<'a> {
    binaries: &'a Binaries,
    limit: f64,
    concurrency: usize,
}

async fn measure_on(
    context: &Context,
    sim: &GraphSim,
    topology: &Topology,
    plan: &Plan<'_>,
) -> anyhow::Result<Figures> {
    let broker = &context.broker;
    let mut collector =
        Collector::start(broker, &topology.amqp.results_exchange, &context.run).await?;
    let mut publisher =
        CommandPublisher::open(broker, &topology.amqp.command_queue, &context.run).await?;
    let backlog = BACKLOG_PER_CONCURRENCY * plan.concurrency;
    publisher.preload(0..backlog as u64).await?;

    let ops = free_local_address()?;
    let prefetch = u16::try_from(plan.concurrency.saturating_mul(2)).unwrap_or(u16::MAX);
    let mut subject = Subject::launch(&Launch {
        kind: SubjectKind::Worker,
        topology,
        concurrency: plan.concurrency,
        prefetch,
        sim,
        binaries: plan.binaries,
        ops_listen: Some(ops),
    })?;
    let readiness = Readiness::watch(ops)?;
    let mut load = LoadState::new(backlog as u64);
    let phases = async {
        load.run(
            &mut subject,
            &mut collector,
            &mut publisher,
            sim,
            context.duration,
        )
        .await?;
        let drain_cap = Duration::from_secs_f64(2.0 * backlog as f64 / plan.limit) + DRAIN_STALL;
        load.drain(&mut subject, &mut collector, drain_cap).await?;
        anyhow::Ok(sim.stats())
    };
    let whole = match phases.await {
        Ok(stats) => stats,
        Err(error) => {
            readiness.stop().await;
            return Err(subject.fail(error).await);
        }
    };
    // Read before stopping: the counters go with the process.
    let probes = read_probes(ops).await;
    let readings = readiness.stop().await;
    subject.stop().await?;
    publisher.close().await;
    let (failed, duplicates) = (collector.failed, collector.duplicates);
    collector.stop().await;
    Ok(load.figures(LoadEnd {
        backlog,
        whole,
        failed,
        duplicates,
        readings,
        probes,
    }))
}

/// A loopback address nothing listens on, for the worker's `http.listen`. The port is free
/// when asked and taken by the worker moments later; should another process take it in
/// between, the worker fails to start and says so.
fn free_local_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("no free local port for the worker's operations endpoints")?;
    listener
        .local_addr()
        .context("the free local port could not be read")
}

/// The load of one measurement as it runs.
struct LoadState {
    /// The next command's sequence number: how many were published.
    next_seq: u64,
    launched: Instant,
    first: Option<Instant>,
    /// The steady window, once the first outcome fixed it.
    warm_at: Option<Instant>,
    end_at: Option<Instant>,
    /// Sequence numbers published at the start and the end of the steady window.
    seq_at_warm: Option<u64>,
    seq_at_end: Option<u64>,
    stats_at_warm: Option<SimStats>,
    stats_at_end: Option<SimStats>,
    succeeded_in_window: u64,
    goodput_per_second: Vec<u32>,
    /// Every first outcome's command and latency; filtered by window at the end.
    latencies: Vec<(u64, Duration)>,
    outcomes: usize,
}

/// What the end of a measurement adds to the load's figures.
struct LoadEnd {
    backlog: usize,
    whole: SimStats,
    failed: usize,
    duplicates: usize,
    readings: Readings,
    probes: Option<u64>,
}

impl LoadState {
    fn new(preloaded: u64) -> Self {
        Self {
            next_seq: preloaded,
            launched: Instant::now(),
            first: None,
            warm_at: None,
            end_at: None,
            seq_at_warm: None,
            seq_at_end: None,
            stats_at_warm: None,
            stats_at_end: None,
            succeeded_in_window: 0,
            goodput_per_second: Vec::new(),
            latencies: Vec::new(),
            outcomes: 0,
        }
    }

    /// Keeps the backlog topped up for `duration` from the first outcome.
    async fn run(
        &mut self,
        subject: &mut Subject,
        collector: &mut Collector,
        publisher: &mut CommandPublisher,
        sim: &GraphSim,
        duration: Duration,
    ) -> anyhow::Result<()> {
        self.launched = Instant::now();
        let mut ticks = tokio::time::interval(TICK);
        loop {
            let deadline = self.end_at.unwrap_or(self.launched + FIRST_OUTCOME_TIMEOUT);
            // Unused until the first outcome fixes the window.
            let warm_at = self.warm_at.unwrap_or(deadline);
            tokio::select! {
                arrival = collector.next() => {
                    let arrival = arrival?;
                    if self.first.is_none() {
                        self.first = Some(arrival.at);
                        self.warm_at = Some(arrival.at + duration.mul_f64(WARM_UP_SHARE));
                        self.end_at = Some(arrival.at + duration);
                    }
                    self.record(arrival.seq, arrival.at, arrival.latency, arrival.succeeded);
                    if self.end_at.is_some_and(|end| arrival.at < end) {
                        publisher.publish(self.next_seq).await?;
                        self.next_seq += 1;
                    }
                }
                () = tokio::time::sleep_until(warm_at),
                    if self.first.is_some() && self.stats_at_warm.is_none() =>
                {
                    self.stats_at_warm = Some(sim.stats());
                    self.seq_at_warm = Some(self.next_seq);
                }
                () = tokio::time::sleep_until(deadline) => {
                    if self.first.is_none() {
                        bail!("no outcome within {FIRST_OUTCOME_TIMEOUT:?} of starting the worker");
                    }
                    self.stats_at_end = Some(sim.stats());
                    self.seq_at_end = Some(self.next_seq);
                    return Ok(());
                }
                _ = ticks.tick() => subject.check_running()?,
            }
        }
    }

    /// Waits for the outcome of every command published, for at most `cap`, and gives up
    /// earlier after [`DRAIN_STALL`] without one.
    async fn drain(
        &mut self,
        subject: &mut Subject,
        collector: &mut Collector,
        cap: Duration,
    ) -> anyhow::Result<()> {
        let give_up = Instant::now() + cap;
        let mut last_progress = Instant::now();
        let mut ticks = tokio::time::interval(TICK);
        while (self.outcomes as u64) < self.next_seq {
            tokio::select! {
                arrival = collector.next() => {
                    let arrival = arrival?;
                    last_progress = arrival.at;
                    self.record(arrival.seq, arrival.at, arrival.latency, arrival.succeeded);
                }
                () = tokio::time::sleep_until(give_up) => return Ok(()),
                _ = ticks.tick() => {
                    subject.check_running()?;
                    if last_progress.elapsed() > DRAIN_STALL {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, seq: u64, at: Instant, latency: Duration, succeeded: bool) {
        if seq >= self.next_seq {
            // Not one of this measurement's commands.
            return;
        }
        self.outcomes += 1;
        self.latencies.push((seq, latency));
        let (Some(first), Some(end)) = (self.first, self.end_at) else {
            return;
        };
        if !succeeded || at >= end {
            return;
        }
        let second = usize::try_from((at - first).as_secs()).unwrap_or(usize::MAX);
        if second >= self.goodput_per_second.len() {
            self.goodput_per_second.resize(second + 1, 0);
        }
        self.goodput_per_second[second] += 1;
        if self.warm_at.is_some_and(|warm| at >= warm) {
            self.succeeded_in_window += 1;
        }
    }

    fn figures(self, end: LoadEnd) -> Figures {
        let steady_seconds = match (self.warm_at, self.end_at) {
            (Some(warm), Some(stop)) => (stop - warm).as_secs_f64(),
            _ => 0.0,
        };
        let (abort_calls, throttled_calls) = match (&self.stats_at_warm, &self.stats_at_end) {
            (Some(warm), Some(stop)) => (
                stop.abort.requests.saturating_sub(warm.abort.requests),
                stop.abort.count(429).saturating_sub(warm.abort.count(429)),
            ),
            _ => (0, 0),
        };
        let window = self.seq_at_warm.unwrap_or(0)..self.seq_at_end.unwrap_or(0);
        let mut latencies: Vec<Duration> = self
            .latencies
            .iter()
            .filter(|(seq, _)| window.contains(seq))
            .map(|(_, latency)| *latency)
            .collect();
        latencies.sort_unstable();
        let latency = (!latencies.is_empty()).then(|| Latency {
            commands: latencies.len(),
            p50_ms: percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            p99_ms: percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        });
        let readings = end.readings;
        Figures {
            backlog: end.backlog,
            startup_seconds: self
                .first
                .map_or(0.0, |first| (first - self.launched).as_secs_f64()),
            steady_seconds,
            goodput: if steady_seconds > 0.0 {
                self.succeeded_in_window as f64 / steady_seconds
            } else {
                0.0
            },
            abort_calls,
            throttled_calls,
            abort_calls_total: end.whole.abort.requests,
            throttled_calls_total: end.whole.abort.count(429),
            latency,
            outcomes: self.outcomes,
            published: self.next_seq,
            failed: end.failed,
            duplicates: end.duplicates,
            dead_lettered: 0,
            pauses: readings.pauses(),
            pauses_counted_by_worker: readings.pauses_reported.is_some(),
            paused_seconds: readings.paused_seconds,
            // A build that counts pauses counts probes too, and shows no probe counter
            // until it first probed.
            probes: end
                .probes
                .or(readings.pauses_reported.is_some().then_some(0)),
            first_rate: readings.first_rate,
            last_rate: readings.last_rate,
            goodput_per_second: self.goodput_per_second,
        }
    }
}

/// What `/readyz` said over a measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Readings {
    /// Transitions from not paused to paused seen.
    pauses_seen: u64,
    /// The worker's own `pauses` counter at the last reading, in builds that have it.
    pauses_reported: Option<u64>,
    paused_seconds: f64,
    /// The bench tenant's adapted rate: the first seen and the last.
    first_rate: Option<f64>,
    last_rate: Option<f64>,
}

impl Readings {
    /// The worker's own count where it has one, else the transitions seen; the larger, as a
    /// pause shorter than a poll could slip between two readings.
    fn pauses(&self) -> u64 {
        self.pauses_seen.max(self.pauses_reported.unwrap_or(0))
    }
}

/// The parts of the `/readyz` body read; older builds have no `pauses` and no `tenants`.
#[derive(Debug, Deserialize)]
struct ReadyBody {
    paused: bool,
    #[serde(default)]
    pauses: Option<u64>,
    #[serde(default)]
    tenants: Vec<TenantBody>,
}

/// One tenant's throttling gate in `/readyz`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TenantBody {
    tenant: String,
    /// `None` until a throttled reply set a rate.
    #[serde(default)]
    rate_limit: Option<f64>,
}

impl ReadyBody {
    /// The bench tenant's adapted rate, if the worker has one.
    fn rate(&self) -> Option<f64> {
        self.tenants
            .iter()
            .find(|gate| gate.tenant.eq_ignore_ascii_case(subject::TENANT))
            .and_then(|gate| gate.rate_limit)
    }
}

/// Reads the worker's `/readyz` every [`READINESS_POLL`] until stopped.
struct Readiness {
    stop: CancellationToken,
    task: JoinHandle<Readings>,
}

impl Readiness {
    fn watch(ops: SocketAddr) -> anyhow::Result<Self> {
        let client = ops_client()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(poll_readiness(client, ops, stop.clone()));
        Ok(Self { stop, task })
    }

    async fn stop(self) -> Readings {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

fn ops_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(OPS_TIMEOUT)
        .build()
        .context("an HTTP client for the worker's endpoints could not be built")
}

async fn poll_readiness(
    client: reqwest::Client,
    ops: SocketAddr,
    stop: CancellationToken,
) -> Readings {
    let url = format!("http://{ops}/readyz");
    let mut readings = Readings::default();
    let mut ticks = tokio::time::interval(READINESS_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut paused_since: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        // Not listening yet while the worker starts; a paused worker answers 503 with
        // the same body, so the status is not what is read.
        let Ok(reply) = client.get(&url).send().await else {
            continue;
        };
        let Ok(body) = reply.json::<ReadyBody>().await else {
            continue;
        };
        let now = Instant::now();
        match (body.paused, paused_since) {
            (true, None) => {
                readings.pauses_seen += 1;
                paused_since = Some(now);
            }
            (false, Some(since)) => {
                readings.paused_seconds += (now - since).as_secs_f64();
                paused_since = None;
            }
            _ => {}
        }
        if body.pauses.is_some() {
            readings.pauses_reported = body.pauses;
        }
        if let Some(rate) = body.rate() {
            readings.first_rate.get_or_insert(rate);
            readings.last_rate = Some(rate);
        }
    }
    if let Some(since) = paused_since {
        readings.paused_seconds += since.elapsed().as_secs_f64();
    }
    readings
}

/// The worker's health probes so far, from `/metrics`; `None` when it shows no such
/// counter or cannot be read.
async fn read_probes(ops: SocketAddr) -> Option<u64> {
    let client = ops_client().ok()?;
    let text = client
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    probes_in(&text)
}

/// The sum of [`PROBES_METRIC`] over its labels in Prometheus text.
fn probes_in(metrics: &str) -> Option<u64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(PROBES_METRIC)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            rest.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

impl Report {
    /// Each target once per build.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let builds: &[Build] = if self.cells.iter().any(|cell| cell.baseline.is_some()) {
            &[Build::Baseline, Build::Worker]
        } else {
            &[Build::Worker]
        };
        for &build in builds {
            let figures: Vec<(&Cell, &Figures)> = self
                .cells
                .iter()
                .filter_map(|cell| {
                    cell.builds()
                        .find(|(which, _)| *which == build)
                        .map(|(_, figures)| (cell, figures))
                })
                .collect();
            let worst_goodput = figures.iter().min_by(|a, b| {
                a.1.share_of_limit(a.0.limit)
                    .total_cmp(&b.1.share_of_limit(b.0.limit))
            });
            if let Some((cell, worst)) = worst_goodput {
                let share = worst.share_of_limit(cell.limit);
                verdicts.push(Verdict {
                    target: format!("goodput ≥ {GOODPUT_SHARE_OF_LIMIT} × limit in every cell"),
                    build,
                    figure: format!("worst {share:.2} × limit ({})", cell.label()),
                    met: share >= GOODPUT_SHARE_OF_LIMIT,
                });
            }
            let worst_throttled = figures
                .iter()
                .max_by(|a, b| a.1.throttled_share().total_cmp(&b.1.throttled_share()));
            if let Some((cell, worst)) = worst_throttled {
                let share = worst.throttled_share();
                verdicts.push(Verdict {
                    target: format!(
                        "≤ {:.0} % of abort calls answered 429 in every cell",
                        MAX_THROTTLED_SHARE * 100.0
                    ),
                    build,
                    figure: format!("worst {:.1} % ({})", share * 100.0, cell.label()),
                    met: share <= MAX_THROTTLED_SHARE,
                });
            }
            let failed: usize = figures.iter().map(|(_, f)| f.failed).sum();
            let outcomes: usize = figures.iter().map(|(_, f)| f.outcomes).sum();
            verdicts.push(Verdict {
                target: "no failures".to_owned(),
                build,
                figure: format!("{failed} of {outcomes} outcomes"),
                met: failed == 0,
            });
            let pauses: u64 = figures.iter().map(|(_, f)| f.pauses).sum();
            let paused: f64 = figures.iter().map(|(_, f)| f.paused_seconds).sum();
            let at_least = if figures.iter().all(|(_, f)| f.pauses_counted_by_worker) {
                ""
            } else {
                "≥ "
            };
            verdicts.push(Verdict {
                target: "no pauses".to_owned(),
                build,
                figure: format!("{at_least}{pauses} ({paused:.0} s paused)"),
                met: pauses == 0,
            });
        }
        verdicts
    }

    /// The generated part of the throttled section of `BENCHMARKS.md`.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        let steady = self.duration.mul_f64(1.0 - WARM_UP_SHARE);
        let _ = writeln!(out, "### Results\n");
        let _ = writeln!(
            out,
            "Measured {} on {} CPUs ({}), {:.1} GiB memory, Linux {}, with RabbitMQ on the \
             same machine; {} command queues; Graph answering after {}; each cell {} of \
             load, the last {} of it judged. Run with:\n",
            self.date.format("%Y-%m-%d %H:%M UTC"),
            machine.cpus,
            machine.cpu_model,
            machine.memory_bytes as f64 / (1024.0 * 1024.0 * 1024.0),
            machine.kernel,
            self.queue_type.as_str(),
            humantime::format_duration(GRAPH_LATENCY),
            humantime::format_duration(self.duration),
            humantime::format_duration(Duration::from_secs(steady.as_secs())),
        );
        let _ = writeln!(out, "```sh\n{}\n```\n", self.command_line);
        let compared = self.cells.iter().any(|cell| cell.baseline.is_some());
        if !self.cells.is_empty() {
            let _ = writeln!(out, "![goodput as a share of the limit]({THROTTLED_SVG})\n");
            out.push_str(&self.table(compared));
        }
        let _ = writeln!(out, "\n#### Targets\n");
        let _ = writeln!(out, "| target | build | figure | |\n|---|---|---|---|");
        for verdict in self.verdicts() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                verdict.target,
                verdict.build.name(),
                verdict.figure,
                if verdict.met { "met" } else { "**not met**" }
            );
        }
        if !self.cells.is_empty() {
            let _ = writeln!(
                out,
                "\n![goodput each second, concurrency {}]({THROTTLED_OVER_TIME_SVG})",
                over_time_concurrency(&self.cells)
            );
        }
        out
    }

    fn table(&self, compared: bool) -> String {
        let mut out = String::new();
        let who = if compared { " baseline / worker" } else { "" };
        let _ = writeln!(
            out,
            "| limit /s | concurrency | backlog | goodput /s{who} | goodput ÷ limit{who} | \
             429 share{who} | 429 share, whole run{who} | p50 ms{who} | p99 ms{who} | \
             failed{who} | pauses (s paused){who} | probes{who} | unfinished{who} | \
             adapted rate /s, first → last{who} | targets{who} |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for cell in &self.cells {
            let limit = cell.limit;
            let column = |show: &dyn Fn(&Figures) -> String| -> String {
                cell.builds()
                    .map(|(_, figures)| show(figures))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                format_rate(limit),
                cell.concurrency,
                cell.worker.backlog,
                column(&|f| format!("{:.1}", f.goodput)),
                column(&|f| format!("{:.2}", f.share_of_limit(limit))),
                column(&|f| format!("{:.1} %", f.throttled_share() * 100.0)),
                column(&|f| format!("{:.1} %", f.throttled_share_total() * 100.0)),
                column(&|f| optional_ms(f.latency.map(|l| l.p50_ms))),
                column(&|f| optional_ms(f.latency.map(|l| l.p99_ms))),
                column(&|f| f.failed.to_string()),
                column(&|f| format!("{} ({:.0})", pauses(f), f.paused_seconds)),
                column(&|f| f.probes.map_or_else(|| "–".to_owned(), |p| p.to_string())),
                column(&|f| f.unfinished().to_string()),
                column(&|f| match (f.first_rate, f.last_rate) {
                    (Some(first), Some(last)) => format!("{first:.1} → {last:.1}"),
                    _ => "–".to_owned(),
                }),
                column(&|f| {
                    let missed = f.missed(limit);
                    if missed.is_empty() {
                        "met".to_owned()
                    } else {
                        format!("**not met**: {}", missed.join(", "))
                    }
                }),
            );
        }
        let anomalies: Vec<String> = self
            .cells
            .iter()
            .flat_map(|cell| {
                cell.builds()
                    .map(move |(build, figures)| (cell, build, figures))
            })
            .filter(|(_, _, f)| f.duplicates > 0 || f.dead_lettered > 0)
            .map(|(cell, build, f)| {
                format!(
                    "{} at {}: {} duplicate, {} dead-lettered",
                    build.name(),
                    cell.label(),
                    f.duplicates,
                    f.dead_lettered
                )
            })
            .collect();
        if anomalies.is_empty() {
            let _ = writeln!(
                out,
                "\nNo command had two outcomes; nothing was dead-lettered."
            );
        } else {
            let _ = writeln!(out, "\nAnomalies: {}.", anomalies.join("; "));
        }
        if !self.remeasured.is_empty() {
            let _ = writeln!(
                out,
                "\nMeasured again after a failure: {}.",
                self.remeasured.join("; ")
            );
        }
        out
    }

    /// Writes the results between the throttled markers of `dir/BENCHMARKS.md` (appended
    /// when it has none), leaving the sweep's block as it was, and the plots next to it.
    pub fn write_docs(&self, dir: &Path) -> anyhow::Result<()> {
        report::write_block(dir, BEGIN_MARKER, END_MARKER, &self.markdown())?;
        if !self.cells.is_empty() {
            report::write(&dir.join(THROTTLED_SVG), &plot::throttled(&self.cells)?)?;
            report::write(
                &dir.join(THROTTLED_OVER_TIME_SVG),
                &plot::throttled_over_time(&self.cells, over_time_concurrency(&self.cells))?,
            )?;
        }
        Ok(())
    }
}

/// The concurrency the plot over time shows: 64 when measured (the worker's default range,
/// and where the memory target is set), else the first.
pub fn over_time_concurrency(cells: &[Cell]) -> usize {
    if cells.iter().any(|cell| cell.concurrency == 64) {
        64
    } else {
        cells.first().map_or(0, |cell| cell.concurrency)
    }
}

/// A rate without a needless fraction: `20`, `2.5`.
pub fn format_rate(rate: f64) -> String {
    if rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate}")
    }
}

/// The pauses, marked `≥` when only `/readyz` readings counted them.
fn pauses(figures: &Figures) -> String {
    if figures.pauses_counted_by_worker {
        figures.pauses.to_string()
    } else {
        format!("≥ {}", figures.pauses)
    }
}

fn optional_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(goodput: f64, throttled: u64, failed: usize, pauses: u64) -> Figures {
        Figures {
            backlog: 48,
            startup_seconds: 0.1,
            steady_seconds: 50.0,
            goodput,
            abort_calls: 1000,
            throttled_calls: throttled,
            abort_calls_total: 1200,
            throttled_calls_total: throttled + 20,
            latency: Some(Latency {
                commands: 900,
                p50_ms: 2400.0,
                p99_ms: 2600.0,
            }),
            outcomes: 1300,
            published: 1300,
            failed,
            duplicates: 0,
            dead_lettered: 0,
            pauses,
            pauses_counted_by_worker: true,
            paused_seconds: pauses as f64,
            probes: Some(0),
            first_rate: Some(18.0),
            last_rate: Some(19.5),
            goodput_per_second: vec![20; 60],
        }
    }

    fn report(worker: Figures, baseline: Option<Figures>) -> Report {
        Report {
            date: Utc::now(),
            command_line: "cargo run --release -p bench -- --scenario throttled".into(),
            machine: Machine::default(),
            queue_type: QueueType::Quorum,
            duration: Duration::from_secs(60),
            cells: vec![Cell {
                limit: 20.0,
                concurrency: 16,
                worker,
                baseline,
            }],
            remeasured: Vec::new(),
        }
    }

    #[test]
    fn a_cell_is_judged_on_goodput_429s_failures_and_pauses() {
        assert!(figures(18.0, 50, 0, 0).missed(20.0).is_empty());
        assert_eq!(figures(17.9, 50, 0, 0).missed(20.0), ["goodput"]);
        assert_eq!(figures(18.0, 51, 0, 0).missed(20.0), ["429s"]);
        assert_eq!(
            figures(5.0, 600, 3, 2).missed(20.0),
            ["goodput", "429s", "failures", "pauses"]
        );
        assert_eq!(figures(18.0, 50, 0, 0).throttled_share(), 0.05);
        let idle = Figures {
            abort_calls: 0,
            throttled_calls: 0,
            ..figures(0.0, 0, 0, 0)
        };
        assert_eq!(idle.throttled_share(), 0.0);
    }

    #[test]
    fn the_table_shows_the_baseline_before_the_worker_and_both_are_judged() {
        let baseline = Figures {
            pauses_counted_by_worker: false,
            ..figures(6.0, 700, 4, 3)
        };
        let report = report(figures(19.0, 10, 0, 0), Some(baseline));
        let markdown = report.markdown();
        assert!(markdown.contains("| ≥ 3 (3) / 0 (0) |"), "{markdown}");
        assert!(
            markdown.contains("| 20 | 16 | 48 | 6.0 / 19.0 | 0.30 / 0.95 | 70.0 % / 1.0 % |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("**not met**: goodput, 429s, failures, pauses / met |"),
            "{markdown}"
        );
        let verdicts = report.verdicts();
        assert_eq!(verdicts.len(), 8);
        assert!(
            verdicts.iter().all(|v| v.met == (v.build == Build::Worker)),
            "{verdicts:?}"
        );
        let alone = self::report(figures(19.0, 10, 0, 0), None).markdown();
        assert!(
            alone.contains("| 20 | 16 | 48 | 19.0 | 0.95 | 1.0 % |"),
            "{alone}"
        );
    }

    #[test]
    fn pauses_are_the_workers_count_where_it_has_one() {
        let seen = Readings {
            pauses_seen: 2,
            paused_seconds: 3.0,
            ..Readings::default()
        };
        assert_eq!(seen.pauses(), 2);
        let reported = Readings {
            pauses_reported: Some(3),
            ..seen
        };
        assert_eq!(reported.pauses(), 3);
        let body: ReadyBody =
            serde_json::from_str(r#"{"ready":false,"connected":true,"paused":true}"#)
                .expect("an older build's body");
        assert!(body.paused && body.pauses.is_none() && body.rate().is_none());
        let body: ReadyBody = serde_json::from_str(
            r#"{"ready":true,"paused":false,"pauses":0,"tenants":[
                {"tenant":"other","throttled":false,"rateLimit":5.0,"throttledReplies":1},
                {"tenant":"bench-tenant","throttled":true,"reopensInMs":420,"rateLimit":18.9,"throttledReplies":3}]}"#,
        )
        .expect("a newer build's body");
        assert_eq!(body.rate(), Some(18.9));
    }

    #[test]
    fn probes_are_summed_over_their_labels() {
        let text = "# TYPE print_abort_probes_total counter\n\
                    print_abort_probes_total{result=\"passed\"} 3\n\
                    print_abort_probes_total{result=\"failed\"} 2\n\
                    print_abort_probes_total_other 7\n\
                    print_abort_paused 0\n";
        assert_eq!(probes_in(text), Some(5));
        assert_eq!(probes_in("print_abort_paused 0\n"), None);
    }

    #[test]
    fn rates_show_no_needless_fraction() {
        assert_eq!(format_rate(20.0), "20");
        assert_eq!(format_rate(2.5), "2.5");
    }
}
