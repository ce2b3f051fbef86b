//! `print-abort-worker dlq list|replay` against the real broker: dead letters written by the
//! real worker are listed without being taken, and replayed with their order, body and death
//! count kept, by the binary as an operator runs it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use print_abort_worker::Settings;
use print_abort_worker::amqp::headers;
use print_abort_worker::config::QueueType;
use wiremock::Mock;
use wiremock::matchers::method;

use crate::helpers::*;

/// What one run of `dlq` printed and how it exited.
struct DlqRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn dlq(settings: &Settings, args: &[&str]) -> DlqRun {
    let output = worker_binary()
        .arg("dlq")
        .args(args)
        .envs(environment(settings))
        .output()
        .await
        .expect("the binary runs");
    DlqRun {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The command ids of `dlq list` output, in the order listed.
fn listed_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(". command "))
        .map(|(_, rest)| rest.split(',').next().unwrap_or_default().to_owned())
        .collect()
}

/// A stopped worker whose dead-letter queue holds `c-1`, `c-2`, `c-3` (Graph answered 404)
/// and `c-bad` (invalid), each dead-lettered once.
async fn app_with_dead_letters(queue_type: QueueType) -> TestApp {
    let server = graph_with_token().await;
    abort_mock()
        .respond_with(graph_error(404, "itemNotFound", "The job was not found"))
        .mount(&server)
        .await;
    job_mock()
        .respond_with(graph_error(404, "itemNotFound", "The job was not found"))
        .mount(&server)
        .await;
    let mut settings = test_settings(&server);
    settings.amqp.queue_type = queue_type;
    let mut app = TestApp::spawn(server, settings).await;
    for n in 1..=3 {
        let properties = BasicProperties::default().with_correlation_id(format!("corr-{n}").into());
        let body = format!(r#"{{"printerId":"p-{n}","printJobId":"j-{n}","commandId":"c-{n}"}}"#);
        app.send_with(body.as_bytes(), properties).await;
    }
    app.send(r#"{"printerId":"bad/id","printJobId":"j-bad","commandId":"c-bad"}"#)
        .await;
    for _ in 0..4 {
        app.next_event().await;
    }
    wait_for_length(&app.channel, &app.settings.amqp.dead_letter_queue, 4).await;
    app.stop_worker().await.expect("the worker stops");
    app
}

#[tokio::test]
async fn list_shows_every_dead_letter_and_leaves_them_in_place_and_in_order() {
    for queue_type in [QueueType::Quorum, QueueType::Classic] {
        let app = app_with_dead_letters(queue_type).await;
        let settings = &app.settings;
        let dead_letter_queue = &settings.amqp.dead_letter_queue;

        let first = dlq(settings, &["list"]).await;
        assert_eq!(first.code, Some(0), "{}{}", first.stdout, first.stderr);
        assert!(
            first.stdout.starts_with(&format!(
                "{dead_letter_queue} holds 4 dead letters; showing 4, oldest first"
            )),
            "{}",
            first.stdout
        );
        for n in 1..=3 {
            assert!(
                first
                    .stdout
                    .contains(&format!(". command c-{n}, printer p-{n}, job j-{n}\n")),
                "{}",
                first.stdout
            );
        }
        assert!(
            first
                .stdout
                .contains(". command c-bad, printer -, job j-bad\n   error:   invalid: printerId"),
            "{}",
            first.stdout
        );
        assert!(
            first
                .stdout
                .contains("   error:   permanent: HTTP 404 itemNotFound: The job was not found"),
            "{}",
            first.stdout
        );
        assert_eq!(first.stdout.matches("   deaths:  1\n").count(), 4);
        assert_eq!(
            first
                .stdout
                .matches(&format!(" from {}", settings.amqp.command_queue))
                .count(),
            4
        );

        // Listing again shows the same, in the same order: nothing moved or changed.
        let again = dlq(settings, &["list"]).await;
        assert_eq!(again.stdout, first.stdout, "{queue_type:?}");
        let limited = dlq(settings, &["list", "--limit", "2"]).await;
        assert!(limited.stdout.contains("holds 4 dead letters; showing 2"));
        assert_eq!(listed_ids(&limited.stdout), listed_ids(&first.stdout)[..2]);

        // Every message is still there, in the listed order, with its headers.
        let messages = get_all(&app.channel, dead_letter_queue).await;
        let ids: Vec<String> = messages
            .iter()
            .map(|message| amqp_header(message, headers::ABORT_COMMAND_ID).expect("id"))
            .collect();
        assert_eq!(ids, listed_ids(&first.stdout), "{queue_type:?}");
        for message in &messages {
            assert!(amqp_header(message, headers::ABORT_ERROR).is_some());
        }
        app.finish().await;
    }
}

#[tokio::test]
async fn replay_moves_only_the_chosen_dead_letter_and_its_deaths_add_up() {
    let mut app = app_with_dead_letters(QueueType::Quorum).await;
    let settings = app.settings.clone();
    let (command_queue, dead_letter_queue) = (
        settings.amqp.command_queue.as_str(),
        settings.amqp.dead_letter_queue.as_str(),
    );
    let before = listed_ids(&dlq(&settings, &["list"]).await.stdout);

    let dry = dlq(&settings, &["replay", "--command-id", "c-2", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .starts_with("would replay command c-2, printer p-2, job j-2\n"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("nothing moved (--dry-run)"));
    // Every run waits until what it took is back, so the count is right at once.
    assert_eq!(queue_length(&app.channel, dead_letter_queue).await, 4);
    assert_eq!(queue_length(&app.channel, command_queue).await, 0);

    let run = dlq(&settings, &["replay", "--command-id", "c-2"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "replayed command c-2, printer p-2, job j-2\nreplayed 1 of 4 dead letters to \
             {command_queue}; 3 left in {dead_letter_queue}\n"
        )
    );
    assert_eq!(queue_length(&app.channel, dead_letter_queue).await, 3);
    let left: Vec<String> = before.iter().filter(|id| *id != "c-2").cloned().collect();
    assert_eq!(
        listed_ids(&dlq(&settings, &["list"]).await.stdout),
        left,
        "the others stay, in order"
    );

    // The replayed command: the original body and properties, without the error headers.
    let replayed = app
        .channel
        .basic_get(command_queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .expect("the replayed command is queued")
        .delivery;
    assert_eq!(
        replayed.data,
        br#"{"printerId":"p-2","printJobId":"j-2","commandId":"c-2"}"#
    );
    let properties = &replayed.properties;
    assert_eq!(
        properties.correlation_id().as_ref().map(|id| id.as_str()),
        Some("corr-2")
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    let table = properties.headers().as_ref();
    for stripped in headers::STRIPPED_ON_REPLAY {
        // The quorum command queue sets its own count, starting at zero; the dead-letter
        // queue's, after three listings, was not carried over.
        if *stripped == headers::BROKER_DELIVERY_COUNT {
            assert_eq!(headers::count(table, stripped).unwrap_or(0), 0, "{table:?}");
            continue;
        }
        assert!(
            !table.is_some_and(|t| t.contains_key(stripped)),
            "{stripped} was kept: {table:?}"
        );
    }
    assert_eq!(headers::count(table, headers::ABORT_DEATHS), Some(1));
    replayed
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .expect("back to the queue");

    // Handled again, it fails again and comes back with two deaths.
    app.start_worker();
    let event = app.next_event().await;
    assert_eq!(event["data"]["commandId"], "c-2");
    wait_for_length(&app.channel, dead_letter_queue, 4).await;
    app.stop_worker().await.expect("the worker stops");
    let listing = dlq(&settings, &["list"]).await.stdout;
    assert!(
        listing.contains("4. command c-2, printer p-2, job j-2\n   error:   permanent: HTTP 404 itemNotFound: The job was not found\n   deaths:  2\n"),
        "{listing}"
    );

    let unknown = dlq(&settings, &["replay", "--command-id", "nope"]).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown
            .stderr
            .contains("no dead letter with command id nope"),
        "{}",
        unknown.stderr
    );
    assert_eq!(queue_length(&app.channel, dead_letter_queue).await, 4);
    app.finish().await;
}

#[tokio::test]
async fn replay_all_after_the_cause_is_fixed_leaves_only_what_fails_again() {
    let mut app = app_with_dead_letters(QueueType::Classic).await;
    // The cause is fixed: Graph now aborts the jobs.
    Mock::given(method("POST"))
        .and(wiremock::matchers::path_regex(ABORT_PATH))
        .respond_with(no_content())
        .with_priority(1)
        .mount(&app.server)
        .await;
    let settings = app.settings.clone();
    let run = dlq(&settings, &["replay", "--all"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.matches("replayed command ").count(), 4);
    assert!(run.stdout.contains("replayed 4 of 4 dead letters"));
    assert_eq!(
        queue_length(&app.channel, &settings.amqp.dead_letter_queue).await,
        0
    );

    app.start_worker();
    let ids: Vec<String> = ["c-1", "c-2", "c-3", "c-bad"].map(String::from).to_vec();
    let outcomes = app
        .collect_outcomes(&ids, Vec::new(), Duration::from_secs(15))
        .await;
    for id in ["c-1", "c-2", "c-3"] {
        assert_eq!(outcomes[id][0]["data"]["outcome"], "succeeded");
    }
    assert_eq!(outcomes["c-bad"][0]["data"]["outcome"], "rejected");
    wait_for_length(&app.channel, &settings.amqp.dead_letter_queue, 1).await;
    app.stop_worker().await.expect("the worker stops");
    let listing = dlq(&settings, &["list"]).await.stdout;
    assert_eq!(listed_ids(&listing), ["c-bad"]);
    assert!(listing.contains("deaths:  2"), "{listing}");
    app.finish().await;
}

#[tokio::test]
async fn a_replay_killed_midway_loses_nothing_and_repeats_at_most_one() {
    let server = graph_with_token().await;
    let mut settings = test_settings(&server);
    settings.amqp.queue_type = QueueType::Quorum;
    let mut app = TestApp::spawn(server, settings).await;
    app.stop_worker()
        .await
        .expect("no worker: the commands stay queued");
    let amqp = app.settings.amqp.clone();
    let total = 1000;
    for n in 0..total {
        let mut table = FieldTable::default();
        headers::insert_text(&mut table, headers::ABORT_ERROR, "exhausted");
        headers::insert_text(&mut table, headers::ABORT_COMMAND_ID, &format!("k-{n}"));
        table.insert(headers::ABORT_DEATHS.into(), AMQPValue::LongLongInt(1));
        let body = format!(r#"{{"printerId":"p","printJobId":"j{n}","commandId":"k-{n}"}}"#);
        publish(
            &app.channel,
            &amqp.dead_letter_queue,
            body.as_bytes(),
            BasicProperties::default().with_headers(table),
        )
        .await;
    }

    let mut replay = worker_binary()
        .args(["dlq", "replay", "--all"])
        .envs(environment(&app.settings))
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_length(&app.channel, &amqp.command_queue).await < 100 {
        assert!(Instant::now() < deadline, "the replay never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replay.start_kill().expect("SIGKILL");
    let _ = replay.wait().await;

    // Unacknowledged dead letters return once the broker notices the closed connection.
    let mut ids = Vec::new();
    let settle = Instant::now() + Duration::from_secs(15);
    loop {
        let moved = queue_length(&app.channel, &amqp.command_queue).await;
        let left = queue_length(&app.channel, &amqp.dead_letter_queue).await;
        if moved + left >= total {
            // The kill met the replay midway: some moved, some still dead-lettered.
            assert!(moved > 0 && left > 0, "{moved} moved, {left} left");
            break;
        }
        assert!(Instant::now() < settle, "{moved} + {left} < {total}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for queue in [&amqp.command_queue, &amqp.dead_letter_queue] {
        for message in get_all(&app.channel, queue).await {
            let body: serde_json::Value = serde_json::from_slice(&message.data).expect("json");
            ids.push(body["commandId"].as_str().expect("id").to_owned());
        }
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), total as usize, "nothing was lost");
    assert!(
        ids.len() <= total as usize + 1,
        "{} copies: more than the one in flight was repeated",
        ids.len() - total as usize
    );
    app.finish().await;
}
