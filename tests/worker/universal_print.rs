//! The Universal Print task model against the real broker and graph-sim: jobs named by their
//! Graph URL, as a pull-printing app gets it from a print task's `parentUrl`.

use std::time::Duration;

use graph_sim::{GraphSim, JobState, PULL_PRINTING_ROLES, SimConfig, TaskState};
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
    let url = sim.job_url(PRINTER, "5182");

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

/// graph-sim as Graph treats a pull-printing app: abort only under a processing task of
/// the app's trigger, and the app may manage its task definitions.
async fn pull_printing_sim(roles: &[&str]) -> GraphSim {
    GraphSim::start(SimConfig {
        pull_printing: true,
        roles: roles.iter().map(|role| role.to_string()).collect(),
        ..SimConfig::default()
    })
    .await
    .expect("graph-sim starts")
}

/// A task definition with a trigger on [`PRINTER`], and a job started under it; returns the
/// job's URL and its task's URL.
fn held_job(sim: &GraphSim, job: &str) -> (String, String, (String, String)) {
    let definition = sim.create_task_definition("Print policy");
    assert!(sim.set_task_trigger(PRINTER, &definition));
    let (definition, task) = sim.start_job(PRINTER, job).expect("a task holds the job");
    (
        sim.job_url(PRINTER, job),
        sim.task_url(&definition, &task),
        (definition, task),
    )
}

#[tokio::test]
async fn the_print_task_is_completed_after_the_abort_and_the_event_says_so() {
    let sim = pull_printing_sim(PULL_PRINTING_ROLES).await;
    let (job_url, task_url, (definition, task)) = held_job(&sim, "7001");
    let mut app = TestApp::spawn(wiremock::MockServer::start().await, sim_settings(&sim)).await;

    let event = app
        .outcome_of(
            &json!({"jobUrl": job_url, "taskUrl": task_url, "reason": "over quota"}).to_string(),
        )
        .await;

    let data = &event["data"];
    assert_eq!(data["outcome"], "succeeded", "{data}");
    assert_eq!(
        data["task"],
        json!({"taskDefinitionId": definition, "taskId": task, "updated": true, "state": "completed"})
    );
    let task = sim.task(&definition, &task).expect("the task");
    assert_eq!(task.status.state, TaskState::Completed);
    let description = task.status.description.expect("a description");
    assert!(
        description.contains("aborted") && description.contains("over quota"),
        "{description}"
    );
    assert_eq!(sim.job_state(PRINTER, "7001"), Some(JobState::Aborted));
    app.finish().await;
}

#[tokio::test]
async fn the_print_task_of_a_job_aborted_already_is_completed_too() {
    let sim = pull_printing_sim(PULL_PRINTING_ROLES).await;
    let (job_url, _, (definition, task)) = held_job(&sim, "7002");
    // A lost reply, say: the job is aborted, and its task is still processing.
    sim.set_job(PRINTER, "7002", JobState::Aborted);
    let mut app = TestApp::spawn(wiremock::MockServer::start().await, sim_settings(&sim)).await;

    let event = app
        .outcome_of(
            &json!({"jobUrl": job_url, "taskDefinitionId": definition, "taskId": task}).to_string(),
        )
        .await;

    let data = &event["data"];
    assert_eq!(data["outcome"], "succeeded", "{data}");
    assert_eq!(data["alreadyAborted"], true, "{data}");
    assert_eq!(data["task"]["state"], "completed", "{data}");
    assert_eq!(
        sim.task(&definition, &task).expect("the task").status.state,
        TaskState::Completed
    );
    app.finish().await;
}

#[tokio::test]
async fn a_failed_task_update_shows_in_the_event_while_the_abort_stays_succeeded() {
    // Without PrintTaskDefinition.ReadWrite.All the task update is refused.
    let sim = GraphSim::start(SimConfig::default())
        .await
        .expect("graph-sim starts");
    let definition = sim.create_task_definition("Print policy");
    assert!(sim.set_task_trigger(PRINTER, &definition));
    let (_, task) = sim.start_job(PRINTER, "7003").expect("a task");
    let mut app = TestApp::spawn(wiremock::MockServer::start().await, sim_settings(&sim)).await;

    let event = app
        .outcome_of(
            &json!({
                "printerId": PRINTER, "printJobId": "7003",
                "taskDefinitionId": definition, "taskId": task
            })
            .to_string(),
        )
        .await;

    let data = &event["data"];
    assert_eq!(data["outcome"], "succeeded", "{data}");
    assert_eq!(data["task"]["updated"], false, "{data}");
    assert_eq!(data["task"]["error"]["httpStatus"], 403, "{data}");
    assert!(data["task"].get("state").is_none(), "{data}");
    assert_eq!(
        sim.task(&definition, &task).expect("the task").status.state,
        TaskState::Processing
    );
    assert_eq!(sim.job_state(PRINTER, "7003"), Some(JobState::Aborted));
    app.finish().await;
}

#[tokio::test]
async fn a_refusal_for_want_of_a_processing_task_is_explained_in_the_event() {
    let sim = pull_printing_sim(PULL_PRINTING_ROLES).await;
    // The printer has no trigger, so no task holds the job, and Graph refuses the abort.
    sim.set_job(PRINTER, "7004", JobState::Processing);
    let mut app = TestApp::spawn(wiremock::MockServer::start().await, sim_settings(&sim)).await;

    let event = app
        .outcome_of(&json!({"printerId": PRINTER, "printJobId": "7004"}).to_string())
        .await;

    let data = &event["data"];
    assert_eq!(data["outcome"], "failed", "{data}");
    assert_eq!(data["error"]["kind"], "permanent", "{data}");
    let message = data["error"]["message"].as_str().expect("a message");
    assert!(
        message.starts_with(
            "abort needs a processing print task from this app's trigger (pull printing); \
             this job has none"
        ),
        "{message}"
    );
    assert!(message.contains("job state: processing"), "{message}");
    assert_eq!(sim.stats().tasks.count(200), 1, "the job's tasks were read");
    app.finish().await;
}
