//! `print-abort-worker check` as an operator runs it: the real binary, configured through
//! `PRINT_ABORT__…` variables, against the real broker and an in-process graph-sim.

use graph_sim::{DEFAULT_CLIENT_SECRET, GraphSim, PULL_PRINTING_ROLES, SimConfig};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use print_abort_worker::Settings;
use print_abort_worker::config::QueueType;

use crate::helpers::*;

/// What one run of `check` printed and how it exited.
struct CheckRun {
    code: Option<i32>,
    stdout: String,
}

impl CheckRun {
    /// The checklist line of `step`.
    fn line(&self, step: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| line[line.find(' ').map_or(0, |i| i + 1)..].starts_with(step))
            .unwrap_or_else(|| panic!("no line for {step}:\n{}", self.stdout))
    }

    fn fix(&self) -> &str {
        self.stdout
            .lines()
            .find(|line| line.starts_with("  fix: "))
            .unwrap_or_else(|| panic!("no fix line:\n{}", self.stdout))
    }
}

async fn check(settings: &Settings, overrides: &[(&str, &str)]) -> CheckRun {
    let output = worker_binary()
        .arg("check")
        .envs(environment(settings))
        .envs(overrides.iter().copied())
        .output()
        .await
        .expect("the binary runs");
    let stdout = String::from_utf8(output.stdout).expect("the checklist is UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stdout.contains(DEFAULT_CLIENT_SECRET) && !stderr.contains(DEFAULT_CLIENT_SECRET),
        "the client secret was printed:\n{stdout}\n{stderr}"
    );
    CheckRun {
        code: output.status.code(),
        stdout,
    }
}

/// What the app needs: an abort permission, and the printer read a paused worker probes with.
const GOOD_ROLES: &[&str] = &["PrintJob.ReadWriteBasic.All", "Printer.Read.All"];

async fn start_sim(roles: &[&str]) -> GraphSim {
    GraphSim::start(SimConfig {
        roles: roles.iter().map(|role| role.to_string()).collect(),
        ..SimConfig::default()
    })
    .await
    .expect("graph-sim starts")
}

async fn clean_up(settings: &Settings) {
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    delete_topology(&channel, &settings.amqp).await;
}

