//! The rule engine: which limits apply to a request.
//!
//! A rule set holds **domains**; a domain is a tree of descriptor rules in the shape of
//! envoyproxy/ratelimit's config: each level matches one descriptor entry `(key, value)` by its
//! key and either an exact value, a wildcard pattern (`*` anywhere, any number of times) or any
//! value. A node may carry a [`Target`]: the limits to enforce (one or several, all or nothing),
//! or `unlimited`, or a deny-all (`requests_per_unit: 0`), plus `shadow_mode`, a `name` and the
//! names it `replaces`.
//!
//! Two ways to walk the tree ([`Matching`]):
//!
//! - [`Matching::Envoy`], for domains loaded from envoyproxy/ratelimit files: at each level the
//!   most specific entry wins (exact value, then the first matching wildcard in file order, then
//!   key only), with no backtracking; a request matches only a rule at exactly its own depth.
//!   This is envoyproxy/ratelimit's `GetLimit`, so its configs mean the same thing here.
//! - [`Matching::MostSpecific`], for the native API: the match that is most specific level by
//!   level, backtracking when a more specific branch has no rule at the request's depth.
//!
//! The native user/endpoint rules are the domain [`NATIVE_DOMAIN`](crate::key::NATIVE_DOMAIN)
//! with two levels, `user_id` then `endpoint`; walking it most-specific-first gives exactly
//! pair > user > endpoint > default (docs/configuration.md). So both rule formats share this one engine, and
//! an Envoy request in that domain with entries `user_id` and `endpoint` is answered by the
//! native rules.
//!
//! Lookups borrow the request's strings and allocate nothing: per level, a short scan of the
//! node's keys and one hash probe for the exact value.
//!
//! Here: the rules as configured and the [`Rules`] in force. `tree`: a domain's compiled tree,
//! its matching and how rules are inserted into it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;

use std::collections::BTreeMap;

use crate::abuse::AbusePolicy;
use crate::adaptive::{BackendSettings, scale};
use crate::algorithm::Algorithm;
use crate::endpoint::EndpointNormalization;
use crate::error::RuleError;
use crate::key::{CounterKey, ENDPOINT_KEY, NATIVE_DOMAIN, RulePrefix, USER_KEY};
use crate::policy::Policy;

mod tree;

pub use tree::Domain;
use tree::{LevelMatch, PathId, insert_descriptor, insert_native, most_specific};

type Map<V> = HashMap<Box<str>, V, RandomState>;

/// Most limits on one rule.
pub const MAX_LIMITS_PER_RULE: usize = 16;

/// How specific the native rule that set a counter's limit is: the metric label of native
/// decisions (bounded: four values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleLevel {
    /// The default rule.
    Default = 0,
    /// A rule for one endpoint, any user.
    Endpoint = 1,
    /// A rule for one user, any endpoint.
    User = 2,
    /// A rule for one (user, endpoint) pair.
    Pair = 3,
}

impl RuleLevel {
    /// Name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Endpoint => "endpoint",
            Self::User => "user",
            Self::Pair => "pair",
        }
    }
}

/// One configured native rule: who it matches and the limits it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Matches this user only; any user when `None`.
    pub user_id: Option<String>,
    /// Matches this endpoint only; any endpoint when `None`.
    pub endpoint: Option<String>,
    /// One or more limits, enforced all or nothing (e.g. 10 per second and 10 000 per day).
    pub limits: Vec<Policy>,
    /// Count and report denials, but answer allowed.
    pub shadow_mode: bool,
    /// Denials under this rule are no offenses, and automatic bans do not apply to it.
    pub abuse_exempt: bool,
    /// Backends whose load scales this rule's limits (adaptive limits).
    pub backends: Vec<String>,
}

impl Rule {
    /// A rule with one limit.
    pub fn new(user_id: Option<&str>, endpoint: Option<&str>, policy: Policy) -> Self {
        Self {
            user_id: user_id.map(str::to_owned),
            endpoint: endpoint.map(str::to_owned),
            limits: vec![policy],
            shadow_mode: false,
            abuse_exempt: false,
            backends: Vec::new(),
        }
    }

