//! `drl bench` against a real node on loopback ports (port 0): each target, closed and open
//! loop, with small request counts. The counts must add up exactly: allowed + denied + errors =
//! decisions = requests × batch, and on one hot key with a limit of N (a manual clock, so the
//! window never moves) exactly N are allowed. No timing is asserted.

#![allow(clippy::unwrap_used)] // Test code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drl_bench::{self as bench, BenchOptions, KeyDistribution, Length, Progress, Report, Target};
use drl_core::{Algorithm, Limiter, ManualClock, Policy, Rules};
use drl_server::{Metrics, Node};
use drl_testkit::DEADLINE;
use drl_testkit::node::TestNode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The limit of every pair in these tests.
const LIMIT: u64 = 50;

/// A node serving HTTP and gRPC, every pair limited to [`LIMIT`] per minute.
async fn start() -> TestNode {
    let rules = Rules::only_default(
        Policy::per(LIMIT, Duration::from_secs(60), Algorithm::default()).unwrap(),
    );
    let limiter = Limiter::builder(rules)
        .clock(ManualClock::new(0))
        .sweep_interval(None)
        .build();
    TestNode::start(Node::new(limiter, Arc::new(Metrics::new()))).await
}

/// Options of a run of `target` against `node`.
fn options_for(node: &TestNode, target: Target) -> BenchOptions {
    let addr = match target {
        Target::Http => node.http,
        Target::Envoy | Target::Native => node.grpc,
    };
    let mut options = BenchOptions::new(target);
    options.server = Some(format!("http://{addr}"));
    options.concurrency = 4;
    options
}

async fn run(options: &BenchOptions) -> Report {
    tokio::time::timeout(DEADLINE, bench::run(options, Progress::Quiet))
        .await
        .expect("the bench ends in time")
        .unwrap()
}

