//! Several counters decided as one: multi-limit rules and Envoy-style descriptor requests are
//! all or nothing, also under concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drl_core::{
    Action, Algorithm, DecidedBy, Descriptor, DescriptorRule, DomainRules, Entry, Limiter,
    ManualClock, Policy, Rule, Rules,
};

const MINUTE: Duration = Duration::from_secs(60);

/// Runs a memory-store future, which is ready at once.
fn now<F: std::future::Future>(future: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the memory store answers at once"),
    }
}

fn per(n: u64, window: Duration) -> Policy {
    Policy::per(n, window, Algorithm::default()).expect("a supported policy")
}

fn limiter(rules: Rules) -> (Limiter, ManualClock) {
    drl_testkit::manual_limiter(rules, 1_000_000_000)
}

#[test]
fn a_rule_with_two_limits_admits_only_when_both_have_room() {
    let rule = Rule {
        user_id: Some("u".into()),
        endpoint: None,
        limits: vec![per(2, Duration::from_secs(1)), per(3, MINUTE)],
        shadow_mode: false,
        abuse_exempt: false,
        backends: Vec::new(),
    };
    let (l, clock) = limiter(Rules::new(per(100, MINUTE), [rule]).unwrap());
    assert!(l.check_and_increment("u", "/e"));
    assert!(l.check_and_increment("u", "/e"));
    // The per-second limit is full.
    let d = l.check("u", "/e", 1).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limit, 2);
    clock.advance(Duration::from_secs(2));
    let d = l.check("u", "/e", 1).unwrap();
    assert!(d.allowed);
    // The answer names the limit with the least room: the minute's, now full.
    assert_eq!((d.limit, d.remaining), (3, 0));
    clock.advance(Duration::from_secs(2));
    // The minute is full; the second has room, and the denial was not counted in it.
    let d = l.check("u", "/e", 1).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limit, 3);
    assert!(d.retry_after > Duration::from_secs(50));
    assert_eq!(l.check("u", "/e", 0).unwrap().limit, 3);
}

fn web_rules() -> Rules {
    let limit = |n| Some(Action::Limit(vec![per(n, MINUTE)]));
    Rules::builtin()
        .with_domains([DomainRules {
            domain: "web".into(),
            descriptors: vec![
                DescriptorRule {
                    key: "a".into(),
                    action: limit(1),
                    ..DescriptorRule::default()
                },
                DescriptorRule {
                    key: "b".into(),
                    action: limit(5),
                    ..DescriptorRule::default()
                },
                DescriptorRule {
                    key: "free".into(),
                    action: Some(Action::Unlimited),
                    ..DescriptorRule::default()
                },
                DescriptorRule {
                    key: "trial".into(),
                    action: limit(1),
                    shadow_mode: true,
                    ..DescriptorRule::default()
                },
            ],
            ..Default::default()
        }])
        .expect("valid rules")
}

fn decision(v: &DecidedBy) -> drl_core::Decision {
    match v {
        DecidedBy::Limited { decision, .. } => *decision,
        other => panic!("not limited: {other:?}"),
    }
}

#[test]
fn a_denied_descriptor_counts_nothing_in_the_others() {
    let (l, _clock) = limiter(web_rules());
    let a = [Entry {
        key: "a",
        value: "x",
    }];
    let b = [Entry {
        key: "b",
        value: "x",
    }];
    let both = [
        Descriptor {
            entries: &a,
            hits: 1,
            limit: None,
        },
        Descriptor {
            entries: &b,
            hits: 1,
            limit: None,
        },
    ];
    let first = now(l.check_descriptors("web", &both)).unwrap();
    assert!(first.allowed);
    assert_eq!(decision(&first.statuses[1].decided_by).remaining, 4);
    for _ in 0..3 {
        let again = now(l.check_descriptors("web", &both)).unwrap();
        assert!(!again.allowed);
        assert!(again.statuses[0].over_limit());
        assert!(!again.statuses[1].over_limit());
    }
    // b was counted once, by the admitted request only.
    let b_only = now(l.check_descriptors(
        "web",
        &[Descriptor {
            entries: &b,
            hits: 0,
            limit: None,
        }],
    ))
    .unwrap();
    assert_eq!(decision(&b_only.statuses[0].decided_by).remaining, 4);
}

