//! Concurrency tests through the public [`Limiter`] on the memory store: many threads hammer one
//! key, or hundreds, and every admission is counted exactly.
//!
//! The clock is a [`ManualClock`] that moves only between rounds. Within a round every thread
//! checks at the same clock value, and a [`Barrier`] makes the whole round finish before the
//! clock moves on. That makes the concurrent outcome predictable, by this argument (which
//! [`replay`] also checks on every round it replays):
//!
//! At one fixed `now`, for every algorithm, a check of `h` hits is admitted iff `h` is at most
//! the room left (`remaining` of a read at that instant), and an admission lowers the room by
//! exactly `h` while a denial changes nothing (both proved for each algorithm in
//! `tests/properties.rs`). So when every request of a round asks for the same `h`, the
//! requests are admitted until the room drops below `h` and denied from then on, whatever
//! order the threads take the key's lock in: the round admits min(attempts, ⌊room / h⌋)
//! requests and leaves the same state behind. By induction over rounds, the concurrent run
//! admits exactly what a sequential replay of the same `(time, hits)` multiset admits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use drl_core::algorithm::{
    Algorithm, FixedWindow, LimitState, SlidingLog, SlidingWindow, TokenBucket,
};
use drl_core::{CounterKey, Limiter, ManualClock, MemoryStore, Policy, Rule, Rules, StoreRequest};

const SEC: u64 = 1_000_000_000;
/// Checking threads; more than the cores, so the scheduler interleaves them too.
const THREADS: usize = 8;

fn limiter(rules: Rules, clock: &ManualClock) -> Limiter {
    Limiter::builder(rules)
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
}

/// One round: every thread makes `attempts` checks of `hits` on every key, all at time `at`.
#[derive(Debug, Clone, Copy)]
struct Round {
    at: u64,
    hits: u32,
    attempts: usize,
}

/// A small deterministic generator (xorshift64*), so every run plays the same plan.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<T: Copy>(&mut self, menu: &[T]) -> T {
        menu[(self.next() % menu.len() as u64) as usize]
    }
}

/// `count` rounds over several windows of `window` ns: steps of one nanosecond, one bucket,
/// fractions of the window, exactly the window ± 1 ns and several windows; `hits` and
/// `attempts` are drawn from the menus.
fn plan(seed: u64, window: u64, count: usize, hits: &[u32], attempts: &[usize]) -> Vec<Round> {
    let mut rng = Rng(seed);
    let steps = [
        1,
        window / 60,
        window / 7,
        window / 3,
        window / 2,
        window - 1,
        window,
        window + 1,
        3 * window,
    ];
    let mut at = 1_000 * SEC;
    (0..count)
        .map(|_| {
            at += rng.pick(&steps);
            Round {
                at,
                hits: rng.pick(hits),
                attempts: rng.pick(attempts),
            }
        })
        .collect()
}

/// [`hammer`] on one key: admitted hits per round.
fn hammer_one_key(limiter: &Limiter, clock: &ManualClock, rounds: &[Round]) -> Vec<u64> {
    let keys = [("hot".to_owned(), "/api".to_owned())];
    hammer(limiter, clock, &keys, rounds)
        .into_iter()
        .map(|per_key| per_key[0])
        .collect()
}

