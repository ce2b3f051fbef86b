//! TLS to the broker, against a node of the test's own with a TLS listener and certificates
//! made at test time: a private CA trusted through `amqp.tls.ca_file`, the server name
//! checked, and mutual TLS logging in with `EXTERNAL`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use print_abort_worker::Settings;
use print_abort_worker::health::Health;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;

use crate::helpers::*;
use crate::nodes::{Nodes, free_port};

/// The user the client certificate's common name logs in as with `EXTERNAL`.
const CLIENT_USER: &str = "print-abort-worker-test";

/// The certificates of a test, as files in a folder of its own.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a folder for the certificates");
        let ca = authority("print-abort test CA");
        let other = authority("some other CA");
        let server_key = KeyPair::generate().expect("a key");
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server = server
            .signed_by(&server_key, &ca)
            .expect("the server certificate");
        let client_key = KeyPair::generate().expect("a key");
        let mut client = CertificateParams::new(Vec::new()).expect("params");
        client
            .distinguished_name
            .push(DnType::CommonName, CLIENT_USER);
        let client = client
            .signed_by(&client_key, &ca)
            .expect("the client certificate");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("a certificate file");
        };
        write("ca.pem", ca.pem());
        write("other-ca.pem", other.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write(
            "client.pem",
            format!("{}{}", client_key.serialize_pem(), client.pem()),
        );
        Self { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

/// A node with a TLS listener on `tls_port` that asks for (but does not require) a client
/// certificate, and takes `EXTERNAL` logins by the certificate's common name.
async fn tls_node(pki: &Pki, tls_port: u16) -> Nodes {
    let file = |name: &str| pki.file(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("server.pem"), file("server.key"));
    let config = format!(
        "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
         ssl_options.cacertfile = {ca}\n\
         ssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = false\n\
         ssl_cert_login_from = common_name\n\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = EXTERNAL\n"
    );
    Nodes::start(1, &["rabbitmq_auth_mechanism_ssl"], &config).await
}

/// Settings of a worker that reaches the node at `url` (the TLS listener) and Graph at
/// `server`.
fn over_tls(server: &wiremock::MockServer, url: &str) -> Settings {
    let mut settings = test_settings(server);
    settings.amqp.url = url.parse().expect("a broker URL");
    settings
}

/// The error of connecting with `settings`, which must fail.
async fn refusal(settings: &Settings) -> String {
    match print_abort_worker::amqp::connect(&settings.amqp, "test").await {
        Ok(_) => panic!("the connection must be refused"),
        Err(error) => {
            println!("refused: {error}");
            error.to_string()
        }
    }
}

/// Runs the worker with `settings` until it is consuming, sends one command through the
/// node's plain listener at `plain_url`, and returns its outcome event.
async fn one_command(settings: Settings, plain_url: &str) -> Value {
    let health = Arc::new(Health::default());
    let (stop, worker) = spawn_worker(settings.clone(), health.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health.ready() {
        assert!(
            Instant::now() < deadline,
            "the worker never consumed over TLS; see its log above"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connection = Connection::connect(plain_url, ConnectionProperties::default())
        .await
        .expect("the test connects to the node");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    let events = exclusive_queue(&channel).await;
    bind_to_results(&channel, &events, &settings.amqp).await;
    let mut consumer = consume(&channel, &events).await;
    let body = command("tls-printer", "tls-job");
    publish(
        &channel,
        &settings.amqp.command_queue,
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("an outcome within 20 s")
        .expect("the consumer is open")
        .expect("a delivery");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops")
        .expect("no panic")
        .expect("a clean stop");
    serde_json::from_slice(&delivery.data).expect("events are JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_through_the_ca_file_and_the_server_name_is_checked() {
    let pki = Pki::new();
    let tls_port = free_port();
    let nodes = tls_node(&pki, tls_port).await;
    let server = graph_aborting_after(Duration::ZERO).await;

    let mut settings = over_tls(
        &server,
        &format!("amqps://guest:guest@localhost:{tls_port}/%2f"),
    );
    settings.amqp.tls.ca_file = Some(pki.file("ca.pem"));
    settings.validate().expect("the CA file is usable");
    let event = one_command(settings.clone(), &nodes.nodes[0].url()).await;
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");

    // The system's roots alone do not know the private CA.
    let mut system_roots = settings.clone();
    system_roots.amqp.tls.ca_file = None;
    let error = refusal(&system_roots).await;
    assert!(
        error.contains("TLS") && error.contains("not trusted"),
        "the error says the broker's certificate is not trusted: {error}"
    );

    // Nor does another CA.
    let mut wrong_ca = settings.clone();
    wrong_ca.amqp.tls.ca_file = Some(pki.file("other-ca.pem"));
    let error = refusal(&wrong_ca).await;
    assert!(
        error.contains("TLS")
            && error.contains("not trusted")
            && error.contains("amqp.tls.ca_file"),
        "the error says the certificate is not trusted and where to fix it: {error}"
    );

    // The certificate names localhost, not 127.0.0.1.
    let mut by_address = settings.clone();
    by_address.amqp.url = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f")
        .parse()
        .expect("a broker URL");
    let error = refusal(&by_address).await;
    assert!(
        error.contains("TLS") && error.contains("127.0.0.1"),
        "the error says the certificate does not name the host: {error}"
    );
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_logs_in_with_the_client_certificate_through_external() {
    let pki = Pki::new();
    let tls_port = free_port();
    let nodes = tls_node(&pki, tls_port).await;
    // The user EXTERNAL logs in as: the common name, with no password at all.
    nodes
        .ctl(
            0,
            &["add_user", CLIENT_USER, &uuid::Uuid::new_v4().to_string()],
        )
        .await;
    nodes.ctl(0, &["clear_password", CLIENT_USER]).await;
    nodes
        .ctl(
            0,
            &["set_permissions", "-p", "/", CLIENT_USER, ".*", ".*", ".*"],
        )
        .await;
    let server = graph_aborting_after(Duration::ZERO).await;

    // No user or password in the URL: the certificate is the login.
    let mut settings = over_tls(&server, &format!("amqps://localhost:{tls_port}/%2f"));
    settings.amqp.tls.ca_file = Some(pki.file("ca.pem"));
    settings.amqp.tls.client_certificate_file = Some(pki.file("client.pem"));
    settings
        .validate()
        .expect("the certificate files are usable");
    let connection = print_abort_worker::amqp::connect(&settings.amqp, "test")
        .await
        .expect("mutual TLS with EXTERNAL connects");
    let listing = nodes
        .ctl(
            0,
            &[
                "list_connections",
                "user",
                "auth_mechanism",
                "ssl",
                "--formatter",
                "json",
            ],
        )
        .await;
    let connections: Vec<Value> = serde_json::from_str(&listing).expect("JSON connections");
    assert!(
        connections.iter().any(|c| c["user"] == CLIENT_USER
            && c["auth_mechanism"] == "EXTERNAL"
            && c["ssl"] == true),
        "a TLS connection logged in as {CLIENT_USER} with EXTERNAL: {listing}"
    );
    let _ = connection.close(200, "done".into()).await;

    let event = one_command(settings.clone(), &nodes.nodes[0].url()).await;
    assert_eq!(event["data"]["outcome"], "succeeded", "{event}");

    drop(nodes);
}
