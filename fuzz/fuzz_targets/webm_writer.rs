#![no_main]
//! Fuzz target: see `recbot::fuzzing::webm_writer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| recbot::fuzzing::webm_writer(data));
