//! The HTTP API (docs/api.md) as an axum [`Router`] over a [`Limiter`].
//!
//! - `POST /v1/check` `{"user_id", "endpoint", "hits"?}` → 200 allowed / 429 denied, with the
//!   decision as JSON and the `RateLimit-*` headers (`Retry-After` on 429).
//! - `POST /json` → an Envoy `RateLimitRequest` as JSON, answered 200 / 429 with the
//!   `RateLimitResponse` as JSON, like envoyproxy/ratelimit's `/json` (`envoy.rs`).
//! - `GET /` → the status page (`status.rs`).
//! - `GET /healthz` → 200 `ok`.
//! - `GET /metrics` → the [`Metrics`] in the OpenMetrics text format.
//! - `GET /readyz` → 200 `ready` once a config is loaded (which it is before the node listens)
//!   and the store answers ([`Store::ready`]); 503 otherwise.
//! - Admin, behind `Authorization: Bearer <token>` ([`AdminToken`](crate::AdminToken)); without a token configured
//!   these answer 404, as if they did not exist:
//!   - `GET /v1/config` → the config in force and its version ([`ConfigView`]);
//!   - `POST /v1/config/reload` → reloads the config file ([`Reloader`](crate::reload::Reloader)): 200 with the new
//!     version, 422 with the diagnostics when the file is refused (the old config stays), 409
//!     when the node was started without a config file;
//!   - `POST /v1/load` `{"backend", "utilization"}` or `{"backend", "latency_ms", "target_ms"}`
//!     → the backend's adaptive factor now in force (400 for an unknown backend or a load out
//!     of range);
//!   - `GET /v1/offenders?limit=N` → the users denied most often (bounded: 1 000 tracked);
//!   - `GET /v1/blocks` → bans (automatic), blocks (manual) and the config's blocklist, with
//!     the time left; `PUT /v1/blocks/{user_id}` with an optional `{"duration": "1h"}` blocks
//!     (for good without one); `DELETE /v1/blocks/{user_id}` lifts a ban or block (204; 404
//!     when there is none).
//! - Anything else: 404 or 405, also with a JSON error.
//!
//! [`router`] serves all of these on one listener. When the admin API has a listener of its own
//! (`--admin-addr`), that one serves the status page, `/metrics`, health and the admin routes
//! (`admin_router`), and the public one the checks and health (`public_router`): there the status
//! page, `/metrics` and the admin routes answer 404.
//!
//! Every failure is an [`ApiError`], turned into a status and a JSON `{"error": ...}` body in
//! one place ([`ApiError::status`]). A request that fails validation is rejected before the
//! limiter sees it, so nothing is counted. Before routing, every request passes the node's
//! [`EdgeLimits`]: headers (431), then the body, read whole up to [`EdgeLimits::max_body_bytes`] (413)
//! within [`EdgeLimits::body_read_timeout`] (408), and only then the in-flight place (503 with
//! `Retry-After`), so a client that stalls its body holds none.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use drl_core::limiter::LimiterError;
use drl_core::{CheckError, Decision, Store, StoreError};
use http_body_util::BodyExt;
use thiserror::Error;

use crate::config::ConfigError;
use crate::edge::BodyTimedOut;
use crate::envoy::{EnvoyError, EnvoyRequest, json_response};
use crate::h1;
use crate::limits::{Gate, Place};
use crate::metrics::{self, Metrics, Shed};
use crate::node::Node;
use drl_proto::json::{
    BlockRequest, BlockView, BlocksView, CheckRequest, CheckResponse, ConfigView, DiagnosticView,
    ErrorResponse, FactorView, HitsOutOfRange, LoadReport, OffenderView, OffendersView,
    ReloadResponse, checked_hits,
};

/// Largest accepted request body by default ([`EdgeLimits::max_body_bytes`]). A check is a few
/// hundred bytes; ids are capped at 1 KiB each.
pub const MAX_BODY_BYTES: usize = crate::limits::DEFAULT_MAX_BODY_BYTES;

/// The routes of a node on one listener: the decision API, health, and the admin API (the
/// status page, `/metrics` and the admin routes).
pub fn router<S: Store>(state: impl Into<Node<S>>) -> Router {
    let state = state.into();
    let routes = decision_routes()
        .merge(health_routes())
        .merge(admin_routes(&state));
    let gate = Arc::clone(&state.gate);
    finish(routes, state, gate)
}

