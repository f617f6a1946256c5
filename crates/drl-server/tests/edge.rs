//! The edge under slow, silent and stalling clients, over real sockets (docs/api.md, "Input
//! limits"; SECURITY.md): a stalled body holds no in-flight place and is answered 408, silent
//! and idle connections are closed on both listeners, the HTTP/2 stream cap is announced, TLS
//! handshakes count in the connection cap and time out, and connections that never sent a
//! request do not hold shutdown.
//!
//! The timeouts are short (a second or two) and every bound waited for is several times longer
//! ([`DEADLINE`]), so a loaded machine slows the tests down without failing them.

#![allow(clippy::unwrap_used)] // Test code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use drl_core::{Limiter, Rules};
use drl_server::limits::{EdgeLimits, Gate};
use drl_server::tls::{ServerTls, TlsConfig};
use drl_server::{Metrics, Node, serve_all_draining};
use drl_testkit::ca::TestCa;
use drl_testkit::{DEADLINE, wait_until};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A check's JSON body.
const CHECK: &str = r#"{"user_id": "u", "endpoint": "/e"}"#;

/// Both APIs of a node on loopback ports.
struct EdgeNode {
    http: SocketAddr,
    grpc: SocketAddr,
    metrics: Arc<Metrics>,
    gate: Arc<Gate>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl EdgeNode {
    async fn start(limits: EdgeLimits) -> Self {
        Self::start_with(limits, None, Duration::from_secs(10)).await
    }

    /// With TLS if given, and `drain` as the shutdown's drain timeout.
    async fn start_with(limits: EdgeLimits, tls: Option<Arc<ServerTls>>, drain: Duration) -> Self {
        let metrics = Arc::new(Metrics::new());
        let node = Node::new(Limiter::new(Rules::builtin()), Arc::clone(&metrics))
            .with_limits(limits)
            .with_tls(tls);
        let gate = Arc::clone(&node.gate);
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_all_draining(
            http,
            grpc,
            node,
            async {
                let _ = stopped.await;
            },
            drain,
        ));
        Self {
            http: http_addr,
            grpc: grpc_addr,
            metrics,
            gate,
            stop: Some(stop),
            task,
        }
    }

    /// Signals the shutdown and waits (at most `within`) for the node to return.
    async fn stop_within(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(within, &mut self.task).await;
        result
            .unwrap_or_else(|_| panic!("the node did not stop within {within:?}"))
            .unwrap()
            .unwrap();
    }

    async fn stop(self) {
        self.stop_within(DEADLINE).await;
    }

    /// Sends `request` on a new HTTP connection; the status of the answer, or `None` if the
    /// connection was closed without one.
    async fn send(&self, request: &[u8]) -> Option<u16> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.http).await.ok()?;
            stream.write_all(request).await.ok()?;
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response).await;
            status_of(&response)
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("answered or closed in time")
    }

    async fn check(&self) -> Option<u16> {
        self.send(&check_request(CHECK.len(), CHECK, "close")).await
    }
}

/// The head of `POST /v1/check` declaring `length` bytes of body, then `body`.
fn check_request(length: usize, body: &str, connection: &str) -> Vec<u8> {
    format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\nconnection: {connection}\r\n\r\n{body}"
    )
    .into_bytes()
}

/// The status code of a raw HTTP/1.1 response, if it is one.
fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Reads from `stream` until the server closes it (end of stream or reset), for at most
/// `within`; what was read, or `None` if it was still open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut read = Vec::new();
    let closing = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, closing).await.ok()?;
    Some(read)
}

/// Whether the server has not closed `stream` (nothing to read within a moment).
async fn still_open(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
        .await
        .is_err()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// A request body that sends its first 10 bytes, then nothing, ever.
struct Stalled {
    sent: bool,
}

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"user_id\"")))))
    }
}

/// The value of SETTINGS_MAX_CONCURRENT_STREAMS in the first frame a server sends on an
/// HTTP/2 connection (its SETTINGS), if present.
async fn announced_streams(addr: SocketAddr) -> Option<u32> {
    let mut stream = connect(addr).await;
    stream.write_all(H2_PREFACE).await.unwrap();
    let read = async {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[3], 4, "the server's first frame is its SETTINGS");
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await.unwrap();
        payload.chunks_exact(6).find_map(|setting| {
            (setting[..2] == [0, 3]).then(|| u32::from_be_bytes(setting[2..].try_into().unwrap()))
        })
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("SETTINGS in time")
}

// --- Issue 15, item 1: stalled bodies --------------------------------------------------------

