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
use crate::key::{CounterKey, ENDPOINT_KEY, MAX_ID_LEN, NATIVE_DOMAIN, USER_KEY, validate_id};
use crate::policy::Policy;
use crate::rules::{Action, Entry, RuleLevel, Rules, Target};
use crate::store::{MemoryStore, Store, StoreError, StoreRequest};

/// How often the background sweeper reclaims idle keys by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

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

/// Sweeps every `interval` until the last handle of the limiter is dropped.
fn spawn_sweeper(limiter: Weak<Inner<MemoryStore>>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("drl-sweeper".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(inner) = limiter.upgrade() else {
                    return;
                };
                let now = inner.clock.now_ns();
                inner.store.sweep(now);
                inner.bans.sweep(now, inner.forget_after());
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
            let Ok((target, values)) = native(rules, user_id, endpoint) else {
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
            let (target, values) = native(rules, user_id, endpoint)?;
            let now = self.inner.clock.now_ns();
            Ok(self.answer_now(rules, target, &values, hits, now, rules_epoch))
        })
    }

    /// Decides a native check synchronously on the memory store.
    fn answer_now(
        &self,
        rules: &Rules,
        target: &Target,
        values: &[&str; 2],
        hits: u32,
        now: u64,
        epoch: u64,
    ) -> NativeDecision {
        if let Some(checked) = self.banned(rules, target, values[0], now) {
            return checked;
        }
        let decision = match self.single(target, values, hits, now, epoch) {
            Some(request) => self.inner.store.check_now(&request),
            None => match target.action() {
                Action::Limit(limits) => {
                    let requests = self.requests_in(
                        &self.inner.domain,
                        target,
                        limits,
                        values,
                        hits,
                        now,
                        epoch,
                    );
                    combine(&self.inner.store.check_all_now(&requests))
                }
                other => fixed_answer(other),
            },
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
    /// The check on any store, networked ones included.
    pub async fn check_async(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u32,
    ) -> Result<Decision, LimiterError> {
        Ok(self
            .native_decision(user_id, endpoint, hits)
            .await?
            .decision)
    }

    /// [`Limiter::check_async`] with what a caller may report about it: the level of the rule
    /// that decided it (what a metric can label a decision with, from the same rule lookup),
    /// and whether a ban or shadow mode answered.
    pub async fn native_decision(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u32,
    ) -> Result<NativeDecision, LimiterError> {
        let rules_epoch = self.inner.store.rules_epoch();
        let rules = self.inner.rules.load_full();
        let (target, values) = native(&rules, user_id, endpoint)?;
        let now = self.inner.clock.now_ns();
        if let Some(checked) = self.banned(&rules, target, user_id, now) {
            return Ok(checked);
        }
        let decision = match self.single(target, &values, hits, now, rules_epoch) {
            Some(request) => self.inner.store.check(request).await?,
            None => match target.action() {
                Action::Limit(limits) => {
                    let requests = self.requests_in(
                        &self.inner.domain,
                        target,
                        limits,
                        &values,
                        hits,
                        now,
                        rules_epoch,
                    );
                    combine(&self.inner.store.check_all(&requests).await?)
                }
                other => fixed_answer(other),
            },
        };
        Ok(self.after(&rules, target, user_id, now, decision))
    }

    /// The answer for a banned user (no counter touched), or `None`.
    #[inline]
    fn banned(
        &self,
        rules: &Rules,
        target: &Target,
        user: &str,
        now: u64,
    ) -> Option<NativeDecision> {
        let until = if rules.blocklisted(user) {
            u64::MAX
        } else {
            self.inner
                .bans
                .banned_until(user, now, target.abuse_exempt())?
        };
        let limit = match target.action() {
            Action::Limit(limits) => limits.first().map_or(0, Policy::requests),
            _ => 0,
        };
        let left = until.saturating_sub(now);
        let decision = Decision::new(false, limit, 0, left, left);
        let mut checked = NativeDecision {
            level: target.level().unwrap_or(RuleLevel::Default),
            decision,
            banned: true,
            shadow_denied: false,
            new_ban: None,
        };
        if rules.shadow_mode() || target.shadow_mode() {
            checked.shadow();
        }
        Some(checked)
    }

    /// After a decision: a denial counts as an offense (and may ban), and shadow mode turns it
    /// into an admission.
    #[inline]
    fn after(
        &self,
        rules: &Rules,
        target: &Target,
        user: &str,
        now: u64,
        decision: Decision,
    ) -> NativeDecision {
        let mut checked = NativeDecision {
            level: target.level().unwrap_or(RuleLevel::Default),
            decision,
            banned: false,
            shadow_denied: false,
            new_ban: None,
        };
        if !decision.allowed {
            if let Some(policy) = rules.abuse()
                && !target.abuse_exempt()
            {
                checked.new_ban = self.inner.bans.offense(user, now, policy);
            }
            if rules.shadow_mode() || target.shadow_mode() {
                checked.shadow();
            }
        }
        checked
    }

    /// The common case as one store request: a single enforced limit.
    #[inline]
    fn single<'a>(
        &'a self,
        target: &'a Target,
        values: &'a [&'a str],
        hits: u32,
        now_ns: u64,
        rules_epoch: u64,
    ) -> Option<StoreRequest<'a>> {
        match target.action() {
            Action::Limit(limits) if limits.len() == 1 && !target.shadow_mode() => {
                Some(StoreRequest {
                    key: CounterKey {
                        domain: &self.inner.domain,
                        rule: target.id(),
                        limit: 0,
                        values,
                    },
                    policy: &limits[0],
                    hits,
                    now_ns,
                    rules_epoch,
                })
            }
            _ => None,
        }
    }

    /// One store request per limit of `target`, in `domain`.
    #[allow(clippy::too_many_arguments)]
    fn requests_in<'a>(
        &'a self,
        domain: &'a str,
        target: &'a Target,
        limits: &'a [Policy],
        values: &'a [&'a str],
        hits: u32,
        now_ns: u64,
        rules_epoch: u64,
    ) -> Vec<StoreRequest<'a>> {
        (0..limits.len())
            .map(|i| StoreRequest {
                key: CounterKey {
                    domain,
                    rule: target.id(),
                    limit: i as u16,
                    values,
                },
                policy: &limits[i],
                hits,
                now_ns,
                rules_epoch,
            })
            .collect()
    }

    /// Checks an Envoy-style request: the descriptors of `domain`, all or nothing (if any
    /// enforced limit of any descriptor denies, no descriptor is counted). Descriptors matching
    /// no rule, `unlimited` ones and ones whose rule another matched rule `replaces` are not
    /// limited; shadow-mode descriptors are counted when the rest is admitted but never deny.
    pub async fn check_descriptors(
        &self,
        domain: &str,
        descriptors: &[Descriptor<'_>],
    ) -> Result<RequestDecision, LimiterError> {
        validate_descriptors(descriptors)?;
        if domain == NATIVE_DOMAIN {
            // The native API's identifier rules hold for its domain whichever API is used.
            for d in descriptors {
                for e in d.entries {
                    if e.key == USER_KEY || e.key == ENDPOINT_KEY {
                        validate_id(
                            if e.key == USER_KEY {
                                "user_id"
                            } else {
                                "endpoint"
                            },
                            e.value,
                        )?;
                    }
                }
            }
        }
        let rules_epoch = self.inner.store.rules_epoch();
        let rules = self.inner.rules.load_full();
        let Some(rule_domain) = rules.domain(domain) else {
            return Err(CheckError::UnknownDomain {
                domain: domain.to_owned(),
            }
            .into());
        };
        // Native-domain requests share the native API's counters.
        let counter_domain: &str = if domain == NATIVE_DOMAIN {
            &self.inner.domain
        } else {
            domain
        };
        let overrides: Vec<Option<Target>> = descriptors
            .iter()
            .map(|d| {
                d.limit
                    .clone()
                    .map(|policy| Target::overriding(domain, d.entries, policy))
            })
            .collect();
        let mut targets: Vec<Option<&Target>> = descriptors
            .iter()
            .zip(&overrides)
            .map(|(d, o)| o.as_ref().or_else(|| rule_domain.find(d.entries)))
            .collect();
        let now = self.inner.clock.now_ns();
        if let Some(outcome) = self.blocked(&rules, descriptors, &targets, now) {
            return Ok(outcome);
        }
        let replaced: Vec<&str> = targets
            .iter()
            .flatten()
            .flat_map(|t| t.replaces())
            .collect();
        for target in &mut targets {
            if target.is_some_and(|t| t.name().is_some_and(|n| replaced.contains(&n))) {
                *target = None;
            }
        }
        let values: Vec<Vec<&str>> = descriptors
            .iter()
            .zip(&targets)
            .map(|(d, t)| match t {
                Some(t) => d
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(level, e)| t.counter_value(level, e.value))
                    .collect(),
                None => Vec::new(),
            })
            .collect();

        // Enforced limits of every descriptor go to the store as one all-or-nothing check.
        let mut enforced = Vec::new();
        let mut spans = vec![0..0; descriptors.len()];
        let mut denied_outright = false;
        for (i, (d, target)) in descriptors.iter().zip(&targets).enumerate() {
            let Some(target) = target else { continue };
            match target.action() {
                Action::Limit(limits) if !target.shadow_mode() => {
                    let start = enforced.len();
                    enforced.extend(self.requests_in(
                        counter_domain,
                        target,
                        limits,
                        &values[i],
                        d.hits,
                        now,
                        rules_epoch,
                    ));
                    spans[i] = start..enforced.len();
                }
                Action::Deny { .. } if !target.shadow_mode() => denied_outright = true,
                _ => {}
            }
        }
        let decided = if enforced.is_empty() || denied_outright {
            // Nothing is counted when a deny-all rule matched: read instead.
            let reads: Vec<StoreRequest<'_>> = enforced
                .iter()
                .map(|r| StoreRequest { hits: 0, ..*r })
                .collect();
            self.inner.store.check_all(&reads).await?
        } else {
            self.inner.store.check_all(&enforced).await?
        };
        let admitted = !denied_outright && decided.iter().all(|d| d.allowed);

        let mut statuses = Vec::with_capacity(descriptors.len());
        for (i, (d, target)) in descriptors.iter().zip(&targets).enumerate() {
            let Some(target) = target else {
                statuses.push(DescriptorDecision::no_limit());
                continue;
            };
            let label = Some(Arc::clone(target.label()));
            let status = match target.action() {
                Action::Unlimited => DescriptorDecision {
                    label,
                    decided_by: DecidedBy::Unlimited,
                },
                Action::Deny { window } => DescriptorDecision {
                    label,
                    decided_by: DecidedBy::Limited {
                        decision: fixed_answer(target.action()),
                        window: *window,
                        shadow: target.shadow_mode(),
                    },
                },
                Action::Limit(limits) if target.shadow_mode() => {
                    // Counted only if the enforced part was admitted; otherwise only read.
                    let hits = if admitted { d.hits } else { 0 };
                    let requests = self.requests_in(
                        counter_domain,
                        target,
                        limits,
                        &values[i],
                        hits,
                        now,
                        rules_epoch,
                    );
                    let decided = self.inner.store.check_all(&requests).await?;
                    let at = chosen(&decided);
                    DescriptorDecision {
                        label,
                        decided_by: DecidedBy::Limited {
                            decision: decided[at],
                            window: limits[at].limit().window(),
                            shadow: true,
                        },
                    }
                }
                Action::Limit(limits) => {
                    let decided = &decided[spans[i].clone()];
                    let at = chosen(decided);
                    DescriptorDecision {
                        label,
                        decided_by: DecidedBy::Limited {
                            decision: decided[at],
                            window: limits[at].limit().window(),
                            shadow: false,
                        },
                    }
                }
            };
            statuses.push(status);
        }
        let mut outcome = RequestDecision {
            allowed: admitted,
            statuses,
            shadow_denied: false,
            new_bans: Vec::new(),
        };
        if !admitted {
            if let Some(policy) = rules.abuse() {
                for ((d, target), status) in descriptors.iter().zip(&targets).zip(&outcome.statuses)
                {
                    let exempt = target.is_none_or(|t| t.abuse_exempt());
                    if status.over_limit()
                        && !exempt
                        && let Some(user) = d.entries.iter().find(|e| e.key == policy.user_key)
                        && !outcome.new_bans.iter().any(|b| b.user_id == user.value)
                        && let Some(ban) = self.inner.bans.offense(user.value, now, policy)
                    {
                        outcome.new_bans.push(ban);
                    }
                }
            }
            if rules.shadow_mode() {
                outcome.allowed = true;
                outcome.shadow_denied = true;
            }
        }
        Ok(outcome)
    }

    /// The answer when a descriptor names a banned user: denied, nothing counted.
    fn blocked(
        &self,
        rules: &Rules,
        descriptors: &[Descriptor<'_>],
        targets: &[Option<&Target>],
        now: u64,
    ) -> Option<RequestDecision> {
        if self.inner.bans.is_empty() && !rules.has_blocklist() {
            return None;
        }
        let user_key = rules.abuse().map_or(USER_KEY, |p| p.user_key.as_str());
        let statuses: Vec<DescriptorDecision> = descriptors
            .iter()
            .zip(targets)
            .map(|(d, target)| {
                let exempt = target.is_some_and(|t| t.abuse_exempt());
                let until = d
                    .entries
                    .iter()
                    .find(|e| e.key == user_key)
                    .and_then(|user| {
                        if rules.blocklisted(user.value) {
                            Some(u64::MAX)
                        } else {
                            self.inner.bans.banned_until(user.value, now, exempt)
                        }
                    });
                match until {
                    Some(until) => DescriptorDecision {
                        label: target.map(|t| Arc::clone(t.label())),
                        decided_by: DecidedBy::Blocked {
                            retry_after: Duration::from_nanos(until.saturating_sub(now)),
                        },
                    },
                    None => DescriptorDecision::no_limit(),
                }
            })
            .collect();
        if !statuses
            .iter()
            .any(|s| matches!(s.decided_by, DecidedBy::Blocked { .. }))
        {
            return None;
        }
        Some(RequestDecision {
            allowed: rules.shadow_mode(),
            statuses,
            shadow_denied: rules.shadow_mode(),
            new_bans: Vec::new(),
        })
    }

    /// `check_and_increment` on any store: `true` only if admitted; errors answer `false`.
    pub async fn check_and_increment_async(&self, user_id: &str, endpoint: &str) -> bool {
        self.check_async(user_id, endpoint, 1)
            .await
            .is_ok_and(|d| d.allowed)
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
        // (cached denials dropped). See `MemoryStore` for why a denial decided under the old
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

/// A native decision with what a caller may report about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeDecision {
    /// The level of the rule that decided.
    pub level: RuleLevel,
    /// The answer to give (in shadow mode, an admission even when a limit or ban denied).
    pub decision: Decision,
    /// The user is banned or blocked: answered without touching any counter.
    pub banned: bool,
    /// A limit or ban denied, and shadow mode answered allowed instead.
    pub shadow_denied: bool,
    /// This denial banned the user.
    pub new_ban: Option<Ban>,
}

impl NativeDecision {
    /// Answers allowed, remembering that it would have been denied.
    fn shadow(&mut self) {
        self.shadow_denied = true;
        self.decision.allowed = true;
        self.decision.retry_after = Duration::ZERO;
    }
}

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 16;

/// One descriptor of an Envoy-style request.
#[derive(Debug, Clone)]
pub struct Descriptor<'a> {
    /// The entries, matched level by level against the domain's rules.
    pub entries: &'a [Entry<'a>],
    /// Hits to count (all or nothing; 0 reads).
    pub hits: u32,
    /// A limit brought by the request, used instead of the configured rules.
    pub limit: Option<Policy>,
}

