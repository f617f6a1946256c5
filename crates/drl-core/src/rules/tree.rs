//! The compiled rule tree of a domain: levels of exact values, wildcard patterns and the
//! any-value branch, walked most specific first; and how rules are inserted into it.

use super::{
    Action, DescriptorRule, Entry, Map, Matching, RequestLimits, Rule, RuleId, Target, check_limits,
};
use crate::error::{CheckError, RuleError};
use crate::key::{ENDPOINT_KEY, MAX_ID_LEN, USER_KEY, validate_id};

/// A domain's rule tree.
#[derive(Debug, Clone)]
pub struct Domain {
    pub(super) matching: Matching,
    pub(super) root: Node,
    pub(super) request_limits: RequestLimits,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Node {
    pub(super) branches: Vec<Branch>,
    pub(super) target: Option<Target>,
}

/// The children of a node for one entry key.
#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub(super) key: Box<str>,
    pub(super) exact: Map<Node>,
    pub(super) wildcards: Vec<(Pattern, Node)>,
    pub(super) any: Option<Box<Node>>,
}

impl Branch {
    pub(super) fn new(key: &str) -> Self {
        Self {
            key: key.into(),
            exact: Map::default(),
            wildcards: Vec::new(),
            any: None,
        }
    }
}

impl Node {
    #[inline]
    pub(super) fn branch(&self, key: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| &*b.key == key)
    }

    pub(super) fn branch_mut(&mut self, key: &str) -> &mut Branch {
        let at = match self.branches.iter().position(|b| &*b.key == key) {
            Some(at) => at,
            None => {
                self.branches.push(Branch::new(key));
                self.branches.len() - 1
            }
        };
        &mut self.branches[at]
    }
}

impl Domain {
    pub(super) fn new(matching: Matching) -> Self {
        Self {
            matching,
            root: Node::default(),
            request_limits: RequestLimits::default(),
        }
    }

    /// What a request's own `limit` on a descriptor does in this domain.
    #[inline]
    pub fn request_limits(&self) -> RequestLimits {
        self.request_limits
    }

