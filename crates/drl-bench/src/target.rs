//! The three APIs a benchmark can load, each as a [`Caller`]: one worker's way of sending one
//! request and counting its decisions.
//!
//! - [`Target::Envoy`]: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` in the
//!   domain [`ENVOY_DOMAIN`] with one descriptor `user_id=<u>`, `endpoint=<e>`: one decision.
//! - [`Target::Native`]: `drl.v1.RateLimiter/Check` with a batch of checks: one decision each.
//! - [`Target::Http`]: `POST /v1/check`: 200 allowed, 429 denied.
//!
//! gRPC workers share a few HTTP/2 connections, each multiplexing many calls (the native
//! workers through tonic channels, the Envoy workers on the `h2` crate directly: the leaner
//! path, for the single-decision calls whose client cost is most of a generator's CPU); HTTP
//! workers have one keep-alive HTTP/1.1 connection each (HTTP/1.1 has one request in flight
//! per connection).

use std::future::Future;
use std::time::Duration;

use drl_core::key::{ENDPOINT_KEY, NATIVE_DOMAIN, USER_KEY};
use drl_proto::drl::v1 as native;
use drl_proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use drl_proto::envoy::service::ratelimit::v3 as rls;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, TE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use native::rate_limiter_client::RateLimiterClient;
use rls::rate_limit_response::Code as EnvoyCode;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::BenchError;
use super::keys::{ENDPOINT, user_id};
use drl_proto::codec;
use drl_proto::json::CheckRequest;
use prost::Message;

/// The domain of the Envoy requests: the built-in domain of the native (user, endpoint) pairs,
/// so that the node's native rules decide them.
pub const ENVOY_DOMAIN: &str = NATIVE_DOMAIN;

/// How long connecting may take before the run is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body an HTTP worker reads.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Which API to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Envoy,
    Native,
    Http,
}

impl Target {
    /// The server a target asks when none is given: the default gRPC or HTTP address.
    pub fn default_server(self) -> &'static str {
        match self {
            Self::Envoy | Self::Native => "http://127.0.0.1:8081",
            Self::Http => drl_client::DEFAULT_SERVER,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Envoy => "envoy",
            Self::Native => "native",
            Self::Http => "http",
        }
    }
}

/// What one request got: its decisions, or why some have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: u64,
    pub denied: u64,
    /// Decisions asked for and not received (a failed call counts every check of it).
    pub errors: u64,
    /// Whether the server answered (its latency is then recorded, even for a refusal); false
    /// for a transport failure or a timeout.
    pub answered: bool,
    /// What went wrong, for the first error of a run.
    pub error: Option<String>,
}

impl Outcome {
    /// A call that got no answer: all of its `checks` are errors.
    pub fn failed(checks: usize, error: String) -> Self {
        Self {
            errors: checks as u64,
            error: Some(error),
            ..Self::default()
        }
    }
}

/// One worker's client: sends one request for `keys` (one decision per key) at a time.
pub trait Caller: Send + 'static {
    fn call(&mut self, keys: &[u64], hits: u32) -> impl Future<Output = Outcome> + Send;
}

/// The callers of a run, one per worker, connected before the clock starts.
#[derive(Debug)]
pub enum Callers {
    Envoy(Vec<EnvoyCaller>),
    Native(Vec<NativeCaller>),
    Http(Vec<HttpCaller>),
}

impl Callers {
    /// Connects `workers` callers of `target` to `server`: gRPC workers share `connections`
    /// channels round-robin; HTTP workers have one connection each.
    pub async fn connect(
        target: Target,
        server: &str,
        workers: usize,
        connections: usize,
        domain: &str,
    ) -> Result<Self, BenchError> {
        Ok(match target {
            Target::Envoy => {
                let (addr, uri) = HttpServer::parse(server)?.grpc_uri(SHOULD_RATE_LIMIT)?;
                let mut senders = Vec::with_capacity(connections);
                for _ in 0..connections {
                    senders.push(h2_connect(&addr).await.map_err(BenchError::Connect)?);
                }
                Self::Envoy(
                    (0..workers)
                        .map(|i| EnvoyCaller {
                            sender: Some(senders[i % senders.len()].clone()),
                            addr: addr.clone(),
                            uri: uri.clone(),
                            domain: domain.to_owned(),
                        })
                        .collect(),
                )
            }
            Target::Native => {
                let channels = channels(server, connections).await?;
                Self::Native(
                    (0..workers)
                        .map(|i| NativeCaller {
                            client: RateLimiterClient::new(channels[i % channels.len()].clone()),
                        })
                        .collect(),
                )
            }
            Target::Http => {
                let http = HttpServer::parse(server)?;
                let mut callers = Vec::with_capacity(workers);
                for _ in 0..workers {
                    let mut caller = HttpCaller {
                        server: http.clone(),
                        sender: None,
                    };
                    caller.connect().await.map_err(BenchError::Connect)?;
                    callers.push(caller);
                }
                Self::Http(callers)
            }
        })
    }
}

