//! The YAML configuration of a node (docs/configuration.md), loaded and validated once, up front.
//!
//! ```yaml
//! store:
//!   kind: memory
//! default:
//!   limit: 100
//!   window: 1m
//!   algorithm: sliding_window
//! rules:
//!   - endpoint: /api/search
//!     limit: 20
//!     window: 1s
//! ```
//!
//! Every problem is reported as a [`Diagnostic`] at the line and column of the offending value,
//! and all of them are reported at once, so `drl config validate` can list a whole file's mistakes
//! in one run. Parsing happens in two steps: serde-saphyr turns the text into `Raw*` structs whose
//! leaves are [`Spanned`] (it reports syntax, type and unknown-field errors itself, with their
//! location), then a `Validator` turns those into a [`drl_core::Rules`], checking every value
//! through the core's own constructors so the ranges live in one place.
//!
//! Numbers and durations are read as text and parsed here: that gives errors such as
//! "limit must be a whole number" instead of the deserializer's "invalid u64".

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drl_core::DomainRules;
use drl_core::abuse::AbusePolicy;
use drl_core::adaptive::BackendSettings;
use drl_core::rules::MAX_LIMITS_PER_RULE;
use drl_core::{Algorithm, Limit, Policy, PolicyError, Rule, Rules, key::validate_id};
use drl_redis::{ClientCert, RedisTls};
use serde::Deserialize;
use serde_saphyr::{Location, MessageFormatter, Spanned, UserMessageFormatter};
use thiserror::Error;

use crate::envoy_config::RawDomain;
use crate::tls::TlsConfig;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where counters live.
    pub store: StoreConfig,
    /// The default limit and the per-user, per-endpoint and per-pair rules.
    pub rules: Rules,
    /// `server.tls`: serve both APIs over TLS (plaintext when `None`).
    pub tls: Option<TlsConfig>,
    /// The file that held the native part (store, default, rules), if any: a reload that loses
    /// it (the file deleted from a config directory) is refused rather than falling back to the
    /// built-in default.
    native_file: Option<String>,
}

/// The store a node keeps its counters in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// The in-process lock-free store: one node, nothing to run beside it.
    #[default]
    Memory,
    /// A single Redis or a Redis Cluster shared by every node (`drl_redis::RedisStore`).
    Redis(drl_redis::RedisConfig),
}

/// One problem in a config file, at the position of the value that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or source name) as the caller named it.
    pub file: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based column, in characters.
    pub column: u64,
    /// What is wrong, with control characters escaped so it is safe to print.
    pub message: String,
}

