//! Memory per active key, and what a sweep gives back: drl's memory store for each algorithm,
//! and governor's keyed limiter, each filled with 1 000 000 distinct keys.
//!
//! ```text
//! cargo run --release -p drl-core --example memory [-- --keys 1000000]
//! ```
//!
//! Prints a Markdown table (`scripts/bench.sh core` copies it into `docs/benchmarks.md`).
//!
//! Method: the process's resident set size (`VmRSS` in `/proc/self/status`) before and after
//! inserting the keys, divided by the number of keys, so everything a key costs is counted: its
//! state, the map's table, allocator overhead and, for governor, the key string it keeps (drl keeps
//! a 128-bit fingerprint instead). Each limiter is measured in a fresh child process, so no
//! limiter reuses memory another one freed. Time is a manual clock, so the sweep runs without
//! waiting: after the window has passed, every key is idle and a sweep must remove them all.
//!
//! Freed memory goes back to the allocator, not necessarily to the OS (glibc keeps small
//! chunks), so the RSS after the sweep may stay high; re-inserting as many new keys afterwards
//! shows whether that memory is reused (RSS should then hardly grow).

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use drl_core::algorithm::{FixedWindow, SlidingLog, SlidingWindow, TokenBucket};
use drl_core::{Algorithm, Limiter, ManualClock, Policy, Rules};
use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter};

const ENDPOINTS: usize = 16;
const WINDOW: Duration = Duration::from_secs(60);

/// The limiters measured, by the name a child process is started with.
const VARIANTS: &[(&str, &str)] = &[
    (
        "sliding_window",
        "drl sliding_window, precision 60, N = 100 (sparse state; a `u16` ring once full)",
    ),
    (
        "sliding_window_large_n",
        "drl sliding_window, precision 60, N = 100 000 (boxed `u32` ring)",
    ),
    ("fixed_window", "drl fixed_window, N = 100"),
    ("token_bucket", "drl token_bucket, N = 100"),
    ("sliding_log", "drl sliding_log, N = 100, 1 hit per key"),
    (
        "governor",
        "governor keyed (`DashMap<String, _>`), 100 per minute",
    ),
];

/// What one child measures.
struct Measured {
    baseline_kib: u64,
    inserted_kib: u64,
    first_sweep_kib: u64,
    first_sweep: Duration,
    steady_sweep: Duration,
    full_sweep: Duration,
    removed: usize,
    left: usize,
    after_sweep_kib: u64,
    reinserted_kib: u64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keys = match arg(&args, "--keys").map(str::parse::<usize>) {
        None => 1_000_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("--keys takes a positive number");
            return ExitCode::from(2);
        }
    };
    match arg(&args, "--variant") {
        Some(variant) => child(variant, keys),
        None => parent(keys),
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).map(String::as_str)
}

