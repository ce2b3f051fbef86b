//! The benchmark runs end to end: one small configuration against the local broker and
//! the in-process Graph simulator yields sane figures for the worker and the floor, and a
//! report; one short cell of the throttled scenario yields goodput within the limit, the
//! simulator's 429s and the worker's pauses. The bench picks fresh names itself, so this
//! runs beside the other tests.

use std::time::Duration;

use bench::{Options, subject::Binaries, throttled};
use print_abort_worker::config::QueueType;

const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The bench binary cargo built for this test, and the worker built next to it: the suite
/// builds the whole workspace (`scripts/test`), so both share one target directory.
fn binaries() -> Binaries {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_bench"));
    let worker = bench.with_file_name(format!(
        "print-abort-worker{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        worker.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace, or scripts/test)",
        worker.display()
    );
    Binaries {
        worker,
        worker_wrapper: Vec::new(),
        worker_log_level: bench::subject::DEFAULT_LOG_LEVEL.to_owned(),
        floor: env!("CARGO_BIN_EXE_bench").into(),
        floor_wrapper: Vec::new(),
    }
}

fn options(amqp_url: &str) -> Options {
    Options {
        commands: 200,
        latencies: vec![Duration::ZERO],
        concurrency: vec![16],
        memory_soak: None,
        latency_phase: Duration::from_secs(1),
        amqp_url: amqp_url.to_owned(),
        queue_type: QueueType::Quorum,
        binaries: binaries(),
        command_line: "bench_smoke".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_configuration_measures_the_worker_and_the_floor() {
    let report = match bench::run(&options(BROKER_URL)).await {
        Ok(report) => report,
        Err(error) => panic!("the benchmark failed: {error:#}"),
    };
    assert_eq!(report.rows.len(), 1);
    let row = &report.rows[0];
    for (who, figures) in [("worker", &row.worker), ("floor", &row.floor)] {
        assert_eq!(figures.drain.commands, 200, "{who}");
        assert!(figures.drain.per_second > 10.0, "{who}: {figures:?}");
        assert_eq!(
            (figures.failed, figures.duplicates, figures.dead_lettered),
            (0, 0, 0),
            "{who}: every command succeeds exactly once"
        );
        let latency = figures.latency.expect("a paced phase");
        assert!(latency.commands >= 100, "{who}: {latency:?}");
        assert!(
            latency.p50_ms > 0.0 && latency.p99_ms >= latency.p50_ms && latency.p99_ms < 5000.0,
            "{who}: {latency:?}"
        );
        // CPU is read in clock ticks of 10 ms, which a few hundred commands may not fill, so
        // it is bounded from above only (a command costs far below a millisecond here);
        // context switches are counted exactly, and every command crosses threads at least
        // once (its delivery, its Graph reply or its confirm), so they show the figures
        // were read from the running process.
        assert!(
            latency.cpu_seconds_per_1000.is_finite() && latency.cpu_seconds_per_1000 < 20.0,
            "{who}: {latency:?}"
        );
        assert!(
            figures.cpu_seconds_per_1000.is_finite() && figures.cpu_seconds_per_1000 < 5.0,
            "{who}: {figures:?}"
        );
        assert!(
            figures.context_switches_per_command > 0.5
                && figures.context_switches_per_command < 100.0,
            "{who}: {figures:?}"
        );
        assert!(figures.peak_rss_bytes > 1024 * 1024, "{who}: {figures:?}");
    }
    // The floor is offered the worker's paced rate, so their latencies compare.
    assert_eq!(
        row.worker.latency.map(|l| l.rate),
        row.floor.latency.map(|l| l.rate)
    );

    let markdown = report.markdown();
    assert!(markdown.contains("| 0s | 16 |"), "{markdown}");
    assert!(markdown.contains("### Targets"), "{markdown}");

    let docs = tempfile::tempdir().expect("a temporary directory");
    report.write_docs(docs.path()).expect("docs written");
    let written = std::fs::read_to_string(docs.path().join("BENCHMARKS.md")).expect("markdown");
    assert!(written.contains(bench::report::BEGIN_MARKER));
    let svg =
        std::fs::read_to_string(docs.path().join(bench::report::THROUGHPUT_SVG)).expect("the plot");
    assert!(svg.starts_with("<svg") && svg.contains("worker, Graph 0s"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_cell_measures_goodput_429s_and_pauses() {
    const LIMIT: f64 = 50.0;
    let options = throttled::Options {
        limits: vec![LIMIT],
        concurrency: vec![16],
        duration: Duration::from_secs(4),
        amqp_url: BROKER_URL.to_owned(),
        queue_type: QueueType::Quorum,
        binaries: binaries(),
        baseline: None,
        command_line: "bench_smoke".to_owned(),
    };
    let report = match throttled::run(&options).await {
        Ok(report) => report,
        Err(error) => panic!("the throttled scenario failed: {error:#}"),
    };
    assert_eq!(report.cells.len(), 1);
    let cell = &report.cells[0];
    assert!(cell.baseline.is_none());
    let figures = &cell.worker;
    assert_eq!(figures.backlog, 48, "3 × concurrency");
    assert!(
        (3.0..=3.5).contains(&figures.steady_seconds),
        "the last five sixths of 4 s: {figures:?}"
    );
    // The simulator lets through the limit plus at most one bucket (a second's worth): a
    // goodput above that would mean the throttle or the counting is broken.
    let ceiling = LIMIT + LIMIT.ceil() / figures.steady_seconds;
    assert!(
        figures.goodput > 0.0 && figures.goodput <= ceiling,
        "goodput {} not in (0, {ceiling}]: {figures:?}",
        figures.goodput
    );
    assert!(figures.abort_calls > 0, "{figures:?}");
    assert!(
        figures.throttled_calls <= figures.abort_calls,
        "{figures:?}"
    );
    let share = figures.throttled_share();
    assert!((0.0..=1.0).contains(&share), "{figures:?}");
    // The whole run counts the window's calls too.
    assert!(
        figures.abort_calls_total >= figures.abort_calls
            && figures.throttled_calls_total >= figures.throttled_calls,
        "{figures:?}"
    );
    // The backlog was topped up, and every command had exactly one outcome.
    assert!(figures.published > figures.backlog as u64, "{figures:?}");
    assert_eq!(figures.outcomes as u64, figures.published, "{figures:?}");
    assert_eq!(
        (figures.failed, figures.duplicates, figures.dead_lettered),
        (0, 0, 0),
        "{figures:?}"
    );
    // Throttling is flow control, never a reason to pause; and `/readyz` was read, since
    // this build reports its pauses there.
    assert_eq!(figures.pauses, 0, "{figures:?}");
    assert!(figures.probes.is_some(), "{figures:?}");
    // Past a bucket of 50 with 16 in flight, at least 34 calls got through before the
    // first 429, so the worker has a rate to show.
    assert!(
        figures.first_rate.is_some_and(|rate| rate > 0.0)
            && figures.last_rate.is_some_and(|rate| rate > 0.0),
        "{figures:?}"
    );
    let latency = figures
        .latency
        .expect("commands published in the steady window");
    assert!(
        latency.commands > 0 && latency.p50_ms > 0.0 && latency.p99_ms >= latency.p50_ms,
        "{latency:?}"
    );
    assert!(
        !figures.goodput_per_second.is_empty()
            && figures.goodput_per_second.iter().any(|&count| count > 0),
        "{figures:?}"
    );

    let markdown = report.markdown();
    assert!(markdown.contains("| 50 | 16 | 48 |"), "{markdown}");
    assert!(markdown.contains("#### Targets"), "{markdown}");
    let docs = tempfile::tempdir().expect("a temporary directory");
    report.write_docs(docs.path()).expect("docs written");
    let written = std::fs::read_to_string(docs.path().join("BENCHMARKS.md")).expect("markdown");
    assert!(written.contains(throttled::BEGIN_MARKER), "{written}");
    assert!(!written.contains(bench::report::BEGIN_MARKER), "{written}");
    for plot in [throttled::THROTTLED_SVG, throttled::THROTTLED_OVER_TIME_SVG] {
        let svg = std::fs::read_to_string(docs.path().join(plot)).expect("the plot");
        assert!(svg.starts_with("<svg") && svg.contains("worker"), "{plot}");
    }
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_without_the_password() {
    let error = bench::run(&options("amqp://guest:s3cret@127.0.0.1:1/%2f"))
        .await
        .expect_err("nothing listens on port 1");
    let message = format!("{error:#}");
    assert!(
        message.contains("RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:1"),
        "{message}"
    );
    assert!(message.contains("rabbitmq-server"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

/// Two small drains of each subject under callgrind (valgrind is on every machine this
/// project runs on; the scenario says how to install it where it is not).
#[tokio::test(flavor = "multi_thread")]
async fn instructions_per_command_are_counted_for_the_worker_and_the_floor() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let options = bench::instructions::Options {
        drains: [10, 30],
        concurrency: 4,
        amqp_url: BROKER_URL.to_owned(),
        queue_type: QueueType::Quorum,
        binaries: binaries(),
        out_dir: out.path().to_owned(),
        command_line: "bench_smoke".to_owned(),
    };
    let report = match bench::instructions::run(&options).await {
        Ok(report) => report,
        Err(error) => panic!("the instruction count failed: {error:#}"),
    };
    for counts in [&report.worker, &report.floor] {
        let [(small, small_total), (large, large_total)] = counts.batches;
        assert_eq!((small, large), (10, 30));
        // More commands, more instructions; and a command costs thousands of them.
        assert!(large_total > small_total, "{counts:?}");
        assert!(counts.per_command() > 1_000.0, "{counts:?}");
        assert!(counts.profile.is_file(), "callgrind's output is kept");
    }
    assert!(report.ratio().is_finite() && report.ratio() > 0.0);
    let markdown = report.markdown();
    assert!(
        markdown.contains("| worker | 10 |") && markdown.contains("| floor | 10 |"),
        "{markdown}"
    );
    let docs = tempfile::tempdir().expect("a temporary directory");
    report.write_docs(docs.path()).expect("docs written");
    let written = std::fs::read_to_string(docs.path().join("BENCHMARKS.md")).expect("markdown");
    assert!(written.contains(bench::instructions::BEGIN_MARKER));
}
