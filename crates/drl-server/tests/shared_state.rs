//! Cluster-wide bans, blocks and load factors: two nodes' limiters share them through one real
//! `redis-server` (started here on a free loopback port, stopped at the end).

#![allow(clippy::unwrap_used)] // Test code.

use drl_testkit::node as common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use drl_core::abuse::AbusePolicy;
use drl_core::adaptive::BackendSettings;
use drl_core::{Algorithm, Limiter, Policy, Rule, Rules};
use drl_redis::RedisConfig;
use drl_redis::shared::Coordination;
use drl_redis::shared::SharedState;
use drl_testkit::redis::Redis;

fn rules() -> Rules {
    let per_minute = |n| Policy::per(n, Duration::from_secs(60), Algorithm::default()).unwrap();
    let mut search = Rule::new(None, Some("/search"), per_minute(100));
    search.backends = vec!["db".into()];
    Rules::new(per_minute(2), [search])
        .unwrap()
        .with_abuse(Some(
            AbusePolicy::new(
                1,
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(60),
                2,
            )
            .unwrap(),
        ))
        .with_backends(BTreeMap::from([(
            "db".to_owned(),
            BackendSettings::default(),
        )]))
}

/// A node: its limiter (memory store: only bans and factors are shared here) and its link.
fn node(redis: &Redis) -> (Limiter, Coordination) {
    let mut config = RedisConfig::new(vec![redis.url()]);
    config.timeout = Duration::from_secs(2);
    let limiter = Limiter::builder(rules()).sweep_interval(None).build();
    (
        limiter,
        Coordination::new(SharedState::new(&config).unwrap()),
    )
}

#[tokio::test]
async fn bans_blocks_and_factors_made_on_one_node_hold_on_the_other() {
    let redis = Redis::start();
    let (a, link_a) = node(&redis);
    let (b, link_b) = node(&redis);

    // An operator's block on A.
    let block = a.bans().block("eve", None);
    link_a.publish_ban(&a, &block).await.unwrap();
    assert!(b.check_and_increment("eve", "/x"));
    link_b.sync(&b).await.unwrap();
    assert!(!b.check_and_increment("eve", "/x"), "B enforces A's block");

    // An automatic ban on A, shared by A's own sync.
    assert!(a.check_and_increment("bot", "/x"));
    assert!(a.check_and_increment("bot", "/x"));
    a.check("bot", "/x", 1).unwrap();
    let banning = a.check_ruled("bot", "/x", 1).unwrap();
    assert!(banning.new_ban.is_some());
    link_a.sync(&a).await.unwrap();
    link_b.sync(&b).await.unwrap();
    let on_b = b.check_ruled("bot", "/fresh", 1).unwrap();
    assert!(on_b.banned, "B enforces A's automatic ban");
    assert!(on_b.decision.retry_after > Duration::from_secs(50));

    // Unblocked on B: lifted on A at its next sync.
    b.bans().unblock("eve");
    assert!(link_b.publish_unblock("eve").await.unwrap());
    link_a.sync(&a).await.unwrap();
    assert!(a.check_and_increment("eve", "/y"), "A lifted the block");

    // A load report on A scales B's limits too.
    let factor = a.report_load("db", 0.95).unwrap();
    link_a.publish_factor("db", factor).await.unwrap();
    assert_eq!(b.check("u", "/search", 0).unwrap().limit, 100);
    link_b.sync(&b).await.unwrap();
    assert_eq!(b.check("u", "/search", 0).unwrap().limit, 50);
}

