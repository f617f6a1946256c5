//! `GET /metrics` over a real socket: the counters move with the decisions, and the exposition
//! parses, with a strict line check here and, when Python's `prometheus_client` is installed,
//! with that real parser too.

#![allow(clippy::unwrap_used)] // Test helpers, not only #[test] functions, may unwrap.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use drl_core::{Algorithm, Policy, Rule, Rules};
use drl_testkit::node::TestServer;

fn per_minute(n: u64) -> Policy {
    Policy::per(n, Duration::from_secs(60), Algorithm::default()).unwrap()
}

fn rules() -> Rules {
    Rules::new(
        per_minute(100),
        [Rule {
            user_id: None,
            endpoint: Some("/search".to_owned()),
            limits: vec![per_minute(1)],
            shadow_mode: false,
            abuse_exempt: false,
            backends: Vec::new(),
        }],
    )
    .unwrap()
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict reading of the text format: comments are HELP, TYPE, UNIT or the final EOF; a
/// sample is `name{label="value",...} number`, and belongs to the family last declared.
fn check_exposition(text: &str) {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut family = String::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if line == "# EOF" {
            assert_eq!(i + 1, text.lines().count(), "{}", at());
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(is_name(name), "{}", at());
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram"].contains(&kind),
                        "{}",
                        at()
                    );
                    family = name.to_owned();
                }
                _ => panic!("unknown comment, {}", at()),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{}", at()));
        assert!(value.is_finite() || value.is_infinite(), "{}", at());
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, Some(labels.strip_suffix('}').expect("closing }"))),
            None => (series, None),
        };
        assert!(is_name(name) && name.starts_with(&family), "{}", at());
        for label in labels.into_iter().flat_map(|l| l.split(',')) {
            let (key, value) = label.split_once('=').expect("label=value");
            assert!(is_name(key), "{}", at());
            assert!(
                value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                "{}",
                at()
            );
        }
    }
}

/// Parses `text` with Python's `prometheus_client` (both its Prometheus and its OpenMetrics
/// parser). `None` when Python or the package is not installed.
fn python_parse(text: &str) -> Option<String> {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as prom\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as om\n\
        text = sys.stdin.read()\n\
        names = sorted(f.name + ':' + f.type for f in om(text))\n\
        assert sorted(f.name for f in prom(text)), 'no families'\n\
        print(' '.join(names))\n";
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("python3 with prometheus_client not found: skipping the real parser");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refuses the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[tokio::test]
async fn decisions_are_counted_by_result_and_rule_level() {
    let server = TestServer::start(rules()).await;
    let check = |user: &'static str, endpoint: &'static str| {
        let server = &server;
        async move {
            let body = format!(r#"{{"user_id": "{user}", "endpoint": "{endpoint}"}}"#);
            server.check(&body).await.status
        }
    };
    assert_eq!(check("alice", "/search").await, 200);
    assert_eq!(check("alice", "/search").await, 429);
    assert_eq!(check("bob", "/search").await, 200);
    assert_eq!(check("bob", "/other").await, 200);
    // Refused input is not a decision.
    assert_eq!(check("", "/other").await, 400);

    let response = server.get("/metrics").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{response:?}"
    );
    let text = &response.body;
    let decisions = |result: &str, rule: &str| {
        sample(
            text,
            &format!("drl_decisions_total{{result=\"{result}\",rule=\"{rule}\"}}"),
        )
    };
    assert_eq!(decisions("allowed", "endpoint"), 2.0);
    assert_eq!(decisions("denied", "endpoint"), 1.0);
    assert_eq!(decisions("allowed", "default"), 1.0);
    assert_eq!(decisions("denied", "default"), 0.0);
    assert_eq!(decisions("allowed", "user"), 0.0);
    assert_eq!(sample(text, "drl_check_duration_seconds_count"), 4.0);
    assert_eq!(sample(text, "drl_store_errors_total"), 0.0);
    assert_eq!(sample(text, "drl_config_version"), 1.0);
    // The scrape itself is in flight while it is encoded.
    assert_eq!(sample(text, "drl_http_requests_in_flight"), 1.0);
    // No label per user or endpoint.
    assert!(
        !text.contains("alice") && !text.contains("/search"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_exposition_parses() {
    let server = TestServer::start(rules()).await;
    server
        .check(r#"{"user_id": "carol", "endpoint": "/search"}"#)
        .await;
    let text = server.get("/metrics").await.body;
    check_exposition(&text);
    if let Some(families) = python_parse(&text) {
        for family in [
            "drl_decisions:counter",
            "drl_check_duration_seconds:histogram",
            "drl_http_requests_in_flight:gauge",
            "drl_config_reloads:counter",
            "drl_config_version:gauge",
            "drl_store_errors:counter",
            #[cfg(target_os = "linux")]
            "process_cpu_seconds:counter",
            #[cfg(target_os = "linux")]
            "process_resident_memory_bytes:gauge",
            #[cfg(target_os = "linux")]
            "process_open_fds:gauge",
            #[cfg(target_os = "linux")]
            "process_start_time_seconds:gauge",
        ] {
            assert!(
                families.split(' ').any(|f| f == family),
                "{family}: {families}"
            );
        }
    }
    server.stop().await;
}
