//! The Envoy rate-limit request, as both APIs take it: `ShouldRateLimit` over gRPC and `POST /json`
//! over HTTP (envoyproxy/ratelimit's JSON form of the same message). Both are read into one
//! [`EnvoyRequest`], checked by [`Node::check_descriptors`] through the limiter's rule engine
//! (all or nothing over the request's descriptors), and written back from one [`RequestDecision`].
//!
//! Semantics follow envoyproxy/ratelimit: the request-level `hits_addend` (0 or unset: 1) unless a
//! descriptor sets its own (which may be 0: check without counting); `overall_code` is OVER_LIMIT
//! when any enforced descriptor is over its limit; a descriptor that matches no rule is OK with no
//! `current_limit`; an `unlimited` one is OK with `limit_remaining` = 2³² − 1; a descriptor whose
//! user is banned is OVER_LIMIT with the ban's remaining time as `duration_until_reset`, and
//! `result="blocked"` in the metrics. Unlike there, a
//! denied request counts nothing in any descriptor, and an unknown domain is an error
//! (INVALID_ARGUMENT / 400) rather than a silent OK.

use std::time::{Duration, Instant};

use drl_core::limiter::{DecidedBy, LimiterError, RequestDecision};
use drl_core::{Algorithm, Descriptor, Entry, Limit, Policy, Store};
use drl_proto::envoy::service::ratelimit::v3 as rls;
use rls::rate_limit_response::rate_limit::Unit;
use rls::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use serde::{Deserialize, Serialize};

use crate::node::Node;
use drl_proto::json::{HitsOutOfRange, checked_hits};

/// One descriptor, owned, as read from either wire format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyDescriptor {
    pub entries: Vec<EnvoyEntry>,
    /// A limit brought by the request instead of the configured rules.
    #[serde(default)]
    pub limit: Option<EnvoyLimit>,
    /// Per-descriptor hits; unset: the request's.
    #[serde(default, alias = "hitsAddend")]
    pub hits_addend: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyEntry {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Envoy's per-descriptor limit override.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyLimit {
    #[serde(alias = "requestsPerUnit")]
    pub requests_per_unit: u64,
    pub unit: UnitName,
}

/// A unit as Envoy's JSON writes it (`"MINUTE"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnitName {
    Unknown,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// A whole request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRequest {
    pub domain: String,
    pub descriptors: Vec<EnvoyDescriptor>,
    #[serde(default, alias = "hitsAddend")]
    pub hits_addend: u64,
}

/// A request that cannot be answered: the caller maps it to INVALID_ARGUMENT / 400, or for a
/// store failure to UNAVAILABLE / 503.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("domain must not be empty")]
    EmptyDomain,
    #[error("descriptor {index}: {source}")]
    Hits {
        index: usize,
        #[source]
        source: HitsOutOfRange,
    },
    #[error("descriptor {index}: limit override: {reason}")]
    BadOverride { index: usize, reason: String },
    #[error(transparent)]
    Limiter(#[from] LimiterError),
}

fn unit_of_proto(unit: i32) -> UnitName {
    match Unit::try_from(unit).unwrap_or(Unit::Unknown) {
        Unit::Unknown => UnitName::Unknown,
        Unit::Second => UnitName::Second,
        Unit::Minute => UnitName::Minute,
        Unit::Hour => UnitName::Hour,
        Unit::Day => UnitName::Day,
        Unit::Week => UnitName::Week,
        Unit::Month => UnitName::Month,
        Unit::Year => UnitName::Year,
    }
}

impl UnitName {
    fn window(self) -> Option<Duration> {
        let secs = match self {
            Self::Unknown => return None,
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
        };
        Some(Duration::from_secs(secs))
    }

    /// Envoy's unit for a window of exactly one unit; UNKNOWN for any other window (Envoy reads
    /// the unit only to build headers; `requests_per_unit` is still N).
    pub fn of(window: Duration) -> Self {
        if window.subsec_nanos() != 0 {
            return Self::Unknown;
        }
        match window.as_secs() {
            1 => Self::Second,
            60 => Self::Minute,
            3_600 => Self::Hour,
            86_400 => Self::Day,
            604_800 => Self::Week,
            2_592_000 => Self::Month,
            31_536_000 => Self::Year,
            _ => Self::Unknown,
        }
    }

    fn proto(self) -> Unit {
        match self {
            Self::Unknown => Unit::Unknown,
            Self::Second => Unit::Second,
            Self::Minute => Unit::Minute,
            Self::Hour => Unit::Hour,
            Self::Day => Unit::Day,
            Self::Week => Unit::Week,
            Self::Month => Unit::Month,
            Self::Year => Unit::Year,
        }
    }
}

impl From<rls::RateLimitRequest> for EnvoyRequest {
    /// Takes the decoded message's strings as they are (no copy).
    fn from(r: rls::RateLimitRequest) -> Self {
        Self {
            domain: r.domain,
            hits_addend: u64::from(r.hits_addend),
            descriptors: r
                .descriptors
                .into_iter()
                .map(|d| EnvoyDescriptor {
                    entries: d
                        .entries
                        .into_iter()
                        .map(|e| EnvoyEntry {
                            key: e.key,
                            value: e.value,
                        })
                        .collect(),
                    limit: d.limit.map(|l| EnvoyLimit {
                        requests_per_unit: u64::from(l.requests_per_unit),
                        unit: unit_of_proto(l.unit),
                    }),
                    hits_addend: d.hits_addend,
                })
                .collect(),
        }
    }
}

