//! Every input limit of docs/api.md ("Input limits"), over real sockets on one node serving
//! both APIs: a request just at the limit is answered as usual, one just over it gets the
//! documented error, and the counters are unchanged (read back through the API).

#![allow(clippy::unwrap_used)] // Test code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drl_core::limiter::{MAX_DESCRIPTORS, MAX_ENTRIES};
use drl_core::{Limiter, ManualClock, Store};
use drl_proto::drl::v1 as native;
use drl_proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use drl_proto::envoy::service::ratelimit::v3 as rls;
use drl_proto::json::MAX_HITS;
use drl_redis::{Consistency, RedisConfig, RedisStore};
use drl_server::grpc::MAX_BATCH;
use drl_server::limits::EdgeLimits;
use drl_server::{Config, Metrics, Node};
use drl_testkit::node::TestNode;
use drl_testkit::redis::Redis;
use drl_testkit::{DEADLINE, wait_until};
use native::rate_limiter_client::RateLimiterClient;
use prost::Message;
use rls::rate_limit_service_client::RateLimitServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;

/// Longest identifier (user_id, endpoint, domain, descriptor key and value), in bytes.
const MAX_ID: usize = drl_core::key::MAX_ID_LEN;

/// A domain name exactly [`MAX_ID`] bytes long, with one limited key.
fn domain() -> String {
    "d".repeat(MAX_ID)
}

/// The rules of [`LimitsNode`]: the native default rule (100 per minute) and the domain
/// [`domain()`], whose `user` key allows 10 per minute.
fn rules() -> drl_core::Rules {
    let yaml = format!(
        "domain: {}\ndescriptors:\n  - key: user\n    rate_limit: {{unit: minute, requests_per_unit: 10}}\n",
        domain()
    );
    Config::from_yaml("limits.yaml", &yaml).unwrap().rules
}

/// A node serving HTTP and gRPC with `limits`: the native default rule (100 per minute) and
/// the domain [`domain()`], whose `user` key allows 10 per minute.
struct LimitsNode {
    http: SocketAddr,
    grpc: SocketAddr,
    node: TestNode,
}

impl LimitsNode {
    async fn start(limits: EdgeLimits) -> Self {
        let limiter = Limiter::builder(rules())
            .clock(ManualClock::new(0))
            .sweep_interval(None)
            .build();
        Self::serve(limiter, limits).await
    }

    /// The same node on a Redis store (a single instance, `fast`; each check waits at most
    /// `timeout` for it).
    async fn start_on_redis(limits: EdgeLimits, redis: &Redis, timeout: Duration) -> Self {
        let mut config = RedisConfig::new(vec![redis.url()]);
        config.consistency = Consistency::Fast;
        config.timeout = timeout;
        let store = RedisStore::new(&config).unwrap();
        let limiter = Limiter::builder(rules())
            .sweep_interval(None)
            .build_with_store(store);
        Self::serve(limiter, limits).await
    }

    async fn serve<S: Store>(limiter: Limiter<S>, limits: EdgeLimits) -> Self {
        let metrics = Arc::new(Metrics::new());
        let node = Node::new(limiter, Arc::clone(&metrics)).with_limits(limits);
        let node = TestNode::start(node).await;
        Self {
            http: node.http,
            grpc: node.grpc,
            node,
        }
    }

