//! Shared set-up for the worker's integration tests: a real RabbitMQ with fresh names per
//! test, wiremock standing in for Graph and the token endpoint, and the real worker.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use print_abort_worker::Settings;
use print_abort_worker::config::{AmqpSettings, QueueType};
use print_abort_worker::health::Health;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const TENANT: &str = "tenant-1";
pub const CLIENT_ID: &str = "client-1";
pub const CLIENT_SECRET: &str = "s3cret-value-never-logged";
pub const ABORT_PATH: &str = r"^/v1\.0/print/printers/[^/]+/jobs/[^/]+/abort$";
pub const JOB_PATH: &str = r"^/v1\.0/print/printers/[^/]+/jobs/[^/]+$";

/// Settings that reach graph-sim `sim` with the app registration it knows.
pub fn sim_settings(sim: &graph_sim::GraphSim) -> Settings {
    let mut settings = settings_for(&sim.authority());
    settings.auth.client_id = graph_sim::DEFAULT_CLIENT_ID.into();
    settings.auth.client_secret = Some(SecretString::from(graph_sim::DEFAULT_CLIENT_SECRET));
    settings
}

/// Deliveries the worker running in this process holds unsettled right now, by its own
/// `print_abort_commands_in_flight` gauge.
pub fn unsettled_commands() -> u64 {
    let metrics = print_abort_worker::telemetry::metrics::install()
        .expect("the worker's metrics recorder")
        .render();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("print_abort_commands_in_flight "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// How long the outcome collectors listen on after every command has an outcome.
pub const QUIET: Duration = Duration::from_millis(500);

/// Runs the worker in this process with `health`; it stops when the returned sender is
/// used or dropped.
pub fn spawn_worker(
    settings: Settings,
    health: Arc<Health>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), print_abort_worker::RunError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let worker = tokio::spawn(print_abort_worker::run_with_health(
        settings, health, shutdown,
    ));
    (stop, worker)
}

/// Connects to the local broker, or fails the test with a message that says what to do.
pub async fn broker() -> Connection {
    match Connection::connect(BROKER_URL, ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "RabbitMQ is not reachable at 127.0.0.1:5672 ({error}). These tests need a real \
             broker: start it with `rabbitmq-server -detached && rabbitmqctl await_startup`"
        ),
    }
}

/// Settings for a test: fresh names, Graph and the token endpoint at `server`, short retries.
pub fn test_settings(server: &MockServer) -> Settings {
    settings_for(&server.uri())
}

/// [`test_settings`] with Graph and the token endpoint at `origin` (`http://127.0.0.1:port`).
pub fn settings_for(origin: &str) -> Settings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut settings = Settings::default();
    settings.amqp.url = BROKER_URL.parse().expect("a broker URL");
    settings.amqp.queue_type = QueueType::Classic;
    settings.amqp.command_queue = format!("test.{id}.commands");
    settings.amqp.results_exchange = format!("test.{id}.results");
    settings.amqp.dead_letter_exchange = format!("test.{id}.dlx");
    settings.amqp.dead_letter_queue = format!("test.{id}.dead");
    settings.graph.base_url = Some(format!("{origin}/v1.0").parse().expect("url"));
    settings.auth.authority = Some(origin.parse().expect("url"));
    settings.auth.tenant_id = TENANT.into();
    settings.auth.client_id = CLIENT_ID.into();
    settings.auth.client_secret = Some(SecretString::from(CLIENT_SECRET));
    settings.retry.initial_interval = Duration::from_millis(20);
    settings.retry.max_interval = Duration::from_millis(100);
    settings.retry.max_elapsed = Duration::from_secs(3);
    settings.pause.verdict_wait = Duration::from_millis(200);
    settings.worker.shutdown_grace = Duration::from_secs(5);
    settings.validate().expect("test settings are valid");
    settings
}

/// Requests to the token endpoint of [`TENANT`].
pub fn token_mock() -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(path(format!("/{TENANT}/oauth2/v2.0/token")))
}

