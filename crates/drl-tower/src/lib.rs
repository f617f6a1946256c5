//! `drl-tower`: rate limiting inside a Rust HTTP service, as a tower [`Layer`] and [`Service`],
//! with drl's core [`Limiter`] on any [`Store`] (the in-memory one, or Redis through
//! `drl-redis`): no `drl` server, no network hop.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use drl_core::{Limiter, Rules};
//! use drl_tower::RateLimitLayer;
//!
//! let limiter = Limiter::new(Rules::builtin()); // 100 requests/minute per user and endpoint
//! let app: Router = Router::new()
//!     .route("/items/{id}", get(|| async { "item" }))
//!     .layer(RateLimitLayer::new(limiter, drl_tower::header("x-user-id")));
//! ```
//!
//! Every request is one check of `(user, endpoint)`, counted when admitted:
//!
//! - **user**: what the user extractor (any closure over the request's [`Parts`]) returns;
//!   [`header`] takes a header's value.
//! - **endpoint**: the route that matched (axum's [`MatchedPath`](axum::extract::MatchedPath),
//!   so `/items/1` and `/items/2` share the counter of `/items/{id}`), else the URI path
//!   (without the query). [`RateLimitLayer::endpoint`] sets another extractor.
//!
//! The answers, with the same header fields as the `drl` server's `POST /v1/check`
//! ([`Decision::header_fields`]):
//!
//! | case | answer |
//! |---|---|
//! | admitted | the inner service's response, plus `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` |
//! | over the limit | **429**, empty body, the three `RateLimit-*` fields and `Retry-After`; the inner service is not called |
//! | no user: the extractor returns `None` or an empty string (with [`header`]: the header is absent, empty, or not UTF-8) | [`MissingUser::Reject`] (default: **401**), or [`MissingUser::Fallback`]: checked as that one user, so all anonymous requests share its counters |
//! | user or endpoint above 1 KiB (the limiter's bound) | **400** |
//! | the store failed (its own `on_error` policy did not decide) | **503** |
//!
//! Layer clones share one limiter (it is a handle), so every copy of the service draws on the
//! same counters.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use drl_core::limiter::LimiterError;
use drl_core::{Decision, Limiter, MemoryStore, Store};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

/// What to do with a request whose user cannot be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingUser {
    /// Answer with this status (empty body) without calling the inner service.
    Reject(StatusCode),
    /// Check it as this user: every such request shares the user's counters.
    Fallback(String),
}

impl Default for MissingUser {
    /// 401 Unauthorized.
    fn default() -> Self {
        Self::Reject(StatusCode::UNAUTHORIZED)
    }
}

type Extractor = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// What every copy of the layer and its services share.
struct Shared<S> {
    limiter: Limiter<S>,
    user: Arc<Extractor>,
    endpoint: Arc<Extractor>,
    missing_user: MissingUser,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            user: Arc::clone(&self.user),
            endpoint: Arc::clone(&self.endpoint),
            missing_user: self.missing_user.clone(),
        }
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("missing_user", &self.missing_user)
            .finish_non_exhaustive()
    }
}

/// The user extractor that reads header `name`: its value if present, non-empty and UTF-8.
///
/// # Panics
///
/// If `name` is not a valid header name (a programming error, found at the first call).
pub fn header(name: &'static str) -> impl Fn(&Parts) -> Option<String> + Send + Sync + 'static {
    let name = HeaderName::from_static(name);
    move |parts: &Parts| header_value(&parts.headers, &name)
}

fn header_value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let value = std::str::from_utf8(headers.get(name)?.as_bytes()).ok()?;
    (!value.is_empty()).then(|| value.to_owned())
}

/// The default endpoint: the matched route when axum routed the request, else the URI path.
fn route_or_path(parts: &Parts) -> Option<String> {
    #[cfg(feature = "axum")]
    if let Some(route) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return Some(route.as_str().to_owned());
    }
    Some(parts.uri.path().to_owned())
}

