//! How Graph's replies become outcomes: success, retries, throttling, token renewal,
//! permanent refusals and reconciliation.

use std::time::Duration;

use wiremock::ResponseTemplate;
use wiremock::matchers::{body_json, body_string, header, header_exists, path};

use crate::helpers::*;

/// A worker whose Graph must see exactly one abort matching `abort`, answered with `reply`.
async fn app_expecting_one(abort: wiremock::MockBuilder, reply: ResponseTemplate) -> TestApp {
    let server = graph_with_token().await;
    mount_expecting(&server, abort, reply, 1).await;
    spawn_app_on(server).await
}

/// Graph's 400 for an abort that the job's state does not allow.
fn refused_in_its_state() -> ResponseTemplate {
    graph_error(400, "BadRequest", "The job cannot be aborted in its state.")
}

/// Graph's reply to reading job `j1` whose status is `status`.
fn job_with_status(status: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "j1", "status": status}))
}

#[tokio::test]
async fn success_with_a_reason_sends_it_as_the_body() {
    let abort = abort_mock()
        .and(path("/v1.0/print/printers/printer-1/jobs/5182/abort"))
        .and(header("authorization", "Bearer token-1"))
        .and(body_json(
            serde_json::json!({"reason": "Blocked by print policy"}),
        ));
    let reply = no_content().insert_header("request-id", "req-42");
    let mut app = app_expecting_one(abort, reply).await;
    let event = app
        .outcome_of(
            r#"{"printerId":"printer-1","printJobId":"5182","reason":"Blocked by print policy","commandId":"cmd-1"}"#,
        )
        .await;
    assert_eq!(event["type"], "printjob.abort.succeeded");
    assert_eq!(event["subject"], "printers/printer-1/jobs/5182");
    let data = &event["data"];
    assert_eq!(data["commandId"], "cmd-1");
    assert_eq!(data["outcome"], "succeeded");
    assert_eq!(data["attempts"], 1);
    assert_eq!(data["httpStatus"], 204);
    assert_eq!(data["graphRequestId"], "req-42");
    assert_eq!(data["reason"], "Blocked by print policy");
    assert_eq!(data["error"], serde_json::Value::Null);
    assert!(app.dead_letters().await.is_empty());
    app.finish().await;
    // The command was acked: a restart would not see it again (checked in lifecycle tests).
}

#[tokio::test]
async fn success_without_a_reason_sends_no_body() {
    let bodiless = abort_mock()
        .and(body_string(""))
        .and(header("content-length", "0"))
        .and(header(
            "user-agent",
            concat!("print-abort-worker/", env!("CARGO_PKG_VERSION")),
        ))
        .and(header_exists("authorization"))
        .and(header_exists("client-request-id"));
    let mut app = app_expecting_one(bodiless, no_content()).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["reason"], serde_json::Value::Null);
    let client_request_id = abort_header(&app.server, "client-request-id").await;
    assert!(uuid::Uuid::parse_str(&client_request_id).is_ok());
    app.finish().await;
}

#[tokio::test]
async fn transient_failures_are_retried_until_success() {
    let mut app = spawn_app().await;
    let script = Script::new(vec![
        graph_error(503, "serviceUnavailable", "busy"),
        graph_error(503, "serviceUnavailable", "busy"),
        no_content(),
    ]);
    expect_aborts(&app.server, script, 3).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["attempts"], 3);
    assert_eq!(event["data"]["httpStatus"], 204);
    app.finish().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = graph_with_token().await;
    let mut settings = test_settings(&server);
    // Retry-After is honoured up to retry.max_interval.
    settings.retry.max_interval = Duration::from_secs(5);
    let mut app = TestApp::spawn(server, settings).await;
    let script = Script::new(vec![
        graph_error(429, "TooManyRequests", "throttled").insert_header("Retry-After", "1"),
        no_content(),
    ]);
    expect_aborts(&app.server, script.clone(), 2).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["attempts"], 2);
    let arrivals = script.arrivals();
    let gap = arrivals[1] - arrivals[0];
    // The schedule alone would wait at most 40 ms; Retry-After asked for a second.
    assert!(gap >= Duration::from_millis(1000), "gap was {gap:?}");
    assert!(gap < Duration::from_millis(2500), "gap was {gap:?}");
    app.finish().await;
}