    /// The rule's level of specificity.
    pub fn level(&self) -> RuleLevel {
        match (&self.user_id, &self.endpoint) {
            (Some(_), Some(_)) => RuleLevel::Pair,
            (Some(_), None) => RuleLevel::User,
            (None, Some(_)) => RuleLevel::Endpoint,
            (None, None) => RuleLevel::Default,
        }
    }

    /// A readable selector, e.g. `user_id="alice" endpoint="/api/upload"`.
    pub fn selector(&self) -> String {
        match (&self.user_id, &self.endpoint) {
            (Some(u), Some(e)) => format!("user_id={u:?} endpoint={e:?}"),
            (Some(u), None) => format!("user_id={u:?}"),
            (None, Some(e)) => format!("endpoint={e:?}"),
            (None, None) => "default".to_owned(),
        }
    }
}

/// What a matched rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Enforce these limits, all or nothing (at least one).
    Limit(Vec<Policy>),
    /// Always allow, counting nothing (`unlimited: true`).
    Unlimited,
    /// Always deny (`requests_per_unit: 0`); the window is what is reported as the reset time.
    Deny { window: Duration },
}

/// One descriptor rule of an envoyproxy/ratelimit-format domain, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorRule {
    /// The descriptor entry key this level matches.
    pub key: String,
    /// Exact value, or a pattern with `*` wildcards; any value when `None`.
    pub value: Option<String>,
    /// What the rule does when a request ends at this level; `None` for a level that only
    /// holds deeper rules.
    pub action: Option<Action>,
    /// The limit's name, for `replaces`.
    pub name: Option<String>,
    /// Names of limits this one replaces when both match one request.
    pub replaces: Vec<String>,
    /// Count, but always answer OK.
    pub shadow_mode: bool,
    /// Denials under this rule are no offenses, and automatic bans do not apply to it.
    pub abuse_exempt: bool,
    /// Backends whose load scales this rule's limits (adaptive limits).
    pub backends: Vec<String>,
    /// For a wildcard value: every matching value shares one counter.
    pub share_threshold: bool,
    /// Rules one level deeper.
    pub descriptors: Vec<DescriptorRule>,
}

/// One envoyproxy/ratelimit-format domain, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainRules {
    pub domain: String,
    pub descriptors: Vec<DescriptorRule>,
    /// What a request's own `limit` on a descriptor does here.
    pub request_limits: RequestLimits,
}

/// What a descriptor's `limit` sent by the caller (Envoy's per-descriptor override) does in a
/// domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestLimits {
    /// It replaces the configured rule for that descriptor, on a counter of its own (Envoy's
    /// behaviour).
    #[default]
    Allowed,
    /// It is ignored: the configured rules decide, as if no `limit` had been sent
    /// (`allow_request_limits: false`).
    Ignored,
}

/// How a domain's tree is walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// envoyproxy/ratelimit: greedy, most specific entry per level, no backtracking.
    Envoy,
    /// Most specific full-depth match, backtracking (the native rules).
    MostSpecific,
}

/// A rule's identity ([`Target::id`]) and its share of its counters' fingerprints, derived from
/// it once, here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleId {
    bytes: Box<[u8]>,
    prefix: RulePrefix,
}

impl RuleId {
    fn new(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.into(),
            prefix: RulePrefix::of(bytes),
        }
    }
}

/// A matched rule: its identity, what it does, and how to report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    id: RuleId,
    label: Arc<str>,
    level: Option<RuleLevel>,
    action: Action,
    shadow_mode: bool,
    abuse_exempt: bool,
    name: Option<Box<str>>,
    replaces: Box<[Box<str>]>,
    /// Per level: the wildcard pattern whose matches share one counter, if any.
    shared: Box<[Option<Box<str>>]>,
}

