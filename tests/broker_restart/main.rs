//! Broker-wide faults: the broker closing the worker's connections and the broker app
//! restarting. They disturb every client of the broker, so they live in a test target of
//! their own that `scripts/test` runs after the rest, one test at a time.

mod cluster;
#[allow(dead_code)]
#[path = "../worker/helpers.rs"]
mod helpers;
mod nodes;
mod tls;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use print_abort_worker::config::QueueType;
use print_abort_worker::health::Health;
use serde_json::Value;

use helpers::*;

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (it ships with rabbitmq-server)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Connects, retrying while the broker comes back.
async fn reconnect() -> Connection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Connection::connect(BROKER_URL, ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "the broker did not come back: {error}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// A worker with a durable events queue that outlives broker restarts.
struct Rig {
    settings: print_abort_worker::Settings,
    events_queue: String,
    health: Arc<Health>,
    stop: tokio::sync::oneshot::Sender<()>,
    worker: tokio::task::JoinHandle<Result<(), print_abort_worker::RunError>>,
    _server: wiremock::MockServer,
}

impl Rig {
    async fn start() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("print_abort_worker=info")
            .with_test_writer()
            .try_init();
        let server = graph_aborting_after(Duration::from_millis(100)).await;
        let mut settings = test_settings(&server);
        settings.amqp.queue_type = QueueType::Quorum;
        settings.worker.concurrency = 8.try_into().expect("above zero");
        settings.amqp.prefetch = 16.try_into().expect("above zero");
        let health = Arc::new(Health::default());
        // The worker declares its topology itself, on an empty broker.
        let (stop, worker) = spawn_worker(settings.clone(), health.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while health.sessions() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker never declared its topology"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let connection = broker().await;
        let channel = connection.create_channel().await.expect("channel");
        let events_queue = format!("{}.events", settings.amqp.command_queue);
        declare_durable_queue(&channel, &events_queue).await;
        bind_to_results(&channel, &events_queue, &settings.amqp).await;
        Self {
            settings,
            events_queue,
            health,
            stop,
            worker,
            _server: server,
        }
    }

    async fn send(&self, ids: &[String]) {
        let connection = broker().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirms");
        for id in ids {
            let body = format!(r#"{{"printerId":"p","printJobId":"{id}","commandId":"{id}"}}"#);
            publish(
                &channel,
                &self.settings.amqp.command_queue,
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        }
    }

    /// Reads events (acking them) until `until` says stop, reconnecting when needed.
    async fn collect(
        &self,
        outcomes: &mut HashMap<String, Vec<Value>>,
        until: impl Fn(&HashMap<String, Vec<Value>>) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !until(outcomes) {
            assert!(
                Instant::now() < deadline,
                "outcomes missing: got {}",
                outcomes.len()
            );
            let connection = reconnect().await;
            let Ok(channel) = connection.create_channel().await else {
                continue;
            };
            let Ok(mut consumer) = channel
                .basic_consume(
                    self.events_queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            else {
                continue;
            };
            while !until(outcomes) {
                let next = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
                let Ok(Some(Ok(delivery))) = next else {
                    break;
                };
                note(outcomes, &delivery.data);
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
    }

    /// Stops the worker, then takes every event still in the events queue into
    /// `outcomes`: with no worker left to publish, a duplicate can only be there.
    async fn finish(self, outcomes: &mut HashMap<String, Vec<Value>>) -> usize {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.worker)
            .await
            .expect("the worker stops")
            .expect("no panic")
            .expect("a clean stop");
        let connection = broker().await;
        let channel = connection.create_channel().await.expect("channel");
        for delivery in get_all(&channel, &self.events_queue).await {
            note(outcomes, &delivery.data);
        }
        let dead = get_all(&channel, &self.settings.amqp.dead_letter_queue)
            .await
            .len();
        let amqp = &self.settings.amqp;
        for queue in [
            &amqp.command_queue,
            &amqp.dead_letter_queue,
            &self.events_queue,
        ] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        dead
    }
}

/// Files an outcome event under its command's id.
fn note(outcomes: &mut HashMap<String, Vec<Value>>, event: &[u8]) {
    let event: Value = serde_json::from_slice(event).expect("events are JSON");
    let id = event["data"]["commandId"]
        .as_str()
        .expect("an id")
        .to_owned();
    outcomes.entry(id).or_default().push(event);
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

async fn wait_until(what: &str, health: &Health, condition: impl Fn(&Health) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition(health) {
        assert!(Instant::now() < deadline, "the worker never became {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs 150 commands through a worker, injects `fault` once 20 have outcomes, and checks
/// that every command still gets one, with few duplicates and no dead letters.
async fn survives(fault_name: &str, fault: impl FnOnce()) {
    let rig = Rig::start().await;
    wait_until("ready", &rig.health, Health::ready).await;
    let commands = ids("fault", 150);
    rig.send(&commands).await;
    let mut outcomes = HashMap::new();
    rig.collect(&mut outcomes, |seen| seen.len() >= 20).await;

    let sessions = rig.health.sessions();
    let unsettled = unsettled_commands();
    assert!(unsettled > 0, "the fault meets commands in flight");
    let fault_at = Instant::now();
    fault();
    wait_until("reconnected", &rig.health, |h| {
        h.sessions() > sessions && h.ready()
    })
    .await;
    let recovery = fault_at.elapsed();

    rig.collect(&mut outcomes, |seen| {
        commands.iter().all(|id| seen.contains_key(id))
    })
    .await;
    let dead = rig.finish(&mut outcomes).await;
    report(fault_name, commands.len(), &outcomes, dead, Some(recovery));
    for events in outcomes.values() {
        for event in events {
            assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
        }
    }
    let duplicates: usize = outcomes.values().map(|e| e.len() - 1).sum();
    // Only the in-flight window (prefetch 16) can be reported twice.
    assert!(duplicates <= 16, "{duplicates} duplicates");
    assert_eq!(dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_closing_the_workers_connection_loses_nothing() {
    survives("broker closes connection", || {
        let listing = rabbitmqctl(&["list_connections", "pid", "client_properties", "-q"]);
        let worker_connections: Vec<&str> = listing
            .lines()
            // The connection name: print-abort-worker/{version} worker on {host}.
            .filter(|line| {
                line.contains(&format!(
                    "print-abort-worker/{} worker on ",
                    env!("CARGO_PKG_VERSION")
                ))
            })
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert!(
            !worker_connections.is_empty(),
            "found the worker's connection"
        );
        for pid in worker_connections {
            rabbitmqctl(&["close_connection", pid, "closed by test"]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    survives("broker app restart", || {
        rabbitmqctl(&["stop_app"]);
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await;
}
