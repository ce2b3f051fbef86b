//! Configuration: the layered settings of the README's *Configuration* and
//! `config/default.toml`.
//!
//! Layers, later wins: the serde defaults below → `config/default.toml` (when present in
//! the working directory) → the `--config FILE` → `PRINT_ABORT__SECTION__KEY` environment
//! variables. Unknown keys are rejected so that a typo never silently falls back to a
//! default. [`Settings::load`] returns settings that passed [`Settings::validate`].

mod broker_tls;
mod broker_url;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

pub use broker_tls::{TlsFileError, TlsSettings};
pub use broker_url::{BrokerNodes, BrokerUrl, InvalidBrokerUrl};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "PRINT_ABORT";

/// The file read, when present, between the built-in defaults and `--config`.
pub const DEFAULT_FILE: &str = "config/default.toml";

/// A configuration problem; the process exits with code 2 on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            problem: problem.into(),
        }
    }
}

/// Every setting of the worker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub graph: GraphSettings,
    pub auth: AuthSettings,
    pub retry: RetrySettings,
    pub worker: WorkerSettings,
    pub pause: PauseSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
}

/// The broker connection and the names of the topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// Broker URL; may carry credentials, so it is never shown with its password.
    pub url: BrokerNodes,
    /// The CA and client certificate of `amqps://` connections.
    pub tls: TlsSettings,
    /// Unacknowledged deliveries the broker may push: the most commands held at once.
    pub prefetch: NonZeroU16,
    pub queue_type: QueueType,
    /// `false` when operators manage the topology themselves and the worker must not touch it.
    pub declare: bool,
    pub command_queue: String,
    pub results_exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// A command delivered this often (the quorum queue's `x-delivery-count`) ends
    /// `failed`/`exhausted` with an outcome, before the broker's own delivery limit (20 by
    /// default in RabbitMQ 4) drops or dead-letters it without the worker seeing it.
    pub max_deliveries: NonZeroU32,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f"
                .parse()
                .expect("the default broker URL parses"),
            tls: TlsSettings::default(),
            prefetch: NonZeroU16::new(32).expect("32 is not zero"),
            queue_type: QueueType::Quorum,
            declare: true,
            command_queue: "print.abort.commands".into(),
            results_exchange: "print.abort.results".into(),
            dead_letter_exchange: "print.abort.dlx".into(),
            dead_letter_queue: "print.abort.commands.dead".into(),
            max_deliveries: NonZeroU32::new(10).expect("10 is not zero"),
        }
    }
}

/// The `x-queue-type` of the command queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// A Microsoft cloud: each has its own Graph host and login authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Cloud {
    #[default]
    #[serde(rename = "global")]
    Global,
    #[serde(rename = "usgov")]
    UsGov,
    #[serde(rename = "usgov-dod")]
    UsGovDod,
}

impl Cloud {
    fn graph_origin(self) -> &'static str {
        match self {
            Self::Global => "https://graph.microsoft.com",
            Self::UsGov => "https://graph.microsoft.us",
            Self::UsGovDod => "https://dod-graph.microsoft.us",
        }
    }

    fn authority(self) -> &'static str {
        match self {
            Self::Global => "https://login.microsoftonline.com",
            Self::UsGov | Self::UsGovDod => "https://login.microsoftonline.us",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphSettings {
    /// Sets the base URL, authority and scope together; the explicit keys win over it.
    pub cloud: Cloud,
    /// Explicit Graph base URL; `None` means the cloud's `…/v1.0`.
    pub base_url: Option<Url>,
    /// Whole-request timeout of one Graph call.
    #[serde(with = "duration")]
    pub timeout: Duration,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Outbound request rate shared by every command in flight; 0 is unlimited.
    pub max_requests_per_second: u32,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            cloud: Cloud::Global,
            base_url: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_requests_per_second: 0,
        }
    }
}