/// Mounts a token endpoint that issues `token-1` for an hour, and a healthy printer read
/// for the worker's probe.
pub async fn mount_token(server: &MockServer) {
    token_mock()
        .respond_with(token_reply("token-1"))
        .named("token endpoint")
        .mount(server)
        .await;
    mount_printers(server).await;
}

/// `GET /print/printers/{printerId}`: the read the worker probes Graph with.
pub fn printers_mock() -> wiremock::MockBuilder {
    Mock::given(method("GET")).and(wiremock::matchers::path_regex(
        "^/v1.0/print/printers/[A-Za-z0-9_-]+$",
    ))
}

/// Mounts a printer read that answers the probe as a healthy Graph would.
pub async fn mount_printers(server: &MockServer) {
    printers_mock()
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "printer-1"})),
        )
        .named("printer read (the probe)")
        .mount(server)
        .await;
}

pub fn token_reply(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "token_type": "Bearer", "expires_in": 3600, "access_token": token
    }))
}

/// Mounts a token endpoint that issues `token-1`, `token-2`, … in turn, the last one from
/// then on; returns the script, which counts the requests.
pub async fn mount_numbered_tokens(server: &MockServer, count: usize) -> Script {
    let tokens = Script::new(
        (1..=count)
            .map(|n| token_reply(&format!("token-{n}")))
            .collect(),
    );
    token_mock()
        .respond_with(tokens.clone())
        .mount(server)
        .await;
    tokens
}

/// Mounts `abort` (a matcher of abort requests) and every job look-up answering 404
/// `itemNotFound`, as Graph does for a job that does not exist.
pub async fn mount_no_such_job(server: &MockServer, abort: wiremock::MockBuilder) {
    abort
        .respond_with(graph_error(404, "itemNotFound", "no such job"))
        .mount(server)
        .await;
    job_mock()
        .respond_with(graph_error(404, "itemNotFound", "no such job"))
        .mount(server)
        .await;
}

pub fn graph_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("request-id", uuid::Uuid::new_v4().to_string().as_str())
        .set_body_json(serde_json::json!({
            "error": {"code": code, "message": message,
                      "innerError": {"request-id": "r", "client-request-id": "c", "date": "2026-11-30T00:00:00"}}
        }))
}

pub fn no_content() -> ResponseTemplate {
    ResponseTemplate::new(204)
        .insert_header("request-id", uuid::Uuid::new_v4().to_string().as_str())
}

pub fn abort_mock() -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(path_regex(ABORT_PATH))
}

pub fn job_mock() -> wiremock::MockBuilder {
    Mock::given(method("GET")).and(path_regex(JOB_PATH))
}

/// Mounts `mock` answering `reply`; the test fails when the server drops unless `mock`
/// matched exactly `times` requests.
pub async fn mount_expecting(
    server: &MockServer,
    mock: wiremock::MockBuilder,
    reply: impl Respond + 'static,
    times: u64,
) {
    mock.respond_with(reply).expect(times).mount(server).await;
}

/// Mounts an abort endpoint that answers every abort with `reply`.
pub async fn mount_abort(server: &MockServer, reply: impl Respond + 'static) {
    abort_mock().respond_with(reply).mount(server).await;
}

/// Mounts an abort endpoint answering `reply` that must see exactly `times` aborts.
pub async fn expect_aborts(server: &MockServer, reply: impl Respond + 'static, times: u64) {
    mount_expecting(server, abort_mock(), reply, times).await;
}

/// Expects exactly one abort that carries the access token `token`, answered with `reply`.
pub async fn expect_abort_bearing(server: &MockServer, token: &str, reply: ResponseTemplate) {
    let bearing = abort_mock().and(header("authorization", format!("Bearer {token}")));
    mount_expecting(server, bearing, reply, 1).await;
}

