//! `drl-core`: everything a rate-limit decision needs, and nothing that talks to a network.
//!
//! - [`algorithm`]: the limit algorithms as pure functions of (state, now, limit, hits).
//! - [`policy`]: validated limits ("N requests per window T") and the algorithm that enforces them.
//! - [`rules`]: default, per-user, per-endpoint and per-pair rules; the most specific one wins.
//! - [`key`]: the injective identity of a counter and its keyed 128-bit fingerprint.
//! - [`clock`]: the time source, injectable so tests never sleep.
//! - [`store`]: the [`Store`] trait and the lock-free [`MemoryStore`].
//! - [`limiter`]: the [`Limiter`] handle that ties them together:
//!   `limiter.check_and_increment("alice", "/api/search")`; the native check and the descriptor
//!   check of Envoy's API, each with its decision type.
//! - [`abuse`]: bans of users who keep hitting their limits, blocks and the blocklist.
//! - [`adaptive`]: load-adaptive limits, scaled by each backend's reported load.
//! - [`decision`], [`error`]: what a check answers, and the errors of every part.
//!
//! The guarantee of the default algorithm (docs/design.md, "The guarantee first"): no interval of
//! length T ever holds more than N admitted requests for one key, under any concurrency.

pub mod abuse;
pub mod adaptive;
pub mod algorithm;
pub mod clock;
pub mod decision;
pub mod endpoint;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod key;
pub mod limiter;
pub mod policy;
pub mod rules;
pub mod store;

pub use algorithm::Algorithm;
pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::Decision;
pub use error::{CheckError, PolicyError, RuleError};
pub use key::CounterKey;
pub use limiter::{
    DecidedBy, Descriptor, DescriptorDecision, Limiter, LimiterBuilder, LimiterError,
    RequestDecision,
};
pub use policy::{Limit, Policy, parse_duration};
pub use rules::{
    Action, DescriptorRule, DomainRules, Entry, RequestLimits, Rule, RuleLevel, Rules, Target,
};
pub use store::{MemoryStore, Store, StoreError, StoreRequest};
