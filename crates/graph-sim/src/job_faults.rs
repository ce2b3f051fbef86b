//! Standing faults of single jobs: every abort and look-up of such a job is answered with a
//! set error, however often it is retried, so a client's handling of a job that will never
//! succeed (a permanent `403`, a `503` that outlasts every retry, a `400`, a huge error
//! body) can be tested while other jobs behave.
//!
//! The faults live in their own bounded map, apart from the job table: they outlive the
//! table's eviction of old jobs, and apply to jobs the table never held.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::model::JobKey;
use super::reply::GraphFailure;

/// Most job faults held at once; far more than a test sets, and a bound on what a
/// misbehaving control client can make the simulator keep.
pub const MAX_JOB_FAULTS: usize = 10_000;
/// Largest error body a job fault can ask for: room for a 30 MB body, and a bound on what
/// one reply can make the simulator allocate.
pub const MAX_FAULT_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How every abort and look-up of one job is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFault {
    /// The reply's status, 400 to 599, with a Graph error code to match (`accessDenied`
    /// for 403, `serviceNotAvailable` for 503, `badRequest` for 400, …).
    pub status: u16,
    /// The reply's `Retry-After`; none is sent without it, as for Graph's permanent errors.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Pads the error `message` so the whole body is about this many bytes, to test a
    /// client's cap on error bodies; at most [`MAX_FAULT_BODY_BYTES`].
    #[serde(default)]
    pub body_bytes: Option<usize>,
}

impl JobFault {
    /// A fault answering `status`, with no `Retry-After` and an ordinary body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            retry_after_secs: None,
            body_bytes: None,
        }
    }

    pub fn validate(&self) -> Result<(), InvalidJobFault> {
        if !(400..=599).contains(&self.status) {
            return Err(InvalidJobFault(format!(
                "status is {}; a job fault answers an error status, 400 to 599",
                self.status
            )));
        }
        if let Some(bytes) = self.body_bytes
            && bytes > MAX_FAULT_BODY_BYTES
        {
            return Err(InvalidJobFault(format!(
                "body_bytes is {bytes}; it must be at most {MAX_FAULT_BODY_BYTES}"
            )));
        }
        Ok(())
    }

    /// The reply for `key`. Built afresh per reply, so a padded body exists only while it
    /// is being sent.
    fn failure(&self, key: &JobKey) -> GraphFailure {
        // Validated on the way in, so the status is a real one.
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut failure = GraphFailure::new(
            status,
            graph_code(status),
            format!(
                "Simulated standing fault of print job '{}' on printer '{}': every call \
                 for this job answers {}.",
                key.job_id, key.printer_id, self.status
            ),
        );
        if let Some(seconds) = self.retry_after_secs {
            failure = failure.with_header(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(bytes) = self.body_bytes {
            failure = failure.with_body_bytes(bytes);
        }
        failure
    }
}

/// The Graph error code a status usually comes with.
fn graph_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "badRequest",
        401 => "InvalidAuthenticationToken",
        403 => "accessDenied",
        404 => "itemNotFound",
        409 => "conflict",
        423 => "resourceLocked",
        429 => "TooManyRequests",
        501 => "notSupported",
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        500..=599 => "generalException",
        _ => "invalidRequest",
    }
}

/// A job fault that makes no sense, or one too many.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job fault: {0}")]
pub struct InvalidJobFault(String);

/// The standing job faults, read by every abort and look-up and changed by the control API.
pub struct JobFaults {
    /// Read on every job call and written only by tests, hence a read-write lock.
    faults: RwLock<HashMap<JobKey, JobFault>>,
}

impl JobFaults {
    pub fn new() -> Self {
        Self {
            faults: RwLock::new(HashMap::new()),
        }
    }

    /// Sets or replaces the fault of `key`. Past [`MAX_JOB_FAULTS`] a new job is refused
    /// rather than an old fault dropped, so no test loses a fault it set without being told.
    pub fn set(&self, key: &JobKey, fault: JobFault) -> Result<(), InvalidJobFault> {
        fault.validate()?;
        let mut faults = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        if faults.len() >= MAX_JOB_FAULTS && !faults.contains_key(key) {
            return Err(InvalidJobFault(format!(
                "{MAX_JOB_FAULTS} jobs have faults already; clear some first"
            )));
        }
        faults.insert(key.clone(), fault);
        Ok(())
    }

    /// Clears the fault of `key`; returns whether it had one.
    pub fn clear(&self, key: &JobKey) -> bool {
        self.faults
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .is_some()
    }

    pub fn get(&self, key: &JobKey) -> Option<JobFault> {
        self.faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
    }

    /// The reply that replaces the real one for `key`, if it has a fault.
    pub fn failure(&self, key: &JobKey) -> Option<GraphFailure> {
        self.get(key).map(|fault| fault.failure(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(job: &str) -> JobKey {
        JobKey::new("printer", job)
    }

    #[test]
    fn a_fault_applies_to_its_job_only_until_cleared() {
        let faults = JobFaults::new();
        faults
            .set(&key("1"), JobFault::new(403))
            .expect("a valid fault");
        assert_eq!(faults.get(&key("1")), Some(JobFault::new(403)));
        assert!(faults.failure(&key("2")).is_none());
        assert!(faults.clear(&key("1")));
        assert!(!faults.clear(&key("1")));
        assert!(faults.failure(&key("1")).is_none());
    }

    #[test]
    fn statuses_outside_errors_and_huge_bodies_are_refused() {
        let faults = JobFaults::new();
        for status in [0, 200, 204, 399, 600] {
            assert!(faults.set(&key("1"), JobFault::new(status)).is_err());
        }
        let huge = JobFault {
            body_bytes: Some(MAX_FAULT_BODY_BYTES + 1),
            ..JobFault::new(503)
        };
        assert!(faults.set(&key("1"), huge).is_err());
        let largest = JobFault {
            body_bytes: Some(MAX_FAULT_BODY_BYTES),
            ..JobFault::new(503)
        };
        assert!(faults.set(&key("1"), largest).is_ok());
    }

    #[test]
    fn the_map_is_bounded_but_held_faults_can_be_replaced() {
        let faults = JobFaults::new();
        for job in 0..MAX_JOB_FAULTS {
            faults
                .set(&key(&job.to_string()), JobFault::new(503))
                .expect("room for it");
        }
        assert!(faults.set(&key("one more"), JobFault::new(503)).is_err());
        assert!(faults.set(&key("0"), JobFault::new(400)).is_ok());
    }

    #[test]
    fn codes_follow_the_status() {
        assert_eq!(graph_code(StatusCode::FORBIDDEN), "accessDenied");
        assert_eq!(
            graph_code(StatusCode::SERVICE_UNAVAILABLE),
            "serviceNotAvailable"
        );
        assert_eq!(graph_code(StatusCode::BAD_REQUEST), "badRequest");
        assert_eq!(graph_code(StatusCode::BAD_GATEWAY), "generalException");
        assert_eq!(graph_code(StatusCode::GONE), "invalidRequest");
    }
}
