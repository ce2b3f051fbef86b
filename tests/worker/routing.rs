//! Where events go and what they carry: the results exchange, `reply_to`, correlation ids
//! and trace context.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Consumer};

use crate::helpers::*;

/// A worker whose aborts succeed, and a queue of the test's own, already consumed, to name
/// in `reply_to`.
async fn app_with_reply_queue() -> (TestApp, String, Consumer) {
    let app = spawn_app().await;
    mount_abort(&app.server, no_content()).await;
    let queue = exclusive_queue(&app.channel).await;
    let replies = consume(&app.channel, &queue).await;
    (app, queue, replies)
}

/// The correlation id a reply carries.
fn correlation_id(reply: &lapin::message::Delivery) -> Option<&str> {
    reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str())
}

/// The next reply on `replies`, or a test failure after 15 s.
async fn next_reply(replies: &mut Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(15), replies.next())
        .await
        .expect("a reply within 15 s")
        .expect("consumer open")
        .expect("delivery")
}

#[tokio::test]
async fn reply_to_gets_the_event_with_the_correlation_id() {
    let (mut app, reply_queue, mut replies) = app_with_reply_queue().await;
    let properties = BasicProperties::default()
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id("corr-7".into())
        .with_message_id("msg-7".into());
    app.send_with(command("p1", "j1").as_bytes(), properties)
        .await;

    let reply = next_reply(&mut replies).await;
    assert_eq!(correlation_id(&reply), Some("corr-7"));
    assert_eq!(reply.properties.delivery_mode(), &Some(2));
    let event: serde_json::Value = serde_json::from_slice(&reply.data).expect("json");
    assert_eq!(event["data"]["commandId"], "msg-7");
    assert_eq!(
        reply
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        event["id"].as_str().map(str::to_owned)
    );
    let published = app.next_event().await;
    assert_eq!(
        published["id"], event["id"],
        "the same event goes to both places"
    );
    app.finish().await;
}

#[tokio::test]
async fn correlation_id_defaults_to_the_command_id_and_the_trace_continues() {
    let (mut app, queue, mut replies) = app_with_reply_queue().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    print_abort_worker::amqp::headers::insert_text(&mut headers, "traceparent", traceparent);
    let properties = BasicProperties::default()
        .with_reply_to(queue.as_str().into())
        .with_headers(headers);
    app.send_with(
        br#"{"printerId":"p1","printJobId":"j1","commandId":"cmd-99"}"#,
        properties,
    )
    .await;
    let reply = next_reply(&mut replies).await;
    assert_eq!(correlation_id(&reply), Some("cmd-99"));
    // The trace continues: same trace id on the Graph request and on the event, each with
    // a span id of its own.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let on_event = amqp_header(&reply, "traceparent").expect("traceparent on the event");
    assert!(
        on_event.starts_with(&format!("00-{trace_id}-")),
        "{on_event}"
    );
    assert_ne!(on_event, traceparent);
    let on_graph = abort_header(&app.server, "traceparent").await;
    assert!(
        on_graph.starts_with(&format!("00-{trace_id}-")),
        "{on_graph}"
    );
    assert_ne!(on_graph, on_event);
    let _ = app.next_event().await;
    app.finish().await;
}

/// A queue of the test's own bound to the results exchange with exactly `key`.
async fn bound_to(app: &TestApp, key: &str) -> Consumer {
    let queue = exclusive_queue(&app.channel).await;
    app.channel
        .queue_bind(
            queue.as_str().into(),
            app.settings.amqp.results_exchange.as_str().into(),
            key.into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    consume(&app.channel, &queue).await
}

fn text(value: &Option<lapin::types::ShortString>) -> Option<&str> {
    value.as_ref().map(|value| value.as_str())
}

/// What every copy of an outcome event carries, read off the real delivery.
fn assert_event_properties(
    delivery: &lapin::message::Delivery,
    correlation: &str,
) -> serde_json::Value {
    let event: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
    let properties = &delivery.properties;
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        text(properties.content_type()),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        text(properties.message_id()),
        event["id"].as_str(),
        "message_id is the event id"
    );
    assert_eq!(text(properties.correlation_id()), Some(correlation));
    assert_eq!(text(properties.kind()), event["type"].as_str());
    let timestamp = properties.timestamp().expect("a timestamp");
    let now = chrono::Utc::now().timestamp();
    let timestamp = i64::try_from(timestamp).expect("a timestamp in range");
    assert!(
        (now - timestamp).abs() <= 60,
        "timestamp {timestamp}, now {now}"
    );
    assert!(
        amqp_header(delivery, "traceparent").is_some(),
        "traceparent header"
    );
    event
}

