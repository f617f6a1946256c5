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
        let (policy, now, hits) = (request.policy, request.now_ns, request.hits);
        match policy.algorithm() {
            Algorithm::SlidingWindow { .. } => self.windows.check(id, policy, now, hits),
            Algorithm::SlidingLog => self.logs.check(id, policy, now, hits),
            Algorithm::FixedWindow => self.fixed.check(id, policy, now, hits),
            Algorithm::TokenBucket { .. } => self.buckets.check(id, policy, now, hits),
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

#[derive(Debug)]
struct Cell<S> {
    inner: Mutex<CellState<S>>,
}

#[derive(Debug)]
struct CellState<S> {
    state: S,
    /// Set by the sweep just before it removes the cell; a check that finds it set looks the
    /// key up again instead of counting into a cell no longer in the map.
    retired: bool,
}

impl<S> Cell<S> {
    fn new(state: S) -> Self {
        Self {
            inner: Mutex::new(CellState {
                state,
                retired: false,
            }),
        }
    }

    /// The state is plain data and no code under the lock can leave it half-updated; a panic
    /// elsewhere while holding it must not wedge the key.
    fn lock(&self) -> MutexGuard<'_, CellState<S>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: LimitState> Table<S> {
    #[inline]
    fn check(&self, id: u128, policy: &crate::Policy, now_ns: u64, hits: u32) -> Decision {
        let map = self.map.pin();
        let mut now = now_ns;
        loop {
            let cell = match map.get(&id) {
                Some(cell) => cell,
                // A read of a key never seen needs no cell.
                None if hits == 0 => return S::fresh(policy).check(policy, now, 0),
                None => map.get_or_insert_with(id, || Cell::new(S::fresh(policy))),
            };
            // Loaded after the lookup, so it covers any sweep that removed an earlier cell of
            // this key, whether we find the key missing, re-created, or retired under us.
            now = now.max(self.swept_at.load(Ordering::Acquire));
            let mut guard = cell.lock();
            if !guard.retired {
                return guard.state.check(policy, now, hits);
            }
            drop(guard);
            // Swept under us: make sure it is gone, then start again from a fresh cell.
            let _ = map.remove_if(&id, |_, v| std::ptr::eq(v, cell));
        }
    }

    fn sweep(&self, now_ns: u64) -> usize {
        self.swept_at.fetch_max(now_ns, Ordering::AcqRel);
        let map = self.map.pin();
        let before = map.len();
        map.retain(|_, cell| {
            let mut guard = match cell.inner.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // In use right now, so not idle.
                Err(TryLockError::WouldBlock) => return true,
            };
            if guard.state.idle_at() <= now_ns {
                guard.retired = true;
                false
            } else {
                true
            }
        });
        before.saturating_sub(map.len())
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
