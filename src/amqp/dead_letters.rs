//! The dead-letter queue from the operator's side: reading it without taking anything out,
//! and moving chosen dead letters back to the command queue.
//!
//! Both take messages with `basic.get` and without auto-ack. A message that is not moved
//! stays unacknowledged until the channel closes, and the broker then puts it back, body and
//! headers as they were; a run that is interrupted loses nothing the same way. A moved
//! message is acknowledged only after its copy in the command queue was confirmed, so an
//! interruption can leave at most the one in flight in both queues.
//!
//! A run always goes through every message the queue held when it started, even when it
//! shows or moves fewer: a quorum queue puts returned messages behind the ones still
//! waiting, so returning all of them together is what keeps their order. A replayed command
//! that fails again lands behind them and waits for the next run. Before a run ends it
//! waits until the broker has put the returned messages back, so the next run sees them.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, Channel, Connection};

use crate::amqp::headers;
use crate::amqp::publisher::{EventPublisher, PublishError};
use crate::amqp::topology::{self, TopologyError};
use crate::command::{AbortCommand, CommandRules};
use crate::config::AmqpSettings;

/// Why the dead-letter queue could not be read or a dead letter not moved.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The dead-letter queue or the command queue does not exist, or the broker refused it.
    #[error(transparent)]
    Queue(#[from] TopologyError),
    #[error("the dead-letter queue could not be read: {0}")]
    Read(#[source] lapin::Error),
    #[error("a dead letter could not be replayed: {0}")]
    Replay(#[from] PublishError),
    #[error(
        "a replayed dead letter could not be acknowledged, so it is both in the command queue \
         and still in the dead-letter queue: {0}"
    )]
    Ack(#[source] lapin::Error),
}

/// One dead-lettered command, as an operator needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetteredCommand {
    /// The id its outcome event carried (`x-abort-command-id`); for a message the broker
    /// dead-lettered by itself, the body's `commandId` or else the AMQP `message_id`.
    pub command_id: Option<String>,
    /// From the body, when it holds a valid id.
    pub printer_id: Option<String>,
    pub print_job_id: Option<String>,
    /// `x-abort-error`: the error kind.
    pub error_kind: Option<String>,
    /// `x-abort-error-message`: the message of the outcome event.
    pub error_message: Option<String>,
    /// `x-abort-deaths`: how often this worker dead-lettered the command.
    pub deaths: u32,
    /// The sum of the broker's `x-death` counts: present when the broker dead-lettered the
    /// message itself, or the command went through delay queues.
    pub broker_deaths: Option<u32>,
    /// `x-abort-dead-lettered-at`.
    pub dead_lettered_at: Option<String>,
    /// `x-abort-source-queue`.
    pub source_queue: Option<String>,
}

impl DeadLetteredCommand {
    /// Reads a dead letter; never fails, whatever the body holds. `rules` name the Graph API
    /// a `jobUrl` is read against.
    pub fn of(delivery: &Delivery, rules: &CommandRules) -> Self {
        let properties = &delivery.properties;
        let table = properties.headers().as_ref();
        let message_id = headers::property(properties.message_id());
        let recorded = headers::text(table, headers::ABORT_COMMAND_ID);
        let fallback = recorded.as_deref().or(message_id);
        // Whether the tenant is allowed does not matter here: only the ids are wanted.
        let summary = match AbortCommand::parse(&delivery.data, fallback, rules) {
            Ok(command) => command.summary(),
            Err(invalid) => invalid.summary,
        };
        // Without any id, parsing invents a fresh one; no event ever named it, so show none.
        let command_id = match fallback {
            Some(_) => Some(summary.command_id),
            None => body_command_id(&delivery.data),
        };
        Self {
            command_id,
            printer_id: summary.printer_id,
            print_job_id: summary.print_job_id,
            error_kind: headers::text(table, headers::ABORT_ERROR),
            error_message: headers::text(table, headers::ABORT_ERROR_MESSAGE),
            deaths: headers::count(table, headers::ABORT_DEATHS).unwrap_or(0),
            broker_deaths: headers::broker_deaths(table),
            dead_lettered_at: headers::text(table, headers::ABORT_DEAD_LETTERED_AT),
            source_queue: headers::text(table, headers::ABORT_SOURCE_QUEUE),
        }
    }
}

fn body_command_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("commandId")?.as_str()?.to_owned())
}

/// The first dead letters in the queue, and how many it holds.
#[derive(Debug, Clone)]
pub struct Listing {
    pub total: u32,
    pub dead_letters: Vec<DeadLetteredCommand>,
}

