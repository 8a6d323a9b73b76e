//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) of ek's own parsers through the
//! fuzz targets' bodies (each module's `fuzz_one`), so every input the fuzzer kept, and every
//! crash it found, stays a test under `cargo test`. scripts/fuzz.sh grows the corpus.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", f.display());
    }
}

#[test]
fn calc_corpus() {
    replay("calc", crate::calc::fuzz_one);
}

#[test]
fn step_corpus() {
    replay("step", crate::step::fuzz_one);
}

#[test]
fn config_corpus() {
    replay("config", crate::config::fuzz_one);
}
