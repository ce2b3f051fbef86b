//! The operations endpoints on `http.listen`: `/healthz` (the process is alive),
//! `/readyz` (connected, consuming, not paused) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// `http.listen` could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("http.listen {listen} could not be bound: {source}")]
pub struct BindError {
    listen: SocketAddr,
    #[source]
    source: std::io::Error,
}

#[derive(Clone)]
struct Endpoints {
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
}

/// Binds `listen` and serves until `stop` is cancelled; returns the bound address (useful
/// with port 0). A bind failure is an error, so a misconfigured port stops the start.
pub async fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
    stop: CancellationToken,
) -> Result<SocketAddr, BindError> {
    let bind_error = |source| BindError { listen, source };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(bind_error)?;
    let address = listener.local_addr().map_err(bind_error)?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Endpoints { health, metrics });
    tokio::spawn(async move {
        let shutdown = async move { stop.cancelled().await };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "the operations endpoint stopped");
        }
    });
    tracing::info!(%address, "operations endpoints listening");
    Ok(address)
}

async fn ready(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let health = &endpoints.health;
    let body = serde_json::json!({
        "ready": health.ready(),
        "connected": health.connected(),
        // The node of the current (or latest) session, host:port, in a cluster.
        "broker": health.broker_node(),
        "consuming": health.consuming(),
        "paused": health.paused(),
        "pauses": health.pauses(),
        // Throttling is flow control and leaves the worker ready; this says who waits.
        "tenants": health.tenants(),
    });
    let status = if health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn render_metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match &endpoints.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            crate::telemetry::metrics::render(handle),
        ),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics are recorded by the embedding application\n".to_owned(),
        ),
    }
}
