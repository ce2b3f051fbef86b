//! The benchmark runs end to end: one small configuration against the local broker and
//! the in-process Graph simulator yields sane figures for the worker and the floor, and a
//! report. The bench picks fresh names itself, so this runs beside the other tests.

use std::time::Duration;

use print_abort_worker::bench::{self, Options, subject::Binaries};
use print_abort_worker::config::QueueType;

const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn options(amqp_url: &str) -> Options {
    Options {
        commands: 200,
        latencies: vec![Duration::ZERO],
        concurrency: vec![16],
        memory_soak: None,
        latency_phase: Duration::from_secs(1),
        amqp_url: amqp_url.to_owned(),
        queue_type: QueueType::Quorum,
        binaries: Binaries {
            worker: env!("CARGO_BIN_EXE_print-abort-worker").into(),
            worker_wrapper: Vec::new(),
            worker_log_level: bench::subject::DEFAULT_LOG_LEVEL.to_owned(),
            floor: env!("CARGO_BIN_EXE_bench").into(),
        },
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
        assert!(
            latency.cpu_seconds_per_1000.is_finite() && latency.cpu_seconds_per_1000 >= 0.0,
            "{who}: {latency:?}"
        );
        assert!(
            figures.cpu_seconds_per_1000.is_finite() && figures.cpu_seconds_per_1000 >= 0.0,
            "{who}: {figures:?}"
        );
        assert!(
            figures.context_switches_per_command.is_finite()
                && figures.context_switches_per_command >= 0.0,
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
