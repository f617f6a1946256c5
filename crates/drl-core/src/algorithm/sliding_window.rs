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
//! The counts live in a ring of `⌈T/g⌉ + 1` slots, bucket `b` in slot `b mod slots`, with a running
//! total, so a check is O(1): it touches the state's header, the current slot and at most one
//! other (the ring may hold one bucket more than the window overlaps when g does not divide T).
//!
//! Most keys hold few admissions, so the state of a key is not as big as its worst case. A key of
//! a policy whose ring has at most [`INLINE_SLOTS`] slots of `u16` counts (every default-precision
//! policy with N ≤ 65 535) starts **sparse**: up to [`SPARSE_BUCKETS`] non-empty buckets stored in
//! the state itself (40 bytes in all). A check of a sparse key unpacks it into a ring on the stack,
//! runs the same ring step, and packs it again; when more buckets hold admissions than fit, the
//! key is promoted to a boxed `u16` ring, for good. Larger policies use a boxed `u32` ring.

use super::{LimitState, StepDecision, demand};
use crate::policy::Policy;

/// Largest ring of `u16` counts: the default precision (60) needs 61 slots.
pub const INLINE_SLOTS: usize = 61;
/// Non-empty buckets a sparse state holds before it is promoted to a ring.
pub const SPARSE_BUCKETS: usize = 4;

/// One key's sliding-window state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindow {
    /// Bucket width the ring was built with. A reload that changes the policy's geometry folds
    /// the old counts into the current bucket (see [`SlidingWindow::regroup`]).
    bucket_ns: u64,
    /// Index (`time / bucket_ns`) of the newest bucket in the ring; time never goes back past it.
    newest: u64,
    /// When every counted admission has aged out: when the newest admission's bucket leaves.
    idle_at: u64,
    counts: Counts,
}

/// The bucket counts. Ring position of bucket `b` is always `b mod slots`; `head` is the
/// position of the newest bucket (`newest mod slots`), kept so that a check within the newest
/// bucket needs no division. Every variant is 16 bytes: the rings are boxed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Counts {
    /// At most [`SPARSE_BUCKETS`] non-empty buckets of a ring of `len` ≤ [`INLINE_SLOTS`] slots:
    /// `pos[..used]` and `counts[..used]` (every count > 0).
    Sparse {
        len: u8,
        head: u8,
        used: u8,
        pos: [u8; SPARSE_BUCKETS],
        counts: [u16; SPARSE_BUCKETS],
    },
    /// A ring of `len` ≤ [`INLINE_SLOTS`] slots of `u16`, with its running total. Admissions
    /// into the newest bucket are held in `pending` (counted in `total`, added to the ring's
    /// head slot before any other step), so the common check touches only the state's own
    /// 40 bytes, not the boxed ring.
    Ring16 {
        len: u8,
        head: u16,
        total: u16,
        pending: u16,
        ring: Box<[u16; INLINE_SLOTS]>,
    },
    /// Any other policy: a ring of `u32`.
    Ring32(Box<Wide>),
}

/// A ring of `u32` counts with its head and running total.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wide {
    head: u32,
    total: u32,
    ring: Box<[u32]>,
}

impl Counts {
    fn for_policy(policy: &Policy) -> Self {
        let slots = policy.slots() as usize;
        if slots <= INLINE_SLOTS && policy.requests() <= u32::from(u16::MAX) {
            Counts::Sparse {
                len: slots as u8,
                head: 0,
                used: 0,
                pos: [0; SPARSE_BUCKETS],
                counts: [0; SPARSE_BUCKETS],
            }
        } else {
            Counts::Ring32(Box::new(Wide {
                head: 0,
                total: 0,
                ring: vec![0; slots].into_boxed_slice(),
            }))
        }
    }

    fn fits(&self, policy: &Policy) -> bool {
        match self {
            Counts::Sparse { len, .. } | Counts::Ring16 { len, .. } => {
                usize::from(*len) == policy.slots() as usize
                    && policy.requests() <= u32::from(u16::MAX)
            }
            Counts::Ring32(wide) => wide.ring.len() == policy.slots() as usize,
        }
    }

    fn total(&self) -> u64 {
        match self {
            Counts::Sparse { used, counts, .. } => counts[..usize::from(*used)]
                .iter()
                .map(|&c| u64::from(c))
                .sum(),
            Counts::Ring16 { total, .. } => u64::from(*total),
            Counts::Ring32(wide) => u64::from(wide.total),
        }
    }
}

