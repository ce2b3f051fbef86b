use super::*;

#[test]
fn a_command_throttled_while_others_get_through_is_on_its_own_after_five_in_a_row() {
    let throttle = Throttle::new(Duration::from_secs(1));
    let gate = throttle.gate("tenant");
    let mut throttling = Throttling::new();
    // The tenant as a whole is throttled: nobody gets through, however often.
    for _ in 0..20 {
        assert!(!throttling.throttled(&gate));
    }
    // Others get through between this command's throttled replies.
    for n in 1..=THROTTLED_ALONE {
        gate.record_success();
        assert_eq!(
            throttling.throttled(&gate),
            n >= THROTTLED_ALONE,
            "reply {n}"
        );
    }
    // Nobody through since: the tenant is throttled again, and the count starts afresh.
    assert!(!throttling.throttled(&gate));
    gate.record_success();
    assert!(!throttling.throttled(&gate));
}

/// The handler against graph-sim running in this test's own runtime, with the clock paused:
/// every wait (Retry-After, backoff, the verdict wait) passes at once in virtual time, so
/// the test measures the waits exactly and takes no real time for them.
mod in_virtual_time {
    use graph_sim::{
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, GraphSim, JobFault, JobState, SimConfig,
    };
    use secrecy::SecretString;

    use super::*;
    use crate::command::CommandRules;
    use crate::outcome::OutcomeKind;

    const PRINTER: &str = "016b5565-3bbf-4067-b9ff-4d68167eb1a6";

    async fn sim(config: SimConfig) -> GraphSim {
        GraphSim::start(config).await.expect("graph-sim starts")
    }

    /// Graph down for `outage` from the start, answering 503 with `Retry-After:
    /// retry_after_secs`; job 1 is processing.
    async fn outage(outage: Duration, retry_after_secs: u64) -> GraphSim {
        let sim = sim(SimConfig {
            initial_outage: Some(outage),
            faults: Faults {
                retry_after_secs,
                ..Faults::default()
            },
            ..SimConfig::default()
        })
        .await;
        sim.set_job(PRINTER, "1", JobState::Processing);
        sim
    }

    fn settings(sim: &GraphSim) -> Settings {
        let mut settings = Settings::default();
        settings.graph.base_url = Some(sim.base_url().parse().expect("a URL"));
        settings.auth.authority = Some(sim.authority().parse().expect("a URL"));
        settings.auth.tenant_id = "contoso.onmicrosoft.com".into();
        settings.auth.client_id = DEFAULT_CLIENT_ID.into();
        settings.auth.client_secret = Some(SecretString::from(DEFAULT_CLIENT_SECRET));
        settings
    }

    fn handler(settings: &Settings) -> AbortHandler {
        let breaker = Arc::new(CircuitBreaker::new(&settings.pause));
        AbortHandler::from_settings(settings, breaker).expect("the handler builds")
    }

    fn command(job: &str) -> AbortCommand {
        let body = serde_json::json!({"printerId": PRINTER, "printJobId": job}).to_string();
        AbortCommand::parse(body.as_bytes(), Some("c-1"), &CommandRules::default())
            .expect("a valid command")
    }

    /// Runs one command to its disposition; returns it with the virtual time it took.
    async fn handle(handler: &AbortHandler, job: &str) -> (Disposition, Duration) {
        let started = Instant::now();
        let disposition = handler
            .handle(&command(job), &TraceContext::new_root())
            .await;
        (disposition, started.elapsed())
    }

