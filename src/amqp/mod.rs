//! The RabbitMQ side: connections, the declared topology, publishing with confirms, and the
//! operator's view of the dead-letter queue.

pub mod dead_letters;
pub mod headers;
pub mod publisher;
pub mod topology;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPUri, SASLMechanism};
use lapin::{Connect, Connection, ConnectionProperties};

use std::sync::LazyLock;

use crate::config::{AmqpSettings, BrokerUrl, TlsSettings};

/// The largest AMQP frame the worker asks for unless `amqp.url` sets `frame_max`. lapin
/// keeps send and receive buffers of a fixed number of frames each, so RabbitMQ's default of
/// 128 KiB costs about 8 MiB of memory per connection; commands and events are at most
/// 64 KiB and usually under 1 KiB, and a larger one simply spans several frames.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// Opens a connection to the first broker node that answers, named after the worker so
/// that operators can tell each replica apart in the management UI.
pub async fn connect(settings: &AmqpSettings, role: &str) -> Result<Connection, lapin::Error> {
    connect_from(settings, role, 0)
        .await
        .map(|(connection, _, _)| connection)
}

/// Tries the nodes of `amqp.url` in this process's order, from the `start`th on (a worker
/// that lost its node starts after it), and returns the connection, the position in that
/// order of the node that answered, and the node.
pub async fn connect_from<'a>(
    settings: &'a AmqpSettings,
    role: &str,
    start: usize,
) -> Result<(Connection, usize, &'a BrokerUrl), lapin::Error> {
    let nodes = settings.url.nodes();
    let mut position = start;
    loop {
        let node = &nodes[node_index(nodes.len(), position)];
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name(role).into());
        match connect_to(node, &settings.tls, properties).await {
            Ok(connection) => return Ok((connection, position, node)),
            Err(error) if position + 1 - start < nodes.len() => {
                tracing::warn!(
                    node = %node.host_port(),
                    %error,
                    "the broker node did not answer; trying the next"
                );
            }
            Err(error) => return Err(error),
        }
        position += 1;
    }
}

/// Where the `position`th try goes among `count` nodes: every process starts at a node of
/// its own (drawn once), so that replicas spread over a cluster, then goes round in order.
fn node_index(count: usize, position: usize) -> usize {
    static FIRST: LazyLock<usize> = LazyLock::new(|| rand::random::<u32>() as usize);
    (*FIRST).wrapping_add(position) % count.max(1)
}

/// `print-abort-worker/{version} {role} on {host}`.
fn connection_name(role: &str) -> String {
    static HOST: LazyLock<String> = LazyLock::new(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|host| host.trim().to_owned())
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| "an unknown host".to_owned())
    });
    format!(
        "print-abort-worker/{} {role} on {}",
        env!("CARGO_PKG_VERSION"),
        *HOST
    )
}

/// One connection to `node`; an `amqps://` one with the files of `amqp.tls`, read afresh so
/// that a rotated certificate is used from the next connect on.
async fn connect_to(
    node: &BrokerUrl,
    tls: &TlsSettings,
    properties: ConnectionProperties,
) -> Result<Connection, lapin::Error> {
    let config = if node.is_tls() && tls.is_configured() {
        tls.load()
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?
    } else {
        OwnedTLSConfig::default()
    };
    let uri = connection_uri(node, tls.client_certificate_file().is_some());
    let connected = uri
        .connect_with_config(properties, config, lapin::runtime::default_runtime()?)
        .await;
    connected.map_err(|error| explain_tls(node, error))
}

/// `node`, asking for [`DEFAULT_FRAME_MAX`] unless its URL sets `frame_max` itself, and
/// logging in with the client certificate (`EXTERNAL`) when there is one and the URL gives
/// no password and no `auth_mechanism` of its own.
fn connection_uri(node: &BrokerUrl, client_certificate: bool) -> AMQPUri {
    let mut uri = node.uri().clone();
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    if client_certificate && !node.has_password() && node.is_tls() {
        uri.query
            .auth_mechanism
            .get_or_insert(SASLMechanism::External);
    }
    uri
}

/// A failed TLS handshake said as such, with the node and the setting to look at: lapin
/// reports it as an I/O error around rustls's own, such as `UnknownIssuer`.
fn explain_tls(node: &BrokerUrl, error: lapin::Error) -> lapin::Error {
    let lapin::ErrorKind::IOError(io) = error.kind() else {
        return error;
    };
    let Some(tls) = rustls_error(io) else {
        return error;
    };
    let host = &node.uri().authority.host;
    let problem = match tls {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
                "the broker's certificate is not trusted: no CA in amqp.tls.ca_file or the \
                 system's roots signed it"
                    .to_owned()
            }
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => format!(
                "the broker's certificate is not valid for {host}, the host in amqp.url; \
                 connect by a name the certificate holds"
            ),
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                "the broker's certificate has expired".to_owned()
            }
            other => format!("the broker's certificate cannot be used: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "the broker ended the handshake ({alert:?}); if it asks for a client \
             certificate, check amqp.tls.client_certificate_file"
        ),
        other => other.to_string(),
    };
    lapin::Error::from(std::io::Error::new(
        io.kind(),
        format!("TLS to {} failed: {problem}", node.host_port()),
    ))
}

/// The rustls error inside `error`, however deep lapin and its TLS connector wrapped it.
fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    let mut inner: &(dyn std::error::Error + 'static) = error.get_ref()?;
    loop {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner = match inner.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref()?,
            None => inner.source()?,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_frame_is_asked_for_unless_the_url_sets_one() {
        let frame_max = |url: &str| {
            let node: BrokerUrl = url.parse().expect("a broker URL");
            connection_uri(&node, false).query.frame_max
        };
        assert_eq!(
            frame_max("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Some(DEFAULT_FRAME_MAX)
        );
        assert_eq!(
            frame_max("amqp://127.0.0.1:5672/%2f?heartbeat=10&frame_max=131072"),
            Some(131_072)
        );
    }

    #[test]
    fn a_client_certificate_logs_in_with_external_only_where_the_url_gives_no_password() {
        let mechanism = |url: &str, certificate: bool| {
            let node: BrokerUrl = url.parse().expect("a broker URL");
            connection_uri(&node, certificate).query.auth_mechanism
        };
        let external = Some(SASLMechanism::External);
        assert_eq!(mechanism("amqps://broker:5671/%2f", true), external);
        assert_eq!(mechanism("amqps://worker@broker:5671/%2f", true), external);
        assert_eq!(mechanism("amqps://broker:5671/%2f", false), None);
        assert_eq!(mechanism("amqps://u:p@broker:5671/%2f", true), None);
        assert_eq!(
            mechanism("amqps://broker:5671/%2f?auth_mechanism=plain", true),
            Some(SASLMechanism::Plain)
        );
    }

    #[test]
    fn every_node_is_tried_once_from_wherever_the_process_starts() {
        for count in 1..5 {
            for start in 0..count {
                let mut seen: Vec<usize> = (start..start + count)
                    .map(|p| node_index(count, p))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..count).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn the_connection_name_says_the_worker_its_version_and_host() {
        let name = connection_name("worker");
        assert!(
            name.starts_with(&format!(
                "print-abort-worker/{} worker on ",
                env!("CARGO_PKG_VERSION")
            )),
            "{name}"
        );
    }
}
