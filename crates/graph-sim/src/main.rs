//! The `graph-sim` command line: parses flags, starts the simulator from
//! `graph_sim`, prints where to point a client, and runs until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use graph_sim::{self as sim, Faults, GraphSim, SimConfig, Throttle};
use secrecy::SecretString;
use tracing_subscriber::EnvFilter;

/// A local stand-in for Microsoft Graph's print-job abort API and the identity platform's
/// token endpoint, with fault injection.
#[derive(Debug, Parser)]
#[command(name = "graph-sim", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The client id the token endpoint accepts.
    #[arg(long, env = "GRAPH_SIM_CLIENT_ID", default_value = sim::DEFAULT_CLIENT_ID)]
    client_id: String,
    /// The client secret the token endpoint accepts (prefer the environment variable: flags
    /// are visible to other users of the machine).
    #[arg(long, env = "GRAPH_SIM_CLIENT_SECRET", default_value = sim::DEFAULT_CLIENT_SECRET, hide_env_values = true)]
    client_secret: String,
    /// A tenant the token endpoint serves; repeat for several. None: any tenant.
    #[arg(long = "tenant", value_name = "TENANT")]
    tenants: Vec<String>,
    /// How long issued tokens are good for.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    token_lifetime: Duration,
    /// The `roles` claim of issued tokens, comma-separated; empty for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_values = sim::DEFAULT_ROLES.iter().copied()
    )]
    roles: Vec<String>,
    /// Abort on an unknown job creates it in `processing` first.
    #[arg(long)]
    auto_create_jobs: bool,
    /// Abort as Graph allows it: only a job held by a processing print task of this app's
    /// trigger (pull printing).
    #[arg(long)]
    pull_printing: bool,
    /// Jobs held before the oldest are forgotten.
    #[arg(long, default_value_t = sim::DEFAULT_MAX_JOBS)]
    max_jobs: usize,
    /// Latency added to every Graph reply.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Up to this much more latency, drawn uniformly per request.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency_jitter: Duration,
    /// Share of Graph requests (0.0 to 1.0) answered 503.
    #[arg(long = "rate-503", default_value_t = 0.0)]
    rate_503: f64,
    /// Share of Graph requests (0.0 to 1.0) answered 429.
    #[arg(long = "rate-429", default_value_t = 0.0)]
    rate_429: f64,
    /// `Retry-After` seconds of injected 503 and 429 replies.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Start with an outage of this length: every Graph call answers 503 until it ends.
    #[arg(long, value_parser = humantime::parse_duration)]
    outage: Option<Duration>,
    /// Throttle each tenant to this many Graph calls a second (fractions allowed); calls
    /// past it answer 429 with the seconds until the next is allowed.
    #[arg(long, value_name = "RPS")]
    throttle_rps: Option<f64>,
    /// Calls a tenant can make at once after being idle. Default: a second's worth.
    #[arg(long, value_name = "N", requires = "throttle_rps")]
    throttle_burst: Option<u32>,
    /// A tenant the throttle applies to; repeat for several. None: every tenant.
    #[arg(
        long = "throttle-tenant",
        value_name = "TENANT",
        requires = "throttle_rps"
    )]
    throttle_tenants: Vec<String>,
}

impl Cli {
    fn into_config(self) -> SimConfig {
        let throttle = self.throttle_rps.map(|requests_per_second| {
            let default = Throttle::new(requests_per_second);
            Throttle {
                burst: self.throttle_burst.unwrap_or(default.burst),
                tenants: self.throttle_tenants,
                ..default
            }
        });
        SimConfig {
            listen: Some(self.listen),
            client_id: self.client_id,
            client_secret: SecretString::from(self.client_secret),
            tenants: self.tenants,
            token_lifetime: self.token_lifetime,
            roles: self
                .roles
                .into_iter()
                .filter(|role| !role.trim().is_empty())
                .collect(),
            auto_create_jobs: self.auto_create_jobs,
            max_jobs: self.max_jobs,
            faults: Faults {
                latency: self.latency,
                latency_jitter: self.latency_jitter,
                error_503_rate: self.rate_503,
                error_429_rate: self.rate_429,
                retry_after_secs: self.retry_after,
            },
            initial_outage: self.outage,
            throttle,
            pull_printing: self.pull_printing,
        }
    }
}

/// Exit code for usage errors, as for `print-abort-worker`.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let config = Cli::parse().into_config();
    if let Err(error) = config.faults.validate() {
        eprintln!("graph-sim: {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(Err(error)) = config.throttle.as_ref().map(Throttle::validate) {
        eprintln!("graph-sim: {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Text logs on stderr; RUST_LOG picks the level (info unless set).
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("graph-sim: the async runtime could not start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("graph-sim: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: SimConfig) -> std::io::Result<()> {
    let sim = GraphSim::start(config).await?;
    println!("graph-sim listening on {}", sim.addr());
    println!("  graph.base_url = \"{}\"", sim.base_url());
    println!("  auth.authority = \"{}\"", sim.authority());
    println!(
        "  control API:     {}/_sim/stats, /_sim/faults, /_sim/outage, /_sim/denial, \
         /_sim/throttle, /_sim/jobs/…",
        sim.authority()
    );
    shutdown_signal().await;
    sim.shutdown().await
}

/// Resolves on SIGINT, or SIGTERM where there are Unix signals.
async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_the_simulator_config() {
        let config = Cli::parse_from([
            "graph-sim",
            "--latency",
            "20ms",
            "--rate-429",
            "0.1",
            "--roles",
            "",
            "--tenant",
            "contoso",
            "--auto-create-jobs",
        ])
        .into_config();
        assert_eq!(config.faults.latency, Duration::from_millis(20));
        assert_eq!(config.faults.error_429_rate, 0.1);
        assert!(config.roles.is_empty());
        assert_eq!(config.tenants, ["contoso"]);
        assert!(config.auto_create_jobs);
        assert_eq!(config.throttle, None);
    }

    #[test]
    fn the_default_roles_are_the_simulators() {
        let config = Cli::parse_from(["graph-sim"]).into_config();
        assert_eq!(config.roles, sim::DEFAULT_ROLES);
    }

    #[test]
    fn throttle_flags_become_a_throttle() {
        let config = Cli::parse_from(["graph-sim", "--throttle-rps", "2.5"]).into_config();
        assert_eq!(config.throttle, Some(Throttle::new(2.5)));

        let config = Cli::parse_from([
            "graph-sim",
            "--throttle-rps",
            "40",
            "--throttle-burst",
            "5",
            "--throttle-tenant",
            "contoso",
            "--throttle-tenant",
            "fabrikam",
        ])
        .into_config();
        assert_eq!(
            config.throttle,
            Some(Throttle {
                requests_per_second: 40.0,
                burst: 5,
                tenants: vec!["contoso".into(), "fabrikam".into()],
            })
        );
        assert!(Cli::try_parse_from(["graph-sim", "--throttle-burst", "5"]).is_err());
    }
}