/// The header `name` of the abort request `server` received, or a test failure.
pub async fn abort_header(server: &MockServer, name: &str) -> String {
    let requests = server.received_requests().await.expect("recorded");
    let abort = requests
        .iter()
        .find(|r| r.url.path().ends_with("/abort"))
        .expect("abort request");
    abort
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{name} on the abort request"))
        .to_owned()
}

/// Abort requests `server` has received so far.
pub async fn aborts_received(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .expect("wiremock records requests")
        .iter()
        .filter(|request| request.url.path().ends_with("/abort"))
        .count()
}

/// Replies from a script, one entry per request (the last repeats), and records when each
/// request arrived.
#[derive(Clone)]
pub struct Script {
    replies: Arc<Vec<ResponseTemplate>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    pub fn new(replies: Vec<ResponseTemplate>) -> Self {
        Self {
            replies: Arc::new(replies),
            arrivals: Arc::default(),
        }
    }

    pub fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().expect("lock").clone()
    }
}

impl Respond for Script {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut arrivals = self.arrivals.lock().expect("lock");
        arrivals.push(Instant::now());
        let index = (arrivals.len() - 1).min(self.replies.len() - 1);
        self.replies[index].clone()
    }
}

/// A running worker with its broker-side view.
pub struct TestApp {
    pub settings: Settings,
    pub server: MockServer,
    pub channel: Channel,
    events: Consumer,
    events_queue: String,
    pub health: Arc<Health>,
    stop: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<Result<(), print_abort_worker::RunError>>>,
    _connection: Connection,
}

