//! Fuzz target `stream_deltas`: executionkit::internals::fuzz::stream_deltas (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| executionkit::internals::fuzz::stream_deltas(data));
