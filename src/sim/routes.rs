//! The simulator's routing table and the layers around its routes.
//!
//! From the outside in: every reply gets its request ids ([`assign_request_ids`]); the
//! counted routes record their reply's status ([`count_replies`]), after any injected fault
//! so faults are counted too; the Graph routes then pass the fault injector
//! ([`inject_faults`]) before their handler runs.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};

use super::Sim;
use super::control;
use super::faults::FaultKind;
use super::identity::issue_token;
use super::print_api::{abort_job, get_job};
use super::reply::{GraphFailure, assign_request_ids, method_not_allowed, no_route};
use super::stats::Route;

/// Largest request body read. Abort bodies hold a reason of at most a few KiB; the cap
/// keeps a misbehaving client from making the simulator buffer megabytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(sim: Arc<Sim>) -> Router {
    let jobs = "/v1.0/print/printers/{printer_id}/jobs/{job_id}";
    Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            counted(&sim, Route::Token, post(issue_token)),
        )
        .route(
            &format!("{jobs}/abort"),
            graph(&sim, Route::Abort, post(abort_job)),
        )
        .route(jobs, graph(&sim, Route::GetJob, get(get_job)))
        .route(
            "/_sim/faults",
            get(control::get_faults).put(control::put_faults),
        )
        .route("/_sim/outage", post(control::start_outage))
        .route(
            "/_sim/jobs/{printer_id}/{job_id}",
            put(control::put_job).get(control::get_job),
        )
        .route("/_sim/tokens/revoke", post(control::revoke_tokens))
        .route("/_sim/stats", get(control::get_stats))
        // Applies to the routes above only, so it comes after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn(assign_request_ids))
        .with_state(sim)
}

/// A Graph route: counted, and behind the fault injector.
fn graph(sim: &Arc<Sim>, route: Route, endpoint: MethodRouter<Arc<Sim>>) -> MethodRouter<Arc<Sim>> {
    counted(
        sim,
        route,
        endpoint.layer(from_fn_with_state(Arc::clone(sim), inject_faults)),
    )
}

fn counted(
    sim: &Arc<Sim>,
    route: Route,
    endpoint: MethodRouter<Arc<Sim>>,
) -> MethodRouter<Arc<Sim>> {
    endpoint.layer(from_fn_with_state((Arc::clone(sim), route), count_replies))
}

async fn count_replies(
    State((sim, route)): State<(Arc<Sim>, Route)>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    sim.stats.record(route, response.status());
    response
}

/// Delays the request, and answers it with an injected fault instead of the handler when
/// the dice or an outage say so.
async fn inject_faults(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let Some(fault) = sim.faults.before_graph_call().await else {
        return next.run(request).await;
    };
    let failure = match fault.kind {
        FaultKind::Outage => GraphFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "serviceNotAvailable",
            "The service is temporarily unavailable (simulated outage).",
        ),
        FaultKind::Unavailable => GraphFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "serviceNotAvailable",
            "The service is temporarily unavailable. Try again after the Retry-After delay.",
        ),
        FaultKind::Throttled => GraphFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests. Try again after the Retry-After delay.",
        ),
    };
    failure
        .with_header(RETRY_AFTER, HeaderValue::from(fault.retry_after_secs))
        .into_response()
}
