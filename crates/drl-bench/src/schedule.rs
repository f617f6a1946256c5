//! The open loop: request `i` is due at `i / R` seconds after the start, whether or not the
//! server has answered the earlier ones.
//!
//! A [`Pacer`] thread releases each request when it is due (a permit on a semaphore); a free
//! worker takes it and measures the latency from the time it was *due*, not from when it could
//! be sent. When the server falls behind, the requests wait for a worker, and that wait shows
//! up in the latencies instead of vanishing (the "coordinated omission" of a closed-loop
//! measurement).
//!
//! The pacer is an OS thread with `std::thread::sleep` (about 60 µs resolution on Linux) rather
//! than a tokio timer, whose 1 ms ticks would add up to a millisecond of the load generator's
//! own lateness to every latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The shortest sleep of the pacer: at high rates it releases several requests per wake-up
/// rather than waking for each.
const PACER_TICK: Duration = Duration::from_micros(100);

/// When each request of an open-loop run is due: `rate` requests per second, evenly spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate: u64,
}

impl Schedule {
    /// `rate` ≥ 1 requests per second (checked by the caller; 0 is taken as 1).
    pub fn new(rate: u64) -> Self {
        Self { rate: rate.max(1) }
    }

    /// Requests per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// When request `i` (0-based) is due, after the start: ⌊i · 10⁹ / rate⌋ ns.
    pub fn due_at(&self, i: u64) -> Duration {
        let ns = u128::from(i) * NANOS_PER_SEC / u128::from(self.rate);
        duration_from_nanos(ns)
    }

    /// How many requests are due by `elapsed` (those with [`due_at`](Self::due_at) ≤ elapsed).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        // due_at(i) ≤ e  ⇔  ⌊i·10⁹/R⌋ ≤ e  ⇔  i·10⁹ < (e + 1)·R  ⇔  i < ⌈(e + 1)·R / 10⁹⌉.
        let e = elapsed.as_nanos();
        let count = ((e + 1) * u128::from(self.rate)).div_ceil(NANOS_PER_SEC);
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// How many requests fall within a run of `length` (those due strictly before its end).
    pub fn count_within(&self, length: Duration) -> u64 {
        // due_at(i) < D  ⇔  i·10⁹ / R < D  ⇔  i < D·R / 10⁹.
        let count = (length.as_nanos() * u128::from(self.rate)).div_ceil(NANOS_PER_SEC);
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

fn duration_from_nanos(ns: u128) -> Duration {
    let secs = u64::try_from(ns / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // Below 10⁹, so it fits.
    let nanos = (ns % NANOS_PER_SEC) as u32;
    Duration::new(secs, nanos)
}

/// Releases the requests of a [`Schedule`] as they fall due, as permits of a semaphore.
#[derive(Debug)]
pub struct Pacer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    /// Starts releasing `total` requests of `schedule` from `start` into `permits`, then
    /// `extra` more (one per worker, so that every worker wakes up to see the end).
    pub fn start(
        schedule: Schedule,
        start: Instant,
        total: u64,
        extra: usize,
        permits: Arc<Semaphore>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("drl-bench-pacer".into())
            .spawn(move || {
                let mut released: u64 = 0;
                while released < total && !stopped.load(Ordering::Relaxed) {
                    let due = schedule.due_by(start.elapsed()).min(total);
                    if due > released {
                        add_permits(&permits, due - released);
                        released = due;
                    }
                    if released < total {
                        let next = start + schedule.due_at(released);
                        let wait = next.saturating_duration_since(Instant::now());
                        std::thread::sleep(wait.max(PACER_TICK));
                    }
                }
                permits.add_permits(extra);
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Pacer {
    /// Waits until every request has been released.
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Adds `n` permits, in steps the semaphore accepts.
fn add_permits(permits: &Semaphore, mut n: u64) {
    while n > 0 {
        let step = n.min(1 << 20);
        permits.add_permits(usize::try_from(step).unwrap_or(1 << 20));
        n -= step;
    }
}

impl Drop for Pacer {
    /// Stops releasing (when the run ends early) and waits for the thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_evenly_spaced() {
        let s = Schedule::new(1_000);
        assert_eq!(s.due_at(0), Duration::ZERO);
        assert_eq!(s.due_at(1), Duration::from_millis(1));
        assert_eq!(s.due_at(1_000), Duration::from_secs(1));
        assert_eq!(s.due_at(2_500), Duration::from_millis(2_500));
        // 3 per second: 0, 333 333 333 ns, 666 666 666 ns, 1 s.
        let s = Schedule::new(3);
        assert_eq!(s.due_at(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.due_at(2), Duration::from_nanos(666_666_666));
        assert_eq!(s.due_at(3), Duration::from_secs(1));
        // No overflow at the far end.
        assert!(Schedule::new(1).due_at(u64::MAX) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn due_counts_match_due_times() {
        for rate in [1, 3, 7, 1_000, 50_000, 2_000_000] {
            let s = Schedule::new(rate);
            for i in [0u64, 1, 2, 5, 99, 12_345] {
                let at = s.due_at(i);
                // Request i is due exactly at its time, and not 1 ns before.
                assert_eq!(s.due_by(at), i + 1, "rate {rate}, i {i}");
                if let Some(before) = at.checked_sub(Duration::from_nanos(1)) {
                    assert_eq!(s.due_by(before), i, "rate {rate}, i {i}");
                }
            }
        }
    }

    #[test]
    fn a_run_holds_rate_times_length_requests() {
        assert_eq!(
            Schedule::new(1_000).count_within(Duration::from_secs(1)),
            1_000
        );
        assert_eq!(
            Schedule::new(1_000).count_within(Duration::from_secs(10)),
            10_000
        );
        assert_eq!(Schedule::new(3).count_within(Duration::from_secs(1)), 3);
        // 0, 333 ms, 666 ms and 1 s fall within 1.5 s; the next (1.333 s) too.
        assert_eq!(
            Schedule::new(3).count_within(Duration::from_millis(1_500)),
            5
        );
        assert_eq!(Schedule::new(7).count_within(Duration::ZERO), 0);
        assert_eq!(
            Schedule::new(50_000).count_within(Duration::from_millis(1)),
            50
        );
    }

    #[test]
    fn the_pacer_releases_every_request_then_one_per_worker() {
        let permits = Arc::new(Semaphore::new(0));
        // 1 000 000 per second: all 1 000 are due within a millisecond.
        let pacer = Pacer::start(
            Schedule::new(1_000_000),
            Instant::now(),
            1_000,
            4,
            Arc::clone(&permits),
        )
        .unwrap();
        pacer.finish();
        assert_eq!(permits.available_permits(), 1_004);
    }
}
