//! `check_all` on real Redis: all or nothing over several counters, in one slot (one atomic
//! script) and across slots of a cluster (trial, commit, refund), in fast and strict mode.

use drl_testkit::redis as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use drl_core::{Algorithm, CounterKey, Decision, Policy, Store, StoreRequest};
use drl_redis::keys::redis_key;
use drl_redis::{Consistency, OnError, RedisConfig, RedisStore};

/// The only place these tests build identities.
fn key<'a>(limit: u16, values: &'a [&'a str]) -> CounterKey<'a> {
    CounterKey {
        domain: "check_all",
        rule: b"rule",
        limit,
        values,
        prefix: None,
    }
}

fn store(urls: Vec<String>, cluster: bool, consistency: Consistency) -> RedisStore {
    let mut config = RedisConfig::new(urls);
    config.cluster = cluster;
    config.consistency = consistency;
    config.on_error = OnError::Deny;
    // Not under test here: long enough that a stall of a loaded machine is not answered by
    // `on_error` (which would change the exact counts asserted).
    config.timeout = Duration::from_secs(2);
    RedisStore::new(&config).expect("store")
}

fn request<'a>(k: CounterKey<'a>, policy: &'a Policy, hits: u32) -> StoreRequest<'a> {
    StoreRequest {
        key: k,
        policy,
        hits,
        now_ns: 0,
        rules_epoch: 0,
    }
}

async fn all(store: &RedisStore, requests: &[StoreRequest<'_>]) -> Vec<Decision> {
    store.check_all(requests).await.expect("check_all")
}

/// Two limits of one descriptor (3 and 5 per minute) share a slot and are decided together.
async fn one_group(store: &RedisStore, tag: &str) {
    let short = Policy::per(3, Duration::from_secs(60), Algorithm::default()).expect("policy");
    let long = Policy::per(5, Duration::from_secs(60), Algorithm::FixedWindow).expect("policy");
    let values = [tag, "alice", "/group"];
    let (a, b) = (key(0, &values), key(1, &values));
    assert_eq!(
        redis_key(&a, short.algorithm()).slot,
        redis_key(&b, long.algorithm()).slot
    );
    for left in [2, 1, 0] {
        let d = all(store, &[request(a, &short, 1), request(b, &long, 1)]).await;
        assert!(d.iter().all(|d| d.allowed), "{d:?}");
        assert_eq!(d[0].remaining, left);
    }
    let d = all(store, &[request(a, &short, 1), request(b, &long, 1)]).await;
    assert!(!d[0].allowed, "{d:?}");
    // The other limit had room (it reports what it would have left) but was not counted.
    assert!(d[1].allowed && d[1].remaining == 1, "{d:?}");
    assert_eq!(
        store
            .check(request(b, &long, 0))
            .await
            .expect("read")
            .remaining,
        2
    );
    // The same counter twice: its hits add up.
    let values = [tag, "bob", "/twice"];
    let c = key(0, &values);
    let d = all(store, &[request(c, &short, 2), request(c, &short, 2)]).await;
    assert!(!d[0].allowed && !d[1].allowed, "4 hits of 3: {d:?}");
    let d = all(store, &[request(c, &short, 1), request(c, &short, 2)]).await;
    assert!(d[0].allowed && d[1].allowed && d[0].remaining == 0, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_is_all_or_nothing_on_a_single_redis() {
    let redis = support::Redis::start();
    one_group(
        &store(vec![redis.url()], false, Consistency::Fast),
        "single",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_slots_nothing_is_counted_unless_all_are_admitted() {
    let cluster = support::Cluster::start(3, 1);
    for consistency in [Consistency::Fast, Consistency::Strict] {
        let store = store(cluster.urls(), true, consistency);
        let tag = format!("{consistency:?}");
        one_group(&store, &tag).await;

        // Two descriptors in different slots: 2 and 10 per minute.
        let narrow = Policy::per(2, Duration::from_secs(60), Algorithm::default()).expect("policy");
        let wide = Policy::per(
            10,
            Duration::from_secs(60),
            Algorithm::TokenBucket { burst: None },
        )
        .expect("policy");
        let (xv, yv) = ([tag.as_str(), "x"], [tag.as_str(), "y-elsewhere"]);
        let (x, y) = (key(0, &xv), key(0, &yv));
        assert_ne!(
            redis_key(&x, narrow.algorithm()).slot,
            redis_key(&y, wide.algorithm()).slot,
            "pick values in different slots"
        );
        for _ in 0..2 {
            let d = all(&store, &[request(x, &narrow, 1), request(y, &wide, 1)]).await;
            assert!(d.iter().all(|d| d.allowed), "{consistency:?}: {d:?}");
        }
        let d = all(&store, &[request(x, &narrow, 1), request(y, &wide, 1)]).await;
        assert!(!d[0].allowed && d[1].allowed, "{consistency:?}: {d:?}");
        let read = store.check(request(y, &wide, 0)).await.expect("read");
        assert_eq!(read.remaining, 8, "{consistency:?}: y counted only twice");

        // Racing pairs and single checks on the wide counter: the pairs never get more than the
        // narrow limit, and the wide one never more than its own. The singles (4 tasks, 2 checks
        // each: 8 < 12) cannot use up the wide limit on their own, so some pairs must get
        // through however the race goes (with 10 each, a fast run once let the singles take
        // all 12 before any pair's two round trips finished).
        let (pv, qv) = ([tag.as_str(), "p"], [tag.as_str(), "q-elsewhere"]);
        assert_ne!(
            redis_key(&key(0, &pv), narrow.algorithm()).slot,
            redis_key(&key(0, &qv), narrow.algorithm()).slot
        );
        let pairs = Arc::new(AtomicU32::new(0));
        let singles = Arc::new(AtomicU32::new(0));
        let store = Arc::new(store);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..8 {
            let (store, pairs, singles) =
                (Arc::clone(&store), Arc::clone(&pairs), Arc::clone(&singles));
            let tag = tag.clone();
            let (narrow, wide) = (
                Policy::per(5, Duration::from_secs(60), Algorithm::default()).expect("policy"),
                Policy::per(12, Duration::from_secs(60), Algorithm::default()).expect("policy"),
            );
            tasks.spawn(async move {
                let (pv, qv) = ([tag.as_str(), "p"], [tag.as_str(), "q-elsewhere"]);
                let (p, q) = (key(0, &pv), key(0, &qv));
                for i in 0..10 {
                    if t % 2 == 0 {
                        let d = all(&store, &[request(p, &narrow, 1), request(q, &wide, 1)]).await;
                        if d.iter().all(|d| d.allowed) {
                            pairs.fetch_add(1, Ordering::SeqCst);
                        }
                    } else if i < 2
                        && store
                            .check(request(q, &wide, 1))
                            .await
                            .expect("check")
                            .allowed
                    {
                        singles.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        let (pairs, singles) = (pairs.load(Ordering::SeqCst), singles.load(Ordering::SeqCst));
        assert!(pairs <= 5, "{consistency:?}: {pairs} pairs admitted");
        assert!(
            pairs + singles <= 12,
            "{consistency:?}: {pairs} + {singles} on the wide limit"
        );
        assert!(
            pairs >= 1 && pairs + singles >= 10,
            "{consistency:?}: {pairs} + {singles}"
        );
        assert_eq!(store.stats().errors, 0);
    }
}
