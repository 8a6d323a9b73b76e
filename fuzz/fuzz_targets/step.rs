//! Fuzz target `step`: ek's `--step` grammar (`fuzz_one` in crates/executionkit-cli/src/step.rs).
#![no_main]
#![allow(dead_code)]

#[path = "../../crates/executionkit-cli/src/step.rs"]
mod step;

libfuzzer_sys::fuzz_target!(|data: &[u8]| step::fuzz_one(data));
