//! RabbitMQ nodes of a test's own: a cluster, or a node with a TLS listener.
//!
//! Each node gets its own name, AMQP and distribution ports (free ones, asked of the
//! kernel) and data folder under a temporary directory, and the nodes share an Erlang cookie
//! of their own, so that they can never talk to the machine's broker on port 5672, let
//! alone join it. Dropping [`Nodes`] stops every node and removes the directory, also when
//! the test panics; a watchdog process does the same should the test process be killed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package keeps RabbitMQ's own scripts. `/usr/sbin`'s wrappers switch to
/// the `rabbitmq` user, whose home holds the machine broker's cookie, so these are run
/// directly.
const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// The nodes' `enabled_plugins`, in the temporary directory.
const PLUGINS_FILE: &str = "enabled_plugins";

pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
}

impl Node {
    /// `amqp://guest:guest@127.0.0.1:{port}/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
}

pub struct Nodes {
    pub nodes: Vec<Node>,
    root: tempfile::TempDir,
    env_file: PathBuf,
}

impl Nodes {
    /// Starts `count` nodes, each listening for AMQP on a port of its own, with `config`
    /// added to its `rabbitmq.conf` and the plugins in `plugins`, and waits until all are up.
    pub async fn start(count: usize, plugins: &[&str], config: &str) -> Self {
        assert!(
            Path::new(SCRIPTS).join("rabbitmq-server").exists(),
            "these tests start RabbitMQ nodes of their own with {SCRIPTS}/rabbitmq-server \
             (Debian's rabbitmq-server package); install it with `apt-get install rabbitmq-server`"
        );
        let root = tempfile::Builder::new()
            .prefix("print-abort-nodes-")
            .tempdir()
            .expect("a temporary directory");
        let home = root.path().join("home");
        std::fs::create_dir(&home).expect("home");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).expect("cookie");
        set_mode(&cookie, 0o400);
        let env_file = root.path().join("rabbitmq-env.conf");
        std::fs::write(&env_file, "").expect("env file");
        std::fs::write(
            root.path().join(PLUGINS_FILE),
            format!("[{}].\n", plugins.join(",")),
        )
        .expect("plugins");
        let prefix = format!("paw{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut this = Self {
            nodes: Vec::new(),
            root,
            env_file,
        };
        for index in 1..=count {
            let dir = this.root.path().join(format!("node{index}"));
            std::fs::create_dir(&dir).expect("node folder");
            let node = Node {
                name: format!("{prefix}-{index}@localhost"),
                amqp_port: free_port(),
                dist_port: free_port(),
                dir,
            };
            std::fs::write(
                node.dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = 127.0.0.1:{}\n{config}",
                    node.amqp_port
                ),
            )
            .expect("rabbitmq.conf");
            this.nodes.push(node);
        }
        this.watchdog();
        for index in 0..count {
            this.launch(index);
        }
        for index in 0..count {
            this.await_startup(index).await;
        }
        this
    }

    /// Joins every node after the first to the first one's cluster.
    pub async fn cluster(&self) {
        let first = self.nodes[0].name.clone();
        for index in 1..self.nodes.len() {
            self.ctl(index, &["stop_app"]).await;
            self.ctl(index, &["join_cluster", &first]).await;
            self.ctl(index, &["start_app"]).await;
        }
        let status = self
            .ctl(0, &["cluster_status", "--formatter", "json"])
            .await;
        let status: serde_json::Value = serde_json::from_str(&status).expect("JSON status");
        assert_eq!(
            status["running_nodes"].as_array().map(Vec::len),
            Some(self.nodes.len()),
            "every node runs in the cluster: {status}"
        );
    }

    /// Stops node `index` (the whole Erlang VM, as a node failure would).
    pub async fn stop(&self, index: usize) {
        self.ctl(index, &["stop"]).await;
    }

    /// Starts node `index` again from its data folder and waits until it is up; a cluster
    /// member rejoins its cluster by itself.
    pub async fn restart(&self, index: usize) {
        self.launch(index);
        self.await_startup(index).await;
    }

    /// Runs `rabbitmqctl` against node `index`; fails the test if it fails.
    pub async fn ctl(&self, index: usize, args: &[&str]) -> String {
        let output = self
            .cli("rabbitmqctl", index, args)
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} on {} failed: {}{}",
            self.nodes[index].name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The nodes' and the CLI's `HOME`, which holds their Erlang cookie.
    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    fn cli(&self, tool: &str, index: usize, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(Path::new(SCRIPTS).join(tool));
        command
            .arg("-q")
            .arg("-n")
            .arg(&self.nodes[index].name)
            .args(args)
            .env("HOME", self.home())
            .env("RABBITMQ_CONF_ENV_FILE", &self.env_file)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    fn launch(&self, index: usize) {
        let node = &self.nodes[index];
        // The node's own folder as its working directory: Mnesia writes a core dump
        // (`MnesiaCore.*`) there when the node is killed mid-write, and that must go with the
        // test's folders, not land in the repository.
        let status = Command::new(Path::new(SCRIPTS).join("rabbitmq-server"))
            .arg("-detached")
            .current_dir(&node.dir)
            .env("HOME", self.home())
            .env("RABBITMQ_CONF_ENV_FILE", &self.env_file)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.root.path().join(PLUGINS_FILE),
            )
            .env("RABBITMQ_PID_FILE", node.pid_file())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .status()
            .expect("rabbitmq-server starts");
        assert!(
            status.success(),
            "rabbitmq-server -detached failed for {}",
            node.name
        );
    }

    /// Waits until node `index` has booted. `await_startup` gives up at once while the new
    /// VM has not registered its name yet, so it is asked again until a deadline.
    async fn await_startup(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let output = self
                .cli("rabbitmqctl", index, &["await_startup", "--timeout", "60"])
                .output()
                .await
                .expect("rabbitmqctl runs");
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start: {}\nits log is in {}",
                self.nodes[index].name,
                String::from_utf8_lossy(&output.stderr),
                self.nodes[index].dir.join("log").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A process of its own session that, once this test process is gone without having
    /// cleaned up (killed at its time limit, say), kills the nodes and removes the folder.
    fn watchdog(&self) {
        // Every VM of this test's nodes has `-home {root}/home` on its command line (a node
        // killed while it boots has no pid file yet). The pattern is written `[/]tmp/…` so
        // that it does not match this script's own command line; it is tried for some
        // seconds, as a node may still be starting.
        let home = self.home().display().to_string();
        let pattern = format!("[{}]{}", &home[..1], &home[1..]);
        let script = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 2; done; \
             for i in 1 2 3 4 5 6 7 8 9 10; do pkill -9 -f '{pattern}'; sleep 0.5; done; \
             rm -rf '{root}'; sleep 1; rm -rf '{root}'",
            test = std::process::id(),
            root = self.root.path().display(),
        );
        Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("setsid (util-linux) starts the clean-up watchdog");
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let mut stray = false;
        for node in &self.nodes {
            let stopped = Command::new("timeout")
                .arg("30")
                .arg(Path::new(SCRIPTS).join("rabbitmqctl"))
                .args(["-q", "-n", &node.name, "stop"])
                .env("HOME", self.home())
                .env("RABBITMQ_CONF_ENV_FILE", &self.env_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            stray |= !stopped;
        }
        if stray {
            // A node that did not answer (or was still booting) is killed by the one thing its
            // VM's command line says of it, `-home {root}/home`, which this process's lacks.
            let vms = self.home().display().to_string();
            let _ = Command::new("pkill").args(["-9", "-f", &vms]).status();
            // Gone before the folders are removed, or a VM may write into them again.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline
                && Command::new("pgrep")
                    .args(["-f", &vms])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // The TempDir removes the folders.
    }
}

/// A port no one listens on now, as the kernel hands them out.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
