//! A whole node run in process by `drl_server::run`, as `drl serve` runs it: config file, store,
//! reload triggers and both listeners.

#![allow(clippy::unwrap_used)] // Test code.

use std::path::PathBuf;

use drl_client::Client;
use drl_server::{Listeners, Settings};
use drl_testkit::DEADLINE;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// `contents` as the config file of the test `test`.
fn config_file(test: &str, contents: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drl-run-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("drl.yaml");
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn a_node_runs_in_process_from_its_config_and_stops_on_shutdown() {
    let config = config_file("runs", "default: {limit: 2, window: 1m}\n");
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", http.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let settings = Settings {
        config: Some(config),
        ..Settings::default()
    };
    let node = tokio::spawn(drl_server::run(
        settings,
        Listeners {
            http,
            grpc,
            admin: None,
        },
        async {
            let _ = stopped.await;
        },
    ));

    let client = Client::new(&url).unwrap();
    let answers: Vec<bool> = [
        client.check("alice", "/api", 1).await.unwrap().allowed,
        client.check("alice", "/api", 1).await.unwrap().allowed,
        client.check("alice", "/api", 1).await.unwrap().allowed,
    ]
    .into();
    // The config's limit, not the built-in default's 100 per minute.
    assert_eq!(answers, [true, true, false]);

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, node)
        .await
        .expect("the node stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_config_that_does_not_load_is_an_error() {
    let config = config_file("refused", "default: {limit: 0, window: 1m}\n");
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = Settings {
        config: Some(config),
        ..Settings::default()
    };
    let e = drl_server::run(
        settings,
        Listeners {
            http,
            grpc,
            admin: None,
        },
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("drl.yaml:1:"), "{e:#}");
}

#[tokio::test]
async fn an_admin_address_that_cannot_be_bound_is_an_error() {
    // 192.0.2.1 (TEST-NET-1) is no address of this machine.
    let config = config_file(
        "admin-addr",
        "server:\n  admin:\n    addr: 192.0.2.1:9090\n",
    );
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = Settings {
        config: Some(config),
        ..Settings::default()
    };
    let listeners = Listeners {
        http,
        grpc,
        admin: None,
    };
    let run = drl_server::run(settings, listeners, std::future::pending());
    let e = tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap()
        .unwrap_err();
    let message = format!("{e:#}");
    assert!(
        message.contains("server.admin.addr: cannot listen on 192.0.2.1:9090"),
        "{message}"
    );
}
