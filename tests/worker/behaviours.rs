//! One end-to-end test per documented behaviour, against the real broker and wiremock or
//! graph-sim over real HTTP: token renewal and refusal, reconciliation, connect errors,
//! `Retry-After` dates, expiry, request ids, concurrency and prefetch bounds, signals, exit
//! codes, the operations endpoints, and a lost reply reconciled against graph-sim.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use graph_sim::{GraphSim, JobState, SimConfig};
use serde_json::Value;
use wiremock::matchers::path;
use wiremock::{MockServer, Request, ResponseTemplate};

use crate::helpers::*;
use crate::lifecycle::{signal, start_binary};
use crate::operations::{get, sample};

/// Relates the `Instant`s a [`Script`] records to wall-clock time.
struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let wall = if at >= self.instant {
            self.wall + (at - self.instant)
        } else {
            self.wall - (self.instant - at)
        };
        DateTime::<Utc>::from(wall)
    }
}

/// Polls `condition` every 20 ms until it holds, or fails the test after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of the worker's metrics.
async fn metric(address: SocketAddr, series: &str) -> f64 {
    let (status, text) = get(address, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    sample(&text, series)
}

/// `/readyz`: its status and its body as JSON.
async fn readyz(address: SocketAddr) -> (u16, Value) {
    let (status, body) = get(address, "/readyz").await;
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, body)
}

/// The requests `server` received, in order, as `method path` plus the bearer token.
async fn request_log(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .expect("requests are recorded")
        .iter()
        .map(|request| {
            let bearer = request
                .headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(|token| format!(" {token}"))
                .unwrap_or_default();
            format!("{} {}{bearer}", request.method, request.url.path())
        })
        .collect()
}

fn count(log: &[String], prefix: &str) -> usize {
    log.iter().filter(|line| line.starts_with(prefix)).count()
}

fn job_reply(state: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"id": "j", "status": {"state": state}}))
}

fn with_id(printer: &str, job: &str, id: &str) -> String {
    serde_json::json!({"printerId": printer, "printJobId": job, "commandId": id}).to_string()
}

fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            event["data"]["commandId"]
                .as_str()
                .expect("command id")
                .to_owned()
        })
        .collect()
}

const TOKEN_PATH: &str = "POST /tenant-1/oauth2/v2.0/token";

#[tokio::test]
async fn a_401_to_the_renewed_token_fails_the_lone_command_after_one_renewal() {
    let server = MockServer::start().await;
    let tokens = mount_numbered_tokens(&server, 3).await;
    mount_printers(&server).await;
    let refused = graph_error(
        401,
        "InvalidAuthenticationToken",
        "Access token validation failure.",
    );
    expect_aborts(&server, refused, 2).await;
    let mut app = spawn_app_on(server).await;
    let started = Instant::now();
    let event = app.outcome_of(&command("p1", "j1")).await;
    let elapsed = started.elapsed();
    let data = &event["data"];
    assert_eq!(data["outcome"], "failed", "{data}");
    assert_eq!(data["error"]["kind"], "unauthorized", "{data}");
    assert_eq!(
        data["error"]["code"], "InvalidAuthenticationToken",
        "{data}"
    );
    assert_eq!(data["httpStatus"], 401, "{data}");
    assert_eq!(data["attempts"], 2, "{data}");
    // A lone refusal waits pause.verdict_wait (200 ms) for contrast, then probes.
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    // One renewal for the command (token-2), then the probe's own fresh token (token-3)
    // and its read of the command's printer, which passes: the failure is the command's.
    let abort = "POST /v1.0/print/printers/p1/jobs/j1/abort";
    assert_eq!(
        request_log(&app.server).await,
        vec![
            TOKEN_PATH.to_owned(),
            format!("{abort} token-1"),
            TOKEN_PATH.to_owned(),
            format!("{abort} token-2"),
            TOKEN_PATH.to_owned(),
            "GET /v1.0/print/printers/p1 token-3".to_owned(),
        ]
    );
    assert_eq!(tokens.arrivals().len(), 3);
    app.one_dead_letter("unauthorized").await;
    assert_eq!(app.health.pauses(), 0);
    assert!(app.health.ready());
    app.finish().await;
}

