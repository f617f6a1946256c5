//! The config's tests: valid files read as written, and every mistake located at its line and
//! column.

use std::time::Duration;

use drl_core::{Algorithm, Policy, RuleLevel};

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

#[test]
fn normalize_endpoints_is_off_by_default_and_refuses_rules_it_would_never_match() {
    let plain = Config::from_yaml("x.yaml", "default: {limit: 5, window: 1m}\n").unwrap();
    assert!(plain.rules.endpoint_normalization().is_off());
    let on = "normalize_endpoints: {strip_query: true, lowercase: true}\nrules:\n  - endpoint: /Search\n    limit: 1\n    window: 1m\n";
    let e = error_at(on, 3, 15);
    assert!(
        e.contains("\"/Search\" can never match") && e.contains("\"/search\""),
        "{e}"
    );
    let fixed = on.replace("/Search", "/search");
    let config = Config::from_yaml("x.yaml", &fixed).unwrap();
    let n = config.rules.endpoint_normalization();
    assert!(n.strip_query && n.lowercase && !n.merge_slashes);
    assert!(!errors("normalize_endpoints: {strip_queries: true}\n").is_empty());
}

/// A config with `store.redis` on one URL and `extra` (indented four spaces) under it.
fn redis(extra: &str) -> String {
    format!("store:\n  kind: redis\n  redis:\n    urls: [\"redis://h:1\"]\n{extra}")
}

/// The Redis store settings of `yaml`.
fn store(yaml: &str) -> drl_redis::RedisConfig {
    match Config::from_yaml("drl.yaml", yaml).unwrap().store {
        StoreConfig::Redis(redis) => redis,
        StoreConfig::Memory => panic!("not redis"),
    }
}

#[test]
fn leases_are_off_by_default_and_read_and_checked_with_their_place() {
    assert_eq!(store(&redis("")).leases, None);
    assert_eq!(
        store(&redis("    leases: {}\n")).leases,
        Some(drl_redis::LeaseConfig::default())
    );
    let leases = store(&redis(
        "    leases:\n      threshold: 200\n      max_fraction: 0.05\n",
    ))
    .leases
    .expect("leases");
    assert_eq!((leases.threshold, leases.max_fraction), (200.0, 0.05));
    let message = error_at(&redis("    leases:\n      max_fraction: 1.5\n"), 6, 21);
    assert!(message.contains("at most 1"), "{message}");
    let message = error_at(&redis("    leases:\n      threshold: 0\n"), 6, 18);
    assert!(message.contains("above 0"), "{message}");
    let errors = errors(&redis("    leases:\n      treshold: 5\n"));
    assert_eq!(errors[0].0, 6, "{errors:?}");
}

#[test]
fn old_keys_are_read_only_when_asked() {
    assert!(!store(&redis("")).read_old_keys);
    assert!(store(&redis("    read_old_keys: true\n")).read_old_keys);
    assert!(!store(&redis("    read_old_keys: false\n")).read_old_keys);
    let errors = errors(&redis("    read_old_keys: sometimes\n"));
    assert_eq!(errors[0].0, 5, "{errors:?}");
}
