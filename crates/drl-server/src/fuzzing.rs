//! Entry points of the fuzz targets in `fuzz/` and of the test that replays their corpora and
//! regression inputs (`tests/fuzz_regressions.rs`). Each takes arbitrary bytes, runs them
//! through a whole parsing path, and panics only when a property fails. Not part of the API.
//!
//! - [`config`]: one to four YAML files (split at `\0\0`) through [`Config`]'s loader, native
//!   and envoyproxy/ratelimit format alike: a config is valid, or refused with diagnostics at a
//!   line and column inside the file.
//! - [`http_check`], [`http_envoy_json`], [`http_admin`]: request bodies through the real axum
//!   router ([`crate::http::router`]) of a node on the memory store, in process: never a 5xx,
//!   every answer's body is the JSON its status promises.
//! - [`http1_stream`]: bytes as all a client sends on one HTTP/1.1 connection, served twice by
//!   fresh nodes: with the plain checks answered without hyper (`h1.rs`), and by hyper alone;
//!   both write the same bytes, their `date` headers aside.
//! - [`grpc_native`], [`grpc_envoy`]: protobuf messages through the tonic services, their
//!   [`StrictCodec`](drl_proto::codec::StrictCodec) and the request validation: OK or
//!   INVALID_ARGUMENT, one result per item asked.

use std::cell::RefCell;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use drl_core::{Limiter, ManualClock, Rules};
use drl_proto::drl::v1 as native;
use drl_proto::envoy::service::ratelimit::v3 as rls;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tower_service::Service;

use crate::config::{Config, ConfigError};
use crate::envoy::{EnvoyRequest, JsonResponse};
use crate::grpc::GrpcApi;
use crate::node::{AdminToken, Node};
use drl_proto::json::{CheckResponse, ErrorResponse};

/// Fuzz target `config`: up to four files, separated by two NUL bytes.
pub fn config(data: &[u8]) {
    let sources = split_files(data);
    match Config::from_sources(&sources) {
        Ok(config) => {
            // A valid config is usable: its view renders, and a limiter built on it decides.
            let view = drl_proto::json::ConfigView::new(&config.rules, 1, None);
            if let Err(e) = serde_json::to_vec(&view) {
                panic!("the view of a valid config does not render: {e}");
            }
            let limiter = Limiter::builder(config.rules)
                .clock(ManualClock::new(0))
                .sweep_interval(None)
                .build();
            let _ = limiter.check("fuzz", "/fuzz", 1);
        }
        Err(ConfigError::Invalid(diagnostics)) => {
            assert!(!diagnostics.is_empty(), "refused without a diagnostic");
            for d in &diagnostics {
                let Some((_, text)) = sources.iter().find(|(name, _)| *name == d.file) else {
                    panic!("diagnostic names no file: {d}");
                };
                let lines = yaml_lines(text);
                assert!(d.line >= 1 && d.column >= 1, "{d}");
                assert!(
                    d.line <= lines + 1,
                    "past the file's end ({lines} lines): {d}"
                );
                assert!(!d.message.is_empty(), "empty message: {d}");
                assert!(!d.message.chars().any(char::is_control), "{d:?}");
            }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("read error without a file: {e}"),
    }
}

/// Lines as YAML counts them: `\n`, `\r\n` and a lone `\r` each end one.
fn yaml_lines(text: &[u8]) -> u64 {
    let breaks = text
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && text.get(i + 1) != Some(&b'\n')))
        .count();
    breaks as u64 + 1
}

fn split_files(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut rest = data;
    while files.len() < 3 {
        let Some(at) = rest.windows(2).position(|w| w == [0, 0]) else {
            break;
        };
        files.push(rest[..at].to_vec());
        rest = &rest[at + 2..];
    }
    files.push(rest.to_vec());
    files
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| (format!("fuzz-{i}.yaml"), bytes))
        .collect()
}

/// The admin token of the fuzzed node.
pub const ADMIN_TOKEN: &str = "fuzz-admin-token";

/// The fuzzed node's native config: rules at every level, several algorithms, abuse protection,
/// a blocklist and an adaptive backend, so that requests reach every branch of the limiter.
pub const NODE_CONFIG: &str = "\
default: {limit: 5, window: 1m}
abuse: {threshold: 3, interval: 10s, ban: 1m, max_ban: 10m}
blocklist: [mallory]
adaptive:
  db: {high: 0.8, low: 0.6, min_factor: 0.1, decrease: 0.5, increase: 0.1, stale_after: 30s}