impl TestApp {
    /// Starts the worker on an empty broker, waits until it has declared its topology
    /// itself, then subscribes to every outcome event.
    pub async fn spawn(server: MockServer, settings: Settings) -> Self {
        // The worker's logs, shown by the test runner when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "print_abort_worker=info".into()),
            )
            .with_test_writer()
            .try_init();
        let connection = broker().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let events_queue = exclusive_queue(&channel).await;
        let events = consume(&channel, &events_queue).await;
        let mut app = Self {
            settings,
            server,
            channel,
            events,
            events_queue,
            health: Arc::default(),
            stop: None,
            worker: None,
            _connection: connection,
        };
        app.start_worker();
        app.wait_for_health("connected, with its topology declared", |h| {
            h.sessions() > 0
        })
        .await;
        app.rebind_events().await;
        app
    }

    /// Binds the events queue to the results exchange again (after it was recreated).
    pub async fn rebind_events(&self) {
        bind_to_results(&self.channel, &self.events_queue, &self.settings.amqp).await;
    }

    /// Starts (or restarts) the worker with the app's settings.
    pub fn start_worker(&mut self) {
        self.health = Arc::default();
        let (stop, worker) = spawn_worker(self.settings.clone(), self.health.clone());
        self.worker = Some(worker);
        self.stop = Some(stop);
    }

    /// Signals shutdown and waits for the worker to return.
    pub async fn stop_worker(&mut self) -> Result<(), print_abort_worker::RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.worker.take() {
            Some(worker) => tokio::time::timeout(Duration::from_secs(30), worker)
                .await
                .expect("the worker stops within 30 s")
                .expect("the worker task does not panic"),
            None => Ok(()),
        }
    }

    /// Publishes a command body to the command queue and waits for the broker's confirm.
    pub async fn send(&self, body: &str) {
        self.send_with(body.as_bytes(), BasicProperties::default())
            .await;
    }

    pub async fn send_with(&self, body: &[u8], properties: BasicProperties) {
        publish(
            &self.channel,
            &self.settings.amqp.command_queue,
            body,
            properties,
        )
        .await;
    }

    /// The next outcome event, or a test failure after `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Value {
        let delivery = tokio::time::timeout(timeout, self.events.next())
            .await
            .unwrap_or_else(|_| panic!("no outcome event within {timeout:?}"))
            .expect("events consumer open")
            .expect("event delivery");
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/cloudevents+json")
        );
        serde_json::from_slice(&delivery.data).expect("events are JSON")
    }

    pub async fn next_event(&mut self) -> Value {
        self.next_event_within(Duration::from_secs(15)).await
    }

    /// Sends `body` and returns the next outcome event: the shape of a one-command test.
    pub async fn outcome_of(&mut self, body: &str) -> Value {
        self.send(body).await;
        self.next_event().await
    }

    /// Asserts that no further event arrives within `wait`.
    pub async fn assert_no_event(&mut self, wait: Duration) {
        if let Ok(Some(Ok(delivery))) = tokio::time::timeout(wait, self.events.next()).await {
            panic!(
                "unexpected event: {}",
                String::from_utf8_lossy(&delivery.data)
            );
        }
    }

    /// Drains the dead-letter queue once the in-process worker has settled every command
    /// it holds: a copy is confirmed after the outcome event and before the ack.
    pub async fn dead_letters(&self) -> Vec<lapin::message::Delivery> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.unsettled_commands() > 0 {
            assert!(
                Instant::now() < deadline,
                "the worker never settled its commands"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        get_all(&self.channel, &self.settings.amqp.dead_letter_queue).await
    }

    /// Asserts that exactly one command was dead-lettered, marked with `error` in
    /// `x-abort-error`, and returns it.
    pub async fn one_dead_letter(&self, error: &str) -> lapin::message::Delivery {
        let mut dead = self.dead_letters().await;
        assert_eq!(dead.len(), 1);
        assert_eq!(
            amqp_header(&dead[0], "x-abort-error").as_deref(),
            Some(error)
        );
        dead.remove(0)
    }

    /// How many messages are ready in the command queue, without taking them.
    pub async fn ready_commands(&self) -> u32 {
        queue_length(&self.channel, &self.settings.amqp.command_queue).await
    }

    /// Waits until `count` commands wait in the command queue (say, returned by a paused
    /// worker), or fails the test.
    pub async fn wait_for_queued(&self, count: u32) {
        wait_for_length(&self.channel, &self.settings.amqp.command_queue, count).await;
    }

    /// Waits until `condition` holds for the worker's health, or fails the test.
    pub async fn wait_for_health(&self, what: &str, condition: impl Fn(&Health) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition(&self.health) {
            assert!(Instant::now() < deadline, "the worker never became {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Collects events until every one of `ids` has at least one, then for a further
    /// [`QUIET`] in which any late duplicate would arrive; returns every event of each id.
    /// `earlier` are events of these ids the test already took.
    pub async fn collect_outcomes(
        &mut self,
        ids: &[String],
        earlier: Vec<Value>,
        within: Duration,
    ) -> std::collections::HashMap<String, Vec<Value>> {
        self.collect(ids, earlier, within, QUIET).await
    }

    /// [`Self::collect_outcomes`] with a quiet period of the test's choosing.
    pub async fn collect_outcomes_then_quiet(
        &mut self,
        ids: &[String],
        within: Duration,
        quiet: Duration,
    ) -> std::collections::HashMap<String, Vec<Value>> {
        self.collect(ids, Vec::new(), within, quiet).await
    }

    async fn collect(
        &mut self,
        ids: &[String],
        earlier: Vec<Value>,
        within: Duration,
        quiet: Duration,
    ) -> std::collections::HashMap<String, Vec<Value>> {
        let deadline = Instant::now() + within;
        let mut seen: std::collections::HashMap<String, Vec<Value>> = Default::default();
        fn note(seen: &mut std::collections::HashMap<String, Vec<Value>>, event: Value) {
            let id = event["data"]["commandId"]
                .as_str()
                .expect("command id")
                .to_owned();
            seen.entry(id).or_default().push(event);
        }
        for event in earlier {
            note(&mut seen, event);
        }
        loop {
            let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
            if missing == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{missing} commands had no outcome in time");
            let event = self.next_event_within(left).await;
            note(&mut seen, event);
        }
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, self.events.next()).await {
            note(
                &mut seen,
                serde_json::from_slice(&delivery.data).expect("events are JSON"),
            );
        }
        seen
    }

    /// Deliveries the in-process worker holds unsettled right now, by its own
    /// `print_abort_commands_in_flight` gauge: proof that a fault met unfinished work.
    pub fn unsettled_commands(&self) -> u64 {
        unsettled_commands()
    }

    /// Messages waiting in the command queue (taken out of it).
    pub async fn waiting_commands(&self) -> Vec<lapin::message::Delivery> {
        get_all(&self.channel, &self.settings.amqp.command_queue).await
    }

    /// Stops the worker and deletes everything the test declared.
    pub async fn finish(mut self) {
        self.stop_worker().await.expect("the worker stops cleanly");
        let _ = self
            .channel
            .queue_delete(
                self.events_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        delete_topology(&self.channel, &self.settings.amqp).await;
        // The worker declared a delay queue per step of the ladder.
        for delay in &self.settings.retry.redelivery_delays {
            let queue =
                print_abort_worker::amqp::topology::delay_queue(&self.settings.amqp, *delay);
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// A server-named, exclusive queue that goes away with the test's connection.
pub async fn exclusive_queue(channel: &Channel) -> String {
    print_abort_worker::cli::exclusive_queue(channel)
        .await
        .expect("an exclusive queue")
}

/// Binds `queue` to every event the results exchange of `amqp` publishes.
pub async fn bind_to_results(channel: &Channel, queue: &str, amqp: &AmqpSettings) {
    channel
        .queue_bind(
            queue.into(),
            amqp.results_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind events");
}

/// How many messages are ready in `queue`, without taking them.
pub async fn queue_length(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("queue {queue} exists: {error}"))
        .message_count()
}

/// Waits until `queue` holds `length` ready messages, or fails the test.
pub async fn wait_for_length(channel: &Channel, queue: &str, length: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = queue_length(channel, queue).await;
        if now == length {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {now} messages, not {length}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Declares `name` as a durable classic queue with no arguments, so it outlives a broker
/// restart.
pub async fn declare_durable_queue(channel: &Channel, name: &str) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("durable queue {name} declared: {error}"));
}

/// Declares `name` as a durable classic queue without a dead-letter exchange: what an
/// operator might have made by hand, and not what the worker declares.
pub async fn declare_foreign_queue(channel: &Channel, name: &str) {
    declare_durable_queue(channel, name).await;
}

/// Deletes the queues and exchanges of `amqp`, whichever exist.
pub async fn delete_topology(channel: &Channel, amqp: &AmqpSettings) {
    print_abort_worker::amqp::topology::delete(channel, amqp).await;
}

/// Runs the binary with `args` and `variables`, expects exit code 2 (a usage or
/// configuration error) and returns what it wrote to standard error.
pub async fn config_error_of(args: &[&str], variables: &[(&str, &str)]) -> String {
    let output = worker_binary()
        .args(args)
        .envs(variables.iter().copied())
        .output()
        .await
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{variables:?}: {stderr}");
    stderr
}

/// The worker binary, run from the crate's folder, with its output captured.
pub fn worker_binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_print-abort-worker"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // A test that fails half-way must not leave a worker running behind it.
        .kill_on_drop(true)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The environment that configures the binary like `settings`.
pub fn environment(settings: &Settings) -> Vec<(String, String)> {
    let amqp = &settings.amqp;
    let secret = settings
        .auth
        .client_secret
        .as_ref()
        .map(|secret| secret.expose_secret().to_owned())
        .unwrap_or_default();
    [
        ("AMQP__URL", amqp.url.expose_secret().to_string()),
        ("AMQP__QUEUE_TYPE", amqp.queue_type.as_str().into()),
        ("AMQP__COMMAND_QUEUE", amqp.command_queue.clone()),
        ("AMQP__RESULTS_EXCHANGE", amqp.results_exchange.clone()),
        (
            "AMQP__DEAD_LETTER_EXCHANGE",
            amqp.dead_letter_exchange.clone(),
        ),
        ("AMQP__DEAD_LETTER_QUEUE", amqp.dead_letter_queue.clone()),
        ("GRAPH__BASE_URL", settings.graph.base_url().to_string()),
        ("AUTH__AUTHORITY", settings.authority().to_string()),
        ("AUTH__TENANT_ID", settings.auth.tenant_id.clone()),
        ("AUTH__CLIENT_ID", settings.auth.client_id.clone()),
        ("AUTH__CLIENT_SECRET", secret),
        ("RETRY__INITIAL_INTERVAL", "20ms".into()),
        ("RETRY__MAX_INTERVAL", "100ms".into()),
        ("WORKER__SHUTDOWN_GRACE", "10s".into()),
        ("LOG__LEVEL", "trace".into()),
    ]
    .into_iter()
    .map(|(key, value)| (format!("PRINT_ABORT__{key}"), value))
    .collect()
}

pub async fn consume(channel: &Channel, queue: &str) -> Consumer {
    print_abort_worker::cli::consume_without_acks(channel, queue)
        .await
        .expect("consume")
}

pub async fn publish(channel: &Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirmation.is_ack(), "the broker confirmed the command");
}

pub async fn get_all(channel: &Channel, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        messages.push(message.delivery);
    }
    messages
}

/// Text of a header of a delivery.
pub fn amqp_header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    print_abort_worker::amqp::headers::text(delivery.properties.headers().as_ref(), name)
}

/// A started wiremock server with the token endpoint mounted.
pub async fn graph_with_token() -> MockServer {
    let server = MockServer::start().await;
    mount_token(&server).await;
    server
}

/// Graph with the token endpoint mounted and every abort succeeding after `delay`.
pub async fn graph_aborting_after(delay: Duration) -> MockServer {
    let server = graph_with_token().await;
    mount_abort(&server, no_content().set_delay(delay)).await;
    server
}

/// Graph with the token endpoint mounted and aborts answered from `replies`; the script
/// tells when each abort arrived.
pub async fn graph_with_script(replies: Vec<ResponseTemplate>) -> (MockServer, Script) {
    let server = graph_with_token().await;
    let script = Script::new(replies);
    mount_abort(&server, script.clone()).await;
    (server, script)
}

/// The worker with default test settings against `server`.
pub async fn spawn_app_on(server: MockServer) -> TestApp {
    let settings = test_settings(&server);
    TestApp::spawn(server, settings).await
}

/// The common case: token endpoint mounted, default test settings, worker running.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(graph_with_token().await).await
}

pub fn command(printer: &str, job: &str) -> String {
    serde_json::json!({"printerId": printer, "printJobId": job}).to_string()
}

/// When the last of `outcomes` completed, by its event's `completedAt`.
pub fn last_completed(
    outcomes: &std::collections::HashMap<String, Vec<Value>>,
) -> chrono::DateTime<chrono::Utc> {
    outcomes
        .values()
        .flatten()
        .filter_map(|event| event_time(event, "completedAt"))
        .max()
        .expect("events with completedAt")
}

/// An outcome event's `data.<field>` time (`receivedAt`, `completedAt`).
pub fn event_time(event: &Value, field: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let time = event["data"][field].as_str()?;
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|time| time.with_timezone(&chrono::Utc))
}

/// Prints the figures of a fault test in one line, for docs/RELIABILITY.md; run the tests
/// with `--no-capture` and grep for `RELIABILITY`.
pub fn report(
    fault: &str,
    sent: usize,
    outcomes: &std::collections::HashMap<String, Vec<Value>>,
    dead_lettered: usize,
    recovery: Option<Duration>,
) {
    let events: usize = outcomes.values().map(Vec::len).sum();
    println!(
        "RELIABILITY {fault}: sent={sent} with_outcome={} events={events} duplicates={} \
         dead_lettered={dead_lettered} recovery_ms={}",
        outcomes.len(),
        events - outcomes.len(),
        recovery.map_or_else(|| "-".to_string(), |d| d.as_millis().to_string()),
    );
}
