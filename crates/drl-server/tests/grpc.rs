//! The gRPC API over a real loopback socket (port 0), with tonic clients: the native batch
//! `drl.v1.RateLimiter/Check`, Envoy's `ShouldRateLimit`, and `grpc.health.v1.Health`.

#![allow(clippy::unwrap_used)] // Test code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drl_core::{Algorithm, Limiter, ManualClock, Policy, Rules};
use drl_proto::drl::v1 as native;
use drl_proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use drl_proto::envoy::service::ratelimit::v3 as rls;
use drl_server::grpc::MAX_BATCH;
use drl_server::{Metrics, Node};
use drl_testkit::DEADLINE;
use drl_testkit::node::TestNode;
use native::check_error::Code as ItemCode;
use native::check_result::Outcome;
use native::rate_limiter_client::RateLimiterClient;
use rls::rate_limit_response::Code as EnvoyCode;
use rls::rate_limit_response::rate_limit::Unit;
use rls::rate_limit_service_client::RateLimitServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// N requests per minute for every pair.
fn per_minute(n: u64) -> Rules {
    Rules::only_default(Policy::per(n, Duration::from_secs(60), Algorithm::default()).unwrap())
}

/// A node on fresh loopback ports, with a manual clock, asked over gRPC.
struct GrpcServer {
    addr: SocketAddr,
    limiter: Limiter,
    node: TestNode,
}

impl GrpcServer {
    async fn start(rules: Rules) -> Self {
        Self::start_with_metrics(rules, Arc::new(Metrics::new())).await
    }

    /// Serves `rules`, counting into `metrics`.
    async fn start_with_metrics(rules: Rules, metrics: Arc<Metrics>) -> Self {
        let limiter = Limiter::builder(rules)
            .clock(ManualClock::new(0))
            .sweep_interval(None)
            .build();
        let node = TestNode::start(Node::new(limiter.clone(), metrics)).await;
        Self {
            addr: node.grpc,
            limiter,
            node,
        }
    }

    async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{}", self.addr)).unwrap();
        tokio::time::timeout(DEADLINE, endpoint.connect())
            .await
            .expect("connects in time")
            .unwrap()
    }

    async fn native(&self) -> RateLimiterClient<Channel> {
        RateLimiterClient::new(self.channel().await)
    }

    async fn envoy(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel().await)
    }

    /// Hits left for a pair, read without counting.
    fn remaining(&self, user_id: &str, endpoint: &str) -> u32 {
        self.limiter.check(user_id, endpoint, 0).unwrap().remaining
    }

    async fn stop(self) {
        self.node.stop().await;
    }
}

fn item(user_id: &str, endpoint: &str, hits: Option<u32>) -> native::Check {
    native::Check {
        user_id: user_id.into(),
        endpoint: endpoint.into(),
        hits,
    }
}

async fn check_batch(
    client: &mut RateLimiterClient<Channel>,
    checks: Vec<native::Check>,
) -> Result<Vec<Outcome>, tonic::Status> {
    let response = client.check(native::CheckRequest { checks }).await?;
    Ok(response
        .into_inner()
        .results
        .into_iter()
        .map(|r| r.outcome.expect("every result has an outcome"))
        .collect())
}

fn decision(outcome: &Outcome) -> &native::Decision {
    match outcome {
        Outcome::Decision(d) => d,
        Outcome::Error(e) => panic!("expected a decision, got {e:?}"),
    }
}

#[tokio::test]
async fn native_batch_is_answered_in_order_until_the_limit() {
    let server = GrpcServer::start(per_minute(3)).await;
    let mut client = server.native().await;
    let checks = vec![
        item("alice", "/a", None),
        item("alice", "/a", Some(2)),
        item("alice", "/a", None),
        item("bob", "/a", Some(0)),
    ];
    let outcomes = check_batch(&mut client, checks).await.unwrap();
    assert_eq!(outcomes.len(), 4);
    let first = decision(&outcomes[0]);
    assert!(first.allowed);
    assert_eq!((first.limit, first.remaining), (3, 2));
    assert_eq!(first.retry_after_ms, 0);
    // The default algorithm (sliding window) may need a bucket beyond the window to reset fully.
    assert!(first.reset_after_ms > 0 && first.reset_after_ms <= 120_000);
    let second = decision(&outcomes[1]);
    assert!(second.allowed);
    assert_eq!(second.remaining, 0);
    let denied = decision(&outcomes[2]);
    assert!(!denied.allowed, "the fourth hit of 3/min is denied");
    assert!(denied.retry_after_ms > 0);
    // hits = 0 reads without counting.
    let read = decision(&outcomes[3]);
    assert!(read.allowed);
    assert_eq!(read.remaining, 3);
    assert_eq!(server.remaining("bob", "/a"), 3);
    server.stop().await;
}

