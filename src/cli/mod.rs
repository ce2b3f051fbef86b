//! The command-line tools besides the daemon: sending commands, the demo, the operator's
//! `check` and `dlq`, and the pieces they share — connecting, publishing a command with a
//! confirm, waiting for outcome events. [`command_line`] is the command line itself, which
//! `main.rs` parses and runs.

pub mod check;
pub mod command_line;
pub mod demo;
pub mod dlq;
pub mod enqueue;

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer, PublisherConfirm};
use serde_json::Value;

use crate::Settings;
use crate::amqp;
use crate::amqp::dead_letters::DeadLetterError;
use crate::amqp::publisher::{self, PublishError};
use crate::amqp::topology::TopologyError;
use crate::auth::ClientCredential;
use crate::config::AmqpSettings;
use crate::config::ConfigError;

/// Exit code of a usage or configuration error (the README's *Command line*).
pub const EXIT_CONFIG: u8 = 2;

/// How long connecting to the broker may take: an address that drops packets would
/// otherwise keep an operator waiting for the operating system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the broker could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
}

/// Why a command-line tool stopped, with its cause: shown to the person who ran it (by
/// [`crate::auth::error_chain`]), never matched on for a decision.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The broker could not be reached; `what` says what the tool was connecting for.
    #[error("{what}: {source}")]
    Connect {
        what: String,
        #[source]
        source: ConnectError,
    },
    #[error("the broker failed: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    NotTaken(#[from] NotTaken),
    #[error(transparent)]
    Events(#[from] EventQueueError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    #[error(transparent)]
    Settings(#[from] ConfigError),
    /// Boxed: the worker's error is large, and a tool's error travels through every return.
    #[error(transparent)]
    Worker(Box<crate::RunError>),
    #[error("the Graph simulator could not start: {0}")]
    Simulator(#[source] std::io::Error),
    #[error(transparent)]
    Faults(#[from] graph_sim::InvalidFaults),
    #[error("the {0} task failed: {1}")]
    Task(&'static str, #[source] tokio::task::JoinError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error("no outcome for command {command_id} within {timeout:?}")]
    NoOutcome {
        command_id: String,
        timeout: Duration,
    },
    #[error("no outcome event within 30 s; is the worker stuck?")]
    NoEvents,
    #[error("a JSON document could not be written: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Usage(String),
}

impl From<crate::RunError> for ToolError {
    fn from(error: crate::RunError) -> Self {
        Self::Worker(Box::new(error))
    }
}

impl ToolError {
    /// `error` from connecting, said as `what` the tool was connecting for.
    pub fn connect(what: impl Into<String>) -> impl FnOnce(ConnectError) -> Self {
        let what = what.into();
        move |source| Self::Connect { what, source }
    }
}

/// The settings of the worker and of `check`: every layer, and the client credential loaded
/// and tried once (a file read, an assertion signed), so that a credential that cannot work
/// stops the start with exit code 2 instead of pausing the worker later.
pub fn load_worker_settings(file: Option<&Path>) -> Result<Settings, ConfigError> {
    let settings = Settings::load(file)?;
    ClientCredential::from_settings(&settings)?;
    Ok(settings)
}

/// Connects like the worker does, within [`CONNECT_TIMEOUT`].
pub async fn connect(settings: &AmqpSettings, role: &str) -> Result<Connection, ConnectError> {
    tokio::time::timeout(CONNECT_TIMEOUT, amqp::connect(settings, role))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::from)
}

/// Text from a message or the broker, safe to print on a terminal: control characters
/// (escape sequences among them) are shown escaped instead of acted on.
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Resolves on SIGTERM or SIGINT: how every long-running command of this package stops.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Why a command the tools sent was not taken by the broker.
#[derive(Debug, thiserror::Error)]
pub enum NotTaken {
    #[error(
        "the broker has no queue {0:?} to route the command to; is the worker's topology declared?"
    )]
    NoQueue(String),
    #[error(transparent)]
    Publish(PublishError),
}

/// Why the private queue for outcome events could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum EventQueueError {
    #[error("a private queue for outcome events could not be declared: {0}")]
    Declare(#[source] lapin::Error),
    #[error("cannot bind to the results exchange {exchange:?}: {source}")]
    Bind {
        exchange: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the private queue for outcome events could not be consumed: {0}")]
    Consume(#[source] lapin::Error),
    #[error("the broker closed the event queue")]
    Closed,
    #[error(transparent)]
    Delivery(#[from] lapin::Error),
    #[error("an outcome event that is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// A channel in confirm mode for sending commands.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// The AMQP properties of a command message.
pub fn command_properties(command_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(publisher::PERSISTENT)
        .with_message_id(command_id.into())
        .with_correlation_id(command_id.into())
}

/// Publishes a command to the command queue; the returned confirm resolves when the broker
/// has it.
pub async fn send_command(
    channel: &Channel,
    settings: &AmqpSettings,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            "".into(),
            settings.command_queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
}

/// Waits for a confirm; a nack or a return (no such queue) is an error.
pub async fn confirmed(confirm: PublisherConfirm, queue: &str) -> Result<(), NotTaken> {
    publisher::confirmed(confirm)
        .await
        .map_err(|error| match error {
            PublishError::Unroutable(_) => NotTaken::NoQueue(queue.to_owned()),
            error => NotTaken::Publish(error),
        })
}

/// Declares a server-named queue of this connection's own, deleted when the connection
/// closes; returns its name.
pub async fn exclusive_queue(channel: &Channel) -> Result<String, lapin::Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.name().to_string())
}

/// Declares a server-named exclusive queue, binds it to `results_exchange` (when given) for
/// every outcome, and consumes it without acks; returns the queue's name and the consumer.
pub async fn outcome_consumer(
    channel: &Channel,
    results_exchange: Option<&str>,
) -> Result<(String, Consumer), EventQueueError> {
    let queue = exclusive_queue(channel)
        .await
        .map_err(EventQueueError::Declare)?;
    if let Some(exchange) = results_exchange {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "printjob.abort.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| EventQueueError::Bind {
                exchange: exchange.to_owned(),
                source,
            })?;
    }
    let consumer = consume_without_acks(channel, &queue)
        .await
        .map_err(EventQueueError::Consume)?;
    Ok((queue, consumer))
}

/// Consumes `queue` with automatic acks: for queues of this connection's own, where a
/// message lost with the connection is lost with its reader too.
pub async fn consume_without_acks(
    channel: &Channel,
    queue: &str,
) -> Result<Consumer, lapin::Error> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Outcome events arriving on a private, exclusive queue.
pub struct EventStream {
    pub queue: String,
    consumer: Consumer,
}

impl EventStream {
    /// A server-named exclusive queue, bound to the results exchange for every outcome when
    /// `results_exchange` is given (otherwise only `reply_to` deliveries reach it).
    pub async fn open(
        channel: &Channel,
        results_exchange: Option<&str>,
    ) -> Result<Self, EventQueueError> {
        let (queue, consumer) = outcome_consumer(channel, results_exchange).await?;
        Ok(Self { queue, consumer })
    }

    /// The next event, `None` when `timeout` passes first.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Value>, EventQueueError> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(EventQueueError::Closed),
            Ok(Some(delivery)) => {
                let delivery = delivery?;
                let event =
                    serde_json::from_slice(&delivery.data).map_err(EventQueueError::NotJson)?;
                Ok(Some(event))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tools_error_is_shown_with_its_causes_once() {
        let error = ToolError::connect("cannot connect to the broker")(ConnectError::Timeout);
        assert_eq!(
            crate::auth::error_chain(&error),
            "cannot connect to the broker: no answer within 15s"
        );
        let read = ToolError::Read {
            path: "commands.jsonl".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            crate::auth::error_chain(&read),
            "cannot read commands.jsonl: entity not found"
        );
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("plain – text"), "plain – text");
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }
}
