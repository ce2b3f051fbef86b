//! The control API under `/_sim/`: seed and read jobs, change faults, start an outage,
//! revoke tokens and read the counters of a running simulator from outside its process.
//! Each endpoint and the matching [`GraphSim`](super::GraphSim) method call the same
//! operation on the shared state, so the two ways cannot drift apart.
//!
//! | method and path | body | reply |
//! |---|---|---|
//! | `GET /_sim/faults` | | the faults and the outage time left |
//! | `PUT /_sim/faults` | [`Faults`] as JSON; missing fields are zero | the same as `GET` |
//! | `POST /_sim/outage` | `{"seconds": 30}`; `0` ends an outage | the same as `GET /_sim/faults` |
//! | `PUT /_sim/jobs/{printerId}/{jobId}` | `{"state": "processing"}` | the job |
//! | `GET /_sim/jobs/{printerId}/{jobId}` | | the job, or `404` |
//! | `POST /_sim/tokens/revoke` | | `204`; every token issued so far is refused |
//! | `GET /_sim/stats` | | [`SimStats`] |

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::Sim;
use super::faults::{Faults, FaultsStatus};
use super::model::{JobSnapshot, JobState};
use super::reply::{GraphFailure, JobPath, JsonBody};
use super::stats::SimStats;

/// The body of `POST /_sim/outage`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageRequest {
    /// Fractions allowed, so tests can ask for a few hundred milliseconds.
    seconds: f64,
}

/// The body of `PUT /_sim/jobs/{printerId}/{jobId}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedJob {
    state: JobState,
}

pub async fn get_faults(State(sim): State<Arc<Sim>>) -> Json<FaultsStatus> {
    Json(sim.faults.status())
}

pub async fn put_faults(
    State(sim): State<Arc<Sim>>,
    JsonBody(faults): JsonBody<Faults>,
) -> Result<Json<FaultsStatus>, GraphFailure> {
    sim.faults
        .set(faults)
        .map_err(|error| GraphFailure::bad_request(error.to_string()))?;
    Ok(Json(sim.faults.status()))
}

pub async fn start_outage(
    State(sim): State<Arc<Sim>>,
    JsonBody(request): JsonBody<OutageRequest>,
) -> Result<Json<FaultsStatus>, GraphFailure> {
    let duration = Duration::try_from_secs_f64(request.seconds).map_err(|_| {
        GraphFailure::bad_request(format!(
            "seconds is {}; it must be a non-negative number of seconds",
            request.seconds
        ))
    })?;
    sim.faults.start_outage(duration);
    Ok(Json(sim.faults.status()))
}

pub async fn put_job(
    State(sim): State<Arc<Sim>>,
    JobPath(key): JobPath,
    JsonBody(seed): JsonBody<SeedJob>,
) -> Json<JobSnapshot> {
    Json(sim.jobs.seed(&key, seed.state))
}

pub async fn get_job(
    State(sim): State<Arc<Sim>>,
    JobPath(key): JobPath,
) -> Result<Json<JobSnapshot>, GraphFailure> {
    sim.jobs
        .get(&key)
        .map(Json)
        .ok_or_else(|| GraphFailure::job_not_found(&key))
}

pub async fn revoke_tokens(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.tokens.revoke_all();
    StatusCode::NO_CONTENT
}

pub async fn get_stats(State(sim): State<Arc<Sim>>) -> Json<SimStats> {
    Json(sim.stats())
}