impl<S: Store> Node<S> {
    /// Checks an Envoy request through the rule engine and counts it in the metrics.
    pub async fn check_envoy(&self, request: &EnvoyRequest) -> Result<RequestDecision, EnvoyError> {
        if request.domain.is_empty() {
            return Err(EnvoyError::EmptyDomain);
        }
        drl_core::key::validate_id("domain", &request.domain)
            .map_err(|e| EnvoyError::Limiter(e.into()))?;
        let request_hits = request.hits_addend.max(1);
        // Every descriptor's entries in one vector, each descriptor a slice of it.
        let entries: Vec<Entry<'_>> = request
            .descriptors
            .iter()
            .flat_map(|d| &d.entries)
            .map(|e| Entry {
                key: &e.key,
                value: &e.value,
            })
            .collect();
        let mut rest = entries.as_slice();
        let mut descriptors = Vec::with_capacity(request.descriptors.len());
        for (index, d) in request.descriptors.iter().enumerate() {
            let (entries, after) = rest.split_at(d.entries.len());
            rest = after;
            let hits = checked_hits(d.hits_addend.unwrap_or(request_hits))
                .map_err(|source| EnvoyError::Hits { index, source })?;
            let limit = match &d.limit {
                None => None,
                Some(l) => Some(
                    override_policy(l)
                        .map_err(|reason| EnvoyError::BadOverride { index, reason })?,
                ),
            };
            descriptors.push(Descriptor {
                entries,
                hits,
                limit,
            });
        }
        let started = Instant::now();
        let outcome = self
            .limiter
            .check_descriptors(&request.domain, &descriptors)
            .await
            .inspect_err(|e| {
                if matches!(e, LimiterError::Store(_)) {
                    self.metrics.store_error();
                }
            })?;
        let took = started.elapsed();
        for status in &outcome.statuses {
            let result = match status.decided_by {
                DecidedBy::NoLimit => "no_rule",
                DecidedBy::Blocked { .. } => "blocked",
                DecidedBy::Unlimited => "unlimited",
                DecidedBy::Limited {
                    decision, shadow, ..
                } => match (decision.allowed, shadow) {
                    (true, _) if outcome.allowed => "allowed",
                    (true, _) => "denied",
                    (false, true) => "shadow_denied",
                    (false, false) => "denied",
                },
            };
            self.metrics.descriptor(status.label.as_ref(), result);
        }
        self.metrics.observe_check(took);
        let banned = outcome
            .statuses
            .iter()
            .any(|s| matches!(s.decided_by, DecidedBy::Blocked { .. }));
        self.count_abuse(banned, outcome.shadow_denied, outcome.new_bans.len());
        for ban in &outcome.new_bans {
            self.share_ban(ban);
        }
        Ok(outcome)
    }
}

/// The policy of a request's limit override: N per one unit, on the default algorithm.
fn override_policy(limit: &EnvoyLimit) -> Result<Policy, String> {
    let window = limit.unit.window().ok_or_else(|| {
        "the unit must be SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR".to_owned()
    })?;
    Limit::new(limit.requests_per_unit, window)
        .and_then(|l| Policy::new(l, Algorithm::default()))
        .map_err(|e| e.to_string())
}

/// The gRPC response.
pub(crate) fn proto_response(outcome: &RequestDecision) -> rls::RateLimitResponse {
    let statuses = outcome
        .statuses
        .iter()
        .map(|s| match s.decided_by {
            DecidedBy::NoLimit => DescriptorStatus {
                code: Code::Ok.into(),
                ..Default::default()
            },
            DecidedBy::Blocked { retry_after } => DescriptorStatus {
                code: Code::OverLimit.into(),
                duration_until_reset: prost_types::Duration::try_from(retry_after).ok(),
                ..Default::default()
            },
            DecidedBy::Unlimited => DescriptorStatus {
                code: Code::Ok.into(),
                limit_remaining: u32::MAX,
                ..Default::default()
            },
            DecidedBy::Limited {
                decision, window, ..
            } => DescriptorStatus {
                code: if s.over_limit() {
                    Code::OverLimit
                } else {
                    Code::Ok
                }
                .into(),
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: decision.limit,
                    unit: UnitName::of(window).proto().into(),
                }),
                limit_remaining: decision.remaining,
                duration_until_reset: prost_types::Duration::try_from(decision.reset_after).ok(),
                ..Default::default()
            },
        })
        .collect();
    rls::RateLimitResponse {
        overall_code: if outcome.allowed {
            Code::Ok
        } else {
            Code::OverLimit
        }
        .into(),
        statuses,
        ..Default::default()
    }
}

/// `POST /json`'s response body: the protobuf JSON form of `RateLimitResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonResponse {
    pub overall_code: String,
    pub statuses: Vec<JsonStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonStatus {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_limit: Option<JsonLimit>,
    pub limit_remaining: u32,
    /// A protobuf JSON duration, e.g. `"59.5s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_until_reset: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonLimit {
    pub requests_per_unit: u32,
    pub unit: UnitName,
}

/// The JSON response, from the same statuses as the gRPC one.
pub(crate) fn json_response(outcome: &RequestDecision) -> JsonResponse {
    let code = |over: bool| if over { "OVER_LIMIT" } else { "OK" }.to_owned();
    let proto = proto_response(outcome);
    JsonResponse {
        overall_code: code(!outcome.allowed),
        statuses: proto
            .statuses
            .iter()
            .map(|s| JsonStatus {
                code: code(s.code == i32::from(Code::OverLimit)),
                current_limit: s.current_limit.as_ref().map(|l| JsonLimit {
                    requests_per_unit: l.requests_per_unit,
                    unit: unit_of_proto(l.unit),
                }),
                limit_remaining: s.limit_remaining,
                duration_until_reset: s.duration_until_reset.map(|d| {
                    let ms = d.seconds * 1_000 + i64::from(d.nanos) / 1_000_000;
                    format!("{}s", ms as f64 / 1_000.0)
                }),
            })
            .collect(),
    }
}
