//! Declares the topology of the README's *Topology* section, or checks it when
//! `amqp.declare = false`; [`verify`] is the same check for `print-abort-worker check`,
//! reporting what it found.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};

use crate::config::AmqpSettings;

/// The broker refused the topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// An existing queue or exchange has other settings than this worker would declare.
    #[error(
        "{what} '{name}' exists with different settings: {detail}. Delete it, align amqp.* \
         settings with it, or set amqp.declare = false"
    )]
    Mismatch {
        what: &'static str,
        name: String,
        detail: String,
    },
    /// A passive check found nothing by that name.
    #[error(
        "{what} '{name}' does not exist. Create it as docs/OPERATIONS.md describes, or set \
         amqp.declare = true"
    )]
    Missing { what: &'static str, name: String },
    #[error("{what} '{name}' could not be declared: {source}")]
    Broker {
        what: &'static str,
        name: String,
        source: lapin::Error,
    },
}

impl TopologyError {
    /// A mismatch will not go away by reconnecting; other errors might.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Mismatch { .. })
    }
}

/// The arguments of the command queue: its type and its dead-letter exchange.
pub fn command_queue_arguments(settings: &AmqpSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(settings.queue_type.as_str())),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(settings.dead_letter_exchange.as_str())),
    );
    arguments
}

/// The queue a command waits in for a delayed retry: named after its delay, so changing
/// the delays in the configuration never collides with a queue declared before.
pub fn delay_queue(settings: &AmqpSettings, delay: Duration) -> String {
    format!("{}.delay.{}ms", settings.command_queue, delay.as_millis())
}

/// A delay queue holds each message for its delay, then dead-letters it back to the
/// command queue through the default exchange. Classic, because per-queue TTL is what every
/// RabbitMQ since 3.8 supports without plugins.
fn delay_queue_arguments(settings: &AmqpSettings, delay: Duration) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    arguments.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(settings.command_queue.as_str())),
    );
    arguments
}

/// Declares (or, with `amqp.declare = false`, only checks) the worker's topology.
pub async fn declare(
    connection: &Connection,
    settings: &AmqpSettings,
    redelivery_delays: &[Duration],
) -> Result<(), TopologyError> {
    if !settings.declare {
        return check_command_queue(connection, settings).await;
    }
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let exchanges = [
        (&settings.results_exchange, ExchangeKind::Topic),
        (&settings.dead_letter_exchange, ExchangeKind::Fanout),
    ];
    for (name, kind) in exchanges {
        let channel = open(connection, "exchange", name).await?;
        channel
            .exchange_declare(
                name.as_str().into(),
                kind,
                durable_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(|error| classify("exchange", name, error))?;
        let _ = channel.close(200, "declared".into()).await;
    }

    let mut dead_letter_arguments = FieldTable::default();
    dead_letter_arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(settings.queue_type.as_str())),
    );
    let queues = [
        (&settings.dead_letter_queue, dead_letter_arguments),
        (&settings.command_queue, command_queue_arguments(settings)),
    ];
    for (name, arguments) in queues {
        let channel = open(connection, "queue", name).await?;
        channel
            .queue_declare(name.as_str().into(), durable_queue, arguments)
            .await
            .map_err(|error| classify("queue", name, error))?;
        let _ = channel.close(200, "declared".into()).await;
    }
    for delay in redelivery_delays {
        let name = delay_queue(settings, *delay);
        let channel = open(connection, "queue", &name).await?;
        channel
            .queue_declare(
                name.as_str().into(),
                durable_queue,
                delay_queue_arguments(settings, *delay),
            )
            .await
            .map_err(|error| classify("queue", &name, error))?;
        let _ = channel.close(200, "declared".into()).await;
    }
    let channel = open(connection, "queue", &settings.dead_letter_queue).await?;
    channel
        .queue_bind(
            settings.dead_letter_queue.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| classify("queue", &settings.dead_letter_queue, error))?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

