//! The HTTP API over real loopback sockets: decisions, headers, every kind of malformed input,
//! health, and rules loaded from a config file.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

use drl_testkit::node as common;

use std::time::Duration;

use common::TestServer;
use drl_core::{Algorithm, Policy, Rules};
use drl_proto::json::CheckResponse;
use drl_server::Config;

fn per_minute(n: u64) -> Rules {
    Rules::only_default(Policy::per(n, Duration::from_secs(60), Algorithm::default()).unwrap())
}

fn decision(response: &common::RawResponse) -> CheckResponse {
    serde_json::from_str(&response.body).unwrap()
}

/// Remaining hits of a key, read without counting.
fn remaining(server: &TestServer, user_id: &str, endpoint: &str) -> u32 {
    server
        .limiter
        .check(user_id, endpoint, 0)
        .unwrap()
        .remaining
}

#[tokio::test]
async fn an_allowed_check_answers_200_with_ratelimit_headers() {
    let server = TestServer::start(per_minute(3)).await;
    let response = server
        .check(r#"{"user_id": "alice", "endpoint": "/api/search"}"#)
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let d = decision(&response);
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining, d.retry_after_ms), (3, 2, 0));
    assert!(d.reset_after_ms > 0 && d.reset_after_ms <= 61_000, "{d:?}");
    assert_eq!(response.header("ratelimit-limit"), Some("3"));
    assert_eq!(response.header("ratelimit-remaining"), Some("2"));
    let reset = d.reset_after_ms.div_ceil(1000).to_string();
    assert_eq!(response.header("ratelimit-reset"), Some(reset.as_str()));
    assert_eq!(response.header("retry-after"), None);
    server.stop().await;
}

