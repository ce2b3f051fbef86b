//! The Universal Print task model against the real broker and graph-sim: jobs named by their
//! Graph URL, as a pull-printing app gets it from a print task's `parentUrl`.

use std::time::Duration;

use graph_sim::{GraphSim, JobState, SimConfig};
use serde_json::json;

use crate::helpers::*;

const PRINTER: &str = "016b5565-3bbf-4067-b9ff-4d68167eb1a6";

async fn start_sim() -> GraphSim {
    GraphSim::start(SimConfig::default())
        .await
        .expect("graph-sim starts")
}

#[tokio::test]
async fn a_command_by_job_url_aborts_that_job_and_reports_its_ids() {
    let sim = start_sim().await;
    sim.set_job(PRINTER, "5182", JobState::Processing);
    let mut app = TestApp::spawn(wiremock::MockServer::start().await, sim_settings(&sim)).await;
    let url = format!("{}/print/printers/{PRINTER}/jobs/5182", sim.base_url());

    let event = app
        .outcome_of(&json!({"jobUrl": url, "commandId": "by-url"}).to_string())
        .await;

    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    assert_eq!(event["data"]["commandId"], "by-url");
    assert_eq!(event["data"]["printerId"], PRINTER);
    assert_eq!(event["data"]["printJobId"], "5182");
    assert_eq!(sim.job_state(PRINTER, "5182"), Some(JobState::Aborted));
    assert_eq!(sim.stats().abort.requests, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_job_url_off_the_configured_graph_api_is_rejected_without_any_request() {
    let sim = start_sim().await;
    sim.set_job(PRINTER, "5182", JobState::Processing);
    let mut app = TestApp::spawn(wiremock::MockServer::start().await, sim_settings(&sim)).await;
    let api = sim.base_url();
    let origin = sim.authority();
    let job = format!("/print/printers/{PRINTER}/jobs/5182");
    let cases = [
        (
            "another-host",
            format!("https://graph.example.com/v1.0{job}"),
        ),
        (
            "another-cloud",
            format!("https://graph.microsoft.us/v1.0{job}"),
        ),
        (
            "plain-http",
            format!("http://graph.microsoft.com/v1.0{job}"),
        ),
        ("extra-segment", format!("{api}{job}/tasks")),
        (
            "dot-dot",
            format!("{api}/print/printers/{PRINTER}/jobs/../jobs/5182"),
        ),
        (
            "encoded-slash",
            format!("{api}/print/printers/{PRINTER}%2Fjobs%2F5182/jobs/1"),
        ),
        ("query", format!("{api}{job}?$select=id")),
        ("beta", format!("{origin}/beta{job}")),
    ];
    let ids: Vec<String> = cases.iter().map(|(id, _)| id.to_string()).collect();
    for (id, url) in &cases {
        app.send(&json!({"jobUrl": url, "commandId": id}).to_string())
            .await;
    }

    let outcomes = app
        .collect_outcomes_then_quiet(&ids, Duration::from_secs(20), QUIET)
        .await;

    for (id, url) in &cases {
        let events = &outcomes[*id];
        assert_eq!(events.len(), 1, "{id}: {events:?}");
        let data = &events[0]["data"];
        assert_eq!(data["outcome"], "rejected", "{id} ({url}): {data}");
        assert_eq!(data["error"]["kind"], "invalid", "{id}");
        let message = data["error"]["message"].as_str().expect("a message");
        assert!(message.contains("jobUrl"), "{id}: {message}");
    }
    let stats = sim.stats();
    assert_eq!(
        (
            stats.abort.requests,
            stats.get_job.requests,
            stats.token.requests
        ),
        (0, 0, 0),
        "no request reached Graph or the token endpoint"
    );
    assert_eq!(sim.job_state(PRINTER, "5182"), Some(JobState::Processing));
    app.finish().await;
}
