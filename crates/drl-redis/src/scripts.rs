//! The Lua scripts, one per algorithm, and the translation of a check into a script call and of
//! its reply into a [`Decision`].
//!
//! Each script is the algorithm of `drl_core::algorithm` run atomically on one key: it reads the
//! Redis server clock (`TIME`, so `drl` nodes' clock skew cannot move windows), clamps time per
//! key so it never runs backwards, and sets an expiry so idle keys vanish. They are called with
//! EVALSHA; a NOSCRIPT (a restarted or newly promoted node has an empty script cache) reloads
//! the script and retries. The shared test vectors (`drl-testkit/src/vectors/`) check that a
//! script and its Rust algorithm decide alike.
//!
//! Numbers in Redis Lua are doubles, so the scripts keep absolute times as (seconds,
//! nanoseconds) pairs and compute on differences: exact for windows up to 2⁵³ ns (104 days);
//! beyond, durations may be off by nanoseconds.
//!
//! A counter's state is one short string (read with one GET, written with one SET that also
//! sets its expiry), so a check costs the script call, `TIME`, a GET and at most a SET, whatever
//! the precision. Every script declares Redis 7 flags (`#!lua`): Redis refuses a call before it
//! runs when it could not write, so a check is never cut between two writes. Older `drl`
//! versions kept hashes under lower-case letters (`keys`): with `store.redis.read_old_keys`, a
//! script whose key is missing reads that state once, so an upgrade keeps running windows
//! (docs/redis.md, "Upgrading"); without it (the default) a new key costs no such read.
//!
//! [`Scripts::call_many`] carries many independent checks, for keys of any slots one master
//! serves, in one call (`allow-cross-slot-keys`): one round trip for all the checks in flight
//! on a master.

use std::collections::HashMap;
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
const TAKE_BACK: &str = include_str!("lua/take_back.lua");

/// The scripts, compiled once per store: one per algorithm for single checks, one for
/// all-or-nothing checks of several counters of one slot, one to refund admissions, and one for
/// many independent checks on one master, and one to grant leases (`lease`).
#[derive(Debug)]
pub(crate) struct Scripts {
    sliding_window: Script,
    sliding_log: Script,
    fixed_window: Script,
    token_bucket: Script,
    all: Script,
    refund: Script,
    many: Script,
    lease: Script,
    /// Whether a missing key is first read from an older drl's key (the clock argument's 'o').
    read_old_keys: bool,
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
    /// The scripts; `read_old_keys`: read an older drl's state when a key is made
    /// (`store.redis.read_old_keys`).
    pub(crate) fn new(read_old_keys: bool) -> Self {
        let single = |body: &str, step: &str| {
            let trailer = include_str!("lua/single.lua").replace("STEP", step);
            Script::new(&format!("#!lua\n{PRELUDE}\n{body}\n{trailer}"))
        };
        let every = |flags: &str, trailer: &str| {
            Script::new(&format!(
                "#!lua{flags}\n{PRELUDE}\n{SLIDING_WINDOW}\n{SLIDING_LOG}\n{FIXED_WINDOW}\n\
                 {TOKEN_BUCKET}\n{TAKE_BACK}\n{trailer}"
            ))
        };
        Self {
            sliding_window: single(SLIDING_WINDOW, "sliding_window"),
            sliding_log: single(SLIDING_LOG, "sliding_log"),
            fixed_window: single(FIXED_WINDOW, "fixed_window"),
            token_bucket: single(TOKEN_BUCKET, "token_bucket"),
            all: every("", include_str!("lua/all.lua")),
            refund: every("", include_str!("lua/refund.lua")),
            many: every(" flags=allow-cross-slot-keys", include_str!("lua/many.lua")),
            lease: every("", include_str!("lua/lease.lua")),
            read_old_keys,
        }
    }

    /// Every script's first argument: the clock ('' for the server's, or the test time in ns),
    /// after 'o' when older keys are read.
    fn clock(&self, test_now_ns: Option<u64>) -> String {
        let mut arg = String::new();
        if self.read_old_keys {
            arg.push('o');
        }
        if let Some(t) = test_now_ns {
            arg.push_str(&t.to_string());
        }
        arg
    }

