//! The in-memory store: a lock-free concurrent map from a key's 128-bit fingerprint to a cell
//! holding its algorithm state.
//!
//! - **Lookup** is lock-free ([`papaya`]: readers never block, and the table resizes
//!   incrementally, so a growing key set causes no latency spike).
//! - **Each key** has its own small mutex around its state: checks of one key are serialised and
//!   exact, checks of different keys never contend. The critical section is a few dozen
//!   instructions and touches only the key's own cache lines.
//! - **Reclamation** is a sweep, run by the [`Limiter`](crate::Limiter)'s background thread (or by
//!   hand): a cell whose every admission has aged out ([`LimitState::idle_at`]) is
//!   indistinguishable from a fresh one and is removed, so memory follows the active key set. A
//!   check that raced with the sweep and finds its cell retired looks the key up again.
//! - Each algorithm has its own table, so a cell is exactly as large as its state (a
//!   default-precision sliding window is one allocation of under 200 bytes).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crate::algorithm::{
    Algorithm, FixedWindow, LimitState, SlidingLog, SlidingWindow, TokenBucket,
};
use crate::decision::Decision;
use crate::key::Fingerprinter;
use crate::store::{Store, StoreError, StoreRequest};

/// The lock-free in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    fingerprints: Fingerprinter,
    /// Bumped by every rules change; see [`Store::rules_epoch`].
    rules_epoch: AtomicU64,
    windows: Table<SlidingWindow>,
    logs: Table<SlidingLog>,
    fixed: Table<FixedWindow>,
    buckets: Table<TokenBucket>,
}

impl MemoryStore {
    /// An empty store with a fresh random fingerprint key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks and counts synchronously: the embedded fast path.
    #[inline]
    pub fn check_now(&self, request: &StoreRequest<'_>) -> Decision {
        let id = self.fingerprints.fingerprint(&request.key);
        let epoch = &self.rules_epoch;
        match request.policy.algorithm() {
            Algorithm::SlidingWindow { .. } => self.windows.check(id, request, epoch),
            Algorithm::SlidingLog => self.logs.check(id, request, epoch),
            Algorithm::FixedWindow => self.fixed.check(id, request, epoch),
            Algorithm::TokenBucket { .. } => self.buckets.check(id, request, epoch),
        }
    }

    /// Removes every key whose admissions have all aged out by `now_ns`; returns how many.
    pub fn sweep(&self, now_ns: u64) -> usize {
        self.windows.sweep(now_ns)
            + self.logs.sweep(now_ns)
            + self.fixed.sweep(now_ns)
            + self.buckets.sweep(now_ns)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.windows.map.len() + self.logs.map.len() + self.fixed.map.len() + self.buckets.map.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    fn check<'a>(
        &'a self,
        request: StoreRequest<'a>,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + 'a {
        std::future::ready(Ok(self.check_now(&request)))
    }

    fn rules_epoch(&self) -> u64 {
        self.rules_epoch.load(Ordering::SeqCst)
    }

    fn rules_changed(&self) {
        self.rules_epoch.fetch_add(1, Ordering::SeqCst);
        self.windows.forget_denials();
        self.logs.forget_denials();
        self.fixed.forget_denials();
        self.buckets.forget_denials();
    }
}

/// One algorithm's keys.
#[derive(Debug)]
struct Table<S> {
    map: papaya::HashMap<u128, Cell<S>, FingerprintHash>,
    /// `now` of the latest sweep. Every check uses at least this time: a sweep judges a cell
    /// expired only from its own `now` on, so a clock reading taken before the sweep must not
    /// count into a fresh cell as if the swept admissions had never been. (The sweep's time is
    /// never later than the real time of a check that runs after it.)
    swept_at: AtomicU64,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Self {
            map: papaya::HashMap::builder().hasher(FingerprintHash).build(),
            swept_at: AtomicU64::new(0),
        }
    }
}

/// `denied_until` of a cell the sweep has removed.
const RETIRED: u64 = u64::MAX;

/// One key: its algorithm state behind a mutex, and two atomics read without the lock.
#[derive(Debug)]
struct Cell<S> {
    /// While `now < denied_until`, not even one hit can be admitted (nothing can change that but
    /// a rules change, which clears it): such checks are answered without the lock. Written
    /// under the lock when a check of at most one hit is denied; 0 when no denial is cached;
    /// [`RETIRED`] once the sweep has judged the cell idle and removed it.
    denied_until: AtomicU64,
    /// The state's [`LimitState::idle_at`], published after every admission: the sweep reads it
    /// without locking, and a cached denial's `reset_after` is derived from it.
    idle_at: AtomicU64,
    state: Mutex<S>,
}

