//! Replays every seed input (`fuzz/corpus/<target>/`) and every input a fuzz run found to
//! fail (`fuzz/regressions/<target>/`) through the same entry points the fuzz targets call
//! (`drl_redis::fuzzing`), so what the fuzzer found stays fixed in the ordinary test suite.
//! `scripts/fuzz.sh` runs the fuzzers themselves.

#![allow(clippy::unwrap_used)] // Test code.

use drl_testkit::fuzz::replay;

#[test]
fn redis_key() {
    replay("redis_key", drl_redis::fuzzing::redis_key_names);
}
