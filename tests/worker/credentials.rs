//! Production credentials against a token-endpoint stand-in that records every request:
//! certificate assertions, workload-identity tokens, national-cloud presets, many tenants,
//! and the configuration errors that stop the binary with exit code 2.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use print_abort_worker::Settings;
use print_abort_worker::auth::{AuthError, ClientCredential, TokenProvider};
use print_abort_worker::config::Cloud;
use print_abort_worker::handler::http_client;
use rcgen::{CertificateParams, KeyPair, PKCS_RSA_SHA256};
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;

const TOKEN_PATH: &str = r"^/[^/]+/oauth2/v2\.0/token$";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An RSA key and its self-signed certificate, as Entra would have it uploaded.
struct Identity {
    key_pem: String,
    cert_pem: String,
    thumbprint: String,
}

impl Identity {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("key");
        let cert = CertificateParams::new(vec!["print-abort-worker.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        Self {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(cert.der())),
        }
    }

    /// The one file `auth.client_certificate_file` names.
    fn write_to(&self, path: &Path) {
        std::fs::write(path, format!("{}{}", self.key_pem, self.cert_pem)).expect("write pem");
    }

    /// Checks an assertion the way Entra does, with the public key of the certificate, and
    /// returns its claims.
    fn verify(&self, assertion: &str, audience: &str) -> serde_json::Value {
        let header = jsonwebtoken::decode_header(assertion).expect("JWT header");
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.x5t_s256.as_deref(), Some(self.thumbprint.as_str()));
        let public = DecodingKey::from_rsa_pem(self.cert_pem.as_bytes()).expect("cert key");
        let mut validation = Validation::new(Algorithm::PS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[CLIENT_ID]);
        validation.sub = Some(CLIENT_ID.into());
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["aud", "iss", "sub", "exp", "nbf"]);
        jsonwebtoken::decode::<serde_json::Value>(assertion, &public, &validation)
            .expect("the assertion verifies with the certificate")
            .claims
    }
}

/// Issues `token-for-<tenant>-<n>`, counting per tenant, so a test can tell which token came
/// from which request.
#[derive(Clone, Default)]
struct PerTenantTokens {
    issued: Arc<Mutex<HashMap<String, usize>>>,
}

impl Respond for PerTenantTokens {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let tenant = request
            .url
            .path_segments()
            .and_then(|mut segments| segments.next())
            .unwrap_or_default()
            .to_owned();
        let mut issued = self.issued.lock().expect("lock");
        let n = issued.entry(tenant.clone()).or_default();
        *n += 1;
        token_reply(&format!("token-for-{tenant}-{n}"))
    }
}

async fn mount_token_endpoint(server: &MockServer, responder: impl Respond + 'static) {
    Mock::given(method("POST"))
        .and(path_regex(TOKEN_PATH))
        .respond_with(responder)
        .named("token endpoint")
        .mount(server)
        .await;
}

/// A token request the stand-in received: its path and its form fields.
type TokenRequest = (String, HashMap<String, String>);

/// The token requests the stand-in received, oldest first.
async fn token_requests(server: &MockServer) -> Vec<TokenRequest> {
    server
        .received_requests()
        .await
        .expect("recording is on")
        .into_iter()
        .filter(|request| request.url.path().ends_with("/oauth2/v2.0/token"))
        .map(|request| {
            let form = url::form_urlencoded::parse(&request.body)
                .into_owned()
                .collect();
            (request.url.path().to_owned(), form)
        })
        .collect()
}

fn token_url(server: &MockServer, tenant: &str) -> String {
    format!("{}/{tenant}/oauth2/v2.0/token", server.uri())
}

/// Settings whose only credential is `set`.
fn with_credential(server: &MockServer, set: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = test_settings(server);
    settings.auth.client_secret = None;
    set(&mut settings);
    settings.validate().expect("valid settings");
    settings
}

fn provider(settings: &Settings) -> TokenProvider {
    let credential = ClientCredential::from_settings(settings).expect("credential");
    TokenProvider::new(http_client(settings).expect("http"), settings, credential)
}

/// Runs one command through a worker with `settings`, checks that it succeeded, and returns
/// the app with the one token request the worker made for it.
async fn one_command_with(server: MockServer, settings: Settings) -> (TestApp, TokenRequest) {
    let mut app = TestApp::spawn(server, settings).await;
    let event = app.outcome_of(&command("p1", "j1")).await;
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");
    let mut requests = token_requests(&app.server).await;
    assert_eq!(requests.len(), 1);
    (app, requests.remove(0))
}

