//! Outcomes and their CloudEvents: the README's *Outcome event (v1)* and
//! `schemas/outcome-event.v1.schema.json`.
//!
//! [`Outcome`] is what the handler decided; [`OutcomeEvent`] is the message that tells
//! the sending system about it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::command::CommandSummary;

/// The CloudEvents `source` of every event.
pub const EVENT_SOURCE: &str = "print-abort-worker";
/// The AMQP content type of outcome events.
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Bytes of a typical event's JSON (a success with ids of a few dozen characters).
const EVENT_SIZE_HINT: usize = 1024;

/// Written into events by [`OutcomeKind::as_str`]; serde's form is the tests' oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(test, derive(Serialize), serde(rename_all = "lowercase"))]
pub enum OutcomeKind {
    Succeeded,
    Failed,
    Rejected,
}

impl OutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a command did not succeed. Written into events by [`ErrorKind::as_str`]; serde's
/// form is the tests' oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(test, derive(Serialize), serde(rename_all = "lowercase"))]
pub enum ErrorKind {
    /// The command itself was invalid; Graph was never called.
    Invalid,
    /// Graph refused the abort with a reply that retrying cannot change.
    Permanent,
    /// Transient failures outlasted the retry budget.
    Exhausted,
    /// The command passed its `expiresAt`.
    Expired,
    /// The credentials or the app's permissions were refused.
    Unauthorized,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::Expired => "expired",
            Self::Unauthorized => "unauthorized",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize))]
pub struct OutcomeError {
    pub kind: ErrorKind,
    /// The Graph error code, when Graph gave one.
    pub code: Option<String>,
    pub message: String,
}

/// How a command ended. Each variant holds only what that ending can have: a success has
/// no error, a failure always has one, and a rejection is always `invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Succeeded {
        /// The job was found already aborted (a retry after a lost reply, or a duplicate).
        already_aborted: bool,
    },
    Failed(OutcomeError),
    Rejected(OutcomeError),
}

/// The result of handling one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    ending: Ending,
    /// Graph abort calls made.
    pub attempts: u32,
    /// Status of the last Graph reply, if any.
    pub http_status: Option<u16>,
    /// `request-id` of the last Graph reply, to quote to Microsoft support.
    pub graph_request_id: Option<String>,
    /// What became of the command's print task, when it named one (boxed: most commands
    /// name none, and an outcome is moved through every layer).
    pub task: Option<Box<TaskReport>>,
}

/// What became of a command's print task. The abort's own outcome does not depend on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    pub task_definition_id: String,
    pub task_id: String,
    /// Whether the task now has the state the worker reports it in (set by the worker, or
    /// found finished already); `false` when the abort did not succeed (the task is left
    /// to the app) or the update failed.
    pub updated: bool,
    /// The task's state, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why the update failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl TaskError {
    pub fn new(message: impl Into<String>, http_status: Option<u16>, code: Option<String>) -> Self {
        Self {
            message: crate::remote::message(message),
            http_status,
            code,
        }
    }
}

impl Outcome {
    pub fn succeeded(attempts: u32, http_status: u16, request_id: Option<String>) -> Self {
        Self {
            ending: Ending::Succeeded {
                already_aborted: false,
            },
            attempts,
            http_status: Some(http_status),
            graph_request_id: request_id,
            task: None,
        }
    }

    /// Graph refused the abort with `http_status`, and the job turned out to be aborted
    /// already: a success.
    pub fn already_aborted(attempts: u32, http_status: u16, request_id: Option<String>) -> Self {
        Self {
            ending: Ending::Succeeded {
                already_aborted: true,
            },
            ..Self::succeeded(attempts, http_status, request_id)
        }
    }

    /// A command that reached Graph (or tried to) and did not succeed. `kind` is never
    /// [`ErrorKind::Invalid`], which [`Self::rejected`] stands for.
    pub fn failed(attempts: u32, kind: ErrorKind, message: impl Into<String>) -> Self {
        debug_assert_ne!(kind, ErrorKind::Invalid, "an invalid command is rejected");
        Self {
            ending: Ending::Failed(OutcomeError::new(kind, message)),
            attempts,
            http_status: None,
            graph_request_id: None,
            task: None,
        }
    }

