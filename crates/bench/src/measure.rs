//! One measurement of one subject, in two phases.
//!
//! 1. **Drain.** N commands are pre-loaded, the subject is started, and the outcomes are
//!    counted as they arrive on a queue bound to the results exchange. Throughput is
//!    `(N − 1) / (last − first outcome)`, so process start-up, connecting and the first
//!    token are left out (they are reported on their own as start-up); CPU time per 1000
//!    commands comes from the same window.
//! 2. **Paced.** With the queue empty and the subject still running, commands are
//!    published evenly spaced at a fixed rate, and each one's time from publishing to its
//!    outcome is its latency. A pre-loaded command's "publish → outcome" is mostly the time
//!    it queued behind the ones before it — a measure of N, not of the subject — so latency
//!    is taken here instead, at half the worker's drain rate, where the queue stays short.
//!
//! Peak memory is `VmHWM` at the end, so it covers start-up and both phases.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use lapin::options::QueueDeleteOptions;
use lapin::{Channel, Consumer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::load::{Broker, CommandPublisher, Stamp, Topology};
use super::procfs::{self, MachineCpu};
use super::subject::{Binaries, Launch, Subject, SubjectKind};
use graph_sim::GraphSim;
use print_abort_worker::config::QueueType;

/// Without a single outcome for this long, a measurement is declared stuck: the usual
/// [`Plan::stall`].
pub const STALL: Duration = Duration::from_secs(30);

/// How often a running measurement checks on its subject (and samples its memory).
const TICK: Duration = Duration::from_secs(1);

/// Fewer paced commands than this give no meaningful p99.
const MIN_PACED_COMMANDS: usize = 100;

/// More commands than one measurement ever sends; a larger number in an id is not ours.
const MAX_COMMANDS: usize = 100_000_000;

/// The routing key of a successful outcome; anything else counts as a failure.
const SUCCEEDED: &str = "printjob.abort.succeeded";

/// What every measurement of a run shares.
pub struct Bench<'a> {
    pub broker: &'a Broker,
    /// A short id in every name and command of the run.
    pub run: String,
    pub queue_type: QueueType,
    pub binaries: &'a Binaries,
    /// How long the paced phase publishes.
    pub latency_phase: Duration,
    /// The local RabbitMQ, whose CPU time is reported too; `None` when it runs elsewhere.
    pub broker_pid: Option<u32>,
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub subject: SubjectKind,
    /// Commands pre-loaded and drained.
    pub commands: usize,
    pub concurrency: usize,
    /// The rate of the paced phase; `None` skips it.
    pub paced: Option<PacedRate>,
    /// Record the subject's resident memory every second of the drain.
    pub sample_memory: bool,
    /// Without a single outcome for this long the drain is declared stuck ([`STALL`], or
    /// longer for a subject slowed down by a profiler).
    pub stall: Duration,
}

/// How fast the paced phase publishes.
#[derive(Debug, Clone, Copy)]
pub enum PacedRate {
    /// Half this subject's drain rate: busy, but with the queue kept short.
    HalfOfDrain,
    PerSecond(f64),
}

/// The figures of one measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub drain: Drain,
    pub latency: Option<Latency>,
    /// The subject's CPU time during the drain.
    pub cpu_seconds_per_1000: f64,
    /// The subject's context switches during the drain, per command: how often its threads
    /// went to sleep and were woken, which is what CPU time goes on at low rates.
    pub context_switches_per_command: f64,
    /// Everyone else's during the same window.
    pub cpu_elsewhere: CpuElsewhere,
    pub peak_rss_bytes: u64,
    /// Private and file-backed resident memory at the end, which tell heap from code.
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    /// Outcomes other than `succeeded`; a healthy run has none.
    pub failed: usize,
    /// Outcomes seen more than once (redeliveries); a healthy run has none.
    pub duplicates: usize,
    /// Messages left in the dead-letter queue; a healthy run leaves none.
    pub dead_lettered: u32,
    pub memory_samples: Vec<MemorySample>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    pub commands: usize,
    /// First to last outcome.
    pub seconds: f64,
    pub per_second: f64,
    /// From starting the process to its first outcome.
    pub startup_seconds: f64,
}

