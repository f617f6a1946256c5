//! Per-master batching of script calls ("group commit"), in both consistency modes.
//!
//! Single checks queue per master (per slot until the cluster's slot map is known). A master
//! has at most [`IN_FLIGHT`] calls out at a time; checks that arrive meanwhile form its
//! next call, so under load one round trip and one script call decide many checks, and a slow or
//! dead master holds up only its own slots. The caller that finds its master idle starts the
//! call; no task sits between a check and its master:
//!
//! - the checks of a batch travel in **one** [`Scripts::call_many`](crate::scripts::Scripts)
//!   call (Redis 7 `allow-cross-slot-keys`): each is the single script's check, in arrival
//!   order, so two checks of one key in a batch see each other as two calls would;
//! - strict mode adds the all-or-nothing commits of `check_all` to the same pipeline and ends it
//!   with `WAIT 1 t`, which covers every earlier write on that master's connection (and blocks
//!   it anyway);
//! - a check whose key the master turns out not to serve (a stale slot map: a failover or a slot
//!   moving) did nothing there; it is sent again alone, routed by its own key (redis-rs follows
//!   MOVED/ASK), and the slot map is refreshed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use drl_core::Policy;
use redis::{Cmd, Value};
use tokio::sync::oneshot;

use super::{Failure, Inner, follow_soon};
use crate::config::Consistency;
use crate::conn::Conn;
use crate::scripts::{ManyError, Part, Reply, parse_many, parse_reply};
use crate::topology::SlotMap;

/// Calls a master may have out at once, in both modes. Checks that arrive while one is out form
/// the next call, so a loaded node sends deep batches: with two out (tried in fast mode), each
/// call of a loaded node carried about half as many checks and Redis paid its per-call cost
/// twice as often. In strict mode the call's WAIT blocks the master's connection anyway.
const IN_FLIGHT: usize = 1;

/// Most jobs in one batch (one `call_many` call; in strict mode, one pipeline and one WAIT).
const MAX_BATCH: usize = 1_024;

/// What a job asks of its master.
pub(super) enum Work {
    /// A single check, decided as [`Scripts::call`](crate::scripts::Scripts) would.
    Check {
        key: Vec<u8>,
        policy: Policy,
        hits: u32,
        reply: oneshot::Sender<Result<(Reply, bool), Failure>>,
    },
    /// A whole script call of its own (strict mode's all-or-nothing commits): its raw reply.
    Call {
        cmd: Cmd,
        reply: oneshot::Sender<Result<(Value, bool), Failure>>,
    },
}

/// One piece of work for the master of `slot` (0 on a single Redis).
pub(super) struct Job {
    pub(super) slot: u16,
    pub(super) work: Work,
}

/// The per-master queues. A check is queued by its caller; when its master has fewer than
/// [`IN_FLIGHT`] calls out, the caller also takes the queue and starts a call (one
/// task per busy master, not a hop per check), and that task sends whatever queued meanwhile
/// as its next call until the queue is empty.
#[derive(Debug)]
pub(super) struct Batcher {
    lanes: Mutex<HashMap<u32, Lane>>,
}

/// One master's (or, before the slot map is known, one slot's) queue.
#[derive(Debug, Default)]
struct Lane {
    queue: Vec<Job>,
    /// Calls out to this master.
    busy: usize,
}