#[tokio::test]
async fn interleaved_keys_of_a_batch_keep_each_keys_order() {
    // Keys are decided concurrently, the items of each key one after another in batch order:
    // each key's first three items are admitted, its later ones denied.
    let server = GrpcServer::start(per_minute(3)).await;
    let mut client = server.native().await;
    let users = ["alice", "bob", "carol"];
    let checks = (0..15)
        .map(|i| item(users[i % 3], "/a", None))
        .collect::<Vec<_>>();
    let outcomes = check_batch(&mut client, checks).await.unwrap();
    for (i, outcome) in outcomes.iter().enumerate() {
        let d = decision(outcome);
        assert_eq!(d.allowed, i < 9, "item {i} ({})", users[i % 3]);
        if d.allowed {
            assert_eq!(d.remaining, 2 - (i / 3) as u32, "item {i}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_item_gets_its_own_error_and_is_not_counted() {
    let server = GrpcServer::start(per_minute(5)).await;
    let mut client = server.native().await;
    let long = "x".repeat(1025);
    let checks = vec![
        item("", "/a", None),
        item("alice", "/a", None),
        item("alice", &long, None),
        item("alice", "/b", Some(1_000_001)),
    ];
    let outcomes = check_batch(&mut client, checks).await.unwrap();
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 1 {
            assert!(decision(outcome).allowed);
            continue;
        }
        let Outcome::Error(e) = outcome else {
            panic!("item {i}: expected an error, got {outcome:?}");
        };
        assert_eq!(e.code(), ItemCode::InvalidArgument, "item {i}");
        assert!(!e.message.is_empty());
    }
    let Outcome::Error(e) = &outcomes[0] else {
        unreachable!()
    };
    assert!(e.message.contains("user_id"), "{}", e.message);
    let Outcome::Error(e) = &outcomes[3] else {
        unreachable!()
    };
    assert!(e.message.contains("hits"), "{}", e.message);
    assert_eq!(server.remaining("alice", "/a"), 4);
    assert_eq!(server.remaining("alice", "/b"), 5);
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_batch_is_refused_whole() {
    let server = GrpcServer::start(per_minute(5)).await;
    let mut client = server.native().await;
    let full = vec![item("alice", "/a", Some(0)); MAX_BATCH];
    assert_eq!(
        check_batch(&mut client, full).await.unwrap().len(),
        MAX_BATCH
    );
    let over = vec![item("alice", "/a", None); MAX_BATCH + 1];
    let status = check_batch(&mut client, over).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1001"), "{}", status.message());
    assert_eq!(server.remaining("alice", "/a"), 5);
    assert!(check_batch(&mut client, vec![]).await.unwrap().is_empty());
    server.stop().await;
}

fn entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.into(),
        value: value.into(),
    }
}

fn pair(user_id: &str, endpoint: &str) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![entry("user_id", user_id), entry("endpoint", endpoint)],
        ..Default::default()
    }
}