/// Runs `rounds` with [`THREADS`] threads on `keys`; returns the hits admitted per round and
/// key.
fn hammer(
    limiter: &Limiter,
    clock: &ManualClock,
    keys: &[(String, String)],
    rounds: &[Round],
) -> Vec<Vec<u64>> {
    let barrier = Barrier::new(THREADS + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|w| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut admitted = vec![vec![0u64; keys.len()]; rounds.len()];
                    for (r, round) in rounds.iter().enumerate() {
                        barrier.wait();
                        assert_eq!(limiter.now_ns(), round.at, "the clock moved mid-round");
                        for a in 0..round.attempts {
                            for i in 0..keys.len() {
                                // Each thread walks the keys in its own order.
                                let k = (i + 37 * w + a) % keys.len();
                                let (user, endpoint) = &keys[k];
                                let d = limiter
                                    .check(user, endpoint, round.hits)
                                    .expect("valid identifiers");
                                if d.allowed {
                                    admitted[r][k] += u64::from(round.hits);
                                }
                            }
                        }
                        barrier.wait();
                    }
                    admitted
                })
            })
            .collect();
        for round in rounds {
            clock.set(round.at);
            barrier.wait(); // the round starts at `round.at`
            barrier.wait(); // every thread is done with it
        }
        let mut total = vec![vec![0u64; keys.len()]; rounds.len()];
        for worker in workers {
            for (r, per_key) in worker
                .join()
                .expect("a checking thread panicked")
                .into_iter()
                .enumerate()
            {
                for (k, hits) in per_key.into_iter().enumerate() {
                    total[r][k] += hits;
                }
            }
        }
        total
    })
}

/// The hits a sequential run on a fresh state admits per round, given the same
/// `THREADS · attempts` requests per round. Also checks the argument in the module docs: at
/// one instant, once a request is denied every later one is too.
fn replay_on<S: LimitState>(policy: &Policy, rounds: &[Round]) -> Vec<u64> {
    let mut state = S::fresh(policy);
    rounds
        .iter()
        .map(|round| {
            let mut admitted = 0;
            let mut denied = false;
            for _ in 0..THREADS * round.attempts {
                let d = state.check(policy, round.at, round.hits);
                assert!(
                    !(d.allowed && denied),
                    "admitted after a denial at the same instant: {round:?}"
                );
                if d.allowed {
                    admitted += u64::from(round.hits);
                }
                denied |= !d.allowed;
            }
            admitted
        })
        .collect()
}

fn replay(policy: &Policy, rounds: &[Round]) -> Vec<u64> {
    match policy.algorithm() {
        Algorithm::SlidingWindow { .. } => replay_on::<SlidingWindow>(policy, rounds),
        Algorithm::SlidingLog => replay_on::<SlidingLog>(policy, rounds),
        Algorithm::FixedWindow => replay_on::<FixedWindow>(policy, rounds),
        Algorithm::TokenBucket { .. } => replay_on::<TokenBucket>(policy, rounds),
    }
}

fn every_algorithm() -> [Algorithm; 5] {
    [
        Algorithm::default(),
        Algorithm::SlidingWindow { precision: 7 },
        Algorithm::SlidingLog,
        Algorithm::FixedWindow,
        Algorithm::TokenBucket { burst: Some(20) },
    ]
}

#[test]
fn one_hot_key_counts_exactly_for_every_algorithm() {
    let window = 10 * SEC;
    // Up to 8 · 40 = 320 attempts per round against N = 50; some rounds stay under it.
    let rounds = plan(7, window, 40, &[1, 1, 1, 2, 3], &[1, 2, 10, 40]);
    for algorithm in every_algorithm() {
        let policy = Policy::per(50, Duration::from_nanos(window), algorithm).unwrap();
        let clock = ManualClock::new(0);
        let limiter = limiter(Rules::only_default(policy.clone()), &clock);
        let admitted = hammer_one_key(&limiter, &clock, &rounds);
        assert_eq!(admitted, replay(&policy, &rounds), "{algorithm:?}");
        assert!(admitted.iter().any(|&a| a > 0), "{algorithm:?}");
    }
}

