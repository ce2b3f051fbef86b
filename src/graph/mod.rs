//! The Microsoft Graph client: the abort call and the job look-up that reconciles it.
//!
//! Each request carries a fresh `client-request-id`; each reply's `request-id`, status,
//! `Retry-After` and Graph error body are kept in a [`GraphReply`] for the handler to judge.
//! A request's URI is written from `graph.base_url`'s parts, taken apart once, and the
//! path's segments: fixed names and [`ResourceId`]s, whose characters (letters, digits, `-`
//! and `_`) need no encoding, so no URL is built and parsed again per request.
//! At most [`remote::MAX_REPLY_BYTES`] of a reply are read, and its error text is cut to
//! [`remote::MAX_MESSAGE_BYTES`]. The requests go out through [`Transport`] (`transport.rs`),
//! hyper without reqwest's layers.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
    USER_AGENT,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::auth::AccessToken;
use crate::command::{PrintTask, ResourceId};
use crate::config::GraphSettings;
use crate::remote;
use crate::retry::parse_retry_after;
use crate::telemetry::metrics;
use crate::telemetry::trace::TraceContext;

mod transport;

pub use transport::{Transport, TransportError, TransportSetupError};

/// The reply of one Graph request.
#[derive(Debug, Clone)]
pub struct GraphReply {
    pub status: u16,
    /// Graph's `request-id`, to quote to Microsoft support.
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
    /// Graph's error body, when the reply had one.
    pub error: Option<GraphError>,
    body: bytes::Bytes,
}

/// The `error` object of a Graph error reply.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GraphError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: GraphError,
}

/// The body of an abort with a reason.
#[derive(Serialize)]
struct AbortBody<'a> {
    reason: &'a str,
}

/// The body of a print task's update: its new status.
#[derive(Serialize)]
struct TaskUpdate<'a> {
    status: TaskStatus<'a>,
}

#[derive(Serialize)]
struct TaskStatus<'a> {
    state: &'a str,
    description: &'a str,
}

#[derive(Deserialize)]
struct PrintJob {
    status: Option<PrintJobStatus>,
}

#[derive(Deserialize)]
struct PrintJobStatus {
    state: Option<String>,
}

impl GraphReply {
    /// A short description for logs and outcome events.
    pub fn describe(&self) -> String {
        match &self.error {
            Some(error) => format!("HTTP {} {}: {}", self.status, error.code, error.message),
            None => format!("HTTP {}", self.status),
        }
    }

    pub fn error_code(&self) -> Option<String> {
        self.error.as_ref().map(|error| error.code.clone())
    }

    /// The `status.state` of a printJob reply.
    pub fn job_state(&self) -> Option<String> {
        self.status_state()
    }

    /// The `status.state` of a printTask reply.
    pub fn task_state(&self) -> Option<String> {
        self.status_state()
    }

    fn status_state(&self) -> Option<String> {
        serde_json::from_slice::<PrintJob>(&self.body)
            .ok()?
            .status?
            .state
    }

    /// The `displayName`s (else ids) of a collection such as the task definitions; `None`
    /// when the reply is not a collection. At most 20, each cut to 64 bytes.
    pub fn display_names(&self) -> Option<Vec<String>> {
        let list: Collection<Named> = serde_json::from_slice(&self.body).ok()?;
        Some(
            list.value
                .into_iter()
                .take(20)
                .map(|item| remote::cut(item.display_name.or(item.id).unwrap_or_default(), 64))
                .collect(),
        )
    }

    /// How many tasks of a job's task list are `processing`; `None` when the reply is not
    /// a list of tasks.
    pub fn processing_tasks(&self) -> Option<usize> {
        let list: Collection<PrintJob> = serde_json::from_slice(&self.body).ok()?;
        Some(
            list.value
                .iter()
                .filter(|task| {
                    task.status
                        .as_ref()
                        .and_then(|status| status.state.as_deref())
                        == Some("processing")
                })
                .count(),
        )
    }
}

/// An item of a collection with a name.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Named {
    id: Option<String>,
    display_name: Option<String>,
}

/// A Graph collection.
#[derive(Deserialize)]
struct Collection<T> {
    value: Vec<T>,
}

/// Header names of every request and reply, made once: a name given as text is parsed and
/// checked on every use.
const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// Outbound request pacing shared by every command in flight.
type RateLimiter = governor::DefaultDirectRateLimiter;

/// Talks to Graph's print API over one pooled HTTPS client.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: Transport,
    /// `None` when `graph.base_url` cannot be a request URI; every request then fails.
    api: Option<ApiBase>,
    /// `None` when `graph.max_requests_per_second` is 0 (unlimited).
    rate: Option<Arc<RateLimiter>>,
}

impl GraphClient {
    pub fn new(http: Transport, settings: &GraphSettings) -> Self {
        // A burst of one spaces requests evenly, which is what keeps Graph from throttling.
        let rate = NonZeroU32::new(settings.max_requests_per_second).map(|per_second| {
            let quota = governor::Quota::per_second(per_second).allow_burst(NonZeroU32::MIN);
            Arc::new(governor::RateLimiter::direct(quota))
        });
        Self {
            http,
            api: ApiBase::new(&settings.base_url()),
            rate,
        }
    }

