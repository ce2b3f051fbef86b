//! `print-abort-worker check`: verifies, in order, what the worker needs — its
//! configuration, the broker, the topology, a token, and an abort permission in that token —
//! printing one checklist line per step and stopping at the first problem with a line that
//! says how to fix it.
//!
//! Every step runs the worker's own code (`Settings::load`, `amqp::connect`,
//! `topology::verify`, the token provider of `AbortHandler::from_settings`), so a deployment that
//! passes starts the same way. `main.rs` calls [`configuration`], then runs [`verify`] on a
//! runtime.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use lapin::Connection;

use super::EXIT_CONFIG;
use crate::amqp::topology::{self, TopologyError, TopologyStatus};
use crate::auth::claims::{ABORT_PERMISSIONS, ClaimsError, PROBE_PERMISSIONS, TokenClaims};
use crate::auth::{AccessToken, AuthError};
use crate::breaker::CircuitBreaker;
use crate::config::Settings;
use crate::handler::AbortHandler;
use crate::telemetry::trace::TraceContext;

/// The steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Configuration,
    Broker,
    Topology,
    Token,
    Permission,
    PullPrinting,
}

const STEPS: [Step; 6] = [
    Step::Configuration,
    Step::Broker,
    Step::Topology,
    Step::Token,
    Step::Permission,
    Step::PullPrinting,
];

impl Step {
    fn label(self) -> &'static str {
        match self {
            Self::Configuration => "configuration",
            Self::Broker => "broker",
            Self::Topology => "topology",
            Self::Token => "token",
            Self::Permission => "permission",
            Self::PullPrinting => "pull printing",
        }
    }
}

/// What went wrong in a step, and what the operator can do about it.
#[derive(Debug)]
struct Failure {
    problem: String,
    fix: String,
}

impl Failure {
    fn new(problem: impl std::fmt::Display, fix: impl Into<String>) -> Self {
        Self {
            problem: problem.to_string(),
            fix: fix.into(),
        }
    }
}

/// The first step: loads the configuration of `--config FILE` as the worker does and prints
/// its line; on a problem, the exit code to end with.
pub fn configuration(config: Option<&Path>) -> Result<Settings, ExitCode> {
    let mut checklist = Checklist::stdout();
    let settings = super::load_worker_settings(config).map_err(|error| {
        let fix = "correct that key in the --config file, config/default.toml or its \
                   PRINT_ABORT__<SECTION>__<KEY> variable; config/default.toml documents \
                   every key";
        checklist.fail(Step::Configuration, Failure::new(error, fix))
    })?;
    checklist.pass(
        Step::Configuration,
        &format!(
            "tenant {}, client {}, Graph {}",
            settings.auth.tenant_id,
            settings.auth.client_id,
            settings.graph.base_url()
        ),
    );
    Ok(settings)
}

/// The steps after the configuration, printing to standard output; returns the exit code.
pub async fn verify(settings: &Settings) -> ExitCode {
    let mut checklist = Checklist::stdout();
    let connection = match broker(settings).await {
        Ok(connection) => connection,
        Err(failure) => return checklist.fail(Step::Broker, failure),
    };
    checklist.pass(Step::Broker, settings.amqp.url.redacted());

    let topology = topology::verify(
        &connection,
        &settings.amqp,
        &settings.retry.redelivery_delays,
    )
    .await;
    let _ = connection.close(200, "checked".into()).await;
    match topology {
        Ok(status) => checklist.pass(Step::Topology, &describe_topology(settings, status)),
        Err(error) => return checklist.fail(Step::Topology, topology_failure(error)),
    }

    let (handler, token) = match token(settings).await {
        Ok(found) => found,
        Err(failure) => return checklist.fail(Step::Token, failure),
    };
    checklist.pass(
        Step::Token,
        &format!(
            "issued by {} for tenant {}, scope {}",
            settings.authority(),
            settings.auth.tenant_id,
            settings.scope()
        ),
    );

    match permission(&token) {
        Ok(detail) => checklist.pass(Step::Permission, &detail),
        Err(failure) => return checklist.fail(Step::Permission, failure),
    }
    // Never a failure: an app that names no print tasks needs no task definition.
    match pull_printing(&handler, &token).await {
        Ok(detail) => checklist.pass(Step::PullPrinting, &detail),
        Err(warning) => checklist.warn(Step::PullPrinting, &warning),
    }
    checklist.line("all checks passed");
    ExitCode::SUCCESS
}