impl Target {
    /// The rule's identity: its path in the tree (keys, and how each level matched), encoded
    /// injectively. Part of every counter key of the rule.
    pub fn id(&self) -> &[u8] {
        &self.id.bytes
    }

    /// The key of this rule's counter `limit` (index into its limits) for `values`, in
    /// `domain`, with the rule's [`RulePrefix`].
    #[inline]
    pub fn counter_key<'a>(
        &'a self,
        domain: &'a str,
        limit: u16,
        values: &'a [&'a str],
    ) -> CounterKey<'a> {
        CounterKey {
            prefix: Some(&self.id.prefix),
            ..CounterKey::new(domain, &self.id.bytes, limit, values)
        }
    }

    /// A bounded metric label: the level name for native rules; the domain and path (`key`,
    /// `key_value`, `key_pattern` per level) for descriptor rules. Never a request's value.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The native rule level, for rules of the native domain.
    pub fn level(&self) -> Option<RuleLevel> {
        self.level
    }

    pub fn action(&self) -> &Action {
        &self.action
    }

    pub fn shadow_mode(&self) -> bool {
        self.shadow_mode
    }

    /// Automatic bans do not apply, and denials are no offenses.
    pub fn abuse_exempt(&self) -> bool {
        self.abuse_exempt
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn replaces(&self) -> impl Iterator<Item = &str> {
        self.replaces.iter().map(|r| &**r)
    }

    /// The rule for a descriptor that brings its own limit (Envoy's per-descriptor `limit`
    /// override): one limit, counted per the descriptor's keys and values, in a namespace of
    /// its own so it never shares a counter with a configured rule.
    pub fn overriding(domain: &str, entries: &[Entry<'_>], policy: Policy) -> Self {
        let mut id = PathId {
            bytes: b"\xffoverride".to_vec(),
        };
        for entry in entries {
            id.push(entry.key, LevelMatch::Any);
        }
        Self {
            id: RuleId::new(&id.bytes),
            // Not the keys: they come from the request, and labels must stay bounded.
            label: format!("{domain}.override").into(),
            level: None,
            action: Action::Limit(vec![policy]),
            shadow_mode: false,
            abuse_exempt: false,
            name: None,
            replaces: Box::default(),
            shared: Box::default(),
        }
    }

    /// The value a counter of this rule uses at `level`: the request's, or the shared pattern.
    #[inline]
    pub fn counter_value<'a>(&'a self, level: usize, request_value: &'a str) -> &'a str {
        match self.shared.get(level) {
            Some(Some(pattern)) => pattern,
            _ => request_value,
        }
    }
}

/// One entry of a request descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// A validated rule set: the native rules and any envoyproxy/ratelimit-format domains.
#[derive(Debug, Clone)]
pub struct Rules {
    default: Policy,
    native: Domain,
    domains: Map<Domain>,
    listed: Vec<Rule>,
    listed_domains: Vec<DomainRules>,
    abuse: Option<AbusePolicy>,
    shadow_mode: bool,
    /// How endpoints are normalised before they are compared and counted.
    endpoints: EndpointNormalization,
    /// Users blocked for good by the config (`blocklist:`).
    blocklist: std::collections::HashSet<Box<str>, RandomState>,
    /// Backends of adaptive limits, by name.
    backends: BTreeMap<String, BackendSettings>,
}

impl Rules {
    /// The built-in configuration: 100 requests per minute per (user, endpoint), sliding window.
    pub fn builtin() -> Self {
        let default = Policy::per(100, Duration::from_secs(60), Algorithm::default())
            .unwrap_or_else(|_| unreachable!("the built-in default is within range"));
        Self::only_default(default)
    }

    /// A rule set with only a default.
    pub fn only_default(default: Policy) -> Self {
        Self::new(default, [])
            .unwrap_or_else(|_| unreachable!("a rule set of only a default is valid"))
    }

    /// Validates and indexes the native `rules`. A rule with neither user_id nor endpoint
    /// replaces the default; two rules with the same selector are an error.
    pub fn new(default: Policy, rules: impl IntoIterator<Item = Rule>) -> Result<Self, RuleError> {
        let listed: Vec<Rule> = rules.into_iter().collect();
        let mut native = Domain::new(Matching::MostSpecific);
        let default_rule = Rule::new(None, None, default.clone());
        let explicit_default = listed.iter().any(|r| r.level() == RuleLevel::Default);
        let all = (!explicit_default)
            .then_some(&default_rule)
            .into_iter()
            .chain(&listed);
        for rule in all {
            insert_native(&mut native, rule)?;
        }
        let default = listed
            .iter()
            .find(|r| r.level() == RuleLevel::Default)
            .map_or(default, |r| r.limits[0].clone());
        Ok(Self {
            default,
            native,
            domains: Map::default(),
            listed,
            listed_domains: Vec::new(),
            abuse: None,
            shadow_mode: false,
            endpoints: EndpointNormalization::default(),
            blocklist: Default::default(),
            backends: BTreeMap::new(),
        })
    }

    /// Adds envoyproxy/ratelimit-format domains. Each domain name must be new (and not the
    /// native one).
    pub fn with_domains(
        mut self,
        domains: impl IntoIterator<Item = DomainRules>,
    ) -> Result<Self, RuleError> {
        for rules in domains {
            let name = rules.domain.as_str();
            if name.is_empty() {
                return Err(RuleError::EmptyDomain);
            }
            if name == NATIVE_DOMAIN || self.domains.contains_key(name) {
                return Err(RuleError::DuplicateDomain {
                    domain: name.to_owned(),
                });
            }
            let mut domain = Domain::new(Matching::Envoy);
            domain.request_limits = rules.request_limits;
            let mut path = Vec::new();
            for rule in &rules.descriptors {
                insert_descriptor(name, &mut domain.root, rule, &mut path, &PathId::default())?;
            }
            self.domains.insert(name.into(), domain);
            self.listed_domains.push(rules);
        }
        Ok(self)
    }

    /// Sets what a request's own `limit` does in the native domain (`drl`).
    pub fn with_native_request_limits(mut self, request_limits: RequestLimits) -> Self {
        self.native.request_limits = request_limits;
        self
    }

    /// Turns on automatic bans with `policy`.
    pub fn with_abuse(mut self, policy: Option<AbusePolicy>) -> Self {
        self.abuse = policy;
        self
    }

    /// Global shadow mode: every denial is counted and reported, and answered allowed.
    pub fn with_shadow_mode(mut self, on: bool) -> Self {
        self.shadow_mode = on;
        self
    }

    /// Normalises endpoints with `endpoints` before they are compared and counted (native
    /// checks, and the `endpoint` entries of Envoy requests in the native domain).
    pub fn with_endpoint_normalization(mut self, endpoints: EndpointNormalization) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Blocks `users` for as long as these rules are in force.
    pub fn with_blocklist(mut self, users: impl IntoIterator<Item = String>) -> Self {
        self.blocklist = users.into_iter().map(String::into_boxed_str).collect();
        self
    }

    /// Declares the backends of adaptive limits.
    pub fn with_backends(mut self, backends: BTreeMap<String, BackendSettings>) -> Self {
        self.backends = backends;
        self
    }

    /// The backends of adaptive limits.
    pub fn backends(&self) -> &BTreeMap<String, BackendSettings> {
        &self.backends
    }

    /// These rules with every limit of a rule that names backends scaled by the lowest of their
    /// `factors` (absent: 1): ⌊N × factor⌋, at least 1. Identities, and so counters, are kept.
    pub fn scaled(&self, factors: &BTreeMap<String, f64>) -> Self {
        let factor = |backends: &[String]| {
            backends
                .iter()
                .filter_map(|b| factors.get(b))
                .fold(1.0_f64, |a, &b| a.min(b))
        };
        let scale_all = |limits: &[Policy], f: f64| -> Vec<Policy> {
            limits.iter().map(|p| scale_policy(p, f)).collect()
        };
        let native: Vec<Rule> = self
            .listed
            .iter()
            .map(|r| Rule {
                limits: scale_all(&r.limits, factor(&r.backends)),
                ..r.clone()
            })
            .collect();
        fn scale_tree(rule: &DescriptorRule, factor: &dyn Fn(&[String]) -> f64) -> DescriptorRule {
            let action = match &rule.action {
                Some(Action::Limit(limits)) => {
                    let f = factor(&rule.backends);
                    Some(Action::Limit(
                        limits.iter().map(|p| scale_policy(p, f)).collect(),
                    ))
                }
                other => other.clone(),
            };
            DescriptorRule {
                action,
                descriptors: rule
                    .descriptors
                    .iter()
                    .map(|d| scale_tree(d, factor))
                    .collect(),
                ..rule.clone()
            }
        }
        let domains: Vec<DomainRules> = self
            .listed_domains
            .iter()
            .map(|d| DomainRules {
                domain: d.domain.clone(),
                descriptors: d
                    .descriptors
                    .iter()
                    .map(|r| scale_tree(r, &factor))
                    .collect(),
                request_limits: d.request_limits,
            })
            .collect();
        // The same rules with smaller limits: valid whenever `self` is.
        match Rules::new(self.default.clone(), native).and_then(|r| r.with_domains(domains)) {
            Ok(rules) => Self {
                native: Domain {
                    request_limits: self.native.request_limits,
                    ..rules.native
                },
                abuse: self.abuse.clone(),
                shadow_mode: self.shadow_mode,
                endpoints: self.endpoints,
                blocklist: self.blocklist.clone(),
                backends: self.backends.clone(),
                ..rules
            },
            Err(_) => self.clone(),
        }
    }

    /// Whether the config blocks `user`.
    #[inline]
    pub fn blocklisted(&self, user: &str) -> bool {
        !self.blocklist.is_empty() && self.blocklist.contains(user)
    }

    /// Whether the config blocks anyone.
    #[inline]
    pub fn has_blocklist(&self) -> bool {
        !self.blocklist.is_empty()
    }

    /// The config's blocked users, sorted.
    pub fn blocklist(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self.blocklist.iter().map(|u| &**u).collect();
        users.sort_unstable();
        users
    }

    /// The automatic-ban policy, when abuse protection is on.
    #[inline]
    pub fn abuse(&self) -> Option<&AbusePolicy> {
        self.abuse.as_ref()
    }

    /// Global shadow mode.
    #[inline]
    pub fn shadow_mode(&self) -> bool {
        self.shadow_mode
    }

    /// How endpoints are normalised (all off: byte for byte).
    #[inline]
    pub fn endpoint_normalization(&self) -> &EndpointNormalization {
        &self.endpoints
    }

    /// The rule for `(user_id, endpoint)`: always one, the default at worst.
    #[inline]
    pub fn lookup(&self, user_id: &str, endpoint: &str) -> &Target {
        let entries = [
            Entry {
                key: USER_KEY,
                value: user_id,
            },
            Entry {
                key: ENDPOINT_KEY,
                value: endpoint,
            },
        ];
        match most_specific(&self.native.root, &entries) {
            Some(target) => target,
            None => unreachable!("the native domain always has a default rule"),
        }
    }

    /// A domain's rules: the native domain's too, so an Envoy request in it is answered by the
    /// native rules.
    #[inline]
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        if name == NATIVE_DOMAIN {
            Some(&self.native)
        } else {
            self.domains.get(name)
        }
    }

    /// The default policy.
    pub fn default_policy(&self) -> &Policy {
        &self.default
    }

    /// The native rules as given, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.listed
    }

    /// The descriptor domains as given, in order.
    pub fn domains(&self) -> &[DomainRules] {
        &self.listed_domains
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::builtin()
    }
}