rules:
  - endpoint: /api/search
    limit: 3
    window: 1s
    algorithm: sliding_log
  - user_id: alice
    limit: 10
    window: 1h
    algorithm: token_bucket
    burst: 4
  - user_id: alice
    endpoint: /api/upload
    limits: [{limit: 2, window: 1s, algorithm: fixed_window}, {limit: 100, window: 1d}]
  - endpoint: /api/report
    limit: 20
    window: 1m
    backends: [db]
  - endpoint: /healthz
    limit: 600
    window: 1m
    abuse: false
  - endpoint: /api/new
    limit: 1
    window: 1m
    shadow_mode: true
";

/// The fuzzed node's Envoy domain (`edge`), in the envoyproxy/ratelimit format.
pub const NODE_DOMAIN: &str = "\
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: path
    value: \"/static/*\"
    rate_limit: {unlimited: true}
  - key: path
    value: \"/api/*/export\"
    share_threshold: true
    rate_limit: {window: 10m, requests_per_unit: 20, algorithm: sliding_log}
  - key: api_key
    rate_limits:
      - {unit: second, requests_per_unit: 10}
      - {unit: day, requests_per_unit: 10000}
    descriptors:
      - key: path
        value: /api/search
        rate_limit: {name: search, unit: minute, requests_per_unit: 60}
        shadow_mode: true
";

/// A node on the memory store with a manual clock, its router and gRPC services, and a
/// runtime to drive them in process (one per thread: the fuzzer's, or a test's).
struct FuzzedNode {
    runtime: tokio::runtime::Runtime,
    state: Node,
    clock: ManualClock,
}

thread_local! {
    static NODE: RefCell<Option<FuzzedNode>> = const { RefCell::new(None) };
}

impl FuzzedNode {
    fn new() -> Self {
        let sources = [
            ("drl.yaml".to_owned(), NODE_CONFIG.as_bytes().to_vec()),
            ("edge.yaml".to_owned(), NODE_DOMAIN.as_bytes().to_vec()),
        ];
        let config = match Config::from_sources(&sources) {
            Ok(config) => config,
            Err(e) => panic!("the fuzzed node's config is refused: {e}"),
        };
        let clock = ManualClock::new(0);
        let limiter = Limiter::builder(config.rules)
            .clock(clock.clone())
            .sweep_interval(None)
            .build();
        let state = Node::from(limiter).with_admin_token(AdminToken::new(ADMIN_TOKEN));
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => panic!("no runtime: {e}"),
        };
        Self {
            runtime,
            state,
            clock,
        }
    }

    /// Runs `f` on this thread's node; time moves on by 100 ms per call, so windows and bans
    /// pass over a long run.
    fn with<R>(f: impl FnOnce(&FuzzedNode) -> R) -> R {
        NODE.with(|node| {
            let mut node = node.borrow_mut();
            let node = node.get_or_insert_with(FuzzedNode::new);
            node.clock.advance(Duration::from_millis(100));
            f(node)
        })
    }

    /// One HTTP request through the router: status, headers and the whole body.
    fn http(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let mut router = crate::http::router(self.state.clone());
        self.runtime.block_on(async move {
            let response = match router.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => panic!("response body unreadable: {e}"),
            };
            (parts.status, parts.headers, body)
        })
    }

    /// One unary gRPC call of `path` with `message` as its request: the status code, and the
    /// response message when there is one.
    fn grpc<Svc>(&self, mut service: Svc, path: &str, message: &[u8]) -> (tonic::Code, Bytes)
    where
        Svc: Service<
                Request<Full<Bytes>>,
                Response = axum::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            >,
    {
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(0);
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://node{path}"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(Bytes::from(frame)));
        let request = match request {
            Ok(request) => request,
            Err(e) => panic!("cannot build the request: {e}"),
        };
        self.runtime.block_on(async move {
            let response = match service.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let collected = match body.collect().await {
                Ok(collected) => collected,
                Err(e) => panic!("response body unreadable: {e}"),
            };
            let status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| parts.headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
            let Some(status) = status else {
                panic!("no grpc-status: {parts:?}");
            };
            let body = collected.to_bytes();
            // The response message, without its 5-byte frame header.
            let message = body
                .get(5..)
                .map_or_else(Bytes::new, Bytes::copy_from_slice);
            (tonic::Code::from(status), message)
        })
    }
}

