//! ns per `check_and_increment` and decisions/s: drl's default sliding window against governor's
//! keyed limiter, side by side in one run, on the same key sets and the same access order.
//!
//! Scenarios: {1 hot key, 100 000 keys, 1 000 000 keys} × {1, 2 threads}. Run with
//! `cargo bench -p drl-core --bench limiter` (or `scripts/bench-core.sh`, which also records the
//! machine and writes `docs/benchmarks.md`).
//!
//! What makes the comparison fair:
//!
//! - **Same limit.** drl: `Policy::per(10_000, 60 s, sliding_window)` at the default precision
//!   (60 buckets of 1 s); governor: `Quota::per_minute(10_000)` (GCRA, burst 10 000). On 100k and
//!   1M keys every key sees far fewer than 10 000 hits a minute, so both measure the admit path.
//!   On the hot key both admit their 10 000 and then deny, which is what a hot key does in
//!   production; the bench prints the admitted share of each run so the equivalence can be seen.
//!   The window is a minute, not a second, so that no key goes idle while the 1M-key set is being
//!   inserted (which takes seconds): the steady state measured is one of live keys.
//! - **No allocation per call on either side.** Keys are built once: drl is called with the
//!   `&str`s of a prebuilt `(user_id, endpoint)` pair; governor's key type is `String` and each
//!   call borrows a prebuilt `"user_id\0endpoint"` composite. (drl fingerprints the identity and
//!   stores only 128 bits; governor hashes and stores the whole key.)
//! - **Default clocks and maps.** drl: `SystemClock` (`Instant`) and its papaya store; governor:
//!   its default quanta clock and `DashMap` store (`RateLimiter::keyed`).
//! - **No background work.** drl's sweeper thread is off (`sweep_interval(None)`); governor has
//!   none. Sweeping is measured separately, by `examples/memory.rs`.
//! - **Steady state.** Every key is inserted before measuring, in an order unrelated to the
//!   access order, so the bench measures lookups of existing keys, not inserts. drl's store is
//!   then swept once, as its sweeper would within its first interval in a deployment; the sweep
//!   also completes the map's pending resizes (measured both ways in `benches/parts.rs`).
//! - **Random access.** Keys are visited in a shuffled order (fixed seed). The key list is laid
//!   out in that order, so walking it costs the same for both and the limiter's own cache misses
//!   dominate. With 2 threads each walks the order from its own offset (disjoint stretches; on
//!   the hot key both hammer the one key); time is wall time for `iters` checks in total, so
//!   the reported throughput is the aggregate decisions/s.

use std::cell::OnceCell;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use drl_core::{Algorithm, Limiter, Policy, Rules};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// N for both limiters, per window of [`WINDOW`].
const LIMIT: u32 = 10_000;
/// T for both limiters (governor's `Quota::per_minute`).
const WINDOW: Duration = Duration::from_secs(60);
/// Endpoints per key set; users are distinct, so every (user, endpoint) pair is a distinct key.
const ENDPOINTS: usize = 16;

/// One prebuilt key, in the form each limiter takes it.
struct Key {
    user: String,
    endpoint: String,
    /// `user\0endpoint`: governor's key.
    composite: String,
}

impl Key {
    fn new(i: usize) -> Self {
        let user = format!("user-{i}");
        let endpoint = format!("/api/endpoint-{}", i % ENDPOINTS);
        let composite = format!("{user}\0{endpoint}");
        Self {
            user,
            endpoint,
            composite,
        }
    }
}

/// The keys of one scenario, laid out in access order.
struct KeySet {
    name: &'static str,
    keys: Vec<Key>,
}

impl KeySet {
    fn new(name: &'static str, count: usize) -> Self {
        let mut rng = SplitMix64(0x6472_6c2d_6265_6e63 ^ count as u64);
        let order = rng.permutation(count);
        Self {
            name,
            keys: order.into_iter().map(Key::new).collect(),
        }
    }
}

/// A small deterministic generator for shuffles (benches need no cryptographic randomness).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A Fisher–Yates shuffle of `0..n`.
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

fn drl_limiter() -> Limiter {
    let policy = Policy::per(u64::from(LIMIT), WINDOW, Algorithm::default())
        .expect("10 000 per minute is a valid policy");
    Limiter::builder(Rules::only_default(policy))
        .sweep_interval(None)
        .build()
}

fn governor_limiter() -> DefaultKeyedRateLimiter<String> {
    let limit = NonZeroU32::new(LIMIT).expect("LIMIT is not zero");
    RateLimiter::keyed(Quota::per_minute(limit))
}

/// Checks `n` keys starting at position `at` of `keys`, wrapping around; returns how many were
/// admitted.
#[inline]
fn walk(keys: &[Key], mut at: usize, n: u64, check: &impl Fn(&Key) -> bool) -> u64 {
    let mut admitted = 0;
    for _ in 0..n {
        admitted += u64::from(check(&keys[at]));
        at += 1;
        if at == keys.len() {
            at = 0;
        }
    }
    admitted
}

