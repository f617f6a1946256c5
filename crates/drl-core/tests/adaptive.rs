//! Load-adaptive limits through the `Limiter`: reports move a backend's factor, the limits of
//! the rules that name it follow (counters carry over), and silent backends recover.

use std::collections::BTreeMap;
use std::time::Duration;

use drl_core::adaptive::BackendSettings;
use drl_core::limiter::AdaptiveError;
use drl_core::{Algorithm, Limiter, Policy, Rule, Rules};

fn rules() -> Rules {
    let per_minute =
        |n| Policy::per(n, Duration::from_secs(60), Algorithm::default()).expect("valid");
    let mut search = Rule::new(None, Some("/search"), per_minute(100));
    search.backends = vec!["db".into()];
    let mut both = Rule::new(None, Some("/report"), per_minute(100));
    both.backends = vec!["db".into(), "cache".into()];
    let backends = BTreeMap::from([
        ("db".to_owned(), BackendSettings::default()),
        (
            "cache".to_owned(),
            BackendSettings {
                min_factor: 0.5,
                ..BackendSettings::default()
            },
        ),
    ]);
    Rules::new(per_minute(10), [search, both])
        .expect("valid rules")
        .with_backends(backends)
}

fn limit(l: &Limiter, endpoint: &str) -> u32 {
    l.check("u", endpoint, 0).expect("valid").limit
}

#[test]
fn reports_scale_the_limits_of_the_rules_that_name_the_backend() {
    let (l, clock) = drl_testkit::manual_limiter(rules(), 0);
    // Spend 30 of /search's 100 before the load rises.
    for _ in 0..30 {
        assert!(l.check_and_increment("u", "/search"));
    }
    assert_eq!(l.report_load("db", 0.95), Ok(0.5));
    assert_eq!(limit(&l, "/search"), 50);
    assert_eq!(limit(&l, "/report"), 50);
    assert_eq!(
        limit(&l, "/other"),
        10,
        "rules without backends keep their limit"
    );
    // The counter carried over: 20 left of 50.
    assert_eq!(l.check("u", "/search", 0).expect("valid").remaining, 20);
    for _ in 0..10 {
        l.report_load("db", 1.0).expect("known backend");
    }
    assert_eq!(limit(&l, "/search"), 10, "clamped at min_factor 0.1");
    // /report takes the lowest of its backends' factors.
    l.report_load("cache", 0.9).expect("known backend");
    assert_eq!(limit(&l, "/report"), 10);
    // Low load recovers additively.
    assert_eq!(l.report_load("db", 0.1), Ok(0.2));
    assert_eq!(limit(&l, "/search"), 20);
    // A reload keeps the factors of backends it still declares.
    l.set_rules(rules());
    assert_eq!(limit(&l, "/search"), 20);
    // Silence: after stale_after, +0.1 per second.
    clock.advance(Duration::from_secs(31));
    assert!(l.tick_adaptive());
    assert_eq!(limit(&l, "/search"), 30);
    clock.advance(Duration::from_secs(60));
    l.tick_adaptive();
    assert_eq!(limit(&l, "/search"), 100);
    let factors = l.load_factors();
    assert_eq!(factors.len(), 2);
}

#[test]
fn bad_reports_change_nothing() {
    let l = Limiter::builder(rules()).sweep_interval(None).build();
    assert_eq!(
        l.report_load("nope", 0.9),
        Err(AdaptiveError::UnknownBackend("nope".into()))
    );
    for bad in [f64::NAN, f64::INFINITY, -0.1] {
        assert!(matches!(
            l.report_load("db", bad),
            Err(AdaptiveError::BadLoad(_))
        ));
    }
    assert_eq!(limit(&l, "/search"), 100);
}
