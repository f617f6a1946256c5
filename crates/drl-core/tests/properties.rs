//! Property tests: every algorithm against an oracle that records every admitted hit.
//!
//! Each test drives one algorithm's state through a random arrival pattern (sorted times with
//! bursts at one instant, sub-bucket gaps, gaps of exactly one bucket or one window ± 1 ns, and
//! idle gaps far beyond T) and keeps the time of every admitted hit: `h` hits admitted at `t`
//! are `h` admissions at `t`. After every decision it checks
//!
//! - the bound the algorithm claims (docs/design.md, "The guarantee first"): P — no closed interval [a, a + T] holds more
//!   than N admissions — for `sliding_window` and `sliding_log`; N per aligned window (so 2N in
//!   any interval of length T) for `fixed_window`; B + ⌊T/e⌋ for `token_bucket`;
//! - the algorithm's exact model: which admissions it counts, hence exactly when it admits;
//! - the shared rules: a denial or a read (`hits = 0`) changes nothing observable, `hits > 1` is
//!   all or nothing, and `remaining` is exactly the largest request admitted right now;
//! - honest durations: the same request is admitted at `now + retry_after` and still denied 1 ms
//!   earlier; the key is back to its full limit at `now + reset_after` and not 1 ms earlier.
//!
//! Durations in a [`Decision`] are whole milliseconds rounded up, so "1 ms earlier" is strictly
//! before the exact nanosecond at which things change: every algorithm is checked to be exact
//! at that resolution.

use std::time::Duration;

use drl_core::algorithm::{
    Algorithm, DEFAULT_PRECISION, FixedWindow, LimitState, SlidingLog, SlidingWindow, TokenBucket,
    token_bucket,
};
use drl_core::policy::{MAX_LIMIT, MAX_WINDOW};
use drl_core::{Decision, Policy};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// Arrival times stay below 2⁶² ns (146 years), far from any `u64` edge.
const TIME_CAP: u64 = 1 << 62;

