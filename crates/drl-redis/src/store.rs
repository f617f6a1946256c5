//! [`RedisStore`]: the [`Store`] over a single Redis or a Redis Cluster.
//!
//! A check goes: local deny cache → (slot marked failing? → `on_error`) → the key's master's
//! queue, where the checks in flight for one master are decided together by one script call
//! (see [`batch`]), bounded by the timeout → in strict mode, `WAIT 1` on that master's
//! connection in the same pipeline → decision. Any error or timeout answers with the `on_error` policy and
//! marks the key's slot as failing: checks of that slot are then answered by the policy at once,
//! with no round trip, while a background prober PINGs the slot's master every
//! [`PROBE_EVERY`] and clears the mark when it answers. As a safety net a mark also lapses after
//! [`MAX_DOWN`], so a check tries the store itself even if probing cannot get through.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use drl_core::{Decision, MemoryStore, Policy, Store, StoreError, StoreRequest};
use redis::{Cmd, RedisError, Value};
use tokio::sync::oneshot;

use crate::config::{Consistency, OnError, RedisConfig};
use crate::conn::{Conn, Connector};
use crate::deny_cache::DenyCache;
use crate::error::ConfigError;
use crate::follow::Follower;
use crate::keys::{RedisKey, SLOTS, redis_key};
use crate::lease::{Leases, Take, leasable};
use crate::scripts::{Part, Refund, Reply, Scripts, params, parse_all, parse_lease};
use crate::topology::SlotMap;

mod batch;
mod health;

use batch::{Batcher, Job, Work};
use health::{follow_soon, follower, prober, replicas_attached};

/// How often the background prober tries the masters of failing slots.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Longest a slot is answered by `on_error` without a check trying the store itself.
pub const MAX_DOWN: Duration = Duration::from_secs(1);
/// Most failing slots probed per round (a dead master fails many; the hot ones come first).
const PROBES_PER_ROUND: usize = 64;
/// Least time [`RedisStore::ping`] may take to warm the store up.
pub const WARM_UP: Duration = Duration::from_secs(2);

/// Counters for the server's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Checks the store failed to answer (error or timeout).
    pub errors: u64,
    /// Checks answered by the `on_error` policy (after an error, or while a slot backs off).
    pub fallbacks: u64,
    /// Checks answered from the local deny cache.
    pub deny_cache_hits: u64,
    /// Strict admissions turned into denials because `WAIT` found no replica in time.
    pub wait_shortfalls: u64,
    /// Cluster connections replaced because they sent slots to a node that no longer served
    /// them (a master that hung and was replaced by its replica).
    pub reroutes: u64,
    /// Script calls that carried single checks (each a batch of one master's checks).
    pub batch_calls: u64,
    /// Single checks those calls carried (`batch_checks / batch_calls`: checks per call).
    pub batch_checks: u64,
    /// Leases (`store.redis.leases`): requests granted at least one admission.
    pub lease_grants: u64,
    /// Admissions granted by leases (each counted in the shared window when granted).
    pub lease_granted: u64,
    /// Granted admissions that admitted a check.
    pub lease_used: u64,
    /// Decisions answered from a slice in memory, with no call to Redis.
    pub lease_answers: u64,
    /// Unused granted admissions taken back.
    pub lease_returned: u64,
    /// Unused granted admissions neither used nor taken back (under-admission).
    pub lease_expired: u64,
}

#[derive(Debug, Default)]
struct Counters {
    errors: AtomicU64,
    fallbacks: AtomicU64,
    deny_cache_hits: AtomicU64,
    wait_shortfalls: AtomicU64,
    batch_calls: AtomicU64,
    batch_checks: AtomicU64,
}