#[tokio::test]
async fn a_401_to_fresh_tokens_and_to_the_probe_pauses_and_requeues() {
    let server = MockServer::start().await;
    mount_numbered_tokens(&server, 3).await;
    let refused = || {
        graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        )
    };
    printers_mock().respond_with(refused()).mount(&server).await;
    mount_abort(&server, refused()).await;
    let mut settings = test_settings(&server);
    // One command at a time, so the requests are one exact sequence.
    settings.amqp.prefetch = 1.try_into().expect("above zero");
    // No second probe during the test: the worker stays paused.
    settings.pause.probe_initial_interval = Duration::from_secs(30);
    let mut app = TestApp::spawn(server, settings).await;
    for n in 0..3 {
        app.send(&with_id("p", &format!("j{n}"), &format!("c{n}")))
            .await;
    }
    app.wait_for_health("paused", |h| h.paused() && !h.ready())
        .await;
    app.wait_for_queued(3).await;
    assert_eq!(app.health.pauses(), 1);
    app.assert_no_event(Duration::from_millis(300)).await;
    assert!(app.dead_letters().await.is_empty());
    // The first command: its token, a renewed one, then the probe's fresh token and its
    // read of the command's printer, refused too.
    let abort = "POST /v1.0/print/printers/p/jobs/j0/abort";
    assert_eq!(
        request_log(&app.server).await,
        vec![
            TOKEN_PATH.to_owned(),
            format!("{abort} token-1"),
            TOKEN_PATH.to_owned(),
            format!("{abort} token-2"),
            TOKEN_PATH.to_owned(),
            "GET /v1.0/print/printers/p token-3".to_owned(),
        ]
    );
    let waiting: Vec<String> = app
        .waiting_commands()
        .await
        .iter()
        .map(|delivery| {
            let body: Value = serde_json::from_slice(&delivery.data).expect("json");
            body["commandId"].as_str().expect("id").to_owned()
        })
        .collect();
    let waiting: HashSet<String> = waiting.into_iter().collect();
    assert_eq!(
        waiting,
        HashSet::from(["c0".to_owned(), "c1".to_owned(), "c2".to_owned()])
    );
    app.finish().await;
}

#[tokio::test]
async fn a_409_is_reconciled_against_the_jobs_state() {
    let server = graph_with_token().await;
    mount_expecting(
        &server,
        abort_mock(),
        graph_error(409, "conflict", "The job is not in a state to be aborted."),
        2,
    )
    .await;
    mount_expecting(
        &server,
        job_mock().and(path("/v1.0/print/printers/p/jobs/gone")),
        job_reply("aborted"),
        1,
    )
    .await;
    mount_expecting(
        &server,
        job_mock().and(path("/v1.0/print/printers/p/jobs/done")),
        job_reply("completed"),
        1,
    )
    .await;
    let mut app = spawn_app_on(server).await;
    let ids = ["gone".to_owned(), "done".to_owned()];
    for id in &ids {
        app.send(&with_id("p", id, id)).await;
    }
    let outcomes = app
        .collect_outcomes_then_quiet(&ids, Duration::from_secs(15), Duration::from_millis(300))
        .await;
    assert_eq!(outcomes["gone"].len(), 1);
    assert_eq!(outcomes["done"].len(), 1);

    let aborted = &outcomes["gone"][0]["data"];
    assert_eq!(aborted["outcome"], "succeeded", "{aborted}");
    assert_eq!(aborted["alreadyAborted"], true, "{aborted}");
    assert_eq!(aborted["httpStatus"], 409, "{aborted}");
    assert_eq!(aborted["attempts"], 1, "{aborted}");
    assert_eq!(aborted["error"], Value::Null, "{aborted}");

    let completed = &outcomes["done"][0]["data"];
    assert_eq!(completed["outcome"], "failed", "{completed}");
    assert_eq!(completed["error"]["kind"], "permanent", "{completed}");
    assert_eq!(completed["error"]["code"], "conflict", "{completed}");
    assert_eq!(completed["httpStatus"], 409, "{completed}");
    assert_eq!(completed["alreadyAborted"], false, "{completed}");
    assert_eq!(completed["attempts"], 1, "{completed}");
    let message = completed["error"]["message"].as_str().expect("message");
    assert!(message.contains("job state: completed"), "{message}");

    let dead = app.one_dead_letter("permanent").await;
    assert_eq!(
        amqp_header(&dead, "x-abort-command-id").as_deref(),
        Some("done")
    );
    app.finish().await;
}

