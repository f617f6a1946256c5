//! `drl-redis`: the Redis store. Any number of stateless `drl` nodes share one Redis or a Redis
//! Cluster, which shards the counters over masters, replicates them and fails over.
//!
//! - `scripts`: one atomic Lua script per algorithm (`lua/`), on the Redis server clock.
//! - [`keys`]: injective key names whose hash tag is a hash of the identity (docs/design.md, "Keys").
//! - [`RedisStore`]: the [`drl_core::Store`]: timeouts, `consistency: strict` (WAIT, batched),
//!   `on_error: deny | allow | local`, and the local deny cache; checks in flight batched per
//!   master (`store/batch.rs`), failing slots probed in the background (`store/health.rs`), and
//!   the cluster's slot map followed through failovers (`follow.rs`, `topology.rs`).
//! - `lease`: hot keys answered from slices of their window leased into the node's memory
//!   (`store.redis.leases`, docs/hot-keys.md).
//! - [`RedisConfig`]: `store.redis` of the config.
//! - [`shared`]: bans, blocks and adaptive factors shared by every node, and the
//!   [`shared::Coordination`] that writes a node's changes and syncs the others' into its limiter.

pub mod config;
mod conn;
mod deny_cache;
pub mod error;
mod follow;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
mod lease;
mod scripts;
pub mod shared;
mod store;
mod topology;

pub use config::{ClientCert, Consistency, LeaseConfig, OnError, RedisConfig, RedisTls};
pub use error::ConfigError;
pub use store::{MAX_DOWN, PROBE_EVERY, RedisStats, RedisStore, WARM_UP};
