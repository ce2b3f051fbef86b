//! The load side of a measurement: the broker connection, a fresh topology per measurement,
//! the commands, and publishing them — all before the subject starts (pre-load) or at a
//! steady rate while it runs (paced).
//!
//! Every command carries a [`Stamp`] — which run, which command, when it was published — in
//! its `commandId`, `message_id` and `correlation_id`. The worker copies the correlation id
//! into its outcome event and the floor copies it into its reply, so the collector reads
//! both without parsing a body.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use print_abort_worker::amqp::publisher;
use print_abort_worker::amqp::topology::{self, TopologyError};
use print_abort_worker::config::{AmqpSettings, BrokerNodes, QueueType};

/// How long connecting to the broker may take before the bench gives up with advice.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Confirms awaited at once while publishing: enough to keep the broker busy, few enough
/// that a refused publish is noticed soon.
const CONFIRM_WINDOW: usize = 1024;

/// Commands spread over this many printers, as a real fleet would.
const PRINTERS: u64 = 64;

/// A connection to the broker for everything but the subject: declaring, loading,
/// collecting and deleting.
pub struct Broker {
    connection: Connection,
    url: BrokerNodes,
}

impl Broker {
    /// Connects, or fails with a message that says where the broker was expected and how
    /// to start one.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let url: BrokerNodes = url
            .parse()
            .map_err(|error| anyhow::anyhow!("--amqp-url {error}"))?;
        let properties =
            ConnectionProperties::default().with_connection_name("print-abort-worker bench".into());
        let connect = Connection::connect_uri(url.first().uri().clone(), properties);
        let problem = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(connection)) => {
                return Ok(Self { connection, url });
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        bail!(
            "RabbitMQ is not reachable at {} ({problem}). The benchmark needs a real broker: \
             start it with `rabbitmq-server -detached && rabbitmqctl await_startup`, or point \
             --amqp-url at one",
            url.redacted()
        )
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        self.connection
            .create_channel()
            .await
            .context("a channel to the broker could not be opened")
    }

    /// The URL, for the subject processes.
    pub fn url(&self) -> &BrokerNodes {
        &self.url
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "benchmark done".into()).await;
    }
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    url.parse::<BrokerNodes>().map_or_else(
        |_| "<an unparsable broker URL>".to_owned(),
        |url| url.redacted().to_owned(),
    )
}

/// The names of one measurement, as the worker's settings hold them. Fresh for every
/// measurement, so runs (and engineers sharing a broker) never see each other's messages.
#[derive(Debug, Clone)]
pub struct Topology {
    pub amqp: AmqpSettings,
}

impl Topology {
    /// `bench.<run>.<subject>.*`.
    pub fn fresh(run: &str, subject: &str, url: &BrokerNodes, queue_type: QueueType) -> Self {
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let prefix = format!("bench.{run}.{subject}.{unique}");
        Self {
            amqp: AmqpSettings {
                url: url.clone(),
                queue_type,
                command_queue: format!("{prefix}.commands"),
                results_exchange: format!("{prefix}.results"),
                dead_letter_exchange: format!("{prefix}.dlx"),
                dead_letter_queue: format!("{prefix}.dead"),
                ..AmqpSettings::default()
            },
        }
    }

    /// Declares exactly what the worker declares, with the worker's own code, so the floor
    /// consumes from the same kind of queue and the worker finds its topology in place.
    pub async fn declare(&self, broker: &Broker) -> anyhow::Result<()> {
        topology::declare(&broker.connection, &self.amqp, &[])
            .await
            .context("the benchmark topology could not be declared")
    }

    /// Deletes every queue and exchange of the measurement; returns how many messages
    /// were left in the dead-letter queue (a healthy run leaves none). When the bench's
    /// connection was lost (a broker restart, say), it tries once more on a fresh one, and
    /// names what it left behind if that fails too.
    pub async fn delete(&self, broker: &Broker) -> anyhow::Result<u32> {
        let first = match self.delete_on(&broker.connection).await {
            Ok(dead_letters) => return Ok(dead_letters),
            Err(error) => error,
        };
        let retry = async {
            let fresh = Broker::connect(broker.url.expose_secret()).await?;
            let deleted = self.delete_on(&fresh.connection).await;
            fresh.close().await;
            deleted
        };
        let amqp = &self.amqp;
        retry.await.with_context(|| {
            format!(
                "queues {} and {} and exchanges {} and {} may be left on the broker \
                 (first attempt: {first:#})",
                amqp.command_queue,
                amqp.dead_letter_queue,
                amqp.results_exchange,
                amqp.dead_letter_exchange
            )
        })
    }

    async fn delete_on(&self, connection: &Connection) -> anyhow::Result<u32> {
        let amqp = &self.amqp;
        // Counted first: deleting the queue loses them.
        let dead_letters = topology::inspect_queue(connection, &amqp.dead_letter_queue)
            .await?
            .messages;
        let channel = connection
            .create_channel()
            .await
            .context("a channel to the broker could not be opened")?;
        topology::delete(&channel, amqp).await;
        let _ = channel.close(200, "deleted".into()).await;
        // `topology::delete` keeps quiet about failures; a queue still there is one.
        match topology::inspect_queue(connection, &amqp.command_queue).await {
            Err(TopologyError::Missing { .. }) => Ok(dead_letters),
            Ok(_) => bail!("queue {} is still there", amqp.command_queue),
            Err(error) => Err(error.into()),
        }
    }
}

