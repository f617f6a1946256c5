//! The in-memory store: a lock-free concurrent map from a key's 128-bit fingerprint to a cell
//! holding its algorithm state.
//!
//! - **Lookup** is lock-free ([`papaya`]: readers never block, and the table resizes
//!   incrementally, so a growing key set causes no latency spike).
//! - **Each key** has its own small mutex around its state: checks of one key are serialised and
//!   exact, checks of different keys never contend. The critical section is a few dozen
//!   instructions and touches only the key's own cache lines.
//! - **Repeated denials skip the lock, and the map.** When a check of at most one hit is denied,
//!   the algorithm also tells the exact time before which not even one hit can be admitted. The
//!   cell publishes it in an atomic, and the checking thread remembers it in a small per-thread
//!   memo, with the key's identity; until then the same key is answered from either without
//!   locking (a client hammering a full key costs a cheap hash, a comparison of its identity and
//!   a thread-local read: not even the fingerprint). Both are tied to the rules epoch, so a
//!   rules change voids them (see [`MemoryStore::rules_changed`](Store::rules_changed)).
//! - **Reclamation** is a sweep, run by the [`Limiter`](crate::Limiter)'s background thread (or by
//!   hand): a cell whose every admission has aged out ([`LimitState::idle_at`]) is
//!   indistinguishable from a fresh one and is removed, so memory follows the active key set. A
//!   check that raced with the sweep and finds its cell retired looks the key up again.
//! - Each algorithm has its own table, so a cell is exactly as large as its state (a
//!   default-precision sliding window's entry, fingerprint and cell, is one 72-byte allocation).

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crate::algorithm::{
    Algorithm, FixedWindow, LimitState, SlidingLog, SlidingWindow, StepDecision, TokenBucket,
};
use crate::decision::Decision;
use crate::key::{CounterKey, Fingerprinter};
use crate::policy::Policy;
use crate::store::{Store, StoreError, StoreRequest};

/// The lock-free in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    /// Distinguishes stores in the per-thread denial memo.
    id: u64,
    fingerprints: Fingerprinter,
    epochs: Epochs,
    windows: Table<SlidingWindow>,
    logs: Table<SlidingLog>,
    fixed: Table<FixedWindow>,
    buckets: Table<TokenBucket>,
}

/// Rules epochs: `current` is bumped when a rules change starts, `settled` catches up once every
/// cached denial of the old rules is gone.
#[derive(Debug, Default)]
struct Epochs {
    current: AtomicU64,
    settled: AtomicU64,
}

/// Store ids: unique per process, never reused.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            fingerprints: Fingerprinter::new(),
            epochs: Epochs::default(),
            windows: Table::default(),
            logs: Table::default(),
            fixed: Table::default(),
            buckets: Table::default(),
        }
    }
}

impl MemoryStore {
    /// An empty store with a fresh random fingerprint key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks and counts synchronously: the embedded fast path.
    #[inline]
    pub fn check_now(&self, request: &StoreRequest<'_>) -> Decision {
        match self.answer(request, true) {
            Answer::Decided(decision) => decision,
            Answer::Denied(denial) => denial.decision(request.policy.requests(), request.now_ns),
            // Only `admit_now` asks for answers without times.
            Answer::Refused => Decision::new(false, request.policy.requests(), 0, 0, 0),
        }
    }

    /// [`MemoryStore::check_now`] reduced to "admitted?": a cached denial answers without
    /// computing retry and reset times (the `check_and_increment` path).
    #[inline]
    pub fn admit_now(&self, request: &StoreRequest<'_>) -> bool {
        match self.answer(request, false) {
            Answer::Decided(decision) => decision.allowed,
            Answer::Denied(_) | Answer::Refused => false,
        }
    }

