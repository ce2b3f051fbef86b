//! The Graph simulator over real HTTP: tokens, abort, look-up and the printers list,
//! Graph's error format, injected faults, outages, denials, the tenant throttle, standing
//! job faults and the `/_sim` control API.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use graph_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_ROLES, Faults, GraphSim, JobFault, JobState,
    PULL_PRINTING_ROLES, SimConfig, SimStats, TaskState, Throttle,
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

const PRINTER: &str = "016b5565-3bbf-4067-b9ff-4d68167eb1a6";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

async fn start(config: SimConfig) -> GraphSim {
    GraphSim::start(config)
        .await
        .expect("the simulator starts on a free port")
}

async fn start_default() -> GraphSim {
    start(SimConfig::default()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

const TENANT: &str = "contoso.onmicrosoft.com";

async fn request_token(sim: &GraphSim, form: &[(&str, &str)]) -> Response {
    request_token_in(sim, TENANT, form).await
}

async fn request_token_in(sim: &GraphSim, tenant: &str, form: &[(&str, &str)]) -> Response {
    client()
        .post(sim.token_url(tenant))
        .form(form)
        .send()
        .await
        .expect("the token endpoint answers")
}

fn good_form() -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", DEFAULT_CLIENT_ID),
        ("client_secret", DEFAULT_CLIENT_SECRET),
        ("scope", GRAPH_SCOPE),
    ]
}

async fn token(sim: &GraphSim) -> String {
    token_in(sim, TENANT).await
}

async fn token_in(sim: &GraphSim, tenant: &str) -> String {
    let reply = request_token_in(sim, tenant, &good_form()).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let body: Value = reply.json().await.expect("a JSON token reply");
    body["access_token"]
        .as_str()
        .expect("an access_token")
        .to_owned()
}

fn job_url(sim: &GraphSim, job: &str) -> String {
    sim.job_url(PRINTER, job)
}

async fn abort(sim: &GraphSim, token: &str, job: &str, body: Option<Value>) -> Response {
    let mut request = client()
        .post(format!("{}/abort", job_url(sim, job)))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("Graph answers")
}

async fn get_job(sim: &GraphSim, token: &str, job: &str) -> Response {
    client()
        .get(job_url(sim, job))
        .bearer_auth(token)
        .send()
        .await
        .expect("Graph answers")
}

