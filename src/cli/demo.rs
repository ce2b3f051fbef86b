//! `print-abort-worker demo`: the whole pipeline on one machine. It starts the Graph
//! simulator in-process, runs the real worker against it on demo queue names, sends sample
//! commands that show each kind of outcome, prints the outcome events as they arrive, and
//! cleans up. RabbitMQ is the only prerequisite.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use crate::amqp::topology;
use crate::cli::{
    EventStream, ToolError, command_properties, confirm_channel, confirmed, connect, send_command,
};
use crate::config::Settings;
use crate::health::Health;
use graph_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, GraphSim, JobState, PULL_PRINTING_ROLES,
    SimConfig,
};

const PRINTER: &str = "demo-printer";

/// A sample command and the outcome it must end with.
struct Sample {
    name: &'static str,
    body: Value,
    outcome: &'static str,
    error_kind: Option<&'static str>,
    already_aborted: bool,
    min_attempts: u64,
    /// The print task the command names, which must end `completed`.
    completes_task: bool,
}

impl Sample {
    fn new(name: &'static str, job: &str, outcome: &'static str) -> Self {
        Self {
            name,
            body: serde_json::json!({
                "printerId": PRINTER, "printJobId": job,
                "reason": "Blocked by print policy", "commandId": format!("demo-{name}"),
            }),
            outcome,
            error_kind: None,
            already_aborted: false,
            min_attempts: 0,
            completes_task: false,
        }
    }

    fn command_id(&self) -> String {
        format!("demo-{}", self.name)
    }

    fn holds_for(&self, event: &Value) -> bool {
        let data = &event["data"];
        data["outcome"] == self.outcome
            && data["error"]["kind"].as_str() == self.error_kind
            && data["alreadyAborted"] == self.already_aborted
            && data["attempts"].as_u64().unwrap_or(0) >= self.min_attempts
            && (!self.completes_task || data["task"]["state"] == "completed")
    }
}

/// Pull printing: a trigger on the demo printer, a job started under it (so a print task
/// holds it), and a command naming both by their Graph URLs, as a pull-printing app sends it.
fn pull_printing_sample(sim: &GraphSim) -> Sample {
    let definition = sim.create_task_definition("Demo print policy");
    let _ = sim.set_task_trigger(PRINTER, &definition);
    let mut sample = Sample::new("pull-printing", "1007", "succeeded");
    if let Some((definition, task)) = sim.start_job(PRINTER, "1007") {
        sample.body = serde_json::json!({
            "jobUrl": sim.job_url(PRINTER, "1007"),
            "taskUrl": sim.task_url(&definition, &task),
            "reason": "Blocked by print policy", "commandId": sample.command_id(),
        });
    }
    sample.completes_task = true;
    sample
}

fn samples() -> (Vec<Sample>, Sample) {
    let mut already = Sample::new("already-aborted", "1002", "succeeded");
    already.already_aborted = true;
    let mut missing = Sample::new("not-found", "1004", "failed");
    missing.error_kind = Some("permanent");
    let mut invalid = Sample::new("invalid", "1005", "rejected");
    invalid.body["printerId"] = "../../admin".into();
    invalid.error_kind = Some("invalid");
    let mut expired = Sample::new("expired", "1006", "failed");
    expired.body["expiresAt"] = "2020-01-01T00:00:00Z".into();
    expired.error_kind = Some("expired");
    let mut throttled = Sample::new("throttled", "1003", "succeeded");
    throttled.min_attempts = 2;
    (
        vec![
            Sample::new("success", "1001", "succeeded"),
            already,
            missing,
            invalid,
            expired,
        ],
        throttled,
    )
}

