//! A node that follows the cluster.
//!
//! redis-rs's cluster connection refreshes its slot map on MOVED/ASK, READONLY and broken
//! connections, and offers no way to ask it to refresh otherwise. A master that *hangs* (a
//! frozen process, a partitioned host) breaks nothing: its requests time out, and the connection
//! keeps sending that master's slots to it after the cluster has promoted a replica, for as long
//! as the hang lasts. So the store asks the cluster itself, every [`FOLLOW_EVERY`] and soon after
//! any error or timeout (at most every [`REFRESH_EVERY`]):
//!
//! 1. every node it knows (the last map's and the configured seeds) is asked `CLUSTER NODES`,
//!    concurrently, each bounded by the timeout; the views are merged by configuration epoch
//!    ([`SlotMap::merge`]), so one node that has not heard of a promotion yet is outvoted by
//!    the promoted one. A node that did not answer the previous round is asked but not waited
//!    for (a hung node would hold every round up by a timeout);
//! 2. the connection in use is checked: `CLUSTER MYID`, routed to the first slot of every run of
//!    slots with one master that answered step 1, must come back from that master. If another
//!    node answers, the connection routes around the cluster. If none answers within the timeout
//!    (a quarter of it for a run where checks are failing: its master just answered a connection
//!    of its own, so this one is not getting through), it does too, but only for a run whose
//!    master changed since the connection last passed this check: a busy connection that is
//!    slow to answer is no reason to replace it;
//! 3. then a new connection is made, seeded with the nodes that answered, checked the same way
//!    and swapped in. Calls in flight on the old one finish (or time out) there.
//!
//! A master that hangs before any promotion answers neither step, so nothing is replaced for it:
//! its slots are answered by `on_error` until the cluster promotes its replica, then by Redis
//! again within one refresh and one connection set-up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::Value;
use tokio::task::JoinSet;

use crate::conn::{Conn, Connector};
use crate::topology::{SlotMap, View};

/// How often the cluster is asked for its map while nothing fails.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Least time between two refreshes (errors ask for one on every failed check).
pub(crate) const REFRESH_EVERY: Duration = Duration::from_millis(200);
/// Most runs of slots whose routing one refresh checks (a cluster has a few per master unless
/// it was resharded slot by slot).
const MAX_RUNS_CHECKED: usize = 256;

/// What a refresh found.
#[derive(Debug)]
pub(crate) struct Refreshed {
    pub(crate) map: Arc<SlotMap>,
    /// The connection was replaced.
    pub(crate) replaced: bool,
}

/// The cluster's map as last read, and the refresh's bookkeeping.
#[derive(Debug)]
pub(crate) struct Follower {
    map: RwLock<Option<Arc<SlotMap>>>,
    clock: Instant,
    /// When the last refresh started (ns on `clock`, 0: never).
    last: AtomicU64,
    /// A refresh is running.
    busy: AtomicBool,
    /// The periodic refresh task is running.
    periodic: AtomicBool,
    /// Connections replaced because they routed slots to a node that was not their master.
    replaced: AtomicU64,
    /// Nodes that did not answer their last `CLUSTER NODES`.
    silent: Arc<Mutex<HashSet<(String, u16)>>>,
    /// The map the connection in use last passed the check against (None: not yet).
    verified: Mutex<Option<Arc<SlotMap>>>,
}

impl Follower {
    pub(crate) fn new() -> Self {
        Self {
            map: RwLock::new(None),
            clock: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            periodic: AtomicBool::new(false),
            replaced: AtomicU64::new(0),
            silent: Arc::default(),
            verified: Mutex::new(None),
        }
    }

    /// The last map read, if any.
    pub(crate) fn map(&self) -> Option<Arc<SlotMap>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Connections replaced so far.
    pub(crate) fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// True once: the caller starts the periodic task.
    pub(crate) fn start_periodic(&self) -> bool {
        !self.periodic.load(Ordering::Relaxed) && !self.periodic.swap(true, Ordering::SeqCst)
    }

    /// Takes the right to refresh now: false while a refresh runs or if the last one started
    /// less than [`REFRESH_EVERY`] ago. The caller must then call [`Follower::refresh`].
    pub(crate) fn claim(&self) -> bool {
        let now = (self.clock.elapsed().as_nanos() as u64).max(1);
        let last = self.last.load(Ordering::Relaxed);
        if (last != 0 && now.saturating_sub(last) < REFRESH_EVERY.as_nanos() as u64)
            || self.busy.swap(true, Ordering::SeqCst)
        {
            return false;
        }
        self.last.store(now, Ordering::Relaxed);
        true
    }

