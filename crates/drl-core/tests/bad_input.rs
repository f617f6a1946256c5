//! Bad input is refused with an error that names the problem, counts nothing, and never
//! panics: identifiers at [`Limiter::check`], limits, windows and algorithm settings at the
//! constructors (config load).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use drl_core::algorithm::{Algorithm, MAX_PRECISION};
use drl_core::key::MAX_ID_LEN;
use drl_core::limiter::LimiterError;
use drl_core::policy::{MAX_LIMIT, MAX_WINDOW, MIN_WINDOW};
use drl_core::{CheckError, Limit, Limiter, Policy, PolicyError, Rule, Rules, parse_duration};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const MINUTE: Duration = Duration::from_secs(60);

fn limiter(algorithm: Algorithm) -> Limiter {
    let policy = Policy::per(3, MINUTE, algorithm).expect("a supported policy");
    drl_testkit::manual_limiter(Rules::only_default(policy), 1_000_000_000).0
}

fn every_algorithm() -> [Algorithm; 4] {
    [
        Algorithm::default(),
        Algorithm::SlidingLog,
        Algorithm::FixedWindow,
        Algorithm::TokenBucket { burst: None },
    ]
}

/// Polls a future that is ready at once (the memory store's always is).
fn ready<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store answers at once"),
    }
}

// ---------------------------------------------------------------------------------------------
// Identifiers.

#[test]
fn empty_identifiers_are_refused_and_count_nothing() {
    for algorithm in every_algorithm() {
        let l = limiter(algorithm);
        let e = l.check("", "/a", 1).unwrap_err();
        assert_eq!(e, CheckError::Empty { field: "user_id" });
        assert_eq!(e.to_string(), "user_id must not be empty");
        let e = l.check("alice", "", 1).unwrap_err();
        assert_eq!(e.to_string(), "endpoint must not be empty");
        // Both bad: the first field is named.
        assert_eq!(
            l.check("", "", 1).unwrap_err(),
            CheckError::Empty { field: "user_id" }
        );
        assert!(!l.check_and_increment("", "/a"));
        assert!(!l.check_and_increment("alice", ""));
        assert_eq!(
            ready(l.check_async("", "/a", 1)),
            Err(LimiterError::Invalid(CheckError::Empty {
                field: "user_id"
            }))
        );
        assert!(l.store().is_empty(), "{algorithm:?}");
        // Nothing was counted anywhere: the full limit is still there.
        assert_eq!(l.check("alice", "/a", 0).unwrap().remaining, 3);
    }
}

#[test]
fn oversized_identifiers_are_refused_and_count_nothing() {
    let l = limiter(Algorithm::default());
    let at_limit = "u".repeat(MAX_ID_LEN);
    let over = "u".repeat(MAX_ID_LEN + 1);
    assert_eq!(
        l.check(&over, "/a", 1).unwrap_err().to_string(),
        "user_id is 1025 bytes long; the maximum is 1024 bytes"
    );
    assert_eq!(
        l.check("alice", &over, 1).unwrap_err(),
        CheckError::TooLong {
            field: "endpoint",
            len: MAX_ID_LEN + 1,
            max: MAX_ID_LEN
        }
    );
    // The limit is in bytes, not characters: 513 × "é" is 1026 bytes.
    let wide = "é".repeat(513);
    assert_eq!(
        l.check(&wide, "/a", 1).unwrap_err().to_string(),
        "user_id is 1026 bytes long; the maximum is 1024 bytes"
    );
    let huge = "x".repeat(10 << 20);
    assert!(l.check(&huge, &huge, 1).is_err());
    assert!(!l.check_and_increment(&over, "/a"));
    assert!(matches!(
        ready(l.check_async("alice", &over, 1)),
        Err(LimiterError::Invalid(CheckError::TooLong { .. }))
    ));
    assert!(l.store().is_empty());

    // Exactly 1024 bytes is fine, in bytes of any width.
    assert!(l.check(&at_limit, &at_limit, 1).unwrap().allowed);
    assert!(l.check(&"é".repeat(512), "/a", 1).unwrap().allowed);
    assert_eq!(l.store().len(), 2);
}

