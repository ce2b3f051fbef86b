//! Certificate credentials: the signed client assertion that stands in for a client secret.
//!
//! Instead of a shared secret, Microsoft Entra accepts a short-lived JWT signed with the
//! private key of a certificate uploaded to the app registration (`private_key_jwt`,
//! RFC 7523). Its header names the certificate by SHA-256 thumbprint (`x5t#S256`) so Entra
//! knows which public key verifies it; its claims bind it to one token endpoint (`aud`) and a
//! few minutes, so an intercepted assertion is worth little.
//!
//! [`SigningCertificate::from_pem`] takes one PEM file holding the private key and the
//! certificate, in any order and possibly with the rest of the chain, and refuses what would
//! otherwise only fail later at the token endpoint: no key, no certificate, an encrypted or
//! non-RSA key, or a key that belongs to none of the certificates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::Decode as _;
use x509_cert::der::asn1::ObjectIdentifier;

use super::credential::CredentialError;

/// How long an assertion stays valid. It serves a single token request; the few minutes
/// only absorb clock skew between this host and Entra.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// RSASSA-PSS with SHA-256, the algorithm Entra documents for certificate assertions.
pub const ASSERTION_ALGORITHM: Algorithm = Algorithm::PS256;

/// `rsaEncryption` (RFC 8017): the public-key algorithm of an RSA certificate.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Signed once while loading: proves that the key can sign and finds its certificate.
const PROBE: &[u8] = b"print-abort-worker key check";

/// The private key of a certificate credential and the thumbprint that names it.
pub struct SigningCertificate {
    key: EncodingKey,
    /// `x5t#S256`: tells Entra which of the app's certificates verifies the signature.
    thumbprint: String,
}

impl std::fmt::Debug for SigningCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCertificate")
            .field("thumbprint", &self.thumbprint)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// The claims Entra requires of a client assertion.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    /// Unique per assertion, so Entra can refuse a replayed one.
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl SigningCertificate {
    /// Reads the private key and its certificate from PEM text and checks that they fit.
    pub fn from_pem(text: &[u8]) -> Result<Self, CredentialError> {
        let blocks =
            pem::parse_many(text).map_err(|error| CredentialError::Pem(error.to_string()))?;
        let mut keys = blocks.iter().filter(|b| b.tag().ends_with("PRIVATE KEY"));
        let key_block = keys.next().ok_or(CredentialError::NoKey)?;
        if keys.next().is_some() {
            return Err(CredentialError::ManyKeys);
        }
        let key = rsa_key(key_block)?;
        let certificates: Vec<&[u8]> = blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.contents())
            .collect();
        if certificates.is_empty() {
            return Err(CredentialError::NoCertificate);
        }
        // aws-lc parses the key only when it signs, so sign once now: a broken or too short
        // key shows up here rather than at the first token request.
        let probe = jsonwebtoken::crypto::sign(PROBE, &key, ASSERTION_ALGORITHM)
            .map_err(|error| CredentialError::Signing(error.to_string()))?;
        let certificate = matching_certificate(&certificates, &probe)?;
        Ok(Self {
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(certificate)),
        })
    }

    /// The base64url SHA-256 thumbprint of the certificate (`x5t#S256`).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A fresh assertion for one request to `token_endpoint` by the app `client_id`.
    pub fn assertion(
        &self,
        client_id: &str,
        token_endpoint: &str,
    ) -> Result<SecretString, CredentialError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let claims = AssertionClaims {
            aud: token_endpoint,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = Header::new(ASSERTION_ALGORITHM);
        header.typ = Some("JWT".into());
        header.x5t_s256 = Some(self.thumbprint.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|error| CredentialError::Signing(error.to_string()))
    }
}

/// The key of a PEM block, which must be an unencrypted RSA key (PKCS#1 or PKCS#8).
fn rsa_key(block: &pem::Pem) -> Result<EncodingKey, CredentialError> {
    match block.tag() {
        "RSA PRIVATE KEY" | "PRIVATE KEY" => {}
        "ENCRYPTED PRIVATE KEY" => return Err(CredentialError::EncryptedKey),
        "EC PRIVATE KEY" => return Err(CredentialError::NotRsa("an EC")),
        other => return Err(CredentialError::UnsupportedKey(other.to_owned())),
    }
    // jsonwebtoken reads the first PEM block only, so hand it the key block alone.
    let text = pem::encode(block);
    EncodingKey::from_rsa_pem(text.as_bytes()).map_err(|error| {
        // Name the algorithm when the key is well-formed but not RSA.
        if EncodingKey::from_ec_pem(text.as_bytes()).is_ok() {
            CredentialError::NotRsa("an EC")
        } else if EncodingKey::from_ed_pem(text.as_bytes()).is_ok() {
            CredentialError::NotRsa("an Ed25519")
        } else {
            CredentialError::UnreadableKey(error.to_string())
        }
    })
}

