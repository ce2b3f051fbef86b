//! The RabbitMQ side: connections, the declared topology, publishing with confirms, and the
//! operator's view of the dead-letter queue.

pub mod dead_letters;
pub mod headers;
pub mod publisher;
pub mod topology;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpSettings;

/// The largest AMQP frame the worker asks for unless `amqp.url` sets `frame_max`. lapin
/// keeps send and receive buffers of a fixed number of frames each, so RabbitMQ's default of
/// 128 KiB costs about 8 MiB of memory per connection; commands and events are at most
/// 64 KiB and usually under 1 KiB, and a larger one simply spans several frames.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// Opens a connection named after the worker, so operators can tell it apart in the
/// management UI.
pub async fn connect(settings: &AmqpSettings, role: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("print-abort-worker {role}").into());
    Connection::connect_uri(connection_uri(settings), properties).await
}

/// `amqp.url`, asking for [`DEFAULT_FRAME_MAX`] unless the URL sets `frame_max` itself.
fn connection_uri(settings: &AmqpSettings) -> AMQPUri {
    let mut uri = settings.url.uri().clone();
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_frame_is_asked_for_unless_the_url_sets_one() {
        let frame_max = |url: &str| {
            let settings = AmqpSettings {
                url: url.parse().expect("a broker URL"),
                ..AmqpSettings::default()
            };
            connection_uri(&settings).query.frame_max
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
}
