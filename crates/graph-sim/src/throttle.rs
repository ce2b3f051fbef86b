//! A per-tenant throttle for the Graph routes: one token bucket per tenant, as Graph limits
//! each tenant's calls to a service, so a client's handling of sustained `429`s and of
//! `Retry-After` can be tested with a rate it can actually exceed.
//!
//! Unlike the random `429`s of `faults`, these follow from what the client sent: a client
//! that keeps under the rate is never throttled, and one that bursts past the bucket is
//! told, in whole seconds, when the next call would be let through. A refused call takes
//! no token, so a client that retries at once stays refused instead of digging deeper.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Tenants whose buckets are held before the full ones are forgotten; the `tid` of a token
/// is whatever tenant its caller named, so the map must not grow with every name tried.
const MAX_TENANT_BUCKETS: usize = 10_000;

/// The throttle's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ThrottleJson")]
pub struct Throttle {
    /// The sustained rate each tenant is allowed; fractions allowed, so a test can ask for
    /// a call every few seconds.
    pub requests_per_second: f64,
    /// Calls a tenant can make at once after being idle: the bucket's size. A tenant's
    /// bucket starts full.
    pub burst: u32,
    /// The tenants throttled, compared ignoring case; empty throttles every tenant, so a
    /// test can throttle one tenant and check another goes on unhindered.
    pub tenants: Vec<String>,
}

impl Throttle {
    /// A throttle of every tenant at `requests_per_second`, with the default burst.
    pub fn new(requests_per_second: f64) -> Self {
        Self {
            requests_per_second,
            burst: default_burst(requests_per_second),
            tenants: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), InvalidThrottle> {
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return Err(InvalidThrottle(format!(
                "requests_per_second is {}; it must be a positive number",
                self.requests_per_second
            )));
        }
        if self.burst == 0 {
            return Err(InvalidThrottle(
                "burst is 0; it must be at least 1, or left out for the default".to_owned(),
            ));
        }
        Ok(())
    }

    fn applies_to(&self, tenant: &str) -> bool {
        self.tenants.is_empty()
            || self
                .tenants
                .iter()
                .any(|throttled| throttled.eq_ignore_ascii_case(tenant))
    }
}

/// The default bucket: one second's worth of calls, and never less than one call.
fn default_burst(requests_per_second: f64) -> u32 {
    // `as` saturates, so a huge or NaN rate gives a bucket that validation then judges.
    (requests_per_second.ceil() as u32).max(1)
}

/// A throttle as JSON, where `burst` and `tenants` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleJson {
    requests_per_second: f64,
    burst: Option<u32>,
    #[serde(default)]
    tenants: Vec<String>,
}

impl From<ThrottleJson> for Throttle {
    fn from(json: ThrottleJson) -> Self {
        Self {
            requests_per_second: json.requests_per_second,
            burst: json
                .burst
                .unwrap_or_else(|| default_burst(json.requests_per_second)),
            tenants: json.tenants,
        }
    }
}

/// Throttle settings that make no sense, such as a rate of zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid throttle: {0}")]
pub struct InvalidThrottle(String);

/// A refused call: when the tenant's next token will be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Whole seconds, rounded up and at least 1, so a client that waits this long is let
    /// through.
    pub retry_after_secs: u64,
}

/// One tenant's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Fractional, so refill need not wait for whole tokens.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl Bucket {
    /// Brings the bucket up to `now`: `rate` tokens a second, never more than `burst`.
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        // An instant earlier than the last one (no clock goes back, but callers pass
        // instants) leaves the bucket as it was instead of moving its clock back.
        self.updated = self.updated.max(now);
    }
}

struct ThrottleState {
    settings: Throttle,
    /// Keyed by the tenant in lower case, as tenants are compared ignoring case.
    buckets: HashMap<String, Bucket>,
}

impl ThrottleState {
    fn new(settings: Throttle) -> Self {
        Self {
            settings,
            buckets: HashMap::new(),
        }
    }

