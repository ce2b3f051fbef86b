//! Access tokens: issuing them for the client-credentials flow and checking the bearer
//! tokens that Graph calls carry.
//!
//! A token is a JWT signed with HMAC-SHA256 under a key drawn at start. Checking one needs
//! no table of issued tokens, so memory stays flat however many are issued, and a token from
//! an earlier run of the simulator is refused like a forged one. The payload carries the
//! claims a real app-only token has (`aud`, `tid`, `appid`, `roles`, `exp`, …) so a client
//! can decode it the way it would decode Microsoft's, for example to check its `roles`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The JOSE header of every token, base64url-encoded once.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT","kid":"graph-sim"}"#;

/// A token handed out by the token endpoint.
pub struct IssuedToken {
    pub access_token: String,
    /// Whole seconds the token is valid, rounded down so a client never trusts it too long.
    pub expires_in: u64,
}

/// The payload of a token.
#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    appid: &'a str,
    tid: &'a str,
    idtyp: &'static str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    /// Unique per token, as Microsoft's `uti` is, so two tokens never compare equal.
    uti: String,
    /// `exp` in milliseconds: the standard claim has whole seconds, and tests use
    /// sub-second lifetimes.
    sim_exp_ms: u64,
    /// The revocation generation the token was issued in; see [`TokenIssuer::revoke_all`].
    sim_gen: u64,
}

/// The claims a Graph call is judged by.
#[derive(Deserialize)]
struct PresentedClaims {
    sim_exp_ms: u64,
    sim_gen: u64,
    #[serde(default)]
    roles: Vec<String>,
    /// The tenant the token was issued in, which the per-tenant throttle counts against.
    tid: String,
}

/// A checked bearer token. Cloned into the request's extensions, so the layers after the
/// bearer check and the permission check read it without verifying the token again.
#[derive(Debug, Clone)]
pub struct Grant {
    roles: Vec<String>,
    tenant: String,
}

impl Grant {
    pub fn has_any_role(&self, wanted: &[&str]) -> bool {
        self.roles
            .iter()
            .any(|role| wanted.contains(&role.as_str()))
    }

    /// The token's `tid`: the tenant named in the token endpoint's path when it was issued.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// Why a bearer token was refused; each is a `401` from Graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Missing,
    /// Not a JWT, or not one this simulator signed.
    Invalid,
    Expired,
    /// Issued before [`TokenIssuer::revoke_all`].
    Revoked,
}

impl TokenRejection {
    /// The `message` of Graph's `InvalidAuthenticationToken` error.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "Access token is empty.",
            Self::Invalid => "Access token validation failure. Invalid signature or format.",
            Self::Expired => "Lifetime validation failed, the token is expired.",
            Self::Revoked => "Access token has been revoked.",
        }
    }
}

/// Signs and checks tokens with one key.
pub struct TokenIssuer {
    /// Keyed once; each use clones the prepared state.
    mac: HmacSha256,
    encoded_header: String,
    lifetime: Duration,
    roles: Vec<String>,
    /// Bumped by each revocation; tokens of an older generation are refused, so tests can
    /// make a client meet a `401` on a token it still believes valid.
    generation: AtomicU64,
}

