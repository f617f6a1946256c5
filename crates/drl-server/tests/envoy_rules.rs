//! envoyproxy/ratelimit-format rules through the Envoy gRPC API, over a real loopback socket:
//! one test per matching rule, each taken from the semantics that envoyproxy/ratelimit's README
//! examples describe (configs and requests written here), plus drl's extensions (any window,
//! several limits per descriptor) and `POST /json`.

#![allow(clippy::unwrap_used)] // Test code.

use drl_testkit::node as common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use drl_core::{Limiter, ManualClock};
use drl_proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use drl_proto::envoy::service::ratelimit::v3 as rls;
use drl_server::config::Config;
use drl_server::{Metrics, Node};
use drl_testkit::DEADLINE;
use drl_testkit::node::TestNode;
use rls::rate_limit_response::Code;
use rls::rate_limit_response::rate_limit::Unit;
use rls::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

/// A node on `yaml` (one envoyproxy/ratelimit-format file), with a manual clock.
struct EnvoyNode {
    client: RateLimitServiceClient<Channel>,
    clock: ManualClock,
    metrics: Arc<Metrics>,
    _node: TestNode,
}

impl EnvoyNode {
    async fn start(yaml: &str) -> Self {
        let config = Config::from_yaml("rules.yaml", yaml).unwrap();
        let clock = ManualClock::new(0);
        let limiter = Limiter::builder(config.rules)
            .clock(clock.clone())
            .sweep_interval(None)
            .build();
        let metrics = Arc::new(Metrics::new());
        let node = TestNode::start(Node::new(limiter, Arc::clone(&metrics))).await;
        let endpoint = Channel::from_shared(format!("http://{}", node.grpc)).unwrap();
        let channel = tokio::time::timeout(DEADLINE, endpoint.connect())
            .await
            .unwrap()
            .unwrap();
        Self {
            client: RateLimitServiceClient::new(channel),
            clock,
            metrics,
            _node: node,
        }
    }

    async fn ask(
        &mut self,
        domain: &str,
        descriptors: &[&[(&str, &str)]],
    ) -> rls::RateLimitResponse {
        self.ask_hits(domain, descriptors, 0).await
    }