impl<S> Cell<S> {
    fn new(state: S) -> Self {
        Self {
            denied_until: AtomicU64::new(0),
            idle_at: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }

    /// The state is plain data and no code under the lock can leave it half-updated; a panic
    /// elsewhere while holding it must not wedge the key.
    fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: LimitState> Table<S> {
    #[inline]
    fn check(&self, id: u128, request: &StoreRequest<'_>, epoch: &AtomicU64) -> Decision {
        let (policy, hits) = (request.policy, request.hits);
        let map = self.map.pin();
        let mut now = request.now_ns;
        loop {
            let cell = match map.get(&id) {
                Some(cell) => cell,
                // A read of a key never seen needs no cell.
                None if hits == 0 => return S::fresh(policy).check(policy, now, 0),
                // `try_insert`, unlike `get_or_insert_with`, helps finish a pending resize of
                // the table; without that, lookups walk a chain of old tables until a sweep.
                None => match map.try_insert(id, Cell::new(S::fresh(policy))) {
                    Ok(cell) => cell,
                    Err(occupied) => occupied.current,
                },
            };

            // Repeated denials (a client hammering a full key) cost two atomic loads.
            let denied_until = cell.denied_until.load(Ordering::Acquire);
            if hits <= 1 && now < denied_until && denied_until != RETIRED {
                let idle_at = cell.idle_at.load(Ordering::Relaxed);
                return Decision::new(
                    false,
                    policy.requests(),
                    0,
                    idle_at.saturating_sub(now),
                    denied_until - now,
                );
            }

            // Loaded after the lookup, so it covers any sweep that removed an earlier cell of
            // this key, whether we find the key missing, re-created, or retired under us.
            now = now.max(self.swept_at.load(Ordering::Acquire));
            let mut state = cell.lock();
            if cell.denied_until.load(Ordering::Relaxed) == RETIRED {
                drop(state);
                // Swept under us: make sure it is gone, then start again from a fresh cell.
                let _ = map.remove_if(&id, |_, v| std::ptr::eq(v, cell));
                continue;
            }
            let step = state.step(policy, now, hits);
            if step.decision.allowed {
                if hits > 0 {
                    cell.idle_at.store(state.idle_at(), Ordering::Relaxed);
                }
            } else if hits <= 1 {
                cell.denied_until.store(step.retry_at_ns, Ordering::SeqCst);
                // Decided under rules that have since been replaced: the new ones may admit.
                // (`rules_changed` clears every cell after bumping the epoch, so a denial
                // published before this load is cleared by it, and one after is cleared here.)
                if epoch.load(Ordering::SeqCst) != request.rules_epoch {
                    cell.denied_until.store(0, Ordering::SeqCst);
                }
            }
            return step.decision;
        }
    }

    fn sweep(&self, now_ns: u64) -> usize {
        self.swept_at.fetch_max(now_ns, Ordering::AcqRel);
        let map = self.map.pin();
        let before = map.len();
        map.retain(|_, cell| {
            // Most cells are active: skip them without touching their lock.
            if cell.idle_at.load(Ordering::Relaxed) > now_ns {
                return true;
            }
            let state = match cell.state.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // In use right now, so not idle.
                Err(TryLockError::WouldBlock) => return true,
            };
            if state.idle_at() <= now_ns {
                cell.denied_until.store(RETIRED, Ordering::Release);
                false
            } else {
                true
            }
        });
        before.saturating_sub(map.len())
    }

    /// Drops every cached denial (the rules changed; the new ones may admit).
    fn forget_denials(&self) {
        for (_, cell) in self.map.pin().iter() {
            let _ = cell
                .denied_until
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                    (d != RETIRED && d != 0).then_some(0)
                });
        }
    }
}

/// Map keys are already uniform keyed hashes: fold them instead of hashing them again.
#[derive(Debug, Clone, Copy, Default)]
struct FingerprintHash;

impl BuildHasher for FingerprintHash {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

#[derive(Debug)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if the key type changes; FNV-1a keeps it correct, if slower.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{CounterKey, RuleLevel};
    use crate::policy::Policy;
    use crate::store::Store;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    fn request<'a>(policy: &'a Policy, user: &'a str, now_ns: u64, hits: u32) -> StoreRequest<'a> {
        StoreRequest {
            key: CounterKey {
                domain: "drl",
                level: RuleLevel::Default,
                user_id: user,
                endpoint: "/e",
            },
            policy,
            hits,
            now_ns,
            rules_epoch: 0,
        }
    }

    #[test]
    fn every_algorithm_keeps_keys_apart_and_counts() {
        for algorithm in [
            Algorithm::default(),
            Algorithm::SlidingLog,
            Algorithm::FixedWindow,
            Algorithm::TokenBucket { burst: None },
        ] {
            let store = MemoryStore::new();
            let p = Policy::per(2, Duration::from_secs(10), algorithm).unwrap();
            assert!(store.check_now(&request(&p, "a", SEC, 2)).allowed);
            assert!(
                !store.check_now(&request(&p, "a", SEC, 1)).allowed,
                "{algorithm:?}"
            );
            assert!(store.check_now(&request(&p, "b", SEC, 1)).allowed);
            assert_eq!(store.len(), 2);
        }
    }

