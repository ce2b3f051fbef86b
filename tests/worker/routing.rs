//! Where events go and what they carry: the results exchange, `reply_to`, correlation ids
//! and trace context.

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::types::FieldTable;

use crate::helpers::*;

#[tokio::test]
async fn reply_to_gets_the_event_with_the_correlation_id() {
    let mut app = spawn_app().await;
    abort_mock()
        .respond_with(no_content())
        .mount(&app.server)
        .await;
    let reply_queue = exclusive_queue(&app.channel).await;
    let mut replies = consume(&app.channel, &reply_queue).await;
    let properties = BasicProperties::default()
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id("corr-7".into())
        .with_message_id("msg-7".into());
    app.send_with(command("p1", "j1").as_bytes(), properties)
        .await;

    let reply = tokio::time::timeout(std::time::Duration::from_secs(15), replies.next())
        .await
        .expect("a reply within 15 s")
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("corr-7")
    );
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
    let mut app = spawn_app().await;
    abort_mock()
        .respond_with(no_content())
        .mount(&app.server)
        .await;
    let queue = exclusive_queue(&app.channel).await;
    let mut replies = consume(&app.channel, &queue).await;
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
    let reply = tokio::time::timeout(std::time::Duration::from_secs(15), replies.next())
        .await
        .expect("a reply within 15 s")
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("cmd-99")
    );
    // The trace continues: same trace id on the Graph request and on the event, each with
    // a span id of its own.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let on_event = amqp_header(&reply, "traceparent").expect("traceparent on the event");
    assert!(
        on_event.starts_with(&format!("00-{trace_id}-")),
        "{on_event}"
    );
    assert_ne!(on_event, traceparent);
    let requests = app.server.received_requests().await.expect("recorded");
    let abort = requests
        .iter()
        .find(|r| r.url.path().ends_with("/abort"))
        .expect("abort request");
    let on_graph = abort
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("traceparent on the Graph request");
    assert!(
        on_graph.starts_with(&format!("00-{trace_id}-")),
        "{on_graph}"
    );
    assert_ne!(on_graph, on_event);
    let _ = app.next_event().await;
    app.finish().await;
}
