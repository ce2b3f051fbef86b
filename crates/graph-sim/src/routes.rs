//! The simulator's routing table and the layers around its routes.
//!
//! From the outside in: every reply gets its request ids ([`assign_request_ids`]); the
//! counted routes record their reply's status ([`count_replies`]), after any injected fault
//! so faults are counted too. A Graph call then meets, in this order:
//!
//! 1. the bearer check ([`check_bearer`], `401`): first, as with Graph, and because the
//!    throttle needs the token's tenant; a bad token is a `401` whatever else is set;
//! 2. the denial switch ([`deny_while_switched`], `403 Authorization_RequestDenied`);
//! 3. the tenant throttle ([`throttle_tenants`], `429`): after the denial, so a denied call
//!    takes no token, and before the latency, so a refusal is quick, as Graph's are;
//! 4. the fault injector ([`inject_faults`]): latency, then outage `503`, then random
//!    `503`/`429`;
//! 5. the handler, whose extractors check the token's roles (`403 accessDenied`), then the
//!    job's standing fault (`job_faults`), then read the body, before the job table is
//!    asked. The role check precedes the job fault, as Graph would refuse a caller without
//!    permission before looking at any job.

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
use super::print_api::{
    abort_job, authenticate, get_job, get_printer, get_task, list_job_tasks, list_printers,
    list_task_definitions, update_task,
};
use super::reply::{GraphFailure, assign_request_ids, method_not_allowed, no_route};
use super::stats::Route;
use super::tokens::Grant;

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
            "/v1.0/print/printers",
            graph(&sim, Route::ListPrinters, get(list_printers)),
        )
        .route(
            "/v1.0/print/printers/{printer_id}",
            graph(&sim, Route::GetPrinter, get(get_printer)),
        )
        .route(
            &format!("{jobs}/tasks"),
            graph(&sim, Route::Tasks, get(list_job_tasks)),
        )
        .route(
            "/v1.0/print/taskDefinitions",
            graph(&sim, Route::Tasks, get(list_task_definitions)),
        )
        .route(
            "/v1.0/print/taskDefinitions/{definition_id}/tasks/{task_id}",
            graph(&sim, Route::Tasks, get(get_task).patch(update_task)),
        )
        .route(
            "/_sim/faults",
            get(control::get_faults).put(control::put_faults),
        )
        .route(
            "/_sim/jobs/{printer_id}/{job_id}/start",
            post(control::start_job),
        )
        .route(
            "/_sim/taskDefinitions",
            post(control::create_task_definition),
        )
        .route(
            "/_sim/printers/{printer_id}/trigger",
            put(control::put_trigger),
        )
        .route("/_sim/outage", post(control::start_outage))
        .route("/_sim/denial", post(control::start_denial))
        .route(
            "/_sim/throttle",
            get(control::get_throttle).put(control::put_throttle),
        )
        .route(
            "/_sim/jobs/{printer_id}/{job_id}",
            put(control::put_job).get(control::get_job),
        )
        .route(
            "/_sim/jobs/{printer_id}/{job_id}/fault",
            put(control::put_job_fault)
                .get(control::get_job_fault)
                .delete(control::delete_job_fault),
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

/// A Graph route: counted, and behind the bearer check, the denial switch, the tenant
/// throttle and the fault injector, in that order (the last layer added runs first).
fn graph(sim: &Arc<Sim>, route: Route, endpoint: MethodRouter<Arc<Sim>>) -> MethodRouter<Arc<Sim>> {
    counted(
        sim,
        route,
        endpoint
            .layer(from_fn_with_state(Arc::clone(sim), inject_faults))
            .layer(from_fn_with_state(Arc::clone(sim), throttle_tenants))
            .layer(from_fn_with_state(Arc::clone(sim), deny_while_switched))
            .layer(from_fn_with_state(Arc::clone(sim), check_bearer)),
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

/// Refuses a call without a good bearer token, and leaves the checked token in the
/// request for the layers and extractors after it.
async fn check_bearer(State(sim): State<Arc<Sim>>, mut request: Request, next: Next) -> Response {
    match authenticate(&sim, request.headers()) {
        Ok(grant) => {
            request.extensions_mut().insert(grant);
            next.run(request).await
        }
        Err(failure) => failure.into_response(),
    }
}

/// Answers every call `403` while a denial is under way, as Graph does once an app's
/// consent is withdrawn.
async fn deny_while_switched(
    State(sim): State<Arc<Sim>>,
    request: Request,
    next: Next,
) -> Response {
    if sim.faults.denial_remaining().is_none() {
        return next.run(request).await;
    }
    GraphFailure::new(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
    .into_response()
}

/// Takes a token from the caller's tenant's bucket, or answers `429` with the wait for the
/// next one.
async fn throttle_tenants(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    // The bearer check runs first and always leaves a grant; without one there is no
    // tenant to count against.
    let verdict = match request.extensions().get::<Grant>() {
        Some(grant) => sim.throttle.take(grant.tenant()),
        None => Ok(()),
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(throttled) => GraphFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests from this tenant. Try again after the Retry-After delay.",
        )
        .with_header(RETRY_AFTER, HeaderValue::from(throttled.retry_after_secs))
        .into_response(),
    }
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
    // Zero sends no Retry-After at all: a plain outage, which a client must not take for
    // throttling.
    if fault.retry_after_secs == 0 {
        return failure.into_response();
    }
    failure
        .with_header(RETRY_AFTER, HeaderValue::from(fault.retry_after_secs))
        .into_response()
}
