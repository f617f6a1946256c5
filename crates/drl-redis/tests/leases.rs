//! Leases of hot keys (`store.redis.leases`) on one real `redis-server`, with several stores
//! standing for `drl` nodes: slices answered from memory never let any interval of T hold more
//! than N admissions, and steady traffic above the limit still gets (almost) all of N.

use drl_testkit::redis as support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use drl_core::{Algorithm, Limiter, Policy, Rules, Store};
use drl_redis::{Consistency, LeaseConfig, OnError, RedisConfig, RedisStore};
use support::Redis;

/// Nodes that share nothing but Redis, leasing keys checked more than 50 times a second.
fn nodes(redis: &Redis, policy: &Policy, count: usize) -> Vec<Limiter<RedisStore>> {
    (0..count)
        .map(|_| {
            let mut config = RedisConfig::new(vec![redis.url()]);
            config.consistency = Consistency::Fast;
            config.on_error = OnError::Deny;
            // Not under test: long enough that a stall of a loaded machine is no error.
            config.timeout = Duration::from_secs(2);
            config.leases = Some(LeaseConfig {
                threshold: 50.0,
                max_fraction: 0.25,
            });
            let store = RedisStore::new(&config).expect("store");
            Limiter::builder(Rules::only_default(policy.clone())).build_with_store(store)
        })
        .collect()
}

/// An admission: when its check was sent and answered, on the monotonic clock and in ns of the
/// system clock (which Redis's `TIME`, on this machine, reads too).
#[derive(Debug, Clone, Copy)]
struct Admission {
    sent: Instant,
    received: Instant,
    wall: (u128, u128),
}

type Log = Arc<Mutex<Vec<Admission>>>;

fn wall() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

/// The sliding-window promise: no interval of T holds more than N.
fn worst_interval(log: &[Admission], window: Duration) -> usize {
    support::worst_window(log.iter().map(|a| (a.sent, a.received)).collect(), window)
}

/// The fixed-window promise: no window aligned to a multiple of T holds more than N. Counts, per
/// window, the admissions certainly in it (sent and answered within it); returns the most.
fn worst_aligned(log: &[Admission], window: Duration) -> usize {
    let t = window.as_nanos();
    let mut counts = std::collections::HashMap::<u128, usize>::new();
    for a in log {
        if a.wall.0 / t == a.wall.1 / t {
            *counts.entry(a.wall.0 / t).or_default() += 1;
        }
    }
    counts.into_values().max().unwrap_or(0)
}

