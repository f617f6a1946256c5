//! Abuse protection: automatic, escalating bans for users that keep hitting their limits, and
//! manual blocks (docs/design.md, "Abuse protection and adaptive limits").
//!
//! - **Offenses.** Every denial of a user counts one offense in a sliding window of its own
//!   (a [`MemoryStore`] counter per user, `threshold` per `interval`): the denial that finds that
//!   window full, i.e. more than `threshold` denials within `interval`, bans the user.
//! - **Escalation.** Each ban of a user who was banned before, and not forgiven since
//!   (`forget_after` without a ban), lasts `escalation` times longer, up to `max_ban`.
//! - **Blocks.** An operator's block lasts a given time or forever.
//! - **While banned**, every request of the user is denied at once, without touching its
//!   counters, with the ban's remaining time as `retry_after`; those denials are not offenses.
//!
//! The check costs papaya's emptiness test (a sum over its few striped length counters) while
//! no user is banned, and one hash lookup of the user otherwise: no store round trip for an
//! ordinary request. State is per process; on the Redis store the server shares it between
//! nodes (`drl_redis::shared::Coordination`), applying other nodes' bans with [`Bans::apply`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::algorithm::Algorithm;
use crate::error::PolicyError;
use crate::key::CounterKey;
use crate::policy::{Limit, Policy};
use crate::store::{MemoryStore, StoreRequest};

/// Longest ban, in any configuration.
pub const MAX_BAN: Duration = Duration::from_secs(366 * 86_400);

/// When a user is banned automatically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbusePolicy {
    /// More than `threshold` denials within `interval` ban the user.
    offenses: Policy,
    /// The first ban's length.
    pub ban: Duration,
    /// The longest a ban grows to.
    pub max_ban: Duration,
    /// Each repeat ban lasts this many times the previous one.
    pub escalation: u32,
    /// A user not banned for this long starts again from the first ban's length.
    pub forget_after: Duration,
    /// The descriptor entry key that names the user in Envoy requests (native: `user_id`).
    pub user_key: String,
}

impl AbusePolicy {
    /// Validates the settings: `threshold` 1 to 1 000 000, `interval` 1 s to 366 d, bans from
    /// 1 s to 366 d with `max_ban ≥ ban`, `escalation` from 1 to 16.
    pub fn new(
        threshold: u64,
        interval: Duration,
        ban: Duration,
        max_ban: Duration,
        escalation: u32,
    ) -> Result<Self, PolicyError> {
        let offenses = Policy::new(Limit::new(threshold, interval)?, Algorithm::default())?;
        for (name, d) in [("ban", ban), ("max_ban", max_ban)] {
            if d < Duration::from_secs(1) || d > MAX_BAN {
                return Err(PolicyError::OutOfRange {
                    setting: name,
                    value: crate::policy::format_duration(d),
                    range: "from 1s to 366d",
                });
            }
        }
        if max_ban < ban {
            return Err(PolicyError::OutOfRange {
                setting: "max_ban",
                value: crate::policy::format_duration(max_ban),
                range: "at least ban",
            });
        }
        if !(1..=16).contains(&escalation) {
            return Err(PolicyError::OutOfRange {
                setting: "escalation",
                value: escalation.to_string(),
                range: "from 1 to 16",
            });
        }
        Ok(Self {
            offenses,
            ban,
            max_ban,
            escalation,
            forget_after: Duration::from_secs(86_400),
            user_key: crate::key::USER_KEY.to_owned(),
        })
    }

    /// Denials that may happen within `interval` before the next one bans.
    pub fn threshold(&self) -> u32 {
        self.offenses.requests()
    }

    pub fn interval(&self) -> Duration {
        self.offenses.limit().window()
    }

    /// The length of a user's `strike`-th ban (1-based).
    pub fn ban_length(&self, strike: u32) -> Duration {
        let factor = u64::from(self.escalation).saturating_pow(strike.saturating_sub(1));
        let secs = self.ban.as_secs().saturating_mul(factor);
        Duration::from_secs(secs).min(self.max_ban)
    }
}

/// Why a user is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanKind {
    /// By the offense threshold.
    Automatic,
    /// By an operator.
    Manual,
}

impl BanKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Automatic => "automatic",
            Self::Manual => "manual",
        }
    }
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub user_id: String,
    pub kind: BanKind,
    /// When it ends (clock ns); `None` for a permanent block.
    pub until_ns: Option<u64>,
    /// How many automatic bans the user has had, this one included (0 for a manual block).
    pub strike: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: BanKind,
    until_ns: Option<u64>,
    strike: u32,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    /// When the latest automatic ban ended or ends.
    last_until_ns: u64,
}

/// The bans and blocks of one limiter.
#[derive(Debug)]
pub struct Bans {
    /// While empty (papaya keeps a count), checks skip the lookup.
    active: papaya::HashMap<Box<str>, Entry, RandomState>,
    strikes: Mutex<HashMap<Box<str>, Strikes, RandomState>>,
    offenses: MemoryStore,
    /// The users with the most offenses since start, at most [`TOP_OFFENDERS`] of them.
    offenders: Mutex<HashMap<Box<str>, u64, RandomState>>,
}

