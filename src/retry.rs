//! The retry policy: which Graph replies are worth another try, and how long to wait.
//!
//! [`classify`] is the one place where a reply is judged; [`RetryPolicy`] turns the
//! configured intervals into a jittered exponential schedule (from `backon`) and keeps
//! each command inside its time budget, honouring `Retry-After` when Graph sends one;
//! [`settlement`] decides, once a command has its outcome, whether it retries later through
//! the broker (`retry.redelivery_delays`, with its [`RetryHistory`]) or is reported, and
//! dead-lettered when it did not succeed.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::DateTime;

use crate::config::RetrySettings;
use crate::outcome::{ErrorKind, Outcome, OutcomeKind};

/// What to do after a Graph reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Success,
    /// The token may have expired or been revoked: renew it once and try again.
    RenewToken,
    /// The app is not allowed to do this: a systemic problem, not the command's.
    Unauthorized,
    /// The job may already be past `processing`: look at it before giving up.
    Reconcile,
    /// Graph throttled the request (`429`, or `503` with `Retry-After`): flow control, not
    /// failure. The tenant's requests wait at its gate, and the command tries again.
    Throttled,
    /// A passing failure: wait and try again.
    Transient,
    /// Retrying cannot change the answer.
    Permanent,
}

/// Judges a Graph reply by its status and whether it carried a `Retry-After`.
pub fn classify(status: u16, retry_after: bool) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        401 => Verdict::RenewToken,
        403 => Verdict::Unauthorized,
        400 | 404 | 409 => Verdict::Reconcile,
        429 => Verdict::Throttled,
        503 if retry_after => Verdict::Throttled,
        408 | 500 | 502 | 503 | 504 => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(date);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The timing of in-process retries for one command.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    backoff: ExponentialBuilder,
    max_interval: Duration,
    budget: Duration,
}

impl RetryPolicy {
    pub fn new(settings: &RetrySettings) -> Self {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(settings.initial_interval)
            .with_max_delay(settings.max_interval)
            .with_factor(settings.multiplier)
            .with_jitter()
            .without_max_times();
        Self {
            backoff,
            max_interval: settings.max_interval,
            budget: settings.max_elapsed,
        }
    }

    /// A fresh schedule for one command.
    pub fn schedule(&self) -> RetrySchedule {
        RetrySchedule {
            delays: self.backoff.build(),
            max_interval: self.max_interval,
            budget: self.budget,
        }
    }
}

/// The retry state of one command.
#[derive(Debug)]
pub struct RetrySchedule {
    delays: backon::ExponentialBackoff,
    max_interval: Duration,
    budget: Duration,
}

impl RetrySchedule {
    /// The wait before the next attempt, or `None` when it would end past the budget.
    /// `elapsed` is the time spent on the command so far. A `Retry-After` from Graph wins
    /// over the schedule, up to `retry.max_interval`, so that one reply cannot hold a
    /// command for an hour.
    pub fn next_delay(
        &mut self,
        elapsed: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let scheduled = self.delays.next()?.min(self.max_interval);
        let delay = retry_after.map_or(scheduled, |asked| asked.min(self.max_interval));
        (elapsed + delay <= self.budget).then_some(delay)
    }
}

/// What a command went through before, carried across delayed retries in its headers
/// (read by [`crate::amqp::headers::retry_history`], written by the publisher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryHistory {
    /// Delayed retries so far.
    pub redeliveries: u32,
    /// Graph attempts so far.
    pub attempts: u32,
    pub first_received_at: chrono::DateTime<chrono::Utc>,
}

/// What becomes of a delivery once its command has an outcome: the one place where the
/// broker-side retry and the dead-letter copy are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Publish the outcome event, then ack.
    Report,
    /// Publish the outcome event, then a copy of the command to the dead-letter exchange,
    /// then ack.
    ReportAndDeadLetter,
    /// No event yet: a copy into the delay queue of this step of `retry.redelivery_delays`,
    /// then ack; the command comes back after the delay.
    RetryLater(Duration),
}

