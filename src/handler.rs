//! The per-command step: `handle(command) -> Outcome`.
//!
//! Everything between a valid command and its outcome happens here — tokens, the abort
//! call, retries with backoff, the 401 renewal, reconciling a refused abort against the
//! job's state, expiry — with no broker in sight, so it can be tested on its own.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tracing::Span;

use crate::auth::{AccessToken, TokenProvider};
use crate::breaker::CircuitBreaker;
use crate::command::AbortCommand;
use crate::graph::{GraphClient, GraphReply};
use crate::outcome::{ErrorKind, Outcome};
use crate::retry::{RetryPolicy, Verdict, classify};
use crate::telemetry::metrics;
use crate::telemetry::trace::TraceContext;

/// The Graph job state that means the abort already happened.
const ABORTED: &str = "aborted";

/// Carries out abort commands against Graph.
#[derive(Debug, Clone)]
pub struct AbortHandler {
    graph: GraphClient,
    tokens: Arc<TokenProvider>,
    retry: RetryPolicy,
    breaker: Arc<CircuitBreaker>,
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The command has its outcome.
    Settled(Outcome),
    /// The failure was the service's, not the command's: the worker pauses and the command
    /// goes back to the queue without an outcome.
    Paused,
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
}

impl AbortHandler {
    pub fn new(
        graph: GraphClient,
        tokens: Arc<TokenProvider>,
        retry: RetryPolicy,
        breaker: Arc<CircuitBreaker>,
    ) -> Self {
        Self {
            graph,
            tokens,
            retry,
            breaker,
        }
    }

    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    /// Aborts the command's print job, retrying transient failures within the budget.
    /// Records `attempt` and `graph_request_id` on the current span as they become known.
    /// Graph requests are child spans of `trace`.
    pub async fn handle(&self, command: &AbortCommand, trace: &TraceContext) -> Disposition {
        let started = Instant::now();
        let mut schedule = self.retry.schedule();
        let mut attempts = 0u32;
        let mut renewed_token = false;
        let tenant = command.tenant_id.as_deref();
        loop {
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
            let failure = match self.tokens.token(tenant).await {
                Err(error) if error.is_transient() => Transient::without_reply(error.to_string()),
                Err(error) => {
                    let outcome =
                        Outcome::failed(attempts, ErrorKind::Unauthorized, error.to_string());
                    return self.systemic(outcome);
                }
                Ok(token) => {
                    attempts += 1;
                    Span::current().record("attempt", attempts);
                    match self.attempt(command, &token, attempts, trace).await {
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
                            return self.systemic(unauthorized(attempts, &reply));
                        }
                        Attempt::Transient(failure) => failure,
                    }
                }
            };
            if self.breaker.record_transient(&failure.description) {
                return Disposition::Paused;
            }
            let elapsed = started.elapsed();
            let Some(delay) = schedule.next_delay(elapsed, failure.retry_after) else {
                let outcome = Outcome::failed(
                    attempts,
                    ErrorKind::Exhausted,
                    format!(
                        "gave up after {attempts} attempts in {:.1}s; last: {}",
                        elapsed.as_secs_f64(),
                        failure.description
                    ),
                );
                return Disposition::Settled(match failure.reply {
                    Some((status, request_id)) => outcome.with_reply(status, request_id),
                    None => outcome,
                });
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

    /// A credential or permission failure: pause the worker, or, with pausing disabled,
    /// settle the command with it.
    fn systemic(&self, outcome: Outcome) -> Disposition {
        let why = outcome
            .error
            .as_ref()
            .map_or_else(String::new, |error| error.message.clone());
        if self.breaker.record_systemic(&why) {
            Disposition::Paused
        } else {
            Disposition::Settled(outcome)
        }
    }

    async fn attempt(
        &self,
        command: &AbortCommand,
        token: &AccessToken,
        attempts: u32,
        trace: &TraceContext,
    ) -> Attempt {
        let reply = match self
            .graph
            .abort(
                token,
                &command.printer_id,
                &command.print_job_id,
                command.reason.as_deref(),
                trace,
            )
            .await
        {
            Ok(reply) => reply,
            Err(error) => return Attempt::Transient(Transient::without_reply(error.to_string())),
        };
        if let Some(request_id) = &reply.request_id {
            Span::current().record("graph_request_id", request_id.as_str());
        }
        match classify(reply.status) {
            Verdict::Success => {
                Attempt::Settled(Outcome::succeeded(attempts, reply.status, reply.request_id))
            }
            Verdict::RenewToken => Attempt::TokenRefused(reply),
            Verdict::Unauthorized => Attempt::Forbidden(reply),
            Verdict::Transient => Attempt::Transient(Transient::from_reply(&reply)),
            Verdict::Permanent => Attempt::Settled(permanent(attempts, &reply, None)),
            Verdict::Reconcile => self.reconcile(command, token, attempts, reply, trace).await,
        }
    }

    /// Graph refused the abort; a lost reply to an earlier attempt, or a duplicate command,
    /// may have aborted the job already. Looks at the job to tell the two apart.
    async fn reconcile(
        &self,
        command: &AbortCommand,
        token: &AccessToken,
        attempts: u32,
        refusal: GraphReply,
        trace: &TraceContext,
    ) -> Attempt {
        let job = match self
            .graph
            .get_job(token, &command.printer_id, &command.print_job_id, trace)
            .await
        {
            Ok(job) => job,
            Err(error) => {
                return Attempt::Transient(Transient::without_reply(format!(
                    "{}; the job could not be looked up: {error}",
                    refusal.describe()
                )));
            }
        };
        let state = (job.status == 200).then(|| job.job_state()).flatten();
        match state.as_deref() {
            Some(ABORTED) => {
                tracing::info!("the job was already aborted");
                let mut outcome = Outcome::succeeded(attempts, refusal.status, refusal.request_id);
                outcome.already_aborted = true;
                Attempt::Settled(outcome)
            }
            Some(state) => Attempt::Settled(permanent(attempts, &refusal, Some(state))),
            None if matches!(classify(job.status), Verdict::Transient) => {
                Attempt::Transient(Transient::from_reply(&job))
            }
            None => Attempt::Settled(permanent(attempts, &refusal, None)),
        }
    }
}

/// What one abort attempt came to.
enum Attempt {
    Settled(Outcome),
    /// 401: the token may be stale.
    TokenRefused(GraphReply),
    /// 403: the app lacks the permission.
    Forbidden(GraphReply),
    Transient(Transient),
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
