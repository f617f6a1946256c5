//! Cluster-wide bans, blocks and adaptive factors for nodes on the Redis store, through
//! [`SharedState`]: every change is written as it happens, and [`Coordination::sync`]
//! (run once a second by the node) reads the shared state back into the local limiter, so a ban
//! or block made on any node is enforced by all of them within about a second, and every node
//! scales its limits by the same factors.
//!
//! The local state stays authoritative for the hot path (a check never waits for Redis); a
//! failed sync is logged and retried on the next tick.

use super::{SharedBan, SharedFactor, SharedState};
use drl_core::abuse::{Ban, BanKind};
use drl_core::{Limiter, Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A synced ban: its end (Unix ms; `None`: permanent), and the round from which the store is
/// known to hold it.
type Synced = (Option<u64>, Option<u64>);

/// A node's link to the shared state.
#[derive(Debug)]
pub struct Coordination {
    shared: SharedState,
    /// Users whose ban this node has written or read, with its end (Unix ms) and the sync round
    /// in which the store was known to hold it (read there, or written before the round
    /// began): one known there that then disappears was unblocked on another node.
    synced: Mutex<HashMap<String, Synced>>,
    /// Sync rounds started; a write confirmed during round r counts for rounds after r.
    rounds: AtomicU64,
    /// The newest factor time (Unix ms) applied or written per backend.
    factors_seen: Mutex<HashMap<String, u64>>,
}

/// Shared factors older than this are not applied (the backend's own staleness recovery has
/// long taken over).
const FACTOR_MAX_AGE_MS: u64 = 3_600_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Coordination {
    pub fn new(shared: SharedState) -> Self {
        Self {
            shared,
            synced: Mutex::default(),
            rounds: AtomicU64::new(0),
            factors_seen: Mutex::default(),
        }
    }

    /// The shared form of a local ban: its remaining time (on the limiter's clock) added to
    /// Redis's time `redis_ms`.
    fn to_shared<S: Store>(limiter: &Limiter<S>, ban: &Ban, redis_ms: u64) -> SharedBan {
        let now = limiter.now_ns();
        SharedBan {
            user_id: ban.user_id.clone(),
            manual: ban.kind == BanKind::Manual,
            until_unix_ms: ban.until_ns.map(|until| {
                redis_ms.saturating_add(until.saturating_sub(now).div_ceil(1_000_000))
            }),
            strike: ban.strike,
        }
    }

    /// Writes a ban or block made on this node.
    pub async fn publish_ban<S: Store>(
        &self,
        limiter: &Limiter<S>,
        ban: &Ban,
    ) -> Result<(), StoreError> {
        let shared = Self::to_shared(limiter, ban, self.shared.time_ms().await?);
        lock(&self.synced).insert(shared.user_id.clone(), (shared.until_unix_ms, None));
        self.shared.put_ban(&shared).await?;
        self.confirm(&shared);
        Ok(())
    }

    /// Records that the store holds `ban` from now on.
    fn confirm(&self, ban: &SharedBan) {
        let round = self.rounds.load(Ordering::SeqCst);
        if let Some(entry) = lock(&self.synced).get_mut(&ban.user_id)
            && entry.0 == ban.until_unix_ms
        {
            entry.1 = Some(round);
        }
    }

    /// Lifts a ban or block on every node; whether the store had one.
    pub async fn publish_unblock(&self, user_id: &str) -> Result<bool, StoreError> {
        lock(&self.synced).remove(user_id);
        self.shared.remove_ban(user_id).await
    }

    /// Writes a backend's factor after a load report on this node.
    pub async fn publish_factor(&self, backend: &str, factor: f64) -> Result<(), StoreError> {
        let at = self.shared.time_ms().await?;
        lock(&self.factors_seen).insert(backend.to_owned(), at);
        self.shared
            .put_factor(
                backend,
                SharedFactor {
                    factor,
                    at_unix_ms: at,
                },
            )
            .await
    }

    /// Brings the local limiter and the shared state together: local bans not yet shared are
    /// written, shared ones applied, ended ones removed, and bans lifted elsewhere lifted here;
    /// newer shared factors applied.
    pub async fn sync<S: Store>(&self, limiter: &Limiter<S>) -> Result<(), StoreError> {
        // Taken before reading the store: writes confirmed before this round began are in
        // what it reads.
        let round = self.rounds.fetch_add(1, Ordering::SeqCst) + 1;
        // Redis's time: ends are compared and converted on it, never on this node's wall clock.
        let now_ms = self.shared.time_ms().await?;
        let now_ns = limiter.now_ns();
        let remote: HashMap<String, SharedBan> = self
            .shared
            .bans()
            .await?
            .into_iter()
            .map(|b| (b.user_id.clone(), b))
            .collect();
        let local = limiter.bans().list(now_ns);
        let mut to_write = Vec::new();
        let mut ended = Vec::new();
        {
            let mut synced = lock(&self.synced);
            for ban in &local {
                if !synced.contains_key(&ban.user_id) && !remote.contains_key(&ban.user_id) {
                    let shared = Self::to_shared(limiter, ban, now_ms);
                    synced.insert(ban.user_id.clone(), (shared.until_unix_ms, None));
                    to_write.push(shared);
                }
            }
            for (user, ban) in &remote {
                if ban.until_unix_ms.is_some_and(|u| u <= now_ms) {
                    ended.push(user.clone());
                    continue;
                }
                let known = synced.get(user).map(|(until, _)| *until) == Some(ban.until_unix_ms);
                synced.insert(user.clone(), (ban.until_unix_ms, Some(round)));
                if !known {
                    limiter.bans().apply(&Ban {
                        user_id: user.clone(),
                        kind: if ban.manual {
                            BanKind::Manual
                        } else {
                            BanKind::Automatic
                        },
                        until_ns: ban.until_unix_ms.map(|u| {
                            now_ns
                                .saturating_add(u.saturating_sub(now_ms).saturating_mul(1_000_000))
                        }),
                        strike: ban.strike,
                    });
                }
            }
            // Lifted on another node: seen in the store before, gone from it now.
            let lifted: Vec<String> = synced
                .iter()
                .filter(|(u, (_, known))| {
                    known.is_some_and(|r| r < round) && !remote.contains_key(*u)
                })
                .map(|(u, _)| u.clone())
                .collect();
            for user in lifted {
                synced.remove(&user);
                limiter.bans().unblock(&user);
            }
        }
        for ban in &to_write {
            self.shared.put_ban(ban).await?;
            self.confirm(ban);
        }
        for user in &ended {
            self.shared.remove_ban(user).await?;
        }

        let factors = self.shared.factors().await?;
        for (backend, factor) in factors {
            let newer = {
                let mut seen = lock(&self.factors_seen);
                let newer = seen.get(&backend).is_none_or(|&at| factor.at_unix_ms > at);
                if newer {
                    seen.insert(backend.clone(), factor.at_unix_ms);
                }
                newer
            };
            // A factor older than the staleness window would be recovered anyway; and an
            // unknown backend (another node's config) is not ours to apply.
            if newer && now_ms.saturating_sub(factor.at_unix_ms) < FACTOR_MAX_AGE_MS {
                let _ = limiter.set_load_factor(&backend, factor.factor);
            }
        }
        Ok(())
    }
}
