//! Fuzz target `config`: ek's config file checker (`fuzz_one` in
//! crates/executionkit-cli/src/config.rs).
#![no_main]
#![allow(dead_code, unused_imports)]

// An inline module with a path, so that config.rs finds its own `config/when.rs` and
// `config/build.rs`.
#[path = "../../crates/executionkit-cli/src"]
mod cli {
    pub mod config;
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| cli::config::fuzz_one(data));