/// Runs the demo; returns whether every sample ended as expected.
pub async fn run(base: Settings) -> Result<bool, ToolError> {
    let sim = GraphSim::start(SimConfig {
        // The demo's app may also report print tasks finished (pull printing).
        roles: PULL_PRINTING_ROLES
            .iter()
            .map(|role| role.to_string())
            .collect(),
        ..SimConfig::default()
    })
    .await
    .map_err(ToolError::Simulator)?;
    for (job, state) in [
        ("1001", JobState::Processing),
        ("1002", JobState::Aborted),
        ("1003", JobState::Processing),
    ] {
        sim.set_job(PRINTER, job, state);
    }
    let settings = demo_settings(base, &sim)?;
    println!("Graph simulator at {}", sim.base_url());
    println!("RabbitMQ command queue {}", settings.amqp.command_queue);

    let connection = connect(&settings.amqp, "demo")
        .await
        .map_err(ToolError::connect(
            "cannot connect to RabbitMQ; start it with `rabbitmq-server -detached`",
        ))?;
    topology::declare(&connection, &settings.amqp, &[]).await?;
    let channel = confirm_channel(&connection).await?;
    let mut events = EventStream::open(&channel, Some(&settings.amqp.results_exchange)).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(crate::worker::run_with_health(
        settings.clone(),
        Arc::new(Health::default()),
        async move {
            let _ = stopped.await;
        },
    ));

    let (mut first, throttled) = samples();
    first.push(pull_printing_sample(&sim));
    println!();
    println!(
        "{:<16} {:<24} {:<10} {:<28} {:>8} {:>7}",
        "sample", "command", "outcome", "detail", "attempts", "ms"
    );
    let mut all_as_expected = true;
    for sample in &first {
        send(&channel, &settings, sample).await?;
    }
    all_as_expected &= report(&mut events, &first).await?;

    // Graph throttles the next call; the worker waits as Retry-After says and tries again.
    sim.set_faults(Faults {
        error_429_rate: 1.0,
        retry_after_secs: 1,
        ..Faults::default()
    })?;
    send(&channel, &settings, &throttled).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.set_faults(Faults::default())?;
    all_as_expected &= report(&mut events, std::slice::from_ref(&throttled)).await?;

    let _ = stop.send(());
    worker
        .await
        .map_err(|error| ToolError::Task("worker", error))??;
    topology::delete(&channel, &settings.amqp).await;
    let _ = connection.close(200, "demo done".into()).await;
    let total = first.len() + 1;
    println!();
    if all_as_expected {
        println!("all {total} samples ended as expected");
    } else {
        println!("some samples did not end as expected");
    }
    Ok(all_as_expected)
}

fn demo_settings(mut settings: Settings, sim: &GraphSim) -> Result<Settings, ToolError> {
    let url = |text: String| {
        text.parse()
            .map_err(|error| ToolError::Usage(format!("the simulator's URL {text}: {error}")))
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let run = &id[..8];
    settings.amqp.command_queue = format!("print.abort.demo.{run}.commands");
    settings.amqp.results_exchange = format!("print.abort.demo.{run}.results");
    settings.amqp.dead_letter_exchange = format!("print.abort.demo.{run}.dlx");
    settings.amqp.dead_letter_queue = format!("print.abort.demo.{run}.dead");
    settings.amqp.declare = true;
    settings.graph.base_url = Some(url(sim.base_url())?);
    settings.graph.max_requests_per_second = 0;
    settings.auth.authority = Some(url(sim.authority())?);
    settings.auth.scope = None;
    settings.auth.tenant_id = "demo-tenant".into();
    settings.auth.client_id = DEFAULT_CLIENT_ID.into();
    settings.auth.client_secret = Some(SecretString::from(DEFAULT_CLIENT_SECRET));
    settings.auth.client_secret_file = None;
    settings.retry.initial_interval = Duration::from_millis(200);
    settings.retry.max_interval = Duration::from_secs(2);
    settings.retry.max_elapsed = Duration::from_secs(15);
    settings.retry.redelivery_delays = Vec::new();
    settings.worker.concurrency = NonZeroUsize::new(4).expect("4 is not zero");
    settings.http.listen = None;
    settings.validate()?;
    Ok(settings)
}

async fn send(
    channel: &lapin::Channel,
    settings: &Settings,
    sample: &Sample,
) -> Result<(), ToolError> {
    let body = serde_json::to_vec(&sample.body)?;
    let confirm = send_command(
        channel,
        &settings.amqp,
        &body,
        command_properties(&sample.command_id()),
    )
    .await?;
    Ok(confirmed(confirm, &settings.amqp.command_queue).await?)
}

/// Prints one line per event until every sample has one; returns whether all held.
async fn report(events: &mut EventStream, samples: &[Sample]) -> Result<bool, ToolError> {
    let mut left: Vec<&Sample> = samples.iter().collect();
    let mut all_held = true;
    while !left.is_empty() {
        let Some(event) = events.next(Duration::from_secs(30)).await? else {
            return Err(ToolError::NoEvents);
        };
        let data = &event["data"];
        let Some(position) = left
            .iter()
            .position(|sample| data["commandId"] == sample.command_id().as_str())
        else {
            continue;
        };
        let sample = left.remove(position);
        let held = sample.holds_for(&event);
        all_held &= held;
        let detail = match (&data["error"], data["alreadyAborted"].as_bool()) {
            (Value::Object(error), _) => format!(
                "{} {}",
                error.get("kind").and_then(Value::as_str).unwrap_or(""),
                error.get("code").and_then(Value::as_str).unwrap_or("")
            ),
            (_, Some(true)) => "already aborted".to_owned(),
            _ if data["task"]["state"] == "completed" => "print task completed".to_owned(),
            _ => String::new(),
        };
        println!(
            "{:<16} {:<24} {:<10} {:<28} {:>8} {:>7}{}",
            sample.name,
            data["commandId"].as_str().unwrap_or(""),
            data["outcome"].as_str().unwrap_or(""),
            detail.trim(),
            data["attempts"].to_string(),
            data["durationMs"].to_string(),
            if held { "" } else { "   <- unexpected" }
        );
    }
    Ok(all_held)
}