/// CPU time spent outside the subject while it drained, per 1000 commands.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuElsewhere {
    /// The bench process: the Graph simulator (which only the worker calls), the collector
    /// and the loader.
    pub harness_per_1000: f64,
    /// The local RabbitMQ, if found.
    pub broker_per_1000: Option<f64>,
    /// How many CPUs the whole machine kept busy on average, other users included.
    pub machine_busy_cpus: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Commands per second offered.
    pub rate: f64,
    pub commands: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The subject's CPU time over the paced phase, per 1000 commands: what a command costs
    /// at this rate, where a drain measures it flat out.
    pub cpu_seconds_per_1000: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemorySample {
    /// Since the subject was started.
    pub seconds: f64,
    /// Commands with an outcome so far.
    pub commands: usize,
    pub rss_bytes: u64,
}

/// Measures one subject on a fresh topology, and deletes the topology afterwards whatever
/// happened.
pub async fn measure(bench: &Bench<'_>, sim: &GraphSim, plan: &Plan) -> anyhow::Result<Figures> {
    if plan.commands < 2 {
        bail!("a measurement needs at least 2 commands");
    }
    let topology = Topology::fresh(
        &bench.run,
        plan.subject.name(),
        bench.broker.url(),
        bench.queue_type,
    );
    topology.declare(bench.broker).await?;
    let measured = measure_on(bench, sim, plan, &topology).await;
    let deleted = topology.delete(bench.broker).await;
    match (measured, deleted) {
        (Ok(mut figures), Ok(dead_lettered)) => {
            figures.dead_lettered = dead_lettered;
            Ok(figures)
        }
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => Err(error),
        (Err(error), Err(cleanup)) => {
            // The measurement's failure is the news; the leftovers are worth a line.
            eprintln!("bench: cleaning up failed too: {cleanup:#}");
            Err(error)
        }
    }
}

async fn measure_on(
    bench: &Bench<'_>,
    sim: &GraphSim,
    plan: &Plan,
    topology: &Topology,
) -> anyhow::Result<Figures> {
    let mut collector =
        Collector::start(bench.broker, &topology.amqp.results_exchange, &bench.run).await?;
    let mut publisher =
        CommandPublisher::open(bench.broker, &topology.amqp.command_queue, &bench.run).await?;
    let commands = plan.commands as u64;
    publisher.preload(0..commands).await?;

    // Twice the concurrency, as in the worker's defaults (32 for 16): a finished command's
    // successor is already delivered, so no slot waits a round trip to the broker.
    let prefetch = u16::try_from(plan.concurrency.saturating_mul(2)).unwrap_or(u16::MAX);
    let mut subject = Subject::launch(&Launch {
        kind: plan.subject,
        topology,
        concurrency: plan.concurrency,
        prefetch,
        sim,
        binaries: bench.binaries,
        ops_listen: None,
    })?;
    let phases = async {
        let drained = drain(
            &mut subject,
            &mut collector,
            commands,
            plan.sample_memory,
            plan.stall,
            bench.broker_pid,
        )
        .await?;
        let drain = drained.drain;
        let latency = match plan.paced {
            Some(rate) => {
                let rate = match rate {
                    PacedRate::HalfOfDrain => drain.per_second / 2.0,
                    PacedRate::PerSecond(rate) => rate,
                };
                let count = ((rate * bench.latency_phase.as_secs_f64()) as usize)
                    .max(MIN_PACED_COMMANDS) as u64;
                let seqs = commands..commands + count;
                Some(paced(&mut subject, &mut collector, &mut publisher, seqs, rate).await?)
            }
            None => None,
        };
        let usage = subject.usage()?;
        anyhow::Ok((drained, latency, usage))
    };
    let (drained, latency, usage) = match phases.await {
        Ok(figures) => figures,
        Err(error) => return Err(subject.fail(error).await),
    };
    subject.stop().await?;
    publisher.close().await;
    let (failed, duplicates) = (collector.failed, collector.duplicates);
    collector.stop().await;
    Ok(Figures {
        drain: drained.drain,
        latency,
        cpu_seconds_per_1000: drained.cpu_seconds_per_1000,
        context_switches_per_command: drained.context_switches_per_command,
        cpu_elsewhere: drained.cpu_elsewhere,
        peak_rss_bytes: usage.peak_rss_bytes,
        rss_anon_bytes: usage.rss_anon_bytes,
        rss_file_bytes: usage.rss_file_bytes,
        failed,
        duplicates,
        dead_lettered: 0,
        memory_samples: drained.memory_samples,
    })
}