/// A token-endpoint stand-in that issues `token-1`, then `token-2`.
async fn two_token_endpoint() -> MockServer {
    let server = MockServer::start().await;
    mount_token_endpoint(
        &server,
        Script::new(vec![token_reply("token-1"), token_reply("token-2")]),
    )
    .await;
    server
}

/// A token-endpoint stand-in that issues [`PerTenantTokens`].
async fn per_tenant_token_endpoint() -> MockServer {
    let server = MockServer::start().await;
    mount_token_endpoint(&server, PerTenantTokens::default()).await;
    server
}

/// Everything written through `tracing` on this thread, at every level.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// The subscriber is the process's global one, so it sees the logs of every thread: the
// runtime's, and the blocking pool's that signs the assertion. nextest runs each test in
// a process of its own, so no other test has set one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_sends_a_signed_assertion_instead_of_a_secret_and_never_logs_it() {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("no other subscriber in this process: run the suite with cargo nextest");
    std::thread::spawn(|| tracing::info!("a line from another thread"))
        .join()
        .expect("the thread logs");
    assert!(
        logs.text().contains("a line from another thread"),
        "the capture sees every thread"
    );

    let server = graph_with_token().await;
    expect_abort_bearing(&server, "token-1", no_content()).await;
    let identity = Identity::new();
    let pem = tempfile::NamedTempFile::new().expect("temp file");
    identity.write_to(pem.path());
    let settings = with_credential(&server, |s| {
        s.auth.client_certificate_file = Some(pem.path().to_path_buf());
    });
    let (app, (path, form)) = one_command_with(server, settings).await;

    assert_eq!(path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_assertion_type"], ASSERTION_TYPE);
    assert!(!form.contains_key("client_secret"), "{form:?}");
    let assertion = &form["client_assertion"];
    let claims = identity.verify(assertion, &token_url(&app.server, TENANT));
    assert_eq!(claims["aud"], token_url(&app.server, TENANT));
    app.finish().await;

    let logs = logs.text();
    assert!(
        logs.contains("token_request"),
        "the token request was logged"
    );
    assert!(
        !logs.contains(assertion.as_str()),
        "the assertion leaked into logs"
    );
    for line in identity.key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "the private key leaked into logs");
    }
    assert!(
        !logs.contains("token-1"),
        "the access token leaked into logs"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_used_for_the_next_token_without_a_restart() {
    let server = two_token_endpoint().await;
    let first = Identity::new();
    let pem = tempfile::NamedTempFile::new().expect("temp file");
    first.write_to(pem.path());
    let settings = with_credential(&server, |s| {
        s.auth.client_certificate_file = Some(pem.path().to_path_buf());
    });
    let tokens = provider(&settings);

    let token = tokens.token(None).await.expect("first token");
    assert_eq!(token.bearer(), "token-1");
    let renewed = Identity::new();
    renewed.write_to(pem.path());
    assert_eq!(
        tokens.token(None).await.expect("cached").bearer(),
        "token-1",
        "a valid token is reused; the file matters only for the next one"
    );
    tokens.invalidate(None, &token);
    let token = tokens.token(None).await.expect("second token");
    assert_eq!(token.bearer(), "token-2");

    let requests = token_requests(&server).await;
    assert_eq!(requests.len(), 2);
    let audience = token_url(&server, TENANT);
    first.verify(&requests[0].1["client_assertion"], &audience);
    renewed.verify(&requests[1].1["client_assertion"], &audience);

    // A certificate broken after start-up fails the token, not the process.
    std::fs::write(pem.path(), &renewed.key_pem).expect("write key only");
    tokens.invalidate(None, &token);
    let error = tokens.token(None).await.expect_err("no certificate");
    assert!(matches!(error, AuthError::Credential(_)), "{error:?}");
    assert!(!error.is_transient());
    let text = error.to_string();
    assert!(text.contains("auth.client_certificate_file"), "{text}");
    assert!(text.contains("holds no certificate"), "{text}");
    assert_eq!(
        token_requests(&server).await.len(),
        2,
        "no request without a proof"
    );
}

#[tokio::test]
async fn the_federated_token_file_is_read_again_for_every_new_token() {
    let server = two_token_endpoint().await;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(b"federated-token-1\n").expect("write");
    let settings = with_credential(&server, |s| {
        s.auth.federated_token_file = Some(file.path().to_path_buf());
    });
    let tokens = provider(&settings);

    let token = tokens.token(None).await.expect("first token");
    // The kubelet replaces the projected token well before it expires.
    std::fs::write(file.path(), "federated-token-2").expect("rotate");
    tokens.invalidate(None, &token);
    tokens.token(None).await.expect("second token");

    let requests = token_requests(&server).await;
    assert_eq!(requests.len(), 2);
    for ((path, form), expected) in requests
        .iter()
        .zip(["federated-token-1", "federated-token-2"])
    {
        assert_eq!(path, &format!("/{TENANT}/oauth2/v2.0/token"));
        assert_eq!(form["client_assertion_type"], ASSERTION_TYPE);
        assert_eq!(form["client_assertion"], expected);
        assert_eq!(form["client_id"], CLIENT_ID);
        assert!(!form.contains_key("client_secret"), "{form:?}");
    }
}

#[tokio::test]
async fn workload_identity_drives_the_whole_pipeline() {
    let server = graph_with_token().await;
    expect_aborts(&server, no_content(), 1).await;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(b"projected-service-account-token")
        .expect("write");
    let settings = with_credential(&server, |s| {
        s.auth.federated_token_file = Some(file.path().to_path_buf());
    });
    let (app, (_, form)) = one_command_with(server, settings).await;
    assert_eq!(form["client_assertion"], "projected-service-account-token");
    app.finish().await;
}

#[tokio::test]
async fn each_cloud_preset_asks_the_authority_for_a_token_scoped_to_its_graph() {
    let presets = [
        (Cloud::Global, "https://graph.microsoft.com/.default"),
        (Cloud::UsGov, "https://graph.microsoft.us/.default"),
        (Cloud::UsGovDod, "https://dod-graph.microsoft.us/.default"),
    ];
    for (cloud, scope) in presets {
        let server = per_tenant_token_endpoint().await;
        let mut settings = test_settings(&server);
        settings.graph.cloud = cloud;
        // Only the authority is a stand-in; Graph and the scope stay the preset's.
        settings.graph.base_url = None;
        settings.validate().expect("valid");
        let token = provider(&settings).token(None).await.expect("token");
        assert_eq!(token.bearer(), format!("token-for-{TENANT}-1"));

        let requests = token_requests(&server).await;
        assert_eq!(requests.len(), 1, "{cloud:?}");
        let (path, form) = &requests[0];
        assert_eq!(path, &format!("/{TENANT}/oauth2/v2.0/token"), "{cloud:?}");
        assert_eq!(form["scope"], scope, "{cloud:?}");
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], CLIENT_ID);
        assert_eq!(form["client_secret"], CLIENT_SECRET);
    }
}

