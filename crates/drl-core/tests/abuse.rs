//! Abuse protection and shadow mode through the `Limiter`: users that keep hitting their limits
//! are banned (without touching their counters) and escalate on repeat; blocks and the config's
//! blocklist deny at once; rules can opt out; shadow mode answers allowed and reports it.

use std::time::Duration;

use drl_core::abuse::AbusePolicy;
use drl_core::{
    Algorithm, DecidedBy, Descriptor, DescriptorRule, DomainRules, Entry, Limiter, ManualClock,
    Policy, Rule, Rules,
};

const MINUTE: Duration = Duration::from_secs(60);

fn per_minute(n: u64) -> Policy {
    Policy::per(n, MINUTE, Algorithm::default()).expect("a supported policy")
}

/// 2 per minute; more than 3 denials in 10 s ban for 60 s, doubling up to 200 s.
fn abuse() -> AbusePolicy {
    AbusePolicy::new(
        3,
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_secs(200),
        2,
    )
    .expect("valid abuse settings")
}

fn limiter(rules: Rules) -> (Limiter, ManualClock) {
    drl_testkit::manual_limiter(rules, 1_000_000_000)
}

#[test]
fn repeated_denials_ban_then_escalate_and_bans_touch_no_counter() {
    let rules = Rules::only_default(per_minute(2)).with_abuse(Some(abuse()));
    let (l, clock) = limiter(rules);
    assert!(l.check_and_increment("u", "/a"));
    assert!(l.check_and_increment("u", "/a"));
    for _ in 0..3 {
        let c = l.check_ruled("u", "/a", 1).unwrap();
        assert!(!c.decision.allowed && !c.banned && c.new_ban.is_none());
    }
    // The fourth denial within 10 s bans.
    let c = l.check_ruled("u", "/a", 1).unwrap();
    assert_eq!(c.new_ban.as_ref().map(|b| b.strike), Some(1));
    // Banned everywhere, even where the limit has room, with the ban's time as retry_after.
    let c = l.check_ruled("u", "/other", 1).unwrap();
    assert!(c.banned && !c.decision.allowed);
    assert_eq!(c.decision.retry_after, Duration::from_secs(60));
    assert!(l.check_ruled("v", "/other", 1).unwrap().decision.allowed);
    clock.advance(Duration::from_secs(30));
    assert!(!l.check_and_increment("u", "/other"));
    // The ban counted nothing: /other still has both requests once it ends.
    clock.advance(Duration::from_secs(31));
    assert_eq!(l.check("u", "/other", 0).unwrap().remaining, 2);
    // Released; hammering again bans for twice as long.
    for _ in 0..6 {
        l.check("u", "/a", 1).unwrap();
    }
    let c = l.check_ruled("u", "/a", 1).unwrap();
    assert!(c.banned);
    assert_eq!(c.decision.retry_after, Duration::from_secs(120));
    assert_eq!(l.bans().list(l.now_ns())[0].strike, 2);
}

#[test]
fn exempt_rules_neither_count_offenses_nor_obey_automatic_bans() {
    let mut health = Rule::new(None, Some("/health"), per_minute(1));
    health.abuse_exempt = true;
    let rules = Rules::new(per_minute(1), [health])
        .expect("valid rules")
        .with_abuse(Some(abuse()));
    let (l, _clock) = limiter(rules);
    for _ in 0..10 {
        l.check("u", "/health", 1).unwrap();
    }
    assert!(l.bans().list(l.now_ns()).is_empty(), "no offense counted");
    for _ in 0..5 {
        l.check("u", "/a", 1).unwrap();
    }
    assert_eq!(l.bans().list(l.now_ns()).len(), 1);
    assert!(l.check_ruled("u", "/b", 1).unwrap().banned);
    // The exempt rule still applies its own limit, not the ban.
    let c = l.check_ruled("u", "/health", 1).unwrap();
    assert!(!c.banned);
    // A manual block applies everywhere.
    l.bans().block("u", None);
    assert!(l.check_ruled("u", "/health", 1).unwrap().banned);
}

#[test]
fn blocks_and_the_blocklist_deny_at_once_and_unblock_restores() {
    let rules = Rules::only_default(per_minute(5)).with_blocklist(["mallory".to_owned()]);
    let (l, clock) = limiter(rules);
    let c = l.check_ruled("mallory", "/a", 1).unwrap();
    assert!(c.banned && !c.decision.allowed);
    assert!(!l.check_and_increment("mallory", "/a"));
    l.bans().block("eve", Some(l.now_ns() + 5_000_000_000));
    assert!(!l.check_and_increment("eve", "/a"));
    clock.advance(Duration::from_secs(5));
    assert!(l.check_and_increment("eve", "/a"));
    l.bans().block("eve", None);
    assert!(!l.check_and_increment("eve", "/a"));
    assert!(l.bans().unblock("eve"));
    assert!(l.check_and_increment("eve", "/a"));
    assert_eq!(l.check("eve", "/a", 0).unwrap().remaining, 3);
}

#[test]
fn shadow_mode_answers_allowed_and_says_it_would_have_denied() {
    let mut trial = Rule::new(Some("u"), None, per_minute(1));
    trial.shadow_mode = true;
    let (l, _clock) = limiter(Rules::new(per_minute(1), [trial]).expect("valid rules"));
    assert!(l.check_and_increment("u", "/a"));
    let c = l.check_ruled("u", "/a", 1).unwrap();
    assert!(c.decision.allowed && c.shadow_denied);
    assert!(l.check_and_increment("v", "/a"));
    assert!(
        !l.check_and_increment("v", "/a"),
        "rules without shadow mode still deny"
    );

    let global = Rules::only_default(per_minute(1)).with_shadow_mode(true);
    let (l, _clock) = limiter(global.with_blocklist(["m".to_owned()]));
    for user in ["x", "x", "x", "m"] {
        let c = l.check_ruled(user, "/a", 1).unwrap();
        assert!(c.decision.allowed, "{user}");
    }
    assert!(l.check_ruled("x", "/a", 1).unwrap().shadow_denied);
    assert!(l.check_ruled("m", "/a", 1).unwrap().banned);
}

/// Runs a memory-store future, which is ready at once.
fn now<F: std::future::Future>(future: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the memory store answers at once"),
    }
}

#[test]
fn envoy_requests_are_banned_by_their_user_entry() {
    let rules = Rules::builtin()
        .with_domains([DomainRules {
            domain: "web".into(),
            descriptors: vec![DescriptorRule {
                key: "user_id".into(),
                action: Some(drl_core::Action::Limit(vec![per_minute(1)])),
                ..DescriptorRule::default()
            }],
            ..Default::default()
        }])
        .expect("valid rules")
        .with_abuse(Some(abuse()));
    let (l, _clock) = limiter(rules);
    let entries = [Entry {
        key: "user_id",
        value: "bot",
    }];
    let request = [Descriptor {
        entries: &entries,
        hits: 1,
        limit: None,
    }];
    let mut banned_by = None;
    for i in 0..6 {
        let outcome = now(l.check_descriptors("web", &request)).expect("valid request");
        if !outcome.new_bans.is_empty() {
            banned_by = Some(i);
        }
    }
    // One admitted, three denials tolerated, the fifth request's denial bans.
    assert_eq!(banned_by, Some(4));
    let outcome = now(l.check_descriptors("web", &request)).expect("valid request");
    assert!(!outcome.allowed);
    assert!(matches!(
        outcome.statuses[0].decided_by,
        DecidedBy::Blocked { .. }
    ));
    // The native API sees the same ban.
    assert!(l.check_ruled("bot", "/x", 1).expect("valid").banned);
}