#[tokio::test]
async fn stalled_http1_bodies_hold_no_in_flight_place_and_are_answered_408() {
    let node = EdgeNode::start(EdgeLimits {
        max_in_flight: 8,
        body_read_timeout: Duration::from_secs(2),
        ..EdgeLimits::default()
    })
    .await;
    // Eight requests declare 200 bytes of body and send 10.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = connect(node.http).await;
        stream
            .write_all(&check_request(200, "{\"user_id\"", "close"))
            .await
            .unwrap();
        stalled.push(stream);
    }
    wait_until("the eight heads are read", async || {
        node.metrics
            .encode()
            .contains("drl_http_requests_in_flight 8\n")
    })
    .await;
    // A legitimate check is answered at once: the stalled ones hold no place.
    assert_eq!(node.check().await, Some(200));
    assert_eq!(node.gate.in_flight(), 0);
    // Each stalled one is answered 408 once its body is late, and closed.
    for mut stream in stalled {
        let answer = closed_within(&mut stream, DEADLINE)
            .await
            .expect("a stalled body is answered and closed in time");
        assert_eq!(
            status_of(&answer),
            Some(408),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            String::from_utf8_lossy(&answer).contains("body_read_timeout"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(node.check().await, Some(200));
    node.stop().await;
}

#[tokio::test]
async fn stalled_http2_streams_hold_no_in_flight_place_and_are_answered_408() {
    let node = EdgeNode::start(EdgeLimits {
        max_in_flight: 8,
        body_read_timeout: Duration::from_secs(2),
        ..EdgeLimits::default()
    })
    .await;
    // Cleartext HTTP/2 on the HTTP port: eight streams of one connection stall their bodies.
    let tcp = connect(node.http).await;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let request = hyper::Request::post(format!("http://{}/v1/check", node.http))
            .header("content-type", "application/json")
            .header("content-length", "200")
            .body(Stalled { sent: false })
            .unwrap();
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            sender
                .send_request(request)
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    wait_until("the eight heads are read", async || {
        node.metrics
            .encode()
            .contains("drl_http_requests_in_flight 8\n")
    })
    .await;
    assert_eq!(node.check().await, Some(200));
    for stream in streams {
        let status = tokio::time::timeout(DEADLINE, stream)
            .await
            .expect("a stalled stream is answered in time")
            .unwrap();
        assert_eq!(status, 408);
    }
    node.stop().await;
}

#[tokio::test]
async fn http2_connections_are_told_the_stream_cap_on_both_listeners() {
    let node = EdgeNode::start(EdgeLimits {
        max_streams: 4,
        ..EdgeLimits::default()
    })
    .await;
    assert_eq!(announced_streams(node.http).await, Some(4));
    assert_eq!(announced_streams(node.grpc).await, Some(4));
    node.stop().await;
    // The default is announced too.
    let node = EdgeNode::start(EdgeLimits::default()).await;
    assert_eq!(
        announced_streams(node.grpc).await,
        Some(drl_server::limits::DEFAULT_MAX_STREAMS)
    );
    node.stop().await;
}

// --- Issue 15, item 2: idle connections ------------------------------------------------------

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_on_both_listeners() {
    let node = EdgeNode::start(EdgeLimits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..EdgeLimits::default()
    })
    .await;
    let started = Instant::now();
    // HTTP: a connection that sends nothing, one that sends half its headers, one kept alive
    // after an answered check.
    let mut silent = connect(node.http).await;
    let mut half = connect(node.http).await;
    half.write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut kept = connect(node.http).await;
    kept.write_all(&check_request(CHECK.len(), CHECK, "keep-alive"))
        .await
        .unwrap();
    // gRPC: a connection that sends nothing, and one that sends the HTTP/2 preface only.
    let mut grpc_silent = connect(node.grpc).await;
    let mut grpc_preface = connect(node.grpc).await;
    grpc_preface.write_all(H2_PREFACE).await.unwrap();
    // An HTTP/2 client that made a call and then stays idle (a gRPC health check).
    let tcp = connect(node.grpc).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let grpc_idle = tokio::spawn(connection);
    let call = hyper::Request::post(format!("http://{}/grpc.health.v1.Health/Check", node.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let response = sender.send_request(call).await.unwrap();
    assert_eq!(response.status(), 200);
    let trailers = response.into_body().collect().await.unwrap();
    assert_eq!(
        trailers.trailers().unwrap().get("grpc-status").unwrap(),
        "0"
    );

    let (silent, half, kept, grpc_silent, grpc_preface) = tokio::join!(
        closed_within(&mut silent, DEADLINE),
        closed_within(&mut half, DEADLINE),
        closed_within(&mut kept, DEADLINE),
        closed_within(&mut grpc_silent, DEADLINE),
        closed_within(&mut grpc_preface, DEADLINE),
    );
    assert!(silent.is_some(), "a silent HTTP connection stays open");
    assert!(half.is_some(), "half-sent headers keep the connection open");
    let kept = kept.expect("an idle keep-alive connection stays open");
    assert_eq!(status_of(&kept), Some(200));
    assert!(grpc_silent.is_some(), "a silent gRPC connection stays open");
    assert!(
        grpc_preface.is_some(),
        "a gRPC connection without calls stays open"
    );
    tokio::time::timeout(DEADLINE, grpc_idle)
        .await
        .expect("an idle gRPC connection is closed")
        .unwrap()
        .unwrap();
    // Not before their time, either (the earliest is the header read timeout).
    assert!(started.elapsed() >= Duration::from_secs(1));
    node.stop().await;
}

#[tokio::test]
async fn health_gets_through_once_silent_connections_fill_the_cap() {
    let node = EdgeNode::start(EdgeLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(1),
        ..EdgeLimits::default()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(node.http).await);
    }
    wait_until("the silent connections fill the cap", async || {
        node.gate.connections() == 4
    })
    .await;
    // They are closed after the header read timeout, and health answers again.
    wait_until("/healthz answers", async || {
        node.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            == Some(200)
    })
    .await;
    node.stop().await;
}

// --- Issue 21, item 2: TLS handshakes --------------------------------------------------------

/// TLS files signed by a fresh CA, in a directory of this test.
fn tls(test: &str) -> Arc<ServerTls> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drl-edge-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    };
    TestCa::new("edge test CA")
        .leaf(&["localhost"], 1)
        .write(&files.cert, &files.key);
    Arc::new(ServerTls::load(files).unwrap())
}

