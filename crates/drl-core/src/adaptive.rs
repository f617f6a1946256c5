//! Load-adaptive limits (docs/design.md, "Abuse protection and adaptive limits"): backends report their load, and every rule that names a
//! backend enforces ⌊N × factor⌋ (at least 1) instead of N, the factor being the lowest of its
//! backends'.
//!
//! Each backend's factor lives in [`min_factor`, 1] and moves AIMD-style, like TCP's window:
//!
//! - a report above the `high` watermark multiplies it by `decrease` (cut fast under load);
//! - a report below `low` adds `increase` (recover gradually); between the two it holds;
//! - a backend silent for `stale_after` is no longer trusted: its factor recovers by `increase`
//!   per second of silence, so a dead reporter does not pin limits down.
//!
//! Load is a utilization in [0, 1], or a latency divided by its target (so the same watermarks
//! apply: with `high: 0.8`, latency above 80% of the target counts as high).
//!
//! The factors change the rules, not the checks: the [`Limiter`](crate::Limiter) keeps the rules
//! as configured and swaps in scaled ones when a factor moves ([`Rules::scaled`]), so a check
//! costs nothing more with adaptive limits on, and counters carry over (a rule's identity does
//! not change with its limit).

use std::time::Duration;

use crate::error::PolicyError;

/// How one backend's factor reacts to its reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    /// Load above this lowers the factor.
    pub high: f64,
    /// Load below this raises the factor.
    pub low: f64,
    /// The factor never goes below this.
    pub min_factor: f64,
    /// Multiplier applied on high load, in (0, 1).
    pub decrease: f64,
    /// Added on low load, and per second of silence once stale, in (0, 1].
    pub increase: f64,
    /// A backend silent this long recovers on its own.
    pub stale_after: Duration,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            high: 0.8,
            low: 0.6,
            min_factor: 0.1,
            decrease: 0.5,
            increase: 0.1,
            stale_after: Duration::from_secs(30),
        }
    }
}

impl BackendSettings {
    /// Checks the settings: `0 ≤ low ≤ high`, `0 < min_factor ≤ 1`, `0 < decrease < 1`,
    /// `0 < increase ≤ 1`, `stale_after` from 1 s to 1 d.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let range = |setting, value: f64, ok: bool, range| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(PolicyError::OutOfRange {
                    setting,
                    value: value.to_string(),
                    range,
                })
            }
        };
        range("low", self.low, self.low >= 0.0, "at least 0")?;
        range("high", self.high, self.high >= self.low, "at least low")?;
        range(
            "min_factor",
            self.min_factor,
            self.min_factor > 0.0 && self.min_factor <= 1.0,
            "in (0, 1]",
        )?;
        range(
            "decrease",
            self.decrease,
            self.decrease > 0.0 && self.decrease < 1.0,
            "in (0, 1)",
        )?;
        range(
            "increase",
            self.increase,
            self.increase > 0.0 && self.increase <= 1.0,
            "in (0, 1]",
        )?;
        if self.stale_after < Duration::from_secs(1)
            || self.stale_after > Duration::from_secs(86_400)
        {
            return Err(PolicyError::OutOfRange {
                setting: "stale_after",
                value: crate::policy::format_duration(self.stale_after),
                range: "from 1s to 1d",
            });
        }
        Ok(())
    }
}

/// A backend's factor and when it last heard from the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendState {
    pub factor: f64,
    /// Clock ns of the last report; `None` before the first.
    pub reported_ns: Option<u64>,
    /// Clock ns up to which stale recovery has been applied.
    recovered_ns: u64,
}

impl BackendState {
    pub(crate) fn new(now_ns: u64) -> Self {
        Self {
            factor: 1.0,
            reported_ns: None,
            recovered_ns: now_ns,
        }
    }

    /// Applies a report of `load`; returns whether the factor moved.
    pub(crate) fn report(&mut self, settings: &BackendSettings, load: f64, now_ns: u64) -> bool {
        self.reported_ns = Some(now_ns);
        self.recovered_ns = now_ns;
        let before = self.factor;
        if load > settings.high {
            self.factor = (self.factor * settings.decrease).max(settings.min_factor);
        } else if load < settings.low {
            self.factor = (self.factor + settings.increase).min(1.0);
        }
        self.factor != before
    }

