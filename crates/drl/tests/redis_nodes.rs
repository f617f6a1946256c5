//! Two `drl serve` nodes on one real `redis-server` (`store.kind: redis`) share their counters:
//! what one node admits counts against the other.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

#[path = "../../drl-redis/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DRL: &str = env!("CARGO_BIN_EXE_drl");

/// A `drl serve` child, killed when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    fn start(config: &PathBuf) -> Self {
        let mut child = Command::new(DRL)
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = received
                .recv_timeout(left)
                .expect("drl serve logs its address");
            if let Some((_, rest)) = line.split_once("listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        Self { child, url }
    }

    /// `drl check`'s exit code: 0 allowed, 1 denied, 2 error.
    fn check(&self, user_id: &str, endpoint: &str) -> Option<i32> {
        Command::new(DRL)
            .args(["check", "--server", &self.url, user_id, endpoint])
            .output()
            .unwrap()
            .status
            .code()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_nodes_share_one_budget_in_redis() {
    let redis = support::Redis::start();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drl-redis-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("drl.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  kind: redis\n  redis:\n    urls: [\"{}\"]\n    consistency: fast\n    \
             timeout: 500ms\ndefault:\n  limit: 3\n  window: 1m\n",
            redis.url()
        ),
    )
    .unwrap();
    let (a, b) = (Node::start(&config), Node::start(&config));
    let codes = [
        a.check("alice", "/x"),
        b.check("alice", "/x"),
        a.check("alice", "/x"),
        b.check("alice", "/x"),
        a.check("alice", "/x"),
    ];
    assert_eq!(codes, [Some(0), Some(0), Some(0), Some(1), Some(1)]);
    // Another user has a budget of its own, on either node.
    assert_eq!(b.check("bob", "/x"), Some(0));
    // The counters are in Redis.
    assert_ne!(redis.cli(&["DBSIZE"]), "0");
}
