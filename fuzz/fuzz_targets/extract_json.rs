//! Fuzz target `extract_json`: executionkit::internals::fuzz::extract_json (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| executionkit::internals::fuzz::extract_json(data));
