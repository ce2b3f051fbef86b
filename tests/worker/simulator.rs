//! The worker's own token provider and Graph client against graph-sim: the contract both
//! sides are written against, without a broker.

use std::time::Duration;

use graph_sim::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, GraphSim, JobState, SimConfig};
use print_abort_worker::Settings;
use print_abort_worker::auth::{ClientCredential, TokenProvider};
use print_abort_worker::command::ResourceId;
use print_abort_worker::graph::{GraphClient, Transport};
use print_abort_worker::telemetry::trace::TraceContext;

const PRINTER: &str = "016b5565-3bbf-4067-b9ff-4d68167eb1a6";

/// The worker's own token provider and Graph client understand the simulator: the
/// contract both sides are written against.
#[tokio::test]
async fn the_workers_clients_talk_to_the_simulator() {
    let sim = GraphSim::start(SimConfig::default())
        .await
        .expect("the simulator starts");
    sim.set_job(PRINTER, "5182", JobState::Processing);
    let mut settings = Settings::default();
    settings.graph.base_url = Some(sim.base_url().parse().expect("a URL"));
    settings.auth.authority = Some(sim.authority().parse().expect("a URL"));
    settings.auth.tenant_id = "contoso.onmicrosoft.com".into();
    settings.auth.client_id = DEFAULT_CLIENT_ID.into();
    let credential = ClientCredential::Secret(DEFAULT_CLIENT_SECRET.into());
    let http = reqwest::Client::new();
    let tokens = TokenProvider::new(http.clone(), &settings, credential);
    let graph = GraphClient::new(
        Transport::new(&settings.graph).expect("the Graph transport"),
        &settings.graph,
    );
    let trace = TraceContext::new_root();

    let token = tokens
        .token(None)
        .await
        .expect("a token from the simulator");
    let printer = ResourceId::parse(PRINTER).expect("a valid id");
    let job = ResourceId::parse("5182").expect("a valid id");
    let reply = graph
        .abort(
            &token,
            &printer,
            &job,
            Some("Blocked by print policy"),
            &trace,
        )
        .await
        .expect("a reply");
    assert_eq!(reply.status, 204);
    assert!(reply.request_id.is_some());

    let again = graph
        .abort(&token, &printer, &job, None, &trace)
        .await
        .expect("a reply");
    assert_eq!(again.status, 400);
    assert_eq!(again.error_code().as_deref(), Some("BadRequest"));
    let looked_up = graph
        .get_job(&token, &printer, &job, &trace)
        .await
        .expect("a reply");
    assert_eq!(looked_up.job_state().as_deref(), Some("aborted"));

    sim.set_faults(Faults {
        error_429_rate: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    })
    .expect("valid faults");
    let throttled = graph
        .abort(&token, &printer, &job, None, &trace)
        .await
        .expect("a reply");
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.retry_after, Some(Duration::from_secs(7)));
}
