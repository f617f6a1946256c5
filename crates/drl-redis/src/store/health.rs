//! The store's health in the background: the prober that retries failing slots, the follower
//! that keeps the cluster's slot map current, and how a master's `ROLE` reply counts replicas.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use redis::Value;

use super::{Inner, PROBE_EVERY, PROBES_PER_ROUND, lock};
use crate::follow::{FOLLOW_EVERY, REFRESH_EVERY};

/// The number of replicas a master's `ROLE` reply lists (`None` for a reply that is not a
/// master's, e.g. a replica answering during a failover: not a reason to call the node unready).
pub(super) fn replicas_attached(role: &Value) -> Option<usize> {
    let Value::Array(parts) = role else {
        return None;
    };
    let is_master = match parts.first() {
        Some(Value::BulkString(name)) => name.as_slice() == b"master",
        Some(Value::SimpleString(name)) => name == "master",
        _ => false,
    };
    match parts.get(2) {
        Some(Value::Array(replicas)) if is_master => Some(replicas.len()),
        _ => None,
    }
}

/// Retries failing slots in the background: PINGs each one's master (the one instance, in
/// single mode) every [`PROBE_EVERY`], bounded by the timeout, and clears the slots that answer.
/// Stops when no slot is failing, or when the store is dropped.
pub(super) async fn prober(store: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(inner) = store.upgrade() else { return };
        let slots: Vec<u16> = lock(&inner.down)
            .iter()
            .copied()
            .take(PROBES_PER_ROUND)
            .collect();
        if slots.is_empty() {
            inner.probing.store(false, Ordering::SeqCst);
            // A slot marked in between found `probing` still set; take the job back.
            if lock(&inner.down).is_empty() || inner.probing.swap(true, Ordering::SeqCst) {
                return;
            }
            continue;
        }
        for slot in slots {
            let ping = async {
                let mut conn = inner.connector.get().await?;
                conn.ping(slot).await
            };
            if let Ok(Ok(())) = tokio::time::timeout(inner.timeout, ping).await {
                inner.failing[usize::from(slot)].store(0, Ordering::Relaxed);
                lock(&inner.down).remove(&slot);
            } else {
                follow_soon(&inner);
            }
        }
    }
}

/// Asks the cluster for its map soon, in the background (cluster only; at most every
/// [`crate::follow::REFRESH_EVERY`]): an error or a timeout may mean that the connection sends a
/// slot to a hung master the cluster has replaced.
pub(super) fn follow_soon(inner: &Arc<Inner>) {
    if inner.cluster && inner.follower.claim() {
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            inner.follow_now().await;
        });
    }
}

/// Refreshes the cluster's map every [`FOLLOW_EVERY`] until the store is dropped, so the node
/// follows a failover even when no check fails; every [`REFRESH_EVERY`] while slots are failing
/// (their checks are answered by `on_error` without trying Redis, so they ask for nothing).
pub(super) async fn follower(store: Weak<Inner>) {
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(inner) = store.upgrade() else { return };
        let due = last.elapsed() >= FOLLOW_EVERY || !lock(&inner.down).is_empty();
        if due && inner.follower.claim() {
            last = Instant::now();
            inner.follow_now().await;
        }
    }
}
