//! The operations endpoints while the worker runs against the real broker: health,
//! readiness that follows the broker connection, and metrics that move with the commands.

use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::proxy::LinkProxy;

pub(crate) async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let reply = reqwest::get(format!("http://{address}{path}"))
        .await
        .expect("the endpoint answers");
    let status = reply.status().as_u16();
    (status, reply.text().await.expect("a text body"))
}

/// The value of one sample line of the Prometheus text, 0 when absent.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn health_readiness_and_metrics_follow_the_worker() {
    let proxy = LinkProxy::start("127.0.0.1:5672").await;
    let server = graph_with_token().await;
    abort_mock()
        .and(wiremock::matchers::path(
            "/v1.0/print/printers/p/jobs/gone/abort",
        ))
        .respond_with(graph_error(404, "itemNotFound", "no such job"))
        .mount(&server)
        .await;
    job_mock()
        .respond_with(graph_error(404, "itemNotFound", "no such job"))
        .mount(&server)
        .await;
    abort_mock().respond_with(no_content()).mount(&server).await;
    let mut settings = test_settings(&server);
    settings.amqp.url = proxy.url().parse().expect("a broker URL");
    settings.http.listen = Some(([127, 0, 0, 1], 0).into());
    let mut app = TestApp::spawn(server, settings).await;
    app.wait_for_health("ready", |h| h.ready()).await;
    let address = app.health.http_address().expect("the endpoints listen");

    assert_eq!(get(address, "/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get(address, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    app.send(&command("p", "one")).await;
    app.send(&command("p", "two")).await;
    app.send(&command("p", "gone")).await;
    app.send("not json").await;
    for _ in 0..4 {
        app.next_event().await;
    }
    let succeeded = r#"print_abort_commands_total{outcome="succeeded",error_kind=""}"#;
    let permanent = r#"print_abort_commands_total{outcome="failed",error_kind="permanent"}"#;
    let rejected = r#"print_abort_commands_total{outcome="rejected",error_kind="invalid"}"#;
    // Commands are counted once acked, a moment after their events went out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, metrics) = get(address, "/metrics").await;
        assert_eq!(status, 200);
        let counted =
            sample(&metrics, succeeded) + sample(&metrics, permanent) + sample(&metrics, rejected);
        let settled = sample(&metrics, "print_abort_commands_in_flight") == 0.0;
        if (counted >= 4.0 && settled) || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&metrics, succeeded), 2.0, "{metrics}");
    assert_eq!(sample(&metrics, permanent), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, rejected), 1.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"print_abort_graph_requests_total{operation="abort",status="204"}"#
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"print_abort_graph_requests_total{operation="get_job",status="404"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("print_abort_graph_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"print_abort_token_requests_total{result="ok"}"#),
        1.0
    );
    assert_eq!(sample(&metrics, "print_abort_commands_in_flight"), 0.0);

    // Readiness drops with the broker connection and comes back with it.
    proxy.take_down();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(address, "/readyz").await;
        if status == 503 {
            assert!(body.contains(r#""connected":false"#), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readiness never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(address, "/healthz").await.0,
        200,
        "alive while disconnected"
    );
    proxy.restore();
    app.wait_for_health("ready again", |h| h.ready()).await;
    assert_eq!(get(address, "/readyz").await.0, 200);
    let (_, metrics) = get(address, "/metrics").await;
    assert!(
        sample(&metrics, "print_abort_broker_reconnects_total") >= 1.0,
        "{metrics}"
    );
    app.finish().await;
}