#[test]
fn sliding_log_admits_exactly_what_a_sequential_log_admits() {
    let window = 60 * SEC;
    // Always far more attempts than N: 8 · 60 = 480 per round against N = 100.
    let rounds = plan(11, window, 60, &[1], &[60]);
    let policy = Policy::per(100, Duration::from_nanos(window), Algorithm::SlidingLog).unwrap();
    let clock = ManualClock::new(0);
    let limiter = limiter(Rules::only_default(policy.clone()), &clock);
    let admitted = hammer_one_key(&limiter, &clock, &rounds);
    let expected = replay(&policy, &rounds);
    assert_eq!(admitted, expected);
    // The exact log refills by exactly what left the window: check the replay itself against
    // the definition, N minus the admissions in [now − T, now].
    for (r, round) in rounds.iter().enumerate() {
        let in_window: u64 = rounds[..r]
            .iter()
            .zip(&expected)
            .filter(|(earlier, _)| earlier.at + window >= round.at)
            .map(|(_, &a)| a)
            .sum();
        assert_eq!(expected[r], 100 - in_window, "round {r}: {round:?}");
    }
}

#[test]
fn fixed_window_admits_min_of_n_and_attempts_per_window() {
    let window = 10 * SEC;
    let rounds = plan(13, window, 60, &[1], &[1, 2, 5, 20]);
    let n = 60;
    let policy = Policy::per(n, Duration::from_nanos(window), Algorithm::FixedWindow).unwrap();
    let clock = ManualClock::new(0);
    let limiter = limiter(Rules::only_default(policy.clone()), &clock);
    let admitted = hammer_one_key(&limiter, &clock, &rounds);
    assert_eq!(admitted, replay(&policy, &rounds));
    // Per aligned window [kT, (k + 1)T): exactly min(N, attempts).
    let mut windows = std::collections::BTreeMap::<u64, (u64, u64)>::new();
    for (round, &a) in rounds.iter().zip(&admitted) {
        let w = windows.entry(round.at / window).or_default();
        w.0 += a;
        w.1 += (THREADS * round.attempts) as u64;
    }
    for (k, (admitted, attempts)) in windows {
        assert_eq!(admitted, attempts.min(n), "window {k}");
    }
}

#[test]
fn hundreds_of_keys_count_exactly() {
    const KEYS: usize = 300;
    let window = 10 * SEC;
    let algorithms = every_algorithm();
    // One user rule per key: algorithm, N and window vary from key to key.
    let policy_of = |i: usize| {
        let window = Duration::from_nanos(window * (1 + (i % 2) as u64));
        Policy::per(
            3 + (i % 29) as u64,
            window,
            algorithms[i % algorithms.len()],
        )
        .unwrap()
    };
    let keys: Vec<(String, String)> = (0..KEYS)
        .map(|i| (format!("user-{i}"), format!("/endpoint/{}", i % 3)))
        .collect();
    let rules = Rules::new(
        Policy::per(1, Duration::from_secs(1), Algorithm::default()).unwrap(),
        keys.iter().enumerate().map(|(i, (user, _))| Rule {
            user_id: Some(user.clone()),
            endpoint: None,
            limits: vec![policy_of(i)],
            shadow_mode: false,
            abuse_exempt: false,
            backends: Vec::new(),
        }),
    )
    .unwrap();
    let clock = ManualClock::new(0);
    let limiter = limiter(rules, &clock);
    let rounds = plan(17, window, 30, &[1, 1, 2], &[1, 2, 5]);
    let admitted = hammer(&limiter, &clock, &keys, &rounds);
    for (k, _) in keys.iter().enumerate() {
        let concurrent: Vec<u64> = admitted.iter().map(|per_key| per_key[k]).collect();
        assert_eq!(concurrent, replay(&policy_of(k), &rounds), "key {k}");
    }
    assert_eq!(limiter.store().len(), KEYS);
}

