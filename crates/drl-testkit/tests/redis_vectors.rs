//! The Redis Lua scripts against the shared test vectors (`drl-testkit/src/vectors/`), on a real
//! `redis-server`: the same (time, hits) sequences must give the same decisions as the Rust
//! algorithms, field for field. (Here rather than in drl-redis: it needs drl-redis's `test-clock`
//! feature, which the kit's tests turn on.)

use drl_testkit::redis as support;
use drl_testkit::vectors;

use drl_redis::{Consistency, RedisConfig, RedisStore};

#[tokio::test]
async fn the_scripts_reproduce_the_shared_vectors() {
    let redis = support::Redis::start();
    let mut config = RedisConfig::new(vec![redis.url()]);
    config.consistency = Consistency::Fast;
    config.timeout = std::time::Duration::from_secs(2);
    let store = RedisStore::new(&config).expect("store");
    let cases = vectors::parse(vectors::TABLE);
    assert!(cases.len() >= 12);
    let mut checked = 0;
    for case in &cases {
        let identity = format!("vector:{}", case.name);
        for (i, step) in case.steps.iter().enumerate() {
            let got = store
                .check_at_test_time(identity.as_bytes(), &case.policy, step.hits, step.t_ns)
                .await
                .unwrap_or_else(|e| panic!("{} step {i}: {e}", case.name));
            let want = step.expect.expect("expectation");
            assert_eq!(
                got, want,
                "{} step {i}: t = {} ns, hits {} ({})",
                case.name, step.t_ns, step.hits, case.header
            );
            checked += 1;
        }
    }
    assert!(checked >= 300);
}
