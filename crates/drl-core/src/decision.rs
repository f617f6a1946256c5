//! The answer to one check. Being limited is a value, not an error.

use std::time::Duration;

/// The outcome of a check: whether the hits were admitted, and what the caller may tell its
/// client (the `RateLimit-*` and `Retry-After` headers are built from these fields).
///
/// Durations are whole milliseconds, rounded up, so that a client that waits `retry_after` is
/// never early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The hits were admitted (and counted). For `hits = 0`, whether one hit would be admitted.
    pub allowed: bool,
    /// N: the number of requests the limit allows per window.
    pub limit: u32,
    /// How many more hits would be admitted right now, after this decision.
    pub remaining: u32,
    /// Time until the key is back to its full limit if no more requests are made.
    pub reset_after: Duration,
    /// When denied: time until the same request could be admitted. Zero when allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// Builds a decision from nanosecond durations, rounding both up to whole milliseconds.
    pub(crate) fn new(
        allowed: bool,
        limit: u32,
        remaining: u32,
        reset_after_ns: u64,
        retry_after_ns: u64,
    ) -> Self {
        Self {
            allowed,
            limit,
            remaining,
            reset_after: ceil_ms(reset_after_ns),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                ceil_ms(retry_after_ns)
            },
        }
    }
}

/// Rounds nanoseconds up to whole milliseconds.
fn ceil_ms(ns: u64) -> Duration {
    Duration::from_millis(ns.div_ceil(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_milliseconds() {
        let d = Decision::new(false, 10, 0, 1, 1_000_001);
        assert_eq!(d.reset_after, Duration::from_millis(1));
        assert_eq!(d.retry_after, Duration::from_millis(2));
        let allowed = Decision::new(true, 10, 3, 0, 5_000_000);
        assert_eq!(allowed.retry_after, Duration::ZERO);
        assert_eq!(allowed.reset_after, Duration::ZERO);
    }
}
