//! The app's credential: what proves its identity in a token request.
//!
//! Exactly one kind is configured. A secret travels as `client_secret`; a certificate
//! (through a signed [assertion](super::assertion)) or a federated token from another issuer
//! travels as a JWT `client_assertion`. Every kind kept in a file is read again for every new
//! token, so a rotated secret, a renewed certificate or the kubelet's refreshed
//! service-account token is picked up without a restart.
//!
//! [`ClientCredential::from_settings`] also runs the credential once at start-up, through the
//! same code as every later token request, so that a missing file or a broken certificate is
//! a configuration error (exit code 2) rather than a worker that starts and then cannot work.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::assertion::SigningCertificate;
use super::{AuthError, CredentialUnusable, token_endpoint};
use crate::config::{ConfigError, Settings};

/// The `client_assertion_type` of both assertion kinds (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Where workload-identity tooling (the AKS webhook, the Azure SDKs) points to the projected
/// service-account token. Only mentioned in messages: the worker never reads it implicitly.
const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";

/// The configuration keys of the credential kinds, in the order messages list them.
const CREDENTIAL_KEYS: &str = "auth.client_secret, auth.client_secret_file, \
                               auth.client_certificate_file or auth.federated_token_file";

/// How the app proves who it is; built from exactly one `auth` key.
#[derive(Debug, Clone)]
pub enum ClientCredential {
    /// `auth.client_secret`.
    Secret(SecretString),
    /// `auth.client_secret_file`: a file holding the secret.
    SecretFile(PathBuf),
    /// `auth.client_certificate_file`: one PEM file with the private key and the certificate;
    /// every token request carries a freshly signed assertion.
    CertificateFile(PathBuf),
    /// `auth.federated_token_file`: a token from an issuer the app registration trusts through
    /// a federated identity credential (workload identity), sent as the assertion itself.
    FederatedTokenFile(PathBuf),
}

/// What one token request carries to prove the app's identity.
#[derive(Debug)]
pub enum ClientProof {
    Secret(SecretString),
    Assertion(SecretString),
}

impl ClientProof {
    /// The form fields of the token request that carry the proof.
    pub fn form_fields(&self) -> Vec<(&'static str, &str)> {
        match self {
            Self::Secret(secret) => vec![("client_secret", secret.expose_secret())],
            Self::Assertion(assertion) => vec![
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion.expose_secret()),
            ],
        }
    }
}

