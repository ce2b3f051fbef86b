//! Fault injection for the Graph routes: latency with jitter, random `503` and `429`
//! replies, timed outages, and timed denials (every call `403`, as when an admin withdraws
//! the app's consent), so a client's timeouts, retries, backoff and pausing can be
//! exercised against something that misbehaves on demand.
//!
//! The token endpoint is left alone: these faults model Graph, not the identity platform.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Instant;

/// The standing fault settings. All zero (the default) means a well-behaved Graph.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every Graph reply, to model a service that is far away or busy.
    #[serde(
        serialize_with = "human_duration",
        deserialize_with = "duration_from_text"
    )]
    pub latency: Duration,
    /// Up to this much more, drawn uniformly per request, so replies do not arrive in
    /// lockstep and a client's timeouts are hit only sometimes.
    #[serde(
        serialize_with = "human_duration",
        deserialize_with = "duration_from_text"
    )]
    pub latency_jitter: Duration,
    /// Share of Graph requests (0.0 to 1.0) answered `503 serviceNotAvailable`.
    pub error_503_rate: f64,
    /// Share of Graph requests answered `429 TooManyRequests`. Both shares together are at
    /// most 1.0: one draw per request picks at most one of them.
    pub error_429_rate: f64,
    /// The `Retry-After` seconds of every injected `503` and `429`, outages included, so a
    /// test controls how long an obedient client waits; 0 sends no `Retry-After`.
    pub retry_after_secs: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            error_503_rate: 0.0,
            error_429_rate: 0.0,
            retry_after_secs: 1,
        }
    }
}

/// Fault settings that make no sense, such as a rate above 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid faults: {0}")]
pub struct InvalidFaults(String);

impl Faults {
    pub fn validate(&self) -> Result<(), InvalidFaults> {
        for (name, rate) in [
            ("error_503_rate", self.error_503_rate),
            ("error_429_rate", self.error_429_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(InvalidFaults(format!(
                    "{name} is {rate}; it must lie between 0.0 and 1.0"
                )));
            }
        }
        if self.error_503_rate + self.error_429_rate > 1.0 {
            return Err(InvalidFaults(format!(
                "error_503_rate + error_429_rate is {}; together they must be at most 1.0",
                self.error_503_rate + self.error_429_rate
            )));
        }
        Ok(())
    }

    /// This request's delay: the fixed latency plus a uniform draw of jitter.
    fn delay(&self) -> Duration {
        if self.latency_jitter.is_zero() {
            return self.latency;
        }
        let jitter = rand::random_range(0..=self.latency_jitter.as_micros());
        // At most the jitter itself, so it fits back into a Duration.
        self.latency + Duration::from_micros(u64::try_from(jitter).unwrap_or(u64::MAX))
    }
}

/// The faults as the control API shows them: the settings plus any outage or denial under
/// way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultsStatus {
    #[serde(flatten)]
    pub faults: Faults,
    /// Time left of the current outage, if one is under way (`"2s 500ms"`).
    #[serde(serialize_with = "human_duration_option")]
    pub outage_remaining: Option<Duration>,
    /// Time left of the current denial, if one is under way; see
    /// [`FaultInjector::start_denial`].
    #[serde(serialize_with = "human_duration_option")]
    pub denial_remaining: Option<Duration>,
}

/// A fault that replaces the real reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedFault {
    pub kind: FaultKind,
    /// For the reply's `Retry-After`.
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Every Graph call fails until the outage ends.
    Outage,
    /// A random `503`.
    Unavailable,
    /// A random `429`.
    Throttled,
}

struct FaultState {
    faults: Faults,
    outage_until: Option<Instant>,
    /// Kept apart from the outage, so a test can overlap a `403` spell with a `503` one.
    denial_until: Option<Instant>,
}

/// The live fault settings, read by every Graph request and changed by the control API.
pub struct FaultInjector {
    state: RwLock<FaultState>,
}

impl FaultInjector {
    pub fn new(faults: Faults) -> Self {
        Self {
            state: RwLock::new(FaultState {
                faults,
                outage_until: None,
                denial_until: None,
            }),
        }
    }

    pub fn faults(&self) -> Faults {
        self.read(|state| state.faults)
    }

    pub fn set(&self, faults: Faults) -> Result<(), InvalidFaults> {
        faults.validate()?;
        self.write(|state| state.faults = faults);
        Ok(())
    }

    /// Makes every Graph call answer `503` for `duration` from now; zero ends an outage.
    pub fn start_outage(&self, duration: Duration) {
        let until = (!duration.is_zero()).then(|| Instant::now() + duration);
        self.write(|state| state.outage_until = until);
    }

    pub fn outage_remaining(&self) -> Option<Duration> {
        remaining(self.read(|state| state.outage_until))
    }

