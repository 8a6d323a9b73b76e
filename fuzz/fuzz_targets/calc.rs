//! Fuzz target `calc`: ek's calculator tool (`fuzz_one` in crates/executionkit-cli/src/calc.rs).
#![no_main]
#![allow(dead_code)]

#[path = "../../crates/executionkit-cli/src/calc.rs"]
mod calc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| calc::fuzz_one(data));
