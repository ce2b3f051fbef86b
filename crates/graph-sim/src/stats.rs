//! Request counters, so tests and benchmarks can check what a client actually sent:
//! token requests, abort calls, job look-ups and printer listings, each by the status they
//! were answered with.
//!
//! Every status a reply can have gets its own atomic counter, so counting takes no lock
//! and costs one relaxed add per request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// HTTP status codes run from 100 to 599.
const STATUS_SLOTS: usize = 600;

/// The routes that are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Token,
    Abort,
    GetJob,
    GetPrinter,
    ListPrinters,
    Tasks,
}

/// Replies of one route by status, lock-free.
struct StatusCounters(Box<[AtomicU64]>);

impl StatusCounters {
    fn new() -> Self {
        Self((0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect())
    }

    fn record(&self, status: StatusCode) {
        if let Some(slot) = self.0.get(usize::from(status.as_u16())) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> RouteStats {
        let by_status: BTreeMap<u16, u64> = (0u16..)
            .zip(self.0.iter())
            .map(|(status, slot)| (status, slot.load(Ordering::Relaxed)))
            .filter(|&(_, count)| count > 0)
            .collect();
        RouteStats {
            requests: by_status.values().sum(),
            by_status,
        }
    }
}

/// The live counters of one simulator.
pub struct Stats {
    token: StatusCounters,
    abort: StatusCounters,
    get_job: StatusCounters,
    get_printer: StatusCounters,
    list_printers: StatusCounters,
    tasks: StatusCounters,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            token: StatusCounters::new(),
            abort: StatusCounters::new(),
            get_job: StatusCounters::new(),
            get_printer: StatusCounters::new(),
            list_printers: StatusCounters::new(),
            tasks: StatusCounters::new(),
        }
    }

    pub fn record(&self, route: Route, status: StatusCode) {
        match route {
            Route::Token => &self.token,
            Route::Abort => &self.abort,
            Route::GetJob => &self.get_job,
            Route::GetPrinter => &self.get_printer,
            Route::ListPrinters => &self.list_printers,
            Route::Tasks => &self.tasks,
        }
        .record(status);
    }

    pub fn snapshot(&self, jobs_held: u64, jobs_evicted: u64) -> SimStats {
        SimStats {
            token: self.token.snapshot(),
            abort: self.abort.snapshot(),
            get_job: self.get_job.snapshot(),
            get_printer: self.get_printer.snapshot(),
            list_printers: self.list_printers.snapshot(),
            tasks: self.tasks.snapshot(),
            jobs_held,
            jobs_evicted,
        }
    }
}

/// Replies of one route: how many, and how many of each status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    /// Requests answered (a request whose client left before the reply is not counted).
    pub requests: u64,
    /// Replies by HTTP status; statuses never sent are left out.
    pub by_status: BTreeMap<u16, u64>,
}

impl RouteStats {
    /// Replies with `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// A snapshot of the simulator's counters, as `GET /_sim/stats` returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// `POST /{tenant}/oauth2/v2.0/token`; status 200 means a token was issued.
    pub token: RouteStats,
    /// `POST …/jobs/{jobId}/abort`, injected faults included.
    pub abort: RouteStats,
    /// `GET …/jobs/{jobId}`, injected faults included.
    pub get_job: RouteStats,
    /// `GET /v1.0/print/printers`, injected faults included. Defaults when absent, so
    /// stats written before the route existed still read.
    #[serde(default)]
    /// `GET /print/printers/{printerId}`: the worker's probe.
    pub get_printer: RouteStats,
    pub list_printers: RouteStats,
    /// The print-task routes: task definitions, a job's tasks, a task's read and update.
    pub tasks: RouteStats,
    /// Jobs in the table now.
    pub jobs_held: u64,
    /// Jobs forgotten to stay under the table's cap.
    pub jobs_evicted: u64,
}

impl SimStats {
    pub fn tokens_issued(&self) -> u64 {
        self.token.count(200)
    }
}
