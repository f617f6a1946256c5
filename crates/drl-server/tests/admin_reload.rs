//! Hot reload and the admin routes over a real socket: a changed file, `POST
//! /v1/config/reload` and `GET /v1/config`, each seen in the next decisions; a refused file
//! changes nothing; the bearer token guards the admin routes, which do not exist without one.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drl_core::Rules;
use drl_proto::json::CheckResponse;
use drl_server::node::{AdminToken, constant_time_eq};
use drl_server::reload::{self, Reloader};
use drl_server::{Config, Metrics, Node};
use drl_testkit::node::{RawResponse, TestServer};

const TOKEN: &str = "s3cret-token";
const AUTH: &str = "authorization: Bearer s3cret-token";

fn config(limit: u32) -> String {
    format!(
        "default:\n  limit: {limit}\n  window: 1m\nrules:\n  - user_id: alice\n    limit: 1000\n    window: 1h\n    algorithm: token_bucket\n"
    )
}

/// A fresh directory holding `drl.yaml`.
fn config_file(test: &str, contents: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drl-reload-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("drl.yaml");
    std::fs::write(&path, contents).unwrap();
    path
}

/// Replaces the file the way editors do: write a sibling, rename it over.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct TestNode {
    server: TestServer,
    reloader: Arc<Reloader<drl_core::MemoryStore>>,
    metrics: Arc<Metrics>,
}

async fn start(path: &Path, token: Option<&str>) -> TestNode {
    let loaded = Config::load(path).unwrap();
    let native_file = loaded.native_file().map(str::to_owned);
    let rules = loaded.rules;
    let metrics = Arc::new(Metrics::new());
    let mut reloader = None;
    let server = TestServer::start_with(rules, |limiter| {
        let r = Arc::new(Reloader::new(
            path,
            native_file.as_deref(),
            limiter.clone(),
            Arc::clone(&metrics),
        ));
        reloader = Some(Arc::clone(&r));
        Node::new(limiter, Arc::clone(&metrics))
            .with_reloader(r)
            .with_admin_token(token.and_then(AdminToken::new))
    })
    .await;
    TestNode {
        server,
        reloader: reloader.unwrap(),
        metrics,
    }
}

