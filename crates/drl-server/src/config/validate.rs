//! The validator: turns the raw file into a [`Config`], collecting every problem as a
//! [`Diagnostic`] at its line and column instead of stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drl_core::abuse::AbusePolicy;
use drl_core::adaptive::BackendSettings;
use drl_core::endpoint::EndpointNormalization;
use drl_core::rules::MAX_LIMITS_PER_RULE;
use drl_core::{
    Algorithm, Limit, Policy, PolicyError, RequestLimits, Rule, Rules, key::validate_id,
};
use serde_saphyr::{Location, Spanned};

use super::raw::{PolicyFields, RawAbuse, RawBackend, RawConfig, RawPolicy, RawRule, Text};
use super::{Config, Diagnostic, StoreConfig, diagnostic};

/// `allow_request_limits:` as the rules take it (absent: allowed, as in Envoy), in both formats.
pub(crate) fn request_limits(allow: Option<bool>) -> RequestLimits {
    match allow {
        Some(false) => RequestLimits::Ignored,
        Some(true) | None => RequestLimits::Allowed,
    }
}

/// Turns the raw file into a config, collecting every problem instead of stopping at the first.
pub(crate) struct Validator<'f> {
    pub(crate) file: &'f str,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Backends named by rules, with where.
    pub(crate) backend_refs: Vec<(Location, String)>,
}