#[tokio::test]
async fn each_tenant_gets_its_own_token_once_and_events_name_the_tenant() {
    let server = per_tenant_token_endpoint().await;
    mount_abort(&server, no_content()).await;
    let mut settings = test_settings(&server);
    settings.auth.allowed_tenants = vec!["tenant-a".into(), "tenant-b".into()];
    let mut app = TestApp::spawn(server, settings).await;

    let commands = [
        ("a1", Some("tenant-a")),
        ("b1", Some("tenant-b")),
        ("h1", None),
        ("a2", Some("tenant-a")),
        ("b2", Some("tenant-b")),
        ("h2", None),
    ];
    // Two rounds, each settled before the next: the second can only reuse cached tokens.
    for round in commands.chunks(3) {
        for (job, tenant) in round {
            let mut body =
                serde_json::json!({"printerId": "p", "printJobId": job, "commandId": job});
            if let Some(tenant) = tenant {
                body["tenantId"] = (*tenant).into();
            }
            app.send(&body.to_string()).await;
        }
        for _ in round {
            let event = app.next_event().await;
            let data = &event["data"];
            assert_eq!(data["outcome"], "succeeded", "{event}");
            let job = data["printJobId"].as_str().expect("job");
            let (_, tenant) = commands.iter().find(|(j, _)| *j == job).expect("known job");
            match tenant {
                Some(tenant) => assert_eq!(data["tenantId"], *tenant, "{event}"),
                None => assert!(data.get("tenantId").is_none(), "{event}"),
            }
        }
    }

    let mut paths: Vec<String> = token_requests(&app.server)
        .await
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            format!("/{TENANT}/oauth2/v2.0/token"),
            "/tenant-a/oauth2/v2.0/token".to_owned(),
            "/tenant-b/oauth2/v2.0/token".to_owned(),
        ],
        "one token request per tenant, the second round served from the cache"
    );
    // Every abort carried the token of its own tenant.
    let aborts: Vec<Request> = app
        .server
        .received_requests()
        .await
        .expect("recorded")
        .into_iter()
        .filter(|request| request.url.path().ends_with("/abort"))
        .collect();
    assert_eq!(aborts.len(), commands.len());
    for request in aborts {
        let job = request
            .url
            .path()
            .trim_end_matches("/abort")
            .rsplit('/')
            .next()
            .expect("job segment")
            .to_owned();
        let (_, tenant) = commands.iter().find(|(j, _)| *j == job).expect("known job");
        let expected = format!("Bearer token-for-{}-1", tenant.unwrap_or(TENANT));
        let authorization = request
            .headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .expect("authorization header");
        assert_eq!(authorization, expected, "job {job}");
    }
    app.finish().await;
}

