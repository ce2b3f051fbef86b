//! The command-line tools end to end: `demo` against the real broker, `enqueue` (one
//! command with `--wait`, and a JSON Lines file) against a running worker, and the
//! container files, checked without a Docker engine.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::helpers::*;

fn binary(args: &[&str], settings: &print_abort_worker::Settings) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_print-abort-worker"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env("PRINT_ABORT__AMQP__URL", settings.amqp.url.expose_secret())
        .env(
            "PRINT_ABORT__AMQP__COMMAND_QUEUE",
            &settings.amqp.command_queue,
        )
        .stdin(Stdio::null());
    command
}

#[tokio::test]
async fn the_demo_runs_every_sample_to_its_expected_outcome() {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_print-abort-worker"))
            .arg("demo")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output(),
    )
    .await
    .expect("the demo finishes within a minute")
    .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    for (sample, outcome) in [
        ("success", "succeeded"),
        ("already-aborted", "succeeded"),
        ("not-found", "failed"),
        ("invalid", "rejected"),
        ("expired", "failed"),
        ("pull-printing", "print task completed"),
        ("throttled", "succeeded"),
    ] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("{sample} ")))
            .unwrap_or_else(|| panic!("no line for {sample}:\n{stdout}"));
        assert!(line.contains(outcome), "{line}");
        assert!(!line.contains("unexpected"), "{line}");
    }
    assert!(
        stdout.contains("all 7 samples ended as expected"),
        "{stdout}"
    );
}

#[tokio::test]
async fn enqueue_wait_prints_the_outcome_and_exits_by_it() {
    let app = spawn_app().await;
    abort_mock()
        .and(wiremock::matchers::path(
            "/v1.0/print/printers/p1/jobs/42/abort",
        ))
        .respond_with(no_content())
        .mount(&app.server)
        .await;
    mount_no_such_job(&app.server, abort_mock()).await;
    let output = binary(
        &[
            "enqueue",
            "--printer",
            "p1",
            "--job",
            "42",
            "--reason",
            "policy",
            "--command-id",
            "cli-1",
            "--expires-in",
            "10m",
            "--wait",
            "--timeout",
            "20s",
        ],
        &app.settings,
    )
    .output()
    .await
    .expect("enqueue runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let event: serde_json::Value = serde_json::from_str(&stdout).expect("the event as JSON");
    assert_eq!(event["data"]["commandId"], "cli-1");
    assert_eq!(event["data"]["outcome"], "succeeded");
    assert_eq!(event["data"]["reason"], "policy");

    let output = binary(
        &[
            "enqueue",
            "--printer",
            "p1",
            "--job",
            "gone",
            "--wait",
            "--timeout",
            "20s",
        ],
        &app.settings,
    )
    .output()
    .await
    .expect("enqueue runs");
    assert_eq!(output.status.code(), Some(1), "a failed outcome exits 1");
    let event: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the event as JSON");
    assert_eq!(event["data"]["error"]["kind"], "permanent");

    let output = binary(
        &["enqueue", "--printer", "../x", "--job", "1"],
        &app.settings,
    )
    .output()
    .await
    .expect("enqueue runs");
    assert_eq!(
        output.status.code(),
        Some(2),
        "an invalid command is a usage error"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("printerId may hold only"));
    app.finish().await;
}

#[tokio::test]
async fn enqueue_file_sends_the_good_lines_and_names_the_bad_ones() {
    let mut app = spawn_app().await;
    abort_mock()
        .respond_with(no_content())
        .mount(&app.server)
        .await;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        concat!(
            "{\"printerId\":\"p\",\"printJobId\":\"f1\",\"commandId\":\"file-1\"}\n",
            "{\"printerId\":\"p\",\"printJobId\":\"f2\",\"commandId\":\"file-2\"}\n",
            "{\"printerId\":\"p\",\"printJobId\":\"../f3\"}\n",
            "\n",
            "{\"printerId\":\"p\",\"printJobId\":\"f4\",\"commandId\":\"file-4\"}\n",
            "not json\n",
        ),
    )
    .expect("write");
    let path = file.path().to_str().expect("utf-8 path");
    let output = binary(&["enqueue", "--file", path], &app.settings)
        .output()
        .await
        .expect("enqueue runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3: not sent"), "{stderr}");
    assert!(stderr.contains("line 6: not sent"), "{stderr}");
    assert!(
        stderr.contains("sent 3 commands; 2 lines not sent"),
        "{stderr}"
    );
    let ids: Vec<String> = ["file-1", "file-2", "file-4"].map(String::from).to_vec();
    let outcomes = app
        .collect_outcomes(&ids, Vec::new(), Duration::from_secs(15))
        .await;
    assert_eq!(outcomes.len(), 3);
    app.finish().await;
}

#[test]
fn the_compose_file_is_consistent_with_the_project() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose file");
    let compose: serde_json::Value = serde_norway::from_str(&text).expect("compose is YAML");
    let services = compose["services"].as_object().expect("services");
    for name in ["rabbitmq", "graph-sim", "worker"] {
        assert!(services.contains_key(name), "service {name}");
    }
    let rabbitmq = &services["rabbitmq"];
    assert!(
        rabbitmq["image"]
            .as_str()
            .expect("image")
            .contains("management")
    );
    assert!(
        rabbitmq["healthcheck"]["test"].is_array(),
        "rabbitmq has a healthcheck"
    );
    assert_eq!(
        services["worker"]["depends_on"]["rabbitmq"]["condition"],
        "service_healthy"
    );

    for (name, service) in services {
        if let Some(context) = service["build"].as_str() {
            let dockerfile = root.join(context).join("Dockerfile");
            assert!(
                dockerfile.exists(),
                "{name}: {} exists",
                dockerfile.display()
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let host = volume
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .next();
            let host = host.expect("a host path");
            assert!(root.join(host).exists(), "{name}: mounted {host} exists");
        }
    }
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    for binary in ["print-abort-worker", "graph-sim"] {
        assert!(
            dockerfile.contains(&format!("release/{binary}")),
            "ships {binary}"
        );
    }

    // Every PRINT_ABORT__ variable must be a real configuration key: loading the settings
    // with exactly that environment rejects unknown keys and invalid values.
    let environment: HashMap<String, String> = services["worker"]["environment"]
        .as_object()
        .expect("environment map")
        .iter()
        .map(|(key, value)| (key.clone(), value.as_str().expect("string").to_owned()))
        .collect();
    assert!(
        environment
            .keys()
            .all(|key| key.starts_with("PRINT_ABORT__"))
    );
    let settings = print_abort_worker::Settings::load_from(
        &root.join("config/default.toml"),
        None,
        Some(environment),
    )
    .expect("the worker's compose environment is a valid configuration");
    assert_eq!(settings.http.listen, Some(([0, 0, 0, 0], 9090).into()));
    assert_eq!(settings.auth.client_id, graph_sim::DEFAULT_CLIENT_ID);
    let published: Vec<&str> = services["graph-sim"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|port| port.as_str())
        .collect();
    assert!(
        published.contains(&"9090:9090"),
        "the worker's endpoints are published"
    );
}
