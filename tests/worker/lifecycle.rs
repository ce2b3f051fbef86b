//! Start-up, shutdown and the process boundary: nothing is lost on SIGTERM, bad
//! configuration exits 2, a topology mismatch is a clear error, secrets stay out of logs.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use print_abort_worker::config::QueueType;
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::helpers::*;

/// Starts the binary as the only worker for `app`, with `extra` variables over the app's
/// settings. Its logs are read as they come, so a full pipe never blocks it; the reader
/// hands them back once the binary exits.
pub(crate) fn start_binary(
    app: &TestApp,
    extra: &[(&str, &str)],
) -> (Child, JoinHandle<std::io::Result<String>>) {
    let mut child = worker_binary()
        .arg("run")
        .envs(environment(&app.settings))
        .envs(extra.iter().copied())
        .spawn()
        .expect("the binary starts");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        stderr_pipe.read_to_string(&mut text).await.map(|_| text)
    });
    (child, logs)
}

#[tokio::test]
async fn shutdown_in_the_middle_of_a_run_loses_nothing() {
    let server = graph_aborting_after(Duration::from_millis(300)).await;
    let mut settings = test_settings(&server);
    settings.amqp.queue_type = QueueType::Quorum;
    settings.worker.concurrency = 4.try_into().expect("above zero");
    settings.amqp.prefetch = 8.try_into().expect("above zero");
    settings.worker.shutdown_grace = Duration::from_millis(100);
    let mut app = TestApp::spawn(server, settings).await;
    let total = 40;
    for n in 0..total {
        app.send(&format!(
            r#"{{"printerId":"p","printJobId":"j{n}","commandId":"c{n}"}}"#
        ))
        .await;
    }
    let mut earlier = Vec::new();
    for _ in 0..4 {
        earlier.push(app.next_event().await);
    }
    // The shutdown meets commands in flight: held, unacknowledged, with Graph.
    let unsettled = app.unsettled_commands();
    assert!(unsettled > 0, "nothing was in flight at the shutdown");
    app.stop_worker().await.expect("a clean shutdown");
    assert_eq!(
        app.unsettled_commands(),
        0,
        "the shutdown returned what it held"
    );

    app.start_worker();
    let ids: Vec<String> = (0..total).map(|n| format!("c{n}")).collect();
    let outcomes = app
        .collect_outcomes(&ids, earlier, Duration::from_secs(30))
        .await;
    for events in outcomes.values() {
        for event in events {
            assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
        }
    }
    // A command abandoned after its event was confirmed but before its ack is reported
    // again after the restart: at most the prefetch window held at the shutdown.
    let duplicates: usize = outcomes.values().map(|events| events.len() - 1).sum();
    assert!(
        duplicates as u64 <= unsettled,
        "{duplicates} duplicates, {unsettled} in flight"
    );
    assert!(app.dead_letters().await.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn a_queue_with_other_arguments_is_a_clear_startup_error() {
    let server = graph_with_token().await;
    let mut settings = test_settings(&server);
    settings.amqp.queue_type = QueueType::Quorum;
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    declare_foreign_queue(&channel, &settings.amqp.command_queue).await;
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        print_abort_worker::run(settings.clone(), std::future::pending()),
    )
    .await
    .expect("the worker gives up at once");
    let message = format!("{:#}", result.expect_err("a mismatch is fatal"));
    assert!(message.contains(&settings.amqp.command_queue), "{message}");
    assert!(message.contains("inequivalent arg"), "{message}");
    assert!(message.contains("x-dead-letter-exchange"), "{message}");
    let _ = channel
        .queue_delete(
            settings.amqp.command_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    for queue in [&settings.amqp.dead_letter_queue] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

#[tokio::test]
async fn the_binary_stops_on_sigterm_with_exit_0_and_never_logs_secrets() {
    let server = graph_aborting_after(Duration::from_millis(500)).await;
    let mut app = spawn_app_on(server).await;
    // Run the binary as the only worker.
    app.stop_worker().await.expect("in-process worker stopped");
    let (mut child, logs) = start_binary(&app, &[]);
    // More than the default prefetch of 32, so some wait in the queue at the signal.
    let total = 50;
    for n in 0..total {
        app.send(&format!(
            r#"{{"printerId":"p","printJobId":"j{n}","commandId":"c{n}"}}"#
        ))
        .await;
    }
    let first = app.next_event().await;
    assert_eq!(first["data"]["outcome"], "succeeded");
    let aborts = aborts_received(&app.server).await;
    assert!(
        aborts > 1,
        "commands are with Graph at the signal ({aborts} aborts, 1 event)"
    );
    assert!(
        app.ready_commands().await > 0,
        "commands are still queued at the signal"
    );
    signal(&child, "-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the worker exits within the grace period")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");

    // In-flight commands finished within the grace period, each with one success; the
    // rest are still queued, untouched.
    let mut settled = vec![first["data"]["commandId"].as_str().expect("id").to_owned()];
    while let Ok(event) = tokio::time::timeout(QUIET, app.next_event()).await {
        assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
        settled.push(event["data"]["commandId"].as_str().expect("id").to_owned());
    }
    let waiting: Vec<String> = app
        .waiting_commands()
        .await
        .iter()
        .map(|delivery| {
            let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
            body["commandId"].as_str().expect("id").to_owned()
        })
        .collect();
    assert!(!waiting.is_empty(), "the rest were still queued");
    let mut seen: HashSet<String> = settled.iter().cloned().collect();
    assert_eq!(seen.len(), settled.len(), "one outcome each: {settled:?}");
    for id in &waiting {
        assert!(
            seen.insert(id.clone()),
            "{id} was settled and is queued too"
        );
    }
    assert_eq!(
        seen.len(),
        total,
        "every command has an outcome or is still queued"
    );

    let stderr = logs.await.expect("log reader").expect("logs are text");
    assert!(
        stderr.contains("command settled"),
        "trace logs were written"
    );
    assert!(
        !stderr.contains(CLIENT_SECRET),
        "the client secret leaked into logs"
    );
    assert!(
        !stderr.contains("token-1"),
        "the access token leaked into logs"
    );
    app.finish().await;
}

#[tokio::test]
async fn bad_configuration_exits_with_code_2_and_a_clear_message() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("PRINT_ABORT__AMQP__NO_SUCH_KEY", "1")], "no_such_key"),
        (
            &[
                ("PRINT_ABORT__AUTH__TENANT_ID", "t"),
                ("PRINT_ABORT__AUTH__CLIENT_ID", "c"),
                ("PRINT_ABORT__AUTH__CLIENT_SECRET", "s"),
                (
                    "PRINT_ABORT__GRAPH__BASE_URL",
                    "http://graph.example.com/v1.0",
                ),
            ],
            "plain http://",
        ),
        (
            &[
                ("PRINT_ABORT__AUTH__TENANT_ID", "t"),
                ("PRINT_ABORT__AUTH__CLIENT_ID", "c"),
                ("PRINT_ABORT__AUTH__CLIENT_SECRET", "s"),
                ("PRINT_ABORT__RETRY__MAX_ELAPSED", "soon"),
            ],
            "is not a duration",
        ),
        (&[], "auth.tenant_id"),
    ];
    for (variables, expected) in cases {
        let stderr = config_error_of(&["run"], variables).await;
        assert!(stderr.contains(expected), "{variables:?}: {stderr}");
    }
    // The TLS files of amqp.tls, for the worker and the broker-only tools alike.
    let tls = |key: &'static str| {
        [
            ("PRINT_ABORT__AMQP__URL", "amqps://localhost:5671/%2f"),
            (key, "/no/such/tls.pem"),
        ]
    };
    for (args, key, expected) in [
        (
            &["run"][..],
            "PRINT_ABORT__AMQP__TLS__CA_FILE",
            "amqp.tls.ca_file: /no/such/tls.pem: cannot be read",
        ),
        (
            &["enqueue", "--printer", "p", "--job", "j"][..],
            "PRINT_ABORT__AMQP__TLS__CLIENT_CERTIFICATE_FILE",
            "amqp.tls.client_certificate_file: /no/such/tls.pem: cannot be read",
        ),
        (
            &["dlq", "list"][..],
            "PRINT_ABORT__AMQP__TLS__CA_FILE",
            "amqp.tls.ca_file",
        ),
    ] {
        let stderr = config_error_of(args, &tls(key)).await;
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let plain = [
        (
            "PRINT_ABORT__AMQP__URL",
            "amqp://guest:secret@localhost:5672/%2f",
        ),
        ("PRINT_ABORT__AMQP__TLS__CA_FILE", "/no/such/ca.pem"),
    ];
    let stderr = config_error_of(&["enqueue", "--printer", "p", "--job", "j"], &plain).await;
    assert!(
        stderr.contains("use amqps://") && !stderr.contains("secret"),
        "TLS files with a plain amqp:// URL are refused, the password not shown: {stderr}"
    );

    let output = worker_binary()
        .args(["run", "--config", "/no/such/file.toml"])
        .output()
        .await
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/file.toml"));
}

