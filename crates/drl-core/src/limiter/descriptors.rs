//! The descriptor check (Envoy's API): a request's descriptors through the domain's rule tree,
//! all or nothing, one decision per descriptor.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::abuse::Ban;
use crate::decision::Decision;
use crate::error::CheckError;
use crate::key::{ENDPOINT_KEY, MAX_ID_LEN, NATIVE_DOMAIN, USER_KEY, validate_id};
use crate::policy::Policy;
use crate::rules::{Action, Entry, RequestLimits, Rules, Target};
use crate::store::{Store, StoreRequest};

use super::{Limiter, LimiterError, chosen, fixed_answer};

impl<S: Store> Limiter<S> {
    /// Checks an Envoy-style request: the descriptors of `domain`, all or nothing (if any
    /// enforced limit of any descriptor denies, no descriptor is counted). Descriptors matching
    /// no rule, `unlimited` ones and ones whose rule another matched rule `replaces` are not
    /// limited; shadow-mode descriptors are counted when the rest is admitted but never deny.
    ///
    /// In the native domain, `endpoint` entries are normalised as the rules say
    /// ([`Rules::endpoint_normalization`]), as in the native API.
    pub async fn check_descriptors(
        &self,
        domain: &str,
        descriptors: &[Descriptor<'_>],
    ) -> Result<RequestDecision, LimiterError> {
        // One rule set for the whole request: the one that normalises it also decides it.
        let rules_epoch = self.inner.store.rules_epoch();
        let rules = self.inner.rules.load_full();
        let normalization = *rules.endpoint_normalization();
        if domain != NATIVE_DOMAIN || normalization.is_off() {
            return self
                .decide_descriptors(rules, rules_epoch, domain, descriptors)
                .await;
        }
        let values: Vec<Vec<Cow<'_, str>>> = descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| match e.key {
                        ENDPOINT_KEY => normalization.apply(e.value),
                        _ => Cow::Borrowed(e.value),
                    })
                    .collect()
            })
            .collect();
        let entries: Vec<Vec<Entry<'_>>> = descriptors
            .iter()
            .zip(&values)
            .map(|(d, values)| {
                d.entries
                    .iter()
                    .zip(values)
                    .map(|(e, value)| Entry { key: e.key, value })
                    .collect()
            })
            .collect();
        let normalized: Vec<Descriptor<'_>> = descriptors
            .iter()
            .zip(&entries)
            .map(|(d, entries)| Descriptor {
                entries,
                hits: d.hits,
                limit: d.limit.clone(),
            })
            .collect();
        self.decide_descriptors(rules, rules_epoch, domain, &normalized)
            .await
    }

    /// [`Limiter::check_descriptors`] once the descriptors are normalised.
    async fn decide_descriptors(
        &self,
        rules: Arc<Rules>,
        rules_epoch: u64,
        domain: &str,
        descriptors: &[Descriptor<'_>],
    ) -> Result<RequestDecision, LimiterError> {
        validate_descriptors(descriptors)?;
        if domain == NATIVE_DOMAIN {
            // The native API's identifier rules hold for its domain whichever API is used.
            for d in descriptors {
                for e in d.entries {
                    if e.key == USER_KEY || e.key == ENDPOINT_KEY {
                        validate_id(
                            if e.key == USER_KEY {
                                "user_id"
                            } else {
                                "endpoint"
                            },
                            e.value,
                        )?;
                    }
                }
            }
        }
        let Some(rule_domain) = rules.domain(domain) else {
            return Err(CheckError::UnknownDomain {
                domain: domain.to_owned(),
            }
            .into());
        };
        // Native-domain requests share the native API's counters.
        let counter_domain: &str = if domain == NATIVE_DOMAIN {
            &self.inner.domain
        } else {
            domain
        };
        // Limits brought by the request, when the domain takes them (none: nothing allocated).
        let overrides: Vec<Option<Target>> = match rule_domain.request_limits() {
            RequestLimits::Allowed if descriptors.iter().any(|d| d.limit.is_some()) => descriptors
                .iter()
                .map(|d| {
                    d.limit
                        .clone()
                        .map(|policy| Target::overriding(domain, d.entries, policy))
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut targets: Vec<Option<&Target>> = descriptors
            .iter()
            .enumerate()
            .map(|(i, d)| match overrides.get(i) {
                Some(Some(o)) => Some(o),
                _ => rule_domain.find(d.entries),
            })
            .collect();
        let now = self.inner.clock.now_ns();
        if let Some(outcome) = self.blocked(&rules, descriptors, &targets, now) {
            return Ok(outcome);
        }
        let replaced: Vec<&str> = targets
            .iter()
            .flatten()
            .flat_map(|t| t.replaces())
            .collect();
        if !replaced.is_empty() {
            for target in &mut targets {
                if target.is_some_and(|t| t.name().is_some_and(|n| replaced.contains(&n))) {
                    *target = None;
                }
            }
        }
        // The counter values of every limited descriptor in one vector; `at[i]` is descriptor
        // i's part of it.
        let mut values: Vec<&str> =
            Vec::with_capacity(descriptors.iter().map(|d| d.entries.len()).sum());
        let mut at = Vec::with_capacity(descriptors.len());
        for (d, t) in descriptors.iter().zip(&targets) {
            let start = values.len();
            if let Some(t) = t {
                values.extend(
                    d.entries
                        .iter()
                        .enumerate()
                        .map(|(level, e)| t.counter_value(level, e.value)),
                );
            }
            at.push(start..values.len());
        }
        let values = values.as_slice();

        // Enforced limits of every descriptor go to the store as one all-or-nothing check.
        let mut enforced = Vec::new();
        let mut spans = vec![0..0; descriptors.len()];
        let mut denied_outright = false;
        for (i, (d, target)) in descriptors.iter().zip(&targets).enumerate() {
            let Some(target) = target else { continue };
            match target.action() {
                Action::Limit(limits) if !target.shadow_mode() => {
                    let start = enforced.len();
                    let requests = self.requests_in(
                        counter_domain,
                        target,
                        limits,
                        &values[at[i].clone()],
                        d.hits,
                        now,
                        rules_epoch,
                    );
                    if enforced.is_empty() {
                        enforced = requests;
                    } else {
                        enforced.extend(requests);
                    }
                    spans[i] = start..enforced.len();
                }
                Action::Deny { .. } if !target.shadow_mode() => denied_outright = true,
                _ => {}
            }
        }
        let decided = if enforced.is_empty() || denied_outright {
            // Nothing is counted when a deny-all rule matched: read instead.
            let reads: Vec<StoreRequest<'_>> = enforced
                .iter()
                .map(|r| StoreRequest { hits: 0, ..*r })
                .collect();
            self.inner.store.check_all(&reads).await?
        } else {
            self.inner.store.check_all(&enforced).await?
        };
        let admitted = !denied_outright && decided.iter().all(|d| d.allowed);

        let mut statuses = Vec::with_capacity(descriptors.len());
        for (i, (d, target)) in descriptors.iter().zip(&targets).enumerate() {
            let Some(target) = target else {
                statuses.push(DescriptorDecision::no_limit());
                continue;
            };
            let label = Some(Arc::clone(target.label()));
            let status = match target.action() {
                Action::Unlimited => DescriptorDecision {
                    label,
                    decided_by: DecidedBy::Unlimited,
                },
                Action::Deny { window } => DescriptorDecision {
                    label,
                    decided_by: DecidedBy::Limited {
                        decision: fixed_answer(target.action()),
                        window: *window,
                        shadow: target.shadow_mode(),
                    },
                },
                Action::Limit(limits) if target.shadow_mode() => {
                    // Counted only if the enforced part was admitted; otherwise only read.
                    let hits = if admitted { d.hits } else { 0 };
                    let requests = self.requests_in(
                        counter_domain,
                        target,
                        limits,
                        &values[at[i].clone()],
                        hits,
                        now,
                        rules_epoch,
                    );
                    let decided = self.inner.store.check_all(&requests).await?;
                    let at = chosen(&decided);
                    DescriptorDecision {
                        label,
                        decided_by: DecidedBy::Limited {
                            decision: decided[at],
                            window: limits[at].limit().window(),
                            shadow: true,
                        },
                    }
                }
                Action::Limit(limits) => {
                    let span = spans[i].clone();
                    let at = chosen(&decided[span.clone()]);
                    let mut decision = decided[span.start + at];
                    if !admitted && !denied_outright && decision.allowed {
                        // The store answered what this counter would have left had the whole
                        // been admitted; nothing was counted, so its true remainder is that
                        // plus the hits every request on the counter would have taken.
                        let key = enforced[span.start + at].key;
                        let hits = enforced
                            .iter()
                            .filter(|r| r.key == key)
                            .fold(0u32, |sum, r| sum.saturating_add(r.hits));
                        decision.remaining =
                            decision.remaining.saturating_add(hits).min(decision.limit);
                    }
                    DescriptorDecision {
                        label,
                        decided_by: DecidedBy::Limited {
                            decision,
                            window: limits[at].limit().window(),
                            shadow: false,
                        },
                    }
                }
            };
            statuses.push(status);
        }
        let mut outcome = RequestDecision {
            allowed: admitted,
            statuses,
            shadow_denied: false,
            new_bans: Vec::new(),
        };
        if !admitted {
            if let Some(policy) = rules.abuse() {
                for ((d, target), status) in descriptors.iter().zip(&targets).zip(&outcome.statuses)
                {
                    let exempt = target.is_none_or(|t| t.abuse_exempt());
                    if status.over_limit()
                        && !exempt
                        && let Some(user) = d.entries.iter().find(|e| e.key == policy.user_key)
                        && !outcome.new_bans.iter().any(|b| b.user_id == user.value)
                        && let Some(ban) = self.offense(&rules, user.value, now)
                    {
                        outcome.new_bans.push(ban);
                    }
                }
            }
            if rules.shadow_mode() {
                outcome.allowed = true;
                outcome.shadow_denied = true;
            }
        }
        Ok(outcome)
    }

    /// The answer when a descriptor names a banned user: denied, nothing counted.
    fn blocked(
        &self,
        rules: &Rules,
        descriptors: &[Descriptor<'_>],
        targets: &[Option<&Target>],
        now: u64,
    ) -> Option<RequestDecision> {
        if self.inner.bans.is_empty() && !rules.has_blocklist() {
            return None;
        }
        let user_key = rules.abuse().map_or(USER_KEY, |p| p.user_key.as_str());
        let statuses: Vec<DescriptorDecision> = descriptors
            .iter()
            .zip(targets)
            .map(|(d, target)| {
                let exempt = target.is_some_and(|t| t.abuse_exempt());
                let until = d
                    .entries
                    .iter()
                    .find(|e| e.key == user_key)
                    .and_then(|user| self.refused_until(rules, user.value, now, exempt));
                match until {
                    Some(until) => DescriptorDecision {
                        label: target.map(|t| Arc::clone(t.label())),
                        decided_by: DecidedBy::Blocked {
                            retry_after: Duration::from_nanos(until.saturating_sub(now)),
                        },
                    },
                    None => DescriptorDecision::no_limit(),
                }
            })
            .collect();
        if !statuses
            .iter()
            .any(|s| matches!(s.decided_by, DecidedBy::Blocked { .. }))
        {
            return None;
        }
        Some(RequestDecision {
            allowed: rules.shadow_mode(),
            statuses,
            shadow_denied: rules.shadow_mode(),
            new_bans: Vec::new(),
        })
    }
}

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 16;

/// One descriptor of an Envoy-style request.
#[derive(Debug, Clone)]
pub struct Descriptor<'a> {
    /// The entries, matched level by level against the domain's rules.
    pub entries: &'a [Entry<'a>],
    /// Hits to count (all or nothing; 0 reads).
    pub hits: u32,
    /// A limit brought by the request, used instead of the configured rules.
    pub limit: Option<Policy>,
}

/// What one descriptor was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorDecision {
    /// The matched rule's metric label (bounded; never a request value). `None` when no rule
    /// matched.
    pub label: Option<Arc<str>>,
    pub decided_by: DecidedBy,
}

impl DescriptorDecision {
    fn no_limit() -> Self {
        Self {
            label: None,
            decided_by: DecidedBy::NoLimit,
        }
    }

    /// This descriptor denies the request (shadow-mode descriptors never do).
    pub fn over_limit(&self) -> bool {
        matches!(
            self.decided_by,
            DecidedBy::Blocked { .. }
                | DecidedBy::Limited {
                    decision: Decision { allowed: false, .. },
                    shadow: false,
                    ..
                }
        )
    }
}

/// How a descriptor was limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// No rule matched, or another matched rule replaces this one.
    NoLimit,
    /// The rule says `unlimited`.
    Unlimited,
    /// The user the descriptor names is banned or blocked for `retry_after` more (`u64::MAX`
    /// ns for a permanent block): denied without touching any counter.
    Blocked { retry_after: Duration },
    /// The rule's limits decided; a shadow-mode rule's denial does not deny the request.
    /// `window` is the window of the limit the decision reports.
    Limited {
        decision: Decision,
        window: Duration,
        shadow: bool,
    },
}

