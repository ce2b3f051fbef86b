//! Throttling as flow control: one gate per tenant that every Graph request of that tenant
//! passes, closed by Graph's `429` (or a `503` with `Retry-After`) and paced at a rate that
//! adapts to the tenant's limit.
//!
//! Graph throttles per app and tenant, so a throttled reply to one command says that every
//! request for the tenant should wait. The gate stays closed until `Retry-After` has passed
//! (one wait capped at `retry.max_interval`). Each throttling episode also lowers the
//! tenant's request rate multiplicatively, and every second of successful sending raises it
//! a little (AIMD, as TCP does), so the rate settles just under the limit instead of
//! bursting into it again and again. Tenants are independent: one tenant's throttling never
//! slows another's commands.
//!
//! [`GateState`] holds the decisions as plain functions of an explicit `now`, so they are
//! tested without sleeping; [`TenantGate`] wraps it for the commands in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::telemetry::metrics;

/// The share by which a throttling episode lowers the rate.
const DECREASE: f64 = 0.9;
/// The share of the current rate added per second of sending without throttling: from
/// 0.9 × the limit back to it in about ten seconds.
const INCREASE_PER_SECOND: f64 = 0.01;
/// The rate never falls below this, so a tenant always makes progress.
const MIN_RATE: f64 = 0.5;
/// Above this a rate limits nothing a worker could send.
const MAX_RATE: f64 = 1_000_000.0;
/// The window over which successful requests are counted to estimate the tenant's limit.
const WINDOW: Duration = Duration::from_secs(1);

/// The gates of every tenant the worker has sent requests for. Tenants come from the
/// configuration (`auth.tenant_id` and `auth.allowed_tenants`), so the map stays small.
#[derive(Debug)]
pub struct Throttle {
    /// The longest one throttled reply may close a gate.
    max_wait: Duration,
    tenants: Mutex<HashMap<String, Arc<TenantGate>>>,
}

impl Throttle {
    pub fn new(max_wait: Duration) -> Self {
        Self {
            max_wait,
            tenants: Mutex::default(),
        }
    }

    /// The gate of `tenant`, created open on first use.
    pub fn gate(&self, tenant: &str) -> Arc<TenantGate> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants
            .entry(tenant.to_ascii_lowercase())
            .or_insert_with_key(|tenant| {
                Arc::new(TenantGate {
                    tenant: tenant.clone(),
                    max_wait: self.max_wait,
                    state: Mutex::new(GateState::new(Instant::now())),
                })
            })
            .clone()
    }

    /// What `/readyz` shows: every tenant's gate, by tenant.
    pub fn report(&self) -> Vec<GateReport> {
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut reports: Vec<GateReport> = tenants.values().map(|gate| gate.report(now)).collect();
        reports.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        reports
    }
}

/// One tenant's gate as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateReport {
    pub tenant: String,
    /// The gate is closed: requests wait for Graph's `Retry-After`.
    pub throttled: bool,
    /// Milliseconds until it opens again, when closed.
    pub reopens_in_ms: Option<u64>,
    /// The adapted requests per second, once the tenant was throttled; `None` is unpaced.
    pub rate_limit: Option<f64>,
    /// Throttled replies so far.
    pub throttled_replies: u64,
}

/// A request's pass through the gate: when it was let through, so its reply can be told
/// apart from the replies of an earlier episode.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    admitted_at: Instant,
}

/// The gate every Graph request of one tenant passes.
#[derive(Debug)]
pub struct TenantGate {
    tenant: String,
    max_wait: Duration,
    state: Mutex<GateState>,
}

impl TenantGate {
    /// Waits until the gate is open and the tenant's pacing gives this request a slot.
    pub async fn admit(&self) -> Pass {
        let mut slot = None;
        loop {
            let now = Instant::now();
            // The first request to look after the gate reopened sets the episode's rate,
            // and every slot taken before that is taken again under it.
            let (adapted, go) = self.with(|state| {
                let adapted = state.adapt(now);
                let go = slot.is_some_and(|generation| state.still_open(now, generation));
                (adapted, go)
            });
            if let Some(rate) = adapted {
                metrics::tenant_rate_limit(&self.tenant, rate);
                tracing::info!(tenant = %self.tenant, rate_limit = rate, "tenant's gate reopened; paced");
            }
            if go {
                self.with(|state| state.note_open(now, &self.tenant));
                return Pass { admitted_at: now };
            }
            let (at, generation) = self.with(|state| state.reserve(now));
            if at <= now {
                self.with(|state| state.note_open(now, &self.tenant));
                return Pass { admitted_at: now };
            }
            slot = Some(generation);
            tokio::time::sleep_until(at).await;
        }
    }

