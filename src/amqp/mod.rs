//! The RabbitMQ side: connections, the declared topology, publishing with confirms, and the
//! operator's view of the dead-letter queue.

pub mod dead_letters;
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

/// `amqp.url` without its password, for messages an operator reads.
pub fn redacted_url(settings: &AmqpSettings) -> String {
    match url::Url::parse(settings.url.expose_secret()) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "amqp.url (not shown: it does not parse as a URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn the_password_never_shows() {
        let mut settings = AmqpSettings {
            url: SecretString::from("amqps://worker:pa55word@mq.example.com:5671/prod"),
            ..AmqpSettings::default()
        };
        let shown = redacted_url(&settings);
        assert_eq!(shown, "amqps://worker:***@mq.example.com:5671/prod");
        settings.url = SecretString::from("amqp://[not a url pa55word");
        assert!(!redacted_url(&settings).contains("pa55word"));
    }
}