/// The routes of the public listener when the admin API has its own ([`admin_router`]): the
/// decision API and health; the admin API's routes answer 404 here.
pub(crate) fn public_router<S: Store>(state: Node<S>) -> Router {
    let gate = Arc::clone(&state.gate);
    finish(decision_routes().merge(health_routes()), state, gate)
}

/// The routes of the admin listener: the status page, `/metrics`, health and, with a token, the
/// admin routes; a check answers 404 here. Its requests take their in-flight places in `gate`,
/// the admin listener's own, so that a flood of the public listeners cannot shed them.
pub(crate) fn admin_router<S: Store>(state: Node<S>, gate: Arc<Gate>) -> Router {
    let routes = health_routes().merge(admin_routes(&state));
    finish(routes, state, gate)
}

fn decision_routes<S: Store>() -> Router<Shared<S>> {
    Router::new()
        .route("/v1/check", post(check::<S>))
        .route("/json", post(envoy_json::<S>))
}

fn health_routes<S: Store>() -> Router<Shared<S>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
}

/// The status page and `/metrics`, and the admin routes if `state` has a token.
fn admin_routes<S: Store>(state: &Node<S>) -> Router<Shared<S>> {
    let routes = Router::new()
        .route("/", get(crate::status::page))
        .route("/metrics", get(metrics_text::<S>));
    // Without a token the admin routes do not exist: not even a 405 with `Allow:` for a wrong
    // method may show that they would.
    if state.admin_token.is_none() {
        return routes;
    }
    routes
        .route("/v1/config", get(show_config::<S>))
        .route("/v1/config/reload", post(reload_config::<S>))
        .route("/v1/blocks", get(list_blocks::<S>))
        .route("/v1/load", post(report_load::<S>))
        .route("/v1/offenders", get(list_offenders::<S>))
        .route(
            "/v1/blocks/{user_id}",
            put(put_block::<S>).delete(delete_block::<S>),
        )
}

/// The state of the routes: the node behind one reference count, so that a request clones one
/// `Arc` to reach it rather than the node's every field (each a shared count both cores write).
type Shared<S> = Arc<Node<S>>;

impl<S> axum::extract::FromRef<Shared<S>> for Node<S> {
    fn from_ref(shared: &Shared<S>) -> Self {
        Node::clone(shared)
    }
}

/// `routes` with the fallbacks and the edge's limits (requests in flight counted in `gate`),
/// over `state`.
fn finish<S: Store>(routes: Router<Shared<S>>, state: Node<S>, gate: Arc<Gate>) -> Router {
    let edge = Arc::new(Edge {
        gate,
        metrics: Arc::clone(&state.metrics),
    });
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(edge, enforce_limits))
        .with_state(Arc::new(state))
}

/// What [`enforce_limits`] needs, behind one reference count.
#[derive(Debug)]
struct Edge {
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
}

/// The header, body and in-flight limits, before anything else, with every request (fallbacks
/// included) counted in the in-flight gauge while it is answered: a request whose headers are
/// above [`EdgeLimits::max_header_bytes`] is answered 431; its body is then read whole (413 above
/// [`EdgeLimits::max_body_bytes`], 408 past [`EdgeLimits::body_read_timeout`]), and only then does it
/// take an in-flight place, so a client that stalls its body holds none: one arriving while
/// [`EdgeLimits::max_in_flight`] are in flight is answered 503 with `Retry-After` (health and
/// metrics routes excepted, so a saturated node still reports). The place is held until the
/// response is made.
async fn enforce_limits(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    let Edge { gate, metrics } = &*edge;
    let _in_flight = metrics.request_started();
    let limits = gate.limits();
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > limits.max_header_bytes {
        return ApiError::HeadersTooLarge {
            size,
            max: limits.max_header_bytes,
        }
        .into_response();
    }
    if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(body, limits.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let request = Request::from_parts(parts, Body::from(body));
    let _place = match admit(gate, metrics) {
        Ok(place) => place,
        Err(e) => return e.into_response(),
    };
    next.run(request).await
}

/// A place among the requests in flight, or the request is shed: counted, and answered 503.
fn admit<'g>(gate: &'g Gate, metrics: &Metrics) -> Result<Place<'g>, ApiError> {
    gate.admit().ok_or_else(|| {
        metrics.shed(Shed::InFlight);
        ApiError::Overloaded(gate.limits().max_in_flight)
    })
}

