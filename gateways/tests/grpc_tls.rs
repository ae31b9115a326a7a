//! TLS and mTLS end to end, with certificates made at test time (a throwaway CA, a server
//! certificate for localhost and 127.0.0.1, client certificates): the engine in process
//! with `EngineConfig.tls`, then `vouchsafe serve --config FILE` with a `[tls]` section
//! driven by the CLI's `--ca`, `--client-cert` and `--client-key`. Every protection has a
//! negative control: no CA, plain http, no client certificate, a client certificate from
//! another CA, and mTLS without a credential.

use gateways::common::client::{self, ClientIdentity};
use gateways::common::cred::Credential;
use gateways::server::{self, EngineConfig, RunningEngine, TlsFiles};
use proto::v1 as pb;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;

/// A certificate and its private key, both PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A throwaway certificate authority.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("ECDSA P-256 key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) used for `purpose`.
    fn sign(&self, common_name: &str, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Pem {
        let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).expect("valid names");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("ECDSA P-256 key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed by the CA");
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// Everything one test needs: the CA, the server's identity, a client identity it signed,
/// and a client identity from an unrelated CA.
struct Pki {
    ca: Ca,
    server: Pem,
    client: Pem,
    foreign_client: Pem,
}

fn pki() -> Pki {
    let ca = Ca::new("Vouchsafe test CA");
    let server = ca.sign("localhost", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let client = ca.sign("merchant-terminal-1", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let foreign_client = Ca::new("Somebody else's CA").sign("intruder", &[], ExtendedKeyUsagePurpose::ClientAuth);
    Pki { ca, server, client, foreign_client }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path
}

impl Pem {
    fn identity(&self) -> ClientIdentity<'_> {
        ClientIdentity { cert_pem: self.cert.as_bytes(), key_pem: self.key.as_bytes() }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    engine: RunningEngine,
    operator: Credential,
    pki: Pki,
}

impl Fixture {
    fn port(&self) -> u16 {
        self.engine.addr.port()
    }
}

/// The engine in process, serving TLS with the server certificate; with `mutual`, also
/// requiring client certificates signed by the CA.
async fn start(mutual: bool) -> Fixture {
    let pki = pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn engine::log::EventLog> = Arc::new(engine::log::embedded::EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let mut config = EngineConfig::new(dir.path().to_path_buf(), keys.clone());
    config.tls = Some(TlsFiles {
        cert: write(dir.path(), "server.pem", &pki.server.cert),
        key: write(dir.path(), "server.key", &pki.server.key),
        client_ca: mutual.then(|| write(dir.path(), "ca.pem", &pki.ca.cert_pem)),
    });
    let engine = server::start(config, log, listener).await.expect("engine starts with TLS");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    Fixture { _dir: dir, engine, operator, pki }
}

/// A fresh request id per call, so every successful call is a new registration.
fn request_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("tls-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A credentialed call (the operator registers a merchant): what the engine answered.
async fn register_merchant(channel: tonic::transport::Channel, operator: &Credential) -> Result<String, tonic::Status> {
    let mut catalog = client::catalog(channel, operator.clone());
    let answer = catalog.register_merchant(pb::RegisterMerchantRequest { request_id: request_id(), name: "Shop".into() }).await?;
    Ok(answer.into_inner().id)
}

/// Connects and makes a credentialed call; panics unless it works.
async fn works(url: &str, ca: Option<&str>, identity: Option<ClientIdentity<'_>>, operator: &Credential) {
    let channel = client::connect_tls(url, ca.map(str::as_bytes), identity).await.unwrap_or_else(|e| panic!("connect to {url}: {e:#}"));
    let merchant = register_merchant(channel, operator).await.unwrap_or_else(|status| panic!("call over {url}: {status:?}"));
    assert!(!merchant.is_empty());
}

/// Connects and makes a credentialed call, which must fail before the engine decides
/// anything: the connection fails, or the call fails with a transport error (TLS 1.3
/// finishes the client's side of the handshake before the server checks the client's
/// certificate, so that refusal reaches the client on its first call). Returns what the
/// client was told.
async fn refused_by_transport(url: &str, ca: Option<&str>, identity: Option<ClientIdentity<'_>>, operator: &Credential) -> String {
    let channel = match client::connect_tls(url, ca.map(str::as_bytes), identity).await {
        Err(error) => return format!("{error:#}"),
        Ok(channel) => channel,
    };
    match register_merchant(channel, operator).await {
        Ok(merchant) => panic!("{url} answered a call it must refuse at the transport (merchant {merchant})"),
        Err(status) => {
            let from_transport = std::error::Error::source(&status).is_some_and(|source| source.is::<tonic::transport::Error>());
            assert!(from_transport, "a transport failure, not an answer of the engine: {status:?}");
            format!("{status:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_ca_works_and_without_it_or_over_http_fails() {
    let fixture = start(false).await;
    assert_eq!(fixture.engine.url(), format!("https://127.0.0.1:{}", fixture.port()));
    let ca = Some(fixture.pki.ca.cert_pem.as_str());
    let localhost = format!("https://localhost:{}", fixture.port());

    // The server certificate names both localhost and 127.0.0.1.
    works(&localhost, ca, None, &fixture.operator).await;
    works(&fixture.engine.url(), ca, None, &fixture.operator).await;
    // `connect` (what every existing caller uses) is the same path.
    let channel = client::connect(&localhost, ca.map(str::as_bytes)).await.expect("connect with the CA");
    register_merchant(channel, &fixture.operator).await.expect("a credentialed call over TLS");

    // Negative controls: a client that does not trust the CA, and a plain-text client.
    let untrusted = refused_by_transport(&localhost, None, None, &fixture.operator).await;
    assert!(untrusted.to_lowercase().contains("certificate"), "the client says why: {untrusted}");
    let other_ca = Ca::new("Somebody else's CA");
    refused_by_transport(&localhost, Some(&other_ca.cert_pem), None, &fixture.operator).await;
    refused_by_transport(&format!("http://127.0.0.1:{}", fixture.port()), ca, None, &fixture.operator).await;
    // A client identity over http is a usage error, not a silent plain-text connection.
    let plain = client::connect_tls(&format!("http://127.0.0.1:{}", fixture.port()), None, Some(fixture.pki.client.identity()))
        .await
        .expect_err("identity needs https");
    assert!(format!("{plain:#}").contains("https://"), "{plain:#}");

    // The failed handshakes did not hurt the server.
    works(&localhost, ca, None, &fixture.operator).await;
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_ca_and_still_a_credential() {
    let fixture = start(true).await;
    let ca = Some(fixture.pki.ca.cert_pem.as_str());
    let localhost = format!("https://localhost:{}", fixture.port());

    works(&localhost, ca, Some(fixture.pki.client.identity()), &fixture.operator).await;

    // Without a client certificate, or with one from another CA, the handshake is refused
    // although the call carries the operator's valid credential.
    let bare = refused_by_transport(&localhost, ca, None, &fixture.operator).await;
    let foreign = refused_by_transport(&localhost, ca, Some(fixture.pki.foreign_client.identity()), &fixture.operator).await;
    assert!(!bare.is_empty() && !foreign.is_empty());

    // The client certificate admits the connection, not the caller: a call without the
    // x-vouchsafe credential metadata is still refused by the engine.
    let channel = client::connect_tls(&localhost, ca.map(str::as_bytes), Some(fixture.pki.client.identity())).await.expect("mTLS connect");
    let mut anonymous = pb::catalog_service_client::CatalogServiceClient::new(channel.clone());
    let status = anonymous.register_merchant(pb::RegisterMerchantRequest { request_id: request_id(), name: "Shop".into() }).await.expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // The same connection with the credential works (the refusal above was the engine's).
    register_merchant(channel, &fixture.operator).await.expect("credentialed call over mTLS");

    works(&localhost, ca, Some(fixture.pki.client.identity()), &fixture.operator).await;
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

fn vouchsafe() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vouchsafe"));
    for name in ["VOUCHSAFE_LISTEN", "VOUCHSAFE_DATA_DIR", "VOUCHSAFE_KEYS", "VOUCHSAFE_NATS_URL", "RUST_LOG"] {
        command.env_remove(name);
    }
    command
}

/// Kills the child by its pid on drop (a failed assertion must not leave a server running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_for_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port} after 30 s; serve said: {}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the CLI in `dir`: (exit code, stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    let output = vouchsafe().args(args).current_dir(dir).output().expect("run vouchsafe");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn serve_with_a_tls_section_and_the_cli_with_ca_and_client_certificate() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    write(root, "ca.pem", &pki.ca.cert_pem);
    write(root, "server.pem", &pki.server.cert);
    write(root, "server.key", &pki.server.key);
    write(root, "client.pem", &pki.client.cert);
    write(root, "client.key", &pki.client.key);
    write(root, "intruder.pem", &pki.foreign_client.cert);
    write(root, "intruder.key", &pki.foreign_client.key);
    assert_eq!(run(root, &["keys", "init", "--out", "keys"]).0, 0, "keys init");
    let port = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"engine\"\nkeys = \"keys\"\n\n[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n"
    );
    write(root, "engine.toml", &config);
    let log = root.join("serve.log");
    let serve = vouchsafe()
        .args(["serve", "--config", "engine.toml"])
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("serve log"))
        .spawn()
        .expect("serve starts");
    let serve = Running(serve);
    wait_for_port(port, &log);

    let url = format!("https://localhost:{port}");
    let tls = ["--connect", url.as_str(), "--ca", "ca.pem", "--client-cert", "client.pem", "--client-key", "client.key"];
    // The operator issues a merchant credential over mTLS (retried while serve replays).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, said) = run(root, &[&["keys", "issue", "merchant", "--name", "Shop", "--keys", "keys", "--out", "shop.cred"][..], &tls[..]].concat());
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "keys issue over mTLS failed ({code}): {said}\nserve said: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }

    // The merchant reaches the engine, which refuses (no such voucher): exit 1, not 2.
    let get = ["merchant", "--cred", "shop.cred", "get", "--voucher", "v1"];
    let (code, said) = run(root, &[&get[..], &tls[..]].concat());
    assert_eq!(code, 1, "the engine answers, and refuses: {said}");
    assert!(said.contains("refused: NotFound"), "{said}");

    // Negative controls, each exit 2 (cannot connect): no client certificate, a client
    // certificate from another CA, no CA, plain http.
    let (code, said) = run(root, &[&get[..], &["--connect", &url, "--ca", "ca.pem"][..]].concat());
    assert_eq!(code, 2, "no client certificate: {said}");
    assert!(said.contains("did not answer") || said.contains("cannot connect"), "a connection failure, said so: {said}");
    let (code, said) =
        run(root, &[&get[..], &["--connect", &url, "--ca", "ca.pem", "--client-cert", "intruder.pem", "--client-key", "intruder.key"][..]].concat());
    assert_eq!(code, 2, "a client certificate from another CA: {said}");
    let (code, said) = run(root, &[&get[..], &["--connect", &url, "--client-cert", "client.pem", "--client-key", "client.key"][..]].concat());
    assert_eq!(code, 2, "without the CA the server is not trusted: {said}");
    let (code, said) = run(root, &[&get[..], &["--connect", &format!("http://127.0.0.1:{port}")][..]].concat());
    assert_eq!(code, 2, "plain http to a TLS engine: {said}");
    // --client-cert without --client-key is a usage error (clap's exit 2).
    let (code, said) = run(root, &[&get[..], &["--connect", &url, "--ca", "ca.pem", "--client-cert", "client.pem"][..]].concat());
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("--client-key"), "{said}");

    // Still serving after the refused handshakes.
    let (code, said) = run(root, &[&get[..], &tls[..]].concat());
    assert_eq!(code, 1, "{said}");

    // The demo drives the mTLS engine: it and its delivery nodes present the client
    // certificate, and everything sold is delivered and audits clean.
    let demo = ["demo", "--keys", "keys", "--data-dir", "demo", "--vouchers", "12", "--json"];
    let output = vouchsafe().args([&demo[..], &tls[..]].concat()).current_dir(root).output().expect("run the demo");
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "demo over mTLS: {said}");
    let summary: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().expect("a JSON line")).expect("JSON");
    assert_eq!(summary["backend"], "connect", "{summary}");
    assert_eq!(summary["audit_ok"], true, "{summary}");
    assert!(summary["delivered"].as_u64().is_some_and(|delivered| delivered > 0), "{summary}");
    // Negative control: without the client certificate the demo cannot connect (exit 2).
    let (code, said) = run(root, &[&demo[..], &["--connect", &url, "--ca", "ca.pem"][..]].concat());
    assert_eq!(code, 2, "demo without a client certificate: {said}");
    drop(serve);
}

/// The delivery node agent reaches an engine that requires mTLS: with the CA and a client
/// certificate it registers and is allocated work; without the certificate it cannot start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_connects_to_an_mtls_engine() {
    let fixture = start(true).await;
    let ca = fixture.pki.ca.cert_pem.as_bytes().to_vec();
    let url = format!("https://localhost:{}", fixture.port());
    let channel = client::connect_tls(&url, Some(&ca), Some(fixture.pki.client.identity())).await.expect("mTLS connect");
    let mut catalog = client::catalog(channel.clone(), fixture.operator.clone());
    let response = catalog
        .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: request_id(), region: "eu".into(), slots_max: 4 })
        .await
        .expect("node credential");
    let node_cred = client::credential_of(response.into_inner()).expect("credential");
    let data = tempfile::tempdir().expect("temp dir");
    let args = |identity: bool| gateways::node::NodeArgs {
        connect: url.clone(),
        cred: node_cred.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        slots_max: 4,
        region: "eu".into(),
        data_dir: data.path().to_path_buf(),
        cache_bytes_max: 1024 * 1024,
        engine_tls: gateways::node::EngineTls {
            ca_pem: Some(ca.clone()),
            client_identity: identity.then(|| (fixture.pki.client.cert.clone().into_bytes(), fixture.pki.client.key.clone().into_bytes())),
        },
        player_tls: None,
    };
    // Negative control: without its client certificate the node cannot register.
    assert!(gateways::node::start(args(false)).await.is_err(), "an mTLS engine refuses a node without a client certificate");
    let node = gateways::node::start(args(true)).await.expect("the node registers over mTLS");
    assert_eq!(node.node_id(), node_cred.id);
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("graceful shutdown");
}