/// Runs every variant in its own process and prints the table.
fn parent(keys: usize) -> ExitCode {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cannot find this program's own path");
        return ExitCode::FAILURE;
    };
    println!(
        "| limiter | B/key after inserts | B/key after 1st sweep | 1st sweep, nothing idle | next sweep, nothing idle | sweep, all idle | keys left | RSS after sweep | RSS after re-inserting {keys} new keys |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (name, _) in VARIANTS {
        let out = Command::new(&exe)
            .args(["--variant", name, "--keys", &keys.to_string()])
            .output();
        match out {
            Ok(out) if out.status.success() => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Ok(out) => {
                eprintln!(
                    "{name}: {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("{name}: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!();
    println!(
        "Keys: {keys} distinct (user, endpoint) pairs, 1 hit each. RSS values are above the \
         baseline taken before the first insert. Sweep times are per key held; the first sweep \
         of drl's store also shrinks the shards it leaves under a quarter full. For governor the sweep is \
         `retain_recent()`. State sizes: `SlidingWindow` {} B, `FixedWindow` {} B, \
         `TokenBucket` {} B, `SlidingLog` {} B (+ its timestamps), governor `InMemoryState` {} B.",
        size_of::<SlidingWindow>(),
        size_of::<FixedWindow>(),
        size_of::<TokenBucket>(),
        size_of::<SlidingLog>(),
        size_of::<governor::state::InMemoryState>(),
    );
    ExitCode::SUCCESS
}

/// Measures one variant and prints its table row.
fn child(variant: &str, keys: usize) -> ExitCode {
    let Some((_, label)) = VARIANTS.iter().find(|(name, _)| *name == variant) else {
        eprintln!("unknown variant {variant}");
        return ExitCode::from(2);
    };
    let m = if variant == "governor" {
        measure_governor(keys)
    } else {
        let (n, algorithm) = match variant {
            "sliding_window" => (100, Algorithm::default()),
            "sliding_window_large_n" => (100_000, Algorithm::default()),
            "fixed_window" => (100, Algorithm::FixedWindow),
            "token_bucket" => (100, Algorithm::TokenBucket { burst: None }),
            _ => (100, Algorithm::SlidingLog),
        };
        let Ok(policy) = Policy::per(n, WINDOW, algorithm) else {
            eprintln!("invalid policy for {variant}");
            return ExitCode::FAILURE;
        };
        measure_drl(policy, keys)
    };
    let Some(m) = m else {
        eprintln!("cannot read VmRSS from /proc/self/status");
        return ExitCode::FAILURE;
    };
    if m.removed != keys {
        eprintln!(
            "{variant}: the sweep removed {} of {keys} idle keys",
            m.removed
        );
    }
    let per_key = |kib: u64| (kib.saturating_sub(m.baseline_kib) * 1024) as f64 / keys as f64;
    let mib = |kib: u64| kib.saturating_sub(m.baseline_kib) as f64 / 1024.0;
    let ns_per_key = |d: Duration| d.as_nanos() as f64 / keys as f64;
    println!(
        "| {label} | {:.0} | {:.0} | {:.0} ns | {:.0} ns | {:.0} ns | {} | {:.0} MiB | {:.0} MiB |",
        per_key(m.inserted_kib),
        per_key(m.first_sweep_kib),
        ns_per_key(m.first_sweep),
        ns_per_key(m.steady_sweep),
        ns_per_key(m.full_sweep),
        m.left,
        mib(m.after_sweep_kib),
        mib(m.reinserted_kib),
    );
    ExitCode::SUCCESS
}

/// Writes the key `i` into the reused buffers, so generating keys allocates nothing.
fn key<'a>(i: usize, user: &'a mut String, endpoints: &'a [String]) -> (&'a str, &'a str) {
    use std::fmt::Write;
    user.clear();
    let _ = write!(user, "user-{i}");
    (user.as_str(), endpoints[i % ENDPOINTS].as_str())
}

fn endpoints() -> Vec<String> {
    (0..ENDPOINTS)
        .map(|e| format!("/api/endpoint-{e}"))
        .collect()
}

fn measure_drl(policy: Policy, keys: usize) -> Option<Measured> {
    let clock = ManualClock::new(1_000_000_000_000);
    let limiter = Limiter::builder(Rules::only_default(policy))
        .clock(clock.clone())
        .sweep_interval(None)
        .build();
    let endpoints = endpoints();
    let mut user = String::with_capacity(32);
    let mut insert = |from: usize| {
        for i in from..from + keys {
            let (u, e) = key(i, &mut user, &endpoints);
            assert!(limiter.check_and_increment(u, e));
        }
    };

    let baseline_kib = rss_kib()?;
    insert(0);
    let inserted_kib = rss_kib()?;
    // What the background sweeper does first.
    let begin = Instant::now();
    assert_eq!(limiter.sweep(), 0);
    let first_sweep = begin.elapsed();
    let first_sweep_kib = rss_kib()?;
    // What it costs every interval while the keys stay active.
    let begin = Instant::now();
    assert_eq!(limiter.sweep(), 0);
    let steady_sweep = begin.elapsed();

    clock.advance(2 * WINDOW);
    let begin = Instant::now();
    let removed = limiter.sweep();
    let full_sweep = begin.elapsed();
    let left = limiter.store().len();
    let after_sweep_kib = rss_kib()?;

    insert(keys);
    limiter.sweep();
    let reinserted_kib = rss_kib()?;
    Some(Measured {
        baseline_kib,
        inserted_kib,
        first_sweep_kib,
        first_sweep,
        steady_sweep,
        full_sweep,
        removed,
        left,
        after_sweep_kib,
        reinserted_kib,
    })
}

fn measure_governor(keys: usize) -> Option<Measured> {
    let clock = FakeRelativeClock::default();
    let quota = Quota::per_minute(std::num::NonZeroU32::new(100)?);
    let limiter = RateLimiter::dashmap_with_clock(quota, clock.clone());
    let endpoints = endpoints();
    let mut user = String::with_capacity(32);
    let mut composite = String::with_capacity(64);
    let mut insert = |from: usize| {
        for i in from..from + keys {
            let (u, e) = key(i, &mut user, &endpoints);
            composite.clear();
            composite.push_str(u);
            composite.push('\0');
            composite.push_str(e);
            // governor clones the key into the map on first sight: one allocation of its own.
            assert!(limiter.check_key(&composite).is_ok());
        }
    };

    let baseline_kib = rss_kib()?;
    insert(0);
    let inserted_kib = rss_kib()?;
    let begin = Instant::now();
    limiter.retain_recent();
    let first_sweep = begin.elapsed();
    let first_sweep_kib = rss_kib()?;
    let begin = Instant::now();
    limiter.retain_recent();
    let steady_sweep = begin.elapsed();

    clock.advance(2 * WINDOW);
    let held = limiter.len();
    let begin = Instant::now();
    limiter.retain_recent();
    let full_sweep = begin.elapsed();
    let left = limiter.len();
    let after_sweep_kib = rss_kib()?;

    insert(keys);
    let reinserted_kib = rss_kib()?;
    Some(Measured {
        baseline_kib,
        inserted_kib,
        first_sweep_kib,
        first_sweep,
        steady_sweep,
        full_sweep,
        removed: held - left,
        left,
        after_sweep_kib,
        reinserted_kib,
    })
}

/// This process's resident set size in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
