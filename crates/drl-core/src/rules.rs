//! Which limit applies to a (user_id, endpoint) pair.
//!
//! Rules match a pair, a user, an endpoint, or nothing (the default); the most specific match
//! wins: pair > user > endpoint > default (DESIGN.md §4). Lookup is at most four hash probes on
//! borrowed `&str`, skipping kinds that have no rules: no allocation, no scan of the rule list.

use std::collections::HashMap;
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::algorithm::Algorithm;
use crate::error::RuleError;
use crate::key::{RuleLevel, validate_id};
use crate::policy::Policy;

type Map<V> = HashMap<Box<str>, V, RandomState>;

/// One configured rule: who it matches and the policy it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Matches this user only; any user when `None`.
    pub user_id: Option<String>,
    /// Matches this endpoint only; any endpoint when `None`.
    pub endpoint: Option<String>,
    pub policy: Policy,
}

impl Rule {
    /// The rule's level of specificity.
    pub fn level(&self) -> RuleLevel {
        match (&self.user_id, &self.endpoint) {
            (Some(_), Some(_)) => RuleLevel::Pair,
            (Some(_), None) => RuleLevel::User,
            (None, Some(_)) => RuleLevel::Endpoint,
            (None, None) => RuleLevel::Default,
        }
    }

    /// A readable selector, e.g. `user_id=alice endpoint=/api/upload`.
    pub fn selector(&self) -> String {
        match (&self.user_id, &self.endpoint) {
            (Some(u), Some(e)) => format!("user_id={u:?} endpoint={e:?}"),
            (Some(u), None) => format!("user_id={u:?}"),
            (None, Some(e)) => format!("endpoint={e:?}"),
            (None, None) => "default".to_owned(),
        }
    }
}

/// A validated rule set with its lookup indexes.
#[derive(Debug, Clone)]
pub struct Rules {
    default: Policy,
    pairs: Map<Map<Policy>>,
    users: Map<Policy>,
    endpoints: Map<Policy>,
    listed: Vec<Rule>,
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
        Self {
            default,
            pairs: Map::default(),
            users: Map::default(),
            endpoints: Map::default(),
            listed: Vec::new(),
        }
    }

    /// Validates and indexes `rules`. A rule with neither user_id nor endpoint replaces the
    /// default; two rules with the same selector are an error.
    pub fn new(default: Policy, rules: impl IntoIterator<Item = Rule>) -> Result<Self, RuleError> {
        let mut set = Self::only_default(default);
        let mut default_seen = false;
        for rule in rules {
            let selector = rule.selector();
            let check = |field, value: &Option<String>| match value {
                Some(v) => validate_id(field, v).map_err(|source| RuleError::Identifier {
                    selector: selector.clone(),
                    source,
                }),
                None => Ok(()),
            };
            check("user_id", &rule.user_id)?;
            check("endpoint", &rule.endpoint)?;
            let duplicate = match (&rule.user_id, &rule.endpoint) {
                (Some(u), Some(e)) => set
                    .pairs
                    .entry(u.as_str().into())
                    .or_default()
                    .insert(e.as_str().into(), rule.policy.clone())
                    .is_some(),
                (Some(u), None) => set
                    .users
                    .insert(u.as_str().into(), rule.policy.clone())
                    .is_some(),
                (None, Some(e)) => set
                    .endpoints
                    .insert(e.as_str().into(), rule.policy.clone())
                    .is_some(),
                (None, None) => {
                    set.default = rule.policy.clone();
                    std::mem::replace(&mut default_seen, true)
                }
            };
            if duplicate {
                return Err(RuleError::Duplicate { selector });
            }
            set.listed.push(rule);
        }
        Ok(set)
    }

    /// The policy for `(user_id, endpoint)` and the level of the rule that set it.
    #[inline]
    pub fn lookup(&self, user_id: &str, endpoint: &str) -> (RuleLevel, &Policy) {
        if !self.pairs.is_empty()
            && let Some(p) = self.pairs.get(user_id).and_then(|m| m.get(endpoint))
        {
            return (RuleLevel::Pair, p);
        }
        if !self.users.is_empty()
            && let Some(p) = self.users.get(user_id)
        {
            return (RuleLevel::User, p);
        }
        if !self.endpoints.is_empty()
            && let Some(p) = self.endpoints.get(endpoint)
        {
            return (RuleLevel::Endpoint, p);
        }
        (RuleLevel::Default, &self.default)
    }

    /// The default policy.
    pub fn default_policy(&self) -> &Policy {
        &self.default
    }

    /// The rules as given, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.listed
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(n: u64) -> Policy {
        Policy::per(n, Duration::from_secs(60), Algorithm::default()).unwrap()
    }

    fn rule(user: Option<&str>, endpoint: Option<&str>, n: u64) -> Rule {
        Rule {
            user_id: user.map(str::to_owned),
            endpoint: endpoint.map(str::to_owned),
            policy: per_minute(n),
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
            ],
        )
        .unwrap();
        let n = |u, e| {
            let (level, p) = rules.lookup(u, e);
            (level, p.requests())
        };
        assert_eq!(n("alice", "/upload"), (RuleLevel::Pair, 5));
        assert_eq!(n("alice", "/search"), (RuleLevel::User, 1000));
        assert_eq!(n("bob", "/search"), (RuleLevel::Endpoint, 20));
        assert_eq!(n("bob", "/upload"), (RuleLevel::Default, 100));
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
    }

    #[test]
    fn a_rule_without_selectors_replaces_the_default() {
        let rules = Rules::new(per_minute(1), [rule(None, None, 7)]).unwrap();
        assert_eq!(rules.lookup("x", "y").1.requests(), 7);
        assert_eq!(Rules::builtin().lookup("x", "y").1.requests(), 100);
    }
}
