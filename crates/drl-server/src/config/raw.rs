//! The config file as written: serde structs whose leaves are [`Spanned`] text, so every
//! value keeps its line and column for the validator's diagnostics.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

/// A scalar kept as its text, with where it was written.
pub(crate) type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) store: Option<RawStore>,
    pub(crate) default: Option<RawPolicy>,
    pub(crate) rules: Option<Vec<Spanned<RawRule>>>,
    /// Global shadow mode: every denial is reported and answered allowed.
    pub(crate) shadow_mode: Option<bool>,
    /// `false`: in the native domain (`drl`) of the Envoy API, a descriptor's `limit` sent by
    /// the caller is ignored (the rules decide).
    pub(crate) allow_request_limits: Option<bool>,
    pub(crate) abuse: Option<Spanned<RawAbuse>>,
    /// Users blocked for as long as this config is in force.
    pub(crate) blocklist: Option<Vec<Text>>,
    /// Backends whose load reports scale the limits of the rules that name them.
    pub(crate) adaptive: Option<BTreeMap<String, Spanned<RawBackend>>>,
    /// Settings of the node's servers.
    pub(crate) server: Option<RawServer>,
    /// Endpoints normalised before they are compared (all off: byte for byte).
    pub(crate) normalize_endpoints: Option<Spanned<RawNormalize>>,
}

/// `normalize_endpoints:` — each step off unless set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNormalize {
    pub(crate) strip_query: Option<bool>,
    pub(crate) decode_unreserved: Option<bool>,
    pub(crate) merge_slashes: Option<bool>,
    pub(crate) trailing_slash: Option<bool>,
    pub(crate) lowercase: Option<bool>,
}

impl RawNormalize {
    pub(crate) fn normalization(&self) -> drl_core::endpoint::EndpointNormalization {
        drl_core::endpoint::EndpointNormalization {
            strip_query: self.strip_query.unwrap_or(false),
            decode_unreserved: self.decode_unreserved.unwrap_or(false),
            merge_slashes: self.merge_slashes.unwrap_or(false),
            trailing_slash: self.trailing_slash.unwrap_or(false),
            lowercase: self.lowercase.unwrap_or(false),
        }
    }
}

/// `server:` — the node's listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) tls: Option<Spanned<RawServerTls>>,
    pub(crate) admin: Option<Spanned<RawServerAdmin>>,
}

/// `server.admin:` — the admin API on a listener of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerAdmin {
    pub(crate) addr: Text,
    pub(crate) tls: Option<Spanned<RawServerTls>>,
}

/// `server.tls:` — PEM files, relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    pub(crate) cert: Text,
    pub(crate) key: Text,
    pub(crate) client_ca: Option<Text>,
}

/// `store.redis.tls:` — PEM files, relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedisTls {
    pub(crate) ca: Option<Text>,
    pub(crate) cert: Option<Text>,
    pub(crate) key: Option<Text>,
}

/// One backend of `adaptive:`; every setting has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) high: Option<f64>,
    pub(crate) low: Option<f64>,
    pub(crate) min_factor: Option<f64>,
    pub(crate) decrease: Option<f64>,
    pub(crate) increase: Option<f64>,
    pub(crate) stale_after: Option<Text>,
}

/// `abuse:` — automatic bans.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAbuse {
    /// More than this many denials of one user within `interval` ban the user.
    pub(crate) threshold: Text,
    pub(crate) interval: Text,
    pub(crate) ban: Text,
    pub(crate) max_ban: Option<Text>,
    pub(crate) escalation: Option<Text>,
    pub(crate) forget_after: Option<Text>,
    /// The descriptor key naming the user in Envoy requests.
    pub(crate) user_key: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) kind: Option<Text>,
    /// Settings of the Redis store. Checked even with `kind: memory`, so typos are caught before
    /// the store is switched; used with `kind: redis`.
    pub(crate) redis: Option<Spanned<RawRedis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub(crate) urls: Option<Vec<Text>>,
    pub(crate) cluster: Option<bool>,
    pub(crate) consistency: Option<Text>,
    pub(crate) on_error: Option<Text>,
    pub(crate) timeout: Option<Text>,
    pub(crate) tls: Option<Spanned<RawRedisTls>>,
    pub(crate) leases: Option<Spanned<RawLeases>>,
    /// Read an older drl's keys when a counter's key is made (while upgrading).
    pub(crate) read_old_keys: Option<bool>,
}

/// `store.redis.leases:` — hot keys answered from slices of their window (docs/hot-keys.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLeases {
    /// Checks per second of one key on one node above which the node leases it.
    pub(crate) threshold: Option<Spanned<f64>>,
    /// Most of N one slice may hold.
    pub(crate) max_fraction: Option<Spanned<f64>>,
}

/// `default:` — a policy without selectors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub(crate) limit: Text,
    pub(crate) window: Text,
    pub(crate) algorithm: Option<Text>,
    pub(crate) precision: Option<Text>,
    pub(crate) burst: Option<Text>,
}

/// One entry of `rules:`. Fields repeat those of [`RawPolicy`]: `#[serde(flatten)]` would lose
/// their locations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    /// Absent: matches every user. Distinguished from an explicit null (`user_id:` with no
    /// value), which is an error rather than a silent "every user".
    #[serde(default = "absent")]
    pub(crate) user_id: Spanned<Option<String>>,
    #[serde(default = "absent")]
    pub(crate) endpoint: Spanned<Option<String>>,
    /// One limit written inline, or several under `limits:` (enforced all or nothing).
    pub(crate) limit: Option<Text>,
    pub(crate) window: Option<Text>,
    pub(crate) algorithm: Option<Text>,
    pub(crate) precision: Option<Text>,
    pub(crate) burst: Option<Text>,
    pub(crate) limits: Option<Vec<Spanned<RawPolicy>>>,
    /// Count and report denials, answer allowed.
    pub(crate) shadow_mode: Option<bool>,
    /// `false`: denials under this rule are no offenses, and automatic bans skip it.
    pub(crate) abuse: Option<bool>,
    /// Backends (declared under `adaptive:`) whose load scales this rule's limits.
    pub(crate) backends: Option<Vec<Text>>,
}

pub(crate) fn absent() -> Spanned<Option<String>> {
    Spanned::new(None, Location::UNKNOWN, Location::UNKNOWN)
}

/// The policy fields shared by `default:` and rules.
pub(crate) struct PolicyFields<'a> {
    pub(crate) limit: &'a Text,
    pub(crate) window: &'a Text,
    pub(crate) algorithm: Option<&'a Text>,
    pub(crate) precision: Option<&'a Text>,
    pub(crate) burst: Option<&'a Text>,
}

impl RawPolicy {
    pub(crate) fn fields(&self) -> PolicyFields<'_> {
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
    pub(crate) fn fields(&self) -> Option<PolicyFields<'_>> {
        Some(PolicyFields {
            limit: self.limit.as_ref()?,
            window: self.window.as_ref()?,
            algorithm: self.algorithm.as_ref(),
            precision: self.precision.as_ref(),
            burst: self.burst.as_ref(),
        })
    }
}
