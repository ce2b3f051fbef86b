//! The report: the figures of a run as markdown, judged against the targets of issue 6, and
//! written into `docs/BENCHMARKS.md` between two markers so the hand-written parts of that
//! file (how to read it, where the time goes) survive a new run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::measure::{Figures, Latency, MemorySample};
use super::plot;
use print_abort_worker::config::QueueType;

/// Where the generated part of `BENCHMARKS.md` begins and ends.
pub const BEGIN_MARKER: &str = "<!-- bench:results:begin (written by `bench --write-docs`) -->";
pub const END_MARKER: &str = "<!-- bench:results:end -->";

pub const THROUGHPUT_SVG: &str = "bench-throughput.svg";
pub const MEMORY_SVG: &str = "bench-memory.svg";

/// With instant Graph replies, the worker should reach this share of the floor.
pub const INSTANT_SHARE_OF_FLOOR: f64 = 0.8;
/// With slow Graph replies, the worker should reach this share of `concurrency ÷ latency`
/// (until the floor caps it; then [`INSTANT_SHARE_OF_FLOOR`] applies).
pub const LATENCY_SHARE_OF_IDEAL: f64 = 0.9;
pub const MAX_CPU_SECONDS_PER_1000: f64 = 0.15;
pub const MAX_PEAK_RSS_BYTES: u64 = 20 * MIB;
/// The concurrency the memory target is set for.
pub const RSS_TARGET_CONCURRENCY: usize = 64;
/// The soak's memory counts as flat when, after the first [`SOAK_WARM_SHARE`] of the
/// commands, it never grows by more than this share of its warm size…
pub const FLAT_GROWTH_SHARE: f64 = 0.05;
/// …or by this much, whichever is larger (allocator noise on a small process).
pub const FLAT_GROWTH_BYTES: u64 = MIB;
/// The share of the soak's commands after which the worker counts as warm.
pub const SOAK_WARM_SHARE: f64 = 0.1;

const MIB: u64 = 1024 * 1024;

/// Everything a run measured, and how.
#[derive(Debug, Clone)]
pub struct Report {
    pub date: DateTime<Utc>,
    /// The command line that produced it, to rerun it.
    pub command_line: String,
    pub machine: Machine,
    pub commands: usize,
    pub queue_type: QueueType,
    pub latency_phase: Duration,
    pub rows: Vec<Row>,
    pub soak: Option<Soak>,
}

/// One configuration: the worker and the floor under the same load.
#[derive(Debug, Clone)]
pub struct Row {
    pub graph_latency: Duration,
    pub concurrency: usize,
    pub worker: Figures,
    pub floor: Figures,
}

/// The long run that shows whether memory stays flat.
#[derive(Debug, Clone)]
pub struct Soak {
    pub graph_latency: Duration,
    pub concurrency: usize,
    pub figures: Figures,
}

/// The machine, as far as it shapes the figures.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpus: usize,
    pub memory_bytes: u64,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Self {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|line| {
                let value = line.strip_prefix("MemTotal:")?;
                value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
            })
            .unwrap_or(0);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_bytes: memory_kib * 1024,
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// A target of issue 6 and how the run did against it; `met` is `None` when the run did
/// not measure it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub target: String,
    pub figure: String,
    pub met: Option<bool>,
}

impl Row {
    /// What the worker should reach here: a share of the floor with instant replies; with
    /// slow replies a share of `concurrency ÷ latency`, at most what instant replies need.
    pub fn throughput_target(&self) -> f64 {
        let floor_bound = INSTANT_SHARE_OF_FLOOR * self.floor.drain.per_second;
        match self.ideal_throughput() {
            Some(ideal) => (LATENCY_SHARE_OF_IDEAL * ideal).min(floor_bound),
            None => floor_bound,
        }
    }

    /// `concurrency ÷ latency`: what the worker would do if Graph's latency were all.
    pub fn ideal_throughput(&self) -> Option<f64> {
        (!self.graph_latency.is_zero())
            .then(|| self.concurrency as f64 / self.graph_latency.as_secs_f64())
    }