#[tokio::test]
async fn a_job_look_up_failing_transiently_is_retried_and_then_reconciles() {
    let server = graph_with_token().await;
    expect_aborts(
        &server,
        graph_error(400, "BadRequest", "The job cannot be aborted in its state."),
        2,
    )
    .await;
    let look_ups = Script::new(vec![
        graph_error(503, "serviceUnavailable", "busy"),
        job_reply("aborted"),
    ]);
    mount_expecting(&server, job_mock(), look_ups.clone(), 2).await;
    let mut app = spawn_app_on(server).await;
    let event = app.outcome_of(&command("p", "j")).await;
    let data = &event["data"];
    assert_eq!(data["outcome"], "succeeded", "{data}");
    assert_eq!(data["alreadyAborted"], true, "{data}");
    assert_eq!(data["httpStatus"], 400, "{data}");
    assert_eq!(data["attempts"], 2, "{data}");
    assert_eq!(look_ups.arrivals().len(), 2);
    let log = request_log(&app.server).await;
    let graph: Vec<&str> = log
        .iter()
        .filter(|line| !line.starts_with(TOKEN_PATH))
        .map(String::as_str)
        .collect();
    assert_eq!(
        graph,
        [
            "POST /v1.0/print/printers/p/jobs/j/abort token-1",
            "GET /v1.0/print/printers/p/jobs/j token-1",
            "POST /v1.0/print/printers/p/jobs/j/abort token-1",
            "GET /v1.0/print/printers/p/jobs/j token-1",
        ]
    );
    assert!(app.dead_letters().await.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn connect_errors_are_retried_until_graph_listens() {
    let token_server = graph_with_token().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port();
    let mut settings = test_settings(&token_server);
    settings.graph.base_url = Some(
        format!("http://127.0.0.1:{port}/v1.0")
            .parse()
            .expect("url"),
    );
    settings.retry.max_elapsed = Duration::from_secs(10);
    settings.http.listen = Some(([127, 0, 0, 1], 0).into());
    let mut app = TestApp::spawn(token_server, settings).await;
    let address = app.health.http_address().expect("the endpoints listen");
    app.send(&command("p", "j")).await;
    let refused = r#"print_abort_graph_requests_total{operation="abort",status="error"}"#;
    eventually(
        "three refused connections",
        Duration::from_secs(10),
        || async { metric(address, refused).await >= 3.0 },
    )
    .await;
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the refused port binds again");
    let graph = MockServer::builder().listener(listener).start().await;
    expect_aborts(&graph, no_content(), 1).await;
    let event = app.next_event().await;
    let data = &event["data"];
    assert_eq!(data["outcome"], "succeeded", "{data}");
    assert_eq!(data["httpStatus"], 204, "{data}");
    let attempts = data["attempts"].as_u64().expect("attempts");
    let failed = metric(address, refused).await;
    assert!(failed >= 3.0, "{failed}");
    assert_eq!(attempts, failed as u64 + 1, "every refused attempt counts");
    assert_eq!(
        metric(
            address,
            r#"print_abort_graph_requests_total{operation="abort",status="204"}"#
        )
        .await,
        1.0
    );
    assert_eq!(app.health.pauses(), 0);
    app.finish().await;
    drop(graph);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let server = graph_with_token().await;
    let mut settings = test_settings(&server);
    // Retry-After is honoured up to retry.max_interval.
    settings.retry.max_interval = Duration::from_secs(5);
    let mut app = TestApp::spawn(server, settings).await;
    let clock = Clock::now();
    let asked = Utc::now() + chrono::TimeDelta::seconds(2);
    let header = asked.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    // What the header says: whole seconds.
    let not_before = DateTime::from_timestamp(asked.timestamp(), 0).expect("a date");
    let script = Script::new(vec![
        graph_error(503, "serviceUnavailable", "come back later")
            .insert_header("Retry-After", header.as_str()),
        no_content(),
    ]);
    expect_aborts(&app.server, script.clone(), 2).await;
    let event = app.outcome_of(&command("p", "j")).await;
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    assert_eq!(event["data"]["attempts"], 2, "{event}");
    assert_eq!(event["data"]["httpStatus"], 204, "{event}");
    let arrivals = script.arrivals();
    let (first, second) = (clock.wall(arrivals[0]), clock.wall(arrivals[1]));
    assert!(
        first < not_before - chrono::TimeDelta::milliseconds(900),
        "first {first}, date {header}"
    );
    // 50 ms for the two clocks' readings; the schedule alone would wait 20–40 ms.
    assert!(
        second >= not_before - chrono::TimeDelta::milliseconds(50),
        "second {second}, date {header}"
    );
    assert!(
        second < not_before + chrono::TimeDelta::seconds(1),
        "second {second}, date {header}"
    );
    assert_eq!(app.health.pauses(), 0);
    app.finish().await;
}

#[tokio::test]
async fn a_command_expiring_during_its_retries_fails_expired_with_no_later_call() {
    let (server, script) =
        graph_with_script(vec![graph_error(503, "serviceUnavailable", "busy")]).await;
    let mut settings = test_settings(&server);
    settings.retry.max_elapsed = Duration::from_secs(10);
    let mut app = TestApp::spawn(server, settings).await;
    let clock = Clock::now();
    let expires = Utc::now() + chrono::TimeDelta::milliseconds(600);
    let body = serde_json::json!({
        "printerId": "p", "printJobId": "j", "commandId": "expiring",
        "expiresAt": expires.to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    // The parsed deadline: milliseconds.
    let expires = DateTime::parse_from_rfc3339(body["expiresAt"].as_str().expect("text"))
        .expect("rfc 3339")
        .to_utc();
    let event = app.outcome_of(&body.to_string()).await;
    let delivered_at = Utc::now();
    let data = &event["data"];
    assert_eq!(data["outcome"], "failed", "{data}");
    assert_eq!(data["error"]["kind"], "expired", "{data}");
    let message = data["error"]["message"].as_str().expect("message");
    assert!(message.contains("expired at"), "{message}");
    assert!(
        delivered_at < expires + chrono::TimeDelta::seconds(1),
        "the outcome came {} ms after the expiry",
        (delivered_at - expires).num_milliseconds()
    );
    let completed = DateTime::parse_from_rfc3339(data["completedAt"].as_str().expect("time"))
        .expect("rfc 3339");
    assert!(
        completed >= expires,
        "completed {completed}, expiry {expires}"
    );
    app.one_dead_letter("expired").await;
    // The command is settled (its dead letter confirmed, then acked): these are all its aborts.
    let arrivals: Vec<DateTime<Utc>> = script.arrivals().iter().map(|a| clock.wall(*a)).collect();
    assert_eq!(data["attempts"], arrivals.len(), "{data}");
    assert!(arrivals.len() >= 3, "{arrivals:?}");
    let last = *arrivals.last().expect("an abort");
    // Expiry is checked before each attempt; the request's own transit (well under 25 ms
    // on loopback) is all that may separate the check from the arrival.
    assert!(
        last < expires + chrono::TimeDelta::milliseconds(25),
        "an abort arrived at {last}, after the expiry at {expires}"
    );
    // Retries went on until the expiry, each at most retry.max_interval (100 ms) apart.
    assert!(
        last > expires - chrono::TimeDelta::milliseconds(250),
        "the last abort was at {last}, long before the expiry at {expires}"
    );
    app.finish().await;
}

#[tokio::test]
async fn every_retry_carries_a_fresh_client_request_id() {
    let (server, _) = graph_with_script(vec![
        graph_error(503, "serviceUnavailable", "busy"),
        graph_error(503, "serviceUnavailable", "busy"),
        no_content(),
    ])
    .await;
    let mut app = spawn_app_on(server).await;
    let event = app.outcome_of(&command("p", "j")).await;
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    assert_eq!(event["data"]["attempts"], 3, "{event}");
    let requests = app.server.received_requests().await.expect("recorded");
    let ids: Vec<uuid::Uuid> = requests
        .iter()
        .filter(|request| request.url.path().ends_with("/abort"))
        .map(|request| {
            let id = request
                .headers
                .get("client-request-id")
                .and_then(|value| value.to_str().ok())
                .expect("a client-request-id on every abort");
            uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"))
        })
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "{ids:?}");
    app.finish().await;
}

/// A Graph stand-in that holds every abort at least `hold`, and all of them until
/// released, counting the requests in flight and their peak.
struct HeldGraph {
    hold: Duration,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    aborts: AtomicUsize,
    released: tokio::sync::watch::Sender<bool>,
}

/// Counts a request out of flight however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HeldGraph {
    async fn start(hold: Duration) -> (Arc<Self>, String) {
        use axum::routing::{get, post};
        let graph = Arc::new(Self {
            hold,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            aborts: AtomicUsize::new(0),
            released: tokio::sync::watch::Sender::new(false),
        });
        let state = graph.clone();
        let app = axum::Router::new()
            .route(
                "/v1.0/print/printers/{printer}/jobs/{job}/abort",
                post(move || {
                    let graph = state.clone();
                    async move { graph.abort().await }
                }),
            )
            .route(
                "/v1.0/print/printers/{printer}",
                get(|| async { axum::Json(serde_json::json!({"id": "p"})) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (graph, format!("http://{address}/v1.0"))
    }

    async fn abort(&self) -> axum::http::StatusCode {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _counted = InFlight(&self.in_flight);
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.hold).await;
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|released| *released).await;
        self.aborts.fetch_add(1, Ordering::SeqCst);
        axum::http::StatusCode::NO_CONTENT
    }
}

/// The broker's count of unacknowledged deliveries of `queue` (rabbitmqctl; about 1 s).
fn unacknowledged(queue: &str) -> u32 {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .unwrap_or_else(|error| panic!("rabbitmqctl runs (it comes with RabbitMQ): {error}"));
    assert!(
        output.status.success(),
        "rabbitmqctl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, count)| count.trim().parse().expect("a count"))
        .unwrap_or_else(|| panic!("{queue} is not listed: {text}"))
}

#[tokio::test]
async fn concurrency_bounds_graph_requests_and_prefetch_bounds_unacked_commands() {
    let (graph, base_url) = HeldGraph::start(Duration::from_millis(150)).await;
    let token_server = graph_with_token().await;
    let mut settings = test_settings(&token_server);
    settings.graph.base_url = Some(base_url.parse().expect("url"));
    settings.worker.concurrency = 3.try_into().expect("above zero");
    settings.amqp.prefetch = 5.try_into().expect("above zero");
    let mut app = TestApp::spawn(token_server, settings).await;
    let queue = app.settings.amqp.command_queue.clone();
    let ids: Vec<String> = (0..30).map(|n| format!("bounded-{n}")).collect();
    for id in &ids {
        app.send(&with_id("p", id, id)).await;
    }
    // Held: the worker has as many requests in flight and deliveries unacked as it may.
    eventually("3 requests in flight", Duration::from_secs(10), || async {
        graph.in_flight.load(Ordering::SeqCst) == 3
    })
    .await;
    let held = {
        let queue = queue.clone();
        tokio::task::spawn_blocking(move || unacknowledged(&queue))
            .await
            .expect("sampled")
    };
    assert_eq!(held, 5, "unacked deliveries while 3 requests are held");
    assert_eq!(graph.in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(graph.peak.load(Ordering::SeqCst), 3);

    // Released: the rest flows 150 ms per request, sampled all along.
    graph.released.send_replace(true);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (queue, done) = (queue.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            let mut samples = Vec::new();
            while !done.load(Ordering::SeqCst) {
                samples.push(unacknowledged(&queue));
            }
            samples
        })
    };
    let outcomes = app
        .collect_outcomes_then_quiet(&ids, Duration::from_secs(30), Duration::from_millis(300))
        .await;
    done.store(true, Ordering::SeqCst);
    let samples = sampler.await.expect("sampled");
    assert!(!samples.is_empty());
    assert!(
        samples.iter().all(|unacked| *unacked <= 5),
        "unacked deliveries over the prefetch: {samples:?}"
    );
    assert_eq!(graph.peak.load(Ordering::SeqCst), 3, "peak Graph requests");
    assert_eq!(graph.aborts.load(Ordering::SeqCst), 30);
    assert_eq!(outcomes.len(), 30);
    for (id, events) in &outcomes {
        assert_eq!(events.len(), 1, "{id}: {events:?}");
        assert_eq!(events[0]["data"]["outcome"], "succeeded", "{id}");
    }
    assert!(app.dead_letters().await.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn the_binary_stops_on_sigint_with_exit_0_and_loses_nothing() {
    let server = graph_aborting_after(Duration::from_millis(400)).await;
    let mut app = spawn_app_on(server).await;
    // The binary is the only worker, two commands at a time.
    app.stop_worker().await.expect("in-process worker stopped");
    let (mut child, logs) = start_binary(
        &app,
        &[
            ("PRINT_ABORT__WORKER__CONCURRENCY", "2"),
            ("PRINT_ABORT__AMQP__PREFETCH", "2"),
            ("PRINT_ABORT__LOG__LEVEL", "info"),
        ],
    );
    let ids: Vec<String> = (0..10).map(|n| format!("int-{n}")).collect();
    for id in &ids {
        app.send(&with_id("p", id, id)).await;
    }
    let mut events = vec![app.next_event().await];
    signal(&child, "-INT");
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the worker exits within the grace period")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    while let Ok(event) = tokio::time::timeout(Duration::from_millis(500), app.next_event()).await {
        events.push(event);
    }
    for event in &events {
        assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    }
    let settled = event_ids(&events);
    let queued: Vec<String> = app
        .waiting_commands()
        .await
        .iter()
        .map(|delivery| {
            let body: Value = serde_json::from_slice(&delivery.data).expect("json");
            body["commandId"].as_str().expect("id").to_owned()
        })
        .collect();
    let mut all: Vec<String> = settled.iter().chain(&queued).cloned().collect();
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        all, expected,
        "each command settled or queued, once: settled {settled:?}, queued {queued:?}"
    );
    assert!(
        !queued.is_empty(),
        "SIGINT came while commands were waiting"
    );
    // Every abort that started was settled within the grace period, none cut short.
    let aborts = count(
        &request_log(&app.server).await,
        "POST /v1.0/print/printers/",
    );
    assert_eq!(aborts, settled.len());
    assert!(app.dead_letters().await.is_empty());
    let stderr = logs.await.expect("log reader").expect("logs are text");
    assert!(stderr.contains("shutdown requested"), "{stderr}");
    app.finish().await;
}

#[tokio::test]
async fn the_binary_exits_1_on_a_queue_with_other_arguments() {
    let server = graph_with_token().await;
    let settings = test_settings(&server);
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    declare_foreign_queue(&channel, &settings.amqp.command_queue).await;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        worker_binary()
            .arg("run")
            .envs(environment(&settings))
            .output(),
    )
    .await
    .expect("the binary gives up at once")
    .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    delete_topology(&channel, &settings.amqp).await;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr
        .lines()
        .rfind(|line| line.starts_with("print-abort-worker: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(last.contains(&settings.amqp.command_queue), "{last}");
    assert!(last.contains("PRECONDITION_FAILED"), "{last}");
    assert!(last.contains("inequivalent arg"), "{last}");
    assert!(last.contains("x-dead-letter-exchange"), "{last}");
}

#[tokio::test]
async fn paused_retries_and_redeliveries_show_in_metrics_and_readyz() {
    let server = MockServer::start().await;
    let accepted = Arc::new(AtomicBool::new(false));
    let credentials = accepted.clone();
    token_mock()
        .respond_with(move |_: &Request| {
            if credentials.load(Ordering::SeqCst) {
                token_reply("token-1")
            } else {
                ResponseTemplate::new(401).set_body_json(serde_json::json!({
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided."
                }))
            }
        })
        .mount(&server)
        .await;
    mount_printers(&server).await;
    abort_mock()
        .and(path("/v1.0/print/printers/p/jobs/b/abort"))
        .respond_with(Script::new(vec![
            graph_error(503, "serviceUnavailable", "busy"),
            no_content(),
        ]))
        .mount(&server)
        .await;
    let healthy = Arc::new(AtomicBool::new(false));
    let graph = healthy.clone();
    abort_mock()
        .and(path("/v1.0/print/printers/p/jobs/c/abort"))
        .respond_with(move |_: &Request| {
            if graph.load(Ordering::SeqCst) {
                no_content()
            } else {
                graph_error(503, "serviceUnavailable", "busy")
            }
        })
        .mount(&server)
        .await;
    abort_mock().respond_with(no_content()).mount(&server).await;
    let mut settings = test_settings(&server);
    settings.http.listen = Some(([127, 0, 0, 1], 0).into());
    settings.pause.probe_initial_interval = Duration::from_millis(100);
    settings.pause.probe_max_interval = Duration::from_millis(500);
    settings.retry.max_elapsed = Duration::from_millis(150);
    settings.retry.redelivery_delays = vec![Duration::from_millis(300)];
    let mut app = TestApp::spawn(server, settings).await;
    let address = app.health.http_address().expect("the endpoints listen");
    let paused = "print_abort_paused";
    let retries = "print_abort_retries_total";
    let redeliveries = "print_abort_redeliveries_total";
    app.wait_for_health("ready", |h| h.ready()).await;
    assert_eq!(metric(address, paused).await, 0.0);

    // Refused credentials pause the worker.
    app.send(&with_id("p", "a", "a")).await;
    app.wait_for_health("paused", |h| h.paused()).await;
    eventually("print_abort_paused 1", Duration::from_secs(5), || async {
        metric(address, paused).await == 1.0
    })
    .await;
    let (status, body) = readyz(address).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["paused"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    app.wait_for_queued(1).await;

    // Accepted again: the probe passes, the trial command succeeds, the worker resumes.
    accepted.store(true, Ordering::SeqCst);
    let event = app.next_event().await;
    assert_eq!(event["data"]["commandId"], "a", "{event}");
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    eventually("/readyz 200", Duration::from_secs(10), || async {
        readyz(address).await.0 == 200
    })
    .await;
    let (_, body) = readyz(address).await;
    assert_eq!(body["paused"], false, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["pauses"], 1, "{body}");
    assert_eq!(metric(address, paused).await, 0.0);

    // One retry: 503, then 204.
    assert_eq!(metric(address, retries).await, 0.0);
    let event = app.outcome_of(&with_id("p", "b", "b")).await;
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    assert_eq!(event["data"]["attempts"], 2, "{event}");
    assert_eq!(metric(address, retries).await, 1.0);

    // One delayed retry through the broker, then success.
    assert_eq!(metric(address, redeliveries).await, 0.0);
    app.send(&with_id("p", "c", "c")).await;
    eventually(
        "one redelivery counted",
        Duration::from_secs(10),
        || async { metric(address, redeliveries).await == 1.0 },
    )
    .await;
    healthy.store(true, Ordering::SeqCst);
    let event = app.next_event().await;
    let data = &event["data"];
    assert_eq!(data["commandId"], "c", "{data}");
    assert_eq!(data["outcome"], "succeeded", "{data}");
    let aborts_of_c = count(
        &request_log(&app.server).await,
        "POST /v1.0/print/printers/p/jobs/c/abort",
    );
    assert!(aborts_of_c >= 2, "{aborts_of_c}");
    assert_eq!(data["attempts"], aborts_of_c, "{data}");
    assert_eq!(metric(address, redeliveries).await, 1.0);
    assert!(app.dead_letters().await.is_empty());
    assert_eq!(app.health.pauses(), 1);
    app.finish().await;
}

/// A TCP relay to `upstream` that holds the reply of the first connection for `hold`, so
/// the request is served but its reply is lost to a client that times out sooner. (graph-sim's
/// latency fault cannot model a lost reply: the server drops a handler whose client hung up,
/// so a timed-out call never reaches the job table.)
async fn relay_losing_the_first_reply(upstream: SocketAddr, hold: Duration) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let address = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((inbound, _)) = listener.accept().await {
            let lose = std::mem::take(&mut first);
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut upstream_read, mut upstream_write) = outbound.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
                    let _ = upstream_write.shutdown().await;
                });
                if lose {
                    tokio::time::sleep(hold).await;
                }
                let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
                requests.abort();
            });
        }
    });
    address
}