/// A count cell: `u16` inline, `u32` boxed. Counts never exceed N, which picks the width.
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
        let g = policy.bucket_ns();
        let newest = (now_ns / g).max(self.newest * self.bucket_ns / g);
        let mut fresh = Self::fresh(policy);
        fresh.newest = newest;
        let slot = (newest % u64::from(policy.slots())) as usize;
        match &mut fresh.counts {
            Counts::Sparse { head, .. } => *head = slot as u8,
            Counts::Ring16 { head, .. } => *head = slot as u16,
            Counts::Ring32(wide) => wide.head = slot as u32,
        }
        if held > 0 {
            if let Counts::Sparse {
                used, pos, counts, ..
            } = &mut fresh.counts
                && held <= u64::from(u16::MAX)
            {
                *used = 1;
                pos[0] = slot as u8;
                counts[0] = held as u16;
            } else {
                let mut ring = vec![0u32; policy.slots() as usize];
                ring[slot] = u32::put(held);
                fresh.counts = Counts::Ring32(Box::new(Wide {
                    head: slot as u32,
                    total: u32::put(held),
                    ring: ring.into_boxed_slice(),
                }));
            }
            fresh.idle_at = (newest + 1) * g + policy.window_ns();
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

    fn step(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision {
        if self.bucket_ns != policy.bucket_ns() || !self.counts.fits(policy) {
            self.regroup(policy, now_ns);
        }
        let header = Header {
            newest: &mut self.newest,
            idle_at: &mut self.idle_at,
        };
        match &mut self.counts {
            Counts::Sparse {
                len,
                head,
                used,
                pos,
                counts,
            } => {
                let n = usize::from(*used);
                // An admission into the newest bucket, where its count is kept or has room.
                let at = pos[..n].iter().position(|&p| p == *head);
                if at.is_some() || n < SPARSE_BUCKETS {
                    let mut total = counts[..n].iter().fold(0u16, |t, &c| t.saturating_add(c));
                    let mut added = 0;
                    if let Some(step) = admit_in_newest(
                        header.newest,
                        header.idle_at,
                        &mut total,
                        &mut added,
                        policy,
                        now_ns,
                        hits,
                    ) {
                        match at {
                            Some(i) => counts[i] += added,
                            None => {
                                pos[n] = *head;
                                counts[n] = added;
                                *used += 1;
                            }
                        }
                        return step;
                    }
                }
                // Otherwise unpack onto the stack, step the ring, pack again (or promote).
                let slots = usize::from(*len);
                let mut ring = [0u16; INLINE_SLOTS];
                let mut total = 0u16;
                for (&p, &c) in pos.iter().zip(counts.iter()).take(usize::from(*used)) {
                    ring[usize::from(p)] = c;
                    total = total.saturating_add(c);
                }
                let mut ring_head = u16::from(*head);
                let step = step_ring(
                    &mut ring[..slots],
                    (&mut ring_head, &mut total),
                    header,
                    policy,
                    now_ns,
                    hits,
                );
                let mut n = 0;
                for (p, &c) in ring[..slots].iter().enumerate() {
                    if c == 0 {
                        continue;
                    }
                    if n == SPARSE_BUCKETS {
                        self.counts = Counts::Ring16 {
                            len: slots as u8,
                            head: ring_head,
                            total,
                            pending: 0,
                            ring: Box::new(ring),
                        };
                        return step;
                    }
                    pos[n] = p as u8;
                    counts[n] = c;
                    n += 1;
                }
                *used = n as u8;
                *head = ring_head as u8;
                step
            }
            Counts::Ring16 {
                len,
                head,
                total,
                pending,
                ring,
            } => {
                if let Some(step) = admit_in_newest(
                    header.newest,
                    header.idle_at,
                    total,
                    pending,
                    policy,
                    now_ns,
                    hits,
                ) {
                    return step;
                }
                if *pending > 0 {
                    let slot = &mut ring[usize::from(*head)];
                    *slot = slot.saturating_add(*pending);
                    *pending = 0;
                }
                step_ring(
                    &mut ring[..usize::from(*len)],
                    (head, total),
                    header,
                    policy,
                    now_ns,
                    hits,
                )
            }
            Counts::Ring32(wide) => {
                let Wide { head, total, ring } = &mut **wide;
                step_ring(ring, (head, total), header, policy, now_ns, hits)
            }
        }
    }

    fn idle_at(&self) -> u64 {
        self.idle_at
    }
}

struct Header<'a> {
    newest: &'a mut u64,
    idle_at: &'a mut u64,
}

/// [`step_ring`]'s answer, without the ring, for the common case it can be given from the totals
/// alone: `hits > 0` admitted into the newest bucket, with no bucket of the ring outside the
/// window (so the counted sum is the total). `None` when the case is another one.
#[inline]
fn admit_in_newest(
    newest: &mut u64,
    idle_at: &mut u64,
    total: &mut u16,
    pending: &mut u16,
    policy: &Policy,
    now_ns: u64,
    hits: u32,
) -> Option<StepDecision> {
    let g = policy.bucket_ns();
    let newest_start = *newest * g;
    let now = now_ns.max(newest_start);
    let window = policy.window_ns();
    let limit = u64::from(policy.requests());
    if hits == 0 || now - newest_start >= g {
        return None;
    }
    // What `step_ring` computes as `span == slots` (see there), or the first window.
    let rem = policy.window_rem_ns();
    if now >= window && rem > 0 && now - newest_start >= rem {
        return None;
    }
    let used = u64::from(*total) + u64::from(hits);
    if used > limit {
        return None;
    }
    *total = used as u16;
    *pending += hits as u16;
    *idle_at = (*newest + 1) * g + window;
    Some(StepDecision::new(
        true,
        policy,
        limit - used,
        now,
        *idle_at - now,
        0,
    ))
}

