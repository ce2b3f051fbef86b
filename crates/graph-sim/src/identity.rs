//! The identity platform's token endpoint, client-credentials flow only.
//!
//! It checks the form the way Microsoft Entra ID does and refuses with the same shapes
//! (`{"error","error_description":"AADSTS…","error_codes",…}` and the same statuses), so a
//! client's handling of wrong secrets, unknown apps and bad scopes can be tested.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::header::{CACHE_CONTROL, PRAGMA};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::Sim;
use super::reply::RequestIds;

/// Longest piece of caller input quoted back in an error description.
const MAX_QUOTED_CHARS: usize = 100;

/// The fields of a token request the simulator reads; the first of repeated fields wins.
#[derive(Default)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion: Option<String>,
    scope: Option<String>,
}

impl TokenForm {
    fn parse(body: &[u8]) -> Self {
        let mut form = Self::default();
        for (name, value) in url::form_urlencoded::parse(body) {
            let field = match name.as_ref() {
                "grant_type" => &mut form.grant_type,
                "client_id" => &mut form.client_id,
                "client_secret" => &mut form.client_secret,
                "client_assertion" => &mut form.client_assertion,
                "scope" => &mut form.scope,
                _ => continue,
            };
            if field.is_none() {
                *field = Some(value.into_owned());
            }
        }
        form
    }
}

/// The identity platform's error body, fields in its order.
#[derive(Serialize)]
struct IdentityError<'a> {
    error: &'a str,
    error_description: String,
    error_codes: [u32; 1],
    timestamp: String,
    trace_id: &'a str,
    correlation_id: &'a str,
}

/// A successful token reply, fields in the identity platform's order.
#[derive(Serialize)]
struct TokenReply {
    token_type: &'static str,
    expires_in: u64,
    ext_expires_in: u64,
    access_token: String,
}

/// A refusal in the identity platform's format.
struct IdentityFailure {
    status: StatusCode,
    error: &'static str,
    /// The `AADSTS` number.
    code: u32,
    text: String,
}

impl IdentityFailure {
    fn new(status: StatusCode, error: &'static str, code: u32, text: impl Into<String>) -> Self {
        Self {
            status,
            error,
            code,
            text: text.into(),
        }
    }

    fn missing(parameter: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    fn render(self, ids: &RequestIds) -> Response {
        let body = IdentityError {
            error: self.error,
            error_description: format!("AADSTS{}: {}", self.code, self.text),
            error_codes: [self.code],
            timestamp: chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            trace_id: &ids.request_id,
            correlation_id: ids.correlation_id(),
        };
        (self.status, Json(body)).into_response()
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub async fn issue_token(
    State(sim): State<Arc<Sim>>,
    Extension(ids): Extension<RequestIds>,
    tenant: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match token_reply(&sim, tenant, body) {
        Ok(reply) => reply,
        Err(failure) => failure.render(&ids),
    }
}

fn token_reply(
    sim: &Sim,
    tenant: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IdentityFailure> {
    let Path(tenant) = tenant.map_err(|_| {
        IdentityFailure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900023,
            "Specified tenant identifier is neither a valid DirectoryId nor a valid domain name.",
        )
    })?;
    if !sim.accepts_tenant(&tenant) {
        return Err(IdentityFailure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{}' not found. Check to make sure you have the correct tenant ID and are \
                 signing into the correct cloud.",
                quoted(&tenant)
            ),
        ));
    }
    let body = body.map_err(|rejection| {
        IdentityFailure::new(
            rejection.status(),
            "invalid_request",
            900144,
            rejection.body_text(),
        )
    })?;
    let form = TokenForm::parse(&body);

    let grant_type = form
        .grant_type
        .ok_or_else(|| IdentityFailure::missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(IdentityFailure::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!(
                "The app requested an unsupported grant type '{}'; graph-sim supports \
                 client_credentials only.",
                quoted(&grant_type)
            ),
        ));
    }
    let client_id = form
        .client_id
        .ok_or_else(|| IdentityFailure::missing("client_id"))?;
    let scope = form
        .scope
        .ok_or_else(|| IdentityFailure::missing("scope"))?;
    if !scope.ends_with("/.default") {
        return Err(IdentityFailure::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {} is not valid. Client credential flows must have \
                 a scope value with /.default suffixed to the resource identifier (application \
                 ID URI).",
                quoted(&scope)
            ),
        ));
    }
    if client_id != sim.client_id {
        return Err(IdentityFailure::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{}' was not found in the directory '{}'.",
                quoted(&client_id),
                quoted(&tenant)
            ),
        ));
    }
    match (form.client_secret, form.client_assertion) {
        (Some(secret), _) if secret == sim.client_secret.expose_secret() => {}
        (Some(_), _) => {
            return Err(IdentityFailure::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            ));
        }
        (None, Some(_)) => {
            return Err(IdentityFailure::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                "Client assertion failed signature validation: graph-sim accepts client secrets \
                 only.",
            ));
        }
        (None, None) => {
            return Err(IdentityFailure::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the \
                 'client_credentials' grant type.",
            ));
        }
    }

    let token = sim.tokens.issue(&tenant, &client_id, &scope);
    let body = TokenReply {
        token_type: "Bearer",
        expires_in: token.expires_in,
        ext_expires_in: token.expires_in,
        access_token: token.access_token,
    };
    // Token replies must not be cached by anything in between (RFC 6749, 5.1).
    let headers = [
        (
            CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache"),
        ),
        (PRAGMA, HeaderValue::from_static("no-cache")),
    ];
    Ok((headers, Json(body)).into_response())
}

/// Caller input cut to a length fit for an error description.
fn quoted(text: &str) -> String {
    text.chars().take(MAX_QUOTED_CHARS).collect()
}
