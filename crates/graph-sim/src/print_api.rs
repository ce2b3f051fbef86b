//! The simulated Graph print API: `POST …/jobs/{jobId}/abort`, `GET …/jobs/{jobId}` and
//! `GET /print/printers`, with Graph's bearer-token and application-permission checks in
//! front of them, and the standing faults of single jobs (`job_faults`) before the job
//! table.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use super::Sim;
use super::model::{AbortOutcome, JobKey, JobSnapshot, JobState};
use super::reply::{GraphFailure, JobPath, JsonBody};
use super::tasks::{TaskSnapshot, TaskStatus};
use super::tokens::Grant;

/// Printers a listing without `$top` returns at most, as Graph pages its collections.
const DEFAULT_TOP: usize = 10;

/// An application permission a route needs: any one of `ROLES` in the token will do.
pub trait Permission {
    const ROLES: &'static [&'static str];
}

/// What `POST …/abort` needs, per the Graph reference.
pub enum AbortJobs {}

impl Permission for AbortJobs {
    const ROLES: &'static [&'static str] = &[
        "PrintJob.ReadWriteBasic.All",
        "PrintJob.ReadWrite.All",
        "PrintJob.Manage.All",
    ];
}

/// What `GET …/jobs/{jobId}` needs.
pub enum ReadJobs {}

impl Permission for ReadJobs {
    const ROLES: &'static [&'static str] = &[
        "PrintJob.ReadBasic.All",
        "PrintJob.Read.All",
        "PrintJob.ReadWriteBasic.All",
        "PrintJob.ReadWrite.All",
        "PrintJob.Manage.All",
    ];
}

/// What `GET /print/printers/{printerId}` (the worker's probe) and `GET /print/printers`
/// need.
pub enum ReadPrinters {}

impl Permission for ReadPrinters {
    const ROLES: &'static [&'static str] = &["Printer.Read.All", "Printer.ReadWrite.All"];
}

/// What the print-task routes need: the app's own task definitions and their tasks.
pub enum ManageTasks {}

impl Permission for ManageTasks {
    const ROLES: &'static [&'static str] = &["PrintTaskDefinition.ReadWrite.All"];
}

/// Checks the bearer token of a Graph call, refusing a bad one with Graph's `401`.
pub fn authenticate(sim: &Sim, headers: &HeaderMap) -> Result<Grant, GraphFailure> {
    sim.tokens.check(headers).map_err(|rejection| {
        GraphFailure::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            rejection.message(),
        )
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    })
}

/// Proof that the request's bearer token is valid (else `401`) and holds one of `P`'s
/// roles (else `403`). As an extractor it runs before the body is read, so a caller without
/// a good token learns that first, as with Graph. It takes the [`Grant`] that the routes'
/// bearer-check layer left in the request, and checks the token itself only without one.
pub struct Authorized<P>(PhantomData<P>);

impl<P: Permission> FromRequestParts<Arc<Sim>> for Authorized<P> {
    type Rejection = GraphFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        sim: &Arc<Sim>,
    ) -> Result<Self, Self::Rejection> {
        let checked;
        let grant = match parts.extensions.get::<Grant>() {
            Some(grant) => grant,
            None => {
                checked = authenticate(sim, &parts.headers)?;
                &checked
            }
        };
        if !grant.has_any_role(P::ROLES) {
            return Err(GraphFailure::new(
                StatusCode::FORBIDDEN,
                "accessDenied",
                format!(
                    "Insufficient privileges to complete the operation: the token needs one of \
                     the application permissions {}.",
                    P::ROLES.join(", ")
                ),
            ));
        }
        Ok(Self(PhantomData))
    }
}

/// The job of the path, for a job that has no standing fault: one that has is answered
/// with its fault here, before the body is read or the job table is consulted, so the
/// fault holds whether or not the table has the job.
pub struct FaultFreeJob(pub JobKey);

