//! Validated limits: "N requests per window T", enforced by one algorithm.
//!
//! A [`Policy`] can only be built through [`Policy::new`], which checks every range once, so the
//! hot path never re-validates and never meets an invalid limit. Derived values (bucket width,
//! emission interval) are computed here, at load, not on every check.

use std::time::Duration;

use crate::error::PolicyError;

/// Default sliding-window precision: 60 buckets per window. Steady over-limit traffic is
/// admitted at N·60/61 per window, an under-admission of 1/61 ≈ 1.64% of N.
pub const DEFAULT_PRECISION: u16 = 60;
/// Largest sliding-window precision.
pub const MAX_PRECISION: u16 = 1_000;

/// Which algorithm enforces a limit, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Conservative sub-bucketed sliding window: `precision` buckets per window; every bucket
    /// that overlaps the window counts in full.
    SlidingWindow { precision: u16 },
    /// Exact sliding log of admitted timestamps.
    SlidingLog,
    /// Fixed windows aligned to multiples of T on the clock.
    FixedWindow,
    /// GCRA: a token bucket of `burst` tokens refilled at N/T. `None` means burst = N.
    TokenBucket { burst: Option<u32> },
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::SlidingWindow {
            precision: DEFAULT_PRECISION,
        }
    }
}

impl Algorithm {
    /// The algorithm of a config name, with default settings. `gcra` is `token_bucket`.
    pub fn from_name(name: &str) -> Result<Self, PolicyError> {
        Ok(match name {
            "sliding_window" => Self::default(),
            "sliding_log" => Self::SlidingLog,
            "fixed_window" => Self::FixedWindow,
            "token_bucket" | "gcra" => Self::TokenBucket { burst: None },
            _ => {
                return Err(PolicyError::UnknownAlgorithm {
                    name: name.to_owned(),
                });
            }
        })
    }

    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SlidingWindow { .. } => "sliding_window",
            Self::SlidingLog => "sliding_log",
            Self::FixedWindow => "fixed_window",
            Self::TokenBucket { .. } => "token_bucket",
        }
    }

    /// Sets the sliding-window precision; an error for other algorithms.
    pub fn with_precision(self, precision: u64) -> Result<Self, PolicyError> {
        match self {
            Self::SlidingWindow { .. } => {
                if !(1..=u64::from(MAX_PRECISION)).contains(&precision) {
                    return Err(PolicyError::PrecisionOutOfRange {
                        value: precision,
                        max: MAX_PRECISION,
                    });
                }
                Ok(Self::SlidingWindow {
                    precision: precision as u16,
                })
            }
            other => Err(PolicyError::SettingNotApplicable {
                setting: "precision",
                algorithm: other.name(),
            }),
        }
    }

    /// Sets the token-bucket burst; an error for other algorithms.
    pub fn with_burst(self, burst: u64) -> Result<Self, PolicyError> {
        match self {
            Self::TokenBucket { .. } => {
                if !(1..=u64::from(MAX_LIMIT)).contains(&burst) {
                    return Err(PolicyError::BurstOutOfRange {
                        value: burst,
                        max: MAX_LIMIT,
                    });
                }
                Ok(Self::TokenBucket {
                    burst: Some(burst as u32),
                })
            }
            other => Err(PolicyError::SettingNotApplicable {
                setting: "burst",
                algorithm: other.name(),
            }),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        match *self {
            Self::SlidingWindow { precision } => self.with_precision(u64::from(precision)),
            Self::TokenBucket { burst: Some(b) } => self.with_burst(u64::from(b)),
            _ => Ok(*self),
        }
        .map(drop)
    }
}

/// Smallest N.
pub const MIN_LIMIT: u32 = 1;
/// Largest N. The mission asks for at least 10 000; a sliding log at this N takes 8 MB per key.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Shortest window T: one second.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest window T: 366 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

/// "N requests per window T", both within the supported ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    requests: u32,
    window: Duration,
}

impl Limit {
    /// Validates N and T.
    pub fn new(requests: u64, window: Duration) -> Result<Self, PolicyError> {
        Ok(Self {
            requests: Self::check_requests(requests)?,
            window: Self::check_window(window)?,
        })
    }

    /// Validates N alone (for a config loader that reports each value where it stands).
    pub fn check_requests(requests: u64) -> Result<u32, PolicyError> {
        if !(u64::from(MIN_LIMIT)..=u64::from(MAX_LIMIT)).contains(&requests) {
            return Err(PolicyError::LimitOutOfRange {
                value: requests,
                min: MIN_LIMIT,
                max: MAX_LIMIT,
            });
        }
        Ok(requests as u32)
    }

    /// Validates T alone.
    pub fn check_window(window: Duration) -> Result<Duration, PolicyError> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err(PolicyError::WindowOutOfRange {
                value: format_duration(window),
                min: "1s",
                max: "366d",
            });
        }
        Ok(window)
    }

    /// N.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// T.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// T in nanoseconds (at most 366 days, so it fits a `u64` with room to spare).
    pub fn window_ns(&self) -> u64 {
        self.window.as_nanos() as u64
    }
}