fn check_limits(selector: &dyn Fn() -> String, limits: &[Policy]) -> Result<(), RuleError> {
    if limits.is_empty() || limits.len() > MAX_LIMITS_PER_RULE {
        return Err(RuleError::LimitCount {
            selector: selector(),
            count: limits.len(),
            max: MAX_LIMITS_PER_RULE,
        });
    }
    Ok(())
}

/// `policy` with its limit scaled by `factor` (unchanged at 1).
fn scale_policy(policy: &Policy, factor: f64) -> Policy {
    if factor >= 1.0 {
        return policy.clone();
    }
    let scaled =
        crate::policy::Limit::new(scale(policy.requests(), factor), policy.limit().window())
            .and_then(|limit| Policy::new(limit, policy.algorithm()));
    scaled.unwrap_or_else(|_| policy.clone())
}

#[cfg(test)]
mod tests {
    use super::tree::Pattern;
    use super::*;

    fn per_minute(n: u64) -> Policy {
        Policy::per(n, Duration::from_secs(60), Algorithm::default()).unwrap()
    }

    fn rule(user: Option<&str>, endpoint: Option<&str>, n: u64) -> Rule {
        Rule::new(user, endpoint, per_minute(n))
    }

    fn requests(target: &Target) -> u32 {
        match target.action() {
            Action::Limit(limits) => limits[0].requests(),
            other => panic!("not a limit: {other:?}"),
        }
    }

