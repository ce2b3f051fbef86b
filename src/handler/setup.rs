//! Building the handler from the settings: the token provider's HTTP client, Graph's
//! transport, the credential, the retry policy, the throttle and the limits.

use std::sync::Arc;
use std::time::Duration;

use super::{AbortHandler, HandlerLimits};
use crate::auth::{ClientCredential, TokenProvider};
use crate::breaker::CircuitBreaker;
use crate::config::{ConfigError, Settings};
use crate::graph::{GraphClient, Transport, TransportSetupError};
use crate::retry::RetryPolicy;
use crate::throttle::Throttle;

/// Why the handler could not be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the HTTP client could not be built: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("the client credential could not be loaded: {0}")]
    Credential(#[source] ConfigError),
    #[error(transparent)]
    Transport(TransportSetupError),
}

/// Builds the token provider's HTTP client (Graph's is [`Transport`]).
pub fn http_client(settings: &Settings) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .user_agent(concat!("print-abort-worker/", env!("CARGO_PKG_VERSION")))
        .timeout(settings.graph.timeout)
        .connect_timeout(settings.graph.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        // Neither Graph's print API nor the token endpoint redirects; following one would
        // only risk sending the bearer token somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        // reqwest would resend a request an HTTP/2 server refused unprocessed, cloning every
        // request to be able to; the worker's own retry policy (with its backoff, metrics and
        // reconciliation) handles those like any other transport failure.
        .retry(reqwest::retry::never())
        .build()
        .map_err(SetupError::HttpClient)
}

impl AbortHandler {
    /// Builds the handler and everything it needs from the settings.
    pub fn from_settings(
        settings: &Settings,
        breaker: Arc<CircuitBreaker>,
    ) -> Result<Self, SetupError> {
        let http = http_client(settings)?;
        let credential =
            ClientCredential::from_settings(settings).map_err(SetupError::Credential)?;
        let tokens = Arc::new(TokenProvider::new(http.clone(), settings, credential));
        let transport = Transport::new(&settings.graph).map_err(SetupError::Transport)?;
        Ok(Self::new(
            GraphClient::new(transport, &settings.graph),
            tokens,
            RetryPolicy::new(&settings.retry),
            breaker,
            Arc::new(Throttle::new(settings.retry.max_interval)),
            HandlerLimits::from_settings(settings),
        ))
    }
}
