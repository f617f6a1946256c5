//! The limit algorithms, each a pure function of (state, now, policy, hits) → decision, with the
//! state updated in place. No clock, no store, no locking: the store decides how a state is
//! kept and serialised, the caller decides what `now` is.
//!
//! | algorithm | guarantees P (≤ N in any window of T) | state |
//! |---|---|---|
//! | [`sliding_window`] (default) | yes; under-admits by at most one bucket | ring of bucket counts |
//! | [`sliding_log`] | yes, exactly | ring of admitted timestamps (≤ N) |
//! | [`fixed_window`] | no: up to 2N across a boundary | start + count |
//! | [`token_bucket`] (GCRA) | only if burst + N ≤ N, i.e. never with rate N/T; bound burst + N | one timestamp |
//!
//! Shared rules: `hits > 1` is admitted all or nothing; `hits = 0` reads without counting and
//! answers whether one hit would be admitted; time is clamped per key so it never runs
//! backwards; a request for more hits than can ever fit is denied with `retry_after = T`.

pub mod fixed_window;
pub mod sliding_log;
pub mod sliding_window;
pub mod token_bucket;

use crate::decision::Decision;
use crate::policy::Policy;
pub use crate::policy::{Algorithm, DEFAULT_PRECISION, MAX_PRECISION};

pub use fixed_window::FixedWindow;
pub use sliding_log::SlidingLog;
pub use sliding_window::SlidingWindow;
pub use token_bucket::TokenBucket;

/// One algorithm step: the decision, and the absolute time behind its `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDecision {
    pub decision: Decision,
    /// When denied: the exact time (ns) from which the same request could be admitted if nothing
    /// else is admitted first (`u64::MAX` if never). Stores use it to answer repeated denials
    /// without taking the key's lock. Meaningless when allowed.
    pub retry_at_ns: u64,
}

impl StepDecision {
    /// Builds a step from times relative to the effective `now`, rounding the decision's
    /// durations up to whole milliseconds.
    pub(crate) fn new(
        allowed: bool,
        policy: &Policy,
        remaining: u64,
        now: u64,
        reset_after_ns: u64,
        retry_after_ns: u64,
    ) -> Self {
        Self {
            decision: Decision::new(
                allowed,
                policy.requests(),
                remaining.min(u64::from(u32::MAX)) as u32,
                reset_after_ns,
                retry_after_ns,
            ),
            retry_at_ns: now.saturating_add(retry_after_ns),
        }
    }

    /// Marks a request that can never be admitted (more hits than the limit holds).
    pub(crate) fn never_if(mut self, never: bool) -> Self {
        if never {
            self.retry_at_ns = u64::MAX;
        }
        self
    }
}

/// The per-key state of one algorithm.
pub trait LimitState: Clone + Send + Sized + 'static {
    /// The state of a key with no admissions.
    fn fresh(policy: &Policy) -> Self;

    /// Decides whether `hits` may be admitted at `now_ns` under `policy` and, if so (and
    /// `hits > 0`), counts them. All or nothing. Denials and reads change nothing.
    fn step(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision;

    /// [`LimitState::step`], returning only the decision.
    fn check(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> Decision {
        self.step(policy, now_ns, hits).decision
    }

    /// The time from which this state is indistinguishable from [`LimitState::fresh`]: every
    /// admission has aged out. The memory store reclaims the key after it.
    fn idle_at(&self) -> u64;
}

/// `hits`, or 1 for a read (`hits = 0` answers whether one hit would be admitted).
#[inline]
pub(crate) fn demand(hits: u32) -> u64 {
    u64::from(hits.max(1))
}