/// What one descriptor was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorDecision {
    /// The matched rule's metric label (bounded; never a request value). `None` when no rule
    /// matched.
    pub label: Option<Arc<str>>,
    pub decided_by: DecidedBy,
}

impl DescriptorDecision {
    fn no_limit() -> Self {
        Self {
            label: None,
            decided_by: DecidedBy::NoLimit,
        }
    }

    /// This descriptor denies the request (shadow-mode descriptors never do).
    pub fn over_limit(&self) -> bool {
        matches!(
            self.decided_by,
            DecidedBy::Blocked { .. }
                | DecidedBy::Limited {
                    decision: Decision { allowed: false, .. },
                    shadow: false,
                    ..
                }
        )
    }
}

/// How a descriptor was limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// No rule matched, or another matched rule replaces this one.
    NoLimit,
    /// The rule says `unlimited`.
    Unlimited,
    /// The user the descriptor names is banned or blocked for `retry_after` more (`u64::MAX`
    /// ns for a permanent block): denied without touching any counter.
    Blocked { retry_after: Duration },
    /// The rule's limits decided; a shadow-mode rule's denial does not deny the request.
    /// `window` is the window of the limit the decision reports.
    Limited {
        decision: Decision,
        window: Duration,
        shadow: bool,
    },
}