/// What the drain phase found.
struct Drained {
    drain: Drain,
    cpu_seconds_per_1000: f64,
    context_switches_per_command: f64,
    cpu_elsewhere: CpuElsewhere,
    memory_samples: Vec<MemorySample>,
}

/// CPU time of everyone involved, at one moment.
struct CpuSnapshot {
    at: Instant,
    subject: f64,
    subject_switches: u64,
    harness: f64,
    broker: Option<f64>,
    machine: Option<MachineCpu>,
}

impl CpuSnapshot {
    fn take(subject: &Subject, broker_pid: Option<u32>, at: Instant) -> anyhow::Result<Self> {
        Ok(Self {
            at,
            subject: procfs::cpu_seconds(subject.pid())?,
            subject_switches: procfs::context_switches(subject.pid())?,
            harness: procfs::cpu_seconds(std::process::id())?,
            broker: broker_pid.and_then(|pid| procfs::cpu_seconds(pid).ok()),
            machine: MachineCpu::read(),
        })
    }
}

/// Waits for the outcomes of commands `0..commands`.
async fn drain(
    subject: &mut Subject,
    collector: &mut Collector,
    commands: u64,
    sample_memory: bool,
    stall: Duration,
    broker_pid: Option<u32>,
) -> anyhow::Result<Drained> {
    let launched = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    let mut samples = Vec::new();
    let mut done = 0u64;
    let mut first: Option<CpuSnapshot> = None;
    let mut last_progress = launched;
    let last = loop {
        tokio::select! {
            arrival = collector.next() => {
                let arrival = arrival?;
                if arrival.seq >= commands {
                    continue;
                }
                done += 1;
                last_progress = arrival.at;
                if first.is_none() {
                    first = Some(CpuSnapshot::take(subject, broker_pid, arrival.at)?);
                }
                if done == commands {
                    break CpuSnapshot::take(subject, broker_pid, arrival.at)?;
                }
            }
            _ = ticks.tick() => {
                subject.check_running()?;
                if last_progress.elapsed() > stall {
                    bail!("no outcome for {stall:?}; {done} of {commands} commands done");
                }
                if sample_memory {
                    samples.push(MemorySample {
                        seconds: launched.elapsed().as_secs_f64(),
                        commands: usize::try_from(done).unwrap_or(usize::MAX),
                        rss_bytes: subject.usage()?.rss_bytes,
                    });
                }
            }
        }
    };
    if sample_memory {
        samples.push(MemorySample {
            seconds: launched.elapsed().as_secs_f64(),
            commands: usize::try_from(done).unwrap_or(usize::MAX),
            rss_bytes: subject.usage()?.rss_bytes,
        });
    }
    let first = first.context("the drain ended without an outcome")?;
    // At least a microsecond, so the rate stays finite even on a coarse clock.
    let seconds = (last.at - first.at).as_secs_f64().max(1e-6);
    let intervals = (commands - 1) as f64;
    let per_1000 = |spent: f64| spent / intervals * 1000.0;
    Ok(Drained {
        drain: Drain {
            commands: usize::try_from(commands).unwrap_or(usize::MAX),
            seconds,
            per_second: intervals / seconds,
            startup_seconds: (first.at - launched).as_secs_f64(),
        },
        cpu_seconds_per_1000: per_1000(last.subject - first.subject),
        context_switches_per_command: last.subject_switches.saturating_sub(first.subject_switches)
            as f64
            / intervals,
        cpu_elsewhere: CpuElsewhere {
            harness_per_1000: per_1000(last.harness - first.harness),
            broker_per_1000: first
                .broker
                .zip(last.broker)
                .map(|(before, after)| per_1000(after - before)),
            machine_busy_cpus: first
                .machine
                .zip(last.machine)
                .map(|(before, after)| (after.busy_seconds - before.busy_seconds) / seconds),
        },
        memory_samples: samples,
    })
}

