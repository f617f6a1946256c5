//! Time sources. Every algorithm takes `now` as an argument; the [`Clock`] decides where it comes
//! from, so tests advance time by hand instead of sleeping.
//!
//! Time is a count of nanoseconds since an arbitrary, fixed origin (`u64`, enough for 584 years).
//! It must never run backwards; the algorithms also clamp per key, so two threads that read the
//! clock in one order and take a key's lock in the other cannot move that key's time back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic time source, in nanoseconds since the clock's own origin.
pub trait Clock: Send + Sync + 'static {
    /// The current time in nanoseconds. Successive calls never decrease.
    fn now_ns(&self) -> u64;
}

/// The process's monotonic clock (`CLOCK_MONOTONIC` through [`Instant`]); origin = creation.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        // Saturates after 584 years of uptime rather than wrapping.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to. Clones share one time, so a test can hand a clone to
/// the limiter and keep another to advance it.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock reading `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start_ns)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.now.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ns`; ignored if that would move it backwards.
    pub fn set(&self, now_ns: u64) {
        self.now.fetch_max(now_ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let clock = ManualClock::new(10);
        let shared = clock.clone();
        shared.advance(Duration::from_nanos(5));
        assert_eq!(clock.now_ns(), 15);
        clock.set(3);
        assert_eq!(clock.now_ns(), 15);
        clock.set(100);
        assert_eq!(shared.now_ns(), 100);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
    }
}