/// The Redis store. Cheap to share (`Arc` inside); all state that matters is in Redis.
#[derive(Debug, Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connector: Arc<Connector>,
    scripts: Scripts,
    consistency: Consistency,
    on_error: OnError,
    timeout: Duration,
    cluster: bool,
    deny_cache: DenyCache,
    /// Per slot: 0 when healthy, else the local time (ns since `started`, at least 1) at which
    /// the slot was last seen failing.
    failing: Box<[AtomicU64]>,
    /// Failing slots, for the prober.
    down: Mutex<HashSet<u16>>,
    /// A prober task is running.
    probing: AtomicBool,
    /// The fallback for `on_error: local`.
    local: MemoryStore,
    counters: Counters,
    started: Instant,
    /// Per-master batching of single checks (and of strict commits), started on first use.
    batcher: OnceLock<Batcher>,
    /// The cluster's slot map, kept current, and the connection kept following it.
    follower: Follower,
    /// Leases of hot keys, when configured.
    leases: Option<Leases>,
}

/// Why a check got no decision from Redis.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Redis(RedisError),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Reply(String),
}

impl RedisStore {
    /// A store for `config`. Connects lazily: the first check connects (bounded by the
    /// timeout), so a node starts even while Redis is down and answers by `on_error` meanwhile.
    pub fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let connector = Connector::new(config)?;
        let slots = if config.cluster {
            usize::from(SLOTS)
        } else {
            1
        };
        Ok(Self {
            inner: Arc::new(Inner {
                connector: Arc::new(connector),
                scripts: Scripts::new(config.read_old_keys),
                consistency: config.consistency,
                on_error: config.on_error,
                timeout: config.timeout,
                cluster: config.cluster,
                deny_cache: DenyCache::new(config.deny_cache_capacity),
                failing: (0..slots).map(|_| AtomicU64::new(0)).collect(),
                down: Mutex::new(HashSet::new()),
                probing: AtomicBool::new(false),
                local: MemoryStore::new(),
                counters: Counters::default(),
                started: Instant::now(),
                batcher: OnceLock::new(),
                follower: Follower::new(),
                leases: config.leases.map(Leases::new),
            }),
        })
    }

    /// The counters since the store was made.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        RedisStats {
            errors: c.errors.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            deny_cache_hits: c.deny_cache_hits.load(Ordering::Relaxed),
            wait_shortfalls: c.wait_shortfalls.load(Ordering::Relaxed),
            reroutes: self.inner.follower.replaced(),
            batch_calls: c.batch_calls.load(Ordering::Relaxed),
            batch_checks: c.batch_checks.load(Ordering::Relaxed),
            ..self.lease_stats()
        }
    }

    fn lease_stats(&self) -> RedisStats {
        let Some(leases) = &self.inner.leases else {
            return RedisStats::default();
        };
        let c = &leases.counters;
        RedisStats {
            lease_grants: c.grants.load(Ordering::Relaxed),
            lease_granted: c.granted.load(Ordering::Relaxed),
            lease_used: c.used.load(Ordering::Relaxed),
            lease_answers: c.answers.load(Ordering::Relaxed),
            lease_returned: c.returned.load(Ordering::Relaxed),
            lease_expired: c.expired.load(Ordering::Relaxed),
            ..RedisStats::default()
        }
    }

    /// Warms the store up before traffic (called once at start; checks do all of it lazily):
    /// connects, loads the scripts on every master, and in a cluster reads the slot map and
    /// opens the connection to every master. In strict mode it also starts the batcher and sends
    /// one `WAIT` to every master, so the first real admission does not pay for any of it: done
    /// lazily, all of that together could exceed a tight `timeout` on a busy machine, and that
    /// slot would then be answered by `on_error` until the prober cleared it. Bounded by the
    /// larger of the timeout and [`WARM_UP`]. Warns in the log when strict mode meets a master
    /// with no replica in sync: it would deny every admission on that master.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let budget = inner.timeout.max(WARM_UP);
        let work = async {
            let mut slots = vec![0];
            if inner.cluster {
                self.follow();
                if let Some(map) = inner.follow_now().await {
                    slots = map.one_slot_per_master();
                }
            }
            let mut conn = inner.connector.get().await?;
            inner.load_scripts(&mut conn).await?;
            for &slot in &slots {
                conn.ping(slot).await?;
            }
            if inner.consistency == Consistency::Strict {
                self.batcher();
                let wait_ms = (inner.timeout.as_millis() as u64 * 3 / 4).max(1);
                for &slot in &slots {
                    let mut pipe = redis::pipe();
                    pipe.cmd("WAIT").arg(1).arg(wait_ms);
                    let replies = conn.pipeline_on(pipe, slot, 1).await?;
                    if !matches!(replies.first(), Some(Value::Int(n)) if *n >= 1) {
                        tracing::warn!(
                            slot,
                            "consistency: strict, but the master of slot {slot} has no replica \
                             in sync: WAIT confirms nothing there, so its admissions will be \
                             denied; add a replica or use consistency: fast"
                        );
                    }
                }
            }
            Ok::<(), RedisError>(())
        };
        match tokio::time::timeout(budget, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout(budget)),
        }
    }

    /// Runs the script for the counter whose [`CounterKey::encode`](drl_core::CounterKey::encode)
    /// is `identity` at a fixed time instead of the server clock, with no cache, no WAIT and no
    /// fallback. **For the shared test vectors only**: production checks read `TIME`.
    #[cfg(feature = "test-clock")]
    pub async fn check_at_test_time(
        &self,
        identity: &[u8],
        policy: &Policy,
        hits: u32,
        now_ns: u64,
    ) -> Result<Decision, StoreError> {
        use crate::keys::key_for;
        use crate::scripts::parse_reply;

        let key = key_for(identity, identity, policy.algorithm());
        let cmd = self
            .inner
            .scripts
            .call(&key.name, policy, hits, Some(now_ns));
        let unavailable = |e: RedisError| StoreError::Unavailable(e.to_string());
        let mut conn = self.inner.connector.get().await.map_err(unavailable)?;
        let value = self
            .inner
            .eval(&mut conn, &cmd)
            .await
            .map_err(unavailable)?;
        parse_reply(&value, policy.requests())
            .map(|r| r.decision)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn decide(&self, request: StoreRequest<'_>) -> Result<Decision, StoreError> {
        self.follow();
        let inner = &self.inner;
        let key = redis_key(&request.key, request.policy.algorithm());
        let limit = request.policy.requests();
        let slot = if inner.cluster {
            usize::from(key.slot)
        } else {
            0
        };
        let mut ask = None;
        if let Some(leases) = &inner.leases
            && request.hits == 1
            && leasable(request.policy)
        {
            match leases.take(&key.name, request.policy, request.rules_epoch, inner.now()) {
                Take::Answer(decision) => return Ok(decision),
                Take::Ask { want, back } => ask = Some((want, back)),
                Take::Pass => {}
            }
        }
        if ask.is_none()
            && request.hits <= 1
            && let Some(denial) =
                inner
                    .deny_cache
                    .lookup(&key.name, request.rules_epoch, inner.now(), limit)
        {
            inner
                .counters
                .deny_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(denial);
        }
        let since = inner.failing[slot].load(Ordering::Relaxed);
        if since != 0 && inner.now().saturating_sub(since) < MAX_DOWN.as_nanos() as u64 {
            if let (Some(leases), Some((_, back))) = (&inner.leases, &ask) {
                leases.failed(&key.name, back.as_ref().map(|b| b.1));
            }
            return inner.fallback(&request, inner.backing_off(since));
        }
        let asked = ask.is_some();
        let returning = ask
            .as_ref()
            .and_then(|(_, back)| back.as_ref().map(|b| b.1));
        let work = async {
            match ask {
                Some((want, back)) => self.lease(&key, &request, want, back).await,
                None => self.run(&key, &request).await,
            }
        };
        let outcome = match tokio::time::timeout(inner.timeout, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Timeout),
        };
        if let Some(leases) = &inner.leases {
            match &outcome {
                Ok(reply) => leases.observe(&key.name, reply.decision.remaining),
                Err(_) if asked => leases.failed(&key.name, returning),
                Err(_) => {}
            }
        }
        match outcome {
            Ok(reply) => {
                if !reply.decision.allowed && request.hits <= 1 && !reply.never {
                    inner.deny_cache.insert(
                        &key.name,
                        request.rules_epoch,
                        inner.now(),
                        &reply.decision,
                    );
                }
                Ok(reply.decision)
            }
            Err(failure) => {
                inner.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %failure, "redis store check failed");
                if let Failure::Redis(e) = &failure {
                    inner.connector.reset_after(e).await;
                }
                self.mark_failing(slot);
                inner.fallback(&request, inner.cause(failure))
            }
        }
    }

    async fn run(&self, key: &RedisKey, request: &StoreRequest<'_>) -> Result<Reply, Failure> {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        self.batcher().send(
            inner,
            Job {
                slot: if inner.cluster { key.slot } else { 0 },
                work: Work::Check {
                    key: key.name.clone(),
                    policy: request.policy.clone(),
                    hits: request.hits,
                    reply: tx,
                },
            },
        );
        let (mut reply, replicated) = rx
            .await
            .map_err(|_| Failure::Reply("batch dropped".into()))??;
        if reply.decision.allowed && !replicated {
            self.shortfall(&mut reply);
        }
        Ok(reply)
    }

    /// A lease request: up to `want` admissions of `request`'s key, giving back `back`; the
    /// first admission granted answers this check, the rest go into the key's slice.
    async fn lease(
        &self,
        key: &RedisKey,
        request: &StoreRequest<'_>,
        want: u32,
        back: Option<(String, u32)>,
    ) -> Result<Reply, Failure> {
        let inner = &self.inner;
        let Some(leases) = &inner.leases else {
            return Err(Failure::Reply("leases are off".into()));
        };
        let sent = inner.now();
        let cmd = inner.scripts.call_lease(
            &key.name,
            request.policy,
            want,
            back.as_ref()
                .map(|(token, unused)| (token.as_str(), *unused)),
            None,
        );
        let (value, replicated) = self.execute(key.slot, cmd, true).await?;
        let grant = parse_lease(&value, request.policy.requests())
            .map_err(|e| Failure::Reply(e.to_string()))?;
        let epochs = (request.rules_epoch, inner.deny_cache.epoch());
        leases.granted(&key.name, request.policy, epochs, sent, &grant, replicated);
        let mut reply = grant.reply;
        if reply.decision.allowed && !replicated {
            self.shortfall(&mut reply);
        }
        Ok(reply)
    }

    /// An admission counted on the master but not confirmed on a replica: a failover could
    /// forget it, so it is answered denied (the count stays: a safe over-count).
    fn shortfall(&self, reply: &mut Reply) {
        let inner = &self.inner;
        inner
            .counters
            .wait_shortfalls
            .fetch_add(1, Ordering::Relaxed);
        reply.decision.allowed = false;
        reply.decision.remaining = 0;
        reply.decision.retry_after = inner.timeout;
        reply.never = true; // not a denial to cache
    }

    /// Runs a script call on the master of `slot`: directly, or (strict mode, when it `writes`)
    /// through the batcher, which confirms it with WAIT. Returns the reply and whether it is
    /// replicated (always true in fast mode or for a call that writes nothing).
    async fn execute(&self, slot: u16, cmd: Cmd, writes: bool) -> Result<(Value, bool), Failure> {
        let inner = &self.inner;
        if inner.consistency == Consistency::Fast || !writes {
            let mut conn = inner.connector.get().await.map_err(Failure::Redis)?;
            let value = inner.eval(&mut conn, &cmd).await.map_err(Failure::Redis)?;
            return Ok((value, true));
        }
        let (tx, rx) = oneshot::channel();
        self.batcher().send(
            inner,
            Job {
                slot: if inner.cluster { slot } else { 0 },
                work: Work::Call { cmd, reply: tx },
            },
        );
        rx.await
            .map_err(|_| Failure::Reply("batch dropped".into()))?
    }

    /// `check_all`: see [`Store::check_all`] on [`RedisStore`].
    async fn decide_all(&self, requests: &[StoreRequest<'_>]) -> Result<Vec<Decision>, StoreError> {
        match requests {
            [] => return Ok(Vec::new()),
            [one] => return self.decide(*one).await.map(|d| vec![d]),
            _ => {}
        }
        self.follow();
        let inner = &self.inner;
        // One entry per distinct counter, with the hits of all its requests.
        let mut counters: Vec<Counter<'_>> = Vec::with_capacity(requests.len());
        let mut counter_of = Vec::with_capacity(requests.len());
        for request in requests {
            let key = redis_key(&request.key, request.policy.algorithm());
            match counters.iter().position(|c| c.key.name == key.name) {
                Some(c) => {
                    counters[c].hits = counters[c].hits.saturating_add(request.hits);
                    counter_of.push(c);
                }
                None => {
                    counters.push(Counter {
                        key,
                        policy: request.policy,
                        hits: request.hits,
                        epoch: request.rules_epoch,
                    });
                    counter_of.push(counters.len() - 1);
                }
            }
        }
        let slot_index = |c: &Counter<'_>| {
            if inner.cluster {
                usize::from(c.key.slot)
            } else {
                0
            }
        };
        let now = inner.now();
        let down = counters
            .iter()
            .map(|c| inner.failing[slot_index(c)].load(Ordering::Relaxed))
            .find(|&since| since != 0 && now.saturating_sub(since) < MAX_DOWN.as_nanos() as u64);
        if let Some(since) = down {
            return inner.fallback_all(requests, inner.backing_off(since));
        }
        let outcome = match tokio::time::timeout(inner.timeout, self.run_all(&counters)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Timeout),
        };
        match outcome {
            Ok(replies) => {
                let now = inner.now();
                for (c, reply) in counters.iter().zip(&replies) {
                    if !reply.decision.allowed && c.hits <= 1 && !reply.never {
                        inner
                            .deny_cache
                            .insert(&c.key.name, c.epoch, now, &reply.decision);
                    }
                }
                Ok(counter_of.iter().map(|&c| replies[c].decision).collect())
            }
            Err(failure) => {
                inner.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %failure, "redis store check_all failed");
                if let Failure::Redis(e) = &failure {
                    inner.connector.reset_after(e).await;
                }
                for c in &counters {
                    self.mark_failing(slot_index(c));
                }
                inner.fallback_all(requests, inner.cause(failure))
            }
        }
    }

    /// The counters' replies, all admitted or none (see [`Store::check_all`] on [`RedisStore`]).
    async fn run_all(&self, counters: &[Counter<'_>]) -> Result<Vec<Reply>, Failure> {
        let inner = &self.inner;
        // Counters by slot, in slot order (a single Redis is one slot).
        let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, c) in counters.iter().enumerate() {
            let slot = if inner.cluster { c.key.slot } else { 0 };
            groups.entry(slot).or_default().push(i);
        }
        let call = |members: &[usize], commit: bool| {
            let parts: Vec<Part<'_>> = members
                .iter()
                .map(|&i| Part {
                    key: &counters[i].key.name,
                    policy: counters[i].policy,
                    hits: counters[i].hits,
                })
                .collect();
            inner.scripts.call_all(&parts, commit, None)
        };
        let limits = |members: &[usize]| -> Vec<u32> {
            members
                .iter()
                .map(|&i| counters[i].policy.requests())
                .collect()
        };
        let mut replies: Vec<Option<Reply>> = vec![None; counters.len()];
        let place = |members: &[usize], got: Vec<Reply>, replies: &mut Vec<Option<Reply>>| {
            for (&i, r) in members.iter().zip(got) {
                replies[i] = Some(r);
            }
        };
        let finish = |replies: Vec<Option<Reply>>| -> Result<Vec<Reply>, Failure> {
            replies
                .into_iter()
                .map(|r| r.ok_or_else(|| Failure::Reply("a counter got no reply".into())))
                .collect()
        };

        if groups.len() > 1 {
            // Across slots: a trial of every group first (writes nothing, so no WAIT); any
            // denial denies the whole with nothing counted.
            let mut trials = Vec::with_capacity(groups.len());
            for (&slot, members) in &groups {
                trials.push(self.execute(slot, call(members, false), false));
            }
            let mut all_admitted = true;
            for ((_, members), trial) in groups.iter().zip(trials) {
                let (value, _) = trial.await?;
                let (_, got) =
                    parse_all(&value, &limits(members)).map_err(|e| Failure::Reply(e.0))?;
                all_admitted &= got.iter().all(|r| r.decision.allowed);
                place(members, got, &mut replies);
            }
            if !all_admitted {
                return finish(replies);
            }
        }

        // Commit group by group; each group is one atomic script. If a later group denies (it
        // changed since its trial) or is not replicated, refund the groups already counted.
        let mut committed: Vec<(u16, &Vec<usize>)> = Vec::new();
        for (&slot, members) in &groups {
            let (value, replicated) = match self.execute(slot, call(members, true), true).await {
                Ok(done) => done,
                Err(failure) => {
                    self.refund(counters, &committed, &replies).await;
                    return Err(failure);
                }
            };
            let (admitted, mut got) =
                parse_all(&value, &limits(members)).map_err(|e| Failure::Reply(e.0))?;
            if admitted && !replicated {
                for r in &mut got {
                    self.shortfall(r);
                }
            }
            place(members, got, &mut replies);
            if !(admitted && replicated) {
                self.refund(counters, &committed, &replies).await;
                return finish(replies);
            }
            committed.push((slot, members));
        }
        finish(replies)
    }

    /// Takes back the admissions of `committed` groups, best effort: a refund that fails leaves
    /// the hits counted (under-admission, never over-admission).
    async fn refund(
        &self,
        counters: &[Counter<'_>],
        committed: &[(u16, &Vec<usize>)],
        replies: &[Option<Reply>],
    ) {
        for &(slot, members) in committed {
            let refunds: Vec<Refund> = members
                .iter()
                .filter(|&&i| counters[i].hits > 0)
                .filter_map(|&i| {
                    let reply = replies[i].as_ref()?;
                    let (letter, _) = params(counters[i].policy);
                    (letter != "l").then(|| Refund {
                        key: counters[i].key.name.clone(),
                        letter,
                        hits: counters[i].hits,
                        token: reply.token.clone(),
                    })
                })
                .collect();
            if refunds.is_empty() {
                continue;
            }
            let cmd = self.inner.scripts.call_refund(&refunds);
            if let Err(e) = self.execute(slot, cmd, false).await {
                tracing::debug!(error = %e, "refund failed; the hits stay counted");
            }
        }
    }

    /// Marks `slot` as failing and makes sure a prober is running.
    fn mark_failing(&self, slot: usize) {
        let inner = &self.inner;
        inner.failing[slot].store(inner.now().max(1), Ordering::Relaxed);
        lock(&inner.down).insert(slot as u16);
        if !inner.probing.swap(true, Ordering::SeqCst) {
            tokio::spawn(prober(Arc::downgrade(&self.inner)));
        }
        follow_soon(inner);
    }

    /// Starts the periodic refresh of the cluster's map (once; cluster only).
    fn follow(&self) {
        let inner = &self.inner;
        if inner.cluster && inner.follower.start_periodic() {
            tokio::spawn(follower(Arc::downgrade(inner)));
        }
    }

    /// The batcher, started on first use (inside the runtime).
    fn batcher(&self) -> &Batcher {
        self.inner
            .batcher
            .get_or_init(|| Batcher::start(&self.inner))
    }
}