impl GraphSettings {
    pub fn base_url(&self) -> Url {
        self.base_url.clone().unwrap_or_else(|| {
            Url::parse(&format!("{}/v1.0", self.cloud.graph_origin()))
                .expect("built-in Graph URLs are valid")
        })
    }
}

/// The app registration and its credential. Exactly one of `client_secret`,
/// `client_secret_file`, `client_certificate_file` and `federated_token_file` is set; an empty
/// value counts as unset. `auth::ClientCredential::from_settings` enforces that and tries the
/// credential once at start-up; configuration only holds the keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Explicit login authority; `None` means the cloud's.
    pub authority: Option<Url>,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// Read again for every new token, so a rotated secret needs no restart.
    pub client_secret_file: Option<PathBuf>,
    /// One PEM file with the RSA private key and its certificate; every token request carries
    /// an assertion signed with the key. Read again for every new token, so a renewed
    /// certificate needs no restart.
    pub client_certificate_file: Option<PathBuf>,
    /// Workload identity: a token from an issuer the app trusts through a federated identity
    /// credential (on Kubernetes the projected service-account token that
    /// `AZURE_FEDERATED_TOKEN_FILE` names). Read again for every new token because the
    /// kubelet replaces it before it expires. Never taken from `AZURE_FEDERATED_TOKEN_FILE`
    /// implicitly.
    pub federated_token_file: Option<PathBuf>,
    /// Explicit scope; `None` means `<graph origin>/.default`.
    pub scope: Option<String>,
    /// Tenants besides `tenant_id` that commands may name in `tenantId`.
    pub allowed_tenants: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(with = "duration")]
    pub initial_interval: Duration,
    #[serde(with = "duration")]
    pub max_interval: Duration,
    pub multiplier: f32,
    /// The in-process time budget of one command, from its first Graph call.
    #[serde(with = "duration")]
    pub max_elapsed: Duration,
    /// Broker-side delayed retries after the in-process budget ran out, one per step.
    #[serde(with = "duration_list")]
    pub redelivery_delays: Vec<Duration>,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
            multiplier: 2.0,
            max_elapsed: Duration::from_secs(120),
            redelivery_delays: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Graph requests in flight at the same time (commands held are bounded by
    /// `amqp.prefetch`).
    pub concurrency: NonZeroUsize,
    /// How long in-flight commands may run on after a shutdown signal before they are requeued.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// The longest the worker keeps one delivery unacknowledged (retries, throttling,
    /// waiting for a verdict); what outlasts it goes back to the queue. Keep it below the
    /// broker's `consumer_timeout` (30 min by default), which closes the channel of a
    /// consumer holding a delivery longer.
    #[serde(with = "duration")]
    pub max_hold: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: NonZeroUsize::new(16).expect("16 is not zero"),
            shutdown_grace: Duration::from_secs(20),
            max_hold: Duration::from_secs(25 * 60),
        }
    }
}

/// When to stop consuming because the failures are the service's, not the commands'.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PauseSettings {
    /// `false`: systemic failures end commands as `failed`/`unauthorized` instead.
    pub enabled: bool,
    /// Distinct commands failing with no success between them that make the worker probe
    /// the service (and pause when the probe fails). Retries of one command count once.
    #[serde(alias = "after_transient_failures")]
    pub after_failing_commands: u32,
    /// How long a command refused alone waits for another command's result before a probe
    /// decides whether the refusal is the command's or the service's.
    #[serde(with = "duration")]
    pub verdict_wait: Duration,
    /// First and longest wait between health probes while paused.
    #[serde(with = "duration")]
    pub probe_initial_interval: Duration,
    #[serde(with = "duration")]
    pub probe_max_interval: Duration,
}

impl Default for PauseSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            after_failing_commands: 3,
            verdict_wait: Duration::from_secs(2),
            probe_initial_interval: Duration::from_secs(1),
            probe_max_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the health and metrics endpoints (`ip:port`); empty or absent disables them.
    #[serde(deserialize_with = "optional_socket_address")]
    pub listen: Option<SocketAddr>,
}

