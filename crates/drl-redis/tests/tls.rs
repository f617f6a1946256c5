//! The Redis store over TLS (`rediss://`) against a real `redis-server` with a TLS port, its
//! certificates issued by a throwaway CA made in the test: the store trusts that CA (not the
//! system's roots) and presents a client certificate, as Redis asks by default
//! (`tls-auth-clients yes`); a CA that did not issue the server's certificate is refused. A
//! Redis Cluster over TLS (`tls-cluster yes`) is reached through `rediss://` seeds, and every
//! master gets its share of the counters.

#![allow(clippy::unwrap_used)] // Test code.

use drl_testkit::redis as support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drl_core::{Algorithm, Limiter, Policy, Rules};
use drl_redis::{ClientCert, Consistency, OnError, RedisConfig, RedisStore, RedisTls};
use drl_testkit::ca::TestCa;
use support::{Cluster, Redis};

/// A throwaway CA, its certificate written to `dir/name.pem`.
fn ca(dir: &Path, name: &str) -> (TestCa, PathBuf) {
    let ca = TestCa::new(name);
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, ca.pem()).unwrap();
    (ca, path)
}

/// A certificate for `names` issued by `ca`, written to `dir/name.crt` and `dir/name.key`.
fn leaf(dir: &Path, ca: &TestCa, name: &str, names: &[&str]) -> ClientCert {
    let files = ClientCert {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    // Each certificate a serial number of its own, as a CA gives them.
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    ca.leaf(names, serial).write(&files.cert, &files.key);
    files
}

/// A free loopback port for the TLS listener (the plaintext one is the support's).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` with a TLS port beside its plaintext one (kept for readiness and
/// inspection), and the files a client needs.
struct TlsRedis {
    redis: Redis,
    tls_port: u16,
    ca: PathBuf,
    client: ClientCert,
    dir: PathBuf,
}

/// A test's CA, the server certificate it issued (for 127.0.0.1) and a client certificate.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    server: ClientCert,
    client: ClientCert,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("drl-redis-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (issuer, ca) = ca(&dir, "ca");
        let server = leaf(&dir, &issuer, "server", &["localhost", "127.0.0.1"]);
        let client = leaf(&dir, &issuer, "client", &["drl.test"]);
        Self {
            dir,
            ca,
            server,
            client,
        }
    }

    /// The `redis-server` arguments of a TLS listener on `port` with these files.
    fn server_args(&self, port: u16) -> Vec<String> {
        let arg = |p: &Path| p.display().to_string();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            arg(&self.server.cert),
            "--tls-key-file".into(),
            arg(&self.server.key),
            "--tls-ca-cert-file".into(),
            arg(&self.ca),
        ]
    }

    /// What the store needs to trust Redis and be trusted by it.
    fn client_tls(&self) -> RedisTls {
        RedisTls {
            ca: Some(self.ca.clone()),
            client: Some(self.client.clone()),
        }
    }
}

/// A store config for `urls`, with `tls`.
fn store_config(urls: Vec<String>, tls: RedisTls) -> RedisConfig {
    let mut config = RedisConfig::new(urls);
    config.consistency = Consistency::Fast;
    config.on_error = OnError::Deny;
    // A TLS handshake on a loaded machine: far above the 50 ms default.
    config.timeout = Duration::from_secs(5);
    config.tls = Some(tls);
    config
}

impl TlsRedis {
    fn start(test: &str) -> Self {
        let pki = Pki::new(test);
        let tls_port = free_port();
        let args = pki.server_args(tls_port);
        let redis = Redis::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
        Self {
            redis,
            tls_port,
            ca: pki.ca,
            client: pki.client,
            dir: pki.dir,
        }
    }