/// The certificate whose public key verifies `probe`, a signature by the private key. A
/// chain may come along in the file; the key picks out its own certificate.
fn matching_certificate<'a>(
    certificates: &[&'a [u8]],
    probe: &str,
) -> Result<&'a [u8], CredentialError> {
    for der in certificates {
        let certificate = Certificate::from_der(der)
            .map_err(|error| CredentialError::BadCertificate(error.to_string()))?;
        let public_key = &certificate.tbs_certificate.subject_public_key_info;
        if public_key.algorithm.oid != RSA_ENCRYPTION {
            continue;
        }
        let verifier = DecodingKey::from_rsa_der(public_key.subject_public_key.raw_bytes());
        if jsonwebtoken::crypto::verify(probe, PROBE, &verifier, ASSERTION_ALGORITHM)
            .unwrap_or(false)
        {
            return Ok(der);
        }
    }
    Err(CredentialError::KeyMismatch)
}

#[cfg(test)]
pub(crate) mod tests {
    use jsonwebtoken::Validation;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
    use secrecy::ExposeSecret;

    use super::*;

    /// A fresh RSA key and a self-signed certificate for it, as PEM.
    pub(crate) struct TestIdentity {
        pub key_pem: String,
        pub cert_pem: String,
        pub cert_der: Vec<u8>,
    }

    impl TestIdentity {
        pub(crate) fn new() -> Self {
            Self::with_algorithm(&PKCS_RSA_SHA256)
        }

        fn with_algorithm(algorithm: &'static rcgen::SignatureAlgorithm) -> Self {
            let key = KeyPair::generate_for(algorithm).expect("key");
            let params =
                CertificateParams::new(vec!["print-abort-worker.test".to_owned()]).expect("params");
            let cert = params.self_signed(&key).expect("certificate");
            Self {
                key_pem: key.serialize_pem(),
                cert_pem: cert.pem(),
                cert_der: cert.der().to_vec(),
            }
        }

        /// Key and certificate in one file, the way `auth.client_certificate_file` wants it.
        pub(crate) fn combined(&self) -> String {
            format!("{}{}", self.key_pem, self.cert_pem)
        }
    }

