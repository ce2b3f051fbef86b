//! `amqp.tls`: what an `amqps://` connection trusts and how it proves who the worker is.
//!
//! The files are read at every connect, so that a certificate rotated on disk (a renewed
//! Kubernetes secret, say) is used from the next reconnect on, and once when the settings
//! are read, so that a file that is missing or broken stops the start (exit 2) with the key
//! named instead of failing every connect later. The private key is never shown.

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig, RustlsConnectorConfig};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use serde::Deserialize;
use x509_cert::der::Decode;

/// The files of `amqp.tls`; an empty path counts as not set, so that a deployment template
/// may leave a key empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificates of the CA (or CAs) that signed the broker's certificate, trusted in
    /// addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// One PEM file with the worker's private key and its certificate (and any
    /// intermediates), shown to the broker for mutual TLS.
    pub client_certificate_file: Option<PathBuf>,
}

/// Why a file of `amqp.tls` cannot be used. It names the key and the file, never the
/// file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TlsFileError {
    pub key: &'static str,
    path: String,
    problem: String,
}

impl TlsSettings {
    /// `ca_file`, when set.
    pub fn ca_file(&self) -> Option<&Path> {
        set(&self.ca_file)
    }

    /// `client_certificate_file`, when set.
    pub fn client_certificate_file(&self) -> Option<&Path> {
        set(&self.client_certificate_file)
    }

    /// Whether either file is set.
    pub fn is_configured(&self) -> bool {
        self.ca_file().is_some() || self.client_certificate_file().is_some()
    }

    /// Reads both files and checks them the way the connection will use them: every
    /// certificate parses, the client file has exactly one unencrypted private key that
    /// fits its certificate, and rustls builds a client configuration from them.
    pub fn load(&self) -> Result<OwnedTLSConfig, TlsFileError> {
        let mut roots = RustlsConnectorConfig::new_with_platform_verifier();
        let mut config = OwnedTLSConfig::default();
        if let Some(path) = self.ca_file() {
            let fail = failure("amqp.tls.ca_file", path);
            let text = std::fs::read_to_string(path).map_err(|e| fail(read_problem(&e)))?;
            let blocks = pem::parse_many(&text).map_err(|e| fail(format!("is not PEM: {e}")))?;
            roots.add_parsable_certificates(certificates(&blocks).map_err(&fail)?);
            config.cert_chain = Some(text);
            if self.client_certificate_file().is_none() {
                roots
                    .connector_with_no_client_auth()
                    .map_err(|e| fail(format!("cannot be trusted: {e}")))?;
                return Ok(config);
            }
        }
        let Some(path) = self.client_certificate_file() else {
            return Ok(config);
        };
        let fail = failure("amqp.tls.client_certificate_file", path);
        let bytes = std::fs::read(path).map_err(|e| fail(read_problem(&e)))?;
        let blocks = pem::parse_many(&bytes).map_err(|e| fail(format!("is not PEM: {e}")))?;
        let chain = certificates(&blocks).map_err(&fail)?;
        let key = private_key(&blocks).map_err(&fail)?;
        roots
            .connector_with_single_cert(chain, key)
            .map_err(|e| fail(format!("the key and certificate cannot be used: {e}")))?;
        // tcp-stream takes the certificates and the key from PEM text; the whole file
        // serves as both, each reader picking its own blocks.
        config.identity = Some(OwnedIdentity::PKCS8 {
            pem: bytes.clone(),
            key: bytes,
        });
        Ok(config)
    }
}

fn set(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|path| !path.as_os_str().is_empty())
}

fn failure(key: &'static str, path: &Path) -> impl Fn(String) -> TlsFileError {
    let path = path.display().to_string();
    move |problem| TlsFileError {
        key,
        path: path.clone(),
        problem,
    }
}

fn read_problem(error: &std::io::Error) -> String {
    format!("cannot be read ({error})")
}

