//! `drl-testkit`: what drl's tests share, so no test crate writes its own copy.
//!
//! - [`redis`]: real `redis-server` processes and Redis Clusters on free loopback ports, always
//!   stopped when their guard drops, and the oracle of the guarantee ([`redis::worst_window`]).
//! - [`process`]: the built `drl` binary as a child process (`drl serve`, signals, `drl check`).
//! - [`ca`]: a throwaway CA and the certificates it signs, for the TLS tests.
//! - [`node`] (feature `node`, on by default): a node of `drl-server` on a loopback socket, on a
//!   manual clock, with a raw HTTP/1.1 client that can send anything.
//! - [`manual_limiter`] (feature `core`): a limiter on a manual clock, without a sweeper.
//! - [`vectors`] (feature `core`): the shared test vectors of the algorithms, which the Rust
//!   algorithms and the Redis scripts must both reproduce.
//! - [`fuzz::replay`]: every seed and regression input of a fuzz target, through its entry point.
//! - [`wait_until`] and [`wait_until_blocking`]: the one polling loop, bounded by [`DEADLINE`].
//!
//! Test code: a broken environment (no `redis-server`, a port that cannot be bound) panics with
//! what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod ca;
pub mod fuzz;
#[cfg(feature = "node")]
pub mod node;
pub mod process;
pub mod redis;
#[cfg(feature = "core")]
pub mod vectors;

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits for; reached only when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How often [`wait_until`] asks again.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `ready` answers true, asking every 20 ms; panics with `what` after [`DEADLINE`].
pub async fn wait_until(what: impl Display, mut ready: impl AsyncFnMut() -> bool) {
    wait_within(DEADLINE, what, &mut ready).await;
}

/// [`wait_until`] with a bound of its own.
pub async fn wait_within(
    within: Duration,
    what: impl Display,
    mut ready: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !ready().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for a test without a runtime: blocks the thread between the questions.
pub fn wait_until_blocking(what: impl Display, ready: impl FnMut() -> bool) {
    wait_within_blocking(DEADLINE, what, ready);
}

/// [`wait_until_blocking`] with a bound of its own.
pub fn wait_within_blocking(within: Duration, what: impl Display, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(POLL);
    }
}

/// A limiter on `rules` whose clock starts at `start_ns` and moves only when the test advances it,
/// with no background sweeper.
#[cfg(feature = "core")]
pub fn manual_limiter(
    rules: drl_core::Rules,
    start_ns: u64,
) -> (drl_core::Limiter, drl_core::ManualClock) {
    let clock = drl_core::ManualClock::new(start_ns);
    let limiter = drl_core::Limiter::builder(rules)
        .clock(clock.clone())
        .sweep_interval(None)
        .build();
    (limiter, clock)
}
