//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' bodies
//! (`executionkit::internals::fuzz`), so every input the fuzzer kept, and every crash it found,
//! stays a test under `cargo test`. scripts/fuzz.sh grows the corpus.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use executionkit::internals::fuzz;

/// Runs every file of `fuzz/corpus/<target>/` through `body`, naming the file that fails.
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
fn reply_corpus() {
    replay("reply", fuzz::reply);
}

#[test]
fn sse_chunked_corpus() {
    replay("sse_chunked", fuzz::sse_chunked);
}

#[test]
fn stream_deltas_corpus() {
    replay("stream_deltas", fuzz::stream_deltas);
}

#[test]
fn extract_json_corpus() {
    replay("extract_json", fuzz::extract_json);
}

/// Found by `sse_chunked` (fuzz/corpus/sse_chunked/crash-ba29…): a complete event before a
/// line over the limit. Given in one chunk, the limit's error came first and the event was never
/// parsed; in small chunks, the event was parsed (and failed) first. Now the whole lines before
/// the byte that passes a limit always go on first.
#[test]
fn a_complete_event_before_an_over_long_line_is_decoded_the_same_however_cut() {
    let mut data = b"\x05data: {\"not json\r\n\r\ndata: ".to_vec();
    data.extend(std::iter::repeat_n(b'a', 600));
    fuzz::sse_chunked(&data);
    let mut data =
        b"\x09data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n".to_vec();
    data.extend(std::iter::repeat_n(b'b', 600));
    fuzz::sse_chunked(&data);
}
