//! The Redis store on a real Redis Cluster (3 masters, 3 replicas): slot placement of tricky
//! identities, and strict admissions (WAIT) from several nodes hammering hot keys.

use drl_testkit::redis as support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drl_core::{Algorithm, Limiter, Policy, Rules};
use drl_redis::keys::key_for;
use drl_redis::{Consistency, OnError, RedisConfig, RedisStore};
use support::Cluster;

fn store(cluster: &Cluster, consistency: Consistency) -> RedisStore {
    let mut config = RedisConfig::new(cluster.urls());
    config.cluster = true;
    config.consistency = consistency;
    config.on_error = OnError::Deny;
    // Not under test here: long enough that a stall of a loaded machine is not answered by
    // `on_error` (which would change the exact counts asserted).
    config.timeout = Duration::from_secs(2);
    RedisStore::new(&config).expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_identities_live_in_one_slot_and_strict_nodes_keep_p() {
    let cluster = Cluster::start(3, 1);

    // Slot placement: Redis computes the same slot as the store for names built from any bytes,
    // and every algorithm's key of one identity shares it.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut conn = client.get_async_connection().await.expect("connection");
    let kib = "x".repeat(1_024);
    let tricky: [&[u8]; 9] = [
        b"{",
        b"}",
        b"{}",
        b":",
        b"a\nb",
        b"",
        "ünï{cødé}".as_bytes(),
        b"\x00\xff{\x00}",
        kib.as_bytes(),
    ];
    for identity in tricky {
        let keys = [
            Algorithm::default(),
            Algorithm::SlidingLog,
            Algorithm::FixedWindow,
            Algorithm::TokenBucket { burst: None },
        ]
        .map(|a| key_for(identity, identity, a));
        for key in &keys {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key.name)
                .query_async(&mut conn)
                .await
                .expect("keyslot");
            assert_eq!(slot, key.slot, "{identity:?}");
            assert_eq!(
                key.slot, keys[0].slot,
                "{identity:?}: one slot per identity"
            );
        }
    }

    // Through the limiter: tricky user ids are checked on the cluster without a routing error.
    let policy = Policy::per(2, Duration::from_secs(60), Algorithm::default()).expect("policy");
    let node = Limiter::builder(Rules::only_default(policy))
        .build_with_store(store(&cluster, Consistency::Strict));

    // The warm-up at start: every master has the scripts and got one WAIT before any check, so
    // the first admissions pay for none of it (lazily, it could exceed a tight timeout).
    let masters: Vec<&support::Redis> = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["ROLE"]).starts_with("master"))
        .collect();
    assert_eq!(masters.len(), 3);
    node.store().ping().await.expect("warm-up");
    let loads: Vec<u64> = masters
        .iter()
        .map(|m| support::command_calls(m, "script|load"))
        .collect();
    for (m, &loaded) in masters.iter().zip(&loads) {
        assert!(loaded >= 6, "{}: {loaded} scripts loaded", m.port);
        assert!(
            support::command_calls(m, "wait") >= 1,
            "{}: no WAIT",
            m.port
        );
    }
    for user in ["{", "}", "{}", ":", "a\nb", "ünï{cødé}", &kib[..1_000]] {
        for expect in [true, true, false] {
            let d = node.check_async(user, "/e{x}", 1).await.expect("check");
            assert_eq!(d.allowed, expect, "{user:?}");
        }
    }
    assert_eq!(node.store().stats().errors, 0);
    let loads_after: Vec<u64> = masters
        .iter()
        .map(|m| support::command_calls(m, "script|load"))
        .collect();
    assert_eq!(
        loads, loads_after,
        "no script loaded lazily after the warm-up"
    );

    // Strict admissions from three nodes on hot keys: P holds and every WAIT found a replica.
    let window = Duration::from_secs(1);
    let policy = Policy::per(25, window, Algorithm::default()).expect("policy");
    let log: Arc<Mutex<Vec<(usize, Instant, Instant)>>> = Arc::default();
    let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_millis(2_500);
    let mut tasks = tokio::task::JoinSet::new();
    let nodes: Vec<_> = (0..3)
        .map(|_| {
            Limiter::builder(Rules::only_default(policy.clone()))
                .build_with_store(store(&cluster, Consistency::Strict))
        })
        .collect();
    for node in &nodes {
        for t in 0..8 {
            let (node, log, checks) = (node.clone(), Arc::clone(&log), Arc::clone(&checks));
            tasks.spawn(async move {
                while Instant::now() < stop {
                    checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let key = t % 4;
                    let sent = Instant::now();
                    let d = node.check_async(&format!("hot{key}"), "/strict", 1).await;
                    // `on_error: deny` answers the store's error, which admits nothing.
                    if d.is_ok_and(|d| d.allowed) {
                        log.lock().expect("log").push((key, sent, Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    let log = log.lock().expect("log");
    for key in 0..4 {
        let admissions: Vec<_> = log
            .iter()
            .filter(|a| a.0 == key)
            .map(|a| (a.1, a.2))
            .collect();
        assert!(
            admissions.len() >= 50,
            "key {key}: only {}",
            admissions.len()
        );
        let worst = support::worst_window(admissions, window);
        assert!(worst <= 25, "key {key}: {worst} admissions within T");
    }
    // Strict mode sent WAITs, and batched: fewer WAITs than the checks that went to Redis
    // (those the deny cache did not answer).
    let calls = |command: &str| -> u64 {
        cluster
            .nodes
            .iter()
            .map(|n| support::command_calls(n, command))
            .sum()
    };
    let cached: u64 = nodes
        .iter()
        .map(|n| n.store().stats().deny_cache_hits)
        .sum();
    let sent = checks.load(std::sync::atomic::Ordering::Relaxed) - cached;
    let waits = calls("wait");
    println!("strict: {sent} checks sent to Redis, {waits} WAITs");
    assert!(waits > 0 && waits < sent, "{waits} WAITs for {sent} checks");
    for node in &nodes {
        let stats = node.store().stats();
        assert_eq!(stats.errors, 0, "{stats:?}");
        assert_eq!(stats.wait_shortfalls, 0, "{stats:?}");
    }
}
