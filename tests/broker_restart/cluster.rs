//! Two workers against a three-node cluster of the test's own, with the command queue a
//! quorum queue on all three, and the node one worker uses stopped in the middle of a run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use print_abort_worker::Settings;
use print_abort_worker::config::QueueType;
use print_abort_worker::health::Health;
use serde_json::Value;

use crate::helpers::*;
use crate::nodes::Nodes;
use crate::note;

const COMMANDS: usize = 2_000;
/// Each worker's `amqp.prefetch`: the most commands a worker holds unsettled, and so the
/// most that a lost connection can leave reported twice.
const PREFETCH: u16 = 16;
/// How many outcomes are in before the node is stopped.
const STOP_AFTER: usize = 600;

/// `settings` pointed at the cluster's nodes, listed from the `first`th on.
fn on_cluster(settings: &Settings, urls: &[String], first: usize) -> Settings {
    let mut settings = settings.clone();
    let list: Vec<&str> = urls
        .iter()
        .cycle()
        .skip(first)
        .take(urls.len())
        .map(String::as_str)
        .collect();
    settings.amqp.url = list.join(",").parse().expect("a node list");
    settings
}

/// The position in `nodes` of the node `health` reports the worker on.
fn node_of(nodes: &Nodes, health: &Health) -> usize {
    let node = health.broker_node().expect("the worker says its node");
    nodes
        .nodes
        .iter()
        .position(|n| node == format!("127.0.0.1:{}", n.amqp_port))
        .unwrap_or_else(|| panic!("{node} is one of the cluster's nodes"))
}

