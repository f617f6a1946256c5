#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drl_server::fuzzing::http1_stream(data));
