//! Replays every seed input (`fuzz/corpus/<target>/`) and every input a fuzz run found to
//! fail (`fuzz/regressions/<target>/`) through the same entry points the fuzz targets call (the
//! `fuzzing` modules of drl-core, drl-redis and drl-server, compiled only with their `fuzzing`
//! feature, which this crate's tests turn on), so what the fuzzer found stays fixed in the
//! ordinary test suite. `scripts/fuzz.sh` runs the fuzzers themselves.

#![allow(clippy::unwrap_used)] // Test code.

use drl_testkit::fuzz::replay;

// --- drl-core ------------------------------------------------------------------------------------

#[test]
fn duration() {
    replay("duration", drl_core::fuzzing::duration);
}

#[test]
fn key_encoding() {
    replay("key_encoding", drl_core::fuzzing::key_encoding);
}

// --- drl-redis -----------------------------------------------------------------------------------

#[test]
fn redis_key() {
    replay("redis_key", drl_redis::fuzzing::redis_key_names);
}

// --- drl-server ----------------------------------------------------------------------------------

#[test]
fn config() {
    replay("config", drl_server::fuzzing::config);
}

#[test]
fn http_check() {
    replay("http_check", drl_server::fuzzing::http_check);
}

#[test]
fn http1_stream() {
    replay("http1_stream", drl_server::fuzzing::http1_stream);
}

#[test]
fn http_envoy_json() {
    replay("http_envoy_json", drl_server::fuzzing::http_envoy_json);
}

#[test]
fn http_admin() {
    replay("http_admin", drl_server::fuzzing::http_admin);
}

#[test]
fn grpc_native() {
    replay("grpc_native", drl_server::fuzzing::grpc_native);
}

#[test]
fn grpc_envoy() {
    replay("grpc_envoy", drl_server::fuzzing::grpc_envoy);
}