    fn config(&self, tls: RedisTls) -> RedisConfig {
        store_config(vec![format!("rediss://127.0.0.1:{}", self.tls_port)], tls)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_go_through_rediss_with_the_ca_and_a_client_certificate() {
    let redis = TlsRedis::start("trusted");
    let config = redis.config(RedisTls {
        ca: Some(redis.ca.clone()),
        client: Some(redis.client.clone()),
    });
    let store = RedisStore::new(&config).unwrap();
    store.ping().await.unwrap();
    let policy = Policy::per(3, Duration::from_secs(60), Algorithm::default()).unwrap();
    let limiter = Limiter::builder(Rules::only_default(policy)).build_with_store(store);
    let allowed: Vec<bool> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(
                limiter
                    .check_async("alice", "/api", 1)
                    .await
                    .unwrap()
                    .allowed,
            );
        }
        out
    };
    assert_eq!(allowed, [true, true, true, false]);
    // The counters are in this Redis (seen through its plaintext port).
    let keys: u64 = redis.redis.cli(&["DBSIZE"]).parse().unwrap();
    assert!(keys >= 1, "no key written over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_ca_did_not_issue_is_refused() {
    let redis = TlsRedis::start("untrusted");
    let (_, other_ca) = ca(&redis.dir, "other");
    let config = redis.config(RedisTls {
        ca: Some(other_ca),
        client: Some(redis.client.clone()),
    });
    let store = RedisStore::new(&config).unwrap();
    let e = store.ping().await.unwrap_err();
    assert!(!e.to_string().is_empty());
    assert_eq!(redis.redis.cli(&["DBSIZE"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_redis_refuses_the_store() {
    let redis = TlsRedis::start("no-client-cert");
    let config = redis.config(RedisTls {
        ca: Some(redis.ca.clone()),
        client: None,
    });
    let store = RedisStore::new(&config).unwrap();
    assert!(store.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_reached_over_rediss() {
    let pki = Pki::new("cluster");
    let mut tls_ports = Vec::new();
    let nodes: Vec<Redis> = (0..3)
        .map(|_| {
            let port = free_port();
            tls_ports.push(port);
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                // The cluster bus over TLS too; Redis then tells TLS clients its TLS ports.
                "--tls-cluster",
                "yes",
            ]
            .map(String::from)
            .into();
            args.extend(pki.server_args(port));
            Redis::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    // The cluster is made over the plaintext ports, as the support does.
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
        .arg("--cluster-yes")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let cluster = Cluster { nodes };
    cluster.wait_healthy(3, 0, Duration::from_secs(20));

    let urls = tls_ports
        .iter()
        .map(|p| format!("rediss://127.0.0.1:{p}"))
        .collect();
    let mut config = store_config(urls, pki.client_tls());
    config.cluster = true;
    let store = RedisStore::new(&config).unwrap();
    store.ping().await.unwrap();
    let policy = Policy::per(1, Duration::from_secs(60), Algorithm::default()).unwrap();
    let limiter = Limiter::builder(Rules::only_default(policy)).build_with_store(store);
    for user in 0..30 {
        let user = format!("user-{user}");
        assert!(limiter.check_async(&user, "/api", 1).await.unwrap().allowed);
        assert!(!limiter.check_async(&user, "/api", 1).await.unwrap().allowed);
    }
    // 30 users' counters land on every master (seen through the plaintext ports).
    for node in &cluster.nodes {
        let keys: u64 = node.cli(&["DBSIZE"]).parse().unwrap();
        assert!(keys >= 1, "a master got no key over TLS");
    }
}

#[test]
fn tls_settings_need_rediss_urls_and_readable_files() {
    let mut config = RedisConfig::new(vec!["redis://127.0.0.1:6379".into()]);
    config.tls = Some(RedisTls::default());
    let e = RedisStore::new(&config).unwrap_err();
    assert!(e.to_string().contains("rediss://"), "{e}");

    config.urls = vec!["rediss://127.0.0.1:6379".into()];
    config.tls = Some(RedisTls {
        ca: Some(PathBuf::from("/nonexistent/ca.pem")),
        client: None,
    });
    let e = RedisStore::new(&config).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}