async fn list_printers(sim: &GraphSim, token: &str, query: &str) -> Response {
    client()
        .get(format!("{}/print/printers{query}", sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("Graph answers")
}

/// The `id`s of a printers list.
async fn printer_ids(reply: Response) -> Vec<String> {
    assert_eq!(reply.status(), StatusCode::OK);
    let body: Value = reply.json().await.expect("a printer collection");
    body["value"]
        .as_array()
        .expect("a value array")
        .iter()
        .map(|printer| {
            assert!(printer["displayName"].is_string(), "{printer}");
            printer["id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

/// Polls `condition` every few milliseconds until it holds, failing after `limit`, so a
/// test waits only as long as it must.
async fn eventually<F, Fut>(limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "the condition did not hold within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(reply: &'a Response, name: &str) -> Option<&'a str> {
    reply
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// Checks Graph's error format and returns the error code.
async fn graph_error(reply: Response) -> String {
    let request_id = header(&reply, "request-id")
        .expect("a request-id header")
        .to_owned();
    let body: Value = reply.json().await.expect("a JSON error body");
    let error = &body["error"];
    assert!(error["message"].is_string(), "a message in {body}");
    let inner = &error["innerError"];
    assert_eq!(inner["request-id"], request_id.as_str(), "{body}");
    assert!(inner["client-request-id"].is_string(), "{body}");
    assert!(inner["date"].is_string(), "{body}");
    error["code"].as_str().expect("a code").to_owned()
}

async fn stats(sim: &GraphSim) -> SimStats {
    client()
        .get(format!("{}/_sim/stats", sim.authority()))
        .send()
        .await
        .expect("the control API answers")
        .json()
        .await
        .expect("stats as JSON")
}

#[tokio::test]
async fn a_token_is_issued_to_the_configured_app() {
    let sim = start_default().await;
    let reply = request_token(&sim, &good_form()).await;
    assert_eq!(reply.status(), StatusCode::OK);
    assert!(header(&reply, "request-id").is_some());
    let body: Value = reply.json().await.expect("JSON");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);

    let token = body["access_token"].as_str().expect("a token");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "header.payload.signature");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url"))
            .expect("a JSON payload");
    assert_eq!(payload["roles"], json!(DEFAULT_ROLES));
    assert_eq!(
        payload["roles"],
        json!(["PrintJob.ReadWriteBasic.All", "Printer.Read.All"])
    );
    assert_eq!(payload["tid"], "contoso.onmicrosoft.com");
    assert_eq!(payload["appid"], DEFAULT_CLIENT_ID);
    assert_eq!(payload["aud"], "https://graph.microsoft.com");
    assert!(payload["exp"].as_u64().is_some());
    assert_eq!(sim.stats().tokens_issued(), 1);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_as_invalid_client() {
    let sim = start_default().await;
    let mut form = good_form();
    form[2] = ("client_secret", "wrong");
    let reply = request_token(&sim, &form).await;
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&reply, "request-id").is_some());
    let body: Value = reply.json().await.expect("JSON");
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(
        body["error_description"],
        "AADSTS7000215: Invalid client secret provided."
    );
    assert_eq!(body["error_codes"], json!([7000215]));
    assert_eq!(sim.stats().token.count(401), 1);
}

#[tokio::test]
async fn malformed_token_requests_get_the_identity_platforms_errors() {
    let sim = start(SimConfig {
        tenants: vec!["contoso.onmicrosoft.com".into()],
        ..SimConfig::default()
    })
    .await;
    let cases: [(&str, &str, StatusCode, &str); 4] = [
        (
            "grant_type",
            "password",
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "scope",
            "PrintJob.ReadWriteBasic.All",
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "client_id",
            "someone-else",
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
        ),
        (
            "grant_type",
            "",
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
    ];
    for (field, value, status, error) in cases {
        let form: Vec<(&str, &str)> = good_form()
            .into_iter()
            .map(|(name, old)| (name, if name == field { value } else { old }))
            .collect();
        let reply = request_token(&sim, &form).await;
        assert_eq!(reply.status(), status, "{field}={value}");
        let body: Value = reply.json().await.expect("JSON");
        assert_eq!(body["error"], error, "{field}={value}: {body}");
    }

    let missing: Vec<(&str, &str)> = good_form()
        .into_iter()
        .filter(|(name, _)| *name != "grant_type")
        .collect();
    let reply = request_token(&sim, &missing).await;
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let body: Value = reply.json().await.expect("JSON");
    assert_eq!(body["error"], "invalid_request");

    let other_tenant = client()
        .post(sim.token_url("fabrikam.onmicrosoft.com"))
        .form(&good_form())
        .send()
        .await
        .expect("an answer");
    assert_eq!(other_tenant.status(), StatusCode::BAD_REQUEST);
    let body: Value = other_tenant.json().await.expect("JSON");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|text| text.starts_with("AADSTS90002:")),
        "{body}"
    );
}

#[tokio::test]
async fn aborting_a_processing_job_answers_204_and_aborts_it() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "5182", JobState::Processing);
    let token = token(&sim).await;

    let reply = abort(
        &sim,
        &token,
        "5182",
        Some(json!({"reason": "Blocked by print policy"})),
    )
    .await;
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    let job = sim.job(PRINTER, "5182").expect("the job is held");
    assert_eq!(job.state, JobState::Aborted);
    assert_eq!(job.abort_reason.as_deref(), Some("Blocked by print policy"));
    assert_eq!(job.abort_requests, 1);

    let looked_up = get_job(&sim, &token, "5182").await;
    assert_eq!(looked_up.status(), StatusCode::OK);
    let body: Value = looked_up.json().await.expect("a printJob");
    assert_eq!(body["id"], "5182");
    assert_eq!(body["status"]["state"], "aborted");
    assert!(body["status"]["description"].is_string());
}

#[tokio::test]
async fn an_abort_without_a_body_is_accepted() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let token = token(&sim).await;
    let reply = abort(&sim, &token, "1", None).await;
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.job(PRINTER, "1").and_then(|job| job.abort_reason), None);
}

#[tokio::test]
async fn aborting_twice_is_a_400_in_graphs_error_format() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "7", JobState::Processing);
    let token = token(&sim).await;
    assert_eq!(
        abort(&sim, &token, "7", None).await.status(),
        StatusCode::NO_CONTENT
    );

    let again = abort(&sim, &token, "7", None).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(graph_error(again).await, "BadRequest");
    assert_eq!(sim.job_state(PRINTER, "7"), Some(JobState::Aborted));
    assert_eq!(sim.job(PRINTER, "7").map(|job| job.abort_requests), Some(2));
}

#[tokio::test]
async fn finished_jobs_cannot_be_aborted() {
    let sim = start_default().await;
    let token = token(&sim).await;
    for state in [JobState::Completed, JobState::Canceled, JobState::Aborted] {
        sim.set_job(PRINTER, "9", state);
        let reply = abort(&sim, &token, "9", None).await;
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{state}");
        assert_eq!(sim.job_state(PRINTER, "9"), Some(state));
    }
}

#[tokio::test]
async fn an_unknown_job_is_404_item_not_found() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let reply = abort(&sim, &token, "404", None).await;
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    assert_eq!(graph_error(reply).await, "itemNotFound");
    let reply = get_job(&sim, &token, "404").await;
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    assert_eq!(graph_error(reply).await, "itemNotFound");
    assert_eq!(sim.job(PRINTER, "404"), None);
}

