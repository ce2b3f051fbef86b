//! The simulated Graph print API: `POST …/jobs/{jobId}/abort` and `GET …/jobs/{jobId}`,
//! with Graph's bearer-token and application-permission checks in front of them.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::Sim;
use super::model::{AbortOutcome, JobSnapshot, JobState};
use super::reply::{GraphFailure, JobPath, JsonBody};

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

/// Proof that the request's bearer token is valid (else `401`) and holds one of `P`'s
/// roles (else `403`). As an extractor it runs before the body is read, so a caller without
/// a good token learns that first, as with Graph.
pub struct Authorized<P>(PhantomData<P>);

impl<P: Permission> FromRequestParts<Arc<Sim>> for Authorized<P> {
    type Rejection = GraphFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        sim: &Arc<Sim>,
    ) -> Result<Self, Self::Rejection> {
        let grant = sim.tokens.check(&parts.headers).map_err(|rejection| {
            GraphFailure::new(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                rejection.message(),
            )
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
        })?;
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
    JobPath(key): JobPath,
    JsonBody(body): JsonBody<Option<AbortRequest>>,
) -> Result<StatusCode, GraphFailure> {
    let reason = body.and_then(|body| body.reason);
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
    JobPath(key): JobPath,
) -> Result<Json<PrintJob>, GraphFailure> {
    let job = sim
        .jobs
        .get(&key)
        .ok_or_else(|| GraphFailure::job_not_found(&key))?;
    Ok(Json(job.into()))
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
