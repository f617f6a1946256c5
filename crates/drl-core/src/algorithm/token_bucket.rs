//! Token bucket as GCRA (generic cell rate algorithm): one timestamp per key.
//!
//! Tokens refill at N/T (one every e = ⌈T/N⌉), up to `burst` (default N). The state is the
//! theoretical arrival time `tat`: the moment the bucket would be full again. A request of `h`
//! hits is admitted if `max(tat, now) + h·e − now ≤ burst·e`.
//!
//! Its bound: at most burst + ⌊T/e⌋ ≤ burst + N admissions in any closed interval of length T, so
//! it guarantees P only when burst + rate·T ≤ N; with the default burst = N that is 2N. Use it to
//! smooth traffic, and `sliding_window` where P matters.

use super::{LimitState, StepDecision, demand};
use crate::algorithm::Algorithm;
use crate::policy::Policy;

/// One key's theoretical arrival time, in nanoseconds.
///
/// `u128`, because a valid policy can hold more credit than `u64` nanoseconds span (a burst of
/// 10⁶ at one token per 366 days is 3.2·10²² ns): in `u128` every step of the check is exact,
/// where saturating `u64` arithmetic pinned `tat` at `u64::MAX` and then admitted everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenBucket {
    tat: u128,
}

/// The burst of a token-bucket policy (N when not set).
pub fn burst(policy: &Policy) -> u32 {
    match policy.algorithm() {
        Algorithm::TokenBucket { burst: Some(b) } => b,
        _ => policy.requests(),
    }
}

impl LimitState for TokenBucket {
    fn fresh(_policy: &Policy) -> Self {
        Self::default()
    }

    fn step(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision {
        let e = u128::from(policy.emission_ns());
        let burst = u64::from(burst(policy));
        let capacity = u128::from(burst) * e;
        let want = demand(hits);
        let now = u128::from(now_ns);
        let start = self.tat.max(now);
        let after = start + u128::from(want) * e;
        let allowed = want <= burst && after - now <= capacity;
        if allowed && hits > 0 {
            self.tat = after;
        }
        let full_at = self.tat.max(now);
        let remaining = capacity.saturating_sub(full_at - now) / e;
        let retry_after = if want > burst {
            policy.window_ns()
        } else {
            saturate((after - now).saturating_sub(capacity))
        };
        StepDecision::new(
            allowed,
            policy,
            saturate(remaining),
            now_ns,
            saturate(full_at - now),
            retry_after,
        )
        .never_if(want > burst)
    }

    fn idle_at(&self) -> u64 {
        saturate(self.tat)
    }
}

/// Nanoseconds as `u64`, saturating: beyond 584 years is as good as never.
fn saturate(ns: u128) -> u64 {
    u64::try_from(ns).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        // 10 per 10 s: one token per second, burst 3.
        let p = Policy::per(
            10,
            Duration::from_secs(10),
            Algorithm::TokenBucket { burst: Some(3) },
        )
        .unwrap();
        let mut s = TokenBucket::fresh(&p);
        let t = 100 * SEC;
        for left in [2, 1, 0] {
            let d = s.check(&p, t, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = s.check(&p, t, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset_after, Duration::from_secs(3));
        assert!(s.check(&p, t + SEC, 1).allowed);
        assert!(!s.check(&p, t + SEC, 2).allowed);
        assert!(!s.check(&p, t + SEC, 4).allowed);
    }
}
