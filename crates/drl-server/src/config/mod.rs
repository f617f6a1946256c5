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
//!
//! Here: the [`Config`], its errors, and reading files and directories. `raw`: the file as
//! written. `validate`: the sections of the native format (default, rules, abuse, adaptive
//! backends, blocklist). `store`: the store and TLS sections. `envoy`: the envoyproxy/ratelimit
//! domain files.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use drl_core::{DomainRules, Rules};
use serde_saphyr::{Location, MessageFormatter, UserMessageFormatter};
use thiserror::Error;

use self::envoy::RawDomain;
use self::raw::RawConfig;
use self::validate::Validator;
use crate::tls::TlsConfig;

mod envoy;
mod raw;
mod store;
#[cfg(test)]
mod tests;
mod validate;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where counters live.
    pub store: StoreConfig,
    /// The default limit and the per-user, per-endpoint and per-pair rules.
    pub rules: Rules,
    /// `server.tls`: serve both APIs over TLS (plaintext when `None`).
    pub tls: Option<TlsConfig>,
    /// `server.admin`: serve the admin API on a listener of its own.
    pub admin: Option<AdminConfig>,
    /// The file that held the native part (store, default, rules), if any: a reload that loses
    /// it (the file deleted from a config directory) is refused rather than falling back to the
    /// built-in default.
    native_file: Option<String>,
}

/// `server.admin`: the admin API (the status page, `/metrics`, the admin routes) on a listener of
/// its own; the HTTP listener then answers those routes 404.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `server.admin.addr`: where it listens (`host:port`); `--admin-addr` overrides it.
    pub addr: String,
    /// `server.admin.tls`: TLS of its own; `None`: the same as `server.tls`.
    pub tls: Option<TlsConfig>,
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
    /// What is valid but likely wrong, one sentence each: `drl config validate` prints them and
    /// a starting node logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let StoreConfig::Redis(redis) = &self.store
            && !redis.cluster
            && redis.consistency == drl_redis::Consistency::Strict
        {
            warnings.push(
                "store.redis: consistency strict (the default) on a single Redis admits only once                  a replica of it confirms (WAIT): with no replica attached, every check waits out                  the timeout and is answered by on_error, and /readyz and gRPC health say not                  ready; attach a replica, or set consistency: fast"
                    .to_owned(),
            );
        }
        warnings
    }

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
                admin: None,
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