    async fn stop(self) {
        self.node.stop().await;
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn send(&self, request: &[u8]) -> Reply {
        let exchange = async {
            let mut stream = TcpStream::connect(self.http).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            response
        };
        Reply::parse(
            &tokio::time::timeout(DEADLINE, exchange)
                .await
                .expect("server answers"),
        )
    }

    /// `POST path` with a JSON body and extra header lines.
    async fn post(&self, path: &str, body: &[u8], extra: &str) -> Reply {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.send(&request).await
    }

    async fn check(&self, body: &str) -> Reply {
        self.post("/v1/check", body.as_bytes(), "").await
    }

    /// Hits left for a native pair, read through `POST /v1/check` with `hits: 0`.
    async fn remaining(&self, user_id: &str, endpoint: &str) -> u64 {
        let body = serde_json::json!({"user_id": user_id, "endpoint": endpoint, "hits": 0});
        let reply = self.check(&body.to_string()).await;
        // 429 when nothing is left.
        assert!(matches!(reply.status, 200 | 429), "{reply:?}");
        reply.json()["remaining"].as_u64().unwrap()
    }

    async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{}", self.grpc)).unwrap();
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

    /// Hits left for a user of the domain, read through `ShouldRateLimit` without counting.
    async fn envoy_remaining(&self, user: &str) -> u32 {
        let mut read = descriptor(&[("user", user)]);
        read.hits_addend = Some(0);
        let response = self
            .envoy()
            .await
            .should_rate_limit(envoy_request(vec![read]))
            .await
            .unwrap();
        response.into_inner().statuses[0].limit_remaining
    }

    /// The value of a counter in the metrics exposition.
    async fn metric(&self, series: &str) -> u64 {
        let reply = self
            .send(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        assert_eq!(reply.status, 200);
        reply
            .body
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the metrics"))
    }
}

/// A parsed HTTP/1.1 response (an interim `100 Continue` skipped).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Self {
        let mut text = String::from_utf8(raw.to_vec()).expect("UTF-8 response");
        if let Some(rest) = text.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n") {
            text = rest.to_owned();
        }
        let (head, body) = text.split_once("\r\n\r\n").expect("complete response");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        Self {
            status: status.parse().unwrap(),
            headers: lines
                .map(|line| {
                    let (name, value) = line.split_once(':').unwrap();
                    (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                })
                .collect(),
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().expect("an error").to_owned()
    }
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn envoy_request(descriptors: Vec<RateLimitDescriptor>) -> rls::RateLimitRequest {
    rls::RateLimitRequest {
        domain: domain(),
        descriptors,
        hits_addend: 0,
    }
}

fn item(user_id: &str, endpoint: &str, hits: u32) -> native::Check {
    native::Check {
        user_id: user_id.into(),
        endpoint: endpoint.into(),
        hits: Some(hits),
    }
}

/// The JSON form of an Envoy request in the test domain.
fn envoy_json(descriptors: &[Vec<(String, String)>]) -> String {
    let descriptors: Vec<_> = descriptors
        .iter()
        .map(|entries| {
            let entries: Vec<_> = entries
                .iter()
                .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
                .collect();
            serde_json::json!({ "entries": entries })
        })
        .collect();
    serde_json::json!({"domain": domain(), "descriptors": descriptors}).to_string()
}

#[tokio::test]
async fn http_body_at_the_limit_is_read_and_one_byte_more_is_413() {
    let node = LimitsNode::start(EdgeLimits::default()).await;
    let max = EdgeLimits::default().max_body_bytes;
    let check = r#"{"user_id": "u", "endpoint": "/e"}"#;
    let padded = |len: usize| format!("{check}{}", " ".repeat(len - check.len()));

    let at_limit = node.check(&padded(max)).await;
    assert_eq!(at_limit.status, 200, "{at_limit:?}");
    let over = node.check(&padded(max + 1)).await;
    assert_eq!(over.status, 413, "{over:?}");
    assert_eq!(over.header("content-type"), Some("application/json"));
    assert_eq!(
        over.error(),
        format!("request body is larger than {max} bytes, the maximum (max_body_bytes)")
    );
    // The same on the Envoy JSON route.
    let json = envoy_json(&[vec![("user".into(), "u".into())]]);
    let over = node
        .post("/json", format!("{json}{}", " ".repeat(max)).as_bytes(), "")
        .await;
    assert_eq!(over.status, 413, "{over:?}");

    assert_eq!(node.remaining("u", "/e").await, 99);
    assert_eq!(node.envoy_remaining("u").await, 10);
    node.stop().await;
}

#[tokio::test]
async fn http_body_limit_is_configurable() {
    let node = LimitsNode::start(EdgeLimits {
        max_body_bytes: 100,
        ..EdgeLimits::default()
    })
    .await;
    let check = r#"{"user_id": "u", "endpoint": "/e"}"#;
    let padded = |len: usize| format!("{check}{}", " ".repeat(len - check.len()));
    assert_eq!(node.check(&padded(100)).await.status, 200);
    let over = node.check(&padded(101)).await;
    assert_eq!(over.status, 413, "{over:?}");
    assert!(over.error().contains("larger than 100 bytes"));
    assert_eq!(node.remaining("u", "/e").await, 99);
    node.stop().await;
}

/// A native batch whose encoding is exactly `size` bytes: one counted check of ("alice", "/a"),
/// then reads (hits 0) of padded endpoints.
fn batch_of_size(size: usize) -> native::CheckRequest {
    let mut request = native::CheckRequest {
        checks: vec![item("alice", "/a", 1)],
    };
    while request.encoded_len() + 1040 < size {
        request.checks.push(item("pad", &"p".repeat(1000), 0));
    }
    // Two lengths, as a length's varint growing by a byte can skip a size.
    for user_len in 1..=4 {
        for len in 1..=MAX_ID {
            request
                .checks
                .push(item(&"u".repeat(user_len), &"p".repeat(len), 0));
            if request.encoded_len() == size {
                return request;
            }
            request.checks.pop();
        }
    }
    panic!("no batch of {size} bytes");
}

#[tokio::test]
async fn grpc_message_at_the_limit_is_decoded_and_one_byte_more_is_out_of_range() {
    let max = 8 * 1024;
    let node = LimitsNode::start(EdgeLimits {
        max_message_bytes: max,
        ..EdgeLimits::default()
    })
    .await;
    let mut client = node.native().await;
    let at_limit = client.check(batch_of_size(max)).await.unwrap();
    assert!(at_limit.into_inner().results.len() > 1);
    let status = client.check(batch_of_size(max + 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "found {} bytes, the limit is: {max} bytes",
            max + 1
        )),
        "{status:?}"
    );
    // Envoy's service has the same limit.
    let big = descriptor(&[("user", "u"), ("pad", &"p".repeat(MAX_ID))]);
    let status = node
        .envoy()
        .await
        .should_rate_limit(envoy_request(vec![big; 8]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    assert_eq!(node.remaining("alice", "/a").await, 99);
    assert_eq!(node.envoy_remaining("u").await, 10);
    node.stop().await;
}

#[tokio::test]
async fn identifiers_of_1_kib_are_accepted_and_one_byte_more_is_refused_by_every_api() {
    let node = LimitsNode::start(EdgeLimits::default()).await;
    let max = "x".repeat(MAX_ID);
    let over = "x".repeat(MAX_ID + 1);

    // HTTP /v1/check: user_id, endpoint.
    let body = |user: &str, endpoint: &str| {
        serde_json::json!({"user_id": user, "endpoint": endpoint}).to_string()
    };
    assert_eq!(node.check(&body(&max, &max)).await.status, 200);
    for (field, request) in [
        ("user_id", body(&over, &max)),
        ("endpoint", body(&max, &over)),
    ] {
        let reply = node.check(&request).await;
        assert_eq!(reply.status, 400, "{field}: {reply:?}");
        assert_eq!(
            reply.error(),
            format!("{field} is 1025 bytes long; the maximum is 1024 bytes")
        );
    }
    assert_eq!(node.remaining(&max, &max).await, 99);

    // gRPC native: user_id, endpoint, per item.
    let mut client = node.native().await;
    let results = client
        .check(native::CheckRequest {
            checks: vec![
                item(&max, &max, 1),
                item(&over, &max, 1),
                item(&max, &over, 1),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(matches!(
        results[0].outcome,
        Some(native::check_result::Outcome::Decision(_))
    ));
    for (i, field) in [(1, "user_id"), (2, "endpoint")] {
        let Some(native::check_result::Outcome::Error(e)) = &results[i].outcome else {
            panic!("item {i}: {:?}", results[i]);
        };
        assert_eq!(e.code(), native::check_error::Code::InvalidArgument);
        assert_eq!(
            e.message,
            format!("{field} is 1025 bytes long; the maximum is 1024 bytes")
        );
    }
    assert_eq!(node.remaining(&max, &max).await, 98);

    // Envoy, gRPC and JSON: domain, entry key, entry value (the domain is 1 KiB long).
    let mut envoy = node.envoy().await;
    let ok = envoy
        .should_rate_limit(envoy_request(vec![descriptor(&[("user", &max)])]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().statuses[0].limit_remaining, 9);
    let mut long_domain = envoy_request(vec![descriptor(&[("user", &max)])]);
    long_domain.domain.push('d');
    let cases = [
        ("domain", long_domain),
        (
            "descriptor entry key",
            envoy_request(vec![
                descriptor(&[("user", &max)]),
                descriptor(&[(&over, "v")]),
            ]),
        ),
        (
            "descriptor entry value",
            envoy_request(vec![
                descriptor(&[("user", &max)]),
                descriptor(&[("k", &over)]),
            ]),
        ),
    ];
    for (field, request) in cases {
        let status = envoy.should_rate_limit(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let expected = format!("{field} is 1025 bytes long; the maximum is 1024 bytes");
        assert_eq!(status.message(), expected);
        let json = serde_json::json!({
            "domain": request.domain,
            "descriptors": request.descriptors.iter().map(|d| serde_json::json!({
                "entries": d.entries.iter().map(|e| serde_json::json!({"key": e.key, "value": e.value})).collect::<Vec<_>>()
            })).collect::<Vec<_>>(),
        });
        let reply = node.post("/json", json.to_string().as_bytes(), "").await;
        assert_eq!(reply.status, 400, "{field}: {reply:?}");
        assert_eq!(reply.error(), expected);
    }
    assert_eq!(node.envoy_remaining(&max).await, 9);
    node.stop().await;
}

#[tokio::test]
async fn descriptors_and_entries_at_the_limit_are_checked_and_one_more_is_refused() {
    let node = LimitsNode::start(EdgeLimits::default()).await;
    let counted = || vec![("user".to_owned(), "u".to_owned())];
    let other = |i: usize| vec![("other".to_owned(), i.to_string())];
    let deep = |n: usize| -> Vec<(String, String)> {
        (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()
    };
    let as_proto = |descriptors: &[Vec<(String, String)>]| {
        envoy_request(
            descriptors
                .iter()
                .map(|entries| {
                    let pairs: Vec<(&str, &str)> = entries
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    descriptor(&pairs)
                })
                .collect(),
        )
    };
    let mut envoy = node.envoy().await;

    // At the limits: 64 descriptors, one of 16 entries; answered (and counted once).
    let mut at_limit: Vec<_> = (1..MAX_DESCRIPTORS - 1).map(other).collect();
    at_limit.push(counted());
    at_limit.push(deep(MAX_ENTRIES));
    assert_eq!(at_limit.len(), MAX_DESCRIPTORS);
    let response = envoy
        .should_rate_limit(as_proto(&at_limit))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.statuses.len(), MAX_DESCRIPTORS);
    let reply = node
        .post("/json", envoy_json(&at_limit).as_bytes(), "")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(node.envoy_remaining("u").await, 8);

    // One more descriptor, or one more entry: refused whole, nothing counted.
    let mut too_many = at_limit.clone();
    too_many.push(other(0));
    let mut too_deep = at_limit.clone();
    too_deep[MAX_DESCRIPTORS - 1] = deep(MAX_ENTRIES + 1);
    for (what, descriptors, expected) in [
        (
            "descriptors",
            too_many,
            "descriptors: 65; the maximum is 64",
        ),
        (
            "entries",
            too_deep,
            "entries in a descriptor: 17; the maximum is 16",
        ),
    ] {
        let status = envoy
            .should_rate_limit(as_proto(&descriptors))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert_eq!(status.message(), expected, "{what}");
        let reply = node
            .post("/json", envoy_json(&descriptors).as_bytes(), "")
            .await;
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
        assert_eq!(reply.error(), expected, "{what}");
    }
    assert_eq!(node.envoy_remaining("u").await, 8);
    node.stop().await;
}

#[tokio::test]
async fn a_native_batch_of_1000_is_answered_and_1001_is_refused_whole() {
    let node = LimitsNode::start(EdgeLimits::default()).await;
    let mut client = node.native().await;
    let mut batch = vec![item("alice", "/a", 0); MAX_BATCH - 1];
    batch.push(item("alice", "/a", 1));
    let results = client
        .check(native::CheckRequest {
            checks: batch.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), MAX_BATCH);
    batch.push(item("alice", "/a", 1));
    let status = client
        .check(native::CheckRequest { checks: batch })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "1001 items in one request; the maximum is 1000"
    );
    assert_eq!(node.remaining("alice", "/a").await, 99);
    node.stop().await;
}

#[tokio::test]
async fn hits_up_to_the_maximum_are_decided_and_beyond_are_refused_by_every_api() {
    let node = LimitsNode::start(EdgeLimits::default()).await;
    let range = format!("it must be from 0 to {MAX_HITS}");

    // HTTP: MAX_HITS is a valid request (denied: more than the limit, nothing counted); 0 only
    // reads; above, negative, fractional or beyond u64 is 400.
    let hits = |hits: &str| format!(r#"{{"user_id": "u", "endpoint": "/e", "hits": {hits}}}"#);
    let at_max = node.check(&hits(&MAX_HITS.to_string())).await;
    assert_eq!(at_max.status, 429, "{at_max:?}");
    assert_eq!(node.check(&hits("100")).await.status, 200);
    for bad in [
        &(MAX_HITS + 1).to_string(),
        "4294967296",
        "-1",
        "1.5",
        "99999999999999999999",
    ] {
        let reply = node.check(&hits(bad)).await;
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
    }
    let reply = node.check(&hits(&(MAX_HITS + 1).to_string())).await;
    assert!(reply.error().contains(&range), "{reply:?}");
    assert_eq!(node.remaining("u", "/e").await, 0);

    // gRPC native, per item: hits is a uint32, so u32::MAX is the largest one can send.
    let mut client = node.native().await;
    let results = client
        .check(native::CheckRequest {
            checks: vec![
                item("v", "/e", MAX_HITS),
                item("v", "/e", MAX_HITS + 1),
                item("v", "/e", u32::MAX),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let Some(native::check_result::Outcome::Decision(d)) = &results[0].outcome else {
        panic!("{:?}", results[0]);
    };
    assert!(!d.allowed);
    for result in &results[1..] {
        let Some(native::check_result::Outcome::Error(e)) = &result.outcome else {
            panic!("{result:?}");
        };
        assert_eq!(e.code(), native::check_error::Code::InvalidArgument);
        assert!(e.message.contains(&range), "{e:?}");
    }
    assert_eq!(node.remaining("v", "/e").await, 100);

    // Envoy: the request's hits_addend (uint32) and a descriptor's (uint64).
    let mut envoy = node.envoy().await;
    let mut at_max = envoy_request(vec![descriptor(&[("user", "u")])]);
    at_max.hits_addend = MAX_HITS;
    let response = envoy.should_rate_limit(at_max.clone()).await.unwrap();
    assert_eq!(
        response.into_inner().overall_code,
        i32::from(rls::rate_limit_response::Code::OverLimit)
    );
    let mut over_request = at_max.clone();
    over_request.hits_addend = MAX_HITS + 1;
    let mut over_descriptor = envoy_request(vec![descriptor(&[("user", "u")])]);
    over_descriptor.descriptors[0].hits_addend = Some(u64::from(u32::MAX) + 1);
    for request in [over_request, over_descriptor] {
        let status = envoy.should_rate_limit(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(&range), "{status:?}");
    }
    assert_eq!(node.envoy_remaining("u").await, 10);
    node.stop().await;
}

#[tokio::test]
async fn http_headers_at_the_limit_are_read_and_one_byte_more_is_431() {
    let max = 1024;
    let node = LimitsNode::start(EdgeLimits {
        max_header_bytes: max,
        ..EdgeLimits::default()
    })
    .await;
    let body = br#"{"user_id": "u", "endpoint": "/e"}"#;
    // The other headers of `post`: host, content-type, content-length, connection.
    let fixed = "host".len()
        + "x".len()
        + "content-type".len()
        + "application/json".len()
        + "content-length".len()
        + body.len().to_string().len()
        + "connection".len()
        + "close".len();
    let padding = |total: usize| format!("x-pad: {}\r\n", "p".repeat(total - fixed - 5));

    let at_limit = node.post("/v1/check", body, &padding(max)).await;
    assert_eq!(at_limit.status, 200, "{at_limit:?}");
    let over = node.post("/v1/check", body, &padding(max + 1)).await;
    assert_eq!(over.status, 431, "{over:?}");
    assert_eq!(
        over.error(),
        format!(
            "request headers are {} bytes (names and values); the maximum is {max} bytes (max_header_bytes)",
            max + 1
        )
    );
    assert_eq!(node.remaining("u", "/e").await, 99);
    node.stop().await;
}

#[tokio::test]
async fn grpc_headers_within_the_limit_are_read_and_beyond_the_call_is_refused() {
    let max = 4096;
    let node = LimitsNode::start(EdgeLimits {
        max_header_bytes: max,
        ..EdgeLimits::default()
    })
    .await;
    let mut client = node.native().await;
    let call = |pad: usize| {
        let mut request = tonic::Request::new(native::CheckRequest {
            checks: vec![item("alice", "/a", 1)],
        });
        request
            .metadata_mut()
            .insert("x-pad", "p".repeat(pad).parse().unwrap());
        request
    };
    // HTTP/2 counts each field's name, value and 32 bytes, pseudo-headers included: the
    // method, scheme, path, authority, content-type, te and user-agent of a tonic call are
    // well under 1 000 bytes.
    client.check(call(max - 1000)).await.unwrap();
    let status = client.check(call(max)).await.unwrap_err();
    // HTTP/2 answers the stream 431 before any call is made; tonic maps that to UNKNOWN.
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("431"), "{status:?}");
    assert_eq!(node.remaining("alice", "/a").await, 99);
    node.stop().await;
}

#[tokio::test]
async fn requests_beyond_max_in_flight_are_shed_at_once_on_both_apis() {
    // A check holds its place in flight while the store does not answer: a real Redis,
    // stopped (SIGSTOP) while the check waits for it.
    let redis = Redis::start();
    let node = LimitsNode::start_on_redis(
        EdgeLimits {
            max_in_flight: 1,
            ..EdgeLimits::default()
        },
        &redis,
        Duration::from_secs(60),
    )
    .await;
    let mut native = node.native().await;
    let mut envoy = node.envoy().await;
    assert_eq!(node.remaining("u", "/e").await, 100);

    redis.pause();
    let held = {
        let addr = node.http;
        tokio::spawn(async move {
            let request = check_request(r#"{"user_id": "u", "endpoint": "/e"}"#);
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            Reply::parse(&response)
        })
    };
    wait_until("the held check takes its place", async || {
        node.metric("drl_gate_used{budget=\"in_flight\"}").await == 1
    })
    .await;
    // The one place is taken: every other request is refused at once, not queued.
    let shed = node.check(r#"{"user_id": "u", "endpoint": "/e"}"#).await;
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(
        shed.error(),
        "overloaded: 1 requests are in flight, the maximum (max_in_flight); retry after a second, or on another node"
    );
    let status = native
        .check(native::CheckRequest {
            checks: vec![item("u", "/e", 1)],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().starts_with("overloaded"), "{status:?}");
    let status = envoy
        .should_rate_limit(envoy_request(vec![descriptor(&[("user", "u")])]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // Health and metrics still answer.
    let health = node
        .send(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(health.status, 200);
    assert_eq!(node.metric("drl_shed_total{reason=\"in_flight\"}").await, 3);

    // The held request, at the limit, is answered and counted; then the place is free again.
    redis.resume();
    let held = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the held check is answered once Redis is back")
        .unwrap();
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(
        node.check(r#"{"user_id": "u", "endpoint": "/e"}"#)
            .await
            .status,
        200
    );
    assert_eq!(node.remaining("u", "/e").await, 98);
    assert_eq!(node.envoy_remaining("u").await, 10);
    node.stop().await;
}

/// `POST /v1/check` with `body`, on a connection to be closed after the answer.
fn check_request(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends a check on a new connection and returns what came back before the server closed it.
async fn raw_exchange(addr: SocketAddr, body: &str) -> Vec<u8> {
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may close before or while we write: either is a refusal.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        response
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("closed in time")
}

/// One check on a kept-alive connection: sends it, reads one response.
async fn check_on(stream: &mut TcpStream, body: &str) -> Reply {
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let read = async {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            raw.push(byte[0]);
        }
        let head = String::from_utf8(raw.clone()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap();
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        raw.extend_from_slice(&body);
        Reply::parse(&raw)
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("answered in time")
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let node = LimitsNode::start(EdgeLimits {
        max_connections: 1,
        ..EdgeLimits::default()
    })
    .await;
    let check = r#"{"user_id": "u", "endpoint": "/e"}"#;
    let read = r#"{"user_id": "u", "endpoint": "/e", "hits": 0}"#;
    // The one connection allowed: kept alive, answered (so the server has accepted it).
    let mut open = TcpStream::connect(node.http).await.unwrap();
    assert_eq!(check_on(&mut open, check).await.status, 200);

    // Another connection, HTTP or gRPC, is closed without an answer.
    assert_eq!(raw_exchange(node.http, check).await, b"");
    let endpoint = Channel::from_shared(format!("http://{}", node.grpc)).unwrap();
    let grpc = async {
        let channel = endpoint.connect().await.ok()?;
        Some(
            RateLimiterClient::new(channel)
                .check(native::CheckRequest {
                    checks: vec![item("u", "/e", 1)],
                })
                .await,
        )
    };
    match tokio::time::timeout(DEADLINE, grpc)
        .await
        .expect("refused in time")
    {
        None => {} // the handshake failed
        // The transport's error: tonic says CANCELLED ("connection closed") or UNAVAILABLE.
        Some(Err(status)) => assert!(
            matches!(status.code(), Code::Cancelled | Code::Unavailable),
            "{status:?}"
        ),
        Some(Ok(response)) => panic!("answered over the connection limit: {response:?}"),
    }
    // Nothing was counted by the refused ones.
    let reply = check_on(&mut open, read).await;
    assert_eq!(reply.json()["remaining"], 99, "{reply:?}");

    // Once the first is closed, its place is free again: a new connection is answered (the
    // server frees the place when it sees the close, so the first tries may still be refused).
    drop(open);
    let started = tokio::time::Instant::now();
    let reply = loop {
        let raw = raw_exchange(node.http, check).await;
        if !raw.is_empty() {
            break Reply::parse(&raw);
        }
        assert!(started.elapsed() < DEADLINE, "the place was never freed");
        tokio::task::yield_now().await;
    };
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["remaining"], 98, "{reply:?}");
    node.stop().await;
}

#[test]
fn a_config_domain_longer_than_a_request_may_name_is_refused() {
    let at_limit = format!("domain: {}\ndescriptors: []\n", "d".repeat(MAX_ID));
    Config::from_yaml("long.yaml", &at_limit).unwrap();
    let over = format!("domain: {}\ndescriptors: []\n", "d".repeat(MAX_ID + 1));
    let e = Config::from_yaml("long.yaml", &over).unwrap_err();
    let messages: Vec<_> = e.diagnostics().iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        ["domain is 1025 bytes long; the maximum is 1024 bytes"]
    );
}