impl FromRequestParts<Arc<Sim>> for FaultFreeJob {
    type Rejection = GraphFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        sim: &Arc<Sim>,
    ) -> Result<Self, Self::Rejection> {
        let JobPath(key) = JobPath::from_request_parts(parts, sim).await?;
        match sim.job_faults.failure(&key) {
            Some(failure) => Err(failure),
            None => Ok(Self(key)),
        }
    }
}

/// The optional body of an abort call. Graph refuses properties it does not know, and so
/// does the simulator, so a misspelt `reason` is caught.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRequest {
    reason: Option<String>,
}

/// `POST /v1.0/print/printers/{printerId}/jobs/{jobId}/abort`.
pub async fn abort_job(
    _: Authorized<AbortJobs>,
    State(sim): State<Arc<Sim>>,
    FaultFreeJob(key): FaultFreeJob,
    JsonBody(body): JsonBody<Option<AbortRequest>>,
) -> Result<StatusCode, GraphFailure> {
    let reason = body.and_then(|body| body.reason);
    if sim.pull_printing && !sim.tasks.holds(&key) && sim.jobs.get(&key).is_some() {
        return Err(GraphFailure::bad_request(
            "The print job cannot be aborted: only a job held by a processing print task \
             started by a trigger that the calling application created can be aborted."
                .to_owned(),
        ));
    }
    match sim.jobs.abort(&key, reason, sim.auto_create_jobs) {
        AbortOutcome::Aborted => Ok(StatusCode::NO_CONTENT),
        AbortOutcome::NotAbortable(state) => Err(GraphFailure::bad_request(format!(
            "The print job is not in a state that can be aborted: it is '{state}', and only a \
             'processing' job can be aborted."
        ))),
        AbortOutcome::NotFound => Err(GraphFailure::job_not_found(&key)),
    }
}

/// `GET /v1.0/print/printers/{printerId}/jobs/{jobId}`: a printJob. Auto-creation does not
/// apply, so a look-up never invents a job.
pub async fn get_job(
    _: Authorized<ReadJobs>,
    State(sim): State<Arc<Sim>>,
    FaultFreeJob(key): FaultFreeJob,
) -> Result<Json<PrintJob>, GraphFailure> {
    let job = sim
        .jobs
        .get(&key)
        .ok_or_else(|| GraphFailure::job_not_found(&key))?;
    Ok(Json(job.into()))
}

/// `GET /v1.0/print/printers/{printerId}`: every well-formed printer id exists here (the
/// simulator keeps no printer registry), as the worker's probe needs. Query options such as
/// `$select` are accepted and ignored.
pub async fn get_printer(
    _: Authorized<ReadPrinters>,
    Path(printer_id): Path<String>,
) -> Result<Json<Printer>, GraphFailure> {
    if printer_id.is_empty()
        || printer_id.len() > 128
        || !printer_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(GraphFailure::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "The printer was not found.".to_owned(),
        ));
    }
    Ok(Json(Printer {
        display_name: format!("graph-sim printer {printer_id}"),
        id: printer_id,
    }))
}

/// `GET /v1.0/print/printers`: the distinct printers of the job table, in id order, at most
/// `$top` (10 without it). Other query options, such as `$select`, are accepted and ignored.
pub async fn list_printers(
    _: Authorized<ReadPrinters>,
    State(sim): State<Arc<Sim>>,
    uri: Uri,
) -> Result<Json<PrinterList>, GraphFailure> {
    let top = top(&uri)?;
    let value = sim
        .jobs
        .printers(top)
        .into_iter()
        .map(|id| Printer {
            display_name: format!("graph-sim printer {id}"),
            id,
        })
        .collect();
    Ok(Json(PrinterList { value }))
}

/// The `$top` query option, [`DEFAULT_TOP`] without one.
fn top(uri: &Uri) -> Result<usize, GraphFailure> {
    let query = uri.query().unwrap_or_default();
    let Some((_, value)) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name.eq_ignore_ascii_case("$top"))
    else {
        return Ok(DEFAULT_TOP);
    };
    value.trim().parse().map_err(|_| {
        GraphFailure::bad_request(format!(
            "Invalid $top value '{}': it must be a non-negative integer.",
            value.chars().take(32).collect::<String>()
        ))
    })
}