    /// `POST /print/printers/{printerId}/jobs/{printJobId}/abort`.
    pub async fn abort(
        &self,
        token: &AccessToken,
        printer: &ResourceId,
        job: &ResourceId,
        reason: Option<&str>,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        let url = self.job_url(printer, job, Some("abort"));
        let body = reason.map(|reason| AbortBody { reason });
        self.send("abort", Method::POST, url, token, body.as_ref(), trace)
            .await
    }

    /// `GET /print/printers/{printerId}/jobs/{printJobId}`.
    pub async fn get_job(
        &self,
        token: &AccessToken,
        printer: &ResourceId,
        job: &ResourceId,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        self.get("get_job", self.job_url(printer, job, None), token, trace)
            .await
    }

    /// `GET /print/printers/{printerId}?$select=id`: the probe. It needs only
    /// `Printer.Read.All` (or `Printer.ReadWrite.All`) as an application permission, and no
    /// command, so probing spends no command's deliveries. (Listing printers, which needs no
    /// id, is not offered to app-only callers.)
    pub async fn get_printer(
        &self,
        token: &AccessToken,
        printer: &ResourceId,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        let url = self.api_url(&["print", "printers", printer.as_str()], Some("$select=id"));
        self.get("get_printer", url, token, trace).await
    }

    /// `GET /print/taskDefinitions`: this app's print task definitions (pull printing).
    pub async fn list_task_definitions(
        &self,
        token: &AccessToken,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        let url = self.api_url(
            &["print", "taskDefinitions"],
            Some("$select=id,displayName"),
        );
        self.get("task_definitions", url, token, trace).await
    }

    /// `GET /print/printers/{printerId}/jobs/{printJobId}/tasks`: the job's print tasks.
    pub async fn job_tasks(
        &self,
        token: &AccessToken,
        printer: &ResourceId,
        job: &ResourceId,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        let url = self.job_url(printer, job, Some("tasks"));
        self.get("job_tasks", url, token, trace).await
    }

    /// `PATCH /print/taskDefinitions/{taskDefinitionId}/tasks/{taskId}` with a new
    /// `status` (`state` and `description`).
    pub async fn update_task(
        &self,
        token: &AccessToken,
        task: &PrintTask,
        state: &str,
        description: &str,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        let body = TaskUpdate {
            status: TaskStatus { state, description },
        };
        let url = self.task_url(task);
        self.send("update_task", Method::PATCH, url, token, Some(&body), trace)
            .await
    }

    /// `GET /print/taskDefinitions/{taskDefinitionId}/tasks/{taskId}`.
    pub async fn get_task(
        &self,
        token: &AccessToken,
        task: &PrintTask,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        self.get("get_task", self.task_url(task), token, trace)
            .await
    }

    fn task_url(&self, task: &PrintTask) -> ApiUri {
        let path = [
            "print",
            "taskDefinitions",
            task.definition_id.as_str(),
            "tasks",
            task.task_id.as_str(),
        ];
        self.api_url(&path, None)
    }

    fn job_url(&self, printer: &ResourceId, job: &ResourceId, action: Option<&str>) -> ApiUri {
        let (printer, job) = (printer.as_str(), job.as_str());
        match action {
            Some(action) => {
                self.api_url(&["print", "printers", printer, "jobs", job, action], None)
            }
            None => self.api_url(&["print", "printers", printer, "jobs", job], None),
        }
    }

    /// `graph.base_url` with `segments` appended and an optional query. Every segment is a
    /// fixed name or a [`ResourceId`], neither of which needs encoding.
    fn api_url(&self, segments: &[&str], query: Option<&str>) -> ApiUri {
        self.api.as_ref().and_then(|api| api.uri(segments, query))
    }

    /// A `GET` of `url` with the bearer token.
    async fn get(
        &self,
        operation: &'static str,
        url: ApiUri,
        token: &AccessToken,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        self.send(operation, Method::GET, url, token, None::<&()>, trace)
            .await
    }

    /// Sends one request as a child span of `trace`, with a fresh `client-request-id`, the
    /// bearer token and, when there is one, `body` as JSON.
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: ApiUri,
        token: &AccessToken,
        body: Option<&impl Serialize>,
        trace: &TraceContext,
    ) -> Result<GraphReply, TransportError> {
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let sent = match request(method, url, token, body, &client_request_id, trace) {
            Ok(request) => self.http.exchange(request).await,
            Err(error) => Err(error),
        };
        let reply = match sent {
            Ok(reply) => reply,
            Err(error) => {
                metrics::graph_request(operation, None, started.elapsed());
                return Err(error);
            }
        };
        let status = reply.status;
        let request_id = header(&reply.headers, &REQUEST_ID).map(str::to_owned);
        let retry_after = header(&reply.headers, &RETRY_AFTER)
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body = reply.body;
        metrics::graph_request(operation, Some(status), started.elapsed());
        let error = (status >= 400)
            .then(|| serde_json::from_slice::<ErrorEnvelope>(&body).ok())
            .flatten()
            .map(|envelope| GraphError {
                code: remote::cut(envelope.error.code, remote::MAX_CODE_BYTES),
                message: remote::message(envelope.error.message),
            });
        let reply = GraphReply {
            status,
            request_id,
            retry_after,
            error,
            body,
        };
        tracing::debug!(
            status,
            request_id = reply.request_id.as_deref().unwrap_or(""),
            client_request_id,
            "graph replied"
        );
        Ok(reply)
    }
}

