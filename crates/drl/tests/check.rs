//! `drl check` (the binary, its output and its exit codes) and the HTTP client it uses, against
//! live servers on loopback sockets.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

use std::time::Duration;

use drl_client::{Client, ClientError};
use drl_core::{Algorithm, Policy, Rules};
use drl_testkit::node::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const EXIT_ALLOWED: u8 = 0;
const EXIT_DENIED: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// Runs `drl check` (the binary) and returns (exit code, stdout, stderr).
async fn run(server: &str, user_id: &str, endpoint: &str, hits: u64) -> (u8, String, String) {
    let args = [
        "check".to_owned(),
        "--server".to_owned(),
        server.to_owned(),
        "--hits".to_owned(),
        hits.to_string(),
        "--".to_owned(),
        user_id.to_owned(),
        endpoint.to_owned(),
    ];
    // On the blocking pool: the node under test runs on this test's runtime.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_drl"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        u8::try_from(output.status.code().unwrap()).unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn two_per_minute() -> Rules {
    Rules::only_default(Policy::per(2, Duration::from_secs(60), Algorithm::default()).unwrap())
}

#[tokio::test]
async fn exit_codes_follow_the_decision() {
    let server = TestServer::start(two_per_minute()).await;
    let url = server.url();

    let (code, out, err) = run(&url, "alice", "/api", 1).await;
    assert_eq!(code, EXIT_ALLOWED, "{err}");
    assert!(
        out.starts_with("allowed limit=2 remaining=1 reset_after_ms="),
        "{out}"
    );
    assert!(out.ends_with(" retry_after_ms=0\n"), "{out}");
    assert!(err.is_empty());

    assert_eq!(run(&url, "alice", "/api", 1).await.0, EXIT_ALLOWED);
    let (code, out, _) = run(&url, "alice", "/api", 1).await;
    assert_eq!(code, EXIT_DENIED);
    assert!(out.starts_with("denied limit=2 remaining=0 "), "{out}");

    // hits: all or nothing, 0 only reads.
    assert_eq!(run(&url, "bob", "/api", 3).await.0, EXIT_DENIED);
    assert_eq!(run(&url, "bob", "/api", 0).await.0, EXIT_ALLOWED);
    assert_eq!(server.limiter.check("bob", "/api", 0).unwrap().remaining, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_refused_request_exits_2_with_the_servers_reason() {
    let server = TestServer::start(two_per_minute()).await;
    let (code, out, err) = run(&server.url(), "", "/api", 1).await;
    assert_eq!(code, EXIT_ERROR);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "drl check: the server refused the request (400 Bad Request): user_id must not be empty\n"
    );
    let (code, _, err) = run(&server.url(), "u", "/api", 1_000_001).await;
    assert_eq!(code, EXIT_ERROR);
    assert!(err.contains("hits 1000001 is out of range"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn unreachable_or_invalid_servers_exit_2() {
    // A port that was just free: nothing listens on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let (code, _, err) = run(&closed, "u", "/e", 1).await;
    assert_eq!(code, EXIT_ERROR);
    assert!(
        err.starts_with("drl check: cannot connect to 127.0.0.1:"),
        "{err}"
    );

    for url in ["ftp://127.0.0.1:1", "127.0.0.1:8080", "not a url"] {
        let (code, _, err) = run(url, "u", "/e", 1).await;
        assert_eq!(code, EXIT_ERROR, "{url}");
        assert!(
            err.starts_with("drl check: invalid server URL"),
            "{url}: {err}"
        );
    }
}

/// A server that answers every connection with `response` and closes it.
async fn fake_server(response: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            // Answer once the request is in, as a server would: the client (another process)
            // gives up on an answer that comes before its request is written.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            // Read what the client sent before closing: closing with unread data would reset
            // the connection, and the client could lose the response.
            let _ = stream.read_to_end(&mut Vec::new()).await;
        }
    });
    url
}

fn http_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn answers_that_are_not_decisions_exit_2() {
    let allowed =
        r#"{"allowed":true,"limit":1,"remaining":0,"reset_after_ms":1,"retry_after_ms":0}"#;
    for (what, response, reason) in [
        (
            "not JSON",
            http_response("200 OK", "hello"),
            "not a check response",
        ),
        (
            "status and body disagree",
            http_response("429 Too Many Requests", allowed),
            "the body says allowed=true but the status says otherwise",
        ),
        (
            "server error",
            http_response(
                "503 Service Unavailable",
                r#"{"error":"store unavailable: down"}"#,
            ),
            "refused the request (503 Service Unavailable): store unavailable: down",
        ),
        ("not HTTP", "SSH-2.0-OpenSSH\r\n".to_owned(), "HTTP error"),
    ] {
        let url = fake_server(response).await;
        let (code, out, err) = run(&url, "u", "/e", 1).await;
        assert_eq!(code, EXIT_ERROR, "{what}: {out} {err}");
        assert!(err.contains(reason), "{what}: {err}");
    }
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts connections (the kernel does) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client = Client::new(&url)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let result = client.check("u", "/e", 1).await;
    assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
    drop(listener);
}
