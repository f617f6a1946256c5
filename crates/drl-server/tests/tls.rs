//! TLS on both APIs, over real loopback sockets, with a throwaway CA made by each test: a
//! client trusting the CA is answered on HTTP and gRPC, one that does not is refused; new
//! certificate files serve new connections while established ones keep theirs; a bad pair
//! keeps the certificate in force; mutual TLS refuses a client without a certificate; the admin
//! listener serves the APIs' certificate or its own (`server.admin.tls`).

#![allow(clippy::unwrap_used)] // Test code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drl_core::{Limiter, Rules};
use drl_proto::drl::v1 as native;
use drl_server::tls::{ServerTls, TlsConfig};
use drl_server::{Metrics, Node};
use drl_testkit::ca::{Leaf, TestCa};
use drl_testkit::node::TestNode;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use native::check_result::Outcome;
use native::rate_limiter_client::RateLimiterClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Upper bound for anything a test waits for; reached only when something is broken.
const DEADLINE: Duration = Duration::from_secs(20);

// --- Certificate files ----------------------------------------------------------------------

/// A fresh directory for one test's files.
fn test_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drl-tls-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces a file the way certificate tools do: write a sibling, rename it over.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes `leaf` as `dir/cert.pem` and `dir/key.pem`; the files of a [`TlsConfig`].
fn install(dir: &Path, leaf: &Leaf) -> TlsConfig {
    let files = TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    };
    replace(&files.key, &leaf.key);
    replace(&files.cert, &leaf.cert);
    files
}

// --- A node over TLS ------------------------------------------------------------------------

/// Both APIs of a node on fresh loopback ports, over TLS.
struct TlsNode {
    http: SocketAddr,
    grpc: SocketAddr,
    tls: Arc<ServerTls>,
    node: TestNode,
}

impl TlsNode {
    async fn start(files: TlsConfig) -> Self {
        let tls = Arc::new(ServerTls::load(files).unwrap());
        let limiter = Limiter::new(Rules::builtin());
        let node = Node::new(limiter, Arc::new(Metrics::new())).with_tls(Some(Arc::clone(&tls)));
        let node = TestNode::start(node).await;
        Self {
            http: node.http,
            grpc: node.grpc,
            tls,
            node,
        }
    }

    async fn stop(self) {
        self.node.stop().await;
    }
}

