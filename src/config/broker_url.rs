//! `amqp.url`: one broker URL or the nodes of a cluster, parsed once, when the settings are
//! read, and never shown with a password.

use std::fmt;
use std::str::FromStr;

use lapin::uri::AMQPUri;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// A broker URL (`amqp://` or `amqps://`), parsed into what lapin connects with. `Debug`
/// and [`BrokerUrl::redacted`] show it with its password replaced by `***`.
#[derive(Clone)]
pub struct BrokerUrl {
    uri: AMQPUri,
    text: SecretString,
    redacted: String,
    /// Whether the URL gives a password (lapin reads a URL without one as `guest`'s).
    has_password: bool,
}

/// Why a text is not a broker URL. It never quotes the text, which may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBrokerUrl(&'static str);

impl BrokerUrl {
    /// The parsed URL, as lapin connects with it.
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The URL with its password replaced by `***`, for messages an operator reads.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Whether the URL gives a password; one that does not logs in with its client
    /// certificate (`EXTERNAL`) when `amqp.tls.client_certificate_file` is set.
    pub fn has_password(&self) -> bool {
        self.has_password
    }

    /// An `amqps://` URL.
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == lapin::uri::AMQPScheme::AMQPS
    }

    /// `host:port`, which names the node in `/readyz`, the metrics and the log.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }
}

impl FromStr for BrokerUrl {
    type Err = InvalidBrokerUrl;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if !(text.starts_with("amqp://") || text.starts_with("amqps://")) {
            return Err(InvalidBrokerUrl("must start with amqp:// or amqps://"));
        }
        let uri = text.parse::<AMQPUri>().map_err(|_| {
            InvalidBrokerUrl("is not a broker URL like amqp://user:password@host:5672/vhost")
        })?;
        let mut shown = url::Url::parse(text).map_err(|_| {
            InvalidBrokerUrl("is not a broker URL like amqp://user:password@host:5672/vhost")
        })?;
        let has_password = shown.password().is_some();
        if has_password {
            let _ = shown.set_password(Some("***"));
        }
        Ok(Self {
            uri,
            text: SecretString::from(text),
            redacted: shown.to_string(),
            has_password,
        })
    }
}

impl ExposeSecret<str> for BrokerUrl {
    /// The URL as configured, password included: only for handing it on to a child process.
    fn expose_secret(&self) -> &str {
        self.text.expose_secret()
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("BrokerUrl")
            .field(&self.redacted)
            .finish()
    }
}

/// `amqp.url`: one broker, or the nodes of a cluster — a TOML array, or comma-separated (as
/// an environment variable gives it). Never empty.
#[derive(Clone)]
pub struct BrokerNodes {
    nodes: Vec<BrokerUrl>,
    text: SecretString,
    redacted: String,
}

impl BrokerNodes {
    fn new(nodes: Vec<BrokerUrl>) -> Result<Self, InvalidBrokerUrl> {
        if nodes.is_empty() {
            return Err(InvalidBrokerUrl("must name at least one broker"));
        }
        let text = nodes
            .iter()
            .map(|node| node.expose_secret())
            .collect::<Vec<_>>()
            .join(",");
        let redacted = nodes
            .iter()
            .map(BrokerUrl::redacted)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            nodes,
            text: SecretString::from(text),
            redacted,
        })
    }

    pub fn nodes(&self) -> &[BrokerUrl] {
        &self.nodes
    }

    /// The first node as configured (there is always one).
    pub fn first(&self) -> &BrokerUrl {
        &self.nodes[0]
    }

    /// Every node, passwords replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl FromStr for BrokerNodes {
    type Err = InvalidBrokerUrl;

    /// One URL, or several separated by commas.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let nodes = text
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<BrokerUrl>, _>>()?;
        Self::new(nodes)
    }
}

impl ExposeSecret<str> for BrokerNodes {
    /// The nodes as configured, comma-separated, passwords included: only for handing them
    /// on to a child process.
    fn expose_secret(&self) -> &str {
        self.text.expose_secret()
    }
}

impl fmt::Debug for BrokerNodes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("BrokerNodes")
            .field(&self.redacted)
            .finish()
    }
}

impl<'de> Deserialize<'de> for BrokerNodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(SecretString),
            Many(Vec<SecretString>),
        }
        let parsed = match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(text) => text.expose_secret().parse(),
            OneOrMany::Many(texts) => texts
                .iter()
                .map(|text| text.expose_secret().parse())
                .collect::<Result<Vec<BrokerUrl>, _>>()
                .and_then(BrokerNodes::new),
        };
        parsed.map_err(|error| serde::de::Error::custom(format!("amqp.url {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let url: BrokerUrl = "amqps://worker:pa55word@mq.example.com:5671/prod"
            .parse()
            .expect("a broker URL");
        assert_eq!(
            url.redacted(),
            "amqps://worker:***@mq.example.com:5671/prod"
        );
        assert!(!format!("{url:?}").contains("pa55word"));
        assert_eq!(url.uri().authority.host, "mq.example.com");
        assert_eq!(url.uri().authority.port, 5671);
    }

    #[test]
    fn a_cluster_is_several_nodes_comma_separated() {
        let nodes: BrokerNodes = "amqp://a:pa55word@one:5672/%2f, amqps://two:5671/prod"
            .parse()
            .expect("two nodes");
        assert_eq!(nodes.nodes().len(), 2);
        assert_eq!(nodes.nodes()[1].uri().authority.host, "two");
        assert_eq!(
            nodes.redacted(),
            "amqp://a:***@one:5672/%2f, amqps://two:5671/prod"
        );
        assert!(!format!("{nodes:?}").contains("pa55word"));
        for bad in ["", "amqp://one:5672/%2f,", "amqp://one/,http://two/"] {
            assert!(bad.parse::<BrokerNodes>().is_err(), "{bad}");
        }
    }

    #[test]
    fn what_is_not_a_broker_url_is_refused_without_quoting_it() {
        for text in [
            "http://guest:pa55word@host/",
            "amqp://[not a url pa55word",
            "",
        ] {
            let error = text.parse::<BrokerUrl>().expect_err(text);
            assert!(!error.to_string().contains("pa55word"), "{error}");
        }
    }
}