    #[test]
    fn reads_of_unknown_keys_allocate_nothing() {
        let store = MemoryStore::new();
        let p = Policy::per(2, Duration::from_secs(10), Algorithm::default()).unwrap();
        let d = store.check_now(&request(&p, "a", SEC, 0));
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert!(store.is_empty());
    }

    #[test]
    fn sweep_removes_only_idle_keys_and_counts_restart_fresh() {
        let store = MemoryStore::new();
        let p = Policy::per(1, Duration::from_secs(10), Algorithm::default()).unwrap();
        assert!(store.check_now(&request(&p, "old", SEC, 1)).allowed);
        assert!(store.check_now(&request(&p, "new", 9 * SEC, 1)).allowed);
        assert_eq!(store.sweep(11 * SEC), 0);
        assert_eq!(store.sweep(12 * SEC), 1);
        assert_eq!(store.len(), 1);
        assert!(!store.check_now(&request(&p, "new", 12 * SEC, 1)).allowed);
        assert!(store.check_now(&request(&p, "old", 12 * SEC, 1)).allowed);
    }

    #[test]
    fn cached_denials_answer_exactly_like_the_state() {
        // Odd geometry (7 s, 60 buckets of 116 666 667 ns) so retry times fall between
        // milliseconds; the lock-free answer must match the algorithm's to the nanosecond.
        for algorithm in [
            Algorithm::default(),
            Algorithm::SlidingLog,
            Algorithm::FixedWindow,
            Algorithm::TokenBucket { burst: Some(2) },
        ] {
            let p = Policy::per(3, Duration::from_secs(7), algorithm).unwrap();
            let store = MemoryStore::new();
            let mut model = <SlidingWindow as LimitState>::fresh(&p);
            let mut log = SlidingLog::fresh(&p);
            let mut fixed = FixedWindow::fresh(&p);
            let mut bucket = TokenBucket::fresh(&p);
            let mut t = 3 * SEC + 12_345;
            for i in 0..400u64 {
                let hits = [1, 1, 0, 2][(i % 4) as usize];
                let got = store.check_now(&request(&p, "k", t, hits));
                let want = match algorithm {
                    Algorithm::SlidingWindow { .. } => model.step(&p, t, hits),
                    Algorithm::SlidingLog => log.step(&p, t, hits),
                    Algorithm::FixedWindow => fixed.step(&p, t, hits),
                    Algorithm::TokenBucket { .. } => bucket.step(&p, t, hits),
                };
                assert_eq!(got, want.decision, "{algorithm:?} step {i} at {t}");
                // After a denial, probe the edge of the cached window: one nanosecond before
                // the retry time, or exactly at it.
                t = if !want.decision.allowed && hits <= 1 && i % 3 != 0 {
                    want.retry_at_ns - (i % 2)
                } else {
                    t + 37_000_001 * (i % 5)
                };
            }
        }
    }

    #[test]
    fn a_rules_change_forgets_cached_denials() {
        let clock = crate::ManualClock::new(SEC);
        let one = Policy::per(1, Duration::from_secs(60), Algorithm::default()).unwrap();
        let limiter = crate::Limiter::builder(crate::Rules::only_default(one))
            .clock(clock)
            .sweep_interval(None)
            .build();
        assert!(limiter.check_and_increment("u", "/e"));
        assert!(!limiter.check_and_increment("u", "/e"));
        assert!(!limiter.check_and_increment("u", "/e"));
        let five = Policy::per(5, Duration::from_secs(60), Algorithm::default()).unwrap();
        limiter.set_rules(crate::Rules::only_default(five));
        let d = limiter.check("u", "/e", 1).unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, 3);
    }

    #[test]
    fn a_denial_decided_under_replaced_rules_is_not_cached() {
        let store = MemoryStore::new();
        let one = Policy::per(1, Duration::from_secs(60), Algorithm::default()).unwrap();
        assert!(store.check_now(&request(&one, "u", SEC, 1)).allowed);
        // The limiter read epoch 0, then the rules changed before its check reached the store.
        store.rules_changed();
        assert!(!store.check_now(&request(&one, "u", SEC, 1)).allowed);
        let five = Policy::per(5, Duration::from_secs(60), Algorithm::default()).unwrap();
        let mut fresh = request(&five, "u", SEC, 1);
        fresh.rules_epoch = store.rules_epoch();
        assert!(store.check_now(&fresh).allowed);
    }

    #[test]
    fn the_async_store_answers_like_the_sync_path() {
        let store = MemoryStore::new();
        let p = Policy::per(1, Duration::from_secs(10), Algorithm::default()).unwrap();
        let fut = Store::check(&store, request(&p, "a", SEC, 1));
        let d = futures_lite_block_on(fut).unwrap();
        assert!(d.allowed);
        assert!(!store.check_now(&request(&p, "a", SEC, 1)).allowed);
    }

    /// Polls a future that is ready at once (the memory store's always is).
    fn futures_lite_block_on<F: Future>(fut: F) -> F::Output {
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};
        let mut fut = pin!(fut);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the memory store's future is always ready"),
        }
    }
}
