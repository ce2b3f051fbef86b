//! What every reply shares: the `request-id` (and echoed `client-request-id`) headers,
//! Graph's error body, and the extractors that turn bad input into such errors instead of
//! plain-text rejections.
//!
//! Handlers fail with a [`GraphFailure`]; [`assign_request_ids`], which knows the ids of
//! the request, renders it as
//! `{"error":{"code","message","innerError":{"request-id","client-request-id","date"}}}`.
//! A failure can ask for its `message` to be padded to a given body size; the padding is
//! written straight into the one reply buffer, so a 30 MB body is held once, not twice.

use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use super::model::JobKey;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");

/// Longest printer or job id accepted; Graph's are far shorter, and the cap bounds the
/// memory one job can take.
const MAX_ID_CHARS: usize = 256;

/// What a padded `message` is padded with: plain ASCII, so JSON escapes none of it and the
/// body's size is known before it is written.
const PADDING: &str = "................................................................";

/// The ids of one request, for error bodies and reply headers.
#[derive(Debug, Clone)]
pub struct RequestIds {
    /// A fresh UUID per request, as Graph's `request-id`.
    pub request_id: String,
    /// The caller's `client-request-id`, when it sent a readable one.
    pub client_request_id: Option<String>,
}

impl RequestIds {
    /// The correlation id error bodies carry: the caller's, else the request's own, as
    /// Graph and the identity platform do.
    pub fn correlation_id(&self) -> &str {
        self.client_request_id
            .as_deref()
            .unwrap_or(&self.request_id)
    }
}

/// Gives each request a `request-id`, renders any [`GraphFailure`] with it, and puts the
/// ids on the reply.
pub async fn assign_request_ids(mut request: Request, next: Next) -> Response {
    let echoed = request.headers().get(CLIENT_REQUEST_ID).cloned();
    let ids = RequestIds {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id: echoed
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    };
    request.extensions_mut().insert(ids.clone());
    let mut response = next.run(request).await;
    if let Some(failure) = response.extensions_mut().remove::<GraphFailure>() {
        response = failure.render(&ids);
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&ids.request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(value) = echoed {
        headers.insert(CLIENT_REQUEST_ID, value);
    }
    response
}

/// A Graph error reply, rendered by [`assign_request_ids`].
#[derive(Debug, Clone)]
pub struct GraphFailure {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The body size to pad the `message` up to, if any.
    body_bytes: Option<usize>,
}

impl GraphFailure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            body_bytes: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn job_not_found(key: &JobKey) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            format!(
                "The print job '{}' was not found on printer '{}'.",
                key.job_id, key.printer_id
            ),
        )
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Pads the `message` so the whole body is `bytes` long (or as short as it can be, if
    /// that is less).
    pub fn with_body_bytes(mut self, bytes: usize) -> Self {
        self.body_bytes = Some(bytes);
        self
    }

    fn render(self, ids: &RequestIds) -> Response {
        let mut body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: Message {
                    text: &self.message,
                    padding: 0,
                },
                inner_error: InnerError {
                    request_id: &ids.request_id,
                    client_request_id: ids.correlation_id(),
                    date: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                },
            },
        };
        let mut response = match self.body_bytes {
            None => (self.status, axum::Json(body)).into_response(),
            Some(target) => {
                // The unpadded body is small; its size tells how much padding reaches the
                // target, so the padded one is written once into a buffer of its final size.
                let unpadded = serde_json::to_vec(&body).unwrap_or_default();
                body.error.message.padding = target.saturating_sub(unpadded.len());
                let mut padded = Vec::with_capacity(unpadded.len() + body.error.message.padding);
                drop(unpadded);
                // Writing plain strings into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut padded, &body);
                (
                    self.status,
                    [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                    padded,
                )
                    .into_response()
            }
        };
        response.headers_mut().extend(self.headers);
        response
    }
}

/// Graph's error body. Structs rather than `json!` keep the fields in Graph's order.
#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    code: &'a str,
    message: Message<'a>,
    inner_error: InnerError<'a>,
}

/// An error `message`, followed by `padding` bytes of [`PADDING`].
struct Message<'a> {
    text: &'a str,
    padding: usize,
}

impl Serialize for Message<'_> {
    /// Through `Display`, which serde_json escapes straight into its output, so the padding
    /// is never built as a string of its own.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.padding == 0 {
            serializer.serialize_str(self.text)
        } else {
            serializer.collect_str(self)
        }
    }
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)?;
        let mut left = self.padding;
        while left > 0 {
            let chunk = left.min(PADDING.len());
            // ASCII, so any byte index is a character boundary.
            f.write_str(&PADDING[..chunk])?;
            left -= chunk;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct InnerError<'a> {
    #[serde(rename = "request-id")]
    request_id: &'a str,
    #[serde(rename = "client-request-id")]
    client_request_id: &'a str,
    date: String,
}

impl IntoResponse for GraphFailure {
    /// A placeholder carrying the failure; [`assign_request_ids`] swaps in the real body.
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// `{printerId}/{jobId}` from the path, each 1 to 256 characters.
pub struct JobPath(pub JobKey);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = GraphFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((printer_id, job_id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| GraphFailure::bad_request(rejection.body_text()))?;
        for (name, id) in [("printer", &printer_id), ("print job", &job_id)] {
            if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
                return Err(GraphFailure::bad_request(format!(
                    "The {name} id must have 1 to {MAX_ID_CHARS} characters."
                )));
            }
        }
        Ok(Self(JobKey { printer_id, job_id }))
    }
}

/// A JSON body. An empty body reads as `null`, so `JsonBody<Option<T>>` makes the body
/// optional, as it is for abort.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = GraphFailure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "RequestEntityTooLarge"
                } else {
                    "BadRequest"
                };
                GraphFailure::new(rejection.status(), code, rejection.body_text())
            })?;
        let json: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &body
        };
        serde_json::from_slice(json).map(Self).map_err(|error| {
            GraphFailure::bad_request(format!("The request body could not be read: {error}."))
        })
    }
}

/// Requests for paths the simulator does not serve.
pub async fn no_route(method: Method, uri: Uri) -> GraphFailure {
    GraphFailure::bad_request(format!("graph-sim serves no {method} {}.", uri.path()))
}

/// Known paths asked with a method they do not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> GraphFailure {
    GraphFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{} does not take {method}.", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> RequestIds {
        RequestIds {
            request_id: "00000000-0000-0000-0000-000000000001".into(),
            client_request_id: None,
        }
    }

    async fn body_of(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body is in memory")
            .to_vec()
    }

    #[tokio::test]
    async fn a_padded_body_has_the_size_asked_for_and_stays_graphs_format() {
        let failure = GraphFailure::new(StatusCode::SERVICE_UNAVAILABLE, "x", "short")
            .with_body_bytes(10_000);
        let response = failure.render(&ids());
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        let body = body_of(response).await;
        assert_eq!(body.len(), 10_000);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let message = json["error"]["message"].as_str().expect("a message");
        assert!(message.starts_with("short."), "{}", &message[..20]);
        assert_eq!(json["error"]["code"], "x");
    }

    #[tokio::test]
    async fn a_target_below_the_plain_body_leaves_it_unpadded() {
        let plain = body_of(GraphFailure::bad_request("short").render(&ids())).await;
        let padded = body_of(
            GraphFailure::bad_request("short")
                .with_body_bytes(1)
                .render(&ids()),
        )
        .await;
        assert_eq!(padded.len(), plain.len());
    }
}
