//! Leases of hot keys: a node that sees one key's checks arrive faster than
//! [`LeaseConfig::threshold`] asks Redis, in the key's lease script (`lua/lease.lua`), for a
//! slice of its window: k admissions, granted g ≤ k (what fits) and **counted in the shared
//! window when granted**. The node then answers that key's next checks from the slice in memory,
//! with no round trip, until the slice runs out or the bucket it was counted in ends. Whatever
//! the node does with a slice (uses it, loses it when it dies), the window already holds it: a
//! lease can under-admit, never over-admit (docs/hot-keys.md).
//!
//! - Life: the script answers how long the bucket (sliding_window) or window (fixed_window) the
//!   slice was counted in stays current from its instant; the node uses the slice until its own
//!   clock, read *before* sending the call, has moved that far (minus a margin): the script ran
//!   after that reading, so the slice ends no later than its bucket.
//! - Size: the key's local rate times the slice's expected life, at most `max_fraction` of N and
//!   a quarter of what the window had left at the last answer; below two admissions no slice is
//!   asked for and checks go to Redis one by one, so a key at its limit is exact. One request at
//!   a time per key and node; checks arriving meanwhile go to Redis as usual.
//! - Returns: what a slice leaves unused goes back with the node's next lease request of the key,
//!   and the script takes it back only from a bucket or window still counted; otherwise (the key
//!   went cold, the node died) it stays counted until it leaves the window: under-admission of at
//!   most one slice per node and key.
//! - Rule reloads: a slice belongs to the rules epoch and the limit it was granted under; a check
//!   under another never uses it (it is returned like an expired one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drl_core::{Algorithm, Decision, Policy};

use crate::config::LeaseConfig;
use crate::scripts::Grant;

/// How often a key's local rate is re-measured.
const TICK_NS: u64 = 100_000_000;
/// Subtracted from a slice's life: the node's clock may run a little slower than the server's.
const MARGIN_NS: u64 = 1_000_000;
/// Keys tracked per shard (16 shards) before idle ones are dropped.
const PER_SHARD: usize = 1024;
/// A key not checked for this long is dropped when its shard is full.
const IDLE_NS: u64 = 2_000_000_000;
const SHARDS: usize = 16;

/// What to do with a check of a key that may be leased.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Admitted from the slice in memory.
    Answer(Decision),
    /// Ask Redis for a slice of `want`, giving back `back` (a previous slice's refund token and
    /// its unused admissions).
    Ask {
        want: u32,
        back: Option<(String, u32)>,
    },
    /// An ordinary check.
    Pass,
}

/// Counters of the leases, for the store's metrics.
#[derive(Debug, Default)]
pub(crate) struct LeaseCounters {
    /// Lease requests that were granted at least one admission.
    pub(crate) grants: AtomicU64,
    /// Admissions granted (each counted in the shared window when granted).
    pub(crate) granted: AtomicU64,
    /// Granted admissions that admitted a check (the requesting check's included).
    pub(crate) used: AtomicU64,
    /// Decisions answered from a slice in memory, with no call to Redis.
    pub(crate) answers: AtomicU64,
    /// Unused admissions taken back by the script.
    pub(crate) returned: AtomicU64,
    /// Unused admissions neither used nor taken back: they stay counted until they leave the
    /// window (under-admission).
    pub(crate) expired: AtomicU64,
}

#[derive(Debug)]
struct Slice {
    left: u32,
    /// Local time (ns) at which the slice ends.
    until: u64,
    token: String,
    epoch: u64,
    limit: u32,
    window_ns: u64,
    /// The window's remaining after the grant (all of the slice counted).
    remaining: u32,
    reset_after: Duration,
    granted_at: u64,
}

#[derive(Debug, Default)]
struct Entry {
    /// Start of the current rate tick, checks seen since, and the rate of the last tick.
    since: u64,
    seen: u32,
    rate: f64,
    touched: u64,
    /// What the window had left at the last answer from Redis (None: not known yet).
    remaining: Option<u32>,
    slice: Option<Slice>,
    /// A finished slice's refund token and unused admissions, to give back.
    back: Option<(String, u32)>,
    asking: bool,
}

/// Some of the tracked keys, and when idle ones were last dropped from them.
#[derive(Debug, Default)]
struct Shard {
    keys: HashMap<Vec<u8>, Entry>,
    pruned: u64,
}

/// The leases of one store.
#[derive(Debug)]
pub(crate) struct Leases {
    config: LeaseConfig,
    shards: Box<[Mutex<Shard>]>,
    pub(crate) counters: LeaseCounters,
}

