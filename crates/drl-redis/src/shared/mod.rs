//! State every node must agree on beyond counters: bans, blocks and adaptive load factors, kept
//! in two Redis hashes (`drl:{shared}:bans`, `drl:{shared}:factors`, one slot in a cluster).
//!
//! Nodes write a change as it happens (a ban, a block, an unblock, a load report) and read both
//! hashes about once a second (polling rather than pub/sub: one round trip per node per second,
//! and a node that was disconnected catches up on its next read without a replay). So a ban made
//! on any node is enforced by every node within about a second. Times are Unix milliseconds on
//! **Redis's clock** (`TIME`, read on the master of the hashes' slot), never a node's: nodes'
//! monotonic clocks do not compare, and a node whose wall clock is off must not end a ban early
//! (a node 2 h ahead would otherwise see a 1 h block as over and delete it for everyone).

use std::collections::HashMap;
use std::time::Duration;

use drl_core::StoreError;
use redis::{Cmd, Value};

use crate::config::RedisConfig;
use crate::conn::Connector;
use crate::error::ConfigError;

mod coordination;

pub use coordination::Coordination;

const BANS: &str = "drl:{shared}:bans";
const FACTORS: &str = "drl:{shared}:factors";

/// A ban or block as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBan {
    pub user_id: String,
    /// Made by an operator (else automatic).
    pub manual: bool,
    /// When it ends, Unix ms; `None`: permanent.
    pub until_unix_ms: Option<u64>,
    pub strike: u32,
}

impl SharedBan {
    fn encode(&self) -> String {
        let until = self
            .until_unix_ms
            .map_or_else(|| "-".to_owned(), |u| u.to_string());
        let kind = if self.manual { "m" } else { "a" };
        format!("{kind}|{until}|{}", self.strike)
    }

    fn decode(user_id: String, value: &str) -> Option<Self> {
        let mut parts = value.split('|');
        let manual = match parts.next()? {
            "m" => true,
            "a" => false,
            _ => return None,
        };
        let until_unix_ms = match parts.next()? {
            "-" => None,
            n => Some(n.parse().ok()?),
        };
        let strike = parts.next()?.parse().ok()?;
        Some(Self {
            user_id,
            manual,
            until_unix_ms,
            strike,
        })
    }
}

/// A backend's factor as stored: the factor and when it was set (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedFactor {
    pub factor: f64,
    pub at_unix_ms: u64,
}

/// The shared hashes on the store's Redis.
#[derive(Debug)]
pub struct SharedState {
    connector: Connector,
    timeout: Duration,
}

impl SharedState {
    /// On the Redis of `config` (its URLs, cluster flag and timeout).
    pub fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            connector: Connector::new(config)?,
            timeout: config.timeout,
        })
    }

    async fn query(&self, cmd: Cmd) -> Result<Value, StoreError> {
        let run = async {
            let mut conn = self.connector.get().await?;
            let result = conn.query(&cmd).await;
            if let Err(e) = &result {
                self.connector.reset_after(e).await;
            }
            result
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Redis's clock, Unix milliseconds (`TIME` on the master that holds the shared hashes).
    pub async fn time_ms(&self) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg("local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000)")
            .arg(1)
            .arg(BANS);
        match self.query(cmd).await? {
            Value::Int(ms) if ms > 0 => Ok(ms.unsigned_abs()),
            other => Err(StoreError::Unavailable(format!(
                "unexpected reply to TIME: {other:?}"
            ))),
        }
    }

    /// Records a ban or block (replacing the user's previous one).
    pub async fn put_ban(&self, ban: &SharedBan) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(BANS).arg(&ban.user_id).arg(ban.encode());
        self.query(cmd).await.map(drop)
    }

    /// Lifts a user's ban or block; whether the store had one.
    pub async fn remove_ban(&self, user_id: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(BANS).arg(user_id);
        Ok(matches!(self.query(cmd).await?, Value::Int(n) if n > 0))
    }

    /// Every stored ban and block (entries that do not parse are skipped).
    pub async fn bans(&self) -> Result<Vec<SharedBan>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(BANS);
        Ok(pairs(self.query(cmd).await?)
            .into_iter()
            .filter_map(|(user, value)| SharedBan::decode(user, &value))
            .collect())
    }

    /// Records a backend's factor.
    pub async fn put_factor(&self, backend: &str, factor: SharedFactor) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(FACTORS)
            .arg(backend)
            .arg(format!("{}|{}", factor.factor, factor.at_unix_ms));
        self.query(cmd).await.map(drop)
    }

    /// Every backend's stored factor.
    pub async fn factors(&self) -> Result<HashMap<String, SharedFactor>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(FACTORS);
        Ok(pairs(self.query(cmd).await?)
            .into_iter()
            .filter_map(|(backend, value)| {
                let (factor, at) = value.split_once('|')?;
                let factor: f64 = factor.parse().ok()?;
                (factor.is_finite() && factor > 0.0 && factor <= 1.0).then_some(())?;
                let at_unix_ms = at.parse().ok()?;
                Some((backend, SharedFactor { factor, at_unix_ms }))
            })
            .collect())
    }
}

/// The field/value pairs of an HGETALL reply (RESP2 array or RESP3 map).
fn pairs(value: Value) -> Vec<(String, String)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match value {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|kv| Some((text(&kv[0])?, text(&kv[1])?)))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_round_trip_and_garbage_is_skipped() {
        for ban in [
            SharedBan {
                user_id: "u|x".into(),
                manual: true,
                until_unix_ms: None,
                strike: 0,
            },
            SharedBan {
                user_id: "v".into(),
                manual: false,
                until_unix_ms: Some(1_700_000_000_000),
                strike: 3,
            },
        ] {
            let decoded = SharedBan::decode(ban.user_id.clone(), &ban.encode());
            assert_eq!(decoded, Some(ban));
        }
        for garbage in ["", "x|1|1", "a|soon|1", "a|1", "m|-|-1"] {
            assert_eq!(SharedBan::decode("u".into(), garbage), None, "{garbage}");
        }
    }
}
