//! The RabbitMQ side: connections, the declared topology, and publishing with confirms.

pub mod headers;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;

use crate::config::AmqpSettings;

/// Opens a connection named after the worker, so operators can tell it apart in the
/// management UI.
pub async fn connect(settings: &AmqpSettings, role: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("print-abort-worker {role}").into());
    Connection::connect(settings.url.expose_secret(), properties).await
}