/// Why a credential could not be read or used. The caller adds the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot be read: {0}")]
    Read(#[source] std::io::Error),
    #[error("is empty")]
    Empty,
    #[error("is not valid PEM: {0}")]
    Pem(String),
    #[error("holds no private key (expected a PRIVATE KEY or RSA PRIVATE KEY block)")]
    NoKey,
    #[error("holds more than one private key; keep only the key of the certificate")]
    ManyKeys,
    #[error("holds an encrypted private key; store it unencrypted and protect the file instead")]
    EncryptedKey,
    #[error("holds {0} private key, but certificate credentials need an RSA key")]
    NotRsa(&'static str),
    #[error("holds a {0} block, which is not a supported private key; use PKCS#8 or PKCS#1 RSA")]
    UnsupportedKey(String),
    #[error("holds a private key that cannot be read as an RSA key: {0}")]
    UnreadableKey(String),
    #[error("holds no certificate (expected a CERTIFICATE block next to the key)")]
    NoCertificate,
    #[error("holds a CERTIFICATE block that is not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("holds a private key that belongs to none of its certificates")]
    KeyMismatch,
    #[error("holds a private key that cannot sign: {0}")]
    Signing(String),
}

impl ClientCredential {
    /// The one credential that `settings` configure, tried once so that a broken one stops
    /// the start. An empty value counts as not set, so a deployment template may leave the
    /// keys it does not use empty.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let auth = &settings.auth;
        let file = |path: &Option<PathBuf>| {
            path.as_ref()
                .filter(|path| !path.as_os_str().is_empty())
                .cloned()
        };
        let configured: Vec<Self> = [
            auth.client_secret
                .as_ref()
                .filter(|secret| !secret.expose_secret().is_empty())
                .cloned()
                .map(Self::Secret),
            file(&auth.client_secret_file).map(Self::SecretFile),
            file(&auth.client_certificate_file).map(Self::CertificateFile),
            file(&auth.federated_token_file).map(Self::FederatedTokenFile),
        ]
        .into_iter()
        .flatten()
        .collect();
        let credential = match configured.as_slice() {
            [] => return Err(no_credential(std::env::var_os(AZURE_FEDERATED_TOKEN_FILE))),
            [one] => one.clone(),
            [first, ..] => {
                let keys: Vec<&str> = configured.iter().map(Self::key).collect();
                return Err(ConfigError::invalid(
                    first.key(),
                    format!("{} are set; set exactly one credential", keys.join(" and ")),
                ));
            }
        };
        let endpoint = token_endpoint(&settings.authority(), &auth.tenant_id).ok_or_else(|| {
            ConfigError::invalid("auth.authority", "cannot hold a token endpoint path")
        })?;
        credential
            .prove(&auth.client_id, &endpoint)
            .map_err(|error| ConfigError::invalid(credential.key(), credential.locate(&error)))?;
        Ok(credential)
    }

    /// The configuration key this credential came from.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Secret(_) => "auth.client_secret",
            Self::SecretFile(_) => "auth.client_secret_file",
            Self::CertificateFile(_) => "auth.client_certificate_file",
            Self::FederatedTokenFile(_) => "auth.federated_token_file",
        }
    }

    /// The proof for one token request to `token_endpoint`, read afresh. Runs on the
    /// blocking pool because it reads a file and may sign.
    pub async fn proof(
        &self,
        client_id: &str,
        token_endpoint: &Url,
    ) -> Result<ClientProof, AuthError> {
        let credential = self.clone();
        let client_id = client_id.to_owned();
        let endpoint = token_endpoint.clone();
        tokio::task::spawn_blocking(move || {
            credential
                .prove(&client_id, &endpoint)
                .map_err(|source| CredentialUnusable::Failed {
                    key: credential.key(),
                    location: credential.locate(&source),
                    source: Arc::new(source),
                })
        })
        .await
        .map_err(|error| CredentialUnusable::Interrupted(Arc::new(error)))?
        .map_err(AuthError::from)
    }

    fn prove(&self, client_id: &str, token_endpoint: &Url) -> Result<ClientProof, CredentialError> {
        match self {
            Self::Secret(secret) => Ok(ClientProof::Secret(secret.clone())),
            Self::SecretFile(path) => read_trimmed(path).map(ClientProof::Secret),
            Self::FederatedTokenFile(path) => read_trimmed(path).map(ClientProof::Assertion),
            Self::CertificateFile(path) => {
                let text = std::fs::read(path).map_err(CredentialError::Read)?;
                SigningCertificate::from_pem(&text)?
                    .assertion(client_id, token_endpoint.as_str())
                    .map(ClientProof::Assertion)
            }
        }
    }

    /// `error` with the file it concerns; the callers add the key.
    fn locate(&self, error: &CredentialError) -> String {
        match self {
            Self::Secret(_) => error.to_string(),
            Self::SecretFile(path)
            | Self::CertificateFile(path)
            | Self::FederatedTokenFile(path) => {
                format!("{}: {error}", path.display())
            }
        }
    }
}

