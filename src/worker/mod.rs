//! The consume loop: moves deliveries from the command queue through the handler to an
//! outcome event, and settles each delivery only after its event was confirmed.
//!
//! [`run`] owns the connection life cycle: connect, declare the topology, consume with
//! bounded concurrency; on connection loss reconnect with capped backoff; while the
//! circuit breaker is open consume nothing and probe. The caller decides when to stop by
//! resolving the `shutdown` future.
//!
//! The parts, by file: this one holds the session and reconnect cycle and the pause's
//! probing; `consume` the consuming phases (as usual, and the trial after a pause);
//! `settle` one delivery from start to settlement.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::amqp::publisher::EventPublisher;
use crate::amqp::topology::TopologyError;
use crate::amqp::{self, topology};
use crate::breaker::{BreakerState, CircuitBreaker};
use crate::command::CommandRules;
use crate::config::Settings;
use crate::handler::{AbortHandler, SetupError};
use crate::health::Health;
use crate::http::BindError;
use crate::telemetry::metrics;

mod consume;
mod settle;

/// Shortest and longest wait between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Runs the worker until `shutdown` resolves; returns an error only for problems that
/// reconnecting cannot fix (such as a topology mismatch).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    run_with_health(settings, Arc::default(), shutdown).await
}

/// [`run`], reporting its state into `health` for the operations endpoints and for tests.
pub async fn run_with_health(
    settings: Settings,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let stop = CancellationToken::new();
    // Whatever way this returns, the operations endpoints stop with it.
    let _stop_endpoints = stop.clone().drop_guard();
    let metrics = metrics::install();
    if let Some(listen) = settings.http.listen {
        let address = crate::http::serve(listen, health.clone(), metrics, stop.clone()).await?;
        health.set_http_address(address);
    }
    let worker = Worker::new(settings, health, stop.clone())?;
    let body = worker.run();
    tokio::pin!(body);
    tokio::select! {
        result = &mut body => return result,
        () = shutdown => {
            tracing::info!("shutdown requested");
            stop.cancel();
        }
    }
    body.await
}

/// What every command task needs; shared by reference.
struct Shared {
    settings: Settings,
    handler: AbortHandler,
    breaker: Arc<CircuitBreaker>,
    rules: CommandRules,
}

struct Worker {
    shared: Arc<Shared>,
    health: Arc<Health>,
    stop: CancellationToken,
    /// Where the next connection starts among the broker nodes: after the one last used, so
    /// a worker that lost its node goes on to the next reachable one.
    next_node: std::sync::atomic::AtomicUsize,
}

/// Why a broker session ended.
enum SessionEnd {
    Shutdown,
    Lost(Lost),
}

/// How a session was lost; the worker reconnects whichever it is, and logs it.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the connection closed")]
    ConnectionClosed,
    #[error("the publishing channel closed")]
    PublisherClosed,
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
}

/// Why one consuming phase of a session ended.
enum PhaseEnd {
    Session(SessionEnd),
    /// The breaker opened: the worker stopped consuming to probe.
    Paused,
    /// A trial ended with the breaker closed: consume as usual.
    Resumed,
}

impl PhaseEnd {
    fn lost(how: impl Into<Lost>) -> Self {
        Self::Session(SessionEnd::Lost(how.into()))
    }

    fn is_lost(&self) -> bool {
        matches!(self, Self::Session(SessionEnd::Lost(_)))
    }
}

/// Why the worker stopped short of a shutdown: nothing that reconnecting could fix.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Endpoints(#[from] BindError),
    /// The broker holds a queue or exchange with other settings than the worker's.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// Why a broker session failed: the broker's error, or a topology the worker cannot use.
/// A topology that conflicts with the settings ends the run ([`TopologyError::is_fatal`]);
/// anything else is retried on a new connection.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

