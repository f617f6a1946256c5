//! The built `drl` binary end to end: `serve` on a free port, `check` against it, `config
//! validate`, a graceful stop on SIGTERM, reloads (file change, SIGHUP, admin route with the
//! token from the environment), the admin API on its own address, JSON logs, and transparent huge pages turned off for the node.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

use std::path::PathBuf;
use std::process::{Command, Output};

use drl_testkit::process::{DrlProcess, PROCESS_DEADLINE as DEADLINE};

const DRL: &str = env!("CARGO_BIN_EXE_drl");

fn write_file(name: &str, contents: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("drl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn drl(args: &[&str]) -> Output {
    Command::new(DRL).args(args).output().unwrap()
}

#[test]
fn serve_and_check_end_to_end() {
    let config = write_file(
        "limits.yaml",
        "default:\n  limit: 3\n  window: 1h\nrules:\n  - endpoint: /upload\n    limit: 1\n    window: 1d\n",
    );
    let node = DrlProcess::start(DRL, &config);

    let (code, out) = node.check("alice", "/upload");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("allowed limit=1 remaining=0 "), "{out}");
    let (code, out) = node.check("alice", "/upload");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("denied limit=1 remaining=0 "), "{out}");
    let (code, out) = node.check("alice", "/search");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("allowed limit=3 remaining=2 "), "{out}");
    let (code, _) = node.check("", "/search");
    assert_eq!(code, Some(2));

    #[cfg(unix)]
    {
        let status = node.terminate();
        assert!(status.success(), "{status:?}");
    }
}

/// The gRPC address a node logged: `gRPC listening on ADDR`.
fn grpc_url(node: &DrlProcess) -> String {
    let line = node.wait_for_log("gRPC listening on ");
    let (_, rest) = line.split_once("gRPC listening on ").unwrap();
    let addr = rest
        .split(|c: char| c == '"' || c.is_whitespace())
        .next()
        .unwrap();
    format!("http://{addr}")
}