    async fn ask_hits(
        &mut self,
        domain: &str,
        descriptors: &[&[(&str, &str)]],
        hits_addend: u32,
    ) -> rls::RateLimitResponse {
        let request = rls::RateLimitRequest {
            domain: domain.into(),
            descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
            hits_addend,
        };
        self.client
            .should_rate_limit(request)
            .await
            .unwrap()
            .into_inner()
    }
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// (code, requests_per_unit, unit, remaining) of one status; `None` limit as 0 / Unknown.
fn status(response: &rls::RateLimitResponse, i: usize) -> (Code, u32, Unit, u32) {
    let s = &response.statuses[i];
    let (n, unit) = s
        .current_limit
        .as_ref()
        .map_or((0, Unit::Unknown), |l| (l.requests_per_unit, l.unit()));
    (s.code(), n, unit, s.limit_remaining)
}

#[tokio::test]
async fn key_and_value_select_a_rule() {
    let mut node = EnvoyNode::start(
        "domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit: {unit: second, requests_per_unit: 500}
  - key: database
    value: default
    rate_limit: {unit: second, requests_per_unit: 50}
",
    )
    .await;
    let users = node.ask("mongo_cps", &[&[("database", "users")]]).await;
    assert_eq!(status(&users, 0), (Code::Ok, 500, Unit::Second, 499));
    let default = node.ask("mongo_cps", &[&[("database", "default")]]).await;
    assert_eq!(status(&default, 0), (Code::Ok, 50, Unit::Second, 49));
    // A value with no rule is not limited: OK, no current limit.
    let other = node.ask("mongo_cps", &[&[("database", "logs")]]).await;
    assert_eq!(other.overall_code(), Code::Ok);
    assert_eq!(status(&other, 0), (Code::Ok, 0, Unit::Unknown, 0));
}

#[tokio::test]
async fn nested_descriptors_and_several_descriptors_per_request() {
    let mut node = EnvoyNode::start(
        "domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
",
    )
    .await;
    let marketing: &[(&str, &str)] = &[("message_type", "marketing"), ("to_number", "2061111111")];
    let number: &[(&str, &str)] = &[("to_number", "2061111111")];
    for sent in 1..=5 {
        let r = node.ask("messaging", &[marketing, number]).await;
        assert_eq!(r.overall_code(), Code::Ok);
        assert_eq!(status(&r, 0), (Code::Ok, 5, Unit::Day, 5 - sent));
        assert_eq!(status(&r, 1), (Code::Ok, 100, Unit::Day, 100 - sent));
    }
    // The sixth marketing message is over; the whole request is, and counts nothing.
    let r = node.ask("messaging", &[marketing, number]).await;
    assert_eq!(r.overall_code(), Code::OverLimit);
    assert_eq!(status(&r, 0).0, Code::OverLimit);
    assert_eq!(status(&r, 1).0, Code::Ok);
    let alone = node.ask("messaging", &[number]).await;
    assert_eq!(status(&alone, 0), (Code::Ok, 100, Unit::Day, 94));
    // Each number has its own counters (a rule without a value: one counter per value).
    let other = node
        .ask(
            "messaging",
            &[&[("message_type", "marketing"), ("to_number", "2062222222")]],
        )
        .await;
    assert_eq!(status(&other, 0), (Code::Ok, 5, Unit::Day, 4));
}

#[tokio::test]
async fn key_and_value_beat_key_alone_and_zero_denies() {
    let mut node = EnvoyNode::start(
        "domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
",
    )
    .await;
    let any = node
        .ask("edge_proxy_per_ip", &[&[("remote_address", "50.0.0.1")]])
        .await;
    assert_eq!(status(&any, 0), (Code::Ok, 10, Unit::Second, 9));
    let banned = node
        .ask("edge_proxy_per_ip", &[&[("remote_address", "50.0.0.5")]])
        .await;
    assert_eq!(banned.overall_code(), Code::OverLimit);
    assert_eq!(status(&banned, 0), (Code::OverLimit, 0, Unit::Second, 0));
}

#[tokio::test]
async fn a_request_matches_only_rules_of_its_own_depth() {
    let mut shallow = EnvoyNode::start(
        "domain: example4
descriptors:
  - key: key
    value: value
    rate_limit: {requests_per_unit: 300, unit: second}
",
    )
    .await;
    let two: &[(&str, &str)] = &[("key", "value"), ("subkey", "subvalue")];
    let r = shallow.ask("example4", &[two]).await;
    assert_eq!(status(&r, 0), (Code::Ok, 0, Unit::Unknown, 0));

    let mut nested = EnvoyNode::start(
        "domain: example4
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit: {requests_per_unit: 300, unit: second}
",
    )
    .await;
    let r = nested.ask("example4", &[two]).await;
    assert_eq!(status(&r, 0), (Code::Ok, 300, Unit::Second, 299));
    // And the one-entry request does not match the two-level rule.
    let r = nested.ask("example4", &[&[("key", "value")]]).await;
    assert_eq!(status(&r, 0), (Code::Ok, 0, Unit::Unknown, 0));
}

#[tokio::test]
async fn unlimited_descriptors_answer_ok_with_max_remaining() {
    let mut node = EnvoyNode::start(
        "domain: internal
descriptors:
  - key: ldap
    rate_limit: {unlimited: true}
  - key: azure
    rate_limit: {unit: minute, requests_per_unit: 1}
",
    )
    .await;
    for _ in 0..3 {
        let r = node.ask("internal", &[&[("ldap", "x")]]).await;
        assert_eq!(status(&r, 0), (Code::Ok, 0, Unit::Unknown, u32::MAX));
    }
    node.ask("internal", &[&[("azure", "x")]]).await;
    let r = node
        .ask("internal", &[&[("azure", "x")], &[("ldap", "x")]])
        .await;
    assert_eq!(r.overall_code(), Code::OverLimit);
}

#[tokio::test]
async fn shadow_mode_counts_but_never_denies() {
    let mut node = EnvoyNode::start(
        "domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit: {requests_per_unit: 2, unit: second}
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit: {requests_per_unit: 2, unit: second}
",
    )
    .await;
    let a: &[(&str, &str)] = &[("service", "auth-service"), ("user", "user-a")];
    let b: &[(&str, &str)] = &[("service", "auth-service"), ("user", "user-b")];
    for _ in 0..4 {
        assert_eq!(node.ask("example6", &[a]).await.overall_code(), Code::Ok);
    }
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(node.ask("example6", &[b]).await.overall_code());
    }
    assert_eq!(
        codes,
        [Code::Ok, Code::Ok, Code::OverLimit, Code::OverLimit]
    );
    // The shadow denials are counted where an operator can see them.
    let text = node.metrics.encode();
    assert!(
        text.contains("rule=\"example6.service.user_user-a\",result=\"shadow_denied\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn replaces_drops_the_named_limit_and_leaves_it_untouched() {
    let mut node = EnvoyNode::start(
        "domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces: [{name: specific_limit}]
          requests_per_unit: 10
          unit: second
",
    )
    .await;
    let one: &[(&str, &str)] = &[("key_1", "value_1"), ("user", "bkthomps")];
    let two: &[(&str, &str)] = &[("key_2", "value_2"), ("user", "bkthomps")];
    for sent in 1..=7 {
        let r = node.ask("example7", &[one, two]).await;
        assert_eq!(r.overall_code(), Code::Ok, "request {sent}: 10/s applies");
        assert_eq!(status(&r, 0), (Code::Ok, 0, Unit::Unknown, 0));
        assert_eq!(status(&r, 1), (Code::Ok, 10, Unit::Second, 10 - sent));
    }
    // The replaced 5/s limit was not counted.
    let r = node.ask("example7", &[one]).await;
    assert_eq!(status(&r, 0), (Code::Ok, 5, Unit::Second, 4));
}

#[tokio::test]
async fn wildcards_match_anywhere_and_exact_values_win() {
    let mut node = EnvoyNode::start(
        "domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: key1
    value: value7
    rate_limit: {unit: minute, requests_per_unit: 7}
  - key: path
    value: /api/*/action
    rate_limit: {unit: minute, requests_per_unit: 30}
  - key: route
    value: /api/*/resource/*/action
    rate_limit: {unit: minute, requests_per_unit: 40}
",
    )
    .await;
    let n = |r: &rls::RateLimitResponse| status(r, 0).1;
    assert_eq!(n(&node.ask("example9", &[&[("key1", "value1")]]).await), 20);
    assert_eq!(
        n(&node.ask("example9", &[&[("key1", "valueXYZ")]]).await),
        20
    );
    assert_eq!(n(&node.ask("example9", &[&[("key1", "value7")]]).await), 7);
    assert_eq!(n(&node.ask("example9", &[&[("key1", "other")]]).await), 0);
    assert_eq!(
        n(&node
            .ask("example9", &[&[("path", "/api/123/action")]])
            .await),
        30
    );
    assert_eq!(
        n(&node.ask("example9", &[&[("path", "/api/123/other")]]).await),
        0
    );
    let route = node
        .ask("example9", &[&[("route", "/api/v1/resource/123/action")]])
        .await;
    assert_eq!(n(&route), 40);
    // Without share_threshold, each matching value has its own counter.
    let again = node.ask("example9", &[&[("key1", "value1")]]).await;
    assert_eq!(status(&again, 0).3, 18);
    let fresh = node.ask("example9", &[&[("key1", "value2")]]).await;
    assert_eq!(status(&fresh, 0).3, 19);
}

#[tokio::test]
async fn share_threshold_puts_every_match_on_one_counter() {
    let mut node = EnvoyNode::start(
        "domain: example11
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 3}
",
    )
    .await;
    let mut remaining = Vec::new();
    for file in ["files/a.pdf", "files/b.csv", "files/c.txt", "files/d.doc"] {
        let r = node.ask("example11", &[&[("files", file)]]).await;
        remaining.push((r.overall_code(), status(&r, 0).3));
    }
    assert_eq!(
        remaining,
        [
            (Code::Ok, 2),
            (Code::Ok, 1),
            (Code::Ok, 0),
            (Code::OverLimit, 0)
        ]
    );
}

#[tokio::test]
async fn any_window_and_several_limits_on_one_descriptor() {
    let mut node = EnvoyNode::start(
        "domain: api
descriptors:
  - key: client
    rate_limits:
      - {window: 10s, requests_per_unit: 2}
      - {unit: day, requests_per_unit: 3, algorithm: sliding_log}
",
    )
    .await;
    let c: &[(&str, &str)] = &[("client", "c1")];
    let first = node.ask("api", &[c]).await;
    // The limit with the least room is reported; 10 s is no Envoy unit.
    assert_eq!(status(&first, 0), (Code::Ok, 2, Unit::Unknown, 1));
    assert_eq!(node.ask("api", &[c]).await.overall_code(), Code::Ok);
    let third = node.ask("api", &[c]).await;
    assert_eq!(third.overall_code(), Code::OverLimit);
    let reset = third.statuses[0].duration_until_reset.unwrap();
    assert!(reset.seconds <= 10, "{reset:?}");
    node.clock.advance(Duration::from_secs(11));
    let r = node.ask("api", &[c]).await;
    assert_eq!(status(&r, 0), (Code::Ok, 3, Unit::Day, 0));
    node.clock.advance(Duration::from_secs(11));
    // The 10 s window has room again, the day does not: denied, by the day.
    let r = node.ask("api", &[c]).await;
    assert_eq!(status(&r, 0), (Code::OverLimit, 3, Unit::Day, 0));
}

#[tokio::test]
async fn hits_addend_and_per_descriptor_hits() {
    let mut node = EnvoyNode::start(
        "domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10}
",
    )
    .await;
    let r = node.ask_hits("d", &[&[("k", "a")]], 4).await;
    assert_eq!(status(&r, 0).3, 6);
    let r = node.ask_hits("d", &[&[("k", "a")]], 7).await;
    assert_eq!(r.overall_code(), Code::OverLimit);
    // A descriptor's own hits_addend of 0 reads without counting.
    let mut read = descriptor(&[("k", "a")]);
    read.hits_addend = Some(0);
    let r = node
        .client
        .should_rate_limit(rls::RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![read],
            hits_addend: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&r, 0), (Code::Ok, 10, Unit::Minute, 6));
}

#[tokio::test]
async fn the_native_rules_answer_in_their_domain() {
    let mut node = EnvoyNode::start("domain: other\ndescriptors: []\n").await;
    let pair: &[(&str, &str)] = &[("user_id", "alice"), ("endpoint", "/a")];
    let r = node.ask("drl", &[pair]).await;
    // The built-in default: 100 per minute.
    assert_eq!(status(&r, 0), (Code::Ok, 100, Unit::Minute, 99));
}

#[tokio::test]
async fn the_json_endpoint_answers_like_envoyproxy_ratelimit() {
    let config = Config::from_yaml(
        "rules.yaml",
        "domain: web\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    )
    .unwrap();
    let server = TestServer::start(config.rules).await;
    let body =
        br#"{"domain": "web", "descriptors": [{"entries": [{"key": "user", "value": "u1"}]}]}"#;
    let first = server.post("/json", "application/json", body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let json = first.json();
    assert_eq!(json["overallCode"], "OK");
    assert_eq!(json["statuses"][0]["currentLimit"]["requestsPerUnit"], 1);
    assert_eq!(json["statuses"][0]["currentLimit"]["unit"], "MINUTE");
    assert_eq!(json["statuses"][0]["limitRemaining"], 0);
    let second = server.post("/json", "application/json", body).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["overallCode"], "OVER_LIMIT");
    assert_eq!(second.json()["statuses"][0]["code"], "OVER_LIMIT");

    for (bad, message) in [
        (&br#"{"domain": "web"}"#[..], "missing field `descriptors`"),
        (br#"{"domain": "nope", "descriptors": [{"entries": [{"key": "u"}]}]}"#, "unknown domain"),
        (br#"{"domain": "web", "descriptors": []}"#, "no descriptors"),
        (br#"{"domain": "web", "descriptors": [{"entries": []}]}"#, "no entries"),
        (br#"{"domain": "web", "descriptors": [{"entries": [{"key": 5}]}]}"#, "invalid type"),
        (br#"{"domain": "web", "descriptors": [{"entries": [{"key": "u", "value": "v"}], "hits_addend": 99999999999}]}"#, "hits"),
        (b"{\"domain\": \"web\xff\"}", "invalid request body"),
        (b"not json", "invalid request body"),
    ] {
        let r = server.post("/json", "application/json", bad).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(message), "{error}");
    }
    // None of the bad requests counted: u2 still has its one request.
    let u2 =
        br#"{"domain": "web", "descriptors": [{"entries": [{"key": "user", "value": "u2"}]}]}"#;
    assert_eq!(
        server.post("/json", "application/json", u2).await.status,
        200
    );
    server.stop().await;
}

#[test]
fn envoy_format_errors_are_located() {
    let errors = |yaml: &str| match Config::from_yaml("rules.yaml", yaml) {
        Ok(_) => panic!("expected errors in:\n{yaml}"),
        Err(e) => e
            .diagnostics()
            .iter()
            .map(|d| (d.line, d.column, d.message.clone()))
            .collect::<Vec<_>>(),
    };
    let found = errors(
        "domain: d
descriptors:
  - key: a
    rate_limit: {unit: fortnight, requests_per_unit: 5}
  - key: b
    value: plain
    share_threshold: true
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: a
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: c
    quota_mode: true
    rate_limit: {unit: second, requests_per_unit: 2000000}
",
    );
    let messages: Vec<String> = found
        .iter()
        .map(|(l, c, m)| format!("{l}:{c}: {m}"))
        .collect();
    let all = messages.join("\n");
    assert!(
        all.contains("4:") && all.contains("unknown unit \"fortnight\""),
        "{all}"
    );
    assert!(all.contains("share_threshold applies only"), "{all}");
    assert!(
        all.contains("9:") && all.contains("duplicate descriptor key=\"a\""),
        "{all}"
    );
    assert!(
        all.contains("12:") && all.contains("quota_mode is not supported"),
        "{all}"
    );
    assert!(all.contains("13:") && all.contains("out of range"), "{all}");
    assert_eq!(found.len(), 5, "{all}");
}

#[test]
fn a_config_directory_holds_the_native_config_and_domains() {
    let dir = std::env::temp_dir().join(format!("drl-config-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("drl.yaml", "default:\n  limit: 7\n  window: 1m\n");
    write(
        "web.yaml",
        "domain: web\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    );
    write("notes.txt", "not a config");
    let config = Config::load(&dir).unwrap();
    assert_eq!(config.rules.default_policy().requests(), 7);
    assert!(config.rules.domain("web").is_some());
    // A second file with the same domain is refused, naming both.
    write("web2.yml", "domain: web\ndescriptors: []\n");
    let e = Config::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("web2.yml") && e.contains("already defined in"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_domain_file_error_is_reported_as_itself() {
    // A duplicate key: the YAML error with its line, not a native config's "unknown field".
    let e = Config::from_yaml(
        "web.yaml",
        "domain: web\ndescriptors: []\ndescriptors: []\n",
    )
    .unwrap_err()
    .to_string();
    assert!(!e.contains("unknown field"), "{e}");
    assert!(e.contains("web.yaml:3:") && e.contains("duplicate"), "{e}");
}

#[test]
fn a_config_over_the_yaml_size_cap_says_what_the_cap_is() {
    let mut yaml = String::from("rules:\n");
    for i in 0..40_000 {
        yaml.push_str(&format!(
            "  - endpoint: /e{i}\n    limit: 5\n    window: 1s\n"
        ));
    }
    let e = Config::from_yaml("big.yaml", &yaml)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 250 000 YAML nodes"), "{e}");
}

/// A descriptor's own `limit` replaces the rule (Envoy's behaviour) unless the domain says
/// `allow_request_limits: false`: then the configured rules decide, in a domain file and in
/// the native domain alike.
#[tokio::test]
async fn a_domain_can_refuse_the_limits_requests_bring() {
    use drl_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
    use drl_proto::envoy::r#type::v3::RateLimitUnit;

    async fn ask_with_limit(
        node: &mut EnvoyNode,
        domain: &str,
        entries: &[(&str, &str)],
    ) -> (u32, u32) {
        let mut d = descriptor(entries);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 1_000,
            unit: RateLimitUnit::Minute.into(),
        });
        let request = rls::RateLimitRequest {
            domain: domain.into(),
            descriptors: vec![d],
            hits_addend: 0,
        };
        let response = node
            .client
            .should_rate_limit(request)
            .await
            .unwrap()
            .into_inner();
        let (_, limit, _, remaining) = status(&response, 0);
        (limit, remaining)
    }
    let file = |allow: &str| {
        format!(
            "domain: web\n{allow}descriptors:\n  - key: user_id\n    rate_limit: {{unit: minute, requests_per_unit: 2}}\n"
        )
    };
    let alice: &[(&str, &str)] = &[("user_id", "alice")];
    let mut open = EnvoyNode::start(&file("")).await;
    assert_eq!(ask_with_limit(&mut open, "web", alice).await, (1_000, 999));
    let mut allowed = EnvoyNode::start(&file("allow_request_limits: true\n")).await;
    assert_eq!(
        ask_with_limit(&mut allowed, "web", alice).await,
        (1_000, 999)
    );
    let mut closed = EnvoyNode::start(&file("allow_request_limits: false\n")).await;
    assert_eq!(ask_with_limit(&mut closed, "web", alice).await, (2, 1));
    assert_eq!(ask_with_limit(&mut closed, "web", alice).await, (2, 0));

    let native = "allow_request_limits: false\ndefault: {limit: 2, window: 1m}\n";
    let mut node = EnvoyNode::start(native).await;
    let pair: &[(&str, &str)] = &[("user_id", "alice"), ("endpoint", "/a")];
    assert_eq!(ask_with_limit(&mut node, "drl", pair).await, (2, 1));
}

/// The shipped Envoy example's rules count a path without its query (Envoy's `:path` carries
/// it) and in one spelling: every variant of `/api/search` is the `/api/search` rule's counter,
/// on the Envoy API and the native one alike.
#[tokio::test]
async fn the_envoy_example_counts_the_path_without_its_query() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/envoy/drl/limits.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    let mut node = EnvoyNode::start(&yaml).await;
    let mut remaining = Vec::new();
    for endpoint in ["/api/search?q=1", "//api/search/", "/api/%73earch?q=2"] {
        let response = node
            .ask_hits("drl", &[&[("user_id", "alice"), ("endpoint", endpoint)]], 1)
            .await;
        let (code, limit, _, left) = status(&response, 0);
        assert_eq!((code, limit), (Code::Ok, 3), "{endpoint}");
        remaining.push(left);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let over = node
        .ask(
            "drl",
            &[&[("user_id", "alice"), ("endpoint", "/api/search?q=3")]],
        )
        .await;
    assert_eq!(over.overall_code(), Code::OverLimit);
    // Case is kept: another endpoint, under the default.
    let upper = node
        .ask(
            "drl",
            &[&[("user_id", "alice"), ("endpoint", "/API/search")]],
        )
        .await;
    assert_eq!(status(&upper, 0).1, 100);

    let server = TestServer::start(Config::from_yaml("limits.yaml", &yaml).unwrap().rules).await;
    let native = server
        .check(r#"{"user_id": "bob", "endpoint": "/api/search/?page=2"}"#)
        .await;
    assert_eq!(native.json()["limit"], 3, "{}", native.body);
    server.stop().await;
}