#[tokio::test]
async fn tls_handshakes_in_progress_count_in_the_connection_cap() {
    let node = EdgeNode::start_with(
        EdgeLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(60),
            ..EdgeLimits::default()
        },
        Some(tls("cap")),
        Duration::from_secs(10),
    )
    .await;
    // Two connections that never send a ClientHello take the two places.
    let mut first = connect(node.http).await;
    let mut second = connect(node.grpc).await;
    wait_until("the handshakes in progress are counted", async || {
        node.gate.connections() == 2
    })
    .await;
    // A third is closed at once, while the two handshakes are still waited for.
    let mut third = connect(node.http).await;
    closed_within(&mut third, DEADLINE)
        .await
        .expect("a connection over the cap is closed at once");
    assert!(still_open(&mut first).await);
    assert!(still_open(&mut second).await);
    // Connections that never sent a request do not hold shutdown.
    node.stop().await;
}

#[tokio::test]
async fn a_tls_handshake_not_finished_within_the_header_read_timeout_is_dropped() {
    let node = EdgeNode::start_with(
        EdgeLimits {
            header_read_timeout: Duration::from_secs(1),
            ..EdgeLimits::default()
        },
        Some(tls("timeout")),
        Duration::from_secs(10),
    )
    .await;
    let mut http = connect(node.http).await;
    let mut grpc = connect(node.grpc).await;
    // Five times the timeout: a loaded machine is slow, not wrong.
    let within = Duration::from_secs(5);
    let (http, grpc) = tokio::join!(
        closed_within(&mut http, within),
        closed_within(&mut grpc, within)
    );
    assert!(http.is_some(), "the HTTP handshake was not timed out");
    assert!(grpc.is_some(), "the gRPC handshake was not timed out");
    wait_until("their places are given back", async || {
        node.gate.connections() == 0
    })
    .await;
    node.stop().await;
}

// --- Issue 21, item 3: shutdown --------------------------------------------------------------

#[tokio::test]
async fn connections_that_never_sent_a_request_do_not_hold_shutdown() {
    // A drain timeout far above the bound waited for: the node must not need it.
    let node = EdgeNode::start_with(
        EdgeLimits {
            header_read_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
            ..EdgeLimits::default()
        },
        None,
        Duration::from_secs(600),
    )
    .await;
    let mut grpc_silent = connect(node.grpc).await;
    let mut grpc_preface = connect(node.grpc).await;
    grpc_preface.write_all(H2_PREFACE).await.unwrap();
    let mut http_silent = connect(node.http).await;
    let mut kept = connect(node.http).await;
    kept.write_all(&check_request(CHECK.len(), CHECK, "keep-alive"))
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    wait_until("all four are accepted", async || {
        node.gate.connections() == 4
    })
    .await;

    node.stop_within(DEADLINE).await;
    for stream in [
        &mut grpc_silent,
        &mut grpc_preface,
        &mut http_silent,
        &mut kept,
    ] {
        assert!(closed_within(stream, DEADLINE).await.is_some());
    }
}