    /// Reads the cluster's map and replaces the connection if it routes any master's slots
    /// elsewhere (see the module's steps); `failing` tells which slots' checks are failing now.
    /// None if no node answered. Every network step is bounded by `timeout`; making a new
    /// connection, by a few of them.
    pub(crate) async fn refresh(
        &self,
        connector: &Arc<Connector>,
        timeout: Duration,
        failing: impl Fn(u16) -> bool + Sync,
    ) -> Option<Refreshed> {
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.busy.store(true, Ordering::SeqCst);
        let _release = Release(&self.busy);

        let (map, answered) = self.ask_nodes(connector, timeout).await?;
        let map = Arc::new(map);
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&map));

        let kept = Refreshed {
            map: Arc::clone(&map),
            replaced: false,
        };
        let Ok(Ok(current)) = tokio::time::timeout(timeout, connector.get()).await else {
            return Some(kept);
        };
        let verified = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // A run's master changed since the last check passed (with none passed yet, a fresh
        // connection routes by the cluster's own map: only a wrong answer counts).
        let changed = |slot: u16, id: &str| {
            verified
                .as_ref()
                .is_some_and(|v| v.master_of(slot).is_none_or(|m| m.id != id))
        };
        if routes_to_masters(&current, &map, &answered, timeout, &failing, &changed).await {
            *self.verified.lock().unwrap_or_else(PoisonError::into_inner) = Some(map);
            return Some(kept);
        }
        // Seeds: the masters that answered first, then the other nodes that did.
        let seeds: Vec<(String, u16)> = map
            .nodes()
            .iter()
            .map(|n| (n.host.clone(), n.port))
            .filter(|addr| answered.contains(addr))
            .collect();
        let budget = (timeout * 8).max(Duration::from_secs(1));
        let fresh = match connector.connect_cluster(&seeds, budget).await {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(%error, "following the cluster: a new connection failed");
                return Some(kept);
            }
        };
        if routes_to_masters(&fresh, &map, &answered, timeout, &|_| false, &|_, _| true).await {
            connector.replace(fresh).await;
            *self.verified.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&map));
            self.replaced.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                "following the cluster: the connection sent slots to a node that no longer \
                 serves them; replaced by one seeded with the {} nodes that answered",
                seeds.len()
            );
            Some(Refreshed {
                map,
                replaced: true,
            })
        } else {
            tracing::warn!("following the cluster: a new connection routes wrongly too; kept");
            Some(kept)
        }
    }

    /// Step 1: every known node's `CLUSTER NODES`, merged; and the addresses that answered.
    async fn ask_nodes(
        &self,
        connector: &Arc<Connector>,
        timeout: Duration,
    ) -> Option<(SlotMap, Vec<(String, u16)>)> {
        let mut addresses: Vec<(String, u16)> = self
            .map()
            .map(|m| m.nodes().iter().map(|n| (n.host.clone(), n.port)).collect())
            .unwrap_or_default();
        for seed in connector.seed_addresses() {
            if !addresses.contains(&seed) {
                addresses.push(seed);
            }
        }
        // Nodes that left the cluster are asked no more.
        connector.retain_nodes(&addresses);
        let mut waited_for = {
            let mut silent = self.silent.lock().unwrap_or_else(PoisonError::into_inner);
            silent.retain(|a| addresses.contains(a));
            addresses.iter().filter(|a| !silent.contains(a)).count()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (host, port) in addresses {
            let (connector, silent, tx) =
                (Arc::clone(connector), Arc::clone(&self.silent), tx.clone());
            // Not a JoinSet: the silent nodes' answers, arriving after the round, still mark
            // them as answering for the next one.
            tokio::spawn(async move {
                let ask = async {
                    let mut conn = connector.node(&host, port).await?;
                    redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query_async::<String>(&mut conn)
                        .await
                };
                let view = match tokio::time::timeout(timeout, ask).await {
                    Ok(Ok(text)) => View::parse(&text, &host),
                    _ => {
                        connector.forget_node(&host, port);
                        None
                    }
                };
                let was_silent = {
                    let mut silent = silent.lock().unwrap_or_else(PoisonError::into_inner);
                    if view.is_some() {
                        silent.remove(&(host.clone(), port))
                    } else {
                        !silent.insert((host.clone(), port))
                    }
                };
                let _ = tx.send(((host, port), view, was_silent));
            });
        }
        drop(tx);
        let mut views = Vec::new();
        let mut answered = Vec::new();
        // Until every node that answered last time has, or any node at all if none did.
        while waited_for > 0 || views.is_empty() {
            let Some((address, view, was_silent)) = rx.recv().await else {
                break;
            };
            if !was_silent {
                waited_for -= 1;
            }
            if let Some(view) = view {
                views.push(view);
                answered.push(address);
            }
        }
        Some((SlotMap::merge(&views)?, answered))
    }
}

/// Steps 2 and 3's check: does `conn` send every run of slots to the master `map` names? Runs
/// whose master did not answer the cluster's question (`answered`) are not checked; no answer
/// counts against the connection only where `changed(first slot, master id)`.
async fn routes_to_masters(
    conn: &Conn,
    map: &SlotMap,
    answered: &[(String, u16)],
    timeout: Duration,
    failing: &(dyn Fn(u16) -> bool + Sync),
    changed: &(dyn Fn(u16, &str) -> bool + Sync),
) -> bool {
    let mut checks = JoinSet::new();
    let runs = map
        .runs()
        .into_iter()
        .filter(|(_, _, master)| answered.contains(&(master.host.clone(), master.port)));
    for (first, last, master) in runs.take(MAX_RUNS_CHECKED) {
        let mut conn = conn.clone();
        let id = master.id.clone();
        let patience = if (first..=last).any(failing) {
            timeout / 4
        } else {
            timeout
        };
        let silence_is_wrong = changed(first, &id);
        checks.spawn(async move {
            let myid = conn.on_master(redis::cmd("CLUSTER").arg("MYID").clone(), first);
            match tokio::time::timeout(patience, myid).await {
                Ok(Ok(Value::BulkString(answer))) => answer == id.as_bytes(),
                Ok(Ok(Value::SimpleString(answer))) => answer == id,
                Ok(Ok(_)) => false,
                Ok(Err(_)) | Err(_) => !silence_is_wrong,
            }
        });
    }
    let mut right = true;
    while let Some(done) = checks.join_next().await {
        right &= done.unwrap_or(false);
    }
    right
}
