//! Time sources. Every algorithm takes `now` as an argument; the [`Clock`] decides where it comes
//! from, so tests advance time by hand instead of sleeping.
//!
//! Time is a count of nanoseconds since an arbitrary, fixed origin (`u64`, enough for 584 years).
//! It must never run backwards; the algorithms also clamp per key, so two threads that read the
//! clock in one order and take a key's lock in the other cannot move that key's time back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic time source, in nanoseconds since the clock's own origin.
pub trait Clock: Send + Sync + 'static {
    /// The current time in nanoseconds. Successive calls never decrease.
    fn now_ns(&self) -> u64;
}

/// The machine's monotonic clock; origin = creation.
///
/// Read through [`quanta`]: the CPU's invariant time-stamp counter, calibrated against
/// `CLOCK_MONOTONIC` (about 11 ns a read against 31 ns for `Instant::elapsed`, measured in
/// `benches/parts.rs`), or `CLOCK_MONOTONIC` itself where there is no usable TSC. Like any
/// monotonic clock its rate may differ from true time by a few parts in 10⁴ at most; windows are
/// measured in this clock's time. Readings on different cores may differ by a few nanoseconds,
/// which the algorithms' per-key clamp absorbs.
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin: u64,
}

impl SystemClock {
    /// A clock whose origin is now. The first one in a process calibrates the counter (a few
    /// milliseconds).
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
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
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
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
    fn system_clock_is_monotonic_and_counts_nanoseconds() {
        use std::time::Instant;
        let clock = SystemClock::new();
        // Each reading bracketed by std readings, so a pause between them cannot mislead.
        let (t0, a, t1) = (Instant::now(), clock.now_ns(), Instant::now());
        let mut last = a;
        while t1.elapsed() < Duration::from_millis(20) {
            let now = clock.now_ns();
            assert!(now >= last);
            last = now;
        }
        let (t2, b, t3) = (Instant::now(), clock.now_ns(), Instant::now());
        assert!(b >= last);
        let (shortest, longest) = ((t2 - t1).as_nanos() as u64, (t3 - t0).as_nanos() as u64);
        // Nanoseconds, not raw counter ticks: within the bracket, give or take 10% calibration.
        let measured = b - a;
        assert!(
            measured >= shortest * 9 / 10 && measured <= longest * 11 / 10,
            "{measured} ns not within [{shortest}, {longest}]"
        );
    }
}
