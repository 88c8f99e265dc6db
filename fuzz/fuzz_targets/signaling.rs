#![no_main]
//! Fuzz target: see `recbot::fuzzing::signaling`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| recbot::fuzzing::signaling(data));