/// A request the API cannot answer normally.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The body is not declared as JSON.
    #[error("unsupported content type {0}: send the body as application/json")]
    ContentType(String),
    /// The body is above [`EdgeLimits::max_body_bytes`].
    #[error("request body is larger than {0} bytes, the maximum (max_body_bytes)")]
    BodyTooLarge(usize),
    /// The headers are above [`EdgeLimits::max_header_bytes`].
    #[error(
        "request headers are {size} bytes (names and values); the maximum is {max} bytes (max_header_bytes)"
    )]
    HeadersTooLarge { size: usize, max: usize },
    /// [`EdgeLimits::max_in_flight`] requests are being answered: this one is shed.
    #[error(
        "overloaded: {0} requests are in flight, the maximum (max_in_flight); retry after a second, or on another node"
    )]
    Overloaded(usize),
    /// The body could not be read from the connection.
    #[error("cannot read the request body: {0}")]
    BodyUnreadable(String),
    /// The body was not all in within [`EdgeLimits::body_read_timeout`] of the request's head.
    #[error("the request body was not received within {0:?} (body_read_timeout); send it at once")]
    BodyTimeout(Duration),
    /// A JSON array where the check object should be.
    #[error("invalid request body: expected a JSON object, not an array")]
    NotAnObject,
    /// Not JSON, or not the shape of a check request.
    #[error("invalid request body: {0}")]
    Json(#[from] serde_json::Error),
    /// `hits` outside `0..=MAX_HITS`.
    #[error(transparent)]
    HitsOutOfRange(#[from] HitsOutOfRange),
    /// An identifier the limiter refuses (empty, or above 1 KiB).
    #[error(transparent)]
    Invalid(#[from] CheckError),
    /// An Envoy request the limiter refuses (no domain, bad hits or limit override).
    #[error(transparent)]
    Envoy(EnvoyError),
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists, for another method.
    #[error("method {0} is not allowed on {1}")]
    MethodNotAllowed(Method, String),
    /// An admin route without the right bearer token. Says nothing about what was wrong.
    #[error("unauthorized")]
    Unauthorized,
    /// A reload asked of a node started without a config file.
    #[error(
        "this node runs on the built-in default config: there is no file to reload (start it with --config FILE)"
    )]
    NoConfigFile,
    /// An admin request with a value out of range (e.g. a block's duration).
    #[error("{0}")]
    BadValue(String),
    /// A load report for an unknown backend, or with an invalid load.
    #[error(transparent)]
    Adaptive(#[from] drl_core::limiter::AdaptiveError),
    /// `DELETE /v1/blocks/{user_id}` for a user who is not blocked.
    #[error("user {0:?} is not banned or blocked")]
    NotBlocked(String),
    /// The config file was refused; the previous config stays in force.
    #[error("config refused; the previous config stays in force: {0}")]
    ConfigRefused(ConfigError),
}

impl From<LimiterError> for ApiError {
    fn from(e: LimiterError) -> Self {
        match e {
            LimiterError::Invalid(e) => e.into(),
            LimiterError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The HTTP status of each error: the one place where errors become statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ContentType(_)
            | Self::BodyUnreadable(_)
            | Self::NotAnObject
            | Self::Json(_)
            | Self::HitsOutOfRange(_)
            | Self::Envoy(_)
            | Self::BadValue(_)
            | Self::Adaptive(_)
            | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::NotBlocked(_) => StatusCode::NOT_FOUND,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NoConfigFile => StatusCode::CONFLICT,
            Self::ConfigRefused(ConfigError::Invalid(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ConfigRefused(ConfigError::Read { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, Self::Overloaded(_)) {
            tracing::warn!("request failed: {self}");
        }
        let diagnostics = match &self {
            Self::ConfigRefused(e) => e.diagnostics().iter().map(DiagnosticView::from).collect(),
            _ => Vec::new(),
        };
        let body = ErrorResponse {
            error: self.to_string(),
            diagnostics,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, Self::Overloaded(_) | Self::Store(_)) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

async fn check<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Already read whole by `enforce_limits`: this takes it as it is.
    let body = read_body(body, state.max_body()).await?;
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    Ok(decision_response(
        decide_check(&state, content_type, &body).await?,
    ))
}

/// The decision on a check whose body is in: a JSON body ([`json_object`]'s checks), its hits
/// in range, then the node's decision. The route's and [`CheckRoute`]'s one path.
async fn decide_check<S: Store>(
    node: &Node<S>,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<Decision, ApiError> {
    require_json(content_type)?;
    let request: CheckRequest = parse_object(body)?;
    let hits = checked_hits(request.hits)?;
    Ok(node
        .decide(&request.user_id, &request.endpoint, hits)
        .await?)
}

/// `POST /json`: an Envoy `RateLimitRequest` as JSON → 200 (OK) or 429 (OVER_LIMIT), with the
/// `RateLimitResponse` as JSON (envoyproxy/ratelimit's HTTP form).
async fn envoy_json<S: Store>(
    State(state): State<Shared<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: EnvoyRequest = json_object(&headers, body, state.max_body()).await?;
    let outcome = state.check_envoy(&request).await.map_err(|e| match e {
        EnvoyError::Limiter(e) => ApiError::from(e),
        other => ApiError::Envoy(other),
    })?;
    let status = if outcome.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    Ok((status, Json(json_response(&outcome))).into_response())
}

/// A JSON object body of type `T`: declared as JSON, within `max` bytes, and an object
/// (serde would also read a struct from an array such as `["alice", "/api"]`).
async fn json_object<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<T, ApiError> {
    require_json(headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes))?;
    let body = read_body(body, max).await?;
    parse_object(&body)
}

/// `body` as a JSON object of type `T` ([`json_object`]).
fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::NotAnObject);
    }
    Ok(serde_json::from_slice(body)?)
}

/// Accepts a `Content-Type` of `application/json`, with or without parameters such as
/// `charset`. A value that is not visible ASCII is refused, as `HeaderValue::to_str` refuses it.
fn require_json(value: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError::ContentType("(none)".to_owned()));
    };
    let visible = value.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
    let essence = std::str::from_utf8(value)
        .ok()
        .filter(|_| visible)
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match essence {
        Some(essence) if essence.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::ContentType(format!(
            "{:?}",
            String::from_utf8_lossy(value)
        ))),
    }
}

