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

/// `RateLimit-Limit`: N, the requests the limit allows per window.
pub const RATELIMIT_LIMIT: &str = "ratelimit-limit";
/// `RateLimit-Remaining`: requests that would still be admitted now.
pub const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
/// `RateLimit-Reset`: seconds until the limit is whole again.
pub const RATELIMIT_RESET: &str = "ratelimit-reset";
/// `Retry-After`: seconds until a denied request could be admitted.
pub const RETRY_AFTER: &str = "retry-after";
/// The largest number of seconds a header field reports: `i32::MAX` (about 68 years), what every
/// client's integer parser takes. Longer waits (a permanent block) are reported as this.
pub const MAX_HEADER_SECONDS: u64 = i32::MAX as u64;

impl Decision {
    /// The HTTP header fields that report this decision, as every HTTP surface of drl writes
    /// them (the server's `POST /v1/check`, the tower layer): `RateLimit-Limit`,
    /// `RateLimit-Remaining`, `RateLimit-Reset`, and `Retry-After` when denied. Names are lower
    /// case; durations are whole seconds rounded up, so a client that waits that long is never
    /// early, and at most [`MAX_HEADER_SECONDS`] (a permanent block would otherwise say
    /// 18 446 743 660 s, which parsers of 32-bit integers refuse).
    pub fn header_fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let seconds = |d| whole_seconds(d).min(MAX_HEADER_SECONDS);
        let retry = (!self.allowed).then(|| (RETRY_AFTER, seconds(self.retry_after)));
        [
            (RATELIMIT_LIMIT, u64::from(self.limit)),
            (RATELIMIT_REMAINING, u64::from(self.remaining)),
            (RATELIMIT_RESET, seconds(self.reset_after)),
        ]
        .into_iter()
        .chain(retry)
    }
}

/// A duration in whole seconds, rounded up.
fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 {
        secs
    } else {
        secs.saturating_add(1)
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

    #[test]
    fn header_fields_are_capped_for_a_permanent_block() {
        let forever = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_after: Duration::MAX,
            retry_after: Duration::from_nanos(u64::MAX),
        };
        let fields: Vec<_> = forever.header_fields().collect();
        assert_eq!(fields[2], (RATELIMIT_RESET, MAX_HEADER_SECONDS));
        assert_eq!(fields[3], (RETRY_AFTER, MAX_HEADER_SECONDS));
        assert_eq!(MAX_HEADER_SECONDS, 2_147_483_647);
    }

    #[test]
    fn header_fields_round_up_to_seconds_and_retry_only_when_denied() {
        let allowed = Decision::new(true, 10, 3, 1_000_000_000, 0);
        assert_eq!(
            allowed.header_fields().collect::<Vec<_>>(),
            [
                (RATELIMIT_LIMIT, 10),
                (RATELIMIT_REMAINING, 3),
                (RATELIMIT_RESET, 1)
            ]
        );
        let denied = Decision::new(false, 10, 0, 59_000_000_001, 1_000_001);
        assert_eq!(
            denied.header_fields().collect::<Vec<_>>(),
            [
                (RATELIMIT_LIMIT, 10),
                (RATELIMIT_REMAINING, 0),
                (RATELIMIT_RESET, 60),
                (RETRY_AFTER, 1)
            ]
        );
    }
}
