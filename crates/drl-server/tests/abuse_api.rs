//! Abuse protection and shadow mode through the HTTP API over a real socket: automatic bans
//! from the config's `abuse:`, the admin block routes (and their authorization), the config
//! blocklist, shadow mode, and the metrics that report them.

#![allow(clippy::unwrap_used)] // Test code.

use std::sync::Arc;
use std::time::Duration;

use drl_server::AdminToken;
use drl_server::config::Config;
use drl_server::{Metrics, Node};
use drl_testkit::node::TestServer;

const TOKEN: &str = "s3cret-token";
const AUTH: &str = "authorization: Bearer s3cret-token";

async fn node(yaml: &str, token: Option<&str>) -> (TestServer, Arc<Metrics>) {
    let rules = Config::from_yaml("drl.yaml", yaml).unwrap().rules;
    let metrics = Arc::new(Metrics::new());
    let m = Arc::clone(&metrics);
    let server = TestServer::start_with(rules, move |limiter| {
        Node::new(limiter, m).with_admin_token(token.and_then(AdminToken::new))
    })
    .await;
    (server, metrics)
}

async fn check(server: &TestServer, user: &str) -> u16 {
    let body = format!(r#"{{"user_id": "{user}", "endpoint": "/a"}}"#);
    server.check(&body).await.status
}

const ABUSE: &str = "default:
  limit: 2
  window: 1m
abuse:
  threshold: 3
  interval: 10s
  ban: 1m
  max_ban: 10m
blocklist: [mallory]
rules:
  - endpoint: /health
    limit: 1
    window: 1m
    abuse: false
";

#[tokio::test]
async fn a_user_over_the_threshold_is_banned_and_released() {
    let (server, metrics) = node(ABUSE, Some(TOKEN)).await;
    let codes: Vec<u16> = {
        let mut codes = Vec::new();
        for _ in 0..6 {
            codes.push(check(&server, "bot").await);
        }
        codes
    };
    assert_eq!(codes, [200, 200, 429, 429, 429, 429]);
    // Banned now: 429 with the ban's time, even on a fresh endpoint.
    let r = server
        .check(r#"{"user_id": "bot", "endpoint": "/fresh"}"#)
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    let list = server.request("GET", "/v1/blocks", &[AUTH], b"").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let blocks = list.json()["blocks"].clone();
    assert_eq!(blocks[0]["user_id"], "bot");
    assert_eq!(blocks[0]["kind"], "automatic");
    assert_eq!(blocks[0]["remaining_ms"], 60_000);
    assert_eq!(blocks[1]["user_id"], "mallory");
    assert_eq!(blocks[1]["kind"], "config");
    server.clock.advance(Duration::from_secs(61));
    assert_eq!(check(&server, "bot").await, 200);
    let text = metrics.encode();
    assert!(
        text.contains("drl_bans_total{kind=\"automatic\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("drl_blocked_requests_total 1\n"), "{text}");
    // The config's blocklist denies at once.
    assert_eq!(check(&server, "mallory").await, 429);
    // The top offenders: bot's four denials (the banned ones are no offenses).
    let top = server
        .request("GET", "/v1/offenders?limit=5", &[AUTH], b"")
        .await;
    assert_eq!(top.status, 200, "{}", top.body);
    assert_eq!(top.json()["offenders"][0]["user_id"], "bot");
    assert_eq!(top.json()["offenders"][0]["denials"], 4);
    for bad in [
        "/v1/offenders?limit=0",
        "/v1/offenders?limit=5000",
        "/v1/offenders?limit=x",
    ] {
        let r = server.request("GET", bad, &[AUTH], b"").await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = server.request("GET", "/v1/offenders", &[], b"").await;
    assert_eq!(r.status, 401);
    server.stop().await;
}

#[tokio::test]
async fn blocks_are_made_listed_and_lifted_through_the_admin_api() {
    let (server, metrics) = node(ABUSE, Some(TOKEN)).await;
    let json = ["content-type: application/json", AUTH];
    let put = server
        .request("PUT", "/v1/blocks/eve", &json, br#"{"duration": "30m"}"#)
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["remaining_ms"], 1_800_000);
    assert_eq!(check(&server, "eve").await, 429);
    // Without a body: permanent.
    let put = server.request("PUT", "/v1/blocks/zed", &[AUTH], b"").await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(put.json()["remaining_ms"].is_null());
    // Denied with a Retry-After that 32-bit parsers take (it was 18446743660).
    let r = server
        .check(r#"{"user_id": "zed", "endpoint": "/a"}"#)
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2147483647"), "{r:?}");
    let deleted = server
        .request("DELETE", "/v1/blocks/eve", &[AUTH], b"")
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(check(&server, "eve").await, 200);
    let again = server
        .request("DELETE", "/v1/blocks/eve", &[AUTH], b"")
        .await;
    assert_eq!(again.status, 404);
    assert!(
        metrics
            .encode()
            .contains("drl_bans_total{kind=\"manual\"} 2\n")
    );

    // Bad input: 400 with a message, nothing changed.
    for (body, message) in [
        (&br#"{"duration": "forever"}"#[..], "invalid duration"),
        (br#"{"duration": "0s"}"#, "out of range"),
        (br#"{"duration": "400d"}"#, "out of range"),
        (br#"{"duration": 5}"#, "invalid type"),
        (br#"{"until": "1h"}"#, "unknown field"),
    ] {
        let r = server.request("PUT", "/v1/blocks/amy", &json, body).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(message), "{error}");
    }
    assert_eq!(check(&server, "amy").await, 200);
    server.stop().await;
}

#[tokio::test]
async fn admin_block_routes_need_the_token() {
    let (server, _) = node(ABUSE, Some(TOKEN)).await;
    for (method, path) in [
        ("GET", "/v1/blocks"),
        ("PUT", "/v1/blocks/eve"),
        ("DELETE", "/v1/blocks/eve"),
    ] {
        for headers in [&[][..], &["authorization: Bearer wrong"][..]] {
            let r = server.request(method, path, headers, b"").await;
            assert_eq!(r.status, 401, "{method} {path}");
            assert_eq!(r.json()["error"], "unauthorized");
        }
    }
    assert_eq!(check(&server, "eve").await, 200);
    server.stop().await;
    // Without a token configured the routes do not exist.
    let (server, _) = node(ABUSE, None).await;
    let r = server.request("GET", "/v1/blocks", &[AUTH], b"").await;
    assert_eq!(r.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn shadow_mode_answers_200_and_counts_what_it_would_have_denied() {
    let (server, metrics) =
        node("default: {limit: 1, window: 1m}\nshadow_mode: true\n", None).await;
    for _ in 0..3 {
        assert_eq!(check(&server, "u").await, 200);
    }
    assert!(metrics.encode().contains("drl_shadow_denials_total 2\n"));
    server.stop().await;
}

#[test]
fn abuse_settings_are_validated_with_locations() {
    let e = Config::from_yaml(
        "drl.yaml",
        "abuse:\n  threshold: 0\n  interval: 10s\n  ban: 1m\nblocklist: [\"\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("drl.yaml:2:14: threshold 0 is out of range"),
        "{e}"
    );
    assert!(
        e.contains("drl.yaml:5:") && e.contains("user_id must not be empty"),
        "{e}"
    );
    let e = Config::from_yaml(
        "drl.yaml",
        "abuse:\n  threshold: 3\n  interval: 10s\n  ban: 1m\n  max_ban: 30s\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_ban 30s is out of range"), "{e}");
}

const ADAPTIVE: &str = "default: {limit: 5, window: 1m}
adaptive:
  db: {high: 0.8, low: 0.5, min_factor: 0.2, decrease: 0.5, increase: 0.1, stale_after: 30s}
rules:
  - endpoint: /search
    limit: 100
    window: 1m
    backends: [db]
";

async fn limit_seen(server: &TestServer, endpoint: &str) -> String {
    let body = format!(r#"{{"user_id": "u", "endpoint": "{endpoint}", "hits": 0}}"#);
    let r = server.check(&body).await;
    r.header("ratelimit-limit").unwrap().to_owned()
}

#[tokio::test]
async fn load_reports_change_the_limits_clients_see() {
    let (server, metrics) = node(ADAPTIVE, Some(TOKEN)).await;
    let json = ["content-type: application/json", AUTH];
    assert_eq!(limit_seen(&server, "/search").await, "100");
    let r = server
        .request(
            "POST",
            "/v1/load",
            &json,
            br#"{"backend": "db", "utilization": 0.95}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["factor"], 0.5);
    assert_eq!(limit_seen(&server, "/search").await, "50");
    assert_eq!(limit_seen(&server, "/other").await, "5");
    // A latency above target is high load too; the factor clamps at min_factor.
    for _ in 0..3 {
        server
            .request(
                "POST",
                "/v1/load",
                &json,
                br#"{"backend": "db", "latency_ms": 250, "target_ms": 100}"#,
            )
            .await;
    }
    assert_eq!(limit_seen(&server, "/search").await, "20");
    let config = server.request("GET", "/v1/config", &[AUTH], b"").await;
    assert_eq!(config.json()["backends"][0]["backend"], "db");
    assert_eq!(config.json()["backends"][0]["factor"], 0.2);
    assert!(
        metrics
            .encode()
            .contains("drl_adaptive_factor{backend=\"db\"} 0.2\n")
    );
    // Low load recovers additively.
    server
        .request(
            "POST",
            "/v1/load",
            &json,
            br#"{"backend": "db", "utilization": 0.1}"#,
        )
        .await;
    assert_eq!(limit_seen(&server, "/search").await, "30");

    // Bad reports: 400 with a message, nothing changed.
    for (body, message) in [
        (
            &br#"{"backend": "db", "utilization": 1.5}"#[..],
            "out of range",
        ),
        (br#"{"backend": "db", "utilization": -0.1}"#, "out of range"),
        (br#"{"backend": "db"}"#, "either utilization"),
        (
            br#"{"backend": "db", "utilization": 0.5, "latency_ms": 3}"#,
            "either utilization",
        ),
        (
            br#"{"backend": "db", "latency_ms": 10, "target_ms": 0}"#,
            "target_ms",
        ),
        (
            br#"{"backend": "nope", "utilization": 0.9}"#,
            "unknown backend",
        ),
        (
            br#"{"backend": "db", "utilization": "high"}"#,
            "invalid type",
        ),
        (br#"{"utilization": 0.9}"#, "missing field `backend`"),
    ] {
        let r = server.request("POST", "/v1/load", &json, body).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(message), "{error}");
    }
    assert_eq!(limit_seen(&server, "/search").await, "30");
    let r = server
        .request(
            "POST",
            "/v1/load",
            &["content-type: application/json"],
            br#"{"backend": "db", "utilization": 0.9}"#,
        )
        .await;
    assert_eq!(r.status, 401);
    server.stop().await;
}

#[test]
fn rules_must_name_declared_backends() {
    let e = Config::from_yaml(
        "drl.yaml",
        "rules:\n  - endpoint: /a\n    limit: 1\n    window: 1s\n    backends: [db]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("drl.yaml:5:16: unknown backend \"db\""), "{e}");
    let e = Config::from_yaml("drl.yaml", "adaptive:\n  db: {high: 0.2, low: 0.5}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("backend \"db\": high"), "{e}");
}