/// Reads the first `limit` dead letters of `amqp.dead_letter_queue` and leaves every
/// message where it was.
pub async fn list(
    connection: &Connection,
    settings: &AmqpSettings,
    rules: &CommandRules,
    limit: usize,
) -> Result<Listing, DeadLetterError> {
    let mut scan = Scan::start(connection, &settings.dead_letter_queue).await?;
    let total = scan.left;
    let read = async {
        let mut dead_letters = Vec::new();
        while let Some(delivery) = scan.next().await? {
            if dead_letters.len() < limit {
                dead_letters.push(DeadLetteredCommand::of(&delivery, rules));
            }
        }
        Ok::<_, DeadLetterError>(dead_letters)
    }
    .await;
    scan.finish(connection).await;
    Ok(Listing {
        total,
        dead_letters: read?,
    })
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages in the dead-letter queue when the replay started.
    pub total: u32,
    /// Dead letters moved to the command queue (with `dry_run`: that would have been).
    pub moved: u32,
}

/// Moves the dead letters that `select` picks to `amqp.command_queue`, calling `moved` for
/// each once it is there; leaves the others in place. With `dry_run`, only calls `moved`.
pub async fn replay(
    connection: &Connection,
    settings: &AmqpSettings,
    rules: &CommandRules,
    select: impl Fn(&DeadLetteredCommand) -> bool,
    dry_run: bool,
    mut moved: impl FnMut(&DeadLetteredCommand),
) -> Result<ReplayReport, DeadLetterError> {
    // A missing command queue is a clear error before anything is taken.
    topology::inspect_queue(connection, &settings.command_queue).await?;
    let publisher = EventPublisher::open(connection, settings)
        .await
        .map_err(DeadLetterError::Read)?;
    let mut scan = Scan::start(connection, &settings.dead_letter_queue).await?;
    let total = scan.left;
    let run = async {
        let mut count = 0;
        while let Some(delivery) = scan.next().await? {
            let dead_letter = DeadLetteredCommand::of(&delivery, rules);
            if !select(&dead_letter) {
                continue;
            }
            if !dry_run {
                let properties = replay_properties(&delivery.properties, &dead_letter);
                publisher
                    .replay(&delivery.data, properties, &settings.command_queue)
                    .await?;
                scan.ack(&delivery).await?;
            }
            count += 1;
            moved(&dead_letter);
        }
        Ok::<_, DeadLetterError>(count)
    }
    .await;
    scan.finish(connection).await;
    publisher.close().await;
    Ok(ReplayReport { total, moved: run? })
}

/// The properties of a replayed command: the original ones without the headers that said
/// why it failed. A command whose id was never in its body or `message_id` gets it as
/// `message_id`, so it keeps the id its outcome events and dead-letter entries showed.
fn replay_properties(
    properties: &BasicProperties,
    dead_letter: &DeadLetteredCommand,
) -> BasicProperties {
    let mut replayed = properties.clone();
    if let Some(table) = properties.headers() {
        replayed = replayed.with_headers(headers::without(table, headers::STRIPPED_ON_REPLAY));
    }
    if headers::property(properties.message_id()).is_none()
        && let Some(id) = &dead_letter.command_id
    {
        replayed = replayed.with_message_id(id.as_str().into());
    }
    replayed
}

/// Takes the messages that were in a queue when the scan started, one at a time, without
/// acknowledging them.
struct Scan {
    channel: Channel,
    queue: String,
    /// Messages still to take; the queue's length at the start.
    left: u32,
    /// Messages taken and not acknowledged, which go back when the scan ends.
    held: u32,
}

/// How long [`Scan::finish`] waits for the broker to put the messages back.
const RETURN_TIMEOUT: Duration = Duration::from_secs(10);

impl Scan {
    async fn start(connection: &Connection, queue: &str) -> Result<Self, DeadLetterError> {
        let left = topology::inspect_queue(connection, queue).await?.messages;
        let channel = connection
            .create_channel()
            .await
            .map_err(DeadLetterError::Read)?;
        Ok(Self {
            channel,
            queue: queue.to_owned(),
            left,
            held: 0,
        })
    }

    async fn next(&mut self) -> Result<Option<Delivery>, DeadLetterError> {
        if self.left == 0 {
            return Ok(None);
        }
        let message = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(DeadLetterError::Read)?;
        match message {
            Some(message) => {
                self.left -= 1;
                self.held += 1;
                Ok(Some(message.delivery))
            }
            None => {
                self.left = 0;
                Ok(None)
            }
        }
    }

    /// Removes a message for good.
    async fn ack(&mut self, delivery: &Delivery) -> Result<(), DeadLetterError> {
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(DeadLetterError::Ack)?;
        self.held -= 1;
        Ok(())
    }

    /// Closes the channel, which returns every message held to the queue, and waits until
    /// the broker shows them there again (a quorum queue takes a moment), so a run that
    /// follows at once counts and sees them.
    async fn finish(self, connection: &Connection) {
        let _ = self.channel.close(200, "done".into()).await;
        let deadline = tokio::time::Instant::now() + RETURN_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            match topology::inspect_queue(connection, &self.queue).await {
                Ok(status) if status.messages < self.held => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ => return,
            }
        }
    }
}
