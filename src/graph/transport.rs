//! Graph's HTTP transport: hyper-util's pooled client over rustls (HTTP/2 where Graph offers
//! it, HTTP/1.1 otherwise), with nothing stacked on top.
//!
//! reqwest, which the token endpoint still uses, wraps every request in a redirect layer and
//! a retry layer even when both are off, and its redirect policy parses the request's URL
//! again: a third of the instructions of a Graph exchange (docs/BENCHMARKS.md). The worker
//! follows no redirect (one could only send the bearer token elsewhere) and retries by
//! itself, so this transport sends the request it is given and reads a bounded reply.
//!
//! What reqwest did that the worker relies on is kept: the connect and request time limits
//! (`graph.connect_timeout`, `graph.timeout`), the system's roots (rustls's platform
//! verifier), and an HTTPS proxy from `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY` (a CONNECT
//! tunnel). Plain `http://` — only ever to a loopback host — goes direct.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderMap, Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::GraphSettings;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A request that got no reply. Every kind is transient: the handler retries it.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection to Graph could be opened (refused, unreachable, TLS handshake).
    #[error("could not connect to Graph: {}", crate::auth::error_chain(.0.as_ref()))]
    Connect(#[source] BoxError),
    /// Graph did not answer within `graph.timeout` (or `graph.connect_timeout`).
    #[error("no reply from Graph in time: {0}")]
    Timeout(String),
    /// The connection broke while the request or the reply was under way.
    #[error("the exchange with Graph broke off: {}", crate::auth::error_chain(.0.as_ref()))]
    Broken(#[source] BoxError),
}

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the system's TLS roots could not be loaded: {0}")]
pub struct TransportSetupError(#[source] rustls::Error);

/// What came back: the status, the headers and at most [`crate::remote::MAX_REPLY_BYTES`]
/// of the body.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The pooled client, shared by every command in flight.
#[derive(Clone)]
pub struct Transport {
    client: Client<HttpsConnector<Connector>, Full<Bytes>>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The transport `settings` describe, with the proxy settings of the environment.
    pub fn new(settings: &GraphSettings) -> Result<Self, TransportSetupError> {
        Self::with_proxies(settings, Matcher::from_env())
    }

    fn with_proxies(
        settings: &GraphSettings,
        proxies: Matcher,
    ) -> Result<Self, TransportSetupError> {
        let mut direct = HttpConnector::new();
        // The TLS connector above it decides http:// or https://.
        direct.enforce_http(false);
        direct.set_connect_timeout(Some(settings.connect_timeout));
        direct.set_nodelay(true);
        let connector = Connector {
            direct,
            proxies: Arc::new(proxies),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(TransportSetupError)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self {
            client,
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
        })
    }

    /// Sends `request` and reads its reply, all within `graph.timeout`.
    pub async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Reply, TransportError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| self.classify(error))?;
            let (parts, body) = response.into_parts();
            let body = crate::remote::read_body(body)
                .await
                .map_err(|error| TransportError::Broken(error.into()))?;
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(TransportError::Timeout(format!(
                "graph.timeout ({}) passed",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    fn classify(&self, error: hyper_util::client::legacy::Error) -> TransportError {
        if !error.is_connect() {
            return TransportError::Broken(error.into());
        }
        if timed_out(&error) {
            return TransportError::Timeout(format!(
                "graph.connect_timeout ({}) passed",
                humantime::format_duration(self.connect_timeout)
            ));
        }
        TransportError::Connect(error.into())
    }
}

/// Whether an I/O time-out is somewhere in `error`'s chain.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// TCP to the destination, or for an `https://` destination that the environment's proxy
/// settings send through a proxy, a CONNECT tunnel through it.
#[derive(Clone)]
struct Connector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let proxy = (destination.scheme() == Some(&Scheme::HTTPS))
            .then(|| self.proxies.intercept(&destination))
            .flatten();
        let mut direct = self.direct.clone();
        Box::pin(async move {
            match proxy {
                Some(proxy) => {
                    let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                    if let Some(auth) = proxy.basic_auth() {
                        tunnel = tunnel.with_auth(auth.clone());
                    }
                    tunnel.call(destination).await.map_err(Into::into)
                }
                None => direct.call(destination).await.map_err(Into::into),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn settings(timeout: Duration) -> GraphSettings {
        GraphSettings {
            timeout,
            ..GraphSettings::default()
        }
    }

    fn without_proxies(timeout: Duration) -> Transport {
        Transport::with_proxies(&settings(timeout), Matcher::builder().build()).expect("built")
    }

    fn get(uri: &str) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.parse().expect("a URI");
        request
    }

    /// A server that answers every connection's first request head with `reply` and
    /// returns the heads it read.
    async fn answering(reply: &'static str) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address").to_string();
        let heads = tokio::spawn(async move {
            let mut heads = Vec::new();
            while let Ok(Ok((mut stream, _))) =
                tokio::time::timeout(Duration::from_secs(2), listener.accept()).await
            {
                let mut head = vec![0; 4096];
                let read = stream.read(&mut head).await.unwrap_or(0);
                heads.push(String::from_utf8_lossy(&head[..read]).into_owned());
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            heads
        });
        (address, heads)
    }

    #[tokio::test]
    async fn an_https_destination_goes_through_the_environments_proxy_as_a_connect_tunnel() {
        let (proxy, heads) = answering("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        let proxies = Matcher::builder().https(format!("http://{proxy}")).build();
        let transport =
            Transport::with_proxies(&settings(Duration::from_secs(5)), proxies).expect("built");
        let error = transport
            .exchange(get("https://graph.example.test/v1.0/print"))
            .await
            .err()
            .expect("the proxy refuses the tunnel");
        assert!(matches!(error, TransportError::Connect(_)), "{error}");
        let heads = heads.await.expect("the proxy ran");
        assert!(
            heads[0].starts_with("CONNECT graph.example.test:443 HTTP/1.1"),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn plain_http_goes_direct_even_when_a_proxy_is_set() {
        let (proxy, proxied) = answering("HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        let (server, served) =
            answering("HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
        let proxies = Matcher::builder().all(format!("http://{proxy}")).build();
        let transport =
            Transport::with_proxies(&settings(Duration::from_secs(5)), proxies).expect("built");
        let reply = transport
            .exchange(get(&format!("http://{server}/v1.0/print")))
            .await
            .expect("a reply");
        assert_eq!(reply.status, 204);
        assert_eq!(served.await.expect("served").len(), 1);
        assert!(proxied.await.expect("the proxy ran").is_empty());
    }

    #[tokio::test]
    async fn graph_timeout_bounds_the_whole_exchange() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        // Accepts and never answers.
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let transport = without_proxies(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let error = transport
            .exchange(get(&format!("http://{address}/v1.0/print")))
            .await
            .err()
            .expect("no reply");
        assert!(matches!(error, TransportError::Timeout(_)), "{error}");
        assert!(error.to_string().contains("graph.timeout"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let address = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let transport = without_proxies(Duration::from_secs(5));
        let error = transport
            .exchange(get(&format!("http://{address}/v1.0/print")))
            .await
            .err()
            .expect("refused");
        assert!(matches!(error, TransportError::Connect(_)), "{error}");
    }
}
