//! The gRPC API (DESIGN.md §3) as tonic services over the same [`AppState`] as the HTTP API:
//!
//! - `drl.v1.RateLimiter/Check`: a batch of up to [`MAX_BATCH`] `(user_id, endpoint, hits)`
//!   checks, answered in order. An invalid item gets its own error and is not counted; the
//!   others are decided as usual.
//! - `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, for now only for
//!   descriptors made of exactly the entries `user_id` and `endpoint` (in any order), each checked
//!   as that pair. Other descriptor shapes are refused until the rule engine lands; the domain
//!   must not be empty but does not select rules yet (the rule engine will).
//! - `grpc.health.v1.Health`, reporting SERVING for the node and for both services.
//!
//! Every failure of a call is a [`GrpcError`], turned into a gRPC status in one place
//! ([`GrpcError::code`]); the per-item errors of a batch use the same codes. Protobuf types stay
//! in this module: the limiter sees `&str` and `u32`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use drl_core::limiter::LimiterError;
use drl_core::{CheckError, Decision, Store, StoreError};
use drl_proto::drl::v1 as native;
use drl_proto::envoy::service::ratelimit::v3 as rls;
use native::rate_limiter_server::{RateLimiter, RateLimiterServer};
use rls::rate_limit_response::rate_limit::Unit;
use rls::rate_limit_response::{Code as EnvoyCode, DescriptorStatus, RateLimit};
use rls::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use crate::api::{CheckResponse, HitsOutOfRange, checked_hits};
use crate::http::AppState;

pub use drl_proto::MAX_BATCH;

/// The descriptor entry keys that `ShouldRateLimit` understands until the rule engine lands.
pub const USER_ID_KEY: &str = "user_id";
/// See [`USER_ID_KEY`].
pub const ENDPOINT_KEY: &str = "endpoint";

