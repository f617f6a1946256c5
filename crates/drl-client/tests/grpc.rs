//! The native gRPC client against a node on a real loopback socket: decisions as the HTTP API
//! gives them, a batch with an invalid check in it, out-of-range hits refused before sending,
//! an unreachable server and a bad URL.

#![allow(clippy::unwrap_used)] // Test code.

use std::time::Duration;

use drl_client::grpc::{GrpcClient, GrpcClientError};
use drl_core::{Algorithm, Limiter, ManualClock, Policy, Rule, Rules};
use drl_proto::drl::v1::check_error::Code;
use drl_proto::json::CheckRequest;
use drl_testkit::DEADLINE;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A node serving `/api/search`: 2 per minute, on a manual clock; its gRPC URL.
async fn node() -> (String, oneshot::Sender<()>) {
    let policy = |n| Policy::per(n, Duration::from_secs(60), Algorithm::SlidingLog).unwrap();
    let rules = Rules::new(
        policy(100),
        [Rule::new(None, Some("/api/search"), policy(2))],
    )
    .unwrap();
    let limiter = Limiter::builder(rules)
        .clock(ManualClock::new(0))
        .sweep_interval(None)
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(drl_server::grpc::serve(listener, limiter, async {
        let _ = stopped.await;
    }));
    (url, stop)
}

fn check(user_id: &str, endpoint: &str, hits: u64) -> CheckRequest {
    CheckRequest {
        user_id: user_id.into(),
        endpoint: endpoint.into(),
        hits,
    }
}

#[tokio::test]
async fn checks_and_batches_get_the_decisions() {
    let (url, _stop) = node().await;
    let client = GrpcClient::connect(&url).await.unwrap();
    for remaining in [1, 0] {
        let d = client.check("alice", "/api/search", 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.retry_after_ms), (2, remaining, 0));
        // A minute after the first admission, rounded up to the next millisecond.
        assert_eq!(d.reset_after_ms, 60_001);
    }
    let denied = client.check("alice", "/api/search", 1).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.retry_after_ms, 60_001);
    // hits = 0 reads without counting; clones share the connection and the counters.
    let probe = client
        .clone()
        .check("alice", "/api/search", 0)
        .await
        .unwrap();
    assert_eq!((probe.allowed, probe.remaining), (false, 0));

    let results = client
        .check_batch(&[
            check("bob", "/api/search", 2),
            check("", "/api/search", 1),
            check("bob", "/api/search", 1),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().remaining, 0);
    match &results[1] {
        Err(GrpcClientError::Refused { code, message }) => {
            assert_eq!(*code, Code::InvalidArgument);
            assert!(message.contains("user_id"), "{message}");
        }
        other => panic!("expected a refused check, got {other:?}"),
    }
    assert!(
        !results[2].as_ref().unwrap().allowed,
        "bob's 2 hits used his limit"
    );
}

#[tokio::test]
async fn bad_input_and_unreachable_servers_are_errors() {
    let (url, stop) = node().await;
    let client = GrpcClient::connect(&url).await.unwrap();
    assert!(matches!(
        client.check("alice", "/x", u64::from(u32::MAX) + 1).await,
        Err(GrpcClientError::Hits(_))
    ));
    let too_many = vec![check("u", "/x", 1); drl_server::grpc::MAX_BATCH + 1];
    match client.check_batch(&too_many).await {
        Err(GrpcClientError::Status(status)) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert!(matches!(
        GrpcClient::connect("not a url").await,
        Err(GrpcClientError::InvalidUrl { .. })
    ));

    // A port nobody listens on any more.
    stop.send(()).unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let connect = GrpcClient::connect_with_timeout(&gone, Duration::from_secs(2));
    let result = tokio::time::timeout(DEADLINE, connect).await.unwrap();
    match result {
        Err(e @ GrpcClientError::Connect { .. }) => assert!(e.to_string().contains(&gone)),
        other => panic!("expected a connection error, got {other:?}"),
    }
}
