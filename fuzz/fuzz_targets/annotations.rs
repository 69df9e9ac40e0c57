//! `annotations`: see `portcullis::fuzzing::annotations`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::annotations(data));
