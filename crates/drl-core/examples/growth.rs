//! What the memory store's growth costs the checks that meet it: the latency of every check while
//! a store is filled with new keys, each check timed on its own.
//!
//! ```text
//! cargo run --release -p drl-core --example growth [-- --keys 10240000]
//! ```
//!
//! The table grows one shard at a time, under the shard's lock: the check that finds its shard
//! 4/5 full copies that shard's slots into one half as large again, and checks of that shard wait
//! for it. With 1024 shards per table, K keys put about K / 1024 in a shard, so the default
//! 10 240 000 keys make the last growths copy shards of about 10 000 keys. Prints the latency
//! percentiles of the inserting checks, and the slowest ones (the growths show there).
//!
//! One thread on a manual clock, the default sliding window, one hit per key: every check inserts
//! its key. A shared machine adds its own pauses (preemption shows as single slow checks too);
//! compare the slowest checks with the number of growths, about 1024 per size step.

use std::time::{Duration, Instant};

use drl_core::{Algorithm, Limiter, ManualClock, Policy, Rules};

fn main() {
    let mut keys: usize = 10_240_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--keys", Some(n)) if n > 0 => keys = n,
            _ => {
                eprintln!("usage: growth [--keys N]");
                std::process::exit(2);
            }
        }
    }
    let policy =
        Policy::per(100, Duration::from_secs(60), Algorithm::default()).expect("a valid policy");
    let limiter = Limiter::builder(Rules::only_default(policy))
        .clock(ManualClock::new(1_000_000_000))
        .sweep_interval(None)
        .build();
    let users: Vec<String> = (0..keys).map(|i| format!("u{i}")).collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(keys);
    let began = Instant::now();
    for user in &users {
        let start = Instant::now();
        let admitted = limiter.check_and_increment(user, "/growth");
        latencies.push(start.elapsed());
        assert!(admitted, "a fresh key admits its first hit");
    }
    let total = began.elapsed();
    assert_eq!(limiter.store().len(), keys);
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    println!(
        "{keys} inserting checks in {:.2} s ({:.0} ns each on average)",
        total.as_secs_f64(),
        total.as_nanos() as f64 / keys as f64
    );
    println!(
        "p50 {:?}  p99 {:?}  p99.9 {:?}  p99.99 {:?}  max {:?}",
        at(0.5),
        at(0.99),
        at(0.999),
        at(0.9999),
        sorted[sorted.len() - 1]
    );
    let slow = [
        Duration::from_micros(10),
        Duration::from_micros(50),
        Duration::from_micros(200),
    ];
    for bound in slow {
        let n = latencies.iter().filter(|&&l| l > bound).count();
        println!("checks over {bound:?}: {n}");
    }
    // The slowest checks of the last tenth of the fill, where shards are largest.
    let tail = &latencies[keys - keys / 10..];
    let mut last: Vec<Duration> = tail.to_vec();
    last.sort_unstable();
    let top: Vec<String> = last
        .iter()
        .rev()
        .take(10)
        .map(|d| format!("{d:?}"))
        .collect();
    println!("slowest of the last tenth: {}", top.join(", "));
}