/// How many offenders [`Bans::top_offenders`] tracks.
pub const TOP_OFFENDERS: usize = 1_000;

impl Default for Bans {
    fn default() -> Self {
        Self {
            active: papaya::HashMap::builder()
                .hasher(RandomState::default())
                .build(),
            strikes: Mutex::default(),
            offenses: MemoryStore::new(),
            offenders: Mutex::default(),
        }
    }
}

impl Bans {
    pub fn new() -> Self {
        Self::default()
    }

    /// No ban or block in force (or ended ones not yet swept).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// When `user`'s ban ends (`u64::MAX` for a permanent block), if banned at `now_ns`; `exempt`
    /// skips automatic bans (rules that opted out).
    #[inline]
    pub fn banned_until(&self, user: &str, now_ns: u64, exempt: bool) -> Option<u64> {
        if self.active.is_empty() {
            return None;
        }
        let active = self.active.pin();
        let entry = active.get(user)?;
        if exempt && entry.kind == BanKind::Automatic {
            return None;
        }
        match entry.until_ns {
            None => Some(u64::MAX),
            Some(until) if now_ns < until => Some(until),
            Some(_) => None,
        }
    }

    /// Counts one denial of `user`; bans them when it is one too many. Returns the new ban.
    pub fn offense(&self, user: &str, now_ns: u64, policy: &AbusePolicy) -> Option<Ban> {
        self.count_offender(user);
        let values = [user];
        let request = StoreRequest {
            key: CounterKey {
                domain: "",
                rule: b"offenses",
                limit: 0,
                values: &values,
                prefix: None,
            },
            policy: &policy.offenses,
            hits: 1,
            now_ns,
            rules_epoch: 0,
        };
        if self.offenses.admit_now(&request) {
            return None;
        }
        // One too many: ban, unless a ban is already in force.
        if self.banned_until(user, now_ns, false).is_some() {
            return None;
        }
        let strike = {
            let mut strikes = self
                .strikes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let forgiven = |s: &Strikes| {
                now_ns.saturating_sub(s.last_until_ns) >= duration_ns(policy.forget_after)
            };
            let count = match strikes.get(user) {
                Some(s) if !forgiven(s) => s.count.saturating_add(1),
                _ => 1,
            };
            let until = now_ns.saturating_add(duration_ns(policy.ban_length(count)));
            strikes.insert(
                user.into(),
                Strikes {
                    count,
                    last_until_ns: until,
                },
            );
            count
        };
        let until = now_ns.saturating_add(duration_ns(policy.ban_length(strike)));
        self.insert(
            user,
            Entry {
                kind: BanKind::Automatic,
                until_ns: Some(until),
                strike,
            },
        );
        Some(Ban {
            user_id: user.to_owned(),
            kind: BanKind::Automatic,
            until_ns: Some(until),
            strike,
        })
    }

    /// Space-Saving (Metwally et al.): while the table is full, a new user replaces the one
    /// with the fewest offenses and inherits its count + 1, so every user with more offenses
    /// than the table's smallest count is in it, and counts are over-estimated by at most that.
    fn count_offender(&self, user: &str) {
        let mut offenders = self
            .offenders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = offenders.get_mut(user) {
            *count += 1;
            return;
        }
        let count = if offenders.len() < TOP_OFFENDERS {
            1
        } else {
            let Some((least, &min)) = offenders.iter().min_by_key(|(_, c)| **c) else {
                return;
            };
            let least = least.clone();
            offenders.remove(&least);
            min + 1
        };
        offenders.insert(user.into(), count);
    }