impl Worker {
    fn new(
        settings: Settings,
        health: Arc<Health>,
        stop: CancellationToken,
    ) -> Result<Self, SetupError> {
        let breaker = Arc::new(CircuitBreaker::new(&settings.pause));
        let handler = AbortHandler::from_settings(&settings, breaker.clone())?;
        let rules = CommandRules::new(
            &settings.graph.base_url(),
            &settings.auth.tenant_id,
            &settings.auth.allowed_tenants,
        );
        health.set_throttle(handler.throttle().clone());
        metrics::paused(false);
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                handler,
                breaker,
                rules,
            }),
            health,
            stop,
            next_node: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    async fn run(self) -> Result<(), RunError> {
        let mut delays = reconnect_backoff();
        loop {
            let problem = match self.session().await {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Lost(problem)) => {
                    metrics::broker_reconnect();
                    // The session was up, so the next outage starts its backoff afresh.
                    delays = reconnect_backoff();
                    problem.to_string()
                }
                Err(SessionError::Topology(error)) if error.is_fatal() => return Err(error.into()),
                Err(error) => error.to_string(),
            };
            self.health.set_connected(false);
            let delay = delays.next().unwrap_or(RECONNECT_MAX).min(RECONNECT_MAX);
            tracing::warn!(
                problem = %problem,
                retry_in_ms = delay.as_millis() as u64,
                "broker session ended; reconnecting"
            );
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's life: connect, run on it, and close it whatever happened — a
    /// connection still up after a loss (a closed channel, a cancelled consumer, a failed
    /// declaration) must not be left behind by the reconnect.
    async fn session(&self) -> Result<SessionEnd, SessionError> {
        let settings = &self.shared.settings;
        let connection = tokio::select! {
            () = self.stop.cancelled() => return Ok(SessionEnd::Shutdown),
            connected = amqp::connect_from(&settings.amqp, "worker", self.next_node.load(Ordering::Relaxed)) => {
                let (connection, position, node) = connected?;
                self.next_node.store(position + 1, Ordering::Relaxed);
                let node = node.host_port();
                tracing::info!(%node, "connected to the broker");
                metrics::broker_node(&node);
                self.health.set_broker_node(node);
                connection
            }
        };
        let end = self.session_on(&connection).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            connection.close(200, "session over".into()),
        )
        .await;
        self.health.set_connected(false);
        end
    }

    /// Declares, then consumes — pausing to probe whenever the breaker opens — until the
    /// connection breaks or shutdown.
    async fn session_on(&self, connection: &Connection) -> Result<SessionEnd, SessionError> {
        let settings = &self.shared.settings;
        topology::declare(
            connection,
            &settings.amqp,
            &settings.retry.redelivery_delays,
        )
        .await?;
        // Shared by the commands' tasks: cloning it per command copied its exchange names.
        let publisher = Arc::new(EventPublisher::open(connection, &settings.amqp).await?);
        self.health.set_connected(true);
        let lost = watch_connection(connection);
        let mut probes = self.probe_backoff();
        let end = loop {
            let phase = match self.shared.breaker.state() {
                BreakerState::Closed => self.consume(connection, &publisher, &lost).await,
                BreakerState::Trial => self.trial(connection, &publisher, &lost).await,
                BreakerState::Open(_) => Ok(PhaseEnd::Paused),
            };
            match phase {
                Ok(PhaseEnd::Paused) => {
                    self.health.set_paused(true);
                    metrics::paused(true);
                    if !self.probe(&mut probes).await {
                        break Ok(SessionEnd::Shutdown);
                    }
                }
                Ok(PhaseEnd::Resumed) => {
                    probes = self.probe_backoff();
                    self.health.set_paused(false);
                    metrics::paused(false);
                }
                Ok(PhaseEnd::Session(end)) => break Ok(end),
                Err(error) => break Err(error),
            }
        };
        // Closed before the connection: lapin logs an error when closing the connection
        // finds a channel still open. A lost session has nothing left to close.
        if !matches!(end, Ok(SessionEnd::Lost(_))) {
            let _ = tokio::time::timeout(consume::TEARDOWN, publisher.close()).await;
        }
        end
    }

    /// Waits, with backoff, until a probe that needs no command passes (a newly issued token
    /// and a Graph read); then lets trial commands through. Returns `false` on shutdown.
    async fn probe(&self, delays: &mut impl Iterator<Item = Duration>) -> bool {
        loop {
            let delay = delays
                .next()
                .unwrap_or(self.shared.settings.pause.probe_max_interval);
            tracing::info!(retry_in_ms = delay.as_millis() as u64, "paused; probing");
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            if self.shared.handler.probe_now().await {
                tracing::info!("probe passed; trying commands one at a time");
                self.shared.breaker.begin_trial();
                return true;
            }
            tracing::warn!("probe failed; staying paused");
        }
    }

    fn probe_backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let pause = &self.shared.settings.pause;
        ExponentialBuilder::new()
            .with_min_delay(pause.probe_initial_interval)
            .with_max_delay(pause.probe_max_interval)
            .with_jitter()
            .without_max_times()
            .build()
            .map({
                let max = pause.probe_max_interval;
                move |delay| delay.min(max)
            })
    }
}

/// Trips when the connection reports an error, which a consumer waiting for deliveries
/// would not notice by itself.
struct ConnectionLost {
    token: CancellationToken,
    reason: Arc<std::sync::Mutex<Option<Lost>>>,
}

impl ConnectionLost {
    /// What the connection reported, once it has tripped.
    fn reason(&self) -> Lost {
        self.reason
            .lock()
            .ok()
            .and_then(|mut reason| reason.take())
            .unwrap_or(Lost::ConnectionClosed)
    }
}

impl Drop for ConnectionLost {
    fn drop(&mut self) {
        // Ends the watcher task along with the session.
        self.token.cancel();
    }
}

fn watch_connection(connection: &Connection) -> ConnectionLost {
    let token = CancellationToken::new();
    let reason = Arc::new(std::sync::Mutex::new(None));
    let mut events = connection.events_listener();
    let (trip, record) = (token.clone(), reason.clone());
    tokio::spawn(async move {
        let problem = tokio::select! {
            () = trip.cancelled() => return,
            problem = async {
                while let Some(event) = events.next().await {
                    if let lapin::Event::Error(error) = event {
                        return Lost::Broker(error);
                    }
                }
                Lost::ConnectionClosed
            } => problem,
        };
        if let Ok(mut reason) = record.lock() {
            *reason = Some(problem);
        }
        trip.cancel();
    });
    ConnectionLost { token, reason }
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}