#[tokio::test]
async fn an_abort_repeated_after_a_lost_reply_reconciles_to_already_aborted() {
    let sim = GraphSim::start(SimConfig::default())
        .await
        .expect("graph-sim starts");
    sim.set_job("p", "lost-reply", JobState::Processing);
    // Graph through the relay, tokens straight from graph-sim: the first Graph call is the
    // abort, which graph-sim carries out at once and whose reply comes after the timeout.
    let relay = relay_losing_the_first_reply(sim.addr(), Duration::from_millis(600)).await;
    let mut settings = sim_settings(&sim);
    settings.graph.base_url = Some(format!("http://{relay}/v1.0").parse().expect("url"));
    settings.graph.timeout = Duration::from_millis(300);
    let mut app = TestApp::spawn(MockServer::start().await, settings).await;
    let started = Instant::now();
    let event = app.outcome_of(&command("p", "lost-reply")).await;
    let elapsed = started.elapsed();
    let data = &event["data"];
    assert_eq!(data["outcome"], "succeeded", "{data}");
    assert_eq!(data["alreadyAborted"], true, "{data}");
    assert_eq!(data["httpStatus"], 400, "{data}");
    assert_eq!(data["attempts"], 2, "{data}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(sim.job_state("p", "lost-reply"), Some(JobState::Aborted));
    let stats = sim.stats();
    assert_eq!(stats.abort.requests, 2, "{stats:?}");
    assert_eq!(
        stats.abort.count(204),
        1,
        "the first abort went through: {stats:?}"
    );
    assert_eq!(
        stats.abort.count(400),
        1,
        "the repeat was refused: {stats:?}"
    );
    assert_eq!(stats.get_job.requests, 1, "{stats:?}");
    assert_eq!(stats.get_job.count(200), 1, "{stats:?}");
    assert!(app.dead_letters().await.is_empty());
    app.finish().await;
}