impl TokenIssuer {
    pub fn new(lifetime: Duration, roles: Vec<String>) -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC accepts a key of any length"),
            encoded_header: URL_SAFE_NO_PAD.encode(HEADER_JSON),
            lifetime,
            roles,
            generation: AtomicU64::new(0),
        }
    }

    /// A token for `client_id` in `tenant`, for the resource that `scope` names.
    pub fn issue(&self, tenant: &str, client_id: &str, scope: &str) -> IssuedToken {
        let now_ms = unix_ms(SystemTime::now());
        let exp_ms =
            now_ms.saturating_add(u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX));
        let claims = Claims {
            aud: scope.strip_suffix("/.default").unwrap_or(scope),
            iss: format!("https://sts.windows.net/{tenant}/"),
            iat: now_ms / 1000,
            nbf: now_ms / 1000,
            exp: exp_ms / 1000,
            appid: client_id,
            tid: tenant,
            idtyp: "app",
            roles: &self.roles,
            uti: uuid::Uuid::new_v4().simple().to_string(),
            sim_exp_ms: exp_ms,
            sim_gen: self.generation.load(Ordering::Acquire),
        };
        // Serializing plain strings and numbers cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            self.encoded_header,
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        IssuedToken {
            access_token: format!("{signing_input}.{signature}"),
            expires_in: self.lifetime.as_secs(),
        }
    }

    /// Checks the `Authorization: Bearer …` header of a Graph call.
    pub fn check(&self, headers: &HeaderMap) -> Result<Grant, TokenRejection> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(TokenRejection::Missing)?;
        let claims = self.verify(token).ok_or(TokenRejection::Invalid)?;
        let now_ms = unix_ms(SystemTime::now());
        if now_ms >= claims.sim_exp_ms {
            return Err(TokenRejection::Expired);
        }
        if claims.sim_gen < self.generation.load(Ordering::Acquire) {
            return Err(TokenRejection::Revoked);
        }
        Ok(Grant {
            roles: claims.roles,
            tenant: claims.tid,
        })
    }

    /// Refuses every token issued so far; new ones are good.
    pub fn revoke_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The payload of a well-formed token with a good signature.
    fn verify(&self, token: &str) -> Option<PresentedClaims> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        if header != self.encoded_header {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
        headers.insert(AUTHORIZATION, value);
        headers
    }

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(
            Duration::from_secs(3600),
            vec!["PrintJob.ReadWriteBasic.All".into()],
        )
    }

    #[test]
    fn an_issued_token_is_accepted_with_its_roles() {
        let issuer = issuer();
        let token = issuer.issue("tenant", "client", "https://graph.microsoft.com/.default");
        assert_eq!(token.expires_in, 3600);
        let grant = issuer
            .check(&bearer(&token.access_token))
            .unwrap_or_else(|_| panic!("the token is accepted"));
        assert!(grant.has_any_role(&["PrintJob.ReadWriteBasic.All"]));
        assert!(!grant.has_any_role(&["PrintJob.Manage.All"]));
        assert_eq!(grant.tenant(), "tenant");
    }

    #[test]
    fn the_payload_reads_like_an_app_only_token() {
        let token = issuer()
            .issue(
                "tenant-1",
                "client-1",
                "https://graph.microsoft.com/.default",
            )
            .access_token;
        let payload = token.split('.').nth(1).expect("three parts");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
                .expect("JSON");
        assert_eq!(claims["tid"], "tenant-1");
        assert_eq!(claims["appid"], "client-1");
        assert_eq!(claims["aud"], "https://graph.microsoft.com");
        assert_eq!(claims["roles"][0], "PrintJob.ReadWriteBasic.All");
        assert!(claims["exp"].as_u64().is_some());
    }

    #[test]
    fn foreign_tampered_and_missing_tokens_are_refused() {
        let issuer = issuer();
        let other = TokenIssuer::new(Duration::from_secs(3600), Vec::new());
        let foreign = other.issue("t", "c", "s").access_token;
        assert_eq!(
            issuer.check(&bearer(&foreign)).err(),
            Some(TokenRejection::Invalid)
        );
        let token = issuer.issue("t", "c", "s").access_token;
        let tampered = format!("{token}x");
        assert_eq!(
            issuer.check(&bearer(&tampered)).err(),
            Some(TokenRejection::Invalid)
        );
        assert_eq!(
            issuer.check(&bearer("not-a-jwt")).err(),
            Some(TokenRejection::Invalid)
        );
        assert_eq!(
            issuer.check(&HeaderMap::new()).err(),
            Some(TokenRejection::Missing)
        );
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused() {
        let short = TokenIssuer::new(Duration::ZERO, Vec::new());
        let token = short.issue("t", "c", "s").access_token;
        assert_eq!(
            short.check(&bearer(&token)).err(),
            Some(TokenRejection::Expired)
        );

        let issuer = issuer();
        let token = issuer.issue("t", "c", "s").access_token;
        issuer.revoke_all();
        assert_eq!(
            issuer.check(&bearer(&token)).err(),
            Some(TokenRejection::Revoked)
        );
        let fresh = issuer.issue("t", "c", "s").access_token;
        assert!(issuer.check(&bearer(&fresh)).is_ok());
    }
}