    /// Graph answered a request of this tenant without throttling it.
    pub fn record_success(&self) {
        let now = Instant::now();
        let rate = self.with(|state| state.on_success(now));
        if let Some(rate) = rate {
            metrics::tenant_rate_limit(&self.tenant, rate);
        }
    }

    /// Graph throttled the request that passed with `pass`: close the gate.
    pub fn record_throttled(&self, pass: Pass, retry_after: Option<Duration>) {
        let now = Instant::now();
        let wait = retry_after
            .unwrap_or(Duration::from_secs(1))
            .min(self.max_wait);
        let episode = self.with(|state| state.on_throttled(now, pass.admitted_at, wait));
        metrics::throttled(&self.tenant);
        metrics::tenant_gate_closed(&self.tenant, true);
        if episode.new {
            tracing::info!(
                tenant = %self.tenant,
                wait_ms = wait.as_millis() as u64,
                "tenant throttled by Graph; its requests wait"
            );
        }
    }

    /// Successful replies so far: a command compares two readings to learn whether other
    /// commands of its tenant got through while it was throttled.
    pub fn successes(&self) -> u64 {
        self.with(|state| state.successes)
    }

    fn report(&self, now: Instant) -> GateReport {
        self.with(|state| GateReport {
            tenant: self.tenant.clone(),
            throttled: state.is_closed(now),
            reopens_in_ms: state
                .closed_until
                .filter(|until| *until > now)
                .map(|until| (until - now).as_millis() as u64),
            rate_limit: state.rate,
            throttled_replies: state.throttled,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut GateState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What one throttled reply changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Episode {
    /// The reply began a new throttling episode (rather than being one more reply to a
    /// request sent before the gate closed).
    pub new: bool,
}

/// The decisions of one tenant's gate, as functions of `now`.
#[derive(Debug, Clone)]
pub struct GateState {
    /// Requests wait until then; `None` once it has not been closed yet.
    closed_until: Option<Instant>,
    /// When the current or last episode closed the gate: replies to requests admitted
    /// before it belong to that episode and do not lower the rate again.
    closed_at: Option<Instant>,
    /// The gate was seen closed and no request has passed since (for the gauge).
    shown_closed: bool,
    /// Requests per second; `None` until the first episode, then adapted.
    rate: Option<f64>,
    /// The earliest time the next request may go, spacing requests at `rate`.
    next_slot: Instant,
    /// When the rate last rose or fell.
    adjusted_at: Instant,
    /// Successes in the current and the previous [`WINDOW`], for the limit estimate.
    window_start: Instant,
    this_window: u32,
    last_window: u32,
    successes: u64,
    throttled: u64,
    /// The episode under way, whose new rate is set once the gate reopens.
    pending: Option<PendingEpisode>,
    /// Counts the rate's changes: a request that waited for a slot taken under an older
    /// rate takes a new one.
    generation: u64,
}

/// What is known of a throttling episode while the gate is closed. The rate it leads to is
/// set when the gate reopens, after the replies to the requests in flight at the first
/// throttled reply have come back: with many requests in flight, the first `429` can
/// arrive before the successes of the same burst.
#[derive(Debug, Clone, Copy)]
struct PendingEpisode {
    /// Successes in the second before the first throttled reply, when they measure the
    /// limit (the gate was open all that second, or the tenant has no rate yet).
    before: Option<f64>,
    /// [`GateState::successes`] at the first throttled reply.
    successes_then: u64,
}

impl GateState {
    pub fn new(now: Instant) -> Self {
        Self {
            closed_until: None,
            closed_at: None,
            shown_closed: false,
            rate: None,
            next_slot: now,
            adjusted_at: now,
            window_start: now,
            this_window: 0,
            last_window: 0,
            successes: 0,
            throttled: 0,
            pending: None,
            generation: 0,
        }
    }

    pub fn is_closed(&self, now: Instant) -> bool {
        self.closed_until.is_some_and(|until| now < until)
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// When a request asking at `now` may go; takes that slot. The second value is the
    /// rate's generation the slot was taken under.
    pub fn reserve(&mut self, now: Instant) -> (Instant, u64) {
        let open_at = self.closed_until.map_or(now, |until| until.max(now));
        let at = open_at.max(self.next_slot);
        self.next_slot = match self.rate {
            Some(rate) => at + Duration::from_secs_f64(1.0 / rate),
            None => at,
        };
        (at, self.generation)
    }

    /// Whether a slot taken under `generation` still holds at `now`.
    pub fn still_open(&self, now: Instant, generation: u64) -> bool {
        !self.is_closed(now) && generation == self.generation
    }

    /// Once the gate has reopened after an episode, sets the rate it leads to: 0.9 × what
    /// the limit let through (the successes of the second before the first throttled reply
    /// and of the requests still in flight then), never above the rate the tenant had.
    /// Returns the new rate when it set one.
    pub fn adapt(&mut self, now: Instant) -> Option<f64> {
        if self.is_closed(now) {
            return None;
        }
        let pending = self.pending.take()?;
        let after = self.successes.saturating_sub(pending.successes_then) as f64;
        let estimate = pending
            .before
            .map(|before| before + after)
            .filter(|estimate| *estimate >= 1.0);
        let base = match (self.rate, estimate) {
            (Some(rate), Some(estimate)) => Some(rate.min(estimate)),
            (rate, estimate) => rate.or(estimate),
        };
        self.rate = base.map(|base| (base * DECREASE).max(MIN_RATE));
        self.adjusted_at = now;
        self.next_slot = now;
        self.generation += 1;
        self.rate
    }

    /// Sets the tenant's gauge back to open when the first request passes after the gate
    /// reopened; a gate nobody passes again keeps showing closed.
    fn note_open(&mut self, now: Instant, tenant: &str) {
        if self.shown_closed && !self.is_closed(now) {
            self.shown_closed = false;
            metrics::tenant_gate_closed(tenant, false);
        }
    }

    /// Counts a success and raises the rate for the time sent without throttling; returns
    /// the rate when it changed.
    pub fn on_success(&mut self, now: Instant) -> Option<f64> {
        self.successes += 1;
        self.roll_window(now);
        self.this_window = self.this_window.saturating_add(1);
        let rate = self.rate?;
        let elapsed = now.saturating_duration_since(self.adjusted_at);
        if elapsed < Duration::from_millis(100) {
            return None;
        }
        let raised = (rate * (1.0 + INCREASE_PER_SECOND * elapsed.as_secs_f64())).min(MAX_RATE);
        self.rate = Some(raised);
        self.adjusted_at = now;
        Some(raised)
    }

    /// Closes the gate for `wait` after a throttled reply to a request admitted at
    /// `admitted_at`; the first reply of an episode also lowers the rate.
    pub fn on_throttled(&mut self, now: Instant, admitted_at: Instant, wait: Duration) -> Episode {
        self.throttled += 1;
        let until = now + wait;
        // Whether the gate stayed open over the whole last window: only then do the
        // successes counted in it measure the limit, not the time the gate was shut.
        let open_all_window = self
            .closed_until
            .is_none_or(|reopened| now.saturating_duration_since(reopened) >= WINDOW);
        self.closed_until = Some(self.closed_until.map_or(until, |old| old.max(until)));
        self.shown_closed = true;
        let same_episode = self.closed_at.is_some_and(|closed| admitted_at < closed);
        if same_episode {
            return Episode { new: false };
        }
        self.closed_at = Some(now);
        // Successes estimate what the tenant's limit let through; when the tenant has a
        // rate already, the estimate only ever lowers it, since a worker that sends less
        // than its rate allows measures its own pace, not the limit.
        let before = self
            .recent_successes(now)
            .filter(|_| open_all_window || self.rate.is_none());
        self.pending = Some(PendingEpisode {
            before,
            successes_then: self.successes,
        });
        self.next_slot = self.next_slot.max(until);
        Episode { new: true }
    }

    /// Successes in the last [`WINDOW`], the previous window weighed by its overlap.
    fn recent_successes(&mut self, now: Instant) -> Option<f64> {
        self.roll_window(now);
        let into = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64()
            / WINDOW.as_secs_f64();
        Some(f64::from(self.last_window) * (1.0 - into).max(0.0) + f64::from(self.this_window))
    }

    fn roll_window(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.window_start);
        if since < WINDOW {
            return;
        }
        self.last_window = if since < 2 * WINDOW {
            self.this_window
        } else {
            0
        };
        self.this_window = 0;
        self.window_start = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `count` successes from `from`, `gap` apart.
    fn successes(gate: &mut GateState, from: Instant, count: u64, gap: Duration) {
        for n in 0..count {
            gate.on_success(from + gap * u32::try_from(n).expect("small"));
        }
    }

    #[test]
    fn an_unthrottled_tenant_is_neither_closed_nor_paced() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        for n in 0..100 {
            assert_eq!(gate.reserve(t0 + ms(n)).0, t0 + ms(n));
            gate.on_success(t0 + ms(n));
        }
        assert_eq!(gate.rate(), None);
    }

    #[test]
    fn a_throttled_reply_closes_the_gate_for_retry_after() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        let (admitted, _) = gate.reserve(t0);
        gate.on_throttled(t0 + ms(5), admitted, Duration::from_secs(2));
        assert!(gate.is_closed(t0 + ms(1_000)));
        assert!(!gate.is_closed(t0 + ms(2_005)));
        // A request asking while it is closed goes when it opens.
        assert_eq!(gate.reserve(t0 + ms(100)).0, t0 + ms(2_005));
        assert_eq!(gate.adapt(t0 + ms(1_000)), None, "no rate while closed");
    }

    #[test]
    fn the_rate_is_set_when_the_gate_reopens_just_under_what_got_through() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        // A burst of 40 successes, then the limit answers 429.
        successes(&mut gate, t0, 40, ms(1));
        let episode = gate.on_throttled(t0 + ms(41), t0 + ms(40), Duration::from_secs(1));
        assert!(episode.new);
        assert_eq!(gate.rate(), None, "set when the gate reopens");
        let open = t0 + ms(1_041);
        let rate = gate.adapt(open).expect("a rate");
        assert!((rate - 36.0).abs() < 0.01, "{rate}");
        // Requests after the gate opens are spaced at that rate.
        let (first, _) = gate.reserve(open);
        let (second, _) = gate.reserve(open);
        assert_eq!(first, open);
        assert_eq!(second - first, Duration::from_secs_f64(1.0 / rate));
    }

    #[test]
    fn successes_of_the_burst_that_come_back_after_the_first_429_count_too() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        // 256 requests at once against a limit of 200: one success is back when the
        // first 429 arrives, 199 more and 55 more 429s follow.
        gate.on_success(t0 + ms(1));
        gate.on_throttled(t0 + ms(2), t0, Duration::from_secs(1));
        successes(&mut gate, t0 + ms(3), 199, Duration::from_micros(100));
        for _ in 0..55 {
            assert!(
                !gate
                    .on_throttled(t0 + ms(30), t0, Duration::from_secs(1))
                    .new
            );
        }
        let rate = gate.adapt(t0 + ms(1_030)).expect("a rate");
        assert!((rate - 180.0).abs() < 0.01, "{rate}");
    }

    #[test]
    fn a_slot_taken_under_an_older_rate_is_taken_again() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        successes(&mut gate, t0, 40, ms(1));
        gate.on_throttled(t0 + ms(41), t0 + ms(40), Duration::from_secs(1));
        // Ten requests wait for the gate, all for the moment it reopens (no rate yet).
        let open = t0 + ms(1_041);
        let slots: Vec<(Instant, u64)> = (0..10).map(|_| gate.reserve(t0 + ms(50))).collect();
        assert!(slots.iter().all(|(at, _)| *at == open));
        gate.adapt(open).expect("a rate");
        // None may go on its old slot: each takes a new one, paced.
        assert!(
            slots
                .iter()
                .all(|(_, generation)| !gate.still_open(open, *generation))
        );
        let (first, generation) = gate.reserve(open);
        assert!(gate.still_open(first, generation));
        assert!(gate.reserve(open).0 > first);
    }