/// A diagnostic as the admin API's JSON shows it.
impl From<&Diagnostic> for drl_proto::json::DiagnosticView {
    fn from(d: &Diagnostic) -> Self {
        Self {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A config that could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; one diagnostic per problem, in file order.
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The located problems (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid(diagnostics) => diagnostics,
        }
    }

    /// One problem with a file (or directory) as a whole, at no particular line: reported at
    /// its start.
    pub(crate) fn whole(file: &str, message: &str) -> Self {
        Self::Invalid(vec![diagnostic(file, Location::UNKNOWN, message)])
    }
}

/// Displays diagnostics one per line.
struct DisplayLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the config at `path`: a file, or a directory whose `*.yaml` and
    /// `*.yml` files are read in name order. Each file is either the native config (store,
    /// default, rules; at most one) or an envoyproxy/ratelimit-format domain (a top-level
    /// `domain:`; any number, each domain once).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |path: &Path| {
            let name = path.display().to_string();
            std::fs::read(path)
                .map(|bytes| (name.clone(), bytes))
                .map_err(|source| ConfigError::Read { path: name, source })
        };
        if path.is_dir() {
            let listing = std::fs::read_dir(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let mut files: Vec<_> = listing
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(ConfigError::whole(
                    &path.display().to_string(),
                    "the config directory holds no *.yaml or *.yml file: a config that names \
                     nothing is refused (to run on the built-in default, start without --config)",
                ));
            }
            let sources = files
                .iter()
                .map(|f| read(f))
                .collect::<Result<Vec<_>, _>>()?;
            Self::from_sources(&sources)
        } else {
            Self::from_sources(&[read(path)?])
        }
    }

    /// The file that held the native part (store, default, rules); `None` for a directory of
    /// envoyproxy/ratelimit-format domains only, which run under the built-in default.
    pub fn native_file(&self) -> Option<&str> {
        self.native_file.as_deref()
    }

    /// Validates a config given as text; `source_name` names it in diagnostics.
    pub fn from_yaml(source_name: &str, yaml: &str) -> Result<Self, ConfigError> {
        Self::from_sources(&[(source_name.to_owned(), yaml.as_bytes().to_vec())])
    }

    /// Validates several files as one config: every file's problems are reported.
    pub(crate) fn from_sources(sources: &[(String, Vec<u8>)]) -> Result<Self, ConfigError> {
        let mut diagnostics = Vec::new();
        let mut native: Option<(&str, Config)> = None;
        let mut domains: Vec<(&str, DomainRules)> = Vec::new();
        let mut backend_refs: Vec<(&str, Location, String)> = Vec::new();
        for (name, bytes) in sources {
            let part = Self::part(name, bytes).map(|(part, refs)| {
                backend_refs.extend(refs.into_iter().map(|(at, b)| (name.as_str(), at, b)));
                part
            });
            match part {
                Ok(Part::Native(config)) => match &native {
                    Some((first, _)) => diagnostics.push(diagnostic(
                        name,
                        Location::UNKNOWN,
                        &format!("a second native config (the first is {first}); only one file may have store, default and rules"),
                    )),
                    None => native = Some((name, *config)),
                },
                Ok(Part::Domain(domain)) => {
                    if let Some((first, _)) = domains.iter().find(|(_, d)| d.domain == domain.domain) {
                        diagnostics.push(diagnostic(
                            name,
                            Location::UNKNOWN,
                            &format!("domain {:?} is already defined in {first}", domain.domain),
                        ));
                    } else {
                        domains.push((name, domain));
                    }
                }
                Err(ConfigError::Invalid(found)) => diagnostics.extend(found),
                Err(e) => return Err(e),
            }
        }
        let declared = native.as_ref().map(|(_, c)| c.rules.backends());
        for (file, at, backend) in &backend_refs {
            if !declared.is_some_and(|d| d.contains_key(backend)) {
                diagnostics.push(diagnostic(
                    file,
                    *at,
                    &format!("unknown backend {backend:?}: declare it under `adaptive:`"),
                ));
            }
        }
        if !diagnostics.is_empty() {
            diagnostics
                .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            return Err(ConfigError::Invalid(diagnostics));
        }
        let config = native.map_or_else(
            || Config {
                store: StoreConfig::default(),
                rules: Rules::builtin(),
                tls: None,
                native_file: None,
            },
            |(name, c)| Config {
                native_file: Some(name.to_owned()),
                ..c
            },
        );
        let names: Vec<&str> = domains.iter().map(|(n, _)| *n).collect();
        match config
            .rules
            .clone()
            .with_domains(domains.into_iter().map(|(_, d)| d))
        {
            Ok(rules) => Ok(Config { rules, ..config }),
            Err(e) => Err(ConfigError::Invalid(vec![diagnostic(
                names.first().copied().unwrap_or("config"),
                Location::UNKNOWN,
                &e.to_string(),
            )])),
        }
    }

    /// One file: native or envoyproxy/ratelimit format, told apart by a top-level `domain:`.
    fn part(
        source_name: &str,
        yaml: &[u8],
    ) -> Result<(Part, Vec<(Location, String)>), ConfigError> {
        // No snippets: diagnostics are one line each, `file:line:column: message`.
        let options = serde_saphyr::options! { with_snippet: false };
        let located = |e: serde_saphyr::Error| {
            let e = e.without_snippet();
            let location = e.location().unwrap_or(Location::UNKNOWN);
            let mut message = UserMessageFormatter.format_message(e).into_owned();
            if matches!(e, serde_saphyr::Error::Budget { .. }) {
                message.push_str(
                    " (a config file holds at most 250 000 YAML nodes, about 35 000 rules; \
                     use fewer, wider rules, or split domains over a config directory's files)",
                );
            }
            ConfigError::Invalid(vec![diagnostic(source_name, location, &message)])
        };
        let mut validator = Validator {
            file: source_name,
            diagnostics: Vec::new(),
            backend_refs: Vec::new(),
        };
        let top = serde_saphyr::from_slice_with_options::<
            Option<HashMap<String, serde::de::IgnoredAny>>,
        >(yaml, options.clone());
        // An empty file (a truncated copy, a careless editor, /dev/null) is no config: taken as
        // one, it would replace the rules in force with the built-in default.
        if matches!(&top, Ok(None)) || matches!(&top, Ok(Some(keys)) if keys.is_empty()) {
            return Err(ConfigError::whole(
                source_name,
                "the config is empty: it names no store, default, rules or domain, and a \
                 config that names nothing is refused (to run on the built-in default, start \
                 without --config)",
            ));
        }
        // A file that is not even a YAML map (a duplicate key, an alias bomb, bad syntax) is
        // reported as itself: parsed again as a native config, it would be blamed on `domain:`.
        let is_domain = top
            .map_err(located)?
            .is_some_and(|top| top.contains_key("domain"));
        let part = if is_domain {
            let raw: RawDomain =
                serde_saphyr::from_slice_with_options(yaml, options).map_err(located)?;
            validator.domain(&raw).map(Part::Domain)
        } else {
            let raw: RawConfig =
                serde_saphyr::from_slice_with_options(yaml, options).map_err(located)?;
            validator.config(raw).map(|c| Part::Native(Box::new(c)))
        };
        match part {
            Some(part) if validator.diagnostics.is_empty() => Ok((part, validator.backend_refs)),
            _ => {
                let mut diagnostics = validator.diagnostics;
                diagnostics.sort_by_key(|d| (d.line, d.column));
                Err(ConfigError::Invalid(diagnostics))
            }
        }
    }
}