/// A page of printers, as Graph returns a collection.
#[derive(Serialize)]
pub struct PrinterList {
    value: Vec<Printer>,
}

/// The fields of a printer the simulator knows.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Printer {
    id: String,
    display_name: String,
}

/// A printJob as Graph returns it, fields in Graph's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrintJob {
    id: String,
    created_date_time: String,
    is_fetchable: bool,
    redirected_from: Option<String>,
    redirected_to: Option<String>,
    status: PrintJobStatus,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PrintJobStatus {
    state: JobState,
    description: &'static str,
    /// Graph's `printJobStateDetail` values; the simulator has none to give.
    details: Vec<&'static str>,
    is_acquired_by_printer: bool,
}

impl From<JobSnapshot> for PrintJob {
    fn from(job: JobSnapshot) -> Self {
        Self {
            id: job.job_id,
            created_date_time: job
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            is_fetchable: false,
            redirected_from: None,
            redirected_to: None,
            status: PrintJobStatus {
                state: job.state,
                description: job.state.description(),
                details: Vec::new(),
                is_acquired_by_printer: job.state.is_acquired_by_printer(),
            },
        }
    }
}

/// A collection, as Graph returns one.
#[derive(Serialize)]
pub struct Collection<T> {
    value: Vec<T>,
}

/// A `printTaskDefinition` of this app.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    id: String,
    display_name: String,
    created_by: AppIdentity,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppIdentity {
    app_id: String,
    display_name: String,
}

/// `GET /v1.0/print/taskDefinitions`: this app's task definitions.
pub async fn list_task_definitions(
    _: Authorized<ManageTasks>,
    State(sim): State<Arc<Sim>>,
) -> Json<Collection<TaskDefinition>> {
    let value = sim
        .tasks
        .definitions()
        .into_iter()
        .map(|(id, display_name)| TaskDefinition {
            id,
            created_by: AppIdentity {
                app_id: sim.client_id.clone(),
                display_name: display_name.clone(),
            },
            display_name,
        })
        .collect();
    Json(Collection { value })
}

/// `GET /v1.0/print/printers/{printerId}/jobs/{jobId}/tasks`: the job's print tasks.
pub async fn list_job_tasks(
    _: Authorized<ReadJobs>,
    State(sim): State<Arc<Sim>>,
    FaultFreeJob(key): FaultFreeJob,
) -> Result<Json<Collection<TaskSnapshot>>, GraphFailure> {
    if sim.jobs.get(&key).is_none() {
        return Err(GraphFailure::job_not_found(&key));
    }
    Ok(Json(Collection {
        value: sim.tasks.of_job(&key, &sim.base_url),
    }))
}

/// `GET /v1.0/print/taskDefinitions/{definitionId}/tasks/{taskId}`.
pub async fn get_task(
    _: Authorized<ManageTasks>,
    State(sim): State<Arc<Sim>>,
    Path((definition_id, task_id)): Path<(String, String)>,
) -> Result<Json<TaskSnapshot>, GraphFailure> {
    sim.tasks
        .get(&definition_id, &task_id, &sim.base_url)
        .map(Json)
        .ok_or_else(|| task_not_found(&task_id))
}

/// The body of a task update: its new status.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskUpdate {
    status: TaskStatus,
}

/// `PATCH /v1.0/print/taskDefinitions/{definitionId}/tasks/{taskId}`: sets the status.
pub async fn update_task(
    _: Authorized<ManageTasks>,
    State(sim): State<Arc<Sim>>,
    Path((definition_id, task_id)): Path<(String, String)>,
    JsonBody(update): JsonBody<TaskUpdate>,
) -> Result<Json<TaskSnapshot>, GraphFailure> {
    sim.tasks
        .update(&definition_id, &task_id, update.status, &sim.base_url)
        .map(Json)
        .ok_or_else(|| task_not_found(&task_id))
}

fn task_not_found(task_id: &str) -> GraphFailure {
    GraphFailure::new(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        format!(
            "The print task '{}' was not found.",
            task_id.chars().take(128).collect::<String>()
        ),
    )
}
