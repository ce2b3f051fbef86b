//! Attribution and pausing: tells one bad command from a sick service, and pauses the
//! worker only for the second.
//!
//! A refusal that retrying cannot fix (a `403`, a `401` to a fresh token) or a command whose
//! transient failures outlasted its budget might be the command's own problem or the
//! service's. The worker tells them apart by contrast, as a person would: if another command
//! succeeded after this one first failed, the service works and the failure is the
//! command's; if other commands are failing too and none succeeds, it is the service's.
//! With nothing to compare against, the refused command waits a moment for contrast
//! (`pause.verdict_wait`), then a probe that needs no command decides: a fresh token and a
//! cheap Graph read. [`judge`] is that decision, in one small function.
//!
//! Throttled replies never reach the breaker: they are flow control (see
//! [`crate::throttle`]).
//!
//! Pausing means: the worker consumes nothing and probes with backoff; when a probe passes
//! it takes trial commands one at a time, and the first success closes the breaker.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::{Notify, futures::Notified, watch};

use crate::config::PauseSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerState {
    /// Normal operation.
    Closed,
    /// Paused, with the reason.
    Open(String),
    /// Probing succeeded; trial commands one at a time until one succeeds.
    Trial,
}

impl BreakerState {
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }
}

/// How a command failed in a way that might be systemic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspicion {
    /// Graph or the token endpoint refused it: `403`, or `401` to a fresh token.
    Denied,
    /// Its transient failures outlasted its retry budget.
    Exhausted,
}

/// What is known when a failed command is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// `pause.enabled`: without pausing every failure is the command's.
    pub pausing: bool,
    /// Another command succeeded after this one first failed.
    pub others_succeeded: bool,
    /// Other commands that failed since the last success, none of which succeeded since.
    pub others_failing: usize,
    /// This command has waited `pause.verdict_wait` for contrast.
    pub waited: bool,
    /// What a probe said, once one ran: `true` when a fresh token and a Graph read worked.
    pub probe: Option<bool>,
}

/// What to do with a failed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The failure is the command's: it ends with its outcome.
    Blame,
    /// The failure is the service's: pause, and return the command to the queue.
    Pause,
    /// Not enough evidence yet: wait for another command's result.
    Wait,
    /// Nothing to compare against: ask the probe.
    Probe,
}

/// Judges a failed command by contrast with the others; see the module documentation.
pub fn judge(evidence: &Evidence) -> Judgement {
    if !evidence.pausing || evidence.others_succeeded {
        return Judgement::Blame;
    }
    if evidence.others_failing > 0 {
        return Judgement::Pause;
    }
    match evidence.probe {
        Some(true) => Judgement::Blame,
        Some(false) => Judgement::Pause,
        None if !evidence.waited => Judgement::Wait,
        None => Judgement::Probe,
    }
}

/// One handling of one command, as the breaker tells commands apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

#[derive(Debug)]
pub struct CircuitBreaker {
    /// `false` makes every failure the command's: nothing ever pauses.
    enabled: bool,
    /// Distinct commands failing with no success between them that call for a probe.
    threshold: usize,
    next_ticket: AtomicU64,
    /// Commands settled by a definitive Graph reply so far.
    successes: AtomicU64,
    /// Distinct commands that failed since the last success (at most `threshold`).
    streak: Mutex<Vec<Ticket>>,
    /// `streak` is not empty: lets a success skip the lock in the common case.
    streak_open: AtomicBool,
    /// Failed commands waiting for a verdict.
    suspects: AtomicUsize,
    /// Wakes suspects and the trial loop when something they judge by changed.
    changed: Notify,
    state: watch::Sender<BreakerState>,
}

impl CircuitBreaker {
    pub fn new(settings: &PauseSettings) -> Self {
        let threshold = usize::try_from(settings.after_failing_commands.max(2)).unwrap_or(2);
        Self {
            enabled: settings.enabled,
            threshold,
            next_ticket: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            streak: Mutex::new(Vec::with_capacity(threshold)),
            streak_open: AtomicBool::new(false),
            suspects: AtomicUsize::new(0),
            changed: Notify::new(),
            state: watch::Sender::new(BreakerState::Closed),
        }
    }

    pub fn pausing(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> BreakerState {
        self.state.borrow().clone()
    }

    pub fn is_open(&self) -> bool {
        self.state.borrow().is_open()
    }

    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state.subscribe()
    }

