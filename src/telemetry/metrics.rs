//! Prometheus metrics: one function per thing the worker counts, so every call site
//! records the same names and labels. Names are the contract of docs/OPERATIONS.md and
//! docs/grafana-dashboard.json.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::outcome::{ErrorKind, OutcomeKind};

/// Graph request latency buckets, in seconds: Graph answers in tens to hundreds of ms.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Handles of the series every command records, each looked up once per label set: a
/// `counter!` builds its key and looks it up in the recorder on every call, which cost a
/// few thousand instructions per command (docs/BENCHMARKS.md). Set by [`install`] once this
/// module's recorder is in place; without it the calls go through the macros, to whatever
/// recorder there is.
struct Hot {
    in_flight: Gauge,
    settled: Handles<(OutcomeKind, Option<ErrorKind>), Counter>,
    graph: Handles<(&'static str, Option<u16>), (Counter, Histogram)>,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// Handles by label set, made on first use.
struct Handles<K, H>(Mutex<HashMap<K, H>>);

impl<K: Eq + Hash + Copy, H: Clone> Handles<K, H> {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    fn get(&self, key: K, make: impl FnOnce(K) -> H) -> H {
        let mut handles = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        handles.entry(key).or_insert_with(|| make(key)).clone()
    }
}

fn settled_counter((outcome, error): (OutcomeKind, Option<ErrorKind>)) -> Counter {
    counter!(
        "print_abort_commands_total",
        "outcome" => outcome.as_str(),
        "error_kind" => error.map_or("", ErrorKind::as_str),
    )
}

fn graph_handles((operation, status): (&'static str, Option<u16>)) -> (Counter, Histogram) {
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    (
        counter!("print_abort_graph_requests_total", "operation" => operation, "status" => status),
        histogram!("print_abort_graph_request_duration_seconds", "operation" => operation),
    )
}

/// The standard `process_*` metrics (CPU seconds, resident memory, open file descriptors,
/// …), read only when `/metrics` is scraped, so an idle worker spends nothing on them.
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// The metrics as Prometheus reads them, the process metrics read just now.
pub fn render(handle: &PrometheusHandle) -> String {
    PROCESS.collect();
    handle.render()
}

/// The `# HELP` text of every metric of the worker.
fn describe() {
    describe_counter!(
        "print_abort_commands_total",
        "Commands settled (acknowledged), by outcome and error kind."
    );
    describe_counter!(
        "print_abort_graph_requests_total",
        "Graph requests by operation and HTTP status (error: no reply)."
    );
    describe_histogram!(
        "print_abort_graph_request_duration_seconds",
        Unit::Seconds,
        "Time from sending a Graph request to its whole reply, by operation."
    );
    describe_counter!(
        "print_abort_retries_total",
        "In-process retries of Graph calls after a transient or throttled reply."
    );
    describe_gauge!(
        "print_abort_commands_in_flight",
        "Commands received and not yet settled."
    );
    describe_counter!(
        "print_abort_token_requests_total",
        "Token requests to the identity platform, by result."
    );
    describe_counter!(
        "print_abort_broker_reconnects_total",
        "Broker sessions lost and reconnected."
    );
    describe_gauge!(
        "print_abort_paused",
        "1 while the worker is paused because the failures are the service's, else 0."
    );
    describe_counter!(
        "print_abort_redeliveries_total",
        "Commands moved to a delay queue for a broker-side retry."
    );
    describe_counter!(
        "print_abort_throttled_total",
        "Throttled Graph replies (429, or 503 with Retry-After), by tenant."
    );
    describe_gauge!(
        "print_abort_tenant_throttled",
        "1 while the tenant's requests wait for Graph's Retry-After, else 0."
    );
    describe_gauge!(
        "print_abort_tenant_rate_limit",
        "The adapted rate of requests towards the tenant, per second."
    );
    describe_counter!(
        "print_abort_probes_total",
        "Probes of the service (a fresh token and a printer read), by result."
    );
    describe_counter!(
        "print_abort_delivery_limit_total",
        "Commands that reached amqp.max_deliveries and ended without a Graph call."
    );
    describe_counter!(
        "print_abort_commands_blamed_total",
        "Refused or exhausted commands judged their own failure while others succeeded."
    );
    describe_counter!(
        "print_abort_task_updates_total",
        "Print tasks reported completed after their job's abort, by result."
    );
    describe_gauge!(
        "print_abort_broker_node",
        "1 for the broker node (host:port) the worker is connected to, 0 for one it left."
    );
    describe_gauge!(
        "print_abort_build_info",
        "Always 1; the labels name the worker's version and commit."
    );
}

/// The series that the alerts and the dashboard read, exported at 0 from the start, so that
/// a replica that never paused still shows `print_abort_paused 0`.
fn start_at_zero() {
    for (outcome, kind) in [
        (OutcomeKind::Succeeded, None),
        (OutcomeKind::Failed, Some(ErrorKind::Permanent)),
        (OutcomeKind::Failed, Some(ErrorKind::Exhausted)),
        (OutcomeKind::Failed, Some(ErrorKind::Expired)),
        (OutcomeKind::Failed, Some(ErrorKind::Unauthorized)),
        (OutcomeKind::Rejected, Some(ErrorKind::Invalid)),
    ] {
        settled_counter((outcome, kind)).increment(0);
    }
    for result in ["ok", "error"] {
        counter!("print_abort_token_requests_total", "result" => result).increment(0);
        counter!("print_abort_task_updates_total", "result" => result).increment(0);
    }
    for result in ["passed", "failed"] {
        counter!("print_abort_probes_total", "result" => result).increment(0);
    }
    for name in [
        "print_abort_retries_total",
        "print_abort_broker_reconnects_total",
        "print_abort_redeliveries_total",
        "print_abort_delivery_limit_total",
        "print_abort_commands_blamed_total",
    ] {
        counter!(name).increment(0);
    }
    gauge!("print_abort_paused").set(0.0);
    gauge!("print_abort_commands_in_flight").increment(0.0);
}

/// Installs the process-wide recorder once; later calls return the same handle. `None`
/// when another recorder was installed first (an embedding application's).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "print_abort_graph_request_duration_seconds".into(),
                    ),
                    LATENCY_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            start_at_zero();
            gauge!(
                "print_abort_build_info",
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => env!("PRINT_ABORT_COMMIT"),
            )
            .set(1.0);
            PROCESS.describe();
            let _ = HOT.set(Hot {
                in_flight: gauge!("print_abort_commands_in_flight"),
                settled: Handles::new(),
                graph: Handles::new(),
            });
            let upkeep = handle.clone();
            // Histograms are summarised lazily; upkeep keeps their memory bounded.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}

pub fn command_settled(outcome: OutcomeKind, error: Option<ErrorKind>) {
    let key = (outcome, error);
    match HOT.get() {
        Some(hot) => hot.settled.get(key, settled_counter),
        None => settled_counter(key),
    }
    .increment(1);
}

pub fn graph_request(operation: &'static str, status: Option<u16>, elapsed: Duration) {
    let key = (operation, status);
    let (requests, duration) = match HOT.get() {
        Some(hot) => hot.graph.get(key, graph_handles),
        None => graph_handles(key),
    };
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

pub fn retry() {
    counter!("print_abort_retries_total").increment(1);
}

pub fn in_flight(delta: f64) {
    match HOT.get() {
        Some(hot) => hot.in_flight.increment(delta),
        None => gauge!("print_abort_commands_in_flight").increment(delta),
    }
}

pub fn token_request(ok: bool) {
    counter!("print_abort_token_requests_total", "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

pub fn broker_reconnect() {
    counter!("print_abort_broker_reconnects_total").increment(1);
}

/// The broker node this process is connected to now: `node` at 1, the one before at 0.
pub fn broker_node(node: &str) {
    static CURRENT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut current = CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(before) = current.take()
        && before != node
    {
        gauge!("print_abort_broker_node", "node" => before).set(0.0);
    }
    gauge!("print_abort_broker_node", "node" => node.to_owned()).set(1.0);
    *current = Some(node.to_owned());
}

pub fn paused(value: bool) {
    gauge!("print_abort_paused").set(if value { 1.0 } else { 0.0 });
}

pub fn redelivery() {
    counter!("print_abort_redeliveries_total").increment(1);
}

/// A throttled Graph reply (`429`, or `503` with `Retry-After`) for `tenant`. Tenants come
/// from the configuration, so the label stays bounded.
pub fn throttled(tenant: &str) {
    counter!("print_abort_throttled_total", "tenant" => tenant.to_owned()).increment(1);
}

/// Whether `tenant`'s gate is closed: its requests wait for Graph's `Retry-After`.
pub fn tenant_gate_closed(tenant: &str, closed: bool) {
    gauge!("print_abort_tenant_throttled", "tenant" => tenant.to_owned()).set(if closed {
        1.0
    } else {
        0.0
    });
}

/// The adapted request rate towards `tenant`.
pub fn tenant_rate_limit(tenant: &str, rate: f64) {
    gauge!("print_abort_tenant_rate_limit", "tenant" => tenant.to_owned()).set(rate);
}

/// A health probe while paused or while judging a refused command.
pub fn probe(passed: bool) {
    counter!("print_abort_probes_total", "result" => if passed { "passed" } else { "failed" })
        .increment(1);
}

/// A command that reached `amqp.max_deliveries` and ended without a Graph call.
pub fn delivery_limit() {
    counter!("print_abort_delivery_limit_total").increment(1);
}

/// A print task reported finished (`ok`), or not (`error`).
pub fn task_update(ok: bool) {
    counter!(
        "print_abort_task_updates_total",
        "result" => if ok { "ok" } else { "error" }
    )
    .increment(1);
}

/// A command refused alone while other commands succeeded, and settled on its own path.
pub fn command_blamed() {
    counter!("print_abort_commands_blamed_total").increment(1);
}