fn step_ring<S: Slot>(
    ring: &mut [S],
    (head, total): (&mut S, &mut S),
    header: Header<'_>,
    policy: &Policy,
    now_ns: u64,
    hits: u32,
) -> StepDecision {
    let g = policy.bucket_ns();
    let window = policy.window_ns();
    let limit = u64::from(policy.requests());
    let slots = ring.len();
    let Header { newest, idle_at } = header;

    // Time never runs backwards for a key: a thread that read the clock earlier but took the
    // lock later is treated as arriving at the newest bucket's start.
    let newest_start = *newest * g;
    let now = now_ns.max(newest_start);
    // Bucket index and ring position of `now`, dividing only when the bucket has changed.
    let (current, here) = if now - newest_start < g {
        (*newest, head.get() as usize)
    } else {
        let current = now / g;
        let ahead = current - *newest;
        let here = if ahead < slots as u64 {
            let here = head.get() as usize + ahead as usize;
            if here >= slots { here - slots } else { here }
        } else {
            (current % slots as u64) as usize
        };
        (current, here)
    };
    *head = S::put(here as u64);
    let mut sum = total.get();
    if current > *newest {
        if sum > 0 {
            let stale = (current - *newest).min(slots as u64) as usize;
            for age in 0..stale {
                let slot = &mut ring[back(here, age, slots)];
                sum -= slot.get();
                *slot = S::put(0);
            }
        }
        *newest = current;
    }

    // Buckets overlapping [now − T, now]: `span` of them, at most `slots` by construction. The
    // ring may hold older ones (one when g does not divide T; more only in the first window
    // after the clock's origin), which do not count. With T = q·g + r and `now` at offset o
    // in its bucket, (now − T)/g = current − q − [o < r], so no division is needed.
    let span = if now >= window {
        let offset = now - current * g;
        let rem = policy.window_rem_ns();
        slots - usize::from(rem > 0) + usize::from(offset < rem)
    } else {
        current as usize + 1
    };
    let mut used = sum;
    // Before the first full window (`now < T`, the first minute of a limiter's clock at the
    // default T) the slots past `span` would hold buckets before the clock's origin, which never
    // existed: they are zero, and walking them on every check cost up to a whole ring's loads.
    if sum > 0 && now >= window {
        for age in span..slots {
            used -= ring[back(here, age, slots)].get();
        }
    }

    let want = demand(hits);
    let allowed = used + want <= limit;
    if allowed && hits > 0 {
        let h = u64::from(hits);
        ring[here] = S::put(ring[here].get() + h);
        sum += h;
        used += h;
        *idle_at = (current + 1) * g + window;
    }
    *total = S::put(sum);

    // The bucket `age` buckets before the current one stops counting once
    // now − T ≥ (current − age + 1)·g; the newest admission's bucket is the last to leave.
    let leaves_at = |age: usize| ((current - age as u64 + 1) * g + window).saturating_sub(now);
    let reset_after = if used > 0 {
        idle_at.saturating_sub(now)
    } else {
        0
    };
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

/// The ring position `age` buckets before position `here`.
#[inline]
fn back(here: usize, age: usize, slots: usize) -> usize {
    if age <= here {
        here - age
    } else {
        here + slots - age
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
        assert!(matches!(s.counts, Counts::Ring32(_)));
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
    fn a_sparse_state_steps_like_a_ring_and_is_promoted_when_full() {
        // Odd geometry (7 s in 60 buckets) and a limit the sparse buckets cannot hold.
        for (n, secs) in [(50, 7), (3, 60), (400, 60)] {
            let p = policy(n, secs, 60);
            let mut sparse = SlidingWindow::fresh(&p);
            assert!(matches!(sparse.counts, Counts::Sparse { .. }));
            let mut ring = SlidingWindow::fresh(&p);
            ring.counts = Counts::Ring16 {
                len: p.slots() as u8,
                head: 0,
                total: 0,
                pending: 0,
                ring: Box::new([0; INLINE_SLOTS]),
            };
            let mut t = 2 * SEC + 12_345;
            let mut promoted = false;
            for i in 0..2_000u64 {
                let hits = [1, 1, 0, 2, 1, 3][(i % 6) as usize];
                let a = sparse.step(&p, t, hits);
                let b = ring.step(&p, t, hits);
                assert_eq!(a, b, "n {n} step {i} at {t}");
                assert_eq!(sparse.idle_at(), ring.idle_at());
                assert_eq!(sparse.counts.total(), ring.counts.total());
                promoted |= matches!(sparse.counts, Counts::Ring16 { .. });
                // Mostly small steps, now and then a long pause that empties the window.
                t += if i % 97 == 0 {
                    3 * secs * SEC
                } else {
                    1 + 61_000_007 * (i % 7)
                };
            }
            // A limit of 3 never holds more buckets than a sparse state keeps.
            assert_eq!(promoted, n > SPARSE_BUCKETS as u64, "n {n}");
        }
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
