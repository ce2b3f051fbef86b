//! Faults injected against the real broker: a cut link, a Graph outage, refused
//! credentials, the delayed-retry ladder, the outbound rate limit, and the worker process
//! killed under load. Each test bounds itself in time and touches only its own names.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wiremock::matchers::body_string_contains;
use wiremock::{Request, Respond, ResponseTemplate};

use crate::helpers::*;
use crate::proxy::LinkProxy;

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

async fn send_all(app: &TestApp, ids: &[String]) {
    for id in ids {
        app.send(&format!(
            r#"{{"printerId":"p","printJobId":"{id}","commandId":"{id}"}}"#
        ))
        .await;
    }
}

fn duplicates(outcomes: &HashMap<String, Vec<serde_json::Value>>) -> usize {
    outcomes.values().map(|events| events.len() - 1).sum()
}

/// Answers 503 until the outage ends, then 204.
struct Outage {
    until: Instant,
}

impl Respond for Outage {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if Instant::now() < self.until {
            graph_error(503, "serviceUnavailable", "outage")
        } else {
            no_content()
        }
    }
}

#[tokio::test]
async fn a_graph_outage_that_ends_pauses_the_worker_and_loses_nothing() {
    let server = graph_with_token().await;
    let outage = Duration::from_secs(3);
    let until = Instant::now() + outage;
    let outage_ends = chrono::Utc::now() + outage;
    mount_abort(&server, Outage { until }).await;
    let mut settings = test_settings(&server);
    // The per-command budget is a third of the outage: without the pause every command
    // would end exhausted and dead-lettered.
    settings.retry.max_elapsed = Duration::from_secs(1);
    settings.pause.after_failing_commands = 3;
    settings.pause.probe_initial_interval = Duration::from_millis(200);
    settings.pause.probe_max_interval = Duration::from_millis(800);
    let mut app = TestApp::spawn(server, settings).await;
    let commands = ids("outage", 20);
    send_all(&app, &commands).await;
    app.wait_for_health("paused", |h| h.paused() && !h.ready())
        .await;

    let outcomes = app
        .collect_outcomes(&commands, Vec::new(), Duration::from_secs(30))
        .await;
    for events in outcomes.values() {
        assert_eq!(events[0]["data"]["outcome"], "succeeded", "{}", events[0]);
    }
    assert_eq!(duplicates(&outcomes), 0);
    let dead = app.dead_letters().await.len();
    assert_eq!(dead, 0, "nothing is dead-lettered");
    app.wait_for_health("ready again", |h| h.ready()).await;
    // Recovery: from the end of the outage to the last command's outcome.
    let recovery = (last_completed(&outcomes) - outage_ends)
        .to_std()
        .unwrap_or_default();
    report(
        "graph outage of 3 s, budget 1 s",
        20,
        &outcomes,
        dead,
        Some(recovery),
    );
    app.finish().await;
}

#[tokio::test]
async fn refused_credentials_pause_without_outcomes_until_the_secret_file_is_rotated() {
    let server = wiremock::MockServer::start().await;
    token_mock()
        .and(body_string_contains("client_secret=rotated-secret"))
        .respond_with(token_reply("token-1"))
        .mount(&server)
        .await;
    token_mock()
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided."
        })))
        .mount(&server)
        .await;
    mount_abort(&server, no_content()).await;
    mount_printers(&server).await;
    let secret_file = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret_file.path(), "expired-secret\n").expect("write secret");
    let mut settings = test_settings(&server);
    settings.auth.client_secret = None;
    settings.auth.client_secret_file = Some(secret_file.path().to_path_buf());
    settings.pause.probe_initial_interval = Duration::from_millis(100);
    settings.pause.probe_max_interval = Duration::from_millis(300);
    let mut app = TestApp::spawn(server, settings).await;
    let commands = ids("creds", 8);
    send_all(&app, &commands).await;

    app.wait_for_health("paused", |h| h.paused()).await;
    // Paused: no outcome, nothing dead-lettered, every command back in the queue.
    app.wait_for_queued(8).await;
    assert!(!app.health.ready());
    assert!(app.dead_letters().await.is_empty());

    // Rotate the secret: the next probe reads the file again and the worker resumes.
    std::fs::write(secret_file.path(), "rotated-secret\n").expect("rotate secret");
    let rotated = chrono::Utc::now();
    let outcomes = app
        .collect_outcomes(&commands, Vec::new(), Duration::from_secs(20))
        .await;
    for events in outcomes.values() {
        assert_eq!(events[0]["data"]["outcome"], "succeeded");
    }
    assert_eq!(
        duplicates(&outcomes),
        0,
        "paused commands had no outcome before"
    );
    report(
        "refused credentials, then a rotated secret file",
        8,
        &outcomes,
        0,
        Some(
            (last_completed(&outcomes) - rotated)
                .to_std()
                .unwrap_or_default(),
        ),
    );
    app.finish().await;
}

