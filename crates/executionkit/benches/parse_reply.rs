//! The reply parser: `parse_reply` (typed, borrowing serde pass with the general parser as
//! fallback) against `parse_completion` (the general parser over `serde_json::Value`), on the
//! replies servers usually send (divan).
//!
//! `cargo bench -p executionkit --bench parse_reply`. Figures go to `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use divan::{Bencher, black_box};
use executionkit::internals::parse::{parse_completion, parse_reply};

fn main() {
    divan::main();
}

/// A typical short reply (the shape the HTTP benches serve).
const TEXT: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","system_fingerprint":"fp_1","choices":[{"index":0,"message":{"role":"assistant","content":"The capital of France is Paris.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20,"prompt_tokens_details":{"cached_tokens":0}}}"#;

/// A reply with two tool calls.
const TOOLS: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},{"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{\"tz\":\"Europe/Paris\"}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":80,"completion_tokens":40,"total_tokens":120}}"#;

/// A reply with 4 KiB of prose holding escapes (newlines, quotes).
fn long_text() -> Vec<u8> {
    let para = "A line of the answer, with \\\"quotes\\\" and a newline.\\n";
    let content = para.repeat(4096 / para.len());
    format!(
        r#"{{"id":"c","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":900}}}}"#
    )
    .into_bytes()
}

#[divan::bench]
fn text_parse_reply(bencher: Bencher) {
    assert_eq!(parse_reply(TEXT).unwrap(), parse_completion(TEXT).unwrap());
    bencher.bench(|| parse_reply(black_box(TEXT)).unwrap());
}

#[divan::bench]
fn text_parse_completion(bencher: Bencher) {
    bencher.bench(|| parse_completion(black_box(TEXT)).unwrap());
}

#[divan::bench]
fn tools_parse_reply(bencher: Bencher) {
    assert_eq!(
        parse_reply(TOOLS).unwrap(),
        parse_completion(TOOLS).unwrap()
    );
    bencher.bench(|| parse_reply(black_box(TOOLS)).unwrap());
}

#[divan::bench]
fn tools_parse_completion(bencher: Bencher) {
    bencher.bench(|| parse_completion(black_box(TOOLS)).unwrap());
}

#[divan::bench]
fn long_text_parse_reply(bencher: Bencher) {
    let body = long_text();
    assert_eq!(
        parse_reply(&body).unwrap(),
        parse_completion(&body).unwrap()
    );
    bencher.bench(|| parse_reply(black_box(&body)).unwrap());
}

#[divan::bench]
fn long_text_parse_completion(bencher: Bencher) {
    let body = long_text();
    bencher.bench(|| parse_completion(black_box(&body)).unwrap());
}