    fn take(&mut self, tenant: &str, now: Instant) -> Result<(), Throttled> {
        if !self.settings.applies_to(tenant) {
            return Ok(());
        }
        let rate = self.settings.requests_per_second;
        let burst = f64::from(self.settings.burst);
        let key = tenant.to_ascii_lowercase();
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TENANT_BUCKETS {
            self.forget_full_buckets(now);
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.refill(now, rate, burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / rate;
        Err(Throttled {
            retry_after_secs: whole_seconds_up(wait),
        })
    }

    /// A full bucket acts as a fresh one would, so forgetting it changes no answer. Should
    /// every tenant be mid-burst, all are forgotten: memory stays bounded, at the price of
    /// letting those tenants burst again.
    fn forget_full_buckets(&mut self, now: Instant) {
        let (rate, burst) = (
            self.settings.requests_per_second,
            f64::from(self.settings.burst),
        );
        self.buckets.retain(|_, bucket| {
            bucket.refill(now, rate, burst);
            bucket.tokens < burst
        });
        if self.buckets.len() >= MAX_TENANT_BUCKETS {
            self.buckets.clear();
        }
    }
}

/// `seconds` rounded up to whole seconds, at least 1. A microsecond's tolerance keeps
/// float noise (2.0000000001 for an exact 2) from adding a second.
fn whole_seconds_up(seconds: f64) -> u64 {
    let tolerance = Duration::from_micros(1).as_secs_f64();
    // `as` saturates; the rate is positive and finite, so the wait is too.
    ((seconds - tolerance).ceil() as u64).max(1)
}

/// The live throttle, read by every Graph request and changed by the control API.
pub struct TenantThrottle {
    /// `None` while no throttle is set, the usual case, which then costs one uncontended
    /// lock per request.
    state: Mutex<Option<ThrottleState>>,
}

impl TenantThrottle {
    pub fn new(settings: Option<Throttle>) -> Self {
        Self {
            state: Mutex::new(settings.map(ThrottleState::new)),
        }
    }

    pub fn settings(&self) -> Option<Throttle> {
        self.lock().as_ref().map(|state| state.settings.clone())
    }

    /// Replaces the settings; `None` turns the throttle off. Every bucket starts afresh
    /// (full), so a test that changes the rate is not held to calls made under the old one.
    pub fn set(&self, settings: Option<Throttle>) -> Result<(), InvalidThrottle> {
        if let Some(settings) = &settings {
            settings.validate()?;
        }
        *self.lock() = settings.map(ThrottleState::new);
        Ok(())
    }

    /// Takes one of `tenant`'s tokens, or says how long until there is one.
    pub fn take(&self, tenant: &str) -> Result<(), Throttled> {
        self.take_at(tenant, Instant::now())
    }

    fn take_at(&self, tenant: &str, now: Instant) -> Result<(), Throttled> {
        match self.lock().as_mut() {
            Some(state) => state.take(tenant, now),
            None => Ok(()),
        }
    }

    /// Nothing done under the lock can panic half-way through an update, so a poisoned
    /// lock still guards consistent buckets.
    fn lock(&self) -> MutexGuard<'_, Option<ThrottleState>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(requests_per_second: f64, burst: u32) -> TenantThrottle {
        TenantThrottle::new(Some(Throttle {
            burst,
            ..Throttle::new(requests_per_second)
        }))
    }

    fn retry_after(result: Result<(), Throttled>) -> Option<u64> {
        result.err().map(|throttled| throttled.retry_after_secs)
    }

    #[test]
    fn a_burst_past_the_bucket_is_refused_and_refusals_take_no_token() {
        let throttle = throttle(2.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(throttle.take_at("t", start), Ok(()));
        }
        assert_eq!(retry_after(throttle.take_at("t", start)), Some(1));
        assert_eq!(retry_after(throttle.take_at("t", start)), Some(1));
        // Half a second refills one token at 2/s; the refusals above took none of it.
        let later = start + Duration::from_millis(500);
        assert_eq!(throttle.take_at("t", later), Ok(()));
        assert_eq!(retry_after(throttle.take_at("t", later)), Some(1));
    }

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_the_burst() {
        let throttle = throttle(10.0, 2);
        let start = Instant::now();
        assert_eq!(throttle.take_at("t", start), Ok(()));
        assert_eq!(throttle.take_at("t", start), Ok(()));
        // A long idle spell refills only up to the burst.
        let later = start + Duration::from_secs(60);
        assert_eq!(throttle.take_at("t", later), Ok(()));
        assert_eq!(throttle.take_at("t", later), Ok(()));
        assert!(throttle.take_at("t", later).is_err());
        assert_eq!(
            throttle.take_at("t", later + Duration::from_millis(100)),
            Ok(())
        );
    }

    #[test]
    fn retry_after_rounds_the_wait_up_to_whole_seconds() {
        let slow = throttle(0.5, 1);
        let start = Instant::now();
        assert_eq!(slow.take_at("t", start), Ok(()));
        // Two seconds to the next token at 0.5/s.
        assert_eq!(retry_after(slow.take_at("t", start)), Some(2));
        // 1.5 s left rounds up to 2; an exact 1 s stays 1.
        assert_eq!(
            retry_after(slow.take_at("t", start + Duration::from_millis(500))),
            Some(2)
        );
        assert_eq!(
            retry_after(slow.take_at("t", start + Duration::from_secs(1))),
            Some(1)
        );
        assert_eq!(slow.take_at("t", start + Duration::from_secs(2)), Ok(()));

        let slower = throttle(0.3, 1);
        assert_eq!(slower.take_at("t", start), Ok(()));
        assert_eq!(retry_after(slower.take_at("t", start)), Some(4));
    }

    #[test]
    fn tenants_have_their_own_buckets_and_case_does_not_matter() {
        let throttle = throttle(1.0, 1);
        let now = Instant::now();
        assert_eq!(throttle.take_at("Contoso", now), Ok(()));
        assert!(throttle.take_at("contoso", now).is_err());
        assert_eq!(throttle.take_at("fabrikam", now), Ok(()));
        assert!(throttle.take_at("FABRIKAM", now).is_err());
    }

    #[test]
    fn only_the_listed_tenants_are_throttled() {
        let throttle = TenantThrottle::new(Some(Throttle {
            burst: 1,
            tenants: vec!["Contoso".into()],
            ..Throttle::new(1.0)
        }));
        let now = Instant::now();
        assert_eq!(throttle.take_at("contoso", now), Ok(()));
        assert!(throttle.take_at("contoso", now).is_err());
        for _ in 0..10 {
            assert_eq!(throttle.take_at("fabrikam", now), Ok(()));
        }
    }

    #[test]
    fn no_throttle_lets_everything_through_and_new_settings_start_afresh() {
        let throttle = TenantThrottle::new(None);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(throttle.take_at("t", now), Ok(()));
        }
        throttle
            .set(Some(Throttle::new(1.0)))
            .expect("a valid throttle");
        assert_eq!(throttle.take_at("t", now), Ok(()));
        assert!(throttle.take_at("t", now).is_err());
        throttle
            .set(Some(Throttle::new(1.0)))
            .expect("a valid throttle");
        assert_eq!(throttle.take_at("t", now), Ok(()));
        throttle.set(None).expect("off is valid");
        assert_eq!(throttle.settings(), None);
    }