#[tokio::test]
async fn reaching_the_limit_answers_429_with_retry_after() {
    let server = TestServer::start(per_minute(2)).await;
    let body = r#"{"user_id": "bob", "endpoint": "/e"}"#;
    assert_eq!(server.check(body).await.status, 200);
    assert_eq!(server.check(body).await.status, 200);
    let denied = server.check(body).await;
    assert_eq!(denied.status, 429, "{denied:?}");
    let d = decision(&denied);
    assert!(!d.allowed);
    assert_eq!((d.limit, d.remaining), (2, 0));
    assert!(d.retry_after_ms > 0, "{d:?}");
    let retry = d.retry_after_ms.div_ceil(1000).to_string();
    assert_eq!(denied.header("retry-after"), Some(retry.as_str()));
    assert_eq!(denied.header("ratelimit-remaining"), Some("0"));
    // Denials are not counted, and the key recovers once the window has passed.
    assert_eq!(remaining(&server, "bob", "/e"), 0);
    server
        .clock
        .advance(Duration::from_millis(d.retry_after_ms));
    assert_eq!(server.check(body).await.status, 200);
    // Other pairs have their own counters.
    assert_eq!(
        server
            .check(r#"{"user_id": "bob", "endpoint": "/other"}"#)
            .await
            .status,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn hits_are_counted_all_or_nothing_and_zero_only_reads() {
    let server = TestServer::start(per_minute(5)).await;
    let check = |hits: &str| format!(r#"{{"user_id": "u", "endpoint": "/e", "hits": {hits}}}"#);
    let read = server.check(&check("0")).await;
    assert_eq!((read.status, decision(&read).remaining), (200, 5));
    let three = server.check(&check("3")).await;
    assert_eq!((three.status, decision(&three).remaining), (200, 2));
    let too_many = server.check(&check("3")).await;
    assert_eq!((too_many.status, decision(&too_many).remaining), (429, 2));
    assert_eq!(remaining(&server, "u", "/e"), 2);
    server.stop().await;
}

#[tokio::test]
async fn malformed_input_answers_400_and_counts_nothing() {
    let server = TestServer::start(per_minute(10)).await;
    // One admitted request, so "nothing counted" is visible as "still 9 remaining".
    assert_eq!(
        server
            .check(r#"{"user_id": "u", "endpoint": "/e"}"#)
            .await
            .status,
        200
    );
    let long = "x".repeat(1025);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "truncated JSON",
            r#"{"user_id": "u", "#.into(),
            "invalid request body: EOF",
        ),
        (
            "not JSON",
            "hello".into(),
            "invalid request body: expected value",
        ),
        ("empty body", String::new(), "invalid request body: EOF"),
        (
            "array instead of object",
            r#" ["u", "/e"]"#.into(),
            "expected a JSON object, not an array",
        ),
        (
            "string instead of object",
            r#""u""#.into(),
            "invalid type: string",
        ),
        (
            "trailing data",
            r#"{"user_id": "u", "endpoint": "/e"} {}"#.into(),
            "trailing characters",
        ),
        (
            "number as user_id",
            r#"{"user_id": 5, "endpoint": "/e"}"#.into(),
            "invalid type: integer `5`, expected a string",
        ),
        (
            "null endpoint",
            r#"{"user_id": "u", "endpoint": null}"#.into(),
            "invalid type: null",
        ),
        (
            "hits as a string",
            r#"{"user_id": "u", "endpoint": "/e", "hits": "1"}"#.into(),
            "invalid type: string \"1\"",
        ),
        (
            "negative hits",
            r#"{"user_id": "u", "endpoint": "/e", "hits": -1}"#.into(),
            "invalid value: integer `-1`",
        ),
        (
            "fractional hits",
            r#"{"user_id": "u", "endpoint": "/e", "hits": 1.5}"#.into(),
            "invalid type: floating point",
        ),
        (
            "hits above the maximum",
            r#"{"user_id": "u", "endpoint": "/e", "hits": 1000001}"#.into(),
            "hits 1000001 is out of range: it must be from 0 to 1000000",
        ),
        (
            "hits above u64",
            r#"{"user_id": "u", "endpoint": "/e", "hits": 99999999999999999999}"#.into(),
            "invalid request body",
        ),
        (
            "missing endpoint",
            r#"{"user_id": "u"}"#.into(),
            "missing field `endpoint`",
        ),
        (
            "missing user_id",
            r#"{"endpoint": "/e"}"#.into(),
            "missing field `user_id`",
        ),
        (
            "unknown field",
            r#"{"user_id": "u", "endpoint": "/e", "hit": 1}"#.into(),
            "unknown field `hit`",
        ),
        (
            "duplicate field",
            r#"{"user_id": "u", "user_id": "v", "endpoint": "/e"}"#.into(),
            "duplicate field `user_id`",
        ),
        (
            "empty user_id",
            r#"{"user_id": "", "endpoint": "/e"}"#.into(),
            "user_id must not be empty",
        ),
        (
            "empty endpoint",
            r#"{"user_id": "u", "endpoint": ""}"#.into(),
            "endpoint must not be empty",
        ),
        (
            "user_id over 1 KiB",
            format!(r#"{{"user_id": "{long}", "endpoint": "/e"}}"#),
            "user_id is 1025 bytes long; the maximum is 1024 bytes",
        ),
        (
            "endpoint over 1 KiB",
            format!(r#"{{"user_id": "u", "endpoint": "{long}"}}"#),
            "endpoint is 1025 bytes long; the maximum is 1024 bytes",
        ),
    ];
    for (what, body, expected) in &cases {
        let response = server.check(body).await;
        assert_eq!(response.status, 400, "{what}: {response:?}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let error = response.error();
        assert!(error.contains(expected), "{what}: {error:?}");
    }

    let valid = br#"{"user_id": "u", "endpoint": "/e"}"#;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "json"] {
        let response = server.post("/v1/check", content_type, valid).await;
        assert_eq!(response.status, 400, "{content_type}: {response:?}");
        assert!(response.error().contains("unsupported content type"));
    }
    let no_content_type = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        valid.len()
    );
    let response = server
        .send(&[no_content_type.as_bytes(), valid].concat())
        .await;
    assert_eq!(response.status, 400, "{response:?}");
    assert!(response.error().contains("unsupported content type (none)"));
    let response = server
        .post("/v1/check", "application/json", b"{\"user_id\": \"\xff\"}")
        .await;
    assert_eq!(response.status, 400, "{response:?}");
    // Media type parameters and case are fine.
    let response = server
        .post(
            "/v1/check",
            "Application/JSON; charset=utf-8",
            b"{\"user_id\": \"v\", \"endpoint\": \"/e\", \"hits\": 0}",
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");

    // Only the first, valid request was counted, and no other key was created (the read of
    // "v" with hits 0 creates none either).
    assert_eq!(remaining(&server, "u", "/e"), 9);
    assert_eq!(server.limiter.store().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn identifiers_of_exactly_1_kib_are_accepted() {
    let server = TestServer::start(per_minute(1)).await;
    let id = "é".repeat(512); // 1024 bytes, 512 characters
    let response = server
        .check(&format!(r#"{{"user_id": "{id}", "endpoint": "{id}"}}"#))
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    server.stop().await;
}

#[tokio::test]
async fn healthz_answers_ok_and_other_routes_are_json_errors() {
    let server = TestServer::start(Rules::builtin()).await;
    let health = server.get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let missing = server.get("/v1/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error(), "no route for /v1/nope");
    let wrong_method = server.get("/v1/check").await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(
        wrong_method.error(),
        "method GET is not allowed on /v1/check"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_over_sockets_admit_exactly_the_limit() {
    let server = std::sync::Arc::new(TestServer::start(per_minute(50)).await);
    let tasks: Vec<_> = (0..120)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .check(r#"{"user_id": "hot", "endpoint": "/key"}"#)
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 50);
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 70);
    let Ok(server) = std::sync::Arc::try_unwrap(server) else {
        panic!("tasks still hold the server")
    };
    server.stop().await;
}

#[tokio::test]
async fn config_rules_apply_by_specificity() {
    let config = Config::from_yaml(
        "rules.yaml",
        "default:\n  limit: 4\n  window: 1m\n\
         rules:\n\
         \x20 - endpoint: /api/search\n    limit: 3\n    window: 1s\n\
         \x20 - user_id: alice\n    limit: 2\n    window: 1h\n\
         \x20 - user_id: alice\n    endpoint: /api/upload\n    limit: 1\n    window: 1d\n    algorithm: sliding_log\n",
    )
    .unwrap();
    let server = TestServer::start(config.rules).await;
    let limit_of = |user: &str, endpoint: &str| {
        format!(r#"{{"user_id": "{user}", "endpoint": "{endpoint}"}}"#)
    };
    // (user, endpoint, the limit that must apply)
    for (user, endpoint, limit) in [
        ("alice", "/api/upload", 1), // pair
        ("alice", "/api/search", 2), // user beats endpoint
        ("bob", "/api/search", 3),   // endpoint
        ("bob", "/api/upload", 4),   // default
    ] {
        let body = limit_of(user, endpoint);
        for n in 0..limit {
            let response = server.check(&body).await;
            assert_eq!(response.status, 200, "{user} {endpoint} #{n}: {response:?}");
            assert_eq!(
                response.header("ratelimit-limit"),
                Some(limit.to_string().as_str())
            );
        }
        let response = server.check(&body).await;
        assert_eq!(response.status, 429, "{user} {endpoint}: {response:?}");
    }
    // The endpoint rule's 1 s window: a second later /api/search is open again for bob...
    server.clock.advance(Duration::from_millis(1_100));
    assert_eq!(
        server.check(&limit_of("bob", "/api/search")).await.status,
        200
    );
    // ...but not the default's minute, nor alice's hour.
    assert_eq!(
        server.check(&limit_of("bob", "/api/upload")).await.status,
        429
    );
    assert_eq!(
        server.check(&limit_of("alice", "/api/search")).await.status,
        429
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stopped_server_refuses_connections() {
    let server = TestServer::start(Rules::builtin()).await;
    let addr = server.addr;
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_keep_alive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start(Rules::builtin()).await;
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(drl_testkit::DEADLINE, idle.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {response:?}");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200 OK"));
    // The connection stays open (keep-alive); stopping must still finish, and close it.
    server.stop().await;
    let closed = tokio::time::timeout(drl_testkit::DEADLINE, idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}