/// What every HTTP answer of the fuzzed node must be: no server error, and a JSON error body
/// whenever it is not a success.
fn assert_answer(status: StatusCode, body: &[u8]) {
    assert!(
        !status.is_server_error(),
        "{status}: {}",
        String::from_utf8_lossy(body)
    );
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(error) => assert!(!error.error.is_empty(), "{status}: empty error"),
            Err(e) => panic!(
                "{status} without a JSON error ({e}): {}",
                String::from_utf8_lossy(body)
            ),
        }
    }
}

fn json_post(path: &str, body: &[u8]) -> Request<Body> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()));
    match request {
        Ok(request) => request,
        Err(e) => panic!("cannot build the request: {e}"),
    }
}

/// Fuzz target `http_check`: the input as the body of `POST /v1/check`.
pub fn http_check(data: &[u8]) {
    let (status, headers, body) = FuzzedNode::with(|node| node.http(json_post("/v1/check", data)));
    assert_answer(status, &body);
    if status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS {
        let decision: CheckResponse = match serde_json::from_slice(&body) {
            Ok(decision) => decision,
            Err(e) => panic!("{status} without a decision ({e})"),
        };
        assert_eq!(decision.allowed, status == StatusCode::OK);
        assert!(headers.contains_key("ratelimit-limit"), "{headers:?}");
        if !decision.allowed {
            assert!(headers.contains_key(header::RETRY_AFTER), "{headers:?}");
        }
    } else {
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{status}"
        );
    }
}

/// Fuzz target `http1_stream`: the input as all a client sends on one HTTP/1.1 connection of
/// the HTTP listener (then it closes its side), served twice, each time by a fresh node with
/// the fuzzed node's rules and a clock at 0: once with the plain checks answered without hyper
/// (`h1.rs`), once by hyper alone. Both must write the same bytes, `date` headers aside.
pub fn http1_stream(data: &[u8]) {
    let (with_h1, hyper_only) = FuzzedNode::with(|node| {
        let rules = node.state.limiter.rules();
        node.runtime.block_on(async {
            (
                serve_stream(data, Rules::clone(&rules), true).await,
                serve_stream(data, Rules::clone(&rules), false).await,
            )
        })
    });
    let (with_h1, hyper_only) = (without_dates(&with_h1), without_dates(&hyper_only));
    assert!(
        with_h1 == hyper_only,
        "answered without hyper:\n{}\nby hyper:\n{}",
        String::from_utf8_lossy(&with_h1),
        String::from_utf8_lossy(&hyper_only)
    );
}

/// What a fresh node writes on a connection on which `data` is sent, then the client's side
/// closed.
async fn serve_stream(data: &[u8], rules: Rules, h1: bool) -> Vec<u8> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limiter = Limiter::builder(rules)
        .clock(ManualClock::new(0))
        .sweep_interval(None)
        .build();
    let node = Node::from(limiter);
    let limits = *node.gate.limits();
    let checks = h1.then(|| crate::http::CheckRoute::new(node.clone()));
    let router = crate::http::router(node);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let connection = tokio::spawn(crate::edge::Connection::serve_one(
        server,
        crate::tls::Api::Http,
        limits,
        router,
        checks,
    ));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let read = Arc::new(AtomicUsize::new(0));
    let reader = {
        let read = Arc::clone(&read);
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                written.extend_from_slice(&buf[..n]);
                read.fetch_add(n, Ordering::Relaxed);
            }
            written
        })
    };
    let exchange = async {
        // The server may close before it has read everything: what it did not read is lost.
        let _ = to_server.write_all(data).await;
        // Then the server is let answer all it can before the client closes its side: a
        // connection closed while requests are still buffered is answered as far as hyper had
        // got when it saw the end (it stops there), which depends on when it reads.
        let (mut seen, mut still) = (0, 0);
        while still < 64 {
            tokio::task::yield_now().await;
            let now = read.load(Ordering::Relaxed);
            (seen, still) = if now == seen {
                (seen, still + 1)
            } else {
                (now, 0)
            };
        }
        let _ = to_server.shutdown().await;
        reader.await
    };
    let written = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(written)) => written,
        Ok(Err(e)) => panic!("the reader failed: {e}"),
        Err(_) => panic!("the connection did not end (h1: {h1})"),
    };
    connection.abort();
    written
}

