//! The layer in a real axum app, served on a loopback socket and asked over HTTP/1.1: limits per
//! user and route, the RateLimit headers on both answers, the inner handler never called for a
//! denied or rejected request, the missing-user policies, the path when no route matched, time
//! (a manual clock) restoring the limit, and two app instances sharing one budget through a
//! real `redis-server`.

#![allow(clippy::unwrap_used)] // Test code.

// The Redis store's own test processes: a real `redis-server` on a free port, always stopped.
use drl_testkit::redis as redis_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use drl_core::{Algorithm, Limiter, ManualClock, Policy, Rule, Rules, Store};
use drl_redis::{Consistency, RedisConfig, RedisStore};
use drl_tower::{MissingUser, RateLimitLayer, header};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const MINUTE: Duration = Duration::from_secs(60);

/// `/items/{id}`: 2 per minute per user; anything else: 100 per minute per user and endpoint.
fn rules() -> Rules {
    let policy = |n| Policy::per(n, MINUTE, Algorithm::default()).unwrap();
    Rules::new(
        policy(100),
        [Rule::new(None, Some("/items/{id}"), policy(2))],
    )
    .unwrap()
}

fn limiter(clock: &ManualClock) -> Limiter {
    Limiter::builder(rules())
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
}

/// An app behind `layer`, on a loopback port; the number of requests its handlers served.
async fn serve<S: Store>(layer: RateLimitLayer<S>) -> (String, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let count = |served: &Arc<AtomicUsize>| {
        let served = Arc::clone(served);
        move || async move {
            served.fetch_add(1, Ordering::SeqCst);
            "served"
        }
    };
    let app = Router::new()
        .route("/items/{id}", get(count(&served)))
        .fallback(count(&served))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, served)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<u64> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }
}

/// `GET path` with `user` as x-user-id (raw bytes, so invalid UTF-8 can be sent).
async fn get_as(addr: &str, path: &str, user: Option<&[u8]>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::get(path).header("host", addr);
    if let Some(user) = user {
        request = request.header("x-user-id", HeaderValue::from_bytes(user).unwrap());
    }
    let response = sender
        .send_request(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

#[tokio::test]
async fn limits_per_user_and_route_with_ratelimit_headers() {
    let clock = ManualClock::new(0);
    let (addr, served) = serve(RateLimitLayer::new(limiter(&clock), header("x-user-id"))).await;

    // Two different item ids are one route: one counter of 2.
    for (path, remaining) in [("/items/1", 1), ("/items/2", 0)] {
        let a = get_as(&addr, path, Some(b"alice")).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::OK, "served"),
            "{path}"
        );
        assert_eq!(a.header("ratelimit-limit"), Some(2));
        assert_eq!(a.header("ratelimit-remaining"), Some(remaining));
        assert_eq!(
            a.header("ratelimit-reset"),
            Some(61),
            "60 s + the current bucket"
        );
        assert_eq!(a.header("retry-after"), None);
    }
    let denied = get_as(&addr, "/items/3", Some(b"alice")).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.body, "");
    assert_eq!(denied.header("ratelimit-limit"), Some(2));
    assert_eq!(denied.header("ratelimit-remaining"), Some(0));
    assert_eq!(denied.header("retry-after"), Some(61));
    assert_eq!(
        served.load(Ordering::SeqCst),
        2,
        "the denied request never reached the handler"
    );

    // Another user has their own counter; the same user elsewhere, the default rule.
    let bob = get_as(&addr, "/items/1", Some(b"bob")).await;
    assert_eq!(
        (bob.status, bob.header("ratelimit-remaining")),
        (StatusCode::OK, Some(1))
    );
    let other = get_as(&addr, "/other", Some(b"alice")).await;
    assert_eq!(
        (other.status, other.header("ratelimit-limit")),
        (StatusCode::OK, Some(100))
    );

    // Once the window has passed, alice may call the route again.
    clock.advance(MINUTE + Duration::from_secs(2));
    let again = get_as(&addr, "/items/1", Some(b"alice")).await;
    assert_eq!(
        (again.status, again.header("ratelimit-remaining")),
        (StatusCode::OK, Some(1))
    );
}

