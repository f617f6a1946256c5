//! The gRPC API (docs/api.md) as tonic services over the same [`Node`] as the HTTP API:
//!
//! - `drl.v1.RateLimiter/Check`: a batch of up to [`MAX_BATCH`] `(user_id, endpoint, hits)`
//!   checks, answered in order. An invalid item gets its own error and is not counted; the
//!   others are decided as usual.
//! - `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: the domain's descriptor
//!   rules, all or nothing over the request's descriptors (see `envoy.rs`). The native
//!   rules are the domain `drl` with descriptors `user_id`, `endpoint`.
//! - `grpc.health.v1.Health`, for the node (`""`) and both services: SERVING while the node is
//!   ready as `GET /readyz` says (the store answers, strict mode can be met), NOT_SERVING
//!   otherwise; asked of the store every [`HEALTH_EVERY`].
//!
//! Every failure of a call is a [`GrpcError`], turned into a gRPC status in one place
//! ([`GrpcError::code`]); the per-item errors of a batch use the same codes. Protobuf types stay
//! in this module: the limiter sees `&str` and `u32`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use drl_core::limiter::LimiterError;
use drl_core::{CheckError, Decision, Store, StoreError};
use drl_proto::drl::v1 as native;
use drl_proto::envoy::service::ratelimit::v3 as rls;
use futures_util::future::join_all;
use native::rate_limiter_server::{RateLimiter, RateLimiterServer};
use rls::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use crate::envoy::{EnvoyError, EnvoyRequest, proto_response};
use crate::node::Node;
use crate::tls::Api;
use drl_proto::json::{CheckResponse, HitsOutOfRange, checked_hits};

pub use drl_proto::MAX_BATCH;

/// How often the gRPC health service asks the store whether the node is ready.
pub const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves the gRPC API of a node on `listener` until `shutdown` completes, then stops accepting
/// connections, closes those that never made a call and returns once the calls in flight are
/// answered. Over TLS if the node has [`Node::tls`]. The connections are served as
/// [`crate::edge`] says (HTTP/2 only; timeouts, stream and connection caps).
pub async fn serve<S: Store>(
    listener: TcpListener,
    node: impl Into<Node<S>>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let node = node.into();
    let tls = node.tls.clone();
    let limits = *node.gate.limits();
    let (gate, metrics) = (Arc::clone(&node.gate), Arc::clone(&node.metrics));
    let limiter = node.limiter.clone();
    let api = GrpcApi::new(node);
    let (health, health_service) = tonic_health::server::health_reporter();
    // The readiness of `GET /readyz`, followed: known before the first call is served (bounded
    // by the store's timeout), then asked again every HEALTH_EVERY until the server stops.
    let mut serving = follow_readiness::<S>(&health, &limiter, None).await;
    let follower = tokio::spawn(async move {
        let mut every = tokio::time::interval(HEALTH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            serving = follow_readiness::<S>(&health, &limiter, serving).await;
        }
    });
    let routes = Routes {
        should_rate_limit: Arc::new(api.clone()),
        max_message_bytes: limits.max_message_bytes,
        native: RateLimiterServer::new(api.clone())
            .max_decoding_message_size(limits.max_message_bytes),
        envoy: RateLimitServiceServer::new(api).max_decoding_message_size(limits.max_message_bytes),
        health: health_service,
    };
    let no_checks: Option<Arc<crate::h1::NoChecks>> = None;
    let served = crate::edge::serve(
        listener,
        tls,
        Api::Grpc,
        gate,
        metrics,
        routes,
        no_checks,
        shutdown,
    )
    .await;
    follower.abort();
    served
}

/// The three services by the first segment of the path: one prefix comparison per call, where a
/// general router would match patterns, collect path parameters and clone a boxed service. A
/// path of no service is answered UNIMPLEMENTED, as tonic's router does. Envoy's
/// `ShouldRateLimit` without compression is served by [`crate::unary`], not tonic.
struct Routes<S, H> {
    /// Behind one `Arc`: the routes are cloned for every call, a node is several `Arc`s.
    should_rate_limit: Arc<GrpcApi<S>>,
    max_message_bytes: usize,
    native: RateLimiterServer<GrpcApi<S>>,
    envoy: RateLimitServiceServer<GrpcApi<S>>,
    health: H,
}

