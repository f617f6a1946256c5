//! The native check: a (user_id, endpoint) pair through the native rules, one decision.

use std::time::Duration;

use crate::abuse::Ban;
use crate::decision::Decision;
use crate::error::CheckError;
use crate::key::validate_id;
use crate::policy::Policy;
use crate::rules::{Action, RuleLevel, Rules, Target};
use crate::store::{Prefetch, Store, StoreRequest};

use super::{Limiter, LimiterError, combine, fixed_answer};

impl<S: Store> Limiter<S> {
    /// The check on any store, networked ones included.
    pub async fn check_async(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u32,
    ) -> Result<Decision, LimiterError> {
        Ok(self
            .native_decision(user_id, endpoint, hits)
            .await?
            .decision)
    }

    /// [`Limiter::check_async`] with what a caller may report about it: the level of the rule
    /// that decided it (what a metric can label a decision with, from the same rule lookup),
    /// and whether a ban or shadow mode answered.
    pub async fn native_decision(
        &self,
        user_id: &str,
        endpoint: &str,
        hits: u32,
    ) -> Result<NativeDecision, LimiterError> {
        let rules_epoch = self.inner.store.rules_epoch();
        let rules = self.inner.rules.load_full();
        let endpoint = rules.endpoint_normalization().apply(endpoint);
        let (target, values) = native_target(&rules, user_id, &endpoint)?;
        let now = self.inner.clock.now_ns();
        let decision = match self.plan(&rules, target, &values, hits, now, rules_epoch) {
            Plan::Answered(checked) => return Ok(checked),
            Plan::Fixed(decision) => decision,
            Plan::One(request) => self.inner.store.check(request).await?,
            Plan::All(requests) => combine(&self.inner.store.check_all(&requests).await?),
        };
        Ok(self.after(&rules, target, user_id, now, decision))
    }