async fn broker(settings: &Settings) -> Result<Connection, Failure> {
    super::connect(&settings.amqp, "check")
        .await
        .map_err(|error| {
            Failure::new(
                format!(
                    "cannot connect to {}: {error}",
                    settings.amqp.url.redacted()
                ),
                "start RabbitMQ there or point amqp.url (PRINT_ABORT__AMQP__URL) at it; check its \
             user, password and vhost",
            )
        })
}

fn describe_topology(settings: &Settings, status: TopologyStatus) -> String {
    let amqp = &settings.amqp;
    let how = if amqp.declare {
        "declared as the worker declares it"
    } else {
        "exists (amqp.declare = false: checked, not declared)"
    };
    format!(
        "{how}; {} holds {} ({} consumers), {} holds {}",
        amqp.command_queue,
        messages(status.command_queue.messages),
        status.command_queue.consumers,
        amqp.dead_letter_queue,
        messages(status.dead_letter_queue.messages),
    )
}

fn messages(count: u32) -> String {
    match count {
        1 => "1 message".to_owned(),
        n => format!("{n} messages"),
    }
}

fn topology_failure(error: TopologyError) -> Failure {
    let fix = match &error {
        TopologyError::Mismatch { .. } => {
            "align amqp.queue_type and amqp.dead_letter_exchange with the existing queue, or \
             move its messages away and delete it so the worker declares it anew"
        }
        TopologyError::Missing { .. } => {
            "with amqp.declare = false the worker creates nothing: docs/OPERATIONS.md \
             (Topology) lists every queue and exchange with its arguments"
        }
        TopologyError::Broker { .. } => {
            "check that the broker user may configure, write and read on this vhost"
        }
    };
    Failure::new(error, fix)
}

/// A token from the worker's own token provider.
/// The app's print task definitions, which pull printing needs; a warning, with its fix,
/// when there is none or they cannot be read.
async fn pull_printing(handler: &AbortHandler, token: &AccessToken) -> Result<String, Failure> {
    let guide = "see docs/UNIVERSAL-PRINT.md";
    let reply = handler
        .graph()
        .list_task_definitions(token, &TraceContext::new_root())
        .await
        .map_err(|error| {
            Failure::new(
                format!("the app's print task definitions could not be read: {error}"),
                "needed only for commands that name a print task",
            )
        })?;
    if reply.status != 200 {
        return Err(Failure::new(
            format!(
                "the app's print task definitions could not be read: {}",
                reply.describe()
            ),
            format!(
                "grant the application permission PrintTaskDefinition.ReadWrite.All (with admin \
                 consent) if commands name print tasks (pull printing); {guide}"
            ),
        ));
    }
    match reply.display_names().as_deref() {
        Some([]) | None => Err(Failure::new(
            "this app has no print task definition, so no printer can hold jobs for it",
            format!(
                "create one (POST /print/taskDefinitions) and a jobStarted trigger on each \
                 printer, if this worker aborts held jobs (pull printing); {guide}"
            ),
        )),
        Some(names) => Ok(format!(
            "{} task definition(s) of this app: {}",
            names.len(),
            names.join(", ")
        )),
    }
}

async fn token(settings: &Settings) -> Result<(AbortHandler, AccessToken), Failure> {
    let breaker = Arc::new(CircuitBreaker::new(&settings.pause));
    let handler = AbortHandler::from_settings(settings, breaker).map_err(|error| {
        Failure::new(
            format!("{error:#}"),
            "fix the credential named above (auth.*)",
        )
    })?;
    let tokens = handler.tokens();
    let key = tokens.credential_key();
    let token = tokens.token(None).await.map_err(|error| {
        let fix = match &error {
            AuthError::Refused { .. } => format!(
                "check auth.tenant_id, auth.client_id and {key} against the app registration; \
                 the AADSTS code in the message names the problem"
            ),
            AuthError::Credential(_) => format!("fix the file that {key} names"),
            AuthError::Unavailable(_) => format!(
                "check that {} is reachable from this host (DNS, proxy, firewall), and \
                 auth.authority or graph.cloud",
                settings.authority()
            ),
        };
        Failure::new(error, fix)
    })?;
    Ok((handler, token))
}

