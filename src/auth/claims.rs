//! Reading the claims of an access token, to tell an operator whether the app registration
//! holds a permission that lets it abort print jobs.
//!
//! The signature is not checked: the token came straight from the token endpoint over TLS,
//! and Graph checks it on every call anyway. This only looks inside, the way an operator
//! would paste a token into a JWT decoder, so `check` can name a missing permission before
//! the first command fails with `403`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// The application permissions that allow `POST …/jobs/{id}/abort`, least privileged first.
pub const ABORT_PERMISSIONS: &[&str] = &[
    "PrintJob.ReadWriteBasic.All",
    "PrintJob.ReadWrite.All",
    "PrintJob.Manage.All",
];

/// The application permissions that allow `GET /print/printers`, the read a paused worker
/// probes Graph with; the least privileged first.
pub const PROBE_PERMISSIONS: &[&str] = &["Printer.Read.All", "Printer.ReadWrite.All"];

/// Why the claims of a token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error("the access token is not a JWT (expected three base64url parts separated by dots)")]
    NotJwt,
    #[error("the access token's payload is not base64url: {0}")]
    Encoding(#[from] base64::DecodeError),
    #[error("the access token's payload is not a JSON object of claims: {0}")]
    Json(#[from] serde_json::Error),
}

/// The claims `check` reports on. Others in the token are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenClaims {
    /// The application permissions granted to the app (app-only tokens only).
    #[serde(default)]
    pub roles: Vec<String>,
    /// The resource the token is for, such as `https://graph.microsoft.com`.
    #[serde(default)]
    pub aud: Option<String>,
    /// The tenant that issued the token.
    #[serde(default)]
    pub tid: Option<String>,
}

impl TokenClaims {
    /// Decodes the payload (the middle part) of a JWT without checking its signature.
    pub fn peek(bearer: &str) -> Result<Self, ClaimsError> {
        let mut parts = bearer.split('.');
        let (Some(_header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ClaimsError::NotJwt);
        };
        if payload.is_empty() {
            return Err(ClaimsError::NotJwt);
        }
        // Issuers leave the padding off, but a padded payload is still the same payload.
        let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The first role that allows aborting print jobs, if the token holds one.
    pub fn abort_permission(&self) -> Option<&str> {
        self.first_of(ABORT_PERMISSIONS)
    }

    /// The first role that allows the probe's printer read, if the token holds one.
    pub fn probe_permission(&self) -> Option<&str> {
        self.first_of(PROBE_PERMISSIONS)
    }

    fn first_of(&self, wanted: &[&str]) -> Option<&str> {
        self.roles
            .iter()
            .map(String::as_str)
            .find(|role| wanted.contains(role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        format!(
            "{}.{}.signature",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn each_abort_permission_is_recognised() {
        for permission in ABORT_PERMISSIONS {
            let claims = TokenClaims::peek(&token(&format!(
                r#"{{"roles":["Printer.Read.All","{permission}"],"aud":"https://graph.microsoft.com"}}"#
            )))
            .expect("claims");
            assert_eq!(claims.abort_permission(), Some(*permission));
            assert_eq!(claims.aud.as_deref(), Some("https://graph.microsoft.com"));
        }
    }

    #[test]
    fn other_or_no_roles_hold_no_abort_permission() {
        for payload in [
            r#"{"roles":["PrintJob.Read.All","PrintJob.ReadBasic.All"]}"#,
            r#"{"roles":[]}"#,
            r#"{"scp":"PrintJob.ReadWrite"}"#,
        ] {
            let claims = TokenClaims::peek(&token(payload)).expect("claims");
            assert_eq!(claims.abort_permission(), None, "{payload}");
        }
    }

    #[test]
    fn a_padded_payload_is_read_too() {
        let padded = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE
                .encode(r#"{"roles":["PrintJob.Manage.All"]}"#)
        );
        let claims = TokenClaims::peek(&padded).expect("claims");
        assert_eq!(claims.abort_permission(), Some("PrintJob.Manage.All"));
    }

    #[test]
    fn anything_but_a_jwt_is_a_clear_error() {
        for opaque in ["", "opaque-token", "a.b", "a.b.c.d", "a..c"] {
            assert!(
                matches!(TokenClaims::peek(opaque), Err(ClaimsError::NotJwt)),
                "{opaque:?}"
            );
        }
        assert!(matches!(
            TokenClaims::peek("a.!!!.c"),
            Err(ClaimsError::Encoding(_))
        ));
        let not_json = format!("a.{}.c", URL_SAFE_NO_PAD.encode("not json"));
        assert!(matches!(
            TokenClaims::peek(&not_json),
            Err(ClaimsError::Json(_))
        ));
        let roles_not_a_list = token(r#"{"roles":"PrintJob.Manage.All"}"#);
        assert!(matches!(
            TokenClaims::peek(&roles_not_a_list),
            Err(ClaimsError::Json(_))
        ));
    }
}
