//! The measured processes: the worker (`print-abort-worker run`) or the floor
//! (`bench floor`), started, watched and stopped.
//!
//! Each runs as a process of its own, so its CPU time and peak resident memory
//! ([`procfs`]) are its alone, not mixed with the simulator, the load generator or the
//! collector that run in the bench process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use secrecy::ExposeSecret;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

use super::load::Topology;
use super::procfs::{self, Usage};
use graph_sim::GraphSim;

/// The tenant the worker asks tokens for; the simulator serves any, and the throttled
/// scenario limits this one.
pub const TENANT: &str = "bench-tenant";

/// How long a subject may take to finish after it was told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The end of a subject's stderr kept for error messages: enough for the last few lines.
const STDERR_TAIL: usize = 8 * 1024;

/// Which loop is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    Worker,
    Floor,
}

impl SubjectKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Floor => "floor",
        }
    }
}

/// The worker's `log.level` default, which the benchmark runs it at.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Where the subjects' binaries are, and how the worker is run.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `print-abort-worker` binary to measure.
    pub worker: PathBuf,
    /// A command line the worker runs under, for profiling (`valgrind --tool=dhat`); empty
    /// for none. CPU and memory figures are then the wrapper's process's.
    pub worker_wrapper: Vec<String>,
    /// The worker's `log.level`: by default `info`, what an operator runs.
    pub worker_log_level: String,
    /// The binary with the `floor` subcommand: the bench itself.
    pub floor: PathBuf,
    /// A command line the floor runs under (callgrind, for the instruction count); empty
    /// for none.
    pub floor_wrapper: Vec<String>,
}

impl Binaries {
    /// The worker and the floor next to the running bench binary, as `cargo build` leaves
    /// them. Run through `cargo run`, which builds the bench alone, it first builds the
    /// worker with the same profile, so a changed worker is never measured stale.
    pub fn beside_current_exe() -> anyhow::Result<Self> {
        let bench = std::env::current_exe().context("the bench binary's path is unknown")?;
        let dir = bench
            .parent()
            .context("the bench binary's directory is unknown")?;
        build_worker_if_run_by_cargo(dir)?;
        let worker = dir.join(format!(
            "print-abort-worker{}",
            std::env::consts::EXE_SUFFIX
        ));
        if !worker.is_file() {
            bail!(
                "{} does not exist; build it first: cargo build --release --bin print-abort-worker",
                worker.display()
            );
        }
        Ok(Self {
            worker,
            worker_wrapper: Vec::new(),
            worker_log_level: DEFAULT_LOG_LEVEL.to_owned(),
            floor: bench,
            floor_wrapper: Vec::new(),
        })
    }
}

/// Builds `print-abort-worker` when `cargo run` started the bench (it sets `CARGO` and
/// `CARGO_MANIFEST_DIR`), with the profile the bench was built with: the name of the
/// directory it sits in, where `debug` is the `dev` profile.
fn build_worker_if_run_by_cargo(dir: &Path) -> anyhow::Result<()> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Ok(());
    };
    let profile = match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(profile) => profile,
        None => return Ok(()),
    };
    eprintln!("bench: building print-abort-worker (profile {profile}) so it is not stale");
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--profile", profile])
        .args([
            "--package",
            "print-abort-worker",
            "--bin",
            "print-abort-worker",
        ])
        .arg("--manifest-path")
        .arg(Path::new(&manifest_dir).join("Cargo.toml"))
        .status()
        .context("cargo could not be run to build print-abort-worker")?;
    if !status.success() {
        bail!("building print-abort-worker failed ({status})");
    }
    Ok(())
}

/// What a subject is asked to do.
pub struct Launch<'a> {
    pub kind: SubjectKind,
    pub topology: &'a Topology,
    pub concurrency: usize,
    pub prefetch: u16,
    /// The simulator the worker calls; unused by the floor.
    pub sim: &'a GraphSim,
    pub binaries: &'a Binaries,
    /// Where the worker serves `/readyz` and `/metrics` (`http.listen`), for a scenario that
    /// watches it; `None` leaves them off, as the worker's default does.
    pub ops_listen: Option<SocketAddr>,
}

/// A running subject.
pub struct Subject {
    kind: SubjectKind,
    child: Child,
    pid: u32,
    /// The floor stops when its stdin closes, which needs no signal.
    stdin: Option<ChildStdin>,
    stderr: JoinHandle<String>,
}