#[tokio::test]
async fn without_a_matched_route_each_path_is_its_own_endpoint() {
    let clock = ManualClock::new(0);
    let (addr, _) = serve(RateLimitLayer::new(limiter(&clock), header("x-user-id"))).await;
    for _ in 0..3 {
        get_as(&addr, "/a?page=1", Some(b"alice")).await;
    }
    let a = get_as(&addr, "/a?page=2", Some(b"alice")).await;
    assert_eq!(
        a.header("ratelimit-remaining"),
        Some(96),
        "the query is not part of it"
    );
    let b = get_as(&addr, "/b", Some(b"alice")).await;
    assert_eq!(b.header("ratelimit-remaining"), Some(99));
}

#[tokio::test]
async fn a_request_without_a_usable_user_is_rejected_by_default() {
    let clock = ManualClock::new(0);
    let (addr, served) = serve(RateLimitLayer::new(limiter(&clock), header("x-user-id"))).await;
    for user in [None, Some(&b""[..]), Some(&b"\xff\xfe"[..])] {
        let a = get_as(&addr, "/items/1", user).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{user:?}");
        assert_eq!(a.header("ratelimit-limit"), None);
    }
    // Above the limiter's 1 KiB bound: refused, not counted.
    let long = vec![b'u'; 1025];
    assert_eq!(
        get_as(&addr, "/items/1", Some(&long)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_fallback_user_shares_one_counter() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::new(limiter(&clock), header("x-user-id"))
        .on_missing_user(MissingUser::Fallback("anonymous".into()));
    let (addr, served) = serve(layer).await;
    let first = get_as(&addr, "/items/1", None).await;
    let second = get_as(&addr, "/items/2", Some(b"\xff")).await;
    let third = get_as(&addr, "/items/3", None).await;
    assert_eq!(
        [first.status, second.status, third.status],
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(served.load(Ordering::SeqCst), 2);
    // A named user is not the anonymous one.
    assert_eq!(
        get_as(&addr, "/items/1", Some(b"carol")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rejecting_status_and_an_endpoint_extractor_can_be_chosen() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::new(limiter(&clock), header("x-user-id"))
        .on_missing_user(MissingUser::Reject(StatusCode::FORBIDDEN))
        // Every path under /items counts as the /items/{id} route.
        .endpoint(|parts| {
            parts
                .uri
                .path()
                .starts_with("/items")
                .then(|| "/items/{id}".to_owned())
        });
    let (addr, _) = serve(layer).await;
    assert_eq!(
        get_as(&addr, "/x", None).await.status,
        StatusCode::FORBIDDEN
    );
    for _ in 0..2 {
        get_as(&addr, "/items/a/b", Some(b"dave")).await;
    }
    assert_eq!(
        get_as(&addr, "/items", Some(b"dave")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // None from the extractor: the path.
    let other = get_as(&addr, "/elsewhere", Some(b"dave")).await;
    assert_eq!(other.header("ratelimit-limit"), Some(100));
}

#[tokio::test]
async fn instances_on_one_redis_share_the_budget() {
    let redis = redis_support::Redis::start();
    let instance = || {
        let mut config = RedisConfig::new(vec![redis.url()]);
        config.consistency = Consistency::Fast;
        let limiter = Limiter::builder(rules()).build_with_store(RedisStore::new(&config).unwrap());
        serve(RateLimitLayer::new(limiter, header("x-user-id")))
    };
    let (first, served_first) = instance().await;
    let (second, served_second) = instance().await;
    let one = get_as(&first, "/items/1", Some(b"erin")).await;
    let two = get_as(&second, "/items/2", Some(b"erin")).await;
    let three = get_as(&first, "/items/3", Some(b"erin")).await;
    assert_eq!(
        [one.status, two.status, three.status],
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        two.header("ratelimit-remaining"),
        Some(0),
        "the second saw the first's hit"
    );
    assert_eq!(three.header("retry-after").map(|s| s > 0), Some(true));
    assert_eq!(
        served_first.load(Ordering::SeqCst) + served_second.load(Ordering::SeqCst),
        2
    );
}