    #[test]
    fn most_specific_rule_wins() {
        let rules = Rules::new(
            per_minute(100),
            [
                rule(None, Some("/search"), 20),
                rule(Some("alice"), None, 1000),
                rule(Some("alice"), Some("/upload"), 5),
                rule(Some("carol"), Some("/upload"), 7),
            ],
        )
        .unwrap();
        let n = |u, e| {
            let t = rules.lookup(u, e);
            (t.level().unwrap(), requests(t))
        };
        assert_eq!(n("alice", "/upload"), (RuleLevel::Pair, 5));
        assert_eq!(n("alice", "/search"), (RuleLevel::User, 1000));
        assert_eq!(n("bob", "/search"), (RuleLevel::Endpoint, 20));
        assert_eq!(n("bob", "/upload"), (RuleLevel::Default, 100));
        // carol has only a pair rule: other endpoints fall back past her branch.
        assert_eq!(n("carol", "/search"), (RuleLevel::Endpoint, 20));
        assert_eq!(n("carol", "/other"), (RuleLevel::Default, 100));
    }

    #[test]
    fn native_rule_identities_differ_by_level_not_by_limit() {
        let a = Rules::new(per_minute(1), [rule(Some("a"), None, 1)]).unwrap();
        let b = Rules::new(per_minute(1), [rule(Some("a"), None, 9)]).unwrap();
        assert_eq!(a.lookup("a", "x").id(), b.lookup("a", "x").id());
        assert_ne!(a.lookup("a", "x").id(), a.lookup("b", "x").id());
    }