    /// Makes every Graph call answer `403 Authorization_RequestDenied` for `duration` from
    /// now; zero ends a denial. Tokens are still issued, as when consent is withdrawn but
    /// the app registration and its secret stay valid.
    pub fn start_denial(&self, duration: Duration) {
        let until = (!duration.is_zero()).then(|| Instant::now() + duration);
        self.write(|state| state.denial_until = until);
    }

    pub fn denial_remaining(&self) -> Option<Duration> {
        remaining(self.read(|state| state.denial_until))
    }

    pub fn status(&self) -> FaultsStatus {
        FaultsStatus {
            faults: self.faults(),
            outage_remaining: self.outage_remaining(),
            denial_remaining: self.denial_remaining(),
        }
    }

    /// Waits out this request's latency, then says which fault, if any, replaces its reply.
    /// The decision follows the wait, so an outage that starts meanwhile already applies.
    pub async fn before_graph_call(&self) -> Option<InjectedFault> {
        let delay = self.faults().delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let faults = self.faults();
        decide(&faults, self.outage_remaining().is_some(), rand::random()).map(|kind| {
            InjectedFault {
                kind,
                retry_after_secs: faults.retry_after_secs,
            }
        })
    }

    fn read<T>(&self, f: impl FnOnce(&FaultState) -> T) -> T {
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write(&self, f: impl FnOnce(&mut FaultState)) {
        f(&mut self.state.write().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Time left until `until`; `None` once it has passed, so an ended spell reads as none.
fn remaining(until: Option<Instant>) -> Option<Duration> {
    let remaining = until?.saturating_duration_since(Instant::now());
    (!remaining.is_zero()).then_some(remaining)
}

/// The fault for one request, given whether an outage is under way and a uniform draw in
/// `[0, 1)`: 503 below the 503 rate, 429 in the next slice of the 429 rate's width.
fn decide(faults: &Faults, in_outage: bool, draw: f64) -> Option<FaultKind> {
    if in_outage {
        Some(FaultKind::Outage)
    } else if draw < faults.error_503_rate {
        Some(FaultKind::Unavailable)
    } else if draw < faults.error_503_rate + faults.error_429_rate {
        Some(FaultKind::Throttled)
    } else {
        None
    }
}

/// Writes a duration the way it is read back: `"1s 500ms"`.
/// Reads a duration written the human way (`"500ms"`, `"2s"`), as `human_duration` writes it.
fn duration_from_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim()).map_err(|error| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"500ms\" or \"2s\": {error}"
        ))
    })
}

fn human_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

fn human_duration_option<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => human_duration(duration, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(error_503_rate: f64, error_429_rate: f64) -> Faults {
        Faults {
            error_503_rate,
            error_429_rate,
            retry_after_secs: 7,
            ..Faults::default()
        }
    }

    #[test]
    fn one_draw_picks_at_most_one_fault() {
        let faults = faults(0.2, 0.3);
        assert_eq!(decide(&faults, false, 0.1), Some(FaultKind::Unavailable));
        assert_eq!(decide(&faults, false, 0.2), Some(FaultKind::Throttled));
        assert_eq!(decide(&faults, false, 0.5), None);
        assert_eq!(decide(&faults, true, 0.9), Some(FaultKind::Outage));
    }

    #[test]
    fn zero_rates_never_fail() {
        assert_eq!(decide(&Faults::default(), false, 0.0), None);
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        assert!(faults(1.5, 0.0).validate().is_err());
        assert!(faults(0.0, -0.1).validate().is_err());
        assert!(faults(f64::NAN, 0.0).validate().is_err());
        assert!(faults(0.6, 0.6).validate().is_err());
        assert!(faults(0.5, 0.5).validate().is_ok());
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let faults = Faults {
            latency: Duration::from_millis(10),
            latency_jitter: Duration::from_millis(5),
            ..Faults::default()
        };
        for _ in 0..100 {
            let delay = faults.delay();
            assert!(delay >= Duration::from_millis(10) && delay <= Duration::from_millis(15));
        }
    }

    #[test]
    fn a_denial_runs_apart_from_an_outage_and_zero_ends_it() {
        let injector = FaultInjector::new(Faults::default());
        injector.start_denial(Duration::from_secs(60));
        assert!(injector.denial_remaining().is_some());
        assert_eq!(injector.outage_remaining(), None);
        let shown = serde_json::to_value(injector.status()).expect("status serializes");
        assert!(shown["denial_remaining"].is_string(), "{shown}");
        assert_eq!(shown["outage_remaining"], serde_json::Value::Null);
        injector.start_denial(Duration::ZERO);
        assert_eq!(injector.denial_remaining(), None);
    }

    #[test]
    fn durations_round_trip_through_json() {
        let faults = Faults {
            latency: Duration::from_millis(1500),
            ..Faults::default()
        };
        let json = serde_json::to_value(faults).expect("faults serialize");
        assert_eq!(json["latency"], "1s 500ms");
        let back: Faults = serde_json::from_value(json).expect("faults deserialize");
        assert_eq!(back, faults);
    }
}
