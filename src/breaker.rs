//! The circuit breaker: notices when failures are the service's fault, not the command's,
//! and pauses the worker instead of draining the queue into dead letters.
//!
//! It opens at once on a systemic failure (the token endpoint refuses the credentials,
//! Graph answers 401 to a renewed token or 403) and after a run of consecutive transient
//! failures. While it is open the worker consumes nothing and probes; a healthy probe lets
//! one trial command through, and that command's success closes the breaker again.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::watch;

use crate::config::PauseSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerState {
    /// Normal operation.
    Closed,
    /// Paused, with the reason.
    Open(String),
    /// Probing succeeded; one command at a time until one succeeds.
    Trial,
}

impl BreakerState {
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    /// `false` makes systemic failures ordinary `unauthorized` outcomes.
    enabled: bool,
    threshold: u32,
    /// Consecutive transient failures across all commands; any healthy reply resets it.
    consecutive: AtomicU32,
    state: watch::Sender<BreakerState>,
}

impl CircuitBreaker {
    pub fn new(settings: &PauseSettings) -> Self {
        Self {
            enabled: settings.enabled,
            threshold: settings.after_transient_failures.max(1),
            consecutive: AtomicU32::new(0),
            state: watch::Sender::new(BreakerState::Closed),
        }
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

    /// Graph gave a definitive answer: the service is healthy.
    pub fn record_healthy(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.state.send_if_modified(|state| {
            if *state == BreakerState::Trial {
                tracing::info!("trial command succeeded; resuming");
                *state = BreakerState::Closed;
                true
            } else {
                false
            }
        });
    }

    /// A transient failure; returns `true` when it opened the breaker.
    pub fn record_transient(&self, why: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let run = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let trial = *self.state.borrow() == BreakerState::Trial;
        if trial || run >= self.threshold {
            self.open(format!(
                "{run} consecutive transient failures, the last: {why}"
            ));
            return true;
        }
        false
    }

    /// A failure that no retry of this command can fix; returns `true` when the worker
    /// pauses for it, `false` when pausing is disabled and the command should fail.
    pub fn record_systemic(&self, why: &str) -> bool {
        if !self.enabled {
            return false;
        }
        self.open(why.to_owned());
        true
    }

    /// A probe succeeded: let one command through to prove the service works.
    pub fn begin_trial(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.state.send_replace(BreakerState::Trial);
    }

    fn open(&self, why: String) {
        self.state.send_if_modified(|state| {
            if state.is_open() {
                return false;
            }
            tracing::warn!(reason = %why, "pausing: the failure is systemic, not the command's");
            *state = BreakerState::Open(why);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(&PauseSettings {
            after_transient_failures: threshold,
            ..PauseSettings::default()
        })
    }

    #[test]
    fn a_run_of_transient_failures_opens_it_and_a_healthy_reply_resets_the_run() {
        let breaker = breaker(3);
        assert!(!breaker.record_transient("503"));
        assert!(!breaker.record_transient("503"));
        breaker.record_healthy();
        assert!(!breaker.record_transient("503"));
        assert!(!breaker.record_transient("503"));
        assert!(breaker.record_transient("503"));
        assert!(breaker.is_open());
    }

    #[test]
    fn a_systemic_failure_opens_it_at_once_and_a_trial_success_closes_it() {
        let breaker = breaker(10);
        assert!(breaker.record_systemic("invalid_client"));
        assert_eq!(breaker.state(), BreakerState::Open("invalid_client".into()));
        breaker.begin_trial();
        breaker.record_healthy();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn one_transient_failure_during_the_trial_reopens_it() {
        let breaker = breaker(10);
        breaker.record_systemic("403");
        breaker.begin_trial();
        assert!(breaker.record_transient("503"));
        assert!(breaker.is_open());
    }

    #[test]
    fn disabled_it_never_opens() {
        let breaker = CircuitBreaker::new(&PauseSettings {
            enabled: false,
            ..PauseSettings::default()
        });
        assert!(!breaker.record_systemic("403"));
        for _ in 0..100 {
            assert!(!breaker.record_transient("503"));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