#[tokio::test]
async fn auto_create_makes_unknown_jobs_abortable_but_not_visible_to_get() {
    let sim = start(SimConfig {
        auto_create_jobs: true,
        ..SimConfig::default()
    })
    .await;
    let token = token(&sim).await;
    let reply = abort(&sim, &token, "new-1", None).await;
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.job_state(PRINTER, "new-1"), Some(JobState::Aborted));

    let reply = get_job(&sim, &token, "new-2").await;
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.job(PRINTER, "new-2"), None);
}

#[tokio::test]
async fn missing_bad_expired_and_revoked_tokens_get_401() {
    let sim = start(SimConfig {
        token_lifetime: Duration::from_millis(150),
        ..SimConfig::default()
    })
    .await;
    sim.set_job(PRINTER, "1", JobState::Processing);

    let no_token = client()
        .post(format!("{}/abort", job_url(&sim, "1")))
        .send()
        .await
        .expect("an answer");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&no_token, "www-authenticate"), Some("Bearer"));
    assert_eq!(graph_error(no_token).await, "InvalidAuthenticationToken");

    let forged = abort(&sim, "eyJhbGciOiJub25lIn0.e30.", "1", None).await;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        get_job(&sim, "nope", "1").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let short_lived = token(&sim).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expired = abort(&sim, &short_lived, "1", None).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(graph_error(expired).await, "InvalidAuthenticationToken");

    let revoked = token(&sim).await;
    sim.revoke_tokens();
    assert_eq!(
        abort(&sim, &revoked, "1", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(sim.job_state(PRINTER, "1"), Some(JobState::Processing));
    assert_eq!(sim.stats().abort.count(401), 4);
}

#[tokio::test]
async fn a_token_without_an_abort_role_gets_403() {
    let sim = start(SimConfig {
        roles: vec!["PrintJob.Read.All".into()],
        ..SimConfig::default()
    })
    .await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let token = token(&sim).await;
    let reply = abort(&sim, &token, "1", None).await;
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
    assert_eq!(graph_error(reply).await, "accessDenied");
    // Reading is allowed with a read permission.
    assert_eq!(get_job(&sim, &token, "1").await.status(), StatusCode::OK);
    assert_eq!(sim.job_state(PRINTER, "1"), Some(JobState::Processing));
}

#[tokio::test]
async fn bad_abort_bodies_are_400() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let token = token(&sim).await;
    let misspelt = abort(&sim, &token, "1", Some(json!({"Reason": "x"}))).await;
    assert_eq!(misspelt.status(), StatusCode::BAD_REQUEST);
    assert_eq!(graph_error(misspelt).await, "BadRequest");
    let not_json = client()
        .post(format!("{}/abort", job_url(&sim, "1")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("an answer");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sim.job_state(PRINTER, "1"), Some(JobState::Processing));
}

#[tokio::test]
async fn injected_429_and_503_carry_retry_after() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let token = token(&sim).await;

    sim.set_faults(Faults {
        error_429_rate: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    })
    .expect("valid faults");
    let throttled = abort(&sim, &token, "1", None).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&throttled, "retry-after"), Some("7"));
    assert_eq!(graph_error(throttled).await, "TooManyRequests");

    sim.set_faults(Faults {
        error_503_rate: 1.0,
        retry_after_secs: 3,
        ..Faults::default()
    })
    .expect("valid faults");
    let unavailable = get_job(&sim, &token, "1").await;
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&unavailable, "retry-after"), Some("3"));

    // The token endpoint is not Graph: its faults are not injected.
    assert_eq!(
        request_token(&sim, &good_form()).await.status(),
        StatusCode::OK
    );
    // The job was never reached.
    assert_eq!(sim.job_state(PRINTER, "1"), Some(JobState::Processing));
    let stats = sim.stats();
    assert_eq!(stats.abort.count(429), 1);
    assert_eq!(stats.get_job.count(503), 1);
}

#[tokio::test]
async fn latency_delays_graph_replies() {
    let sim = start(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(120),
            latency_jitter: Duration::from_millis(30),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let token = token(&sim).await;
    let started = Instant::now();
    get_job(&sim, &token, "1").await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(120), "{elapsed:?}");
}

