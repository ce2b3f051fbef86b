//! The consume loop: moves deliveries from the command queue through the handler to an
//! outcome event, and settles each delivery only after its event was confirmed.
//!
//! [`run`] owns the connection life cycle: connect, declare the topology, consume with
//! bounded concurrency; on connection loss reconnect with capped backoff; while the
//! circuit breaker is open consume nothing and probe. The caller decides when to stop by
//! resolving the `shutdown` future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field};

use crate::amqp::publisher::{
    DeadLetter, EventPublisher, EventRouting, PublishError, RetryHistory,
};
use crate::amqp::{self, headers, topology};
use crate::auth::{ClientCredential, TokenProvider};
use crate::breaker::{BreakerState, CircuitBreaker};
use crate::command::{AbortCommand, TenantPolicy};
use crate::config::Settings;
use crate::graph::GraphClient;
use crate::handler::{AbortHandler, Disposition, HandlerLimits};
use crate::health::Health;
use crate::outcome::{ErrorKind, Outcome, OutcomeEvent, OutcomeKind};
use crate::retry::RetryPolicy;
use crate::telemetry::metrics;
use crate::telemetry::trace::TraceContext;
use crate::throttle::Throttle;

/// How often the trial loop looks whether its command settled or became a suspect, on top
/// of the breaker's own announcements.
const TRIAL_POLL: Duration = Duration::from_millis(50);

/// Shortest and longest wait between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Runs the worker until `shutdown` resolves; returns an error only for problems that
/// reconnecting cannot fix (such as a topology mismatch).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_health(settings, Arc::default(), shutdown).await
}

/// [`run`], reporting its state into `health` for the operations endpoints and for tests.
pub async fn run_with_health(
    settings: Settings,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // Whatever way this returns, the operations endpoints stop with it.
    let _stop_endpoints = stop.clone().drop_guard();
    let metrics = metrics::install();
    if !settings.http.listen.is_empty() {
        let address =
            crate::http::serve(&settings.http.listen, health.clone(), metrics, stop.clone())
                .await?;
        health.set_http_address(address);
    }
    let worker = Worker::new(settings, health, stop.clone())?;
    let body = worker.run();
    tokio::pin!(body);
    tokio::select! {
        result = &mut body => return result,
        () = shutdown => {
            tracing::info!("shutdown requested");
            stop.cancel();
        }
    }
    body.await
}

/// Builds the HTTP client shared by the token provider and the Graph client.
pub fn http_client(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("print-abort-worker/", env!("CARGO_PKG_VERSION")))
        .timeout(settings.graph.timeout)
        .connect_timeout(settings.graph.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        // Neither Graph's print API nor the token endpoint redirects; following one would
        // only risk sending the bearer token somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        // reqwest would resend a request an HTTP/2 server refused unprocessed, cloning every
        // request to be able to; the worker's own retry policy (with its backoff, metrics and
        // reconciliation) handles those like any other transport failure.
        .retry(reqwest::retry::never())
        .build()
        .context("the HTTP client could not be built")
}

/// Builds the handler and everything it needs from the settings.
pub fn abort_handler(
    settings: &Settings,
    breaker: Arc<CircuitBreaker>,
) -> anyhow::Result<AbortHandler> {
    let http = http_client(settings)?;
    let credential = ClientCredential::from_settings(settings)
        .context("the client credential could not be loaded")?;
    let tokens = Arc::new(TokenProvider::new(http.clone(), settings, credential));
    Ok(AbortHandler::new(
        GraphClient::new(http, &settings.graph),
        tokens,
        RetryPolicy::new(&settings.retry),
        breaker,
        Arc::new(Throttle::new(settings.retry.max_interval)),
        HandlerLimits::from_settings(settings),
    ))
}

/// What every command task needs; shared by reference.
struct Shared {
    settings: Settings,
    handler: AbortHandler,
    breaker: Arc<CircuitBreaker>,
    tenants: TenantPolicy,
}

struct Worker {
    shared: Arc<Shared>,
    health: Arc<Health>,
    stop: CancellationToken,
}

/// Why a broker session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Why one consuming phase of a session ended.
enum PhaseEnd {
    Session(SessionEnd),
    /// The breaker opened: the worker stopped consuming to probe.
    Paused,
    /// A trial ended with the breaker closed: consume as usual.
    Resumed,
}

