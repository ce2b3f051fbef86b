//! The floor: the least an at-least-once AMQP worker must do per command — take a delivery,
//! publish one small persistent message with a publisher confirm, ack the delivery once the
//! confirm arrived — written the way a careful lapin user would, so the worker's throughput
//! can be read as a share of what the broker and lapin allow.
//!
//! Like the worker it consumes with `basic.qos` prefetch on one channel, publishes on
//! another in confirm mode, and has up to `concurrency` commands in flight with their
//! confirms pipelined. Unlike the worker it parses nothing, calls nothing, builds no event
//! and logs nothing. Its in-flight commands are futures polled by one task rather than a
//! task each, which is the cheapest way to wait on many confirms at once. It runs as a
//! process of its own (`bench floor`) on the same kind of tokio runtime as the worker, so
//! its CPU time and memory compare with the worker's.

use std::future::Future;

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use print_abort_worker::amqp::publisher;

/// The environment variable that hands the floor the broker URL.
pub const URL_VARIABLE: &str = "BENCH_AMQP_URL";

/// The routing key of the worker's successful outcome, so collectors treat both alike.
const ROUTING_KEY: &str = "printjob.abort.succeeded";

/// Small, but not empty: a message with a body, as an event would have.
const BODY: &[u8] = b"ok";

/// What the floor consumes from and publishes to.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub amqp_url: String,
    pub queue: String,
    pub exchange: String,
    pub concurrency: usize,
    pub prefetch: u16,
}

/// Runs the floor until `stop` resolves.
pub async fn run(config: FloorConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    if config.concurrency == 0 {
        bail!("the floor's concurrency must be at least 1");
    }
    let properties =
        ConnectionProperties::default().with_connection_name("print-abort-worker floor".into());
    let connection = Connection::connect(&config.amqp_url, properties)
        .await
        .with_context(|| {
            format!(
                "the floor could not reach RabbitMQ at {}",
                super::load::redact(&config.amqp_url)
            )
        })?;
    let consuming = connection.create_channel().await?;
    consuming
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let publishing = connection.create_channel().await?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = consuming
        .basic_consume(
            config.queue.as_str().into(),
            "bench-floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("the floor could not consume from {}", config.queue))?;

    let exchange: ShortString = config.exchange.as_str().into();
    let mut in_flight = FuturesUnordered::new();
    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            biased;
            () = &mut stop => break Ok(()),
            Some(settled) = in_flight.next() => {
                if let Err(error) = settled {
                    break Err(error);
                }
            }
            delivery = consumer.next(), if in_flight.len() < config.concurrency => match delivery {
                Some(Ok(delivery)) => in_flight.push(settle(&publishing, &exchange, delivery)),
                Some(Err(error)) => break Err(error).context("the floor's consumer failed"),
                None => break Err(anyhow::anyhow!("the broker cancelled the floor's consumer")),
            },
        }
    };
    drop(in_flight);
    // Closing returns unacknowledged deliveries to the queue.
    let _ = consuming.close(200, "done".into()).await;
    let _ = publishing.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    result
}

/// Publishes the reply, waits for its confirm, then acks the command.
async fn settle(
    channel: &Channel,
    exchange: &ShortString,
    delivery: Delivery,
) -> anyhow::Result<()> {
    let mut properties = BasicProperties::default().with_delivery_mode(publisher::PERSISTENT);
    if let Some(id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    let confirm = channel
        .basic_publish(
            exchange.clone(),
            ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            BODY,
            properties,
        )
        .await
        .context("the floor could not publish")?;
    publisher::confirmed(confirm)
        .await
        .context("the floor's publish was not confirmed")?;
    delivery
        .ack(BasicAckOptions::default())
        .await
        .context("the floor could not ack")?;
    Ok(())
}
