//! The Rust algorithms against the shared test vectors (`vectors/algorithms.txt`); the Redis
//! scripts are held to the same table by `drl-redis/tests/shared_vectors.rs`.

use drl_testkit::vectors;

use drl_core::Algorithm;
use drl_core::Decision;
use drl_core::Policy;
use drl_core::algorithm::{FixedWindow, LimitState, SlidingLog, SlidingWindow, TokenBucket};

fn run<S: LimitState>(policy: &Policy, steps: &[vectors::Step]) -> Vec<Decision> {
    let mut state = S::fresh(policy);
    steps
        .iter()
        .map(|s| state.check(policy, s.t_ns, s.hits))
        .collect()
}

fn decide(case: &vectors::Case) -> Vec<Decision> {
    match case.policy.algorithm() {
        Algorithm::SlidingWindow { .. } => run::<SlidingWindow>(&case.policy, &case.steps),
        Algorithm::SlidingLog => run::<SlidingLog>(&case.policy, &case.steps),
        Algorithm::FixedWindow => run::<FixedWindow>(&case.policy, &case.steps),
        Algorithm::TokenBucket { .. } => run::<TokenBucket>(&case.policy, &case.steps),
    }
}

#[test]
fn the_rust_algorithms_reproduce_the_shared_vectors() {
    let cases = vectors::parse(vectors::TABLE);
    assert!(cases.len() >= 12, "the table lost cases");
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        // Fill in the expectations from the Rust algorithms, keeping comments and order.
        let mut out = String::new();
        let mut decisions = cases.iter().map(|c| (c, decide(c)));
        let mut current: Option<(&vectors::Case, Vec<Decision>, usize)> = None;
        for line in vectors::TABLE.lines() {
            if line.starts_with("case ") {
                let (case, d) = decisions.next().expect("a case per header");
                current = Some((case, d, 0));
                out.push_str(line);
            } else if line.starts_with("step ") {
                let (case, d, i) = current.as_mut().expect("a step inside a case");
                out.push_str(&vectors::step_line(&case.steps[*i], &d[*i]));
                *i += 1;
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../drl-testkit/src/vectors/algorithms.txt"
        );
        std::fs::write(path, out).expect("write the table");
        return;
    }
    let mut steps = 0;
    for case in &cases {
        let got = decide(case);
        for (i, (step, d)) in case.steps.iter().zip(&got).enumerate() {
            let want = step
                .expect
                .unwrap_or_else(|| panic!("{}: step {i} has no expectation", case.name));
            assert_eq!(
                *d, want,
                "{} step {i} (t = {} ns, hits {})",
                case.name, step.t_ns, step.hits
            );
            steps += 1;
        }
    }
    assert!(steps >= 300, "only {steps} steps");
}