/// The answer to an Envoy-style request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDecision {
    /// Every enforced limit admitted the request, and it was counted.
    pub allowed: bool,
    /// One per descriptor, in request order.
    pub statuses: Vec<DescriptorDecision>,
    /// Global shadow mode answered allowed where a limit or ban denied.
    pub shadow_denied: bool,
    /// Users this request's denial banned.
    pub new_bans: Vec<Ban>,
}

/// Validates the native pair and finds its rule.
#[inline]
fn native<'a>(
    rules: &'a Rules,
    user_id: &'a str,
    endpoint: &'a str,
) -> Result<(&'a Target, [&'a str; 2]), CheckError> {
    validate_id("user_id", user_id)?;
    validate_id("endpoint", endpoint)?;
    Ok((rules.lookup(user_id, endpoint), [user_id, endpoint]))
}

fn validate_descriptors(descriptors: &[Descriptor<'_>]) -> Result<(), CheckError> {
    if descriptors.is_empty() {
        return Err(CheckError::NoDescriptors);
    }
    if descriptors.len() > MAX_DESCRIPTORS {
        return Err(CheckError::TooMany {
            what: "descriptors",
            count: descriptors.len(),
            max: MAX_DESCRIPTORS,
        });
    }
    for (index, d) in descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(CheckError::EmptyDescriptor { index });
        }
        if d.entries.len() > MAX_ENTRIES {
            return Err(CheckError::TooMany {
                what: "entries in a descriptor",
                count: d.entries.len(),
                max: MAX_ENTRIES,
            });
        }
        for e in d.entries {
            validate_id("descriptor entry key", e.key)?;
            if e.value.len() > MAX_ID_LEN {
                return Err(CheckError::TooLong {
                    field: "descriptor entry value",
                    len: e.value.len(),
                    max: MAX_ID_LEN,
                });
            }
        }
    }
    Ok(())
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