    /// The command itself was invalid; Graph was never called.
    pub fn rejected(problem: impl Into<String>) -> Self {
        Self {
            ending: Ending::Rejected(OutcomeError::new(ErrorKind::Invalid, problem)),
            attempts: 0,
            http_status: None,
            graph_request_id: None,
            task: None,
        }
    }

    /// Records the Graph reply this outcome came from.
    pub fn with_reply(mut self, http_status: u16, request_id: Option<String>) -> Self {
        self.http_status = Some(http_status);
        self.graph_request_id = request_id;
        self
    }

    /// Puts an explanation before a failure's message, "{why}; …", where the bound on the
    /// message's length cannot cut it off.
    pub fn with_explanation(mut self, why: &str) -> Self {
        if let Ending::Failed(error) = &mut self.ending {
            error.message = crate::remote::message(format!("{why}; {}", error.message));
        }
        self
    }

    /// Records Graph's error code on a failure.
    pub fn with_code(mut self, code: Option<String>) -> Self {
        if let Ending::Failed(error) = &mut self.ending {
            error.code = code;
        }
        self
    }

    pub fn kind(&self) -> OutcomeKind {
        match self.ending {
            Ending::Succeeded { .. } => OutcomeKind::Succeeded,
            Ending::Failed(_) => OutcomeKind::Failed,
            Ending::Rejected(_) => OutcomeKind::Rejected,
        }
    }

    pub fn error(&self) -> Option<&OutcomeError> {
        match &self.ending {
            Ending::Succeeded { .. } => None,
            Ending::Failed(error) | Ending::Rejected(error) => Some(error),
        }
    }

    pub fn error_kind(&self) -> Option<ErrorKind> {
        self.error().map(|error| error.kind)
    }

    pub fn is_already_aborted(&self) -> bool {
        matches!(
            self.ending,
            Ending::Succeeded {
                already_aborted: true
            }
        )
    }
}

impl OutcomeError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        // Messages quote Graph and the token endpoint: bounded, so an event stays small and
        // its dead-letter header fits one frame.
        Self {
            kind,
            code: None,
            message: crate::remote::message(message),
        }
    }
}

/// A CloudEvents 1.0 structured-mode event reporting one outcome. Its JSON is written by
/// [`OutcomeEvent::to_json`]; serde's derived form, which that must equal, is kept for the
/// tests that check it does.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct OutcomeEvent {
    // The fields written into the JSON as they are (not escaped) are private: only
    // `new` sets them, from the worker's own constants, id and times.
    specversion: &'static str,
    #[cfg_attr(test, serde(rename = "type"))]
    event_type: &'static str,
    source: &'static str,
    id: String,
    time: String,
    /// Left out, not null, when the ids could not be read: CloudEvents attributes are
    /// either absent or non-empty strings.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub subject: Option<String>,
    datacontenttype: &'static str,
    pub data: OutcomeData,
}

#[derive(Debug, Clone)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
pub struct OutcomeData {
    pub command_id: String,
    pub printer_id: Option<String>,
    pub print_job_id: Option<String>,
    pub reason: Option<String>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub tenant_id: Option<String>,
    pub outcome: OutcomeKind,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub graph_request_id: Option<String>,
    pub already_aborted: bool,
    pub error: Option<OutcomeError>,
    /// Present when the command named its print task.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub task: Option<Box<TaskReport>>,
    // Written as they are, like the event's own attributes: only `OutcomeEvent::new` sets
    // them, from times it formats.
    received_at: String,
    completed_at: String,
    pub duration_ms: u64,
}

impl OutcomeEvent {
    pub fn new(
        command: CommandSummary,
        outcome: Outcome,
        received_at: DateTime<Utc>,
        completed_at: DateTime<Utc>,
    ) -> Self {
        let subject = match (&command.printer_id, &command.print_job_id) {
            (Some(printer), Some(job)) => Some(format!("printers/{printer}/jobs/{job}")),
            _ => None,
        };
        let duration_ms = (completed_at - received_at)
            .num_milliseconds()
            .try_into()
            .unwrap_or(0);
        let kind = outcome.kind();
        let already_aborted = outcome.is_already_aborted();
        let error = outcome.error().cloned();
        let completed = rfc3339(completed_at);
        Self {
            specversion: "1.0",
            event_type: routing_key(kind),
            source: EVENT_SOURCE,
            id: uuid::Uuid::new_v4().to_string(),
            time: completed.clone(),
            subject,
            datacontenttype: "application/json",
            data: OutcomeData {
                command_id: command.command_id,
                printer_id: command.printer_id,
                print_job_id: command.print_job_id,
                reason: command.reason,
                tenant_id: command.tenant_id,
                outcome: kind,
                attempts: outcome.attempts,
                http_status: outcome.http_status,
                graph_request_id: outcome.graph_request_id,
                already_aborted,
                error,
                task: outcome.task,
                received_at: rfc3339(received_at),
                completed_at: completed,
                duration_ms,
            },
        }
    }