/// Every decision is accounted for once.
fn assert_adds_up(report: &Report, requests: u64, batch: u64) {
    assert_eq!(report.requests, requests, "{report:?}");
    assert_eq!(report.decisions, requests * batch, "{report:?}");
    assert_eq!(
        report.allowed + report.denied + report.errors,
        report.decisions,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hot_key_is_allowed_exactly_its_limit_on_every_target() {
    for target in [Target::Envoy, Target::Native, Target::Http] {
        let node = start().await;
        let mut options = options_for(&node, target);
        options.distribution = KeyDistribution::Hot;
        options.length = Length::Requests(200);
        let report = run(&options).await;
        assert_adds_up(&report, 200, 1);
        assert_eq!(report.allowed, LIMIT, "{target:?}: {report:?}");
        assert_eq!(report.denied, 200 - LIMIT, "{target:?}: {report:?}");
        assert_eq!(report.errors, 0, "{target:?}: {report:?}");
        assert_eq!(report.latency_us.count, 200, "{target:?}");
        assert_eq!(report.target, options.target.name());
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_batches_count_each_decision() {
    let node = start().await;
    let mut options = options_for(&node, Target::Native);
    options.batch = 10;
    options.distribution = KeyDistribution::Hot;
    options.length = Length::Requests(30);
    let report = run(&options).await;
    assert_adds_up(&report, 30, 10);
    assert_eq!(report.allowed, LIMIT);
    assert_eq!(report.denied, 300 - LIMIT);

    // Many keys, 2 hits each: 400 checks over 1 000 keys cannot exhaust any key's 50, so all
    // are allowed.
    let mut options = options_for(&node, Target::Native);
    options.batch = 20;
    options.keys = 1_000;
    options.distribution = KeyDistribution::Zipf(0.5);
    options.hits = 2;
    options.seed = 9;
    options.length = Length::Requests(20);
    let report = run(&options).await;
    assert_adds_up(&report, 20, 20);
    assert_eq!(report.allowed + report.denied, 400, "{report:?}");
    assert_eq!(report.errors, 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_reach_the_server() {
    for target in [Target::Envoy, Target::Native, Target::Http] {
        let node = start().await;
        // More hits than the limit: denied, and nothing counted.
        let mut options = options_for(&node, target);
        options.distribution = KeyDistribution::Hot;
        options.hits = 51;
        options.length = Length::Requests(5);
        let report = run(&options).await;
        assert_adds_up(&report, 5, 1);
        assert_eq!(report.denied, 5, "{target:?}: {report:?}");
        // 0 hits only asks: allowed, and still nothing counted.
        options.hits = 0;
        let report = run(&options).await;
        assert_eq!(report.allowed, 5, "{target:?}: {report:?}");
        // 10 hits: five of them fill the key's 50.
        options.hits = 10;
        options.length = Length::Requests(8);
        let report = run(&options).await;
        assert_eq!(
            (report.allowed, report.denied),
            (5, 3),
            "{target:?}: {report:?}"
        );
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_sends_its_requests_and_reports_json() {
    let node = start().await;
    let mut options = options_for(&node, Target::Envoy);
    options.rate = Some(2_000);
    options.distribution = KeyDistribution::Hot;
    options.length = Length::Duration(Duration::from_millis(100));
    let report = run(&options).await;
    // 2 000/s for 100 ms: requests due at 0, 0.5, …, 99.5 ms.
    assert_adds_up(&report, 200, 1);
    assert_eq!(report.allowed, LIMIT);

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["target"], "envoy");
    assert_eq!(json["mode"], "open");
    assert_eq!(json["rate"], 2_000);
    assert_eq!(json["requests"], 200);
    assert_eq!(json["decisions"], 200);
    assert_eq!(json["allowed"], LIMIT);
    assert_eq!(json["denied"], 200 - LIMIT);
    assert_eq!(json["errors"], 0);
    assert_eq!(json["key_distribution"], "hot");
    for field in ["elapsed_s", "requests_per_s", "decisions_per_s"] {
        assert!(json[field].as_f64().unwrap() > 0.0, "{field}");
    }
    for p in ["mean", "p50", "p90", "p99", "p99_9", "max"] {
        assert!(json["latency_us"][p].as_f64().unwrap() > 0.0, "{p}");
    }
    assert_eq!(json["latency_us"]["count"], 200);
    assert_eq!(json["first_key"], 0);
    // The percentile curve: [percentile, µs] pairs from the least (0) to the most (100).
    let curve = json["percentiles_us"].as_array().unwrap();
    assert_eq!(curve.len(), bench::CURVE_PERCENTILES.len());
    let points: Vec<(f64, f64)> = curve
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(points[0].0, 0.0);
    assert_eq!(points[points.len() - 1].0, 100.0);
    assert!(
        points
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
    );
    assert_eq!(
        points[points.len() - 1].1,
        json["latency_us"]["max"].as_f64().unwrap()
    );
    assert!(json["first_error"].is_null());
    // The generator's CPU per request, from its own /proc/self/stat (this test process also
    // runs the node, and ticks are 10 ms: only that it is reported is asserted).
    if cfg!(target_os = "linux") {
        assert!(json["generator_cpu_us_per_request"].as_f64().unwrap() >= 0.0);
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_keys_from_an_offset_are_counted_exactly() {
    let node = start().await;
    // 120 batches of 10 over 20 keys in order: 60 checks of each key, whatever the workers'
    // interleaving, so each admits exactly its 50.
    let mut options = options_for(&node, Target::Native);
    options.batch = 10;
    options.keys = 20;
    options.distribution = KeyDistribution::Sequential;
    options.length = Length::Requests(120);
    let report = run(&options).await;
    assert_adds_up(&report, 120, 10);
    assert_eq!(
        (report.allowed, report.denied),
        (20 * LIMIT, 200),
        "{report:?}"
    );

    // The next 20 keys are new: all admitted.
    options.first_key = 20;
    options.length = Length::Requests(2);
    let report = run(&options).await;
    assert_eq!((report.allowed, report.denied), (20, 0), "{report:?}");
    assert_eq!(report.first_key, 20);
    assert_eq!(report.key_distribution, "sequential");

    // Envoy and HTTP ask about the same keys: u0..u19 are full, u40.. are new.
    for (target, first_key, allowed) in [(Target::Envoy, 0, 0), (Target::Http, 40, 5)] {
        let mut options = options_for(&node, target);
        options.keys = 5;
        options.first_key = first_key;
        options.distribution = KeyDistribution::Sequential;
        options.length = Length::Requests(5);
        let report = run(&options).await;
        assert_eq!(report.allowed, allowed, "{target:?}: {report:?}");
        assert_eq!(report.allowed + report.denied, 5, "{target:?}: {report:?}");
    }
    node.stop().await;
}

/// An HTTP/1.1 server on a loopback port that answers every request `200 {}` after `delay`,
/// one request at a time per connection.
async fn slow_http_server(delay: Duration) -> (SocketAddr, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One whole request (headers and a Content-Length body) is in the buffer.
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buffer.len() >= end + 4 + length {
                            buffer.drain(..end + 4 + length);
                            tokio::time::sleep(delay).await;
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                           content-length: 2\r\n\r\n{}";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Coordinated omission, over a real socket: a server taking 20 ms per request, asked at
/// 1 000/s by one worker. Request i is due at i ms but cannot start before 20·i ms, so its
/// latency is at least 19·i + 20 ms; a generator timing from the send would see 20 ms for
/// every request, and a closed loop of the same server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_shows_a_slow_server_in_its_latencies() {
    let (addr, server) = slow_http_server(Duration::from_millis(20)).await;
    let mut options = BenchOptions::new(Target::Http);
    options.server = Some(format!("http://{addr}"));
    options.concurrency = 1;
    options.rate = Some(1_000);
    options.length = Length::Requests(20);
    let report = run(&options).await;
    assert_eq!((report.requests, report.allowed), (20, 20), "{report:?}");
    let ms = |us: f64| us / 1_000.0;
    assert!(
        ms(report.latency_us.max) >= (19.0 * 19.0 + 20.0) * 0.999,
        "{report:?}"
    );
    assert!(
        ms(report.latency_us.p50) >= (19.0 * 9.0 + 20.0) * 0.999,
        "{report:?}"
    );

    // The same server in a closed loop: each request waits only for itself.
    options.rate = None;
    let report = run(&options).await;
    assert!(ms(report.latency_us.p50) >= 20.0 * 0.999, "{report:?}");
    assert!(ms(report.latency_us.p50) < 19.0 * 9.0 + 20.0, "{report:?}");
    server.abort();
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    for target in [Target::Envoy, Target::Native, Target::Http] {
        let mut options = BenchOptions::new(target);
        options.server = Some(format!("http://{addr}"));
        options.length = Length::Requests(1);
        let error = bench::run(&options, Progress::Quiet).await.unwrap_err();
        assert!(
            error.to_string().contains("cannot connect"),
            "{target:?}: {error}"
        );
    }
    let mut options = BenchOptions::new(Target::Http);
    options.server = Some("https://example.com".into());
    let error = bench::run(&options, Progress::Quiet).await.unwrap_err();
    assert!(error.to_string().contains("invalid server URL"), "{error}");
}

/// A gRPC server on a loopback port that refuses every call with `UNAVAILABLE` (a trailers-only
/// answer) and closes each connection after its third call. Counts the connections it accepted.
async fn refusing_grpc_server() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                for _ in 0..3 {
                    let Some(Ok((_, mut respond))) = connection.accept().await else {
                        return;
                    };
                    let answer = hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "14")
                        .header("grpc-message", "resting")
                        .body(())
                        .unwrap();
                    let _ = respond.send_response(answer, true);
                }
                // Flush the third answer, then drop the connection.
                let _ = tokio::time::timeout(Duration::from_millis(50), connection.accept()).await;
            });
        }
    });
    (addr, connections, task)
}

/// A refused Envoy call is an error that names the gRPC status, and a lost connection is
/// replaced: the run goes on to its end with every call accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_envoy_calls_are_errors_and_a_lost_connection_is_replaced() {
    let (addr, connections, server) = refusing_grpc_server().await;
    let mut options = BenchOptions::new(Target::Envoy);
    options.server = Some(format!("http://{addr}"));
    options.concurrency = 1;
    options.connections = Some(1);
    options.length = Length::Requests(10);
    let report = run(&options).await;
    assert_adds_up(&report, 10, 1);
    assert_eq!(report.errors, 10, "{report:?}");
    let error = report.first_error.clone().unwrap();
    assert!(error.contains("Unavailable: resting"), "{error}");
    // At most four calls a connection (three answered, then one lost as it closes): ten calls
    // need at least three connections.
    assert!(connections.load(Ordering::Relaxed) >= 3, "{report:?}");
    server.abort();
}
