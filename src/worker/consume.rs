//! The consuming phases of a broker session: consuming as usual, with up to
//! `amqp.prefetch` commands in process, and the trial after a pause, one command at a time
//! with `basic.get`; and how a phase winds down (connection lost, paused, shutdown).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settle::process;
use super::{ConnectionLost, Lost, PhaseEnd, SessionEnd, SessionError, Worker};
use crate::amqp::publisher::EventPublisher;
use crate::breaker::BreakerState;

/// How often the trial loop looks whether its command settled or became a suspect, on top
/// of the breaker's own announcements.
const TRIAL_POLL: Duration = Duration::from_millis(50);

/// The longest a phase's end waits for the broker to answer a cancel or a close: a broker
/// that stopped answering (its app stopping, a half-open link) must not hold up the
/// reconnect. Deliveries still unacknowledged go back to the queue with the channel anyway.
pub(super) const TEARDOWN: Duration = Duration::from_secs(5);

impl Worker {
    /// Consumes on a fresh channel until shutdown, connection loss or a pause.
    pub(super) async fn consume(
        &self,
        connection: &Connection,
        publisher: &Arc<EventPublisher>,
        lost: &ConnectionLost,
    ) -> Result<PhaseEnd, SessionError> {
        let settings = &self.shared.settings;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(settings.amqp.prefetch.get(), BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                settings.amqp.command_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
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
                () = publisher.closed() => break PhaseEnd::lost(Lost::PublisherClosed),
                _ = breaker.wait_for(BreakerState::is_open) => break PhaseEnd::Paused,
                delivery = consumer.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let shared = self.shared.clone();
                    let publisher = Arc::clone(publisher);
                    let abandon = abandon.clone();
                    // Boxed: the command's future is large, and spawning it unboxed copied
                    // it four times on its way into the task (docs/BENCHMARKS.md).
                    tasks.spawn(Box::pin(async move {
                        process(&shared, &publisher, delivery, abandon).await;
                    }));
                }
                Some(Err(error)) => break PhaseEnd::lost(error),
                None => break PhaseEnd::lost(Lost::ConsumerCancelled),
            }
        };
        self.health.set_consuming(false);
        // On a lost session there is no one to tell: the consumer goes with the channel.
        if !end.is_lost() {
            cancel(&channel, &consumer).await;
        }
        self.wind_down(&end, channel, tasks, abandon).await;
        Ok(end)
    }

    /// Trial commands, one at a time, each fetched with `basic.get` only when the one before
    /// has settled or waits for contrast as a suspect, so that no command is delivered
    /// ahead of need and a failed trial hands back at most the commands it tried. Ends when
    /// a command succeeds (or there is nothing to try), or the breaker opens again.
    pub(super) async fn trial(
        &self,
        connection: &Connection,
        publisher: &Arc<EventPublisher>,
        lost: &ConnectionLost,
    ) -> Result<PhaseEnd, SessionError> {
        let settings = &self.shared.settings;
        let breaker = &self.shared.breaker;
        let channel = connection.create_channel().await?;
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
                () = publisher.closed() => break PhaseEnd::lost(Lost::PublisherClosed),
                fetched = fetch, if !busy => fetched,
                // A task's end is seen within this; changes the breaker announces sooner.
                () = &mut changed, if busy => None,
                () = tokio::time::sleep(TRIAL_POLL), if busy => None,
            };
            match fetched {
                None => {}
                Some(Ok(Some(message))) => {
                    let shared = self.shared.clone();
                    let publisher = Arc::clone(publisher);
                    let abandon = abandon.clone();
                    tasks.spawn(Box::pin(async move {
                        process(&shared, &publisher, message.delivery, abandon).await;
                    }));
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
}

async fn cancel(channel: &Channel, consumer: &lapin::Consumer) {
    let cancelled = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
    let _ = tokio::time::timeout(TEARDOWN, cancelled).await;
}

/// Closing a channel returns its unacknowledged deliveries to the queue.
async fn close(channel: &Channel) {
    let _ = tokio::time::timeout(TEARDOWN, channel.close(200, "done".into())).await;
}
