//! Rule files in the envoyproxy/ratelimit format, used by the Envoy API (docs/configuration.md):
//!
//! ```yaml
//! domain: web
//! descriptors:
//!   - key: user_id                      # any user: one counter per value
//!     rate_limit: {unit: minute, requests_per_unit: 100}
//!   - key: user_id
//!     value: alice                      # a more specific rule for one value
//!     rate_limit: {unit: hour, requests_per_unit: 1000, name: alice, replaces: [{name: other}]}
//!   - key: path
//!     value: "/api/*"                   # wildcard: `*` anywhere
//!     share_threshold: true             # every matching path shares one counter
//!     rate_limit: {window: 10s, requests_per_unit: 50, algorithm: sliding_log}
//!   - key: remote_address
//!     rate_limits:                      # several limits, all or nothing
//!       - {unit: second, requests_per_unit: 10}
//!       - {unit: day, requests_per_unit: 10000}
//!     descriptors:                      # nested: matches two-entry descriptors
//!       - key: path
//!         rate_limit: {unlimited: true}
//! ```
//!
//! Accepted as in envoyproxy/ratelimit: `unit` (second, minute, hour, day, week, month = 30 days,
//! year = 365 days), `requests_per_unit` (0 denies everything), `unlimited`, `name`, `replaces`,
//! `shadow_mode`, `share_threshold`, and `detailed_metric` / `value_to_metric`, which only shape
//! statistics there and change nothing here: drl's metrics are labelled by configured rule, never
//! by a request's value. Extensions: `window:` (any duration, instead of `unit`), `algorithm:`,
//! `precision:`, `burst:`, `rate_limits:` for several limits on one descriptor, and `abuse:
//! false` to opt a rule out of abuse protection, and a top-level `allow_request_limits: false`
//! that ignores the `limit` a request sets on a descriptor (the configured rules decide). Not
//! supported, and refused with an error rather than silently ignored: `quota_mode`, `metadata`.
//! Two rules with the same key and value at one level are an error (as there).

use std::collections::HashMap;
use std::time::Duration;

use drl_core::rules::MAX_LIMITS_PER_RULE;
use drl_core::{Action, DescriptorRule, DomainRules, Limit, Policy};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::raw::Text;
use super::validate::{Validator, request_limits};

/// A whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDomain {
    domain: Text,
    descriptors: Option<Vec<Spanned<RawDescriptor>>>,
    /// `false`: a descriptor's `limit` sent by the caller is ignored (the rules decide).
    allow_request_limits: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: Text,
    value: Option<Text>,
    rate_limit: Option<Spanned<RawRateLimit>>,
    rate_limits: Option<Vec<Spanned<RawRateLimit>>>,
    shadow_mode: Option<bool>,
    /// drl: `false` opts the rule out of abuse protection.
    abuse: Option<bool>,
    /// drl: backends whose load scales this rule's limits.
    backends: Option<Vec<Text>>,
    share_threshold: Option<bool>,
    detailed_metric: Option<bool>,
    value_to_metric: Option<bool>,
    quota_mode: Option<Spanned<bool>>,
    metadata: Option<Spanned<serde::de::IgnoredAny>>,
    descriptors: Option<Vec<Spanned<RawDescriptor>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<Text>,
    window: Option<Text>,
    requests_per_unit: Option<Text>,
    unlimited: Option<bool>,
    name: Option<Text>,
    replaces: Option<Vec<RawReplace>>,
    algorithm: Option<Text>,
    precision: Option<Text>,
    burst: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: Text,
}