    #[test]
    fn duplicates_and_bad_identifiers_are_rejected() {
        let e = Rules::new(
            per_minute(1),
            [rule(Some("a"), None, 1), rule(Some("a"), None, 2)],
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "duplicate rule for user_id=\"a\"");
        let e = Rules::new(per_minute(1), [rule(Some(""), None, 1)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rule user_id=\"\": user_id must not be empty"
        );
        let mut none = rule(Some("a"), None, 1);
        none.limits.clear();
        assert!(Rules::new(per_minute(1), [none]).is_err());
    }

    #[test]
    fn a_rule_without_selectors_replaces_the_default() {
        let rules = Rules::new(per_minute(1), [rule(None, None, 7)]).unwrap();
        assert_eq!(requests(rules.lookup("x", "y")), 7);
        assert_eq!(rules.default_policy().requests(), 7);
        assert_eq!(requests(Rules::builtin().lookup("x", "y")), 100);
    }

    #[test]
    fn patterns_match_like_globs() {
        let p = |t: &str| Pattern { text: t.into() };
        assert!(p("foo*").matches("foo"));
        assert!(p("foo*").matches("foobar"));
        assert!(!p("foo*").matches("fo"));
        assert!(p("*bar").matches("foobar"));
        assert!(p("a*b*c").matches("axxbyyc"));
        assert!(!p("a*b*c").matches("axxbyy"));
        assert!(p("*").matches(""));
        assert!(p("a**").matches("a"));
        assert!(p("*ab").matches("aab"));
    }

    fn limit(n: u64) -> Option<Action> {
        Some(Action::Limit(vec![per_minute(n)]))
    }

    fn d(key: &str, value: Option<&str>, action: Option<Action>) -> DescriptorRule {
        DescriptorRule {
            key: key.into(),
            value: value.map(Into::into),
            action,
            ..DescriptorRule::default()
        }
    }

    #[test]
    fn envoy_matching_is_greedy_and_depth_exact() {
        let mut user = d("user", None, limit(10));
        user.descriptors = vec![d("path", Some("/a"), limit(3))];
        let mut alice = d("user", Some("alice"), limit(100));
        alice.descriptors = vec![d("path", None, limit(30))];
        let rules = Rules::builtin()
            .with_domains([DomainRules {
                domain: "web".into(),
                descriptors: vec![user, alice, d("ip", Some("10.*"), limit(5))],
                ..Default::default()
            }])
            .unwrap();
        let web = rules.domain("web").unwrap();
        let e = |k, v| Entry { key: k, value: v };
        let n = |entries: &[Entry<'_>]| web.find(entries).map(requests);
        assert_eq!(n(&[e("user", "bob")]), Some(10));
        assert_eq!(n(&[e("user", "alice")]), Some(100));
        assert_eq!(n(&[e("user", "bob"), e("path", "/a")]), Some(3));
        // alice's branch wins at level one and has no `/a` rule: no backtracking to `user`.
        assert_eq!(n(&[e("user", "alice"), e("path", "/a")]), Some(30));
        assert_eq!(n(&[e("user", "bob"), e("path", "/b")]), None);
        // Depth-exact: more entries than the rule has levels match nothing.
        assert_eq!(n(&[e("ip", "10.0.0.1"), e("path", "/a")]), None);
        assert_eq!(n(&[e("ip", "10.0.0.1")]), Some(5));
        assert_eq!(n(&[e("ip", "11.0.0.1")]), None);
        assert!(rules.domain("nope").is_none());
        assert_eq!(
            web.find(&[e("user", "bob"), e("path", "/a")])
                .unwrap()
                .label()
                .as_ref(),
            "web.user.path_/a"
        );
    }

    #[test]
    fn bad_domains_are_rejected() {
        let dup = |name: &str| {
            Rules::builtin()
                .with_domains([
                    DomainRules {
                        domain: name.into(),
                        descriptors: vec![],
                        ..Default::default()
                    },
                    DomainRules {
                        domain: "x".into(),
                        descriptors: vec![],
                        ..Default::default()
                    },
                ])
                .unwrap_err()
                .to_string()
        };
        assert!(dup("x").contains("domain \"x\""));
        assert!(dup(NATIVE_DOMAIN).contains("domain \"drl\""));
        let twice = Rules::builtin().with_domains([DomainRules {
            domain: "w".into(),
            descriptors: vec![d("k", None, limit(1)), d("k", None, limit(2))],
            ..Default::default()
        }]);
        assert_eq!(twice.unwrap_err().to_string(), "duplicate rule for w.k");
        let shared = Rules::builtin().with_domains([DomainRules {
            domain: "w".into(),
            descriptors: vec![DescriptorRule {
                share_threshold: true,
                ..d("k", Some("v"), limit(1))
            }],
            ..Default::default()
        }]);
        assert!(shared.is_err());
    }
}
