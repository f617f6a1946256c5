//! The shared test vectors: one table of (algorithm, settings, N, T, and a sequence of
//! (time, hits) → decision) that both the Rust algorithms (`drl-core/tests/shared_vectors.rs`) and the
//! Redis Lua scripts (`drl-testkit/tests/redis_vectors.rs`) must reproduce exactly, so the two
//! implementations cannot drift. The table is `algorithms.txt` beside this file:
//!
//! ```text
//! case NAME ALGORITHM N T_SECONDS [precision=P | burst=B]
//! step T_NS HITS -> ALLOWED REMAINING RESET_AFTER_MS RETRY_AFTER_MS
//! ```
//!
//! A `step` line without `-> …` is an input whose expectation `UPDATE_VECTORS=1 cargo test -p
//! drl-core --test shared_vectors` fills in from the Rust algorithm (review the diff before committing).

use std::time::Duration;

use drl_core::{Algorithm, Decision, Policy};

/// The table's text.
pub const TABLE: &str = include_str!("algorithms.txt");

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub header: String,
    pub policy: Policy,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub t_ns: u64,
    pub hits: u32,
    pub expect: Option<Decision>,
}

/// Parses the table; panics with the line number on a malformed line (it is test data).
pub fn parse(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = || -> ! { panic!("algorithms.txt:{}: cannot read {line:?}", n + 1) };
        match words[0] {
            "case" => {
                if words.len() < 5 {
                    bad();
                }
                let mut algorithm = Algorithm::from_name(words[2]).unwrap_or_else(|_| bad());
                for setting in &words[5..] {
                    let (name, value) = setting.split_once('=').unwrap_or_else(|| bad());
                    let value: u64 = value.parse().unwrap_or_else(|_| bad());
                    algorithm = match name {
                        "precision" => algorithm.with_precision(value),
                        "burst" => algorithm.with_burst(value),
                        _ => bad(),
                    }
                    .unwrap_or_else(|_| bad());
                }
                let limit: u64 = words[3].parse().unwrap_or_else(|_| bad());
                let secs: u64 = words[4].parse().unwrap_or_else(|_| bad());
                let policy = Policy::per(limit, Duration::from_secs(secs), algorithm)
                    .unwrap_or_else(|_| bad());
                cases.push(Case {
                    name: words[1].to_owned(),
                    header: line.to_owned(),
                    policy,
                    steps: Vec::new(),
                });
            }
            "step" => {
                let case = cases.last_mut().unwrap_or_else(|| bad());
                let num = |i: usize| -> u64 {
                    words
                        .get(i)
                        .and_then(|w| w.parse().ok())
                        .unwrap_or_else(|| bad())
                };
                let expect = match words.len() {
                    3 => None,
                    8 if words[3] == "->" => Some(Decision {
                        allowed: num(4) == 1,
                        limit: case.policy.requests(),
                        remaining: num(5) as u32,
                        reset_after: Duration::from_millis(num(6)),
                        retry_after: Duration::from_millis(num(7)),
                    }),
                    _ => bad(),
                };
                case.steps.push(Step {
                    t_ns: num(1),
                    hits: num(2) as u32,
                    expect,
                });
            }
            _ => bad(),
        }
    }
    cases
}

/// One step line with its decision.
pub fn step_line(step: &Step, d: &Decision) -> String {
    format!(
        "step {} {} -> {} {} {} {}",
        step.t_ns,
        step.hits,
        u8::from(d.allowed),
        d.remaining,
        d.reset_after.as_millis(),
        d.retry_after.as_millis()
    )
}
