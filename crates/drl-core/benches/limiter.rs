//! Decisions/s of `check_and_increment`: drl's default sliding window against governor's keyed
//! limiter, **interleaved in one run**, on the same key sets and the same access order, with the
//! ratio printed.
//!
//! ```text
//! cargo bench -p drl-core --bench limiter [-- [--rounds 3] [--seconds 1] [--series] [FILTER...]]
//! ```
//!
//! Scenarios: {1 hot key, 100 000 keys, 1 000 000 keys} × {1, 2 threads}. For each, the two
//! limiters take turns, `--rounds` times (the order flips every round, so a drift of the machine
//! favours neither): each turn runs about `--seconds` of checks. Every round's ratio comes from two
//! runs measured back to back; the result line gives the medians. `--series` adds both on 1 000,
//! 100 000, 1 000 000 and 10 000 000 keys (1 thread, 65 535 per minute so that every check is
//! admitted even on 1 000 keys): decisions/s and the p99 per check of batches of 64 checks, to
//! show how the cost grows with the key count. `--keys N` adds a comparison on N
//! keys (`custom_keys`). A `FILTER` keeps the scenarios whose name contains it (`hot_key`,
//! `100k_keys`, `1M_keys`, `series`).
//!
//! Output: a `round` line per round and a `result` line per scenario (parsed by
//! `scripts/bench/report.py core`, which `scripts/bench.sh core` runs to write `docs/benchmarks.md`).
//!
//! What makes the comparison fair:
//!
//! - **Same limit.** drl: `Policy::per(10_000, 60 s, sliding_window)` at the default precision
//!   (60 buckets of 1 s); governor: `Quota::per_minute(10_000)` (GCRA, burst 10 000). On 100k and
//!   1M keys every key sees far fewer than 10 000 hits a minute, so both measure the admit path.
//!   On the hot key both admit their 10 000 and then deny, which is what a hot key does in
//!   production; the result line gives the admitted share of each so the equivalence can be seen.
//!   The window is a minute, not a second, so that no key goes idle while the 1M-key set is being
//!   inserted (which takes seconds): the steady state measured is one of live keys.
//! - **No allocation per call on either side.** Keys are built once: drl is called with the
//!   `&str`s of a prebuilt `(user_id, endpoint)` pair; governor's key type is `String` and each
//!   call borrows a prebuilt `"user_id\0endpoint"` composite. (drl fingerprints the identity and
//!   stores only 128 bits; governor hashes and stores the whole key.)
//! - **Default clocks and maps.** drl: `SystemClock` (quanta) and its own store; governor: its
//!   default quanta clock and `DashMap` store (`RateLimiter::keyed`).
//! - **No background work.** drl's sweeper thread is off (`sweep_interval(None)`); governor has
//!   none. Sweeping is measured separately, by `examples/memory.rs`.
//! - **Steady state.** Every key is inserted before measuring, in an order unrelated to the
//!   access order, so the bench measures lookups of existing keys, not inserts. drl's store is
//!   then swept once, as its sweeper would within its first interval in a deployment.
//! - **Random access.** Keys are visited in a shuffled order (fixed seed). The key list is laid
//!   out in that order, so walking it costs the same for both and the limiter's own cache misses
//!   dominate. With 2 threads each walks the order from its own offset (disjoint stretches; on
//!   the hot key both hammer the one key); time is wall time for all checks of both threads, so
//!   the reported throughput is the aggregate decisions/s.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

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

fn drl_limiter(limit: u32) -> Limiter {
    let policy = Policy::per(u64::from(limit), WINDOW, Algorithm::default())
        .expect("10 000 per minute is a valid policy");
    Limiter::builder(Rules::only_default(policy))
        .sweep_interval(None)
        .build()
}