/// Whether the token's `roles` claim holds an application permission that can abort jobs,
/// and one that lets a paused worker probe Graph with a printer read.
fn permission(token: &AccessToken) -> Result<String, Failure> {
    let claims = TokenClaims::peek(token.bearer()).map_err(|error| {
        let fix = match error {
            ClaimsError::NotJwt => {
                "Microsoft Entra issues JWTs for Graph: check that auth.authority is the \
                 identity platform and auth.scope the Graph scope"
            }
            _ => "check that auth.authority is the Microsoft identity platform",
        };
        Failure::new(error, fix)
    })?;
    let held = if claims.roles.is_empty() {
        "it has no roles".to_owned()
    } else {
        format!("it holds {}", claims.roles.join(", "))
    };
    let missing = |wanted: &[&str], why: &str| {
        Failure::new(
            format!(
                "the token's roles claim holds none of {} ({held}){why}",
                wanted.join(", ")
            ),
            "add one of these Microsoft Graph application permissions to the app \
             registration and grant admin consent; the next token carries it",
        )
    };
    let abort = claims
        .abort_permission()
        .ok_or_else(|| missing(ABORT_PERMISSIONS, ""))?;
    let probe = claims.probe_permission().ok_or_else(|| {
        missing(
            PROBE_PERMISSIONS,
            "; a paused worker probes Graph by reading a printer, and without it never resumes",
        )
    })?;
    Ok(format!("roles claim holds {abort} and {probe}"))
}

/// The checklist as the operator reads it.
struct Checklist<W> {
    out: W,
}

impl Checklist<std::io::Stdout> {
    fn stdout() -> Self {
        Self {
            out: std::io::stdout(),
        }
    }
}

impl<W: Write> Checklist<W> {
    fn pass(&mut self, step: Step, detail: &str) {
        self.line(&format!(
            "✓ {:<13}  {}",
            step.label(),
            super::printable(detail)
        ));
    }

    /// Reports a problem that does not stop the worker, with its fix.
    fn warn(&mut self, step: Step, warning: &Failure) {
        self.line(&format!(
            "! {:<13}  {}",
            step.label(),
            super::printable(&warning.problem)
        ));
        self.line(&format!("  fix: {}", warning.fix));
    }

    /// Reports the failure, marks the steps after it as not run, and returns the exit code.
    fn fail(&mut self, step: Step, failure: Failure) -> ExitCode {
        self.line(&format!(
            "✗ {:<13}  {}",
            step.label(),
            super::printable(&failure.problem)
        ));
        self.line(&format!("  fix: {}", failure.fix));
        for later in STEPS.iter().skip_while(|s| **s != step).skip(1) {
            self.line(&format!("- {:<13}  not checked", later.label()));
        }
        if step == Step::Configuration {
            ExitCode::from(EXIT_CONFIG)
        } else {
            ExitCode::FAILURE
        }
    }

    fn line(&mut self, text: &str) {
        // A closed standard output (`check | head -1`) must not turn into a panic.
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checklist() -> Checklist<Vec<u8>> {
        Checklist { out: Vec::new() }
    }

    #[test]
    fn a_failure_names_the_fix_and_the_steps_not_checked() {
        let mut list = checklist();
        list.pass(Step::Configuration, "fine");
        let code = list.fail(Step::Topology, Failure::new("gone\u{1b}[2J", "make it"));
        assert_eq!(code, ExitCode::FAILURE);
        let text = String::from_utf8(list.out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "✓ configuration  fine",
                "✗ topology       gone\\u{1b}[2J",
                "  fix: make it",
                "- token          not checked",
                "- permission     not checked",
                "- pull printing  not checked",
            ]
        );
    }

    #[test]
    fn a_warning_names_its_fix_and_does_not_end_the_list() {
        let mut list = checklist();
        list.warn(
            Step::PullPrinting,
            &Failure::new("no definition", "create one"),
        );
        list.line("all checks passed");
        let text = String::from_utf8(list.out).expect("utf-8");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "! pull printing  no definition",
                "  fix: create one",
                "all checks passed"
            ]
        );
    }

    #[test]
    fn a_configuration_failure_exits_with_code_2() {
        let code = checklist().fail(Step::Configuration, Failure::new("bad", "fix"));
        assert_eq!(code, ExitCode::from(EXIT_CONFIG));
    }
}
