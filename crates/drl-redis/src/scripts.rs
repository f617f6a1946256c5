//! The Lua scripts, one per algorithm, and the translation of a check into a script call and of
//! its reply into a [`Decision`].
//!
//! Each script is the algorithm of `drl_core::algorithm` run atomically on one key: it reads the
//! Redis server clock (`TIME`, so `drl` nodes' clock skew cannot move windows), clamps time per
//! key so it never runs backwards, and sets an expiry so idle keys vanish. They are called with
//! EVALSHA; a NOSCRIPT (a restarted or newly promoted node has an empty script cache) reloads
//! the script and retries. The shared test vectors (`drl-core/tests/vectors/`) check that a
//! script and its Rust algorithm decide alike.
//!
//! Numbers in Redis Lua are doubles, so the scripts keep absolute times as (seconds,
//! nanoseconds) pairs and compute on differences: exact for windows up to 2⁵³ ns (104 days);
//! beyond, durations may be off by nanoseconds.

use std::time::Duration;

use drl_core::algorithm::token_bucket;
use drl_core::{Algorithm, Decision, Policy};
use redis::{Cmd, Script, Value};

use crate::error::ReplyError;

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// The four scripts, compiled once per store.
#[derive(Debug)]
pub(crate) struct Scripts {
    sliding_window: Script,
    sliding_log: Script,
    fixed_window: Script,
    token_bucket: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            sliding_window: with_prelude(include_str!("lua/sliding_window.lua")),
            sliding_log: with_prelude(include_str!("lua/sliding_log.lua")),
            fixed_window: with_prelude(include_str!("lua/fixed_window.lua")),
            token_bucket: with_prelude(include_str!("lua/token_bucket.lua")),
        }
    }

    /// Every script, for preloading with SCRIPT LOAD.
    pub(crate) fn all(&self) -> [&Script; 4] {
        [
            &self.sliding_window,
            &self.sliding_log,
            &self.fixed_window,
            &self.token_bucket,
        ]
    }

    /// The EVALSHA of `policy`'s script on `key` for `hits`. `test_now_ns` replaces the server
    /// clock; only the test vectors pass it.
    pub(crate) fn call(
        &self,
        key: &[u8],
        policy: &Policy,
        hits: u32,
        test_now_ns: Option<u64>,
    ) -> Cmd {
        let script = match policy.algorithm() {
            Algorithm::SlidingWindow { .. } => &self.sliding_window,
            Algorithm::SlidingLog => &self.sliding_log,
            Algorithm::FixedWindow => &self.fixed_window,
            Algorithm::TokenBucket { .. } => &self.token_bucket,
        };
        let mut call = redis::cmd("EVALSHA");
        call.arg(script.get_hash()).arg(1).arg(key);
        call.arg(test_now_ns.map_or_else(String::new, |t| t.to_string()))
            .arg(hits)
            .arg(policy.requests())
            .arg(policy.window_ns());
        match policy.algorithm() {
            Algorithm::SlidingWindow { .. } => {
                call.arg(policy.bucket_ns())
                    .arg(policy.slots())
                    .arg(policy.window_rem_ns());
            }
            Algorithm::TokenBucket { .. } => {
                call.arg(policy.emission_ns())
                    .arg(token_bucket::burst(policy));
            }
            Algorithm::SlidingLog | Algorithm::FixedWindow => {}
        }
        call
    }
}

/// A script's answer: the decision, and whether no request of this size can ever be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) decision: Decision,
    pub(crate) never: bool,
}

/// Reads `{allowed, remaining, reset_after_ns, retry_after_ns, never}`, rounding the durations
/// up to whole milliseconds exactly as `Decision::new` does.
pub(crate) fn parse_reply(value: &Value, limit: u32) -> Result<Reply, ReplyError> {
    let Value::Array(items) = value else {
        return Err(ReplyError(format!("expected an array, got {value:?}")));
    };
    let int = |i: usize| -> Result<u64, ReplyError> {
        match items.get(i) {
            Some(Value::Int(v)) if *v >= 0 => Ok(*v as u64),
            other => Err(ReplyError(format!("field {i}: {other:?}"))),
        }
    };
    let allowed = int(0)? == 1;
    let remaining = int(1)?.min(u64::from(u32::MAX)) as u32;
    let reset_after = ceil_ms(int(2)?);
    let retry_after = if allowed {
        Duration::ZERO
    } else {
        ceil_ms(int(3)?)
    };
    Ok(Reply {
        decision: Decision {
            allowed,
            limit,
            remaining,
            reset_after,
            retry_after,
        },
        never: int(4)? == 1,
    })
}

fn ceil_ms(ns: u64) -> Duration {
    Duration::from_millis(ns.div_ceil(1_000_000))
}