#[test]
fn tens_of_thousands_of_keys_count_exactly_while_the_table_grows() {
    // Enough keys that every shard of the store's table grows several times while the threads
    // check: every key is first seen during the run, by all threads at once, each in its own
    // order.
    const KEYS: usize = 20_000;
    const LIMIT: u64 = 3;
    const ATTEMPTS: usize = 2;
    let clock = ManualClock::new(SEC);
    let policy = Policy::per(LIMIT, Duration::from_secs(60), Algorithm::default()).unwrap();
    let limiter = limiter(Rules::only_default(policy), &clock);
    let users: Vec<String> = (0..KEYS).map(|i| format!("u{i}")).collect();
    let admitted: Vec<AtomicU64> = (0..KEYS).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (limiter, users, admitted) = (&limiter, &users, &admitted);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t as u64);
                let mut order: Vec<usize> = (0..KEYS).flat_map(|k| [k; ATTEMPTS]).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
                for k in order {
                    if limiter.check_and_increment(&users[k], "/e") {
                        admitted[k].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    for (k, n) in admitted.iter().enumerate() {
        assert_eq!(n.load(Ordering::Relaxed), LIMIT, "key {k}");
    }
    assert_eq!(limiter.store().len(), KEYS);
    // A minute later every key is idle: the sweep removes them all, and they start afresh.
    clock.advance(Duration::from_secs(62));
    assert_eq!(limiter.sweep(), KEYS);
    assert!(limiter.store().is_empty());
    assert!(limiter.check_and_increment(&users[0], "/e"));
}

// ---------------------------------------------------------------------------------------------
// Sweeping while checking.

/// An admitted hit whose real time is only known to lie in [`lo`, `hi`]: the clock readings
/// just before and just after the call, while another thread moves the clock.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    lo: u64,
    hi: u64,
}