    pub fn share_of_floor(&self) -> f64 {
        self.worker.drain.per_second / self.floor.drain.per_second
    }

    pub fn throughput_met(&self) -> bool {
        self.worker.drain.per_second >= self.throughput_target()
    }
}

impl Soak {
    /// The sample the worker counts as warm at, and the largest resident size after it.
    fn warm_and_peak(&self) -> Option<(MemorySample, u64)> {
        let samples = &self.figures.memory_samples;
        let warm_after = (self.figures.drain.commands as f64 * SOAK_WARM_SHARE) as usize;
        let warm_index = samples.iter().position(|s| s.commands >= warm_after)?;
        let warm = samples[warm_index];
        let peak = samples[warm_index..].iter().map(|s| s.rss_bytes).max()?;
        Some((warm, peak))
    }

    /// Growth after warming up, in bytes (negative when it shrank).
    pub fn growth_bytes(&self) -> Option<i64> {
        let (warm, peak) = self.warm_and_peak()?;
        Some(peak as i64 - warm.rss_bytes as i64)
    }

    pub fn is_flat(&self) -> Option<bool> {
        let (warm, _) = self.warm_and_peak()?;
        let allowed = ((warm.rss_bytes as f64 * FLAT_GROWTH_SHARE) as u64).max(FLAT_GROWTH_BYTES);
        Some(self.growth_bytes()? <= allowed as i64)
    }

    /// Least-squares slope of resident memory over commands after warming up, in KiB per
    /// 10 000 commands: a leak shows as a steady positive slope.
    pub fn slope_kib_per_10k(&self) -> Option<f64> {
        let (warm, _) = self.warm_and_peak()?;
        let points: Vec<(f64, f64)> = self
            .figures
            .memory_samples
            .iter()
            .filter(|s| s.commands >= warm.commands)
            .map(|s| (s.commands as f64, s.rss_bytes as f64 / 1024.0))
            .collect();
        if points.len() < 2 {
            return None;
        }
        let n = points.len() as f64;
        let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
        let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
        let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
        (variance > 0.0).then(|| covariance / variance * 10_000.0)
    }
}

impl Report {
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for row in &self.rows {
            let latency = humantime::format_duration(row.graph_latency);
            let target = match row.ideal_throughput() {
                None => format!(
                    "Graph {latency}, concurrency {}: throughput ≥ {INSTANT_SHARE_OF_FLOOR} × floor",
                    row.concurrency
                ),
                Some(ideal) => format!(
                    "Graph {latency}, concurrency {}: throughput ≥ {LATENCY_SHARE_OF_IDEAL} × {} ÷ {latency} = {:.0}/s, capped at {INSTANT_SHARE_OF_FLOOR} × floor",
                    row.concurrency,
                    row.concurrency,
                    LATENCY_SHARE_OF_IDEAL * ideal
                ),
            };
            verdicts.push(Verdict {
                target,
                figure: format!(
                    "{:.0}/s ≥ {:.0}/s? ({:.2} × floor)",
                    row.worker.drain.per_second,
                    row.throughput_target(),
                    row.share_of_floor()
                ),
                met: Some(row.throughput_met()),
            });
        }

        let cpu = self
            .worker_figures()
            .map(|(what, _, figures)| (what, figures.cpu_seconds_per_1000))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        verdicts.push(Verdict {
            target: format!("CPU ≤ {MAX_CPU_SECONDS_PER_1000} s per 1000 commands"),
            figure: cpu.as_ref().map_or_else(
                || "not measured".to_owned(),
                |(what, cpu)| format!("worst {cpu:.3} s ({what})"),
            ),
            met: cpu.map(|(_, cpu)| cpu <= MAX_CPU_SECONDS_PER_1000),
        });

