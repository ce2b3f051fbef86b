//! `graph-sim`: a local stand-in for Microsoft Graph's print-job API and the identity
//! platform's token endpoint, with fault injection, for demos, tests and benchmarks.
//!
//! [`GraphSim::start`] serves, on one loopback port:
//! - `POST /{tenant}/oauth2/v2.0/token`, client-credentials tokens (`identity`, `tokens`);
//! - `POST /v1.0/print/printers/{printerId}/jobs/{jobId}/abort`,
//!   `GET /v1.0/print/printers/{printerId}/jobs/{jobId}` and `GET /v1.0/print/printers`
//!   (`print_api`) over an in-memory job table (`model`), behind a switch that denies every
//!   call, injected latency, throttling and outages (`faults`), a per-tenant rate limit
//!   (`throttle`) and standing faults of single jobs (`job_faults`);
//! - `/_sim/…`, a control API to seed jobs, change faults and read counters (`control`,
//!   `stats`).
//!
//! The same controls are methods on [`GraphSim`] for tests that run it in-process; routing
//! and what every reply shares live in `routes` and `reply`.

mod control;
mod faults;
mod identity;
mod job_faults;
mod model;
mod print_api;
mod reply;
mod routes;
mod stats;
mod tasks;
mod throttle;
mod tokens;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{Faults, FaultsStatus, InvalidFaults};
pub use job_faults::{InvalidJobFault, JobFault, MAX_FAULT_BODY_BYTES, MAX_JOB_FAULTS};
pub use model::{JobSnapshot, JobState};
pub use stats::{RouteStats, SimStats};
pub use tasks::{TaskSnapshot, TaskState, TaskStatus};
pub use throttle::{InvalidThrottle, Throttle};

use job_faults::JobFaults;
use model::{JobKey, JobStore};
use stats::Stats;
use tasks::TaskBoard;
use throttle::TenantThrottle;
use tokens::TokenIssuer;

/// The client id the simulator accepts unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "graph-sim-client";
/// The client secret the simulator accepts unless told otherwise.
pub const DEFAULT_CLIENT_SECRET: &str = "graph-sim-secret";
/// The `roles` of issued tokens unless told otherwise: the least permission abort needs,
/// and the read of printers the worker probes with while it is paused.
pub const DEFAULT_ROLES: &[&str] = &["PrintJob.ReadWriteBasic.All", "Printer.Read.All"];
/// [`DEFAULT_ROLES`] and the permission a pull-printing app needs to manage its task
/// definitions and update their tasks.
pub const PULL_PRINTING_ROLES: &[&str] = &[
    "PrintJob.ReadWriteBasic.All",
    "Printer.Read.All",
    "PrintTaskDefinition.ReadWrite.All",
];
/// Jobs held before the oldest are forgotten: about 300 MB at most (measured ~300 bytes a job).
pub const DEFAULT_MAX_JOBS: usize = 1_000_000;

/// How long [`GraphSim::shutdown`] lets requests in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen; `None` takes a free port on 127.0.0.1, so tests never collide.
    pub listen: Option<SocketAddr>,
    /// The one app registration the token endpoint knows.
    pub client_id: String,
    pub client_secret: SecretString,
    /// Tenants the token endpoint serves, compared ignoring case; empty serves any, as for
    /// an app consented in many tenants.
    pub tenants: Vec<String>,
    /// How long an issued token is good for.
    pub token_lifetime: Duration,
    /// The `roles` claim of issued tokens. Without an abort permission among them, Graph
    /// calls get `403`, so a client's permission check can be tested.
    pub roles: Vec<String>,
    /// Abort on an unknown job creates it in `processing` first, so load tests need not
    /// seed every id. Look-ups never create jobs.
    pub auto_create_jobs: bool,
    /// Jobs held before the oldest are forgotten, so memory stays bounded.
    pub max_jobs: usize,
    /// Faults in force from the start.
    pub faults: Faults,
    /// An outage of this length from the start, to test a client that starts while Graph
    /// is down.
    pub initial_outage: Option<Duration>,
    /// A per-tenant rate limit on the Graph routes from the start; `None` leaves every
    /// tenant unlimited.
    pub throttle: Option<Throttle>,
    /// Abort as Graph allows it: only while a processing print task of this app's trigger
    /// holds the job (pull printing). Off, any processing job can be aborted, as load tests
    /// and most client tests want.
    pub pull_printing: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: None,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: SecretString::from(DEFAULT_CLIENT_SECRET),
            tenants: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            roles: DEFAULT_ROLES.iter().map(|&role| role.to_owned()).collect(),
            auto_create_jobs: false,
            max_jobs: DEFAULT_MAX_JOBS,
            faults: Faults::default(),
            initial_outage: None,
            throttle: None,
            pull_printing: false,
        }
    }
}