/// One file of a config.
enum Part {
    Native(Box<Config>),
    Domain(DomainRules),
}

pub(crate) fn diagnostic(file: &str, at: Location, message: &str) -> Diagnostic {
    // An unknown location (line 0) only comes from the deserializer; point at the file's start.
    Diagnostic {
        file: file.to_owned(),
        line: at.line().max(1),
        column: at.column().max(1),
        message: escape_control(message),
    }
}

/// Messages can quote the file (keys, values); keep terminal control characters out of them.
fn escape_control(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

// --- The file as written ------------------------------------------------------------------

/// A scalar kept as its text, with where it was written.
pub(crate) type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: Option<RawStore>,
    default: Option<RawPolicy>,
    rules: Option<Vec<Spanned<RawRule>>>,
    /// Global shadow mode: every denial is reported and answered allowed.
    shadow_mode: Option<bool>,
    abuse: Option<Spanned<RawAbuse>>,
    /// Users blocked for as long as this config is in force.
    blocklist: Option<Vec<Text>>,
    /// Backends whose load reports scale the limits of the rules that name them.
    adaptive: Option<BTreeMap<String, Spanned<RawBackend>>>,
    /// Settings of the node's servers.
    server: Option<RawServer>,
}

/// `server:` — the node's listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    tls: Option<Spanned<RawServerTls>>,
}

/// `server.tls:` — PEM files, relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: Text,
    key: Text,
    client_ca: Option<Text>,
}

/// `store.redis.tls:` — PEM files, relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisTls {
    ca: Option<Text>,
    cert: Option<Text>,
    key: Option<Text>,
}

/// One backend of `adaptive:`; every setting has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    high: Option<f64>,
    low: Option<f64>,
    min_factor: Option<f64>,
    decrease: Option<f64>,
    increase: Option<f64>,
    stale_after: Option<Text>,
}

/// `abuse:` — automatic bans.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbuse {
    /// More than this many denials of one user within `interval` ban the user.
    threshold: Text,
    interval: Text,
    ban: Text,
    max_ban: Option<Text>,
    escalation: Option<Text>,
    forget_after: Option<Text>,
    /// The descriptor key naming the user in Envoy requests.
    user_key: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<Text>,
    /// Settings of the Redis store. Checked even with `kind: memory`, so typos are caught before
    /// the store is switched; used with `kind: redis`.
    redis: Option<Spanned<RawRedis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    urls: Option<Vec<Text>>,
    cluster: Option<bool>,
    consistency: Option<Text>,
    on_error: Option<Text>,
    timeout: Option<Text>,
    tls: Option<Spanned<RawRedisTls>>,
}

/// `default:` — a policy without selectors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    limit: Text,
    window: Text,
    algorithm: Option<Text>,
    precision: Option<Text>,
    burst: Option<Text>,
}

/// One entry of `rules:`. Fields repeat those of [`RawPolicy`]: `#[serde(flatten)]` would lose
/// their locations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Absent: matches every user. Distinguished from an explicit null (`user_id:` with no
    /// value), which is an error rather than a silent "every user".
    #[serde(default = "absent")]
    user_id: Spanned<Option<String>>,
    #[serde(default = "absent")]
    endpoint: Spanned<Option<String>>,
    /// One limit written inline, or several under `limits:` (enforced all or nothing).
    limit: Option<Text>,
    window: Option<Text>,
    algorithm: Option<Text>,
    precision: Option<Text>,
    burst: Option<Text>,
    limits: Option<Vec<Spanned<RawPolicy>>>,
    /// Count and report denials, answer allowed.
    shadow_mode: Option<bool>,
    /// `false`: denials under this rule are no offenses, and automatic bans skip it.
    abuse: Option<bool>,
    /// Backends (declared under `adaptive:`) whose load scales this rule's limits.
    backends: Option<Vec<Text>>,
}