/// `bytes` with the value of every `date:` header line replaced by `*`.
fn without_dates(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(8).position(|w| w == b"\r\ndate: ") {
        out.extend_from_slice(&rest[..at + 8]);
        out.push(b'*');
        rest = &rest[at + 8..];
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    out
}

/// Fuzz target `http_envoy_json`: the input as the body of `POST /json`.
pub fn http_envoy_json(data: &[u8]) {
    let (status, _, body) = FuzzedNode::with(|node| node.http(json_post("/json", data)));
    assert_answer(status, &body);
    if status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS {
        let response: JsonResponse = match serde_json::from_slice(&body) {
            Ok(response) => response,
            Err(e) => panic!("{status} without a response ({e})"),
        };
        let request: EnvoyRequest = match serde_json::from_slice(data) {
            Ok(request) => request,
            Err(e) => panic!("{status} for a request that does not parse ({e})"),
        };
        assert_eq!(response.statuses.len(), request.descriptors.len());
        let over = response.overall_code == "OVER_LIMIT";
        assert_eq!(over, status == StatusCode::TOO_MANY_REQUESTS);
    } else {
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{status}"
        );
    }
}

/// Fuzz target `http_admin`: the first byte picks an admin route (and, with its top bit set,
/// leaves the token out); up to the first newline the rest is the route's user id or query,
/// after it the body.
pub fn http_admin(data: &[u8]) {
    let (&selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let (param, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let param = percent_encode(param);
    let (method, uri) = match selector % 6 {
        0 => (Method::PUT, format!("/v1/blocks/{param}")),
        1 => (Method::DELETE, format!("/v1/blocks/{param}")),
        2 => (Method::POST, "/v1/load".to_owned()),
        3 => (Method::GET, format!("/v1/offenders?{param}")),
        4 => (Method::GET, "/v1/blocks".to_owned()),
        _ => (Method::GET, "/v1/config".to_owned()),
    };
    let authorized = selector & 0x80 == 0;
    let mut request = Request::builder()
        .method(method)
        .uri(&uri)
        .header(header::CONTENT_TYPE, "application/json");
    if authorized {
        request = request.header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"));
    }
    let request = match request.body(Body::from(body.to_vec())) {
        Ok(request) => request,
        Err(e) => panic!("cannot build {uri}: {e}"),
    };
    let (status, _, body) = FuzzedNode::with(|node| node.http(request));
    assert_answer(status, &body);
    if selector % 6 < 2 && param.is_empty() {
        // `/v1/blocks/` names no user: no such route, whoever asks.
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    } else if authorized {
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{uri}");
    } else {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

/// Every byte but unreserved ones as `%XX`, so any input makes a valid path or query.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~=&".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Fuzz target `grpc_native`: the input as a `drl.v1.CheckRequest` message.
pub fn grpc_native(data: &[u8]) {
    let (code, message) = FuzzedNode::with(|node| {
        let service =
            native::rate_limiter_server::RateLimiterServer::new(GrpcApi::new(node.state.clone()));
        node.grpc(service, "/drl.v1.RateLimiter/Check", data)
    });
    match native::CheckRequest::decode(data) {
        Err(_) => assert_eq!(code, tonic::Code::InvalidArgument, "undecodable request"),
        Ok(request) if request.checks.len() > crate::grpc::MAX_BATCH => {
            assert_eq!(code, tonic::Code::InvalidArgument);
        }
        Ok(request) => {
            assert_eq!(code, tonic::Code::Ok);
            let response = match native::CheckResponse::decode(message) {
                Ok(response) => response,
                Err(e) => panic!("OK without a response ({e})"),
            };
            assert_eq!(response.results.len(), request.checks.len());
            assert!(response.results.iter().all(|r| r.outcome.is_some()));
        }
    }
}

/// Fuzz target `grpc_envoy`: the input as an Envoy `RateLimitRequest` message.
pub fn grpc_envoy(data: &[u8]) {
    let (code, message) = FuzzedNode::with(|node| {
        let service = rls::rate_limit_service_server::RateLimitServiceServer::new(GrpcApi::new(
            node.state.clone(),
        ));
        node.grpc(
            service,
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            data,
        )
    });
    match rls::RateLimitRequest::decode(data) {
        Err(_) => assert_eq!(code, tonic::Code::InvalidArgument, "undecodable request"),
        Ok(request) => {
            assert!(
                code == tonic::Code::Ok || code == tonic::Code::InvalidArgument,
                "{code:?}"
            );
            if code == tonic::Code::Ok {
                let response = match rls::RateLimitResponse::decode(message) {
                    Ok(response) => response,
                    Err(e) => panic!("OK without a response ({e})"),
                };
                assert_eq!(response.statuses.len(), request.descriptors.len());
            }
        }
    }
}
