//! `print-abort-worker dlq list|replay`: the tools of the dead-letter runbook. `list` shows
//! what is in `amqp.dead_letter_queue` and why, leaving it there; `replay` moves chosen dead
//! letters back to `amqp.command_queue` once their cause is fixed. The broker side of both
//! is [`crate::amqp::dead_letters`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{ToolError, printable};
use crate::amqp::dead_letters::{self, DeadLetterError, DeadLetteredCommand};
use crate::command::CommandRules;
use crate::config::Settings;

/// The `dlq` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Show dead-lettered commands and why they failed, leaving them in the queue.
    List {
        /// Show at most this many, oldest first (the whole queue is read either way: that is
        /// what keeps its order).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// A TOML file layered over config/default.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Move dead-lettered commands back to the command queue, to be handled again.
    Replay {
        /// Every dead letter in the queue.
        #[arg(
            long,
            conflicts_with = "command_id",
            required_unless_present = "command_id"
        )]
        all: bool,
        /// The dead letter of this command id; give it again for more.
        #[arg(long = "command-id", value_name = "ID")]
        command_id: Vec<String>,
        /// Show what would move, and move nothing.
        #[arg(long)]
        dry_run: bool,
        /// A TOML file layered over config/default.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

impl DlqCommand {
    /// The `--config FILE` given to the subcommand.
    pub fn config(&self) -> Option<&Path> {
        match self {
            Self::List { config, .. } | Self::Replay { config, .. } => config.as_deref(),
        }
    }
}

/// Runs a `dlq` subcommand, printing to standard output. Errors are the broker's.
pub async fn run(settings: Settings, command: DlqCommand) -> Result<ExitCode, ToolError> {
    let connection = super::connect(&settings.amqp, "dlq")
        .await
        .map_err(ToolError::connect(format!(
            "cannot connect to {}",
            settings.amqp.url.redacted()
        )))?;
    let mut out = std::io::stdout();
    let code = match command {
        DlqCommand::List { limit, .. } => list(&connection, &settings, limit, &mut out).await,
        DlqCommand::Replay {
            command_id,
            dry_run,
            ..
        } => replay(&connection, &settings, &command_id, dry_run, &mut out).await,
    };
    let _ = connection.close(200, "done".into()).await;
    Ok(code?)
}

async fn list(
    connection: &lapin::Connection,
    settings: &Settings,
    limit: usize,
    out: &mut impl Write,
) -> Result<ExitCode, DeadLetterError> {
    let queue = &settings.amqp.dead_letter_queue;
    let rules = CommandRules::unrestricted(&settings.graph.base_url());
    let listing = dead_letters::list(connection, &settings.amqp, &rules, limit).await?;
    let shown = listing.dead_letters.len();
    let _ = writeln!(
        out,
        "{queue} holds {}; showing {shown}, oldest first",
        count(listing.total)
    );
    for (n, dead_letter) in listing.dead_letters.iter().enumerate() {
        let _ = writeln!(out, "\n{}", entry(n + 1, dead_letter));
    }
    Ok(ExitCode::SUCCESS)
}

/// Moves the dead letters of `command_ids` (all of them when empty).
async fn replay(
    connection: &lapin::Connection,
    settings: &Settings,
    command_ids: &[String],
    dry_run: bool,
    out: &mut impl Write,
) -> Result<ExitCode, DeadLetterError> {
    let amqp = &settings.amqp;
    let mut found: Vec<&str> = Vec::new();
    let select = |dead_letter: &DeadLetteredCommand| {
        command_ids.is_empty()
            || dead_letter
                .command_id
                .as_ref()
                .is_some_and(|id| command_ids.contains(id))
    };
    let verb = if dry_run { "would replay" } else { "replayed" };
    let rules = CommandRules::unrestricted(&settings.graph.base_url());
    let report = dead_letters::replay(connection, amqp, &rules, select, dry_run, |dead_letter| {
        if let Some(id) = command_ids
            .iter()
            .find(|id| dead_letter.command_id.as_deref() == Some(id.as_str()))
        {
            found.push(id);
        }
        // Written as each one moves, so an interrupted run still says what it did.
        let _ = writeln!(out, "{verb} {}", headline(dead_letter));
        let _ = out.flush();
    })
    .await?;
    let _ = writeln!(
        out,
        "{verb} {} of {} to {}; {}",
        report.moved,
        count(report.total),
        amqp.command_queue,
        if dry_run {
            "nothing moved (--dry-run)".to_owned()
        } else {
            format!(
                "{} left in {}",
                report.total.saturating_sub(report.moved),
                amqp.dead_letter_queue
            )
        }
    );
    let missing: Vec<&String> = command_ids
        .iter()
        .filter(|id| !found.contains(&id.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for id in missing {
        eprintln!(
            "print-abort-worker: no dead letter with command id {}",
            printable(id)
        );
    }
    Ok(ExitCode::FAILURE)
}

fn count(messages: u32) -> String {
    match messages {
        1 => "1 dead letter".to_owned(),
        n => format!("{n} dead letters"),
    }
}

/// `command c-1, printer p-1, job 5182`, with `-` for what is unknown.
fn headline(dead_letter: &DeadLetteredCommand) -> String {
    let or_dash = |value: &Option<String>| printable(value.as_deref().unwrap_or("-"));
    format!(
        "command {}, printer {}, job {}",
        or_dash(&dead_letter.command_id),
        or_dash(&dead_letter.printer_id),
        or_dash(&dead_letter.print_job_id)
    )
}

/// One dead letter of `dlq list`: its headline, the error, the deaths and where from.
fn entry(number: usize, dead_letter: &DeadLetteredCommand) -> String {
    let or_dash = |value: &Option<String>| printable(value.as_deref().unwrap_or("-"));
    let deaths = match dead_letter.broker_deaths {
        Some(broker) => format!(
            "{} (x-abort-deaths {}, x-death {broker})",
            dead_letter.deaths.saturating_add(broker),
            dead_letter.deaths
        ),
        None => dead_letter.deaths.to_string(),
    };
    format!(
        "{number}. {}\n   error:   {}: {}\n   deaths:  {deaths}\n   since:   {} from {}",
        headline(dead_letter),
        or_dash(&dead_letter.error_kind),
        or_dash(&dead_letter.error_message),
        or_dash(&dead_letter.dead_lettered_at),
        or_dash(&dead_letter.source_queue),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter() -> DeadLetteredCommand {
        DeadLetteredCommand {
            command_id: Some("c-1".into()),
            printer_id: Some("p-1".into()),
            print_job_id: None,
            error_kind: Some("permanent".into()),
            error_message: Some("HTTP 404 itemNotFound\u{1b}[31m".into()),
            deaths: 2,
            broker_deaths: None,
            dead_lettered_at: Some("2026-11-30T11:02:03Z".into()),
            source_queue: Some("print.abort.commands".into()),
        }
    }

    #[test]
    fn an_entry_shows_ids_error_and_deaths_safely() {
        assert_eq!(
            entry(3, &dead_letter()),
            "3. command c-1, printer p-1, job -\n   error:   permanent: HTTP 404 \
             itemNotFound\\u{1b}[31m\n   deaths:  2\n   since:   2026-11-30T11:02:03Z from \
             print.abort.commands"
        );
    }

    #[test]
    fn broker_deaths_add_to_the_workers() {
        let dead_letter = DeadLetteredCommand {
            broker_deaths: Some(3),
            ..dead_letter()
        };
        assert!(
            entry(1, &dead_letter).contains("deaths:  5 (x-abort-deaths 2, x-death 3)"),
            "{}",
            entry(1, &dead_letter)
        );
    }
}