/// Runs `tasks` tasks per node checking one key until `stop`, each waiting `pause` between
/// checks (none: as fast as they can); logs every admission's [sent, received].
async fn hammer(
    nodes: &[Limiter<RedisStore>],
    tasks: usize,
    pause: Duration,
    stop: Instant,
) -> Log {
    let log: Log = Arc::default();
    let mut set = tokio::task::JoinSet::new();
    for node in nodes {
        for _ in 0..tasks {
            let (node, log) = (node.clone(), Arc::clone(&log));
            set.spawn(async move {
                let mut ticks = tokio::time::interval(pause.max(Duration::from_micros(1)));
                while Instant::now() < stop {
                    if !pause.is_zero() {
                        ticks.tick().await;
                    }
                    let (sent, sent_wall) = (Instant::now(), wall());
                    let d = node.check_async("hot", "/api", 1).await.expect("check");
                    if d.allowed {
                        let admission = Admission {
                            sent,
                            received: Instant::now(),
                            wall: (sent_wall, wall()),
                        };
                        log.lock().expect("log").push(admission);
                    }
                    if pause.is_zero() {
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
    log
}

fn answers(nodes: &[Limiter<RedisStore>]) -> u64 {
    nodes.iter().map(|n| n.store().stats().lease_answers).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_leased_by_three_nodes_never_holds_more_than_n_in_any_window() {
    let redis = Redis::start();
    let window = Duration::from_secs(1);
    for algorithm in [
        Algorithm::SlidingWindow { precision: 10 },
        Algorithm::FixedWindow,
    ] {
        let policy = Policy::per(300, window, algorithm).expect("policy");
        let nodes = nodes(&redis, &policy, 3);
        let stop = Instant::now() + Duration::from_millis(2_500);
        let log = hammer(&nodes, 4, Duration::ZERO, stop).await;
        let admissions = log.lock().expect("log").clone();
        assert!(
            admissions.len() >= 600,
            "{}: only {} admitted in 2.5 s",
            algorithm.name(),
            admissions.len()
        );
        let worst = match algorithm {
            Algorithm::FixedWindow => worst_aligned(&admissions, window),
            _ => worst_interval(&admissions, window),
        };
        assert!(
            worst <= 300,
            "{}: {worst} admissions within T",
            algorithm.name()
        );
        assert!(
            answers(&nodes) > 0,
            "{}: no lease answered",
            algorithm.name()
        );
        let _ = redis.cli(&["FLUSHALL"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_traffic_at_twice_the_limit_through_three_nodes_gets_95_percent_of_n() {
    let redis = Redis::start();
    let window = Duration::from_secs(1);
    for algorithm in [
        Algorithm::SlidingWindow { precision: 20 },
        Algorithm::FixedWindow,
    ] {
        // 200 per second; 3 nodes × 2 tasks × one check every 15 ms: 400 a second.
        let policy = Policy::per(200, window, algorithm).expect("policy");
        let nodes = nodes(&redis, &policy, 3);
        let start = Instant::now();
        let log = hammer(
            &nodes,
            2,
            Duration::from_millis(15),
            start + Duration::from_millis(3_600),
        )
        .await;
        let admissions = log.lock().expect("log").clone();
        let begun = wall() - start.elapsed().as_nanos();
        match algorithm {
            Algorithm::FixedWindow => {
                // Every aligned window that lies within the run after its first second.
                let t = window.as_nanos();
                let first = (begun + t) / t + 1;
                let last = (begun + 3_500_000_000) / t;
                for k in first..last {
                    let counted = admissions.iter().filter(|a| a.wall.0 / t == k).count();
                    eprintln!("fixed_window: window {k}: {counted} of 200 admitted");
                    assert!(
                        counted >= 190,
                        "fixed_window: {counted} admitted of 200 in a window"
                    );
                }
                assert!(worst_aligned(&admissions, window) <= 200);
            }
            _ => {
                // The 2.5 s after the first window: 2.5 N (up to half a bucket less at each edge).
                let (from, to) = (start + window, start + Duration::from_millis(3_500));
                let counted = admissions
                    .iter()
                    .filter(|a| a.sent >= from && a.sent < to)
                    .count();
                eprintln!("{}: {counted} of 500 admitted in 2.5 T", algorithm.name());
                assert!(
                    counted >= 475,
                    "{}: {counted} admitted of 500 in 2.5 windows",
                    algorithm.name()
                );
                assert!(worst_interval(&admissions, window) <= 200);
            }
        }
        assert!(
            answers(&nodes) > 0,
            "{}: no lease answered",
            algorithm.name()
        );
        let stats: Vec<_> = nodes.iter().map(|n| n.store().stats()).collect();
        eprintln!(
            "{}: leases granted {} used {} answered {} returned {} expired {}",
            algorithm.name(),
            stats.iter().map(|s| s.lease_granted).sum::<u64>(),
            stats.iter().map(|s| s.lease_used).sum::<u64>(),
            stats.iter().map(|s| s.lease_answers).sum::<u64>(),
            stats.iter().map(|s| s.lease_returned).sum::<u64>(),
            stats.iter().map(|s| s.lease_expired).sum::<u64>(),
        );
        let _ = redis.cli(&["FLUSHALL"]);
    }
}

/// Strict mode: a grant is a write like any admission, confirmed by `WAIT` before its slice is
/// used (an unconfirmed one is not: `lease.rs`'s tests). With a replica attached, a hot key is
/// answered from confirmed slices, and the bound holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_strict_mode_grants_confirmed_by_wait_serve_a_hot_key() {
    let master = Redis::start_with(&["--repl-diskless-sync-delay", "0"]);
    let port = master.port.to_string();
    let _replica = Redis::start_with(&["--replicaof", "127.0.0.1", &port]);
    let window = Duration::from_secs(1);
    let policy = Policy::per(300, window, Algorithm::default()).expect("policy");
    let mut config = RedisConfig::new(vec![master.url()]);
    config.consistency = Consistency::Strict;
    config.timeout = Duration::from_secs(2);
    config.leases = Some(LeaseConfig {
        threshold: 50.0,
        max_fraction: 0.25,
    });
    let store = RedisStore::new(&config).expect("store");
    drl_testkit::wait_within(Duration::from_secs(20), "no replica in sync", async || {
        store.ready().await.is_ok()
    })
    .await;
    let node = Limiter::builder(Rules::only_default(policy)).build_with_store(store);
    let stop = Instant::now() + Duration::from_millis(2_000);
    let log = hammer(std::slice::from_ref(&node), 8, Duration::ZERO, stop).await;
    let admissions = log.lock().expect("log").clone();
    let stats = node.store().stats();
    assert!(
        admissions.len() >= 300,
        "only {} admitted: {stats:?}",
        admissions.len()
    );
    assert!(worst_interval(&admissions, window) <= 300);
    assert!(
        stats.lease_grants > 0 && stats.lease_answers > 0,
        "{stats:?}"
    );
}