/// Starts the binary as the only worker for `app` with `concurrency`, draining its logs in
/// the background.
fn spawn_binary(app: &TestApp, concurrency: usize) -> Child {
    let prefetch = (concurrency * 2).to_string();
    let concurrency = concurrency.to_string();
    let (child, logs) = start_binary(
        app,
        &[
            ("PRINT_ABORT__WORKER__CONCURRENCY", &concurrency),
            ("PRINT_ABORT__AMQP__PREFETCH", &prefetch),
            ("PRINT_ABORT__LOG__LEVEL", "warn"),
        ],
    );
    tokio::spawn(async move {
        // Shown by the test runner when the test fails.
        match logs.await {
            Ok(Ok(text)) => eprintln!("worker logs:\n{text}"),
            other => eprintln!("worker logs unreadable: {other:?}"),
        }
    });
    child
}

pub(crate) fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_and_sigkill_under_load_lose_no_command() {
    let server = graph_aborting_after(Duration::from_millis(400)).await;
    let mut settings = test_settings(&server);
    settings.amqp.queue_type = QueueType::Quorum;
    let mut app = TestApp::spawn(server, settings).await;
    app.stop_worker().await.expect("in-process worker stopped");
    // 32 at a time, 400 ms each: about 80 per second, so both signals land mid-run.
    let total = 400;
    let ids: Vec<String> = (0..total).map(|n| format!("load-{n}")).collect();
    for id in &ids {
        app.send(&format!(
            r#"{{"printerId":"p","printJobId":"{id}","commandId":"{id}"}}"#
        ))
        .await;
    }
    let mut earlier = Vec::new();

    let mut worker = spawn_binary(&app, 32);
    for _ in 0..40 {
        earlier.push(app.next_event().await);
    }
    // Each signal meets commands with Graph: aborts sent whose outcomes are not out yet.
    assert!(
        aborts_received(&app.server).await > earlier.len(),
        "work in flight at SIGTERM"
    );
    signal(&worker, "-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("exits within the grace period")
        .expect("wait");
    assert_eq!(exit.code(), Some(0));

    let mut worker = spawn_binary(&app, 32);
    for _ in 0..40 {
        earlier.push(app.next_event().await);
    }
    assert!(
        aborts_received(&app.server).await > earlier.len(),
        "work in flight at SIGKILL"
    );
    signal(&worker, "-KILL");
    let _ = worker.wait().await;

    let mut worker = spawn_binary(&app, 32);
    let outcomes = app
        .collect_outcomes(&ids, earlier, Duration::from_secs(60))
        .await;
    signal(&worker, "-TERM");
    let _ = worker.wait().await;
    report(
        "SIGTERM then SIGKILL under load",
        total,
        &outcomes,
        app.dead_letters().await.len(),
        None,
    );
    let duplicates: usize = outcomes.values().map(|events| events.len() - 1).sum();
    // SIGTERM settles in-flight commands; SIGKILL can repeat at most the unacked window.
    assert!(duplicates <= 64, "{duplicates} duplicate outcomes");
    for events in outcomes.values() {
        assert_eq!(events[0]["data"]["outcome"], "succeeded");
    }
    app.finish().await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_command_span() {
    let mut app = spawn_app().await;
    mount_abort(&app.server, no_content()).await;
    app.stop_worker().await.expect("in-process worker stopped");
    let (mut child, logs) = start_binary(
        &app,
        &[
            ("PRINT_ABORT__LOG__FORMAT", "json"),
            // A success settles at debug; the default level shows only other outcomes.
            ("PRINT_ABORT__LOG__LEVEL", "info,print_abort_worker=debug"),
        ],
    );
    app.send(r#"{"printerId":"p","printJobId":"j","commandId":"json-1"}"#)
        .await;
    assert_eq!(app.next_event().await["data"]["outcome"], "succeeded");
    signal(&child, "-TERM");
    let exit = child.wait().await.expect("wait");
    assert_eq!(exit.code(), Some(0));
    let logs = logs.await.expect("reader").expect("text");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let settled = lines
        .iter()
        .find(|line| line["fields"]["message"] == "command settled")
        .expect("a settled line");
    assert_eq!(settled["span"]["command_id"], "json-1", "{settled}");
    assert_eq!(settled["span"]["print_job_id"], "j", "{settled}");
    assert_eq!(settled["fields"]["outcome"], "succeeded", "{settled}");
    assert!(
        settled["span"]["trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32)
    );
    // Alerting on ERROR lines must not fire on a clean stop.
    let errors: Vec<_> = lines
        .iter()
        .filter(|line| line["level"] == "ERROR")
        .collect();
    assert!(errors.is_empty(), "a clean stop logged errors: {errors:?}");
    app.finish().await;
}
