//! Abort commands: the wire format of the README's *Command (v1)* section (and
//! `schemas/abort-command.v1.schema.json`) parsed into a type that
//! can only hold valid values ("parse, don't validate").
//!
//! Everything here treats the message body as hostile: any byte sequence gives either an
//! [`AbortCommand`] or an [`InvalidCommand`] that says what was wrong, never a panic.

use chrono::{DateTime, Utc};

mod body;

use body::Body;

/// The largest command body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 1024;
/// The longest `printerId` or `printJobId`, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// The longest `commandId` or `tenantId`, in characters.
const MAX_TOKEN_CHARS: usize = 256;
/// The longest `jobUrl`, in characters: the Graph API's address and two ids fit many times.
pub const MAX_URL_CHARS: usize = 2048;
/// The Graph API a `jobUrl` is on unless told otherwise: the global cloud's, version 1.0.
const GLOBAL_GRAPH_API: &str = "https://graph.microsoft.com/v1.0";

/// A printer or print-job id: 1–128 characters of `[A-Za-z0-9_-]`, so it is safe in a URL
/// path segment even before encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > MAX_ID_CHARS {
            return Err(format!(
                "must be 1 to {MAX_ID_CHARS} characters long, is {}",
                value.chars().count()
            ));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "may hold only A-Z, a-z, 0-9, '-' and '_', found {bad:?}"
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a command is checked against besides its own shape: the tenants it may name (the
/// configured one and the allow-list), and the Graph API its `jobUrl` must be on.
#[derive(Debug, Clone)]
pub struct CommandRules {
    default_tenant: String,
    allowed: Vec<String>,
    /// Senders (`enqueue`) check the shape of a command, not which tenants a worker serves.
    unrestricted: bool,
    /// `graph.base_url` without a trailing slash, such as `https://graph.microsoft.com/v1.0`.
    graph_api: String,
}

impl Default for CommandRules {
    /// No tenant but the empty one, and the global cloud's Graph API.
    fn default() -> Self {
        Self {
            default_tenant: String::new(),
            allowed: Vec::new(),
            unrestricted: false,
            graph_api: GLOBAL_GRAPH_API.to_owned(),
        }
    }
}

impl CommandRules {
    /// The worker's rules: `graph_api` is `graph.base_url`, the tenants `auth.tenant_id` and
    /// `auth.allowed_tenants`.
    pub fn new(graph_api: &url::Url, default_tenant: &str, allowed: &[String]) -> Self {
        Self {
            default_tenant: default_tenant.to_owned(),
            allowed: allowed.to_vec(),
            unrestricted: false,
            graph_api: graph_api.as_str().trim_end_matches('/').to_owned(),
        }
    }

    /// Any tenant passes; `jobUrl` is still checked against `graph_api`.
    pub fn unrestricted(graph_api: &url::Url) -> Self {
        Self {
            unrestricted: true,
            ..Self::new(graph_api, "", &[])
        }
    }

    fn permits(&self, tenant: &str) -> bool {
        self.unrestricted
            || tenant.eq_ignore_ascii_case(&self.default_tenant)
            || self.allowed.iter().any(|t| t.eq_ignore_ascii_case(tenant))
    }
}

/// The print task that holds a command's job (pull printing), which the worker reports
/// finished once the job is aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintTask {
    pub definition_id: ResourceId,
    pub task_id: ResourceId,
}

/// A valid abort command.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortCommand {
    pub command_id: String,
    pub printer_id: ResourceId,
    pub print_job_id: ResourceId,
    pub reason: Option<String>,
    /// `None` means the configured `auth.tenant_id`.
    pub tenant_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// From `taskUrl`, or `taskDefinitionId` + `taskId`.
    pub task: Option<PrintTask>,
}

/// What is known about a command, valid or not: the identifying part of its outcome event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandSummary {
    pub command_id: String,
    pub printer_id: Option<String>,
    pub print_job_id: Option<String>,
    pub reason: Option<String>,
    pub tenant_id: Option<String>,
}

/// A command that cannot be carried out, with what could still be read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidCommand {
    pub summary: CommandSummary,
    pub problem: String,
}