/// Whether `policy`'s algorithm can be leased (sliding_window and fixed_window: a window's
/// admissions can be counted ahead; token_bucket and sliding_log cannot, docs/hot-keys.md).
pub(crate) fn leasable(policy: &Policy) -> bool {
    matches!(
        policy.algorithm(),
        Algorithm::SlidingWindow { .. } | Algorithm::FixedWindow
    )
}

impl Leases {
    pub(crate) fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            counters: LeaseCounters::default(),
        }
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        // FNV-1a: cheap, and good enough to spread keys over a few shards.
        let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let shard = &self.shards[(hash % SHARDS as u64) as usize];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expire(&self, unused: u32) {
        self.counters
            .expired
            .fetch_add(u64::from(unused), Ordering::Relaxed);
    }

    /// Sets `back` to a finished slice's unused admissions (an older one not yet given back
    /// expires).
    fn retire(&self, entry: &mut Entry) {
        if let Some(slice) = entry.slice.take()
            && slice.left > 0
            && let Some((_, older)) = entry.back.replace((slice.token, slice.left))
        {
            self.expire(older);
        }
    }

    /// A check of one hit of `key` under `policy` (leasable) and rules `epoch`, at local time
    /// `now` (ns).
    pub(crate) fn take(&self, key: &[u8], policy: &Policy, epoch: u64, now: u64) -> Take {
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        if !shard.keys.contains_key(key) && shard.keys.len() >= PER_SHARD {
            // Full: drop the idle keys, at most once a tick (many cold keys would otherwise
            // scan the shard at every check); a key that finds no room is not tracked.
            if now.saturating_sub(shard.pruned) < TICK_NS {
                return Take::Pass;
            }
            shard.pruned = now;
            shard.keys.retain(|_, e| {
                let keep = e.asking || now.saturating_sub(e.touched) < IDLE_NS;
                if !keep {
                    let unused =
                        e.slice.as_ref().map_or(0, |s| s.left) + e.back.as_ref().map_or(0, |b| b.1);
                    self.expire(unused);
                }
                keep
            });
            if shard.keys.len() >= PER_SHARD {
                return Take::Pass;
            }
        }
        let entry = shard.keys.entry(key.to_vec()).or_insert_with(|| Entry {
            since: now,
            ..Entry::default()
        });
        entry.touched = now;
        entry.seen = entry.seen.saturating_add(1);
        let elapsed = now.saturating_sub(entry.since);
        if elapsed >= TICK_NS {
            entry.rate = f64::from(entry.seen) * 1e9 / elapsed as f64;
            entry.seen = 0;
            entry.since = now;
        }
        if let Some(slice) = &mut entry.slice {
            let current = slice.epoch == epoch
                && slice.limit == policy.requests()
                && slice.window_ns == policy.window_ns()
                && now < slice.until;
            if current && slice.left > 0 {
                slice.left -= 1;
                self.counters.used.fetch_add(1, Ordering::Relaxed);
                self.counters.answers.fetch_add(1, Ordering::Relaxed);
                let since = Duration::from_nanos(now.saturating_sub(slice.granted_at));
                return Take::Answer(Decision {
                    allowed: true,
                    limit: slice.limit,
                    remaining: slice.remaining.saturating_add(slice.left),
                    reset_after: slice.reset_after.saturating_sub(since),
                    retry_after: Duration::ZERO,
                });
            }
            if !current || slice.left == 0 {
                self.retire(entry);
            }
        }
        if entry.asking || entry.rate < self.config.threshold {
            return Take::Pass;
        }
        let want = self.size(policy, entry.rate, entry.remaining);
        if want < 2 {
            return Take::Pass;
        }
        entry.asking = true;
        Take::Ask {
            want,
            back: entry.back.take(),
        }
    }

    /// A slice's size: the rate times its expected life, at most `max_fraction` of N and a
    /// quarter of what the window had left.
    fn size(&self, policy: &Policy, rate: f64, remaining: Option<u32>) -> u32 {
        let life_ns = match policy.algorithm() {
            Algorithm::SlidingWindow { .. } => policy.bucket_ns(),
            _ => policy.window_ns(),
        };
        let limit = f64::from(policy.requests());
        let by_rate = rate * life_ns as f64 / 1e9;
        let by_share = (limit * self.config.max_fraction).floor();
        let by_budget = f64::from(remaining.unwrap_or(policy.requests())) / 4.0;
        by_rate.min(by_share).min(by_budget).max(0.0) as u32
    }

    /// The answer to a lease request of `key` sent at local time `sent` under rules `epoch`
    /// (`current`: the store's epoch now). Its first admission went to the check that asked.
    /// `confirmed`: false when strict mode's WAIT did not confirm it (the check is denied, the
    /// slice not used: it stays counted).
    pub(crate) fn granted(
        &self,
        key: &[u8],
        policy: &Policy,
        epochs: (u64, u64),
        sent: u64,
        grant: &Grant,
        confirmed: bool,
    ) {
        let c = &self.counters;
        c.returned
            .fetch_add(u64::from(grant.returned), Ordering::Relaxed);
        if grant.granted > 0 {
            c.grants.fetch_add(1, Ordering::Relaxed);
            c.granted
                .fetch_add(u64::from(grant.granted), Ordering::Relaxed);
        }
        let mut shard = self.shard(key);
        let Some(entry) = shard.keys.get_mut(key) else {
            self.expire(grant.granted);
            return;
        };
        entry.asking = false;
        entry.remaining = Some(grant.reply.decision.remaining);
        if grant.granted == 0 {
            return;
        }
        if !confirmed {
            self.expire(grant.granted);
            return;
        }
        c.used.fetch_add(1, Ordering::Relaxed);
        let left = grant.granted - 1;
        let life = (grant.life.as_nanos() as u64).saturating_sub(MARGIN_NS);
        self.retire(entry);
        entry.slice = Some(Slice {
            left,
            until: sent.saturating_add(life),
            token: grant.reply.token.clone(),
            epoch: epochs.0,
            limit: policy.requests(),
            window_ns: policy.window_ns(),
            remaining: grant.reply.decision.remaining,
            reset_after: grant.reply.decision.reset_after,
            granted_at: sent,
        });
        if epochs.0 != epochs.1 {
            // The rules changed while it was asked for: not to be used under the new ones.
            self.retire(entry);
        }
    }

    /// A lease request of `key` that got no answer: what it gave back may or may not have been
    /// taken back, and what it may have been granted is lost (both under-admission).
    pub(crate) fn failed(&self, key: &[u8], back: Option<u32>) {
        self.expire(back.unwrap_or(0));
        if let Some(entry) = self.shard(key).keys.get_mut(key) {
            entry.asking = false;
        }
    }

    /// What the window of `key` had left at an ordinary check's answer.
    pub(crate) fn observe(&self, key: &[u8], remaining: u32) {
        if let Some(entry) = self.shard(key).keys.get_mut(key) {
            entry.remaining = Some(remaining);
        }
    }

    /// The rules changed: no slice is used under the new ones (each is given back with its
    /// key's next lease request).
    pub(crate) fn rules_changed(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for entry in shard.keys.values_mut() {
                self.retire(entry);
                entry.remaining = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::Reply;

    fn policy(n: u64) -> Policy {
        Policy::per(
            n,
            Duration::from_secs(10),
            Algorithm::SlidingWindow { precision: 10 },
        )
        .expect("policy")
    }

    fn grant(granted: u32, remaining: u32, life_ms: u64) -> Grant {
        Grant {
            reply: Reply {
                decision: Decision {
                    allowed: granted > 0,
                    limit: 1000,
                    remaining,
                    reset_after: Duration::from_secs(11),
                    retry_after: Duration::ZERO,
                },
                never: false,
                token: "7".into(),
            },
            granted,
            life: Duration::from_millis(life_ms),
            returned: 0,
        }
    }

    /// Checks at `per_sec` for one tick, so the key's rate is known.
    fn warm(leases: &Leases, policy: &Policy, per_sec: u64) -> u64 {
        let step = 1_000_000_000 / per_sec;
        let mut now = 0;
        while now < TICK_NS {
            assert_eq!(leases.take(b"k", policy, 0, now), Take::Pass);
            now += step;
        }
        now
    }

    #[test]
    fn many_cold_keys_are_tracked_boundedly() {
        let leases = Leases::new(LeaseConfig::default());
        let policy = policy(1000);
        for i in 0..(SHARDS * PER_SHARD * 2) as u64 {
            let key = i.to_be_bytes();
            assert_eq!(leases.take(&key, &policy, 0, i * 1_000), Take::Pass);
        }
        let tracked: usize = leases
            .shards
            .iter()
            .map(|s| s.lock().expect("shard").keys.len())
            .sum();
        assert!(tracked <= SHARDS * PER_SHARD, "{tracked} keys tracked");
    }

    #[test]
    fn a_cold_key_never_leases() {
        let leases = Leases::new(LeaseConfig::default());
        let policy = policy(1000);
        let now = warm(&leases, &policy, 100);
        assert_eq!(leases.take(b"k", &policy, 0, now), Take::Pass);
    }

    #[test]
    fn a_hot_key_asks_once_then_answers_from_its_slice_until_it_runs_out_or_ends() {
        let leases = Leases::new(LeaseConfig::default());
        let policy = policy(1000);
        let now = warm(&leases, &policy, 20_000);
        // 20 000/s over a 1 s bucket, capped at 10 % of N.
        let Take::Ask { want, back } = leases.take(b"k", &policy, 0, now) else {
            panic!("a hot key asks");
        };
        assert_eq!((want, back), (100, None));
        // One request at a time.
        assert_eq!(leases.take(b"k", &policy, 0, now), Take::Pass);
        leases.granted(b"k", &policy, (0, 0), now, &grant(3, 900, 500), true);
        for left in [1, 0] {
            let Take::Answer(d) = leases.take(b"k", &policy, 0, now + 1) else {
                panic!("answered from the slice");
            };
            assert!(d.allowed);
            assert_eq!(d.remaining, 900 + left);
        }
        // Spent: asks again (the budget left caps it: 900 / 4).
        let Take::Ask { want, back } = leases.take(b"k", &policy, 0, now + 2) else {
            panic!("asks again");
        };
        assert_eq!((want, back), (100, None));
        leases.granted(b"k", &policy, (0, 0), now + 2, &grant(5, 10, 500), true);
        // Past its life (500 ms less the margin): not used (and the key has gone cold: no
        // request); the 4 unused wait to go back with the next request.
        let later = now + 2 + 499_000_000;
        assert_eq!(leases.take(b"k", &policy, 0, later), Take::Pass);
        let back = leases
            .shard(b"k")
            .keys
            .get(&b"k"[..])
            .and_then(|e| e.back.clone());
        assert_eq!(back, Some(("7".to_owned(), 4)));
        // Hot again: the request gives them back, sized by the budget left (10 / 4).
        leases
            .shard(b"k")
            .keys
            .get_mut(&b"k"[..])
            .expect("entry")
            .rate = 20_000.0;
        let Take::Ask { want, back } = leases.take(b"k", &policy, 0, later + 1) else {
            panic!("asks again");
        };
        assert_eq!((want, back), (2, Some(("7".to_owned(), 4))));
        let c = &leases.counters;
        assert_eq!(c.used.load(Ordering::Relaxed), 4);
        assert_eq!(c.answers.load(Ordering::Relaxed), 2);
        assert_eq!(c.granted.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn near_the_limit_checks_go_one_by_one() {
        let leases = Leases::new(LeaseConfig::default());
        let policy = policy(1000);
        let now = warm(&leases, &policy, 20_000);
        leases.observe(b"k", 7);
        assert_eq!(leases.take(b"k", &policy, 0, now), Take::Pass);
    }

    #[test]
    fn a_reload_retires_every_slice() {
        let leases = Leases::new(LeaseConfig::default());
        let policy = policy(1000);
        let now = warm(&leases, &policy, 20_000);
        assert!(matches!(
            leases.take(b"k", &policy, 0, now),
            Take::Ask { .. }
        ));
        leases.granted(b"k", &policy, (0, 0), now, &grant(50, 900, 900), true);
        leases.rules_changed();
        // Under the new epoch (or a new limit) the slice is not used: it is given back.
        let Take::Ask { back, .. } = leases.take(b"k", &policy, 1, now + 1) else {
            panic!("asks under the new rules");
        };
        assert_eq!(back, Some(("7".to_owned(), 49)));
        // A grant asked under the old rules and answered after the reload is not used either.
        leases.granted(b"k", &policy, (1, 2), now + 1, &grant(50, 800, 900), true);
        let Take::Ask { back, .. } = leases.take(b"k", &policy.clone(), 2, now + 2) else {
            panic!("asks again");
        };
        assert_eq!(back, Some(("7".to_owned(), 49)));
        let smaller = Policy::per(
            500,
            Duration::from_secs(10),
            Algorithm::SlidingWindow { precision: 10 },
        )
        .expect("policy");
        leases.granted(b"k", &policy, (2, 2), now + 2, &grant(50, 800, 900), true);
        assert!(!matches!(
            leases.take(b"k", &smaller, 2, now + 3),
            Take::Answer(_)
        ));
    }

    #[test]
    fn an_unconfirmed_grant_is_not_used() {
        let leases = Leases::new(LeaseConfig::default());
        let policy = policy(1000);
        let now = warm(&leases, &policy, 20_000);
        assert!(matches!(
            leases.take(b"k", &policy, 0, now),
            Take::Ask { .. }
        ));
        leases.granted(b"k", &policy, (0, 0), now, &grant(50, 900, 900), false);
        assert!(!matches!(
            leases.take(b"k", &policy, 0, now + 1),
            Take::Answer(_)
        ));
        assert_eq!(leases.counters.expired.load(Ordering::Relaxed), 50);
    }
}