async fn check_command_queue(
    connection: &Connection,
    settings: &AmqpSettings,
) -> Result<(), TopologyError> {
    inspect_queue(connection, &settings.command_queue)
        .await
        .map(drop)
}

/// How many messages wait in a queue and how many consumers it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStatus {
    pub messages: u32,
    pub consumers: u32,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyStatus {
    pub command_queue: QueueStatus,
    pub dead_letter_queue: QueueStatus,
}

/// Checks that the topology is as the worker needs it: with `amqp.declare = true` by
/// declaring it exactly as the worker does at start (which creates what is missing and
/// turns a queue with other arguments into [`TopologyError::Mismatch`]); with
/// `amqp.declare = false` by passively checking that every queue and exchange exists,
/// delay queues included, since a publish to a missing one would be dropped unnoticed.
pub async fn verify(
    connection: &Connection,
    settings: &AmqpSettings,
    redelivery_delays: &[Duration],
) -> Result<TopologyStatus, TopologyError> {
    if settings.declare {
        declare(connection, settings, redelivery_delays).await?;
    } else {
        for exchange in [&settings.results_exchange, &settings.dead_letter_exchange] {
            inspect_exchange(connection, exchange).await?;
        }
        for delay in redelivery_delays {
            inspect_queue(connection, &delay_queue(settings, *delay)).await?;
        }
    }
    Ok(TopologyStatus {
        command_queue: inspect_queue(connection, &settings.command_queue).await?,
        dead_letter_queue: inspect_queue(connection, &settings.dead_letter_queue).await?,
    })
}

/// Deletes the command and dead-letter queues and both exchanges, whichever exist: for the
/// demo and tests, which declare a throw-away topology. Messages in the queues are lost.
pub async fn delete(channel: &lapin::Channel, settings: &AmqpSettings) {
    for queue in [&settings.command_queue, &settings.dead_letter_queue] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [&settings.results_exchange, &settings.dead_letter_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Passively declares a queue: its status if it exists, [`TopologyError::Missing`] if not.
pub async fn inspect_queue(
    connection: &Connection,
    name: &str,
) -> Result<QueueStatus, TopologyError> {
    let channel = open(connection, "queue", name).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
        .map_err(|error| classify("queue", name, error))?;
    let _ = channel.close(200, "checked".into()).await;
    Ok(QueueStatus {
        messages: queue.message_count(),
        consumers: queue.consumer_count(),
    })
}

async fn inspect_exchange(connection: &Connection, name: &str) -> Result<(), TopologyError> {
    let channel = open(connection, "exchange", name).await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    // A passive declare ignores the kind.
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .map_err(|error| classify("exchange", name, error))?;
    let _ = channel.close(200, "checked".into()).await;
    Ok(())
}

/// Each declaration gets its own channel: a refused one closes the channel it ran on.
async fn open(
    connection: &Connection,
    what: &'static str,
    name: &str,
) -> Result<lapin::Channel, TopologyError> {
    connection
        .create_channel()
        .await
        .map_err(|source| TopologyError::Broker {
            what,
            name: name.to_owned(),
            source,
        })
}

/// Sorts the broker's refusals: 406 PRECONDITION_FAILED is a mismatch, 404 NOT_FOUND (only
/// a passive declare gets it) a missing queue or exchange.
fn classify(what: &'static str, name: &str, error: lapin::Error) -> TopologyError {
    if let lapin::ErrorKind::ProtocolError(amqp) = error.kind() {
        match amqp.get_id() {
            406 => {
                return TopologyError::Mismatch {
                    what,
                    name: name.to_owned(),
                    detail: amqp.get_message().to_string(),
                };
            }
            404 => {
                return TopologyError::Missing {
                    what,
                    name: name.to_owned(),
                };
            }
            _ => {}
        }
    }
    TopologyError::Broker {
        what,
        name: name.to_owned(),
        source: error,
    }
}
