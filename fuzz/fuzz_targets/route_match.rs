//! `route_match`: see `portcullis::fuzzing::route_match`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::route_match(data));
