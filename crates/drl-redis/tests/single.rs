//! The Redis store on one real `redis-server`: concurrency exactness with several nodes, expiry,
//! and the `on_error` policies with the server stopped and hung.

use drl_testkit::redis as support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drl_core::{Algorithm, Limiter, LimiterError, Policy, Rules, Store};
use drl_redis::{Consistency, OnError, RedisConfig, RedisStore};
use support::Redis;

fn store(redis: &Redis, on_error: OnError, timeout: Duration) -> RedisStore {
    let mut config = RedisConfig::new(vec![redis.url()]);
    config.consistency = Consistency::Fast;
    config.on_error = on_error;
    config.timeout = timeout;
    RedisStore::new(&config).expect("store")
}

/// Limiters that share nothing but Redis, as separate `drl` nodes would. Their timeout is not
/// under test: long enough that a stall of a loaded machine is not answered by `on_error` (which
/// would change the exact counts asserted).
fn nodes(redis: &Redis, policy: &Policy, count: usize) -> Vec<Limiter<RedisStore>> {
    (0..count)
        .map(|_| {
            Limiter::builder(Rules::only_default(policy.clone())).build_with_store(store(
                redis,
                OnError::Deny,
                Duration::from_secs(2),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_several_nodes_admits_exactly_n() {
    let redis = Redis::start();
    let policy = Policy::per(100, Duration::from_secs(60), Algorithm::default()).expect("policy");
    let admitted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for node in nodes(&redis, &policy, 4) {
        for _ in 0..25 {
            let (node, admitted) = (node.clone(), Arc::clone(&admitted));
            tasks.spawn(async move {
                for _ in 0..8 {
                    let d = node.check_async("hot", "/burst", 1).await.expect("check");
                    if d.allowed {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_hammered_by_several_nodes_keep_p() {
    let redis = Redis::start();
    let window = Duration::from_secs(1);
    for algorithm in [Algorithm::default(), Algorithm::SlidingLog] {
        let policy = Policy::per(20, window, algorithm).expect("policy");
        let log: Arc<Mutex<Vec<(usize, Instant, Instant)>>> = Arc::default();
        let stop = Instant::now() + Duration::from_millis(2_500);
        let mut tasks = tokio::task::JoinSet::new();
        for node in nodes(&redis, &policy, 3) {
            for t in 0..6 {
                let (node, log) = (node.clone(), Arc::clone(&log));
                tasks.spawn(async move {
                    while Instant::now() < stop {
                        let key = t % 2;
                        let sent = Instant::now();
                        let d = node
                            .check_async(&format!("hot{key}"), algorithm.name(), 1)
                            .await
                            .expect("check");
                        if d.allowed {
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
        for key in 0..2 {
            let admissions: Vec<_> = log
                .iter()
                .filter(|a| a.0 == key)
                .map(|a| (a.1, a.2))
                .collect();
            // Over 2.5 s of pressure at least two windows' worth was admitted...
            assert!(
                admissions.len() >= 40,
                "{}: only {}",
                algorithm.name(),
                admissions.len()
            );
            // ...and never more than N in any interval of length T.
            let worst = support::worst_window(admissions, window);
            assert!(
                worst <= 20,
                "{}: {worst} admissions within T",
                algorithm.name()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keys_expire() {
    let redis = Redis::start();
    let policy = Policy::per(5, Duration::from_secs(1), Algorithm::default()).expect("policy");
    let node = &nodes(&redis, &policy, 1)[0];
    for algorithm in ["a", "b"] {
        assert!(
            node.check_async("idle", algorithm, 1)
                .await
                .expect("check")
                .allowed
        );
    }
    // Key names hold the binary identity, so read their TTLs inside Redis.
    let ttls = redis.cli(&[
        "EVAL",
        "local r = {} for _, k in ipairs(redis.call('KEYS', 'drl:*')) do \
         table.insert(r, redis.call('PTTL', k)) end return r",
        "0",
    ]);
    assert_eq!(ttls.lines().count(), 2, "{ttls}");
    for ttl in ttls.lines() {
        let ttl: i64 = ttl.parse().expect("pttl");
        // One window plus one bucket, plus the script's 1 ms margin.
        assert!((1..=1_020).contains(&ttl), "PTTL {ttl}");
    }
    drl_testkit::wait_within(Duration::from_secs(5), "keys did not expire", async || {
        redis.cli(&["DBSIZE"]) == "0"
    })
    .await;
}

/// Each policy with the server hung (SIGSTOP) and then stopped (SIGKILL): every answer comes
/// within the timeout (plus scheduling slack) and is the policy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_policies_answer_within_the_timeout() {
    let timeout = Duration::from_millis(100);
    // Scheduling slack on a loaded 2-core machine (load average 8 and more: a thread can wait
    // that long for a core); the point is "about the timeout", not redis-rs's defaults (no
    // response timeout, 1.28 s between reconnects), which this still tells apart.
    let slack = Duration::from_millis(400);
    let policy = Policy::per(3, Duration::from_secs(60), Algorithm::default()).expect("policy");
    for on_error in [OnError::Deny, OnError::Allow, OnError::Local] {
        let mut redis = Redis::start();
        let store = store(&redis, on_error, timeout);
        let node = Limiter::builder(Rules::only_default(policy.clone())).build_with_store(store);
        assert!(node.check_async("u", "/e", 1).await.expect("check").allowed);
        node.store().ping().await.expect("reachable");
        node.store().ready().await.expect("ready");
        for phase in ["hung", "stopped"] {
            if phase == "hung" {
                redis.pause();
            } else {
                redis.kill();
            }
            let (mut allowed, mut failed) = (0, 0);
            for i in 0..5 {
                let started = Instant::now();
                let d = node.check_async("u", "/e", 1).await;
                let took = started.elapsed();
                assert!(
                    took <= timeout + slack,
                    "{on_error:?} {phase} check {i} took {took:?}"
                );
                match d {
                    Ok(d) => allowed += u32::from(d.allowed),
                    Err(LimiterError::Store(_)) => failed += 1,
                    Err(e) => panic!("{on_error:?}: {e}"),
                }
            }
            // `deny` answers the store's error (never a rate limit's denial).
            let expected = match on_error {
                OnError::Deny => (0, 5),
                OnError::Allow => (5, 0),
                // The local store counts from zero: N = 3 admitted, then denied; it keeps its
                // count across both phases.
                OnError::Local if phase == "hung" => (3, 0),
                OnError::Local => (0, 0),
            };
            assert_eq!((allowed, failed), expected, "{on_error:?} {phase}");
            if phase == "stopped" {
                assert!(
                    node.store().ping().await.is_err(),
                    "{on_error:?}: ping a dead store"
                );
                assert!(
                    node.store().ready().await.is_err(),
                    "{on_error:?}: not ready"
                );
            }
            if phase == "hung" {
                redis.resume();
                // The prober finds the store back; then the count kept in Redis decides again
                // (a fresh key: 1 of 3 used after the check).
                let deadline = Instant::now() + Duration::from_secs(3);
                for i in 0.. {
                    assert!(
                        Instant::now() < deadline,
                        "{on_error:?}: store not back after SIGCONT"
                    );
                    let before = node.store().stats().fallbacks;
                    let d = node.check_async("u", &format!("/back{i}"), 1).await;
                    if node.store().stats().fallbacks == before {
                        let d = d.expect("answered by Redis");
                        assert!(d.allowed && d.remaining == 2, "{on_error:?}: {d:?}");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let stats = node.store().stats();
        assert!(stats.errors >= 2, "{on_error:?}: {stats:?}");
        assert!(stats.fallbacks >= 10, "{on_error:?}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_denials_are_answered_from_the_deny_cache() {
    let redis = Redis::start();
    let policy = Policy::per(2, Duration::from_secs(60), Algorithm::default()).expect("policy");
    let node = &nodes(&redis, &policy, 1)[0];
    for _ in 0..2 {
        assert!(
            node.check_async("abuser", "/e", 1)
                .await
                .expect("check")
                .allowed
        );
    }
    let calls = |r: &Redis| support::command_calls(r, "evalsha");
    let before = calls(&redis);
    for _ in 0..50 {
        let d = node.check_async("abuser", "/e", 1).await.expect("check");
        assert!(!d.allowed);
        assert!(d.retry_after > Duration::from_secs(50));
    }
    // The first denial went to Redis, the other 49 were answered locally.
    assert_eq!(calls(&redis) - before, 1);
    assert_eq!(node.store().stats().deny_cache_hits, 49);
    // A rules change voids the cache.
    node.set_rules(Rules::only_default(
        Policy::per(5, Duration::from_secs(60), Algorithm::default()).expect("policy"),
    ));
    assert!(
        node.check_async("abuser", "/e", 1)
            .await
            .expect("check")
            .allowed
    );
}

#[tokio::test]
async fn strict_mode_on_a_redis_without_a_replica_is_not_ready() {
    // The default `consistency: strict` on a lone Redis: WAIT confirms nothing, every
    // admission is denied; /readyz (and so a load balancer) must not send traffic to it.
    let master = Redis::start_with(&["--repl-diskless-sync-delay", "0"]);
    let mut config = RedisConfig::new(vec![master.url()]);
    config.consistency = Consistency::Strict;
    config.timeout = Duration::from_secs(2);
    let store = RedisStore::new(&config).expect("store");
    let error = store
        .ready()
        .await
        .expect_err("not ready without a replica");
    assert!(error.to_string().contains("has no replica"), "{error}");

    // A replica attached: ready (the replica's link comes up in a moment; poll, bounded).
    let port = master.port.to_string();
    let _replica = Redis::start_with(&["--replicaof", "127.0.0.1", &port]);
    drl_testkit::wait_within(Duration::from_secs(20), "still not ready", async || {
        store.ready().await.is_ok()
    })
    .await;

    // Fast mode needs no replica.
    config.consistency = Consistency::Fast;
    let lone = Redis::start();
    config.urls = vec![lone.url()];
    let fast = RedisStore::new(&config).expect("store");
    fast.ready()
        .await
        .expect("fast mode is ready without a replica");
}
