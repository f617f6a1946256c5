//! Conservative sub-bucketed sliding window: the default algorithm.
//!
//! The window T is cut into `precision` buckets of width g = ⌈T/precision⌉. A check at `now`
//! counts **every** bucket that overlaps the closed interval [now − T, now], the partly expired
//! oldest one in full, and admits `hits` if that sum plus `hits` is at most N; admitted hits go
//! into the bucket of `now`.
//!
//! Why this guarantees P (never more than N admissions in any closed interval of length T): the
//! counted buckets always cover [now − T, now], so the sum is at least the true number of
//! admissions in that interval; the check therefore refuses any admission that would put N + 1
//! in it. Under-admission is bounded by one bucket: an admission is counted at most g longer
//! than an exact log would count it. On steady over-limit traffic the admitted rate converges to
//! N per (T + g), i.e. N · precision / (precision + 1) per window: 98.4% of N at the default 60.
//!
//! The counts live in a ring of `⌈T/g⌉ + 1` slots, bucket `b` in slot `b mod slots`. Rings up to
//! [`INLINE_SLOTS`] slots of `u16` counts (every default-precision policy with N ≤ 65 535) are
//! stored inline, so a key is one allocation; larger ones use a boxed `u32` ring.

use super::{LimitState, demand};
use crate::decision::Decision;
use crate::policy::Policy;

/// Slots stored inline: the default precision (60) needs 61.
pub const INLINE_SLOTS: usize = 61;

/// One key's sliding-window state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindow {
    /// Bucket width the ring was built with. A reload that changes the policy's geometry folds
    /// the old counts into the current bucket (see [`SlidingWindow::regroup`]).
    bucket_ns: u64,
    /// Index (`time / bucket_ns`) of the newest bucket in the ring; time never goes back past it.
    newest: u64,
    /// When every counted admission has aged out.
    idle_at: u64,
    counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Counts {
    Inline { len: u8, ring: [u16; INLINE_SLOTS] },
    Boxed(Box<[u32]>),
}

impl Counts {
    fn for_policy(policy: &Policy) -> Self {
        let slots = policy.slots() as usize;
        if slots <= INLINE_SLOTS && policy.requests() <= u32::from(u16::MAX) {
            Counts::Inline {
                len: slots as u8,
                ring: [0; INLINE_SLOTS],
            }
        } else {
            Counts::Boxed(vec![0; slots].into_boxed_slice())
        }
    }

    fn fits(&self, policy: &Policy) -> bool {
        match self {
            Counts::Inline { len, .. } => {
                usize::from(*len) == policy.slots() as usize
                    && policy.requests() <= u32::from(u16::MAX)
            }
            Counts::Boxed(ring) => ring.len() == policy.slots() as usize,
        }
    }

    fn total(&self) -> u64 {
        match self {
            Counts::Inline { len, ring } => ring[..usize::from(*len)]
                .iter()
                .map(|&c| u64::from(c))
                .sum(),
            Counts::Boxed(ring) => ring.iter().map(|&c| u64::from(c)).sum(),
        }
    }
}

/// A ring slot: `u16` inline, `u32` boxed. Counts never exceed N, which picks the width.
trait Slot: Copy {
    fn get(self) -> u64;
    fn put(value: u64) -> Self;
}

impl Slot for u16 {
    #[inline]
    fn get(self) -> u64 {
        u64::from(self)
    }
    #[inline]
    fn put(value: u64) -> Self {
        value.min(u64::from(u16::MAX)) as u16
    }
}

impl Slot for u32 {
    #[inline]
    fn get(self) -> u64 {
        u64::from(self)
    }
    #[inline]
    fn put(value: u64) -> Self {
        value.min(u64::from(u32::MAX)) as u32
    }
}