#[tokio::test]
async fn a_tenant_off_the_allow_list_is_rejected_without_a_token_request() {
    let server = per_tenant_token_endpoint().await;
    expect_aborts(&server, no_content(), 0).await;
    let mut settings = test_settings(&server);
    settings.auth.allowed_tenants = vec!["tenant-a".into()];
    let mut app = TestApp::spawn(server, settings).await;
    let event = app
        .outcome_of(r#"{"printerId":"p","printJobId":"j","commandId":"c","tenantId":"stranger"}"#)
        .await;
    let data = &event["data"];
    assert_eq!(data["outcome"], "rejected", "{event}");
    assert_eq!(data["error"]["kind"], "invalid");
    assert!(
        data["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stranger")),
        "{event}"
    );
    assert_eq!(data["tenantId"], "stranger");
    app.one_dead_letter("invalid").await;
    assert!(
        token_requests(&app.server).await.is_empty(),
        "no token was requested"
    );
    app.finish().await;
}

/// The binary as an operator starts it, without any credential from this environment.
fn worker_binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_print-abort-worker"));
    command
        .arg("run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .envs([
            ("PRINT_ABORT__AUTH__TENANT_ID", TENANT),
            ("PRINT_ABORT__AUTH__CLIENT_ID", CLIENT_ID),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn credential_problems_stop_the_binary_with_exit_code_2_and_say_which_key() {
    let identity = Identity::new();
    let key_only = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(key_only.path(), &identity.key_pem).expect("write");
    let token = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(token.path(), "federated").expect("write");
    let key_only = key_only.path().to_string_lossy().into_owned();
    let token = token.path().to_string_lossy().into_owned();

    /// Environment variables, and what stderr must then say.
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            vec![(
                "PRINT_ABORT__AUTH__CLIENT_CERTIFICATE_FILE",
                key_only.as_str(),
            )],
            &["auth.client_certificate_file", "holds no certificate"],
        ),
        (
            vec![(
                "PRINT_ABORT__AUTH__CLIENT_CERTIFICATE_FILE",
                "/no/such/cert.pem",
            )],
            &["auth.client_certificate_file: /no/such/cert.pem: cannot be read"],
        ),
        (
            vec![
                ("PRINT_ABORT__AUTH__CLIENT_SECRET", "s"),
                ("PRINT_ABORT__AUTH__FEDERATED_TOKEN_FILE", token.as_str()),
            ],
            &[
                "auth.client_secret and auth.federated_token_file",
                "exactly one",
            ],
        ),
        // The workload-identity convention is documented, never applied implicitly.
        (
            vec![("AZURE_FEDERATED_TOKEN_FILE", token.as_str())],
            &[
                "no credential is configured",
                "AZURE_FEDERATED_TOKEN_FILE is set",
            ],
        ),
    ];
    for (variables, expected) in cases {
        let output = worker_binary()
            .envs(variables.iter().copied())
            .output()
            .await
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variables:?}: {stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{text:?} not in {stderr}");
        }
    }
}
