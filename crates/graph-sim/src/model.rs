//! The simulator's print jobs: their states, and the bounded in-memory table that holds them.
//!
//! Graph's abort only succeeds on a job that is `processing`; every other state refuses it.
//! The table is split into shards, each behind its own short-lived `Mutex`, so concurrent
//! requests for different jobs rarely wait on each other. It holds at most a configured
//! number of jobs and forgets the oldest first, so a long benchmark that auto-creates jobs
//! cannot grow memory without bound.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most shards the table is split into; two cores gain nothing from more.
const MAX_SHARDS: usize = 16;

/// A print job's processing state, as Graph's `printJobProcessingState` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    Pending,
    Processing,
    Paused,
    Stopped,
    Completed,
    Canceled,
    Aborted,
}

impl JobState {
    /// The name Graph uses on the wire, e.g. `"processing"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Completed => "completed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
        }
    }

    /// The human text of a printJob's `status.description`.
    pub fn description(self) -> &'static str {
        match self {
            Self::Pending => "The job is waiting to be processed.",
            Self::Processing => "The job is being processed.",
            Self::Paused => "The job is paused.",
            Self::Stopped => "The job is stopped.",
            Self::Completed => "The job has been printed.",
            Self::Canceled => "The job was canceled.",
            Self::Aborted => "The job was aborted.",
        }
    }

    /// Whether a printer has picked the job up, for `status.isAcquiredByPrinter`.
    pub fn is_acquired_by_printer(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the simulator knows about one job, as tests and the control API see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub printer_id: String,
    pub job_id: String,
    pub state: JobState,
    /// The `reason` of the abort that succeeded, if it had one.
    pub abort_reason: Option<String>,
    /// Abort calls that reached this job with a valid token, successful or not, so tests
    /// can tell how often a client retried a call that is not idempotent.
    pub abort_requests: u32,
    pub created_at: DateTime<Utc>,
}

/// A job's address: its printer and its id on that printer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub printer_id: String,
    pub job_id: String,
}

impl JobKey {
    pub fn new(printer_id: &str, job_id: &str) -> Self {
        Self {
            printer_id: printer_id.to_owned(),
            job_id: job_id.to_owned(),
        }
    }

    /// The job's Graph URL under `base` (`…/v1.0`), as a print task's `parentUrl` has it.
    pub fn url(&self, base: &str) -> String {
        format!(
            "{base}/print/printers/{}/jobs/{}",
            self.printer_id, self.job_id
        )
    }
}

/// How an abort call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortOutcome {
    Aborted,
    /// The job exists but is not `processing`.
    NotAbortable(JobState),
    NotFound,
}

#[derive(Debug)]
struct Job {
    state: JobState,
    abort_reason: Option<String>,
    abort_requests: u32,
    created_at: DateTime<Utc>,
}

impl Job {
    fn new(state: JobState) -> Self {
        Self {
            state,
            abort_reason: None,
            abort_requests: 0,
            created_at: Utc::now(),
        }
    }

    fn snapshot(&self, key: &JobKey) -> JobSnapshot {
        JobSnapshot {
            printer_id: key.printer_id.clone(),
            job_id: key.job_id.clone(),
            state: self.state,
            abort_reason: self.abort_reason.clone(),
            abort_requests: self.abort_requests,
            created_at: self.created_at,
        }
    }
}

#[derive(Default)]
struct Shard {
    jobs: HashMap<Arc<JobKey>, Job>,
    /// Keys in the order they were first stored, to find the oldest job to forget.
    arrival: VecDeque<Arc<JobKey>>,
}

impl Shard {
    /// Stores a new job, forgetting the oldest ones while the shard is full.
    /// Returns how many were forgotten.
    fn insert(&mut self, key: &JobKey, job: Job, capacity: usize) -> u64 {
        let mut evicted = 0;
        while self.jobs.len() >= capacity {
            let Some(oldest) = self.arrival.pop_front() else {
                break;
            };
            self.jobs.remove(&oldest);
            evicted += 1;
        }
        let key = Arc::new(key.clone());
        self.arrival.push_back(Arc::clone(&key));
        self.jobs.insert(key, job);
        evicted
    }
}

/// The job table: sharded, bounded, and safe to share between request tasks.
pub struct JobStore {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hasher: RandomState,
    evicted: AtomicU64,
}

impl JobStore {
    /// A table for about `max_jobs` jobs (at least one; the cap is rounded up to a whole
    /// number of jobs per shard).
    pub fn new(max_jobs: usize) -> Self {
        let max_jobs = max_jobs.max(1);
        let shard_count = max_jobs.min(MAX_SHARDS);
        Self {
            shards: (0..shard_count).map(|_| Mutex::default()).collect(),
            shard_capacity: max_jobs.div_ceil(shard_count),
            hasher: RandomState::new(),
            evicted: AtomicU64::new(0),
        }
    }

