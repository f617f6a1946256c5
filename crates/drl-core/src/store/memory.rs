//! The in-memory store: a sharded hash table from a key's 128-bit fingerprint to its algorithm
//! state, stored inline.
//!
//! - **Shards.** Each algorithm's table is split into [`SHARDS`] shards by the fingerprint's top
//!   bits, each an open-addressing table (linear probing) behind its own mutex. A check locks one
//!   shard, finds its key's slot and steps the state in place: one lock, one unlock, and the key's
//!   fingerprint and state in one slot (56 bytes for the default sliding window), so a check of a
//!   key out of cache costs one miss for its slot, not one for the table's metadata, one for an
//!   entry pointer and one for the entry. Checks of one key are serialised and exact; checks of
//!   keys in different shards never contend.
//! - **Growth** happens one shard at a time, under its lock: a shard grows by half when it is
//!   4/5 full, so only the checks of that shard wait, for a copy of its slots (a 1/1024th of the
//!   keys). A grown shard is 0.53 full, and it grows again at 0.8; a sweep that leaves a
//!   shard under 0.25 full shrinks it to 0.5.
//! - **Repeated denials skip the table.** When a check of at most one hit is denied, the algorithm
//!   also tells the exact time before which not even one hit can be admitted; the checking thread
//!   remembers it in a small per-thread memo, with the key's identity, and until then the same
//!   key is answered from it without locking anything (a client hammering a full key costs a
//!   cheap hash, a comparison of its identity and a thread-local read: not even the fingerprint).
//!   Entries are tied to the rules epoch, so a rules change voids them (see
//!   [`MemoryStore::rules_changed`](Store::rules_changed)).
//! - **Reclamation** is a sweep, run by the [`Limiter`](crate::Limiter)'s background thread (or by
//!   hand): a key whose every admission has aged out ([`LimitState::idle_at`]) is
//!   indistinguishable from a fresh one and is removed (backward-shift deletion, no tombstones),
//!   and a shard under a quarter full shrinks, so memory follows the active key set.
//! - Each algorithm has its own table, so a slot is exactly as large as its state.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::algorithm::{
    Algorithm, FixedWindow, LimitState, SlidingLog, SlidingWindow, StepDecision, TokenBucket,
};
use crate::decision::Decision;
use crate::key::{CounterKey, Fingerprinter};
use crate::policy::Policy;
use crate::store::{Prefetch, Store, StoreError, StoreRequest};

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    /// Distinguishes stores in the per-thread denial memo.
    id: u64,
    fingerprints: Fingerprinter,
    /// The rules epoch, bumped by every rules change: a memo entry answers only requests of the
    /// epoch it was made under.
    epoch: AtomicU64,
    windows: Table<SlidingWindow>,
    logs: Table<SlidingLog>,
    fixed: Table<FixedWindow>,
    buckets: Table<TokenBucket>,
}

