//! The per-command step: `handle(command) -> Disposition`.
//!
//! Everything between a valid command and its outcome happens here — tokens, the tenant's
//! throttling gate, the abort call, retries with backoff, the 401 renewal, reconciling a
//! refused abort against the job's state, expiry, and judging whether a failure is the
//! command's or the service's — with no broker in sight, so it can be tested on its own.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Span;

use crate::auth::{AccessToken, AuthError, TokenProvider};
use crate::breaker::{CircuitBreaker, Judgement, Suspicion, Ticket, judge};
use crate::command::{AbortCommand, PrintTask, ResourceId};
use crate::config::Settings;
use crate::graph::{GraphClient, GraphReply};
use crate::outcome::{ErrorKind, Outcome, OutcomeKind, TaskError, TaskReport};
use crate::retry::{RetryPolicy, Verdict, classify};
use crate::telemetry::metrics;
use crate::telemetry::trace::TraceContext;
use crate::throttle::{Pass, TenantGate, Throttle};

mod setup;
#[cfg(test)]
mod tests;

pub use setup::{SetupError, http_client};

/// The Graph job state that means the abort already happened.
const ABORTED: &str = "aborted";

/// The state a print task is reported in once its job is aborted: the state Microsoft's
/// pull-printing samples set when the app is done with a job.
const TASK_DONE: &str = "completed";

/// Job states in which Graph could still abort the job: a refusal then has a reason other
/// than the job having ended.
const JOB_LIVE: &[&str] = &["pending", "processing", "paused", "stopped"];

/// Print task states after which an update is not needed.
const TASK_FINISHED: &[&str] = &["completed", "aborted"];

/// How long one probe's answer stands for every command that asks: a burst of refused
/// commands shares one probe instead of sending one each.
const PROBE_FRESH: Duration = Duration::from_secs(1);

/// Throttled replies in a row, each while other commands of the tenant got through, after
/// which a command's throttling is its own problem and its waits count towards its budget.
/// A command that is merely unlucky under a tenant-wide limit is throttled this often in a
/// row with a probability of (share of 429s)^5, far below one in ten thousand.
const THROTTLED_ALONE: u32 = 5;

/// What the handler needs to know of the settings.
#[derive(Debug, Clone)]
pub struct HandlerLimits {
    /// `pause.verdict_wait`.
    pub verdict_wait: Duration,
    /// `worker.concurrency`.
    pub concurrency: NonZeroUsize,
    /// `worker.max_hold`: the delivery goes back to the queue before the broker's
    /// consumer timeout would close the channel.
    pub max_hold: Duration,
}

impl HandlerLimits {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            verdict_wait: settings.pause.verdict_wait,
            concurrency: settings.worker.concurrency,
            max_hold: settings.worker.max_hold,
        }
    }
}

/// Carries out abort commands against Graph.
#[derive(Debug, Clone)]
pub struct AbortHandler {
    graph: GraphClient,
    tokens: Arc<TokenProvider>,
    retry: RetryPolicy,
    breaker: Arc<CircuitBreaker>,
    throttle: Arc<Throttle>,
    limits: HandlerLimits,
    probe: Arc<Probe>,
    /// `worker.concurrency` Graph requests in flight at most. A command holds a slot only
    /// for its request, not while it waits at a gate or between retries, so commands that
    /// wait never keep others from Graph.
    requests: Arc<Semaphore>,
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The command has its outcome.
    Settled(Outcome),
    /// The failure was the service's, not the command's: the worker pauses and the command
    /// goes back to the queue without an outcome.
    Paused,
    /// The command was held for `worker.max_hold` without an outcome (throttled or retried
    /// for that long): it goes back to the queue before the broker's consumer timeout.
    HeldTooLong,
}

/// Why an attempt did not settle the command, when another attempt might.
struct Transient {
    description: String,
    retry_after: Option<Duration>,
    reply: Option<(u16, Option<String>)>,
}

impl Transient {
    fn from_reply(reply: &GraphReply) -> Self {
        Self {
            description: reply.describe(),
            retry_after: reply.retry_after,
            reply: Some((reply.status, reply.request_id.clone())),
        }
    }

    fn without_reply(description: String) -> Self {
        Self {
            description,
            retry_after: None,
            reply: None,
        }
    }