/// A rustls client config trusting `ca_pem`, presenting `identity` if given.
fn client_config(ca_pem: &str, identity: Option<&Leaf>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` for the name `localhost`.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(DEADLINE, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("the handshake ends in time")
}

/// The server's certificate on a connection.
fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, session) = stream.get_ref();
    session.peer_certificates().unwrap()[0].clone().into_owned()
}

/// An HTTP/1.1 connection over TLS.
struct HttpsClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    cert: CertificateDer<'static>,
}

impl HttpsClient {
    async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let stream = tls_connect(addr, config).await?;
        let cert = peer_cert(&stream);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Self { sender, cert })
    }

    /// `POST /v1/check` for `user`; the status and body.
    async fn check(&mut self, user: &str) -> Result<(u16, String), hyper::Error> {
        let body = format!(r#"{{"user_id":"{user}","endpoint":"/api"}}"#);
        let request = hyper::Request::post("/v1/check")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, self.sender.send_request(request))
            .await
            .expect("answered in time")?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A gRPC channel over TLS trusting `ca_pem`, presenting `identity` if given.
async fn grpc_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?;
    tokio::time::timeout(DEADLINE, endpoint.connect())
        .await
        .expect("connects or fails in time")
}

/// One native check over gRPC; whether it was allowed.
async fn grpc_check(channel: Channel, user: &str) -> Result<bool, tonic::Status> {
    let request = native::CheckRequest {
        checks: vec![native::Check {
            user_id: user.into(),
            endpoint: "/api".into(),
            hits: None,
        }],
    };
    let response = tokio::time::timeout(DEADLINE, RateLimiterClient::new(channel).check(request))
        .await
        .expect("answered in time")?;
    match &response.get_ref().results[0].outcome {
        Some(Outcome::Decision(d)) => Ok(d.allowed),
        other => panic!("not a decision: {other:?}"),
    }
}

// --- Tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn both_apis_answer_a_client_that_trusts_the_ca() {
    let ca = TestCa::new("drl test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], 1);
    let node = TlsNode::start(install(&test_dir("trusted"), &leaf)).await;

    let mut http = HttpsClient::connect(node.http, client_config(&ca.pem(), None, b"http/1.1"))
        .await
        .unwrap();
    assert_eq!(http.cert, leaf.der);
    let (status, body) = http.check("alice").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""allowed":true"#), "{body}");

    let channel = grpc_channel(node.grpc, &ca.pem(), None).await.unwrap();
    assert!(grpc_check(channel, "alice").await.unwrap());

    // ALPN: h2 on the gRPC port (grpc-go and others require it).
    let stream = tls_connect(node.grpc, client_config(&ca.pem(), None, b"h2"))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(stream);
    node.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let ca = TestCa::new("drl test CA");
    let other = TestCa::new("another CA");
    let node = TlsNode::start(install(&test_dir("untrusted"), &ca.leaf(&["localhost"], 1))).await;

    let refused =
        HttpsClient::connect(node.http, client_config(&other.pem(), None, b"http/1.1")).await;
    let e = refused.err().expect("the handshake fails");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(
        grpc_channel(node.grpc, &other.pem(), None).await.is_err(),
        "a gRPC client that does not trust the CA connects"
    );

    // Plaintext on a TLS port gets no answer, only a closed connection.
    let mut plain = TcpStream::connect(node.http).await.unwrap();
    plain
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The server's TLS stack answers garbage with an alert, or just closes.
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer))
        .await
        .expect("the connection is closed in time");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "a plaintext request was answered"
    );

    // The node still serves clients that trust it.
    let channel = grpc_channel(node.grpc, &ca.pem(), None).await.unwrap();
    assert!(grpc_check(channel, "bob").await.unwrap());
    node.stop().await;
}

#[tokio::test]
async fn new_files_serve_new_connections_and_established_ones_go_on() {
    let ca = TestCa::new("drl test CA");
    let dir = test_dir("reload");
    let first = ca.leaf(&["localhost"], 1);
    let files = install(&dir, &first);
    let node = TlsNode::start(files.clone()).await;
    let config = client_config(&ca.pem(), None, b"http/1.1");

    let mut established = HttpsClient::connect(node.http, Arc::clone(&config))
        .await
        .unwrap();
    assert_eq!(established.check("alice").await.unwrap().0, 200);
    assert!(
        !node.tls.reload_if_changed().unwrap(),
        "nothing changed yet"
    );

    // A new pair, with another serial number and another name.
    let second = ca.leaf(&["localhost", "drl-b.test"], 2);
    install(&dir, &second);
    assert!(node.tls.reload_if_changed().unwrap());
    let fresh = HttpsClient::connect(node.http, Arc::clone(&config))
        .await
        .unwrap();
    assert_eq!(fresh.cert, second.der);
    let stream = tls_connect(node.grpc, client_config(&ca.pem(), None, b"h2"))
        .await
        .unwrap();
    assert_eq!(peer_cert(&stream), second.der);
    // (A connection that never speaks HTTP/2 would hold the node's shutdown until its drain
    // timeout.)
    drop(stream);
    // The connection made before the reload goes on, with its certificate.
    assert_eq!(established.cert, first.der);
    assert_eq!(established.check("alice").await.unwrap().0, 200);

    // A certificate whose key is not the one beside it: refused, the second pair stays.
    let third = ca.leaf(&["localhost"], 3);
    replace(&files.cert, &third.cert);
    let e = node.tls.reload_if_changed().unwrap_err();
    assert!(e.to_string().contains("cert.pem"), "{e}");
    assert!(
        !node.tls.reload_if_changed().unwrap(),
        "a refused set is not retried until a file changes"
    );
    let still = HttpsClient::connect(node.http, Arc::clone(&config))
        .await
        .unwrap();
    assert_eq!(still.cert, second.der);
    // Garbage is refused the same way.
    replace(&files.key, "not a key");
    assert!(node.tls.reload_if_changed().is_err());
    assert_eq!(
        HttpsClient::connect(node.http, Arc::clone(&config))
            .await
            .unwrap()
            .cert,
        second.der
    );
    // Its key arrives: the third pair is complete and taken.
    replace(&files.key, &third.key);
    assert!(node.tls.reload_if_changed().unwrap());
    assert_eq!(
        HttpsClient::connect(node.http, config).await.unwrap().cert,
        third.der
    );
    node.stop().await;
}

#[tokio::test]
async fn the_watch_picks_up_new_files_by_itself() {
    let ca = TestCa::new("drl test CA");
    let dir = test_dir("watch");
    let files = install(&dir, &ca.leaf(&["localhost"], 1));
    let node = TlsNode::start(files).await;
    let _watch = drl_server::tls::watch(Arc::clone(&node.tls), Duration::from_millis(50));
    let config = client_config(&ca.pem(), None, b"http/1.1");

    let next = ca.leaf(&["localhost", "drl-next.test"], 7);
    install(&dir, &next);
    drl_testkit::wait_within(DEADLINE, "the new certificate to be served", async || {
        let client = HttpsClient::connect(node.http, Arc::clone(&config))
            .await
            .unwrap();
        client.cert == next.der
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let ca = TestCa::new("drl test CA");
    let clients = TestCa::new("drl client CA");
    let dir = test_dir("mtls");
    let mut files = install(&dir, &ca.leaf(&["localhost"], 1));
    let client_ca = dir.join("clients.pem");
    replace(&client_ca, &clients.pem());
    files.client_ca = Some(client_ca);
    let node = TlsNode::start(files).await;
    let identity = clients.leaf(&["envoy.test"], 10);

    // With a certificate from the client CA: answered on both APIs.
    let mut http = HttpsClient::connect(
        node.http,
        client_config(&ca.pem(), Some(&identity), b"http/1.1"),
    )
    .await
    .unwrap();
    assert_eq!(http.check("alice").await.unwrap().0, 200);
    let channel = grpc_channel(node.grpc, &ca.pem(), Some(&identity))
        .await
        .unwrap();
    assert!(grpc_check(channel, "alice").await.unwrap());

    // Without one, or with one from another CA: no answer. (With TLS 1.3 the client may
    // finish its handshake before the server refuses, so the refusal shows on the request.)
    let stranger = ca.leaf(&["stranger.test"], 11);
    for identity in [None, Some(&stranger)] {
        let config = client_config(&ca.pem(), identity, b"http/1.1");
        if let Ok(mut client) = HttpsClient::connect(node.http, config).await {
            assert!(
                client.check("alice").await.is_err(),
                "answered without a client certificate"
            );
        }
        let refused = match grpc_channel(node.grpc, &ca.pem(), identity).await {
            Ok(channel) => grpc_check(channel, "alice").await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "gRPC answered without a client certificate");
    }
    node.stop().await;
}

#[test]
fn the_config_names_the_files_relative_to_itself() {
    let dir = test_dir("config");
    let path = dir.join("drl.yaml");
    std::fs::write(
        &path,
        "server:\n  tls:\n    cert: tls/drl.crt\n    key: /etc/drl/drl.key\n    client_ca: clients.pem\n\
         store:\n  kind: redis\n  redis:\n    urls: [\"rediss://127.0.0.1:6380\"]\n    tls:\n      ca: ca.pem\n      cert: c.crt\n      key: c.key\n",
    )
    .unwrap();
    let config = drl_server::Config::load(&path).unwrap();
    assert_eq!(
        config.tls,
        Some(TlsConfig {
            cert: dir.join("tls/drl.crt"),
            key: PathBuf::from("/etc/drl/drl.key"),
            client_ca: Some(dir.join("clients.pem")),
        })
    );
    let drl_server::StoreConfig::Redis(redis) = config.store else {
        panic!("not the Redis store");
    };
    let tls = redis.tls.unwrap();
    assert_eq!(tls.ca, Some(dir.join("ca.pem")));
    assert_eq!(tls.client.unwrap().key, dir.join("c.key"));

    // Without `server.tls`: plaintext.
    let plain = drl_server::Config::from_yaml("plain.yaml", "default: {limit: 1, window: 1s}\n");
    assert_eq!(plain.unwrap().tls, None);
}

#[test]
fn bad_tls_settings_are_located() {
    let cases = [
        (
            "server:\n  tls:\n    cert: a.crt\n",
            "missing field `key`",
            3,
        ),
        (
            "server:\n  tls:\n    cert: a.crt\n    key: \"\"\n",
            "must not be empty",
            4,
        ),
        (
            "server:\n  tls:\n    cert: a\n    key: b\n    ca: c\n",
            "unknown field",
            5,
        ),
        (
            "store:\n  kind: redis\n  redis:\n    urls: [\"redis://h:1\"]\n    tls: {ca: ca.pem}\n",
            "not a rediss:// URL",
            4,
        ),
        (
            "store:\n  kind: redis\n  redis:\n    urls: [\"rediss://h:1\"]\n    tls: {cert: c.crt}\n",
            "both `cert` and `key`",
            5,
        ),
    ];
    for (yaml, message, line) in cases {
        let e = drl_server::Config::from_yaml("t.yaml", yaml).unwrap_err();
        let d = &e.diagnostics()[0];
        assert!(d.message.contains(message), "{yaml}: {e}");
        assert_eq!(d.line, line, "{yaml}: {e}");
    }
}

#[tokio::test]
async fn the_admin_listener_serves_the_apis_certificate_or_its_own() {
    let ca = TestCa::new("drl test CA");
    let admin_ca = TestCa::new("drl admin CA");
    let (public, admin) = (ca.leaf(&["localhost"], 1), admin_ca.leaf(&["localhost"], 2));
    let public_tls =
        Arc::new(ServerTls::load(install(&test_dir("admin-public"), &public)).unwrap());
    let admin_tls = Arc::new(ServerTls::load(install(&test_dir("admin-own"), &admin)).unwrap());
    let trust = |ca: &TestCa| client_config(&ca.pem(), None, b"http/1.1");
    let node = |admin_tls: Option<Arc<ServerTls>>| {
        Node::new(Limiter::new(Rules::builtin()), Arc::new(Metrics::new()))
            .with_tls(Some(Arc::clone(&public_tls)))
            .with_admin_tls(admin_tls)
    };

    // Without TLS of its own, the admin listener serves the APIs' certificate.
    let started = TestNode::start_with_admin(node(None)).await;
    let mut client = HttpsClient::connect(started.admin.unwrap(), trust(&ca))
        .await
        .unwrap();
    assert_eq!(client.cert, public.der);
    assert_eq!(
        client.check("alice").await.unwrap().0,
        404,
        "no checks on the admin listener"
    );
    started.stop().await;

    // With its own, that one; the HTTP listener keeps the APIs'.
    let started = TestNode::start_with_admin(node(Some(admin_tls))).await;
    let admin_addr = started.admin.unwrap();
    let client = HttpsClient::connect(admin_addr, trust(&admin_ca))
        .await
        .unwrap();
    assert_eq!(client.cert, admin.der);
    let refused = HttpsClient::connect(admin_addr, trust(&ca)).await;
    assert!(
        refused.is_err(),
        "the admin listener served the APIs' certificate"
    );
    let mut client = HttpsClient::connect(started.http, trust(&ca))
        .await
        .unwrap();
    assert_eq!(client.cert, public.der);
    assert_eq!(client.check("alice").await.unwrap().0, 200);
    started.stop().await;
}

#[test]
fn the_admin_listener_is_read_from_the_config_and_checked() {
    let dir = test_dir("admin-config");
    let path = dir.join("drl.yaml");
    std::fs::write(
        &path,
        "server:\n  admin:\n    addr: 127.0.0.1:9090\n    tls:\n      cert: admin.crt\n      key: admin.key\n",
    )
    .unwrap();
    let config = drl_server::Config::load(&path).unwrap();
    let admin = config.admin.unwrap();
    assert_eq!(admin.addr, "127.0.0.1:9090");
    assert_eq!(admin.tls.unwrap().cert, dir.join("admin.crt"));
    let plain = "server:\n  admin: {addr: \"[::1]:0\"}\n";
    let config = drl_server::Config::from_yaml("t.yaml", plain).unwrap();
    assert_eq!(config.admin.unwrap().tls, None);

    for (yaml, message, line) in [
        ("server:\n  admin: {}\n", "missing field `addr`", 2),
        (
            "server:\n  admin:\n    addr: \"9090\"\n",
            "not an address to listen on",
            3,
        ),
        (
            "server:\n  admin:\n    addr: \"host:99999\"\n",
            "not an address to listen on",
            3,
        ),
        (
            "server:\n  admin:\n    addr: \":9090\"\n",
            "not an address to listen on",
            3,
        ),
        (
            "server:\n  admin:\n    addr: a:1\n    tls: {cert: c}\n",
            "missing field `key`",
            4,
        ),
    ] {
        let e = drl_server::Config::from_yaml("t.yaml", yaml).unwrap_err();
        let d = &e.diagnostics()[0];
        assert!(d.message.contains(message), "{yaml}: {e}");
        assert_eq!(d.line, line, "{yaml}: {e}");
    }
}

#[tokio::test]
async fn the_check_client_speaks_tls_with_a_ca_file() {
    let ca = TestCa::new("drl test CA");
    let dir = test_dir("check-client");
    let node = TlsNode::start(install(&dir, &ca.leaf(&["localhost", "127.0.0.1"], 1))).await;
    let ca_file = dir.join("ca.pem");
    replace(&ca_file, &ca.pem());
    let url = format!("https://127.0.0.1:{}", node.http.port());

    let client = drl_client::Client::new(&url)
        .unwrap()
        .with_ca(&ca_file)
        .unwrap();
    assert!(client.check("alice", "/api", 1).await.unwrap().allowed);

    // The system's roots do not include the test CA.
    let e = drl_client::Client::new(&url)
        .unwrap()
        .check("alice", "/api", 1)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("TLS with"), "{e}");
    // Plain http:// to a TLS port gets no decision either.
    let plain = drl_client::Client::new(&format!("http://127.0.0.1:{}", node.http.port()))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    assert!(plain.check("alice", "/api", 1).await.is_err());
    node.stop().await;
}