impl<S, H: Clone> Clone for Routes<S, H> {
    fn clone(&self) -> Self {
        Self {
            should_rate_limit: Arc::clone(&self.should_rate_limit),
            max_message_bytes: self.max_message_bytes,
            native: self.native.clone(),
            envoy: self.envoy.clone(),
            health: self.health.clone(),
        }
    }
}

/// The future of every route: the generated servers' own boxed future.
type RouteFuture = std::pin::Pin<
    Box<
        dyn Future<
                Output = Result<axum::http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;

impl<S, H, B> tower_service::Service<axum::http::Request<B>> for Routes<S, H>
where
    S: Store,
    H: tower_service::Service<
            axum::http::Request<B>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future = RouteFuture,
        > + NamedService,
    B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = RouteFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The generated servers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let route = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'));
        match route.map(|(service, _)| service) {
            Some(name) if name == <RateLimitServiceServer<GrpcApi<S>> as NamedService>::NAME => {
                let identity = request
                    .headers()
                    .get("grpc-encoding")
                    .is_none_or(|e| e == "identity");
                if identity && route.is_some_and(|(_, method)| method == "ShouldRateLimit") {
                    let api = Arc::clone(&self.should_rate_limit);
                    let max = self.max_message_bytes;
                    Box::pin(async move {
                        Ok(
                            match api.unary_should_rate_limit(request.into_body(), max).await {
                                Ok(response) => response,
                                Err(status) => status.into_http(),
                            },
                        )
                    })
                } else {
                    self.envoy.call(request)
                }
            }
            Some(name) if name == <RateLimiterServer<GrpcApi<S>> as NamedService>::NAME => {
                self.native.call(request)
            }
            Some(name) if name == H::NAME => self.health.call(request),
            _ => Box::pin(std::future::ready(
                Ok(Status::unimplemented("").into_http()),
            )),
        }
    }
}