/// Publishes `seqs` at `rate` and times each from publishing to its outcome.
async fn paced(
    subject: &mut Subject,
    collector: &mut Collector,
    publisher: &mut CommandPublisher,
    seqs: Range<u64>,
    rate: f64,
) -> anyhow::Result<Latency> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("the paced phase needs a positive rate, not {rate}");
    }
    let expected = usize::try_from(seqs.end - seqs.start).unwrap_or(usize::MAX);
    let cpu_before = procfs::cpu_seconds(subject.pid())?;
    let mut latencies = Vec::with_capacity(expected);
    let publishing = publisher.paced(seqs.clone(), rate);
    tokio::pin!(publishing);
    let mut published = false;
    let mut ticks = tokio::time::interval(TICK);
    let mut last_progress = Instant::now();
    while latencies.len() < expected {
        tokio::select! {
            result = &mut publishing, if !published => {
                result?;
                published = true;
            }
            arrival = collector.next() => {
                let arrival = arrival?;
                if seqs.contains(&arrival.seq) {
                    latencies.push(arrival.latency);
                    last_progress = arrival.at;
                }
            }
            _ = ticks.tick() => {
                subject.check_running()?;
                if published && last_progress.elapsed() > STALL {
                    bail!("no outcome for {STALL:?}; {} of {expected} paced commands done", latencies.len());
                }
            }
        }
    }
    if !published {
        publishing.await?;
    }
    let cpu = procfs::cpu_seconds(subject.pid())? - cpu_before;
    latencies.sort_unstable();
    Ok(Latency {
        rate,
        commands: expected,
        cpu_seconds_per_1000: cpu / expected.max(1) as f64 * 1000.0,
        p50_ms: percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        p99_ms: percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
    })
}

/// The nearest-rank percentile of sorted `values`.
pub(super) fn percentile(sorted: &[Duration], share: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (share * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// An outcome as the collector saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    pub(super) seq: u64,
    pub(super) at: Instant,
    /// Publishing to arrival.
    pub(super) latency: Duration,
    /// The outcome was `succeeded`: what goodput counts.
    pub(super) succeeded: bool,
}

/// Consumes every message published to the results exchange, on a queue of its own, and
/// hands on the first outcome of each command.
pub(super) struct Collector {
    channel: Channel,
    queue: String,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    task: JoinHandle<()>,
    /// Which commands had an outcome: a redelivered command's second event is a duplicate.
    seen: Vec<bool>,
    pub(super) failed: usize,
    pub(super) duplicates: usize,
}

impl Collector {
    pub(super) async fn start(broker: &Broker, exchange: &str, run: &str) -> anyhow::Result<Self> {
        let channel = broker.channel().await?;
        // Without acks, so collecting stays cheaper than what it measures. The floor
        // publishes with the worker's success routing key, so one binding serves both.
        let (queue, consumer) = print_abort_worker::cli::outcome_consumer(&channel, Some(exchange))
            .await
            .context("the collector could not subscribe to the results exchange")?;
        let (sender, arrivals) = mpsc::unbounded_channel();
        let task = tokio::spawn(collect(consumer, run.to_owned(), sender));
        Ok(Self {
            channel,
            queue,
            arrivals,
            task,
            seen: Vec::new(),
            failed: 0,
            duplicates: 0,
        })
    }

    /// The next command's first outcome.
    pub(super) async fn next(&mut self) -> anyhow::Result<Arrival> {
        loop {
            let arrival = self
                .arrivals
                .recv()
                .await
                .context("the collector's consumer stopped")?;
            let Some(index) = usize::try_from(arrival.seq)
                .ok()
                .filter(|&index| index < MAX_COMMANDS)
            else {
                continue;
            };
            if index >= self.seen.len() {
                self.seen.resize((index + 1).next_power_of_two(), false);
            }
            if std::mem::replace(&mut self.seen[index], true) {
                self.duplicates += 1;
                continue;
            }
            if !arrival.succeeded {
                self.failed += 1;
            }
            return Ok(arrival);
        }
    }

    pub(super) async fn stop(self) {
        self.task.abort();
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.channel.close(200, "collected".into()).await;
    }
}

async fn collect(mut consumer: Consumer, run: String, arrivals: mpsc::UnboundedSender<Arrival>) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let now = SystemTime::now();
        let at = Instant::now();
        let Some(stamp) = delivery
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|id| Stamp::parse(&run, id.as_str()))
        else {
            continue;
        };
        let arrival = Arrival {
            seq: stamp.seq,
            at,
            latency: stamp.age(now),
            succeeded: delivery.routing_key.as_str() == SUCCEEDED,
        };
        if arrivals.send(arrival).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