    #[test]
    fn replies_to_requests_sent_before_the_gate_closed_do_not_lower_the_rate_again() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        successes(&mut gate, t0, 40, ms(1));
        gate.on_throttled(t0 + ms(41), t0 + ms(40), Duration::from_secs(1));
        // 20 more requests were in flight when the first 429 came back.
        for n in 0..20 {
            let episode = gate.on_throttled(t0 + ms(42 + n), t0 + ms(40), Duration::from_secs(1));
            assert!(!episode.new);
        }
        let rate = gate.adapt(t0 + ms(1_100)).expect("a rate");
        // A request admitted after the gate reopened that is throttled again starts a new
        // episode and lowers the rate once more.
        let episode = gate.on_throttled(t0 + ms(1_200), t0 + ms(1_150), Duration::from_secs(1));
        assert!(episode.new);
        let lowered = gate.adapt(t0 + ms(2_200)).expect("a rate");
        assert!(lowered < rate, "{rate} → {lowered}");
    }

    #[test]
    fn sending_without_throttling_raises_the_rate_slowly() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        successes(&mut gate, t0, 40, ms(1));
        gate.on_throttled(t0 + ms(40), t0 + ms(40), Duration::from_secs(1));
        let start = gate.adapt(t0 + ms(1_040)).expect("rate");
        // Ten seconds of successes after the gate opened.
        successes(&mut gate, t0 + ms(1_040), 101, ms(100));
        let raised = gate.rate().expect("rate");
        assert!(
            raised > start * 1.09 && raised < start * 1.12,
            "{start} → {raised}"
        );
    }

    #[test]
    fn an_episode_lowers_an_existing_rate_to_what_got_through_when_that_is_less() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        successes(&mut gate, t0, 100, ms(1));
        gate.on_throttled(t0 + ms(100), t0 + ms(100), ms(100));
        let rate = gate.adapt(t0 + ms(200)).expect("rate");
        assert!((rate - 90.0).abs() < 0.01, "{rate}");
        // The rate grew far above the limit during a long quiet spell, and the limit let
        // 50 through in the last second.
        let t1 = t0 + Duration::from_secs(10);
        successes(&mut gate, t1, 50, ms(20));
        gate.rate = Some(10_000.0);
        gate.on_throttled(t1 + ms(1_000), t1 + ms(999), ms(100));
        let rate = gate.adapt(t1 + ms(1_100)).expect("rate");
        assert!(rate < 50.0, "{rate}");
    }

    #[test]
    fn successes_of_a_window_the_gate_was_shut_in_part_do_not_lower_the_rate() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        successes(&mut gate, t0, 40, ms(1));
        gate.on_throttled(t0 + ms(40), t0 + ms(40), Duration::from_secs(1));
        let rate = gate.adapt(t0 + ms(1_040)).expect("rate");
        // 300 ms after the gate reopened, after 10 successes, a 429 again.
        successes(&mut gate, t0 + ms(1_040), 10, ms(30));
        gate.on_throttled(t0 + ms(1_340), t0 + ms(1_339), Duration::from_secs(1));
        let lowered = gate.adapt(t0 + ms(2_340)).expect("rate");
        assert!(
            lowered > rate * 0.85,
            "lowered by the episode, not to the 10 of a part-open window: {rate} → {lowered}"
        );
    }

    #[test]
    fn a_throttled_reply_with_nothing_got_through_keeps_the_tenant_unpaced() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        gate.on_throttled(t0, t0, Duration::from_secs(1));
        assert!(gate.is_closed(t0 + ms(999)));
        assert_eq!(gate.adapt(t0 + ms(1_000)), None);
        assert_eq!(gate.rate(), None);
    }

    #[test]
    fn the_rate_never_falls_below_the_floor() {
        let t0 = Instant::now();
        let mut gate = GateState::new(t0);
        successes(&mut gate, t0, 40, ms(1));
        let mut now = t0 + ms(40);
        for _ in 0..100 {
            gate.on_throttled(now, now, ms(10));
            gate.adapt(now + ms(10));
            now += Duration::from_secs(2);
        }
        assert_eq!(gate.rate(), Some(MIN_RATE));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_pass_once_the_gate_opens_and_other_tenants_never_wait() {
        let throttle = Throttle::new(Duration::from_secs(30));
        let busy = throttle.gate("Busy-Tenant");
        let calm = throttle.gate("calm");
        let pass = busy.admit().await;
        busy.record_throttled(pass, Some(Duration::from_secs(3)));
        let started = Instant::now();
        calm.admit().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        busy.admit().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // Tenant ids compare without case, as Entra's do.
        assert!(Arc::ptr_eq(&busy, &throttle.gate("busy-tenant")));
        let report = throttle.report();
        assert_eq!(report.len(), 2);
        assert_eq!(report[0].tenant, "busy-tenant");
        assert_eq!(report[0].throttled_replies, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_reply_closes_the_gate_no_longer_than_the_cap() {
        let throttle = Throttle::new(Duration::from_secs(5));
        let gate = throttle.gate("t");
        let pass = gate.admit().await;
        gate.record_throttled(pass, Some(Duration::from_secs(3_600)));
        let started = Instant::now();
        gate.admit().await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
