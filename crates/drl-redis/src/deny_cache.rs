//! The local deny cache: a denial with a known retry time is answered on this node until then,
//! with no store round trip, so a client hammering a full key costs a hash-map lookup.
//!
//! Tied to the rules epoch exactly as the memory store's denial memo is: an entry answers only
//! requests of the epoch it was made under, and [`DenyCache::clear`] runs after the epoch was
//! bumped; an insert re-reads the epoch under its shard's lock, so a denial decided under old
//! rules is either refused or removed by the clearing walk (which takes every shard's lock).
//!
//! The retry time is the script's, measured from when the reply arrived, so an entry can outlive
//! the exact retry time by the round trip plus the rounding to whole milliseconds: a little
//! under-admission, never over-admission. Bounded: a full shard first drops its expired
//! entries, and refuses the insert if none were.

use std::collections::HashMap;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drl_core::Decision;

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Local time (ns since the store started) before which not even one hit is admitted.
    until: u64,
    /// When the key is back to its full limit, for the answer's `reset_after`.
    reset_at: u64,
    epoch: u64,
}

type Shard = Mutex<HashMap<Vec<u8>, Entry, FixedState>>;

#[derive(Debug)]
pub(crate) struct DenyCache {
    shards: Box<[Shard]>,
    per_shard: usize,
    epoch: AtomicU64,
}

/// A fixed-key hasher: the keys are already SipHash-tagged names, and a fixed key keeps shard
/// choice and lookups cheap.
#[derive(Debug, Clone, Copy, Default)]
struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher::new()
    }
}

impl DenyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(FixedState)))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
            epoch: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The cached denial of `key` at local time `now`, if one is in force for `epoch`.
    pub(crate) fn lookup(&self, key: &[u8], epoch: u64, now: u64, limit: u32) -> Option<Decision> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.get(key)?;
        (entry.epoch == epoch && now < entry.until).then(|| Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after: ceil_ms(entry.reset_at.saturating_sub(now)),
            retry_after: ceil_ms(entry.until - now),
        })
    }

    /// Remembers a denial of at most one hit, decided at local time `now` under `epoch`.
    pub(crate) fn insert(&self, key: &[u8], epoch: u64, now: u64, denial: &Decision) {
        if self.per_shard == 0 || denial.allowed || denial.retry_after.is_zero() {
            return;
        }
        let until = now.saturating_add(nanos(denial.retry_after));
        let reset_at = now.saturating_add(nanos(denial.reset_after));
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= self.per_shard {
                return;
            }
        }
        shard.insert(
            key.to_vec(),
            Entry {
                until,
                reset_at,
                epoch,
            },
        );
    }

    /// Bumps the epoch, then drops every entry.
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ceil_ms(ns: u64) -> Duration {
    Duration::from_millis(ns.div_ceil(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(retry_ms: u64) -> Decision {
        Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_after: Duration::from_millis(2 * retry_ms),
            retry_after: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn answers_until_the_retry_time_and_only_in_its_epoch() {
        let cache = DenyCache::new(128);
        cache.insert(b"k", 0, 1_000, &denial(10));
        let d = cache.lookup(b"k", 0, 1_000, 5).expect("cached");
        assert_eq!(d.retry_after, Duration::from_millis(10));
        assert!(cache.lookup(b"k", 0, 1_000 + 10_000_000, 5).is_none());
        assert!(cache.lookup(b"k", 1, 1_000, 5).is_none());
        assert!(cache.lookup(b"other", 0, 1_000, 5).is_none());
        cache.clear();
        assert!(cache.lookup(b"k", 0, 1_000, 5).is_none());
        // A denial decided under the old epoch is refused after a rules change.
        cache.insert(b"k", 0, 1_000, &denial(10));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn is_bounded() {
        let cache = DenyCache::new(64);
        for i in 0..10_000u32 {
            cache.insert(&i.to_le_bytes(), 0, 0, &denial(1_000));
        }
        assert!(cache.len() <= 64);
        // Expired entries make room.
        cache.insert(b"late", 0, 2_000_000_000, &denial(1_000));
        assert!(cache.lookup(b"late", 0, 2_000_000_000, 5).is_some());
    }
}