    /// Resolves once the breaker is open (at once if it already is).
    pub async fn opened(&self) {
        let mut receiver = self.state.subscribe();
        let _ = receiver.wait_for(BreakerState::is_open).await;
    }

    /// A ticket for one handling of a command.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.next_ticket.fetch_add(1, Ordering::Relaxed))
    }

    /// Successes so far; a command keeps the reading of its first failure to learn later
    /// whether another command succeeded since.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Acquire)
    }

    /// Failed commands waiting for a verdict.
    pub fn suspects(&self) -> usize {
        self.suspects.load(Ordering::Acquire)
    }

    /// A future that resolves at the next change a suspect or the trial loop judges by;
    /// enable it before reading the evidence so no change is missed.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Graph gave a definitive answer: the service works.
    pub fn record_healthy(&self) {
        self.successes.fetch_add(1, Ordering::AcqRel);
        if self.streak_open.load(Ordering::Acquire) {
            self.with_streak(|streak| streak.clear());
            self.streak_open.store(false, Ordering::Release);
        }
        if *self.state.borrow() == BreakerState::Trial {
            self.state.send_if_modified(|state| {
                if *state != BreakerState::Trial {
                    return false;
                }
                tracing::info!("trial command succeeded; resuming");
                *state = BreakerState::Closed;
                true
            });
        }
        if self.suspects() > 0 {
            self.changed.notify_waiters();
        }
    }

    /// `ticket`'s command failed in a way that may be systemic; returns `true` when as
    /// many distinct commands failed with no success between them as call for a probe.
    pub fn record_failure(&self, ticket: Ticket) -> bool {
        if !self.enabled {
            return false;
        }
        let failing = self.with_streak(|streak| {
            if !streak.contains(&ticket) && streak.len() < self.threshold {
                streak.push(ticket);
            }
            streak.len()
        });
        self.streak_open.store(true, Ordering::Release);
        self.changed.notify_waiters();
        failing >= self.threshold
    }

    /// The evidence for judging `ticket`'s command, whose first failure came when
    /// [`Self::successes`] read `since`.
    pub fn evidence(
        &self,
        ticket: Ticket,
        since: u64,
        waited: bool,
        probe: Option<bool>,
    ) -> Evidence {
        let others_failing =
            self.with_streak(|streak| streak.iter().filter(|other| **other != ticket).count());
        Evidence {
            pausing: self.enabled,
            others_succeeded: self.successes() > since,
            others_failing,
            waited,
            probe,
        }
    }

    /// Counts a command waiting for its verdict until the guard drops.
    pub fn suspect(&self) -> SuspectGuard<'_> {
        self.suspects.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        SuspectGuard { breaker: self }
    }

    /// A failure that is the service's for certain (the token endpoint refused the
    /// credentials); returns `true` when the worker pauses for it, `false` when pausing is
    /// disabled and the command should fail.
    pub fn record_systemic(&self, why: &str) -> bool {
        if !self.enabled {
            return false;
        }
        self.open(why.to_owned());
        true
    }

    /// A probe passed: let trial commands through to prove the service works.
    pub fn begin_trial(&self) {
        self.with_streak(|streak| streak.clear());
        self.streak_open.store(false, Ordering::Release);
        self.state.send_replace(BreakerState::Trial);
        self.changed.notify_waiters();
    }

    /// Ends a trial without a success: there was nothing left to try.
    pub fn resume(&self, why: &str) {
        self.state.send_if_modified(|state| {
            if *state != BreakerState::Trial {
                return false;
            }
            tracing::info!(why, "resuming");
            *state = BreakerState::Closed;
            true
        });
    }

    /// Pauses the worker for `why`.
    pub fn open(&self, why: String) {
        self.state.send_if_modified(|state| {
            if state.is_open() {
                return false;
            }
            tracing::warn!(reason = %why, "pausing: the failure is systemic, not the command's");
            *state = BreakerState::Open(why);
            true
        });
        self.changed.notify_waiters();
    }

    fn with_streak<T>(&self, f: impl FnOnce(&mut Vec<Ticket>) -> T) -> T {
        f(&mut self.streak.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Keeps a command counted among the suspects while it waits for its verdict.
pub struct SuspectGuard<'a> {
    breaker: &'a CircuitBreaker,
}

impl Drop for SuspectGuard<'_> {
    fn drop(&mut self) {
        self.breaker.suspects.fetch_sub(1, Ordering::AcqRel);
        self.breaker.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(after_failing_commands: u32) -> CircuitBreaker {
        CircuitBreaker::new(&PauseSettings {
            after_failing_commands,
            ..PauseSettings::default()
        })
    }

    /// Every combination of the evidence, against the rule written out by hand.
    #[test]
    fn judge_decides_every_combination_of_evidence() {
        let mut cases = 0;
        for pausing in [false, true] {
            for others_succeeded in [false, true] {
                for others_failing in [0, 1, 5] {
                    for waited in [false, true] {
                        for probe in [None, Some(false), Some(true)] {
                            let evidence = Evidence {
                                pausing,
                                others_succeeded,
                                others_failing,
                                waited,
                                probe,
                            };
                            let expected = if !pausing || others_succeeded {
                                Judgement::Blame
                            } else if others_failing > 0 || probe == Some(false) {
                                Judgement::Pause
                            } else if probe == Some(true) {
                                Judgement::Blame
                            } else if waited {
                                Judgement::Probe
                            } else {
                                Judgement::Wait
                            };
                            assert_eq!(judge(&evidence), expected, "{evidence:?}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 72);
    }

    #[test]
    fn one_poison_command_among_good_ones_is_blamed() {
        let breaker = breaker(3);
        let poison = breaker.ticket();
        let since = breaker.successes();
        assert!(!breaker.record_failure(poison));
        // Another command succeeds after the poison one failed.
        breaker.record_healthy();
        let evidence = breaker.evidence(poison, since, false, None);
        assert_eq!(judge(&evidence), Judgement::Blame);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn two_commands_failing_with_no_success_between_point_at_the_service() {
        let breaker = breaker(3);
        let (first, second) = (breaker.ticket(), breaker.ticket());
        let since = breaker.successes();
        breaker.record_failure(first);
        breaker.record_failure(second);
        assert_eq!(
            judge(&breaker.evidence(first, since, false, None)),
            Judgement::Pause
        );
    }

    #[test]
    fn retries_of_one_command_never_add_up_to_a_probe() {
        let breaker = breaker(3);
        let poison = breaker.ticket();
        for _ in 0..100 {
            assert!(!breaker.record_failure(poison));
        }
        let (a, b) = (breaker.ticket(), breaker.ticket());
        assert!(!breaker.record_failure(a));
        assert!(
            breaker.record_failure(b),
            "three distinct commands call for a probe"
        );
        breaker.record_healthy();
        assert!(
            !breaker.record_failure(a),
            "a success starts the count afresh"
        );
    }

    #[test]
    fn a_lone_failure_waits_then_asks_the_probe() {
        let breaker = breaker(3);
        let lone = breaker.ticket();
        let since = breaker.successes();
        breaker.record_failure(lone);
        assert_eq!(
            judge(&breaker.evidence(lone, since, false, None)),
            Judgement::Wait
        );
        assert_eq!(
            judge(&breaker.evidence(lone, since, true, None)),
            Judgement::Probe
        );
        assert_eq!(
            judge(&breaker.evidence(lone, since, true, Some(true))),
            Judgement::Blame
        );
        assert_eq!(
            judge(&breaker.evidence(lone, since, true, Some(false))),
            Judgement::Pause
        );
    }

    #[test]
    fn a_trial_success_closes_it_and_a_trial_forgets_earlier_failures() {
        let breaker = breaker(3);
        assert!(breaker.record_systemic("invalid_client"));
        assert_eq!(breaker.state(), BreakerState::Open("invalid_client".into()));
        let earlier = breaker.ticket();
        breaker.record_failure(earlier);
        breaker.begin_trial();
        let trial = breaker.ticket();
        let since = breaker.successes();
        breaker.record_failure(trial);
        assert_eq!(
            judge(&breaker.evidence(trial, since, false, None)),
            Judgement::Wait,
            "failures before the pause are no evidence against the trial command"
        );
        breaker.record_healthy();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn disabled_it_never_opens_and_blames_every_command() {
        let breaker = CircuitBreaker::new(&PauseSettings {
            enabled: false,
            ..PauseSettings::default()
        });
        assert!(!breaker.record_systemic("403"));
        let ticket = breaker.ticket();
        for _ in 0..100 {
            assert!(!breaker.record_failure(breaker.ticket()));
        }
        assert_eq!(
            judge(&breaker.evidence(ticket, 0, false, None)),
            Judgement::Blame
        );
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
