//! Fixed window: one counter per window, windows aligned to multiples of T on the clock.
//!
//! Cheap (16 bytes) and what envoyproxy/ratelimit does, but it does **not** guarantee P: N
//! admissions at the end of one window and N at the start of the next put 2N in an interval
//! shorter than T. Its own bound: at most N per aligned window, so at most 2N in any interval of
//! length T.

use super::{LimitState, StepDecision, demand};
use crate::policy::Policy;

/// One key's counter for the window that starts at `start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FixedWindow {
    start: u64,
    count: u64,
    idle_at: u64,
}

impl LimitState for FixedWindow {
    fn fresh(_policy: &Policy) -> Self {
        Self::default()
    }

    fn step(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision {
        let window = policy.window_ns();
        let limit = u64::from(policy.requests());
        // Time never runs backwards for a key; a window that has ended restarts aligned.
        let now = now_ns.max(self.start);
        if now >= self.start + window {
            self.start = now - now % window;
            self.count = 0;
        }
        let want = demand(hits);
        let allowed = self.count + want <= limit;
        if allowed && hits > 0 {
            self.count += u64::from(hits);
            self.idle_at = self.start + window;
        }
        let reset_after = if self.count > 0 {
            self.start + window - now
        } else {
            0
        };
        let retry_after = if want > limit {
            window
        } else {
            self.start + window - now
        };
        StepDecision::new(
            allowed,
            policy,
            limit.saturating_sub(self.count),
            now,
            reset_after,
            retry_after,
        )
        .never_if(want > limit)
    }

    fn idle_at(&self) -> u64 {
        self.idle_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn counts_per_aligned_window() {
        let p = Policy::per(2, Duration::from_secs(10), Algorithm::FixedWindow).unwrap();
        let mut s = FixedWindow::fresh(&p);
        assert!(s.check(&p, 19 * SEC, 1).allowed);
        assert!(s.check(&p, 19 * SEC, 1).allowed);
        let d = s.check(&p, 19 * SEC, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        // The boundary: two more at 20 s, four within one second.
        assert!(s.check(&p, 20 * SEC, 2).allowed);
        assert_eq!(s.idle_at(), 30 * SEC);
    }
}
