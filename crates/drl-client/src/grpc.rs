//! A small client of the native gRPC API, `drl.v1.RateLimiter/Check`, for Rust programs that ask
//! a `drl` node over the network instead of embedding the limiter: one check, or a batch of up
//! to [`MAX_BATCH`](drl_proto::MAX_BATCH) answered in order, each with the same fields as the
//! HTTP API's [`CheckResponse`].
//!
//! ```no_run
//! # async fn example() -> Result<(), drl_client::grpc::GrpcClientError> {
//! use drl_client::grpc::GrpcClient;
//!
//! let client = GrpcClient::connect("http://127.0.0.1:8081").await?;
//! let decision = client.check("alice", "/api/search", 1).await?;
//! if decision.allowed {
//!     // serve the request
//! }
//! # Ok(())
//! # }
//! ```
//!
//! One HTTP/2 connection multiplexes every call; the client is cheap to clone and clones share
//! it. The generated client it wraps stays inside: callers see the API's own types.

use std::time::Duration;

use drl_proto::drl::v1 as native;
use native::rate_limiter_client::RateLimiterClient;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use drl_proto::json::{CheckRequest, CheckResponse, HitsOutOfRange, checked_hits};

/// The server a client asks when none is given.
pub const DEFAULT_GRPC_SERVER: &str = "http://127.0.0.1:8081";
/// How long connecting, and then each call, may take before the client gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A call that got no decision.
#[derive(Debug, Error)]
pub enum GrpcClientError {
    /// The server URL is not usable.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// No connection.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// `hits` outside what a check may ask for; nothing was sent.
    #[error(transparent)]
    Hits(#[from] HitsOutOfRange),
    /// The call failed as a whole (the server refused the batch, or was unreachable).
    #[error("gRPC {code:?}: {message}", code = .0.code(), message = .0.message())]
    Status(#[from] tonic::Status),
    /// The server refused this check (e.g. INVALID_ARGUMENT for an empty user_id).
    #[error("the server refused the check ({code:?}): {message}")]
    Refused {
        code: native::check_error::Code,
        message: String,
    },
    /// The server answered something that is not a decision for each check.
    #[error("unexpected answer from the server: {0}")]
    BadResponse(String),
}

/// A client of one node's native gRPC API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    client: RateLimiterClient<Channel>,
}

impl GrpcClient {
    /// Connects to the node at `server`, e.g. `http://127.0.0.1:8081`, with [`DEFAULT_TIMEOUT`].
    pub async fn connect(server: &str) -> Result<Self, GrpcClientError> {
        Self::connect_with_timeout(server, DEFAULT_TIMEOUT).await
    }

    /// Connects to `server`, giving up on the connection and then on each call after `timeout`.
    pub async fn connect_with_timeout(
        server: &str,
        timeout: Duration,
    ) -> Result<Self, GrpcClientError> {
        let endpoint = Endpoint::from_shared(server.to_owned())
            .map_err(|e| GrpcClientError::InvalidUrl {
                url: server.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| GrpcClientError::Connect {
                url: server.to_owned(),
                source,
            })?;
        Ok(Self::new(channel))
    }

    /// A client over a channel the caller built (TLS, load balancing, its own timeouts).
    pub fn new(channel: Channel) -> Self {
        Self {
            client: RateLimiterClient::new(channel),
        }
    }

    /// Asks whether `user_id` may call `endpoint` `hits` times now (and counts them if so);
    /// `hits = 0` only reads.
    pub async fn check(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u64,
    ) -> Result<CheckResponse, GrpcClientError> {
        let request = CheckRequest {
            user_id: user_id.to_owned(),
            endpoint: endpoint.to_owned(),
            hits,
        };
        let mut results = self.check_batch(std::slice::from_ref(&request)).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(GrpcClientError::BadResponse("no result".into())))
    }

    /// Several checks in one call, each decided on its own and answered in order: an invalid
    /// check gets its own [`GrpcClientError::Refused`], the others their decisions.
    pub async fn check_batch(
        &self,
        checks: &[CheckRequest],
    ) -> Result<Vec<Result<CheckResponse, GrpcClientError>>, GrpcClientError> {
        let checks = checks
            .iter()
            .map(|c| {
                Ok(native::Check {
                    user_id: c.user_id.clone(),
                    endpoint: c.endpoint.clone(),
                    hits: Some(checked_hits(c.hits)?),
                })
            })
            .collect::<Result<Vec<_>, HitsOutOfRange>>()?;
        let asked = checks.len();
        let response = self
            .client
            .clone()
            .check(native::CheckRequest { checks })
            .await?
            .into_inner();
        if response.results.len() != asked {
            return Err(GrpcClientError::BadResponse(format!(
                "{} results for {asked} checks",
                response.results.len()
            )));
        }
        Ok(response.results.into_iter().map(result).collect())
    }
}

/// One check's result as the API's types.
fn result(result: native::CheckResult) -> Result<CheckResponse, GrpcClientError> {
    match result.outcome {
        Some(native::check_result::Outcome::Decision(d)) => Ok(CheckResponse {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after_ms: d.reset_after_ms,
            retry_after_ms: d.retry_after_ms,
        }),
        Some(native::check_result::Outcome::Error(e)) => Err(GrpcClientError::Refused {
            code: e.code(),
            message: e.message,
        }),
        None => Err(GrpcClientError::BadResponse(
            "a result without an outcome".into(),
        )),
    }
}
