//! Replays every seed input (`fuzz/corpus/<target>/`) and every input a fuzz run found to
//! fail (`fuzz/regressions/<target>/`) through the same entry points the fuzz targets call
//! (`drl_core::fuzzing`), so what the fuzzer found stays fixed in the ordinary test suite.
//! `scripts/fuzz.sh` runs the fuzzers themselves.

#![allow(clippy::unwrap_used)] // Test code.

use drl_testkit::fuzz::replay;

#[test]
fn duration() {
    replay("duration", drl_core::fuzzing::duration);
}

#[test]
fn key_encoding() {
    replay("key_encoding", drl_core::fuzzing::key_encoding);
}
