//! The JSON bodies of the HTTP API (DESIGN.md §3), shared by the server and the client so the
//! two cannot drift apart.

use std::time::Duration;

use drl_core::Decision;
use serde::{Deserialize, Serialize};

/// Largest `hits` of one check.
pub const MAX_HITS: u32 = 1_000_000;

/// `POST /v1/check` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub user_id: String,
    pub endpoint: String,
    /// Hits to admit at once, all or nothing; 0 asks without counting. Read as `u64` so that an
    /// out-of-range value gets the server's range error, not a type error.
    #[serde(default = "one_hit")]
    pub hits: u64,
}

fn one_hit() -> u64 {
    1
}

/// `POST /v1/check` response body, for both 200 (allowed) and 429 (denied).
///
/// Unknown fields are ignored when reading it, so a newer server can add some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResponse {
    pub allowed: bool,
    /// N: requests allowed per window.
    pub limit: u32,
    /// Hits that would still be admitted now.
    pub remaining: u32,
    /// Milliseconds until the key is back to its full limit.
    pub reset_after_ms: u64,
    /// Milliseconds until the same request could be admitted; 0 when allowed.
    pub retry_after_ms: u64,
}

impl From<Decision> for CheckResponse {
    fn from(d: Decision) -> Self {
        Self {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after_ms: millis(d.reset_after),
            retry_after_ms: millis(d.retry_after),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What was wrong with the request, in words.
    pub error: String,
}