/// `cases` by default; `PROPTEST_CASES=N` runs N instead (for a deeper run by hand).
fn config(cases: u32, file: &'static str) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle.

/// Every admitted hit, in time order.
#[derive(Debug)]
struct Admissions {
    /// `(time, hits admitted at that time)`; times never decrease.
    at: Vec<(u64, u64)>,
    /// `prefix[i]` = hits admitted in `at[..i]`.
    prefix: Vec<u64>,
}

impl Admissions {
    fn new() -> Self {
        Self {
            at: Vec::new(),
            prefix: vec![0],
        }
    }

    fn record(&mut self, t: u64, hits: u32) {
        assert!(self.at.last().is_none_or(|&(last, _)| last <= t));
        let total = self.prefix[self.prefix.len() - 1] + u64::from(hits);
        self.at.push((t, u64::from(hits)));
        self.prefix.push(total);
    }

    /// Admissions at times in the closed interval [lo, hi].
    fn count(&self, lo: u64, hi: u64) -> u64 {
        let from = self.at.partition_point(|&(t, _)| t < lo);
        let to = self.at.partition_point(|&(t, _)| t <= hi);
        self.prefix[to].saturating_sub(self.prefix[from])
    }

    /// The most admissions in any closed interval of length `len`. Two pointers over the sorted
    /// times: the maximum is reached by an interval that ends at an admission, [t_j − len, t_j].
    fn max_in_any_interval(&self, len: u64) -> u64 {
        let (mut best, mut sum, mut i) = (0, 0, 0);
        for &(t, h) in &self.at {
            sum += h;
            while self.at[i].0 + len < t {
                sum -= self.at[i].1;
                i += 1;
            }
            best = best.max(sum);
        }
        best
    }

    /// The most admissions in one aligned window [kT, (k + 1)T).
    fn max_in_aligned_window(&self, window: u64) -> u64 {
        let (mut best, mut sum, mut current) = (0, 0, None);
        for &(t, h) in &self.at {
            let k = t / window;
            if current != Some(k) {
                current = Some(k);
                sum = 0;
            }
            sum += h;
            best = best.max(sum);
        }
        best
    }
}

// ---------------------------------------------------------------------------------------------
// Arrival patterns.

/// The gap before one arrival.
#[derive(Debug, Clone, Copy)]
enum Gap {
    /// None: a burst at one instant.
    Same,
    /// A few nanoseconds.
    Nanos(u64),
    /// A fraction of the window, in thousandths.
    PerMille(u64),
    /// The algorithm's own step (sliding-window bucket, token emission interval) ± a few ns.
    Step(i64),
    /// Exactly the window ± a few ns: the edge of the closed interval.
    Window(i64),
    /// To the next multiple of the algorithm's step ± a few ns: a bucket's edge.
    StepEdge(i64),
    /// To the next multiple of the window ± a few ns: an aligned window's edge.
    WindowEdge(i64),
    /// Idle for this many windows.
    Idle(u64),
}

/// The hits of one arrival, resolved against the largest admissible request `cap` (N, or the
/// token bucket's burst) to a number in 0..=cap + 2.
#[derive(Debug, Clone, Copy)]
enum Hits {
    Zero,
    One,
    Few(u32),
    /// A fraction of cap + 2, in thousandths.
    PerMille(u64),
    /// cap − 2 ..= cap + 2.
    NearCap(i64),
}

#[derive(Debug, Clone)]
struct Scenario {
    start: u64,
    steps: Vec<(Gap, Hits)>,
}

fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        6 => Just(Gap::Same),
        2 => (1u64..=1_000).prop_map(Gap::Nanos),
        6 => (0u64..=1_000).prop_map(Gap::PerMille),
        2 => (-2i64..=2).prop_map(Gap::Step),
        2 => (-2i64..=2).prop_map(Gap::Window),
        1 => (-2i64..=2).prop_map(Gap::StepEdge),
        1 => (-2i64..=2).prop_map(Gap::WindowEdge),
        1 => (2u64..=1_000).prop_map(Gap::Idle),
    ]
}

fn hits() -> impl Strategy<Value = Hits> {
    prop_oneof![
        1 => Just(Hits::Zero),
        5 => Just(Hits::One),
        2 => (2u32..=5).prop_map(Hits::Few),
        2 => (0u64..=1_000).prop_map(Hits::PerMille),
        1 => (-2i64..=2).prop_map(Hits::NearCap),
    ]
}

fn scenario(max_len: usize) -> impl Strategy<Value = Scenario> {
    let start = prop_oneof![Just(0u64), 0u64..=100 * SEC, 0u64..=(1u64 << 60),];
    (
        start,
        proptest::collection::vec((gap(), hits()), 1..=max_len),
    )
        .prop_map(|(start, steps)| Scenario { start, steps })
}

impl Scenario {
    /// The `(time, hits)` arrivals, times non-decreasing.
    fn arrivals(&self, window: u64, step: u64, cap: u64) -> Vec<(u64, u32)> {
        let near = |base: u64, delta: i64| base.saturating_add_signed(delta);
        // The gap from `t` to the next multiple of `unit`, moved by `delta` but never negative.
        let to_edge =
            |t: u64, unit: u64, delta: i64| near((t / unit + 1) * unit, delta).saturating_sub(t);
        let mut t = self.start;
        self.steps
            .iter()
            .map(|&(gap, hits)| {
                let gap = match gap {
                    Gap::Same => 0,
                    Gap::Nanos(ns) => ns,
                    Gap::PerMille(m) => window / 1_000 * m,
                    Gap::Step(d) => near(step, d),
                    Gap::Window(d) => near(window, d),
                    Gap::StepEdge(d) => to_edge(t, step, d),
                    Gap::WindowEdge(d) => to_edge(t, window, d),
                    Gap::Idle(k) => window.saturating_mul(k),
                };
                t = t.saturating_add(gap).min(TIME_CAP);
                let hits = match hits {
                    Hits::Zero => 0,
                    Hits::One => 1,
                    Hits::Few(h) => u64::from(h),
                    Hits::PerMille(m) => (cap + 2) * m / 1_000,
                    Hits::NearCap(d) => near(cap, d),
                };
                (t, u32::try_from(hits).unwrap_or(u32::MAX))
            })
            .collect()
    }
}

