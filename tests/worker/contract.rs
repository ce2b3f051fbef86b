//! The contract documents cannot drift from the code: the JSON Schemas in `schemas/` accept
//! what the worker publishes and parses and refuse what it refuses, `docs/asyncapi.yaml`
//! names only files, headers and values that exist, and events and dead letters from a real
//! worker run against the real broker match both.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable};
use print_abort_worker::Settings;
use print_abort_worker::amqp::headers;
use print_abort_worker::command::{AbortCommand, CommandRules, CommandSummary};
use print_abort_worker::outcome::{ErrorKind, Outcome, OutcomeEvent, OutcomeKind};
use serde_json::{Value, json};
use wiremock::matchers::path_regex;

use crate::helpers::*;

const COMMAND_SCHEMA: &str = "schemas/abort-command.v1.schema.json";
const EVENT_SCHEMA: &str = "schemas/outcome-event.v1.schema.json";
const ASYNCAPI: &str = "docs/asyncapi.yaml";
/// The Graph API the sample commands' jobUrl values are on: the global cloud's, as configured by default.
const GRAPH_API: &str = "https://graph.microsoft.com/v1.0";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_json(relative: &str) -> Value {
    let text = std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// A draft 2020-12 validator that checks `format` too (`date-time`, `uuid`).
fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the schema compiles")
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

fn assert_accepts(validator: &jsonschema::Validator, instance: &Value) {
    let errors = schema_errors(validator, instance);
    assert!(errors.is_empty(), "{instance}\n{errors:#?}");
}

/// Every outcome kind. A new variant stops this from compiling until it is listed here,
/// and so checked against the schemas.
fn outcome_kinds() -> Vec<OutcomeKind> {
    let listed = |kind: OutcomeKind| match kind {
        OutcomeKind::Succeeded | OutcomeKind::Failed | OutcomeKind::Rejected => kind,
    };
    [
        OutcomeKind::Succeeded,
        OutcomeKind::Failed,
        OutcomeKind::Rejected,
    ]
    .map(listed)
    .to_vec()
}

/// Every error kind; see [`outcome_kinds`].
fn error_kinds() -> Vec<ErrorKind> {
    let listed = |kind: ErrorKind| match kind {
        ErrorKind::Invalid
        | ErrorKind::Permanent
        | ErrorKind::Exhausted
        | ErrorKind::Expired
        | ErrorKind::Unauthorized => kind,
    };
    [
        ErrorKind::Invalid,
        ErrorKind::Permanent,
        ErrorKind::Exhausted,
        ErrorKind::Expired,
        ErrorKind::Unauthorized,
    ]
    .map(listed)
    .to_vec()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is a list"))
        .iter()
        .map(|item| item.as_str().expect("strings").to_owned())
        .collect()
}

#[test]
fn the_schemas_are_valid_draft_2020_12() {
    for path in [COMMAND_SCHEMA, EVENT_SCHEMA] {
        let schema = read_json(path);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{path}"
        );
        if let Err(error) = jsonschema::meta::validate(&schema) {
            panic!("{path} is not a valid schema: {error}");
        }
    }
}

/// One event of every shape the worker can publish.
fn events() -> Vec<OutcomeEvent> {
    let received = Utc::now();
    let completed = received + chrono::Duration::milliseconds(41);
    let known = |tenant: Option<&str>| CommandSummary {
        command_id: "c-1".into(),
        printer_id: Some("016b5565-3bbf-4067-b9ff-4d68167eb1a6".into()),
        print_job_id: Some("5182".into()),
        reason: Some("Blocked by print policy".into()),
        tenant_id: tenant.map(str::to_owned),
    };
    let mut outcomes = vec![
        (
            known(None),
            Outcome::succeeded(1, 204, Some("req-1".into())),
        ),
        (
            known(Some("contoso.onmicrosoft.com")),
            Outcome::already_aborted(2, 404, Some("req-2".into())),
        ),
        (
            known(None),
            Outcome::rejected("tenantId \"x\" is neither auth.tenant_id nor allowed"),
        ),
        (
            CommandSummary {
                command_id: "c-2".into(),
                ..CommandSummary::default()
            },
            Outcome::rejected("body is not valid JSON"),
        ),
    ];
    for kind in error_kinds() {
        if kind == ErrorKind::Invalid {
            continue;
        }
        outcomes.push((known(None), Outcome::failed(3, kind, "why")));
        outcomes.push((
            known(Some("customer-a")),
            Outcome::failed(1, kind, "why")
                .with_code(Some("itemNotFound".into()))
                .with_reply(404, Some("req-3".into())),
        ));
    }
    let covered: BTreeSet<&str> = outcomes.iter().map(|(_, o)| o.kind().as_str()).collect();
    assert_eq!(covered.len(), outcome_kinds().len(), "every outcome kind");
    outcomes
        .into_iter()
        .map(|(summary, outcome)| OutcomeEvent::new(summary, outcome, received, completed))
        .collect()
}