fn envoy_request(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> rls::RateLimitRequest {
    rls::RateLimitRequest {
        domain: "drl".into(),
        descriptors,
        hits_addend,
    }
}

async fn should_rate_limit(
    client: &mut RateLimitServiceClient<Channel>,
    request: rls::RateLimitRequest,
) -> Result<rls::RateLimitResponse, tonic::Status> {
    Ok(client.should_rate_limit(request).await?.into_inner())
}

#[tokio::test]
async fn envoy_answers_ok_then_over_limit_after_n() {
    let server = GrpcServer::start(per_minute(2)).await;
    let mut client = server.envoy().await;
    for remaining in [1, 0] {
        let response = should_rate_limit(&mut client, envoy_request(vec![pair("alice", "/a")], 0))
            .await
            .unwrap();
        assert_eq!(response.overall_code(), EnvoyCode::Ok);
        let [status] = response.statuses.as_slice() else {
            panic!("one status per descriptor: {response:?}");
        };
        assert_eq!(status.code(), EnvoyCode::Ok);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(limit.requests_per_unit, 2);
        assert_eq!(limit.unit(), Unit::Minute);
        assert_eq!(status.limit_remaining, remaining);
        let reset = status.duration_until_reset.unwrap();
        assert!(reset.seconds > 0 && reset.seconds <= 120, "{reset:?}");
    }
    // Entries in the other order match no rule (levels are ordered, as in envoyproxy/ratelimit):
    // OK, with no limit.
    let reversed = RateLimitDescriptor {
        entries: vec![entry("endpoint", "/a"), entry("user_id", "alice")],
        ..Default::default()
    };
    let response = should_rate_limit(&mut client, envoy_request(vec![reversed], 0))
        .await
        .unwrap();
    assert_eq!(response.overall_code(), EnvoyCode::Ok);
    assert_eq!(response.statuses[0].current_limit, None);
    let response = should_rate_limit(&mut client, envoy_request(vec![pair("alice", "/a")], 0))
        .await
        .unwrap();
    assert_eq!(response.overall_code(), EnvoyCode::OverLimit);
    assert_eq!(response.statuses[0].code(), EnvoyCode::OverLimit);
    assert_eq!(response.statuses[0].limit_remaining, 0);
    server.stop().await;
}

#[tokio::test]
async fn envoy_request_is_all_or_nothing_across_descriptors() {
    let server = GrpcServer::start(per_minute(3)).await;
    let mut client = server.envoy().await;
    // alice has 1 left; bob has 3.
    should_rate_limit(&mut client, envoy_request(vec![pair("alice", "/a")], 2))
        .await
        .unwrap();
    assert_eq!(server.remaining("alice", "/a"), 1);

    let both = vec![pair("bob", "/a"), pair("alice", "/a")];
    let response = should_rate_limit(&mut client, envoy_request(both, 2))
        .await
        .unwrap();
    assert_eq!(response.overall_code(), EnvoyCode::OverLimit);
    assert_eq!(response.statuses.len(), 2);
    assert_eq!(response.statuses[0].code(), EnvoyCode::Ok);
    assert_eq!(response.statuses[1].code(), EnvoyCode::OverLimit);
    assert_eq!(
        response.statuses[0].limit_remaining, 3,
        "bob's status says his true remainder: he was not counted"
    );
    assert_eq!(server.remaining("bob", "/a"), 3, "bob is not counted");
    assert_eq!(server.remaining("alice", "/a"), 1, "alice is not counted");

    // The same pair twice in one request needs the sum of both.
    let twice = vec![pair("bob", "/a"), pair("bob", "/a")];
    let response = should_rate_limit(&mut client, envoy_request(twice, 2))
        .await
        .unwrap();
    assert_eq!(response.overall_code(), EnvoyCode::OverLimit);
    assert_eq!(server.remaining("bob", "/a"), 3);

    let both = vec![pair("bob", "/a"), pair("alice", "/a")];
    let response = should_rate_limit(&mut client, envoy_request(both, 1))
        .await
        .unwrap();
    assert_eq!(response.overall_code(), EnvoyCode::Ok);
    assert_eq!(server.remaining("bob", "/a"), 2);
    assert_eq!(server.remaining("alice", "/a"), 0);
    server.stop().await;
}

#[tokio::test]
async fn envoy_hits_addend_per_descriptor_overrides_the_request() {
    let server = GrpcServer::start(per_minute(10)).await;
    let mut client = server.envoy().await;
    let mut heavy = pair("alice", "/a");
    heavy.hits_addend = Some(4);
    let descriptors = vec![heavy, pair("alice", "/b")];
    let response = should_rate_limit(&mut client, envoy_request(descriptors, 3))
        .await
        .unwrap();
    assert_eq!(response.overall_code(), EnvoyCode::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 6);
    assert_eq!(response.statuses[1].limit_remaining, 7);
    assert_eq!(server.remaining("alice", "/a"), 6);
    assert_eq!(server.remaining("alice", "/b"), 7);
    server.stop().await;
}

#[tokio::test]
async fn envoy_bad_input_is_invalid_argument_and_counts_nothing() {
    let server = GrpcServer::start(per_minute(10)).await;
    let mut client = server.envoy().await;
    let good = || pair("alice", "/a");
    let mut no_domain = envoy_request(vec![good()], 0);
    no_domain.domain.clear();
    let mut huge_hits = pair("alice", "/b");
    huge_hits.hits_addend = Some(u64::from(u32::MAX) + 1);
    let mut many_entries = good();
    many_entries.entries = (0..17).map(|i| entry(&format!("k{i}"), "v")).collect();
    let mut unknown_domain = envoy_request(vec![good()], 0);
    unknown_domain.domain = "nope".into();
    let cases = [
        ("empty domain", no_domain, "domain"),
        ("no descriptors", envoy_request(vec![], 0), "descriptors"),
        ("unknown domain", unknown_domain, "unknown domain \"nope\""),
        (
            "no entries",
            envoy_request(vec![good(), RateLimitDescriptor::default()], 0),
            "descriptor 1 has no entries",
        ),
        (
            "empty key",
            envoy_request(
                vec![
                    good(),
                    RateLimitDescriptor {
                        entries: vec![entry("", "x")],
                        ..Default::default()
                    },
                ],
                0,
            ),
            "key must not be empty",
        ),
        (
            "too many entries",
            envoy_request(vec![good(), many_entries], 0),
            "maximum",
        ),
        (
            "empty user_id",
            envoy_request(vec![good(), pair("", "/a")], 0),
            "user_id",
        ),
        (
            "hits overflow",
            envoy_request(vec![good(), huge_hits], 0),
            "hits",
        ),
        (
            "too many descriptors",
            envoy_request(vec![good(); MAX_BATCH + 1], 0),
            "maximum",
        ),
    ];
    for (name, request, message) in cases {
        let status = should_rate_limit(&mut client, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert!(
            status.message().contains(message),
            "{name}: {}",
            status.message()
        );
    }
    assert_eq!(server.remaining("alice", "/a"), 10);
    assert_eq!(server.remaining("alice", "/b"), 10);
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let server = GrpcServer::start(per_minute(10)).await;
    let mut client = HealthClient::new(server.channel().await);
    for service in [
        "",
        "drl.v1.RateLimiter",
        "envoy.service.ratelimit.v3.RateLimitService",
    ] {
        let response = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn grpc_decisions_are_counted_in_the_metrics() {
    let metrics = Arc::new(Metrics::new());
    let server = GrpcServer::start_with_metrics(per_minute(1), Arc::clone(&metrics)).await;
    let mut native = server.native().await;
    let checks = vec![item("alice", "/a", None), item("alice", "/a", None)];
    check_batch(&mut native, checks).await.unwrap();
    let mut envoy = server.envoy().await;
    let both = vec![pair("bob", "/a"), pair("alice", "/a")];
    let response = should_rate_limit(&mut envoy, envoy_request(both, 0))
        .await
        .unwrap();
    assert_eq!(response.overall_code(), EnvoyCode::OverLimit);
    let text = metrics.encode();
    // Native: one allowed, one denied. Envoy: a denied request counts each descriptor denied.
    for (series, value) in [
        (
            "drl_decisions_total{result=\"allowed\",rule=\"default\"}",
            1,
        ),
        ("drl_decisions_total{result=\"denied\",rule=\"default\"}", 1),
        (
            "drl_descriptor_decisions_total{rule=\"default\",result=\"denied\"}",
            2,
        ),
    ] {
        assert!(
            text.lines().any(|line| line == format!("{series} {value}")),
            "{series} {value} in:\n{text}"
        );
    }
    server.stop().await;
}

/// The wire shape of an Envoy request with `bytes` where the API has `string`: what a client can
/// send that a conforming one would not (invalid UTF-8).
mod raw {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Entry {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(crate) value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Descriptor {
        #[prost(message, repeated, tag = "1")]
        pub(crate) entries: Vec<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct EnvoyRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) domain: Vec<u8>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) descriptors: Vec<Descriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Check {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) user_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(crate) endpoint: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct CheckRequest {
        #[prost(message, repeated, tag = "1")]
        pub(crate) checks: Vec<Check>,
    }
}

/// Sends `message` to `path` and returns the call's status.
async fn raw_call<
    M: prost::Message + Default + Send + 'static,
    R: prost::Message + Default + Send + 'static,
>(
    channel: Channel,
    path: &'static str,
    message: M,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<M, R>::default();
    let uri_path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc
        .unary(tonic::Request::new(message), uri_path, codec)
        .await
    {
        Ok(_) => panic!("{path} accepted an undecodable message"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn invalid_utf8_is_invalid_argument_and_counts_nothing() {
    let server = GrpcServer::start(per_minute(10)).await;
    let bad = b"al\xffice".to_vec();
    let envoy = raw::EnvoyRequest {
        domain: b"drl".to_vec(),
        descriptors: vec![raw::Descriptor {
            entries: vec![
                raw::Entry {
                    key: b"user_id".to_vec(),
                    value: bad.clone(),
                },
                raw::Entry {
                    key: b"endpoint".to_vec(),
                    value: b"/a".to_vec(),
                },
            ],
        }],
    };
    let status = raw_call::<_, rls::RateLimitResponse>(
        server.channel().await,
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        envoy,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("invalid request message"),
        "{status:?}"
    );
    let native_request = raw::CheckRequest {
        checks: vec![raw::Check {
            user_id: bad,
            endpoint: b"/a".to_vec(),
        }],
    };
    let status = raw_call::<_, native::CheckResponse>(
        server.channel().await,
        "/drl.v1.RateLimiter/Check",
        native_request,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(server.limiter.store().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_service_the_node_does_not_have_is_unimplemented() {
    let server = GrpcServer::start(per_minute(10)).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    for path in [
        "/envoy.service.ratelimit.v2.RateLimitService/ShouldRateLimit",
        "/drl.v1.RateLimiterX/Check",
        "/nothing",
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<rls::RateLimitRequest, rls::RateLimitResponse, _>(
                tonic::Request::new(rls::RateLimitRequest::default()),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }
}