/// Decides the settlement of a command with `outcome`. A command whose transient failures
/// outlasted its in-process budget takes the next step of the `ladder` it has not taken
/// yet, unless the broker delivered it `amqp.max_deliveries` times (`limit_reached`): then,
/// like every outcome but success, it is reported and dead-lettered.
pub fn settlement(
    outcome: &Outcome,
    history: &RetryHistory,
    limit_reached: bool,
    ladder: &[Duration],
) -> Settlement {
    if outcome.kind() == OutcomeKind::Succeeded {
        return Settlement::Report;
    }
    let next_step = usize::try_from(history.redeliveries)
        .ok()
        .and_then(|step| ladder.get(step).copied());
    match next_step {
        Some(delay) if outcome.error_kind() == Some(ErrorKind::Exhausted) && !limit_reached => {
            Settlement::RetryLater(delay)
        }
        _ => Settlement::ReportAndDeadLetter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_classified_as_the_spec_says() {
        // Retry-After changes only the verdict on a 503.
        let with_retry_after: &[(u16, Verdict)] = &[
            (204, Verdict::Success),
            (403, Verdict::Unauthorized),
            (429, Verdict::Throttled),
            (500, Verdict::Transient),
            (503, Verdict::Throttled),
            (504, Verdict::Transient),
        ];
        for (status, verdict) in with_retry_after {
            assert_eq!(classify(*status, true), *verdict, "status {status}");
        }
        let table: &[(u16, Verdict)] = &[
            (200, Verdict::Success),
            (202, Verdict::Success),
            (204, Verdict::Success),
            (400, Verdict::Reconcile),
            (401, Verdict::RenewToken),
            (403, Verdict::Unauthorized),
            (404, Verdict::Reconcile),
            (405, Verdict::Permanent),
            (408, Verdict::Transient),
            (409, Verdict::Reconcile),
            (410, Verdict::Permanent),
            (412, Verdict::Permanent),
            (422, Verdict::Permanent),
            (429, Verdict::Throttled),
            (500, Verdict::Transient),
            (501, Verdict::Permanent),
            (502, Verdict::Transient),
            (503, Verdict::Transient),
            (504, Verdict::Transient),
            (505, Verdict::Permanent),
            (302, Verdict::Permanent),
        ];
        for (status, verdict) in table {
            assert_eq!(classify(*status, false), *verdict, "status {status}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // 2015-10-21T07:28:00Z is 1445412480.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    fn settings(initial_ms: u64, max_ms: u64, budget_ms: u64) -> RetrySettings {
        RetrySettings {
            initial_interval: Duration::from_millis(initial_ms),
            max_interval: Duration::from_millis(max_ms),
            multiplier: 2.0,
            max_elapsed: Duration::from_millis(budget_ms),
            redelivery_delays: Vec::new(),
        }
    }

    #[test]
    fn delays_grow_with_jitter_and_stay_under_the_cap() {
        let mut schedule = RetryPolicy::new(&settings(100, 1_000, 3_600_000)).schedule();
        let delays: Vec<Duration> = (0..8)
            .map(|_| {
                schedule
                    .next_delay(Duration::ZERO, None)
                    .expect("within budget")
            })
            .collect();
        // Jitter adds up to 100% of the base: attempt n waits in [base, 2·base], capped.
        for (n, delay) in delays.iter().enumerate() {
            let base = Duration::from_millis((100u64 << n).min(1_000));
            assert!(
                *delay >= base.min(Duration::from_millis(1_000)),
                "{n}: {delay:?}"
            );
            assert!(*delay <= Duration::from_millis(1_000), "{n}: {delay:?}");
        }
        assert_eq!(delays[7], Duration::from_millis(1_000));
    }

    #[test]
    fn retry_after_overrides_the_schedule_up_to_the_cap() {
        let mut schedule = RetryPolicy::new(&settings(100, 1_000, 60_000)).schedule();
        assert_eq!(
            schedule.next_delay(Duration::ZERO, Some(Duration::from_millis(700))),
            Some(Duration::from_millis(700))
        );
        assert_eq!(
            schedule.next_delay(Duration::ZERO, Some(Duration::from_secs(3_600))),
            Some(Duration::from_millis(1_000))
        );
    }

    #[test]
    fn the_budget_ends_the_retries() {
        let mut schedule = RetryPolicy::new(&settings(100, 100, 1_000)).schedule();
        assert!(
            schedule
                .next_delay(Duration::from_millis(850), None)
                .is_some()
        );
        assert_eq!(schedule.next_delay(Duration::from_millis(950), None), None);
        assert_eq!(
            schedule.next_delay(Duration::from_millis(950), Some(Duration::from_millis(90))),
            None
        );
    }

    fn history(redeliveries: u32) -> RetryHistory {
        RetryHistory {
            redeliveries,
            attempts: 0,
            first_received_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn settlement_decides_the_ladder_and_the_dead_letter_copy() {
        let ladder = [Duration::from_secs(30), Duration::from_secs(120)];
        let exhausted = Outcome::failed(4, ErrorKind::Exhausted, "503");
        let succeeded = Outcome::succeeded(1, 204, None);
        let cases = [
            (&succeeded, 0, false, Settlement::Report),
            (&succeeded, 0, true, Settlement::Report),
            (&exhausted, 0, false, Settlement::RetryLater(ladder[0])),
            (&exhausted, 1, false, Settlement::RetryLater(ladder[1])),
            (&exhausted, 2, false, Settlement::ReportAndDeadLetter),
            (&exhausted, 0, true, Settlement::ReportAndDeadLetter),
        ];
        for (outcome, redeliveries, limit_reached, expected) in cases {
            assert_eq!(
                settlement(outcome, &history(redeliveries), limit_reached, &ladder),
                expected,
                "{outcome:?} after {redeliveries} redeliveries, limit {limit_reached}"
            );
        }
        for kind in [
            ErrorKind::Permanent,
            ErrorKind::Expired,
            ErrorKind::Unauthorized,
        ] {
            let outcome = Outcome::failed(1, kind, "no");
            assert_eq!(
                settlement(&outcome, &history(0), false, &ladder),
                Settlement::ReportAndDeadLetter,
                "{kind:?} never retries later"
            );
        }
        assert_eq!(
            settlement(&Outcome::rejected("bad"), &history(0), false, &ladder),
            Settlement::ReportAndDeadLetter
        );
        assert_eq!(
            settlement(&exhausted, &history(0), false, &[]),
            Settlement::ReportAndDeadLetter,
            "no ladder configured"
        );
    }
}
