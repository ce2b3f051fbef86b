//! App-only credentials: OAuth2 client-credentials tokens for Microsoft Graph.
//!
//! Abort works only with application permissions, so every token comes from
//! `POST {authority}/{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`.
//! There is no refresh token: [`TokenProvider`] caches one token per tenant, renews it a
//! little before it expires, and lets many commands that need a token at the same moment
//! share a single request.
//!
//! The parts, by file: [`credential`] says how the app proves who it is (secret,
//! certificate or federated token) and reads that proof afresh for every token request;
//! [`assertion`] signs the client assertion of a certificate credential; [`claims`] reads a
//! token's `roles`, for `print-abort-worker check`.

pub mod assertion;
pub mod claims;
pub mod credential;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::config::Settings;

pub use credential::ClientCredential;

/// Renew at most this long before a token expires.
const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(300);

/// A failure to obtain a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The identity platform refused the app: wrong secret, unknown client, no consent.
    #[error("the token endpoint refused the credentials ({status} {code}): {description}")]
    Refused {
        status: u16,
        code: String,
        description: String,
    },
    /// The credential could not be read or used locally: a file went missing, or a
    /// renewed certificate is broken.
    #[error("the client credential could not be used: {0}")]
    Credential(#[from] CredentialUnusable),
    /// A passing failure: the endpoint was unreachable, throttled or broken.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(#[from] TokenUnavailable),
}

/// Why the credential could not be used for a token request. The sources are shared
/// (`Arc`), as every command waiting for the same token request gets its error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialUnusable {
    /// Reading or signing failed; the message names the key and, for a file, its path.
    #[error("{key}: {location}")]
    Failed {
        key: &'static str,
        location: String,
        #[source]
        source: Arc<credential::CredentialError>,
    },
    /// The blocking task that reads the credential did not finish.
    #[error("reading the credential failed: {0}")]
    Interrupted(#[source] Arc<tokio::task::JoinError>),
    #[error("auth.authority cannot be a base URL")]
    Authority,
}