impl PhaseEnd {
    fn lost(problem: impl std::fmt::Display) -> Self {
        Self::Session(SessionEnd::Lost(problem.to_string()))
    }
}

enum SessionError {
    Fatal(anyhow::Error),
    Retry(String),
}

impl SessionError {
    fn retry(error: impl std::fmt::Display) -> Self {
        Self::Retry(error.to_string())
    }
}

impl Worker {
    fn new(
        settings: Settings,
        health: Arc<Health>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let breaker = Arc::new(CircuitBreaker::new(&settings.pause));
        let handler = abort_handler(&settings, breaker.clone())?;
        let tenants = TenantPolicy::new(&settings.auth.tenant_id, &settings.auth.allowed_tenants);
        health.set_throttle(handler.throttle().clone());
        metrics::paused(false);
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                handler,
                breaker,
                tenants,
            }),
            health,
            stop,
        })
    }

    async fn run(self) -> anyhow::Result<()> {
        let mut delays = reconnect_backoff();
        loop {
            let problem = match self.session().await {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Lost(problem)) => {
                    metrics::broker_reconnect();
                    // The session was up, so the next outage starts its backoff afresh.
                    delays = reconnect_backoff();
                    problem
                }
                Err(SessionError::Fatal(error)) => return Err(error),
                Err(SessionError::Retry(problem)) => problem,
            };
            self.health.set_connected(false);
            let delay = delays.next().unwrap_or(RECONNECT_MAX).min(RECONNECT_MAX);
            tracing::warn!(
                problem = %problem,
                retry_in_ms = delay.as_millis() as u64,
                "broker session ended; reconnecting"
            );
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's life: connect, run on it, and close it whatever happened — a
    /// connection still up after a loss (a closed channel, a cancelled consumer, a failed
    /// declaration) must not be left behind by the reconnect.
    async fn session(&self) -> Result<SessionEnd, SessionError> {
        let settings = &self.shared.settings;
        let connection = tokio::select! {
            () = self.stop.cancelled() => return Ok(SessionEnd::Shutdown),
            connection = amqp::connect(&settings.amqp, "worker") => connection.map_err(SessionError::retry)?,
        };
        let end = self.session_on(&connection).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            connection.close(200, "session over".into()),
        )
        .await;
        self.health.set_connected(false);
        end
    }

    /// Declares, then consumes — pausing to probe whenever the breaker opens — until the
    /// connection breaks or shutdown.
    async fn session_on(&self, connection: &Connection) -> Result<SessionEnd, SessionError> {
        let settings = &self.shared.settings;
        topology::declare(
            connection,
            &settings.amqp,
            &settings.retry.redelivery_delays,
        )
        .await
        .map_err(|error| {
            if error.is_fatal() {
                SessionError::Fatal(error.into())
            } else {
                SessionError::retry(error)
            }
        })?;
        let publisher = EventPublisher::open(connection, &settings.amqp)
            .await
            .map_err(SessionError::retry)?;
        self.health.set_connected(true);
        let lost = watch_connection(connection);
        let mut probes = self.probe_backoff();
        let end = loop {
            let phase = match self.shared.breaker.state() {
                BreakerState::Closed => self.consume(connection, &publisher, &lost).await,
                BreakerState::Trial => self.trial(connection, &publisher, &lost).await,
                BreakerState::Open(_) => Ok(PhaseEnd::Paused),
            };
            match phase {
                Ok(PhaseEnd::Paused) => {
                    self.health.set_paused(true);
                    metrics::paused(true);
                    if !self.probe(&mut probes).await {
                        break Ok(SessionEnd::Shutdown);
                    }
                }
                Ok(PhaseEnd::Resumed) => {
                    probes = self.probe_backoff();
                    self.health.set_paused(false);
                    metrics::paused(false);
                }
                Ok(PhaseEnd::Session(end)) => break Ok(end),
                Err(error) => break Err(error),
            }
        };
        // Closed before the connection: lapin logs an error when closing the connection
        // finds a channel still open.
        publisher.close().await;
        end
    }

    /// Consumes on a fresh channel until shutdown, connection loss or a pause.
    async fn consume(
        &self,
        connection: &Connection,
        publisher: &EventPublisher,
        lost: &ConnectionLost,
    ) -> Result<PhaseEnd, SessionError> {
        let settings = &self.shared.settings;
        let channel = connection
            .create_channel()
            .await
            .map_err(SessionError::retry)?;
        channel
            .basic_qos(settings.amqp.prefetch, BasicQosOptions::default())
            .await
            .map_err(SessionError::retry)?;
        let mut consumer = channel
            .basic_consume(
                settings.amqp.command_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::retry)?;
        self.health.set_consuming(true);
        tracing::info!(queue = %settings.amqp.command_queue, "consuming");

        // Commands in process are bounded by the prefetch; Graph requests in flight by
        // worker.concurrency, in the handler, so that commands waiting at a throttled
        // tenant's gate or between retries hold no request slot.
        let mut breaker = self.shared.breaker.subscribe();
        let tasks = TaskTracker::new();
        let abandon = CancellationToken::new();
        let end = loop {
            let delivery = tokio::select! {
                biased;
                () = self.stop.cancelled() => break PhaseEnd::Session(SessionEnd::Shutdown),
                () = lost.token.cancelled() => break PhaseEnd::lost(lost.reason()),
                () = publisher.closed() => break PhaseEnd::lost("the publishing channel closed"),
                _ = breaker.wait_for(BreakerState::is_open) => break PhaseEnd::Paused,
                delivery = consumer.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let shared = self.shared.clone();
                    let publisher = publisher.clone();
                    let abandon = abandon.clone();
                    tasks.spawn(async move {
                        process(&shared, &publisher, delivery, abandon).await;
                    });
                }
                Some(Err(error)) => break PhaseEnd::lost(error),
                None => break PhaseEnd::lost("the broker cancelled the consumer"),
            }
        };
        self.health.set_consuming(false);
        cancel(&channel, &consumer).await;
        self.wind_down(&end, channel, tasks, abandon).await;
        Ok(end)
    }

    /// Trial commands, one at a time, each fetched with `basic.get` only when the one before
    /// has settled or waits for contrast as a suspect, so that no command is delivered
    /// ahead of need and a failed trial hands back at most the commands it tried. Ends when
    /// a command succeeds (or there is nothing to try), or the breaker opens again.
    async fn trial(
        &self,
        connection: &Connection,
        publisher: &EventPublisher,
        lost: &ConnectionLost,
    ) -> Result<PhaseEnd, SessionError> {
        let settings = &self.shared.settings;
        let breaker = &self.shared.breaker;
        let channel = connection
            .create_channel()
            .await
            .map_err(SessionError::retry)?;
        tracing::info!(queue = %settings.amqp.command_queue, "trying commands one at a time");
        let tasks = TaskTracker::new();
        let abandon = CancellationToken::new();
        let end = loop {
            let changed = breaker.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match breaker.state() {
                BreakerState::Closed => break PhaseEnd::Resumed,
                BreakerState::Open(_) => break PhaseEnd::Paused,
                BreakerState::Trial => {}
            }
            let busy = tasks.len() > breaker.suspects();
            let fetch = async {
                if busy {
                    return None;
                }
                Some(
                    channel
                        .basic_get(
                            settings.amqp.command_queue.as_str().into(),
                            BasicGetOptions { no_ack: false },
                        )
                        .await,
                )
            };
            let fetched = tokio::select! {
                biased;
                () = self.stop.cancelled() => break PhaseEnd::Session(SessionEnd::Shutdown),
                () = lost.token.cancelled() => break PhaseEnd::lost(lost.reason()),
                () = publisher.closed() => break PhaseEnd::lost("the publishing channel closed"),
                fetched = fetch, if !busy => fetched,
                // A task's end is seen within this; changes the breaker announces sooner.
                () = &mut changed, if busy => None,
                () = tokio::time::sleep(TRIAL_POLL), if busy => None,
            };
            match fetched {
                None => {}
                Some(Ok(Some(message))) => {
                    let shared = self.shared.clone();
                    let publisher = publisher.clone();
                    let abandon = abandon.clone();
                    tasks.spawn(async move {
                        process(&shared, &publisher, message.delivery, abandon).await;
                    });
                }
                Some(Ok(None)) if tasks.is_empty() => {
                    breaker.resume("no command is waiting to be tried");
                }
                Some(Ok(None)) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep(TRIAL_POLL) => {}
                    }
                }
                Some(Err(error)) => break PhaseEnd::lost(error),
            }
        };
        if matches!(end, PhaseEnd::Resumed) {
            // Suspects of the trial still wait for their verdict on this channel; it closes
            // once they are settled, while the worker consumes again.
            tasks.close();
            tokio::spawn(async move {
                tasks.wait().await;
                close(&channel).await;
            });
        } else {
            self.wind_down(&end, channel, tasks, abandon).await;
        }
        Ok(end)
    }

    /// Ends a consuming phase: what happens to the commands still in flight depends on why.
    async fn wind_down(
        &self,
        end: &PhaseEnd,
        channel: Channel,
        tasks: TaskTracker,
        abandon: CancellationToken,
    ) {
        let settings = &self.shared.settings;
        tasks.close();
        match end {
            PhaseEnd::Session(SessionEnd::Lost(_)) => {
                // Unsettled deliveries die with the channel; the broker delivers them again.
                abandon.cancel();
                tasks.wait().await;
            }
            PhaseEnd::Paused | PhaseEnd::Resumed => {
                // In-flight commands see the open breaker and return to the queue by themselves.
                tasks.wait().await;
                close(&channel).await;
            }
            PhaseEnd::Session(SessionEnd::Shutdown) => {
                let grace = settings.worker.shutdown_grace;
                tracing::info!(
                    in_flight = tasks.len(),
                    grace_ms = grace.as_millis() as u64,
                    "draining"
                );
                if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
                    tracing::warn!(
                        left = tasks.len(),
                        "grace period over; returning the rest to the queue"
                    );
                    abandon.cancel();
                    tasks.wait().await;
                }
                close(&channel).await;
            }
        }
    }

    /// Waits, with backoff, until a probe that needs no command passes (a newly issued token
    /// and a Graph read); then lets trial commands through. Returns `false` on shutdown.
    async fn probe(&self, delays: &mut impl Iterator<Item = Duration>) -> bool {
        loop {
            let delay = delays
                .next()
                .unwrap_or(self.shared.settings.pause.probe_max_interval);
            tracing::info!(retry_in_ms = delay.as_millis() as u64, "paused; probing");
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            if self.shared.handler.probe_now().await {
                tracing::info!("probe passed; trying commands one at a time");
                self.shared.breaker.begin_trial();
                return true;
            }
            tracing::warn!("probe failed; staying paused");
        }
    }

    fn probe_backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let pause = &self.shared.settings.pause;
        ExponentialBuilder::new()
            .with_min_delay(pause.probe_initial_interval)
            .with_max_delay(pause.probe_max_interval)
            .with_jitter()
            .without_max_times()
            .build()
            .map({
                let max = pause.probe_max_interval;
                move |delay| delay.min(max)
            })
    }
}

