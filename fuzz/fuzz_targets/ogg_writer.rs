#![no_main]
//! Fuzz target: see `recbot::fuzzing::ogg_writer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| recbot::fuzzing::ogg_writer(data));