    pub fn outcome(&self) -> OutcomeKind {
        self.data.outcome
    }

    /// The event's id, also its AMQP `message_id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The CloudEvents type, also the routing key: `printjob.abort.<outcome>`.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// The event's JSON: the keys and the worker's own values written as they are, and
    /// every text that came from outside (ids, reason, Graph's request id, messages)
    /// through serde_json, which escapes it. The derived serialisation spent 8 900
    /// instructions per command, most of them scanning 21 fixed keys and 7 fixed values for
    /// characters to escape (docs/BENCHMARKS.md); the tests check both give the same bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized for a typical event, so the buffer is allocated once rather than grown.
        let mut json = Vec::with_capacity(EVENT_SIZE_HINT);
        let data = &self.data;
        let out = &mut json;
        own(out, b"{\"specversion\":", self.specversion);
        own(out, b",\"type\":", self.event_type);
        own(out, b",\"source\":", self.source);
        own(out, b",\"id\":", &self.id);
        own(out, b",\"time\":", &self.time);
        if let Some(subject) = &self.subject {
            serialized(out, b",\"subject\":", subject);
        }
        own(out, b",\"datacontenttype\":", self.datacontenttype);
        serialized(out, b",\"data\":{\"commandId\":", &data.command_id);
        serialized(out, b",\"printerId\":", &data.printer_id);
        serialized(out, b",\"printJobId\":", &data.print_job_id);
        serialized(out, b",\"reason\":", &data.reason);
        if let Some(tenant) = &data.tenant_id {
            serialized(out, b",\"tenantId\":", tenant);
        }
        own(out, b",\"outcome\":", data.outcome.as_str());
        serialized(out, b",\"attempts\":", &data.attempts);
        serialized(out, b",\"httpStatus\":", &data.http_status);
        serialized(out, b",\"graphRequestId\":", &data.graph_request_id);
        serialized(out, b",\"alreadyAborted\":", &data.already_aborted);
        match &data.error {
            None => out.extend_from_slice(b",\"error\":null"),
            Some(error) => {
                own(out, b",\"error\":{\"kind\":", error.kind.as_str());
                serialized(out, b",\"code\":", &error.code);
                serialized(out, b",\"message\":", &error.message);
                out.push(b'}');
            }
        }
        if let Some(task) = &data.task {
            serialized(out, b",\"task\":", task);
        }
        own(out, b",\"receivedAt\":", &data.received_at);
        own(out, b",\"completedAt\":", &data.completed_at);
        serialized(out, b",\"durationMs\":", &data.duration_ms);
        out.extend_from_slice(b"}}");
        json
    }
}

/// Appends `key` (with the separator before it) and `value`, one of the worker's own texts
/// (a constant, the event id, a time) that holds nothing to escape, quoted as it is.
fn own(json: &mut Vec<u8>, key: &[u8], value: &str) {
    json.extend_from_slice(key);
    json.push(b'"');
    json.extend_from_slice(value.as_bytes());
    json.push(b'"');
}

/// Appends `key` (with the separator before it) and `value` as serde_json writes it: text
/// escaped, `None` as `null`, numbers and booleans as they are.
fn serialized(json: &mut Vec<u8>, key: &[u8], value: &(impl Serialize + ?Sized)) {
    json.extend_from_slice(key);
    // Only a writer's I/O error or a map with non-text keys can fail serialisation; a
    // `Vec` cannot fail, and no value written here is a map.
    serde_json::to_writer(json, value).expect("a value of an outcome event serializes");
}