#[tokio::test]
async fn one_retry_after_closes_the_tenant_no_longer_than_max_interval() {
    let mut app = spawn_app().await;
    let script = Script::new(vec![
        graph_error(429, "TooManyRequests", "throttled").insert_header("Retry-After", "3600"),
        no_content(),
    ]);
    expect_aborts(&app.server, script.clone(), 2).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    let arrivals = script.arrivals();
    let gap = arrivals[1] - arrivals[0];
    // retry.max_interval is 100 ms in the tests: an hour's Retry-After waits that long.
    assert!(gap >= Duration::from_millis(100), "gap was {gap:?}");
    assert!(gap < Duration::from_millis(1000), "gap was {gap:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_401_renews_the_token_once() {
    let server = wiremock::MockServer::start().await;
    let tokens = Script::new(vec![token_reply("token-1"), token_reply("token-2")]);
    mount_expecting(&server, token_mock(), tokens.clone(), 2).await;
    let expired = graph_error(
        401,
        "InvalidAuthenticationToken",
        "Access token has expired",
    );
    expect_abort_bearing(&server, "token-1", expired).await;
    expect_abort_bearing(&server, "token-2", no_content()).await;
    let mut app = spawn_app_on(server).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["attempts"], 2);
    assert_eq!(tokens.arrivals().len(), 2);
    app.finish().await;
}