    fn settled(disposition: Disposition) -> Outcome {
        match disposition {
            Disposition::Settled(outcome) => outcome,
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    fn within(waited: Duration, from_secs: f64, to_secs: f64) {
        assert!(
            (Duration::from_secs_f64(from_secs)..Duration::from_secs_f64(to_secs))
                .contains(&waited),
            "took {waited:?} of virtual time, expected {from_secs} to {to_secs} s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_out_and_the_abort_succeeds_after_the_outage() {
        let sim = outage(Duration::from_secs(20), 7).await;
        let mut settings = settings(&sim);
        settings.retry.max_interval = Duration::from_secs(10);
        let handler = handler(&settings);

        let (disposition, waited) = handle(&handler, "1").await;

        let outcome = settled(disposition);
        assert_eq!(outcome.kind(), OutcomeKind::Succeeded, "{outcome:?}");
        // Refused at 0, 7 and 14 s, each time for 7 s; through at 21 s.
        assert_eq!(outcome.attempts, 4);
        within(waited, 21.0, 21.5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_longer_than_max_interval_is_cut_to_it() {
        let sim = outage(Duration::from_secs(10), 3_600).await;
        let mut settings = settings(&sim);
        settings.retry.max_interval = Duration::from_secs(4);
        let handler = handler(&settings);

        let (disposition, waited) = handle(&handler, "1").await;

        let outcome = settled(disposition);
        assert_eq!(outcome.kind(), OutcomeKind::Succeeded, "{outcome:?}");
        // An hour asked, 4 s waited each time: refused at 0, 4 and 8 s, through at 12 s.
        assert_eq!(outcome.attempts, 4);
        within(waited, 12.0, 12.5);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_end_in_exhausted_once_the_budget_is_spent() {
        let sim = sim(SimConfig::default()).await;
        sim.set_job(PRINTER, "1", JobState::Processing);
        sim.set_job_fault(PRINTER, "1", JobFault::new(503))
            .expect("a valid fault");
        let mut settings = settings(&sim);
        settings.retry.initial_interval = Duration::from_secs(1);
        settings.retry.max_interval = Duration::from_secs(8);
        settings.retry.max_elapsed = Duration::from_secs(60);
        settings.pause.verdict_wait = Duration::from_secs(2);
        let handler = handler(&settings);

        let (disposition, waited) = handle(&handler, "1").await;

        let outcome = settled(disposition);
        assert_eq!(
            outcome.error_kind(),
            Some(ErrorKind::Exhausted),
            "{outcome:?}"
        );
        assert_eq!(outcome.http_status, Some(503));
        // No retry starts past the 60 s budget, and none is waited for that would end past
        // it; then the verdict waits 2 s for contrast, and the probe (which this fault of one
        // job does not touch) passes, so the failure is the command's own.
        within(waited, 60.0 - 8.0 + 2.0, 60.0 + 2.5);
        assert!(outcome.attempts >= 8, "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_command_with_nothing_to_compare_waits_for_the_verdict_then_the_probe() {
        let sim = sim(SimConfig::default()).await;
        sim.set_job(PRINTER, "1", JobState::Processing);
        sim.set_job_fault(PRINTER, "1", JobFault::new(403))
            .expect("a valid fault");
        let mut settings = settings(&sim);
        settings.pause.verdict_wait = Duration::from_secs(2);
        let handler = handler(&settings);

        let (disposition, waited) = handle(&handler, "1").await;

        let outcome = settled(disposition);
        assert_eq!(
            outcome.error_kind(),
            Some(ErrorKind::Unauthorized),
            "{outcome:?}"
        );
        assert_eq!(outcome.attempts, 1);
        within(waited, 2.0, 2.5);
        assert!(!handler.breaker.is_open());
        // The probe read the command's printer, the read Graph offers an app.
        let stats = sim.stats();
        assert_eq!(stats.get_printer.count(200), 1);
        assert_eq!(stats.list_printers.requests, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_refused_pauses_after_the_verdict_wait_without_an_outcome() {
        let sim = sim(SimConfig::default()).await;
        sim.set_job(PRINTER, "1", JobState::Processing);
        sim.start_denial(Duration::from_secs(600));
        let mut settings = settings(&sim);
        settings.pause.verdict_wait = Duration::from_secs(2);
        let handler = handler(&settings);

        let (disposition, waited) = handle(&handler, "1").await;

        assert!(
            matches!(disposition, Disposition::Paused),
            "{disposition:?}"
        );
        within(waited, 2.0, 2.5);
        assert!(handler.breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_command_is_blamed_at_once_when_another_succeeds_after_it() {
        let sim = sim(SimConfig::default()).await;
        sim.set_job(PRINTER, "refused", JobState::Processing);
        sim.set_job(PRINTER, "fine", JobState::Processing);
        sim.set_job_fault(PRINTER, "refused", JobFault::new(403))
            .expect("a valid fault");
        let mut settings = settings(&sim);
        settings.pause.verdict_wait = Duration::from_secs(60);
        let handler = handler(&settings);

        let refused = handle(&handler, "refused");
        let fine = async {
            // After the refusal, so its success is evidence against the service being sick.
            tokio::time::sleep(Duration::from_secs(1)).await;
            handle(&handler, "fine").await
        };
        let ((refused, refused_waited), (fine, _)) = tokio::join!(refused, fine);

        assert_eq!(settled(fine).kind(), OutcomeKind::Succeeded);
        let refused = settled(refused);
        assert_eq!(
            refused.error_kind(),
            Some(ErrorKind::Unauthorized),
            "{refused:?}"
        );
        // Judged by the other command's success at 1 s, long before the 60 s verdict wait.
        within(refused_waited, 1.0, 1.5);
        assert!(!handler.breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_throttled_past_max_hold_goes_back_to_the_queue() {
        let sim = outage(Duration::from_secs(3_600), 10).await;
        let mut settings = settings(&sim);
        settings.retry.max_interval = Duration::from_secs(10);
        settings.retry.max_elapsed = Duration::from_secs(3_600);
        settings.worker.max_hold = Duration::from_secs(25 * 60);
        let handler = handler(&settings);

        let (disposition, waited) = handle(&handler, "1").await;

        assert!(
            matches!(disposition, Disposition::HeldTooLong),
            "{disposition:?}"
        );
        // Let through every 10 s, so back to the queue at the first pass after 25 min.
        within(waited, 25.0 * 60.0, 25.0 * 60.0 + 10.5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_token_is_renewed_once_and_the_abort_goes_through() {
        let sim = sim(SimConfig::default()).await;
        sim.set_job(PRINTER, "1", JobState::Processing);
        sim.set_job(PRINTER, "2", JobState::Processing);
        let handler = handler(&settings(&sim));
        assert_eq!(settled(handle(&handler, "1").await.0).attempts, 1);
        sim.revoke_tokens();

        let outcome = settled(handle(&handler, "2").await.0);

        assert_eq!(outcome.kind(), OutcomeKind::Succeeded, "{outcome:?}");
        assert_eq!(outcome.attempts, 2, "the 401, then the renewed token");
        assert_eq!(sim.stats().tokens_issued(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_abort_of_an_aborted_job_is_already_aborted() {
        let sim = sim(SimConfig::default()).await;
        sim.set_job(PRINTER, "1", JobState::Aborted);
        let handler = handler(&settings(&sim));

        let outcome = settled(handle(&handler, "1").await.0);

        assert_eq!(outcome.kind(), OutcomeKind::Succeeded, "{outcome:?}");
        assert!(outcome.is_already_aborted());
        assert_eq!(outcome.http_status, Some(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_abort_of_a_completed_job_is_permanent_and_says_the_state() {
        let sim = sim(SimConfig::default()).await;
        sim.set_job(PRINTER, "1", JobState::Completed);
        let handler = handler(&settings(&sim));

        let outcome = settled(handle(&handler, "1").await.0);

        assert_eq!(
            outcome.error_kind(),
            Some(ErrorKind::Permanent),
            "{outcome:?}"
        );
        let message = &outcome.error().expect("an error").message;
        assert!(message.contains("job state: completed"), "{message}");
    }
}

/// The handler against Graph and the token endpoint stood in by wiremock, for replies the
/// simulator does not give.
mod against_wiremock {
    use secrecy::SecretString;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::command::CommandRules;
    use crate::outcome::OutcomeKind;

    const TENANT: &str = "contoso.onmicrosoft.com";
    const ABORT: &str = "/v1.0/print/printers/p-1/jobs/j-1/abort";

    async fn server() -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "token-1", "token_type": "Bearer", "expires_in": 3600
            })))
            .mount(&server)
            .await;
        server
    }

    fn handler(server: &MockServer) -> AbortHandler {
        let mut settings = Settings::default();
        settings.graph.base_url = Some(format!("{}/v1.0", server.uri()).parse().expect("a URL"));
        settings.auth.authority = Some(server.uri().parse().expect("a URL"));
        settings.auth.tenant_id = TENANT.into();
        settings.auth.client_id = "client".into();
        settings.auth.client_secret = Some(SecretString::from("secret"));
        settings.pause.verdict_wait = Duration::from_millis(50);
        let breaker = Arc::new(CircuitBreaker::new(&settings.pause));
        AbortHandler::from_settings(&settings, breaker).expect("the handler builds")
    }

    async fn handle(handler: &AbortHandler) -> Disposition {
        let body = serde_json::json!({"printerId": "p-1", "printJobId": "j-1"}).to_string();
        let command = AbortCommand::parse(body.as_bytes(), None, &CommandRules::default())
            .expect("a valid command");
        handler.handle(&command, &TraceContext::new_root()).await
    }

    #[tokio::test]
    async fn a_not_found_job_is_permanent_with_graphs_code_and_request_id() {
        let server = server().await;
        Mock::given(method("POST"))
            .and(path(ABORT))
            .respond_with(
                ResponseTemplate::new(404)
                    .insert_header("request-id", "req-404")
                    .set_body_json(serde_json::json!({
                        "error": {"code": "itemNotFound", "message": "The job was not found."}
                    })),
            )
            .expect(1)
            .mount(&server)
            .await;

        let Disposition::Settled(outcome) = handle(&handler(&server)).await else {
            panic!("expected an outcome");
        };

        assert_eq!(outcome.kind(), OutcomeKind::Failed);
        let error = outcome.error().expect("an error");
        assert_eq!(error.kind, ErrorKind::Permanent);
        assert_eq!(error.code.as_deref(), Some("itemNotFound"));
        assert!(
            error.message.contains("The job was not found."),
            "{}",
            error.message
        );
        assert_eq!(outcome.graph_request_id.as_deref(), Some("req-404"));
        assert_eq!(outcome.attempts, 1);
    }

    #[tokio::test]
    async fn credentials_the_token_endpoint_refuses_pause_the_worker_at_once() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
            .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided."
            })))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(ABORT))
            .respond_with(ResponseTemplate::new(204))
            .expect(0)
            .mount(&server)
            .await;
        let handler = handler(&server);

        let disposition = handle(&handler).await;

        assert!(
            matches!(disposition, Disposition::Paused),
            "{disposition:?}"
        );
        assert!(handler.breaker.is_open());
    }
}