    /// The answer to `request`; `timed`: a cached denial must come with its retry and reset
    /// times ([`Answer::Denied`], not [`Answer::Refused`]).
    #[inline]
    fn answer(&self, request: &StoreRequest<'_>, timed: bool) -> Answer {
        // The memo is looked up before the fingerprint is computed: a hammered key is answered
        // for the cost of a cheap hash and a comparison of its identity.
        if request.hits <= 1
            && let Some(answer) = memo_lookup(self.id, request, timed)
        {
            return answer;
        }
        let id = Fingerprint::from(self.fingerprints.fingerprint(&request.key));
        let (answer, denial) = match request.policy.algorithm() {
            Algorithm::SlidingWindow { .. } => self.windows.check(id, request, &self.epochs, timed),
            Algorithm::SlidingLog => self.logs.check(id, request, &self.epochs, timed),
            Algorithm::FixedWindow => self.fixed.check(id, request, &self.epochs, timed),
            Algorithm::TokenBucket { .. } => self.buckets.check(id, request, &self.epochs, timed),
        };
        if let Some(denial) = denial {
            memo_insert(self.id, &request.key, request.rules_epoch, denial);
        }
        answer
    }

    /// [`Store::check_all`], synchronously: the cells of all keys are locked in fingerprint
    /// order (so two such checks cannot deadlock, and single-key checks lock one cell only),
    /// each algorithm is stepped on a copy of its state, and the copies replace the states only
    /// if every step admitted. Under the locks no other check can see or change any of the
    /// counters in between: the whole is one atomic step.
    pub fn check_all_now(&self, requests: &[StoreRequest<'_>]) -> Vec<Decision> {
        match requests {
            [] => return Vec::new(),
            [one] => return vec![self.check_now(one)],
            _ => {}
        }
        let ids: Vec<u128> = requests
            .iter()
            .map(|r| self.fingerprints.fingerprint(&r.key))
            .collect();
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_unstable_by_key(|&i| ids[i]);
        // One entry per distinct counter, in lock order, with the hits of all its requests.
        let mut counters: Vec<(usize, u32)> = Vec::with_capacity(requests.len());
        let mut counter_of = vec![0; requests.len()];
        for &i in &order {
            match counters.last_mut() {
                Some((first, hits)) if ids[*first] == ids[i] => {
                    *hits = hits.saturating_add(requests[i].hits);
                }
                _ => counters.push((i, requests[i].hits)),
            }
            counter_of[i] = counters.len() - 1;
        }
        let guards = (
            self.windows.map.guard(),
            self.logs.map.guard(),
            self.fixed.map.guard(),
            self.buckets.map.guard(),
        );
        let steps = loop {
            let mut held: Vec<Box<dyn Held + '_>> = Vec::with_capacity(counters.len());
            for &(first, _) in &counters {
                let (id, policy) = (Fingerprint::from(ids[first]), requests[first].policy);
                held.push(match policy.algorithm() {
                    Algorithm::SlidingWindow { .. } => self.windows.hold(id, policy, &guards.0),
                    Algorithm::SlidingLog => self.logs.hold(id, policy, &guards.1),
                    Algorithm::FixedWindow => self.fixed.hold(id, policy, &guards.2),
                    Algorithm::TokenBucket { .. } => self.buckets.hold(id, policy, &guards.3),
                });
            }
            if held.iter().any(|h| h.retired()) {
                // Swept under us: drop every lock, make sure the retired cells are gone, and
                // start again with fresh ones.
                let retired: Vec<usize> = (0..held.len()).filter(|&c| held[c].retired()).collect();
                drop(held);
                for c in retired {
                    let (first, _) = counters[c];
                    let id = Fingerprint::from(ids[first]);
                    match requests[first].policy.algorithm() {
                        Algorithm::SlidingWindow { .. } => self.windows.forget(id, &guards.0),
                        Algorithm::SlidingLog => self.logs.forget(id, &guards.1),
                        Algorithm::FixedWindow => self.fixed.forget(id, &guards.2),
                        Algorithm::TokenBucket { .. } => self.buckets.forget(id, &guards.3),
                    }
                }
                continue;
            }
            let steps: Vec<StepDecision> = held
                .iter_mut()
                .zip(&counters)
                .map(|(h, &(first, hits))| {
                    let r = &requests[first];
                    h.trial(r.policy, r.now_ns, hits)
                })
                .collect();
            let admitted = steps.iter().all(|s| s.decision.allowed);
            for ((h, step), &(first, hits)) in held.iter_mut().zip(&steps).zip(&counters) {
                if admitted {
                    if hits > 0 {
                        h.commit();
                    }
                } else if !step.decision.allowed
                    && hits <= 1
                    && self.epochs.current.load(Ordering::SeqCst) == requests[first].rules_epoch
                {
                    h.publish_denial(step.retry_at_ns);
                }
            }
            break steps;
        };
        counter_of.iter().map(|&c| steps[c].decision).collect()
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

    fn check_all<'a>(
        &'a self,
        requests: &'a [StoreRequest<'a>],
    ) -> impl Future<Output = Result<Vec<Decision>, StoreError>> + Send + 'a {
        std::future::ready(Ok(self.check_all_now(requests)))
    }

    fn rules_epoch(&self) -> u64 {
        self.epochs.current.load(Ordering::SeqCst)
    }

    /// Voids every cached denial. The epoch is bumped first, so a check still deciding under the
    /// old rules (it read the old epoch) does not publish its denial: it compares epochs under
    /// the cell's lock, and the clearing walk takes each cell's lock too, so either the walk
    /// clears what it published or it sees the new epoch. Cells answer from their cached denial
    /// only once `settled` has caught up, i.e. after the walk; the per-thread memo only answers
    /// requests of the epoch its entry was made under.
    fn rules_changed(&self) {
        let epoch = self.epochs.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.windows.forget_denials();
        self.logs.forget_denials();
        self.fixed.forget_denials();
        self.buckets.forget_denials();
        self.epochs.settled.fetch_max(epoch, Ordering::SeqCst);
    }
}