/// The answer to an Envoy-style request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDecision {
    /// Every enforced limit admitted the request, and it was counted.
    pub allowed: bool,
    /// One per descriptor, in request order.
    pub statuses: Vec<DescriptorDecision>,
    /// Global shadow mode answered allowed where a limit or ban denied.
    pub shadow_denied: bool,
    /// Users this request's denial banned.
    pub new_bans: Vec<Ban>,
}

fn validate_descriptors(descriptors: &[Descriptor<'_>]) -> Result<(), CheckError> {
    if descriptors.is_empty() {
        return Err(CheckError::NoDescriptors);
    }
    if descriptors.len() > MAX_DESCRIPTORS {
        return Err(CheckError::TooMany {
            what: "descriptors",
            count: descriptors.len(),
            max: MAX_DESCRIPTORS,
        });
    }
    for (index, d) in descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(CheckError::EmptyDescriptor { index });
        }
        if d.entries.len() > MAX_ENTRIES {
            return Err(CheckError::TooMany {
                what: "entries in a descriptor",
                count: d.entries.len(),
                max: MAX_ENTRIES,
            });
        }
        for e in d.entries {
            validate_id("descriptor entry key", e.key)?;
            if e.value.len() > MAX_ID_LEN {
                return Err(CheckError::TooLong {
                    field: "descriptor entry value",
                    len: e.value.len(),
                    max: MAX_ID_LEN,
                });
            }
        }
    }
    Ok(())
}
