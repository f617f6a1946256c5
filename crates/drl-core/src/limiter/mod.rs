//! The [`Limiter`]: rules + clock + store behind one cheap, cloneable handle.
//!
//! ```
//! use drl_core::{Limiter, Rules};
//!
//! let limiter = Limiter::new(Rules::builtin()); // 100 per minute per (user, endpoint)
//! assert!(limiter.check_and_increment("alice", "/api/search"));
//! ```
//!
//! Clones share one store and one rule set (an `Arc` inside), so every copy enforces the same
//! budget: the mistake of a limiter whose copies each get their own budget cannot happen here.
//! Rules can be replaced at run time ([`Limiter::set_rules`]); checks in flight finish under the
//! rules they started with.
//!
//! Here: the handle, its builder and sweeper, the rules in force and the load-adaptive factors.
//! `native`: the (user_id, endpoint) check. `descriptors`: the descriptor check of Envoy's API.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::abuse::{Ban, Bans};
use crate::adaptive::{BackendSettings, BackendState};
use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::error::CheckError;
use crate::key::NATIVE_DOMAIN;
use crate::rules::{Action, Rules, Target};
use crate::store::memory::SHARDS;
use crate::store::{MemoryStore, Store, StoreError};

mod descriptors;
mod native;

pub use descriptors::{
    DecidedBy, Descriptor, DescriptorDecision, MAX_DESCRIPTORS, MAX_ENTRIES, RequestDecision,
};
pub use native::NativeDecision;
use native::Plan;

/// How long the background sweeper takes at least to go over every key once, by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The background sweeper rests after each piece of a sweep at least this many times as long
/// as the piece took, so it spends at most about 5% of one core however many keys there are (a
/// sweep that finds nothing idle takes 10–11 ns a key in `examples/memory.rs`, so 10 000 000
/// keys take about 0.1 s: one pass every 2.2 s; 100 000 000 keys, every 20 s).
pub const SWEEP_REST_FACTOR: u32 = 20;

/// How much sweeping the background sweeper does before it rests: shards one after another
/// until this much time has passed (a small store's whole pass in one go). A piece of a
/// sweep takes a core from the checks while it runs, and a check whose worker it preempts
/// waits for all of it: at 10 000 000 keys, pieces of 1/64th of the keys (2 ms) raised the p99
/// of the node's native batches from 1.3 to 2.0 ms against one whole sweep every 2.2 s, and
/// pieces of 0.1 ms lowered it by 5% (docs/core.md).
pub const SWEEP_PIECE: Duration = Duration::from_micros(100);