/// A check's outcome: decided by the algorithm, or a cached denial (its decision derived only if
/// the caller wants one).
#[derive(Debug, Clone, Copy)]
enum Answer {
    Decided(Decision),
    Denied(Denial),
    /// A cached denial, answered without its times (for a caller that wants only "admitted?").
    Refused,
}

/// A denial that may be answered without the key's lock until `until`.
#[derive(Debug, Clone, Copy)]
struct Denial {
    /// Before this time not even one hit can be admitted (absent a rules change).
    until: u64,
    /// The key's [`LimitState::idle_at`], for the answer's `reset_after`.
    idle_at: u64,
}

/// A denial to remember in the per-thread memo: the key's `idle_at` is known when the check
/// read the state (under its lock), not when it answered from the cell's cached `until` alone.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    until: u64,
    idle_at: Option<u64>,
}

impl Denial {
    /// The decision for a check of at most one hit at `now` (< `until`): exactly what the
    /// algorithm would answer, since a denial changes no state.
    fn decision(&self, limit: u32, now: u64) -> Decision {
        Decision::new(
            false,
            limit,
            0,
            self.idle_at.saturating_sub(now),
            self.until - now,
        )
    }
}

/// Slots of the per-thread denial memo (direct-mapped by a cheap hash of the identity).
const MEMO_SLOTS: usize = 64;

/// A denial this thread saw, with the exact identity it is about.
#[derive(Debug)]
struct MemoEntry {
    store: u64,
    epoch: u64,
    denial: Remembered,
    /// The counter's [`CounterKey::encode`]: an entry answers only a key that encodes exactly
    /// so, so the slot's hash needs no resistance to collisions (a collision only evicts).
    identity: Box<[u8]>,
}

/// An empty memo slot (a `const` so the array below can repeat it).
const NO_ENTRY: Option<MemoEntry> = None;