    const ENDPOINT: &str = "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    #[test]
    fn the_assertion_is_signed_for_the_certificate_with_every_claim_entra_needs() {
        let identity = TestIdentity::new();
        let signer = SigningCertificate::from_pem(identity.combined().as_bytes()).expect("valid");
        let before = now();
        let assertion = signer.assertion("client-1", ENDPOINT).expect("signed");
        let after = now();

        let header = jsonwebtoken::decode_header(assertion.expose_secret()).expect("header");
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&identity.cert_der));
        assert_eq!(header.x5t_s256.as_deref(), Some(thumbprint.as_str()));
        assert!(!thumbprint.contains('='), "base64url without padding");

        // Verified with the public key taken from the certificate, independently of the
        // code above that matched key and certificate.
        let public = DecodingKey::from_rsa_pem(identity.cert_pem.as_bytes()).expect("cert key");
        let mut validation = Validation::new(Algorithm::PS256);
        validation.set_audience(&[ENDPOINT]);
        validation.set_issuer(&["client-1"]);
        validation.sub = Some("client-1".into());
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["aud", "iss", "sub", "exp", "nbf"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            assertion.expose_secret(),
            &public,
            &validation,
        )
        .expect("the signature verifies with the certificate")
        .claims;
        assert_eq!(claims["aud"], ENDPOINT);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        let jti = claims["jti"].as_str().expect("jti");
        assert!(uuid::Uuid::parse_str(jti).is_ok(), "{jti}");
        let (nbf, iat, exp) = (
            claims["nbf"].as_u64().expect("nbf"),
            claims["iat"].as_u64().expect("iat"),
            claims["exp"].as_u64().expect("exp"),
        );
        assert!((before..=after).contains(&iat), "iat {iat}");
        assert_eq!(nbf, iat);
        assert_eq!(exp - iat, ASSERTION_LIFETIME.as_secs());
        assert!(ASSERTION_LIFETIME >= Duration::from_secs(60));
        assert!(ASSERTION_LIFETIME <= Duration::from_secs(10 * 60));

        let again = signer.assertion("client-1", ENDPOINT).expect("signed");
        let again =
            jsonwebtoken::decode::<serde_json::Value>(again.expose_secret(), &public, &validation)
                .expect("valid")
                .claims;
        assert_ne!(
            again["jti"], claims["jti"],
            "every assertion has its own jti"
        );
    }

    #[test]
    fn the_certificate_may_come_first_and_bring_its_chain() {
        let identity = TestIdentity::new();
        let issuer = TestIdentity::new();
        let text = format!(
            "{}{}{}",
            issuer.cert_pem, identity.cert_pem, identity.key_pem
        );
        let signer = SigningCertificate::from_pem(text.as_bytes()).expect("valid");
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&identity.cert_der));
        assert_eq!(signer.thumbprint(), thumbprint);
    }

    #[test]
    fn a_pkcs1_rsa_private_key_works_too() {
        use x509_cert::der::asn1::{AnyRef, OctetStringRef};
        use x509_cert::der::{Reader as _, SliceReader};

        let identity = TestIdentity::new();
        let pkcs8 = pem::parse(&identity.key_pem).expect("key pem");
        assert_eq!(pkcs8.tag(), "PRIVATE KEY", "rcgen writes PKCS#8");
        // PKCS#8 wraps the PKCS#1 key: SEQUENCE { version, algorithm, OCTET STRING key }.
        let mut reader = SliceReader::new(pkcs8.contents()).expect("der");
        let pkcs1 = reader
            .sequence(|inner| {
                let _version = u8::decode(inner)?;
                let _algorithm = AnyRef::decode(inner)?;
                Ok(OctetStringRef::decode(inner)?.as_bytes().to_vec())
            })
            .expect("PKCS#8");
        let text = format!(
            "{}{}",
            pem::encode(&pem::Pem::new("RSA PRIVATE KEY", pkcs1)),
            identity.cert_pem
        );
        let signer = SigningCertificate::from_pem(text.as_bytes()).expect("valid");
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&identity.cert_der));
        assert_eq!(signer.thumbprint(), thumbprint);
    }

    #[test]
    fn unusable_files_are_refused_with_the_reason() {
        let rsa = TestIdentity::new();
        let other = TestIdentity::new();
        let ec = TestIdentity::with_algorithm(&PKCS_ECDSA_P256_SHA256);
        let encrypted = rsa
            .key_pem
            .replace("BEGIN PRIVATE KEY", "BEGIN ENCRYPTED PRIVATE KEY")
            .replace("END PRIVATE KEY", "END ENCRYPTED PRIVATE KEY");
        let cases: Vec<(String, &str)> =
            vec![
            (String::new(), "holds no private key"),
            ("not a pem file".into(), "holds no private key"),
            (rsa.cert_pem.clone(), "holds no private key"),
            (rsa.key_pem.clone(), "holds no certificate"),
            (ec.combined(), "an EC private key"),
            (format!("{encrypted}{}", rsa.cert_pem), "encrypted"),
            (format!("{}{}", rsa.key_pem, other.cert_pem), "belongs to none"),
            (format!("{}{}", rsa.combined(), other.key_pem), "more than one"),
            (
                format!(
                    "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    rsa.key_pem
                ),
                "not a valid X.509 certificate",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
                "OPENSSH PRIVATE KEY",
            ),
        ];
        for (text, expected) in cases {
            let error = SigningCertificate::from_pem(text.as_bytes()).expect_err(expected);
            assert!(
                error.to_string().contains(expected),
                "{expected:?} not in {error}"
            );
        }
    }

    #[test]
    fn the_private_key_and_the_assertion_never_show_in_debug_output() {
        let identity = TestIdentity::new();
        let signer = SigningCertificate::from_pem(identity.combined().as_bytes()).expect("valid");
        let assertion = signer.assertion("client-1", ENDPOINT).expect("signed");
        let debug = format!("{signer:?} {assertion:?}");
        let key_body: String = identity
            .key_pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        for line in identity.key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
        assert!(!debug.contains(&key_body[..32]), "{debug}");
        assert!(!debug.contains(assertion.expose_secret()), "{debug}");
        assert!(
            debug.contains(signer.thumbprint()),
            "the thumbprint is public: {debug}"
        );
    }
}
