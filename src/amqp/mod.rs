//! The RabbitMQ side: connections, the declared topology, publishing with confirms, and the
//! operator's view of the dead-letter queue.

pub mod dead_letters;
pub mod headers;
pub mod publisher;
pub mod topology;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use std::sync::LazyLock;

use crate::config::{AmqpSettings, BrokerUrl};

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
        match Connection::connect_uri(connection_uri(node), properties).await {
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

/// `node`, asking for [`DEFAULT_FRAME_MAX`] unless its URL sets `frame_max` itself.
fn connection_uri(node: &BrokerUrl) -> AMQPUri {
    let mut uri = node.uri().clone();
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_frame_is_asked_for_unless_the_url_sets_one() {
        let frame_max = |url: &str| {
            let node: BrokerUrl = url.parse().expect("a broker URL");
            connection_uri(&node).query.frame_max
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
