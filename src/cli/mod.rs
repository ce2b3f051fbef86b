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

use anyhow::{Context as _, bail};
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
use crate::amqp::publisher::{self, PublishError};
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

/// A channel in confirm mode for sending commands.
pub async fn confirm_channel(connection: &Connection) -> anyhow::Result<Channel> {
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
) -> anyhow::Result<PublisherConfirm> {
    Ok(channel
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
        .await?)
}

/// Waits for a confirm; a nack or a return (no such queue) is an error.
pub async fn confirmed(confirm: PublisherConfirm, queue: &str) -> anyhow::Result<()> {
    match publisher::confirmed(confirm).await {
        Err(PublishError::Unroutable(_)) => bail!(
            "the broker has no queue {queue:?} to route the command to; is the worker's topology declared?"
        ),
        result => Ok(result?),
    }
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
) -> anyhow::Result<(String, Consumer)> {
    let queue = exclusive_queue(channel)
        .await
        .context("a private queue for outcome events could not be declared")?;
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
            .with_context(|| format!("cannot bind to the results exchange {exchange:?}"))?;
    }
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("the private queue for outcome events could not be consumed")?;
    Ok((queue, consumer))
}

/// Outcome events arriving on a private, exclusive queue.
pub struct EventStream {
    pub queue: String,
    consumer: Consumer,
}

impl EventStream {
    /// A server-named exclusive queue, bound to the results exchange for every outcome when
    /// `results_exchange` is given (otherwise only `reply_to` deliveries reach it).
    pub async fn open(channel: &Channel, results_exchange: Option<&str>) -> anyhow::Result<Self> {
        let (queue, consumer) = outcome_consumer(channel, results_exchange).await?;
        Ok(Self { queue, consumer })
    }

    /// The next event, `None` when `timeout` passes first.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => bail!("the broker closed the event queue"),
            Ok(Some(delivery)) => {
                let delivery = delivery?;
                let event = serde_json::from_slice(&delivery.data)
                    .context("an outcome event that is not JSON")?;
                Ok(Some(event))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("plain – text"), "plain – text");
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }
}