    /// The `n` users with the most offenses (denials) since start, most first (bounded: at most
    /// [`TOP_OFFENDERS`] are tracked).
    pub fn top_offenders(&self, n: usize) -> Vec<(String, u64)> {
        let offenders = self
            .offenders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut top: Vec<(String, u64)> =
            offenders.iter().map(|(u, &c)| (u.to_string(), c)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }

    /// Blocks `user` until `until_ns`, or for good.
    pub fn block(&self, user: &str, until_ns: Option<u64>) -> Ban {
        self.insert(
            user,
            Entry {
                kind: BanKind::Manual,
                until_ns,
                strike: 0,
            },
        );
        Ban {
            user_id: user.to_owned(),
            kind: BanKind::Manual,
            until_ns,
            strike: 0,
        }
    }

    /// Lifts `user`'s ban or block; whether there was one.
    pub fn unblock(&self, user: &str) -> bool {
        self.active.pin().remove(user).is_some()
    }

    /// Records a ban made elsewhere (another node, through a shared store).
    pub fn apply(&self, ban: &Ban) {
        self.insert(
            &ban.user_id,
            Entry {
                kind: ban.kind,
                until_ns: ban.until_ns,
                strike: ban.strike,
            },
        );
    }

    fn insert(&self, user: &str, entry: Entry) {
        self.active.pin().insert(user.into(), entry);
    }

    /// The bans in force at `now_ns`, sorted by user.
    pub fn list(&self, now_ns: u64) -> Vec<Ban> {
        let mut bans: Vec<Ban> = self
            .active
            .pin()
            .iter()
            .filter(|(_, e)| e.until_ns.is_none_or(|u| now_ns < u))
            .map(|(user, e)| Ban {
                user_id: user.to_string(),
                kind: e.kind,
                until_ns: e.until_ns,
                strike: e.strike,
            })
            .collect();
        bans.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        bans
    }

    /// Drops ended bans, forgiven strikes and idle offense counters.
    pub fn sweep(&self, now_ns: u64, forget_after: Duration) {
        self.active
            .pin()
            .retain(|_, e| e.until_ns.is_none_or(|u| now_ns < u));
        self.strikes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, s| now_ns.saturating_sub(s.last_until_ns) < duration_ns(forget_after));
        self.offenses.sweep(now_ns);
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn policy() -> AbusePolicy {
        AbusePolicy::new(
            3,
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(200),
            2,
        )
        .unwrap()
    }

    #[test]
    fn more_than_threshold_denials_ban_and_repeats_escalate() {
        let (bans, p) = (Bans::new(), policy());
        for _ in 0..3 {
            assert_eq!(bans.offense("u", 0, &p), None);
        }
        let ban = bans.offense("u", 0, &p).unwrap();
        assert_eq!((ban.strike, ban.until_ns), (1, Some(60 * SEC)));
        assert_eq!(bans.banned_until("u", 59 * SEC, false), Some(60 * SEC));
        assert_eq!(bans.banned_until("u", 60 * SEC, false), None);
        assert_eq!(bans.banned_until("other", 0, false), None);
        // Automatic bans do not apply to exempt rules.
        assert_eq!(bans.banned_until("u", 0, true), None);
        // Again after the ban: twice as long, then capped at max_ban.
        let t = 100 * SEC;
        for _ in 0..3 {
            bans.offense("u", t, &p);
        }
        let second = bans.offense("u", t, &p).unwrap();
        assert_eq!((second.strike, second.until_ns), (2, Some(t + 120 * SEC)));
        let t = 300 * SEC;
        for _ in 0..3 {
            bans.offense("u", t, &p);
        }
        let third = bans.offense("u", t, &p).unwrap();
        assert_eq!((third.strike, third.until_ns), (3, Some(t + 200 * SEC)));
    }

    #[test]
    fn offenses_spread_over_more_than_the_interval_do_not_ban() {
        let (bans, p) = (Bans::new(), policy());
        for i in 0..20 {
            assert_eq!(bans.offense("u", i * 4 * SEC, &p), None, "offense {i}");
        }
    }

    #[test]
    fn top_offenders_are_counted_and_bounded() {
        let (bans, p) = (Bans::new(), policy());
        for _ in 0..5 {
            bans.offense("worst", 0, &p);
        }
        for _ in 0..2 {
            bans.offense("second", 0, &p);
        }
        for i in 0..TOP_OFFENDERS + 10 {
            bans.offense(&format!("once-{i}"), 0, &p);
        }
        assert_eq!(bans.top_offenders(1), [("worst".to_owned(), 5)]);
        let all = bans.top_offenders(usize::MAX);
        assert_eq!(all.len(), TOP_OFFENDERS);
        // Users above the table's smallest count stay in it, exactly counted; newcomers to a
        // full table are over-estimated by at most that smallest count (here 1).
        assert!(all.contains(&("second".to_owned(), 2)));
        assert!(all.iter().all(|(_, c)| *c <= 5));
    }

    #[test]
    fn blocks_are_listed_and_lifted() {
        let bans = Bans::new();
        bans.block("a", None);
        bans.block("b", Some(10 * SEC));
        assert_eq!(bans.banned_until("a", u64::MAX - 1, false), Some(u64::MAX));
        // Manual blocks apply to exempt rules too.
        assert_eq!(bans.banned_until("b", 0, true), Some(10 * SEC));
        let users: Vec<String> = bans.list(0).into_iter().map(|b| b.user_id).collect();
        assert_eq!(users, ["a", "b"]);
        assert_eq!(bans.list(10 * SEC).len(), 1);
        assert!(bans.unblock("a"));
        assert!(!bans.unblock("a"));
        bans.sweep(10 * SEC, Duration::from_secs(1));
        assert!(bans.list(0).is_empty());
        assert_eq!(bans.banned_until("b", 0, false), None);
    }

    #[test]
    fn settings_are_validated() {
        let ok = |t, i, b, m, e| {
            AbusePolicy::new(
                t,
                Duration::from_secs(i),
                Duration::from_secs(b),
                Duration::from_secs(m),
                e,
            )
        };
        assert!(ok(0, 10, 60, 60, 2).is_err());
        assert!(ok(3, 0, 60, 60, 2).is_err());
        assert!(ok(3, 10, 0, 60, 2).is_err());
        assert!(ok(3, 10, 60, 30, 2).is_err());
        assert!(ok(3, 10, 60, 60, 0).is_err());
        assert!(ok(3, 10, 60, 60, 17).is_err());
        assert!(ok(3, 10, 60, 400 * 86_400, 2).is_err());
        assert!(ok(3, 10, 60, 60, 1).is_ok());
    }
}