fn absent() -> Spanned<Option<String>> {
    Spanned::new(None, Location::UNKNOWN, Location::UNKNOWN)
}

/// The policy fields shared by `default:` and rules.
struct PolicyFields<'a> {
    limit: &'a Text,
    window: &'a Text,
    algorithm: Option<&'a Text>,
    precision: Option<&'a Text>,
    burst: Option<&'a Text>,
}

impl RawPolicy {
    fn fields(&self) -> PolicyFields<'_> {
        PolicyFields {
            limit: &self.limit,
            window: &self.window,
            algorithm: self.algorithm.as_ref(),
            precision: self.precision.as_ref(),
            burst: self.burst.as_ref(),
        }
    }
}

impl RawRule {
    /// The inline limit, if both halves are there.
    fn fields(&self) -> Option<PolicyFields<'_>> {
        Some(PolicyFields {
            limit: self.limit.as_ref()?,
            window: self.window.as_ref()?,
            algorithm: self.algorithm.as_ref(),
            precision: self.precision.as_ref(),
            burst: self.burst.as_ref(),
        })
    }
}

// --- Validation ---------------------------------------------------------------------------

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
    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let store = match &raw.store {
            Some(store) => self.store(store),
            None => Some(StoreConfig::Memory),
        };
        let default = match &raw.default {
            Some(default) => self.policy(&default.fields()),
            None => Some(Rules::builtin().default_policy().clone()),
        };
        let rules = self.rules(raw.rules.as_deref().unwrap_or_default());
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
        let (store, default, rules, abuse, blocklist, backends, tls) = (
            store?, default?, rules?, abuse?, blocklist?, backends?, tls?,
        );
        match Rules::new(default, rules) {
            Ok(rules) => Some(Config {
                store,
                tls,
                native_file: None,
                rules: rules
                    .with_backends(backends)
                    .with_abuse(abuse)
                    .with_shadow_mode(raw.shadow_mode.unwrap_or(false))
                    .with_blocklist(blocklist),
            }),
            Err(e) => {
                // Unreachable in practice: `rules` already checked identifiers and duplicates.
                self.error(Location::UNKNOWN, e);
                None
            }
        }
    }

    fn abuse(&mut self, raw: &Spanned<RawAbuse>) -> Option<AbusePolicy> {
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

    fn backends(
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

    fn blocklist(&mut self, raw: &[Text]) -> Option<Vec<String>> {
        let mut ok = true;
        for user in raw {
            if let Err(e) = validate_id("user_id", &user.value) {
                self.error(user.referenced, e);
                ok = false;
            }
        }
        ok.then(|| raw.iter().map(|u| u.value.clone()).collect())
    }

    fn store(&mut self, store: &RawStore) -> Option<StoreConfig> {
        let used = store.kind.as_ref().is_some_and(|k| k.value == "redis");
        let redis = store
            .redis
            .as_ref()
            .map(|redis| self.redis(&redis.value, redis.referenced, used));
        match &store.kind {
            None => Some(StoreConfig::Memory),
            Some(kind) => match kind.value.as_str() {
                "memory" => Some(StoreConfig::Memory),
                "redis" => match redis {
                    Some(redis) => redis.map(StoreConfig::Redis),
                    None => {
                        self.error(
                            kind.referenced,
                            "kind: redis needs a `redis:` section with at least `urls`",
                        );
                        None
                    }
                },
                other => {
                    self.error(
                        kind.referenced,
                        format_args!("unknown store kind {other:?}: expected memory or redis"),
                    );
                    None
                }
            },
        }
    }

    /// `store.redis`, with the defaults of [`drl_redis::RedisConfig::new`] for what is not set.
    /// Every value is checked; what only matters to a running store (URLs present, one URL for a
    /// single instance) only when it is `used` (`kind: redis`).
    fn redis(
        &mut self,
        redis: &RawRedis,
        at: Location,
        used: bool,
    ) -> Option<drl_redis::RedisConfig> {
        let mut ok = true;
        let mut urls = Vec::new();
        for url in redis.urls.iter().flatten() {
            if !(url.value.starts_with("redis://") || url.value.starts_with("rediss://")) {
                self.error(
                    url.referenced,
                    format_args!(
                        "invalid Redis URL {:?}: expected redis://host:port or rediss://host:port",
                        url.value
                    ),
                );
                ok = false;
            }
            urls.push(url.value.clone());
        }
        let cluster = redis.cluster.unwrap_or(false);
        match redis.urls.as_deref() {
            _ if !used => {}
            None | Some([]) => {
                self.error(
                    at,
                    "store.redis needs `urls`: the instance, or seed nodes of a cluster",
                );
                ok = false;
            }
            Some([_, second, ..]) if !cluster => {
                self.error(
                    second.referenced,
                    "several URLs with `cluster: false`: a single Redis takes one URL",
                );
                ok = false;
            }
            Some(_) => {}
        }
        let mut config = drl_redis::RedisConfig::new(urls);
        config.cluster = cluster;
        if let Some(value) = &redis.consistency {
            match drl_redis::Consistency::from_name(&value.value) {
                Some(c) => config.consistency = c,
                None => {
                    self.one_of(Some(value), "consistency", &["strict", "fast"]);
                    ok = false;
                }
            }
        }
        if let Some(value) = &redis.on_error {
            match drl_redis::OnError::from_name(&value.value) {
                Some(o) => config.on_error = o,
                None => {
                    self.one_of(Some(value), "on_error", &["deny", "allow", "local"]);
                    ok = false;
                }
            }
        }
        if let Some(timeout) = &redis.timeout {
            match drl_core::parse_duration(&timeout.value) {
                Ok(t) if t.is_zero() => {
                    self.error(
                        timeout.referenced,
                        "the store timeout must be more than zero",
                    );
                    ok = false;
                }
                Ok(t) => config.timeout = t,
                Err(e) => {
                    self.error(timeout.referenced, e);
                    ok = false;
                }
            }
        }
        if let Some(tls) = &redis.tls {
            match self.redis_tls(tls, redis.urls.as_deref().unwrap_or_default()) {
                Some(tls) => config.tls = Some(tls),
                None => ok = false,
            }
        }
        ok.then_some(config)
    }

    /// `server.tls`.
    fn server_tls(&mut self, raw: &RawServerTls) -> Option<TlsConfig> {
        let cert = self.path(&raw.cert);
        let key = self.path(&raw.key);
        let client_ca = match &raw.client_ca {
            Some(ca) => self.path(ca).map(Some),
            None => Some(None),
        };
        Some(TlsConfig {
            cert: cert?,
            key: key?,
            client_ca: client_ca?,
        })
    }

    /// `store.redis.tls`; `urls` are the store's, which must all be `rediss://`.
    fn redis_tls(&mut self, raw: &Spanned<RawRedisTls>, urls: &[Text]) -> Option<RedisTls> {
        let mut ok = true;
        if let Some(url) = urls.iter().find(|u| !u.value.starts_with("rediss://")) {
            self.error(
                url.referenced,
                format_args!(
                    "{:?} is not a rediss:// URL: store.redis.tls needs TLS URLs",
                    url.value
                ),
            );
            ok = false;
        }
        let tls = &raw.value;
        let ca = tls.ca.as_ref().map(|ca| self.path(ca));
        let client = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (self.path(cert), self.path(key));
                Some(cert.zip(key).map(|(cert, key)| ClientCert { cert, key }))
            }
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                self.error(
                    raw.referenced,
                    "store.redis.tls: a client certificate needs both `cert` and `key`",
                );
                ok = false;
                None
            }
        };
        let ca = match ca {
            Some(ca) => Some(ca?),
            None => None,
        };
        let client = match client {
            Some(client) => Some(client?),
            None => None,
        };
        ok.then_some(RedisTls { ca, client })
    }

    /// A file named in the config: relative to the config file's directory.
    fn path(&mut self, raw: &Text) -> Option<PathBuf> {
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

    fn one_of(&mut self, value: Option<&Text>, field: &str, accepted: &[&str]) {
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

    fn rules(&mut self, raw: &[Spanned<RawRule>]) -> Option<Vec<Rule>> {
        let mut rules = Vec::with_capacity(raw.len());
        // Selector → line of the rule that first used it.
        let mut seen: HashMap<(Option<&str>, Option<&str>), u64> = HashMap::new();
        let mut ok = true;
        for raw_rule in raw {
            let user_id = self.selector(&raw_rule.value.user_id, "user_id");
            let endpoint = self.selector(&raw_rule.value.endpoint, "endpoint");
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
    fn rule_limits(&mut self, raw: &Spanned<RawRule>) -> Option<Vec<Policy>> {
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
    fn limit_list(&mut self, at: Location, list: &[Spanned<RawPolicy>]) -> Option<Vec<Policy>> {
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
    fn selector<'r>(
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
    fn policy(&mut self, raw: &PolicyFields<'_>) -> Option<Policy> {
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

    fn algorithm(&mut self, raw: &PolicyFields<'_>) -> Option<Algorithm> {
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

#[cfg(test)]
mod tests {
    use drl_core::RuleLevel;

    use super::*;

    fn first_limit(target: &drl_core::Target) -> &Policy {
        match target.action() {
            drl_core::Action::Limit(limits) => &limits[0],
            other => panic!("not a limit: {other:?}"),
        }
    }

    /// The errors of `yaml` as (line, column, message).
    fn errors(yaml: &str) -> Vec<(u64, u64, String)> {
        match Config::from_yaml("test.yaml", yaml) {
            Ok(_) => panic!("expected errors in:\n{yaml}"),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(|d| (d.line, d.column, d.message.clone()))
                .collect(),
        }
    }

    /// The only error of `yaml`, checked to be at `line`:`column`; returns its message.
    #[track_caller]
    fn error_at(yaml: &str, line: u64, column: u64) -> String {
        let errors = errors(yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (l, c, message) = errors.into_iter().next().unwrap();
        assert_eq!((l, c), (line, column), "{message}");
        message
    }

    const DESIGN_EXAMPLE: &str = "\
store:
  kind: memory                 # memory | redis
  redis:
    urls: [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\", \"redis://127.0.0.1:7002\"]
    cluster: true
    consistency: strict
    on_error: deny
    timeout: 50ms
default:
  limit: 100
  window: 1m
  algorithm: sliding_window
rules:
  - endpoint: /api/search
    limit: 20
    window: 1s
  - user_id: alice
    limit: 1000
    window: 1h
  - user_id: alice
    endpoint: /api/upload
    limit: 5
    window: 1d
";

    #[test]
    fn the_design_example_is_valid() {
        let config = Config::from_yaml("drl.yaml", DESIGN_EXAMPLE).unwrap();
        assert_eq!(config.store, StoreConfig::Memory);
        let rules = &config.rules;
        let n = |u, e| {
            let target = rules.lookup(u, e);
            let p = first_limit(target);
            (
                target.level().unwrap(),
                p.requests(),
                p.window_ns() / 1_000_000_000,
            )
        };
        assert_eq!(n("alice", "/api/upload"), (RuleLevel::Pair, 5, 86_400));
        assert_eq!(n("alice", "/api/search"), (RuleLevel::User, 1000, 3_600));
        assert_eq!(n("bob", "/api/search"), (RuleLevel::Endpoint, 20, 1));
        assert_eq!(n("bob", "/x"), (RuleLevel::Default, 100, 60));
    }

    #[test]
    fn without_default_the_builtin_applies() {
        for yaml in ["rules:\n", "store:\n  kind: memory\n"] {
            let config = Config::from_yaml("x.yaml", yaml).unwrap();
            assert_eq!(
                config.rules.default_policy(),
                Rules::builtin().default_policy()
            );
        }
    }

    #[test]
    fn a_config_that_names_nothing_is_refused() {
        for yaml in ["", "# nothing\n", "\n\n", "---\n", "{}\n", "~\n"] {
            let e = Config::from_yaml("x.yaml", yaml).unwrap_err();
            assert_eq!(e.diagnostics().len(), 1, "{yaml:?}: {e}");
            assert!(
                e.to_string().starts_with("x.yaml:1:1: the config is empty"),
                "{yaml:?}: {e}"
            );
        }
    }

    #[test]
    fn algorithms_and_their_settings_are_read() {
        let config = Config::from_yaml(
            "x.yaml",
            "default:\n  limit: 10\n  window: 90\n  algorithm: gcra\n  burst: 3\nrules:\n  \
             - endpoint: /a\n    limit: 5\n    window: 1h30m\n    precision: 10\n",
        )
        .unwrap();
        let default = config.rules.default_policy();
        assert_eq!(
            default.algorithm(),
            Algorithm::TokenBucket { burst: Some(3) }
        );
        assert_eq!(default.window_ns(), 90 * 1_000_000_000);
        let search = first_limit(config.rules.lookup("u", "/a"));
        assert_eq!(
            search.algorithm(),
            Algorithm::SlidingWindow { precision: 10 }
        );
        assert_eq!(search.window_ns(), 5_400 * 1_000_000_000);
    }

    #[test]
    fn syntax_errors_are_located() {
        let message = error_at("default:\n  limit: 5\n  window: 1m\n   bad: [\n", 4, 7);
        assert!(
            message.contains("mapping values are not allowed"),
            "{message}"
        );
        error_at("default:\n  limit: \"5\n", 2, 10);
    }

    #[test]
    fn type_errors_are_located() {
        error_at("rules: {}\n", 1, 8);
        error_at("default: 5\n", 1, 10);
        let message = error_at("default:\n  limit: [1]\n  window: 1m\n", 2, 10);
        assert!(message.contains("expected"), "{message}");
    }

    #[test]
    fn unknown_fields_are_located() {
        let message = error_at("defaults:\n  limit: 1\n", 1, 1);
        assert!(message.contains("unknown field `defaults`"), "{message}");
        let message = error_at(
            "rules:\n  - endpoint: /a\n    limit: 1\n    windw: 1s\n",
            4,
            5,
        );
        assert!(message.contains("unknown field `windw`"), "{message}");
        // `default:` takes no selectors.
        let message = error_at("default:\n  user_id: a\n  limit: 1\n  window: 1s\n", 2, 3);
        assert!(message.contains("unknown field `user_id`"), "{message}");
        error_at("store:\n  kind: memory\n  redis:\n    url: x\n", 4, 5);
    }

    #[test]
    fn missing_fields_are_located() {
        // Reported at the rule.
        let message = error_at("rules:\n  - endpoint: /a\n    limit: 1\n", 2, 5);
        assert!(message.contains("the rule has no `window`"), "{message}");
    }

    #[test]
    fn out_of_range_limits_are_located() {
        let message = error_at("default:\n  limit: 0\n  window: 1m\n", 2, 10);
        assert_eq!(
            message,
            "limit 0 is out of range: it must be from 1 to 1000000 requests"
        );
        error_at("default:\n  limit: 1000001\n  window: 1m\n", 2, 10);
        let message = error_at(
            "default:\n  limit: 99999999999999999999999\n  window: 1m\n",
            2,
            10,
        );
        assert_eq!(message, "limit 99999999999999999999999 is too large");
        let message = error_at("default:\n  limit: -5\n  window: 1m\n", 2, 10);
        assert_eq!(message, "limit must be a whole number, not \"-5\"");
        error_at("default:\n  limit: 2.5\n  window: 1m\n", 2, 10);
    }

    #[test]
    fn out_of_range_and_invalid_windows_are_located() {
        let message = error_at("default:\n  limit: 1\n  window: 500ms\n", 3, 11);
        assert_eq!(
            message,
            "window 500ms is out of range: it must be from 1s to 366d"
        );
        error_at("default:\n  limit: 1\n  window: 367d\n", 3, 11);
        error_at("default:\n  limit: 1\n  window: 0\n", 3, 11);
        let message = error_at(
            "rules:\n  - user_id: a\n    limit: 1\n    window: 1 fortnight\n",
            4,
            13,
        );
        assert!(
            message.starts_with("invalid duration \"1 fortnight\""),
            "{message}"
        );
    }

    #[test]
    fn unknown_algorithms_and_bad_settings_are_located() {
        let message = error_at(
            "default:\n  limit: 1\n  window: 1s\n  algorithm: leaky_bucket\n",
            4,
            14,
        );
        assert!(
            message.starts_with("unknown algorithm \"leaky_bucket\""),
            "{message}"
        );
        let message = error_at(
            "default:\n  limit: 1\n  window: 1s\n  algorithm: fixed_window\n  precision: 10\n",
            5,
            14,
        );
        assert_eq!(
            message,
            "precision does not apply to algorithm fixed_window"
        );
        // Without an algorithm, the default sliding window takes no burst.
        error_at("default:\n  limit: 1\n  window: 1s\n  burst: 2\n", 4, 10);
        error_at(
            "default:\n  limit: 1\n  window: 1s\n  precision: 0\n",
            4,
            14,
        );
        error_at(
            "default:\n  limit: 1\n  window: 1s\n  algorithm: token_bucket\n  burst: x\n",
            5,
            10,
        );
    }

    #[test]
    fn duplicate_rules_are_located_at_the_second() {
        let message = error_at(
            "rules:\n  - user_id: a\n    limit: 1\n    window: 1s\n  \
             - user_id: a\n    limit: 2\n    window: 1s\n",
            5,
            5,
        );
        assert_eq!(
            message,
            "duplicate rule for user_id=\"a\": the rule at line 2 has the same selector"
        );
        // Same user, different endpoints: not duplicates.
        Config::from_yaml(
            "x.yaml",
            "rules:\n  - {user_id: a, endpoint: /x, limit: 1, window: 1s}\n  \
             - {user_id: a, endpoint: /y, limit: 1, window: 1s}\n  \
             - {endpoint: /x, limit: 1, window: 1s}\n",
        )
        .unwrap();
    }

    #[test]
    fn duplicate_keys_are_located() {
        let message = error_at("default:\n  limit: 1\n  limit: 2\n  window: 1s\n", 3, 3);
        assert!(message.contains("duplicate"), "{message}");
    }

    #[test]
    fn bad_selectors_are_located() {
        let message = error_at(
            "rules:\n  - user_id: ''\n    limit: 1\n    window: 1s\n",
            2,
            14,
        );
        assert_eq!(message, "user_id must not be empty");
        let long = "e".repeat(1025);
        let message = error_at(
            &format!("rules:\n  - endpoint: {long}\n    limit: 1\n    window: 1s\n"),
            2,
            15,
        );
        assert_eq!(
            message,
            "endpoint is 1025 bytes long; the maximum is 1024 bytes"
        );
        // `user_id:` without a value would silently match every user.
        let message = error_at(
            "rules:\n  - user_id:\n    endpoint: /a\n    limit: 1\n    window: 1s\n",
            2,
            12,
        );
        assert!(message.starts_with("user_id has no value"), "{message}");
        let message = error_at("rules:\n  - limit: 1\n    window: 1s\n", 2, 5);
        assert!(message.starts_with("a rule needs a user_id"), "{message}");
    }

    #[test]
    fn a_redis_store_is_read_with_defaults_and_checked() {
        let config = Config::from_yaml(
            "drl.yaml",
            "store:\n  kind: redis\n  redis:\n    urls: [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n    cluster: true\n    on_error: local\n    timeout: 20ms\n",
        )
        .unwrap();
        let mut expected = drl_redis::RedisConfig::new(vec![
            "redis://127.0.0.1:7000".into(),
            "redis://127.0.0.1:7001".into(),
        ]);
        expected.cluster = true;
        expected.on_error = drl_redis::OnError::Local;
        expected.timeout = Duration::from_millis(20);
        assert_eq!(config.store, StoreConfig::Redis(expected));
        let single = Config::from_yaml(
            "drl.yaml",
            "store:\n  kind: redis\n  redis:\n    urls: [\"redis://h:1\"]\n    consistency: fast\n",
        )
        .unwrap();
        let StoreConfig::Redis(single) = single.store else {
            panic!("not redis")
        };
        assert!(!single.cluster);
        assert_eq!(single.consistency, drl_redis::Consistency::Fast);
        assert_eq!(single.on_error, drl_redis::OnError::Deny);
        let message = error_at("store:\n  kind: redis\n  redis:\n    cluster: true\n", 4, 5);
        assert!(message.contains("needs `urls`"), "{message}");
        let message = error_at(
            "store:\n  kind: redis\n  redis:\n    urls: [\"redis://a:1\", \"redis://b:2\"]\n",
            4,
            27,
        );
        assert!(
            message.contains("a single Redis takes one URL"),
            "{message}"
        );
        let message = error_at(
            "store:\n  kind: redis\n  redis:\n    urls: [\"redis://a:1\"]\n    timeout: 0ms\n",
            5,
            14,
        );
        assert!(message.contains("more than zero"), "{message}");
    }

    #[test]
    fn store_kinds_other_than_memory_and_redis_are_refused() {
        let message = error_at("store:\n  kind: redis\n", 2, 9);
        assert_eq!(
            message,
            "kind: redis needs a `redis:` section with at least `urls`"
        );
        let message = error_at("store:\n  kind: etcd\n", 2, 9);
        assert_eq!(
            message,
            "unknown store kind \"etcd\": expected memory or redis"
        );
        error_at(
            "store:\n  kind: memory\n  redis:\n    consistency: eventual\n",
            4,
            18,
        );
        error_at("store:\n  redis:\n    urls: [\"http://x\"]\n", 3, 12);
        error_at("store:\n  redis:\n    timeout: soon\n", 3, 14);
    }

    #[test]
    fn every_problem_is_reported_in_file_order() {
        let errors = errors(
            "rules:\n  - user_id: ''\n    limit: 0\n    window: 1x\n  \
             - endpoint: /a\n    limit: 1\n    window: 1s\n    algorithm: nope\n\
             default:\n  limit: 1\n  window: 0s\n",
        );
        let at: Vec<_> = errors.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(
            at,
            [(2, 14), (3, 12), (4, 13), (8, 16), (11, 11)],
            "{errors:?}"
        );
    }

    #[test]
    fn diagnostics_name_the_file_and_escape_control_characters() {
        let e = Config::from_yaml("conf/drl.yaml", "rules:\n  - \"a\\u0007b\": 1\n").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("conf/drl.yaml:2:5: "), "{text}");
        assert!(!text.contains('\u{7}'), "{text}");
    }

    #[test]
    fn files_are_read_and_named() {
        let dir = std::env::temp_dir().join(format!("drl-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "default:\n  limit: 0\n  window: 1s\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2:10: limit 0 is out of range: it must be from 1 to 1000000 requests",
                path.display()
            )
        );
        let missing = dir.join("missing.yaml");
        let e = Config::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.diagnostics().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
