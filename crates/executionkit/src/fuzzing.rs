//! The bodies of the fuzz targets: one function per target, each taking the fuzzer's bytes and
//! panicking only when an invariant breaks. `fuzz/` (cargo-fuzz) calls them, and the corpus
//! replay test (`tests/fuzz_corpus.rs`) runs every committed corpus file through them under
//! `cargo test`, so a crash found once stays a regression test.
//!
//! The invariants, besides "never panics":
//!
//! - [`reply`]: a parsed reply is re-parsed identically from its own parts where that is
//!   defined (its content is bounded by the input's size);
//! - [`sse_chunked`]: decoding a stream gives the same events, the same response and the same
//!   error however the bytes are cut into chunks (through the same byte limits and SSE parser as
//!   a live stream), and never holds more text than the limits allow;
//! - [`stream_deltas`]: JSON chunks pushed one by one never give more tool calls, or a longer
//!   tool call, than the limits allow, and the final text is the concatenation of the deltas;
//! - [`extract_json`]: what is extracted is an object or an array, and extracting from its own
//!   serialisation gives it back.
//!
//! ```
//! use executionkit::internals::fuzz;
//! fuzz::reply(br#"{"choices":[{"message":{"content":"hi"}}]}"#);
//! fuzz::sse_chunked(b"\x03data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n");
//! fuzz::stream_deltas(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n[DONE]");
//! fuzz::extract_json(b"Sure: {\"a\": [1, 2]} done");
//! ```

use bytes::Bytes;
use futures::{StreamExt, executor::block_on, stream};

use crate::engine::json;
use crate::provider::parse::parse_reply;
use crate::provider::sse::{ByteLimits, StreamAccumulator, StreamLimits};
use crate::provider::{LlmResponse, StreamEvent};

/// Small limits, so that short inputs reach every limit.
fn small_limits() -> StreamLimits {
    StreamLimits {
        max_stream_bytes: 4096,
        max_line_bytes: 512,
        max_event_bytes: 768,
        max_text_bytes: 256,
        max_tool_call_bytes: 128,
        max_tool_calls: 4,
    }
}

/// A whole (non-streamed) reply through the reply parser.
///
/// ```
/// executionkit::internals::fuzz::reply(b"{not json");
/// ```
pub fn reply(data: &[u8]) {
    if let Ok(r) = parse_reply(data) {
        // Nothing in a reply can be longer than the reply itself.
        assert!(
            r.content().len() <= data.len(),
            "content longer than its reply"
        );
        for call in r.tool_calls() {
            assert!(
                call.name.len() <= data.len(),
                "tool name longer than its reply"
            );
        }
    }
}

/// What decoding one stream gave: the events, then the response or the error (kind and
/// message).
type Decoded = (Vec<StreamEvent>, Result<LlmResponse, (String, String)>);

/// Decodes `chunks` the way a live stream is decoded: raw-byte limits, then the SSE parser,
/// then the accumulator, stopping at `[DONE]`.
fn decode(chunks: Vec<Bytes>, limits: &StreamLimits) -> Decoded {
    let body = stream::iter(
        chunks
            .into_iter()
            .map(Ok::<Bytes, std::convert::Infallible>),
    );
    let mut events = eventsource_stream::EventStream::new(ByteLimits::new(body, limits));
    let mut acc = StreamAccumulator::with_limits(*limits);
    let mut out = Vec::new();
    let failed = |kind: &str, message: String| Err((kind.to_owned(), message));
    block_on(async {
        while !acc.saw_done() {
            match events.next().await {
                None => break,
                Some(Ok(event)) => {
                    if let Err(e) = acc.push_data(&event.data, &mut out) {
                        return (out, failed(e.kind().as_str(), e.message().to_owned()));
                    }
                }
                // The parser's own errors carry no position that depends on the chunking.
                Some(Err(e)) => return (out, failed("sse", e.to_string())),
            }
        }
        let finished = acc
            .finish()
            .map_err(|e| (e.kind().as_str().to_owned(), e.message().to_owned()));
        (out, finished)
    })
}

/// A streamed reply, cut into chunks by the input: the first byte seeds the chunk sizes
/// (1..=16 bytes each), the rest is the stream. Decoded whole and decoded in chunks, the
/// results must be equal.
///
/// ```
/// executionkit::internals::fuzz::sse_chunked(b"\x01data: [DONE]\n\n");
/// ```
pub fn sse_chunked(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let limits = small_limits();
    let whole = decode(vec![Bytes::copy_from_slice(body)], &limits);
    let mut chunks = Vec::new();
    let mut rest = body;
    let mut state = u32::from(seed) | 1;
    while !rest.is_empty() {
        // A small xorshift: chunk sizes vary along the stream, reproducibly.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (state % 16 + 1) as usize;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(Bytes::copy_from_slice(chunk));
        rest = tail;
    }
    let chunked = decode(chunks, &limits);
    assert_eq!(whole, chunked, "decoding depends on how the bytes were cut");
    let text: usize = whole
        .0
        .iter()
        .map(|e| match e {
            StreamEvent::TextDelta(t) => t.len(),
            _ => 0,
        })
        .sum();
    assert!(
        text <= limits.max_text_bytes,
        "more text than max_text_bytes"
    );
}

/// Stream chunks as JSON documents, one per line, pushed to the accumulator one by one (the
/// tool-call delta assembly and its limits).
///
/// ```
/// executionkit::internals::fuzz::stream_deltas(br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{}"}}]}}]}"#);
/// ```
pub fn stream_deltas(data: &[u8]) {
    let limits = small_limits();
    let mut acc = StreamAccumulator::with_limits(limits);
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(data).lines() {
        if acc.push_data(line, &mut out).is_err() {
            return;
        }
    }
    let deltas: String = out
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        acc.text(),
        deltas,
        "text is not the concatenation of its deltas"
    );
    if let Ok(r) = acc.finish() {
        assert_eq!(
            r.content(),
            deltas,
            "content is not the concatenation of its deltas"
        );
        assert!(
            r.tool_calls().len() <= limits.max_tool_calls,
            "too many tool calls"
        );
        for call in r.tool_calls() {
            assert!(
                call.name.len() <= limits.max_tool_call_bytes,
                "tool call too long"
            );
        }
    }
}

/// JSON extraction from a model's text.
///
/// ```
/// executionkit::internals::fuzz::extract_json(b"[[[[");
/// ```
pub fn extract_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(v) = json::extract_json(&text) {
        assert!(v.is_object() || v.is_array(), "extracted a scalar");
        let again = json::extract_json(&v.to_string()).map_err(|e| e.to_string());
        assert_eq!(again.as_ref(), Ok(&v), "extraction is not stable");
    }
}
