//! Fuzz target `sse_chunked`: executionkit::internals::fuzz::sse_chunked (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| executionkit::internals::fuzz::sse_chunked(data));