async fn wait_for(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The command queue's members and those of them online, as the cluster reports them.
async fn quorum_members(nodes: &Nodes, on: usize, queue: &str) -> (usize, usize) {
    let listing = nodes
        .ctl(
            on,
            &[
                "list_queues",
                "name",
                "type",
                "members",
                "online",
                "--formatter",
                "json",
            ],
        )
        .await;
    let queues: Vec<Value> = serde_json::from_str(&listing).expect("a JSON queue list");
    let entry = queues
        .iter()
        .find(|q| q["name"] == queue)
        .unwrap_or_else(|| panic!("{queue} is listed: {listing}"));
    assert_eq!(entry["type"], "quorum", "{entry}");
    let count = |field: &str| entry[field].as_array().map_or(0, Vec::len);
    (count("members"), count("online"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_stopping_mid_run_loses_no_command() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("print_abort_worker=info")
        .with_test_writer()
        .try_init();
    let nodes = Nodes::start(3, &[], "").await;
    nodes.cluster().await;
    let urls: Vec<String> = nodes.nodes.iter().map(|n| n.url()).collect();

    let server = graph_aborting_after(Duration::from_millis(100)).await;
    let mut base = test_settings(&server);
    base.amqp.queue_type = QueueType::Quorum;
    base.amqp.prefetch = PREFETCH.try_into().expect("above zero");
    base.worker.concurrency = 8.try_into().expect("above zero");
    // The two workers list the nodes in different orders; both processes' (here: the one
    // test process's) start offset then puts them on different nodes.
    let health_a = Arc::new(Health::default());
    let health_b = Arc::new(Health::default());
    let (stop_a, worker_a) = spawn_worker(on_cluster(&base, &urls, 0), health_a.clone());
    let (stop_b, worker_b) = spawn_worker(on_cluster(&base, &urls, 1), health_b.clone());
    wait_for("both workers consuming", Duration::from_secs(30), || {
        health_a.ready() && health_b.ready()
    })
    .await;
    let node_a = node_of(&nodes, &health_a);
    let node_b = node_of(&nodes, &health_b);
    assert_ne!(node_a, node_b, "the workers start on different nodes");
    let amqp = &base.amqp;
    assert_eq!(
        quorum_members(&nodes, node_b, &amqp.command_queue).await,
        (3, 3),
        "the command queue is replicated on the three nodes"
    );

    // The test talks to the cluster through worker B's node, which stays up.
    let connection = Connection::connect(&urls[node_b], ConnectionProperties::default())
        .await
        .expect("the test connects to the cluster");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    let events_queue = format!("{}.events", amqp.command_queue);
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            events_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum,
        )
        .await
        .expect("the events queue, a quorum queue too");
    bind_to_results(&channel, &events_queue, amqp).await;
    let commands: Vec<String> = (0..COMMANDS).map(|n| format!("cluster-{n}")).collect();
    for id in &commands {
        let body = format!(r#"{{"printerId":"p","printJobId":"{id}","commandId":"{id}"}}"#);
        publish(
            &channel,
            &amqp.command_queue,
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }

    let mut events = channel
        .basic_consume(
            events_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume events");
    let mut outcomes: HashMap<String, Vec<Value>> = HashMap::new();
    let mut stop_task = None;
    let mut failover = None;
    let sessions_a = health_a.sessions();
    let deadline = Instant::now() + Duration::from_secs(120);
    while commands.iter().any(|id| !outcomes.contains_key(id)) {
        assert!(
            Instant::now() < deadline,
            "only {} of {COMMANDS} commands had an outcome",
            outcomes.len()
        );
        if stop_task.is_none() && outcomes.len() >= STOP_AFTER {
            assert!(
                health_a.ready(),
                "worker A is still consuming when its node stops"
            );
            let before = queue_length(&channel, &amqp.command_queue).await;
            println!("RELIABILITY cluster: {before} commands queued when the node was stopped");
            let stopped_at = Instant::now();
            stop_task = Some((
                stopped_at,
                tokio::spawn({
                    let health = health_a.clone();
                    async move {
                        // When worker A sees its connection go, and when it consumes
                        // again, on another node.
                        wait_for("worker A losing its node", Duration::from_secs(30), || {
                            !health.connected()
                        })
                        .await;
                        let lost = stopped_at.elapsed();
                        wait_for("worker A consuming again", Duration::from_secs(30), || {
                            health.sessions() > sessions_a && health.ready()
                        })
                        .await;
                        (lost, stopped_at.elapsed())
                    }
                }),
            ));
            // With one member of three gone the queue keeps its majority, so the commands
            // still queued are all handled: the loop below waits for every one.
            nodes.stop(node_a).await;
        }
        if let Some((_, task)) = &mut stop_task
            && failover.is_none()
            && task.is_finished()
        {
            failover = Some(task.await.expect("the failover watch"));
        }
        let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(10), events.next()).await
        else {
            panic!(
                "no event for 10 s; {} of {COMMANDS} have one",
                outcomes.len()
            );
        };
        let delivery = delivery.expect("an event");
        note(&mut outcomes, &delivery.data);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack the event");
    }
    let (_, task) = stop_task.expect("the node was stopped mid-run");
    let failover = match failover {
        Some(failover) => failover,
        None => task.await.expect("the failover watch"),
    };
    let new_node = node_of(&nodes, &health_a);
    assert_ne!(new_node, node_a, "worker A moved to another node");

    // Late duplicates: the workers stop, and whatever is still queued is read.
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    for worker in [worker_a, worker_b] {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("the worker stops")
            .expect("no panic")
            .expect("a clean stop");
    }
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(1), events.next()).await
    {
        note(&mut outcomes, &delivery.data);
    }
    let dead = queue_length(&channel, &amqp.dead_letter_queue).await as usize;
    let (lost, failover) = failover;
    report(
        "cluster node stopped",
        COMMANDS,
        &outcomes,
        dead,
        Some(failover),
    );
    println!(
        "RELIABILITY cluster: worker A saw its connection go {} ms after the stop began and \
         consumed again {} ms after it saw the loss",
        lost.as_millis(),
        (failover - lost).as_millis()
    );
    for event in outcomes.values().flatten() {
        assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    }
    let duplicates: usize = outcomes.values().map(|e| e.len() - 1).sum();
    assert!(
        duplicates <= usize::from(PREFETCH),
        "{duplicates} duplicates, more than worker A's in-flight window of {PREFETCH}"
    );
    assert_eq!(dead, 0, "nothing dead-lettered");
    assert!(
        failover < Duration::from_secs(10),
        "worker A took {failover:?} to consume again"
    );
    assert_eq!(queue_length(&channel, &amqp.command_queue).await, 0);

    // The node comes back and takes its place in the cluster and in the queue again.
    nodes.restart(node_a).await;
    let status = nodes
        .ctl(node_b, &["cluster_status", "--formatter", "json"])
        .await;
    let status: Value = serde_json::from_str(&status).expect("JSON status");
    assert_eq!(
        status["running_nodes"].as_array().map(Vec::len),
        Some(3),
        "the stopped node rejoined: {status}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (members, online) = quorum_members(&nodes, node_b, &amqp.command_queue).await;
        if (members, online) == (3, 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue has {online} of {members} members online after the rejoin"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
