//! Fuzz target `reply`: executionkit::internals::fuzz::reply (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| executionkit::internals::fuzz::reply(data));