#[tokio::test]
async fn a_404_fails_permanently_with_graphs_code_and_is_dead_lettered() {
    let mut app = spawn_app().await;
    let not_found = || graph_error(404, "itemNotFound", "The print job was not found.");
    expect_aborts(&app.server, not_found(), 1).await;
    mount_expecting(&app.server, job_mock(), not_found(), 1).await;
    let event = app
        .outcome_of(r#"{"printerId":"p1","printJobId":"j404","commandId":"c-404"}"#)
        .await;
    let data = &event["data"];
    assert_eq!(event["type"], "printjob.abort.failed");
    assert_eq!(data["outcome"], "failed");
    assert_eq!(data["error"]["kind"], "permanent");
    assert_eq!(data["error"]["code"], "itemNotFound");
    assert_eq!(data["httpStatus"], 404);
    assert_eq!(data["attempts"], 1);

    let dead = app.one_dead_letter("permanent").await;
    assert_eq!(
        amqp_header(&dead, "x-abort-command-id").as_deref(),
        Some("c-404")
    );
    let body: serde_json::Value = serde_json::from_slice(&dead.data).expect("original body");
    assert_eq!(body["printJobId"], "j404");
    assert!(app.waiting_commands().await.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn a_400_for_a_job_already_aborted_counts_as_success() {
    let mut app = spawn_app().await;
    expect_aborts(&app.server, refused_in_its_state(), 1).await;
    let job = job_mock().and(path("/v1.0/print/printers/p1/jobs/j1"));
    let aborted =
        job_with_status(serde_json::json!({"state": "aborted", "description": "Aborted"}));
    mount_expecting(&app.server, job, aborted, 1).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["alreadyAborted"], true);
    assert_eq!(event["data"]["error"], serde_json::Value::Null);
    assert!(app.dead_letters().await.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn a_400_for_a_completed_job_fails_permanently() {
    let mut app = spawn_app().await;
    mount_abort(&app.server, refused_in_its_state()).await;
    job_mock()
        .respond_with(job_with_status(serde_json::json!({"state": "completed"})))
        .mount(&app.server)
        .await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "failed");
    assert_eq!(event["data"]["error"]["kind"], "permanent");
    assert_eq!(event["data"]["error"]["code"], "BadRequest");
    let message = event["data"]["error"]["message"].as_str().expect("message");
    assert!(message.contains("job state: completed"), "{message}");
    assert_eq!(app.dead_letters().await.len(), 1);
    app.finish().await;
}

#[tokio::test]
async fn transient_failures_beyond_the_budget_end_exhausted_and_dead_lettered() {
    let server = graph_with_token().await;
    let mut settings = test_settings(&server);
    settings.retry.max_elapsed = Duration::from_millis(500);
    // One command failing alone is the command's problem, not an outage.
    settings.pause.after_failing_commands = 1000;
    mount_abort(&server, graph_error(503, "serviceUnavailable", "busy")).await;
    let mut app = TestApp::spawn(server, settings).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    let data = &event["data"];
    assert_eq!(data["outcome"], "failed");
    assert_eq!(data["error"]["kind"], "exhausted");
    assert_eq!(data["httpStatus"], 503);
    assert!(data["attempts"].as_u64().expect("attempts") >= 3, "{data}");
    assert!(
        data["durationMs"].as_u64().expect("duration") < 1500,
        "{data}"
    );
    app.one_dead_letter("exhausted").await;
    app.finish().await;
}

#[tokio::test]
async fn a_403_is_unauthorized_when_pausing_is_disabled() {
    let server = graph_with_token().await;
    let mut settings = test_settings(&server);
    settings.pause.enabled = false;
    let mut app = TestApp::spawn(server, settings).await;
    let denied = graph_error(
        403,
        "Authorization_RequestDenied",
        "Insufficient privileges",
    );
    expect_aborts(&app.server, denied, 1).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["error"]["kind"], "unauthorized");
    assert_eq!(
        event["data"]["error"]["code"],
        "Authorization_RequestDenied"
    );
    app.finish().await;
}

#[tokio::test]
async fn many_commands_share_one_token_request() {
    let server = wiremock::MockServer::start().await;
    let slow_token = token_reply("token-1").set_delay(Duration::from_millis(300));
    mount_expecting(&server, token_mock(), slow_token, 1).await;
    expect_aborts(&server, no_content(), 30).await;
    let mut app = spawn_app_on(server).await;
    for n in 0..30 {
        app.send(&command("p1", &format!("j{n}"))).await;
    }
    for _ in 0..30 {
        assert_eq!(app.next_event().await["data"]["outcome"], "succeeded");
    }
    app.finish().await;
}

#[tokio::test]
async fn commands_run_concurrently() {
    let server = graph_with_token().await;
    expect_aborts(
        &server,
        no_content().set_delay(Duration::from_millis(200)),
        100,
    )
    .await;
    let mut settings = test_settings(&server);
    settings.worker.concurrency = 32.try_into().expect("above zero");
    settings.amqp.prefetch = 64.try_into().expect("above zero");
    let mut app = TestApp::spawn(server, settings).await;
    let started = std::time::Instant::now();
    for n in 0..100 {
        app.send(&command("p1", &format!("j{n}"))).await;
    }
    for _ in 0..100 {
        assert_eq!(app.next_event().await["data"]["outcome"], "succeeded");
    }
    let elapsed = started.elapsed();
    // One after another would take 100 × 200 ms = 20 s; 32 at a time needs about 0.8 s.
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_retried() {
    let server = graph_with_token().await;
    let script = Script::new(vec![
        no_content().set_delay(Duration::from_secs(2)),
        no_content(),
    ]);
    expect_aborts(&server, script, 2).await;
    let mut settings = test_settings(&server);
    settings.graph.timeout = Duration::from_millis(300);
    let mut app = TestApp::spawn(server, settings).await;
    let event = app.outcome_of(&command("p1", "slow")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["attempts"], 2);
    // The first attempt was cut off at the timeout, not waited out.
    assert!(
        event["data"]["durationMs"].as_u64().expect("ms") < 1500,
        "{event}"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let server = wiremock::MockServer::start().await;
    let tokens = Script::new(vec![
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token_type": "Bearer", "expires_in": 1, "access_token": "short-lived"
        })),
        token_reply("token-2"),
    ]);
    mount_expecting(&server, token_mock(), tokens.clone(), 2).await;
    expect_abort_bearing(&server, "short-lived", no_content()).await;
    expect_abort_bearing(&server, "token-2", no_content()).await;
    let mut app = spawn_app_on(server).await;
    let early = app.outcome_of(&command("p1", "early")).await;
    assert_eq!(early["data"]["attempts"], 1);
    // A one-second token is renewed a fifth of its life early, never used past expiry.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let event = app.outcome_of(&command("p1", "late")).await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["attempts"], 1, "no 401 round trip was needed");
    assert_eq!(tokens.arrivals().len(), 2);
    app.finish().await;
}
