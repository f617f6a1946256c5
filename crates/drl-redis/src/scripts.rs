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
const SLIDING_WINDOW: &str = include_str!("lua/sliding_window.lua");
const SLIDING_LOG: &str = include_str!("lua/sliding_log.lua");
const FIXED_WINDOW: &str = include_str!("lua/fixed_window.lua");
const TOKEN_BUCKET: &str = include_str!("lua/token_bucket.lua");

/// The scripts, compiled once per store: one per algorithm for single checks, one for
/// all-or-nothing checks of several counters of one slot, one to refund admissions.
#[derive(Debug)]
pub(crate) struct Scripts {
    sliding_window: Script,
    sliding_log: Script,
    fixed_window: Script,
    token_bucket: Script,
    all: Script,
    refund: Script,
}

/// A counter in an all-or-nothing call: its key, policy and hits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) policy: &'a Policy,
    pub(crate) hits: u32,
}

/// An admission to take back: key, algorithm letter, hits and the script's refund token.
#[derive(Debug, Clone)]
pub(crate) struct Refund {
    pub(crate) key: Vec<u8>,
    pub(crate) letter: &'static str,
    pub(crate) hits: u32,
    pub(crate) token: String,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let single = |body: &str, step: &str| {
            let trailer = include_str!("lua/single.lua").replace("STEP", step);
            Script::new(&format!("{PRELUDE}\n{body}\n{trailer}"))
        };
        Self {
            sliding_window: single(SLIDING_WINDOW, "sliding_window"),
            sliding_log: single(SLIDING_LOG, "sliding_log"),
            fixed_window: single(FIXED_WINDOW, "fixed_window"),
            token_bucket: single(TOKEN_BUCKET, "token_bucket"),
            all: Script::new(&format!(
                "{PRELUDE}\n{SLIDING_WINDOW}\n{SLIDING_LOG}\n{FIXED_WINDOW}\n{TOKEN_BUCKET}\n{}",
                include_str!("lua/all.lua")
            )),
            refund: Script::new(&format!("{PRELUDE}\n{}", include_str!("lua/refund.lua"))),
        }
    }

    /// Every script, for preloading with SCRIPT LOAD.
    pub(crate) fn all(&self) -> [&Script; 6] {
        [
            &self.sliding_window,
            &self.sliding_log,
            &self.fixed_window,
            &self.token_bucket,
            &self.all,
            &self.refund,
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
        call.arg(test_now_ns.map_or_else(String::new, |t| t.to_string()));
        call.arg(hits)
            .arg(policy.requests())
            .arg(policy.window_ns())
            .arg(&params(policy).1[..]);
        call
    }

    /// The EVALSHA of the all-or-nothing script over `parts` (keys of one slot): a trial that
    /// writes nothing, or a commit that counts them all if every one is admitted.
    pub(crate) fn call_all(
        &self,
        parts: &[Part<'_>],
        commit: bool,
        test_now_ns: Option<u64>,
    ) -> Cmd {
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.all.get_hash()).arg(parts.len());
        for part in parts {
            call.arg(part.key);
        }
        call.arg(test_now_ns.map_or_else(String::new, |t| t.to_string()))
            .arg(if commit { "commit" } else { "trial" });
        for part in parts {
            let (letter, params) = params(part.policy);
            call.arg(letter)
                .arg(part.hits)
                .arg(part.policy.requests())
                .arg(part.policy.window_ns())
                .arg(&params[..]);
        }
        call
    }

    /// The EVALSHA of the refund script over `refunds` (keys of one slot).
    pub(crate) fn call_refund(&self, refunds: &[Refund]) -> Cmd {
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.refund.get_hash()).arg(refunds.len());
        for r in refunds {
            call.arg(&r.key[..]);
        }
        for r in refunds {
            call.arg(r.letter).arg(r.hits).arg(&r.token).arg("");
        }
        call
    }
}

/// The algorithm's letter in the all-or-nothing script, and its three parameters.
pub(crate) fn params(policy: &Policy) -> (&'static str, [String; 3]) {
    match policy.algorithm() {
        Algorithm::SlidingWindow { .. } => (
            "w",
            [
                policy.bucket_ns().to_string(),
                policy.slots().to_string(),
                policy.window_rem_ns().to_string(),
            ],
        ),
        Algorithm::TokenBucket { .. } => (
            "t",
            [
                policy.emission_ns().to_string(),
                token_bucket::burst(policy).to_string(),
                String::new(),
            ],
        ),
        Algorithm::SlidingLog => ("l", Default::default()),
        Algorithm::FixedWindow => ("f", Default::default()),
    }
}

/// A script's answer: the decision, whether no request of this size can ever be admitted, and
/// what a refund of the admission needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) decision: Decision,
    pub(crate) never: bool,
    pub(crate) token: String,
}

/// Reads `{admitted, {reply}…}` of the all-or-nothing script, with each part's N.
pub(crate) fn parse_all(value: &Value, limits: &[u32]) -> Result<(bool, Vec<Reply>), ReplyError> {
    let Value::Array(items) = value else {
        return Err(ReplyError(format!("expected an array, got {value:?}")));
    };
    let admitted = match items.first() {
        Some(Value::Int(v)) => *v == 1,
        other => return Err(ReplyError(format!("admitted: {other:?}"))),
    };
    if items.len() != limits.len() + 1 {
        return Err(ReplyError(format!(
            "{} replies for {} keys",
            items.len() - 1,
            limits.len()
        )));
    }
    let replies = items[1..]
        .iter()
        .zip(limits)
        .map(|(v, &limit)| parse_reply(v, limit))
        .collect::<Result<_, _>>()?;
    Ok((admitted, replies))
}

/// Reads `{allowed, remaining, reset_after_ns, retry_after_ns, never, token}`, rounding the durations
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
        token: match items.get(5) {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(t)) => t.clone(),
            _ => String::new(),
        },
    })
}

fn ceil_ms(ns: u64) -> Duration {
    Duration::from_millis(ns.div_ceil(1_000_000))
}