/// An `ip:port` address, or `""` for none: an environment variable cannot be unset from a
/// configuration file's value otherwise.
fn optional_socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address like \"0.0.0.0:9090\" or \"[::1]:9090\""
        ))
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `print_abort_worker=debug,lapin=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads every layer, the process environment last, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(Path::new(DEFAULT_FILE), file, None)
    }

    /// Loads every layer for the tools that only talk to the broker (`enqueue`, `dlq`,
    /// `demo`): the Graph credentials need not be configured for them.
    pub fn load_for_broker(file: Option<&Path>) -> Result<Self, ConfigError> {
        let settings = Self::read(Path::new(DEFAULT_FILE), file, None)?;
        settings.validate_broker()?;
        Ok(settings)
    }

    /// [`Settings::load`] with the default file and the environment given explicitly, so
    /// tests need not touch the process environment.
    pub fn load_from(
        default_file: &Path,
        file: Option<&Path>,
        environment: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let settings = Self::read(default_file, file, environment)?;
        settings.validate()?;
        Ok(settings)
    }

    fn read(
        default_file: &Path,
        file: Option<&Path>,
        environment: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from(default_file).required(false));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_path_buf()));
            }
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("auth.allowed_tenants")
            .with_list_parse_key("retry.redelivery_delays")
            .try_parsing(true)
            .source(environment);
        Ok(builder.add_source(env).build()?.try_deserialize()?)
    }

    /// Checks what serde cannot: cross-field rules and safety rules. The credential itself
    /// is loaded and tried by `auth` at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_broker()?;
        require_tls_unless_loopback("graph.base_url", &self.graph.base_url())?;
        require_tls_unless_loopback("auth.authority", &self.authority())?;
        if !(self.retry.multiplier >= 1.0 && self.retry.multiplier.is_finite()) {
            return Err(ConfigError::invalid(
                "retry.multiplier",
                "must be a number of at least 1.0",
            ));
        }
        if self.retry.initial_interval.is_zero()
            || self.retry.initial_interval > self.retry.max_interval
        {
            return Err(ConfigError::invalid(
                "retry.initial_interval",
                "must be above zero and at most retry.max_interval",
            ));
        }
        if self.retry.max_elapsed >= self.worker.max_hold {
            return Err(ConfigError::invalid(
                "retry.max_elapsed",
                "must be below worker.max_hold, which bounds how long one delivery is held",
            ));
        }
        if self.pause.after_failing_commands < 2 {
            return Err(ConfigError::invalid(
                "pause.after_failing_commands",
                "must be at least 2: one command alone never pauses the worker",
            ));
        }
        if self.retry.redelivery_delays.iter().any(Duration::is_zero) {
            return Err(ConfigError::invalid(
                "retry.redelivery_delays",
                "every delay must be above zero",
            ));
        }
        if self.auth.tenant_id.is_empty() {
            return Err(ConfigError::invalid(
                "auth.tenant_id",
                "is required (the directory (tenant) id of the app registration)",
            ));
        }
        if self.auth.client_id.is_empty() {
            return Err(ConfigError::invalid(
                "auth.client_id",
                "is required (the application (client) id of the app registration)",
            ));
        }
        Ok(())
    }

    /// The rules for the broker settings alone.
    pub fn validate_broker(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("amqp.command_queue", &self.amqp.command_queue),
            ("amqp.results_exchange", &self.amqp.results_exchange),
            ("amqp.dead_letter_exchange", &self.amqp.dead_letter_exchange),
            ("amqp.dead_letter_queue", &self.amqp.dead_letter_queue),
        ] {
            if name.is_empty() || name.len() > 255 {
                return Err(ConfigError::invalid(key, "must be 1 to 255 bytes long"));
            }
        }
        let tls = &self.amqp.tls;
        if tls.is_configured() {
            if let Some(plain) = self.amqp.url.nodes().iter().find(|node| !node.is_tls()) {
                return Err(ConfigError::invalid(
                    "amqp.url",
                    format!(
                        "{} is amqp://, but amqp.tls is set: use amqps:// for every node",
                        plain.redacted()
                    ),
                ));
            }
            tls.load()
                .map_err(|error| ConfigError::invalid(error.key, error.to_string()))?;
        }
        Ok(())
    }
}

impl Settings {
    /// The login authority, from `auth.authority` or else the cloud.
    pub fn authority(&self) -> Url {
        self.auth.authority.clone().unwrap_or_else(|| {
            Url::parse(self.graph.cloud.authority()).expect("built-in authority URLs are valid")
        })
    }

    /// The OAuth2 scope, from `auth.scope` or else `<graph origin>/.default`.
    pub fn scope(&self) -> String {
        if let Some(scope) = &self.auth.scope {
            return scope.clone();
        }
        let base = self.graph.base_url();
        format!("{}/.default", base.origin().ascii_serialization())
    }
}

/// A bearer token must never cross a network in clear text.
fn require_tls_unless_loopback(key: &'static str, url: &Url) -> Result<(), ConfigError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(ConfigError::invalid(
            key,
            format!("{url} uses plain http:// to a non-loopback host; use https://"),
        )),
        other => Err(ConfigError::invalid(
            key,
            format!("unsupported scheme {other}://"),
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Durations written the human way: `"500ms"`, `"30s"`, `"2m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|error| {
            format!("{text:?} is not a duration like \"500ms\", \"30s\" or \"2m\": {error}")
        })
    }
}

