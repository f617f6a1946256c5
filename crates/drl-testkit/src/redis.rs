//! Real `redis-server` processes for the tests: started on free loopback ports in a fresh
//! directory, and always stopped (SIGKILL, then reaped) when their guard drops, on success or
//! panic. `redis-server` and `redis-cli` must be on PATH (`scripts/test.sh` installs them).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Ports are probed upwards from a per-process start, so parallel test binaries rarely collide;
/// a port is taken only if it and its cluster bus port (+10 000) are free.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn free_port() -> u16 {
    let _ = NEXT_PORT.compare_exchange(
        0,
        21_000 + (std::process::id() % 400) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 30_000, "no free port");
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// One `redis-server`.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// The extra arguments it was started with (a restart uses them again).
    extra: Vec<String>,
}

impl Redis {
    /// A standalone instance.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// An instance with extra `--name value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("drl-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut redis = Self {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        redis.spawn();
        redis
    }

    /// Starts the process (on this port, in this directory, with these arguments) and waits
    /// until it answers.
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        self.wait_ready();
    }

    /// `kill -9`, then a new process on the same port with the same directory and arguments
    /// (so with the same data if they make it persistent, e.g. `--appendonly yes`). Returns when
    /// the new one answers PING (its data loaded).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `redis-cli -p PORT args…`, its stdout trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process holds its sockets but answers nothing.
    pub fn pause(&self) {
        signal("-STOP", self.pid());
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal("-CONT", self.pid());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            signal("-CONT", self.pid());
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(sig: &str, pid: u32) {
    if pid != 0 {
        let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
    }
}

/// `redis-cli -p PORT args…`.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        let nodes: Vec<Redis> = (0..masters * (1 + replicas))
            .map(|_| {
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-replica-validity-factor",
                    "0",
                    "--repl-ping-replica-period",
                    "1",
                    // A replica's full sync starts at once, not after the default 5 s wait for
                    // more replicas (a rejoining old master syncs in milliseconds, not seconds).
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_healthy(masters, replicas, Duration::from_secs(20));
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(Redis::url)
            .collect()
    }

    /// Waits until every live node sees the cluster ok and every master has its replicas online.
    pub fn wait_healthy(&self, masters: usize, replicas: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let replicated = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .filter(|n| n.cli(&["ROLE"]).starts_with("master"))
                .map(|n| {
                    n.cli(&["INFO", "replication"])
                        .lines()
                        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                        .count()
                })
                .filter(|&r| r >= replicas)
                .count();
            if ok && replicated >= masters {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node that is master of `slot` now.
    pub fn master_of(&self, slot: u16) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() || !n.cli(&["ROLE"]).starts_with("master") {
                    continue;
                }
                let owned = n.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
                let nodes = n.cli(&["CLUSTER", "NODES"]);
                let myself = nodes.lines().find(|l| l.contains("myself")).unwrap_or("");
                if !owned.is_empty() && owns(myself, slot) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no master for slot {slot}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a CLUSTER NODES line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        match (a.parse::<u16>(), b.parse::<u16>()) {
            (Ok(a), Ok(b)) => (a..=b).contains(&slot),
            _ => false,
        }
    })
}

/// P over admissions whose server time is only known to lie in [sent, received]: fails only
/// on a certain violation, i.e. N + 1 admissions that all fell inside one interval of length T.
/// Returns the worst count found in any such interval.
pub fn worst_window(mut admissions: Vec<(Instant, Instant)>, window: Duration) -> usize {
    admissions.sort_by_key(|a| a.0);
    let mut worst = 0;
    for (i, &(start, _)) in admissions.iter().enumerate() {
        let end = start + window;
        let inside = admissions[i..]
            .iter()
            .take_while(|a| a.0 <= end)
            .filter(|a| a.1 <= end)
            .count();
        worst = worst.max(inside);
    }
    worst
}

/// How many times `command` ran on `redis` (INFO commandstats).
pub fn command_calls(redis: &Redis, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Admissions ever recorded by the `sliding_log` counters whose key name contains `needle` (the
/// count in each ring's header: every admission the script counted, whatever the window).
pub fn admissions_recorded(redis: &Redis, needle: &str) -> u64 {
    let total = redis.cli(&[
        "EVAL",
        "local total = 0 for _, k in ipairs(redis.call('KEYS', 'drl:l*')) do \
         if string.find(k, ARGV[1], 1, true) then \
         local count = struct.unpack('>dd', redis.call('GETRANGE', k, 0, 15)) \
         total = total + count end end return total",
        "0",
        needle,
    ]);
    total
        .parse()
        .unwrap_or_else(|_| panic!("admissions of {needle}: {total}"))
}

/// How many replies of error `code` (e.g. `NOSCRIPT`) `redis` gave since it started
/// (INFO errorstats).
pub fn error_replies(redis: &Redis, code: &str) -> u64 {
    let prefix = format!("errorstat_{code}:count=");
    redis
        .cli(&["INFO", "errorstats"])
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
