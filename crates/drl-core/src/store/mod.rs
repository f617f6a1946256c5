//! Where counters live. A [`Store`] runs one algorithm step atomically for one key, or for
//! several keys all or nothing; the [`MemoryStore`] does it in process, the Redis store (crate
//! `drl-redis`) in Lua scripts.
//!
//! The trait is async so a networked store fits it; the memory store answers with a ready future,
//! and offers the same step synchronously for embedded use.

pub mod memory;
mod prefetch;

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

use crate::decision::Decision;
use crate::key::CounterKey;
use crate::policy::Policy;

pub use memory::MemoryStore;
pub use prefetch::Prefetch;

/// One check as a store sees it.
#[derive(Debug, Clone, Copy)]
pub struct StoreRequest<'a> {
    /// The counter's identity.
    pub key: CounterKey<'a>,
    /// The limit and algorithm in force for it.
    pub policy: &'a Policy,
    /// Hits to admit (all or nothing); 0 reads.
    pub hits: u32,
    /// The caller's clock reading. Stores with a clock of their own (Redis `TIME`) ignore it.
    pub now_ns: u64,
    /// [`Store::rules_epoch`] as read *before* the rules that chose `policy` were loaded.
    pub rules_epoch: u64,
}

/// A store that could not answer. The caller applies its `on_error` policy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within the timeout.
    #[error("store timed out after {0:?}")]
    Timeout(Duration),
    /// The store is unreachable or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Runs an algorithm step atomically for one key: concurrent checks of one key are serialised,
/// checks of different keys proceed in parallel.
pub trait Store: Send + Sync + 'static {
    /// Whether [`Store::check`] and [`Store::check_all`] answer at once (their futures are ready
    /// when made, as a store in process answers). A caller with several checks then runs them
    /// one after another instead of concurrently, which would only add the cost of polling a
    /// set of futures. Networked stores keep the default, `false`.
    const ANSWERS_AT_ONCE: bool = false;

    /// Decides and, when admitted, counts `request.hits` for `request.key`.
    fn check<'a>(
        &'a self,
        request: StoreRequest<'a>,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + 'a;

    /// Decides several counters **all or nothing**: if every request would be admitted, all
    /// are counted; otherwise none is. Decisions come back in request order; when the whole is
    /// denied, a request that had room reports `allowed: true` with the `remaining` it would have
    /// left, and the caller answers denied. Requests naming the same counter are counted
    /// together (their hits add up).
    fn check_all<'a>(
        &'a self,
        requests: &'a [StoreRequest<'a>],
    ) -> impl Future<Output = Result<Vec<Decision>, StoreError>> + Send + 'a;

    /// Adds to `lines` the memory a check of `request` will read first, for a batch that asks
    /// for all its checks' memory before deciding any ([`Prefetch`]). Changes nothing, and
    /// `request.now_ns`, `hits` and `rules_epoch` do not matter. A store in process adds its
    /// slot for the key; networked stores add nothing (the default).
    fn prefetch(&self, request: &StoreRequest<'_>, lines: &mut Prefetch) {
        let _ = (request, lines);
    }

    /// Whether the store can answer now (what `GET /readyz` reports). Stores in process always
    /// can; networked ones ask their server.
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send + '_ {
        std::future::ready(Ok(()))
    }

    /// Events the store counts about itself, as `(event, total so far)`: what the server
    /// exports as `drl_store_events_total{event}` (e.g. the Redis store's errors, `on_error`
    /// fallbacks, deny-cache hits and WAIT shortfalls). Stores in process have none.
    fn stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// A counter of rule changes, for stores that cache decisions (a denial cached under old
    /// rules must not outlive them). The limiter reads it before loading the rules and passes
    /// it along in [`StoreRequest::rules_epoch`]. Stores without a cache keep the default.
    fn rules_epoch(&self) -> u64 {
        0
    }

    /// Called after the limiter swapped in new rules: drop whatever was cached under the old
    /// ones and bump [`Store::rules_epoch`].
    fn rules_changed(&self) {}
}