impl AbortCommand {
    /// Parses a command body. `message_id` is the AMQP `message_id`, the fallback command id.
    pub fn parse(
        body: &[u8],
        message_id: Option<&str>,
        rules: &CommandRules,
    ) -> Result<Self, Box<InvalidCommand>> {
        let fallback_id = || {
            message_id
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        };
        let invalid = |summary: CommandSummary, problem: String| {
            Box::new(InvalidCommand { summary, problem })
        };
        if body.len() > MAX_BODY_BYTES {
            let summary = CommandSummary {
                command_id: fallback_id(),
                ..CommandSummary::default()
            };
            return Err(invalid(
                summary,
                format!(
                    "body is {} bytes, more than the {MAX_BODY_BYTES} allowed",
                    body.len()
                ),
            ));
        }
        let fields = match Body::parse(body) {
            Ok(Body::Object(fields)) => fields,
            Ok(Body::Other(kind)) => {
                let summary = CommandSummary {
                    command_id: fallback_id(),
                    ..CommandSummary::default()
                };
                return Err(invalid(
                    summary,
                    format!("body must be a JSON object, found {kind}"),
                ));
            }
            Err(error) => {
                let summary = CommandSummary {
                    command_id: fallback_id(),
                    ..CommandSummary::default()
                };
                return Err(invalid(summary, format!("body is not valid JSON: {error}")));
            }
        };

        let mut problems = Vec::new();
        // An empty commandId counts as absent, like an empty message_id.
        let command_id = note(
            &mut problems,
            fields.command_id.bounded("commandId", MAX_TOKEN_CHARS),
        )
        .filter(|id| !id.is_empty());
        let job_url = note(
            &mut problems,
            fields.job_url.bounded("jobUrl", MAX_URL_CHARS),
        );
        let task_url = note(
            &mut problems,
            fields.task_url.bounded("taskUrl", MAX_URL_CHARS),
        );
        let definition = note_required(
            &mut problems,
            fields.task_definition_id.string("taskDefinitionId"),
        );
        let task_id = note_required(&mut problems, fields.task_id.string("taskId"));
        let printer = note_required(&mut problems, fields.printer_id.string("printerId"));
        let job = note_required(&mut problems, fields.print_job_id.string("printJobId"));
        let reason = note(
            &mut problems,
            fields.reason.bounded("reason", MAX_REASON_CHARS),
        );
        let tenant = note(
            &mut problems,
            fields.tenant_id.bounded("tenantId", MAX_TOKEN_CHARS),
        );
        let expires = note(&mut problems, fields.expires_at.string("expiresAt"));

        let (printer_id, print_job_id) = match job_url {
            None => (
                required_id("printerId", printer, &mut problems),
                required_id("printJobId", job, &mut problems),
            ),
            Some(url) => {
                let given = (
                    optional_id("printerId", printer, &mut problems),
                    optional_id("printJobId", job, &mut problems),
                );
                match parse_job_url(url, &rules.graph_api) {
                    Err(problem) => {
                        problems.push(problem);
                        given
                    }
                    Ok(named) => {
                        for (field, given, named) in [
                            ("printerId", &given.0, &named.0),
                            ("printJobId", &given.1, &named.1),
                        ] {
                            if let Some(given) = given
                                && given != named
                            {
                                problems.push(format!(
                                    "{field} {given} disagrees with jobUrl, which names {named}"
                                ));
                            }
                        }
                        (Some(named.0), Some(named.1))
                    }
                }
            }
        };
        let task = print_task(
            task_url,
            definition,
            task_id,
            &rules.graph_api,
            &mut problems,
        );
        let expires_at = expires.and_then(|text| match DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some(time.with_timezone(&Utc)),
            Err(error) => {
                problems.push(format!(
                    "expiresAt {text:?} is not an RFC 3339 time: {error}"
                ));
                None
            }
        });
        if let Some(tenant) = tenant
            && !rules.permits(tenant)
        {
            problems.push(format!(
                "tenantId {tenant:?} is neither auth.tenant_id nor on auth.allowed_tenants"
            ));
        }