#[test]
fn every_kind_of_outcome_event_matches_the_schema() {
    let schema = read_json(EVENT_SCHEMA);
    let validator = validator(&schema);
    let declared = |pointer: &str| -> BTreeSet<String> {
        schema
            .pointer(pointer)
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{pointer} in the schema"))
            .keys()
            .cloned()
            .collect()
    };
    for event in events() {
        let json: Value = serde_json::from_slice(&event.to_json()).expect("JSON");
        assert_accepts(&validator, &json);
        // Consumers may ignore unknown fields, but the schema must name every field sent.
        let keys = |value: &Value| -> BTreeSet<String> {
            value.as_object().expect("object").keys().cloned().collect()
        };
        assert!(keys(&json).is_subset(&declared("/properties")), "{json}");
        assert!(
            keys(&json["data"]).is_subset(&declared("/$defs/data/properties")),
            "{json}"
        );
        if json["data"]["error"].is_object() {
            assert_eq!(
                keys(&json["data"]["error"]),
                declared("/$defs/error/properties")
            );
        }
    }
    let outcomes: BTreeSet<String> = outcome_kinds()
        .iter()
        .map(|kind| kind.as_str().to_owned())
        .collect();
    assert_eq!(
        strings(&schema["$defs"]["data"]["properties"]["outcome"]["enum"]),
        outcomes
    );
    let types: BTreeSet<String> = outcome_kinds()
        .into_iter()
        .map(|kind| print_abort_worker::outcome::routing_key(kind).to_owned())
        .collect();
    assert_eq!(strings(&schema["properties"]["type"]["enum"]), types);
    let kinds: BTreeSet<String> = error_kinds()
        .iter()
        .map(|kind| kind.as_str().to_owned())
        .collect();
    assert_eq!(
        strings(&schema["$defs"]["error"]["properties"]["kind"]["enum"]),
        kinds
    );
}

#[test]
fn events_that_break_the_contract_are_refused() {
    let validator = validator(&read_json(EVENT_SCHEMA));
    let events = events();
    let succeeded: Value = serde_json::from_slice(&events[0].to_json()).expect("JSON");
    let failed: Value = serde_json::from_slice(&events[4].to_json()).expect("JSON");
    let rejected: Value = serde_json::from_slice(&events[3].to_json()).expect("JSON");
    assert_eq!(failed["data"]["outcome"], "failed");
    assert_eq!(rejected["data"]["outcome"], "rejected");
    let broken: [(&Value, &str, Value); 12] = [
        (&succeeded, "/data/outcome", json!("maybe")),
        (&succeeded, "/type", json!("printjob.abort.failed")),
        (
            &succeeded,
            "/data/error",
            json!({"kind": "permanent", "code": null, "message": "m"}),
        ),
        (&succeeded, "/data/printerId", json!("a/b")),
        (&succeeded, "/time", json!("yesterday")),
        (&succeeded, "/id", json!("not-a-uuid")),
        (&succeeded, "/specversion", json!("0.3")),
        (&failed, "/data/error", Value::Null),
        (&failed, "/data/error/kind", json!("oops")),
        (&failed, "/data/error/kind", json!("invalid")),
        (&rejected, "/data/httpStatus", json!(404)),
        (&rejected, "/data/error/kind", json!("permanent")),
    ];
    for (valid, pointer, value) in broken {
        let mut event = valid.clone();
        *event.pointer_mut(pointer).expect(pointer) = value.clone();
        assert!(
            !validator.is_valid(&event),
            "{pointer} = {value} was accepted"
        );
    }
    let mut missing = succeeded.clone();
    missing["data"]
        .as_object_mut()
        .expect("data")
        .remove("commandId");
    assert!(!validator.is_valid(&missing));
}

