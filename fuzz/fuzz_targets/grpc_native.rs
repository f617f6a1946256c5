#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drl_server::fuzzing::grpc_native(data));