    #[test]
    fn memory_stays_bounded_however_many_tenants_call() {
        let throttle = throttle(1.0, 1);
        let now = Instant::now();
        for tenant in 0..MAX_TENANT_BUCKETS + 10 {
            assert_eq!(throttle.take_at(&tenant.to_string(), now), Ok(()));
        }
        let held = throttle
            .lock()
            .as_ref()
            .map_or(0, |state| state.buckets.len());
        assert!(held <= MAX_TENANT_BUCKETS, "{held}");
    }

    #[test]
    fn the_burst_defaults_to_a_seconds_worth_and_bad_settings_are_refused() {
        assert_eq!(Throttle::new(40.0).burst, 40);
        assert_eq!(Throttle::new(2.5).burst, 3);
        assert_eq!(Throttle::new(0.2).burst, 1);
        let parsed: Throttle =
            serde_json::from_value(serde_json::json!({"requests_per_second": 1.5}))
                .expect("a throttle");
        assert_eq!(parsed, Throttle::new(1.5));
        assert!(
            serde_json::from_value::<Throttle>(serde_json::json!({"rps": 1})).is_err(),
            "unknown fields are refused"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Throttle::new(bad).validate().is_err(), "{bad}");
        }
        let no_burst = Throttle {
            burst: 0,
            ..Throttle::new(1.0)
        };
        assert!(no_burst.validate().is_err());
        assert!(TenantThrottle::new(None).set(Some(no_burst)).is_err());
    }
}