impl Batcher {
    /// The batcher of `inner` (inside the runtime: it starts following the cluster's map).
    pub(super) fn start(inner: &Arc<Inner>) -> Self {
        follow_soon(inner);
        Self {
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `job` for its master; starts a call when that master has room for one.
    pub(super) fn send(&self, inner: &Arc<Inner>, job: Job) {
        let map = inner.current_slot_map();
        let lane = SlotMap::lane(map.as_deref(), job.slot);
        let jobs = {
            let mut lanes = lock(&self.lanes);
            let state = lanes.entry(lane).or_default();
            state.queue.push(job);
            if state.busy >= IN_FLIGHT {
                return;
            }
            state.busy += 1;
            take(&mut state.queue)
        };
        tokio::spawn(drive(Arc::clone(inner), lane, jobs));
    }

    /// The next call's jobs for `lane`, or None (and the lane is one call less busy) if none
    /// queued.
    fn next(&self, lane: u32) -> Option<Vec<Job>> {
        let mut lanes = lock(&self.lanes);
        let state = lanes.get_mut(&lane)?;
        if state.queue.is_empty() {
            state.busy = state.busy.saturating_sub(1);
            if state.busy == 0 {
                lanes.remove(&lane);
            }
            return None;
        }
        Some(take(&mut state.queue))
    }
}

/// At most [`MAX_BATCH`] jobs off the front of `queue`.
fn take(queue: &mut Vec<Job>) -> Vec<Job> {
    if queue.len() > MAX_BATCH {
        queue.drain(..MAX_BATCH).collect()
    } else {
        std::mem::take(queue)
    }
}

/// Sends `jobs` to their master, then what queued for `lane` meanwhile, until nothing has.
async fn drive(inner: Arc<Inner>, lane: u32, mut jobs: Vec<Job>) {
    loop {
        if !run_group(&inner, jobs).await {
            follow_soon(&inner);
        }
        let Some(batcher) = inner.batcher.get() else {
            return;
        };
        match batcher.next(lane) {
            Some(next) => jobs = next,
            None => return,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A batch's checks and calls, split out of the jobs.
struct Group<'a> {
    checks: Vec<Part<'a>>,
    limits: Vec<u32>,
    calls: Vec<&'a Cmd>,
}

impl<'a> Group<'a> {
    fn of(jobs: &'a [Job]) -> Self {
        let mut group = Group {
            checks: Vec::new(),
            limits: Vec::new(),
            calls: Vec::new(),
        };
        for job in jobs {
            match &job.work {
                Work::Check {
                    key, policy, hits, ..
                } => {
                    group.checks.push(Part {
                        key,
                        policy,
                        hits: *hits,
                    });
                    group.limits.push(policy.requests());
                }
                Work::Call { cmd, .. } => group.calls.push(cmd),
            }
        }
        group
    }
}

/// What a batch got back: each check's result, each call's reply, and whether WAIT confirmed a
/// replica (always true in fast mode).
struct Replies {
    checks: Vec<Result<Reply, ManyError>>,
    calls: Vec<Value>,
    replicated: bool,
}

/// Sends one batch (jobs of one master) and answers every job; false if the slot map looks
/// stale (a check or call was refused for a key the master does not serve) or the batch failed.
async fn run_group(inner: &Inner, jobs: Vec<Job>) -> bool {
    let Some(slot) = jobs.first().map(|j| j.slot) else {
        return true;
    };
    let strict = inner.consistency == Consistency::Strict;
    let group = Group::of(&jobs);
    if !group.checks.is_empty() {
        let counters = &inner.counters;
        counters.batch_calls.fetch_add(1, Ordering::Relaxed);
        (counters.batch_checks).fetch_add(group.checks.len() as u64, Ordering::Relaxed);
    }
    let work = async {
        let mut conn = inner.connector.get().await.map_err(Failure::Redis)?;
        let mut sent = send(inner, &mut conn, slot, &group, strict).await?;
        // A promoted or restarted master has an empty script cache: load the scripts and rerun
        // what got NOSCRIPT (such a call ran nothing, so rerunning it cannot count twice).
        let missing: Vec<usize> = (0..sent.calls.len())
            .filter(|&i| is_noscript(&sent.calls[i]))
            .collect();
        if sent.checks.is_none() || !missing.is_empty() {
            inner
                .load_scripts(&mut conn)
                .await
                .map_err(Failure::Redis)?;
            let again = Group {
                checks: match sent.checks {
                    None => group.checks.clone(),
                    Some(_) => Vec::new(),
                },
                limits: group.limits.clone(),
                calls: missing.iter().map(|&i| group.calls[i]).collect(),
            };
            let rerun = send(inner, &mut conn, slot, &again, strict).await?;
            if sent.checks.is_none() {
                sent.checks = rerun.checks;
            }
            for (k, &i) in missing.iter().enumerate() {
                if let Some(value) = rerun.calls.get(k) {
                    sent.calls[i] = value.clone();
                }
            }
            sent.replicated &= rerun.replicated;
        }
        let replies = Replies {
            checks: sent
                .checks
                .ok_or_else(|| Failure::Reply("NOSCRIPT after loading the scripts".into()))?,
            calls: sent.calls,
            replicated: sent.replicated,
        };
        Ok::<_, Failure>((conn, replies))
    };
    let (conn, replies) = match tokio::time::timeout(inner.timeout, work).await {
        Ok(Ok(done)) => done,
        Ok(Err(failure)) => {
            if let Failure::Redis(e) = &failure {
                // A single Redis's connection may be broken: the next batch reconnects.
                inner.connector.reset_after(e).await;
            }
            let message = failure.to_string();
            answer_all(jobs, || Failure::Reply(message.clone()));
            return false;
        }
        Err(_) => {
            answer_all(jobs, || Failure::Timeout);
            return false;
        }
    };
    let mut fresh = true;
    let mut checks = replies.checks.into_iter();
    let mut calls = replies.calls.into_iter();
    let mut strays = Vec::new();
    for job in jobs {
        match job.work {
            Work::Check {
                key,
                policy,
                hits,
                reply,
            } => match checks.next() {
                Some(Ok(r)) => {
                    let _ = reply.send(Ok((r, replies.replicated)));
                }
                Some(Err(ManyError::NotLocal(_))) => {
                    fresh = false;
                    strays.push((job.slot, key, policy, hits, reply));
                }
                Some(Err(ManyError::Other(e))) => {
                    let _ = reply.send(Err(Failure::Reply(e)));
                }
                None => {
                    let _ = reply.send(Err(Failure::Reply("a check got no reply".into())));
                }
            },
            Work::Call { reply, .. } => {
                let answer = match calls.next() {
                    // MOVED/ASK after a failover or a stale slot map, or a script error.
                    Some(Value::ServerError(e)) => {
                        fresh = false;
                        Err(Failure::Reply(format!("{e:?}")))
                    }
                    Some(value) => Ok((value, replies.replicated)),
                    None => Err(Failure::Reply("a call got no reply".into())),
                };
                let _ = reply.send(answer);
            }
        }
    }
    // Checks of keys this master does not serve: alone, each to its own key's master.
    for (slot, key, policy, hits, reply) in strays {
        let mut conn = conn.clone();
        let cmd = inner.scripts.call(&key, &policy, hits, None);
        let limit = policy.requests();
        let alone = async {
            let (value, replicated) = if strict {
                let mut pipe = redis::pipe();
                pipe.ignore_errors().add_command(cmd);
                pipe.cmd("WAIT").arg(1).arg(wait_ms(inner));
                let values = conn
                    .pipeline_on(pipe, slot, 2)
                    .await
                    .map_err(Failure::Redis)?;
                match &values[..] {
                    [value, wait] => (value.clone(), replicated(wait)),
                    _ => return Err(Failure::Reply("a check got no reply".into())),
                }
            } else {
                (
                    inner.eval(&mut conn, &cmd).await.map_err(Failure::Redis)?,
                    true,
                )
            };
            let reply = parse_reply(&value, limit).map_err(|e| Failure::Reply(e.0))?;
            Ok((reply, replicated))
        };
        let answer = match tokio::time::timeout(inner.timeout, alone).await {
            Ok(Err(Failure::Redis(e))) => {
                inner.connector.reset_after(&e).await;
                Err(Failure::Redis(e))
            }
            Ok(answer) => answer,
            Err(_) => Err(Failure::Timeout),
        };
        let _ = reply.send(answer);
    }
    fresh
}

fn answer_all(jobs: Vec<Job>, failure: impl Fn() -> Failure) {
    for job in jobs {
        match job.work {
            Work::Check { reply, .. } => {
                let _ = reply.send(Err(failure()));
            }
            Work::Call { reply, .. } => {
                let _ = reply.send(Err(failure()));
            }
        }
    }
}

/// WAIT's own timeout: most of the budget, so it never outlives the check.
fn wait_ms(inner: &Inner) -> u64 {
    (inner.timeout.as_millis() as u64 * 3 / 4).max(1)
}

fn replicated(wait: &Value) -> bool {
    matches!(wait, Value::Int(n) if *n >= 1)
}

/// What one send got back; `checks` is `None` when the checks' call met NOSCRIPT.
struct Sent {
    checks: Option<Vec<Result<Reply, ManyError>>>,
    calls: Vec<Value>,
    replicated: bool,
}

/// One batch: in fast mode the `call_many` call alone, routed by its first key; in strict mode
/// one pipeline to the master of `slot`: `call_many` (when there are checks), the calls, `WAIT`.
async fn send(
    inner: &Inner,
    conn: &mut Conn,
    slot: u16,
    group: &Group<'_>,
    strict: bool,
) -> Result<Sent, Failure> {
    let many = (!group.checks.is_empty()).then(|| inner.scripts.call_many(&group.checks, None));
    let read = |value: &Value| -> Result<Option<Vec<Result<Reply, ManyError>>>, Failure> {
        match value {
            v if is_noscript(v) => Ok(None),
            // The first key's slot moved: none of the checks ran; each goes alone.
            Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK") => Ok(Some(
                group
                    .checks
                    .iter()
                    .map(|_| Err(ManyError::NotLocal(format!("{e:?}"))))
                    .collect(),
            )),
            Value::ServerError(e) => Err(Failure::Reply(format!("{e:?}"))),
            v => parse_many(v, &group.limits)
                .map(Some)
                .map_err(|e| Failure::Reply(e.0)),
        }
    };
    if !strict {
        let Some(many) = many else {
            return Ok(Sent {
                checks: Some(Vec::new()),
                calls: Vec::new(),
                replicated: true,
            });
        };
        let checks = match conn.query(&many).await {
            Ok(value) => read(&value)?,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                None
            }
            Err(e) => return Err(Failure::Redis(e)),
        };
        return Ok(Sent {
            checks,
            calls: Vec::new(),
            replicated: true,
        });
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    if let Some(many) = many {
        pipe.add_command(many);
    }
    for cmd in &group.calls {
        pipe.add_command((*cmd).clone());
    }
    pipe.cmd("WAIT").arg(1).arg(wait_ms(inner));
    let count = usize::from(!group.checks.is_empty()) + group.calls.len() + 1;
    let mut values = conn
        .pipeline_on(pipe, slot, count)
        .await
        .map_err(Failure::Redis)?;
    if values.len() != count {
        return Err(Failure::Reply(format!(
            "{} replies for {count} commands",
            values.len()
        )));
    }
    let wait = values.pop();
    let mut values = values.into_iter();
    let checks = if group.checks.is_empty() {
        Some(Vec::new())
    } else {
        match values.next() {
            Some(v) => read(&v)?,
            None => Some(Vec::new()),
        }
    };
    Ok(Sent {
        checks,
        calls: values.collect(),
        replicated: wait.as_ref().is_some_and(replicated),
    })
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}
