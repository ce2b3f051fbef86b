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