/// Serves the gRPC API of a node on `listener` until `shutdown` completes, then stops accepting
/// connections and returns once the calls in flight are answered.
pub async fn serve<S: Store>(
    listener: TcpListener,
    node: impl Into<AppState<S>>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let api = GrpcApi(node.into());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RateLimiterServer<GrpcApi<S>>>().await;
    health
        .set_serving::<RateLimitServiceServer<GrpcApi<S>>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(RateLimiterServer::new(api.clone()))
        .add_service(RateLimitServiceServer::new(api))
        .add_service(health_service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(std::io::Error::other)
}

/// A gRPC call the API cannot answer normally.
#[derive(Debug, Error)]
pub enum GrpcError {
    /// A native batch, or an Envoy request, with more than [`MAX_BATCH`] items.
    #[error("{0} items in one request; the maximum is {MAX_BATCH}")]
    TooManyItems(usize),
    /// An Envoy request without a domain.
    #[error("domain must not be empty")]
    EmptyDomain,
    /// An Envoy request without descriptors.
    #[error("descriptors must not be empty")]
    NoDescriptors,
    /// An Envoy descriptor that is not exactly `user_id` and `endpoint`.
    #[error(
        "descriptor {index}: descriptor shape not supported yet (rule engine pending); \
         expected exactly the entries \"{USER_ID_KEY}\" and \"{ENDPOINT_KEY}\""
    )]
    UnsupportedDescriptor { index: usize },
    /// `hits` (or `hits_addend`) above [`MAX_HITS`](crate::api::MAX_HITS).
    #[error(transparent)]
    HitsOutOfRange(#[from] HitsOutOfRange),
    /// An identifier the limiter refuses (empty, or above 1 KiB).
    #[error(transparent)]
    Invalid(#[from] CheckError),
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LimiterError> for GrpcError {
    fn from(e: LimiterError) -> Self {
        match e {
            LimiterError::Invalid(e) => e.into(),
            LimiterError::Store(e) => e.into(),
        }
    }
}

impl GrpcError {
    /// The gRPC status code of each error: the one place where errors become codes.
    pub fn code(&self) -> Code {
        match self {
            Self::TooManyItems(_)
            | Self::EmptyDomain
            | Self::NoDescriptors
            | Self::UnsupportedDescriptor { .. }
            | Self::HitsOutOfRange(_)
            | Self::Invalid(_) => Code::InvalidArgument,
            Self::Store(_) => Code::Unavailable,
        }
    }
}

impl From<GrpcError> for Status {
    fn from(e: GrpcError) -> Self {
        let code = e.code();
        if code == Code::Unavailable {
            tracing::warn!("gRPC call failed: {e}");
        }
        Status::new(code, e.to_string())
    }
}

impl From<GrpcError> for native::CheckError {
    /// The error of one item of a native batch, with the code the whole call would get.
    fn from(e: GrpcError) -> Self {
        let code = match e.code() {
            Code::InvalidArgument => native::check_error::Code::InvalidArgument,
            Code::Unavailable => native::check_error::Code::Unavailable,
            _ => native::check_error::Code::Unspecified,
        };
        Self {
            code: code.into(),
            message: e.to_string(),
        }
    }
}

/// Both services over one node. Cheap to clone: the state is reference counted.
#[derive(Debug)]
pub struct GrpcApi<S>(AppState<S>);

impl<S> Clone for GrpcApi<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// `hits` as the limiter takes it, or the range error.
fn hits(hits: u64) -> Result<u32, GrpcError> {
    Ok(checked_hits(hits)?)
}

#[tonic::async_trait]
impl<S: Store> RateLimiter for GrpcApi<S> {
    async fn check(
        &self,
        request: Request<native::CheckRequest>,
    ) -> Result<Response<native::CheckResponse>, Status> {
        let checks = request.into_inner().checks;
        if checks.len() > MAX_BATCH {
            return Err(GrpcError::TooManyItems(checks.len()).into());
        }
        let mut results = Vec::with_capacity(checks.len());
        for check in &checks {
            let decision = match hits(check.hits.map_or(1, u64::from)) {
                Ok(hits) => self
                    .0
                    .decide(&check.user_id, &check.endpoint, hits)
                    .await
                    .map_err(GrpcError::from),
                Err(e) => Err(e),
            };
            let outcome = match decision {
                Ok(decision) => native::check_result::Outcome::Decision(native_decision(decision)),
                Err(e) => native::check_result::Outcome::Error(e.into()),
            };
            results.push(native::CheckResult {
                outcome: Some(outcome),
            });
        }
        Ok(Response::new(native::CheckResponse { results }))
    }
}

/// The native decision: the same fields as the HTTP body, from the one conversion in `api`.
fn native_decision(d: Decision) -> native::Decision {
    let CheckResponse {
        allowed,
        limit,
        remaining,
        reset_after_ms,
        retry_after_ms,
    } = d.into();
    native::Decision {
        allowed,
        limit,
        remaining,
        reset_after_ms,
        retry_after_ms,
    }
}

/// One descriptor of an Envoy request, as the pair it checks.
#[derive(Debug)]
struct PairCheck<'a> {
    user_id: &'a str,
    endpoint: &'a str,
    hits: u32,
}

/// Reads every descriptor of `request`, or refuses the request.
fn pair_checks(request: &rls::RateLimitRequest) -> Result<Vec<PairCheck<'_>>, GrpcError> {
    if request.domain.is_empty() {
        return Err(GrpcError::EmptyDomain);
    }
    if request.descriptors.is_empty() {
        return Err(GrpcError::NoDescriptors);
    }
    if request.descriptors.len() > MAX_BATCH {
        return Err(GrpcError::TooManyItems(request.descriptors.len()));
    }
    // Envoy's request-level hits_addend: 0 (unset) means 1.
    let request_hits = match request.hits_addend {
        0 => 1,
        n => u64::from(n),
    };
    request
        .descriptors
        .iter()
        .enumerate()
        .map(|(index, descriptor)| {
            let unsupported = || GrpcError::UnsupportedDescriptor { index };
            let [a, b] = descriptor.entries.as_slice() else {
                return Err(unsupported());
            };
            let (user, endpoint) = match (a.key.as_str(), b.key.as_str()) {
                (USER_ID_KEY, ENDPOINT_KEY) => (a, b),
                (ENDPOINT_KEY, USER_ID_KEY) => (b, a),
                _ => return Err(unsupported()),
            };
            Ok(PairCheck {
                user_id: &user.value,
                endpoint: &endpoint.value,
                hits: hits(descriptor.hits_addend.unwrap_or(request_hits))?,
            })
        })
        .collect()
}

#[tonic::async_trait]
impl<S: Store> RateLimitService for GrpcApi<S> {
    async fn should_rate_limit(
        &self,
        request: Request<rls::RateLimitRequest>,
    ) -> Result<Response<rls::RateLimitResponse>, Status> {
        let request = request.into_inner();
        let checks = pair_checks(&request)?;
        Ok(Response::new(self.all_or_nothing(&checks).await?))
    }
}