/// A limit and the algorithm that enforces it, with the algorithm's derived parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    limit: Limit,
    algorithm: Algorithm,
    /// Sliding window: bucket width; token bucket: emission interval. Zero otherwise.
    step_ns: u64,
    /// Sliding window: ring slots (buckets that can overlap one window). Zero otherwise.
    slots: u32,
    /// Sliding window: T mod bucket width. Zero otherwise.
    rem_ns: u64,
}

impl Policy {
    /// Validates the limit and the algorithm's own settings.
    pub fn new(limit: Limit, algorithm: Algorithm) -> Result<Self, PolicyError> {
        algorithm.validate()?;
        let window_ns = limit.window_ns();
        let (step_ns, slots) = match algorithm {
            Algorithm::SlidingWindow { precision } => {
                let bucket_ns = window_ns.div_ceil(u64::from(precision));
                // Buckets overlapping a closed interval of length T: ceil(T/g) + 1.
                (bucket_ns, (window_ns.div_ceil(bucket_ns) + 1) as u32)
            }
            // Rounded up, so the refill rate never exceeds N/T.
            Algorithm::TokenBucket { .. } => (window_ns.div_ceil(u64::from(limit.requests)), 0),
            Algorithm::SlidingLog | Algorithm::FixedWindow => (0, 0),
        };
        let rem_ns = if slots > 0 { window_ns % step_ns } else { 0 };
        Ok(Self {
            limit,
            algorithm,
            step_ns,
            slots,
            rem_ns,
        })
    }

    /// Shorthand for tests and examples: `Policy::per(100, Duration::from_secs(60), Algorithm::default())`.
    pub fn per(requests: u64, window: Duration, algorithm: Algorithm) -> Result<Self, PolicyError> {
        Self::new(Limit::new(requests, window)?, algorithm)
    }

    /// The limit.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// N.
    pub fn requests(&self) -> u32 {
        self.limit.requests
    }

    /// T in nanoseconds.
    pub fn window_ns(&self) -> u64 {
        self.limit.window_ns()
    }

    /// The algorithm and its settings.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Sliding window: the width of one bucket in nanoseconds.
    pub fn bucket_ns(&self) -> u64 {
        self.step_ns
    }

    /// Sliding window: the number of ring slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Sliding window: T modulo the bucket width (zero when buckets divide the window evenly).
    pub fn window_rem_ns(&self) -> u64 {
        self.rem_ns
    }

    /// Token bucket: nanoseconds per token (T/N rounded up).
    pub fn emission_ns(&self) -> u64 {
        self.step_ns
    }
}

/// Parses a duration written `30s`, `1m`, `2h`, `1d`, `500ms`, `1h30m`, or a bare number of
/// seconds (`45`).
pub fn parse_duration(input: &str) -> Result<Duration, PolicyError> {
    let err = |reason| PolicyError::InvalidDuration {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| err("the number is too large"))?;
        // The same bound as with units (milliseconds in a u64): "N" reads like "Ns".
        let ms = secs
            .checked_mul(1_000)
            .ok_or_else(|| err("the duration is too large"))?;
        return Ok(Duration::from_millis(ms));
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number before each unit"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(err("a number needs a unit (ms, s, m, h, d)")),
            _ => return Err(err("unknown unit; use ms, s, m, h or d")),
        };
        rest = &rest[unit_len..];
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| err("the duration is too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration in the largest exact unit (`90s` → `90s`, `3600s` → `1h`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1_000) {
        return format!("{}ms", ms);
    }
    let s = ms / 1_000;
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s.is_multiple_of(secs) {
            return format!("{}{}", s / secs, unit);
        }
    }
    format!("{}s", s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn bad_durations_are_named() {
        for bad in [
            "",
            "s",
            "10x",
            "1.5h",
            "-1s",
            "10 s",
            "99999999999999999999",
            // Found by fuzzing: bare seconds above u64::MAX milliseconds were accepted,
            // though the same number with `s` was refused.
            "6000036000300360003",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(3_600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(86_400 * 2)), "2d");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
    }

    #[test]
    fn limits_are_range_checked() {
        let minute = Duration::from_secs(60);
        assert!(Limit::new(1, minute).is_ok());
        assert!(Limit::new(10_000, Duration::from_secs(86_400)).is_ok());
        assert!(matches!(
            Limit::new(0, minute),
            Err(PolicyError::LimitOutOfRange { value: 0, .. })
        ));
        assert!(Limit::new(u64::from(MAX_LIMIT) + 1, minute).is_err());
        let e = Limit::new(10, Duration::from_millis(999)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "window 999ms is out of range: it must be from 1s to 366d"
        );
        assert!(Limit::new(10, MAX_WINDOW + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn sliding_window_geometry_covers_the_window() {
        let p = Policy::per(100, Duration::from_secs(60), Algorithm::default()).unwrap();
        assert_eq!(p.bucket_ns(), 1_000_000_000);
        assert_eq!(p.slots(), 61);
        // A window that does not divide evenly gets wider buckets, never more slots.
        let p = Policy::per(
            5,
            Duration::from_secs(1),
            Algorithm::SlidingWindow { precision: 7 },
        )
        .unwrap();
        assert_eq!(p.bucket_ns(), 142_857_143);
        assert_eq!(p.slots(), 8);
    }
}