impl Subject {
    pub fn launch(launch: &Launch<'_>) -> anyhow::Result<Self> {
        let mut command = match launch.kind {
            SubjectKind::Worker => worker_command(launch),
            SubjectKind::Floor => floor_command(launch),
        };
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // An error anywhere in the bench must not leave a subject running.
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("the {} could not be started", launch.kind.name()))?;
        let pid = child
            .id()
            .context("the subject exited before its pid was known")?;
        let stdin = child.stdin.take();
        let stderr = match child.stderr.take() {
            Some(mut pipe) => tokio::spawn(async move {
                // Read as it comes, so a full pipe never blocks the subject.
                let mut text = Vec::new();
                let _ = pipe.read_to_end(&mut text).await;
                let start = text.len().saturating_sub(STDERR_TAIL);
                String::from_utf8_lossy(&text[start..]).into_owned()
            }),
            None => tokio::spawn(async { String::new() }),
        };
        Ok(Self {
            kind: launch.kind,
            child,
            pid,
            stdin,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        procfs::usage(self.pid)
    }

    /// An error when the subject is no longer running.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("the {} exited early ({status})", self.kind.name()),
            Err(error) => Err(error).context("the subject's state is unknown"),
        }
    }

    /// Stops the subject the way an operator would (SIGTERM for the worker) and checks that
    /// it exited cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        match self.kind {
            SubjectKind::Worker => terminate(self.pid)?,
            SubjectKind::Floor => drop(self.stdin.take()),
        }
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.context("the subject's exit could not be awaited")?,
            Err(_) => {
                let _ = self.child.start_kill();
                bail!(
                    "the {} did not stop within {STOP_TIMEOUT:?}{}",
                    self.kind.name(),
                    self.stderr_tail().await
                );
            }
        };
        if !status.success() {
            bail!(
                "the {} exited with {status}{}",
                self.kind.name(),
                self.stderr_tail().await
            );
        }
        Ok(())
    }

    /// Kills the subject and returns `error` with the subject's last words attached.
    pub async fn fail(mut self, error: anyhow::Error) -> anyhow::Error {
        let _ = self.child.start_kill();
        let _: Option<ExitStatus> = self.child.wait().await.ok();
        let tail = self.stderr_tail().await;
        error.context(format!("the {} failed{tail}", self.kind.name()))
    }

    async fn stderr_tail(&mut self) -> String {
        let read = tokio::time::timeout(Duration::from_secs(2), &mut self.stderr).await;
        match read {
            Ok(Ok(text)) if !text.trim().is_empty() => {
                format!("; its stderr ends with:\n{}", text.trim_end())
            }
            _ => String::new(),
        }
    }
}

/// The worker, configured only through `PRINT_ABORT__…` variables: the broker and names of
/// this measurement, Graph and the token endpoint at the simulator, and the log level.
fn worker_command(launch: &Launch<'_>) -> Command {
    let binaries = launch.binaries;
    let mut command = wrapped(&binaries.worker_wrapper, &binaries.worker);
    command.arg("run").stdin(Stdio::null());
    // No config/default.toml and no stray settings from the caller's environment: only
    // what is set below and the built-in defaults apply.
    command
        .current_dir(std::env::temp_dir())
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PRINT_ABORT__") {
            command.env_remove(key);
        }
    }
    command.envs(worker_environment(launch).into_iter().map(|(key, value)| {
        (
            format!("{}__{key}", print_abort_worker::config::ENV_PREFIX),
            value,
        )
    }));
    command
}

/// Only keys that every build the bench compares accepts (the worker refuses unknown keys),
/// so `--worker` and `--baseline-worker` can point at builds from before a key existed.
fn worker_environment(launch: &Launch<'_>) -> Vec<(&'static str, String)> {
    let amqp = &launch.topology.amqp;
    let mut environment = vec![
        ("AMQP__URL", amqp.url.expose_secret().to_owned()),
        ("AMQP__QUEUE_TYPE", amqp.queue_type.as_str().to_owned()),
        ("AMQP__PREFETCH", launch.prefetch.to_string()),
        ("AMQP__COMMAND_QUEUE", amqp.command_queue.clone()),
        ("AMQP__RESULTS_EXCHANGE", amqp.results_exchange.clone()),
        (
            "AMQP__DEAD_LETTER_EXCHANGE",
            amqp.dead_letter_exchange.clone(),
        ),
        ("AMQP__DEAD_LETTER_QUEUE", amqp.dead_letter_queue.clone()),
        ("GRAPH__BASE_URL", launch.sim.base_url()),
        ("AUTH__AUTHORITY", launch.sim.authority()),
        ("AUTH__TENANT_ID", TENANT.to_owned()),
        ("AUTH__CLIENT_ID", graph_sim::DEFAULT_CLIENT_ID.to_owned()),
        (
            "AUTH__CLIENT_SECRET",
            graph_sim::DEFAULT_CLIENT_SECRET.to_owned(),
        ),
        ("WORKER__CONCURRENCY", launch.concurrency.to_string()),
        ("LOG__LEVEL", launch.binaries.worker_log_level.clone()),
    ];
    if let Some(listen) = launch.ops_listen {
        environment.push(("HTTP__LISTEN", listen.to_string()));
    }
    environment
}

/// `bench floor`, on the same queue, with the same prefetch and concurrency.
fn floor_command(launch: &Launch<'_>) -> Command {
    let amqp = &launch.topology.amqp;
    let mut command = wrapped(&launch.binaries.floor_wrapper, &launch.binaries.floor);
    command
        .arg("floor")
        .args(["--queue", &amqp.command_queue])
        .args(["--exchange", &amqp.results_exchange])
        .args(["--concurrency", &launch.concurrency.to_string()])
        .args(["--prefetch", &launch.prefetch.to_string()])
        // In the environment rather than on the command line, where `ps` would show it.
        .env(super::floor::URL_VARIABLE, amqp.url.expose_secret())
        .stdin(Stdio::piped());
    command
}

/// `program`, run under `wrapper` (a command line such as `valgrind --tool=callgrind`) when
/// there is one.
fn wrapped(wrapper: &[String], program: &Path) -> Command {
    match wrapper.split_first() {
        Some((wrapper, args)) => {
            let mut command = Command::new(wrapper);
            command.args(args).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// SIGTERM, the signal a service manager stops the worker with.
fn terminate(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("`kill` could not be run to stop the worker")?;
    if !status.success() {
        bail!("`kill -TERM {pid}` failed ({status})");
    }
    Ok(())
}