/// Runs `iters` checks in total on `threads` threads, thread `t` starting `t/threads` of the way
/// round the key list from `start`. Returns the wall time and the number admitted.
fn run(
    keys: &[Key],
    start: usize,
    iters: u64,
    threads: usize,
    check: &(impl Fn(&Key) -> bool + Sync),
) -> (Duration, u64) {
    if threads == 1 {
        let begin = Instant::now();
        let admitted = walk(keys, start, iters, check);
        return (begin.elapsed(), admitted);
    }
    let per_thread = iters / threads as u64;
    let begin = Instant::now();
    let admitted = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let at = (start + t * keys.len() / threads) % keys.len();
                // The first thread also takes the remainder, so exactly `iters` run.
                let n = per_thread + if t == 0 { iters % threads as u64 } else { 0 };
                s.spawn(move || walk(keys, at, n, check))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a bench thread panicked"))
            .sum::<u64>()
    });
    (begin.elapsed(), admitted)
}

/// The limiters of one scenario, every key already inserted in both.
struct Scenario {
    keys: KeySet,
    drl: Limiter,
    governor: DefaultKeyedRateLimiter<String>,
}

impl Scenario {
    fn new(name: &'static str, count: usize) -> Self {
        let keys = KeySet::new(name, count);
        let drl = drl_limiter();
        let governor = governor_limiter();
        // Insert every key first, in an order unrelated to the access order.
        let mut rng = SplitMix64(0x706f_7075_6c61_7465);
        for i in rng.permutation(count) {
            let k = &keys.keys[i];
            drl.check_and_increment(&k.user, &k.endpoint);
            let _ = governor.check_key(&k.composite);
        }
        // What drl's background sweeper does within its first interval (2 s) in a deployment.
        // Besides reclaiming idle keys (none here), the sweep finishes the map's pending table
        // resizes, which inserts alone leave incomplete (see `parts_100k_keys` in
        // `benches/parts.rs`): without it lookups walk a chain of tables.
        assert_eq!(drl.sweep(), 0);
        assert_eq!(drl.store().len(), count);
        assert_eq!(governor.len(), count);
        Self {
            keys,
            drl,
            governor,
        }
    }
}

/// Benchmarks both limiters on one key set with 1 and 2 threads. The key set is built on first
/// use, so a filtered run (`cargo bench ... -- hot_key`) skips the expensive ones.
fn scenario(c: &mut Criterion, name: &'static str, count: usize) {
    let built = OnceCell::new();
    let get = || built.get_or_init(|| Scenario::new(name, count));
    let mut group = c.benchmark_group(format!("check_and_increment/{name}"));
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        bench_one(&mut group, "drl_sliding_window", threads, get, |s, k| {
            s.drl.check_and_increment(&k.user, &k.endpoint)
        });
    }
    for threads in [1, 2] {
        bench_one(&mut group, "governor_keyed", threads, get, |s, k| {
            s.governor.check_key(&k.composite).is_ok()
        });
    }
    group.finish();
}

/// One benchmark: `check` on `threads` threads, each sample continuing the walk where the
/// previous one stopped. Prints the share of checks admitted.
fn bench_one<'s>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    limiter: &str,
    threads: usize,
    scenario: impl Fn() -> &'s Scenario,
    check: impl Fn(&Scenario, &Key) -> bool + Sync,
) {
    let mut cursor = 0;
    let (mut checks, mut admitted) = (0u64, 0u64);
    let mut name = "";
    let threads_id = match threads {
        1 => "1_thread".to_owned(),
        n => format!("{n}_threads"),
    };
    group.bench_function(BenchmarkId::new(limiter, &threads_id), |b| {
        let s = scenario();
        name = s.keys.name;
        let keys = &s.keys.keys;
        b.iter_custom(|iters| {
            let (elapsed, ok) = run(keys, cursor, iters, threads, &|k: &Key| check(s, k));
            cursor = ((cursor as u64 + iters / threads as u64) % keys.len() as u64) as usize;
            checks += iters;
            admitted += ok;
            elapsed
        });
    });
    if checks > 0 {
        println!(
            "admitted: check_and_increment/{name}/{limiter}/{threads_id} {admitted} of {checks} ({:.2}%)",
            100.0 * admitted as f64 / checks as f64,
        );
    }
}

fn hot_key(c: &mut Criterion) {
    scenario(c, "hot_key", 1);
}

fn keys_100k(c: &mut Criterion) {
    scenario(c, "100k_keys", 100_000);
}

fn keys_1m(c: &mut Criterion) {
    scenario(c, "1M_keys", 1_000_000);
}

criterion_group! {
    name = benches;
    // 12 benchmarks × (3 s warm-up + 10 s measurement) plus setup: about 3 minutes on 2 cores.
    // Command-line flags (`--measurement-time`, `--sample-size`, ...) override these.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(10));
    targets = hot_key, keys_100k, keys_1m
}
criterion_main!(benches);