/// The certificates among `blocks`, each checked to be X.509; at least one.
fn certificates(blocks: &[pem::Pem]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates: Vec<CertificateDer<'static>> = blocks
        .iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| {
            x509_cert::Certificate::from_der(block.contents())
                .map(|_| CertificateDer::from(block.contents().to_vec()))
                .map_err(|e| format!("holds a certificate that does not parse: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certificates)
}

/// The one private key among `blocks`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), not encrypted.
fn private_key(blocks: &[pem::Pem]) -> Result<PrivateKeyDer<'static>, String> {
    let mut keys = blocks.iter().filter(|b| b.tag().ends_with("PRIVATE KEY"));
    let block = keys
        .next()
        .ok_or("holds no private key (-----BEGIN PRIVATE KEY-----)")?;
    if keys.next().is_some() {
        return Err("holds more than one private key".into());
    }
    let der = block.contents().to_vec();
    Ok(match block.tag() {
        "PRIVATE KEY" => PrivatePkcs8KeyDer::from(der).into(),
        "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(der).into(),
        "EC PRIVATE KEY" => PrivateSec1KeyDer::from(der).into(),
        "ENCRYPTED PRIVATE KEY" => {
            return Err(
                "holds an encrypted private key; the worker needs it unencrypted \
                        (`openssl pkey -in key.pem -out plain.pem` decrypts it)"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "holds a key of a kind the worker cannot use ({other})"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn settings(ca: Option<&Path>, client: Option<&Path>) -> TlsSettings {
        TlsSettings {
            ca_file: ca.map(Path::to_path_buf),
            client_certificate_file: client.map(Path::to_path_buf),
        }
    }

    /// A self-signed certificate and its key, as PEM.
    fn certificate() -> (String, String) {
        let key = KeyPair::generate().expect("a key");
        let certificate = CertificateParams::new(vec!["client".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("a certificate");
        (certificate.pem(), key.serialize_pem())
    }

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("a file");
        path
    }

    fn problem(settings: &TlsSettings) -> TlsFileError {
        settings.load().expect_err("the files are refused")
    }

    #[test]
    fn unset_or_empty_paths_mean_no_tls_files() {
        let empty = TlsSettings {
            ca_file: Some(PathBuf::new()),
            client_certificate_file: Some(PathBuf::new()),
        };
        assert!(!empty.is_configured());
        assert!(!TlsSettings::default().is_configured());
    }

    #[test]
    fn a_ca_file_and_a_client_certificate_file_load_into_lapins_tls_config() {
        let dir = tempfile::tempdir().expect("a folder");
        let (ca, _) = certificate();
        let (cert, key) = certificate();
        let ca = file(&dir, "ca.pem", &ca);
        // The key may come before or after the certificate.
        for (name, text) in [
            ("key-first.pem", format!("{key}{cert}")),
            ("cert-first.pem", format!("{cert}{key}")),
        ] {
            let client = file(&dir, name, &text);
            let config = settings(Some(&ca), Some(&client)).load().expect("usable");
            assert!(config.cert_chain.is_some());
            assert!(matches!(config.identity, Some(OwnedIdentity::PKCS8 { .. })));
        }
    }

    #[test]
    fn missing_or_broken_files_are_refused_naming_the_key_and_the_reason() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key) = certificate();
        let (other_cert, _) = certificate();
        let missing = dir.path().join("missing.pem");
        let not_pem = file(&dir, "not.pem", "hello");
        let key_only = file(&dir, "key.pem", &key);
        let cert_only = file(&dir, "cert.pem", &cert);
        let mismatch = file(&dir, "mismatch.pem", &format!("{key}{other_cert}"));
        let two_keys = file(&dir, "two.pem", &format!("{key}{key}{cert}"));
        let encrypted = file(
            &dir,
            "encrypted.pem",
            &format!(
                "{}{cert}",
                pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", vec![1, 2, 3]))
            ),
        );
        let garbled = file(
            &dir,
            "garbled.pem",
            &pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3])),
        );
        let cases = [
            (
                settings(Some(&missing), None),
                "amqp.tls.ca_file",
                "cannot be read",
            ),
            (
                settings(Some(&not_pem), None),
                "amqp.tls.ca_file",
                "no PEM certificate",
            ),
            (
                settings(Some(&key_only), None),
                "amqp.tls.ca_file",
                "no PEM certificate",
            ),
            (
                settings(Some(&garbled), None),
                "amqp.tls.ca_file",
                "does not parse",
            ),
            (
                settings(None, Some(&missing)),
                "amqp.tls.client_certificate_file",
                "cannot be read",
            ),
            (
                settings(None, Some(&cert_only)),
                "amqp.tls.client_certificate_file",
                "no private key",
            ),
            (
                settings(None, Some(&key_only)),
                "amqp.tls.client_certificate_file",
                "no PEM certificate",
            ),
            (
                settings(None, Some(&two_keys)),
                "amqp.tls.client_certificate_file",
                "more than one private key",
            ),
            (
                settings(None, Some(&encrypted)),
                "amqp.tls.client_certificate_file",
                "encrypted",
            ),
            (
                settings(None, Some(&mismatch)),
                "amqp.tls.client_certificate_file",
                "cannot be used",
            ),
        ];
        for (settings, key, reason) in cases {
            let error = problem(&settings);
            assert_eq!(error.key, key, "{error}");
            assert!(
                error.to_string().contains(reason),
                "{error} (wanted {reason})"
            );
        }
    }

    #[test]
    fn the_private_key_never_shows_in_an_error() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key) = certificate();
        let (other_cert, _) = certificate();
        let mismatch = file(&dir, "mismatch.pem", &format!("{key}{other_cert}"));
        let error = problem(&settings(None, Some(&mismatch))).to_string();
        let key_body: String = key.lines().nth(1).expect("a PEM body line").to_owned();
        assert!(!error.contains(&key_body), "{error}");
        assert!(!error.contains(&cert[30..60]), "{error}");
    }
}