/// `connections` HTTP/2 channels to `server`, connected now so that a wrong address fails
/// before the run rather than as a run of errors.
async fn channels(server: &str, connections: usize) -> Result<Vec<Channel>, BenchError> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| BenchError::Invalid(format!("invalid server URL {server:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| BenchError::Connect(format!("cannot connect to {server}: {e}")))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// A worker of the Envoy API. It speaks gRPC straight on the `h2` crate (the HTTP/2 that tonic
/// and hyper use underneath), without tonic's channel: a generator sharing the machine with the
/// server under test should spend as little of it as it can (see docs/benchmarks.md).
#[derive(Debug)]
pub struct EnvoyCaller {
    /// The connection this worker shares with others; after a failure, one of its own.
    sender: Option<h2::client::SendRequest<Bytes>>,
    /// `host:port` to reconnect to.
    addr: String,
    /// `ShouldRateLimit` on the server.
    uri: Uri,
    domain: String,
}

/// The method a [`EnvoyCaller`] calls.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Largest gRPC answer an Envoy worker reads.
const MAX_GRPC_MESSAGE: usize = 64 * 1024;

/// The request for key `key`: one descriptor (user_id, endpoint) in `domain` (the bench's
/// default: [`ENVOY_DOMAIN`]).
pub fn envoy_request(domain: &str, key: u64, hits: u32) -> rls::RateLimitRequest {
    let entry = |key: &str, value: String| Entry {
        key: key.to_owned(),
        value,
    };
    rls::RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry(USER_KEY, user_id(key)),
                entry(ENDPOINT_KEY, ENDPOINT.to_owned()),
            ],
            // Envoy's default is 1; 0 must be explicit on the descriptor.
            hits_addend: (hits != 1).then_some(u64::from(hits)),
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

/// A TCP connection to `addr` (within [`CONNECT_TIMEOUT`]), with `TCP_NODELAY`.
async fn tcp_connect(addr: &str) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("cannot connect to {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    Ok(stream)
}

/// An HTTP/2 connection to `addr`, its I/O driven by a task of its own.
async fn h2_connect(addr: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    let stream = tcp_connect(addr).await?;
    let (sender, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| format!("cannot connect to {addr}: HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("bench connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Why a gRPC exchange has no decision.
enum GrpcFailure {
    /// The server answered with an error (a gRPC status, an HTTP status, a malformed message).
    Refused(String),
    /// No answer: the connection failed.
    Lost(String),
}

/// The gRPC status of an answer, from its trailers (or its headers, for a trailers-only
/// answer); `Ok` for status 0. (Not `tonic::Status::from_header_map`, which copies the whole
/// header map on every call and panics on a malformed `grpc-status-details-bin`.)
fn grpc_status(headers: &hyper::HeaderMap) -> Option<Result<(), String>> {
    let code = tonic::Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    if code == tonic::Code::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(Err(status_message(&tonic::Status::new(code, message))))
}

impl EnvoyCaller {
    /// One `ShouldRateLimit` exchange; on a failure of the connection it is dropped, and the
    /// next call makes a new one.
    async fn exchange(&mut self, key: u64, hits: u32) -> Result<EnvoyCode, GrpcFailure> {
        let sender = match &self.sender {
            Some(sender) => sender.clone(),
            None => {
                let sender = h2_connect(&self.addr).await.map_err(GrpcFailure::Lost)?;
                self.sender = Some(sender.clone());
                sender
            }
        };
        let result = self.try_exchange(sender, key, hits).await;
        if let Err(GrpcFailure::Lost(_)) = result {
            self.sender = None;
        }
        result
    }

    async fn try_exchange(
        &self,
        sender: h2::client::SendRequest<Bytes>,
        key: u64,
        hits: u32,
    ) -> Result<EnvoyCode, GrpcFailure> {
        let lost = |e: h2::Error| GrpcFailure::Lost(format!("connection lost: {e}"));
        let refused = GrpcFailure::Refused;
        let frame = codec::frame(&envoy_request(&self.domain, key, hits));
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(())
            .map_err(|e| refused(format!("cannot build the request: {e}")))?;
        let mut sender = sender.ready().await.map_err(lost)?;
        let (response, mut stream) = sender.send_request(request, false).map_err(lost)?;
        // A server may answer before it has read the request (a trailers-only refusal), after
        // which the request's data cannot be sent ("inactive stream"): the answer still counts,
        // so a failed send is judged by the response.
        let _ = stream.send_data(Bytes::from(frame), true);
        let (head, mut body) = response.await.map_err(lost)?.into_parts();
        if head.status != StatusCode::OK {
            return Err(refused(format!("HTTP {} for a gRPC call", head.status)));
        }
        if let Some(status) = grpc_status(&head.headers) {
            // A trailers-only answer: no message.
            status.map_err(refused)?;
            return Err(refused("a gRPC answer without a message".into()));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(lost)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if answer.len() + chunk.len() > MAX_GRPC_MESSAGE {
                return Err(refused(format!("an answer over {MAX_GRPC_MESSAGE} bytes")));
            }
            answer.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(lost)?.unwrap_or_default();
        grpc_status(&trailers)
            .unwrap_or_else(|| Err("a gRPC answer without grpc-status".into()))
            .map_err(refused)?;
        let message = codec::unframe(&answer).ok_or_else(|| {
            refused(format!(
                "a malformed gRPC message of {} bytes",
                answer.len()
            ))
        })?;
        let response = rls::RateLimitResponse::decode(message)
            .map_err(|e| refused(format!("cannot decode the answer: {e}")))?;
        Ok(response.overall_code())
    }
}

impl Caller for EnvoyCaller {
    async fn call(&mut self, keys: &[u64], hits: u32) -> Outcome {
        let mut outcome = Outcome {
            answered: true,
            ..Outcome::default()
        };
        for &key in keys {
            match self.exchange(key, hits).await {
                Ok(EnvoyCode::Ok) => outcome.allowed += 1,
                Ok(EnvoyCode::OverLimit) => outcome.denied += 1,
                Ok(EnvoyCode::Unknown) => {
                    outcome.errors += 1;
                    outcome.error = Some("overall_code UNKNOWN".into());
                }
                Err(GrpcFailure::Refused(e)) => {
                    outcome.errors += 1;
                    outcome.error = Some(e);
                }
                Err(GrpcFailure::Lost(e)) => {
                    outcome.errors += 1;
                    outcome.answered = false;
                    outcome.error = Some(e);
                }
            }
        }
        outcome
    }
}

fn status_message(status: &tonic::Status) -> String {
    format!("gRPC {:?}: {}", status.code(), status.message())
}

/// A worker of the native batch API.
#[derive(Debug)]
pub struct NativeCaller {
    client: RateLimiterClient<Channel>,
}

/// The batch for `keys`.
pub fn native_request(keys: &[u64], hits: u32) -> native::CheckRequest {
    native::CheckRequest {
        checks: keys
            .iter()
            .map(|&key| native::Check {
                user_id: user_id(key),
                endpoint: ENDPOINT.to_owned(),
                hits: (hits != 1).then_some(hits),
            })
            .collect(),
    }
}

impl Caller for NativeCaller {
    async fn call(&mut self, keys: &[u64], hits: u32) -> Outcome {
        let response = match self.client.check(native_request(keys, hits)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Outcome::failed(keys.len(), status_message(&status)),
        };
        let mut outcome = Outcome {
            answered: true,
            ..Outcome::default()
        };
        for result in response.results.iter().take(keys.len()) {
            match &result.outcome {
                Some(native::check_result::Outcome::Decision(d)) if d.allowed => {
                    outcome.allowed += 1;
                }
                Some(native::check_result::Outcome::Decision(_)) => outcome.denied += 1,
                Some(native::check_result::Outcome::Error(e)) => {
                    outcome.errors += 1;
                    outcome.error = Some(format!("check error {:?}: {}", e.code(), e.message));
                }
                None => {
                    outcome.errors += 1;
                    outcome.error = Some("a result without an outcome".into());
                }
            }
        }
        // Every check is accounted for once, however many results came back.
        if response.results.len() != keys.len() {
            outcome.errors += keys.len().saturating_sub(response.results.len()) as u64;
            outcome.error = Some(format!(
                "{} results for {} checks",
                response.results.len(),
                keys.len()
            ));
        }
        outcome
    }
}

/// Where an HTTP worker connects and what it asks for.
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header.
    authority: String,
    /// The server URL's path + `/v1/check`.
    path: String,
}

impl HttpServer {
    /// The check URL of the node at `server`, e.g. `http://127.0.0.1:8080`.
    pub fn parse(server: &str) -> Result<Self, BenchError> {
        let invalid =
            |reason: &str| BenchError::Invalid(format!("invalid server URL {server:?}: {reason}"));
        let uri: Uri = server
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid(
                "expected an http:// URL such as http://127.0.0.1:8080",
            ));
        }
        let authority = uri.authority().ok_or_else(|| invalid("it has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            addr: format!("{}:{port}", authority.host()),
            authority: authority.as_str().to_owned(),
            path: format!("{}/v1/check", uri.path().trim_end_matches('/')),
        })
    }

    /// The address to connect to and the URI of the gRPC method `path` on this server.
    fn grpc_uri(self, path: &str) -> Result<(String, Uri), BenchError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|e| BenchError::Invalid(format!("invalid server URL: {e}")))?;
        Ok((self.addr, uri))
    }
}

/// A worker of the HTTP API, with its keep-alive connection.
#[derive(Debug)]
pub struct HttpCaller {
    server: HttpServer,
    /// None until connected, and after a failure (the next call reconnects).
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpCaller {
    async fn connect(&mut self) -> Result<(), String> {
        let addr = &self.server.addr;
        let stream = tcp_connect(addr).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("bench connection ended: {e}");
            }
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// One exchange; on any failure the connection is dropped, so that a request cut off (by
    /// an error or the worker's timeout) never leaves a half-read answer on a reused connection.
    async fn exchange(&mut self, key: u64, hits: u32) -> HttpAnswer {
        match self.try_exchange(key, hits).await {
            Ok((StatusCode::OK, _)) => HttpAnswer::Allowed,
            Ok((StatusCode::TOO_MANY_REQUESTS, _)) => HttpAnswer::Denied,
            Ok((status, body)) => {
                HttpAnswer::Refused(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
            }
            Err(e) => {
                self.sender = None;
                HttpAnswer::Failed(e)
            }
        }
    }

    /// The status and body of one exchange.
    async fn try_exchange(&mut self, key: u64, hits: u32) -> Result<(StatusCode, Bytes), String> {
        let sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                self.connect().await?;
                self.sender.take().ok_or("not connected")?
            }
        };
        let mut sender = sender;
        let body = serde_json::to_vec(&CheckRequest {
            user_id: user_id(key),
            endpoint: ENDPOINT.to_owned(),
            hits: u64::from(hits),
        })
        .map_err(|e| format!("cannot encode the request: {e}"))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.server.path.as_str())
            .header(HOST, self.server.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        sender
            .ready()
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP error: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        self.sender = Some(sender);
        Ok((status, body.to_bytes()))
    }
}

/// What one HTTP exchange got.
#[derive(Debug)]
enum HttpAnswer {
    Allowed,
    Denied,
    /// An answer other than 200 or 429 (e.g. 400 for an invalid check).
    Refused(String),
    /// No answer: the connection failed.
    Failed(String),
}

impl Caller for HttpCaller {
    async fn call(&mut self, keys: &[u64], hits: u32) -> Outcome {
        let mut outcome = Outcome {
            answered: true,
            ..Outcome::default()
        };
        for &key in keys {
            match self.exchange(key, hits).await {
                HttpAnswer::Allowed => outcome.allowed += 1,
                HttpAnswer::Denied => outcome.denied += 1,
                HttpAnswer::Refused(e) => {
                    outcome.errors += 1;
                    outcome.error = Some(e);
                }
                HttpAnswer::Failed(e) => {
                    outcome.errors += 1;
                    outcome.answered = false;
                    outcome.error = Some(e);
                }
            }
        }
        outcome
    }
}