/// A request's URI, or `None` when `graph.base_url` could not be one.
type ApiUri = Option<Uri>;

/// `graph.base_url` taken apart once: what every request's URI starts with.
#[derive(Debug, Clone)]
struct ApiBase {
    scheme: Scheme,
    authority: Authority,
    /// The base path without its trailing `/` (`/v1.0`, or empty), percent-encoded.
    path: String,
}

impl ApiBase {
    /// The parts of `base`; `None` when they cannot make a URI (a base URL without a host).
    fn new(base: &Url) -> Option<Self> {
        let scheme = Scheme::try_from(base.scheme()).ok()?;
        let host_and_port = &base[url::Position::BeforeHost..url::Position::AfterPort];
        let authority = Authority::try_from(host_and_port).ok()?;
        Some(Self {
            scheme,
            authority,
            path: base.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The base path, `/` and each segment, then `?` and `query`: written as text and
    /// checked once by `PathAndQuery`. Segments and queries are the client's own names and
    /// checked ids, which need no encoding.
    fn uri(&self, segments: &[&str], query: Option<&str>) -> Option<Uri> {
        let length = segments
            .iter()
            .map(|segment| segment.len() + 1)
            .sum::<usize>();
        let mut text =
            String::with_capacity(self.path.len() + length + query.map_or(0, |q| q.len() + 1));
        text.push_str(&self.path);
        for segment in segments {
            text.push('/');
            text.push_str(segment);
        }
        if let Some(query) = query {
            text.push('?');
            text.push_str(query);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(text)).ok()?);
        Uri::from_parts(parts).ok()
    }
}

/// The HTTP request of one Graph call. Its URI was built from checked parts
/// ([`GraphClient::api_url`]); a URI that could not be built, or a token that cannot be a
/// header value (the token endpoint sent something odd), is an error.
fn request(
    method: Method,
    url: ApiUri,
    token: &AccessToken,
    body: Option<&impl Serialize>,
    client_request_id: &str,
    trace: &TraceContext,
) -> Result<Request<Full<Bytes>>, TransportError> {
    let unusable = |what: &str| TransportError::Broken(format!("{what} cannot be sent").into());
    let uri = url.ok_or_else(|| unusable("the request URL (from graph.base_url)"))?;
    let bearer = token
        .authorization()
        .ok_or_else(|| unusable("the access token"))?
        .clone();
    // A struct of strings always serializes.
    let json = body.map(|body| Bytes::from(serde_json::to_vec(body).unwrap_or_default()));
    let with_body = json.is_some();
    let mut request = Request::new(Full::new(json.unwrap_or_default()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers.insert(AUTHORIZATION, bearer);
    if let Ok(id) = HeaderValue::from_str(client_request_id) {
        headers.insert(CLIENT_REQUEST_ID, id);
    }
    if let Ok(traceparent) = HeaderValue::from_str(&trace.child().to_string()) {
        headers.insert(TRACEPARENT, traceparent);
    }
    if with_body {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    } else {
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    Ok(request)
}

/// The `User-Agent` of every Graph request, as Microsoft asks callers to name themselves.
const USER_AGENT_VALUE: &str = concat!("print-abort-worker/", env!("CARGO_PKG_VERSION"));

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(base: &str, segments: &[&str], query: Option<&str>) -> String {
        let base = Url::parse(base).expect("a test URL");
        let api = ApiBase::new(&base).expect("a usable base");
        api.uri(segments, query).expect("a URI").to_string()
    }

    #[test]
    fn a_request_uri_is_the_base_path_its_segments_and_its_query() {
        let job = ["print", "printers", "p-1", "jobs", "j_2", "abort"];
        assert_eq!(
            uri("https://graph.microsoft.com/v1.0", &job, None),
            "https://graph.microsoft.com/v1.0/print/printers/p-1/jobs/j_2/abort"
        );
        assert_eq!(
            uri(
                "https://graph.microsoft.com/v1.0/",
                &["print", "taskDefinitions"],
                Some("$select=id,displayName")
            ),
            "https://graph.microsoft.com/v1.0/print/taskDefinitions?$select=id,displayName"
        );
        assert_eq!(
            uri(
                "http://127.0.0.1:8080",
                &["print", "printers", "p"],
                Some("$select=id")
            ),
            "http://127.0.0.1:8080/print/printers/p?$select=id"
        );
    }

    #[test]
    fn the_base_urls_own_query_fragment_and_credentials_are_not_sent() {
        assert_eq!(
            uri(
                "https://user:secret@graph.example/beta/?x=1#top",
                &["print"],
                None
            ),
            "https://graph.example/beta/print"
        );
    }
}
