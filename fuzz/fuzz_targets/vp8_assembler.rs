#![no_main]
//! Fuzz target: see `recbot::fuzzing::vp8_assembler`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| recbot::fuzzing::vp8_assembler(data));