#[test]
fn rules_with_bad_identifiers_are_refused() {
    let policy = Policy::per(3, MINUTE, Algorithm::default()).unwrap();
    let rule = |user: &str| Rule {
        user_id: Some(user.to_owned()),
        endpoint: None,
        limits: vec![policy.clone()],
        shadow_mode: false,
        abuse_exempt: false,
        backends: Vec::new(),
    };
    let e = Rules::new(policy.clone(), [rule("")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rule user_id=\"\": user_id must not be empty"
    );
    let e = Rules::new(policy.clone(), [rule(&"u".repeat(MAX_ID_LEN + 1))]).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("user_id is 1025 bytes long; the maximum is 1024 bytes"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits, windows and algorithm settings.

#[test]
fn limits_out_of_range_are_refused() {
    for bad in [0, u64::from(MAX_LIMIT) + 1, u64::MAX] {
        let e = Limit::new(bad, MINUTE).unwrap_err();
        assert_eq!(
            e,
            PolicyError::LimitOutOfRange {
                value: bad,
                min: 1,
                max: MAX_LIMIT
            }
        );
        assert_eq!(
            e.to_string(),
            format!("limit {bad} is out of range: it must be from 1 to 1000000 requests")
        );
        assert!(Policy::per(bad, MINUTE, Algorithm::default()).is_err());
    }
    assert_eq!(Limit::new(1, MINUTE).unwrap().requests(), 1);
    assert_eq!(
        Limit::new(u64::from(MAX_LIMIT), MINUTE).unwrap().requests(),
        MAX_LIMIT
    );
}

#[test]
fn windows_out_of_range_are_refused() {
    for (bad, shown) in [
        (Duration::ZERO, "0ms"),
        (Duration::from_millis(999), "999ms"),
        (MAX_WINDOW + Duration::from_secs(1), "31622401s"),
        (Duration::from_secs(400 * 86_400), "400d"),
        (Duration::MAX, "18446744073709551615999ms"),
    ] {
        let e = Limit::new(10, bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("window {shown} is out of range: it must be from 1s to 366d"),
            "{bad:?}"
        );
        assert!(Policy::per(10, bad, Algorithm::SlidingLog).is_err());
    }
    assert_eq!(Limit::new(10, MIN_WINDOW).unwrap().window(), MIN_WINDOW);
    assert_eq!(Limit::new(10, MAX_WINDOW).unwrap().window(), MAX_WINDOW);
    // Written durations that parse but are out of range are refused by the limit.
    for written in ["0s", "999ms", "367d", "0"] {
        let window = parse_duration(written).unwrap();
        assert!(Limit::new(10, window).is_err(), "{written}");
    }
}

#[test]
fn unparsable_durations_are_named() {
    for bad in [
        "",
        "  ",
        "1.5s",
        "-1s",
        "1 s",
        "1y",
        "s",
        "10sm",
        "1e3s",
        "٣s",
        "99999999999999999999999s",
    ] {
        let e = parse_duration(bad).unwrap_err();
        assert!(
            matches!(e, PolicyError::InvalidDuration { ref input, .. } if input == bad),
            "{bad:?}: {e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("invalid duration {bad:?}: ")),
            "{e}"
        );
    }
}

#[test]
fn unknown_algorithms_are_refused() {
    for bad in [
        "",
        "sliding-window",
        "SlidingWindow",
        "Sliding_Window",
        "leaky_bucket",
        " gcra",
    ] {
        let e = Algorithm::from_name(bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "unknown algorithm {bad:?}: expected one of sliding_window, sliding_log, \
                 fixed_window, token_bucket, gcra"
            )
        );
    }
    for good in [
        "sliding_window",
        "sliding_log",
        "fixed_window",
        "token_bucket",
        "gcra",
    ] {
        assert!(Algorithm::from_name(good).is_ok(), "{good}");
    }
}

#[test]
fn precision_out_of_range_is_refused() {
    let window = Algorithm::default();
    for bad in [0, u64::from(MAX_PRECISION) + 1, u64::MAX] {
        let e = window.with_precision(bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("precision {bad} is out of range: it must be from 1 to 1000 buckets")
        );
    }
    assert!(window.with_precision(1).is_ok());
    assert!(window.with_precision(u64::from(MAX_PRECISION)).is_ok());
    // A hand-built out-of-range precision is caught when the policy is built.
    for precision in [0, MAX_PRECISION + 1] {
        let e = Policy::per(10, MINUTE, Algorithm::SlidingWindow { precision }).unwrap_err();
        assert!(matches!(e, PolicyError::PrecisionOutOfRange { .. }), "{e}");
    }
    let e = Algorithm::SlidingLog.with_precision(10).unwrap_err();
    assert_eq!(
        e.to_string(),
        "precision does not apply to algorithm sliding_log"
    );
}

#[test]
fn burst_out_of_range_is_refused() {
    let bucket = Algorithm::TokenBucket { burst: None };
    for bad in [0, u64::from(MAX_LIMIT) + 1, u64::MAX] {
        let e = bucket.with_burst(bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("burst {bad} is out of range: it must be from 1 to 1000000")
        );
    }
    assert!(bucket.with_burst(1).is_ok());
    let e = Policy::per(10, MINUTE, Algorithm::TokenBucket { burst: Some(0) }).unwrap_err();
    assert_eq!(
        e,
        PolicyError::BurstOutOfRange {
            value: 0,
            max: MAX_LIMIT
        }
    );
    let e = Algorithm::FixedWindow.with_burst(5).unwrap_err();
    assert_eq!(
        e.to_string(),
        "burst does not apply to algorithm fixed_window"
    );
}

// ---------------------------------------------------------------------------------------------
// Never a panic.

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/bad_input.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// Any string: arbitrary unicode, arbitrary bytes made valid, and sizes around the limit.
fn identifier() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..=16)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (0usize..=2 * MAX_ID_LEN, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        (MAX_ID_LEN - 2..=MAX_ID_LEN + 2).prop_map(|n| "k".repeat(n)),
        Just(String::new()),
    ]
}

