//! Instructions per command (`--scenario instructions`): the worker and the floor each drain
//! two pre-loaded batches of different size under valgrind's callgrind, and the difference
//! of their instruction totals, divided by the difference of the batch sizes, is what one
//! more command costs. Start-up, connecting, the first token and shutting down are in both
//! totals and cancel out.
//!
//! Unlike CPU time, an instruction count does not depend on what else the machine is doing:
//! the same binary given the same work counts nearly the same, so two builds compare on a
//! noisy machine. What it does not see is waiting: system calls count as the instructions
//! that issue them, and a thread woken up costs nothing here that it costs in CPU time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};

use super::load::Broker;
use super::measure::{self, Bench, Plan};
use super::report::{self, Machine};
use super::subject::{Binaries, SubjectKind};
use graph_sim::{Faults, GraphSim, SimConfig};
use print_abort_worker::config::QueueType;

pub const BEGIN_MARKER: &str =
    "<!-- bench:instructions:begin (written by `bench --scenario instructions --write-docs`) -->";
pub const END_MARKER: &str = "<!-- bench:instructions:end -->";

/// The two batch sizes unless `--instruction-drains` says otherwise.
pub const DEFAULT_DRAINS: [usize; 2] = [1_000, 3_000];

/// The target: the worker's instructions per command at most this many times the floor's.
pub const TARGET_RATIO: f64 = 2.0;

/// How long a subject under callgrind may go without an outcome. Callgrind runs it tens of
/// times slower, and before its first outcome the worker loads the system's TLS roots and
/// fetches a token, which under callgrind, with the machine busy (the test suite runs in
/// parallel), has taken over 30 seconds.
const UNDER_CALLGRIND_STALL: std::time::Duration = std::time::Duration::from_secs(300);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The smaller and the larger batch.
    pub drains: [usize; 2],
    pub concurrency: usize,
    pub amqp_url: String,
    pub queue_type: QueueType,
    pub binaries: Binaries,
    /// Where callgrind's output files go; kept for `callgrind_annotate`.
    pub out_dir: PathBuf,
    pub command_line: String,
}

/// One subject's two counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub kind: SubjectKind,
    /// `(commands, instructions)` of the smaller and the larger batch.
    pub batches: [(usize, u64); 2],
    /// callgrind's output of the larger batch.
    pub profile: PathBuf,
}

impl Counts {
    /// The instructions one more command costs.
    pub fn per_command(&self) -> f64 {
        let [(small, small_total), (large, large_total)] = self.batches;
        (large_total as f64 - small_total as f64) / (large - small) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub date: DateTime<Utc>,
    pub command_line: String,
    pub machine: Machine,
    pub valgrind: String,
    pub concurrency: usize,
    pub queue_type: QueueType,
    pub worker: Counts,
    pub floor: Counts,
}

impl Report {
    /// The worker's instructions per command over the floor's.
    pub fn ratio(&self) -> f64 {
        self.worker.per_command() / self.floor.per_command()
    }

    pub fn markdown(&self) -> String {
        let ratio = self.ratio();
        let row = |counts: &Counts| {
            let [(small, small_total), (large, large_total)] = counts.batches;
            format!(
                "| {} | {} | {} | {} | {} | **{}** |\n",
                counts.kind.name(),
                thousands(small as u64),
                thousands(small_total),
                thousands(large as u64),
                thousands(large_total),
                thousands(counts.per_command().round() as u64),
            )
        };
        let mut text = format!(
            "Measured {} on {} CPUs ({}), {}, RabbitMQ {} queue, concurrency {} (prefetch {}), \
             Graph answering at once (the in-process simulator, not counted). Command:\n\n\
             ```sh\n{}\n```\n\n\
             | subject | commands | instructions | commands | instructions | per command |\n\
             |---|---:|---:|---:|---:|---:|\n",
            self.date.format("%Y-%m-%d"),
            self.machine.cpus,
            self.machine.cpu_model,
            self.valgrind,
            self.queue_type.as_str(),
            self.concurrency,
            self.concurrency * 2,
            self.command_line,
        );
        text.push_str(&row(&self.worker));
        text.push_str(&row(&self.floor));
        let verdict = if ratio <= TARGET_RATIO {
            "met"
        } else {
            "not met"
        };
        text.push_str(&format!(
            "\nThe worker executes **{ratio:.2} ×** the floor's instructions per command \
             (target ≤ {TARGET_RATIO:.1} ×: {verdict}).\n"
        ));
        text
    }