/// Why the token endpoint gave no token this time; retried like Graph's transient failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenUnavailable {
    /// No reply, or a reply cut short: the error with its causes.
    #[error("{}", error_chain(.0.as_ref()))]
    Transport(#[source] Arc<reqwest::Error>),
    #[error("the token reply could not be read: {0}")]
    Unreadable(#[source] Arc<serde_json::Error>),
    #[error("the token reply has no usable expires_in")]
    NoLifetime,
    /// Throttled (429) or broken (5xx).
    #[error("HTTP {status} {code}")]
    Status { status: u16, code: String },
}

impl AuthError {
    /// Transient failures are retried like Graph's; the others are systemic.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A bearer token; cheap to clone, never printed.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<SecretString>,
    /// `Bearer {token}`, marked sensitive, made once for all the token's requests; `None`
    /// when the token endpoint sent text that cannot be a header value.
    header: Option<HeaderValue>,
}

impl AccessToken {
    fn new(secret: SecretString) -> Self {
        let header = HeaderValue::try_from(format!("Bearer {}", secret.expose_secret()))
            .ok()
            .map(|mut header| {
                header.set_sensitive(true);
                header
            });
        Self {
            secret: Arc::new(secret),
            header,
        }
    }

    pub fn bearer(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The `Authorization` header, or `None` when the token cannot be sent as one.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.header.as_ref()
    }

    fn same_as(&self, other: &AccessToken) -> bool {
        Arc::ptr_eq(&self.secret, &other.secret)
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken([REDACTED])")
    }
}

#[derive(Clone)]
struct CachedToken {
    token: AccessToken,
    renew_at: Instant,
}

/// The token state of one tenant.
#[derive(Default)]
struct TenantTokens {
    /// Read on every Graph call, so readers never wait on a token request in flight.
    current: RwLock<Option<CachedToken>>,
    /// Held while a token is requested, so concurrent callers share one request.
    renewal: tokio::sync::Mutex<()>,
}

/// Issues and caches app-only tokens, one per tenant.
pub struct TokenProvider {
    http: reqwest::Client,
    authority: Url,
    default_tenant: String,
    client_id: String,
    credential: ClientCredential,
    scope: String,
    tenants: Mutex<HashMap<String, Arc<TenantTokens>>>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("authority", &self.authority.as_str())
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: SecretString,
    /// Seconds; some endpoints send it as a string.
    expires_in: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct TokenErrorReply {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenProvider {
    pub fn new(http: reqwest::Client, settings: &Settings, credential: ClientCredential) -> Self {
        Self {
            http,
            authority: settings.authority(),
            default_tenant: settings.auth.tenant_id.clone(),
            client_id: settings.auth.client_id.clone(),
            credential,
            scope: settings.scope(),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration key of the credential in use, for messages that say what to fix.
    pub fn credential_key(&self) -> &'static str {
        self.credential.key()
    }

    /// The tenant of commands that name none (`auth.tenant_id`).
    pub fn default_tenant(&self) -> &str {
        &self.default_tenant
    }

    /// Whether `tenant` is the configured tenant, whose credentials every command shares.
    pub fn is_default_tenant(&self, tenant: Option<&str>) -> bool {
        tenant.is_none_or(|tenant| tenant.eq_ignore_ascii_case(&self.default_tenant))
    }

    /// A valid token for `tenant` (`None`: the configured tenant).
    pub async fn token(&self, tenant: Option<&str>) -> Result<AccessToken, AuthError> {
        let tenant = tenant.unwrap_or(&self.default_tenant);
        let state = self.tenant(tenant);
        if let Some(token) = fresh(&state) {
            return Ok(token);
        }
        let _renewal = state.renewal.lock().await;
        // Another caller may have renewed it while this one waited.
        if let Some(token) = fresh(&state) {
            return Ok(token);
        }
        self.fetch_into(&state, tenant).await
    }

    /// A newly issued token, whatever the cache holds: the health probe of a paused worker.
    pub async fn renew(&self, tenant: Option<&str>) -> Result<AccessToken, AuthError> {
        let tenant = tenant.unwrap_or(&self.default_tenant);
        let state = self.tenant(tenant);
        let _renewal = state.renewal.lock().await;
        self.fetch_into(&state, tenant).await
    }

    async fn fetch_into(
        &self,
        state: &TenantTokens,
        tenant: &str,
    ) -> Result<AccessToken, AuthError> {
        let cached = self.request(tenant).await;
        crate::telemetry::metrics::token_request(cached.is_ok());
        let cached = cached?;
        let token = cached.token.clone();
        *state.current.write().unwrap_or_else(|e| e.into_inner()) = Some(cached);
        Ok(token)
    }

    /// Forgets `token` after Graph refused it with 401, so the next call fetches a new one.
    /// A token that was already replaced is left alone: one renewal serves every caller.
    pub fn invalidate(&self, tenant: Option<&str>, token: &AccessToken) {
        let state = self.tenant(tenant.unwrap_or(&self.default_tenant));
        let mut current = state.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.token.same_as(token)) {
            *current = None;
        }
    }

    fn tenant(&self, tenant: &str) -> Arc<TenantTokens> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.to_ascii_lowercase())
            .or_default()
            .clone()
    }

    #[tracing::instrument(
        name = "token_request",
        skip(self),
        fields(tenant, credential = self.credential.key())
    )]
    async fn request(&self, tenant: &str) -> Result<CachedToken, AuthError> {
        let url = token_endpoint(&self.authority, tenant).ok_or(CredentialUnusable::Authority)?;
        // Read for every request: a file credential may have been rotated since the last one,
        // and an assertion is only valid for a few minutes and for this tenant's endpoint.
        let proof = self.credential.proof(&self.client_id, &url).await?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        form.extend(proof.form_fields());
        let started = Instant::now();
        let reply = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|error| TokenUnavailable::Transport(Arc::new(error)))?;
        let status = reply.status().as_u16();
        let body = crate::remote::read_body(http::Response::from(reply).into_body())
            .await
            .map_err(|error| TokenUnavailable::Transport(Arc::new(error)))?;
        if status == 200 {
            let parsed: TokenReply = serde_json::from_slice(&body)
                .map_err(|error| TokenUnavailable::Unreadable(Arc::new(error)))?;
            let lifetime = expires_in(&parsed.expires_in).ok_or(TokenUnavailable::NoLifetime)?;
            let margin = MAX_RENEWAL_MARGIN.min(lifetime / 5);
            tracing::debug!(
                lifetime_s = lifetime.as_secs(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "token issued"
            );
            return Ok(CachedToken {
                token: AccessToken::new(parsed.access_token),
                renew_at: started + lifetime.saturating_sub(margin),
            });
        }
        let error: TokenErrorReply = serde_json::from_slice(&body).unwrap_or_default();
        let code = crate::remote::cut(error.error, crate::remote::MAX_CODE_BYTES);
        let failure = if status == 429 || status >= 500 {
            AuthError::Unavailable(TokenUnavailable::Status { status, code })
        } else {
            AuthError::Refused {
                status,
                code,
                description: crate::remote::message(error.error_description),
            }
        };
        tracing::warn!(status, error = %failure, "token request failed");
        Err(failure)
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`; `None` when the authority cannot take a path.
pub(crate) fn token_endpoint(authority: &Url, tenant: &str) -> Option<Url> {
    let mut url = authority.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend([tenant, "oauth2", "v2.0", "token"]);
    Some(url)
}

fn fresh(state: &TenantTokens) -> Option<AccessToken> {
    let current = state.current.read().unwrap_or_else(|e| e.into_inner());
    current
        .as_ref()
        .filter(|cached| Instant::now() < cached.renew_at)
        .map(|cached| cached.token.clone())
}

fn expires_in(value: &serde_json::Value) -> Option<Duration> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// An error with its causes, for logs and events ("timed out: operation timed out").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_authorization_header_is_made_once_and_marked_sensitive() {
        let token = AccessToken::new(SecretString::from("eyJ0eXAi.abc.def"));
        let header = token.authorization().expect("a header value");
        assert_eq!(header.to_str().ok(), Some("Bearer eyJ0eXAi.abc.def"));
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("eyJ0eXAi"));
        assert!(token.clone().same_as(&token));
    }

    #[test]
    fn a_token_that_cannot_be_a_header_value_has_no_authorization() {
        let token = AccessToken::new(SecretString::from("abc\r\nX-Injected: 1"));
        assert!(token.authorization().is_none());
        assert_eq!(format!("{token:?}"), "AccessToken([REDACTED])");
    }
}
