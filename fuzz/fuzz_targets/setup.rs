#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| appproxy_authgate::fuzzing::setup(data));