    fn exhausted(self, attempts: u32, elapsed: Duration) -> Outcome {
        let outcome = Outcome::failed(
            attempts,
            ErrorKind::Exhausted,
            format!(
                "gave up after {attempts} attempts in {:.1}s; last: {}",
                elapsed.as_secs_f64(),
                self.description
            ),
        );
        match self.reply {
            Some((status, request_id)) => outcome.with_reply(status, request_id),
            None => outcome,
        }
    }
}

/// The throttling history of one command, to tell a throttled tenant (its commands wait,
/// and the wait does not count towards their budget) from one command refused again and
/// again while others get through.
struct Throttling {
    /// Time spent at the tenant's gate: flow control, not this command's failure.
    excused: Duration,
    /// Throttled replies in a row while other commands of the tenant got through.
    alone: u32,
    /// The tenant's successes at this command's last throttled reply.
    successes_then: Option<u64>,
}

impl Throttling {
    fn new() -> Self {
        Self {
            excused: Duration::ZERO,
            alone: 0,
            successes_then: None,
        }
    }

    /// A throttled reply; returns `true` when it counts as this command's own failure.
    fn throttled(&mut self, gate: &TenantGate) -> bool {
        let successes = gate.successes();
        if self.successes_then.is_some_and(|then| successes > then) {
            self.alone += 1;
        } else {
            self.alone = 0;
        }
        self.successes_then = Some(successes);
        self.alone >= THROTTLED_ALONE
    }
}

impl AbortHandler {
    pub fn new(
        graph: GraphClient,
        tokens: Arc<TokenProvider>,
        retry: RetryPolicy,
        breaker: Arc<CircuitBreaker>,
        throttle: Arc<Throttle>,
        limits: HandlerLimits,
    ) -> Self {
        Self {
            graph,
            tokens,
            retry,
            breaker,
            throttle,
            requests: Arc::new(Semaphore::new(limits.concurrency.get())),
            limits,
            probe: Arc::default(),
        }
    }

    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// Aborts the command's print job, retrying transient failures within the budget, then
    /// reports its print task finished when it names one. Records `attempt` and
    /// `graph_request_id` on the current span as they become known. Graph requests are
    /// child spans of `trace`.
    pub async fn handle(&self, command: &AbortCommand, trace: &TraceContext) -> Disposition {
        let started = Instant::now();
        let disposition = self.abort_job(command, trace, started).await;
        match (disposition, &command.task) {
            (Disposition::Settled(outcome), Some(task)) => Disposition::Settled(
                self.finish_task(command, task, outcome, started, trace)
                    .await,
            ),
            (disposition, _) => disposition,
        }
    }

