#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| appproxy_provider::api::fuzzing::json_bodies(data));