        let summary = CommandSummary {
            command_id: command_id.map_or_else(fallback_id, str::to_owned),
            printer_id: printer_id.as_ref().map(|id| id.0.clone()),
            print_job_id: print_job_id.as_ref().map(|id| id.0.clone()),
            reason: reason.map(str::to_owned),
            tenant_id: tenant.map(str::to_owned),
        };
        match (printer_id, print_job_id) {
            (Some(printer_id), Some(print_job_id)) if problems.is_empty() => Ok(Self {
                command_id: summary.command_id,
                printer_id,
                print_job_id,
                reason: summary.reason,
                tenant_id: summary.tenant_id,
                expires_at,
                task,
            }),
            _ => Err(invalid(summary, problems.join("; "))),
        }
    }

    pub fn summary(&self) -> CommandSummary {
        CommandSummary {
            command_id: self.command_id.clone(),
            printer_id: Some(self.printer_id.0.clone()),
            print_job_id: Some(self.print_job_id.0.clone()),
            reason: self.reason.clone(),
            tenant_id: self.tenant_id.clone(),
        }
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|deadline| now >= deadline)
    }
}

/// The value of a field, or `None` with its problem noted.
fn note<'a>(
    problems: &mut Vec<String>,
    result: Result<Option<&'a str>, String>,
) -> Option<&'a str> {
    result.unwrap_or_else(|problem| {
        problems.push(problem);
        None
    })
}

/// A required field as read: its value, absent, or of the wrong type (its problem noted).
enum Required<'a> {
    Value(&'a str),
    Absent,
    Noted,
}

/// The value of a required field, with a problem of its type noted.
fn note_required<'a>(
    problems: &mut Vec<String>,
    result: Result<Option<&'a str>, String>,
) -> Required<'a> {
    match result {
        Ok(Some(value)) => Required::Value(value),
        Ok(None) => Required::Absent,
        Err(problem) => {
            problems.push(problem);
            Required::Noted
        }
    }
}