/// The state every route shares.
struct Sim {
    client_id: String,
    client_secret: SecretString,
    tenants: Vec<String>,
    auto_create_jobs: bool,
    tokens: TokenIssuer,
    jobs: JobStore,
    faults: faults::FaultInjector,
    throttle: TenantThrottle,
    job_faults: JobFaults,
    tasks: TaskBoard,
    pull_printing: bool,
    /// The Graph base URL clients are given, for the tasks' `parentUrl`.
    base_url: String,
    stats: Stats,
}

impl Sim {
    fn new(config: SimConfig, base_url: String) -> Self {
        let faults = faults::FaultInjector::new(config.faults);
        if let Some(outage) = config.initial_outage {
            faults.start_outage(outage);
        }
        Self {
            client_id: config.client_id,
            client_secret: config.client_secret,
            tenants: config.tenants,
            auto_create_jobs: config.auto_create_jobs,
            tokens: TokenIssuer::new(config.token_lifetime, config.roles),
            jobs: JobStore::new(config.max_jobs),
            faults,
            throttle: TenantThrottle::new(config.throttle),
            job_faults: JobFaults::new(),
            tasks: TaskBoard::default(),
            pull_printing: config.pull_printing,
            base_url,
            stats: Stats::new(),
        }
    }

    fn accepts_tenant(&self, tenant: &str) -> bool {
        self.tenants.is_empty()
            || self
                .tenants
                .iter()
                .any(|known| known.eq_ignore_ascii_case(tenant))
    }

    /// A job starts: `processing`, and held by a new print task where a trigger is.
    fn start_job(&self, key: &JobKey) -> Option<(String, String)> {
        self.jobs.seed(key, JobState::Processing);
        self.tasks.job_started(key)
    }

    fn stats(&self) -> SimStats {
        let held = u64::try_from(self.jobs.len()).unwrap_or(u64::MAX);
        self.stats.snapshot(held, self.jobs.evicted())
    }
}

/// A running simulator. Dropping the handle stops it too; [`GraphSim::shutdown`] also
/// waits until it has stopped.
pub struct GraphSim {
    addr: SocketAddr,
    sim: Arc<Sim>,
    /// Sending on it, or dropping it, starts a graceful shutdown.
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<io::Result<()>>>,
}

