//! The node: what every API (HTTP, gRPC, Envoy's) answers through — the limiter, the metrics,
//! the reloader, the admin token, the state shared with other nodes, TLS and the edge's budgets —
//! and the one place a check is decided and counted ([`Node::decide`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use drl_core::limiter::LimiterError;
use drl_core::{Decision, Limiter, RuleLevel, Store};

use crate::limits::{EdgeLimits, Gate};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::tls::ServerTls;
use drl_redis::shared::Coordination;

/// A node: the limiter, the metrics, and what the APIs share around them (the reloader and the
/// admin token of the admin routes, the shared state of the Redis store, TLS, the edge's
/// budgets). Every API (HTTP, gRPC, Envoy) answers through one. Cheap to clone (reference
/// counts), as axum does per request.
#[derive(Debug)]
pub struct Node<S = drl_core::MemoryStore> {
    pub limiter: Limiter<S>,
    pub metrics: Arc<Metrics>,
    /// Set when the node was started from a config file, which can then be reloaded.
    pub reloader: Option<Arc<Reloader<S>>>,
    /// Set to enable the admin routes.
    pub admin_token: Option<AdminToken>,
    /// Set on the Redis store: bans, blocks and load factors shared with the other nodes.
    pub shared: Option<Arc<Coordination>>,
    /// Set to serve both APIs over TLS.
    pub tls: Option<Arc<ServerTls>>,
    /// Set to serve the admin listener (if any) over TLS of its own; else it uses `tls`.
    pub admin_tls: Option<Arc<ServerTls>>,
    /// The input limits and the in-flight and connection budgets of both APIs.
    pub gate: Arc<Gate>,
}

impl<S> Clone for Node<S> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            metrics: Arc::clone(&self.metrics),
            reloader: self.reloader.clone(),
            admin_token: self.admin_token.clone(),
            shared: self.shared.clone(),
            tls: self.tls.clone(),
            admin_tls: self.admin_tls.clone(),
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<S: Store> Node<S> {
    /// A node answering with `limiter`, counting into `metrics`; no reloader, no admin routes.
    pub fn new(limiter: Limiter<S>, metrics: Arc<Metrics>) -> Self {
        Self {
            limiter,
            metrics,
            reloader: None,
            admin_token: None,
            shared: None,
            tls: None,
            admin_tls: None,
            gate: Arc::default(),
        }
    }

    /// Enforces `limits` (both APIs of the node share its budgets).
    pub fn with_limits(mut self, limits: EdgeLimits) -> Self {
        self.gate = Arc::new(Gate::new(limits));
        self
    }

    /// Serves both APIs over TLS with `tls` (plaintext when `None`).
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves the admin listener over `tls` rather than the APIs' TLS (the same when `None`).
    pub fn with_admin_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.admin_tls = tls;
        self
    }

    /// Shares bans, blocks and load factors with the other nodes through `coordination`.
    pub fn with_shared(mut self, coordination: Option<Arc<Coordination>>) -> Self {
        self.shared = coordination;
        self
    }

    /// Writes a ban made by a check to the shared state, off the request's path.
    pub(crate) fn share_ban(&self, ban: &drl_core::abuse::Ban) {
        if let Some(shared) = &self.shared {
            let (shared, limiter, ban) = (Arc::clone(shared), self.limiter.clone(), ban.clone());
            tokio::spawn(async move {
                if let Err(e) = shared.publish_ban(&limiter, &ban).await {
                    tracing::warn!(
                        "ban of {:?} not shared with the other nodes: {e}",
                        ban.user_id
                    );
                }
            });
        }
    }

    /// Reloads through `reloader` (which should hold the same limiter and metrics).
    pub fn with_reloader(mut self, reloader: Arc<Reloader<S>>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// Enables the admin routes behind `token`.
    pub fn with_admin_token(mut self, token: Option<AdminToken>) -> Self {
        self.admin_token = token;
        self
    }

    /// One check through the limiter, counted in the metrics: what every API (HTTP, gRPC)
    /// calls to decide.
    pub async fn decide(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u32,
    ) -> Result<Decision, LimiterError> {
        let checked = self.check(user_id, endpoint, hits).await?;
        self.metrics
            .decision(checked.decision.allowed, checked.level, checked.took);
        Ok(checked.decision)
    }

    /// Counts what a check says beyond its decision: bans, blocks, shadow denials.
    pub(crate) fn count_abuse(&self, banned: bool, shadow_denied: bool, new_bans: usize) {
        if banned {
            self.metrics.blocked();
        }
        if shadow_denied {
            self.metrics.shadow_denied();
        }
        for _ in 0..new_bans {
            self.metrics.ban(false);
        }
    }

    /// The limiter's check with its rule level and duration, store failures counted, the
    /// decision not yet: for callers that decide what to record (a probe with `hits = 0`).
    pub async fn check(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u32,
    ) -> Result<TimedDecision, LimiterError> {
        let started = Instant::now();
        let checked = self
            .limiter
            .native_decision(user_id, endpoint, hits)
            .await
            .inspect_err(|e| {
                if matches!(e, LimiterError::Store(_)) {
                    self.metrics.store_error();
                }
            })?;
        self.count_abuse(
            checked.banned,
            checked.shadow_denied,
            usize::from(checked.new_ban.is_some()),
        );
        if let Some(ban) = &checked.new_ban {
            self.share_ban(ban);
        }
        Ok(TimedDecision {
            level: checked.level,
            decision: checked.decision,
            took: started.elapsed(),
        })
    }

    /// [`EdgeLimits::max_body_bytes`].
    pub(crate) fn max_body(&self) -> usize {
        self.gate.limits().max_body_bytes
    }

    /// The version of the config in force (1 when it cannot be reloaded).
    pub(crate) fn config_version(&self) -> u64 {
        self.reloader.as_ref().map_or(1, |r| r.version())
    }
}

/// A decision with the level of the rule that made it and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct TimedDecision {
    pub level: RuleLevel,
    pub decision: Decision,
    pub took: Duration,
}

impl<S: Store> From<Limiter<S>> for Node<S> {
    /// A node with fresh metrics, the config version at 1.
    fn from(limiter: Limiter<S>) -> Self {
        let metrics = Metrics::new();
        metrics.set_config_version(1);
        Self::new(limiter, Arc::new(metrics))
    }
}

/// The secret of the admin routes. Its `Debug` does not show it.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// Name of the environment variable `drl serve` reads the token from.
    pub const ENV: &str = "DRL_ADMIN_TOKEN";

    /// A token; `None` for an empty one (which would let an empty `Bearer` through).
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self(token.as_bytes().into()))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(&self.0, presented)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Compares two byte strings in time that depends only on the longer one's length, not on
/// their contents: every byte is visited and differences are folded together, no early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    // Folding the length difference in makes unequal lengths unequal without returning early.
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    // Keep the optimiser from turning the fold back into a short-circuiting comparison.
    std::hint::black_box(diff) == 0
}