    pub fn write_docs(&self, dir: &Path) -> anyhow::Result<()> {
        report::write_block(dir, BEGIN_MARKER, END_MARKER, &self.markdown())
    }
}

/// Counts both subjects, each in both batches, against one simulator that answers at once.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let [small, large] = options.drains;
    if small < 2 || large <= small {
        bail!("--instruction-drains needs two sizes, the second larger, both at least 2");
    }
    let valgrind = valgrind_version()?;
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("{} could not be created", options.out_dir.display()))?;
    // The subjects run in another directory, so callgrind needs the whole path.
    let out_dir = std::path::absolute(&options.out_dir)
        .with_context(|| format!("{} has no absolute path", options.out_dir.display()))?;
    let broker = Broker::connect(&options.amqp_url).await?;
    let sim = GraphSim::start(SimConfig {
        auto_create_jobs: true,
        faults: Faults {
            latency: Duration::ZERO,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .map_err(|error| anyhow::anyhow!("the Graph simulator could not start: {error}"))?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let counted = async {
        let worker = count(options, &out_dir, &broker, &sim, &run, SubjectKind::Worker).await?;
        let floor = count(options, &out_dir, &broker, &sim, &run, SubjectKind::Floor).await?;
        anyhow::Ok((worker, floor))
    }
    .await;
    let _ = sim.shutdown().await;
    broker.close().await;
    let (worker, floor) = counted?;
    Ok(Report {
        date: Utc::now(),
        command_line: options.command_line.clone(),
        machine: Machine::probe(),
        valgrind,
        concurrency: options.concurrency,
        queue_type: options.queue_type,
        worker,
        floor,
    })
}

async fn count(
    options: &Options,
    out_dir: &Path,
    broker: &Broker,
    sim: &GraphSim,
    run: &str,
    kind: SubjectKind,
) -> anyhow::Result<Counts> {
    let mut batches = [(0, 0); 2];
    let mut profile = PathBuf::new();
    for (slot, commands) in options.drains.into_iter().enumerate() {
        let out = out_dir.join(format!("callgrind.{}.{commands}.out", kind.name()));
        let _ = std::fs::remove_file(&out);
        let wrapper = vec![
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
            // Not counted: the one-time initialisations of lazily made values. Among them is
            // quanta's clock calibration (the clock of governor and of the metrics
            // exporter), a loop that spins until enough time has passed, so its count
            // follows how fast callgrind happened to run, not the work: it put up to
            // ±2 000 instructions into the per-command difference. Named by once_cell's
            // function that runs every such initialisation, which is not generic and so
            // stays a function of its own whatever the build inlines.
            format!("--toggle-collect={UNCOUNTED_ONE_TIME_INIT}"),
            // Given after it: a toggled function otherwise turns counting off at the start.
            "--collect-atstart=yes".to_owned(),
        ];
        let mut binaries = options.binaries.clone();
        match kind {
            SubjectKind::Worker => binaries.worker_wrapper = wrapper,
            SubjectKind::Floor => binaries.floor_wrapper = wrapper,
        }
        let bench = Bench {
            broker,
            // Job ids of their own per batch: a job the simulator saw aborted before would
            // be refused and looked up, a cost the other batch does not have.
            run: format!("{run}{}{commands}", kind.name()),
            queue_type: options.queue_type,
            binaries: &binaries,
            latency_phase: Duration::ZERO,
            broker_pid: None,
        };
        eprintln!(
            "bench: counting the {}'s instructions over {commands} commands (under callgrind: slow)…",
            kind.name()
        );
        let plan = Plan {
            subject: kind,
            commands,
            concurrency: options.concurrency,
            paced: None,
            sample_memory: false,
            stall: UNDER_CALLGRIND_STALL,
        };
        let figures = measure::measure(&bench, sim, &plan).await?;
        if figures.failed > 0 {
            bail!(
                "{} of the {}'s commands failed",
                figures.failed,
                kind.name()
            );
        }
        let total = callgrind_total(&out)?;
        eprintln!(
            "bench: {} × {commands}: {} instructions",
            kind.name(),
            thousands(total)
        );
        batches[slot] = (commands, total);
        profile = out;
    }
    Ok(Counts {
        kind,
        batches,
        profile,
    })
}

/// The function, as callgrind names it, whose calls are left out of the counts.
const UNCOUNTED_ONE_TIME_INIT: &str = "once_cell::imp::initialize_or_wait";

/// `valgrind-3.19.0`, or an error that says how to install it.
fn valgrind_version() -> anyhow::Result<String> {
    let missing = || {
        anyhow::anyhow!(
            "--scenario instructions counts with valgrind's callgrind, and `valgrind` was not \
             found; install it (Debian: apt-get install valgrind)"
        )
    };
    let output = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .map_err(|_| missing())?;
    if !output.status.success() {
        return Err(missing());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The instruction total callgrind wrote at exit (its `totals:` line, else `summary:`).
pub fn callgrind_total(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("callgrind wrote no output to {}", path.display()))?;
    match total_of(&text) {
        Some(0) => bail!("{} counts no instruction at all", path.display()),
        Some(total) => Ok(total),
        None => bail!("{} has no instruction total", path.display()),
    }
}

fn total_of(text: &str) -> Option<u64> {
    let line = |prefix: &str| {
        text.lines()
            .rev()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|count| count.parse().ok())
    };
    line("totals:").or_else(|| line("summary:"))
}

/// `1 234 567`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_callgrinds_totals_or_summary_line() {
        let file = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 120\nfn=main\n0 5\ntotals: 123456789\n";
        assert_eq!(total_of(file), Some(123_456_789));
        assert_eq!(total_of("events: Ir\nsummary: 42\n"), Some(42));
        assert_eq!(total_of("events: Ir\n"), None);
    }

    #[test]
    fn a_file_that_counted_nothing_is_an_error_not_a_zero() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("callgrind.out");
        std::fs::write(&path, "events: Ir\nsummary: 0\ntotals: 0\n").expect("written");
        let error = callgrind_total(&path).expect_err("a zero total");
        assert!(
            error.to_string().contains("counts no instruction"),
            "{error}"
        );
        std::fs::write(&path, "events: Ir\n").expect("written");
        let error = callgrind_total(&path).expect_err("no total");
        assert!(
            error.to_string().contains("no instruction total"),
            "{error}"
        );
    }

    #[test]
    fn one_more_command_costs_the_difference_over_the_difference() {
        let counts = Counts {
            kind: SubjectKind::Worker,
            batches: [(1_000, 500_000_000), (3_000, 870_000_000)],
            profile: PathBuf::new(),
        };
        assert_eq!(counts.per_command(), 185_000.0);
    }

    #[test]
    fn large_numbers_are_grouped_in_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1 000");
        assert_eq!(thousands(185_000_123), "185 000 123");
    }
}