    /// Every script, for preloading with SCRIPT LOAD.
    pub(crate) fn all(&self) -> [&Script; 8] {
        [
            &self.sliding_window,
            &self.sliding_log,
            &self.fixed_window,
            &self.token_bucket,
            &self.all,
            &self.refund,
            &self.many,
            &self.lease,
        ]
    }

    fn script(&self, policy: &Policy) -> &Script {
        match policy.algorithm() {
            Algorithm::SlidingWindow { .. } => &self.sliding_window,
            Algorithm::SlidingLog => &self.sliding_log,
            Algorithm::FixedWindow => &self.fixed_window,
            Algorithm::TokenBucket { .. } => &self.token_bucket,
        }
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
        let script = self.script(policy);
        let mut call = redis::cmd("EVALSHA");
        call.arg(script.get_hash()).arg(1).arg(key);
        call.arg(self.clock(test_now_ns));
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
        call.arg(self.clock(test_now_ns))
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

    /// The EVALSHA of one call carrying every check of `checks`, in order: keys of any slots,
    /// all served by the master of the first one (the call is routed by it). Each check decides
    /// exactly as [`Scripts::call`] would, one after another at one instant of the server clock;
    /// read the reply with [`parse_many`]. A check whose key this master does not serve (a stale
    /// slot map, a slot moving) gets an error and changes nothing; the others still run.
    /// `test_now_ns` replaces the server clock (tests only). `checks` must not be empty.
    pub(crate) fn call_many(&self, checks: &[Part<'_>], test_now_ns: Option<u64>) -> Cmd {
        // Each distinct policy travels once; a check names it by its number.
        let mut numbers: HashMap<&Policy, usize> = HashMap::new();
        let mut policies: Vec<&Policy> = Vec::new();
        let index: Vec<usize> = checks
            .iter()
            .map(|check| {
                *numbers.entry(check.policy).or_insert_with(|| {
                    policies.push(check.policy);
                    policies.len()
                })
            })
            .collect();
        // Whether a key comes more than once: only then does the script look for checks to
        // decide as one.
        let repeats = checks.len() > 1 && {
            let mut keys: Vec<&[u8]> = checks.iter().map(|c| c.key).collect();
            keys.sort_unstable();
            keys.windows(2).any(|pair| pair[0] == pair[1])
        };
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.many.get_hash()).arg(1);
        call.arg(checks.first().map_or(&b""[..], |c| c.key));
        call.arg(self.clock(test_now_ns));
        call.arg(if repeats { "r" } else { "" });
        call.arg(policies.len());
        for policy in policies {
            let (letter, params) = params(policy);
            call.arg(letter)
                .arg(policy.requests())
                .arg(policy.window_ns())
                .arg(&params[..]);
        }
        for (check, number) in checks.iter().zip(index) {
            call.arg(check.key).arg(number).arg(check.hits);
        }
        call
    }

    /// The EVALSHA of a lease on `key`: up to `want` admissions of `policy` (a sliding or fixed
    /// window), all counted now, after giving back `back` (a previous slice's refund token and
    /// its unused admissions). Read the reply with [`parse_lease`].
    pub(crate) fn call_lease(
        &self,
        key: &[u8],
        policy: &Policy,
        want: u32,
        back: Option<(&str, u32)>,
        test_now_ns: Option<u64>,
    ) -> Cmd {
        let (letter, params) = params(policy);
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.lease.get_hash()).arg(1).arg(key);
        call.arg(self.clock(test_now_ns))
            .arg(letter)
            .arg(want)
            .arg(policy.requests())
            .arg(policy.window_ns())
            .arg(&params[..]);
        let (token, unused) = back.unwrap_or(("", 0));
        call.arg(token).arg(unused);
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

/// Why one check of a [`Scripts::call_many`] call got no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ManyError {
    /// The key is not served by the node the call went to (its slot is another master's, or is
    /// moving): send the check to the slot's master. Nothing was counted.
    #[error("key not served by this node: {0}")]
    NotLocal(String),
    /// Any other error reply for this check (e.g. a key holding something else).
    #[error("{0}")]
    Other(String),
}

/// Reads the reply of [`Scripts::call_many`]: one result per check, given each check's N. The
/// reply is flat: six elements per check, the first of them the error's text for a check that
/// got none.
pub(crate) fn parse_many(
    value: &Value,
    limits: &[u32],
) -> Result<Vec<Result<Reply, ManyError>>, ReplyError> {
    let Value::Array(items) = value else {
        return Err(ReplyError(format!("expected an array, got {value:?}")));
    };
    if items.len() != FIELDS * limits.len() {
        return Err(ReplyError(format!(
            "{} reply elements for {} checks",
            items.len(),
            limits.len()
        )));
    }
    items
        .chunks_exact(FIELDS)
        .zip(limits)
        .map(|(fields, &limit)| match &fields[0] {
            Value::BulkString(text) => {
                let text = String::from_utf8_lossy(text).into_owned();
                Ok(Err(if text.contains("non local key") {
                    ManyError::NotLocal(text)
                } else {
                    ManyError::Other(text)
                }))
            }
            _ => parse_fields(fields, limit).map(Ok),
        })
        .collect()
}

/// The fields of a check's reply.
const FIELDS: usize = 6;

/// Reads `{allowed, remaining, reset_after_ns, retry_after_ns, never, token}`, rounding the durations
/// up to whole milliseconds exactly as `Decision::new` does.
pub(crate) fn parse_reply(value: &Value, limit: u32) -> Result<Reply, ReplyError> {
    let Value::Array(items) = value else {
        return Err(ReplyError(format!("expected an array, got {value:?}")));
    };
    parse_fields(items, limit)
}

/// [`parse_reply`] of the reply's elements (at least the six fields; a lease's follow).
fn parse_fields(items: &[Value], limit: u32) -> Result<Reply, ReplyError> {
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
            Some(Value::Int(v)) => v.to_string(),
            _ => String::new(),
        },
    })
}