/// The Redis store's own counts reach `/metrics`: with Redis down and `on_error: allow`, the
/// fallbacks and errors show as `drl_store_events_total`.
#[tokio::test]
async fn the_redis_stores_events_are_exported() {
    use drl_redis::{OnError, RedisStore};
    use drl_server::Metrics;
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = RedisConfig::new(vec![format!("redis://127.0.0.1:{port}")]);
    config.on_error = OnError::Allow;
    config.timeout = Duration::from_millis(200);
    let limiter = Limiter::builder(rules()).build_with_store(RedisStore::new(&config).unwrap());
    assert!(limiter.check_and_increment_async("u", "/x").await);
    let metrics = Metrics::new();
    metrics.sync_store(&drl_core::Store::stats(limiter.store()));
    let text = metrics.encode();
    let total = |event: &str| -> u64 {
        let prefix = format!("drl_store_events_total{{event=\"{event}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(total("fallbacks") >= 1, "{text}");
    assert!(total("errors") >= 1, "{text}");
    // A second scrape with no new events changes nothing.
    metrics.sync_store(&drl_core::Store::stats(limiter.store()));
    let events = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("drl_store_events_total"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(events(&metrics.encode()), events(&text));
}

/// Through the HTTP admin API of two nodes: a block made on node A is enforced by node B after
/// B's next sync, and an unblock on B is lifted on A after A's. (Each server also syncs by
/// itself once a second, so whether B still answers 200 just before its sync depends on where
/// that second stands: only the state after a sync is asserted.)
#[tokio::test]
async fn a_block_made_through_one_nodes_api_holds_on_the_other() {
    use drl_server::AdminToken;
    use drl_server::Node;
    use std::sync::Arc;

    let redis = Redis::start();
    let link = || {
        let mut config = RedisConfig::new(vec![redis.url()]);
        config.timeout = Duration::from_secs(2);
        Arc::new(Coordination::new(SharedState::new(&config).unwrap()))
    };
    let (link_a, link_b) = (link(), link());
    let node = |link: Arc<Coordination>| {
        move |limiter| {
            Node::from(limiter)
                .with_admin_token(AdminToken::new("t0ken"))
                .with_shared(Some(link))
        }
    };
    let a = common::TestServer::start_with(rules(), node(Arc::clone(&link_a))).await;
    let b = common::TestServer::start_with(rules(), node(Arc::clone(&link_b))).await;
    let auth = ["authorization: Bearer t0ken"];
    let put = a.request("PUT", "/v1/blocks/eve", &auth, b"").await;
    assert_eq!(put.status, 200, "{}", put.body);
    link_b.sync(&b.limiter).await.unwrap();
    assert_eq!(
        eve_status(&b).await,
        429,
        "B enforces the block made through A"
    );
    let listed = b.request("GET", "/v1/blocks", &auth, b"").await;
    assert_eq!(listed.json()["blocks"][0]["user_id"], "eve");

    let deleted = b.request("DELETE", "/v1/blocks/eve", &auth, b"").await;
    assert_eq!(deleted.status, 204);
    link_a.sync(&a.limiter).await.unwrap();
    assert_eq!(eve_status(&a).await, 200, "A lifted the block");
    a.stop().await;
    b.stop().await;
}

/// The status of a read-only check of `eve` on `server`.
async fn eve_status(server: &common::TestServer) -> u16 {
    server
        .check(r#"{"user_id": "eve", "endpoint": "/x", "hits": 0}"#)
        .await
        .status
}

/// `on_error: deny` answers a Redis that fails as a store failure on every API, never as a rate
/// limit: HTTP 503 with `Retry-After` and the reason, gRPC `UNAVAILABLE` (native and Envoy's),
/// counted in `drl_store_errors_total` and not as a denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_deny_answers_a_dead_redis_as_unavailable_on_every_api() {
    use drl_core::RuleLevel;
    use drl_proto::drl::v1 as native;
    use drl_proto::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor::Entry,
    };
    use drl_proto::envoy::service::ratelimit::v3 as rls;
    use drl_redis::{Consistency, OnError, RedisStore};
    use drl_server::{Metrics, Node};
    use drl_testkit::node::{RawResponse, TestNode};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut redis = Redis::start();
    let mut config = RedisConfig::new(vec![redis.url()]);
    config.on_error = OnError::Deny;
    config.consistency = Consistency::Fast;
    config.timeout = Duration::from_secs(2);
    let limiter = Limiter::builder(rules())
        .sweep_interval(None)
        .build_with_store(RedisStore::new(&config).unwrap());
    let metrics = Arc::new(Metrics::new());
    let node = TestNode::start(Node::new(limiter, Arc::clone(&metrics))).await;
    let check = || async {
        let body = br#"{"user_id": "u", "endpoint": "/x"}"#;
        let mut stream = tokio::net::TcpStream::connect(node.http).await.unwrap();
        let head = format!(
            "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        RawResponse::parse(&raw)
    };
    let up = check().await;
    assert_eq!(up.status, 200, "Redis up: {}", up.body);

    redis.kill();
    // The first check finds Redis gone; the second is answered while its slot backs off.
    for _ in 0..2 {
        let response = check().await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert_eq!(response.header("retry-after"), Some("1"));
        assert!(response.error().starts_with("store "), "{}", response.body);
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let batch = native::rate_limiter_client::RateLimiterClient::new(channel.clone())
        .check(native::CheckRequest {
            checks: vec![native::Check {
                user_id: "u".into(),
                endpoint: "/x".into(),
                hits: None,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let Some(native::check_result::Outcome::Error(error)) = &batch.results[0].outcome else {
        panic!("an item error: {batch:?}");
    };
    assert_eq!(error.code(), native::check_error::Code::Unavailable);
    let entry = |key: &str, value: &str| Entry {
        key: key.into(),
        value: value.into(),
    };
    let envoy = rls::rate_limit_service_client::RateLimitServiceClient::new(channel)
        .should_rate_limit(rls::RateLimitRequest {
            domain: "drl".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![entry("user_id", "u"), entry("endpoint", "/x")],
                ..Default::default()
            }],
            hits_addend: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(envoy.code(), tonic::Code::Unavailable, "{envoy:?}");

    assert_eq!(metrics.decisions(false, RuleLevel::Default), 0);
    let text = metrics.encode();
    let errors: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("drl_store_errors_total "))
        .unwrap_or_else(|| panic!("drl_store_errors_total in:\n{text}"))
        .parse()
        .unwrap();
    assert_eq!(errors, 4, "{text}");
    node.stop().await;
}

/// gRPC health says what `GET /readyz` says: NOT_SERVING on a single Redis under `consistency:
/// strict` (no replica: WAIT can confirm nothing) and when Redis is gone, SERVING while it
/// answers in fast mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_the_readiness_of_readyz() {
    use drl_redis::{Consistency, RedisStore};
    use drl_server::Node;
    use drl_testkit::node::TestNode;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let mut redis = Redis::start();
    let node = |consistency| {
        let mut config = RedisConfig::new(vec![redis.url()]);
        config.consistency = consistency;
        config.timeout = Duration::from_secs(1);
        let limiter = Limiter::builder(rules())
            .sweep_interval(None)
            .build_with_store(RedisStore::new(&config).unwrap());
        TestNode::start(Node::from(limiter))
    };
    let status = async |node: &TestNode| {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let mut statuses = Vec::new();
        for service in ["", "drl.v1.RateLimiter"] {
            let request = HealthCheckRequest {
                service: service.into(),
            };
            statuses.push(client.check(request).await.unwrap().into_inner().status());
        }
        assert_eq!(statuses[0], statuses[1]);
        statuses[0]
    };
    let strict = node(Consistency::Strict).await;
    assert_eq!(status(&strict).await, ServingStatus::NotServing);
    strict.stop().await;

    let fast = node(Consistency::Fast).await;
    assert_eq!(status(&fast).await, ServingStatus::Serving);
    redis.kill();
    drl_testkit::wait_until("NOT_SERVING once Redis is gone", async || {
        status(&fast).await == ServingStatus::NotServing
    })
    .await;
    fast.stop().await;
}

/// Ban and block ends are kept on Redis's clock, never a node's: what a node writes is Redis's
/// `TIME` plus the time left, and a syncing node removes a ban only once Redis's clock has
/// passed its end, and applies one by the time left on Redis's clock.
#[tokio::test]
async fn shared_ban_ends_are_on_redis_time() {
    let redis = Redis::start();
    let redis_ms = || -> u64 {
        let time = redis.cli(&["TIME"]);
        let mut parts = time.split_whitespace().map(|p| p.parse::<u64>().unwrap());
        let (secs, micros) = (parts.next().unwrap(), parts.next().unwrap());
        secs * 1_000 + micros / 1_000
    };
    let (a, link_a) = node(&redis);
    let hour = a.now_ns() + 3_600_000_000_000;
    let block = a.bans().block("eve", Some(hour));
    link_a.publish_ban(&a, &block).await.unwrap();
    let stored = redis.cli(&["HGET", "drl:{shared}:bans", "eve"]);
    let until: u64 = stored.split('|').nth(1).unwrap().parse().unwrap();
    let left = until.abs_diff(redis_ms() + 3_600_000);
    assert!(left < 5_000, "{stored}: {left} ms off Redis's TIME + 1 h");

    // Written by other nodes on Redis's clock: one ended, one with 10 minutes left.
    let now = redis_ms();
    let ended = format!("a|{}|1", now - 1_000);
    let ten_minutes = format!("a|{}|1", now + 600_000);
    redis.cli(&[
        "HSET",
        "drl:{shared}:bans",
        "old",
        &ended,
        "bob",
        &ten_minutes,
    ]);
    let (b, link_b) = node(&redis);
    link_b.sync(&b).await.unwrap();
    assert_eq!(redis.cli(&["HEXISTS", "drl:{shared}:bans", "old"]), "0");
    assert!(
        b.check_and_increment("old", "/x"),
        "an ended ban is not applied"
    );
    let bob = b.check_ruled("bob", "/x", 1).unwrap();
    assert!(bob.banned);
    let retry = bob.decision.retry_after;
    assert!(
        retry > Duration::from_secs(590) && retry <= Duration::from_secs(600),
        "{retry:?}"
    );
}

/// A native batch on a networked store: its keys decided concurrently (the path a memory store,
/// which answers at once, does not take), the items of each key one after another in batch
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_on_redis_keeps_each_keys_order() {
    use drl_proto::drl::v1 as native;
    use drl_redis::{Consistency, RedisStore};
    use drl_server::{Metrics, Node};
    use drl_testkit::node::TestNode;
    use std::sync::Arc;

    let redis = Redis::start();
    let mut config = RedisConfig::new(vec![redis.url()]);
    config.consistency = Consistency::Fast;
    config.timeout = Duration::from_secs(2);
    let per_minute = Policy::per(3, Duration::from_secs(60), Algorithm::default()).unwrap();
    let limiter = Limiter::builder(Rules::only_default(per_minute))
        .sweep_interval(None)
        .build_with_store(RedisStore::new(&config).unwrap());
    let node = TestNode::start(Node::new(limiter, Arc::new(Metrics::new()))).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let users = ["alice", "bob", "carol"];
    let checks = (0..15)
        .map(|i| native::Check {
            user_id: users[i % 3].into(),
            endpoint: "/a".into(),
            hits: None,
        })
        .collect();
    let batch = native::rate_limiter_client::RateLimiterClient::new(channel)
        .check(native::CheckRequest { checks })
        .await
        .unwrap()
        .into_inner();
    for (i, result) in batch.results.iter().enumerate() {
        let Some(native::check_result::Outcome::Decision(d)) = &result.outcome else {
            panic!("item {i}: {result:?}");
        };
        assert_eq!(d.allowed, i < 9, "item {i} ({})", users[i % 3]);
        if d.allowed {
            assert_eq!(d.remaining, 2 - (i / 3) as u32, "item {i}");
        }
    }
    node.stop().await;
}
