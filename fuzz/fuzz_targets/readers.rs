#![no_main]
//! Fuzz target: see `recbot::fuzzing::readers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| recbot::fuzzing::readers(data));