fn governor_limiter(limit: u32) -> DefaultKeyedRateLimiter<String> {
    let limit = NonZeroU32::new(limit).expect("the limit is not zero");
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

/// The limiters of one scenario, every key already inserted in each.
struct Scenario {
    keys: KeySet,
    drl: Limiter,
    governor: DefaultKeyedRateLimiter<String>,
}

impl Scenario {
    fn new(name: &'static str, count: usize) -> Self {
        Self::with_limit(name, count, LIMIT)
    }

    fn with_limit(name: &'static str, count: usize, limit: u32) -> Self {
        let keys = KeySet::new(name, count);
        let drl = drl_limiter(limit);
        let governor = governor_limiter(limit);
        // Insert every key first, in an order unrelated to the access order.
        let mut rng = SplitMix64(0x706f_7075_6c61_7465);
        for i in rng.permutation(count) {
            let k = &keys.keys[i];
            drl.check_and_increment(&k.user, &k.endpoint);
            let _ = governor.check_key(&k.composite);
        }
        // What drl's background sweeper does within its first interval (2 s) in a deployment.
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

/// Command-line options (after `cargo bench ... --`).
struct Options {
    rounds: usize,
    seconds: f64,
    series: bool,
    /// An extra comparison on this many keys (`--keys N`), e.g. to see a small key set in cache.
    keys: Option<usize>,
    filters: Vec<String>,
}

impl Options {
    fn parse() -> Self {
        let mut o = Options {
            rounds: 3,
            seconds: 1.0,
            series: false,
            keys: None,
            filters: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--rounds" => o.rounds = number(args.next(), "--rounds"),
                "--seconds" => o.seconds = number(args.next(), "--seconds"),
                "--series" => o.series = true,
                "--keys" => o.keys = Some(number(args.next(), "--keys")),
                // What `cargo bench` passes to every bench binary.
                "--bench" => {}
                _ if a.starts_with("--") => panic!("unknown option {a}"),
                _ => o.filters.push(a),
            }
        }
        assert!(
            o.rounds > 0 && o.seconds > 0.0,
            "--rounds and --seconds must be positive"
        );
        o
    }

    fn wants(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }
}

fn number<T: std::str::FromStr>(arg: Option<String>, name: &str) -> T {
    arg.and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{name} takes a number"))
}

/// One limiter's side of a comparison: where its walk stands, and what it has done so far.
struct Side<F> {
    name: &'static str,
    /// A concrete closure, not a `dyn Fn`: the call inlines for both limiters alike.
    check: F,
    cursor: usize,
    /// Checks per turn, calibrated to last about `--seconds`.
    per_turn: u64,
    rates: Vec<f64>,
    checks: u64,
    admitted: u64,
}

impl<F: Fn(&Key) -> bool + Sync> Side<F> {
    fn new(name: &'static str, check: F) -> Self {
        Self {
            name,
            check,
            cursor: 0,
            per_turn: 0,
            rates: Vec::new(),
            checks: 0,
            admitted: 0,
        }
    }

    /// Runs `n` checks on `threads` threads, continuing the walk; returns decisions/s.
    fn turn(&mut self, keys: &[Key], threads: usize, n: u64) -> f64 {
        let (elapsed, ok) = run(keys, self.cursor, n, threads, &self.check);
        self.cursor = ((self.cursor as u64 + n / threads as u64) % keys.len() as u64) as usize;
        self.checks += n;
        self.admitted += ok;
        n as f64 / elapsed.as_secs_f64()
    }

    /// Warms up for about a fifth of a turn and sizes the turns from the rate seen.
    fn calibrate(&mut self, keys: &[Key], threads: usize, seconds: f64) {
        let mut n = 10_000;
        loop {
            let begin = Instant::now();
            let rate = self.turn(keys, threads, n);
            if begin.elapsed().as_secs_f64() >= seconds / 5.0 {
                self.per_turn = ((rate * seconds) as u64).max(1_000);
                return;
            }
            n *= 2;
        }
    }

    fn admitted_share(&self) -> f64 {
        100.0 * self.admitted as f64 / self.checks.max(1) as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn rate(per_s: f64) -> String {
    format!("{:.2} M/s", per_s / 1e6)
}

/// drl and governor in turns on one key set, `threads` threads; prints each round and the result.
fn compare(s: &Scenario, threads: usize, o: &Options) {
    let governor = &s.governor;
    let mut drl = Side::new("drl", |k: &Key| {
        s.drl.check_and_increment(&k.user, &k.endpoint)
    });
    let mut gov = Side::new("governor", |k: &Key| {
        governor.check_key(&k.composite).is_ok()
    });
    let keys = &s.keys.keys;
    let threads_id = if threads == 1 {
        "1_thread".to_owned()
    } else {
        format!("{threads}_threads")
    };
    drl.calibrate(keys, threads, o.seconds);
    gov.calibrate(keys, threads, o.seconds);
    let mut ratios = Vec::new();
    for round in 0..o.rounds {
        let drl_turn = |drl: &mut Side<_>| {
            let r = drl.turn(keys, threads, drl.per_turn);
            drl.rates.push(r);
        };
        let gov_turn = |gov: &mut Side<_>| {
            let r = gov.turn(keys, threads, gov.per_turn);
            gov.rates.push(r);
        };
        if round % 2 == 0 {
            drl_turn(&mut drl);
            gov_turn(&mut gov);
        } else {
            gov_turn(&mut gov);
            drl_turn(&mut drl);
        }
        let (d, g) = (drl.rates[round], gov.rates[round]);
        ratios.push(d / g);
        println!(
            "round {} {threads_id} {}: {} {}, {} {}, ratio {:.2}",
            s.keys.name,
            round + 1,
            drl.name,
            rate(d),
            gov.name,
            rate(g),
            d / g
        );
    }
    println!(
        "result {} {threads_id} drl={:.0} governor={:.0} ratio={:.3} rounds={} drl_admitted={:.3}% governor_admitted={:.3}%",
        s.keys.name,
        median(drl.rates.clone()),
        median(gov.rates.clone()),
        median(ratios),
        o.rounds,
        drl.admitted_share(),
        gov.admitted_share(),
    );
}

/// Batch size of the series' latency percentiles: one check is too short to time alone.
const BATCH: u64 = 64;

/// The series' limit: the largest N of the default (`u16`) state, so that at 1 000 keys the
/// checks of a whole series point are admitted, as on larger key sets.
const SERIES_LIMIT: u32 = 65_535;

/// One turn of `n` checks in batches of [`BATCH`], 1 thread: decisions/s and the p99 per check
/// of the batches.
fn batched_turn<F: Fn(&Key) -> bool + Sync>(side: &mut Side<F>, keys: &[Key]) -> (f64, f64) {
    let batches = (side.per_turn / BATCH).max(1);
    let mut times = Vec::with_capacity(batches as usize);
    let begin = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        side.admitted += walk(keys, side.cursor, BATCH, &side.check);
        times.push(t.elapsed().as_nanos() as f64);
        side.cursor = (side.cursor + BATCH as usize) % keys.len();
    }
    side.checks += batches * BATCH;
    let rate = (batches * BATCH) as f64 / begin.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)] / BATCH as f64;
    (rate, p99)
}

/// drl and governor in turns on `count` keys, 1 thread, at [`SERIES_LIMIT`] per minute:
/// decisions/s and the p99 per check of batches of [`BATCH`].
fn series_point(count: usize, o: &Options) {
    let s = Scenario::with_limit("series", count, SERIES_LIMIT);
    let keys = &s.keys.keys;
    let governor = &s.governor;
    let mut drl = Side::new("drl", |k: &Key| {
        s.drl.check_and_increment(&k.user, &k.endpoint)
    });
    let mut gov = Side::new("governor", |k: &Key| {
        governor.check_key(&k.composite).is_ok()
    });
    drl.calibrate(keys, 1, o.seconds);
    gov.calibrate(keys, 1, o.seconds);
    let (mut drl_p99, mut gov_p99) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let mut drl_turn = || {
            let (rate, p99) = batched_turn(&mut drl, keys);
            drl.rates.push(rate);
            drl_p99.push(p99);
        };
        let mut gov_turn = || {
            let (rate, p99) = batched_turn(&mut gov, keys);
            gov.rates.push(rate);
            gov_p99.push(p99);
        };
        if round % 2 == 0 {
            drl_turn();
            gov_turn();
        } else {
            gov_turn();
            drl_turn();
        }
    }
    println!(
        "series keys={count} drl={:.0} p99_ns_per_check={:.1} governor={:.0} governor_p99_ns_per_check={:.1} rounds={} drl_admitted={:.3}% governor_admitted={:.3}%",
        median(drl.rates.clone()),
        median(drl_p99),
        median(gov.rates.clone()),
        median(gov_p99),
        o.rounds,
        drl.admitted_share(),
        gov.admitted_share(),
    );
}

fn main() {
    let o = Options::parse();
    for (name, count) in [
        ("hot_key", 1),
        ("100k_keys", 100_000),
        ("1M_keys", 1_000_000),
    ] {
        if !o.wants(name) {
            continue;
        }
        let s = Scenario::new(name, count);
        for threads in [1, 2] {
            compare(&s, threads, &o);
        }
    }
    if let Some(count) = o.keys {
        let s = Scenario::new("custom_keys", count);
        for threads in [1, 2] {
            compare(&s, threads, &o);
        }
    }
    if o.series && o.wants("series") {
        for count in [1_000, 100_000, 1_000_000, 10_000_000] {
            series_point(count, &o);
        }
    }
}