        let rss = self
            .worker_figures()
            .filter(|(_, concurrency, _)| *concurrency == RSS_TARGET_CONCURRENCY)
            .map(|(what, _, figures)| (what, figures.peak_rss_bytes))
            .max_by_key(|(_, rss)| *rss);
        verdicts.push(Verdict {
            target: format!(
                "peak RSS ≤ {} MiB at concurrency {RSS_TARGET_CONCURRENCY}",
                MAX_PEAK_RSS_BYTES / MIB
            ),
            figure: rss.as_ref().map_or_else(
                || format!("not measured (no run at concurrency {RSS_TARGET_CONCURRENCY})"),
                |(what, rss)| format!("worst {} ({what})", mib(*rss)),
            ),
            met: rss.map(|(_, rss)| rss <= MAX_PEAK_RSS_BYTES),
        });

        let (figure, met) = match &self.soak {
            None => (
                "not measured (run with --memory-soak 100000)".to_owned(),
                None,
            ),
            Some(soak) => match (soak.growth_bytes(), soak.is_flat()) {
                (Some(growth), Some(flat)) => (
                    format!(
                        "{} commands: {:+.1} MiB after the first {:.0} %, slope {:+.0} KiB per 10 000 commands",
                        soak.figures.drain.commands,
                        growth as f64 / MIB as f64,
                        SOAK_WARM_SHARE * 100.0,
                        soak.slope_kib_per_10k().unwrap_or(0.0)
                    ),
                    Some(flat),
                ),
                _ => ("too few samples".to_owned(), None),
            },
        };
        verdicts.push(Verdict {
            target: format!(
                "memory flat across the soak (growth after warm-up ≤ max({:.0} %, {} MiB))",
                FLAT_GROWTH_SHARE * 100.0,
                FLAT_GROWTH_BYTES / MIB
            ),
            figure,
            met,
        });
        verdicts
    }

    /// The worker's figures of every measurement, with its name and concurrency.
    fn worker_figures(&self) -> impl Iterator<Item = (String, usize, &Figures)> {
        let rows = self.rows.iter().map(|row| {
            (
                format!(
                    "Graph {}, concurrency {}",
                    humantime::format_duration(row.graph_latency),
                    row.concurrency
                ),
                row.concurrency,
                &row.worker,
            )
        });
        let soak = self.soak.iter().map(|soak| {
            (
                format!(
                    "soak, Graph {}, concurrency {}",
                    humantime::format_duration(soak.graph_latency),
                    soak.concurrency
                ),
                soak.concurrency,
                &soak.figures,
            )
        });
        rows.chain(soak)
    }

    /// The generated part of `BENCHMARKS.md`.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        let _ = writeln!(out, "## Results\n");
        let _ = writeln!(
            out,
            "Measured {} on {} CPUs ({}), {:.1} GiB memory, Linux {}, with RabbitMQ on the \
             same machine; {} command queues; **N = {}** commands per measurement; paced \
             phase {}. Run with:\n",
            self.date.format("%Y-%m-%d %H:%M UTC"),
            machine.cpus,
            machine.cpu_model,
            machine.memory_bytes as f64 / (1024.0 * MIB as f64),
            machine.kernel,
            self.queue_type.as_str(),
            self.commands,
            humantime::format_duration(self.latency_phase),
        );
        let _ = writeln!(out, "```sh\n{}\n```\n", self.command_line);
        if !self.rows.is_empty() {
            let _ = writeln!(out, "![throughput by concurrency]({THROUGHPUT_SVG})\n");
            out.push_str(&self.figures_table());
            out.push_str(&self.cost_table());
        }
        let _ = writeln!(out, "\n### Targets\n");
        let _ = writeln!(out, "| target | figure | |\n|---|---|---|");
        for verdict in self.verdicts() {
            let met = match verdict.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let _ = writeln!(out, "| {} | {} | {met} |", verdict.target, verdict.figure);
        }
        if let Some(soak) = &self.soak {
            out.push_str(&soak_markdown(soak));
        }
        out
    }

    fn figures_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| Graph latency | concurrency | worker cmd/s | floor cmd/s | worker ÷ floor | \
             target cmd/s | | p50 ms worker / floor | p99 ms worker / floor | paced rate /s | \
             CPU s per 1000 paced worker / floor | CPU s per 1000 worker / floor | \
             peak RSS MiB worker / floor | start-up ms worker |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for row in &self.rows {
            let (worker, floor) = (&row.worker, &row.floor);
            let paced = |figures: &Figures, digits: usize, pick: fn(&Latency) -> f64| {
                figures.latency.as_ref().map_or_else(
                    || "–".to_owned(),
                    |latency| format!("{:.digits$}", pick(latency)),
                )
            };
            let latency = |figures, pick| paced(figures, 1, pick);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {} | {} / {} | {} / {} | {} | {} / {} | {:.3} / {:.3} | {:.1} / {:.1} | {:.0} |",
                humantime::format_duration(row.graph_latency),
                row.concurrency,
                worker.drain.per_second,
                floor.drain.per_second,
                row.share_of_floor(),
                row.throughput_target(),
                if row.throughput_met() {
                    "met"
                } else {
                    "**not met**"
                },
                latency(worker, |l| l.p50_ms),
                latency(floor, |l| l.p50_ms),
                latency(worker, |l| l.p99_ms),
                latency(floor, |l| l.p99_ms),
                worker
                    .latency
                    .as_ref()
                    .map_or_else(|| "–".to_owned(), |l| format!("{:.0}", l.rate)),
                paced(worker, 3, |l| l.cpu_seconds_per_1000),
                paced(floor, 3, |l| l.cpu_seconds_per_1000),
                worker.cpu_seconds_per_1000,
                floor.cpu_seconds_per_1000,
                worker.peak_rss_bytes as f64 / MIB as f64,
                floor.peak_rss_bytes as f64 / MIB as f64,
                worker.drain.startup_seconds * 1000.0,
            );
        }
        let anomalies: Vec<String> = self
            .rows
            .iter()
            .flat_map(|row| [("worker", &row.worker, row), ("floor", &row.floor, row)])
            .filter(|(_, figures, _)| {
                figures.failed > 0 || figures.duplicates > 0 || figures.dead_lettered > 0
            })
            .map(|(who, figures, row)| {
                format!(
                    "{who} at Graph {}, concurrency {}: {} failed, {} duplicate, {} dead-lettered",
                    humantime::format_duration(row.graph_latency),
                    row.concurrency,
                    figures.failed,
                    figures.duplicates,
                    figures.dead_lettered
                )
            })
            .collect();
        if anomalies.is_empty() {
            let _ = writeln!(
                out,
                "\nEvery command of every measurement succeeded exactly once; nothing was \
                 dead-lettered."
            );
        } else {
            let _ = writeln!(out, "\nAnomalies: {}.", anomalies.join("; "));
        }
        out
    }

    /// Who spent the CPU during each drain, and what the resident memory was made of.
    fn cost_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n#### Who spends the CPU\n\nCPU-seconds per 1000 commands during the drain, by \
             process: the subject; the bench process (the Graph simulator, which only the \
             worker calls, plus the loader and the collector); RabbitMQ. *Switches* are the \
             subject's context switches per command (a thread going to sleep for want of \
             work, or being preempted); *busy* is how many of the {} CPUs the whole machine \
             kept busy. RSS is split into private memory (heap, \
             stacks) and mapped files (mostly the binary's code), at the end of the run.\n",
            self.machine.cpus
        );
        let _ = writeln!(
            out,
            "| Graph latency | concurrency | worker | switches | bench (sim) | broker | busy | floor | \
             switches | bench | broker | busy | worker RSS anon + file MiB | floor RSS anon + file MiB |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let optional = |value: Option<f64>, digits: usize| {
            value.map_or_else(|| "–".to_owned(), |value| format!("{value:.digits$}"))
        };
        for row in &self.rows {
            let columns = |figures: &Figures| {
                let elsewhere = &figures.cpu_elsewhere;
                format!(
                    "{:.3} | {:.1} | {:.3} | {} | {}",
                    figures.cpu_seconds_per_1000,
                    figures.context_switches_per_command,
                    elsewhere.harness_per_1000,
                    optional(elsewhere.broker_per_1000, 3),
                    optional(elsewhere.machine_busy_cpus, 2),
                )
            };
            let memory = |figures: &Figures| {
                format!(
                    "{:.1} + {:.1}",
                    figures.rss_anon_bytes as f64 / MIB as f64,
                    figures.rss_file_bytes as f64 / MIB as f64
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                humantime::format_duration(row.graph_latency),
                row.concurrency,
                columns(&row.worker),
                columns(&row.floor),
                memory(&row.worker),
                memory(&row.floor),
            );
        }
        out
    }

    /// Writes the results into `dir/BENCHMARKS.md` (between the markers, or appended when
    /// the file has none) and the plots next to it.
    pub fn write_docs(&self, dir: &Path) -> anyhow::Result<()> {
        write_block(dir, BEGIN_MARKER, END_MARKER, &self.markdown())?;
        if !self.rows.is_empty() {
            write(&dir.join(THROUGHPUT_SVG), &plot::throughput(&self.rows)?)?;
        }
        if let Some(soak) = &self.soak {
            write(
                &dir.join(MEMORY_SVG),
                &plot::memory(&soak.figures.memory_samples)?,
            )?;
        }
        Ok(())
    }
}