#[tokio::test]
async fn each_outcome_goes_out_with_its_routing_key_and_properties_and_its_copies_match() {
    let app = spawn_app().await;
    abort_mock()
        .and(wiremock::matchers::path_regex("/jobs/ok/abort$"))
        .respond_with(no_content())
        .mount(&app.server)
        .await;
    mount_no_such_job(
        &app.server,
        abort_mock().and(wiremock::matchers::path_regex("/jobs/missing/abort$")),
    )
    .await;
    let mut by_key = Vec::new();
    for outcome in ["succeeded", "failed", "rejected"] {
        by_key.push((
            outcome,
            bound_to(&app, &format!("printjob.abort.{outcome}")).await,
        ));
    }
    let reply_queue = exclusive_queue(&app.channel).await;
    let mut replies = consume(&app.channel, &reply_queue).await;
    let sends = [
        (
            "succeeded",
            r#"{"printerId":"p","printJobId":"ok","commandId":"c-ok"}"#,
            Some("corr-ok"),
        ),
        (
            "failed",
            r#"{"printerId":"p","printJobId":"missing","commandId":"c-missing"}"#,
            None,
        ),
        (
            "rejected",
            r#"{"printerId":"p/..","printJobId":"x","commandId":"c-bad"}"#,
            None,
        ),
    ];
    for (_, body, correlation) in &sends {
        let mut properties = BasicProperties::default()
            .with_reply_to(reply_queue.as_str().into())
            .with_message_id(
                format!("msg-{body}")
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect::<String>()
                    .as_str()
                    .into(),
            );
        if let Some(correlation) = correlation {
            properties = properties.with_correlation_id((*correlation).into());
        }
        app.send_with(body.as_bytes(), properties).await;
    }
    let mut ids = std::collections::HashMap::new();
    for ((outcome, consumer), (expected, body, correlation)) in by_key.iter_mut().zip(&sends) {
        assert_eq!(outcome, expected);
        let delivery = tokio::time::timeout(Duration::from_secs(15), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("a {outcome} event"))
            .expect("consumer open")
            .expect("delivery");
        assert_eq!(
            delivery.routing_key.as_str(),
            format!("printjob.abort.{outcome}")
        );
        let command: serde_json::Value = serde_json::from_str(body).expect("json");
        let command_id = command["commandId"].as_str().expect("id").to_owned();
        let correlation = correlation.map_or(command_id, str::to_owned);
        let event = assert_event_properties(&delivery, &correlation);
        assert_eq!(event["data"]["outcome"], *outcome);
        assert_eq!(event["type"], format!("printjob.abort.{outcome}"));
        ids.insert(
            event["id"].as_str().expect("id").to_owned(),
            (*outcome, correlation),
        );
    }
    // The reply_to copies: the same event, with the same properties.
    for _ in 0..sends.len() {
        let reply = next_reply(&mut replies).await;
        assert_eq!(
            reply.exchange.as_str(),
            "",
            "reply_to copies go through the default exchange"
        );
        assert_eq!(reply.routing_key.as_str(), reply_queue);
        let id = text(reply.properties.message_id())
            .expect("message id")
            .to_owned();
        let (outcome, correlation) = ids.get(&id).unwrap_or_else(|| panic!("unknown event {id}"));
        let event = assert_event_properties(&reply, correlation.as_str());
        assert_eq!(event["data"]["outcome"], *outcome);
    }
    // No key received another outcome's event.
    for (outcome, consumer) in &mut by_key {
        if let Ok(Some(Ok(extra))) =
            tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
        {
            panic!(
                "{outcome} queue got {}",
                String::from_utf8_lossy(&extra.data)
            );
        }
    }
    // The dead-letter copies: the command itself, persistent, through the dead-letter
    // exchange with the command queue's name as routing key, with why in its headers.
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 2, "the failed and the rejected command");
    for letter in &dead {
        assert_eq!(
            letter.exchange.as_str(),
            app.settings.amqp.dead_letter_exchange
        );
        assert_eq!(letter.routing_key.as_str(), app.settings.amqp.command_queue);
        assert_eq!(letter.properties.delivery_mode(), &Some(2));
        assert_eq!(
            text(letter.properties.reply_to()),
            Some(reply_queue.as_str())
        );
        let body: &str = std::str::from_utf8(&letter.data).expect("utf-8");
        let (_, sent, _) = sends
            .iter()
            .find(|(_, sent, _)| *sent == body)
            .unwrap_or_else(|| panic!("the body is a command sent: {body}"));
        let kind = amqp_header(letter, "x-abort-error").expect("x-abort-error");
        let command: serde_json::Value = serde_json::from_str(sent).expect("json");
        assert_eq!(
            amqp_header(letter, "x-abort-command-id").as_deref(),
            command["commandId"].as_str()
        );
        assert_eq!(
            kind,
            if command["commandId"] == "c-bad" {
                "invalid"
            } else {
                "permanent"
            }
        );
        assert_eq!(
            amqp_header(letter, "x-abort-source-queue").as_deref(),
            Some(app.settings.amqp.command_queue.as_str())
        );
    }
    app.finish().await;
}