    /// Asks for the memory the checks of these pairs will read, all at once, and returns
    /// without waiting for it: call it with a batch's pairs, then check them, and the batch
    /// waits for its keys' memory once rather than once per key ([`Prefetch`]; with the
    /// memory store and millions of keys, a quarter more decisions per second). Decides and
    /// counts nothing; a pair that is invalid, or whose rule has no single enforced limit, is
    /// skipped.
    pub fn prefetch<'p>(&self, pairs: impl IntoIterator<Item = (&'p str, &'p str)>) {
        let rules = self.inner.rules.load();
        let mut lines = Prefetch::new();
        for (user_id, endpoint) in pairs {
            let endpoint = rules.endpoint_normalization().apply(endpoint);
            let Ok((target, values)) = native_target(&rules, user_id, &endpoint) else {
                continue;
            };
            if let Some(request) = self.single(target, &values, 1, 0, 0) {
                self.inner.store.prefetch(&request, &mut lines);
            }
        }
        lines.load();
    }

    /// What a native check asks of the store, decided before touching it: the one step the
    /// synchronous (memory store) and the async path share before each calls its store.
    pub(super) fn plan<'a>(
        &'a self,
        rules: &Rules,
        target: &'a Target,
        values: &'a [&'a str; 2],
        hits: u32,
        now: u64,
        rules_epoch: u64,
    ) -> Plan<'a> {
        if let Some(checked) = self.banned(rules, target, values[0], now) {
            return Plan::Answered(checked);
        }
        if let Some(request) = self.single(target, values, hits, now, rules_epoch) {
            return Plan::One(request);
        }
        match target.action() {
            Action::Limit(limits) => Plan::All(self.requests_in(
                &self.inner.domain,
                target,
                limits,
                values,
                hits,
                now,
                rules_epoch,
            )),
            other => Plan::Fixed(fixed_answer(other)),
        }
    }

    /// The answer for a banned user (no counter touched), or `None`.
    #[inline]
    pub(super) fn banned(
        &self,
        rules: &Rules,
        target: &Target,
        user: &str,
        now: u64,
    ) -> Option<NativeDecision> {
        let until = self.refused_until(rules, user, now, target.abuse_exempt())?;
        let limit = match target.action() {
            Action::Limit(limits) => limits.first().map_or(0, Policy::requests),
            _ => 0,
        };
        let left = until.saturating_sub(now);
        let decision = Decision::new(false, limit, 0, left, left);
        let mut checked = NativeDecision {
            level: target.level().unwrap_or(RuleLevel::Default),
            decision,
            banned: true,
            shadow_denied: false,
            new_ban: None,
        };
        if rules.shadow_mode() || target.shadow_mode() {
            checked.shadow();
        }
        Some(checked)
    }

    /// After a decision: a denial counts as an offense (and may ban), and shadow mode turns it
    /// into an admission.
    #[inline]
    pub(super) fn after(
        &self,
        rules: &Rules,
        target: &Target,
        user: &str,
        now: u64,
        decision: Decision,
    ) -> NativeDecision {
        let mut checked = NativeDecision {
            level: target.level().unwrap_or(RuleLevel::Default),
            decision,
            banned: false,
            shadow_denied: false,
            new_ban: None,
        };
        if !decision.allowed {
            if !target.abuse_exempt() {
                checked.new_ban = self.offense(rules, user, now);
            }
            if rules.shadow_mode() || target.shadow_mode() {
                checked.shadow();
            }
        }
        checked
    }

    /// The common case as one store request: a single enforced limit.
    #[inline]
    pub(super) fn single<'a>(
        &'a self,
        target: &'a Target,
        values: &'a [&'a str],
        hits: u32,
        now_ns: u64,
        rules_epoch: u64,
    ) -> Option<StoreRequest<'a>> {
        match target.action() {
            Action::Limit(limits) if limits.len() == 1 && !target.shadow_mode() => {
                Some(StoreRequest {
                    key: target.counter_key(&self.inner.domain, 0, values),
                    policy: &limits[0],
                    hits,
                    now_ns,
                    rules_epoch,
                })
            }
            _ => None,
        }
    }

    /// One store request per limit of `target`, in `domain`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn requests_in<'a>(
        &'a self,
        domain: &'a str,
        target: &'a Target,
        limits: &'a [Policy],
        values: &'a [&'a str],
        hits: u32,
        now_ns: u64,
        rules_epoch: u64,
    ) -> Vec<StoreRequest<'a>> {
        (0..limits.len())
            .map(|i| StoreRequest {
                key: target.counter_key(domain, i as u16, values),
                policy: &limits[i],
                hits,
                now_ns,
                rules_epoch,
            })
            .collect()
    }

    /// `check_and_increment` on any store: `true` only if admitted; errors answer `false`.
    pub async fn check_and_increment_async(&self, user_id: &str, endpoint: &str) -> bool {
        self.check_async(user_id, endpoint, 1)
            .await
            .is_ok_and(|d| d.allowed)
    }
}

/// A native decision with what a caller may report about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeDecision {
    /// The level of the rule that decided.
    pub level: RuleLevel,
    /// The answer to give (in shadow mode, an admission even when a limit or ban denied).
    pub decision: Decision,
    /// The user is banned or blocked: answered without touching any counter.
    pub banned: bool,
    /// A limit or ban denied, and shadow mode answered allowed instead.
    pub shadow_denied: bool,
    /// This denial banned the user.
    pub new_ban: Option<Ban>,
}

impl NativeDecision {
    /// Answers allowed, remembering that it would have been denied.
    fn shadow(&mut self) {
        self.shadow_denied = true;
        self.decision.allowed = true;
        self.decision.retry_after = Duration::ZERO;
    }
}

/// Validates the native pair and finds its rule.
#[inline]
pub(super) fn native_target<'a>(
    rules: &'a Rules,
    user_id: &'a str,
    endpoint: &'a str,
) -> Result<(&'a Target, [&'a str; 2]), CheckError> {
    validate_id("user_id", user_id)?;
    validate_id("endpoint", endpoint)?;
    Ok((rules.lookup(user_id, endpoint), [user_id, endpoint]))
}

/// A native check's plan ([`Limiter::plan`]).
pub(super) enum Plan<'a> {
    /// Answered without any counter: a ban, a block or the blocklist.
    Answered(NativeDecision),
    /// The rule's fixed answer (`deny` or `unlimited`), no counter touched.
    Fixed(Decision),
    /// One counter: the common case of one plain limit.
    One(StoreRequest<'a>),
    /// The rule's limits, all or nothing.
    All(Vec<StoreRequest<'a>>),
}