/// Asks the store whether the node is ready (what `GET /readyz` answers) and, when that changed
/// from `serving`, reports it for the node and both services. Returns what it reported.
async fn follow_readiness<S: Store>(
    health: &tonic_health::server::HealthReporter,
    limiter: &drl_core::Limiter<S>,
    serving: Option<bool>,
) -> Option<bool> {
    let ready = limiter.store().ready().await;
    if serving == Some(ready.is_ok()) {
        return serving;
    }
    let status = match &ready {
        Ok(()) => tonic_health::ServingStatus::Serving,
        Err(e) => {
            tracing::warn!("gRPC health: not serving: {e}");
            tonic_health::ServingStatus::NotServing
        }
    };
    for service in [
        "",
        <RateLimiterServer<GrpcApi<S>> as NamedService>::NAME,
        <RateLimitServiceServer<GrpcApi<S>> as NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
    Some(ready.is_ok())
}

/// A gRPC call the API cannot answer normally.
#[derive(Debug, Error)]
pub enum GrpcError {
    /// A native batch, or an Envoy request, with more than [`MAX_BATCH`] items.
    #[error("{0} items in one request; the maximum is {MAX_BATCH}")]
    TooManyItems(usize),
    /// An Envoy request the limiter refuses (no domain, unknown domain, bad descriptors).
    #[error(transparent)]
    Envoy(EnvoyError),
    /// `hits` (or `hits_addend`) above [`MAX_HITS`](drl_proto::json::MAX_HITS).
    #[error(transparent)]
    HitsOutOfRange(#[from] HitsOutOfRange),
    /// An identifier the limiter refuses (empty, or above 1 KiB).
    #[error(transparent)]
    Invalid(#[from] CheckError),
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// [`EdgeLimits::max_in_flight`](crate::limits::EdgeLimits::max_in_flight) requests are being
    /// answered: this one is shed.
    #[error(
        "overloaded: {0} requests are in flight, the maximum (max_in_flight); retry after a second, or on another node"
    )]
    Overloaded(usize),
}

impl From<LimiterError> for GrpcError {
    fn from(e: LimiterError) -> Self {
        match e {
            LimiterError::Invalid(e) => e.into(),
            LimiterError::Store(e) => e.into(),
        }
    }
}

impl From<EnvoyError> for GrpcError {
    fn from(e: EnvoyError) -> Self {
        match e {
            EnvoyError::Limiter(e) => e.into(),
            other => Self::Envoy(other),
        }
    }
}

impl GrpcError {
    /// The gRPC status code of each error: the one place where errors become codes.
    pub fn code(&self) -> Code {
        match self {
            Self::TooManyItems(_) | Self::Envoy(_) | Self::HitsOutOfRange(_) | Self::Invalid(_) => {
                Code::InvalidArgument
            }
            Self::Store(_) | Self::Overloaded(_) => Code::Unavailable,
        }
    }
}

impl From<GrpcError> for Status {
    fn from(e: GrpcError) -> Self {
        let code = e.code();
        if matches!(e, GrpcError::Store(_)) {
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
pub struct GrpcApi<S>(Node<S>);

impl<S: Store> GrpcApi<S> {
    /// Both services over `node`.
    pub fn new(node: impl Into<Node<S>>) -> Self {
        Self(node.into())
    }
}

impl<S> Clone for GrpcApi<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> GrpcApi<S> {
    /// A place among the requests in flight, or the call is shed (UNAVAILABLE, at once).
    fn admit(&self) -> Result<crate::limits::Place<'_>, GrpcError> {
        self.0.gate.admit().ok_or_else(|| {
            self.0.metrics.shed(crate::metrics::Shed::InFlight);
            GrpcError::Overloaded(self.0.gate.limits().max_in_flight)
        })
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
        let _place = self.admit()?;
        let checks = request.into_inner().checks;
        if checks.len() > MAX_BATCH {
            return Err(GrpcError::TooManyItems(checks.len()).into());
        }
        if S::ANSWERS_AT_ONCE {
            // A store in process. First the batch's memory, all at once (the keys' slots; see
            // `Limiter::prefetch`), so its checks do not wait for it one after another. Then
            // the items in order, one after another: the store does not wait for anything, so
            // running them concurrently would only add the cost of polling a set of futures.
            self.0.limiter.prefetch(
                checks
                    .iter()
                    .map(|check| (check.user_id.as_str(), check.endpoint.as_str())),
            );
            let mut results = Vec::with_capacity(checks.len());
            for check in &checks {
                results.push(self.item(check).await);
            }
            return Ok(Response::new(native::CheckResponse { results }));
        }
        // Items of one (user_id, endpoint), i.e. of one counter, are decided one after another
        // in order; different counters concurrently, so a networked store gets them together
        // (the Redis store decides each master's share in one script call).
        let mut lanes: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, check) in checks.iter().enumerate() {
            lanes
                .entry((check.user_id.as_str(), check.endpoint.as_str()))
                .or_default()
                .push(i);
        }
        let checks = &checks;
        let lanes = lanes.into_values().map(|items| async move {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                out.push((i, self.item(&checks[i]).await));
            }
            out
        });
        let mut results = vec![native::CheckResult::default(); checks.len()];
        for (i, result) in join_all(lanes).await.into_iter().flatten() {
            results[i] = result;
        }
        Ok(Response::new(native::CheckResponse { results }))
    }
}

impl<S: Store> GrpcApi<S> {
    /// One item of a native batch: its decision or its own error.
    async fn item(&self, check: &native::Check) -> native::CheckResult {
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
        native::CheckResult {
            outcome: Some(outcome),
        }
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

#[tonic::async_trait]
impl<S: Store> RateLimitService for GrpcApi<S> {
    async fn should_rate_limit(
        &self,
        request: Request<rls::RateLimitRequest>,
    ) -> Result<Response<rls::RateLimitResponse>, Status> {
        Ok(Response::new(self.envoy(request.into_inner()).await?))
    }
}

impl<S: Store> GrpcApi<S> {
    /// `ShouldRateLimit`, whichever way it came in.
    async fn envoy(
        &self,
        request: rls::RateLimitRequest,
    ) -> Result<rls::RateLimitResponse, GrpcError> {
        let _place = self.admit()?;
        let request = EnvoyRequest::from(request);
        let outcome = self.0.check_envoy(&request).await?;
        Ok(proto_response(&outcome))
    }

    /// `ShouldRateLimit` read, decided and answered by [`crate::unary`].
    async fn unary_should_rate_limit<B>(
        &self,
        body: B,
        max_message_bytes: usize,
    ) -> Result<axum::http::Response<tonic::body::Body>, Status>
    where
        B: hyper::body::Body<Data = axum::body::Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let message = crate::unary::read_message(body, max_message_bytes).await?;
        let request = crate::unary::decode::<rls::RateLimitRequest>(message)?;
        Ok(crate::unary::ok(&self.envoy(request).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_code() {
        assert_eq!(GrpcError::TooManyItems(1001).code(), Code::InvalidArgument);
        assert_eq!(
            GrpcError::Store(StoreError::Unavailable("down".into())).code(),
            Code::Unavailable
        );
    }
}