/// Which command an outcome answers, and when that command was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    /// Wall-clock microseconds since the Unix epoch: the id travels through another
    /// process, so a monotonic instant cannot.
    pub published_us: u64,
}

impl Stamp {
    /// `<run>.<seq>.<published µs>`.
    pub fn id(&self, run: &str) -> String {
        format!("{run}.{}.{}", self.seq, self.published_us)
    }

    /// The stamp of an id of `run`; `None` for anything else (another run, a stranger).
    pub fn parse(run: &str, id: &str) -> Option<Self> {
        let rest = id.strip_prefix(run)?.strip_prefix('.')?;
        let (seq, published) = rest.split_once('.')?;
        Some(Self {
            seq: seq.parse().ok()?,
            published_us: published.parse().ok()?,
        })
    }

    /// Time from publishing to `now`; zero if the clock stepped back.
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_micros(unix_micros(now).saturating_sub(self.published_us))
    }
}

pub fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
    })
}

/// A valid v1 command with a reason (so the abort has a JSON body, as most real ones do)
/// and a job of its own (so every abort succeeds on the first attempt).
fn command_body(run: &str, seq: u64, id: &str) -> Vec<u8> {
    format!(
        r#"{{"printerId":"bench-printer-{}","printJobId":"{run}-{seq}","reason":"print-abort-worker benchmark","commandId":"{id}"}}"#,
        seq % PRINTERS
    )
    .into_bytes()
}

/// Publishes commands to one queue with publisher confirms, many confirms in flight.
pub struct CommandPublisher {
    channel: Channel,
    queue: ShortString,
    run: String,
    pending: VecDeque<lapin::PublisherConfirm>,
}

impl CommandPublisher {
    pub async fn open(broker: &Broker, queue: &str, run: &str) -> anyhow::Result<Self> {
        let channel = broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("publisher confirms could not be enabled")?;
        Ok(Self {
            channel,
            queue: queue.into(),
            run: run.to_owned(),
            pending: VecDeque::with_capacity(CONFIRM_WINDOW),
        })
    }

    /// Publishes `seqs` as fast as the broker confirms them, and returns once all are
    /// confirmed: the queue then holds every command before the subject starts.
    pub async fn preload(&mut self, seqs: Range<u64>) -> anyhow::Result<()> {
        for seq in seqs {
            self.publish(seq).await?;
        }
        self.flush().await
    }

    /// Publishes `seqs` evenly spaced at `per_second`, each stamped when it is sent.
    pub async fn paced(&mut self, seqs: Range<u64>, per_second: f64) -> anyhow::Result<()> {
        let start = Instant::now();
        for (n, seq) in seqs.enumerate() {
            // Due times come from the start, so a late timer does not slow the whole phase.
            let due = start + Duration::from_secs_f64(n as f64 / per_second);
            tokio::time::sleep_until(due).await;
            self.publish(seq).await?;
        }
        self.flush().await
    }

    /// Publishes one command, stamped now, without waiting for its confirm (only for the
    /// oldest once [`CONFIRM_WINDOW`] are pending): for a load that answers outcomes.
    pub async fn publish(&mut self, seq: u64) -> anyhow::Result<()> {
        if self.pending.len() >= CONFIRM_WINDOW
            && let Some(oldest) = self.pending.pop_front()
        {
            confirmed(oldest).await?;
        }
        let id = Stamp {
            seq,
            published_us: unix_micros(SystemTime::now()),
        }
        .id(&self.run);
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(publisher::PERSISTENT)
            .with_message_id(id.as_str().into())
            .with_correlation_id(id.as_str().into());
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.clone(),
                BasicPublishOptions::default(),
                &command_body(&self.run, seq, &id),
                properties,
            )
            .await
            .context("a command could not be published")?;
        self.pending.push_back(confirm);
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(confirm) = self.pending.pop_front() {
            confirmed(confirm).await?;
        }
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "loaded".into()).await;
    }
}

async fn confirmed(confirm: lapin::PublisherConfirm) -> anyhow::Result<()> {
    publisher::confirmed(confirm)
        .await
        .context("the broker did not confirm a command")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_survives_its_id() {
        let stamp = Stamp {
            seq: 42,
            published_us: 1_700_000_000_123_456,
        };
        assert_eq!(Stamp::parse("r1", &stamp.id("r1")), Some(stamp));
    }

    #[test]
    fn ids_of_other_runs_and_strangers_are_not_stamps() {
        let id = Stamp {
            seq: 1,
            published_us: 2,
        }
        .id("r1");
        assert_eq!(Stamp::parse("r2", &id), None);
        assert_eq!(Stamp::parse("r1", "r1.x.2"), None);
        assert_eq!(Stamp::parse("r1", "r1"), None);
        assert_eq!(Stamp::parse("r1", "r12.1.2"), None);
    }

    #[test]
    fn commands_are_valid_v1_commands() {
        let body = command_body("r1", 7, "r1.7.99");
        let graph_api = "https://graph.microsoft.com/v1.0".parse().expect("a URL");
        let tenants = print_abort_worker::command::CommandRules::new(&graph_api, "t", &[]);
        let command = print_abort_worker::command::AbortCommand::parse(&body, None, &tenants)
            .expect("the worker accepts the command");
        assert_eq!(command.printer_id.as_str(), "bench-printer-7");
        assert_eq!(command.print_job_id.as_str(), "r1-7");
        assert_eq!(command.command_id, "r1.7.99");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let shown = redact("amqp://guest:hunter2@127.0.0.1:5672/%2f");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1:5672"), "{shown}");
    }
}