/// A file's content without surrounding whitespace: editors and `echo` add a newline that
/// is not part of the secret or token.
fn read_trimmed(path: &Path) -> Result<SecretString, CredentialError> {
    let text = SecretString::from(std::fs::read_to_string(path).map_err(CredentialError::Read)?);
    let trimmed = text.expose_secret().trim();
    if trimmed.is_empty() {
        return Err(CredentialError::Empty);
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// The error for a configuration without credential. Workload identity tooling sets
/// `AZURE_FEDERATED_TOKEN_FILE`; the worker does not pick it up on its own (a credential
/// should be chosen, not found), but says how to use it.
fn no_credential(azure_federated_token_file: Option<OsString>) -> ConfigError {
    let mut problem = format!("no credential is configured; set exactly one of {CREDENTIAL_KEYS}");
    if let Some(path) = azure_federated_token_file.filter(|path| !path.is_empty()) {
        problem.push_str(&format!(
            " ({AZURE_FEDERATED_TOKEN_FILE} is set to {}, but is used only when \
             auth.federated_token_file names that file, e.g. through \
             PRINT_ABORT__AUTH__FEDERATED_TOKEN_FILE)",
            Path::new(&path).display()
        ));
    }
    ConfigError::invalid("auth", problem)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::auth::assertion::tests::TestIdentity;

    fn settings() -> Settings {
        let mut settings = Settings::default();
        settings.auth.tenant_id = "tenant-1".into();
        settings.auth.client_id = "client-1".into();
        settings
    }

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    fn endpoint() -> Url {
        Url::parse("https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token").expect("url")
    }

    #[test]
    fn no_credential_is_an_error_naming_every_key() {
        let error = ClientCredential::from_settings(&settings()).expect_err("none");
        let text = error.to_string();
        for key in [
            "auth.client_secret",
            "auth.client_secret_file",
            "auth.client_certificate_file",
            "auth.federated_token_file",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }

    #[test]
    fn the_azure_federated_token_file_variable_is_only_mentioned_never_used() {
        let error = no_credential(Some(
            "/var/run/secrets/azure/tokens/azure-identity-token".into(),
        ));
        let text = error.to_string();
        assert!(text.contains("no credential is configured"), "{text}");
        assert!(text.contains("AZURE_FEDERATED_TOKEN_FILE is set to /var/run/secrets/azure/tokens/azure-identity-token"), "{text}");
        assert!(
            text.contains("PRINT_ABORT__AUTH__FEDERATED_TOKEN_FILE"),
            "{text}"
        );
        assert!(
            !no_credential(None)
                .to_string()
                .contains("AZURE_FEDERATED_TOKEN_FILE")
        );
    }

    #[test]
    fn two_credentials_are_an_error_naming_both_keys() {
        let secret = file_with("s");
        let token = file_with("t");
        let mut settings = settings();
        settings.auth.client_secret_file = Some(secret.path().to_path_buf());
        settings.auth.federated_token_file = Some(token.path().to_path_buf());
        let text = ClientCredential::from_settings(&settings)
            .expect_err("two")
            .to_string();
        assert!(
            text.contains("auth.client_secret_file and auth.federated_token_file are set"),
            "{text}"
        );
        assert!(text.contains("exactly one"), "{text}");
    }

    #[test]
    fn empty_values_count_as_not_set() {
        let token = file_with("federated\n");
        let mut settings = settings();
        settings.auth.client_secret = Some(SecretString::from(""));
        settings.auth.client_secret_file = Some(PathBuf::new());
        settings.auth.federated_token_file = Some(token.path().to_path_buf());
        let credential = ClientCredential::from_settings(&settings).expect("one credential");
        assert!(matches!(
            credential,
            ClientCredential::FederatedTokenFile(_)
        ));
    }

    #[test]
    fn each_kind_is_tried_at_start_up_and_a_failure_names_key_and_file() {
        let empty = file_with("  \n");
        let identity = TestIdentity::new();
        let key_only = file_with(&identity.key_pem);
        type Set = fn(&mut Settings, PathBuf);
        let cases: [(Set, PathBuf, &str); 5] = [
            (
                |s, p| s.auth.client_secret_file = Some(p),
                "/no/such/secret".into(),
                "auth.client_secret_file: /no/such/secret: cannot be read",
            ),
            (
                |s, p| s.auth.federated_token_file = Some(p),
                "/no/such/token".into(),
                "auth.federated_token_file: /no/such/token: cannot be read",
            ),
            (
                |s, p| s.auth.federated_token_file = Some(p),
                empty.path().to_path_buf(),
                "is empty",
            ),
            (
                |s, p| s.auth.client_certificate_file = Some(p),
                "/no/such/cert.pem".into(),
                "auth.client_certificate_file: /no/such/cert.pem: cannot be read",
            ),
            (
                |s, p| s.auth.client_certificate_file = Some(p),
                key_only.path().to_path_buf(),
                "holds no certificate",
            ),
        ];
        for (set, path, expected) in cases {
            let mut settings = settings();
            set(&mut settings, path);
            let text = ClientCredential::from_settings(&settings)
                .expect_err(expected)
                .to_string();
            assert!(text.contains(expected), "{expected:?} not in {text}");
            assert!(text.starts_with("invalid configuration: auth."), "{text}");
        }
    }

    #[tokio::test]
    async fn file_credentials_are_read_afresh_and_trimmed() {
        let mut file = file_with("first\n");
        let credential = ClientCredential::FederatedTokenFile(file.path().to_path_buf());
        let proof = credential
            .proof("client-1", &endpoint())
            .await
            .expect("read");
        assert_eq!(
            proof.form_fields(),
            vec![
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", "first")
            ]
        );
        file.as_file_mut().set_len(0).expect("truncate");
        std::fs::write(file.path(), "second").expect("rewrite");
        let proof = credential
            .proof("client-1", &endpoint())
            .await
            .expect("read");
        assert_eq!(proof.form_fields()[1], ("client_assertion", "second"));

        std::fs::write(file.path(), "").expect("empty");
        let error = credential
            .proof("client-1", &endpoint())
            .await
            .expect_err("empty");
        assert!(matches!(error, AuthError::Credential(_)), "{error:?}");
        assert!(
            error.to_string().contains("auth.federated_token_file"),
            "{error}"
        );

        let secret = ClientCredential::SecretFile(file.path().to_path_buf());
        std::fs::write(file.path(), " rotated-secret \n").expect("rewrite");
        let proof = secret.proof("client-1", &endpoint()).await.expect("read");
        assert_eq!(
            proof.form_fields(),
            vec![("client_secret", "rotated-secret")]
        );
    }

    #[test]
    fn secrets_and_assertions_never_show_in_debug_output() {
        let secret = ClientCredential::Secret(SecretString::from("hunter2-secret"));
        let proofs = [
            ClientProof::Secret(SecretString::from("hunter2-secret")),
            ClientProof::Assertion(SecretString::from("eyJhbGciOiJQUzI1NiJ9.claims.signature")),
        ];
        let debug = format!("{secret:?} {proofs:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("eyJhbGci"), "{debug}");
    }
}