    /// Sets a job's state, creating the job if needed. A job that existed starts afresh:
    /// its abort reason and abort count are cleared, so a test can reuse an id.
    pub fn seed(&self, key: &JobKey, state: JobState) -> JobSnapshot {
        let mut shard = self.shard(key);
        let job = Job::new(state);
        let snapshot = job.snapshot(key);
        match shard.jobs.get_mut(key) {
            Some(existing) => *existing = job,
            None => {
                let evicted = shard.insert(key, job, self.shard_capacity);
                self.count_evicted(evicted);
            }
        }
        snapshot
    }

    pub fn get(&self, key: &JobKey) -> Option<JobSnapshot> {
        self.shard(key).jobs.get(key).map(|job| job.snapshot(key))
    }

    /// Aborts a `processing` job and records the reason. With `auto_create`, an unknown job
    /// is first created in `processing`, so load tests need not seed every id.
    pub fn abort(&self, key: &JobKey, reason: Option<String>, auto_create: bool) -> AbortOutcome {
        let mut shard = self.shard(key);
        if !shard.jobs.contains_key(key) {
            if !auto_create {
                return AbortOutcome::NotFound;
            }
            let evicted = shard.insert(key, Job::new(JobState::Processing), self.shard_capacity);
            self.count_evicted(evicted);
        }
        let Some(job) = shard.jobs.get_mut(key) else {
            return AbortOutcome::NotFound;
        };
        job.abort_requests = job.abort_requests.saturating_add(1);
        if job.state != JobState::Processing {
            return AbortOutcome::NotAbortable(job.state);
        }
        job.state = JobState::Aborted;
        job.abort_reason = reason;
        AbortOutcome::Aborted
    }

    /// The first `limit` distinct printer ids among the jobs held, in id order, so a listing
    /// is the same from one call to the next. Holds no more than `limit` ids at a time,
    /// however many printers the table knows.
    pub fn printers(&self, limit: usize) -> Vec<String> {
        if limit == 0 {
            return Vec::new();
        }
        let mut first: BTreeSet<String> = BTreeSet::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for key in shard.jobs.keys() {
                let id = &key.printer_id;
                // Past every id kept when the set is full: it could only be dropped again.
                let beyond = first.len() >= limit && first.last().is_some_and(|last| id > last);
                if beyond || first.contains(id) {
                    continue;
                }
                first.insert(id.clone());
                if first.len() > limit {
                    first.pop_last();
                }
            }
        }
        first.into_iter().collect()
    }

    /// Jobs held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).jobs.len()).sum()
    }

    /// Jobs forgotten so far to stay under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn shard(&self, key: &JobKey) -> MutexGuard<'_, Shard> {
        // The modulo keeps the index below the shard count, which fits in usize.
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        lock(&self.shards[index])
    }

    fn count_evicted(&self, evicted: u64) {
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }
}

/// Nothing done under a shard's lock can panic half-way through an update, so a poisoned
/// lock still guards a consistent shard.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(job: &str) -> JobKey {
        JobKey::new("printer", job)
    }

    #[test]
    fn only_a_processing_job_can_be_aborted() {
        let store = JobStore::new(100);
        store.seed(&key("1"), JobState::Processing);
        assert_eq!(
            store.abort(&key("1"), Some("policy".into()), false),
            AbortOutcome::Aborted
        );
        assert_eq!(
            store.abort(&key("1"), None, false),
            AbortOutcome::NotAbortable(JobState::Aborted)
        );
        let job = store.get(&key("1")).expect("the job is held");
        assert_eq!(job.state, JobState::Aborted);
        assert_eq!(job.abort_reason.as_deref(), Some("policy"));
        assert_eq!(job.abort_requests, 2);
    }

    #[test]
    fn unknown_jobs_are_created_only_when_asked() {
        let store = JobStore::new(100);
        assert_eq!(store.abort(&key("9"), None, false), AbortOutcome::NotFound);
        assert_eq!(store.len(), 0);
        assert_eq!(store.abort(&key("9"), None, true), AbortOutcome::Aborted);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn printers_are_listed_once_each_in_id_order_up_to_the_limit() {
        let store = JobStore::new(100);
        assert!(store.printers(10).is_empty());
        for (printer, job) in [("b", "1"), ("a", "1"), ("b", "2"), ("c", "1"), ("a", "2")] {
            store.seed(
                &JobKey {
                    printer_id: printer.into(),
                    job_id: job.into(),
                },
                JobState::Processing,
            );
        }
        assert_eq!(store.printers(10), ["a", "b", "c"]);
        assert_eq!(store.printers(2), ["a", "b"]);
        assert!(store.printers(0).is_empty());
    }

    #[test]
    fn the_oldest_job_is_forgotten_past_the_cap() {
        let store = JobStore::new(1);
        store.seed(&key("1"), JobState::Processing);
        store.seed(&key("2"), JobState::Processing);
        assert_eq!(store.get(&key("1")), None);
        assert!(store.get(&key("2")).is_some());
        assert_eq!(store.evicted(), 1);
        // Reseeding a held job replaces it in place and forgets nothing.
        store.seed(&key("2"), JobState::Completed);
        assert_eq!(store.evicted(), 1);
    }
}
