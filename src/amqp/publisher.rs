//! Publishing with publisher confirms: outcome events, dead-lettered commands, and dead
//! letters replayed to the command queue.
//!
//! A message counts as published only when the broker confirmed it; a `Nack` is an error,
//! so the caller leaves the command unacknowledged and the broker delivers it again.

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio_util::sync::CancellationToken;

use crate::amqp::headers;
use crate::config::AmqpSettings;
use crate::outcome::{EVENT_CONTENT_TYPE, ErrorKind, OutcomeEvent, routing_key};
use crate::retry::RetryHistory;

/// AMQP `delivery_mode` of a message the broker keeps on disk.
pub const PERSISTENT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker did not take the message: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// A mandatory message matched no queue, so the broker returned it.
    #[error("no queue took the message (is there a queue named '{0}'?)")]
    Unroutable(String),
}

/// What an outcome event is published with, taken from the command it reports on.
#[derive(Debug, Clone, Default)]
pub struct EventRouting {
    /// The command's `correlation_id`, else its command id.
    pub correlation_id: String,
    pub reply_to: Option<String>,
    pub traceparent: Option<String>,
}

/// Publishes on a channel of its own in confirm mode. Clones share the channel, and the
/// confirms of many concurrent publishes are in flight together.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    channel: Channel,
    results_exchange: ShortString,
    dead_letter_exchange: ShortString,
    /// Cancelled once the channel is found closed (say, the broker closed it because the
    /// results exchange was deleted), so the worker reconnects and redeclares instead of
    /// handling commands whose events cannot be published.
    closed: CancellationToken,
}

