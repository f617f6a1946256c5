//! `drl bench` as a command: its JSON output against a live node, and clear errors (exit code 2
//! for refused options, 1 for an unreachable server) for bad input, never a panic.

#![allow(clippy::unwrap_used)] // Test code.

use std::process::{Command, Output};
use std::time::Duration;

use drl_core::{Algorithm, Limiter, Policy, Rules};
use tokio::net::TcpListener;

const DRL: &str = env!("CARGO_BIN_EXE_drl");

async fn drl(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    tokio::task::spawn_blocking(move || Command::new(DRL).args(&args).output().unwrap())
        .await
        .unwrap()
}

/// stderr of a run that must fail with `code`, checked for no panic.
fn failure(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_against_a_live_node() {
    let rules = Rules::only_default(
        Policy::per(20, Duration::from_secs(60), Algorithm::default()).unwrap(),
    );
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(drl_server::serve_all(
        http,
        grpc,
        Limiter::new(rules),
        async {
            let _ = stopped.await;
        },
    ));

    for (target, addr) in [
        ("envoy", grpc_addr),
        ("native", grpc_addr),
        ("http", http_addr),
    ] {
        let server = format!("http://{addr}");
        let output = drl(&[
            "bench",
            "--target",
            target,
            "--server",
            &server,
            "--hot",
            "--requests",
            "30",
            "--concurrency",
            "3",
            "--json",
        ])
        .await;
        assert!(output.status.success(), "{target}: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["target"], target);
        assert_eq!(report["requests"], 30);
        assert_eq!(report["decisions"], 30);
        let allowed = report["allowed"].as_u64().unwrap();
        let denied = report["denied"].as_u64().unwrap();
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(allowed + denied, 30, "{report}");
        // Not a terminal: no progress line on stderr.
        assert!(
            output.stderr.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The hot key `u0` of all three runs shares one budget of 20 across the APIs.
    let output = drl(&[
        "bench",
        "--target",
        "http",
        "--server",
        &format!("http://{http_addr}"),
        "--hot",
        "--requests",
        "1",
    ])
    .await;
    assert!(output.status.success());
    let summary = String::from_utf8(output.stdout).unwrap();
    let denied = summary
        .lines()
        .find_map(|line| line.trim().strip_prefix("denied"))
        .map(str::trim);
    assert_eq!(denied, Some("1"), "{summary}");
    assert!(summary.contains("latency     p50"), "{summary}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_options_are_refused_with_exit_code_2() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["bench", "--batch", "10"],
            "--batch is for --target native",
        ),
        (
            &["bench", "--target", "native", "--batch", "1001"],
            "--batch must be from 1 to 1000",
        ),
        (
            &["bench", "--target", "http", "--connections", "2"],
            "--connections is for the gRPC",
        ),
        (&["bench", "--rate", "0"], "--rate must be from 1 to"),
        (&["bench", "--zipf", "1.1", "--hot"], "cannot be used with"),
        (&["bench", "--hot", "--sequential"], "cannot be used with"),
        (
            &[
                "bench",
                "--first-key",
                "18446744073709551615",
                "--keys",
                "2",
            ],
            "is past the last key index",
        ),
        (&["bench", "--duration", "soon"], "invalid value 'soon'"),
    ];
    for (args, expected) in cases {
        let stderr = failure(&drl(args).await, 2);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn an_unreachable_server_exits_1() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let server = format!("http://{addr}");
    let stderr = failure(
        &drl(&["bench", "--server", &server, "--requests", "1"]).await,
        1,
    );
    assert!(stderr.contains("cannot connect"), "{stderr}");
}