    /// Takes a factor decided elsewhere (another node) as if reported now; clamped to
    /// [`min_factor`, 1]. Returns whether the factor moved.
    pub(crate) fn set(&mut self, settings: &BackendSettings, factor: f64, now_ns: u64) -> bool {
        self.reported_ns = Some(now_ns);
        self.recovered_ns = now_ns;
        let before = self.factor;
        self.factor = factor.clamp(settings.min_factor, 1.0);
        self.factor != before
    }

    /// Recovers a stale backend by `increase` per whole second of silence since the last
    /// recovery; returns whether the factor moved.
    pub(crate) fn tick(&mut self, settings: &BackendSettings, now_ns: u64) -> bool {
        let stale_after = u64::try_from(settings.stale_after.as_nanos()).unwrap_or(u64::MAX);
        let silent_since = self.reported_ns.unwrap_or(0);
        if self.factor >= 1.0 || now_ns.saturating_sub(silent_since) < stale_after {
            return false;
        }
        let from = self
            .recovered_ns
            .max(silent_since.saturating_add(stale_after));
        let seconds = now_ns.saturating_sub(from) / 1_000_000_000;
        if seconds == 0 {
            return false;
        }
        self.recovered_ns = from + seconds * 1_000_000_000;
        let before = self.factor;
        self.factor = (self.factor + settings.increase * seconds as f64).min(1.0);
        self.factor != before
    }
}

/// The limit a rule enforces under `factor`: ⌊N × factor⌋, at least 1.
pub fn scale(requests: u32, factor: f64) -> u64 {
    ((f64::from(requests) * factor).floor() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn high_load_cuts_multiplicatively_low_load_recovers_additively() {
        let s = BackendSettings::default();
        let mut b = BackendState::new(0);
        assert!(b.report(&s, 0.9, 0));
        assert_eq!(b.factor, 0.5);
        assert!(!b.report(&s, 0.7, SEC), "between the watermarks it holds");
        for _ in 0..5 {
            b.report(&s, 0.95, SEC);
        }
        assert_eq!(b.factor, 0.1, "clamped at min_factor");
        b.report(&s, 0.2, 2 * SEC);
        assert!((b.factor - 0.2).abs() < 1e-9);
        for _ in 0..20 {
            b.report(&s, 0.0, 3 * SEC);
        }
        assert_eq!(b.factor, 1.0);
    }

    #[test]
    fn a_silent_backend_recovers_after_stale_after() {
        let s = BackendSettings::default();
        let mut b = BackendState::new(0);
        b.report(&s, 1.0, 0);
        b.report(&s, 1.0, 0);
        assert_eq!(b.factor, 0.25);
        assert!(!b.tick(&s, 29 * SEC), "not stale yet");
        assert!(
            !b.tick(&s, 30 * SEC),
            "stale, but no whole second of silence yet"
        );
        assert!(b.tick(&s, 31 * SEC));
        assert!((b.factor - 0.35).abs() < 1e-9);
        assert!(b.tick(&s, 34 * SEC));
        assert!((b.factor - 0.65).abs() < 1e-9);
        assert!(b.tick(&s, 100 * SEC));
        assert_eq!(b.factor, 1.0);
        assert!(!b.tick(&s, 200 * SEC));
    }

    #[test]
    fn settings_are_validated_and_limits_scale_down_to_one() {
        assert!(BackendSettings::default().validate().is_ok());
        let bad = [
            BackendSettings {
                low: 0.9,
                ..Default::default()
            },
            BackendSettings {
                min_factor: 0.0,
                ..Default::default()
            },
            BackendSettings {
                decrease: 1.0,
                ..Default::default()
            },
            BackendSettings {
                increase: f64::NAN,
                ..Default::default()
            },
            BackendSettings {
                stale_after: Duration::ZERO,
                ..Default::default()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
        assert_eq!(scale(100, 0.5), 50);
        assert_eq!(scale(3, 0.5), 1);
        assert_eq!(scale(1, 0.1), 1);
        assert_eq!(scale(10_000, 1.0), 10_000);
    }
}