/// Any u64, with the edges of the supported ranges well represented.
fn number(edges: &'static [u64]) -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..=2_000_000,
        proptest::sample::select(edges),
    ]
}

fn window() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
        (0u64..=400 * 86_400).prop_map(Duration::from_secs),
        proptest::sample::select(vec![
            Duration::ZERO,
            MIN_WINDOW - Duration::from_nanos(1),
            MIN_WINDOW,
            MAX_WINDOW,
            MAX_WINDOW + Duration::from_nanos(1),
            Duration::MAX,
        ]),
    ]
}

fn hits() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0u32..=10, Just(u32::MAX)]
}

const LIMIT_EDGES: &[u64] = &[0, 1, 2, 10_000, 999_999, 1_000_000, 1_000_001, u64::MAX];
const SETTING_EDGES: &[u64] = &[0, 1, 60, 999, 1_000, 1_001, 1_000_000, 1_000_001, u64::MAX];

proptest! {
    #![proptest_config(config(1024))]

    /// Any identifiers and any hits: an error exactly when an identifier is empty or over
    /// 1 KiB, and then nothing is counted; otherwise a decision within the limit.
    #[test]
    fn any_identifiers_never_panic(
        user in identifier(),
        endpoint in identifier(),
        hits in hits(),
        algorithm in proptest::sample::select(every_algorithm().to_vec()),
    ) {
        let l = limiter(algorithm);
        let bad = |s: &str| s.is_empty() || s.len() > MAX_ID_LEN;
        match l.check(&user, &endpoint, hits) {
            Ok(d) => {
                prop_assert!(!bad(&user) && !bad(&endpoint));
                prop_assert_eq!(d.limit, 3);
                prop_assert!(d.remaining <= 3);
                prop_assert_eq!(d.allowed, hits <= 3);
            }
            Err(e) => {
                prop_assert!(bad(&user) || bad(&endpoint), "{}", e);
                let field = if bad(&user) { "user_id" } else { "endpoint" };
                prop_assert!(e.to_string().starts_with(field), "{}", e);
                prop_assert!(l.store().is_empty());
            }
        }
    }

    /// Any limit, window, precision and burst: accepted exactly when in range, and every
    /// accepted policy answers checks of any hits at any (reachable) time without panicking.
    #[test]
    fn any_limits_and_settings_never_panic(
        n in number(LIMIT_EDGES),
        window in window(),
        setting in number(SETTING_EDGES),
        name in proptest::sample::select(vec![
            "sliding_window", "sliding_log", "fixed_window", "token_bucket", "gcra",
        ]),
        checks in proptest::collection::vec((hits(), 0u64..=1 << 56), 1..=8),
        start in 0u64..=1 << 60,
    ) {
        let limit = Limit::new(n, window);
        prop_assert_eq!(
            limit.is_ok(),
            (1..=u64::from(MAX_LIMIT)).contains(&n) && (MIN_WINDOW..=MAX_WINDOW).contains(&window)
        );
        let base = Algorithm::from_name(name).unwrap();
        let algorithm = match base {
            Algorithm::SlidingWindow { .. } => {
                let a = base.with_precision(setting);
                prop_assert_eq!(a.is_ok(), (1..=u64::from(MAX_PRECISION)).contains(&setting));
                a
            }
            Algorithm::TokenBucket { .. } => {
                let a = base.with_burst(setting);
                prop_assert_eq!(a.is_ok(), (1..=u64::from(MAX_LIMIT)).contains(&setting));
                a
            }
            _ => {
                prop_assert!(base.with_precision(setting).is_err());
                prop_assert!(base.with_burst(setting).is_err());
                Ok(base)
            }
        };
        let (Ok(limit), Ok(algorithm)) = (limit, algorithm) else {
            return Ok(());
        };
        let policy = Policy::new(limit, algorithm).unwrap();
        let (l, clock) = drl_testkit::manual_limiter(Rules::only_default(policy), start);
        for (hits, gap) in checks {
            clock.advance(Duration::from_nanos(gap));
            let d = l.check("u", "/e", hits).unwrap();
            prop_assert_eq!(u64::from(d.limit), n);
            if u64::from(hits) > u64::from(MAX_LIMIT) {
                prop_assert!(!d.allowed);
            }
            l.sweep();
        }
    }

    /// Any written duration or algorithm name: an answer, never a panic.
    #[test]
    fn any_config_strings_never_panic(input in identifier()) {
        if let Ok(d) = parse_duration(&input) {
            let _ = Limit::new(1, d);
        }
        let known = ["sliding_window", "sliding_log", "fixed_window", "token_bucket", "gcra"];
        prop_assert_eq!(Algorithm::from_name(&input).is_ok(), known.contains(&input.as_str()));
    }
}