/// Bodies the worker accepts.
fn valid_commands() -> Vec<Value> {
    let id = "A".repeat(128);
    vec![
        json!({"printerId": "p", "printJobId": "1"}),
        json!({
            "printerId": "016b5565-3bbf-4067-b9ff-4d68167eb1a6", "printJobId": "5182",
            "reason": "Blocked by print policy", "commandId": "b1f3c0de",
            "tenantId": "customer-a", "expiresAt": "2026-11-30T12:00:00Z"
        }),
        json!({"printerId": id, "printJobId": "job_1-A", "expiresAt": "2026-11-30T12:00:00+01:00"}),
        json!({"printerId": "p", "printJobId": "j", "reason": "é".repeat(1024)}),
        json!({"printerId": "p", "printJobId": "j", "commandId": "c".repeat(256)}),
        json!({"printerId": "p", "printJobId": "j", "reason": null, "commandId": null,
               "tenantId": null, "expiresAt": null}),
        json!({"printerId": "p", "printJobId": "j", "somethingNew": [1, 2, {"x": true}]}),
        json!({"jobUrl": format!("{GRAPH_API}/print/printers/p/jobs/j")}),
        json!({"jobUrl": format!("{GRAPH_API}/print/printers/p/jobs/j"), "printerId": "p"}),
        json!({"jobUrl": null, "printerId": "p", "printJobId": "j"}),
        json!({"printerId": "p", "printJobId": "j",
               "taskUrl": format!("{GRAPH_API}/print/taskDefinitions/d-1/tasks/t-1")}),
        json!({"printerId": "p", "printJobId": "j", "taskDefinitionId": "d-1", "taskId": "t-1"}),
        json!({"printerId": "p", "printJobId": "j", "taskUrl": null, "taskId": null,
               "taskDefinitionId": null}),
    ]
}

/// Bodies the worker rejects for a reason the schema can see.
fn invalid_commands() -> Vec<Value> {
    vec![
        json!({"printJobId": "1"}),
        json!({"printerId": "p"}),
        json!({"printerId": null, "printJobId": "1"}),
        json!({"printerId": "", "printJobId": "1"}),
        json!({"printerId": "A".repeat(129), "printJobId": "1"}),
        json!({"printerId": "a/b", "printJobId": "1"}),
        json!({"printerId": "p", "printJobId": "1 2"}),
        json!({"printerId": "ünï", "printJobId": "1"}),
        json!({"printerId": 5, "printJobId": "1"}),
        json!({"printerId": "p", "printJobId": "1", "reason": "r".repeat(1025)}),
        json!({"printerId": "p", "printJobId": "1", "reason": 7}),
        json!({"printerId": "p", "printJobId": "1", "commandId": "c".repeat(257)}),
        json!({"printerId": "p", "printJobId": "1", "tenantId": "t".repeat(257)}),
        json!({"printerId": "p", "printJobId": "1", "expiresAt": "tomorrow"}),
        json!({"printerId": "p", "printJobId": "1", "expiresAt": "2026-11-30"}),
        json!({"printerId": "p", "printJobId": "1", "expiresAt": 1_800_000_000}),
        json!({"jobUrl": null}),
        json!({"jobUrl": 5}),
        json!({"jobUrl": "https://graph.microsoft.com/beta/print/printers/p/jobs/j"}),
        json!({"jobUrl": format!("{GRAPH_API}/print/printers/p/jobs/j/tasks")}),
        json!({"jobUrl": format!("{GRAPH_API}/print/printers/p/jobs/j?$select=id")}),
        json!({"jobUrl": format!("{GRAPH_API}/print/printers/../jobs/j")}),
        json!({"jobUrl": format!("{GRAPH_API}/print/printers/a%2Fb/jobs/j")}),
        json!({"jobUrl": format!("{GRAPH_API}/print/printers/p/jobs/j"), "printJobId": "k!"}),
        json!({"printerId": "p", "printJobId": "j", "taskId": "t-1"}),
        json!({"printerId": "p", "printJobId": "j", "taskDefinitionId": "d-1"}),
        json!({"printerId": "p", "printJobId": "j",
               "taskUrl": format!("{GRAPH_API}/print/printers/p/jobs/j")}),
        json!({"printerId": "p", "printJobId": "j",
               "taskUrl": format!("{GRAPH_API}/print/taskDefinitions/d-1/tasks/t 1")}),
        json!({"printerId": "p", "printJobId": "j", "taskDefinitionId": "d/1", "taskId": "t"}),
        json!([]),
        json!("printerId"),
        Value::Null,
    ]
}

fn tenants() -> CommandRules {
    CommandRules::new(
        &GRAPH_API.parse().expect("a URL"),
        "home",
        &["customer-a".into(), "contoso.onmicrosoft.com".into()],
    )
}