impl Inner {
    /// Refreshes the cluster's map now (see [`Follower::refresh`]). When the connection was
    /// replaced, the failing slots are cleared at once: their checks go to the new one.
    async fn follow_now(&self) -> Option<Arc<SlotMap>> {
        let now = self.now();
        let failing = |slot: u16| {
            let since = self.failing[usize::from(slot)].load(Ordering::Relaxed);
            since != 0 && now.saturating_sub(since) < MAX_DOWN.as_nanos() as u64
        };
        let refreshed = self
            .follower
            .refresh(&self.connector, self.timeout, failing)
            .await?;
        if refreshed.replaced {
            for slot in lock(&self.down).drain() {
                self.failing[usize::from(slot)].store(0, Ordering::Relaxed);
            }
        }
        Some(refreshed.map)
    }

    fn current_slot_map(&self) -> Option<Arc<SlotMap>> {
        self.follower.map()
    }

    /// Local monotonic time in ns since the store was made.
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// EVALSHA, loading the script and retrying once on NOSCRIPT.
    async fn eval(&self, conn: &mut Conn, cmd: &Cmd) -> Result<Value, RedisError> {
        match conn.query(cmd).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts(conn).await?;
                conn.query(cmd).await
            }
            other => other,
        }
    }

    /// SCRIPT LOAD of every script (to every node of a cluster).
    async fn load_scripts(&self, conn: &mut Conn) -> Result<(), RedisError> {
        for script in self.scripts.all() {
            match conn {
                Conn::Single(c) => script.load_async(c).await?,
                Conn::Cluster(c) => script.load_async(c).await?,
            };
        }
        Ok(())
    }

    /// The `on_error` answer for an all-or-nothing check.
    fn fallback_all(
        &self,
        requests: &[StoreRequest<'_>],
        cause: StoreError,
    ) -> Result<Vec<Decision>, StoreError> {
        match self.on_error {
            OnError::Local => {
                self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(self.local.check_all_now(requests))
            }
            OnError::Deny | OnError::Allow => requests
                .iter()
                .map(|r| self.fallback(r, cause.clone()))
                .collect(),
        }
    }

    /// The `on_error` answer: `deny` is the store's error itself (the node answers it as
    /// unavailable: HTTP 503, gRPC `UNAVAILABLE`, never as a rate limit), `allow` an admission
    /// counted nowhere, `local` the in-memory store's decision.
    fn fallback(
        &self,
        request: &StoreRequest<'_>,
        cause: StoreError,
    ) -> Result<Decision, StoreError> {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        let limit = request.policy.requests();
        match self.on_error {
            OnError::Deny => Err(cause),
            OnError::Allow => Ok(Decision {
                allowed: true,
                limit,
                remaining: limit.saturating_sub(request.hits),
                reset_after: Duration::ZERO,
                retry_after: Duration::ZERO,
            }),
            OnError::Local => Ok(self.local.check_now(request)),
        }
    }

    /// The error of a failed check, as the caller sees it.
    fn cause(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Timeout => StoreError::Timeout(self.timeout),
            other => StoreError::Unavailable(format!("redis: {other}")),
        }
    }

    /// The error of a check not tried because its slot failed at `since` (ns on the store's
    /// clock) and backs off.
    fn backing_off(&self, since: u64) -> StoreError {
        let ago = Duration::from_nanos(self.now().saturating_sub(since));
        StoreError::Unavailable(format!(
            "redis failed {} ms ago and is tried again within {} s",
            ago.as_millis(),
            MAX_DOWN.as_secs()
        ))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One distinct counter of a `check_all`.
#[derive(Debug)]
struct Counter<'a> {
    key: RedisKey,
    policy: &'a Policy,
    hits: u32,
    epoch: u64,
}