/// Envoy's units, as written in its files (any case).
fn unit_window(unit: &str) -> Option<Duration> {
    let secs = match unit.to_ascii_lowercase().as_str() {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        "month" => 30 * 86_400,
        "year" => 365 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

impl Validator<'_> {
    /// A domain file's rules; `None` when something is wrong (diagnostics recorded).
    pub(crate) fn domain(&mut self, raw: &RawDomain) -> Option<DomainRules> {
        if raw.domain.value.is_empty() {
            self.error(raw.domain.referenced, "domain must not be empty");
            return None;
        }
        // A longer domain could never be asked for: requests are limited to this length.
        if let Err(e) = drl_core::key::validate_id("domain", &raw.domain.value) {
            self.error(raw.domain.referenced, e);
            return None;
        }
        let descriptors = self.descriptors(raw.descriptors.as_deref().unwrap_or_default())?;
        Some(DomainRules {
            domain: raw.domain.value.clone(),
            descriptors,
            request_limits: request_limits(raw.allow_request_limits),
        })
    }

    fn descriptors(&mut self, raw: &[Spanned<RawDescriptor>]) -> Option<Vec<DescriptorRule>> {
        let mut seen: HashMap<(&str, Option<&str>), u64> = HashMap::new();
        let mut ok = true;
        let mut out = Vec::with_capacity(raw.len());
        for d in raw {
            let key = (
                d.value.key.value.as_str(),
                d.value.value.as_ref().map(|v| v.value.as_str()),
            );
            if let Some(first) = seen.insert(key, d.referenced.line()) {
                self.error(
                    d.referenced,
                    format_args!(
                        "duplicate descriptor {}: the descriptor at line {first} has the same key and value",
                        describe(key)
                    ),
                );
                ok = false;
                continue;
            }
            match self.descriptor(d) {
                Some(rule) => out.push(rule),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn descriptor(&mut self, raw: &Spanned<RawDescriptor>) -> Option<DescriptorRule> {
        let d = &raw.value;
        let mut ok = true;
        if d.key.value.is_empty() {
            self.error(d.key.referenced, "key must not be empty");
            ok = false;
        }
        if let Some(q) = d.quota_mode.as_ref().filter(|q| q.value) {
            self.error(q.referenced, "quota_mode is not supported");
            ok = false;
        }
        if let Some(m) = &d.metadata {
            self.error(m.referenced, "metadata is not supported");
            ok = false;
        }
        let wildcard = d.value.as_ref().is_some_and(|v| v.value.contains('*'));
        let share_threshold = d.share_threshold.unwrap_or(false);
        if share_threshold && !wildcard {
            self.error(
                raw.referenced,
                "share_threshold applies only to a value with a `*` wildcard",
            );
            ok = false;
        }
        let (action, name, replaces) = match self.action(raw) {
            Some(parts) => parts,
            None => {
                ok = false;
                (None, None, Vec::new())
            }
        };
        let deeper = self.descriptors(d.descriptors.as_deref().unwrap_or_default());
        let _ = (d.detailed_metric, d.value_to_metric);
        Some(DescriptorRule {
            key: d.key.value.clone(),
            value: d.value.as_ref().map(|v| v.value.clone()),
            action,
            name,
            replaces,
            shadow_mode: d.shadow_mode.unwrap_or(false),
            abuse_exempt: !d.abuse.unwrap_or(true),
            backends: self.backend_refs(d.backends.as_deref()),
            share_threshold,
            descriptors: deeper?,
        })
        .filter(|_| ok)
    }

    /// What the descriptor does: from `rate_limit` (with its name and replaces) and
    /// `rate_limits`; `Some((None, ..))` for a level with only deeper rules.
    #[allow(clippy::type_complexity)]
    fn action(
        &mut self,
        raw: &Spanned<RawDescriptor>,
    ) -> Option<(Option<Action>, Option<String>, Vec<String>)> {
        let d = &raw.value;
        let mut limits = Vec::new();
        let mut deny: Option<Duration> = None;
        let mut ok = true;
        let (mut name, mut replaces, mut unlimited) = (None, Vec::new(), false);
        if let Some(rl) = &d.rate_limit {
            name = rl.value.name.as_ref().map(|n| n.value.clone());
            replaces = rl
                .value
                .replaces
                .iter()
                .flatten()
                .map(|r| r.name.value.clone())
                .collect();
            unlimited = rl.value.unlimited.unwrap_or(false);
            let has_limit = rl.value.requests_per_unit.is_some()
                || rl.value.unit.is_some()
                || rl.value.window.is_some();
            if unlimited && has_limit {
                self.error(
                    rl.referenced,
                    "an unlimited rate_limit takes no unit, window or requests_per_unit",
                );
                ok = false;
            } else if !unlimited {
                match self.rate_limit(rl) {
                    Some(Ok(policy)) => limits.push(policy),
                    Some(Err(window)) => deny = Some(window),
                    None => ok = false,
                }
            }
        }
        for rl in d.rate_limits.iter().flatten() {
            if rl.value.name.is_some()
                || rl.value.replaces.is_some()
                || rl.value.unlimited.is_some()
            {
                self.error(
                    rl.referenced,
                    "name, replaces and unlimited belong in `rate_limit`, not in `rate_limits`",
                );
                ok = false;
                continue;
            }
            match self.rate_limit(rl) {
                Some(Ok(policy)) => limits.push(policy),
                Some(Err(window)) => deny = Some(window),
                None => ok = false,
            }
        }
        if unlimited && d.rate_limits.is_some() {
            self.error(
                raw.referenced,
                "an unlimited descriptor takes no `rate_limits`",
            );
            ok = false;
        }
        if limits.len() > MAX_LIMITS_PER_RULE {
            self.error(
                raw.referenced,
                format_args!(
                    "{} limits: a descriptor has at most {MAX_LIMITS_PER_RULE}",
                    limits.len()
                ),
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        let action = if unlimited {
            Some(Action::Unlimited)
        } else if let Some(window) = deny {
            Some(Action::Deny { window })
        } else if limits.is_empty() {
            None
        } else {
            Some(Action::Limit(limits))
        };
        Some((action, name, replaces))
    }

    /// One limit: `Ok(policy)`, or `Err(window)` for `requests_per_unit: 0` (deny everything).
    fn rate_limit(&mut self, raw: &Spanned<RawRateLimit>) -> Option<Result<Policy, Duration>> {
        let rl = &raw.value;
        let window = match (&rl.unit, &rl.window) {
            (Some(_), Some(w)) => {
                self.error(w.referenced, "give either unit or window, not both");
                None
            }
            (Some(unit), None) => match unit_window(&unit.value) {
                Some(w) => Some(w),
                None => {
                    self.error(
                        unit.referenced,
                        format_args!(
                            "unknown unit {:?}: expected second, minute, hour, day, week, month or year",
                            unit.value
                        ),
                    );
                    None
                }
            },
            (None, Some(window)) => self.window(window),
            (None, None) => {
                self.error(raw.referenced, "the rate limit needs a unit (or a window)");
                None
            }
        };
        let requests = match &rl.requests_per_unit {
            Some(n) => self.whole_number(n, "requests_per_unit").and_then(|v| {
                if v == 0 {
                    return Some(0);
                }
                match Limit::check_requests(v) {
                    Ok(_) => Some(v),
                    Err(e) => {
                        self.error(n.referenced, e);
                        None
                    }
                }
            }),
            None => {
                self.error(raw.referenced, "the rate limit needs requests_per_unit");
                None
            }
        };
        let algorithm = self.algorithm_of(
            rl.algorithm.as_ref(),
            rl.precision.as_ref(),
            rl.burst.as_ref(),
        );
        let (window, requests, algorithm) = (window?, requests?, algorithm?);
        if requests == 0 {
            return Some(Err(window));
        }
        let at = rl
            .requests_per_unit
            .as_ref()
            .map_or(raw.referenced, |n| n.referenced);
        match Limit::new(requests, window).and_then(|limit| Policy::new(limit, algorithm)) {
            Ok(policy) => Some(Ok(policy)),
            Err(e) => {
                self.error(at, e);
                None
            }
        }
    }
}

fn describe((key, value): (&str, Option<&str>)) -> String {
    match value {
        Some(v) => format!("key={key:?} value={v:?}"),
        None => format!("key={key:?}"),
    }
}
