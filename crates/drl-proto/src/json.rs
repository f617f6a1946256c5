//! The JSON bodies of the HTTP API (docs/api.md), shared by the server and the client so the
//! two cannot drift apart.

use std::time::Duration;

use drl_core::policy::format_duration;
use drl_core::{Algorithm, Decision, Policy, Rules};
use serde::{Deserialize, Serialize};

/// Largest `hits` of one check.
pub const MAX_HITS: u32 = 1_000_000;

/// A `hits` (or Envoy `hits_addend`) outside `0..=MAX_HITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("hits {0} is out of range: it must be from 0 to {MAX_HITS}")]
pub struct HitsOutOfRange(pub u64);

/// `hits` as the limiter takes it: the one range check of every API.
pub fn checked_hits(hits: u64) -> Result<u32, HitsOutOfRange> {
    u32::try_from(hits)
        .ok()
        .filter(|&hits| hits <= MAX_HITS)
        .ok_or(HitsOutOfRange(hits))
}

/// `POST /v1/check` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub user_id: String,
    pub endpoint: String,
    /// Hits to admit at once, all or nothing; 0 asks without counting. Read as `u64` so that an
    /// out-of-range value gets the server's range error, not a type error.
    #[serde(default = "one_hit")]
    pub hits: u64,
}

fn one_hit() -> u64 {
    1
}

/// `POST /v1/check` response body, for both 200 (allowed) and 429 (denied).
///
/// Unknown fields are ignored when reading it, so a newer server can add some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResponse {
    pub allowed: bool,
    /// N: requests allowed per window.
    pub limit: u32,
    /// Hits that would still be admitted now.
    pub remaining: u32,
    /// Milliseconds until the key is back to its full limit.
    pub reset_after_ms: u64,
    /// Milliseconds until the same request could be admitted; 0 when allowed.
    pub retry_after_ms: u64,
}

impl From<Decision> for CheckResponse {
    fn from(d: Decision) -> Self {
        Self {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after_ms: millis(d.reset_after),
            retry_after_ms: millis(d.retry_after),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What was wrong with the request, in words.
    pub error: String,
    /// For a refused config: every problem, with its position in the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<DiagnosticView>,
}

/// One problem of a config file (a config diagnostic as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticView {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// `GET /v1/config`: the config in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    /// 1 at start, +1 per successful reload.
    pub version: u64,
    /// The file it was loaded from; `null` for the built-in default.
    pub source: Option<String>,
    pub default: PolicyView,
    /// The rules as written, in file order.
    pub rules: Vec<RuleView>,
    /// The envoyproxy/ratelimit-format domains loaded beside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// The adaptive backends and their factors now (the rules above show the scaled limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<FactorView>,
}

/// One rule of [`ConfigView`]: its selectors (absent: any) and its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(flatten)]
    pub limits: LimitsView,
}

/// A rule's limits as the config writes them: one inline, or a `limits` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LimitsView {
    Several { limits: Vec<PolicyView> },
    One(PolicyView),
}

/// A policy as the config file writes it: `limit` per `window` (e.g. `"1m"`), `algorithm`, and
/// the algorithm's setting when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    pub limit: u32,
    pub window: String,
    pub algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        let algorithm = p.algorithm();
        let (precision, burst) = match algorithm {
            Algorithm::SlidingWindow { precision } => (Some(precision), None),
            Algorithm::TokenBucket { burst } => (None, burst),
            Algorithm::SlidingLog | Algorithm::FixedWindow => (None, None),
        };
        Self {
            limit: p.requests(),
            window: format_duration(p.limit().window()),
            algorithm: algorithm.name().to_owned(),
            precision,
            burst,
        }
    }
}

impl ConfigView {
    /// The view of `rules`, at `version`, loaded from `source`.
    pub fn new(rules: &Rules, version: u64, source: Option<&std::path::Path>) -> Self {
        Self {
            version,
            source: source.map(|p| p.display().to_string()),
            default: rules.default_policy().into(),
            rules: rules
                .rules()
                .iter()
                .map(|r| RuleView {
                    user_id: r.user_id.clone(),
                    endpoint: r.endpoint.clone(),
                    limits: match r.limits.as_slice() {
                        [one] => LimitsView::One(one.into()),
                        several => LimitsView::Several {
                            limits: several.iter().map(Into::into).collect(),
                        },
                    },
                })
                .collect(),
            domains: rules.domains().iter().map(|d| d.domain.clone()).collect(),
            backends: Vec::new(),
        }
    }
}

impl ConfigView {
    /// The view with the backends' current factors.
    pub fn with_factors(
        mut self,
        factors: Vec<(String, f64, Option<std::time::Duration>)>,
    ) -> Self {
        self.backends = factors
            .into_iter()
            .map(|(backend, factor, ago)| FactorView {
                backend,
                factor,
                reported_ms_ago: ago.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect();
        self
    }
}

/// `POST /v1/config/reload` on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResponse {
    /// The version now in force.
    pub version: u64,
    /// How many rules it has.
    pub rules: usize,
}

/// One ban or block of `GET /v1/blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockView {
    pub user_id: String,
    /// `automatic` (too many denials), `manual` (admin API) or `config` (`blocklist:`).
    pub kind: String,
    /// Time left; `null` for a permanent block.
    pub remaining_ms: Option<u64>,
    /// The user's automatic-ban count, this one included (0 for blocks).
    pub strike: u32,
}

/// `GET /v1/blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksView {
    pub blocks: Vec<BlockView>,
}

/// `PUT /v1/blocks/{user_id}` body, optional: without a duration the block is permanent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    /// e.g. `"30m"`, from 1s to 366d.
    #[serde(default)]
    pub duration: Option<String>,
}

/// `POST /v1/load`: a backend's load, as a utilization or as a latency against a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    pub backend: String,
    /// In [0, 1].
    #[serde(default)]
    pub utilization: Option<f64>,
    /// With `target_ms`: load = latency ÷ target.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    #[serde(default)]
    pub target_ms: Option<f64>,
}

impl LoadReport {
    /// The load it reports, or what is wrong with it.
    pub fn load(&self) -> Result<f64, String> {
        match (self.utilization, self.latency_ms, self.target_ms) {
            (Some(u), None, None) if (0.0..=1.0).contains(&u) => Ok(u),
            (Some(u), None, None) => Err(format!(
                "utilization {u} is out of range: it must be from 0 to 1"
            )),
            (None, Some(latency), Some(target)) => {
                if !(latency.is_finite() && latency >= 0.0) {
                    Err(format!(
                        "latency_ms {latency} is invalid: it must be at least 0"
                    ))
                } else if !(target.is_finite() && target > 0.0) {
                    Err(format!("target_ms {target} is invalid: it must be above 0"))
                } else {
                    Ok(latency / target)
                }
            }
            _ => Err("give either utilization, or latency_ms with target_ms".to_owned()),
        }
    }
}

/// `POST /v1/load` on success, and one backend of `GET /v1/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorView {
    pub backend: String,
    /// The factor limits are scaled by, in [min_factor, 1].
    pub factor: f64,
    /// Milliseconds since the last report; `null` before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_ms_ago: Option<u64>,
}

/// One user of `GET /v1/offenders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffenderView {
    pub user_id: String,
    /// Denials counted as offenses since the node started (an upper bound for users that
    /// entered a full table late; see `drl_core::abuse::Bans::top_offenders`).
    pub denials: u64,
}

/// `GET /v1/offenders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffendersView {
    pub offenders: Vec<OffenderView>,
}