impl GraphSim {
    /// Binds `config.listen` (a free loopback port when `None`) and serves in the background.
    /// Fails on a bind error, or faults or a throttle that make no sense.
    pub async fn start(config: SimConfig) -> io::Result<Self> {
        config
            .faults
            .validate()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        if let Some(throttle) = &config.throttle {
            throttle
                .validate()
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        }
        let listen = config
            .listen
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{}/v1.0", client_addr(addr));
        let sim = Arc::new(Sim::new(config, base_url));
        let app = routes::router(Arc::clone(&sim));
        // Replies are small; waiting to coalesce them would only add latency.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::debug!(%addr, "graph-sim listening");
        Ok(Self {
            addr,
            sim,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// The address bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity-platform authority to configure a client with: `http://127.0.0.1:port`.
    pub fn authority(&self) -> String {
        format!("http://{}", self.client_addr())
    }

    /// The Graph base URL to configure a client with: `http://127.0.0.1:port/v1.0`.
    pub fn base_url(&self) -> String {
        format!("{}/v1.0", self.authority())
    }

    /// The token endpoint of `tenant`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.authority())
    }

    pub fn faults(&self) -> Faults {
        self.sim.faults.faults()
    }

    /// Replaces the fault settings; an outage under way goes on.
    pub fn set_faults(&self, faults: Faults) -> Result<(), InvalidFaults> {
        self.sim.faults.set(faults)
    }

    /// Every Graph call answers `503` for `duration` from now, replacing any outage under
    /// way; zero ends it.
    pub fn start_outage(&self, duration: Duration) {
        self.sim.faults.start_outage(duration);
    }

    pub fn end_outage(&self) {
        self.sim.faults.start_outage(Duration::ZERO);
    }

    pub fn outage_remaining(&self) -> Option<Duration> {
        self.sim.faults.outage_remaining()
    }

    /// Every Graph call answers `403 Authorization_RequestDenied` for `duration` from now,
    /// replacing any denial under way; zero ends it. Tokens are still issued.
    pub fn start_denial(&self, duration: Duration) {
        self.sim.faults.start_denial(duration);
    }

    pub fn end_denial(&self) {
        self.sim.faults.start_denial(Duration::ZERO);
    }

    pub fn denial_remaining(&self) -> Option<Duration> {
        self.sim.faults.denial_remaining()
    }

    pub fn throttle(&self) -> Option<Throttle> {
        self.sim.throttle.settings()
    }

    /// Replaces the per-tenant throttle, every bucket starting full; `None` turns it off.
    pub fn set_throttle(&self, throttle: Option<Throttle>) -> Result<(), InvalidThrottle> {
        self.sim.throttle.set(throttle)
    }

    /// Makes every abort and look-up of the job answer as `fault` says, until cleared,
    /// whether or not the job is in the table.
    pub fn set_job_fault(
        &self,
        printer_id: &str,
        job_id: &str,
        fault: JobFault,
    ) -> Result<(), InvalidJobFault> {
        self.sim
            .job_faults
            .set(&JobKey::new(printer_id, job_id), fault)
    }

    /// Clears the job's standing fault; returns whether it had one.
    pub fn clear_job_fault(&self, printer_id: &str, job_id: &str) -> bool {
        self.sim.job_faults.clear(&JobKey::new(printer_id, job_id))
    }

    pub fn job_fault(&self, printer_id: &str, job_id: &str) -> Option<JobFault> {
        self.sim.job_faults.get(&JobKey::new(printer_id, job_id))
    }

    /// Creates or resets a job in `state`.
    pub fn set_job(&self, printer_id: &str, job_id: &str, state: JobState) -> JobSnapshot {
        self.sim.jobs.seed(&JobKey::new(printer_id, job_id), state)
    }

    /// Creates a task definition of this app, as `POST /print/taskDefinitions` does; returns
    /// its id.
    pub fn create_task_definition(&self, display_name: &str) -> String {
        self.sim.tasks.create_definition(display_name)
    }

    /// Puts a `jobStarted` trigger of the definition on the printer, as an administrator's
    /// `POST /print/printers/{id}/taskTriggers` does; false for an unknown definition.
    pub fn set_task_trigger(&self, printer_id: &str, definition_id: &str) -> bool {
        self.sim.tasks.set_trigger(printer_id, definition_id)
    }

    /// Starts a job: it is `processing`, and on a printer with a trigger a print task in
    /// `processing` holds it. Returns that task's (definition id, task id).
    pub fn start_job(&self, printer_id: &str, job_id: &str) -> Option<(String, String)> {
        self.sim.start_job(&JobKey::new(printer_id, job_id))
    }

    /// A job's Graph URL on this simulator, as a print task's `parentUrl` names it.
    pub fn job_url(&self, printer_id: &str, job_id: &str) -> String {
        JobKey::new(printer_id, job_id).url(&self.base_url())
    }

    /// A print task's Graph URL on this simulator.
    pub fn task_url(&self, definition_id: &str, task_id: &str) -> String {
        format!(
            "{}/print/taskDefinitions/{definition_id}/tasks/{task_id}",
            self.base_url()
        )
    }

    /// A print task, as `GET /print/taskDefinitions/{id}/tasks/{taskId}` shows it.
    pub fn task(&self, definition_id: &str, task_id: &str) -> Option<TaskSnapshot> {
        self.sim
            .tasks
            .get(definition_id, task_id, &self.sim.base_url)
    }

    pub fn job(&self, printer_id: &str, job_id: &str) -> Option<JobSnapshot> {
        self.sim.jobs.get(&JobKey::new(printer_id, job_id))
    }

    pub fn job_state(&self, printer_id: &str, job_id: &str) -> Option<JobState> {
        self.job(printer_id, job_id).map(|job| job.state)
    }

    /// Makes every token issued so far answer `401`, as if it had been revoked; tokens
    /// issued afterwards are good.
    pub fn revoke_tokens(&self) {
        self.sim.tokens.revoke_all();
    }

    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// Stops accepting connections, lets requests in flight finish (for a few seconds at
    /// most), and waits until the server has stopped.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(served)) => served,
            Ok(Err(join_error)) => Err(io::Error::other(join_error)),
            Err(_elapsed) => {
                server.abort();
                Ok(())
            }
        }
    }

    /// The bound address as a client dials it: a wildcard address becomes loopback.
    fn client_addr(&self) -> SocketAddr {
        client_addr(self.addr)
    }
}

/// The address a client reaches `addr` at: loopback for an unspecified one.
fn client_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl std::fmt::Debug for GraphSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
