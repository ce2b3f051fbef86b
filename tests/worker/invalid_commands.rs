//! Invalid and expired commands: a clear `rejected` or `expired` outcome, dead-lettered,
//! and Graph is never called.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::helpers::*;

/// A worker whose Graph answers aborts with 204 and must see exactly `aborts` of them.
async fn app_expecting_aborts(aborts: u64) -> TestApp {
    let app = spawn_app().await;
    expect_aborts(&app.server, no_content(), aborts).await;
    app
}

#[tokio::test]
async fn invalid_commands_are_rejected_dead_lettered_and_never_reach_graph() {
    let mut app = app_expecting_aborts(0).await;
    let oversized = format!(
        r#"{{"printerId":"p","printJobId":"j","reason":"x","pad":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"this is not json".to_vec(), "not valid JSON"),
        (
            "missing-id",
            br#"{"printerId":"p"}"#.to_vec(),
            "printJobId is required",
        ),
        (
            "traversal",
            br#"{"printerId":"../../admin","printJobId":"j"}"#.to_vec(),
            "printerId may hold only",
        ),
        (
            "oversized",
            oversized.into_bytes(),
            "more than the 65536 allowed",
        ),
        ("binary", vec![0xff, 0x00, 0xfe, 0x7b], "not valid JSON"),
    ];
    for (message_id, body, _) in &cases {
        let properties = BasicProperties::default().with_message_id((*message_id).into());
        app.send_with(body, properties).await;
    }
    let mut events = std::collections::HashMap::new();
    for _ in &cases {
        let event = app.next_event().await;
        let id = event["data"]["commandId"]
            .as_str()
            .expect("command id")
            .to_owned();
        events.insert(id, event);
    }
    for (message_id, _, problem) in &cases {
        let event = &events[*message_id];
        let data = &event["data"];
        assert_eq!(event["type"], "printjob.abort.rejected");
        assert_eq!(data["outcome"], "rejected");
        assert_eq!(data["attempts"], 0);
        assert_eq!(data["error"]["kind"], "invalid");
        let message = data["error"]["message"].as_str().expect("message");
        assert!(message.contains(problem), "{message:?} lacks {problem:?}");
        if ["not-json", "binary", "oversized"].contains(message_id) {
            assert_eq!(data["printerId"], serde_json::Value::Null, "{data}");
            assert_eq!(data["printJobId"], serde_json::Value::Null, "{data}");
        }
    }
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    for delivery in &dead {
        assert_eq!(
            amqp_header(delivery, "x-abort-error").as_deref(),
            Some("invalid")
        );
    }
    assert!(app.waiting_commands().await.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn odd_header_types_do_not_disturb_processing() {
    let mut app = app_expecting_aborts(1).await;
    let mut headers = FieldTable::default();
    headers.insert("traceparent".into(), AMQPValue::LongLongInt(42));
    headers.insert(
        "x-weird".into(),
        AMQPValue::FieldArray(vec![AMQPValue::Void].into()),
    );
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_content_type("text/plain".into());
    app.send_with(command("p1", "j1").as_bytes(), properties)
        .await;
    let event = app.next_event().await;
    assert_eq!(event["data"]["outcome"], "succeeded");
    app.finish().await;
}

#[tokio::test]
async fn an_expired_command_fails_without_a_graph_call() {
    let mut app = app_expecting_aborts(0).await;
    let event = app
        .outcome_of(r#"{"printerId":"p1","printJobId":"j1","expiresAt":"2020-01-01T00:00:00Z"}"#)
        .await;
    let data = &event["data"];
    assert_eq!(data["outcome"], "failed");
    assert_eq!(data["error"]["kind"], "expired");
    assert_eq!(data["attempts"], 0);
    assert_eq!(data["printJobId"], "j1");
    app.one_dead_letter("expired").await;
    app.finish().await;
}

#[tokio::test]
async fn a_tenant_outside_the_allow_list_is_rejected() {
    let mut app = app_expecting_aborts(0).await;
    let event = app
        .outcome_of(r#"{"printerId":"p1","printJobId":"j1","tenantId":"someone-else"}"#)
        .await;
    assert_eq!(event["data"]["outcome"], "rejected");
    assert_eq!(event["data"]["tenantId"], "someone-else");
    app.finish().await;
}