#[test]
fn unlimited_unmatched_and_shadow_descriptors_never_deny() {
    let (l, _clock) = limiter(web_rules());
    let free = [Entry {
        key: "free",
        value: "x",
    }];
    let none = [Entry {
        key: "nope",
        value: "x",
    }];
    let trial = [Entry {
        key: "trial",
        value: "x",
    }];
    let request = [
        Descriptor {
            entries: &free,
            hits: 1,
            limit: None,
        },
        Descriptor {
            entries: &none,
            hits: 1,
            limit: None,
        },
        Descriptor {
            entries: &trial,
            hits: 1,
            limit: None,
        },
    ];
    for round in 0..3 {
        let outcome = now(l.check_descriptors("web", &request)).unwrap();
        assert!(outcome.allowed, "round {round}");
        assert_eq!(outcome.statuses[0].decided_by, DecidedBy::Unlimited);
        assert_eq!(outcome.statuses[1].decided_by, DecidedBy::NoLimit);
        let DecidedBy::Limited {
            decision, shadow, ..
        } = outcome.statuses[2].decided_by
        else {
            panic!("shadow rule not limited");
        };
        assert!(shadow);
        // The shadow limit is 1: the first round fits, the later ones would be denied.
        assert_eq!(decision.allowed, round == 0);
    }
}

#[test]
fn bad_requests_are_errors() {
    let (l, _clock) = limiter(web_rules());
    let a = [Entry {
        key: "a",
        value: "x",
    }];
    let one = [Descriptor {
        entries: &a,
        hits: 1,
        limit: None,
    }];
    let err = |r: Result<_, drl_core::LimiterError>| r.unwrap_err().to_string();
    assert_eq!(
        err(now(l.check_descriptors("nope", &one))),
        "unknown domain \"nope\""
    );
    assert_eq!(
        err(now(l.check_descriptors("web", &[]))),
        "the request has no descriptors"
    );
    let empty = [Descriptor {
        entries: &[],
        hits: 1,
        limit: None,
    }];
    assert_eq!(
        err(now(l.check_descriptors("web", &empty))),
        "descriptor 0 has no entries"
    );
    assert!(l.store().is_empty());
}

/// Two descriptors over two shared counters, from many threads: every request is counted in
/// both or in neither, so the counters end equal and at most at their limit.
#[test]
fn concurrent_all_or_nothing_requests_count_both_counters_or_neither() {
    let n = 500;
    let rules = Rules::builtin()
        .with_domains([DomainRules {
            domain: "d".into(),
            descriptors: vec![
                DescriptorRule {
                    key: "a".into(),
                    action: Some(Action::Limit(vec![per(n, MINUTE)])),
                    ..DescriptorRule::default()
                },
                DescriptorRule {
                    key: "b".into(),
                    action: Some(Action::Limit(vec![per(n * 10, MINUTE)])),
                    ..DescriptorRule::default()
                },
            ],
            ..Default::default()
        }])
        .unwrap();
    let (l, _clock) = limiter(rules);
    let admitted = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..4 {
            let (l, admitted) = (l.clone(), Arc::clone(&admitted));
            s.spawn(move || {
                for i in 0..400 {
                    // Half the requests carry only `b`, so the two counters would drift apart
                    // if a denial of `a` still counted `b`.
                    let a = [Entry {
                        key: "a",
                        value: "k",
                    }];
                    let b = [Entry {
                        key: "b",
                        value: "k",
                    }];
                    let both = [
                        Descriptor {
                            entries: &a,
                            hits: 1,
                            limit: None,
                        },
                        Descriptor {
                            entries: &b,
                            hits: 1,
                            limit: None,
                        },
                    ];
                    let only_b = [Descriptor {
                        entries: &b,
                        hits: 1,
                        limit: None,
                    }];
                    let request: &[Descriptor<'_>] = if (i + t) % 2 == 0 { &both } else { &only_b };
                    let outcome = now(l.check_descriptors("d", request)).unwrap();
                    if outcome.allowed && request.len() == 2 {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let read = |key: &'static str| {
        let e = [Entry { key, value: "k" }];
        let outcome = now(l.check_descriptors(
            "d",
            &[Descriptor {
                entries: &e,
                hits: 0,
                limit: None,
            }],
        ))
        .unwrap();
        decision(&outcome.statuses[0].decided_by).remaining
    };
    let pairs = admitted.load(Ordering::Relaxed);
    assert_eq!(pairs, n);
    assert_eq!(read("a"), 0);
    // b: every pair admitted, plus every `b`-only request (800, all under b's limit).
    assert_eq!(u64::from(read("b")), n * 10 - pairs - 800);
}