/// Store ids: unique per process, never reused.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            fingerprints: Fingerprinter::new(),
            epoch: AtomicU64::new(0),
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
        match self.answer(request) {
            Answer::Decided(decision) => decision,
            Answer::Denied(denial) => denial.decision(request.policy.requests(), request.now_ns),
        }
    }

    /// [`MemoryStore::check_now`] reduced to "admitted?": a remembered denial answers without
    /// computing retry and reset times (the `check_and_increment` path).
    #[inline]
    pub fn admit_now(&self, request: &StoreRequest<'_>) -> bool {
        match self.answer(request) {
            Answer::Decided(decision) => decision.allowed,
            Answer::Denied(_) => false,
        }
    }

    /// The answer to `request`: from this thread's memo of denials, or from the key's state.
    #[inline]
    fn answer(&self, request: &StoreRequest<'_>) -> Answer {
        // The memo is looked up before the fingerprint is computed: a hammered key is answered
        // for the cost of a cheap hash and a comparison of its identity.
        if request.hits <= 1
            && let Some(denial) = memo_lookup(self.id, request)
        {
            return Answer::Denied(denial);
        }
        let id = Fingerprint::from(self.fingerprints.fingerprint(&request.key));
        let (decision, denial) = match request.policy.algorithm() {
            Algorithm::SlidingWindow { .. } => self.windows.check(id, request, &self.epoch),
            Algorithm::SlidingLog => self.logs.check(id, request, &self.epoch),
            Algorithm::FixedWindow => self.fixed.check(id, request, &self.epoch),
            Algorithm::TokenBucket { .. } => self.buckets.check(id, request, &self.epoch),
        };
        if let Some(denial) = denial {
            memo_insert(self.id, &request.key, request.rules_epoch, denial);
        }
        Answer::Decided(decision)
    }

    /// [`Store::check_all`], synchronously: the shards of all keys are locked in (table, shard)
    /// order, each once (so two such checks cannot deadlock, and single-key checks lock one
    /// shard only), each algorithm is stepped on a copy of its state, and the copies replace the
    /// states only if every step admitted. Under the locks no other check can see or change any
    /// of the counters in between: the whole is one atomic step.
    pub fn check_all_now(&self, requests: &[StoreRequest<'_>]) -> Vec<Decision> {
        match requests {
            [] => return Vec::new(),
            [one] => return vec![self.check_now(one)],
            _ => {}
        }
        let ids: Vec<Fingerprint> = requests
            .iter()
            .map(|r| Fingerprint::from(self.fingerprints.fingerprint(&r.key)))
            .collect();
        let lock_order = |i: usize| (table_index(requests[i].policy), ids[i].shard(), ids[i]);
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_unstable_by_key(|&i| lock_order(i));
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
        // Each shard is locked when its first counter comes, and every lock is held until the
        // end: a state read under a lock cannot change before the commit.
        let mut locked: Vec<Box<dyn Trials + '_>> = Vec::new();
        let mut last_locked = None;
        let mut steps: Vec<StepDecision> = Vec::with_capacity(counters.len());
        for &(first, hits) in &counters {
            let (r, id) = (&requests[first], ids[first]);
            let (table, shard) = (table_index(r.policy), id.shard());
            if last_locked != Some((table, shard)) {
                locked.push(match r.policy.algorithm() {
                    Algorithm::SlidingWindow { .. } => self.windows.lock_for_trials(shard),
                    Algorithm::SlidingLog => self.logs.lock_for_trials(shard),
                    Algorithm::FixedWindow => self.fixed.lock_for_trials(shard),
                    Algorithm::TokenBucket { .. } => self.buckets.lock_for_trials(shard),
                });
                last_locked = Some((table, shard));
            }
            let current = locked.len() - 1;
            steps.push(locked[current].trial(id, r.policy, r.now_ns, hits));
        }
        if steps.iter().all(|s| s.decision.allowed) {
            for shard in &mut locked {
                shard.commit();
            }
        }
        drop(locked);
        counter_of.iter().map(|&c| steps[c].decision).collect()
    }

    /// Removes every key whose admissions have all aged out by `now_ns`; returns how many.
    pub fn sweep(&self, now_ns: u64) -> usize {
        (0..SHARDS)
            .map(|shard| self.sweep_shard(now_ns, shard))
            .sum()
    }

    /// [`MemoryStore::sweep`] of one shard of each table (`shard` < [`SHARDS`]): the shards
    /// one after another, each at its own time, sweep every key once, in pieces (about 0.1 ms
    /// each at 10 000 000 keys) that a background sweeper can space out. Returns how many keys
    /// it removed.
    pub fn sweep_shard(&self, now_ns: u64, shard: usize) -> usize {
        self.windows.sweep(now_ns, shard)
            + self.logs.sweep(now_ns, shard)
            + self.fixed.sweep(now_ns, shard)
            + self.buckets.sweep(now_ns, shard)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.windows.len() + self.logs.len() + self.fixed.len() + self.buckets.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The position of a policy's table in the lock order of [`MemoryStore::check_all_now`].
fn table_index(policy: &Policy) -> u8 {
    match policy.algorithm() {
        Algorithm::SlidingWindow { .. } => 0,
        Algorithm::SlidingLog => 1,
        Algorithm::FixedWindow => 2,
        Algorithm::TokenBucket { .. } => 3,
    }
}

impl Store for MemoryStore {
    const ANSWERS_AT_ONCE: bool = true;

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

    /// The slot where a probe for the key starts, found without its shard's lock.
    fn prefetch(&self, request: &StoreRequest<'_>, lines: &mut Prefetch) {
        let id = Fingerprint::from(self.fingerprints.fingerprint(&request.key));
        match request.policy.algorithm() {
            Algorithm::SlidingWindow { .. } => self.windows.shard(id).prefetch(id, lines),
            Algorithm::SlidingLog => self.logs.shard(id).prefetch(id, lines),
            Algorithm::FixedWindow => self.fixed.shard(id).prefetch(id, lines),
            Algorithm::TokenBucket { .. } => self.buckets.shard(id).prefetch(id, lines),
        }
    }

    fn rules_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Voids every remembered denial: memo entries answer only requests of the epoch they were
    /// made under, and a check still deciding under the old rules (it read the old epoch)
    /// remembers its denial only if the epoch has not moved when it decides.
    fn rules_changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// A check's outcome: decided by the algorithm, or a remembered denial (its decision derived
/// only if the caller wants one).
#[derive(Debug, Clone, Copy)]
enum Answer {
    Decided(Decision),
    Denied(Denial),
}

/// A denial that may be answered without the key's state until `until`.
#[derive(Debug, Clone, Copy)]
struct Denial {
    /// Before this time not even one hit can be admitted (absent a rules change).
    until: u64,
    /// The key's [`LimitState::idle_at`], for the answer's `reset_after`.
    idle_at: u64,
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
    denial: Denial,
    /// The counter's [`CounterKey::encode`]: an entry answers only a key that encodes exactly
    /// so, so the slot's hash needs no resistance to collisions (a collision only evicts).
    identity: Box<[u8]>,
}

/// An empty memo slot (a `const` so the array below can repeat it).
const NO_ENTRY: Option<MemoEntry> = None;

thread_local! {
    /// Keys this thread saw denied, so a client hammering one key is answered without
    /// fingerprinting it or touching the shared table at all.
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

/// The memo's denial for `request`, if this thread remembers one that still holds.
#[inline]
fn memo_lookup(store: u64, request: &StoreRequest<'_>) -> Option<Denial> {
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
        .then_some(entry.denial)
    })
}

fn memo_insert(store: u64, key: &CounterKey<'_>, epoch: u64, denial: Denial) {
    let slot = memo_slot(key);
    MEMO_UNTIL.set(MEMO_UNTIL.get().max(denial.until));
    MEMO.with(|memo| {
        if let Ok(mut memo) = memo.try_borrow_mut() {
            match &mut memo[slot] {
                // The same key again (its previous denial ran out): keep its identity.
                Some(e) if key.encodes_as(&e.identity) => {
                    e.store = store;
                    e.epoch = epoch;
                    e.denial = denial;
                }
                entry => {
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

/// Shards per table (a power of two): enough that two threads' checks of different keys
/// rarely meet on a lock and that a shard's growth copies a 1/1024th of the keys; the
/// shards' heads take 64 KiB per table.
pub const SHARDS: usize = 1 << SHARD_BITS;
const SHARD_BITS: u32 = 10;

/// One algorithm's keys.
#[derive(Debug)]
struct Table<S> {
    shards: Box<[Shard<S>]>,
    /// `now` of the latest sweep. A check reads it under its shard's lock and decides at this
    /// time at least, so a clock reading taken before the sweep cannot see a fresh state where
    /// the sweep removed one it judged expired at its later time.
    swept_at: AtomicU64,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            swept_at: AtomicU64::new(0),
        }
    }
}

/// A shard: its slots behind their lock, and where they are for [`Store::prefetch`]; alone on
/// its cache line (two threads locking neighbouring shards do not take the line from each other).
#[derive(Debug)]
#[repr(align(64))]
struct Shard<S> {
    slots: Mutex<Slots<S>>,
    /// The first slot and how many there are, as of the last unlock ([`ShardGuard`] publishes
    /// them): read without the lock, only to compute an address to prefetch. A stale pair (a
    /// check growing the shard meanwhile) points the prefetch at a line no check will read, or
    /// at freed memory, which a prefetch may do: it costs a wasted load and nothing else.
    first: AtomicPtr<Option<Slot<S>>>,
    len: AtomicUsize,
}

impl<S> Default for Shard<S> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(Slots::default()),
            first: AtomicPtr::new(std::ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }
}

impl<S> Shard<S> {
    /// The slots are plain data and no code under the lock can leave them half-updated (a
    /// panic under it could only be an allocation failure, which aborts); a panic elsewhere
    /// while holding it must not wedge the shard.
    fn lock(&self) -> ShardGuard<'_, S> {
        ShardGuard {
            shard: self,
            slots: self.slots.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Adds the lines of the slot where a probe for `id` starts (the key's slot, or the one
    /// before it in its probe run), without the lock.
    #[inline]
    fn prefetch(&self, id: Fingerprint, lines: &mut Prefetch) {
        let len = self.len.load(Ordering::Relaxed);
        if len > 0 {
            lines.add(
                self.first
                    .load(Ordering::Relaxed)
                    .cast_const()
                    .wrapping_add(id.home(len)),
            );
        }
    }
}

/// A locked shard. When it unlocks it publishes where the slots are (a check may have grown
/// the shard, a sweep shrunk it).
struct ShardGuard<'a, S> {
    shard: &'a Shard<S>,
    slots: MutexGuard<'a, Slots<S>>,
}

impl<S> Deref for ShardGuard<'_, S> {
    type Target = Slots<S>;

    fn deref(&self) -> &Slots<S> {
        &self.slots
    }
}

impl<S> DerefMut for ShardGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut Slots<S> {
        &mut self.slots
    }
}

impl<S> Drop for ShardGuard<'_, S> {
    /// Runs before the lock is released (fields drop after `drop`), so the pair is written
    /// by the lock's holder only; the loads first keep the common case (nothing moved) free of
    /// stores.
    fn drop(&mut self) {
        let slots = &mut self.slots.slots;
        let (first, len) = (slots.as_mut_ptr(), slots.len());
        if self.shard.len.load(Ordering::Relaxed) != len {
            self.shard.len.store(len, Ordering::Relaxed);
        }
        if self.shard.first.load(Ordering::Relaxed) != first {
            self.shard.first.store(first, Ordering::Relaxed);
        }
    }
}

/// A key's 128-bit fingerprint as the table's key: two words, aligned to 8 bytes (a `u128` is
/// aligned to 16, which would round a slot up to a multiple of 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Fingerprint([u64; 2]);

impl From<u128> for Fingerprint {
    fn from(id: u128) -> Self {
        Self([id as u64, (id >> 64) as u64])
    }
}

impl Fingerprint {
    /// The shard: the top bits of the low half. The low half is a uniform keyed hash, and the
    /// first SipHash finishes (three rounds before the high half, which is needed only to
    /// compare the slot), so the shard's lock and slot loads can start early.
    #[inline]
    fn shard(self) -> usize {
        (self.0[0] >> (64 - SHARD_BITS)) as usize
    }

    /// The slot a probe for this key starts at, in a shard of `len` slots: the low half's other
    /// bits, scaled to `len` (no division, any `len`).
    #[inline]
    fn home(self, len: usize) -> usize {
        (((self.0[0] << SHARD_BITS) as u128 * len as u128) >> 64) as usize
    }
}

/// A key and its state.
#[derive(Debug)]
struct Slot<S> {
    id: Fingerprint,
    state: S,
}

/// A shard's open-addressing table with linear probing; at most 4/5 full, so every probe
/// ends at an empty slot.
#[derive(Debug)]
struct Slots<S> {
    slots: Box<[Option<Slot<S>>]>,
    len: usize,
}

impl<S> Default for Slots<S> {
    fn default() -> Self {
        Self {
            slots: Box::new([]),
            len: 0,
        }
    }
}

/// The fewest slots a shard allocates.
const MIN_SLOTS: usize = 8;

impl<S> Slots<S> {
    /// The slot holding `id`, or the empty slot where it would go. The table must not be
    /// empty.
    #[inline]
    fn position(&self, id: Fingerprint) -> usize {
        let len = self.slots.len();
        let mut i = id.home(len);
        loop {
            match &self.slots[i] {
                Some(slot) if slot.id != id => i = if i + 1 == len { 0 } else { i + 1 },
                _ => return i,
            }
        }
    }

    /// The state of `id`, if it has one.
    #[inline]
    fn get_mut(&mut self, id: Fingerprint) -> Option<&mut S> {
        if self.slots.is_empty() {
            return None;
        }
        let i = self.position(id);
        self.slots[i].as_mut().map(|slot| &mut slot.state)
    }

    /// The state of `id`, created by `fresh` if it has none.
    #[inline]
    fn get_or_insert_with(&mut self, id: Fingerprint, fresh: impl FnOnce() -> S) -> &mut S {
        if self.slots.is_empty() {
            self.resize(MIN_SLOTS);
        }
        let mut i = self.position(id);
        if self.slots[i].is_none() {
            if (self.len + 1) * 5 > self.slots.len() * 4 {
                self.resize(self.slots.len() + self.slots.len() / 2);
                i = self.position(id);
            }
            self.len += 1;
        }
        &mut self.slots[i]
            .get_or_insert_with(|| Slot { id, state: fresh() })
            .state
    }

    /// Moves every key into a new table of `len` slots (more than the keys held).
    fn resize(&mut self, len: usize) {
        let new = (0..len).map(|_| None).collect();
        let old = std::mem::replace(&mut self.slots, new);
        for slot in old.into_vec().into_iter().flatten() {
            let i = self.position(slot.id);
            self.slots[i] = Some(slot);
        }
    }

    /// Removes the keys `keep` refuses; returns how many. Each removal shifts the rest of its
    /// probe run back (no tombstones), and a table left under a quarter full shrinks.
    fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) -> usize {
        let before = self.len;
        let mut i = 0;
        while i < self.slots.len() {
            match &self.slots[i] {
                // Slot `i` now holds what the shift moved back into it: look at it again.
                Some(slot) if !keep(&slot.state) => self.remove_at(i),
                _ => i += 1,
            }
        }
        if self.len == 0 {
            self.slots = Box::new([]);
        } else if self.len * 4 < self.slots.len() && self.slots.len() > MIN_SLOTS {
            self.resize((self.len * 2).max(MIN_SLOTS));
        }
        before - self.len
    }

    /// Empties slot `hole` and moves back every later key of its probe run that may sit there
    /// (its probe passes through the hole), so every probe still finds its key.
    fn remove_at(&mut self, mut hole: usize) {
        self.slots[hole] = None;
        self.len -= 1;
        let len = self.slots.len();
        let mut j = hole;
        loop {
            j = if j + 1 == len { 0 } else { j + 1 };
            let Some(slot) = &self.slots[j] else { return };
            // Distances walked backwards from `j`: to the key's home, and to the hole.
            let from_home = (j + len - slot.id.home(len)) % len;
            let from_hole = (j + len - hole) % len;
            if from_home >= from_hole {
                self.slots.swap(hole, j);
                hole = j;
            }
        }
    }
}

impl<S: LimitState> Table<S> {
    fn shard(&self, id: Fingerprint) -> &Shard<S> {
        &self.shards[id.shard()]
    }

    /// The check, and the denial the thread may remember it by.
    #[inline]
    fn check(
        &self,
        id: Fingerprint,
        request: &StoreRequest<'_>,
        epoch: &AtomicU64,
    ) -> (Decision, Option<Denial>) {
        let (policy, hits) = (request.policy, request.hits);
        let mut slots = self.shard(id).lock();
        let now = request.now_ns.max(self.swept_at.load(Ordering::Relaxed));
        let state = if hits == 0 {
            match slots.get_mut(id) {
                Some(state) => state,
                // A read of a key never seen needs no slot.
                None => return (S::fresh(policy).check(policy, now, 0), None),
            }
        } else {
            slots.get_or_insert_with(id, || S::fresh(policy))
        };
        let step = state.step(policy, now, hits);
        // Remembered only if decided under the current rules (see `rules_changed`).
        let denial = (!step.decision.allowed
            && hits <= 1
            && epoch.load(Ordering::SeqCst) == request.rules_epoch)
            .then(|| Denial {
                until: step.retry_at_ns,
                idle_at: state.idle_at(),
            });
        (step.decision, denial)
    }

    fn sweep(&self, now_ns: u64, shard: usize) -> usize {
        // Before the shard is locked: a check that finds a key gone decides at this time.
        self.swept_at.fetch_max(now_ns, Ordering::Relaxed);
        self.shards[shard]
            .lock()
            .retain(|state| state.idle_at() > now_ns)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len).sum()
    }

    /// Locks `shard` for the trials of [`MemoryStore::check_all_now`].
    fn lock_for_trials(&self, shard: usize) -> Box<dyn Trials + '_> {
        let slots = self.shards[shard].lock();
        Box::new(ShardTrials {
            swept_at: self.swept_at.load(Ordering::Relaxed),
            slots,
            trials: Vec::new(),
        })
    }
}