fn soak_markdown(soak: &Soak) -> String {
    let figures = &soak.figures;
    let mut out = String::new();
    let _ = writeln!(out, "\n### Memory soak\n");
    let _ = writeln!(
        out,
        "{} commands pre-loaded and drained at Graph {}, concurrency {}: {:.0} commands/s, \
         {:.3} CPU-seconds per 1000, peak RSS {}. Resident memory every second:\n",
        figures.drain.commands,
        humantime::format_duration(soak.graph_latency),
        soak.concurrency,
        figures.drain.per_second,
        figures.cpu_seconds_per_1000,
        mib(figures.peak_rss_bytes),
    );
    let _ = writeln!(out, "![resident memory during the soak]({MEMORY_SVG})\n");
    let _ = writeln!(
        out,
        "<details><summary>{} samples</summary>\n",
        figures.memory_samples.len()
    );
    let _ = writeln!(out, "| s | commands done | RSS MiB |\n|---:|---:|---:|");
    for sample in &figures.memory_samples {
        let _ = writeln!(
            out,
            "| {:.0} | {} | {:.2} |",
            sample.seconds,
            sample.commands,
            sample.rss_bytes as f64 / MIB as f64
        );
    }
    let _ = writeln!(out, "\n</details>");
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// `document` with the text between the markers replaced by `results`.
/// `document` with the text between `begin` and `end` replaced by `results`, or with them
/// appended when it has no such markers: each scenario owns a block of its own, so writing
/// one leaves the others' figures as they were.
pub(super) fn splice_between(document: &str, begin: &str, end: &str, results: &str) -> String {
    let block = format!("{begin}\n\n{}\n{end}", results.trim_end());
    if let Some(start) = document.find(begin)
        && let Some(stop) = document[start..].find(end)
    {
        let stop = start + stop + end.len();
        return format!("{}{block}{}", &document[..start], &document[stop..]);
    }
    format!("{}\n\n{block}\n", document.trim_end())
}

/// `BENCHMARKS.md` as it is, or a bare title when there is none yet.
/// Puts `results` between `begin` and `end` in `dir/BENCHMARKS.md` (appended when the file
/// has no such block, the file made when there is none), leaving every other block as it was.
pub(super) fn write_block(dir: &Path, begin: &str, end: &str, results: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{} could not be created", dir.display()))?;
    let path = dir.join("BENCHMARKS.md");
    let existing = read_document(&path)?;
    write(&path, &splice_between(&existing, begin, end, results))
}

fn read_document(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok("# Benchmarks\n".into()),
        Err(error) => Err(error).with_context(|| format!("{} could not be read", path.display())),
    }
}