    async fn abort_job(
        &self,
        command: &AbortCommand,
        trace: &TraceContext,
        started: Instant,
    ) -> Disposition {
        self.probe.saw(&command.printer_id);
        let ticket = self.breaker.ticket();
        let tenant = command.tenant_id.as_deref();
        let gate = self
            .throttle
            .gate(tenant.unwrap_or(self.tokens.default_tenant()));
        let mut schedule = self.retry.schedule();
        let mut throttling = Throttling::new();
        let mut attempts = 0u32;
        let mut renewed_token = false;
        // The breaker's success count at this command's first failure.
        let mut failed_since: Option<u64> = None;
        loop {
            let arrived = Instant::now();
            let pass = tokio::select! {
                pass = gate.admit() => pass,
                () = self.breaker.opened() => return Disposition::Paused,
            };
            throttling.excused += arrived.elapsed();
            if self.breaker.is_open() {
                return Disposition::Paused;
            }
            if let Some(deadline) = command.expires_at
                && command.is_expired(Utc::now())
            {
                return Disposition::Settled(Outcome::failed(
                    attempts,
                    ErrorKind::Expired,
                    format!("the command expired at {}", deadline.to_rfc3339()),
                ));
            }
            if started.elapsed() >= self.limits.max_hold {
                tracing::warn!(
                    held_s = started.elapsed().as_secs(),
                    "held for worker.max_hold without an outcome; returning it to the queue"
                );
                return Disposition::HeldTooLong;
            }
            let successes = self.breaker.successes();
            let mut since = || *failed_since.get_or_insert(successes);
            let failure = match self.tokens.token(tenant).await {
                Err(error) if error.is_transient() => {
                    since();
                    let failure = Transient::without_reply(error.to_string());
                    if let Some(paused) = self.failed_transiently(ticket, &failure).await {
                        return paused;
                    }
                    failure
                }
                Err(error) => {
                    return self
                        .token_refused(ticket, since(), attempts, tenant, &error)
                        .await;
                }
                Ok(token) => {
                    attempts += 1;
                    Span::current().record("attempt", attempts);
                    match self
                        .attempt(command, &token, &gate, pass, attempts, trace)
                        .await
                    {
                        Attempt::Settled(outcome) => {
                            self.breaker.record_healthy();
                            return Disposition::Settled(outcome);
                        }
                        Attempt::TokenRefused(reply) if !renewed_token => {
                            renewed_token = true;
                            self.tokens.invalidate(tenant, &token);
                            tracing::info!(
                                status = reply.status,
                                "token refused; renewing it once"
                            );
                            continue;
                        }
                        Attempt::TokenRefused(reply) | Attempt::Forbidden(reply) => {
                            self.breaker.record_failure(ticket);
                            let outcome = unauthorized(attempts, &reply);
                            return self
                                .suspect(ticket, since(), Suspicion::Denied, outcome)
                                .await;
                        }
                        Attempt::Throttled(failure) => {
                            metrics::retry();
                            if !throttling.throttled(&gate) {
                                tracing::debug!(
                                    attempt = attempts,
                                    failure = %failure.description,
                                    "throttled; waiting at the tenant's gate"
                                );
                                continue;
                            }
                            failure
                        }
                        Attempt::Transient(failure) => {
                            since();
                            if let Some(paused) = self.failed_transiently(ticket, &failure).await {
                                return paused;
                            }
                            failure
                        }
                    }
                }
            };
            let elapsed = started.elapsed().saturating_sub(throttling.excused);
            let Some(delay) = schedule.next_delay(elapsed, failure.retry_after) else {
                let outcome = failure.exhausted(attempts, elapsed);
                let since = failed_since.unwrap_or(successes);
                return self
                    .suspect(ticket, since, Suspicion::Exhausted, outcome)
                    .await;
            };
            tracing::info!(
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                failure = %failure.description,
                "transient failure; retrying"
            );
            metrics::retry();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.breaker.opened() => return Disposition::Paused,
            }
        }
    }

    /// Reports the command's print task `completed` once its job is aborted (or was found
    /// aborted), retrying transient failures within what is left of the command's budget; a
    /// task found finished already is fine. The abort's outcome stays as it is: the task's
    /// fate is added to it.
    async fn finish_task(
        &self,
        command: &AbortCommand,
        task: &PrintTask,
        mut outcome: Outcome,
        started: Instant,
        trace: &TraceContext,
    ) -> Outcome {
        let mut report = TaskReport {
            task_definition_id: task.definition_id.to_string(),
            task_id: task.task_id.to_string(),
            updated: false,
            state: None,
            error: None,
        };
        if outcome.kind() != OutcomeKind::Succeeded {
            outcome.task = Some(Box::new(report));
            return outcome;
        }
        let description = match &command.reason {
            Some(reason) => format!("The print job was aborted by print-abort-worker: {reason}"),
            None => "The print job was aborted by print-abort-worker.".to_owned(),
        };
        let tenant = command.tenant_id.as_deref();
        let mut schedule = self.retry.schedule();
        let result = loop {
            let (failure, retry_after) = match self.tokens.token(tenant).await {
                Err(error) if error.is_transient() => {
                    (TaskError::new(error.to_string(), None, None), None)
                }
                Err(error) => break Err(TaskError::new(error.to_string(), None, None)),
                Ok(token) => {
                    let slot = self.requests.acquire().await;
                    let reply = self
                        .graph
                        .update_task(&token, task, TASK_DONE, &description, trace)
                        .await;
                    drop(slot);
                    match reply {
                        Err(error) => (
                            TaskError::new(
                                format!("the task update got no reply: {error}"),
                                None,
                                None,
                            ),
                            None,
                        ),
                        Ok(reply) => match classify(reply.status, reply.retry_after.is_some()) {
                            Verdict::Success => {
                                break Ok(reply
                                    .task_state()
                                    .unwrap_or_else(|| TASK_DONE.to_owned()));
                            }
                            Verdict::Transient | Verdict::Throttled => {
                                (task_error(&reply), reply.retry_after)
                            }
                            // Refused: a task that is finished already is fine.
                            Verdict::Reconcile => {
                                break self.finished_already(&token, task, &reply, trace).await;
                            }
                            Verdict::RenewToken | Verdict::Unauthorized | Verdict::Permanent => {
                                break Err(task_error(&reply));
                            }
                        },
                    }
                }
            };
            let elapsed = started.elapsed();
            let Some(delay) = schedule.next_delay(elapsed, retry_after) else {
                break Err(failure);
            };
            tokio::time::sleep(delay).await;
        };
        metrics::task_update(result.is_ok());
        match result {
            Ok(state) => {
                report.updated = true;
                report.state = Some(state);
            }
            Err(error) => {
                tracing::warn!(
                    task_id = %task.task_id,
                    problem = %error.message,
                    "the print task could not be reported finished; the abort stands"
                );
                report.error = Some(error);
            }
        }
        outcome.task = Some(Box::new(report));
        outcome
    }

    /// After Graph refused a task update: the task's state when it is finished already.
    async fn finished_already(
        &self,
        token: &AccessToken,
        task: &PrintTask,
        refusal: &GraphReply,
        trace: &TraceContext,
    ) -> Result<String, TaskError> {
        let slot = self.requests.acquire().await;
        let found = self.graph.get_task(token, task, trace).await;
        drop(slot);
        match found
            .ok()
            .filter(|reply| reply.status == 200)
            .and_then(|reply| reply.task_state())
        {
            Some(state) if TASK_FINISHED.contains(&state.as_str()) => Ok(state),
            _ => Err(task_error(refusal)),
        }
    }

    /// Why Graph may have refused the abort of a job that has not ended: the most common
    /// reason is that no processing print task of this app's trigger holds it (abort works
    /// only for pull printing). Reads the job's tasks to say which it is.
    async fn why_refused(
        &self,
        command: &AbortCommand,
        token: &AccessToken,
        trace: &TraceContext,
    ) -> String {
        let slot = self.requests.acquire().await;
        let tasks = self
            .graph
            .job_tasks(token, &command.printer_id, &command.print_job_id, trace)
            .await;
        drop(slot);
        const NEEDS_TASK: &str =
            "abort needs a processing print task from this app's trigger (pull printing)";
        let unread = match tasks {
            Ok(reply) if reply.status == 200 => match reply.processing_tasks() {
                Some(0) => return format!("{NEEDS_TASK}; this job has none"),
                Some(_) => {
                    return "the job has a processing print task, yet Graph refused the abort: \
                            abort needs one started by a trigger of this app's task definition"
                        .to_owned();
                }
                None => None,
            },
            Ok(reply) => Some(reply.describe()),
            Err(error) => Some(error.to_string()),
        };
        match unread {
            Some(why) => format!("{NEEDS_TASK}; the job's tasks could not be read: {why}"),
            None => format!("{NEEDS_TASK}; the job's tasks could not be read"),
        }
    }

    /// Counts a transient failure towards the breaker; when several commands are failing
    /// with no success between them and the probe fails too, the worker pauses.
    async fn failed_transiently(&self, ticket: Ticket, failure: &Transient) -> Option<Disposition> {
        if self.breaker.record_failure(ticket) && !self.probe().await {
            self.breaker.open(format!(
                "several commands are failing and so does the probe; the last failure: {}",
                failure.description
            ));
            return Some(Disposition::Paused);
        }
        None
    }

    /// The token endpoint refused the credentials. For the configured tenant every command
    /// shares them, so that is systemic at once; for another tenant it may be that tenant's
    /// missing consent, so it is judged like a refused command.
    async fn token_refused(
        &self,
        ticket: Ticket,
        since: u64,
        attempts: u32,
        tenant: Option<&str>,
        error: &AuthError,
    ) -> Disposition {
        let outcome = Outcome::failed(attempts, ErrorKind::Unauthorized, error.to_string());
        if self.tokens.is_default_tenant(tenant) {
            if self.breaker.record_systemic(&error.to_string()) {
                return Disposition::Paused;
            }
            return Disposition::Settled(outcome);
        }
        self.breaker.record_failure(ticket);
        self.suspect(ticket, since, Suspicion::Denied, outcome)
            .await
    }

    /// A failure that may be the command's or the service's: waits for the evidence that
    /// tells them apart (see [`crate::breaker`]), then settles the command with `outcome`
    /// or pauses the worker.
    async fn suspect(
        &self,
        ticket: Ticket,
        since: u64,
        suspicion: Suspicion,
        outcome: Outcome,
    ) -> Disposition {
        let _suspect = self.breaker.suspect();
        let deadline = Instant::now() + self.limits.verdict_wait;
        let mut probe = None;
        loop {
            let changed = self.breaker.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Another command's evidence paused the worker meanwhile: back to the queue.
            if self.breaker.is_open() {
                return Disposition::Paused;
            }
            let waited = Instant::now() >= deadline;
            let evidence = self.breaker.evidence(ticket, since, waited, probe);
            match judge(&evidence) {
                Judgement::Blame => {
                    if self.breaker.pausing() {
                        metrics::command_blamed();
                        tracing::info!(
                            ?suspicion,
                            others_succeeded = evidence.others_succeeded,
                            "the failure is this command's own; other commands are fine"
                        );
                    }
                    return Disposition::Settled(outcome);
                }
                Judgement::Pause => {
                    let why = outcome
                        .error()
                        .map_or_else(String::new, |error| error.message.clone());
                    self.breaker.open(why);
                    return Disposition::Paused;
                }
                Judgement::Probe => probe = Some(self.probe().await),
                Judgement::Wait => tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep_until(deadline) => {}
                },
            }
        }
    }

    /// A probe that needs no command: a newly issued token, and a Graph read that needs
    /// only a permission the app holds anyway. Concurrent callers share one probe, and its
    /// answer stands for `PROBE_FRESH`.
    pub async fn probe(&self) -> bool {
        let _one_at_a_time = self.probe.running.lock().await;
        if let Some((at, passed)) = self.probe.last()
            && at.elapsed() < PROBE_FRESH
        {
            return passed;
        }
        self.probe_now_locked().await
    }

    /// [`Self::probe`] without a remembered answer: the paused worker's health check.
    pub async fn probe_now(&self) -> bool {
        let _one_at_a_time = self.probe.running.lock().await;
        self.probe_now_locked().await
    }

    async fn probe_now_locked(&self) -> bool {
        let printer = self.probe.printer();
        let passed = match (self.tokens.renew(None).await, printer) {
            (Err(error), _) => {
                tracing::warn!(%error, "probe: no token");
                false
            }
            // No command seen yet, so no printer to read: the token is what can be checked.
            (Ok(_), None) => true,
            (Ok(token), Some(printer)) => match self
                .graph
                .get_printer(&token, &printer, &TraceContext::new_root())
                .await
            {
                // A printer deleted meanwhile still shows a Graph that reads with this token.
                Ok(reply) if matches!(reply.status, 200 | 404) => true,
                Ok(reply) => {
                    tracing::warn!(reply = %reply.describe(), "probe: Graph refused the read");
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "probe: Graph did not answer");
                    false
                }
            },
        };
        metrics::probe(passed);
        self.probe.remember(passed);
        passed
    }

    async fn attempt(
        &self,
        command: &AbortCommand,
        token: &AccessToken,
        gate: &TenantGate,
        pass: Pass,
        attempts: u32,
        trace: &TraceContext,
    ) -> Attempt {
        let slot = self.requests.acquire().await;
        let reply = self
            .graph
            .abort(
                token,
                &command.printer_id,
                &command.print_job_id,
                command.reason.as_deref(),
                trace,
            )
            .await;
        drop(slot);
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => return Attempt::Transient(Transient::without_reply(error.to_string())),
        };
        if let Some(request_id) = &reply.request_id {
            Span::current().record("graph_request_id", request_id.as_str());
        }
        let verdict = classify(reply.status, reply.retry_after.is_some());
        if verdict == Verdict::Throttled {
            gate.record_throttled(pass, reply.retry_after);
        } else {
            gate.record_success();
        }
        match verdict {
            Verdict::Success => {
                Attempt::Settled(Outcome::succeeded(attempts, reply.status, reply.request_id))
            }
            Verdict::RenewToken => Attempt::TokenRefused(reply),
            Verdict::Unauthorized => Attempt::Forbidden(reply),
            Verdict::Throttled => Attempt::Throttled(Transient::from_reply(&reply)),
            Verdict::Transient => Attempt::Transient(Transient::from_reply(&reply)),
            Verdict::Permanent => Attempt::Settled(permanent(attempts, &reply, None)),
            Verdict::Reconcile => {
                self.reconcile(command, token, gate, attempts, reply, trace)
                    .await
            }
        }
    }

    /// Graph refused the abort; a lost reply to an earlier attempt, or a duplicate command,
    /// may have aborted the job already. Looks at the job to tell the two apart.
    async fn reconcile(
        &self,
        command: &AbortCommand,
        token: &AccessToken,
        gate: &TenantGate,
        attempts: u32,
        refusal: GraphReply,
        trace: &TraceContext,
    ) -> Attempt {
        let pass = gate.admit().await;
        let slot = self.requests.acquire().await;
        let job = self
            .graph
            .get_job(token, &command.printer_id, &command.print_job_id, trace)
            .await;
        drop(slot);
        let job = match job {
            Ok(job) => job,
            Err(error) => {
                return Attempt::Transient(Transient::without_reply(format!(
                    "{}; the job could not be looked up: {error}",
                    refusal.describe()
                )));
            }
        };
        let verdict = classify(job.status, job.retry_after.is_some());
        if verdict == Verdict::Throttled {
            gate.record_throttled(pass, job.retry_after);
            return Attempt::Throttled(Transient::from_reply(&job));
        }
        gate.record_success();
        let state = (job.status == 200).then(|| job.job_state()).flatten();
        match state.as_deref() {
            Some(ABORTED) => {
                tracing::info!("the job was already aborted");
                Attempt::Settled(Outcome::already_aborted(
                    attempts,
                    refusal.status,
                    refusal.request_id,
                ))
            }
            Some(state) if matches!(refusal.status, 400 | 409) && JOB_LIVE.contains(&state) => {
                let why = self.why_refused(command, token, trace).await;
                let outcome = permanent(attempts, &refusal, Some(state));
                Attempt::Settled(outcome.with_explanation(&why))
            }
            Some(state) => Attempt::Settled(permanent(attempts, &refusal, Some(state))),
            None if verdict == Verdict::Transient => {
                Attempt::Transient(Transient::from_reply(&job))
            }
            None => Attempt::Settled(permanent(attempts, &refusal, None)),
        }
    }
}