/// A locked shard of any algorithm's table, for the all-or-nothing check.
trait Trials {
    /// Steps a copy of the state of `id` (a fresh one if it has none); [`Trials::commit`]
    /// makes the copies of the counted ones the states.
    fn trial(&mut self, id: Fingerprint, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision;
    fn commit(&mut self);
}

struct ShardTrials<'a, S> {
    slots: ShardGuard<'a, S>,
    swept_at: u64,
    /// The stepped copies of the counters that count hits.
    trials: Vec<(Fingerprint, S)>,
}

impl<S: LimitState> Trials for ShardTrials<'_, S> {
    fn trial(&mut self, id: Fingerprint, policy: &Policy, now_ns: u64, hits: u32) -> StepDecision {
        let mut state = match self.slots.get_mut(id) {
            Some(state) => state.clone(),
            None => S::fresh(policy),
        };
        let step = state.step(policy, now_ns.max(self.swept_at), hits);
        if hits > 0 {
            self.trials.push((id, state));
        }
        step
    }

    fn commit(&mut self) {
        for (id, trial) in self.trials.drain(..) {
            match self.slots.get_mut(id) {
                Some(state) => *state = trial,
                None => {
                    self.slots.get_or_insert_with(id, || trial);
                }
            }
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

    /// Fingerprints for table tests: `home_bits` picks the low half's bits below the shard's,
    /// so many keys can be made to share a home slot (long probe runs, runs that wrap).
    fn id(home_bits: u64, n: u64) -> Fingerprint {
        Fingerprint([home_bits >> SHARD_BITS, n])
    }

    #[test]
    fn a_shard_finds_every_key_through_growth_removals_and_shrinking() {
        let mut slots = Slots::<u64>::default();
        // Spread keys, and clusters sharing one home: at the start, in the middle, and at the
        // very end of the table (their runs wrap to slot 0).
        let mut ids: Vec<Fingerprint> = (0..2_000u64)
            .map(|n| id(n.wrapping_mul(0x9e37_79b9_7f4a_7c15), n))
            .collect();
        for (home, tag) in [(0, 1 << 40), (u64::MAX / 2, 2 << 40), (u64::MAX, 3 << 40)] {
            ids.extend((0..50).map(|n| id(home, tag + n)));
        }
        for (n, &k) in ids.iter().enumerate() {
            *slots.get_or_insert_with(k, || 0) = n as u64;
            assert!(slots.len * 5 <= slots.slots.len() * 4);
        }
        assert_eq!(slots.len, ids.len());
        for round in 0..3u64 {
            // Remove a third of what is left (by value), then every key is where a probe
            // finds it, and only the kept ones are.
            let removed = slots.retain(|&v| v % 3 != round);
            let kept: Vec<usize> = (0..ids.len())
                .filter(|&n| (0..=round).all(|r| n as u64 % 3 != r))
                .collect();
            assert_eq!(slots.len, kept.len(), "round {round}, removed {removed}");
            for (n, &k) in ids.iter().enumerate() {
                let want = kept.contains(&n).then_some(n as u64);
                assert_eq!(slots.get_mut(k).copied(), want, "key {n}, round {round}");
            }
        }
        assert_eq!(slots.len, 0);
        assert!(slots.slots.is_empty(), "an empty shard frees its slots");
    }

    #[test]
    fn a_shard_shrinks_when_a_sweep_leaves_it_under_a_quarter_full() {
        let mut slots = Slots::<u64>::default();
        for n in 0..1_000u64 {
            slots.get_or_insert_with(id(n.wrapping_mul(0x9e37_79b9_7f4a_7c15), n), || n);
        }
        let grown = slots.slots.len();
        assert_eq!(slots.retain(|&v| v < 100), 900);
        assert!(
            slots.slots.len() < grown / 4,
            "{} slots for 100 keys",
            slots.slots.len()
        );
        for n in 0..100u64 {
            let k = id(n.wrapping_mul(0x9e37_79b9_7f4a_7c15), n);
            assert_eq!(slots.get_mut(k).copied(), Some(n));
        }
    }

    /// Where [`Store::prefetch`] points for each key: the slot its probe starts at in the
    /// shard's current array, through the growths of a fill and the shrinking of a sweep (the
    /// guard publishes both).
    #[test]
    fn a_prefetch_points_at_the_keys_home_slot_through_growth_and_shrinking() {
        let store = MemoryStore::new();
        let p = Policy::per(2, Duration::from_secs(10), Algorithm::default()).unwrap();
        let users: Vec<String> = (0..20_000).map(|i| format!("u{i}")).collect();
        let mut lines = Prefetch::new();
        store.prefetch(&request(&p, "u0", SEC, 1), &mut lines);
        assert!(lines.is_empty(), "an empty shard has no slot to point at");
        let homes_are_prefetched = |keys: &[String]| {
            for user in keys {
                let request = request(&p, user, SEC, 1);
                let mut lines = Prefetch::new();
                store.prefetch(&request, &mut lines);
                let id = Fingerprint::from(store.fingerprints.fingerprint(&request.key));
                let shard = store.windows.shard(id).lock();
                let slots = &shard.slots.slots;
                let home: *const Option<Slot<SlidingWindow>> = &slots[id.home(slots.len())];
                assert_eq!(lines.lines()[0], home.cast::<u8>(), "{user}");
            }
        };
        for user in &users {
            assert!(store.check_now(&request(&p, user, SEC, 1)).allowed);
        }
        homes_are_prefetched(&users);
        // Keys checked again later outlive the sweep; the rest go and their shards shrink.
        for user in &users[..1_000] {
            assert!(store.check_now(&request(&p, user, 9 * SEC, 1)).allowed);
        }
        assert_eq!(store.sweep(12 * SEC), 19_000);
        homes_are_prefetched(&users[..1_000]);
    }

    #[test]
    fn a_default_sliding_window_slot_is_its_fingerprint_and_state() {
        // 16 bytes of fingerprint and the 40-byte state; an empty slot costs no extra byte.
        assert_eq!(std::mem::size_of::<Option<Slot<SlidingWindow>>>(), 56);
    }

    #[test]
    fn a_shard_head_is_one_cache_line() {
        // Its lock, slots and the published pair for prefetching, alone on a 64-byte line.
        assert_eq!(std::mem::size_of::<Shard<SlidingWindow>>(), 64);
        assert_eq!(std::mem::align_of::<Shard<SlidingWindow>>(), 64);
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
    fn a_sweep_shard_by_shard_removes_each_idle_key_once() {
        let store = MemoryStore::new();
        let p = Policy::per(1, Duration::from_secs(10), Algorithm::default()).unwrap();
        for i in 0..5_000 {
            assert!(
                store
                    .check_now(&request(&p, &format!("u{i}"), SEC, 1))
                    .allowed
            );
        }
        let mut removed = 0;
        for shard in 0..SHARDS {
            let now = 12 * SEC + shard as u64;
            let held = store.len();
            let swept = store.sweep_shard(now, shard);
            assert!(
                swept < 100,
                "shard {shard} held {swept} keys, not its share of 5"
            );
            assert_eq!(store.len(), held - swept);
            removed += swept;
        }
        assert_eq!(removed, 5_000);
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
