//! Prometheus metrics: one function per thing the worker counts, so every call site
//! records the same names and labels. Names are the contract of docs/OPERATIONS.md and
//! docs/grafana-dashboard.json.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::outcome::{ErrorKind, OutcomeKind};

/// Graph request latency buckets, in seconds: Graph answers in tens to hundreds of ms.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

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
    counter!(
        "print_abort_commands_total",
        "outcome" => outcome.as_str(),
        "error_kind" => error.map_or("", ErrorKind::as_str),
    )
    .increment(1);
}

pub fn graph_request(operation: &'static str, status: Option<u16>, elapsed: Duration) {
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    counter!("print_abort_graph_requests_total", "operation" => operation, "status" => status)
        .increment(1);
    histogram!("print_abort_graph_request_duration_seconds", "operation" => operation)
        .record(elapsed.as_secs_f64());
}

pub fn retry() {
    counter!("print_abort_retries_total").increment(1);
}

pub fn in_flight(delta: f64) {
    gauge!("print_abort_commands_in_flight").increment(delta);
}

pub fn token_request(ok: bool) {
    counter!("print_abort_token_requests_total", "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

pub fn broker_reconnect() {
    counter!("print_abort_broker_reconnects_total").increment(1);
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

/// A command refused alone while other commands succeeded, and settled on its own path.
/// A print task reported finished (`ok`), or not (`error`).
pub fn task_update(ok: bool) {
    counter!(
        "print_abort_task_updates_total",
        "result" => if ok { "ok" } else { "error" }
    )
    .increment(1);
}

pub fn command_blamed() {
    counter!("print_abort_commands_blamed_total").increment(1);
}