impl<S: Store> GrpcApi<S> {
    /// Counts every check of an Envoy request, or none when any of them is over its limit.
    ///
    /// First every pair is asked with hits = 0 (which counts nothing), and a pair passes when
    /// its remaining budget covers the hits of all the descriptors of this request that name it.
    /// Only if every pair passes are they counted. This is NOT atomic across descriptors: a
    /// concurrent request may spend a budget between the two passes, and then some descriptors
    /// of this request are counted while another is denied (the answer is then OVER_LIMIT). The
    /// rule-engine work must make a request's descriptors one atomic step in the store.
    async fn all_or_nothing(
        &self,
        checks: &[PairCheck<'_>],
    ) -> Result<rls::RateLimitResponse, GrpcError> {
        let node = &self.0;
        let mut wanted: HashMap<(&str, &str), u64> = HashMap::with_capacity(checks.len());
        for check in checks {
            *wanted.entry((check.user_id, check.endpoint)).or_default() += u64::from(check.hits);
        }
        let mut probes = Vec::with_capacity(checks.len());
        for check in checks {
            let probe = node.check(check.user_id, check.endpoint, 0).await?;
            let needed = wanted[&(check.user_id, check.endpoint)];
            let passes = if needed == 0 {
                probe.decision.allowed
            } else {
                u64::from(probe.decision.remaining) >= needed
            };
            probes.push((probe, passes));
        }

        let decisions = if probes.iter().all(|&(_, passes)| passes) {
            let mut counted = Vec::with_capacity(checks.len());
            for check in checks {
                let decision = node
                    .decide(check.user_id, check.endpoint, check.hits)
                    .await?;
                counted.push(decision);
            }
            counted
        } else {
            // Nothing counted: each descriptor is answered from its probe, and counts in the
            // metrics as denied, since the request was.
            probes
                .into_iter()
                .map(|(probe, passes)| {
                    node.metrics.decision(false, probe.level, probe.took);
                    Decision {
                        allowed: passes,
                        ..probe.decision
                    }
                })
                .collect()
        };

        let overall_ok = decisions.iter().all(|d| d.allowed);
        let statuses = decisions
            .iter()
            .zip(checks)
            .map(|(decision, check)| self.descriptor_status(check, decision))
            .collect();
        Ok(rls::RateLimitResponse {
            overall_code: if overall_ok {
                EnvoyCode::Ok
            } else {
                EnvoyCode::OverLimit
            }
            .into(),
            statuses,
            ..Default::default()
        })
    }

    fn descriptor_status(&self, check: &PairCheck<'_>, decision: &Decision) -> DescriptorStatus {
        let rules = self.0.limiter.rules();
        let window = rules
            .lookup(check.user_id, check.endpoint)
            .1
            .limit()
            .window();
        DescriptorStatus {
            code: if decision.allowed {
                EnvoyCode::Ok
            } else {
                EnvoyCode::OverLimit
            }
            .into(),
            current_limit: Some(RateLimit {
                name: String::new(),
                requests_per_unit: decision.limit,
                unit: unit_of(window).into(),
            }),
            limit_remaining: decision.remaining,
            duration_until_reset: prost_types::Duration::try_from(decision.reset_after).ok(),
            ..Default::default()
        }
    }
}

/// Envoy's unit for a window of exactly one second, minute, hour or day; UNKNOWN for any other
/// window (Envoy only reads the unit to build headers; `requests_per_unit` is still N).
fn unit_of(window: Duration) -> Unit {
    match window.as_secs() {
        _ if window.subsec_nanos() != 0 => Unit::Unknown,
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_exact_windows() {
        assert_eq!(unit_of(Duration::from_secs(1)), Unit::Second);
        assert_eq!(unit_of(Duration::from_secs(60)), Unit::Minute);
        assert_eq!(unit_of(Duration::from_secs(3_600)), Unit::Hour);
        assert_eq!(unit_of(Duration::from_secs(86_400)), Unit::Day);
        assert_eq!(unit_of(Duration::from_secs(120)), Unit::Unknown);
        assert_eq!(unit_of(Duration::from_millis(1_500)), Unit::Unknown);
    }

    #[test]
    fn every_error_has_a_code() {
        assert_eq!(GrpcError::TooManyItems(1001).code(), Code::InvalidArgument);
        assert_eq!(
            GrpcError::Store(StoreError::Unavailable("down".into())).code(),
            Code::Unavailable
        );
    }
}