/// Trips when the connection reports an error, which a consumer waiting for deliveries
/// would not notice by itself.
struct ConnectionLost {
    token: CancellationToken,
    reason: Arc<std::sync::Mutex<String>>,
}

impl ConnectionLost {
    fn reason(&self) -> String {
        self.reason
            .lock()
            .map(|reason| reason.clone())
            .unwrap_or_default()
    }
}

impl Drop for ConnectionLost {
    fn drop(&mut self) {
        // Ends the watcher task along with the session.
        self.token.cancel();
    }
}

fn watch_connection(connection: &Connection) -> ConnectionLost {
    let token = CancellationToken::new();
    let reason = Arc::new(std::sync::Mutex::new(String::new()));
    let mut events = connection.events_listener();
    let (trip, record) = (token.clone(), reason.clone());
    tokio::spawn(async move {
        let problem = tokio::select! {
            () = trip.cancelled() => return,
            problem = async {
                while let Some(event) = events.next().await {
                    if let lapin::Event::Error(error) = event {
                        return error.to_string();
                    }
                }
                "the connection closed".to_owned()
            } => problem,
        };
        if let Ok(mut reason) = record.lock() {
            *reason = problem;
        }
        trip.cancel();
    });
    ConnectionLost { token, reason }
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn cancel(channel: &Channel, consumer: &lapin::Consumer) {
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
}

/// Closing a channel returns its unacknowledged deliveries to the queue.
async fn close(channel: &Channel) {
    let _ = channel.close(200, "done".into()).await;
}

/// Handles one delivery from start to settlement. Never panics on what the message holds.
async fn process(
    shared: &Shared,
    publisher: &EventPublisher,
    delivery: Delivery,
    abandon: CancellationToken,
) {
    let properties = &delivery.properties;
    let history = RetryHistory::of(properties);
    let deliveries = headers::count(
        properties.headers().as_ref(),
        headers::BROKER_DELIVERY_COUNT,
    );
    let message_id = headers::property(properties.message_id());
    let parsed = AbortCommand::parse(&delivery.data, message_id, &shared.tenants);
    let trace = TraceContext::continue_from(
        headers::text(properties.headers().as_ref(), headers::TRACEPARENT).as_deref(),
    );
    let summary = match &parsed {
        Ok(command) => command.summary(),
        Err(invalid) => invalid.summary.clone(),
    };
    let span = tracing::info_span!(
        "command",
        command_id = %summary.command_id,
        printer_id = summary.printer_id.as_deref().unwrap_or(""),
        print_job_id = summary.print_job_id.as_deref().unwrap_or(""),
        trace_id = %trace.trace_id(),
        attempt = field::Empty,
        graph_request_id = field::Empty,
    );
    metrics::in_flight(1.0);
    async {
        let max_deliveries = shared.settings.amqp.max_deliveries;
        let limit_reached = deliveries.is_some_and(|count| count >= max_deliveries);
        let mut outcome = match parsed {
            Ok(_) if limit_reached => {
                metrics::delivery_limit();
                tracing::warn!(
                    deliveries,
                    max_deliveries,
                    "delivered amqp.max_deliveries times; ending it before the broker drops it"
                );
                Outcome::failed(
                    0,
                    ErrorKind::Exhausted,
                    format!(
                        "the broker delivered the command {} times (amqp.max_deliveries is \
                         {max_deliveries}); it ends here instead of being dropped by the \
                         queue's delivery limit",
                        deliveries.unwrap_or_default()
                    ),
                )
            }
            // Boxed: the handler's future (retries, token, HTTP exchange) is large; this way
            // only a pointer to it is moved into this future's state.
            Ok(command) => tokio::select! {
                disposition = Box::pin(shared.handler.handle(&command, &trace)) => match disposition {
                    Disposition::Settled(outcome) => outcome,
                    Disposition::Paused | Disposition::HeldTooLong => {
                        requeue(&delivery).await;
                        return;
                    }
                },
                () = abandon.cancelled() => {
                    requeue(&delivery).await;
                    return;
                }
            },
            Err(invalid) => {
                tracing::warn!(problem = %invalid.problem, "invalid command");
                Outcome::rejected(invalid.problem)
            }
        };
        outcome.attempts += history.attempts;
        let finish = async {
            // A command at its delivery limit ends here; another delivery is what it lacks.
            if let Some(delay) = next_redelivery(shared, &outcome, &history).filter(|_| !limit_reached) {
                park(shared, publisher, &delivery, &outcome, &history, delay).await;
                return;
            }
            let routing = EventRouting {
                correlation_id: headers::property(properties.correlation_id())
                    .unwrap_or(&summary.command_id)
                    .to_owned(),
                reply_to: headers::property(properties.reply_to()).map(str::to_owned),
                traceparent: Some(trace.to_string()),
            };
            let event = OutcomeEvent::new(summary, outcome, history.first_received_at, Utc::now());
            settle(shared, publisher, &delivery, &event, &routing).await;
        };
        // A confirm still pending when the connection dies may never resolve; the broker
        // redelivers the command anyway.
        tokio::select! {
            () = finish => {}
            () = abandon.cancelled() => {}
        }
    }
    .instrument(span)
    .await;
    metrics::in_flight(-1.0);
}

/// The delay before a broker-side retry, when the command exhausted its in-process budget
/// and has steps of `retry.redelivery_delays` left.
fn next_redelivery(shared: &Shared, outcome: &Outcome, history: &RetryHistory) -> Option<Duration> {
    if outcome.error_kind() != Some(ErrorKind::Exhausted) {
        return None;
    }
    let step = usize::try_from(history.redeliveries).ok()?;
    shared.settings.retry.redelivery_delays.get(step).copied()
}

/// Moves a command into its delay queue, then acks it; no event until its final outcome.
async fn park(
    shared: &Shared,
    publisher: &EventPublisher,
    delivery: &Delivery,
    outcome: &Outcome,
    history: &RetryHistory,
    delay: Duration,
) {
    let queue = topology::delay_queue(&shared.settings.amqp, delay);
    let next = RetryHistory {
        redeliveries: history.redeliveries + 1,
        attempts: outcome.attempts,
        first_received_at: history.first_received_at,
    };
    if let Err(error) = publisher
        .delay(&delivery.data, &delivery.properties, &queue, &next)
        .await
    {
        tracing::error!(%error, "delayed retry not confirmed; the command will be redelivered");
        nowhere_to_park(shared, &error).await;
        requeue(delivery).await;
        return;
    }
    metrics::redelivery();
    tracing::info!(
        redelivery = next.redeliveries,
        delay_ms = delay.as_millis() as u64,
        attempts = next.attempts,
        "retry budget exhausted; retrying later through the broker"
    );
    ack(delivery).await;
}

/// Publishes the event, dead-letters a command that did not succeed, then acks — in that
/// order, so a failure at any step leaves the command to be delivered again.
async fn settle(
    shared: &Shared,
    publisher: &EventPublisher,
    delivery: &Delivery,
    event: &OutcomeEvent,
    routing: &EventRouting,
) {
    let data = &event.data;
    if let Err(error) = publisher.publish_event(event, routing).await {
        tracing::error!(%error, "outcome event not confirmed; the command will be redelivered");
        requeue(delivery).await;
        return;
    }
    if let Some(error) = data
        .error
        .as_ref()
        .filter(|_| data.outcome != OutcomeKind::Succeeded)
    {
        let failure = DeadLetter {
            kind: error.kind,
            message: &error.message,
            command_id: &data.command_id,
        };
        let queue = &shared.settings.amqp.command_queue;
        if let Err(error) = publisher
            .dead_letter(&delivery.data, &delivery.properties, queue, &failure)
            .await
        {
            tracing::error!(%error, "dead letter not confirmed; the command will be redelivered");
            nowhere_to_park(shared, &error).await;
            requeue(delivery).await;
            return;
        }
    }
    // A success is the common case and the outcome event and metrics already record it,
    // so it logs at debug and costs nothing at the default level; anything else logs at
    // info.
    macro_rules! settled {
        ($level:expr) => {
            tracing::event!(
                $level,
                outcome = data.outcome.as_str(),
                error_kind = data.error.as_ref().map(|e| e.kind.as_str()).unwrap_or(""),
                attempts = data.attempts,
                already_aborted = data.already_aborted,
                duration_ms = data.duration_ms,
                "command settled"
            )
        };
    }
    if data.outcome == OutcomeKind::Succeeded {
        settled!(tracing::Level::DEBUG);
    } else {
        settled!(tracing::Level::INFO);
    }
    metrics::command_settled(data.outcome, data.error.as_ref().map(|e| e.kind));
    ack(delivery).await;
}

/// A dead letter or delayed retry that no queue takes is a topology problem, not the
/// command's: pause (or, with pausing disabled, slow down) rather than requeue the command
/// in a tight loop that calls Graph each time round.
async fn nowhere_to_park(shared: &Shared, error: &PublishError) {
    if let PublishError::Unroutable(target) = error
        && !shared.breaker.record_systemic(&format!(
            "a failed command could not be parked: no queue behind '{target}'"
        ))
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(%error, "ack failed; the broker will deliver the command again");
    }
}

/// Returns a delivery to the queue. On a dead channel this fails, and the broker requeues
/// the delivery by itself.
async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(error) = delivery.nack(options).await {
        tracing::debug!(%error, "requeue failed; the broker requeues on channel close");
    }
}
