//! Where the time of one `check_and_increment` goes: each step of the check on its own, with
//! governor's counterpart where it has one. Diagnostic companion of `benches/limiter.rs`; run
//! with `cargo bench -p drl-core --bench parts`.
//!
//! The steps, in the order a check takes them: validate the ids, load the rules (`ArcSwap`),
//! look up the rule, read the clock, fingerprint the key (SipHash-1-3, 128 bits), find the cell
//! (its shard of the table), lock it, run the algorithm step. The map steps are measured on 100 000 keys in a
//! shuffled order, like the 100k scenario of the main bench.

use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use drl_core::algorithm::{LimitState, SlidingWindow, TokenBucket};
use drl_core::key::{CounterKey, Fingerprinter, validate_id};
use drl_core::{Algorithm, Clock, MemoryStore, Policy, Rules, StoreRequest, SystemClock};

const SEC: u64 = 1_000_000_000;
const KEYS: usize = 100_000;

fn policy(algorithm: Algorithm) -> Policy {
    // The limit of `benches/limiter.rs`: 10 000 per minute.
    Policy::per(10_000, Duration::from_secs(60), algorithm).expect("a valid policy")
}

/// A deterministic shuffle of `0..n` (splitmix64 + Fisher–Yates).
fn permutation(n: usize, mut seed: u64) -> Vec<usize> {
    let mut next = || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    v
}

fn per_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("parts");
    let (user, endpoint) = ("user-12345", "/api/endpoint-7");
    let composite = format!("{user}\0{endpoint}");

    g.bench_function("validate_ids", |b| {
        b.iter(|| {
            validate_id("user_id", black_box(user)).is_ok()
                && validate_id("endpoint", black_box(endpoint)).is_ok()
        })
    });

    let rules = ArcSwap::from_pointee(Rules::only_default(policy(Algorithm::default())));
    g.bench_function("rules_load_and_lookup", |b| {
        b.iter(|| {
            let rules = rules.load();
            rules
                .lookup(black_box(user), black_box(endpoint))
                .id()
                .len()
        })
    });

    let clock = SystemClock::new();
    g.bench_function("clock/drl_system_clock", |b| b.iter(|| clock.now_ns()));
    let quanta = governor::clock::DefaultClock::default();
    g.bench_function("clock/governor_quanta", |b| {
        b.iter(|| governor::clock::Clock::now(&quanta))
    });

    let fingerprints = Fingerprinter::new();
    let values = [user, endpoint];
    let builtin = Rules::builtin();
    let target = builtin.lookup(user, endpoint);
    // As the limiter builds it: with the rule's prefix, hashed when the rules were made.
    let key = target.counter_key("drl", 0, &values);
    g.bench_function("hash/drl_fingerprint_siphash13_128", |b| {
        b.iter(|| fingerprints.fingerprint(black_box(&key)))
    });
    let whole = CounterKey::new("drl", target.id(), 0, &values);
    g.bench_function("hash/drl_fingerprint_without_rule_prefix", |b| {
        b.iter(|| fingerprints.fingerprint(black_box(&whole)))
    });
    let std_hash = RandomState::new();
    g.bench_function("hash/governor_string_siphash13_64", |b| {
        b.iter(|| std_hash.hash_one(black_box(&composite)))
    });

    let mutex = Mutex::new(0u64);
    g.bench_function("mutex_lock_unlock", |b| {
        b.iter(|| {
            let mut guard = mutex.lock().unwrap_or_else(|p| p.into_inner());
            *guard += 1;
        })
    });

    // The algorithm step alone. Admit path: one hit every 10 ms (6 000 a minute, under the
    // limit), so the ring turns as it does under steady traffic. Deny path: the key filled up
    // at once and stays full, so the retry time is found past the empty buckets.
    let sliding = policy(Algorithm::default());
    let mut state = SlidingWindow::fresh(&sliding);
    let mut now = SEC;
    g.bench_function("step/sliding_window_admit", |b| {
        b.iter(|| {
            now += 10_000_000;
            state.check(&sliding, now, 1).allowed
        })
    });
    let mut full = SlidingWindow::fresh(&sliding);
    assert!(full.check(&sliding, SEC, 10_000).allowed);
    g.bench_function("step/sliding_window_deny", |b| {
        b.iter(|| full.check(&sliding, black_box(SEC + SEC / 2), 1).allowed)
    });
    let gcra = policy(Algorithm::TokenBucket { burst: None });
    let mut bucket = TokenBucket::fresh(&gcra);
    let mut now = SEC;
    g.bench_function("step/token_bucket_admit", |b| {
        b.iter(|| {
            now += 10_000_000;
            bucket.check(&gcra, now, 1).allowed
        })
    });
    g.finish();
}

/// The map steps on 100 000 keys, visited in a shuffled order.
fn on_100k_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("parts_100k_keys");
    let users: Vec<String> = permutation(KEYS, 1)
        .into_iter()
        .map(|i| format!("user-{i}"))
        .collect();
    let endpoint = "/api/endpoint-7";
    let sliding = policy(Algorithm::default());
    let request = |user: &'static str, now_ns| StoreRequest {
        key: CounterKey {
            domain: "drl",
            rule: b"default",
            limit: 0,
            values: Box::leak(Box::new([user, endpoint])),
            prefix: None,
        },
        policy: &sliding,
        hits: 1,
        now_ns,
        rules_epoch: 0,
    };
    // Leaked so requests can borrow them for the whole bench; the process ends right after.
    let users: &'static [String] = users.leak();

    let store = MemoryStore::new();
    for i in permutation(KEYS, 2) {
        store.check_now(&request(&users[i], SEC));
    }
    let mut at = 0;
    let mut now = SEC;
    let mut check_all = |b: &mut criterion::Bencher<'_>| {
        b.iter_custom(|iters| {
            now += 1_000_000;
            let begin = Instant::now();
            for _ in 0..iters {
                black_box(store.check_now(&request(&users[at], now)));
                at = if at + 1 == KEYS { 0 } else { at + 1 };
            }
            begin.elapsed()
        })
    };
    g.bench_function("memory_store_check_now", &mut check_all);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = per_call, on_100k_keys
}
criterion_main!(benches);