/// The [`Layer`]: wraps a service in a [`RateLimit`]. Cheap to clone.
pub struct RateLimitLayer<S = MemoryStore> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for RateLimitLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S: Store> RateLimitLayer<S> {
    /// Limits with `limiter`, the user from `user` (e.g. [`header`]), the endpoint from the
    /// route or path, and 401 for a request without a user.
    pub fn new(
        limiter: Limiter<S>,
        user: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                limiter,
                user: Arc::new(user),
                endpoint: Arc::new(route_or_path),
                missing_user: MissingUser::default(),
            }),
        }
    }

    /// Takes the endpoint from `endpoint` instead of the route or path; `None` (or an empty
    /// string) falls back to the URI path.
    pub fn endpoint(
        self,
        endpoint: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.map(|shared| shared.endpoint = Arc::new(endpoint))
    }

    /// What to do with a request without a user (default: [`MissingUser::Reject`] with 401).
    pub fn on_missing_user(self, missing_user: MissingUser) -> Self {
        self.map(|shared| shared.missing_user = missing_user)
    }

    /// The limiter this layer checks with.
    pub fn limiter(&self) -> &Limiter<S> {
        &self.shared.limiter
    }

    /// This layer with `change` made to a copy of its configuration (copies already made of
    /// the layer keep theirs; all share the limiter, and so the counters).
    fn map(self, change: impl FnOnce(&mut Shared<S>)) -> Self {
        let mut shared = Shared::clone(&self.shared);
        change(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl<S, Inner> Layer<Inner> for RateLimitLayer<S> {
    type Service = RateLimit<Inner, S>;

    fn layer(&self, inner: Inner) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The [`Service`]: checks each request, then calls `Inner` for the admitted ones.
pub struct RateLimit<Inner, S = MemoryStore> {
    inner: Inner,
    shared: Arc<Shared<S>>,
}

impl<Inner: Clone, S> Clone for RateLimit<Inner, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<Inner: fmt::Debug, S> fmt::Debug for RateLimit<Inner, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

/// The future of [`RateLimit::call`].
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<Inner, S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<Inner, S>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    S: Store,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = Inner::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready answers this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let user = match (shared.user)(&parts).filter(|u| !u.is_empty()) {
                Some(user) => user,
                None => match &shared.missing_user {
                    MissingUser::Reject(status) => return Ok(empty(*status)),
                    MissingUser::Fallback(user) => user.clone(),
                },
            };
            let endpoint = (shared.endpoint)(&parts)
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| parts.uri.path().to_owned());
            let decision = match shared.limiter.check_async(&user, &endpoint, 1).await {
                Ok(decision) => decision,
                Err(LimiterError::Invalid(_)) => return Ok(empty(StatusCode::BAD_REQUEST)),
                Err(LimiterError::Store(_)) => {
                    return Ok(empty(StatusCode::SERVICE_UNAVAILABLE));
                }
            };
            if !decision.allowed {
                let mut response = empty(StatusCode::TOO_MANY_REQUESTS);
                add_headers(response.headers_mut(), &decision);
                return Ok(response);
            }
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            add_headers(response.headers_mut(), &decision);
            Ok(response)
        })
    }
}

/// A response with `status` and an empty body.
fn empty<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}

/// The decision's `RateLimit-*` (and, when denied, `Retry-After`) fields, replacing any the
/// inner service set.
fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
    for (name, value) in decision.header_fields() {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&'static str, &[u8])]) -> Parts {
        let mut request = Request::builder().uri("/a/b?q=1");
        for (name, value) in headers {
            request = request.header(
                *name,
                HeaderValue::from_bytes(value).expect("test header values have no control bytes"),
            );
        }
        request
            .body(())
            .expect("a valid test request")
            .into_parts()
            .0
    }

    #[test]
    fn header_users_must_be_present_non_empty_and_utf8() {
        let user = header("x-user-id");
        assert_eq!(
            user(&parts(&[("x-user-id", b"alice")])),
            Some("alice".into())
        );
        assert_eq!(
            user(&parts(&[("x-user-id", "zoë".as_bytes())])),
            Some("zoë".into())
        );
        assert_eq!(user(&parts(&[])), None);
        assert_eq!(user(&parts(&[("x-user-id", b"")])), None);
        assert_eq!(user(&parts(&[("x-user-id", b"\xff\xfe")])), None);
    }

    #[test]
    fn without_a_route_the_endpoint_is_the_path_without_the_query() {
        assert_eq!(route_or_path(&parts(&[])), Some("/a/b".into()));
    }
}