impl Store for RedisStore {
    async fn check(&self, request: StoreRequest<'_>) -> Result<Decision, StoreError> {
        self.decide(request).await
    }

    /// All or nothing over several counters:
    ///
    /// - counters of one slot (every limit of one descriptor: their keys share the hash tag of
    ///   [`CounterKey::group`](drl_core::CounterKey::group)) go in **one** script call, which
    ///   tries them all and counts them only if every one is admitted: truly atomic;
    /// - across slots, a trial of every slot's group runs first, writing nothing; if all would be
    ///   admitted, the groups are committed one by one in slot order, and if one now denies
    ///   (concurrent checks took the room since its trial), the groups already counted are
    ///   refunded. Never over-admits: between a commit and its refund the extra hits only make
    ///   other checks deny more. A `sliding_log` admission is not refunded (it stays counted),
    ///   nor is anything when the refund itself fails;
    /// - strict mode confirms every committed group with WAIT; a shortfall denies the whole;
    /// - the deny cache is filled by denied counters but not consulted (answering the other
    ///   counters' decisions needs the store anyway); a store failure answers `on_error` for all.
    async fn check_all(&self, requests: &[StoreRequest<'_>]) -> Result<Vec<Decision>, StoreError> {
        self.decide_all(requests).await
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        let s = RedisStore::stats(self);
        vec![
            ("errors", s.errors),
            ("fallbacks", s.fallbacks),
            ("deny_cache_hits", s.deny_cache_hits),
            ("wait_shortfalls", s.wait_shortfalls),
            ("reroutes", s.reroutes),
            ("batch_calls", s.batch_calls),
            ("batch_checks", s.batch_checks),
            ("lease_grants", s.lease_grants),
            ("lease_granted", s.lease_granted),
            ("lease_used", s.lease_used),
            ("lease_answers", s.lease_answers),
            ("lease_returned", s.lease_returned),
            ("lease_expired", s.lease_expired),
        ]
    }

    /// Connects if needed and PINGs, bounded by the timeout (`GET /readyz`).
    /// Reachable, and in strict mode every master has a replica attached: without one, WAIT
    /// confirms nothing and every admission on that master is denied (a single Redis with no
    /// replica under the default `consistency: strict`), which is no node to send traffic to.
    async fn ready(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let check = async {
            let mut conn = inner.connector.get().await?;
            conn.query(&redis::cmd("PING")).await?;
            if inner.consistency == Consistency::Strict {
                let slots = match inner.current_slot_map() {
                    Some(map) if inner.cluster => map.one_slot_per_master(),
                    _ => vec![0],
                };
                for slot in slots {
                    let role = conn.on_master(redis::cmd("ROLE"), slot).await?;
                    if replicas_attached(&role) == Some(0) {
                        return Ok(Some(slot));
                    }
                }
            }
            Ok::<_, RedisError>(None)
        };
        match tokio::time::timeout(inner.timeout, check).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(slot))) => Err(StoreError::Unavailable(format!(
                "consistency: strict, but the master of slot {slot} has no replica: WAIT can \
                 confirm nothing, so every admission there is denied; add a replica or use \
                 consistency: fast"
            ))),
            Ok(Err(e)) => {
                inner.connector.reset_after(&e).await;
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(_) => Err(StoreError::Timeout(inner.timeout)),
        }
    }

    fn rules_epoch(&self) -> u64 {
        self.inner.deny_cache.epoch()
    }

    fn rules_changed(&self) {
        self.inner.deny_cache.clear();
        if let Some(leases) = &self.inner.leases {
            leases.rules_changed();
        }
        self.inner.local.rules_changed();
    }
}
