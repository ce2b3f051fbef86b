//! The consume loop: moves deliveries from the command queue through the handler to an
//! outcome event, and settles each delivery only after its event was confirmed.
//!
//! [`run`] owns the connection life cycle: connect, declare the topology, consume with
//! bounded concurrency, and on connection loss reconnect with capped backoff. The caller
//! decides when to stop by resolving the `shutdown` future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field};

use crate::amqp::headers;
use crate::amqp::publisher::{DeadLetter, EventPublisher, EventRouting};
use crate::amqp::{self, topology};
use crate::auth::{ClientCredential, TokenProvider};
use crate::command::{AbortCommand, TenantPolicy};
use crate::config::Settings;
use crate::graph::GraphClient;
use crate::handler::AbortHandler;
use crate::outcome::{Outcome, OutcomeEvent, OutcomeKind};
use crate::retry::RetryPolicy;

/// Shortest and longest wait between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Runs the worker until `shutdown` resolves; returns an error only for problems that
/// reconnecting cannot fix (such as a topology mismatch).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let worker = Worker::new(settings, stop.clone())?;
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
        .https_only(false)
        .build()
        .context("the HTTP client could not be built")
}

/// What every command task needs; shared by reference.
struct Shared {
    settings: Settings,
    handler: AbortHandler,
    tenants: TenantPolicy,
}

struct Worker {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// Why a broker session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Worker {
    fn new(settings: Settings, stop: CancellationToken) -> anyhow::Result<Self> {
        let http = http_client(&settings)?;
        let credential = ClientCredential::from_settings(&settings)
            .context("no client credential is configured")?;
        let tokens = Arc::new(TokenProvider::new(http.clone(), &settings, credential));
        let handler = AbortHandler::new(
            GraphClient::new(http, &settings.graph),
            tokens,
            RetryPolicy::new(&settings.retry),
        );
        let tenants = TenantPolicy {
            default_tenant: settings.auth.tenant_id.clone(),
            allowed: settings.auth.allowed_tenants.clone(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                handler,
                tenants,
            }),
            stop,
        })
    }

    async fn run(self) -> anyhow::Result<()> {
        let mut delays = reconnect_backoff();
        loop {
            let problem = match self.session().await {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Lost(problem)) => {
                    // The session was up, so the next outage starts its backoff afresh.
                    delays = reconnect_backoff();
                    problem
                }
                Err(SessionError::Fatal(error)) => return Err(error),
                Err(SessionError::Retry(problem)) => problem,
            };
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

    /// One connection's life: set up, consume until it breaks or shutdown, tear down.
    async fn session(&self) -> Result<SessionEnd, SessionError> {
        let amqp_settings = &self.shared.settings.amqp;
        let connection = tokio::select! {
            () = self.stop.cancelled() => return Ok(SessionEnd::Shutdown),
            connection = amqp::connect(amqp_settings, "worker") => connection.map_err(SessionError::retry)?,
        };
        topology::declare(&connection, amqp_settings)
            .await
            .map_err(|error| {
                if error.is_fatal() {
                    SessionError::Fatal(error.into())
                } else {
                    SessionError::retry(error)
                }
            })?;
        let publisher = EventPublisher::open(&connection, amqp_settings)
            .await
            .map_err(SessionError::retry)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(SessionError::retry)?;
        channel
            .basic_qos(amqp_settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(SessionError::retry)?;
        let mut consumer = channel
            .basic_consume(
                amqp_settings.command_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::retry)?;
        tracing::info!(queue = %amqp_settings.command_queue, "consuming");

        let tasks = TaskTracker::new();
        let abandon = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(self.shared.settings.worker.concurrency));
        let end = loop {
            let permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => break SessionEnd::Shutdown,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let delivery = tokio::select! {
                biased;
                () = self.stop.cancelled() => break SessionEnd::Shutdown,
                delivery = consumer.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let shared = self.shared.clone();
                    let publisher = publisher.clone();
                    let abandon = abandon.clone();
                    tasks.spawn(async move {
                        process(&shared, &publisher, delivery, abandon).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => break SessionEnd::Lost(error.to_string()),
                None => break SessionEnd::Lost("the broker cancelled the consumer".into()),
            }
        };
        tasks.close();

        if let SessionEnd::Lost(_) = end {
            // Unsettled deliveries die with the channel; the broker delivers them again.
            abandon.cancel();
            tasks.wait().await;
            return Ok(end);
        }
        let _ = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        let grace = self.shared.settings.worker.shutdown_grace;
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
        // Closing the channel returns prefetched but unstarted deliveries to the queue.
        let _ = channel.close(200, "shutdown".into()).await;
        publisher.close().await;
        close(&connection).await;
        Ok(SessionEnd::Shutdown)
    }
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
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

async fn close(connection: &Connection) {
    let _ = connection.close(200, "shutdown".into()).await;
}

/// Handles one delivery from start to settlement. Never panics on what the message holds.
async fn process(
    shared: &Shared,
    publisher: &EventPublisher,
    delivery: Delivery,
    abandon: CancellationToken,
) {
    let received_at = Utc::now();
    let properties = delivery.properties.clone();
    let message_id = headers::property(properties.message_id());
    let parsed = AbortCommand::parse(&delivery.data, message_id, &shared.tenants);
    let summary = match &parsed {
        Ok(command) => command.summary(),
        Err(invalid) => invalid.summary.clone(),
    };
    let span = tracing::info_span!(
        "command",
        command_id = %summary.command_id,
        printer_id = summary.printer_id.as_deref().unwrap_or(""),
        print_job_id = summary.print_job_id.as_deref().unwrap_or(""),
        attempt = field::Empty,
        graph_request_id = field::Empty,
    );
    async move {
        let outcome = match parsed {
            Ok(command) => tokio::select! {
                outcome = shared.handler.handle(&command) => outcome,
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
        let routing = EventRouting {
            correlation_id: headers::property(properties.correlation_id())
                .unwrap_or(&summary.command_id)
                .to_owned(),
            reply_to: headers::property(properties.reply_to()).map(str::to_owned),
            traceparent: headers::text(properties.headers().as_ref(), headers::TRACEPARENT),
        };
        let event = OutcomeEvent::new(summary, outcome, received_at, Utc::now());
        settle(shared, publisher, &delivery, &event, &routing).await;
    }
    .instrument(span)
    .await;
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
            requeue(delivery).await;
            return;
        }
    }
    tracing::info!(
        outcome = data.outcome.as_str(),
        error_kind = data.error.as_ref().map(|e| e.kind.as_str()).unwrap_or(""),
        attempts = data.attempts,
        already_aborted = data.already_aborted,
        duration_ms = data.duration_ms,
        "command settled"
    );
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
