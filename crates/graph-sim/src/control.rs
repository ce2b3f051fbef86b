//! The control API under `/_sim/`: seed and read jobs, change faults, start an outage or
//! a denial, throttle tenants, give single jobs standing faults, revoke tokens and read the
//! counters of a running simulator from outside its process. Each endpoint and the matching
//! [`GraphSim`](super::GraphSim) method call the same operation on the shared state, so the
//! two ways cannot drift apart. Bodies that make no sense are refused with `400`.
//!
//! | method and path | body | reply |
//! |---|---|---|
//! | `GET /_sim/faults` | | the faults, and the outage and denial time left (`outage_remaining`, `denial_remaining`) |
//! | `PUT /_sim/faults` | [`Faults`] as JSON; missing fields are zero | the same as `GET` |
//! | `POST /_sim/outage` | `{"seconds": 30}`; `0` ends an outage | the same as `GET /_sim/faults` |
//! | `POST /_sim/denial` | `{"seconds": 8}`: every Graph call `403 Authorization_RequestDenied` meanwhile; `0` ends a denial | the same as `GET /_sim/faults` |
//! | `GET /_sim/throttle` | | the [`Throttle`], or `null` when off |
//! | `PUT /_sim/throttle` | a [`Throttle`]: `{"requests_per_second": 40, "burst": 40, "tenants": ["contoso"]}`, `burst` and `tenants` optional; `null` or an empty body turns it off; every bucket starts full | the same as `GET` |
//! | `PUT /_sim/jobs/{printerId}/{jobId}` | `{"state": "processing"}` | the job |
//! | `GET /_sim/jobs/{printerId}/{jobId}` | | the job, or `404` |
//! | `PUT /_sim/jobs/{printerId}/{jobId}/fault` | a [`JobFault`]: `{"status": 503, "retry_after_secs": 5, "body_bytes": 1000000}`, the last two optional; the job need not exist | the fault |
//! | `GET /_sim/jobs/{printerId}/{jobId}/fault` | | the fault, or `404` |
//! | `DELETE /_sim/jobs/{printerId}/{jobId}/fault` | | `204`, whether or not there was one |
//! | `POST /_sim/jobs/{printerId}/{jobId}/start` | | the job starts (`processing`); `{"taskDefinitionId": …, "taskId": …}` of the print task that holds it, or nulls without a trigger |
//! | `POST /_sim/taskDefinitions` | `{"displayName": "Print policy"}` | `{"id": …}` of the new task definition |
//! | `PUT /_sim/printers/{printerId}/trigger` | `{"definitionId": …}`: a `jobStarted` trigger of that definition | `204`, or `404` for an unknown definition |
//! | `POST /_sim/tokens/revoke` | | `204`; every token issued so far is refused |
//! | `GET /_sim/stats` | | [`SimStats`] |

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::Sim;
use super::faults::{Faults, FaultsStatus};
use super::job_faults::JobFault;
use super::model::{JobSnapshot, JobState};
use super::reply::{GraphFailure, JobPath, JsonBody};
use super::stats::SimStats;
use super::throttle::Throttle;

/// The body of `POST /_sim/outage` and `POST /_sim/denial`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpellRequest {
    /// Fractions allowed, so tests can ask for a few hundred milliseconds.
    seconds: f64,
}

impl SpellRequest {
    fn duration(&self) -> Result<Duration, GraphFailure> {
        Duration::try_from_secs_f64(self.seconds).map_err(|_| {
            GraphFailure::bad_request(format!(
                "seconds is {}; it must be a non-negative number of seconds",
                self.seconds
            ))
        })
    }
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
    JsonBody(request): JsonBody<SpellRequest>,
) -> Result<Json<FaultsStatus>, GraphFailure> {
    sim.faults.start_outage(request.duration()?);
    Ok(Json(sim.faults.status()))
}

pub async fn start_denial(
    State(sim): State<Arc<Sim>>,
    JsonBody(request): JsonBody<SpellRequest>,
) -> Result<Json<FaultsStatus>, GraphFailure> {
    sim.faults.start_denial(request.duration()?);
    Ok(Json(sim.faults.status()))
}

pub async fn get_throttle(State(sim): State<Arc<Sim>>) -> Json<Option<Throttle>> {
    Json(sim.throttle.settings())
}

pub async fn put_throttle(
    State(sim): State<Arc<Sim>>,
    JsonBody(throttle): JsonBody<Option<Throttle>>,
) -> Result<Json<Option<Throttle>>, GraphFailure> {
    sim.throttle
        .set(throttle)
        .map_err(|error| GraphFailure::bad_request(error.to_string()))?;
    Ok(Json(sim.throttle.settings()))
}

pub async fn put_job_fault(
    State(sim): State<Arc<Sim>>,
    JobPath(key): JobPath,
    JsonBody(fault): JsonBody<JobFault>,
) -> Result<Json<JobFault>, GraphFailure> {
    sim.job_faults
        .set(&key, fault)
        .map_err(|error| GraphFailure::bad_request(error.to_string()))?;
    Ok(Json(fault))
}

pub async fn get_job_fault(
    State(sim): State<Arc<Sim>>,
    JobPath(key): JobPath,
) -> Result<Json<JobFault>, GraphFailure> {
    sim.job_faults.get(&key).map(Json).ok_or_else(|| {
        GraphFailure::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            format!(
                "The print job '{}' on printer '{}' has no fault.",
                key.job_id, key.printer_id
            ),
        )
    })
}

pub async fn delete_job_fault(State(sim): State<Arc<Sim>>, JobPath(key): JobPath) -> StatusCode {
    sim.job_faults.clear(&key);
    StatusCode::NO_CONTENT
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

/// The print task holding a started job, if a trigger created one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartedJob {
    task_definition_id: Option<String>,
    task_id: Option<String>,
}

pub async fn start_job(State(sim): State<Arc<Sim>>, JobPath(key): JobPath) -> Json<StartedJob> {
    let task = sim.start_job(&key);
    Json(StartedJob {
        task_definition_id: task.as_ref().map(|(definition, _)| definition.clone()),
        task_id: task.map(|(_, task)| task),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDefinition {
    display_name: String,
}

#[derive(Serialize)]
pub struct Created {
    id: String,
}

pub async fn create_task_definition(
    State(sim): State<Arc<Sim>>,
    JsonBody(new): JsonBody<NewDefinition>,
) -> (StatusCode, Json<Created>) {
    let id = sim.tasks.create_definition(&new.display_name);
    (StatusCode::CREATED, Json(Created { id }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTrigger {
    definition_id: String,
}

pub async fn put_trigger(
    State(sim): State<Arc<Sim>>,
    Path(printer_id): Path<String>,
    JsonBody(trigger): JsonBody<NewTrigger>,
) -> Result<StatusCode, GraphFailure> {
    if sim.tasks.set_trigger(&printer_id, &trigger.definition_id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(GraphFailure::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "No task definition has that id.",
        ))
    }
}
