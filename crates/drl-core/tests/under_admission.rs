//! How much the default `sliding_window` under-admits, measured on steady over-limit traffic.
//!
//! Theory (see `algorithm::sliding_window`): with precision p the window T is cut into p
//! buckets of g = T/p, and a check counts every bucket that overlaps [now − T, now], i.e. p + 1
//! buckets. Under traffic that always wants more, any p + 1 consecutive buckets therefore hold
//! at most N admissions and, once the pattern settles, exactly N: the admitted rate is N per
//! T + g, so p/(p + 1) of N per window — 60/61 ≈ 98.36% at the default precision 60.
//!
//! The pattern repeats every p + 1 buckets, so a count over a whole number of repeats is exact:
//! each run measures p + 1 windows (p repeats), or a multiple of it, and at least 50 windows,
//! after a warm-up. Run with `--nocapture` to see the figures quoted in the docs.
//!
//! Speed (debug builds check at a few µs): within one bucket the counted buckets do not change
//! (T is a whole number of buckets, so [now − T, now] crosses a bucket edge only when `now`
//! does), and a denial changes no state (`tests/properties.rs`). So once an arrival is denied,
//! every later arrival in the same bucket is denied too, and a run may jump to the next bucket.
//! [`shortcut_counts_like_every_arrival`] checks that against checking every arrival.

use std::time::Duration;

use drl_core::Policy;
use drl_core::algorithm::{Algorithm, DEFAULT_PRECISION, LimitState, SlidingWindow};

/// Windows of warm-up before measuring.
const WARM_UP: u64 = 3;

/// What one run admitted.
#[derive(Debug)]
struct Measured {
    n: u64,
    /// Admitted over all measured windows.
    admitted: u64,
    /// `admitted` / N per window.
    mean: f64,
    /// The least and most admitted in one aligned window, over N.
    min: f64,
    max: f64,
    windows: u64,
}

/// Arrivals of one hit each, uniformly spaced at `times_limit` × N per window, on a fresh
/// key; counts admissions per aligned window. With `shortcut`, skips the rest of a bucket after
/// a denial (see the module docs).
fn admitted_per_window(
    n: u64,
    window: Duration,
    precision: u16,
    times_limit: u64,
    shortcut: bool,
) -> Vec<u64> {
    let policy =
        Policy::per(n, window, Algorithm::SlidingWindow { precision }).expect("a supported policy");
    let t = policy.window_ns();
    let g = policy.bucket_ns();
    let per_window = n * times_limit;
    assert_eq!(t % per_window, 0, "uniform spacing in whole nanoseconds");
    let spacing = t / per_window;
    assert_eq!(t, g * u64::from(precision), "whole buckets");
    // Whole repeats of p + 1 windows, and at least 50 windows.
    let p = u64::from(precision);
    let windows = (p + 1) * 50u64.div_ceil(p + 1);

    let mut state = SlidingWindow::fresh(&policy);
    let mut admitted = vec![0u64; windows as usize];
    let start = 1_000 * t;
    let end = start + (WARM_UP + windows) * t;
    let mut now = start;
    while now < end {
        if state.check(&policy, now, 1).allowed {
            let w = (now - start) / t;
            if w >= WARM_UP {
                admitted[(w - WARM_UP) as usize] += 1;
            }
            now += spacing;
        } else if shortcut {
            // The first arrival at or after the next bucket's start.
            let next_bucket = (now / g + 1) * g;
            now = start + (next_bucket - start).div_ceil(spacing) * spacing;
        } else {
            now += spacing;
        }
    }
    admitted
}

fn measure(n: u64, window: Duration, precision: u16, times_limit: u64) -> Measured {
    let per_window = admitted_per_window(n, window, precision, times_limit, true);
    let windows = per_window.len() as u64;
    let ratio = |x: u64| x as f64 / n as f64;
    let measured = Measured {
        n,
        admitted: per_window.iter().sum(),
        mean: per_window.iter().sum::<u64>() as f64 / (windows * n) as f64,
        min: ratio(per_window.iter().copied().min().unwrap_or(0)),
        max: ratio(per_window.iter().copied().max().unwrap_or(0)),
        windows,
    };
    // P: no aligned window (an interval of length T) ever holds more than N.
    assert!(measured.max <= 1.0, "{measured:?}");
    measured
}

/// The shortcut counts exactly what checking every arrival counts.
#[test]
fn shortcut_counts_like_every_arrival() {
    for (n, secs, precision, times_limit) in [
        (100, 60, 60, 2),
        (100, 60, 60, 10),
        (100, 86_400, 60, 10),
        (40, 60, 10, 3),
        (1_000, 3_600, 120, 4),
    ] {
        let window = Duration::from_secs(secs);
        assert_eq!(
            admitted_per_window(n, window, precision, times_limit, true),
            admitted_per_window(n, window, precision, times_limit, false),
            "{n} per {secs} s, precision {precision}, {times_limit}× N"
        );
    }
}

fn theory(precision: u16) -> f64 {
    f64::from(precision) / f64::from(precision + 1)
}

fn label(window: Duration) -> String {
    match window.as_secs() {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn row(m: &Measured) -> String {
    format!(
        "{} | {} / {} | {:.2}% | {:.2}% | {:.2}%",
        m.windows,
        m.admitted,
        m.windows * m.n,
        100.0 * m.mean,
        100.0 * m.min,
        100.0 * m.max,
    )
}

#[test]
fn default_precision_admits_at_least_98_percent_of_n() {
    let minute = Duration::from_secs(60);
    let day = Duration::from_secs(86_400);
    let mut table = format!(
        "\nsliding_window, precision {DEFAULT_PRECISION}: admitted per window / N, steady over-limit \
         traffic (theory {:.2}%)\n\
         | N | T | arrivals | windows | admitted / (windows·N) | mean | min window | max window |\n\
         |---|---|---|---|---|---|---|---|\n",
        100.0 * theory(DEFAULT_PRECISION)
    );
    for (n, window, times_limit) in [
        (100, minute, 2),
        (100, minute, 10),
        (100, day, 2),
        (100, day, 10),
        (10_000, minute, 2),
        (10_000, minute, 10),
        (10_000, day, 2),
        (10_000, day, 10),
    ] {
        let m = measure(n, window, DEFAULT_PRECISION, times_limit);
        table += &format!(
            "| {n} | {} | {times_limit}× N | {} |\n",
            label(window),
            row(&m)
        );
        assert!(m.mean >= 0.98, "{n} per {window:?}: {m:?}");
        assert!(m.mean <= 1.0, "{n} per {window:?}: {m:?}");
    }
    println!("{table}");
}

#[test]
fn precision_sweep() {
    let n = 1_000;
    let window = Duration::from_secs(3_600);
    let mut table = format!(
        "\nsliding_window precision sweep: N = {n}, T = 1h, arrivals at 4× N\n\
         | precision | theory p/(p+1) | windows | admitted / (windows·N) | mean | min window | max window |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for precision in [10, 30, 60, 120] {
        let m = measure(n, window, precision, 4);
        table += &format!(
            "| {precision} | {:.2}% | {} |\n",
            100.0 * theory(precision),
            row(&m)
        );
        assert!(m.mean <= 1.0);
        assert!(
            (m.mean - theory(precision)).abs() < 0.002,
            "{precision}: {m:?}"
        );
    }
    println!("{table}");
}