#[tokio::test]
async fn the_redelivery_ladder_retries_through_the_broker_then_dead_letters() {
    let server = graph_with_token().await;
    mount_abort(&server, graph_error(503, "serviceUnavailable", "busy")).await;
    let mut settings = test_settings(&server);
    settings.retry.max_elapsed = Duration::from_millis(150);
    settings.retry.redelivery_delays = vec![Duration::from_millis(300), Duration::from_millis(600)];
    settings.pause.after_failing_commands = 1000;
    let mut app = TestApp::spawn(server, settings).await;
    let event = app
        .outcome_of(r#"{"printerId":"p","printJobId":"j","commandId":"ladder"}"#)
        .await;
    let data = &event["data"];
    assert_eq!(data["outcome"], "failed");
    assert_eq!(data["error"]["kind"], "exhausted");
    // Three in-process rounds of at least two attempts each.
    assert!(data["attempts"].as_u64().expect("attempts") >= 6, "{data}");
    assert!(
        data["durationMs"].as_u64().expect("duration") >= 900,
        "{data}"
    );
    let dead = app.one_dead_letter("exhausted").await;
    assert_eq!(
        print_abort_worker::amqp::headers::count(
            dead.properties.headers().as_ref(),
            "x-abort-redeliveries"
        ),
        Some(2)
    );
    app.assert_no_event(Duration::from_secs(1)).await;
    app.finish().await;
}

#[tokio::test]
async fn a_delayed_retry_can_end_in_success_with_one_event() {
    let server = graph_with_token().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::<(Instant, bool)>::new()));
    let (switch, record) = (healthy.clone(), arrivals.clone());
    let answer = move |_: &Request| {
        let healthy = switch.load(Ordering::Relaxed);
        record.lock().expect("lock").push((Instant::now(), healthy));
        if healthy {
            no_content()
        } else {
            graph_error(503, "serviceUnavailable", "busy")
        }
    };
    mount_abort(&server, answer).await;
    let mut settings = test_settings(&server);
    settings.retry.max_elapsed = Duration::from_millis(100);
    let delay = Duration::from_millis(800);
    settings.retry.redelivery_delays = vec![delay];
    settings.pause.after_failing_commands = 1000;
    let mut app = TestApp::spawn(server, settings).await;
    app.send(r#"{"printerId":"p","printJobId":"j","commandId":"second-chance"}"#)
        .await;
    // Graph heals once the command waits in its delay queue: the ladder, not an
    // in-process retry, brings it back.
    let delay_queue = print_abort_worker::amqp::topology::delay_queue(&app.settings.amqp, delay);
    wait_for_length(&app.channel, &delay_queue, 1).await;
    let parked = Instant::now();
    healthy.store(true, Ordering::Relaxed);
    let event = app.next_event().await;
    let data = &event["data"];
    assert_eq!(data["outcome"], "succeeded");
    assert_eq!(data["commandId"], "second-chance");
    let arrivals = arrivals.lock().expect("lock").clone();
    let failed = arrivals.iter().filter(|(_, healthy)| !healthy).count();
    assert!(
        failed >= 2,
        "the in-process budget was spent first: {failed} attempts"
    );
    assert_eq!(arrivals.last().map(|(_, healthy)| *healthy), Some(true));
    // The attempts before the delayed retry count in the event, and it came back after its
    // delay.
    assert_eq!(data["attempts"].as_u64(), Some(failed as u64 + 1), "{data}");
    assert!(
        data["durationMs"].as_u64().expect("duration") >= 800,
        "{data}"
    );
    let last_failure = arrivals
        .iter()
        .rev()
        .find(|(_, healthy)| !healthy)
        .expect("a failure")
        .0;
    let success = arrivals.last().expect("the success").0;
    assert!(success - last_failure >= delay - Duration::from_millis(50));
    assert!(success >= parked);
    assert!(app.dead_letters().await.is_empty());
    app.assert_no_event(QUIET).await;
    app.finish().await;
}