/// The most admissions that certainly lie in one closed interval of length `window`: those
/// whose whole [lo, hi] range is inside it. If P held for the real times, this is at most N;
/// a larger count proves a violation whatever the real times were. It is enough to try the
/// intervals that start at some `lo`.
fn certain_max_in_window(mut admitted: Vec<Admitted>, window: u64) -> usize {
    admitted.sort_by_key(|a| a.lo);
    (0..admitted.len())
        .map(|j| {
            let end = admitted[j].lo + window;
            admitted[j..]
                .iter()
                .take_while(|a| a.lo <= end)
                .filter(|a| a.hi <= end)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn sweeping_while_checking_never_breaks_p() {
    const KEYS: usize = 64;
    const N: u64 = 5;
    let window = 10 * SEC;
    // Even keys use the sliding window, odd ones the sliding log: both promise P.
    let policy_of = |k: usize| {
        let algorithm = if k.is_multiple_of(2) {
            Algorithm::default()
        } else {
            Algorithm::SlidingLog
        };
        Policy::per(N, Duration::from_nanos(window), algorithm).unwrap()
    };
    let users: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
    let rules = Rules::new(
        policy_of(0),
        users.iter().enumerate().map(|(k, user)| Rule {
            user_id: Some(user.clone()),
            endpoint: None,
            limits: vec![policy_of(k)],
            shadow_mode: false,
            abuse_exempt: false,
            backends: Vec::new(),
        }),
    )
    .unwrap();
    let clock = ManualClock::new(1_000 * SEC);
    let limiter = limiter(rules, &clock);

    let log = Mutex::new(vec![Vec::<Admitted>::new(); KEYS]);
    let progress = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut swept = 0;
    std::thread::scope(|scope| {
        for w in 0..THREADS {
            let (limiter, log, progress, stop, users) = (&limiter, &log, &progress, &stop, &users);
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
                let mut mine = vec![Vec::new(); KEYS];
                while !stop.load(Ordering::Acquire) {
                    let lo = limiter.now_ns();
                    // A quarter of the keys is busy at a time, for 2T, then idle for 6T: long
                    // enough to be swept, and then used again.
                    let phase = (lo / (2 * window)) as usize % 4;
                    let k = 4 * (rng.next() as usize % (KEYS / 4)) + phase;
                    let d = limiter.check(&users[k], "/x", 1).unwrap();
                    let hi = limiter.now_ns();
                    if d.allowed {
                        mine[k].push(Admitted { lo, hi });
                    }
                    progress.fetch_add(1, Ordering::Release);
                }
                let mut log = log.lock().unwrap();
                for (k, admitted) in mine.into_iter().enumerate() {
                    log[k].extend(admitted);
                }
            });
        }
        // This thread moves the clock and sweeps, concurrently with the checks. It lets the
        // checkers make some progress between steps, so every phase sees traffic.
        let steps = [window / 16, window / 16 + 1, window / 60, window / 5];
        for i in 0..30 * 16 {
            let target = progress.load(Ordering::Acquire) + 150;
            while progress.load(Ordering::Acquire) < target {
                std::thread::yield_now();
            }
            clock.advance(Duration::from_nanos(steps[i % steps.len()]));
            swept += limiter.sweep();
        }
        stop.store(true, Ordering::Release);
    });

    let log = log.into_inner().unwrap();
    assert!(
        swept > KEYS,
        "keys were swept and re-created: {swept} removals"
    );
    for (k, admitted) in log.into_iter().enumerate() {
        let total = admitted.len();
        let busiest = certain_max_in_window(admitted, window);
        assert!(
            busiest as u64 <= N,
            "key {k}: {busiest} admissions in one window of T"
        );
        assert!(
            total as u64 > 4 * N,
            "key {k} saw traffic: {total} admissions"
        );
    }
    // Once everything has aged out, a sweep reclaims every key.
    clock.advance(Duration::from_nanos(2 * window));
    limiter.sweep();
    assert!(limiter.store().is_empty());
}

/// A check carries the caller's clock reading, taken before it reaches the store. If a sweep
/// ran in between and removed the key, the swept admissions were judged expired only from the
/// sweep's time on, so the check must count as at that time, not at its older reading: else
/// the fresh cell forgets admissions that were still in the window at that reading.
///
/// Here N = 3 per 10 s; 3 are admitted at 50 s; a sweep at 100 s removes the key. Then five
/// callers reach the store, four with readings taken before the sweep (55, 66, 77 and 88 s)
/// and one after (100 s), each asking for 3. Counted at their readings, all five would be
/// admitted by the sliding window and the log, 15 in all: the readings are 11 s apart and the
/// fresh cell knows nothing of 50 s. No real times fit that: each of those calls ran after the
/// sweep, so happened in [reading, 100 s]; keeping 10 s clear of 50 s, of 100 s and of each
/// other, four groups would need four times in (60 s, 90 s) pairwise more than 10 s apart.
/// Counted at the sweep's time, they decide exactly like five calls at 100 s on a fresh key:
/// one group is admitted under P.
#[test]
fn a_reading_from_before_a_sweep_counts_as_the_sweeps_time() {
    for algorithm in every_algorithm() {
        let policy = Policy::per(3, Duration::from_secs(10), algorithm).unwrap();
        let check = |store: &MemoryStore, now_ns: u64| {
            let request = StoreRequest {
                key: CounterKey {
                    domain: "drl",
                    rule: b"default",
                    limit: 0,
                    values: &["u", "/e"],
                    prefix: None,
                },
                policy: &policy,
                hits: 3,
                now_ns,
                rules_epoch: 0,
            };
            store.check_now(&request).allowed
        };
        let store = MemoryStore::new();
        assert!(check(&store, 50 * SEC));
        assert_eq!(store.sweep(100 * SEC), 1, "{algorithm:?}");
        let after_sweep: Vec<bool> = [55, 66, 77, 88, 100]
            .into_iter()
            .map(|s| check(&store, s * SEC))
            .collect();
        let fresh = MemoryStore::new();
        let at_sweep_time: Vec<bool> = (0..5).map(|_| check(&fresh, 100 * SEC)).collect();
        assert_eq!(after_sweep, at_sweep_time, "{algorithm:?}");
        if matches!(
            algorithm,
            Algorithm::SlidingWindow { .. } | Algorithm::SlidingLog
        ) {
            assert_eq!(after_sweep, [true, false, false, false, false]);
        }
    }
}
