//! Graceful shutdown: requests in flight are drained, but a stalled one cannot hold the node
//! past the drain timeout.

#![allow(clippy::unwrap_used)] // Test code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drl_core::{Limiter, Rules};
use drl_server::{Metrics, Node, serve_all_draining};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[tokio::test]
async fn a_stalled_request_does_not_hold_shutdown_past_the_drain_timeout() {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    let node = Node::new(Limiter::new(Rules::builtin()), Arc::clone(&metrics));
    let (stop, stopped) = oneshot::channel::<()>();
    let drain = Duration::from_millis(300);
    let server = tokio::spawn(serve_all_draining(
        http,
        grpc,
        node,
        async {
            let _ = stopped.await;
        },
        drain,
    ));

    // A request whose body never arrives in full: in flight until the connection goes.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/check HTTP/1.1\r\nhost: drl\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"user_id\"",
        )
        .await
        .unwrap();
    // Wait (bounded) until the server counts it in flight, so shutdown has something to drain.
    drl_testkit::wait_until("the stalled request to arrive", async || {
        metrics.encode().contains("drl_http_requests_in_flight 1\n")
    })
    .await;

    let signalled = Instant::now();
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shutdown completes despite the stalled request");
    result.unwrap().unwrap();
    // It waited for the drain before giving up on the request.
    assert!(signalled.elapsed() >= drain, "{:?}", signalled.elapsed());
    drop(stalled);
}