    /// The rule for a request descriptor, if any.
    #[inline]
    pub fn find(&self, entries: &[Entry<'_>]) -> Option<&Target> {
        if entries.is_empty() {
            return None;
        }
        match self.matching {
            Matching::Envoy => {
                let mut node = &self.root;
                for entry in entries {
                    let branch = node.branch(entry.key)?;
                    node = branch
                        .exact
                        .get(entry.value)
                        .or_else(|| {
                            branch
                                .wildcards
                                .iter()
                                .find(|(p, _)| p.matches(entry.value))
                                .map(|(_, n)| n)
                        })
                        .or(branch.any.as_deref())?;
                }
                node.target.as_ref()
            }
            Matching::MostSpecific => most_specific(&self.root, entries),
        }
    }

    pub fn matching(&self) -> Matching {
        self.matching
    }
}

/// Depth-first, most specific candidate first at every level.
pub(super) fn most_specific<'r>(node: &'r Node, entries: &[Entry<'_>]) -> Option<&'r Target> {
    let Some((entry, rest)) = entries.split_first() else {
        return node.target.as_ref();
    };
    let branch = node.branch(entry.key)?;
    if let Some(found) = branch
        .exact
        .get(entry.value)
        .and_then(|n| most_specific(n, rest))
    {
        return Some(found);
    }
    for (pattern, n) in &branch.wildcards {
        if pattern.matches(entry.value)
            && let Some(found) = most_specific(n, rest)
        {
            return Some(found);
        }
    }
    branch.any.as_deref().and_then(|n| most_specific(n, rest))
}

/// A value pattern: `*` matches any run of characters (bytes), anything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    pub(super) text: Box<str>,
}

impl Pattern {
    /// Glob match with backtracking over the last `*`: linear in practice, O(n·m) at worst.
    pub(super) fn matches(&self, value: &str) -> bool {
        let (p, v) = (self.text.as_bytes(), value.as_bytes());
        let (mut pi, mut vi) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while vi < v.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, vi));
                pi += 1;
            } else if pi < p.len() && p[pi] == v[vi] {
                pi += 1;
                vi += 1;
            } else if let Some((sp, sv)) = star {
                pi = sp + 1;
                vi = sv + 1;
                star = Some((sp, sv + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// How a level of a rule path matched, for the rule's identity.
#[derive(Debug, Clone, Copy)]
pub(super) enum LevelMatch<'a> {
    Any,
    Exact(&'a str),
    Wildcard(&'a str),
}

/// Builds rule identities: per level, the key, how it matches and the value, each
/// length-prefixed.
#[derive(Debug, Clone, Default)]
pub(super) struct PathId {
    pub(super) bytes: Vec<u8>,
}

impl PathId {
    pub(super) fn push(&mut self, key: &str, matched: LevelMatch<'_>) {
        let (tag, value) = match matched {
            LevelMatch::Any => (0u8, ""),
            LevelMatch::Exact(v) => (1, v),
            LevelMatch::Wildcard(v) => (2, v),
        };
        for field in [key, value] {
            self.bytes
                .extend_from_slice(&(field.len() as u32).to_le_bytes());
            self.bytes.extend_from_slice(field.as_bytes());
        }
        self.bytes.push(tag);
    }
}

pub(super) fn insert_native(native: &mut Domain, rule: &Rule) -> Result<(), RuleError> {
    let selector = rule.selector();
    let check = |field, value: &Option<String>| match value {
        Some(v) => validate_id(field, v).map_err(|source| RuleError::Identifier {
            selector: selector.clone(),
            source,
        }),
        None => Ok(()),
    };
    check(USER_KEY, &rule.user_id)?;
    check(ENDPOINT_KEY, &rule.endpoint)?;
    check_limits(&|| selector.clone(), &rule.limits)?;
    let mut id = PathId::default();
    let mut node = &mut native.root;
    for (key, value) in [(USER_KEY, &rule.user_id), (ENDPOINT_KEY, &rule.endpoint)] {
        let branch = node.branch_mut(key);
        node = match value {
            Some(v) => {
                id.push(key, LevelMatch::Exact(v));
                branch.exact.entry(v.as_str().into()).or_default()
            }
            None => {
                id.push(key, LevelMatch::Any);
                branch.any.get_or_insert_default()
            }
        };
    }
    if node.target.is_some() {
        return Err(RuleError::Duplicate { selector });
    }
    let level = rule.level();
    node.target = Some(Target {
        id: RuleId::new(&id.bytes),
        label: level.name().into(),
        level: Some(level),
        action: Action::Limit(rule.limits.clone()),
        shadow_mode: rule.shadow_mode,
        abuse_exempt: rule.abuse_exempt,
        name: None,
        replaces: Box::default(),
        shared: Box::default(),
    });
    Ok(())
}

/// Inserts `rule` (and its subtree) under `node`. `path` holds the shared patterns of the
/// levels above, `id` their identity, `label` is built from both.
pub(super) fn insert_descriptor(
    domain: &str,
    node: &mut Node,
    rule: &DescriptorRule,
    path: &mut Vec<(String, Option<Box<str>>)>,
    id: &PathId,
) -> Result<(), RuleError> {
    let selector = || {
        let mut s = domain.to_owned();
        for (label, _) in path.iter() {
            s.push('.');
            s.push_str(label);
        }
        s.push('.');
        s.push_str(&level_label(rule));
        s
    };
    if rule.key.is_empty() {
        return Err(RuleError::Invalid {
            selector: selector(),
            reason: "a descriptor needs a non-empty key".into(),
        });
    }
    for field in [Some(&rule.key), rule.value.as_ref()].into_iter().flatten() {
        if field.len() > MAX_ID_LEN {
            return Err(RuleError::Identifier {
                selector: selector(),
                source: CheckError::TooLong {
                    field: "descriptor key or value",
                    len: field.len(),
                    max: MAX_ID_LEN,
                },
            });
        }
    }
    let wildcard = rule.value.as_deref().filter(|v| v.contains('*'));
    if rule.share_threshold && wildcard.is_none() {
        return Err(RuleError::Invalid {
            selector: selector(),
            reason: "share_threshold applies only to a value with a `*` wildcard".into(),
        });
    }
    let mut id = id.clone();
    let branch = node.branch_mut(&rule.key);
    let child = match (&rule.value, wildcard) {
        (None, _) => {
            id.push(&rule.key, LevelMatch::Any);
            branch.any.get_or_insert_default()
        }
        (Some(_), Some(pattern)) => {
            id.push(&rule.key, LevelMatch::Wildcard(pattern));
            let at = match branch
                .wildcards
                .iter()
                .position(|(p, _)| &*p.text == pattern)
            {
                Some(at) => at,
                None => {
                    branch.wildcards.push((
                        Pattern {
                            text: pattern.into(),
                        },
                        Node::default(),
                    ));
                    branch.wildcards.len() - 1
                }
            };
            &mut branch.wildcards[at].1
        }
        (Some(value), None) => {
            id.push(&rule.key, LevelMatch::Exact(value));
            branch.exact.entry(value.as_str().into()).or_default()
        }
    };
    path.push((
        level_label(rule),
        rule.share_threshold
            .then(|| wildcard.map(Box::from))
            .flatten(),
    ));
    if let Some(action) = &rule.action {
        if child.target.is_some() {
            let selector = selector_of(domain, path);
            path.pop();
            return Err(RuleError::Duplicate { selector });
        }
        if let Action::Limit(limits) = action {
            check_limits(&|| selector_of(domain, path), limits)?;
        }
        child.target = Some(Target {
            id: RuleId::new(&id.bytes),
            label: selector_of(domain, path).into(),
            level: None,
            action: action.clone(),
            shadow_mode: rule.shadow_mode,
            abuse_exempt: rule.abuse_exempt,
            name: rule.name.as_deref().map(Box::from),
            replaces: rule
                .replaces
                .iter()
                .map(|r| Box::from(r.as_str()))
                .collect(),
            shared: path.iter().map(|(_, shared)| shared.clone()).collect(),
        });
    }
    for deeper in &rule.descriptors {
        insert_descriptor(domain, child, deeper, path, &id)?;
    }
    path.pop();
    Ok(())
}

/// `key`, `key_value` or `key_pattern`: the level's part of a label (configured text only).
pub(super) fn level_label(rule: &DescriptorRule) -> String {
    match &rule.value {
        Some(v) => format!("{}_{}", rule.key, v),
        None => rule.key.clone(),
    }
}

pub(super) fn selector_of(domain: &str, path: &[(String, Option<Box<str>>)]) -> String {
    let mut s = domain.to_owned();
    for (label, _) in path {
        s.push('.');
        s.push_str(label);
    }
    s
}