#[tokio::test]
async fn an_outage_answers_503_until_it_ends() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let token = token(&sim).await;

    // Long enough for three requests on a loaded machine; the wait after them is on the
    // condition.
    sim.start_outage(Duration::from_millis(1500));
    assert!(sim.outage_remaining().is_some());
    for _ in 0..3 {
        let reply = abort(&sim, &token, "1", None).await;
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&reply, "retry-after"), Some("1"));
        assert_eq!(graph_error(reply).await, "serviceNotAvailable");
    }
    let sim_ref = &sim;
    eventually(Duration::from_secs(5), move || async move {
        sim_ref.outage_remaining().is_none()
    })
    .await;
    assert_eq!(
        abort(&sim, &token, "1", None).await.status(),
        StatusCode::NO_CONTENT
    );

    sim.start_outage(Duration::from_secs(60));
    sim.end_outage();
    assert_eq!(get_job(&sim, &token, "1").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_outage_can_be_in_force_from_the_start() {
    let sim = start(SimConfig {
        initial_outage: Some(Duration::from_secs(60)),
        ..SimConfig::default()
    })
    .await;
    let token = token(&sim).await;
    assert_eq!(
        get_job(&sim, &token, "1").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn every_reply_carries_a_request_id_and_echoes_the_client_request_id() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let token = token(&sim).await;
    let http = client();
    let control = sim.authority();
    let requests = [
        http.post(sim.token_url("t")).form(&good_form()),
        http.post(sim.token_url("t")).form(&[("grant_type", "x")]),
        http.post(format!("{}/abort", job_url(&sim, "1")))
            .bearer_auth(&token),
        http.post(format!("{}/abort", job_url(&sim, "1")))
            .bearer_auth(&token),
        http.get(job_url(&sim, "1")).bearer_auth(&token),
        http.get(job_url(&sim, "1")),
        http.get(format!("{}/no/such/path", sim.base_url())),
        http.delete(job_url(&sim, "1")),
        http.get(format!("{control}/_sim/stats")),
        http.get(format!("{control}/_sim/faults")),
    ];
    let mut seen = std::collections::HashSet::new();
    for (index, request) in requests.into_iter().enumerate() {
        let client_request_id = format!("00000000-0000-0000-0000-{index:012}");
        let reply = request
            .header("client-request-id", &client_request_id)
            .send()
            .await
            .expect("an answer");
        let request_id = header(&reply, "request-id")
            .unwrap_or_else(|| panic!("request {index} has no request-id"))
            .to_owned();
        assert!(uuid::Uuid::parse_str(&request_id).is_ok(), "{request_id}");
        assert!(seen.insert(request_id), "request ids are unique");
        assert_eq!(
            header(&reply, "client-request-id"),
            Some(client_request_id.as_str()),
            "request {index}"
        );
    }

    // Injected faults too; and without a client-request-id nothing is echoed.
    sim.set_faults(Faults {
        error_503_rate: 1.0,
        ..Faults::default()
    })
    .expect("valid faults");
    let reply = get_job(&sim, &token, "1").await;
    assert!(header(&reply, "request-id").is_some());
    assert_eq!(header(&reply, "client-request-id"), None);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_graph_errors() {
    let sim = start_default().await;
    let reply = client()
        .get(format!("{}/me", sim.base_url()))
        .send()
        .await
        .expect("an answer");
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    graph_error(reply).await;
    let reply = client()
        .delete(job_url(&sim, "1"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(graph_error(reply).await, "MethodNotAllowed");
}

#[tokio::test]
async fn the_control_api_seeds_jobs_sets_faults_and_counts() {
    let sim = start_default().await;
    let http = client();
    let control = sim.authority();
    let token = token(&sim).await;

    let seeded = http
        .put(format!("{control}/_sim/jobs/{PRINTER}/42"))
        .json(&json!({"state": "processing"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(seeded.status(), StatusCode::OK);
    let body: Value = seeded.json().await.expect("a job");
    assert_eq!(body["state"], "processing");
    assert_eq!(body["printer_id"], PRINTER);
    assert_eq!(sim.job_state(PRINTER, "42"), Some(JobState::Processing));

    let bad_state = http
        .put(format!("{control}/_sim/jobs/{PRINTER}/42"))
        .json(&json!({"state": "exploded"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(bad_state.status(), StatusCode::BAD_REQUEST);
    graph_error(bad_state).await;

    let read = http
        .get(format!("{control}/_sim/jobs/{PRINTER}/42"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(read.status(), StatusCode::OK);
    let missing = http
        .get(format!("{control}/_sim/jobs/{PRINTER}/43"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let faults = http
        .put(format!("{control}/_sim/faults"))
        .json(&json!({"latency": "5ms", "error_429_rate": 0.25, "retry_after_secs": 2}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(faults.status(), StatusCode::OK);
    assert_eq!(
        sim.faults(),
        Faults {
            latency: Duration::from_millis(5),
            error_429_rate: 0.25,
            retry_after_secs: 2,
            ..Faults::default()
        }
    );
    let shown: Value = http
        .get(format!("{control}/_sim/faults"))
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(shown["latency"], "5ms");
    assert_eq!(shown["outage_remaining"], Value::Null);
    for bad in [json!({"error_503_rate": 2.0}), json!({"latncy": "5ms"})] {
        let reply = http
            .put(format!("{control}/_sim/faults"))
            .json(&bad)
            .send()
            .await
            .expect("an answer");
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    sim.set_faults(Faults::default()).expect("valid faults");

    let outage = http
        .post(format!("{control}/_sim/outage"))
        .json(&json!({"seconds": 30}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(outage.status(), StatusCode::OK);
    let shown: Value = outage.json().await.expect("JSON");
    assert!(shown["outage_remaining"].is_string(), "{shown}");
    assert_eq!(
        abort(&sim, &token, "42", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let ended = http
        .post(format!("{control}/_sim/outage"))
        .json(&json!({"seconds": 0}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(ended.status(), StatusCode::OK);
    let negative = http
        .post(format!("{control}/_sim/outage"))
        .json(&json!({"seconds": -1}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(negative.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        abort(&sim, &token, "42", None).await.status(),
        StatusCode::NO_CONTENT
    );

    let revoked = http
        .post(format!("{control}/_sim/tokens/revoke"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get_job(&sim, &token, "42").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let fresh = self::token(&sim).await;
    assert_eq!(get_job(&sim, &fresh, "42").await.status(), StatusCode::OK);

    let counted = stats(&sim).await;
    assert_eq!(counted.tokens_issued(), 2);
    assert_eq!(counted.abort.count(503), 1);
    assert_eq!(counted.abort.count(204), 1);
    assert_eq!(counted.abort.requests, 2);
    assert_eq!(counted.get_job.count(401), 1);
    assert_eq!(counted.get_job.count(200), 1);
    assert_eq!(counted.jobs_held, 1);
    assert_eq!(counted, sim.stats());
}

#[tokio::test]
async fn the_job_table_forgets_the_oldest_jobs_past_its_cap() {
    let sim = start(SimConfig {
        max_jobs: 1,
        auto_create_jobs: true,
        ..SimConfig::default()
    })
    .await;
    let token = token(&sim).await;
    for job in ["a", "b", "c"] {
        assert_eq!(
            abort(&sim, &token, job, None).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.jobs_held, 1);
    assert_eq!(stats.jobs_evicted, 2);
    assert_eq!(sim.job_state(PRINTER, "c"), Some(JobState::Aborted));
}

#[tokio::test]
async fn invalid_faults_stop_the_start() {
    let result = GraphSim::start(SimConfig {
        faults: Faults {
            error_503_rate: 0.7,
            error_429_rate: 0.7,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sim = start_default().await;
    let stats_url = format!("{}/_sim/stats", sim.authority());
    assert!(client().get(&stats_url).send().await.is_ok());
    sim.shutdown().await.expect("a clean stop");
    // A fresh client, so no pooled connection hides the closed listener.
    assert!(client().get(&stats_url).send().await.is_err());
}

#[tokio::test]
async fn listing_printers_needs_a_printer_read_permission() {
    let sim = start_default().await;
    let token = token(&sim).await;
    assert!(
        printer_ids(list_printers(&sim, &token, "").await)
            .await
            .is_empty()
    );

    sim.set_job("printer-b", "1", JobState::Processing);
    sim.set_job("printer-a", "1", JobState::Completed);
    sim.set_job("printer-b", "2", JobState::Pending);
    assert_eq!(
        printer_ids(list_printers(&sim, &token, "").await).await,
        ["printer-a", "printer-b"]
    );
    // `$top` caps the page; `$select` and other options are accepted and ignored.
    assert_eq!(
        printer_ids(list_printers(&sim, &token, "?$top=1&$select=id").await).await,
        ["printer-a"]
    );
    let bad_top = list_printers(&sim, &token, "?$top=many").await;
    assert_eq!(bad_top.status(), StatusCode::BAD_REQUEST);
    graph_error(bad_top).await;
    let unauthenticated = list_printers(&sim, "not-a-token", "").await;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let counted = sim.stats().list_printers;
    assert_eq!((counted.count(200), counted.count(400)), (3, 1));
    assert_eq!(counted.count(401), 1);

    // An abort permission alone does not read printers, as with Graph.
    let abort_only = start(SimConfig {
        roles: vec!["PrintJob.ReadWriteBasic.All".into()],
        ..SimConfig::default()
    })
    .await;
    let token = self::token(&abort_only).await;
    let refused = list_printers(&abort_only, &token, "?$top=1").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(graph_error(refused).await, "accessDenied");

    let read_write = start(SimConfig {
        roles: vec!["Printer.ReadWrite.All".into()],
        ..SimConfig::default()
    })
    .await;
    let token = self::token(&read_write).await;
    assert!(
        printer_ids(list_printers(&read_write, &token, "").await)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_tenant_throttle_refuses_a_burst_past_its_bucket_and_spares_other_tenants() {
    // Slow enough that no token comes back while the test runs.
    let sim = start(SimConfig {
        throttle: Some(Throttle {
            burst: 3,
            ..Throttle::new(0.2)
        }),
        ..SimConfig::default()
    })
    .await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let contoso = token(&sim).await;
    let fabrikam = token_in(&sim, "fabrikam.onmicrosoft.com").await;

    // Every Graph route takes from the same bucket.
    assert_eq!(get_job(&sim, &contoso, "1").await.status(), StatusCode::OK);
    assert_eq!(
        list_printers(&sim, &contoso, "").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        abort(&sim, &contoso, "1", None).await.status(),
        StatusCode::NO_CONTENT
    );
    for _ in 0..3 {
        let throttled = get_job(&sim, &contoso, "1").await;
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = header(&throttled, "retry-after")
            .and_then(|value| value.parse().ok())
            .expect("a Retry-After in seconds");
        assert!((1..=5).contains(&retry_after), "{retry_after}");
        assert_eq!(graph_error(throttled).await, "TooManyRequests");
    }
    let throttled_abort = abort(&sim, &contoso, "1", None).await;
    assert_eq!(throttled_abort.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sim.job(PRINTER, "1").map(|job| job.abort_requests), Some(1));
    // A bad token is still a 401: the throttle comes after the bearer check.
    assert_eq!(
        get_job(&sim, "not-a-token", "1").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Another tenant has its own bucket.
    for _ in 0..3 {
        assert_eq!(get_job(&sim, &fabrikam, "1").await.status(), StatusCode::OK);
    }
    let counted = sim.stats();
    assert_eq!(counted.get_job.count(429), 3);
    assert_eq!(counted.abort.count(429), 1);

    // Through the control API: only the listed tenant is throttled, and `null` turns it off.
    let http = client();
    let url = format!("{}/_sim/throttle", sim.authority());
    let set = http
        .put(&url)
        .json(&json!({"requests_per_second": 0.2, "tenants": ["FABRIKAM.onmicrosoft.com"]}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(set.status(), StatusCode::OK);
    let shown: Value = set.json().await.expect("JSON");
    assert_eq!(shown["burst"], 1, "{shown}");
    assert_eq!(
        sim.throttle().map(|throttle| throttle.tenants),
        Some(vec!["FABRIKAM.onmicrosoft.com".to_owned()])
    );
    assert_eq!(get_job(&sim, &fabrikam, "1").await.status(), StatusCode::OK);
    assert_eq!(
        get_job(&sim, &fabrikam, "1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..5 {
        assert_eq!(get_job(&sim, &contoso, "1").await.status(), StatusCode::OK);
    }
    for bad in [
        json!({"requests_per_second": 0}),
        json!({"requests_per_second": 1, "burst": 0}),
        json!({"rps": 1}),
    ] {
        let reply = http.put(&url).json(&bad).send().await.expect("an answer");
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let off = http
        .put(&url)
        .json(&Value::Null)
        .send()
        .await
        .expect("an answer");
    assert_eq!(off.status(), StatusCode::OK);
    assert_eq!(off.json::<Value>().await.expect("JSON"), Value::Null);
    let shown: Value = http
        .get(&url)
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(shown, Value::Null);
    assert_eq!(get_job(&sim, &fabrikam, "1").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_job_fault_answers_every_abort_and_look_up_of_that_job() {
    let sim = start(SimConfig {
        auto_create_jobs: true,
        ..SimConfig::default()
    })
    .await;
    sim.set_job(PRINTER, "denied", JobState::Processing);
    sim.set_job(PRINTER, "fine", JobState::Processing);
    let token = token(&sim).await;

    sim.set_job_fault(PRINTER, "denied", JobFault::new(403))
        .expect("a valid fault");
    for _ in 0..3 {
        let reply = abort(&sim, &token, "denied", None).await;
        assert_eq!(reply.status(), StatusCode::FORBIDDEN);
        assert_eq!(header(&reply, "retry-after"), None);
        assert_eq!(graph_error(reply).await, "accessDenied");
    }
    let looked_up = get_job(&sim, &token, "denied").await;
    assert_eq!(looked_up.status(), StatusCode::FORBIDDEN);
    assert_eq!(sim.job_state(PRINTER, "denied"), Some(JobState::Processing));
    // Other jobs behave.
    assert_eq!(
        abort(&sim, &token, "fine", None).await.status(),
        StatusCode::NO_CONTENT
    );

    // A job the table never held, even with auto-creation on.
    sim.set_job_fault(
        PRINTER,
        "unavailable",
        JobFault {
            retry_after_secs: Some(4),
            ..JobFault::new(503)
        },
    )
    .expect("a valid fault");
    for reply in [
        abort(&sim, &token, "unavailable", None).await,
        get_job(&sim, &token, "unavailable").await,
        abort(&sim, &token, "unavailable", None).await,
    ] {
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&reply, "retry-after"), Some("4"));
        assert_eq!(graph_error(reply).await, "serviceNotAvailable");
    }
    assert_eq!(sim.job(PRINTER, "unavailable"), None);

    // Through the control API, and cleared again.
    let http = client();
    let url = format!("{}/_sim/jobs/{PRINTER}/refused/fault", sim.authority());
    let set = http
        .put(&url)
        .json(&json!({"status": 400}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(set.status(), StatusCode::OK);
    let shown: Value = http
        .get(&url)
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        shown,
        json!({"status": 400, "retry_after_secs": null, "body_bytes": null})
    );
    let refused = abort(&sim, &token, "refused", None).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(graph_error(refused).await, "badRequest");
    for bad in [
        json!({"status": 200}),
        json!({"status": 503, "body_bytes": 64 * 1024 * 1024 + 1}),
        json!({"status": 503, "retry_after": 1}),
    ] {
        let reply = http.put(&url).json(&bad).send().await.expect("an answer");
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let cleared = http.delete(&url).send().await.expect("an answer");
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        http.get(&url).send().await.expect("an answer").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        abort(&sim, &token, "refused", None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(sim.clear_job_fault(PRINTER, "denied"));
    assert_eq!(
        abort(&sim, &token, "denied", None).await.status(),
        StatusCode::NO_CONTENT
    );

    let counted = sim.stats();
    assert_eq!(counted.abort.count(403), 3);
    assert_eq!(counted.abort.count(503), 2);
    assert_eq!(counted.get_job.count(503), 1);
}

#[tokio::test]
async fn a_job_fault_can_pad_its_error_body_to_a_size() {
    let sim = start_default().await;
    let token = token(&sim).await;
    sim.set_job_fault(
        PRINTER,
        "1",
        JobFault {
            body_bytes: Some(1_000_000),
            ..JobFault::new(503)
        },
    )
    .expect("a valid fault");
    let reply = abort(&sim, &token, "1", None).await;
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = reply.bytes().await.expect("the whole body");
    assert!(
        (1_000_000..1_001_000).contains(&body.len()),
        "{} bytes",
        body.len()
    );
    let json: Value = serde_json::from_slice(&body).expect("a JSON error body");
    assert_eq!(json["error"]["code"], "serviceNotAvailable");
    assert!(json["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn a_denial_answers_403_on_every_graph_route_until_it_ends() {
    let sim = start_default().await;
    sim.set_job(PRINTER, "1", JobState::Processing);
    let token = token(&sim).await;

    // Long enough for the checks below on a loaded machine; the wait after them is on the
    // condition, so the test takes no longer than the denial.
    sim.start_denial(Duration::from_secs(3));
    assert!(sim.denial_remaining().is_some());
    for reply in [
        abort(&sim, &token, "1", None).await,
        get_job(&sim, &token, "1").await,
        list_printers(&sim, &token, "").await,
    ] {
        assert_eq!(reply.status(), StatusCode::FORBIDDEN);
        let body: Value = reply.json().await.expect("a JSON error body");
        assert_eq!(body["error"]["code"], "Authorization_RequestDenied");
        assert_eq!(
            body["error"]["message"],
            "Insufficient privileges to complete the operation."
        );
    }
    // Tokens are still issued, and a bad one is still a 401.
    assert_eq!(
        request_token(&sim, &good_form()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_job(&sim, "not-a-token", "1").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let shown: Value = client()
        .get(format!("{}/_sim/faults", sim.authority()))
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    assert!(shown["denial_remaining"].is_string(), "{shown}");
    assert_eq!(shown["outage_remaining"], Value::Null);

    let (sim_ref, token_ref) = (&sim, token.as_str());
    eventually(Duration::from_secs(5), move || async move {
        get_job(sim_ref, token_ref, "1").await.status() == StatusCode::OK
    })
    .await;
    assert_eq!(sim.denial_remaining(), None);
    assert_eq!(
        abort(&sim, &token, "1", None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        list_printers(&sim, &token, "").await.status(),
        StatusCode::OK
    );
    assert_eq!(sim.job(PRINTER, "1").map(|job| job.abort_requests), Some(1));

    // Through the control API; zero ends it early.
    let http = client();
    let url = format!("{}/_sim/denial", sim.authority());
    let started = http
        .post(&url)
        .json(&json!({"seconds": 30}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(started.status(), StatusCode::OK);
    let shown: Value = started.json().await.expect("JSON");
    assert!(shown["denial_remaining"].is_string(), "{shown}");
    assert_eq!(
        get_job(&sim, &token, "1").await.status(),
        StatusCode::FORBIDDEN
    );
    let ended = http
        .post(&url)
        .json(&json!({"seconds": 0}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(ended.status(), StatusCode::OK);
    assert_eq!(get_job(&sim, &token, "1").await.status(), StatusCode::OK);
    sim.start_denial(Duration::from_secs(30));
    sim.end_denial();
    assert_eq!(sim.denial_remaining(), None);
    let counted = sim.stats();
    assert_eq!(counted.abort.count(403), 1);
    assert_eq!(counted.list_printers.count(403), 1);
}

#[tokio::test]
async fn a_printer_is_read_by_its_id_with_a_printer_read_permission() {
    let sim = start_default().await;
    let reply = client()
        .get(format!(
            "{}/print/printers/{PRINTER}?$select=id",
            sim.base_url()
        ))
        .bearer_auth(token(&sim).await)
        .send()
        .await
        .expect("a reply");
    assert_eq!(reply.status(), StatusCode::OK);
    let body: Value = reply.json().await.expect("JSON");
    assert_eq!(body["id"], PRINTER);

    let abort_only = start(SimConfig {
        roles: vec!["PrintJob.ReadWriteBasic.All".into()],
        ..SimConfig::default()
    })
    .await;
    let refused = client()
        .get(format!(
            "{}/print/printers/{PRINTER}",
            abort_only.base_url()
        ))
        .bearer_auth(token(&abort_only).await)
        .send()
        .await
        .expect("a reply");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(sim.stats().get_printer.count(200), 1);
    assert_eq!(abort_only.stats().get_printer.count(403), 1);
}

/// Roles of a pull-printing app: abort, read jobs and printers, manage its task definitions.
fn pull_printing_roles() -> Vec<String> {
    PULL_PRINTING_ROLES
        .iter()
        .map(|role| role.to_string())
        .collect()
}

#[tokio::test]
async fn pull_printing_aborts_only_a_job_held_by_this_apps_task_and_tasks_can_be_completed() {
    let sim = start(SimConfig {
        pull_printing: true,
        roles: pull_printing_roles(),
        ..SimConfig::default()
    })
    .await;
    let bearer = token(&sim).await;
    let definition = sim.create_task_definition("Print policy");
    assert!(sim.set_task_trigger(PRINTER, &definition));
    let (of, task) = sim
        .start_job(PRINTER, "held")
        .expect("a task holds the job");
    assert_eq!(of, definition);
    // A job started before the trigger, or on another printer, has no task.
    sim.set_job(PRINTER, "loose", JobState::Processing);

    let definitions: Value = client()
        .get(format!("{}/print/taskDefinitions", sim.base_url()))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("a reply")
        .json()
        .await
        .expect("JSON");
    assert_eq!(definitions["value"][0]["id"], definition.as_str());
    assert_eq!(definitions["value"][0]["displayName"], "Print policy");

    let tasks: Value = client()
        .get(format!("{}/tasks", job_url(&sim, "held")))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("a reply")
        .json()
        .await
        .expect("JSON");
    assert_eq!(tasks["value"][0]["id"], task.as_str());
    assert_eq!(tasks["value"][0]["status"]["state"], "processing");
    assert_eq!(tasks["value"][0]["parentUrl"], job_url(&sim, "held"));

    let refused = abort(&sim, &bearer, "loose", None).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sim.job_state(PRINTER, "loose"), Some(JobState::Processing));
    assert_eq!(
        abort(&sim, &bearer, "held", None).await.status(),
        StatusCode::NO_CONTENT
    );

    let task_url = sim.task_url(&definition, &task);
    let updated = client()
        .patch(&task_url)
        .bearer_auth(&bearer)
        .json(&json!({"status": {"state": "completed", "description": "aborted by policy"}}))
        .send()
        .await
        .expect("a reply");
    assert_eq!(updated.status(), StatusCode::OK);
    let snapshot = sim.task(&definition, &task).expect("the task");
    assert_eq!(snapshot.status.state, TaskState::Completed);
    assert_eq!(
        snapshot.status.description.as_deref(),
        Some("aborted by policy")
    );
    let unknown = client()
        .patch(sim.task_url(&definition, "nope"))
        .bearer_auth(&bearer)
        .json(&json!({"status": {"state": "completed"}}))
        .send()
        .await
        .expect("a reply");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let without_role = start(SimConfig::default()).await;
    let refused = client()
        .get(format!("{}/print/taskDefinitions", without_role.base_url()))
        .bearer_auth(token(&without_role).await)
        .send()
        .await
        .expect("a reply");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_control_api_creates_definitions_and_triggers_and_starts_held_jobs() {
    let sim = start(SimConfig {
        pull_printing: true,
        roles: pull_printing_roles(),
        ..SimConfig::default()
    })
    .await;
    let control = format!("{}/_sim", sim.authority());
    let created: Value = client()
        .post(format!("{control}/taskDefinitions"))
        .json(&json!({"displayName": "Policy"}))
        .send()
        .await
        .expect("a reply")
        .json()
        .await
        .expect("JSON");
    let definition = created["id"].as_str().expect("an id").to_owned();
    let unknown = client()
        .put(format!("{control}/printers/{PRINTER}/trigger"))
        .json(&json!({"definitionId": "nope"}))
        .send()
        .await
        .expect("a reply");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let set = client()
        .put(format!("{control}/printers/{PRINTER}/trigger"))
        .json(&json!({"definitionId": definition}))
        .send()
        .await
        .expect("a reply");
    assert_eq!(set.status(), StatusCode::NO_CONTENT);
    let started: Value = client()
        .post(format!("{control}/jobs/{PRINTER}/9/start"))
        .send()
        .await
        .expect("a reply")
        .json()
        .await
        .expect("JSON");
    assert_eq!(started["taskDefinitionId"], definition.as_str());
    let task = started["taskId"].as_str().expect("a task id");
    assert_eq!(
        sim.task(&definition, task).expect("the task").status.state,
        TaskState::Processing
    );
    assert_eq!(sim.job_state(PRINTER, "9"), Some(JobState::Processing));
}