#[test]
fn sample_commands_are_judged_alike_by_the_schema_and_the_parser() {
    let schema = read_json(COMMAND_SCHEMA);
    let validator = validator(&schema);
    let mut valid = valid_commands();
    valid.extend(
        schema["examples"]
            .as_array()
            .expect("examples")
            .iter()
            .cloned(),
    );
    valid.push(readme_command_example());
    for command in valid {
        assert_accepts(&validator, &command);
        let body = serde_json::to_vec(&command).expect("JSON");
        if let Err(invalid) = AbortCommand::parse(&body, None, &tenants()) {
            panic!("{command}: {}", invalid.problem);
        }
    }
    for command in invalid_commands() {
        assert!(
            !validator.is_valid(&command),
            "the schema accepts {command}"
        );
        let body = serde_json::to_vec(&command).expect("JSON");
        assert!(
            AbortCommand::parse(&body, None, &tenants()).is_err(),
            "the parser accepts {command}"
        );
    }
}

/// The README's commands (`cargo run --release -- demo`, `-- run`, `-- enqueue`) name no
/// binary; with several in the package that needs `default-run`.
#[test]
fn cargo_run_without_a_binary_name_runs_the_worker() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .arg("--manifest-path")
        .arg(repo_path("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata is JSON");
    assert_eq!(metadata["packages"][0]["default_run"], "print-abort-worker");
}

/// The command example of the README's "Command (v1)" section.
fn readme_command_example() -> Value {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README.md");
    let section = readme
        .split_once("## Command (v1)")
        .expect("a Command (v1) section")
        .1;
    let block = section
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a JSON example")
        .0;
    serde_json::from_str(block).expect("the README example is JSON")
}

/// `docs/asyncapi.yaml` as JSON.
fn asyncapi() -> Value {
    let text = std::fs::read_to_string(repo_path(ASYNCAPI)).expect(ASYNCAPI);
    serde_norway::from_str(&text).expect("valid YAML")
}

/// Every string stored under `key` anywhere in `value`: the `$ref`s of a document, the
/// `expr`s of a dashboard.
pub fn strings_under(key: &str, value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (name, value) in map {
                match value {
                    Value::String(text) if name == key => found.push(text.clone()),
                    _ => strings_under(key, value, found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| strings_under(key, item, found)),
        _ => {}
    }
}

#[test]
fn the_asyncapi_document_parses_and_references_what_exists() {
    let document = asyncapi();
    assert_eq!(document["asyncapi"], "3.0.0");
    let mut targets = Vec::new();
    strings_under("$ref", &document, &mut targets);
    let mut files = BTreeSet::new();
    for target in &targets {
        match target.strip_prefix('#') {
            Some(pointer) => assert!(
                document.pointer(pointer).is_some(),
                "{target} points at nothing"
            ),
            None => {
                let path = repo_path("docs").join(target);
                assert!(path.is_file(), "{target} does not exist");
                let relative = path
                    .canonicalize()
                    .expect("path")
                    .strip_prefix(repo_path("").canonicalize().expect("path"))
                    .expect("inside the repository")
                    .to_string_lossy()
                    .into_owned();
                read_json(&relative);
                files.insert(relative);
            }
        }
    }
    assert_eq!(
        files,
        BTreeSet::from([COMMAND_SCHEMA.to_owned(), EVENT_SCHEMA.to_owned()])
    );

    // The names, values and headers it documents are the ones the worker uses.
    let defaults = Settings::default().amqp;
    let channels = &document["channels"];
    assert_eq!(
        channels["commands"]["address"],
        defaults.command_queue.as_str()
    );
    assert_eq!(
        channels["deadLetters"]["address"],
        defaults.dead_letter_queue.as_str()
    );
    assert_eq!(
        channels["outcomes"]["bindings"]["amqp"]["exchange"]["name"],
        defaults.results_exchange.as_str()
    );
    assert!(
        channels["deadLetters"]["description"]
            .as_str()
            .expect("description")
            .contains(&defaults.dead_letter_exchange)
    );
    let outcomes: BTreeSet<String> = outcome_kinds()
        .iter()
        .map(|kind| kind.as_str().to_owned())
        .collect();
    assert_eq!(
        strings(&document["components"]["parameters"]["outcome"]["enum"]),
        outcomes
    );
    let dead_letter_headers = &document["components"]["messages"]["deadLetteredCommand"]["headers"];
    let kinds: BTreeSet<String> = error_kinds()
        .iter()
        .map(|kind| kind.as_str().to_owned())
        .collect();
    assert_eq!(
        strings(&dead_letter_headers["properties"][headers::ABORT_ERROR]["enum"]),
        kinds
    );
    for header in [
        headers::ABORT_ERROR,
        headers::ABORT_ERROR_MESSAGE,
        headers::ABORT_COMMAND_ID,
        headers::ABORT_SOURCE_QUEUE,
        headers::ABORT_DEAD_LETTERED_AT,
        headers::ABORT_DEATHS,
        headers::ABORT_REDELIVERIES,
        headers::ABORT_ATTEMPTS,
        headers::ABORT_FIRST_RECEIVED_AT,
        headers::BROKER_DEATHS,
        headers::TRACEPARENT,
    ] {
        assert!(
            dead_letter_headers["properties"].get(header).is_some(),
            "{header} is not documented"
        );
    }
}

/// AMQP headers as the JSON an AsyncAPI header schema describes.
fn headers_as_json(table: &FieldTable) -> Value {
    fn convert(value: &AMQPValue) -> Value {
        match value {
            AMQPValue::LongString(text) => json!(String::from_utf8_lossy(text.as_bytes())),
            AMQPValue::ShortString(text) => json!(text.as_str()),
            AMQPValue::LongLongInt(n) => json!(n),
            AMQPValue::LongInt(n) => json!(n),
            AMQPValue::Boolean(b) => json!(b),
            AMQPValue::FieldArray(items) => {
                Value::Array(items.as_slice().iter().map(convert).collect())
            }
            AMQPValue::FieldTable(table) => headers_as_json(table),
            other => json!(format!("{other:?}")),
        }
    }
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(name, item)| (name.to_string(), convert(item)))
            .collect(),
    )
}