/// A list of durations, such as `["30s", "2m", "10m"]`.
pub mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| super::duration::parse(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        let mut map: HashMap<String, String> = [
            ("PRINT_ABORT__AUTH__TENANT_ID", "tenant"),
            ("PRINT_ABORT__AUTH__CLIENT_ID", "client"),
            ("PRINT_ABORT__AUTH__CLIENT_SECRET", "hunter2-secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        map.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Some(map)
    }

    fn load(file: Option<&Path>, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(Path::new("/nonexistent/default.toml"), file, env(pairs))
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    #[test]
    fn defaults_match_the_spec() {
        let settings = load(None, &[]).expect("valid");
        assert_eq!(settings.amqp.command_queue, "print.abort.commands");
        assert_eq!(settings.amqp.results_exchange, "print.abort.results");
        assert_eq!(settings.amqp.dead_letter_exchange, "print.abort.dlx");
        assert_eq!(settings.amqp.dead_letter_queue, "print.abort.commands.dead");
        assert_eq!(settings.amqp.queue_type, QueueType::Quorum);
        assert_eq!(
            settings.graph.base_url().as_str(),
            "https://graph.microsoft.com/v1.0"
        );
        assert_eq!(
            settings.authority().as_str(),
            "https://login.microsoftonline.com/"
        );
        assert_eq!(settings.scope(), "https://graph.microsoft.com/.default");
    }

    #[test]
    fn the_shipped_default_file_loads_and_agrees_with_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
        let from_file = Settings::load_from(&path, None, env(&[])).expect("valid");
        let built_in = load(None, &[]).expect("valid");
        assert_eq!(format!("{from_file:?}"), format!("{built_in:?}"));
    }

    #[test]
    fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
        let file = toml_file(
            "[amqp]\nprefetch = 7\ncommand_queue = \"from-file\"\n[retry]\nmax_elapsed = \"90s\"\n",
        );
        let settings = load(
            Some(file.path()),
            &[("PRINT_ABORT__AMQP__COMMAND_QUEUE", "from-env")],
        )
        .expect("valid");
        assert_eq!(settings.amqp.prefetch.get(), 7);
        assert_eq!(settings.amqp.command_queue, "from-env");
        assert_eq!(settings.retry.max_elapsed, Duration::from_secs(90));
    }

    #[test]
    fn durations_lists_and_numbers_come_from_the_environment() {
        let settings = load(
            None,
            &[
                ("PRINT_ABORT__RETRY__INITIAL_INTERVAL", "250ms"),
                ("PRINT_ABORT__WORKER__CONCURRENCY", "64"),
                ("PRINT_ABORT__AUTH__ALLOWED_TENANTS", "a,b"),
            ],
        )
        .expect("valid");
        assert_eq!(settings.retry.initial_interval, Duration::from_millis(250));
        assert_eq!(settings.worker.concurrency.get(), 64);
        assert_eq!(settings.auth.allowed_tenants, vec!["a", "b"]);
    }

    #[test]
    fn shapes_are_checked_as_the_settings_are_read() {
        for (key, value, says) in [
            ("PRINT_ABORT__AMQP__PREFETCH", "0", "amqp.prefetch"),
            (
                "PRINT_ABORT__WORKER__CONCURRENCY",
                "0",
                "worker.concurrency",
            ),
            (
                "PRINT_ABORT__AMQP__MAX_DELIVERIES",
                "0",
                "amqp.max_deliveries",
            ),
            (
                "PRINT_ABORT__HTTP__LISTEN",
                "localhost:http",
                "0.0.0.0:9090",
            ),
            (
                "PRINT_ABORT__AMQP__URL",
                "http://user:pa55word@host/",
                "amqp://",
            ),
            (
                "PRINT_ABORT__AMQP__URL",
                "amqp://user:pa55word@[host",
                "amqp.url",
            ),
        ] {
            let error = load(None, &[(key, value)]).expect_err(key).to_string();
            assert!(error.contains(says), "{key}={value}: {error}");
            assert!(!error.contains("pa55word"), "{error}");
        }
    }

    #[test]
    fn amqp_url_is_one_broker_or_a_list_of_nodes() {
        let file = toml_file(
            "[amqp]\nurl = [\"amqp://u:p@mq-0:5672/%2f\", \"amqps://u:p@mq-1:5671/%2f\"]\n",
        );
        let settings = load(Some(file.path()), &[]).expect("valid");
        assert_eq!(settings.amqp.url.nodes().len(), 2);
        assert_eq!(settings.amqp.url.nodes()[1].host_port(), "mq-1:5671");
        let from_env = load(
            None,
            &[(
                "PRINT_ABORT__AMQP__URL",
                "amqp://mq-0:5672/%2f,amqp://mq-1:5672/%2f",
            )],
        )
        .expect("valid");
        assert_eq!(from_env.amqp.url.nodes().len(), 2);
        let empty = toml_file("[amqp]\nurl = []\n");
        let error = load(Some(empty.path()), &[])
            .expect_err("no node")
            .to_string();
        assert!(error.contains("amqp.url"), "{error}");
    }

    #[test]
    fn http_listen_is_an_address_or_nothing() {
        let listen = |value: &str| {
            load(None, &[("PRINT_ABORT__HTTP__LISTEN", value)])
                .expect("valid")
                .http
                .listen
        };
        assert_eq!(listen(""), None);
        assert_eq!(
            listen("[::1]:9090"),
            Some("[::1]:9090".parse().expect("an address"))
        );
        assert_eq!(load(None, &[]).expect("valid").http.listen, None);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let error = load(None, &[("PRINT_ABORT__AMQP__PREFECH", "3")]).expect_err("typo");
        assert!(error.to_string().contains("prefech"), "{error}");
        let file = toml_file("[graph]\ntimout = \"3s\"\n");
        let error = load(Some(file.path()), &[]).expect_err("typo");
        assert!(error.to_string().contains("timout"), "{error}");
    }

    #[test]
    fn clear_text_http_is_refused_except_on_loopback() {
        for url in [
            "http://127.0.0.1:8080/v1.0",
            "http://localhost/v1.0",
            "http://[::1]:1/v1.0",
        ] {
            assert!(
                load(None, &[("PRINT_ABORT__GRAPH__BASE_URL", url)]).is_ok(),
                "{url}"
            );
        }
        let error = load(
            None,
            &[("PRINT_ABORT__AUTH__AUTHORITY", "http://login.example.com")],
        )
        .expect_err("clear text");
        assert!(error.to_string().contains("auth.authority"), "{error}");
    }

    #[test]
    fn cloud_presets_set_graph_authority_and_scope_and_explicit_keys_win() {
        let settings = load(None, &[("PRINT_ABORT__GRAPH__CLOUD", "usgov-dod")]).expect("valid");
        assert_eq!(
            settings.graph.base_url().as_str(),
            "https://dod-graph.microsoft.us/v1.0"
        );
        assert_eq!(
            settings.authority().as_str(),
            "https://login.microsoftonline.us/"
        );
        assert_eq!(settings.scope(), "https://dod-graph.microsoft.us/.default");
        let settings = load(
            None,
            &[
                ("PRINT_ABORT__GRAPH__CLOUD", "usgov"),
                ("PRINT_ABORT__AUTH__SCOPE", "custom/.default"),
            ],
        )
        .expect("valid");
        assert_eq!(
            settings.graph.base_url().as_str(),
            "https://graph.microsoft.us/v1.0"
        );
        assert_eq!(settings.scope(), "custom/.default");
    }

    #[test]
    fn the_new_credential_keys_load_from_the_environment() {
        let token = toml_file("a-federated-token");
        let path = token.path().to_string_lossy().into_owned();
        let settings = load(
            None,
            &[
                ("PRINT_ABORT__AUTH__CLIENT_SECRET", ""),
                ("PRINT_ABORT__AUTH__FEDERATED_TOKEN_FILE", path.as_str()),
            ],
        )
        .expect("an empty secret counts as unset");
        assert_eq!(settings.auth.federated_token_file, Some(path.into()));
        assert_eq!(settings.auth.client_certificate_file, None);
    }

    #[test]
    fn every_cloud_preset_sets_graph_authority_and_scope() {
        let presets = [
            (
                "global",
                "https://graph.microsoft.com/v1.0",
                "https://login.microsoftonline.com/",
                "https://graph.microsoft.com/.default",
            ),
            (
                "usgov",
                "https://graph.microsoft.us/v1.0",
                "https://login.microsoftonline.us/",
                "https://graph.microsoft.us/.default",
            ),
            (
                "usgov-dod",
                "https://dod-graph.microsoft.us/v1.0",
                "https://login.microsoftonline.us/",
                "https://dod-graph.microsoft.us/.default",
            ),
        ];
        for (cloud, graph, authority, scope) in presets {
            let settings = load(None, &[("PRINT_ABORT__GRAPH__CLOUD", cloud)]).expect(cloud);
            assert_eq!(settings.graph.base_url().as_str(), graph, "{cloud}");
            assert_eq!(settings.authority().as_str(), authority, "{cloud}");
            assert_eq!(settings.scope(), scope, "{cloud}");
            // A stand-in authority leaves the preset's Graph and scope alone.
            let settings = load(
                None,
                &[
                    ("PRINT_ABORT__GRAPH__CLOUD", cloud),
                    ("PRINT_ABORT__AUTH__AUTHORITY", "http://127.0.0.1:9"),
                ],
            )
            .expect(cloud);
            assert_eq!(settings.authority().as_str(), "http://127.0.0.1:9/");
            assert_eq!(settings.scope(), scope, "{cloud}");
        }
        let error = load(None, &[("PRINT_ABORT__GRAPH__CLOUD", "china")]).expect_err("unknown");
        assert!(error.to_string().contains("china"), "{error}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let settings = load(
            None,
            &[(
                "PRINT_ABORT__AMQP__URL",
                "amqp://user:broker-pass@host:5672/%2f",
            )],
        )
        .expect("valid");
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2-secret"), "{debug}");
        assert!(!debug.contains("broker-pass"), "{debug}");
    }
}