impl EventPublisher {
    pub async fn open(
        connection: &Connection,
        settings: &AmqpSettings,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            results_exchange: settings.results_exchange.as_str().into(),
            dead_letter_exchange: settings.dead_letter_exchange.as_str().into(),
            closed: CancellationToken::new(),
        })
    }

    /// Resolves once a publish found the channel closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Checks the channel after a failed publish.
    fn note<T>(&self, result: Result<T, PublishError>) -> Result<T, PublishError> {
        if result.is_err() && !self.channel.status().connected() {
            self.closed.cancel();
        }
        result
    }

    /// Publishes the event to the results exchange and, when asked, to `reply_to`; returns
    /// once the broker confirmed every copy.
    pub async fn publish_event(
        &self,
        event: &OutcomeEvent,
        routing: &EventRouting,
    ) -> Result<(), PublishError> {
        let result = self.publish_event_copies(event, routing).await;
        self.note(result)
    }

    async fn publish_event_copies(
        &self,
        event: &OutcomeEvent,
        routing: &EventRouting,
    ) -> Result<(), PublishError> {
        let body = event.to_json();
        let mut properties = BasicProperties::default()
            .with_content_type(EVENT_CONTENT_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(event.id().into())
            .with_correlation_id(routing.correlation_id.as_str().into())
            .with_timestamp(Utc::now().timestamp().try_into().unwrap_or_default())
            .with_type(event.event_type().into())
            .with_app_id(crate::outcome::EVENT_SOURCE.into());
        if let Some(traceparent) = &routing.traceparent {
            let mut table = FieldTable::default();
            headers::insert_text(&mut table, headers::TRACEPARENT, traceparent);
            properties = properties.with_headers(table);
        }
        // Events are not mandatory: nobody subscribing to an outcome, or a reply_to queue
        // that is gone, is the sender's business and must not hold the command back.
        // The properties are copied only for a second copy of the event.
        let for_reply = routing
            .reply_to
            .as_ref()
            .map(|queue| (queue, properties.clone()));
        let to_results = self
            .send(
                Routing::Optional,
                self.results_exchange.clone(),
                routing_key(event.outcome()).into(),
                &body,
                properties,
            )
            .await?;
        let to_reply = match for_reply {
            Some((queue, properties)) => Some(
                self.send(
                    Routing::Optional,
                    "".into(),
                    queue.as_str().into(),
                    &body,
                    properties,
                )
                .await?,
            ),
            None => None,
        };
        confirmed(to_results).await?;
        if let Some(confirm) = to_reply {
            confirmed(confirm).await?;
        }
        Ok(())
    }

    /// Publishes a copy of a failed command to the dead-letter exchange, with headers that
    /// say why, and returns once the broker confirmed it.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        source_queue: &str,
        failure: &DeadLetter<'_>,
    ) -> Result<(), PublishError> {
        let mut table = properties.headers().clone().unwrap_or_default();
        headers::insert_text(&mut table, headers::ABORT_ERROR, failure.kind.as_str());
        headers::insert_text(&mut table, headers::ABORT_ERROR_MESSAGE, failure.message);
        headers::insert_text(&mut table, headers::ABORT_COMMAND_ID, failure.command_id);
        headers::insert_text(&mut table, headers::ABORT_SOURCE_QUEUE, source_queue);
        headers::insert_text(
            &mut table,
            headers::ABORT_DEAD_LETTERED_AT,
            &Utc::now().to_rfc3339(),
        );
        let deaths = match table.inner().get(headers::ABORT_DEATHS) {
            Some(AMQPValue::LongLongInt(n)) => n + 1,
            _ => 1,
        };
        table.insert(headers::ABORT_DEATHS.into(), AMQPValue::LongLongInt(deaths));
        let properties = properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(PERSISTENT);
        self.park(
            self.dead_letter_exchange.clone(),
            source_queue.into(),
            body,
            properties,
        )
        .await
    }

    /// Parks a command in a delay queue for a broker-side retry, with headers that carry
    /// its history, and returns once the broker confirmed it.
    pub async fn delay(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        delay_queue: &str,
        history: &RetryHistory,
    ) -> Result<(), PublishError> {
        // A delayed retry starts a fresh series of deliveries: the count of the ones before
        // must not bring it to amqp.max_deliveries early.
        let mut table = properties
            .headers()
            .as_ref()
            .map(|table| headers::without(table, &[headers::BROKER_DELIVERY_COUNT]))
            .unwrap_or_default();
        table.insert(
            headers::ABORT_REDELIVERIES.into(),
            AMQPValue::LongLongInt(history.redeliveries.into()),
        );
        table.insert(
            headers::ABORT_ATTEMPTS.into(),
            AMQPValue::LongLongInt(history.attempts.into()),
        );
        headers::insert_text(
            &mut table,
            headers::ABORT_FIRST_RECEIVED_AT,
            &history.first_received_at.to_rfc3339(),
        );
        let properties = properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(PERSISTENT);
        self.park("".into(), delay_queue.into(), body, properties)
            .await
    }

    /// A command copy that must land in a queue: mandatory, confirmed, and a closed
    /// channel noted.
    async fn park(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let result = async {
            let confirm = self
                .send(Routing::Required, exchange, routing_key, body, properties)
                .await?;
            confirmed(confirm).await
        };
        let result = result.await;
        self.note(result)
    }

    /// Publishes a dead-lettered command to `command_queue` through the default exchange
    /// and returns once the broker confirmed it. Mandatory, so a missing command queue is an
    /// error instead of a command silently dropped.
    pub async fn replay(
        &self,
        body: &[u8],
        properties: BasicProperties,
        command_queue: &str,
    ) -> Result<(), PublishError> {
        self.park(
            "".into(),
            command_queue.into(),
            body,
            properties.with_delivery_mode(PERSISTENT),
        )
        .await
    }

    async fn send(
        &self,
        routing: Routing,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, PublishError> {
        let options = BasicPublishOptions {
            mandatory: routing == Routing::Required,
            ..BasicPublishOptions::default()
        };
        Ok(self
            .channel
            .basic_publish(exchange, routing_key, options, body, properties)
            .await?)
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "shutdown".into()).await;
    }
}

/// Whether a message that reaches no queue is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routing {
    /// Commands (dead letters, delayed retries, replays) must land in a queue: the broker
    /// returns one that does not, and the publish fails instead of losing it.
    Required,
    /// Events may go nowhere.
    Optional,
}

/// Why a command is dead-lettered.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub kind: ErrorKind,
    pub message: &'a str,
    pub command_id: &'a str,
}

/// Waits for the broker's confirm of one publish: a nack, or a mandatory message returned
/// because no queue took it, is an error.
pub async fn confirmed(confirm: PublisherConfirm) -> Result<(), PublishError> {
    match confirm.await? {
        // Only a mandatory publish can come back; the broker acks it after returning it.
        Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable(
            returned.delivery.routing_key.to_string(),
        )),
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}