pub(super) fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("{} could not be written", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Drain;

    fn figures(per_second: f64) -> Figures {
        Figures {
            drain: Drain {
                commands: 1000,
                seconds: 1000.0 / per_second,
                per_second,
                startup_seconds: 0.1,
            },
            latency: None,
            cpu_seconds_per_1000: 0.1,
            context_switches_per_command: 3.0,
            cpu_elsewhere: Default::default(),
            peak_rss_bytes: 10 * MIB,
            rss_anon_bytes: 6 * MIB,
            rss_file_bytes: 4 * MIB,
            failed: 0,
            duplicates: 0,
            dead_lettered: 0,
            memory_samples: Vec::new(),
        }
    }

    fn row(latency_ms: u64, concurrency: usize, worker: f64, floor: f64) -> Row {
        Row {
            graph_latency: Duration::from_millis(latency_ms),
            concurrency,
            worker: figures(worker),
            floor: figures(floor),
        }
    }

    #[test]
    fn instant_graph_is_judged_against_the_floor() {
        assert_eq!(row(0, 16, 800.0, 1000.0).throughput_target(), 800.0);
        assert!(row(0, 16, 800.0, 1000.0).throughput_met());
        assert!(!row(0, 16, 799.0, 1000.0).throughput_met());
    }

    #[test]
    fn slow_graph_is_judged_against_concurrency_over_latency_until_the_floor_caps_it() {
        // 16 ÷ 50 ms = 320/s, 90 % of it is 288/s.
        assert!((row(50, 16, 300.0, 4000.0).throughput_target() - 288.0).abs() < 1e-9);
        // 256 ÷ 50 ms = 5120/s is beyond the floor: 80 % of the floor applies.
        assert_eq!(row(50, 256, 3000.0, 4000.0).throughput_target(), 3200.0);
    }

    #[test]
    fn the_soak_is_flat_when_memory_stops_growing_after_warm_up() {
        let samples = |growth_per_sample: u64| -> Vec<MemorySample> {
            (0..=10)
                .map(|n| MemorySample {
                    seconds: n as f64,
                    commands: n * 100,
                    rss_bytes: 10 * MIB + n as u64 * growth_per_sample,
                })
                .collect()
        };
        let soak = |growth| Soak {
            graph_latency: Duration::ZERO,
            concurrency: 64,
            figures: Figures {
                memory_samples: samples(growth),
                ..figures(1000.0)
            },
        };
        assert_eq!(soak(10 * 1024).is_flat(), Some(true));
        assert_eq!(soak(MIB).is_flat(), Some(false));
        let slope = soak(MIB).slope_kib_per_10k().expect("slope");
        // 1 MiB per 100 commands is 100 MiB per 10 000.
        assert!((slope - 102_400.0).abs() < 1.0, "{slope}");
    }

    #[test]
    fn results_replace_the_block_between_the_markers_and_nothing_else() {
        let document = format!(
            "# B\n\nintro\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\n## Where the time goes\n"
        );
        let updated = splice_between(&document, BEGIN_MARKER, END_MARKER, "new figures");
        assert!(updated.starts_with("# B\n\nintro\n\n"));
        assert!(updated.contains("new figures"));
        assert!(!updated.contains("old"));
        assert!(updated.ends_with("\n\n## Where the time goes\n"));
        assert_eq!(
            splice_between(&updated, BEGIN_MARKER, END_MARKER, "new figures"),
            updated
        );
        let appended = splice_between("# B\n", BEGIN_MARKER, END_MARKER, "figures");
        assert!(appended.starts_with("# B\n\n") && appended.contains(BEGIN_MARKER));
    }

    #[test]
    fn the_report_names_every_target() {
        let report = Report {
            date: Utc::now(),
            command_line: "cargo run --release -p bench".into(),
            machine: Machine::default(),
            commands: 1000,
            queue_type: QueueType::Quorum,
            latency_phase: Duration::from_secs(3),
            rows: vec![row(0, 64, 900.0, 1000.0), row(50, 64, 1100.0, 1000.0)],
            soak: None,
        };
        let markdown = report.markdown();
        assert!(
            markdown.contains("| 0s | 64 | 900 | 1000 | 0.90 |"),
            "{markdown}"
        );
        assert!(markdown.contains("peak RSS ≤ 20 MiB at concurrency 64"));
        assert!(markdown.contains("not measured (run with --memory-soak 100000)"));
        assert_eq!(report.verdicts().len(), 5);
    }
}