#[test]
fn serve_answers_grpc_beside_http_with_one_budget() {
    use drl_proto::drl::v1::rate_limiter_client::RateLimiterClient;
    use drl_proto::drl::v1::{Check, CheckRequest, check_result::Outcome};
    use drl_proto::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor::Entry,
    };
    use drl_proto::envoy::service::ratelimit::v3::RateLimitRequest;
    use drl_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use drl_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let config = write_file("grpc.yaml", "default:\n  limit: 3\n  window: 1h\n");
    let node = DrlProcess::start(DRL, &config);
    let url = grpc_url(&node);
    // A worker thread keeps the client's connection answering (HTTP/2 pings, GOAWAY) after
    // `block_on`, as a live client would while the node shuts down gracefully.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _open_connection = runtime.block_on(async {
        let endpoint = tonic::transport::Channel::from_shared(url).unwrap();
        let connect = endpoint.connect();
        let channel = tokio::time::timeout(DEADLINE, connect)
            .await
            .expect("connects in time")
            .unwrap();
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving);

        let checks = vec![Check {
            user_id: "alice".into(),
            endpoint: "/a".into(),
            hits: None,
        }];
        let results = RateLimiterClient::new(channel.clone())
            .check(CheckRequest { checks })
            .await
            .unwrap()
            .into_inner()
            .results;
        let Some(Outcome::Decision(decision)) = &results[0].outcome else {
            panic!("a decision: {results:?}");
        };
        assert!(decision.allowed);
        assert_eq!((decision.limit, decision.remaining), (3, 2));

        let entry = |key: &str, value: &str| Entry {
            key: key.into(),
            value: value.into(),
        };
        let request = RateLimitRequest {
            domain: "drl".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![entry("user_id", "alice"), entry("endpoint", "/a")],
                ..Default::default()
            }],
            hits_addend: 1,
        };
        let response = RateLimitServiceClient::new(channel.clone())
            .should_rate_limit(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.overall_code(), Code::Ok);
        assert_eq!(response.statuses[0].limit_remaining, 1);
        channel
    });
    // HTTP sees the budget the gRPC calls spent.
    let (code, out) = node.check("alice", "/a");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("allowed limit=3 remaining=0 "), "{out}");

    #[cfg(unix)]
    {
        let status = node.terminate();
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn check_without_a_server_exits_2() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let out = drl(&["check", "--server", &url, "u", "/e"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot connect"), "{err}");
    // Usage errors are not "denied" either.
    assert_eq!(drl(&["check", "only-a-user"]).status.code(), Some(2));
}

#[test]
fn config_validate_reports_every_error_with_its_position() {
    let good = write_file("good.yaml", "default:\n  limit: 10\n  window: 30s\n");
    let out = drl(&["config", "validate", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("valid"));
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "", "no warning");

    // Valid, but a single Redis in strict mode needs a replica: warned, still valid.
    let strict = write_file(
        "strict.yaml",
        "store:\n  kind: redis\n  redis:\n    urls: [\"redis://127.0.0.1:6379\"]\n",
    );
    let out = drl(&["config", "validate", strict.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("warning: store.redis: consistency strict")
            && err.contains("consistency: fast"),
        "{err}"
    );
    let fast = write_file(
        "fast.yaml",
        "store:\n  kind: redis\n  redis:\n    urls: [\"redis://127.0.0.1:6379\"]\n    consistency: fast\n",
    );
    let out = drl(&["config", "validate", fast.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "",
        "fast: no warning"
    );

    let bad = write_file(
        "bad.yaml",
        "default:\n  limit: 0\n  window: 30s\nrules:\n  - user_id: a\n    limit: 1\n    window: 1 week\n",
    );
    let out = drl(&["config", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    let file = bad.display().to_string();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("{file}:2:10: limit 0 is out of range")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:7:13: invalid duration")),
        "{err}"
    );

    // `serve` refuses the same file and does not start.
    let out = drl(&[
        "serve",
        "--http-addr",
        "127.0.0.1:0",
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains(":2:10: limit 0")
    );

    let missing = drl(&["config", "validate", "/nonexistent/drl.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn a_config_that_names_nothing_does_not_start_a_node() {
    // `--config` on an empty file, /dev/null or an empty directory used to start silently on
    // the built-in default; running on it takes the explicit choice of giving no --config.
    let empty_dir = std::env::temp_dir().join(format!("drl-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty_dir).unwrap();
    let empty_file = write_file("empty.yaml", "");
    for (path, says) in [
        (empty_file.to_str().unwrap(), "config is empty"),
        ("/dev/null", "config is empty"),
        (empty_dir.to_str().unwrap(), "no *.yaml or *.yml file"),
    ] {
        let out = drl(&["config", "validate", path]);
        assert_eq!(out.status.code(), Some(1), "validate {path}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{out:?}"
        );
        let out = drl(&[
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--config",
            path,
        ]);
        assert_eq!(out.status.code(), Some(1), "serve {path}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{out:?}"
        );
    }
    std::fs::remove_dir_all(empty_dir).unwrap();
}

/// `POST /v1/config/reload` with an `Authorization` header; the status code.
fn reload_status(url: &str, authorization: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "POST /v1/config/reload HTTP/1.1\r\nhost: {addr}\r\nauthorization: {authorization}\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

#[cfg(unix)]
#[test]
fn sighup_reloads_the_config() {
    // The node is given a symlink whose target lives in another directory: the file watcher
    // watches the link's directory, so changing the target does not wake it, and only SIGHUP
    // can make the node see the change.
    let link = write_file("sighup-link.yaml", "");
    let target = link.with_file_name("sighup-target").join("limits.yaml");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, "default:\n  limit: 3\n  window: 1h\n").unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let node = DrlProcess::start(DRL, &link);
    let (_, out) = node.check("alice", "/a");
    assert!(out.starts_with("allowed limit=3 "), "{out}");

    std::fs::write(&target, "default:\n  limit: 5\n  window: 1h\n").unwrap();
    node.signal("-HUP");
    node.wait_for_log("reloaded: version 2");
    let (_, out) = node.check("alice", "/a");
    assert!(out.starts_with("allowed limit=5 remaining=3 "), "{out}");

    // A refused file changes nothing, and the node keeps running.
    std::fs::write(&target, "default:\n  limit: many\n  window: 1h\n").unwrap();
    node.signal("-HUP");
    node.wait_for_log("refused; version 2 stays in force");
    let (_, out) = node.check("alice", "/a");
    assert!(out.starts_with("allowed limit=5 remaining=2 "), "{out}");

    let status = node.terminate();
    assert!(status.success(), "{status:?}");
}

#[cfg(unix)]
#[test]
fn sighup_without_a_config_file_is_ignored() {
    let node = DrlProcess::start_without_config(DRL);
    node.signal("-HUP");
    node.wait_for_log("no config file to reload");
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
}

#[cfg(unix)]
#[test]
fn a_file_change_reloads_and_the_admin_token_comes_from_the_environment() {
    let config = write_file("watched.yaml", "default:\n  limit: 3\n  window: 1h\n");
    let node = DrlProcess::start_with(
        DRL,
        &config,
        &["--log-format", "json"],
        &[("DRL_ADMIN_TOKEN", "t0ken")],
    );
    // Written aside and renamed over, as editors do: the watcher never sees a half-written
    // file, so the next version is exactly this one.
    let staged = config.with_extension("yaml.new");
    std::fs::write(&staged, "default:\n  limit: 4\n  window: 1h\n").unwrap();
    std::fs::rename(&staged, &config).unwrap();
    let line = node.wait_for_log("reloaded: version 2");
    // JSON logs: one object per line.
    assert!(
        line.starts_with('{') && line.contains("\"level\":\"INFO\""),
        "{line}"
    );
    let (_, out) = node.check("alice", "/a");
    assert!(out.starts_with("allowed limit=4 "), "{out}");

    // The admin route answers with the token from DRL_ADMIN_TOKEN, and only with it.
    let status = |auth: &str| reload_status(&node.url, auth);
    assert_eq!(status("Bearer t0ken"), 200);
    node.wait_for_log("reloaded: version 3");
    assert_eq!(status("Bearer wrong"), 401);
    // SIGINT stops it as cleanly as SIGTERM, watcher and SIGHUP tasks included.
    let status = node.stop_with("-INT");
    assert!(status.success(), "{status:?}");
}

#[cfg(unix)]
#[test]
fn the_admin_api_moves_to_the_admin_address_from_the_environment() {
    let config = write_file("admin-addr.yaml", "default:\n  limit: 3\n  window: 1h\n");
    let node = DrlProcess::start_with(
        DRL,
        &config,
        &[],
        &[
            ("DRL_ADMIN_TOKEN", "t0ken"),
            ("DRL_ADMIN_ADDR", "127.0.0.1:0"),
        ],
    );
    let admin = &admin_addr(&node);
    assert_ne!(admin, &node.url);
    // The admin route answers there with the token, 401 without; 404 on the HTTP address.
    assert_eq!(reload_status(admin, "Bearer t0ken"), 200);
    node.wait_for_log("reloaded: version 2");
    assert_eq!(reload_status(admin, "Bearer wrong"), 401);
    assert_eq!(reload_status(&node.url, "Bearer t0ken"), 404);
    let (code, out) = node.check("alice", "/a");
    assert_eq!(code, Some(0), "{out}");
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
}

/// The admin address a node logged: `admin listening on URL`.
fn admin_addr(node: &DrlProcess) -> String {
    let line = node.wait_for_log("admin listening on ");
    let (_, rest) = line.split_once("admin listening on ").unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

#[cfg(unix)]
#[test]
fn the_admin_address_comes_from_the_config_unless_the_flag_gives_one() {
    let config = write_file(
        "admin-config.yaml",
        "default:\n  limit: 3\n  window: 1h\nserver:\n  admin:\n    addr: 127.0.0.1:0\n",
    );
    let env = [("DRL_ADMIN_TOKEN", "t0ken")];
    let node = DrlProcess::start_with(DRL, &config, &[], &env);
    let admin = admin_addr(&node);
    assert_eq!(reload_status(&admin, "Bearer t0ken"), 200);
    assert_eq!(reload_status(&node.url, "Bearer t0ken"), 404);
    let status = node.terminate();
    assert!(status.success(), "{status:?}");

    // 192.0.2.1 (TEST-NET-1) is no address of this machine: the node starts only because the
    // flag's address replaces it.
    let config = write_file(
        "admin-flag.yaml",
        "default:\n  limit: 3\n  window: 1h\nserver:\n  admin:\n    addr: 192.0.2.1:9090\n",
    );
    let node = DrlProcess::start_with(DRL, &config, &["--admin-addr", "127.0.0.1:0"], &env);
    let admin = admin_addr(&node);
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    assert_eq!(reload_status(&admin, "Bearer t0ken"), 200);
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
}

/// Sends `body` to `POST /v1/check` of `url` and returns the response's status line.
fn post_status(url: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn limits_come_from_flags_and_the_environment() {
    let config = write_file("flag-limits.yaml", "default:\n  limit: 10\n  window: 1m\n");
    let node = DrlProcess::start_with(
        DRL,
        &config,
        &["--max-body-bytes", "100"],
        &[("DRL_MAX_IN_FLIGHT", "8")],
    );
    let check = r#"{"user_id": "u", "endpoint": "/e"}"#;
    let padded = |len: usize| format!("{check}{}", " ".repeat(len - check.len()));
    assert_eq!(post_status(&node.url, &padded(100)), "HTTP/1.1 200 OK");
    assert_eq!(
        post_status(&node.url, &padded(101)),
        "HTTP/1.1 413 Payload Too Large"
    );
    drop(node);

    // A limit of 0 is a usage error, from a flag or from the environment.
    let out = drl(&["serve", "--max-in-flight", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-in-flight"));
    let out = Command::new(DRL)
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .env("DRL_MAX_CONNECTIONS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-connections"));
}

/// The value of `THP_enabled` in a process's `/proc/<pid>/status` (absent before Linux 5.0).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

/// A node turns transparent huge pages off for itself, so memory freed after keys expire stays
/// returned (docs/soak.md); `DRL_ALLOW_THP=1` leaves them as the system has them.
#[cfg(target_os = "linux")]
#[test]
fn a_node_turns_huge_pages_off_unless_allowed() {
    let Some(ours) = thp_enabled("self") else {
        return;
    };
    let config = write_file("thp.yaml", "default:\n  limit: 10\n  window: 1m\n");
    let node = DrlProcess::start(DRL, &config);
    let pid = node.pid().to_string();
    assert_eq!(thp_enabled(&pid).as_deref(), Some("0"));
    assert!(node.terminate().success());
    let node = DrlProcess::start_with(DRL, &config, &[], &[("DRL_ALLOW_THP", "1")]);
    let pid = node.pid().to_string();
    assert_eq!(thp_enabled(&pid), Some(ours));
    assert!(node.terminate().success());
}