/// A lease's answer: the decision of the check that asked (admitted when `granted ≥ 1`), how
/// many admissions were granted and counted, for how long from the script's instant they stay
/// usable, and how many of the returned admissions were taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) reply: Reply,
    pub(crate) granted: u32,
    pub(crate) life: Duration,
    pub(crate) returned: u32,
}

/// Reads the reply of [`Scripts::call_lease`], given N.
pub(crate) fn parse_lease(value: &Value, limit: u32) -> Result<Grant, ReplyError> {
    let reply = parse_reply(value, limit)?;
    let Value::Array(items) = value else {
        return Err(ReplyError(format!("expected an array, got {value:?}")));
    };
    let int = |i: usize| -> Result<u64, ReplyError> {
        match items.get(i) {
            Some(Value::Int(v)) if *v >= 0 => Ok(*v as u64),
            other => Err(ReplyError(format!("lease field {i}: {other:?}"))),
        }
    };
    let granted = u32::try_from(int(6)?).map_err(|e| ReplyError(e.to_string()))?;
    if granted > 0 && !reply.decision.allowed {
        return Err(ReplyError(format!("{granted} granted to a denied check")));
    }
    Ok(Grant {
        reply,
        granted,
        // Rounded down: the slice must never outlive its bucket.
        life: Duration::from_nanos(int(7)?),
        returned: u32::try_from(int(8)?).map_err(|e| ReplyError(e.to_string()))?,
    })
}