#[tokio::test]
async fn every_step_passes_with_good_settings() {
    let sim = start_sim(PULL_PRINTING_ROLES).await;
    sim.create_task_definition("Print policy");
    let settings = sim_settings(&sim);
    let run = check(&settings, &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let marks: Vec<String> = run
        .stdout
        .lines()
        .map(|line| {
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(
        marks,
        [
            "✓ configuration",
            "✓ broker",
            "✓ topology",
            "✓ token",
            "✓ permission",
            "✓ pull",
            "all checks",
        ],
        "{}",
        run.stdout
    );
    assert!(
        run.line("broker")
            .contains("amqp://guest:***@127.0.0.1:5672")
    );
    assert!(
        run.line("topology")
            .contains(&format!("{} holds 0 messages", settings.amqp.command_queue)),
        "{}",
        run.stdout
    );
    assert!(
        run.line("permission")
            .ends_with("PrintJob.ReadWriteBasic.All and Printer.Read.All"),
        "{}",
        run.stdout
    );
    assert!(
        run.line("pull printing")
            .ends_with("1 task definition(s) of this app: Print policy"),
        "{}",
        run.stdout
    );
    assert_eq!(sim.stats().token.requests, 1, "one token was requested");
    clean_up(&settings).await;
}

#[tokio::test]
async fn a_wrong_secret_fails_the_token_step_and_names_the_key() {
    let sim = start_sim(GOOD_ROLES).await;
    let settings = sim_settings(&sim);
    let run = check(
        &settings,
        &[("PRINT_ABORT__AUTH__CLIENT_SECRET", "not-the-secret")],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.line("token").starts_with("✗"), "{}", run.stdout);
    assert!(
        run.line("token").contains("invalid_client"),
        "{}",
        run.stdout
    );
    assert!(run.fix().contains("auth.client_secret"), "{}", run.stdout);
    assert!(run.line("permission").starts_with("- permission"));
    assert!(run.line("permission").ends_with("not checked"));
    assert!(!run.stdout.contains("not-the-secret"), "{}", run.stdout);
    clean_up(&settings).await;
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_broker_step_without_showing_the_password() {
    let sim = start_sim(GOOD_ROLES).await;
    let settings = sim_settings(&sim);
    let run = check(
        &settings,
        &[(
            "PRINT_ABORT__AMQP__URL",
            "amqp://guest:broker-pa55@127.0.0.1:1/%2f",
        )],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("broker");
    assert!(line.starts_with("✗"), "{}", run.stdout);
    assert!(line.contains("127.0.0.1:1"), "{line}");
    assert!(!run.stdout.contains("broker-pa55"), "{}", run.stdout);
    assert!(run.fix().contains("amqp.url"), "{}", run.stdout);
    for step in ["topology", "token", "permission"] {
        assert!(run.line(step).ends_with("not checked"), "{}", run.stdout);
    }
    assert_eq!(sim.stats().token.requests, 0, "no token was asked for");
}

#[tokio::test]
async fn a_token_without_an_abort_permission_fails_the_permission_step() {
    for (roles, held) in [
        (&[][..], "it has no roles"),
        (&["PrintJob.Read.All"][..], "it holds PrintJob.Read.All"),
    ] {
        let sim = start_sim(roles).await;
        let settings = sim_settings(&sim);
        let run = check(&settings, &[]).await;
        assert_eq!(run.code, Some(1), "{}", run.stdout);
        let line = run.line("permission");
        assert!(line.starts_with("✗"), "{}", run.stdout);
        assert!(
            line.contains(
                "none of PrintJob.ReadWriteBasic.All, PrintJob.ReadWrite.All, PrintJob.Manage.All"
            ),
            "{line}"
        );
        assert!(line.contains(held), "{line}");
        assert!(run.fix().contains("admin consent"), "{}", run.stdout);
        assert!(run.line("token").starts_with("✓"), "{}", run.stdout);
        clean_up(&settings).await;
    }
}

#[tokio::test]
async fn a_token_without_a_printer_read_permission_fails_the_permission_step() {
    let sim = start_sim(&["PrintJob.ReadWriteBasic.All"]).await;
    let settings = sim_settings(&sim);
    let run = check(&settings, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("permission");
    assert!(line.starts_with("✗"), "{}", run.stdout);
    assert!(
        line.contains("none of Printer.Read.All, Printer.ReadWrite.All"),
        "{line}"
    );
    assert!(line.contains("never resumes"), "{line}");
    assert!(run.fix().contains("admin consent"), "{}", run.stdout);
    clean_up(&settings).await;
}

#[tokio::test]
async fn a_token_that_is_not_a_jwt_is_a_clear_failure() {
    // wiremock's token endpoint issues the opaque token `token-1`.
    let server = graph_with_token().await;
    let settings = test_settings(&server);
    let run = check(&settings, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.line("permission")
            .contains("the access token is not a JWT"),
        "{}",
        run.stdout
    );
    clean_up(&settings).await;
}

#[tokio::test]
async fn a_configuration_error_exits_with_code_2() {
    let sim = start_sim(GOOD_ROLES).await;
    let settings = sim_settings(&sim);
    let run = check(&settings, &[("PRINT_ABORT__AUTH__TENANT_ID", "")]).await;
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    assert!(run.line("configuration").starts_with("✗"), "{}", run.stdout);
    assert!(run.line("configuration").contains("auth.tenant_id"));
    assert!(run.line("broker").ends_with("not checked"));
}

#[tokio::test]
async fn a_queue_with_other_arguments_fails_the_topology_step() {
    let sim = start_sim(GOOD_ROLES).await;
    let mut settings = sim_settings(&sim);
    settings.amqp.queue_type = QueueType::Quorum;
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    declare_foreign_queue(&channel, &settings.amqp.command_queue).await;
    let run = check(&settings, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("topology");
    assert!(line.starts_with("✗"), "{}", run.stdout);
    assert!(line.contains(&settings.amqp.command_queue), "{line}");
    assert!(line.contains("inequivalent arg"), "{line}");
    assert!(run.line("token").ends_with("not checked"));
    delete_topology(&channel, &settings.amqp).await;
}

#[tokio::test]
async fn without_declaring_a_missing_queue_fails_the_topology_step() {
    let sim = start_sim(GOOD_ROLES).await;
    let settings = sim_settings(&sim);
    let run = check(&settings, &[("PRINT_ABORT__AMQP__DECLARE", "false")]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("topology");
    assert!(line.starts_with("✗"), "{}", run.stdout);
    assert!(line.contains("does not exist"), "{line}");
    // Checking created nothing.
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    assert!(
        channel
            .queue_declare(
                settings.amqp.command_queue.as_str().into(),
                passive,
                FieldTable::default()
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_missing_task_definition_is_a_warning_with_its_fix_not_a_failure() {
    let sim = start_sim(PULL_PRINTING_ROLES).await;
    let settings = sim_settings(&sim);
    let run = check(&settings, &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let line = run.line("pull printing");
    assert!(line.starts_with('!'), "{line}");
    assert!(
        line.contains("this app has no print task definition"),
        "{line}"
    );
    assert!(
        run.stdout.contains("POST /print/taskDefinitions")
            && run.stdout.contains("docs/UNIVERSAL-PRINT.md"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.ends_with("all checks passed\n"),
        "{}",
        run.stdout
    );
    clean_up(&settings).await;
}

#[tokio::test]
async fn task_definitions_it_may_not_read_are_a_warning_naming_the_permission() {
    let sim = start_sim(GOOD_ROLES).await;
    let settings = sim_settings(&sim);
    let run = check(&settings, &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let line = run.line("pull printing");
    assert!(line.starts_with('!') && line.contains("HTTP 403"), "{line}");
    assert!(
        run.stdout.contains("PrintTaskDefinition.ReadWrite.All"),
        "{}",
        run.stdout
    );
    clean_up(&settings).await;
}