async fn limit_of(server: &TestServer, user: &str) -> u32 {
    let body = format!(r#"{{"user_id": "{user}", "endpoint": "/e", "hits": 0}}"#);
    let response = server.check(&body).await;
    serde_json::from_str::<CheckResponse>(&response.body)
        .unwrap()
        .limit
}

/// Polls until the next decision for `user` has limit `want` (bounded by [`DEADLINE`]).
async fn wait_for_limit(server: &TestServer, user: &str, want: u32) {
    drl_testkit::wait_until(format!("the limit to become {want}"), async || {
        limit_of(server, user).await == want
    })
    .await;
}

async fn reload(server: &TestServer, headers: &[&str]) -> RawResponse {
    server
        .request("POST", "/v1/config/reload", headers, b"")
        .await
}

#[tokio::test]
async fn the_admin_route_reloads_and_get_config_shows_the_new_version() {
    let path = config_file("admin", &config(5));
    let node = start(&path, Some(TOKEN)).await;
    assert_eq!(limit_of(&node.server, "bob").await, 5);

    std::fs::write(&path, config(8)).unwrap();
    let response = reload(&node.server, &[AUTH]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["version"], 2);
    assert_eq!(response.json()["rules"], 1);
    // The very next decision uses the new limit.
    assert_eq!(limit_of(&node.server, "bob").await, 8);

    let shown = node.server.request("GET", "/v1/config", &[AUTH], b"").await;
    assert_eq!(shown.status, 200, "{shown:?}");
    let view = shown.json();
    assert_eq!(view["version"], 2);
    assert_eq!(view["source"], path.display().to_string());
    assert_eq!(
        view["default"],
        serde_json::json!({"limit": 8, "window": "1m", "algorithm": "sliding_window", "precision": 60})
    );
    assert_eq!(
        view["rules"],
        serde_json::json!([{"user_id": "alice", "limit": 1000, "window": "1h", "algorithm": "token_bucket"}])
    );
    node.server.stop().await;
}

#[tokio::test]
async fn a_refused_file_changes_nothing_and_is_reported() {
    let path = config_file("refused", &config(5));
    let node = start(&path, Some(TOKEN)).await;
    std::fs::write(&path, "default:\n  limit: 0\n  window: 1m\n").unwrap();
    let response = reload(&node.server, &[AUTH]).await;
    assert_eq!(response.status, 422, "{response:?}");
    let body = response.json();
    assert!(
        body["error"].as_str().unwrap().contains("config refused"),
        "{body}"
    );
    let diagnostic = &body["diagnostics"][0];
    assert_eq!(diagnostic["file"], path.display().to_string());
    assert_eq!(
        (&diagnostic["line"], &diagnostic["column"]),
        (&2.into(), &10.into())
    );
    assert!(
        diagnostic["message"].as_str().unwrap().contains("limit 0"),
        "{body}"
    );

    assert_eq!(limit_of(&node.server, "bob").await, 5);
    assert_eq!(node.reloader.version(), 1);
    let metrics = node.server.get("/metrics").await.body;
    assert!(
        metrics.contains("drl_config_reloads_total{result=\"error\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drl_config_reloads_total{result=\"ok\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("drl_config_version 1\n"), "{metrics}");
    node.server.stop().await;
}

#[tokio::test]
async fn a_config_that_names_nothing_never_replaces_the_rules_in_force() {
    // A truncated file (0 bytes), one of blanks and comments, and an empty mapping: each would
    // have reloaded as "0 rules", the built-in 100/min in place of the rules and the blocklist.
    let path = config_file("empty", &config(5));
    let node = start(&path, Some(TOKEN)).await;
    for (n, empty) in ["", "\n  \n# nothing here\n", "{}\n"]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&path, empty).unwrap();
        let response = reload(&node.server, &[AUTH]).await;
        assert_eq!(response.status, 422, "{empty:?}: {response:?}");
        let body = response.json();
        let message = body["diagnostics"][0]["message"].as_str().unwrap();
        assert!(message.contains("config is empty"), "{empty:?}: {body}");
        assert_eq!(limit_of(&node.server, "bob").await, 5, "{empty:?}");
        assert_eq!(limit_of(&node.server, "alice").await, 1000, "{empty:?}");
        assert_eq!(node.reloader.version(), 1);
        let metrics = node.server.get("/metrics").await.body;
        let refused = format!("drl_config_reloads_total{{result=\"error\"}} {}\n", n + 1);
        assert!(metrics.contains(&refused), "{metrics}");
    }
    node.server.stop().await;
}

#[tokio::test]
async fn a_config_directory_that_loses_its_native_file_is_refused() {
    let path = config_file("lost-native", &config(5));
    let dir = path.parent().unwrap().to_owned();
    let web = "domain: web\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    std::fs::write(dir.join("web.yaml"), web).unwrap();
    let node = start(&dir, Some(TOKEN)).await;
    assert_eq!(limit_of(&node.server, "bob").await, 5);
    std::fs::remove_file(&path).unwrap();
    let response = reload(&node.server, &[AUTH]).await;
    assert_eq!(response.status, 422, "{response:?}");
    let body = response.json();
    assert!(
        body["diagnostics"][0]["message"]
            .as_str()
            .unwrap()
            .contains("native config"),
        "{body}"
    );
    assert_eq!(limit_of(&node.server, "bob").await, 5);
    assert_eq!(limit_of(&node.server, "alice").await, 1000);
    // Every file gone: an empty directory names nothing either.
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    let response = reload(&node.server, &[AUTH]).await;
    assert_eq!(response.status, 422, "{response:?}");
    assert_eq!(limit_of(&node.server, "bob").await, 5);
    // The file back: reloads as usual.
    std::fs::write(&path, config(7)).unwrap();
    let response = reload(&node.server, &[AUTH]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(limit_of(&node.server, "bob").await, 7);
    node.server.stop().await;
}

#[tokio::test]
async fn a_file_change_is_picked_up_by_the_watcher() {
    let path = config_file("watch", &config(5));
    let node = start(&path, None).await;
    let _watch = reload::watch_file(Arc::clone(&node.reloader)).unwrap();

    std::fs::write(&path, config(6)).unwrap();
    wait_for_limit(&node.server, "bob", 6).await;
    // Replaced by rename, as editors do.
    replace(&path, &config(7));
    wait_for_limit(&node.server, "bob", 7).await;

    // A refused file is counted and leaves the limit alone; a later good one goes in.
    replace(&path, "default: [");
    drl_testkit::wait_until("the refused file to be reported", async || {
        node.metrics
            .encode()
            .contains("drl_config_reloads_total{result=\"error\"} 1\n")
    })
    .await;
    assert_eq!(limit_of(&node.server, "bob").await, 7);
    replace(&path, &config(9));
    wait_for_limit(&node.server, "bob", 9).await;
    node.server.stop().await;
}

/// Lays out `dir` as the kubelet lays out a ConfigMap volume: `drl.yaml -> ..data/drl.yaml`,
/// `..data -> ..<version>`, the data in `..<version>/drl.yaml`; a later call is an update, made
/// the kubelet's way (a new version directory, a `..data_tmp` link renamed over `..data`, the
/// old directory removed).
#[cfg(unix)]
fn configmap_update(dir: &Path, version: u32, contents: &str) {
    let data = format!("..2026_12_04_00_00_{version:02}.000000001");
    std::fs::create_dir_all(dir.join(&data)).unwrap();
    std::fs::write(dir.join(&data).join("drl.yaml"), contents).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join("drl.yaml").exists() {
        std::os::unix::fs::symlink("..data/drl.yaml", dir.join("drl.yaml")).unwrap();
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_configmap_update_is_picked_up_through_the_file_path() {
    // `--config /etc/drl/drl.yaml` on a mounted ConfigMap: the update swaps `..data` and no
    // event names `drl.yaml`; the node used to keep the old rules forever.
    let dir = config_file("configmap", "").parent().unwrap().to_owned();
    std::fs::remove_file(dir.join("drl.yaml")).unwrap();
    configmap_update(&dir, 1, &config(5));
    let path = dir.join("drl.yaml");
    let node = start(&path, None).await;
    let _watch = reload::watch_file(Arc::clone(&node.reloader)).unwrap();
    assert_eq!(limit_of(&node.server, "bob").await, 5);
    configmap_update(&dir, 2, &config(6));
    wait_for_limit(&node.server, "bob", 6).await;
    configmap_update(&dir, 3, &config(8));
    wait_for_limit(&node.server, "bob", 8).await;
    node.server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_config_file_linked_from_another_directory_is_watched_where_it_lives() {
    let target = config_file("linked-target", &config(5));
    let link_dir = config_file("linked-link", "").parent().unwrap().to_owned();
    let link = link_dir.join("drl.yaml");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let node = start(&link, None).await;
    let _watch = reload::watch_file(Arc::clone(&node.reloader)).unwrap();
    // Edited where it lives: no event in the link's directory.
    replace(&target, &config(6));
    wait_for_limit(&node.server, "bob", 6).await;
    node.server.stop().await;
}

#[tokio::test]
async fn admin_routes_need_the_bearer_token() {
    let path = config_file("auth", &config(5));
    let node = start(&path, Some(TOKEN)).await;
    for headers in [
        &[][..],
        &["authorization: Bearer wrong"][..],
        &["authorization: Bearer s3cret-token-and-more"][..],
        &["authorization: Basic s3cret-token"][..],
        &["authorization: s3cret-token"][..],
    ] {
        for (method, route) in [("GET", "/v1/config"), ("POST", "/v1/config/reload")] {
            let response = node.server.request(method, route, headers, b"").await;
            assert_eq!(
                response.status, 401,
                "{method} {route} {headers:?}: {response:?}"
            );
            assert_eq!(response.error(), "unauthorized");
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
            assert!(!response.body.contains(TOKEN));
        }
    }
    // The scheme is case-insensitive.
    let response = node
        .server
        .request(
            "GET",
            "/v1/config",
            &["authorization: bearer s3cret-token"],
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    // Nothing was reloaded by the refused attempts.
    assert_eq!(node.reloader.version(), 1);
    node.server.stop().await;
}

#[tokio::test]
async fn without_a_token_the_admin_routes_do_not_exist() {
    let path = config_file("disabled", &config(5));
    let node = start(&path, None).await;
    for (method, route) in [
        ("GET", "/v1/config"),
        ("POST", "/v1/config/reload"),
        // A wrong method used to answer 405 with `Allow:`, which showed the routes exist.
        ("DELETE", "/v1/config"),
        ("GET", "/v1/config/reload"),
        ("POST", "/v1/blocks"),
        ("GET", "/v1/load"),
        ("PUT", "/v1/offenders"),
        ("GET", "/v1/blocks/eve"),
    ] {
        let response = node.server.request(method, route, &[AUTH], b"").await;
        assert_eq!(response.status, 404, "{method} {route}: {response:?}");
        assert!(
            response.header("allow").is_none(),
            "{method} {route}: {response:?}"
        );
    }
    node.server.stop().await;
}

#[tokio::test]
async fn a_node_without_a_config_file_cannot_reload() {
    let server = TestServer::start_with(Rules::builtin(), |limiter| {
        Node::from(limiter).with_admin_token(AdminToken::new(TOKEN))
    })
    .await;
    let response = reload(&server, &[AUTH]).await;
    assert_eq!(response.status, 409, "{response:?}");
    assert!(response.error().contains("--config"), "{response:?}");
    let shown = server
        .request("GET", "/v1/config", &[AUTH], b"")
        .await
        .json();
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["source"], serde_json::Value::Null);
    assert_eq!(shown["default"]["limit"], 100);
    server.stop().await;
}

#[tokio::test]
async fn readyz_answers_once_the_config_is_loaded() {
    let server = TestServer::start(Rules::builtin()).await;
    let response = server.get("/readyz").await;
    assert_eq!((response.status, response.body.as_str()), (200, "ready"));
    server.stop().await;
}

#[test]
fn token_comparison_is_exact() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(constant_time_eq(b"", b""));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(!constant_time_eq(b"ab", b"abc"));
    assert!(!constant_time_eq(b"abc\0", b"abc"));
    assert!(AdminToken::new("").is_none());
    assert_eq!(
        format!("{:?}", AdminToken::new(TOKEN).unwrap()),
        "AdminToken(..)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_running_during_reloads_all_get_a_decision() {
    let path = config_file("load", &config(1_000_000));
    let node = Arc::new(start(&path, Some(TOKEN)).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (node, stop) = (Arc::clone(&node), Arc::clone(&stop));
            tokio::spawn(async move {
                let body = format!(r#"{{"user_id": "u{i}", "endpoint": "/e"}}"#);
                let mut answered = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = node.server.check(&body).await;
                    assert!([200, 429].contains(&response.status), "{response:?}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    for version in 2..=11 {
        std::fs::write(&path, config(1_000_000 - version)).unwrap();
        let response = reload(&node.server, &[AUTH]).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.json()["version"], version);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        assert!(client.await.unwrap() > 0);
    }
    assert_eq!(limit_of(&node.server, "bob").await, 1_000_000 - 11);
    let node = Arc::into_inner(node).unwrap();
    node.server.stop().await;
}