/// The shape of a Graph resource URL that a command may name: literal segments, and two
/// ids that pass the [`ResourceId`] rules.
struct UrlShape {
    field: &'static str,
    /// What the URL names, for messages: "a print job's URL".
    what: &'static str,
    /// `[literal, literal, first id's name, literal, second id's name]` after the API.
    segments: [&'static str; 5],
}

const JOB_URL: UrlShape = UrlShape {
    field: "jobUrl",
    what: "a print job's URL",
    segments: ["print", "printers", "printerId", "jobs", "printJobId"],
};

const TASK_URL: UrlShape = UrlShape {
    field: "taskUrl",
    what: "a print task's URL",
    segments: [
        "print",
        "taskDefinitions",
        "taskDefinitionId",
        "tasks",
        "taskId",
    ],
};

/// The printer and the job that a `jobUrl` names: exactly
/// `{graph_api}/print/printers/{printerId}/jobs/{printJobId}`, on the configured Graph API and
/// nothing else, read as text so that nothing (a `..`, an encoded `/`) is resolved first.
/// The problem never quotes the URL.
pub fn parse_job_url(url: &str, graph_api: &str) -> Result<(ResourceId, ResourceId), String> {
    parse_api_url(url, graph_api, &JOB_URL)
}

/// The task definition and the task that a `taskUrl` names, by the rules of
/// [`parse_job_url`]: `{graph_api}/print/taskDefinitions/{taskDefinitionId}/tasks/{taskId}`.
pub fn parse_task_url(url: &str, graph_api: &str) -> Result<(ResourceId, ResourceId), String> {
    parse_api_url(url, graph_api, &TASK_URL)
}

fn parse_api_url(
    url: &str,
    graph_api: &str,
    shape: &UrlShape,
) -> Result<(ResourceId, ResourceId), String> {
    let field = shape.field;
    let [first, second, first_id, third, second_id] = shape.segments;
    let pattern = format!("{graph_api}/{first}/{second}/{{{first_id}}}/{third}/{{{second_id}}}");
    let rest = url
        .get(..graph_api.len())
        .filter(|head| head.eq_ignore_ascii_case(graph_api))
        .and_then(|_| url.get(graph_api.len()..))
        .ok_or_else(|| {
            format!("{field} must be on the configured Graph API: {pattern} (graph.base_url)")
        })?;
    if rest.contains(['?', '#']) {
        return Err(format!("{field} must have no query and no fragment"));
    }
    if rest.contains(['%', '\\']) {
        return Err(format!(
            "{field} must hold no percent-encoded characters and no backslash"
        ));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let ["", a, b, one, c, two] = segments.as_slice() else {
        return Err(format!("{field} must be {}: {pattern}", shape.what));
    };
    if [one, two]
        .iter()
        .any(|segment| **segment == "." || **segment == "..")
    {
        return Err(format!("{field} must hold no '.' or '..' segments"));
    }
    if (*a, *b, *c) != (first, second, third) {
        return Err(format!("{field} must be {}: {pattern}", shape.what));
    }
    let one =
        ResourceId::parse(one).map_err(|problem| format!("{field}'s {first_id} {problem}"))?;
    let two =
        ResourceId::parse(two).map_err(|problem| format!("{field}'s {second_id} {problem}"))?;
    Ok((one, two))
}

/// The command's print task, from `taskUrl` or the two ids (which must agree with it when
/// both are given), with any problem noted.
fn print_task(
    url: Option<&str>,
    definition: Required<'_>,
    task: Required<'_>,
    graph_api: &str,
    problems: &mut Vec<String>,
) -> Option<PrintTask> {
    let given = (
        optional_id("taskDefinitionId", definition, problems),
        optional_id("taskId", task, problems),
    );
    let Some(url) = url else {
        return match given {
            (Some(definition_id), Some(task_id)) => Some(PrintTask {
                definition_id,
                task_id,
            }),
            (None, None) => None,
            _ => {
                problems.push(
                    "taskDefinitionId and taskId go together: give both, or taskUrl".to_owned(),
                );
                None
            }
        };
    };
    let (definition_id, task_id) = parse_task_url(url, graph_api)
        .map_err(|problem| problems.push(problem))
        .ok()?;
    for (field, given, named) in [
        ("taskDefinitionId", &given.0, &definition_id),
        ("taskId", &given.1, &task_id),
    ] {
        if let Some(given) = given
            && given != named
        {
            problems.push(format!(
                "{field} {given} disagrees with taskUrl, which names {named}"
            ));
        }
    }
    Some(PrintTask {
        definition_id,
        task_id,
    })
}

/// An id that may be absent: `None` without a problem, or with its problem noted.
fn optional_id(field: &str, value: Required<'_>, problems: &mut Vec<String>) -> Option<ResourceId> {
    match value {
        Required::Value(value) => ResourceId::parse(value)
            .map_err(|problem| problems.push(format!("{field} {problem}")))
            .ok(),
        Required::Absent | Required::Noted => None,
    }
}

/// An id that must be there: [`optional_id`], with its absence a problem too.
fn required_id(field: &str, value: Required<'_>, problems: &mut Vec<String>) -> Option<ResourceId> {
    if let Required::Absent = value {
        problems.push(format!("{field} is required"));
    }
    optional_id(field, value, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> CommandRules {
        let graph_api = GLOBAL_GRAPH_API.parse().expect("a URL");
        CommandRules::new(&graph_api, "home", &["customer-a".to_owned()])
    }

    fn parse(body: &str) -> Result<AbortCommand, Box<InvalidCommand>> {
        AbortCommand::parse(body.as_bytes(), Some("msg-1"), &tenants())
    }

    #[test]
    fn a_full_command_parses() {
        let command = parse(
            r#"{"printerId":"016b5565-3bbf","printJobId":"5182","reason":"policy",
                "commandId":"c-1","tenantId":"customer-a","expiresAt":"2026-11-30T12:00:00+01:00",
                "somethingNew":[1,2]}"#,
        )
        .expect("valid");
        assert_eq!(command.command_id, "c-1");
        assert_eq!(command.printer_id.as_str(), "016b5565-3bbf");
        assert_eq!(command.print_job_id.as_str(), "5182");
        assert_eq!(command.reason.as_deref(), Some("policy"));
        assert_eq!(command.tenant_id.as_deref(), Some("customer-a"));
        assert_eq!(
            command.expires_at.map(|t| t.to_rfc3339()),
            Some("2026-11-30T11:00:00+00:00".to_string())
        );
    }

    #[test]
    fn command_id_falls_back_to_message_id_then_a_uuid() {
        let command = parse(r#"{"printerId":"p","printJobId":"j"}"#).expect("valid");
        assert_eq!(command.command_id, "msg-1");
        let command =
            AbortCommand::parse(br#"{"printerId":"p","printJobId":"j"}"#, None, &tenants())
                .expect("valid");
        assert!(uuid::Uuid::parse_str(&command.command_id).is_ok());
        let command = parse(r#"{"printerId":"p","printJobId":"j","commandId":""}"#).expect("valid");
        assert_eq!(
            command.command_id, "msg-1",
            "an empty commandId counts as absent"
        );
    }

    #[test]
    fn invalid_commands_say_why_and_keep_what_was_readable() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not valid JSON"),
            ("[1,2]", "must be a JSON object"),
            (r#"{"printJobId":"j"}"#, "printerId is required"),
            (
                r#"{"printerId":"../x","printJobId":"j"}"#,
                "printerId may hold only",
            ),
            (
                r#"{"printerId":"p","printJobId":""}"#,
                "printJobId must be 1 to 128",
            ),
            (
                r#"{"printerId":5,"printJobId":"j"}"#,
                "printerId must be a string",
            ),
            (
                r#"{"printerId":"p","printJobId":"j","expiresAt":"tomorrow"}"#,
                "not an RFC 3339 time",
            ),
            (
                r#"{"printerId":"p","printJobId":"j","tenantId":"stranger"}"#,
                "neither auth.tenant_id",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body).expect_err(body);
            assert!(
                error.problem.contains(expected),
                "{body}: {:?} lacks {expected:?}",
                error.problem
            );
            assert_eq!(error.summary.command_id, "msg-1");
        }
        let error =
            parse(r#"{"printerId":"p","printJobId":"a/b","commandId":"c"}"#).expect_err("slash");
        assert_eq!(error.summary.printer_id.as_deref(), Some("p"));
        assert_eq!(error.summary.print_job_id, None);
        assert_eq!(error.summary.command_id, "c");
    }

    #[test]
    fn limits_are_enforced_at_their_edges() {
        let id = "a".repeat(MAX_ID_CHARS);
        assert!(parse(&format!(r#"{{"printerId":"{id}","printJobId":"j"}}"#)).is_ok());
        assert!(parse(&format!(r#"{{"printerId":"{id}a","printJobId":"j"}}"#)).is_err());
        let reason = "é".repeat(MAX_REASON_CHARS);
        assert!(
            parse(&format!(
                r#"{{"printerId":"p","printJobId":"j","reason":"{reason}"}}"#
            ))
            .is_ok()
        );
        assert!(
            parse(&format!(
                r#"{{"printerId":"p","printJobId":"j","reason":"{reason}x"}}"#
            ))
            .is_err()
        );
        let padding = " ".repeat(MAX_BODY_BYTES);
        let error = parse(&format!(r#"{{"printerId":"p","printJobId":"j"}}{padding}"#))
            .expect_err("too large");
        assert!(error.problem.contains("more than the 65536 allowed"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let samples: [&[u8]; 5] = [
            b"",
            b"\xff\xfe\x00",
            b"{",
            b"{\"printerId\":\"\xc3\x28\"}",
            b"null",
        ];
        for body in samples {
            assert!(AbortCommand::parse(body, None, &tenants()).is_err());
        }
    }

    #[test]
    fn expiry_is_checked_against_the_given_clock() {
        let command =
            parse(r#"{"printerId":"p","printJobId":"j","expiresAt":"2026-01-01T00:00:00Z"}"#)
                .expect("valid");
        let before = DateTime::parse_from_rfc3339("2025-12-31T23:59:59Z").expect("time");
        assert!(!command.is_expired(before.with_timezone(&Utc)));
        let after = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("time");
        assert!(command.is_expired(after.with_timezone(&Utc)));
    }

    const PRINTER: &str = "016b5565-3bbf-4067-b9ff-4d68167eb1a6";

    fn job_url(path: &str) -> String {
        format!("{GLOBAL_GRAPH_API}{path}")
    }

    #[test]
    fn a_job_url_names_the_printer_and_the_job() {
        let url = job_url(&format!("/print/printers/{PRINTER}/jobs/5182"));
        let command = parse(&serde_json::json!({"jobUrl": url}).to_string()).expect("valid");
        assert_eq!(command.printer_id.as_str(), PRINTER);
        assert_eq!(command.print_job_id.as_str(), "5182");
        // The same ids given twice agree.
        let both = serde_json::json!({"jobUrl": url, "printerId": PRINTER, "printJobId": "5182"});
        assert_eq!(parse(&both.to_string()).expect("valid"), command);
    }

    #[test]
    fn a_job_url_is_only_the_configured_graph_apis_print_job_path() {
        let good = format!("/print/printers/{PRINTER}/jobs/5182");
        let cases: &[(String, &str)] = &[
            (
                format!("https://evil.example.com/v1.0{good}"),
                "configured Graph API",
            ),
            (
                format!("https://graph.microsoft.us/v1.0{good}"),
                "configured Graph API",
            ),
            (
                format!("http://graph.microsoft.com/v1.0{good}"),
                "configured Graph API",
            ),
            (
                format!("https://graph.microsoft.com/beta{good}"),
                "configured Graph API",
            ),
            (
                format!("https://graph.microsoft.com.evil.example/v1.0{good}"),
                "configured Graph API",
            ),
            (job_url(&format!("{good}/tasks")), "print job's URL"),
            (
                job_url(&format!("/print/printers/{PRINTER}/jobs/..")),
                "'..' segments",
            ),
            (job_url("/print/printers/../jobs/5182"), "'..' segments"),
            (
                job_url(&format!("/print/printers/{PRINTER}%2Fjobs%2F1/jobs/5182")),
                "percent-encoded",
            ),
            (job_url(&format!("{good}?$select=id")), "no query"),
            (job_url(&format!("{good}#top")), "no query"),
            (
                job_url(&format!("/print/printers/{PRINTER}/jobs/")),
                "printJobId must be 1 to",
            ),
            (
                job_url("/print/printers/a b/jobs/1"),
                "printerId may hold only",
            ),
            (
                job_url(&format!("/print/printers/{PRINTER}/jobs/5182/")),
                "print job's URL",
            ),
            (
                job_url(&format!("//print/printers/{PRINTER}/jobs/5182")),
                "print job's URL",
            ),
            ("graph.microsoft.com".to_owned(), "configured Graph API"),
            (String::new(), "configured Graph API"),
        ];
        for (url, says) in cases {
            let problem = parse(&serde_json::json!({"jobUrl": url}).to_string())
                .expect_err(url)
                .problem;
            assert!(problem.contains(says), "{url}: {problem}");
        }
    }

    #[test]
    fn a_command_names_its_print_task_by_url_or_by_both_ids() {
        let task_url = job_url("/print/taskDefinitions/def-1/tasks/task-7");
        let base = serde_json::json!({"printerId": PRINTER, "printJobId": "1"});
        let with = |extra: serde_json::Value| {
            let mut body = base.clone();
            for (key, value) in extra.as_object().expect("an object") {
                body[key] = value.clone();
            }
            parse(&body.to_string())
        };
        let expected = Some(PrintTask {
            definition_id: ResourceId::parse("def-1").expect("an id"),
            task_id: ResourceId::parse("task-7").expect("an id"),
        });
        assert_eq!(
            with(serde_json::json!({"taskUrl": task_url}))
                .expect("valid")
                .task,
            expected
        );
        let by_ids = with(serde_json::json!({"taskDefinitionId": "def-1", "taskId": "task-7"}));
        assert_eq!(by_ids.expect("valid").task, expected);
        assert_eq!(with(serde_json::json!({})).expect("valid").task, None);
        for (extra, says) in [
            (serde_json::json!({"taskId": "task-7"}), "go together"),
            (
                serde_json::json!({"taskUrl": task_url, "taskId": "task-8"}),
                "taskId task-8 disagrees with taskUrl",
            ),
            (
                serde_json::json!({"taskUrl": job_url("/print/printers/p/jobs/1")}),
                "taskUrl must be a print task's URL",
            ),
            (
                serde_json::json!({"taskUrl": "https://evil.example/v1.0/print/taskDefinitions/d/tasks/t"}),
                "taskUrl must be on the configured Graph API",
            ),
        ] {
            let problem = with(extra.clone()).expect_err("invalid").problem;
            assert!(problem.contains(says), "{extra}: {problem}");
        }
    }

    #[test]
    fn a_job_url_and_ids_that_disagree_are_invalid() {
        let url = job_url(&format!("/print/printers/{PRINTER}/jobs/5182"));
        let body = serde_json::json!({"jobUrl": url, "printJobId": "9999"}).to_string();
        let invalid = parse(&body).expect_err("they disagree");
        assert!(
            invalid
                .problem
                .contains("printJobId 9999 disagrees with jobUrl, which names 5182"),
            "{}",
            invalid.problem
        );
    }

    #[test]
    fn a_job_url_is_read_against_the_configured_graph_api() {
        let sim: url::Url = "http://127.0.0.1:8080/v1.0/".parse().expect("a URL");
        let rules = CommandRules::new(&sim, "home", &[]);
        let body =
            serde_json::json!({"jobUrl": "http://127.0.0.1:8080/v1.0/print/printers/p/jobs/j"});
        let command = AbortCommand::parse(body.to_string().as_bytes(), None, &rules)
            .expect("on the configured API");
        assert_eq!(command.print_job_id.as_str(), "j");
        let global = serde_json::json!({"jobUrl": job_url("/print/printers/p/jobs/j")});
        assert!(AbortCommand::parse(global.to_string().as_bytes(), None, &rules).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> + Clone {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                ".{0,40}".prop_map(serde_json::Value::from),
                "[A-Za-z0-9_-]{0,130}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(".{0,8}", inner, 0..4)
                        .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
                ]
            })
        }

        fn command_object() -> impl Strategy<Value = serde_json::Value> {
            let field = || prop::option::of(json_value());
            let job_url = prop::option::of(prop_oneof![
                json_value(),
                url_like().prop_map(serde_json::Value::from),
            ]);
            (
                field(),
                field(),
                field(),
                field(),
                field(),
                field(),
                job_url,
            )
                .prop_map(|(printer, job, reason, id, tenant, expires, job_url)| {
                    let mut object = serde_json::Map::new();
                    for (name, value) in [
                        ("jobUrl", job_url),
                        ("printerId", printer),
                        ("printJobId", job),
                        ("reason", reason),
                        ("commandId", id),
                        ("tenantId", tenant),
                        ("expiresAt", expires),
                    ] {
                        if let Some(value) = value {
                            object.insert(name.to_owned(), value);
                        }
                    }
                    serde_json::Value::Object(object)
                })
        }

        /// Strings shaped like job URLs: the configured API or a near miss, then segments
        /// drawn from ids, dots, encodings, slashes and query characters.
        fn url_like() -> impl Strategy<Value = String> {
            let head = prop_oneof![
                Just(GLOBAL_GRAPH_API.to_owned()),
                Just("https://graph.microsoft.com/beta".to_owned()),
                Just("http://graph.microsoft.com/v1.0".to_owned()),
                Just("https://GRAPH.microsoft.com/V1.0".to_owned()),
                "https://[a-z.]{0,20}/v1.0",
            ];
            let segment = prop_oneof![
                Just("print".to_owned()),
                Just("printers".to_owned()),
                Just("jobs".to_owned()),
                Just("..".to_owned()),
                Just(".".to_owned()),
                Just("%2F".to_owned()),
                Just(String::new()),
                "[A-Za-z0-9_-]{1,10}",
                "[A-Za-z0-9_?#%./\\\\-]{0,10}",
            ];
            (head, prop::collection::vec(segment, 0..8))
                .prop_map(|(head, segments)| format!("{head}/{}", segments.join("/")))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn a_job_url_is_accepted_only_as_the_configured_print_job_path(
                url in prop_oneof![url_like(), ".{0,80}"]
            ) {
                if let Ok((printer, job)) = parse_job_url(&url, GLOBAL_GRAPH_API) {
                    let expected = format!(
                        "{GLOBAL_GRAPH_API}/print/printers/{printer}/jobs/{job}"
                    );
                    prop_assert!(url.eq_ignore_ascii_case(&expected), "{url}");
                    for id in [printer.as_str(), job.as_str()] {
                        prop_assert!(ResourceId::parse(id).is_ok());
                    }
                }
            }

            #[test]
            fn any_bytes_give_a_command_or_a_reason(body in prop::collection::vec(any::<u8>(), 0..512)) {
                match AbortCommand::parse(&body, Some("m"), &tenants()) {
                    Ok(command) => prop_assert!(!command.command_id.is_empty()),
                    Err(invalid) => prop_assert!(!invalid.problem.is_empty()),
                }
            }

            #[test]
            fn any_json_object_gives_a_valid_command_or_a_reason(object in command_object()) {
                let body = serde_json::to_vec(&object).expect("serializable");
                match AbortCommand::parse(&body, None, &tenants()) {
                    Ok(command) => {
                        // Whatever is accepted is safe for a URL path segment.
                        for id in [command.printer_id.as_str(), command.print_job_id.as_str()] {
                            prop_assert!(!id.is_empty() && id.len() <= MAX_ID_CHARS);
                            prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                        }
                        prop_assert!(command.reason.as_ref().is_none_or(|r| r.chars().count() <= MAX_REASON_CHARS));
                    }
                    Err(invalid) => prop_assert!(!invalid.problem.is_empty()),
                }
            }
        }
    }
}