fn window() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => (1u64..=86_400).prop_map(Duration::from_secs),
        3 => (1u64..=120).prop_map(Duration::from_secs),
        1 => Just(Duration::from_secs(7)),
        1 => (SEC..=90 * SEC).prop_map(Duration::from_nanos),
    ]
}

fn limit() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 1u64..=10, 3 => 1u64..=200, 1 => 1u64..=10_000]
}

// ---------------------------------------------------------------------------------------------
// The shared driver.

/// A decision of a copy of `state`, which is left untouched.
fn probe<S: LimitState + Clone>(state: &S, policy: &Policy, now: u64, hits: u32) -> Decision {
    state.clone().check(policy, now, hits)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `now + d`, if that is a time the tests can reach (an extreme token bucket can be centuries
/// from full).
fn later(now: u64, d: Duration) -> Option<u64> {
    now.checked_add(ns(d)).filter(|&t| t < 1 << 63)
}

/// What one algorithm promises, on top of the rules all share.
struct Claim<M> {
    /// The largest request that can ever be admitted: N, or the token bucket's burst. It is
    /// also what `remaining` reads on a key at rest.
    cap: u64,
    /// The most admissions allowed in any closed interval of length T.
    bound: u64,
    /// The width of the algorithm's own time step, for gaps that land on its edges.
    step: u64,
    /// Checks one decision against the oracle, which already holds the decision's admissions.
    model: M,
}

/// Drives one algorithm through `scenario`, checking every decision; returns the admissions.
fn drive<S, M>(
    policy: &Policy,
    scenario: &Scenario,
    claim: &Claim<M>,
) -> Result<Admissions, TestCaseError>
where
    S: LimitState + Clone,
    M: Fn(&Admissions, u64, u32, &Decision) -> Result<(), TestCaseError>,
{
    let window = policy.window_ns();
    let mut state = S::fresh(policy);
    // Receives only the calls that counted hits: `state` as it would be had no denial and no
    // read ever happened. Every decision of the two must be the same.
    let mut shadow = S::fresh(policy);
    let mut admitted = Admissions::new();
    for (now, hits) in scenario.arrivals(window, claim.step, claim.cap) {
        let want = u64::from(hits.max(1));
        let before = probe(&state, policy, now, 0);
        let d = state.check(policy, now, hits);
        prop_assert_eq!(d.limit, policy.requests());

        // `remaining` is exactly the largest request that is admitted now, and a request is
        // admitted all or nothing.
        prop_assert_eq!(
            d.allowed,
            want <= u64::from(before.remaining),
            "{} hits at {} with {} remaining: {:?}",
            hits,
            now,
            before.remaining,
            d
        );
        let counted = d.allowed && hits > 0;
        if counted {
            prop_assert_eq!(d.remaining, before.remaining - hits);
            prop_assert_eq!(d.retry_after, Duration::ZERO);
            admitted.record(now, hits);
            let recent = admitted.count(now.saturating_sub(window), now);
            prop_assert!(
                recent <= claim.bound,
                "{} admissions in [{} - T, {}], bound {}",
                recent,
                now,
                now,
                claim.bound
            );
        } else {
            prop_assert_eq!(d.remaining, before.remaining);
        }

        // Denials and reads change no state that any later decision can see.
        let unseen = if counted {
            shadow.check(policy, now, hits)
        } else {
            probe(&shadow, policy, now, hits)
        };
        prop_assert_eq!(unseen, d, "a denial or a read changed the state");
        prop_assert_eq!(shadow.idle_at(), state.idle_at());

        (claim.model)(&admitted, now, hits, &d)?;

        // reset_after: back to the full limit then, and not 1 ms earlier.
        if let Some(full_at) = later(now, d.reset_after) {
            let full = probe(&state, policy, full_at, 0);
            prop_assert_eq!(u64::from(full.remaining), claim.cap);
            if full_at > now {
                let almost = probe(&state, policy, full_at - MS, 0);
                prop_assert!(u64::from(almost.remaining) < claim.cap);
            } else {
                prop_assert_eq!(u64::from(d.remaining), claim.cap);
            }
        }

        // retry_after: the same request is admitted then (if nothing else happens), and is
        // still denied 1 ms earlier.
        if !d.allowed {
            if want <= claim.cap {
                prop_assert!(d.retry_after > Duration::ZERO);
                if let Some(retry_at) = later(now, d.retry_after) {
                    prop_assert!(
                        probe(&state, policy, retry_at, hits).allowed,
                        "{} hits at {}: not admitted after retry_after {:?}",
                        hits,
                        now,
                        d.retry_after
                    );
                    prop_assert!(!probe(&state, policy, retry_at - MS, hits).allowed);
                }
            } else {
                // More than can ever fit: retry after a window, and never admitted.
                prop_assert_eq!(d.retry_after, Duration::from_millis(window.div_ceil(MS)));
                prop_assert!(!probe(&state, policy, now + 10 * window, hits).allowed);
            }
        }
    }
    let busiest = admitted.max_in_any_interval(window);
    prop_assert!(busiest <= claim.bound, "{} > {}", busiest, claim.bound);
    Ok(admitted)
}

// ---------------------------------------------------------------------------------------------
// The algorithms.

proptest! {
    #![proptest_config(config(256, "proptest-regressions/properties.txt"))]

    /// Sliding window: P, and its exact model — it counts every admission from the start of
    /// the oldest bucket that overlaps [now − T, now], i.e. the admissions in
    /// [⌊(now − T)/g⌋·g, now], and admits iff that count plus the demand is at most N.
    ///
    /// Consequences checked separately:
    /// - P: that interval contains [now − T, now], so it never admits the (N + 1)-th there;
    /// - `remaining` ≤ an exact log's (N − admissions in [now − T, now]);
    /// - under-admission is bounded by one bucket: whenever it denies, the admissions in the
    ///   widened interval [now − T − g, now] plus the demand exceed N. An exact log would admit
    ///   the request unless that holds for [now − T, now]; the sliding window can deny more
    ///   often only because of admissions in [now − T − g, now − T), the oldest bucket's
    ///   expired part.
    #[test]
    fn sliding_window_keeps_p(
        window in window(),
        n in limit(),
        precision in prop_oneof![2 => Just(DEFAULT_PRECISION), 3 => 1u16..=200],
        scenario in scenario(250),
    ) {
        let policy = Policy::per(n, window, Algorithm::SlidingWindow { precision }).unwrap();
        let (t, g) = (policy.window_ns(), policy.bucket_ns());
        let claim = Claim {
            cap: n,
            bound: n,
            step: g,
            model: |adm: &Admissions, now: u64, hits: u32, d: &Decision| {
                let want = u64::from(hits.max(1));
                let counted = adm.count(now.saturating_sub(t) / g * g, now);
                prop_assert_eq!(u64::from(d.remaining), n - counted);
                let exact = adm.count(now.saturating_sub(t), now);
                prop_assert!(u64::from(d.remaining) <= n - exact);
                if !d.allowed {
                    let widened = adm.count(now.saturating_sub(t + g), now);
                    prop_assert!(widened + want > n, "denied {} with {} in [now - T - g, now]", want, widened);
                }
                Ok(())
            },
        };
        drive::<SlidingWindow, _>(&policy, &scenario, &claim)?;
    }

    /// Sliding log: P, exactly — it admits precisely when the admissions in [now − T, now] plus
    /// the demand are at most N, so it never under-admits.
    #[test]
    fn sliding_log_keeps_p_exactly(
        window in window(),
        n in limit(),
        scenario in scenario(250),
    ) {
        let policy = Policy::per(n, window, Algorithm::SlidingLog).unwrap();
        let t = policy.window_ns();
        let claim = Claim {
            cap: n,
            bound: n,
            step: t / 7 + 1,
            model: |adm: &Admissions, now: u64, hits: u32, d: &Decision| {
                let exact = adm.count(now.saturating_sub(t), now);
                prop_assert_eq!(u64::from(d.remaining), n - exact);
                if !d.allowed {
                    // No under-admission: denied only when there is no room.
                    prop_assert!(exact + u64::from(hits.max(1)) > n);
                }
                Ok(())
            },
        };
        drive::<SlidingLog, _>(&policy, &scenario, &claim)?;
    }

    /// Fixed window: exactly N per aligned window [kT, (k + 1)T), so at most 2N in any
    /// interval of length T — and that 2N is reached when traffic allows (it is the documented
    /// weakness, not a bug).
    #[test]
    fn fixed_window_keeps_n_per_aligned_window(
        window in window(),
        n in limit(),
        scenario in scenario(250),
    ) {
        let policy = Policy::per(n, window, Algorithm::FixedWindow).unwrap();
        let t = policy.window_ns();
        let claim = Claim {
            cap: n,
            bound: 2 * n,
            step: t / 7 + 1,
            model: |adm: &Admissions, now: u64, hits: u32, d: &Decision| {
                let in_window = adm.count(now / t * t, now);
                prop_assert_eq!(u64::from(d.remaining), n - in_window);
                if !d.allowed {
                    prop_assert!(in_window + u64::from(hits.max(1)) > n);
                }
                Ok(())
            },
        };
        let admitted = drive::<FixedWindow, _>(&policy, &scenario, &claim)?;
        prop_assert!(admitted.max_in_aligned_window(t) <= n);
    }

    /// Token bucket (GCRA, e = ⌈T/N⌉): at most B + ⌊T/e⌋ admissions in any closed interval of
    /// length T; `remaining` never exceeds the burst.
    #[test]
    fn token_bucket_keeps_burst_plus_rate(
        window in window(),
        n in limit(),
        burst in prop_oneof![Just(None), (1u32..=20_000).prop_map(Some)],
        scenario in scenario(250),
    ) {
        let policy = Policy::per(n, window, Algorithm::TokenBucket { burst }).unwrap();
        let b = u64::from(token_bucket::burst(&policy));
        let e = policy.emission_ns();
        prop_assert_eq!(e, policy.window_ns().div_ceil(n));
        let claim = Claim {
            cap: b,
            bound: b + policy.window_ns() / e,
            step: e,
            model: |_: &Admissions, _: u64, _: u32, d: &Decision| {
                prop_assert!(u64::from(d.remaining) <= b);
                Ok(())
            },
        };
        drive::<TokenBucket, _>(&policy, &scenario, &claim)?;
    }
}

proptest! {
    #![proptest_config(config(64, "proptest-regressions/properties.txt"))]

    /// Token bucket at the edges of the supported ranges: tiny N, windows up to 366 days and
    /// bursts up to [`MAX_LIMIT`], where burst · e no longer fits in `u64` nanoseconds.
    #[test]
    fn token_bucket_keeps_its_bound_at_extreme_settings(
        window in prop_oneof![
            Just(MAX_WINDOW),
            (86_400u64..=366 * 86_400).prop_map(Duration::from_secs),
        ],
        n in 1u64..=10,
        burst in prop_oneof![Just(MAX_LIMIT), 1u32..=MAX_LIMIT],
        scenario in scenario(60),
    ) {
        let policy = Policy::per(n, window, Algorithm::TokenBucket { burst: Some(burst) }).unwrap();
        let e = policy.emission_ns();
        let b = u64::from(burst);
        let claim = Claim {
            cap: b,
            bound: b + policy.window_ns() / e,
            step: e,
            model: |_: &Admissions, _: u64, _: u32, d: &Decision| {
                prop_assert!(u64::from(d.remaining) <= b);
                Ok(())
            },
        };
        drive::<TokenBucket, _>(&policy, &scenario, &claim)?;
    }
}

/// A burst of 10⁶ tokens at one token per 366 days is 3.2·10²² ns of credit, beyond `u64`.
/// Spending it must leave the bucket empty, not stuck open.
#[test]
fn token_bucket_with_credit_beyond_u64_nanoseconds_still_empties() {
    let policy = Policy::per(
        1,
        MAX_WINDOW,
        Algorithm::TokenBucket {
            burst: Some(MAX_LIMIT),
        },
    )
    .unwrap();
    let mut s = TokenBucket::fresh(&policy);
    let d = s.check(&policy, SEC, 0);
    assert_eq!(d.remaining, MAX_LIMIT);
    let d = s.check(&policy, SEC, MAX_LIMIT - 1);
    assert!(d.allowed);
    assert_eq!(d.remaining, 1);
    assert!(s.check(&policy, SEC, 1).allowed);
    let d = s.check(&policy, SEC, 1);
    assert!(!d.allowed, "an empty bucket admitted: {d:?}");
    assert_eq!(d.remaining, 0);
    // The next token comes one emission interval (366 days) later.
    assert_eq!(d.retry_after, MAX_WINDOW);
    assert!(!s.check(&policy, SEC + policy.emission_ns() - 1, 1).allowed);
    assert!(s.check(&policy, SEC + policy.emission_ns(), 1).allowed);
}

/// The fixed window's 2N is real: N at the end of one window and N at the start of the next.
#[test]
fn fixed_window_admits_two_n_across_a_boundary() {
    let policy = Policy::per(5, Duration::from_secs(10), Algorithm::FixedWindow).unwrap();
    let mut s = FixedWindow::fresh(&policy);
    assert!(s.check(&policy, 10 * SEC - 1, 5).allowed);
    assert!(s.check(&policy, 10 * SEC, 5).allowed);
    assert!(!s.check(&policy, 10 * SEC, 1).allowed);
}

/// The sliding window's one-bucket under-admission is real, and no more than that: after N
/// admissions at the very end of a bucket, the key is full again once that bucket has left the
/// window, g − 1 ns later than an exact log would be.
#[test]
fn sliding_window_under_admits_by_at_most_one_bucket() {
    let policy = Policy::per(
        3,
        Duration::from_secs(60),
        Algorithm::SlidingWindow { precision: 60 },
    )
    .unwrap();
    let mut s = SlidingWindow::fresh(&policy);
    let last_ns_of_bucket = 11 * SEC - 1;
    assert!(s.check(&policy, last_ns_of_bucket, 3).allowed);
    // An exact log would admit again at 71 s − 1 ns + 1 ns = 71 s; the window does at 71 s too,
    // since bucket 10 ([10 s, 11 s)) leaves the window exactly then.
    assert!(!s.check(&policy, 71 * SEC - 1, 1).allowed);
    assert!(s.clone().check(&policy, 71 * SEC, 3).allowed);
    // Admissions at the start of a bucket wait the longest: one bucket more than a log.
    let mut s = SlidingWindow::fresh(&policy);
    assert!(s.check(&policy, 10 * SEC, 3).allowed);
    assert!(!s.check(&policy, 70 * SEC + 1, 1).allowed);
    assert!(!s.check(&policy, 71 * SEC - 1, 1).allowed);
    assert!(s.check(&policy, 71 * SEC, 3).allowed);
}