impl Validator<'_> {
    pub(crate) fn error(&mut self, at: Location, message: impl fmt::Display) {
        let d = diagnostic(self.file, at, &message.to_string());
        self.diagnostics.push(d);
    }

    /// `None` when something is wrong (and then at least one diagnostic was recorded).
    pub(crate) fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let store = match &raw.store {
            Some(store) => self.store(store),
            None => Some(StoreConfig::Memory),
        };
        let default = match &raw.default {
            Some(default) => self.policy(&default.fields()),
            None => Some(Rules::builtin().default_policy().clone()),
        };
        let endpoints = raw
            .normalize_endpoints
            .as_ref()
            .map(|n| n.value.normalization())
            .unwrap_or_default();
        let rules = self.rules(raw.rules.as_deref().unwrap_or_default(), &endpoints);
        let abuse = match &raw.abuse {
            Some(abuse) => self.abuse(abuse).map(Some),
            None => Some(None),
        };
        let blocklist = self.blocklist(raw.blocklist.as_deref().unwrap_or_default());
        let backends = self.backends(raw.adaptive.as_ref());
        let tls = match raw.server.as_ref().and_then(|s| s.tls.as_ref()) {
            Some(tls) => self.server_tls(&tls.value).map(Some),
            None => Some(None),
        };
        let admin = match raw.server.as_ref().and_then(|s| s.admin.as_ref()) {
            Some(admin) => self.server_admin(&admin.value).map(Some),
            None => Some(None),
        };
        let (store, default, rules, abuse, blocklist, backends, tls, admin) = (
            store?, default?, rules?, abuse?, blocklist?, backends?, tls?, admin?,
        );
        match Rules::new(default, rules) {
            Ok(rules) => Some(Config {
                store,
                tls,
                admin,
                native_file: None,
                rules: rules
                    .with_backends(backends)
                    .with_abuse(abuse)
                    .with_shadow_mode(raw.shadow_mode.unwrap_or(false))
                    .with_endpoint_normalization(endpoints)
                    .with_native_request_limits(request_limits(raw.allow_request_limits))
                    .with_blocklist(blocklist),
            }),
            Err(e) => {
                // Unreachable in practice: `rules` already checked identifiers and duplicates.
                self.error(Location::UNKNOWN, e);
                None
            }
        }
    }

    pub(crate) fn abuse(&mut self, raw: &Spanned<RawAbuse>) -> Option<AbusePolicy> {
        let a = &raw.value;
        let threshold =
            self.whole_number(&a.threshold, "threshold").and_then(
                |n| match Limit::check_requests(n) {
                    Ok(_) => Some(n),
                    Err(_) => {
                        self.error(
                            a.threshold.referenced,
                            format_args!(
                                "threshold {n} is out of range: it must be from 1 to 1000000"
                            ),
                        );
                        None
                    }
                },
            );
        let interval = self.window(&a.interval);
        let mut duration = |v: &Text| match drl_core::parse_duration(&v.value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v.referenced, e);
                None
            }
        };
        let ban = duration(&a.ban);
        let max_ban = a.max_ban.as_ref().map(&mut duration);
        let forget_after = a.forget_after.as_ref().map(&mut duration);
        let escalation = match &a.escalation {
            Some(e) => self.whole_number(e, "escalation").map(Some),
            None => Some(None),
        };
        let (threshold, interval, ban, escalation) = (threshold?, interval?, ban?, escalation?);
        let max_ban = match max_ban {
            Some(m) => m?,
            None => ban
                .saturating_mul(16)
                .min(drl_core::abuse::MAX_BAN)
                .max(ban),
        };
        let escalation = u32::try_from(escalation.unwrap_or(2)).unwrap_or(u32::MAX);
        match AbusePolicy::new(threshold, interval, ban, max_ban, escalation) {
            Ok(mut policy) => {
                if let Some(f) = forget_after {
                    policy.forget_after = f?;
                }
                if let Some(key) = &a.user_key {
                    if key.value.is_empty() {
                        self.error(key.referenced, "user_key must not be empty");
                        return None;
                    }
                    policy.user_key = key.value.clone();
                }
                Some(policy)
            }
            Err(e) => {
                self.error(raw.referenced, e);
                None
            }
        }
    }

    pub(crate) fn backends(
        &mut self,
        raw: Option<&BTreeMap<String, Spanned<RawBackend>>>,
    ) -> Option<BTreeMap<String, BackendSettings>> {
        let mut ok = true;
        let mut out = BTreeMap::new();
        for (name, b) in raw.into_iter().flatten() {
            let d = BackendSettings::default();
            let stale_after = match &b.value.stale_after {
                Some(t) => match drl_core::parse_duration(&t.value) {
                    Ok(v) => v,
                    Err(e) => {
                        self.error(t.referenced, e);
                        ok = false;
                        continue;
                    }
                },
                None => d.stale_after,
            };
            let settings = BackendSettings {
                high: b.value.high.unwrap_or(d.high),
                low: b.value.low.unwrap_or(d.low),
                min_factor: b.value.min_factor.unwrap_or(d.min_factor),
                decrease: b.value.decrease.unwrap_or(d.decrease),
                increase: b.value.increase.unwrap_or(d.increase),
                stale_after,
            };
            match settings.validate() {
                Ok(()) => {
                    out.insert(name.clone(), settings);
                }
                Err(e) => {
                    self.error(b.referenced, format_args!("backend {name:?}: {e}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A rule's `backends:`, remembered with their locations to be checked against the
    /// declared ones once every file is read.
    pub(crate) fn backend_refs(&mut self, raw: Option<&[Text]>) -> Vec<String> {
        raw.unwrap_or_default()
            .iter()
            .map(|b| {
                self.backend_refs.push((b.referenced, b.value.clone()));
                b.value.clone()
            })
            .collect()
    }

    pub(crate) fn blocklist(&mut self, raw: &[Text]) -> Option<Vec<String>> {
        let mut ok = true;
        for user in raw {
            if let Err(e) = validate_id("user_id", &user.value) {
                self.error(user.referenced, e);
                ok = false;
            }
        }
        ok.then(|| raw.iter().map(|u| u.value.clone()).collect())
    }

    /// A file named in the config: relative to the config file's directory.
    pub(crate) fn path(&mut self, raw: &Text) -> Option<PathBuf> {
        if raw.value.is_empty() {
            self.error(raw.referenced, "a file path must not be empty");
            return None;
        }
        let path = Path::new(&raw.value);
        Some(match Path::new(self.file).parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        })
    }

    pub(crate) fn one_of(&mut self, value: Option<&Text>, field: &str, accepted: &[&str]) {
        if let Some(value) = value
            && !accepted.contains(&value.value.as_str())
        {
            self.error(
                value.referenced,
                format_args!(
                    "unknown {field} {:?}: expected one of {}",
                    value.value,
                    accepted.join(", ")
                ),
            );
        }
    }

    pub(crate) fn rules(
        &mut self,
        raw: &[Spanned<RawRule>],
        endpoints: &EndpointNormalization,
    ) -> Option<Vec<Rule>> {
        let mut rules = Vec::with_capacity(raw.len());
        // Selector → line of the rule that first used it.
        let mut seen: HashMap<(Option<&str>, Option<&str>), u64> = HashMap::new();
        let mut ok = true;
        for raw_rule in raw {
            let user_id = self.selector(&raw_rule.value.user_id, "user_id");
            let mut endpoint = self.selector(&raw_rule.value.endpoint, "endpoint");
            if let Some(Some(written)) = endpoint {
                let normal = endpoints.apply(written);
                if normal != written {
                    self.error(
                        raw_rule.value.endpoint.referenced,
                        format_args!(
                            "endpoint {written:?} can never match: normalize_endpoints turns every \
                             endpoint asked for into its normal form; write {normal:?}"
                        ),
                    );
                    endpoint = None;
                }
            }
            let limits = self.rule_limits(raw_rule);
            let (Some(user_id), Some(endpoint), Some(limits)) = (user_id, endpoint, limits) else {
                ok = false;
                continue;
            };
            let rule = Rule {
                user_id: user_id.map(str::to_owned),
                endpoint: endpoint.map(str::to_owned),
                limits,
                shadow_mode: raw_rule.value.shadow_mode.unwrap_or(false),
                abuse_exempt: !raw_rule.value.abuse.unwrap_or(true),
                backends: self.backend_refs(raw_rule.value.backends.as_deref()),
            };
            let at = raw_rule.referenced;
            if user_id.is_none() && endpoint.is_none() {
                self.error(
                    at,
                    "a rule needs a user_id, an endpoint or both; \
                     set the limit for everything else under `default:`",
                );
                ok = false;
            } else if let Some(first) = seen.insert((user_id, endpoint), at.line()) {
                self.error(
                    at,
                    format_args!(
                        "duplicate rule for {}: the rule at line {first} has the same selector",
                        rule.selector()
                    ),
                );
                ok = false;
            }
            rules.push(rule);
        }
        ok.then_some(rules)
    }

    /// A rule's limits: `limit` + `window` inline, or a `limits:` list, not both.
    pub(crate) fn rule_limits(&mut self, raw: &Spanned<RawRule>) -> Option<Vec<Policy>> {
        let rule = &raw.value;
        let inline = rule.limit.is_some() || rule.window.is_some();
        match (&rule.limits, rule.fields()) {
            (Some(_), _) if inline => {
                self.error(
                    raw.referenced,
                    "a rule has either `limit` and `window` or a `limits` list, not both",
                );
                None
            }
            (Some(list), _) => {
                if rule.algorithm.is_some() || rule.precision.is_some() || rule.burst.is_some() {
                    self.error(
                        raw.referenced,
                        "with a `limits` list, give algorithm, precision and burst per limit",
                    );
                    return None;
                }
                self.limit_list(raw.referenced, list)
            }
            (None, Some(fields)) => self.policy(&fields).map(|p| vec![p]),
            (None, None) => {
                let missing = if rule.limit.is_none() {
                    "limit"
                } else {
                    "window"
                };
                self.error(
                    raw.referenced,
                    format_args!("the rule has no `{missing}` (or give a `limits` list)"),
                );
                None
            }
        }
    }

    /// A `limits:` list: 1 to [`MAX_LIMITS_PER_RULE`] policies, every one valid.
    pub(crate) fn limit_list(
        &mut self,
        at: Location,
        list: &[Spanned<RawPolicy>],
    ) -> Option<Vec<Policy>> {
        if list.is_empty() || list.len() > MAX_LIMITS_PER_RULE {
            self.error(
                at,
                format_args!(
                    "{} limits: a rule has from 1 to {MAX_LIMITS_PER_RULE}",
                    list.len()
                ),
            );
            return None;
        }
        let policies: Vec<Option<Policy>> = list
            .iter()
            .map(|p| self.policy(&p.value.fields()))
            .collect();
        policies.into_iter().collect()
    }

    /// A rule's `user_id` or `endpoint`: `Some(None)` when absent, `None` when invalid.
    pub(crate) fn selector<'r>(
        &mut self,
        value: &'r Spanned<Option<String>>,
        field: &'static str,
    ) -> Option<Option<&'r str>> {
        let at = value.referenced;
        match &value.value {
            None if at == Location::UNKNOWN => Some(None),
            None => {
                self.error(
                    at,
                    format_args!("{field} has no value; remove the key to match every {field}"),
                );
                None
            }
            Some(id) => match validate_id(field, id) {
                Ok(()) => Some(Some(id)),
                Err(e) => {
                    self.error(at, e);
                    None
                }
            },
        }
    }

    /// A validated policy, each problem reported at its own value.
    pub(crate) fn policy(&mut self, raw: &PolicyFields<'_>) -> Option<Policy> {
        let requests =
            self.whole_number(raw.limit, "limit")
                .and_then(|n| match Limit::check_requests(n) {
                    Ok(_) => Some(n),
                    Err(e) => {
                        self.error(raw.limit.referenced, e);
                        None
                    }
                });
        let window = self.window(raw.window);
        let algorithm = self.algorithm(raw);
        let limit = match Limit::new(requests?, window?) {
            Ok(limit) => limit,
            Err(e) => {
                // Both halves were checked above; kept for safety, reported at the limit.
                self.error(raw.limit.referenced, e);
                return None;
            }
        };
        match Policy::new(limit, algorithm?) {
            Ok(policy) => Some(policy),
            Err(e) => {
                self.error(raw.limit.referenced, e);
                None
            }
        }
    }

    pub(crate) fn window(&mut self, window: &Text) -> Option<Duration> {
        let checked = drl_core::parse_duration(&window.value).and_then(Limit::check_window);
        match checked {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(window.referenced, e);
                None
            }
        }
    }

    pub(crate) fn algorithm(&mut self, raw: &PolicyFields<'_>) -> Option<Algorithm> {
        self.algorithm_of(raw.algorithm, raw.precision, raw.burst)
    }

    /// An algorithm by name (default: sliding window) with its settings.
    pub(crate) fn algorithm_of(
        &mut self,
        name: Option<&Text>,
        precision: Option<&Text>,
        burst: Option<&Text>,
    ) -> Option<Algorithm> {
        let mut algorithm = match name {
            None => Algorithm::default(),
            Some(name) => match Algorithm::from_name(&name.value) {
                Ok(a) => a,
                Err(e) => {
                    self.error(name.referenced, e);
                    return None;
                }
            },
        };
        type Setter = fn(Algorithm, u64) -> Result<Algorithm, PolicyError>;
        let settings: [(&str, Option<&Text>, Setter); 2] = [
            ("precision", precision, Algorithm::with_precision),
            ("burst", burst, Algorithm::with_burst),
        ];
        let mut ok = true;
        for (field, value, apply) in settings {
            let Some(value) = value else { continue };
            match self.whole_number(value, field).map(|n| apply(algorithm, n)) {
                Some(Ok(a)) => algorithm = a,
                Some(Err(e)) => {
                    self.error(value.referenced, e);
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(algorithm)
    }

    /// A non-negative integer written in decimal.
    pub(crate) fn whole_number(&mut self, value: &Text, field: &str) -> Option<u64> {
        let text = value.value.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            self.error(
                value.referenced,
                format_args!("{field} must be a whole number, not {:?}", value.value),
            );
            return None;
        }
        match text.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    value.referenced,
                    format_args!("{field} {text} is too large"),
                );
                None
            }
        }
    }
}