/// The whole body, at most `max` bytes (413 above, 408 past the body read timeout). A body that
/// comes in one piece (a check of a few hundred bytes, or one [`enforce_limits`] already read)
/// is returned as it is: no copy, no list of chunks.
async fn read_body(mut body: Body, max: usize) -> Result<Bytes, ApiError> {
    if hyper::body::Body::size_hint(&body).lower() > u64::try_from(max).unwrap_or(u64::MAX) {
        return Err(ApiError::BodyTooLarge(max));
    }
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match find_body_timeout(&e) {
            Some(timeout) => ApiError::BodyTimeout(timeout.0),
            None => ApiError::BodyUnreadable(e.to_string()),
        })?;
        // Trailers carry no body.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > max {
            return Err(ApiError::BodyTooLarge(max));
        }
        match &first {
            None => first = Some(data),
            Some(head) => {
                if joined.is_empty() {
                    joined.reserve(len);
                    joined.extend_from_slice(head);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(if joined.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(joined)
    })
}

/// The [`BodyTimedOut`] that `error` is or was caused by, if any.
fn find_body_timeout(error: &(dyn std::error::Error + 'static)) -> Option<BodyTimedOut> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref().copied())
}

/// 200 or 429 with the decision as JSON and as `RateLimit-*` / `Retry-After` headers (the
/// fields of [`Decision::header_fields`], shared with the tower layer).
fn decision_response(decision: Decision) -> Response {
    let status = if decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut response = (status, Json(CheckResponse::from(decision))).into_response();
    let headers = response.headers_mut();
    for (name, value) in decision.header_fields() {
        headers.insert(HeaderName::from_static(name), value.into());
    }
    response
}

/// `POST /v1/check` as [`h1`] answers it without hyper, for a node's HTTP listener: the steps
/// of [`enforce_limits`] once the body is in (an in-flight place), then of [`check`], with the
/// same answers in the same bytes.
#[derive(Debug)]
pub(crate) struct CheckRoute<S>(Arc<Node<S>>);

impl<S> CheckRoute<S> {
    pub(crate) fn new(node: Node<S>) -> Arc<Self> {
        Arc::new(Self(Arc::new(node)))
    }
}

impl<S: Store> h1::Checks for CheckRoute<S> {
    async fn answer(&self, content_type: Option<&[u8]>, body: &[u8], out: h1::Out<'_>) {
        let node = &*self.0;
        let _in_flight = node.metrics.request_started();
        match decide_whole(node, content_type, body).await {
            Ok(decision) => write_decision(decision, out),
            Err(e) => out.response(e.into_response()).await,
        }
    }
}

/// The decision on a check whose body is in, as [`enforce_limits`] (an in-flight place) and
/// [`check`] make it.
async fn decide_whole<S: Store>(
    node: &Node<S>,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<Decision, ApiError> {
    let _place = admit(&node.gate, &node.metrics)?;
    decide_check(node, content_type, body).await
}

/// [`decision_response`] in the bytes hyper writes for it.
fn write_decision(decision: Decision, mut out: h1::Out<'_>) {
    out.status(if decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    });
    out.header("content-type", b"application/json");
    let mut number = itoa::Buffer::new();
    for (name, value) in decision.header_fields() {
        out.header(name, number.format(value).as_bytes());
    }
    // The body is at most 130 bytes (every number at its largest).
    let mut body = [0u8; 256];
    let mut cursor = std::io::Cursor::new(&mut body[..]);
    let written = serde_json::to_writer(&mut cursor, &CheckResponse::from(decision));
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    match written {
        Ok(()) => out.body(&body[..len]),
        Err(_) => out.body(&serde_json::to_vec(&CheckResponse::from(decision)).unwrap_or_default()),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready once the config is loaded (the state exists only then) and the store answers.
async fn readyz<S: Store>(State(state): State<Node<S>>) -> Result<&'static str, ApiError> {
    state.limiter.store().ready().await?;
    Ok("ready")
}

/// Lets an admin request through, or answers 404 (admin disabled) or 401.
fn authorize<S: Store>(state: &Node<S>, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::NotFound(uri.path().to_owned()));
    };
    let presented = headers
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|value| {
            let (scheme, credentials) = value.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then_some(credentials.trim_ascii())
        });
    match presented {
        Some(presented) if token.matches(presented) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

async fn show_config<S: Store>(
    State(state): State<Node<S>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<ConfigView>, ApiError> {
    authorize(&state, &headers, &uri)?;
    // Version first: under a concurrent reload the answer may show the new rules with the
    // previous version, never a version ahead of its rules.
    let version = state.config_version();
    let rules = state.limiter.rules();
    let source = state.reloader.as_ref().map(|r| r.path());
    Ok(Json(
        ConfigView::new(&rules, version, source).with_factors(state.limiter.load_factors()),
    ))
}

async fn reload_config<S: Store>(
    State(state): State<Node<S>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<ReloadResponse>, ApiError> {
    authorize(&state, &headers, &uri)?;
    let reloader = state.reloader.as_ref().ok_or(ApiError::NoConfigFile)?;
    let version = reloader
        .reload_async()
        .await
        .map_err(ApiError::ConfigRefused)?;
    Ok(Json(ReloadResponse {
        version,
        rules: state.limiter.rules().rules().len(),
    }))
}

async fn metrics_text<S: Store>(State(state): State<Node<S>>) -> Response {
    state.metrics.sync_store(&state.limiter.store().stats());
    state.gate.report(&state.metrics);
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(method, uri.path().to_owned())
}

/// `GET /v1/blocks`: automatic bans, manual blocks and the config's blocklist, with time left.
async fn list_blocks<S: Store>(
    State(state): State<Node<S>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<BlocksView>, ApiError> {
    authorize(&state, &headers, &uri)?;
    let now = state.limiter.now_ns();
    let rules = state.limiter.rules();
    let mut blocks: Vec<BlockView> = state
        .limiter
        .bans()
        .list(now)
        .into_iter()
        .map(|ban| BlockView {
            user_id: ban.user_id,
            kind: ban.kind.name().to_owned(),
            remaining_ms: ban
                .until_ns
                .map(|until| until.saturating_sub(now).div_ceil(1_000_000)),
            strike: ban.strike,
        })
        .collect();
    blocks.extend(rules.blocklist().into_iter().map(|user| BlockView {
        user_id: user.to_owned(),
        kind: "config".to_owned(),
        remaining_ms: None,
        strike: 0,
    }));
    Ok(Json(BlocksView { blocks }))
}

/// The `{user_id}` of a block route, read once the caller is authorized: a path that does not
/// decode (invalid UTF-8 after percent-decoding) is a 400 with a JSON error like any other,
/// not axum's plain-text rejection (found by fuzzing, `fuzz/regressions/http_admin/`).
fn path_user_id(user_id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    user_id
        .map(|Path(user_id)| user_id)
        .map_err(|e| ApiError::BadValue(e.body_text()))
}

/// `PUT /v1/blocks/{user_id}`, body optional `{"duration": "1h"}` (permanent without).
async fn put_block<S: Store>(
    State(state): State<Node<S>>,
    user_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Json<BlockView>, ApiError> {
    authorize(&state, &headers, &uri)?;
    let user_id = path_user_id(user_id)?;
    drl_core::key::validate_id("user_id", &user_id)?;
    let body = read_body(body, state.max_body()).await?;
    let request: BlockRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BlockRequest::default()
    } else {
        require_json(headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes))?;
        serde_json::from_slice(&body)?
    };
    let duration = match &request.duration {
        None => None,
        Some(text) => {
            let d =
                drl_core::parse_duration(text).map_err(|e| ApiError::BadValue(e.to_string()))?;
            if d < Duration::from_secs(1) || d > drl_core::abuse::MAX_BAN {
                return Err(ApiError::BadValue(format!(
                    "duration {text:?} is out of range: it must be from 1s to 366d"
                )));
            }
            Some(d)
        }
    };
    let now = state.limiter.now_ns();
    let until =
        duration.map(|d| now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    let ban = state.limiter.bans().block(&user_id, until);
    state.metrics.ban(true);
    if let Some(shared) = &state.shared
        && let Err(e) = shared.publish_ban(&state.limiter, &ban).await
    {
        tracing::warn!("block of {user_id:?} not shared with the other nodes: {e}");
    }
    tracing::info!(
        "user {user_id:?} blocked {}",
        request.duration.as_deref().unwrap_or("for good")
    );
    Ok(Json(BlockView {
        user_id: ban.user_id,
        kind: ban.kind.name().to_owned(),
        remaining_ms: duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        strike: 0,
    }))
}

/// `DELETE /v1/blocks/{user_id}`: lifts a ban or block (not a config blocklist entry).
async fn delete_block<S: Store>(
    State(state): State<Node<S>>,
    user_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers, &uri)?;
    let user_id = path_user_id(user_id)?;
    let mut lifted = state.limiter.bans().unblock(&user_id);
    if let Some(shared) = &state.shared {
        match shared.publish_unblock(&user_id).await {
            Ok(there) => lifted |= there,
            Err(e) => tracing::warn!("unblock of {user_id:?} not shared with the other nodes: {e}"),
        }
    }
    if lifted {
        tracing::info!("user {user_id:?} unblocked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotBlocked(user_id))
    }
}

/// `POST /v1/load`: a backend's load report; answers the backend's factor now in force.
async fn report_load<S: Store>(
    State(state): State<Node<S>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Json<FactorView>, ApiError> {
    authorize(&state, &headers, &uri)?;
    let report: LoadReport = json_object(&headers, body, state.max_body()).await?;
    let load = report.load().map_err(ApiError::BadValue)?;
    let factor = state.limiter.report_load(&report.backend, load)?;
    state.metrics.set_factor(&report.backend, factor);
    if let Some(shared) = &state.shared
        && let Err(e) = shared.publish_factor(&report.backend, factor).await
    {
        tracing::warn!(
            "factor of {:?} not shared with the other nodes: {e}",
            report.backend
        );
    }
    Ok(Json(FactorView {
        backend: report.backend,
        factor,
        reported_ms_ago: Some(0),
    }))
}

/// `GET /v1/offenders?limit=N`: the users denied most often (offenses, counted while abuse
/// protection is on), most first; `limit` from 1 to 1000, default 20.
async fn list_offenders<S: Store>(
    State(state): State<Node<S>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<OffendersView>, ApiError> {
    authorize(&state, &headers, &uri)?;
    let limit = match uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
    {
        None => 20,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=drl_core::abuse::TOP_OFFENDERS).contains(&n) => n,
            _ => {
                return Err(ApiError::BadValue(format!(
                    "limit {text:?} is invalid: it must be a whole number from 1 to {}",
                    drl_core::abuse::TOP_OFFENDERS
                )));
            }
        },
    };
    let offenders = state
        .limiter
        .bans()
        .top_offenders(limit)
        .into_iter()
        .map(|(user_id, denials)| OffenderView { user_id, denials })
        .collect();
    Ok(Json(OffendersView { offenders }))
}
