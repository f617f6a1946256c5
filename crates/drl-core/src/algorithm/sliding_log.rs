//! Exact sliding log: a ring of the timestamps of admitted hits.
//!
//! A check at `now` first drops the timestamps older than `now − T`, then admits `hits` if the
//! ones left plus `hits` are at most N. That is exactly P: an admission is refused precisely when
//! it would put N + 1 admissions in the closed interval [now − T, now]. Memory is 8 bytes per
//! admission still in the window, so at most 8·N per key; the ring shrinks again when a burst
//! has passed.

use std::collections::VecDeque;

use super::{LimitState, StepDecision, demand};
use crate::policy::Policy;

/// One key's log: admitted timestamps, oldest first, all within the last window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlidingLog {
    admitted: VecDeque<u64>,
    /// When the newest admission leaves the window.
    idle_at: u64,
}

impl LimitState for SlidingLog {
    fn fresh(_policy: &Policy) -> Self {
        Self::default()
    }

    fn step(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision {
        let window = policy.window_ns();
        let limit = u64::from(policy.requests());
        // Time never runs backwards for a key.
        let now = now_ns.max(self.admitted.back().copied().unwrap_or(0));
        if let Some(horizon) = now.checked_sub(window) {
            while self.admitted.front().is_some_and(|&t| t < horizon) {
                self.admitted.pop_front();
            }
        }
        let cap = self.admitted.capacity();
        if cap > 64 && self.admitted.len() < cap / 4 {
            self.admitted.shrink_to(self.admitted.len() * 2);
        }

        let want = demand(hits);
        let mut used = self.admitted.len() as u64;
        let allowed = used + want <= limit;
        if allowed && hits > 0 {
            self.admitted
                .extend(std::iter::repeat_n(now, hits as usize));
            used += u64::from(hits);
            self.idle_at = now + window + 1;
        }
        // A timestamp t stops counting once now − T > t.
        let leaves_at = |t: u64| (t + window + 1).saturating_sub(now);
        let reset_after = self.admitted.back().map_or(0, |&t| leaves_at(t));
        let retry_after = if allowed {
            0
        } else if want > limit {
            window
        } else {
            let must_free = (used + want - limit) as usize;
            leaves_at(self.admitted[must_free - 1])
        };
        StepDecision::new(
            allowed,
            policy,
            limit.saturating_sub(used),
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

impl SlidingLog {
    /// Number of admissions held.
    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    /// No admission held.
    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    fn policy(n: u64, secs: u64) -> Policy {
        Policy::per(n, Duration::from_secs(secs), Algorithm::SlidingLog).unwrap()
    }

    #[test]
    fn exact_window_boundary() {
        let p = policy(2, 10);
        let mut s = SlidingLog::fresh(&p);
        assert!(s.check(&p, 5 * SEC, 1).allowed);
        assert!(s.check(&p, 7 * SEC, 1).allowed);
        let d = s.check(&p, 8 * SEC, 1);
        assert!(!d.allowed);
        // The 5 s admission counts through 15 s inclusive.
        assert_eq!(d.retry_after, Duration::from_millis(7_001));
        assert!(!s.check(&p, 15 * SEC, 1).allowed);
        assert!(s.check(&p, 15 * SEC + 1, 1).allowed);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn hits_are_all_or_nothing() {
        let p = policy(5, 10);
        let mut s = SlidingLog::fresh(&p);
        assert!(s.check(&p, SEC, 4).allowed);
        assert!(!s.check(&p, SEC, 2).allowed);
        assert_eq!(s.check(&p, SEC, 0).remaining, 1);
        assert!(!s.check(&p, SEC, 6).allowed);
    }
}
