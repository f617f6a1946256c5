#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drl_redis::fuzzing::redis_key_names(data));
