//! The topology as the worker declares it on an empty broker, read back from the broker
//! itself (`rabbitmqctl`), and `amqp.declare = false`, where the worker declares nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use print_abort_worker::config::QueueType;
use print_abort_worker::health::Health;
use serde_json::Value;

use crate::helpers::*;

/// `rabbitmqctl <what> <columns> --formatter json`, as JSON rows.
fn broker_list(what: &str, columns: &[&str]) -> Vec<Value> {
    let output = std::process::Command::new("rabbitmqctl")
        .arg(what)
        .args(columns)
        .args(["--formatter", "json", "-q"])
        .output()
        .unwrap_or_else(|error| panic!("rabbitmqctl runs (it comes with RabbitMQ): {error}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("rabbitmqctl prints JSON")
}

fn row<'a>(rows: &'a [Value], name: &str) -> Option<&'a Value> {
    rows.iter().find(|row| row["name"] == name)
}

/// A queue's arguments as `name → value`.
fn arguments(queue: &Value) -> std::collections::HashMap<String, Value> {
    queue["arguments"]
        .as_array()
        .expect("arguments")
        .iter()
        .map(|argument| {
            (
                argument[0].as_str().expect("name").to_owned(),
                argument[2].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_worker_declares_its_whole_topology_on_an_empty_broker() {
    let server = graph_with_token().await;
    mount_abort(&server, graph_error(404, "itemNotFound", "no such job")).await;
    job_mock()
        .respond_with(graph_error(404, "itemNotFound", "no such job"))
        .mount(&server)
        .await;
    let mut settings = test_settings(&server);
    settings.amqp.queue_type = QueueType::Quorum;
    settings.retry.redelivery_delays = vec![Duration::from_millis(300), Duration::from_secs(120)];
    let amqp = settings.amqp.clone();
    // TestApp declares nothing: it waits until the worker has.
    let mut app = TestApp::spawn(server, settings).await;

    let queues = broker_list("list_queues", &["name", "type", "durable", "arguments"]);
    let commands = row(&queues, &amqp.command_queue).expect("the command queue");
    assert_eq!(commands["type"], "quorum");
    assert_eq!(commands["durable"], true);
    let args = arguments(commands);
    assert_eq!(
        args["x-dead-letter-exchange"],
        amqp.dead_letter_exchange.as_str()
    );
    let dead = row(&queues, &amqp.dead_letter_queue).expect("the dead-letter queue");
    assert_eq!(dead["type"], "quorum");
    assert_eq!(dead["durable"], true);
    for (delay, ttl) in [("300ms", 300), ("120000ms", 120_000)] {
        let name = format!("{}.delay.{delay}", amqp.command_queue);
        let queue = row(&queues, &name).unwrap_or_else(|| panic!("delay queue {name}"));
        let args = arguments(queue);
        assert_eq!(args["x-message-ttl"], ttl, "{name}");
        assert_eq!(args["x-dead-letter-exchange"], "", "{name}");
        assert_eq!(
            args["x-dead-letter-routing-key"],
            amqp.command_queue.as_str(),
            "{name}: back to the command queue"
        );
    }
    let exchanges = broker_list("list_exchanges", &["name", "type", "durable"]);
    let results = row(&exchanges, &amqp.results_exchange).expect("the results exchange");
    assert_eq!(results["type"], "topic");
    assert_eq!(results["durable"], true);
    let dlx = row(&exchanges, &amqp.dead_letter_exchange).expect("the dead-letter exchange");
    assert_eq!(dlx["type"], "fanout");
    assert_eq!(dlx["durable"], true);
    let bindings = broker_list("list_bindings", &["source_name", "destination_name"]);
    assert!(
        bindings.iter().any(
            |binding| binding["source_name"] == amqp.dead_letter_exchange.as_str()
                && binding["destination_name"] == amqp.dead_letter_queue.as_str()
        ),
        "the dead-letter queue is bound to the dead-letter exchange"
    );

    // And it works as declared: a failed command lands in the dead-letter queue.
    let event = app.outcome_of(&command("p", "missing")).await;
    assert_eq!(event["data"]["error"]["kind"], "permanent");
    app.one_dead_letter("permanent").await;
    app.finish().await;
}

#[tokio::test]
async fn with_declare_false_the_worker_declares_nothing_and_waits_for_the_operators_topology() {
    let server = graph_with_token().await;
    mount_abort(&server, no_content()).await;
    let mut settings = test_settings(&server);
    settings.amqp.declare = false;
    let health = Arc::new(Health::default());
    let (stop, worker) = spawn_worker(settings.clone(), health.clone());
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // The worker tries, finds no command queue, and creates nothing while it waits.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(health.sessions(), 0, "no session without the command queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queues = broker_list("list_queues", &["name"]);
    let exchanges = broker_list("list_exchanges", &["name"]);
    for name in [
        &settings.amqp.command_queue,
        &settings.amqp.dead_letter_queue,
    ] {
        assert!(row(&queues, name).is_none(), "{name} was declared");
    }
    for name in [
        &settings.amqp.results_exchange,
        &settings.amqp.dead_letter_exchange,
    ] {
        assert!(row(&exchanges, name).is_none(), "{name} was declared");
    }

    // The operator declares the topology; the worker's next attempt finds it and runs.
    let mut operator = settings.amqp.clone();
    operator.declare = true;
    print_abort_worker::amqp::topology::declare(&connection, &operator, &[])
        .await
        .expect("the operator's topology");
    let events = exclusive_queue(&channel).await;
    bind_to_results(&channel, &events, &settings.amqp).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health.ready() {
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(
        &channel,
        &settings.amqp.command_queue,
        command("p", "j").as_bytes(),
        lapin::BasicProperties::default(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let event = loop {
        if let Some(event) = get_all(&channel, &events).await.pop() {
            break event;
        }
        assert!(Instant::now() < deadline, "no outcome event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let event: Value = serde_json::from_slice(&event.data).expect("JSON");
    assert_eq!(event["data"]["outcome"], "succeeded");
    let _ = stop.send(());
    worker
        .await
        .expect("the worker task")
        .expect("the worker stops cleanly");
    delete_topology(&channel, &settings.amqp).await;
}
