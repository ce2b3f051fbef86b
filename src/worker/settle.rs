//! One delivery from start to settlement: read at the edge into a command with its
//! properties, retry history and trace context, handled, then settled as
//! [`crate::retry::settlement`] decides — the outcome event and, for a command that did not
//! succeed, a dead-letter copy, then the ack; or a copy into a delay queue, then the ack; or
//! back to the queue.

use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use super::Shared;
use crate::amqp::headers::Envelope;
use crate::amqp::publisher::{DeadLetter, EventPublisher, EventRouting, PublishError};
use crate::amqp::topology;
use crate::command::AbortCommand;
use crate::handler::Disposition;
use crate::outcome::{ErrorKind, Outcome, OutcomeEvent, OutcomeKind};
use crate::retry::{RetryHistory, Settlement, settlement};
use crate::telemetry::metrics;

/// Handles one delivery from start to settlement. Never panics on what the message holds.
pub(super) async fn process(
    shared: &Shared,
    publisher: &EventPublisher,
    delivery: Delivery,
    abandon: CancellationToken,
) {
    let Envelope {
        history,
        deliveries,
        message_id,
        correlation_id,
        reply_to,
        trace,
    } = Envelope::read(&delivery.properties);
    let parsed = AbortCommand::parse(&delivery.data, message_id.as_deref(), &shared.rules);
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
        let max_deliveries = shared.settings.amqp.max_deliveries.get();
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
        let ladder = &shared.settings.retry.redelivery_delays;
        let decision = settlement(&outcome, &history, limit_reached, ladder);
        let finish = async {
            if let Settlement::RetryLater(delay) = decision {
                park(shared, publisher, &delivery, &outcome, &history, delay).await;
                return;
            }
            let routing = EventRouting {
                correlation_id: correlation_id.unwrap_or_else(|| summary.command_id.clone()),
                reply_to,
                traceparent: Some(trace.to_string()),
            };
            let event = OutcomeEvent::new(summary, outcome, history.first_received_at, Utc::now());
            let dead_letter = decision == Settlement::ReportAndDeadLetter;
            settle(shared, publisher, &delivery, &event, &routing, dead_letter).await;
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
    dead_letter: bool,
) {
    let data = &event.data;
    if let Err(error) = publisher.publish_event(event, routing).await {
        tracing::error!(%error, "outcome event not confirmed; the command will be redelivered");
        requeue(delivery).await;
        return;
    }
    if let Some(error) = data.error.as_ref().filter(|_| dead_letter) {
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