#[tokio::test]
async fn events_and_dead_letters_of_a_real_worker_match_the_documents() {
    let server = graph_with_token().await;
    abort_mock()
        .and(path_regex(r"/jobs/ok/abort$"))
        .respond_with(no_content())
        .mount(&server)
        .await;
    abort_mock()
        .and(path_regex(r"/jobs/(gone|missing)/abort$"))
        .respond_with(graph_error(404, "itemNotFound", "The job was not found"))
        .mount(&server)
        .await;
    job_mock()
        .and(path_regex(r"/jobs/gone$"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(
            json!({"id": "gone", "status": {"state": "aborted", "description": "Aborted"}}),
        ))
        .mount(&server)
        .await;
    job_mock()
        .and(path_regex(r"/jobs/missing$"))
        .respond_with(graph_error(404, "itemNotFound", "The job was not found"))
        .mount(&server)
        .await;
    let settings = test_settings(&server);
    let mut app = TestApp::spawn(server, settings).await;
    let commands = [
        json!({"printerId": "p", "printJobId": "ok", "commandId": "succeeded",
               "reason": "Blocked by print policy", "tenantId": TENANT}),
        json!({"printerId": "p", "printJobId": "gone", "commandId": "already-aborted"}),
        json!({"printerId": "p", "printJobId": "missing", "commandId": "permanent"}),
        json!({"printerId": "p", "printJobId": "late", "commandId": "expired",
               "expiresAt": "2020-01-01T00:00:00Z"}),
        json!({"printerId": "p/../x", "printJobId": "1", "commandId": "invalid"}),
    ];
    for command in &commands {
        app.send(&command.to_string()).await;
    }
    app.send("not JSON at all").await;
    let events: Vec<Value> = {
        let mut events = Vec::new();
        for _ in 0..commands.len() + 1 {
            events.push(app.next_event().await);
        }
        events
    };
    let event_validator = validator(&read_json(EVENT_SCHEMA));
    let mut outcomes = BTreeSet::new();
    for event in &events {
        assert_accepts(&event_validator, event);
        outcomes.insert(
            event["data"]["outcome"]
                .as_str()
                .expect("outcome")
                .to_owned(),
        );
    }
    assert_eq!(
        outcomes.len(),
        3,
        "every outcome kind was seen: {events:#?}"
    );

    // The dead letters' headers match the AsyncAPI document's header schema.
    let mut document = asyncapi();
    document["$ref"] = json!("#/components/messages/deadLetteredCommand/headers");
    let header_validator = validator(&document);
    let dead_letters = app.dead_letters().await;
    assert_eq!(
        dead_letters.len(),
        4,
        "expired, permanent, invalid, not JSON"
    );
    for dead_letter in &dead_letters {
        let table = dead_letter.properties.headers().clone().unwrap_or_default();
        assert_accepts(&header_validator, &headers_as_json(&table));
    }
    app.finish().await;
}