/// The routing key and CloudEvents type of an outcome: `printjob.abort.<outcome>`.
pub fn routing_key(kind: OutcomeKind) -> &'static str {
    match kind {
        OutcomeKind::Succeeded => "printjob.abort.succeeded",
        OutcomeKind::Failed => "printjob.abort.failed",
        OutcomeKind::Rejected => "printjob.abort.rejected",
    }
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_matches_the_spec_shape() {
        let received = Utc::now();
        let completed = received + chrono::Duration::milliseconds(41);
        let command = CommandSummary {
            command_id: "c-1".into(),
            printer_id: Some("p".into()),
            print_job_id: Some("5182".into()),
            reason: Some("policy".into()),
            tenant_id: None,
        };
        let event = OutcomeEvent::new(
            command,
            Outcome::succeeded(1, 204, Some("req".into())),
            received,
            completed,
        );
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).expect("json");
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "printjob.abort.succeeded");
        assert_eq!(json["source"], "print-abort-worker");
        assert_eq!(json["subject"], "printers/p/jobs/5182");
        assert_eq!(json["datacontenttype"], "application/json");
        let data = &json["data"];
        assert_eq!(data["commandId"], "c-1");
        assert_eq!(data["outcome"], "succeeded");
        assert_eq!(data["attempts"], 1);
        assert_eq!(data["httpStatus"], 204);
        assert_eq!(data["graphRequestId"], "req");
        assert_eq!(data["alreadyAborted"], false);
        assert_eq!(data["error"], serde_json::Value::Null);
        assert_eq!(data["durationMs"], 41);
        assert!(data.get("tenantId").is_none());
    }

    /// An outcome of each ending, from the generated `pick` and texts.
    fn outcome_of(pick: u8, text: String, code: Option<String>, task: bool) -> Outcome {
        let mut outcome = match pick % 4 {
            0 => Outcome::succeeded(1, 204, Some(text)),
            1 => Outcome::already_aborted(2, 409, None),
            2 => Outcome::failed(3, ErrorKind::Permanent, text)
                .with_code(code)
                .with_reply(404, Some("r\"q".into())),
            _ => Outcome::rejected(text),
        };
        if task {
            outcome.task = Some(Box::new(TaskReport {
                task_definition_id: "d".into(),
                task_id: "t\u{1}".into(),
                updated: pick.is_multiple_of(2),
                state: Some("completed".into()),
                error: pick
                    .is_multiple_of(3)
                    .then(|| TaskError::new("no\n", Some(403), None)),
            }));
        }
        outcome
    }

    proptest::proptest! {
        /// The hand-written JSON is byte for byte what serde_json's derived serialisation
        /// writes, whatever text (quotes, control characters, any Unicode) the command and
        /// Graph put into it.
        #[test]
        fn to_json_writes_what_serde_derives(
            command_id in "\\PC{0,20}|[\"\\\\\u{0}-\u{1f}]{1,4}",
            printer_id in proptest::option::of("\\PC{0,12}"),
            print_job_id in proptest::option::of("[A-Za-z0-9_\"-]{1,12}"),
            reason in proptest::option::of("\\PC{0,40}"),
            tenant_id in proptest::option::of("\\PC{0,12}"),
            text in "\\PC{0,40}|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}]{1,6}",
            code in proptest::option::of("\\PC{0,12}"),
            pick in 0u8..12,
            task: bool,
            millis in 0i64..100_000,
        ) {
            let received = Utc::now();
            let command = CommandSummary {
                command_id,
                printer_id,
                print_job_id,
                reason,
                tenant_id,
            };
            let event = OutcomeEvent::new(
                command,
                outcome_of(pick, text, code, task),
                received,
                received + chrono::Duration::milliseconds(millis),
            );
            let derived = serde_json::to_vec(&event).expect("derived serialisation");
            let written = event.to_json();
            proptest::prop_assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&derived)
            );
        }
    }

    #[test]
    fn rejected_events_carry_the_invalid_kind_and_null_ids() {
        let now = Utc::now();
        let command = CommandSummary {
            command_id: "c".into(),
            ..CommandSummary::default()
        };
        let event = OutcomeEvent::new(command, Outcome::rejected("bad"), now, now);
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).expect("json");
        assert_eq!(json["type"], "printjob.abort.rejected");
        assert!(json.get("subject").is_none(), "absent, not null");
        assert_eq!(json["data"]["printerId"], serde_json::Value::Null);
        assert_eq!(json["data"]["error"]["kind"], "invalid");
        assert_eq!(json["data"]["error"]["message"], "bad");
        assert_eq!(json["data"]["attempts"], 0);
    }
}
