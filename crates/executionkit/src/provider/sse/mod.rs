//! Decoding of streamed chat completions (server-sent events).
//!
//! The byte stream is split into SSE events by the `eventsource-stream` crate; this module turns
//! each event's `data` into [`StreamEvent`](crate::StreamEvent)s and accumulates the final
//! [`LlmResponse`](crate::LlmResponse):
//!
//! - text deltas of choice 0 (`choices[i].delta.content` where `choices[i].index` is 0); an
//!   empty string is not yielded (the reference yields it; it carries nothing, and yielding it
//!   would close the engine's retry-before-first-delta window);
//! - tool-call deltas of choice 0, accumulated by their `index` (some servers repeat `id`,
//!   `type` and `function.name` in every delta: a repeated id or name is not duplicated);
//! - usage from any chunk that carries a `usage` object (the last one wins);
//! - the finish reason of choice 0.
//!
//! A stream is complete when it delivered a finish reason or `[DONE]`; [`StreamAccumulator::finish`]
//! reports a stream that ended with neither as a `provider` error ("stream ended early").
//!
//! # Limits
//!
//! What one stream can make the client hold is bounded by [`StreamLimits`] (each limit passed
//! is a `provider` error naming it, e.g. `StreamLimits::max_line_bytes`):
//!
//! | limit | default | counted |
//! |---|---|---|
//! | `max_stream_bytes` | 64 MiB | raw bytes of the whole stream |
//! | `max_line_bytes` | 1 MiB | raw bytes of one line (since the last `\n` or `\r`) |
//! | `max_event_bytes` | 1 MiB | raw bytes of one event (its lines up to the blank line), and its `data` |
//! | `max_text_bytes` | 16 MiB | accumulated text |
//! | `max_tool_call_bytes` | 1 MiB | one tool call's name and arguments |
//! | `max_tool_calls` | 128 | tool calls of the stream |
//!
//! The raw-byte limits are enforced by an adapter that goes in front of the SSE parser (the
//! provider chains response body → idle timeout → raw-byte limits → `eventsource-stream`),
//! before that parser buffers anything; the adapter also passes the bytes on in pieces of
//! whole lines, which keeps the parser's work linear. The others are enforced by
//! [`StreamAccumulator`]. A tool-call delta finds its call by `index` in O(1).
//!
//! ```
//! use executionkit::internals::sse::StreamAccumulator;
//! use executionkit::StreamEvent;
//! let mut acc = StreamAccumulator::new();
//! let mut out = Vec::new();
//! acc.push_data(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#, &mut out).unwrap();
//! acc.push_data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#, &mut out).unwrap();
//! acc.push_data("[DONE]", &mut out).unwrap();
//! assert_eq!(out, vec![StreamEvent::TextDelta("Hi".into())]);
//! let r = acc.finish().unwrap();
//! assert_eq!((r.content(), r.finish_reason()), ("Hi", Some("stop")));
//! ```

// Some items serve only the crate's tests and benchmarks (through `internals`).
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::redact::redact;
use crate::text::prefix;

mod accumulator;
mod byte_limits;
mod idle;
mod limits;
#[cfg(test)]
mod tests;
mod tool_calls;

pub use accumulator::StreamAccumulator;
pub(crate) use byte_limits::{ByteLimitError, ByteLimits};
pub(crate) use idle::{IdleError, IdleTimeout};

/// Events read past a stream's end marker at most, by [`drain_tail`].
const MAX_TAIL_EVENTS: usize = 16;
/// How long [`drain_tail`] waits for the end of a body after its end marker.
const TAIL_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads what is left of a stream whose end marker (`[DONE]`, `message_stop`) was seen, for
/// at most [`TAIL_GRACE`] and [`MAX_TAIL_EVENTS`] events: when the body ends (a server sends
/// its end right after the marker), the transport sees it and the connection goes back to the
/// pool instead of being closed (found by `tests/chaos.rs`: each streamed call opened a new
/// connection). A body that goes on, or ends later, is dropped (its connection closed) as
/// before; what is read here is ignored.
pub(crate) async fn drain_tail<S: futures::Stream + Unpin>(events: &mut S) {
    use futures::StreamExt;
    let _ = tokio::time::timeout(TAIL_GRACE, async {
        for _ in 0..MAX_TAIL_EVENTS {
            if events.next().await.is_none() {
                return;
            }
        }
    })
    .await;
}
pub use limits::{
    DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_STREAM_BYTES,
    DEFAULT_MAX_TEXT_BYTES, DEFAULT_MAX_TOOL_CALL_BYTES, StreamLimits,
};

fn provider_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Provider, msg)
}

/// The error of a stream that passed one of its [`StreamLimits`]: `what` is over `limit`
/// (`field` names the setting).
fn limit_err(what: &str, limit: impl std::fmt::Display, unit: &str, field: &str) -> Error {
    provider_err(format!(
        "Provider stream exceeded a limit: {what} is over {limit} {unit} (StreamLimits::{field})"
    ))
}

/// One SSE line, classified as the reference (§5.5) does.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SseLine {
    /// A `data:` line holding a JSON object.
    Data(Map<String, Value>),
    /// `data: [DONE]`, the end marker.
    Done,
    /// Anything else: blank lines, comments (`: …`), `event:`/`id:`/`retry:` fields.
    Ignored,
}

/// Classifies one SSE line (trimmed): `data: <JSON object>`, `data: [DONE]`, or ignored. A
/// `data:` payload that is not JSON, or not a JSON object, is a `provider` error.
///
/// ```
/// use executionkit::internals::sse::{parse_sse_line, SseLine};
/// assert!(matches!(parse_sse_line(r#"data: {"a": 1}"#).unwrap(), SseLine::Data(m) if m["a"] == 1));
/// assert_eq!(parse_sse_line("data: [DONE]").unwrap(), SseLine::Done);
/// assert_eq!(parse_sse_line(": keep-alive").unwrap(), SseLine::Ignored);
/// assert!(parse_sse_line("data: not-json{").unwrap_err().is_provider());
/// ```
pub fn parse_sse_line(line: &str) -> Result<SseLine> {
    let line = line.trim();
    match line.strip_prefix("data:") {
        Some(payload) => parse_sse_data(payload),
        None => Ok(SseLine::Ignored),
    }
}

/// Classifies the `data` of one SSE event: `[DONE]`, a JSON object, or (empty) ignored.
///
/// ```
/// use executionkit::internals::sse::{parse_sse_data, SseLine};
/// assert_eq!(parse_sse_data(" [DONE] ").unwrap(), SseLine::Done);
/// let e = parse_sse_data("[1, 2]").unwrap_err();
/// assert!(e.message().contains("not a JSON object"));
/// ```
pub fn parse_sse_data(data: &str) -> Result<SseLine> {
    let data = data.trim();
    if data.is_empty() {
        return Ok(SseLine::Ignored);
    }
    if data == "[DONE]" {
        return Ok(SseLine::Done);
    }
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(m)) => Ok(SseLine::Data(m)),
        Ok(_) => Err(provider_err(format!(
            "Provider sent an SSE data frame that is not a JSON object: {}",
            redact(prefix(data, 200))
        ))),
        Err(_) => Err(provider_err(format!(
            "Provider sent a non-JSON SSE data frame: {}",
            redact(prefix(data, 200))
        ))),
    }
}