thread_local! {
    /// Keys this thread saw denied, so a client hammering one key is answered without
    /// fingerprinting it or touching the shared map at all.
    static MEMO: RefCell<[Option<MemoEntry>; MEMO_SLOTS]> =
        const { RefCell::new([NO_ENTRY; MEMO_SLOTS]) };
    /// The latest `until` of any entry this thread put in [`MEMO`]: from then on no entry can
    /// answer, and a check skips the memo without hashing its key.
    static MEMO_UNTIL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The memo slot of a key: a fast unkeyed hash of its limit index and values (the fields that
/// tell keys of one rule apart).
#[inline]
fn memo_slot(key: &CounterKey<'_>) -> usize {
    let hash = foldhash::fast::FixedState::with_seed(0x6d65_6d6f).hash_one((key.limit, key.values));
    (hash as usize) % MEMO_SLOTS
}

/// The memo's answer for `request`: [`Answer::Denied`] (with times) or, unless `timed`,
/// [`Answer::Refused`].
#[inline]
fn memo_lookup(store: u64, request: &StoreRequest<'_>, timed: bool) -> Option<Answer> {
    if request.now_ns >= MEMO_UNTIL.get() {
        return None;
    }
    let slot = memo_slot(&request.key);
    MEMO.with(|memo| {
        let memo = memo.try_borrow().ok()?;
        let entry = memo[slot].as_ref()?;
        (entry.store == store
            && entry.epoch == request.rules_epoch
            && request.now_ns < entry.denial.until
            && request.key.encodes_as(&entry.identity))
        .then_some(())?;
        match (entry.denial.idle_at, timed) {
            (Some(idle_at), _) => Some(Answer::Denied(Denial {
                until: entry.denial.until,
                idle_at,
            })),
            (None, false) => Some(Answer::Refused),
            (None, true) => None,
        }
    })
}

fn memo_insert(store: u64, key: &CounterKey<'_>, epoch: u64, denial: Remembered) {
    let slot = memo_slot(key);
    MEMO_UNTIL.set(MEMO_UNTIL.get().max(denial.until));
    MEMO.with(|memo| {
        if let Ok(mut memo) = memo.try_borrow_mut() {
            let entry = &mut memo[slot];
            match entry {
                // The same key again (its previous denial ran out): keep its identity.
                Some(e) if key.encodes_as(&e.identity) => {
                    // A denial answered from the cell's `until` alone keeps the `idle_at` this
                    // entry already knew for the same denial.
                    let known = e.denial.idle_at.filter(|_| {
                        e.store == store && e.epoch == epoch && e.denial.until == denial.until
                    });
                    e.store = store;
                    e.epoch = epoch;
                    e.denial = Remembered {
                        until: denial.until,
                        idle_at: denial.idle_at.or(known),
                    };
                }
                _ => {
                    *entry = Some(MemoEntry {
                        store,
                        epoch,
                        denial,
                        identity: key.encode().into_boxed_slice(),
                    });
                }
            }
        }
    });
}

/// A locked cell of any algorithm, for the all-or-nothing check.
trait Held {
    /// The sweep removed this cell before we locked it.
    fn retired(&self) -> bool;
    /// Steps a copy of the state; [`Held::commit`] makes the copy the state.
    fn trial(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision;
    fn commit(&mut self);
    /// Caches a denial of at most one hit, as the single-key check does.
    fn publish_denial(&self, until: u64);
}

struct HeldCell<'g, S> {
    cell: &'g Cell<S>,
    state: MutexGuard<'g, S>,
    trial: Option<S>,
    swept_at: u64,
}

impl<S: LimitState> Held for HeldCell<'_, S> {
    fn retired(&self) -> bool {
        self.cell.denied_until.load(Ordering::Relaxed) == RETIRED
    }

    fn trial(&mut self, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision {
        let mut trial = self.state.clone();
        let step = trial.step(policy, now_ns.max(self.swept_at), hits);
        self.trial = Some(trial);
        step
    }

    fn commit(&mut self) {
        if let Some(trial) = self.trial.take() {
            *self.state = trial;
        }
    }

    fn publish_denial(&self, until: u64) {
        self.cell.denied_until.store(until, Ordering::Release);
    }
}

/// One algorithm's keys.
#[derive(Debug)]
struct Table<S> {
    map: papaya::HashMap<Fingerprint, Cell<S>, FingerprintHash>,
    /// `now` of the latest sweep. A check that finds its cell swept uses at least this time for
    /// the fresh cell, so a clock reading taken before the sweep cannot see state the sweep
    /// already judged expired.
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

/// A key's 128-bit fingerprint as the map's key: two words, aligned to 8 bytes (a `u128` is
/// aligned to 16, which would round the map's entry, fingerprint and cell, up to a multiple of 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u64; 2]);

impl From<u128> for Fingerprint {
    fn from(id: u128) -> Self {
        Self([id as u64, (id >> 64) as u64])
    }
}

impl std::hash::Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniform keyed hash: its low half is the slot's hash (see
        // `FingerprintHash`). Only the low half: SipHash's 128-bit output finishes it three rounds
        // before the high half, so the table's loads can start while the high half is computed
        // (it is only needed to compare the entry).
        state.write_u64(self.0[0]);
    }
}

/// One key: its algorithm state behind a mutex, and its cached denial, read without the lock.
///
/// The map's entry (fingerprint and cell) is one allocation: 72 bytes for the default sliding
/// window (16 + 8 + a 48-byte mutex around the 40-byte state), which glibc serves from an 80-byte
/// chunk. The state's `idle_at` is not mirrored in an atomic: that took the entry to 80 bytes and
/// a 96-byte chunk (16 bytes more per key).
#[derive(Debug)]
struct Cell<S> {
    /// While `now < denied_until`, not even one hit can be admitted (nothing can change that but
    /// a rules change, which clears it): such checks are answered without the lock. Written
    /// under the lock when a check of at most one hit is denied; 0 when no denial is cached;
    /// [`RETIRED`] once the sweep has judged the cell idle and removed it.
    denied_until: AtomicU64,
    state: Mutex<S>,
}

impl<S> Cell<S> {
    fn new(state: S) -> Self {
        Self {
            denied_until: AtomicU64::new(0),
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
    /// The check, and the denial it may be remembered by. A cached denial is answered without
    /// the lock unless the answer must be `timed` (its reset time is the state's `idle_at`).
    #[inline]
    fn check(
        &self,
        id: Fingerprint,
        request: &StoreRequest<'_>,
        epochs: &Epochs,
        timed: bool,
    ) -> (Answer, Option<Remembered>) {
        let (policy, hits) = (request.policy, request.hits);
        let map = self.map.pin();
        let mut now = request.now_ns;
        loop {
            let cell = match map.get(&id) {
                Some(cell) => cell,
                // A read of a key never seen needs no cell.
                None if hits == 0 => {
                    let decision = S::fresh(policy).check(policy, now, 0);
                    return (Answer::Decided(decision), None);
                }
                // `try_insert`, unlike `get_or_insert_with`, helps finish a pending resize of
                // the table; without that, lookups walk a chain of old tables until a sweep.
                None => match map.try_insert(id, Cell::new(S::fresh(policy))) {
                    Ok(cell) => cell,
                    Err(occupied) => occupied.current,
                },
            };

            let cached = |until: u64, now: u64| {
                hits <= 1
                    && now < until
                    && until != RETIRED
                    && epochs.settled.load(Ordering::SeqCst) == request.rules_epoch
            };
            let until = cell.denied_until.load(Ordering::Acquire);
            if !timed && cached(until, now) {
                let denial = Remembered {
                    until,
                    idle_at: None,
                };
                return (Answer::Refused, Some(denial));
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
            // A cached denial, with its times: a denial changes no state, so the state's
            // `idle_at` is the one it was decided with.
            let until = cell.denied_until.load(Ordering::Relaxed);
            if cached(until, now) {
                let idle_at = state.idle_at();
                let denial = Denial { until, idle_at };
                let remembered = Remembered {
                    until,
                    idle_at: Some(idle_at),
                };
                return (Answer::Denied(denial), Some(remembered));
            }
            let step = state.step(policy, now, hits);
            let mut denial = None;
            if !step.decision.allowed
                && hits <= 1
                && epochs.current.load(Ordering::SeqCst) == request.rules_epoch
            {
                // Published only if decided under the current rules (see `rules_changed`).
                cell.denied_until.store(step.retry_at_ns, Ordering::Release);
                denial = Some(Remembered {
                    until: step.retry_at_ns,
                    idle_at: Some(state.idle_at()),
                });
            }
            return (Answer::Decided(step.decision), denial);
        }
    }

    fn sweep(&self, now_ns: u64) -> usize {
        self.swept_at.fetch_max(now_ns, Ordering::AcqRel);
        let map = self.map.pin();
        let before = map.len();
        map.retain(|_, cell| {
            // The state's `idle_at` is read under its lock (a cell mirrors no copy of it, to
            // keep the entry small); a cell in use right now is not idle.
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

    /// The cell of `id`, created fresh if missing, locked (for [`MemoryStore::check_all_now`]).
    fn hold<'g>(
        &'g self,
        id: Fingerprint,
        policy: &Policy,
        guard: &'g papaya::LocalGuard<'g>,
    ) -> Box<dyn Held + 'g> {
        let cell = match self.map.get(&id, guard) {
            Some(cell) => cell,
            None => match self.map.try_insert(id, Cell::new(S::fresh(policy)), guard) {
                Ok(cell) => cell,
                Err(occupied) => occupied.current,
            },
        };
        // Loaded after the lookup, as in `check`.
        let swept_at = self.swept_at.load(Ordering::Acquire);
        Box::new(HeldCell {
            cell,
            state: cell.lock(),
            trial: None,
            swept_at,
        })
    }

    /// Removes `id` if its cell was retired by the sweep.
    fn forget(&self, id: Fingerprint, guard: &papaya::LocalGuard<'_>) {
        let _ = self.map.remove_if(
            &id,
            |_, v| v.denied_until.load(Ordering::Relaxed) == RETIRED,
            guard,
        );
    }

    /// Drops every cached denial, each under its cell's lock (see `rules_changed`).
    fn forget_denials(&self) {
        for (_, cell) in self.map.pin().iter() {
            let _state = cell.lock();
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
pub struct FingerprintHash;

impl BuildHasher for FingerprintHash {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

/// The hasher of [`FingerprintHash`].
#[derive(Debug)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
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
    use crate::key::CounterKey;
    use crate::policy::Policy;
    use crate::store::Store;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    fn request<'a>(policy: &'a Policy, user: &'a str, now_ns: u64, hits: u32) -> StoreRequest<'a> {
        StoreRequest {
            key: CounterKey {
                domain: "drl",
                rule: b"default",
                limit: 0,
                // Leaked: a few bytes per test call, for a `'a` slice of the two values.
                values: Box::leak(Box::new([user, "/e"])),
                prefix: None,
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
    fn denials_cached_without_times_still_answer_timed_checks_exactly() {
        // `admit_now` caches a denial without the key's `idle_at` (it reads no state); a later
        // `check_now` of the same key, on this thread or from the cell, must still get the
        // algorithm's exact reset and retry times.
        let p = Policy::per(2, Duration::from_secs(7), Algorithm::default()).unwrap();
        let store = MemoryStore::new();
        let mut model = <SlidingWindow as LimitState>::fresh(&p);
        let mut t = 3 * SEC + 12_345;
        for i in 0..40u64 {
            let want = model.step(&p, t, 1).decision;
            if i % 3 == 2 {
                assert_eq!(store.check_now(&request(&p, "k", t, 1)), want, "step {i}");
            } else {
                assert_eq!(
                    store.admit_now(&request(&p, "k", t, 1)),
                    want.allowed,
                    "step {i}"
                );
            }
            t += 300_000_001;
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