impl SlidingWindow {
    /// Rebuilds the ring for a policy whose geometry differs from the state's (a reload changed
    /// T, the precision, or N across the `u16` boundary). Every admission still held is moved
    /// into the bucket of `now`: it stays counted for at least a full window from now, so the
    /// change can only under-admit, never over-admit.
    fn regroup(&mut self, policy: &Policy, now_ns: u64) {
        let held = self.counts.total();
        let mut fresh = Self::fresh(policy);
        let g = policy.bucket_ns();
        fresh.newest = now_ns / g;
        if held > 0 {
            let slot = (fresh.newest % u64::from(policy.slots())) as usize;
            match &mut fresh.counts {
                Counts::Inline { ring, .. } if held <= u64::from(u16::MAX) => {
                    ring[slot] = held as u16
                }
                counts => {
                    let mut ring = vec![0u32; policy.slots() as usize];
                    ring[slot] = u32::put(held);
                    *counts = Counts::Boxed(ring.into_boxed_slice());
                }
            }
            fresh.idle_at = self.idle_at.max(
                (fresh.newest + 1)
                    .saturating_mul(g)
                    .saturating_add(policy.window_ns()),
            );
        }
        *self = fresh;
    }
}

impl LimitState for SlidingWindow {
    fn fresh(policy: &Policy) -> Self {
        Self {
            bucket_ns: policy.bucket_ns(),
            newest: 0,
            idle_at: 0,
            counts: Counts::for_policy(policy),
        }
    }