fn ceil_ms(ns: u64) -> Duration {
    Duration::from_millis(ns.div_ceil(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::key_for;
    use drl_testkit::redis::{Cluster, Redis};

    const SEC: u64 = 1_000_000_000;
    /// 2025-11-28, where Redis Lua's doubles are not exact.
    const T0: u64 = 1_764_300_000 * SEC;

    fn policies() -> Vec<Policy> {
        let per = |n, secs, algorithm| Policy::per(n, Duration::from_secs(secs), algorithm);
        vec![
            per(5, 10, Algorithm::SlidingWindow { precision: 10 }).expect("policy"),
            per(4, 7, Algorithm::SlidingWindow { precision: 3 }).expect("policy"),
            per(3, 10, Algorithm::SlidingLog).expect("policy"),
            per(4, 10, Algorithm::FixedWindow).expect("policy"),
            per(4, 10, Algorithm::TokenBucket { burst: None }).expect("policy"),
        ]
    }

    /// A check of the sequence both ways run: (identity, policy, hits) per round, at
    /// T0 + round·0.7 s.
    fn rounds(identities: &[Vec<u8>]) -> Vec<Vec<(usize, usize, u32)>> {
        let policies = policies().len();
        (0..24)
            .map(|round| {
                (0..identities.len())
                    .flat_map(|i| {
                        let p = (i + round) % policies;
                        // Two checks of one key in a call, and reads (0 hits) now and then;
                        // the first identity's key four times (one-hit checks of one key are
                        // decided as one, around the limit of 3 to 5).
                        let hits = [1, 2, 0, 1][(i + round) % 4];
                        let more = if i == 0 { 2 } else { 0 };
                        [(i, p, hits), (i, p, 1)]
                            .into_iter()
                            .chain(std::iter::repeat_n((i, p, 1), more))
                    })
                    .collect()
            })
            .collect()
    }

    async fn eval(conn: &mut redis::aio::MultiplexedConnection, cmd: &Cmd) -> Value {
        let hash_missing = |v: &Value| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT");
        let value: Value = cmd.query_async(conn).await.unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}",
                String::from_utf8_lossy(&cmd.get_packed_command())
            )
        });
        assert!(!hash_missing(&value), "scripts are loaded first");
        value
    }

    async fn load(conn: &mut redis::aio::MultiplexedConnection, scripts: &Scripts) {
        for script in scripts.all() {
            script.load_async(conn).await.expect("SCRIPT LOAD");
        }
    }

    /// A connection to the Redis at `url` with every script loaded.
    async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(url).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        load(&mut conn, &Scripts::new(false)).await;
        conn
    }

    /// Runs `rounds` with one single-script call per check on keys `a:…` and with one many-call
    /// per round on keys `b:…`, and checks that every reply is the same.
    async fn same_as_singles(
        single: &mut redis::aio::MultiplexedConnection,
        many: &mut redis::aio::MultiplexedConnection,
        identities: &[Vec<u8>],
    ) -> usize {
        let scripts = Scripts::new(false);
        let policies = policies();
        let key = |prefix: &str, i: usize, p: usize| {
            let id = [prefix.as_bytes(), &identities[i]].concat();
            key_for(&id, &identities[i], policies[p].algorithm()).name
        };
        let mut compared = 0;
        for (round, checks) in rounds(identities).iter().enumerate() {
            let now = T0 + round as u64 * 700_000_000;
            let mut want = Vec::new();
            for &(i, p, hits) in checks {
                let value = eval(
                    single,
                    &scripts.call(&key("a:", i, p), &policies[p], hits, Some(now)),
                )
                .await;
                want.push(parse_reply(&value, policies[p].requests()).expect("reply"));
            }
            let names: Vec<Vec<u8>> = checks.iter().map(|&(i, p, _)| key("b:", i, p)).collect();
            let parts: Vec<Part<'_>> = checks
                .iter()
                .zip(&names)
                .map(|(&(_, p, hits), name)| Part {
                    key: name,
                    policy: &policies[p],
                    hits,
                })
                .collect();
            let limits: Vec<u32> = parts.iter().map(|p| p.policy.requests()).collect();
            let value = eval(many, &scripts.call_many(&parts, Some(now))).await;
            let got = parse_many(&value, &limits).expect("many reply");
            for (k, (got, want)) in got.into_iter().zip(want).enumerate() {
                assert_eq!(got, Ok(want), "round {round}, check {k}: {:?}", checks[k]);
                compared += 1;
            }
        }
        // Both ways leave the same states.
        for i in 0..identities.len() {
            for p in 0..policies.len() {
                let get = |name: Vec<u8>| redis::cmd("GET").arg(name).clone();
                let a: Option<Vec<u8>> =
                    get(key("a:", i, p)).query_async(single).await.expect("get");
                let b: Option<Vec<u8>> = get(key("b:", i, p)).query_async(many).await.expect("get");
                assert_eq!(a, b, "identity {i}, policy {p}");
            }
        }
        compared
    }

    #[tokio::test]
    async fn many_checks_in_one_call_decide_as_single_calls() {
        let redis = Redis::start();
        let mut conn = connect(&redis.url()).await;
        let identities: Vec<Vec<u8>> = (0..6).map(|i| format!("user{i}").into_bytes()).collect();
        let mut other = conn.clone();
        let compared = same_as_singles(&mut conn, &mut other, &identities).await;
        assert_eq!(compared, 24 * (6 * 2 + 2));
        // Both sets of keys hold states of the same shapes.
        let denied: i64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("dbsize");
        assert!(denied >= 2 * 6, "{denied} keys");
    }

    /// Masters of a cluster by port, from CLUSTER NODES: (port, slot ranges).
    fn masters(cluster: &Cluster) -> Vec<(u16, Vec<(u16, u16)>)> {
        let nodes = cluster.nodes[0].cli(&["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let port = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("port");
                let ranges = fields[8..]
                    .iter()
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                (port, ranges)
            })
            .collect()
    }

    #[tokio::test]
    async fn on_a_cluster_one_call_carries_one_masters_slots_and_refuses_others() {
        let cluster = Cluster::start(3, 0);
        let masters = masters(&cluster);
        assert_eq!(masters.len(), 3);
        let owner = |slot: u16| {
            masters
                .iter()
                .position(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
                .expect("every slot is served")
        };
        // Identities whose keys (under both prefixes) land on master 0, in different slots.
        let policies = &policies();
        let on = |m: usize| {
            (0..)
                .map(|i| format!("user{i}").into_bytes())
                .filter(move |id| {
                    ["a:", "b:"].iter().all(|prefix| {
                        let full = [prefix.as_bytes(), id].concat();
                        policies
                            .iter()
                            .all(|p| owner(key_for(&full, id, p.algorithm()).slot) == m)
                    })
                })
        };
        let identities: Vec<Vec<u8>> = on(0).take(5).collect();
        let slots: std::collections::HashSet<u16> = identities
            .iter()
            .map(|id| key_for(id, id, Algorithm::SlidingLog).slot)
            .collect();
        assert_eq!(slots.len(), identities.len(), "different slots");

        let url = |port: u16| format!("redis://127.0.0.1:{port}");
        let mut first = connect(&url(masters[0].0)).await;
        let mut second = connect(&url(masters[1].0)).await;
        let compared = same_as_singles(&mut first.clone(), &mut first, &identities).await;
        assert_eq!(compared, 24 * (5 * 2 + 2));

        // A key of master 1 in a call sent to master 0: that check alone is refused, and
        // nothing is written for it anywhere; the others decide as usual.
        let stranger = on(1).next().expect("an identity of master 1");
        let scripts = Scripts::new(false);
        let policy = &policies[0];
        let names = [
            key_for(b"x:local", &identities[0], policy.algorithm()).name,
            key_for(&stranger, &stranger, policy.algorithm()).name,
            key_for(b"x:local2", &identities[1], policy.algorithm()).name,
        ];
        let parts: Vec<Part<'_>> = names
            .iter()
            .map(|key| Part {
                key,
                policy,
                hits: 1,
            })
            .collect();
        let value = eval(&mut first, &scripts.call_many(&parts, None)).await;
        let got = parse_many(&value, &[5, 5, 5]).expect("many reply");
        assert!(matches!(&got[1], Err(ManyError::NotLocal(_))), "{got:?}");
        for ok in [&got[0], &got[2]] {
            let reply = ok.as_ref().expect("local keys decide");
            assert!(reply.decision.allowed);
            assert_eq!(reply.decision.remaining, 4);
        }
        // Its master never saw it (master 0 only answers MOVED for it).
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&names[1][..])
            .query_async(&mut second)
            .await
            .expect("exists");
        assert_eq!(exists, 0);
    }

    /// What an older drl left (hashes under the lower-case letters) is read when the new key is
    /// made: the windows keep running across an upgrade.
    #[tokio::test]
    async fn an_older_versions_state_is_read_once() {
        let redis = Redis::start();
        let mut conn = connect(&redis.url()).await;
        let scripts = Scripts::new(true);
        let policies = policies();
        let now = T0 + 500_000_000;
        let old = |key: &[u8]| {
            let mut name = key.to_vec();
            name[4] = name[4].to_ascii_lowercase();
            name
        };
        let hset = |name: Vec<u8>, fields: &[(&str, String)]| {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(name);
            for (f, v) in fields {
                cmd.arg(*f).arg(v);
            }
            cmd
        };
        // Sliding window, 5 per 10 s in 1 s buckets: 2 admissions 3 s ago, 1 now (old bucket
        // indices are time / g), as the older script stored them.
        let window = &policies[0];
        let w = key_for(b"w", b"w", window.algorithm()).name;
        let b = now / SEC;
        let fields = [
            ("g", SEC.to_string()),
            ("s", "11".to_owned()),
            ("n", b.to_string()),
            ("i", b.to_string()),
            (&*(b - 3).to_string(), "2".to_owned()),
            (&*b.to_string(), "1".to_owned()),
        ];
        let _: () = hset(old(&w), &fields)
            .query_async(&mut conn)
            .await
            .expect("hset");
        // Fixed window, 4 per 10 s: 3 counted in the window that started at T0.
        let fixed = &policies[3];
        let f = key_for(b"f", b"f", fixed.algorithm()).name;
        let fields = [
            ("ss", (T0 / SEC).to_string()),
            ("sn", "0".to_owned()),
            ("c", "3".to_owned()),
        ];
        let _: () = hset(old(&f), &fields)
            .query_async(&mut conn)
            .await
            .expect("hset");
        // Token bucket, 4 per 10 s (one token per 2.5 s): the arrival time 5 s ahead.
        let bucket = &policies[4];
        let t = key_for(b"t", b"t", bucket.algorithm()).name;
        let fields = [
            ("ts", (now / SEC + 5).to_string()),
            ("tn", (now % SEC).to_string()),
        ];
        let _: () = hset(old(&t), &fields)
            .query_async(&mut conn)
            .await
            .expect("hset");

        for (key, policy, remaining) in [(&w, window, 1), (&f, fixed, 0), (&t, bucket, 1)] {
            let value = eval(&mut conn, &scripts.call(key, policy, 1, Some(now))).await;
            let reply = parse_reply(&value, policy.requests()).expect("reply");
            assert!(reply.decision.allowed, "{policy:?}");
            assert_eq!(reply.decision.remaining, remaining, "{policy:?}");
            let value = eval(&mut conn, &scripts.call(key, policy, 2, Some(now))).await;
            let reply = parse_reply(&value, policy.requests()).expect("reply");
            assert!(
                !reply.decision.allowed,
                "{policy:?}: the old admissions count"
            );
        }

        // Without `read_old_keys` (the default) a new key starts empty: the old keys, still
        // there, are not read.
        let unaware = Scripts::new(false);
        for (key, policy) in [(&w, window), (&f, fixed), (&t, bucket)] {
            let _: () = redis::cmd("DEL")
                .arg(&key[..])
                .query_async(&mut conn)
                .await
                .expect("del");
            let value = eval(&mut conn, &unaware.call(key, policy, 1, Some(now))).await;
            let reply = parse_reply(&value, policy.requests()).expect("reply");
            assert!(reply.decision.allowed, "{policy:?}");
            assert_eq!(
                reply.decision.remaining,
                policy.requests() - 1,
                "{policy:?}: the old state is not read"
            );
        }
    }

    /// A sliding window's counts are 1, 2 or 4 bytes by N; when a reload moves N across a width
    /// with the same buckets, the counts are repacked, not merged: each admission still leaves
    /// the window with its own bucket.
    #[tokio::test]
    async fn a_change_of_count_width_keeps_the_buckets() {
        let redis = Redis::start();
        let mut conn = connect(&redis.url()).await;
        let scripts = Scripts::new(false);
        let per = |n| {
            Policy::per(
                n,
                Duration::from_secs(10),
                Algorithm::SlidingWindow { precision: 10 },
            )
            .expect("policy")
        };
        let key = key_for(b"u", b"e", per(200).algorithm()).name;
        let at = |s: u64| T0 + s * SEC + SEC / 2;
        // (second, N, hits, remaining after, state length: 33 + 11 counts of 1, 2 or 4 bytes)
        let steps = [
            (0, 200, 150, 50, 44),
            (2, 300, 100, 50, 55),
            (3, 255, 1, 4, 44),
            (4, 70_000, 10, 70_000 - 261, 77),
            // 11.5 s: the bucket of 0.5 s (150) has left; had a change merged the buckets into
            // one, all 261 would still count.
            (11, 200, 1, 200 - 112, 44),
        ];
        for (second, n, hits, remaining, bytes) in steps {
            let policy = per(n);
            let value = eval(
                &mut conn,
                &scripts.call(&key, &policy, hits, Some(at(second))),
            )
            .await;
            let reply = parse_reply(&value, policy.requests()).expect("reply");
            assert!(reply.decision.allowed, "{second} s, N = {n}");
            assert_eq!(reply.decision.remaining, remaining, "{second} s, N = {n}");
            let len: usize = redis::cmd("STRLEN")
                .arg(&key[..])
                .query_async(&mut conn)
                .await
                .expect("strlen");
            assert_eq!(len, bytes, "{second} s, N = {n}");
        }
    }

    /// A lease grants all that fits (fewer near the limit, none at it), counts every granted
    /// admission at once (a single check then sees them), lives only until its bucket or window
    /// ends, and takes back unused admissions only from a bucket or window still counted.
    #[tokio::test]
    async fn a_lease_grants_what_fits_and_counts_it_at_once() {
        let redis = Redis::start();
        let mut conn = connect(&redis.url()).await;
        let scripts = Scripts::new(false);
        let per = |n, secs, algorithm| {
            Policy::per(n, Duration::from_secs(secs), algorithm).expect("policy")
        };
        // 10 per 10 s: sliding in 1 s buckets, fixed aligned to 10 s.
        let sliding = per(10, 10, Algorithm::SlidingWindow { precision: 10 });
        let fixed = per(10, 10, Algorithm::FixedWindow);
        for policy in [&sliding, &fixed] {
            let key = key_for(b"lease", b"lease", policy.algorithm()).name;
            let lease = |now: u64, want: u32, back: Option<(&str, u32)>| {
                scripts.call_lease(&key, policy, want, back, Some(now))
            };
            // 0.25 s into a bucket (and into the fixed window): 6 asked, 6 granted.
            let now = T0 + 250_000_000;
            let grant =
                parse_lease(&eval(&mut conn, &lease(now, 6, None)).await, 10).expect("lease");
            assert_eq!(
                (grant.granted, grant.reply.decision.remaining),
                (6, 4),
                "{policy:?}"
            );
            assert!(grant.reply.decision.allowed);
            let life = match policy.algorithm() {
                Algorithm::FixedWindow => 9_750_000_000,
                _ => 750_000_000,
            };
            assert_eq!(grant.life, Duration::from_nanos(life), "{policy:?}");
            // A single check sees the 6: 4 fit, of 5 asked.
            let value = eval(&mut conn, &scripts.call(&key, policy, 5, Some(now))).await;
            assert!(!parse_reply(&value, 10).expect("reply").decision.allowed);
            // Partial: 8 asked, 4 left, 4 granted; then none at the limit.
            let partial =
                parse_lease(&eval(&mut conn, &lease(now, 8, None)).await, 10).expect("lease");
            assert_eq!((partial.granted, partial.reply.decision.remaining), (4, 0));
            let none =
                parse_lease(&eval(&mut conn, &lease(now, 3, None)).await, 10).expect("lease");
            assert_eq!(none.granted, 0);
            assert!(!none.reply.decision.allowed);
            assert!(none.reply.decision.retry_after > Duration::ZERO);
            // 3 of the first slice unused, returned while its bucket is counted: taken back, and
            // 3 granted again in the same call.
            let back = Some((grant.reply.token.as_str(), 3));
            let again =
                parse_lease(&eval(&mut conn, &lease(now + 1, 5, back)).await, 10).expect("lease");
            assert_eq!((again.returned, again.granted), (3, 3), "{policy:?}");
            // A return naming a window that is no longer counted changes nothing.
            let later = T0 + 30 * SEC;
            let stale = Some((grant.reply.token.as_str(), 5));
            let fresh =
                parse_lease(&eval(&mut conn, &lease(later, 2, stale)).await, 10).expect("lease");
            assert_eq!(
                (
                    fresh.returned,
                    fresh.granted,
                    fresh.reply.decision.remaining
                ),
                (0, 2, 8)
            );
        }
        // No leases for the other algorithms: an error reply, nothing counted.
        let bucket = per(10, 10, Algorithm::TokenBucket { burst: None });
        let key = key_for(b"lease", b"lease", bucket.algorithm()).name;
        let value: Result<Value, _> = scripts
            .call_lease(&key, &bucket, 3, None, Some(T0))
            .query_async(&mut conn)
            .await;
        assert!(value.is_err() || matches!(value, Ok(Value::ServerError(_))));
    }
}
