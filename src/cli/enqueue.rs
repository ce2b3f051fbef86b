//! `print-abort-worker enqueue`: send one command (optionally waiting for its outcome) or a
//! JSON Lines file of commands, each with a publisher confirm.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::PublisherConfirm;

use crate::cli::{
    EventStream, ToolError, command_properties, confirm_channel, confirmed, connect, send_command,
};
use crate::command::{AbortCommand, CommandRules};
use crate::config::Settings;

/// Confirms awaited together when sending a file: enough to keep the broker busy, few
/// enough that an interruption leaves a small, known window.
const CONFIRM_WINDOW: usize = 256;

/// One command to send.
#[derive(Debug, Clone, Default)]
pub struct OneCommand {
    pub printer: String,
    pub job: String,
    pub reason: Option<String>,
    pub command_id: Option<String>,
    pub tenant: Option<String>,
    pub expires_in: Option<Duration>,
}

impl OneCommand {
    /// The command's JSON body, checked by the same parser the worker uses.
    pub fn body(&self) -> Result<(AbortCommand, Vec<u8>), ToolError> {
        let command_id = self
            .command_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut body = serde_json::json!({
            "printerId": self.printer,
            "printJobId": self.job,
            "commandId": command_id,
        });
        if let Some(reason) = &self.reason {
            body["reason"] = reason.as_str().into();
        }
        if let Some(tenant) = &self.tenant {
            body["tenantId"] = tenant.as_str().into();
        }
        if let Some(expires_in) = self.expires_in {
            let at = chrono::Duration::from_std(expires_in)
                .ok()
                .and_then(|expires_in| Utc::now().checked_add_signed(expires_in))
                .ok_or_else(|| ToolError::Usage("--expires-in is too far ahead".into()))?;
            body["expiresAt"] = at.to_rfc3339().into();
        }
        let bytes = serde_json::to_vec(&body)?;
        // Only the shape is checked here: the command names no jobUrl and any tenant.
        let rules = CommandRules::unrestricted(&Settings::default().graph.base_url());
        let command = AbortCommand::parse(&bytes, None, &rules)
            .map_err(|invalid| ToolError::InvalidCommand(invalid.problem))?;
        Ok((command, bytes))
    }
}

/// Sends one command. With `wait`, prints its outcome event and returns whether it
/// succeeded; without, returns `true` once the broker confirmed the command.
pub async fn send_one(
    settings: &Settings,
    command: &OneCommand,
    wait: Option<Duration>,
) -> Result<bool, ToolError> {
    let (parsed, body) = command.body()?;
    let connection = connect(&settings.amqp, "enqueue")
        .await
        .map_err(ToolError::connect("cannot connect to the broker"))?;
    let channel = confirm_channel(&connection).await?;
    let mut replies = match wait {
        Some(_) => Some(EventStream::open(&channel, None).await?),
        None => None,
    };
    let mut properties = command_properties(&parsed.command_id);
    if let Some(replies) = &replies {
        properties = properties.with_reply_to(replies.queue.as_str().into());
    }
    let confirm = send_command(&channel, &settings.amqp, &body, properties).await?;
    confirmed(confirm, &settings.amqp.command_queue).await?;
    eprintln!("sent command {}", parsed.command_id);
    let (Some(timeout), Some(replies)) = (wait, replies.as_mut()) else {
        let _ = connection.close(200, "done".into()).await;
        return Ok(true);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = replies.next(left).await? else {
            return Err(ToolError::NoOutcome {
                command_id: parsed.command_id,
                timeout,
            });
        };
        if event["data"]["commandId"] != parsed.command_id.as_str() {
            continue;
        }
        println!("{}", serde_json::to_string_pretty(&event)?);
        let _ = connection.close(200, "done".into()).await;
        return Ok(event["data"]["outcome"] == "succeeded");
    }
}

/// What sending a file came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileSummary {
    pub sent: usize,
    /// Line numbers (from 1) of lines that were not sent, with why.
    pub skipped: Vec<(usize, String)>,
}

/// Sends every valid line of a JSON Lines file; invalid lines are reported and skipped.
pub async fn send_file(
    settings: &Settings,
    path: &PathBuf,
    progress: bool,
) -> Result<FileSummary, ToolError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| ToolError::Read {
            path: path.clone(),
            source,
        })?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty())
        .collect();
    let connection = connect(&settings.amqp, "enqueue")
        .await
        .map_err(ToolError::connect("cannot connect to the broker"))?;
    let channel = confirm_channel(&connection).await?;
    let bar = if progress {
        ProgressBar::new(lines.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} commands {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    let rules = CommandRules::unrestricted(&settings.graph.base_url());
    let mut summary = FileSummary::default();
    let mut pending: Vec<PublisherConfirm> = Vec::with_capacity(CONFIRM_WINDOW);
    for (number, line) in lines {
        match AbortCommand::parse(line.as_bytes(), None, &rules) {
            Err(invalid) => {
                bar.suspend(|| eprintln!("line {number}: not sent: {}", invalid.problem));
                summary.skipped.push((number, invalid.problem));
                bar.inc(1);
            }
            Ok(command) => {
                let properties = command_properties(&command.command_id);
                pending.push(
                    send_command(&channel, &settings.amqp, line.as_bytes(), properties).await?,
                );
                if pending.len() == CONFIRM_WINDOW {
                    summary.sent +=
                        settle(&mut pending, &settings.amqp.command_queue, &bar).await?;
                }
            }
        }
    }
    summary.sent += settle(&mut pending, &settings.amqp.command_queue, &bar).await?;
    bar.finish_and_clear();
    let _ = connection.close(200, "done".into()).await;
    Ok(summary)
}

async fn settle(
    pending: &mut Vec<PublisherConfirm>,
    queue: &str,
    bar: &ProgressBar,
) -> Result<usize, ToolError> {
    let count = pending.len();
    for confirm in pending.drain(..) {
        confirmed(confirm, queue).await?;
        bar.inc(1);
    }
    Ok(count)
}