    fn check(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> Decision {
        if self.bucket_ns != policy.bucket_ns() || !self.counts.fits(policy) {
            self.regroup(policy, now_ns);
        }
        let newest = &mut self.newest;
        let idle_at = &mut self.idle_at;
        match &mut self.counts {
            Counts::Inline { len, ring } => check_ring(
                &mut ring[..usize::from(*len)],
                newest,
                idle_at,
                policy,
                now_ns,
                hits,
            ),
            Counts::Boxed(ring) => check_ring(ring, newest, idle_at, policy, now_ns, hits),
        }
    }

    fn idle_at(&self) -> u64 {
        self.idle_at
    }
}

fn check_ring<S: Slot>(
    ring: &mut [S],
    newest: &mut u64,
    idle_at: &mut u64,
    policy: &Policy,
    now_ns: u64,
    hits: u32,
) -> Decision {
    let g = policy.bucket_ns();
    let window = policy.window_ns();
    let limit = u64::from(policy.requests());
    let slots = ring.len();

    // Time never runs backwards for a key: a thread that read the clock earlier but took the
    // lock later is treated as arriving at the newest bucket's start.
    let now = now_ns.max(*newest * g);
    let current = now / g;
    // The ring position of bucket `current`; positions of older buckets count down from it, so
    // the loops below step through positions instead of dividing per bucket.
    let here = (current % slots as u64) as usize;
    if current > *newest {
        let stale = (current - *newest).min(slots as u64) as usize;
        for age in 0..stale {
            ring[back(here, age, slots)] = S::put(0);
        }
        *newest = current;
    }

    // Buckets overlapping [now − T, now]: `span` of them, at most `slots` by construction.
    let span = (current - now.saturating_sub(window) / g) as usize + 1;
    let mut used = sum_back(ring, here, span);

    let want = demand(hits);
    let allowed = used + want <= limit;
    if allowed && hits > 0 {
        ring[here] = S::put(ring[here].get() + u64::from(hits));
        used += u64::from(hits);
        *idle_at = (current + 1) * g + window;
    }

    // The bucket `age` buckets before the current one stops counting once
    // now − T ≥ (current − age + 1)·g.
    let leaves_at = |age: usize| ((current - age as u64 + 1) * g + window).saturating_sub(now);
    let reset_after = (0..span)
        .find(|&age| ring[back(here, age, slots)].get() > 0)
        .map_or(0, leaves_at);
    let retry_after = if allowed {
        0
    } else if want > limit {
        window
    } else {
        // Free buckets from the oldest on until enough hits have left the window.
        let mut must_free = used + want - limit;
        let mut retry = reset_after;
        for age in (0..span).rev() {
            let c = ring[back(here, age, slots)].get();
            if c >= must_free {
                retry = leaves_at(age);
                break;
            }
            must_free -= c;
        }
        retry
    };
    Decision::new(
        allowed,
        policy.requests(),
        limit.saturating_sub(used) as u32,
        reset_after,
        retry_after,
    )
}

/// The ring position `age` buckets before position `here`.
#[inline]
fn back(here: usize, age: usize, slots: usize) -> usize {
    if age <= here {
        here - age
    } else {
        here + slots - age
    }
}

/// Sum of the `span` buckets ending at position `here`: at most two contiguous slices.
#[inline]
fn sum_back<S: Slot>(ring: &[S], here: usize, span: usize) -> u64 {
    let sum = |part: &[S]| part.iter().map(|c| c.get()).sum::<u64>();
    if span <= here + 1 {
        sum(&ring[here + 1 - span..=here])
    } else {
        sum(&ring[..=here]) + sum(&ring[ring.len() - (span - here - 1)..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    fn policy(n: u64, secs: u64, precision: u16) -> Policy {
        Policy::per(
            n,
            Duration::from_secs(secs),
            Algorithm::SlidingWindow { precision },
        )
        .unwrap()
    }

    #[test]
    fn admits_up_to_the_limit_then_denies_until_the_oldest_bucket_leaves() {
        let p = policy(3, 10, 10); // 1 s buckets
        let mut s = SlidingWindow::fresh(&p);
        let t0 = 100 * SEC + SEC / 2;
        for i in 0..3 {
            let d = s.check(&p, t0, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
        }
        let d = s.check(&p, t0 + SEC, 1);
        assert!(!d.allowed);
        // Bucket 100 stops counting at 101 s + 10 s = 111 s; now is 101.5 s.
        assert_eq!(d.retry_after, Duration::from_millis(9_500));
        assert!(!s.check(&p, 111 * SEC - 1, 1).allowed);
        let d = s.check(&p, 111 * SEC, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn hits_are_all_or_nothing_and_zero_hits_only_reads() {
        let p = policy(5, 60, 60);
        let mut s = SlidingWindow::fresh(&p);
        assert!(s.check(&p, SEC, 3).allowed);
        assert!(!s.check(&p, SEC, 3).allowed);
        let read = s.check(&p, SEC, 0);
        assert!(read.allowed);
        assert_eq!(read.remaining, 2);
        assert!(s.check(&p, SEC, 2).allowed);
        assert!(!s.check(&p, SEC, 0).allowed);
    }

    #[test]
    fn more_hits_than_the_limit_are_never_admitted() {
        let p = policy(5, 60, 60);
        let mut s = SlidingWindow::fresh(&p);
        let d = s.check(&p, SEC, 6);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 5);
        assert_eq!(d.retry_after, Duration::from_secs(60));
    }

    #[test]
    fn time_running_backwards_is_clamped() {
        let p = policy(2, 10, 10);
        let mut s = SlidingWindow::fresh(&p);
        assert!(s.check(&p, 50 * SEC, 1).allowed);
        // An older reading is treated as the newest bucket's start, not as the past.
        assert!(s.check(&p, 20 * SEC, 1).allowed);
        assert!(!s.check(&p, 20 * SEC, 1).allowed);
        assert!(!s.check(&p, 59 * SEC, 1).allowed);
        assert!(s.check(&p, 61 * SEC, 1).allowed);
    }

    #[test]
    fn large_limits_use_a_wide_ring() {
        let p = policy(100_000, 60, 60);
        let mut s = SlidingWindow::fresh(&p);
        assert!(matches!(s.counts, Counts::Boxed(_)));
        assert!(s.check(&p, SEC, 70_000).allowed);
        assert_eq!(s.check(&p, SEC, 0).remaining, 30_000);
    }

    #[test]
    fn a_changed_geometry_keeps_every_admission_counted() {
        let old = policy(10, 60, 60);
        let mut s = SlidingWindow::fresh(&old);
        assert!(s.check(&old, SEC, 8).allowed);
        let new = policy(10, 3_600, 60);
        let d = s.check(&new, 2 * SEC, 0);
        assert_eq!(d.remaining, 2);
        assert!(!s.check(&new, 2 * SEC, 3).allowed);
    }

    #[test]
    fn idle_at_is_when_the_last_admission_leaves() {
        let p = policy(10, 60, 60);
        let mut s = SlidingWindow::fresh(&p);
        s.check(&p, 5 * SEC + 1, 1);
        assert_eq!(s.idle_at(), 66 * SEC);
        let d = s.check(&p, 66 * SEC, 0);
        assert_eq!(d.remaining, 10);
    }
}