/// The last probe's answer, shared by every command that asks at about the same time.
#[derive(Debug, Default)]
struct Probe {
    /// Held while a probe runs, so concurrent askers wait for its answer.
    running: tokio::sync::Mutex<()>,
    last: Mutex<Option<(Instant, bool)>>,
    /// The printer of the latest command: Graph lets an app read a printer by its id only.
    printer: Mutex<Option<ResourceId>>,
}

impl Probe {
    fn printer(&self) -> Option<ResourceId> {
        self.printer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn saw(&self, printer: &ResourceId) {
        let mut seen = self.printer.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.as_ref() != Some(printer) {
            *seen = Some(printer.clone());
        }
    }

    fn last(&self) -> Option<(Instant, bool)> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, passed: bool) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), passed));
    }
}

/// What one abort attempt came to.
enum Attempt {
    Settled(Outcome),
    /// 401: the token may be stale.
    TokenRefused(GraphReply),
    /// 403: the app lacks the permission, for this job or for every job.
    Forbidden(GraphReply),
    /// 429, or 503 with `Retry-After`: the tenant's gate is closed.
    Throttled(Transient),
    Transient(Transient),
}

fn task_error(reply: &GraphReply) -> TaskError {
    TaskError::new(reply.describe(), Some(reply.status), reply.error_code())
}

fn permanent(attempts: u32, reply: &GraphReply, job_state: Option<&str>) -> Outcome {
    let mut message = reply.describe();
    if let Some(state) = job_state {
        message.push_str(&format!(" (job state: {state})"));
    }
    Outcome::failed(attempts, ErrorKind::Permanent, message)
        .with_code(reply.error_code())
        .with_reply(reply.status, reply.request_id.clone())
}

fn unauthorized(attempts: u32, reply: &GraphReply) -> Outcome {
    Outcome::failed(
        attempts,
        ErrorKind::Unauthorized,
        format!(
            "{}; check that the app has the PrintJob.ReadWriteBasic.All, PrintJob.ReadWrite.All \
             or PrintJob.Manage.All application permission with admin consent",
            reply.describe()
        ),
    )
    .with_code(reply.error_code())
    .with_reply(reply.status, reply.request_id.clone())
}
