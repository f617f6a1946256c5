//! The Redis store over TLS (`rediss://`) against a real `redis-server` with a TLS port, its
//! certificates issued by a throwaway CA made in the test: the store trusts that CA (not the
//! system's roots) and presents a client certificate, as Redis asks by default
//! (`tls-auth-clients yes`); a CA that did not issue the server's certificate is refused.

#![allow(clippy::unwrap_used)] // Test code.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use drl_core::{Algorithm, Limiter, Policy, Rules};
use drl_redis::{ClientCert, Consistency, OnError, RedisConfig, RedisStore, RedisTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use support::Redis;

/// A throwaway CA, its certificate written to `dir/name.pem`.
fn ca(dir: &Path, name: &str) -> (CertifiedIssuer<'static, KeyPair>, PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, issuer.pem()).unwrap();
    (issuer, path)
}

/// A certificate for `names` issued by `ca`, written to `dir/name.crt` and `dir/name.key`.
fn leaf(
    dir: &Path,
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    names: &[&str],
) -> ClientCert {
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let files = ClientCert {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
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

impl TlsRedis {
    fn start(test: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("drl-redis-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (issuer, ca) = ca(&dir, "ca");
        let server = leaf(&dir, &issuer, "server", &["localhost", "127.0.0.1"]);
        let client = leaf(&dir, &issuer, "client", &["drl.test"]);
        let tls_port = free_port();
        let arg = |p: &Path| p.display().to_string();
        let (cert, key, ca_arg) = (arg(&server.cert), arg(&server.key), arg(&ca));
        let redis = Redis::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_arg,
        ]);
        Self {
            redis,
            tls_port,
            ca,
            client,
            dir,
        }
    }

    fn config(&self, tls: RedisTls) -> RedisConfig {
        let mut config = RedisConfig::new(vec![format!("rediss://127.0.0.1:{}", self.tls_port)]);
        config.consistency = Consistency::Fast;
        config.on_error = OnError::Deny;
        // A TLS handshake on a loaded machine: far above the 50 ms default.
        config.timeout = Duration::from_secs(5);
        config.tls = Some(tls);
        config
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
