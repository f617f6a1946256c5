//! The admin API's two layouts, over real loopback sockets: on the HTTP listener (no admin
//! listener), and on a listener of its own, where it answers with the token (401 without), the
//! HTTP listener answers its routes 404, and a full public connection cap does not lock it out.

#![allow(clippy::unwrap_used)] // Test code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drl_core::{Limiter, Rules};
use drl_server::limits::EdgeLimits;
use drl_server::{AdminToken, Config, Metrics, Node};
use drl_testkit::node::{RawResponse, TestNode, request};
use drl_testkit::{DEADLINE, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AUTH: &str = "authorization: Bearer s3cret-token";

/// Every route of the admin API, with a body each accepts.
const ADMIN_ROUTES: [(&str, &str, &str); 8] = [
    ("GET", "/", ""),
    ("GET", "/metrics", ""),
    ("GET", "/v1/config", ""),
    ("POST", "/v1/config/reload", ""),
    ("GET", "/v1/blocks", ""),
    ("PUT", "/v1/blocks/eve", ""),
    (
        "POST",
        "/v1/load",
        r#"{"backend": "db", "utilization": 0.5}"#,
    ),
    ("GET", "/v1/offenders", ""),
];

/// The routes of the admin API behind the token.
const TOKEN_ROUTES: [(&str, &str); 6] = [
    ("GET", "/v1/config"),
    ("POST", "/v1/config/reload"),
    ("GET", "/v1/blocks"),
    ("PUT", "/v1/blocks/eve"),
    ("POST", "/v1/load"),
    ("GET", "/v1/offenders"),
];

/// One adaptive backend, `db`, for `POST /v1/load`.
const CONFIG: &str = "default: {limit: 100, window: 1m}
adaptive:
  db: {}
rules:
  - endpoint: /search
    limit: 100
    window: 1m
    backends: [db]
";

/// A node of [`CONFIG`] with the admin token.
fn node() -> Node {
    let rules = Config::from_yaml("drl.yaml", CONFIG).unwrap().rules;
    Node::new(Limiter::new(rules), Arc::new(Metrics::new()))
        .with_admin_token(AdminToken::new("s3cret-token"))
}

async fn call(addr: SocketAddr, method: &str, path: &str, auth: bool, body: &str) -> RawResponse {
    let mut headers = vec!["content-type: application/json"];
    if auth {
        headers.push(AUTH);
    }
    request(addr, method, path, &headers, body.as_bytes()).await
}

async fn check(addr: SocketAddr) -> RawResponse {
    let body = r#"{"user_id": "amy", "endpoint": "/a"}"#;
    call(addr, "POST", "/v1/check", false, body).await
}

#[tokio::test]
async fn without_an_admin_listener_the_http_listener_serves_the_admin_api() {
    let node = TestNode::start(node()).await;
    assert_eq!(node.admin, None);
    assert_eq!(check(node.http).await.status, 200);
    for (method, path, body) in ADMIN_ROUTES {
        let r = call(node.http, method, path, true, body).await;
        // The node has no config file: the reload is refused, the route is there.
        let expected = if path == "/v1/config/reload" {
            409
        } else {
            200
        };
        assert_eq!(r.status, expected, "{method} {path}: {}", r.body);
    }
    for (method, path) in TOKEN_ROUTES {
        let r = call(node.http, method, path, false, "").await;
        assert_eq!(r.status, 401, "{method} {path}");
    }
    node.stop().await;
}

#[tokio::test]
async fn with_an_admin_listener_the_admin_api_moves_there() {
    let node = TestNode::start_with_admin(node()).await;
    let admin = node.admin.unwrap();
    // The HTTP listener answers checks and health, and the admin API 404, token or not.
    assert_eq!(check(node.http).await.status, 200);
    assert_eq!(
        call(node.http, "GET", "/healthz", false, "").await.status,
        200
    );
    assert_eq!(
        call(node.http, "GET", "/readyz", false, "").await.status,
        200
    );
    for (method, path, body) in ADMIN_ROUTES {
        for auth in [true, false] {
            let r = call(node.http, method, path, auth, body).await;
            assert_eq!(r.status, 404, "{method} {path} on the HTTP listener");
            assert_eq!(r.error(), format!("no route for {path}"));
        }
    }
    // The admin listener answers the admin API with the token, 401 without or with a wrong one.
    for (method, path, body) in ADMIN_ROUTES {
        let r = call(admin, method, path, true, body).await;
        let expected = if path == "/v1/config/reload" {
            409
        } else {
            200
        };
        assert_eq!(r.status, expected, "{method} {path}: {}", r.body);
    }
    for (method, path) in TOKEN_ROUTES {
        let r = call(admin, method, path, false, "").await;
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(r.error(), "unauthorized");
        let wrong = ["authorization: Bearer wrong"];
        let r = request(admin, method, path, &wrong, b"").await;
        assert_eq!(r.status, 401, "{method} {path} with a wrong token");
    }
    // Both listeners serve one node: the block made on the admin listener denies on the HTTP
    // one, and the admin listener's metrics count the HTTP listener's checks.
    let body = r#"{"user_id": "eve", "endpoint": "/a"}"#;
    let r = call(node.http, "POST", "/v1/check", false, body).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let metrics = call(admin, "GET", "/metrics", false, "").await.body;
    let allowed = "drl_decisions_total{result=\"allowed\",rule=\"default\"} 1\n";
    assert!(metrics.contains(allowed), "{metrics}");
    // Health on the admin listener too; no checks there.
    assert_eq!(call(admin, "GET", "/healthz", false, "").await.status, 200);
    assert_eq!(check(admin).await.status, 404);
    node.stop().await;
}

#[tokio::test]
async fn without_a_token_the_admin_listener_serves_only_the_status_page_and_metrics() {
    let limiter = Limiter::new(Rules::builtin());
    let node = TestNode::start_with_admin(Node::new(limiter, Arc::new(Metrics::new()))).await;
    let admin = node.admin.unwrap();
    assert_eq!(call(admin, "GET", "/", false, "").await.status, 200);
    assert_eq!(call(admin, "GET", "/metrics", false, "").await.status, 200);
    for (method, path) in TOKEN_ROUTES {
        let r = call(admin, method, path, true, "").await;
        assert_eq!(r.status, 404, "{method} {path}");
    }
    node.stop().await;
}

#[tokio::test]
async fn the_admin_listener_answers_while_silent_connections_fill_the_public_cap() {
    let limits = EdgeLimits {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(30),
        ..EdgeLimits::default()
    };
    let node = node().with_limits(limits);
    let gate = Arc::clone(&node.gate);
    let node = TestNode::start_with_admin(node).await;
    let _silent = TcpStream::connect(node.http).await.unwrap();
    wait_until("the silent connection fills the cap", async || {
        gate.connections() == 1
    })
    .await;
    // The HTTP listener closes a new connection at once, unanswered...
    let mut refused = TcpStream::connect(node.http).await.unwrap();
    let _ = refused
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, refused.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{answer:?}");
    // ...and the admin listener, with budgets of its own, still answers.
    let r = call(node.admin.unwrap(), "GET", "/v1/config", true, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    node.stop().await;
}
