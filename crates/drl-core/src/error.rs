//! Error types of the core. Each names the offending value and the accepted range, so the config
//! loader and the HTTP edge can pass the message on unchanged.

use thiserror::Error;

/// An invalid limit, window or algorithm setting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// N outside the supported range.
    #[error("limit {value} is out of range: it must be from {min} to {max} requests")]
    LimitOutOfRange { value: u64, min: u32, max: u32 },
    /// T outside the supported range.
    #[error("window {value} is out of range: it must be from {min} to {max}")]
    WindowOutOfRange {
        value: String,
        min: &'static str,
        max: &'static str,
    },
    /// A duration that does not parse.
    #[error(
        "invalid duration {input:?}: {reason} (write e.g. 30s, 1m, 2h, 1d, 1h30m or a number of seconds)"
    )]
    InvalidDuration { input: String, reason: &'static str },
    /// An algorithm name that does not exist.
    #[error(
        "unknown algorithm {name:?}: expected one of sliding_window, sliding_log, fixed_window, token_bucket, gcra"
    )]
    UnknownAlgorithm { name: String },
    /// Sliding-window precision (number of buckets) outside its range.
    #[error("precision {value} is out of range: it must be from 1 to {max} buckets")]
    PrecisionOutOfRange { value: u64, max: u16 },
    /// Token-bucket burst outside its range.
    #[error("burst {value} is out of range: it must be from 1 to {max}")]
    BurstOutOfRange { value: u64, max: u32 },
    /// A setting outside its range.
    #[error("{setting} {value} is out of range: it must be {range}")]
    OutOfRange {
        setting: &'static str,
        value: String,
        range: &'static str,
    },
    /// A setting given to an algorithm that does not take it.
    #[error("{setting} does not apply to algorithm {algorithm}")]
    SettingNotApplicable {
        setting: &'static str,
        algorithm: &'static str,
    },
}

/// An invalid rule set.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    /// Two rules with the same selector.
    #[error("duplicate rule for {selector}")]
    Duplicate { selector: String },
    /// A rule with no limit, or more than a rule may have.
    #[error("rule {selector}: {count} limits; a rule has from 1 to {max}")]
    LimitCount {
        selector: String,
        count: usize,
        max: usize,
    },
    /// A descriptor domain without a name.
    #[error("a descriptor domain needs a non-empty name")]
    EmptyDomain,
    /// A descriptor domain defined twice, or named like the native domain.
    #[error("domain {domain:?} is defined twice (or is the built-in domain of the native API)")]
    DuplicateDomain { domain: String },
    /// A descriptor rule that makes no sense as given.
    #[error("rule {selector}: {reason}")]
    Invalid { selector: String, reason: String },
    /// A rule's user_id or endpoint fails the identifier checks.
    #[error("rule {selector}: {source}")]
    Identifier {
        selector: String,
        #[source]
        source: CheckError,
    },
}

/// A check that cannot be answered because its input is invalid. Nothing is counted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckError {
    /// An empty identifier.
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    /// An identifier above the size limit.
    #[error("{field} is {len} bytes long; the maximum is {max} bytes")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A domain with no rules configured.
    #[error("unknown domain {domain:?}")]
    UnknownDomain { domain: String },
    /// A request with no descriptors.
    #[error("the request has no descriptors")]
    NoDescriptors,
    /// A descriptor with no entries.
    #[error("descriptor {index} has no entries")]
    EmptyDescriptor { index: usize },
    /// More descriptors, or entries in one, than allowed.
    #[error("{what}: {count}; the maximum is {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
}
