//! The built `drl` binary end to end: `serve` on a free port, `check` against it, `config
//! validate`, and a graceful stop on SIGTERM.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DRL: &str = env!("CARGO_BIN_EXE_drl");
/// Upper bound for anything the test waits for; reached only when something is broken.
const DEADLINE: Duration = Duration::from_secs(20);

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

/// A `drl serve` child; killed if the test fails before stopping it.
struct Node {
    child: Option<Child>,
    url: String,
}

impl Node {
    /// Starts `drl serve` on port 0 and reads the address it logs.
    fn start(config: &PathBuf) -> Self {
        let mut child = Command::new(DRL)
            .args(["serve", "--http-addr", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read stderr on a thread (and keep draining it, so the node never blocks on a full
        // pipe); wait for the "listening" line with a deadline.
        let stderr = child.stderr.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = received
                .recv_timeout(left)
                .expect("drl serve logs its address");
            if let Some((_, addr)) = line.split_once("listening on ") {
                break addr.trim().to_owned();
            }
        };
        Self {
            child: Some(child),
            url,
        }
    }

    fn check(&self, user_id: &str, endpoint: &str) -> (Option<i32>, String) {
        let out = drl(&["check", "--server", &self.url, user_id, endpoint]);
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    }

    /// SIGTERM, then wait (bounded) for the node to exit.
    #[cfg(unix)]
    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let (done, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait());
        });
        match exited.recv_timeout(DEADLINE) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("drl serve did not stop on SIGTERM");
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn serve_and_check_end_to_end() {
    let config = write_file(
        "limits.yaml",
        "default:\n  limit: 3\n  window: 1h\nrules:\n  - endpoint: /upload\n    limit: 1\n    window: 1d\n",
    );
    let node = Node::start(&config);

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