#[tokio::test]
async fn the_rate_limit_spaces_graph_requests() {
    let (server, script) = graph_with_script(vec![no_content()]).await;
    let mut settings = test_settings(&server);
    settings.graph.max_requests_per_second = 20;
    settings.worker.concurrency = 16.try_into().expect("above zero");
    let mut app = TestApp::spawn(server, settings).await;
    let commands = ids("rate", 11);
    send_all(&app, &commands).await;
    let outcomes = app
        .collect_outcomes(&commands, Vec::new(), Duration::from_secs(15))
        .await;
    assert_eq!(duplicates(&outcomes), 0);
    let arrivals = script.arrivals();
    assert_eq!(arrivals.len(), 11, "one Graph call per command");
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    // 11 requests at 20 per second, evenly spaced: at least 10 × 50 ms apart in all.
    assert!(
        span >= Duration::from_millis(450),
        "11 requests within {span:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_cut_link_reconnects_and_every_command_gets_an_outcome() {
    let proxy = LinkProxy::start("127.0.0.1:5672").await;
    let server = graph_aborting_after(Duration::from_millis(50)).await;
    let mut settings = test_settings(&server);
    settings.amqp.url = proxy.url().parse().expect("a broker URL");
    settings.amqp.queue_type = print_abort_worker::config::QueueType::Quorum;
    settings.worker.concurrency = 8.try_into().expect("above zero");
    settings.amqp.prefetch = 16.try_into().expect("above zero");
    let mut app = TestApp::spawn(server, settings).await;
    app.wait_for_health("ready", |h| h.ready()).await;
    let commands = ids("cut", 60);
    send_all(&app, &commands).await;
    let mut earlier = Vec::new();
    for _ in 0..5 {
        earlier.push(app.next_event().await);
    }
    let unsettled = app.unsettled_commands();
    assert!(unsettled > 0, "the cut meets commands in flight");
    proxy.take_down();
    app.wait_for_health("disconnected", |h| !h.connected() && !h.ready())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let restored = Instant::now();
    app.wait_for_health("ready again", |h| h.ready()).await;
    let recovery = restored.elapsed();
    let outcomes = app
        .collect_outcomes(&commands, earlier, Duration::from_secs(30))
        .await;
    // Only commands in flight (at most the prefetch window) can be reported twice.
    assert!(
        duplicates(&outcomes) <= 16,
        "{} duplicates",
        duplicates(&outcomes)
    );
    for events in outcomes.values() {
        for event in events {
            assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
        }
    }
    let dead = app.dead_letters().await.len();
    assert_eq!(dead, 0);
    report("link cut for 0.5 s", 60, &outcomes, dead, Some(recovery));
    app.finish().await;
}

#[tokio::test]
async fn a_deleted_results_exchange_is_redeclared_instead_of_looping_on_graph() {
    let (server, script) = graph_with_script(vec![no_content()]).await;
    let mut app = spawn_app_on(server).await;
    app.wait_for_health("ready", |h| h.ready()).await;
    let sessions = app.health.sessions();
    app.channel
        .exchange_delete(
            app.settings.amqp.results_exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .expect("exchange deleted");
    // Its event cannot be published: the broker closes the publishing channel, the worker
    // reconnects, redeclares the exchange and handles the command again.
    app.send(&command("p", "orphan")).await;
    app.wait_for_health("reconnected", |h| h.sessions() > sessions && h.ready())
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.ready_commands().await > 0 || script.arrivals().is_empty() {
        assert!(Instant::now() < deadline, "the command was handled again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        script.arrivals().len() <= 3,
        "Graph was called {} times for one command",
        script.arrivals().len()
    );
    app.rebind_events().await;
    app.send(&command("p", "after")).await;
    let event = app.next_event().await;
    assert_eq!(event["data"]["printJobId"], "after");
    app.finish().await;
}

#[tokio::test]
async fn a_missing_dead_letter_queue_pauses_instead_of_losing_or_looping() {
    let (server, script) =
        graph_with_script(vec![graph_error(404, "itemNotFound", "no such job")]).await;
    job_mock()
        .respond_with(graph_error(404, "itemNotFound", "no such job"))
        .mount(&server)
        .await;
    let mut settings = test_settings(&server);
    settings.pause.probe_initial_interval = Duration::from_secs(30);
    let app = TestApp::spawn(server, settings).await;
    app.wait_for_health("ready", |h| h.ready()).await;
    // The dead-letter exchange loses its only queue (after the worker's own declaration).
    app.channel
        .queue_unbind(
            app.settings.amqp.dead_letter_queue.as_str().into(),
            app.settings.amqp.dead_letter_exchange.as_str().into(),
            "".into(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("dead-letter queue unbound");
    app.send(&command("p", "gone")).await;
    app.wait_for_health("paused", |h| h.paused()).await;
    app.wait_for_queued(1).await;
    assert_eq!(
        script.arrivals().len(),
        1,
        "Graph was called once, not in a loop"
    );
    app.finish().await;
}

/// `amqp.url` lists a cluster's nodes: a node that does not answer is passed over for the
/// next, and the worker says which node it is on.
#[tokio::test]
async fn a_node_that_does_not_answer_is_passed_over_for_the_next() {
    let server = graph_with_token().await;
    abort_mock().respond_with(no_content()).mount(&server).await;
    let mut settings = test_settings(&server);
    // Port 1 refuses connections; whichever node this process starts at, it ends on 5672.
    settings.amqp.url = format!("amqp://guest:guest@127.0.0.1:1/%2f,{BROKER_URL}")
        .parse()
        .expect("two nodes");
    let mut app = TestApp::spawn(server, settings).await;
    app.wait_for_health("ready", |h| h.ready()).await;
    assert_eq!(app.health.broker_node().as_deref(), Some("127.0.0.1:5672"));
    let event = app.outcome_of(&command("p", "by-the-second-node")).await;
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    app.finish().await;
}