/// A check that could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimiterError {
    /// The request itself is invalid; nothing was counted.
    #[error(transparent)]
    Invalid(#[from] CheckError),
    /// The store failed; whether anything was counted is unknown.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rate limiter. Cheap to clone; all clones share state.
#[derive(Debug)]
pub struct Limiter<S = MemoryStore> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Limiter<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S> {
    store: S,
    bans: Bans,
    /// The rules as configured (`rules` holds them scaled by the adaptive factors), and the
    /// state of each backend; the lock also serialises rule swaps.
    adaptive: Mutex<Adaptive>,
    clock: Arc<dyn Clock>,
    rules: ArcSwap<Rules>,
    /// Bumped after every [`Limiter::set_rules`]; keys the per-thread rules cache.
    rules_generation: AtomicU64,
    /// Distinguishes limiters in the per-thread rules cache.
    id: u64,
    domain: Box<str>,
}

/// Limiter ids: unique per process, never reused (unlike addresses).
static NEXT_LIMITER_ID: AtomicU64 = AtomicU64::new(1);

/// The rules of the limiter this thread checked last, with their generation.
struct CachedRules {
    limiter: u64,
    generation: u64,
    rules: Arc<Rules>,
}

thread_local! {
    /// Loading an `ArcSwap` costs about 19 ns (its debt-slot protocol); this cache costs two
    /// plain loads on the sync path. It is refreshed whenever the limiter's rules generation
    /// moves, so a check sees new rules as soon as `set_rules` has bumped it.
    static RULES_CACHE: RefCell<Option<CachedRules>> = const { RefCell::new(None) };
}

impl<S> Inner<S> {
    /// How long a user's strikes are remembered (the abuse policy's, or a day).
    fn forget_after(&self) -> Duration {
        self.rules
            .load()
            .abuse()
            .map_or(Duration::from_secs(86_400), |p| p.forget_after)
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Inner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("store", &self.store)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Limiter`] with a chosen clock, domain, sweep interval or store.
#[derive(Debug)]
pub struct LimiterBuilder {
    rules: Rules,
    clock: Option<Arc<dyn Clock>>,
    domain: Box<str>,
    sweep_interval: Option<Duration>,
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl LimiterBuilder {
    /// Uses `clock` instead of the system clock (e.g. a [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Namespaces the counters (default [`NATIVE_DOMAIN`]).
    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.into();
        self
    }

    /// How often a background thread reclaims idle keys of the memory store; `None` for no
    /// thread (call [`Limiter::sweep`] yourself). Default [`DEFAULT_SWEEP_INTERVAL`].
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// A limiter on the in-memory store, with its sweeper thread unless disabled.
    pub fn build(self) -> Limiter<MemoryStore> {
        let interval = self.sweep_interval;
        let limiter = self.build_with_store(MemoryStore::new());
        if let Some(interval) = interval {
            spawn_sweeper(Arc::downgrade(&limiter.inner), interval);
        }
        limiter
    }

    /// A limiter on any store (no sweeper: stores with their own expiry need none).
    pub fn build_with_store<S: Store>(self, store: S) -> Limiter<S> {
        Limiter {
            inner: Arc::new(Inner {
                store,
                bans: Bans::new(),
                adaptive: Mutex::new(Adaptive {
                    base: Arc::new(self.rules.clone()),
                    backends: BTreeMap::new(),
                }),
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
                rules: ArcSwap::from_pointee(self.rules),
                rules_generation: AtomicU64::new(0),
                id: NEXT_LIMITER_ID.fetch_add(1, Ordering::Relaxed),
                domain: self.domain,
            }),
        }
    }
}

/// Sweeps the store shard by shard ([`MemoryStore::sweep_shard`]) in pieces of about
/// [`SWEEP_PIECE`], resting after each [`SWEEP_REST_FACTOR`] times as long as it took, and a pass
/// over every key takes at least `interval`; forgets old offenses after each pass. Runs until
/// the last handle of the limiter is dropped.
fn spawn_sweeper(limiter: Weak<Inner<MemoryStore>>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("drl-sweeper".into())
        .spawn(move || {
            let mut rest = interval;
            let mut shard = 0;
            let mut pass_began = std::time::Instant::now();
            loop {
                std::thread::sleep(rest);
                let Some(inner) = limiter.upgrade() else {
                    return;
                };
                let began = std::time::Instant::now();
                if shard == 0 {
                    pass_began = began;
                }
                loop {
                    let now = inner.clock.now_ns();
                    inner.store.sweep_shard(now, shard);
                    shard += 1;
                    if shard == SHARDS {
                        inner.bans.sweep(now, inner.forget_after());
                        shard = 0;
                        break;
                    }
                    if began.elapsed() >= SWEEP_PIECE {
                        break;
                    }
                }
                rest = began.elapsed() * SWEEP_REST_FACTOR;
                if shard == 0 {
                    rest = rest.max(interval.saturating_sub(pass_began.elapsed()));
                }
            }
        });
    // Without a thread the store still works; idle keys wait for an explicit sweep.
    if let Err(e) = spawned {
        eprintln!("drl: could not start the sweeper thread: {e}");
    }
}

impl Limiter<MemoryStore> {
    /// A limiter on the in-memory store with the system clock and a background sweeper.
    pub fn new(rules: Rules) -> Self {
        Self::builder(rules).build()
    }

    /// A builder starting from `rules` (for another store: [`LimiterBuilder::build_with_store`]).
    pub fn builder(rules: Rules) -> LimiterBuilder {
        LimiterBuilder {
            rules,
            clock: None,
            domain: NATIVE_DOMAIN.into(),
            sweep_interval: Some(DEFAULT_SWEEP_INTERVAL),
        }
    }

    /// Checks the limit of `(user_id, endpoint)` and, if under it, counts one request and
    /// answers `true`; otherwise `false`. Invalid input (empty, or over 1 KiB) answers `false`.
    #[inline]
    pub fn check_and_increment(&self, user_id: &str, endpoint: &str) -> bool {
        let rules_epoch = self.inner.store.rules_epoch();
        self.with_rules(|rules| {
            let endpoint = rules.endpoint_normalization().apply(endpoint);
            let Ok((target, values)) = native::native_target(rules, user_id, &endpoint) else {
                return false;
            };
            let now = self.inner.clock.now_ns();
            // The common case: no ban anywhere, one plain limit, no abuse accounting.
            if rules.abuse().is_none()
                && !rules.shadow_mode()
                && self.inner.bans.is_empty()
                && !rules.blocklisted(user_id)
                && let Some(request) = self.single(target, &values, 1, now, rules_epoch)
            {
                return self.inner.store.admit_now(&request);
            }
            self.answer_now(rules, target, &values, 1, now, rules_epoch)
                .decision
                .allowed
        })
    }

    /// Checks `hits` requests at once (all or nothing; 0 only reads) and returns the full
    /// decision.
    #[inline]
    pub fn check(&self, user_id: &str, endpoint: &str, hits: u32) -> Result<Decision, CheckError> {
        Ok(self.check_ruled(user_id, endpoint, hits)?.decision)
    }

    /// [`Limiter::check`] with what a caller may report about it (rule level, ban, shadow).
    #[inline]
    pub fn check_ruled(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u32,
    ) -> Result<NativeDecision, CheckError> {
        let rules_epoch = self.inner.store.rules_epoch();
        self.with_rules(|rules| {
            let endpoint = rules.endpoint_normalization().apply(endpoint);
            let (target, values) = native::native_target(rules, user_id, &endpoint)?;
            let now = self.inner.clock.now_ns();
            Ok(self.answer_now(rules, target, &values, hits, now, rules_epoch))
        })
    }

    /// Decides a native check synchronously on the memory store: the plan, the store's answer,
    /// then what follows a decision.
    fn answer_now(
        &self,
        rules: &Rules,
        target: &Target,
        values: &[&str; 2],
        hits: u32,
        now: u64,
        epoch: u64,
    ) -> NativeDecision {
        let decision = match self.plan(rules, target, values, hits, now, epoch) {
            Plan::Answered(checked) => return checked,
            Plan::Fixed(decision) => decision,
            Plan::One(request) => self.inner.store.check_now(&request),
            Plan::All(requests) => combine(&self.inner.store.check_all_now(&requests)),
        };
        self.after(rules, target, values[0], now, decision)
    }

    /// Runs `f` with the rules in force, from this thread's cache when it is current.
    #[inline]
    fn with_rules<R>(&self, f: impl FnOnce(&Rules) -> R) -> R {
        let generation = self.inner.rules_generation.load(Ordering::SeqCst);
        let id = self.inner.id;
        RULES_CACHE.with(|cache| {
            // Re-entered (a check inside a check on this thread): skip the cache.
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return f(&self.inner.rules.load_full());
            };
            let current =
                matches!(cache.as_ref(), Some(c) if c.limiter == id && c.generation == generation);
            if !current {
                *cache = Some(CachedRules {
                    limiter: id,
                    generation,
                    rules: self.inner.rules.load_full(),
                });
            }
            // Borrowed, not cloned: an `Arc` clone per check would make every thread write the
            // same reference count.
            match cache.as_ref() {
                Some(cached) => f(&cached.rules),
                None => f(&self.inner.rules.load_full()),
            }
        })
    }

    /// Reclaims idle keys now; returns how many were removed.
    pub fn sweep(&self) -> usize {
        self.inner.store.sweep(self.inner.clock.now_ns())
    }
}

impl<S: Store> Limiter<S> {
    /// Until when (ns; `u64::MAX` for good) `user` is refused without touching a counter: the
    /// config's blocklist, or a ban or block in force (which an abuse-exempt rule ignores). The
    /// first step of the native and the descriptor check alike.
    fn refused_until(&self, rules: &Rules, user: &str, now: u64, exempt: bool) -> Option<u64> {
        if rules.blocklisted(user) {
            Some(u64::MAX)
        } else {
            self.inner.bans.banned_until(user, now, exempt)
        }
    }

    /// Counts a denial of `user` as an offense under the rules' abuse policy, if they have one;
    /// the ban it made. The last step of both checks, for denials of rules not exempt.
    fn offense(&self, rules: &Rules, user: &str, now: u64) -> Option<Ban> {
        let policy = rules.abuse()?;
        self.inner.bans.offense(user, now, policy)
    }

    /// Replaces the rules atomically. Counters whose rule identity is unchanged carry on under
    /// the new limits. Rules that name backends are scaled by their current load factors.
    pub fn set_rules(&self, rules: Rules) {
        let mut adaptive = self.lock_adaptive();
        let now = self.inner.clock.now_ns();
        let backends = std::mem::take(&mut adaptive.backends);
        adaptive.backends = rules
            .backends()
            .keys()
            .map(|name| {
                let state = backends
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| BackendState::new(now));
                (name.clone(), state)
            })
            .collect();
        adaptive.base = Arc::new(rules);
        self.apply(&adaptive);
    }

    /// Swaps in the base rules scaled by the factors, under the adaptive lock.
    fn apply(&self, adaptive: &Adaptive) {
        let factors: BTreeMap<String, f64> = adaptive
            .backends
            .iter()
            .filter(|(_, s)| s.factor < 1.0)
            .map(|(name, s)| (name.clone(), s.factor))
            .collect();
        let rules = if factors.is_empty() {
            Rules::clone(&adaptive.base)
        } else {
            adaptive.base.scaled(&factors)
        };
        // Order matters: rules, then generation (threads' caches refresh), then the store
        // (remembered denials voided). See `MemoryStore` for why a denial decided under the old
        // rules cannot survive this.
        self.inner.rules.store(Arc::new(rules));
        self.inner.rules_generation.fetch_add(1, Ordering::SeqCst);
        self.inner.store.rules_changed();
    }

    fn lock_adaptive(&self) -> std::sync::MutexGuard<'_, Adaptive> {
        self.inner
            .adaptive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A backend's load report: a utilization in [0, 1], or latency ÷ target (≥ 0). Moves the
    /// backend's factor (see [`adaptive`](crate::adaptive)) and, if it moved, rescales the
    /// rules that name it. Returns the factor now in force.
    pub fn report_load(&self, backend: &str, load: f64) -> Result<f64, AdaptiveError> {
        if !load.is_finite() || load < 0.0 {
            return Err(AdaptiveError::BadLoad(load));
        }
        self.update_backend(backend, |state, settings, now| {
            state.report(settings, load, now)
        })
    }

    /// Sets a backend's factor decided elsewhere (another node sharing the store), clamped to
    /// [`min_factor`, 1], as if it had just reported. Returns the factor now in force.
    pub fn set_load_factor(&self, backend: &str, factor: f64) -> Result<f64, AdaptiveError> {
        if !factor.is_finite() || factor <= 0.0 {
            return Err(AdaptiveError::BadLoad(factor));
        }
        self.update_backend(backend, |state, settings, now| {
            state.set(settings, factor, now)
        })
    }

    /// Runs `update` on a declared backend's state and rescales the rules if it says the factor
    /// moved; returns the factor.
    fn update_backend(
        &self,
        backend: &str,
        update: impl FnOnce(&mut BackendState, &BackendSettings, u64) -> bool,
    ) -> Result<f64, AdaptiveError> {
        let mut adaptive = self.lock_adaptive();
        let settings = adaptive
            .base
            .backends()
            .get(backend)
            .cloned()
            .ok_or_else(|| AdaptiveError::UnknownBackend(backend.to_owned()))?;
        let now = self.inner.clock.now_ns();
        let state = adaptive
            .backends
            .entry(backend.to_owned())
            .or_insert_with(|| BackendState::new(now));
        let moved = update(state, &settings, now);
        let factor = state.factor;
        if moved {
            self.apply(&adaptive);
        }
        Ok(factor)
    }

    /// Lets silent backends recover (call about once a second); whether any factor moved.
    pub fn tick_adaptive(&self) -> bool {
        let mut adaptive = self.lock_adaptive();
        let now = self.inner.clock.now_ns();
        let base = Arc::clone(&adaptive.base);
        let mut moved = false;
        for (name, state) in &mut adaptive.backends {
            if let Some(settings) = base.backends().get(name) {
                moved |= state.tick(settings, now);
            }
        }
        if moved {
            self.apply(&adaptive);
        }
        moved
    }

    /// Each backend's current factor, and how long ago it last reported (`None`: never).
    pub fn load_factors(&self) -> Vec<(String, f64, Option<Duration>)> {
        let adaptive = self.lock_adaptive();
        let now = self.inner.clock.now_ns();
        adaptive
            .backends
            .iter()
            .map(|(name, s)| {
                let ago = s
                    .reported_ns
                    .map(|at| Duration::from_nanos(now.saturating_sub(at)));
                (name.clone(), s.factor, ago)
            })
            .collect()
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Rules> {
        self.inner.rules.load_full()
    }

    /// Drops ended bans, forgiven strikes and idle offense counters (the memory store's sweeper
    /// does this by itself; call it periodically with other stores).
    pub fn sweep_bans(&self) {
        self.inner
            .bans
            .sweep(self.inner.clock.now_ns(), self.inner.forget_after());
    }

    /// The bans and blocks in force (abuse protection).
    pub fn bans(&self) -> &Bans {
        &self.inner.bans
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The clock's current reading.
    pub fn now_ns(&self) -> u64 {
        self.inner.clock.now_ns()
    }
}

/// The rules as configured and the backends' load state.
#[derive(Debug)]
struct Adaptive {
    base: Arc<Rules>,
    backends: BTreeMap<String, BackendState>,
}

/// A load report that cannot be applied.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AdaptiveError {
    /// No rule set declares this backend.
    #[error("unknown backend {0:?}")]
    UnknownBackend(String),
    /// Not a finite number ≥ 0.
    #[error("load {0} is invalid: it must be a finite number at least 0")]
    BadLoad(f64),
}

/// One decision for several limits checked together: when all admit, the one with the least
/// room left (it is what a client must respect next); otherwise the denial that lasts longest.
fn combine(decisions: &[Decision]) -> Decision {
    decisions[chosen(decisions)]
}

/// The index of the decision [`combine`] answers with (0 for none).
fn chosen(decisions: &[Decision]) -> usize {
    let indexed = decisions.iter().enumerate();
    let pick = if decisions.iter().all(|d| d.allowed) {
        indexed.min_by_key(|(_, d)| (d.remaining, std::cmp::Reverse(d.reset_after)))
    } else {
        indexed
            .filter(|(_, d)| !d.allowed)
            .max_by_key(|(_, d)| d.retry_after)
    };
    pick.map_or(0, |(i, _)| i)
}

/// The answer of a rule that needs no counter.
fn fixed_answer(action: &Action) -> Decision {
    match action {
        Action::Deny { window } => {
            let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
            Decision::new(false, 0, 0, 0, ns)
        }
        _ => Decision::new(true, u32::MAX, u32::MAX, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::clock::ManualClock;
    use crate::policy::Policy;
    use crate::rules::Rule;

    fn limiter(clock: &ManualClock) -> Limiter {
        let default = Policy::per(2, Duration::from_secs(60), Algorithm::default()).unwrap();
        Limiter::builder(Rules::only_default(default))
            .clock(clock.clone())
            .sweep_interval(None)
            .build()
    }

    #[test]
    fn check_and_increment_counts_per_pair() {
        let clock = ManualClock::new(0);
        let l = limiter(&clock);
        assert!(l.check_and_increment("alice", "/a"));
        assert!(l.check_and_increment("alice", "/a"));
        assert!(!l.check_and_increment("alice", "/a"));
        assert!(l.check_and_increment("alice", "/b"));
        assert!(l.check_and_increment("bob", "/a"));
        clock.advance(Duration::from_secs(62));
        assert!(l.check_and_increment("alice", "/a"));
    }

    #[test]
    fn clones_share_one_budget() {
        let clock = ManualClock::new(0);
        let a = limiter(&clock);
        let b = a.clone();
        assert!(a.check_and_increment("u", "/e"));
        assert!(b.check_and_increment("u", "/e"));
        assert!(!a.check_and_increment("u", "/e"));
    }

    #[test]
    fn invalid_input_is_an_error_and_counts_nothing() {
        let clock = ManualClock::new(0);
        let l = limiter(&clock);
        assert_eq!(
            l.check("", "/a", 1),
            Err(CheckError::Empty { field: "user_id" })
        );
        assert!(l.check("u", &"e".repeat(2000), 1).is_err());
        assert!(!l.check_and_increment("", "/a"));
        assert!(l.store().is_empty());
    }

    #[test]
    fn a_prefetch_decides_and_counts_nothing() {
        let clock = ManualClock::new(0);
        let l = limiter(&clock);
        l.prefetch([("alice", "/a"), ("", "/a"), ("bob", "/b")]);
        assert!(l.store().is_empty(), "a prefetch creates no counter");
        assert!(l.check_and_increment("alice", "/a"));
        l.prefetch([("alice", "/a"), ("alice", "/a")]);
        assert!(l.check_and_increment("alice", "/a"));
        assert!(!l.check_and_increment("alice", "/a"));
        assert_eq!(l.store().len(), 1);
    }

    #[test]
    fn rules_change_at_run_time() {
        let clock = ManualClock::new(0);
        let l = limiter(&clock);
        assert!(l.check_and_increment("u", "/e"));
        assert!(l.check_and_increment("u", "/e"));
        assert!(!l.check_and_increment("u", "/e"));
        let five = Policy::per(5, Duration::from_secs(60), Algorithm::default()).unwrap();
        l.set_rules(Rules::only_default(five.clone()));
        // Same rule level: the counter carries over under the new limit.
        assert_eq!(l.check("u", "/e", 0).unwrap().remaining, 3);
        l.set_rules(
            Rules::new(
                five,
                [Rule {
                    user_id: Some("u".into()),
                    endpoint: None,
                    limits: vec![
                        Policy::per(1, Duration::from_secs(60), Algorithm::default()).unwrap(),
                    ],
                    shadow_mode: false,
                    abuse_exempt: false,
                    backends: Vec::new(),
                }],
            )
            .unwrap(),
        );
        let d = l.check("u", "/e", 1).unwrap();
        assert!(d.allowed);
        assert_eq!(d.limit, 1);
    }

    #[test]
    fn each_thread_sees_new_rules_at_once_and_limiters_keep_their_own() {
        let clock = ManualClock::new(0);
        let a = limiter(&clock); // 2 per minute
        let ten = Policy::per(10, Duration::from_secs(60), Algorithm::default()).unwrap();
        let b = Limiter::builder(Rules::only_default(ten))
            .clock(clock.clone())
            .sweep_interval(None)
            .build();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let worker = {
            let (a, barrier) = (a.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                // Caches a's rules on this thread, then waits for the change.
                let before = a.check("w", "/e", 0).unwrap().limit;
                barrier.wait();
                barrier.wait();
                (before, a.check("w", "/e", 0).unwrap().limit)
            })
        };
        barrier.wait();
        // Alternating limiters on one thread each get their own rules.
        for _ in 0..3 {
            assert_eq!(a.check("u", "/e", 0).unwrap().limit, 2);
            assert_eq!(b.check("u", "/e", 0).unwrap().limit, 10);
        }
        let seven = Policy::per(7, Duration::from_secs(60), Algorithm::default()).unwrap();
        a.set_rules(Rules::only_default(seven));
        assert_eq!(a.check("u", "/e", 0).unwrap().limit, 7);
        barrier.wait();
        assert_eq!(worker.join().unwrap(), (2, 7));
    }

    #[test]
    fn the_background_sweeper_reclaims_idle_keys() {
        let clock = ManualClock::new(0);
        let l = Limiter::builder(Rules::builtin())
            .clock(clock.clone())
            .sweep_interval(Some(Duration::from_millis(1)))
            .build();
        assert!(l.check_and_increment("u", "/e"));
        assert_eq!(l.store().len(), 1);
        clock.advance(Duration::from_secs(62));
        // Wait for the sweeper thread itself, bounded; no fixed sleep decides the outcome.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !l.store().is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(l.store().is_empty());
    }
}
