//! Decoding of streamed chat completions (server-sent events).
//!
//! The byte stream is split into SSE events by the `eventsource-stream` crate; this module turns
//! each event's `data` into [`StreamEvent`]s and accumulates the final [`LlmResponse`]:
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
//! use executionkit::provider::sse::StreamAccumulator;
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

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde_json::{Map, Value};

use super::parse::{MAX_TOOL_CALLS, finish_reason, parse_tool_calls, parse_usage, truncate_chars};
use super::{Choice, LlmResponse, StreamEvent, Usage};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::redact;

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

/// One mebibyte.
const MIB: usize = 1 << 20;

/// Bounds on what one streamed reply may make the client hold. Every limit passed ends the
/// stream with a `provider` error whose message names the limit (`StreamLimits::…`).
///
/// The first three are counted in raw bytes received, before the bytes are split into events
/// (by the byte-stream adapter the provider puts in front of the SSE parser); the others by
/// [`StreamAccumulator`] on what the events carry.
///
/// ```
/// use executionkit::provider::sse::{StreamAccumulator, StreamLimits};
/// let mut limits = StreamLimits::default();
/// assert_eq!(limits.max_text_bytes, 16 << 20);
/// limits.max_text_bytes = 4;
/// let mut acc = StreamAccumulator::with_limits(limits);
/// let e = acc
///     .push_data(r#"{"choices":[{"delta":{"content":"hello"}}]}"#, &mut Vec::new())
///     .unwrap_err();
/// assert!(e.is_provider());
/// assert!(e.message().contains("StreamLimits::max_text_bytes"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamLimits {
    /// The most raw bytes of one stream ([`DEFAULT_MAX_STREAM_BYTES`]).
    pub max_stream_bytes: u64,
    /// The most raw bytes of one SSE line, its line ending not counted
    /// ([`DEFAULT_MAX_LINE_BYTES`]).
    pub max_line_bytes: usize,
    /// The most bytes of one SSE event: its raw lines with their endings up to the blank line
    /// that ends it, and the `data` the accumulator is given ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub max_event_bytes: usize,
    /// The most bytes of text a stream may accumulate ([`DEFAULT_MAX_TEXT_BYTES`]).
    pub max_text_bytes: usize,
    /// The most bytes of one tool call's name and arguments together
    /// ([`DEFAULT_MAX_TOOL_CALL_BYTES`]).
    pub max_tool_call_bytes: usize,
    /// The most tool calls one stream may carry ([`MAX_TOOL_CALLS`], as in a whole reply).
    pub max_tool_calls: usize,
}

/// The default [`StreamLimits::max_stream_bytes`]: 64 MiB.
///
/// ```
/// assert_eq!(executionkit::provider::sse::DEFAULT_MAX_STREAM_BYTES, 64 << 20);
/// ```
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 64 << 20;

/// The default [`StreamLimits::max_line_bytes`]: 1 MiB.
///
/// ```
/// assert_eq!(executionkit::provider::sse::DEFAULT_MAX_LINE_BYTES, 1 << 20);
/// ```
pub const DEFAULT_MAX_LINE_BYTES: usize = MIB;

/// The default [`StreamLimits::max_event_bytes`]: 1 MiB.
///
/// ```
/// assert_eq!(executionkit::provider::sse::DEFAULT_MAX_EVENT_BYTES, 1 << 20);
/// ```
pub const DEFAULT_MAX_EVENT_BYTES: usize = MIB;

/// The default [`StreamLimits::max_text_bytes`]: 16 MiB.
///
/// ```
/// assert_eq!(executionkit::provider::sse::DEFAULT_MAX_TEXT_BYTES, 16 << 20);
/// ```
pub const DEFAULT_MAX_TEXT_BYTES: usize = 16 * MIB;

/// The default [`StreamLimits::max_tool_call_bytes`]: 1 MiB.
///
/// ```
/// assert_eq!(executionkit::provider::sse::DEFAULT_MAX_TOOL_CALL_BYTES, 1 << 20);
/// ```
pub const DEFAULT_MAX_TOOL_CALL_BYTES: usize = MIB;

impl Default for StreamLimits {
    /// The defaults: 64 MiB per stream, 1 MiB per line and per event, 16 MiB of text, 1 MiB per
    /// tool call, 128 tool calls.
    ///
    /// ```
    /// let l = executionkit::provider::sse::StreamLimits::default();
    /// assert_eq!((l.max_line_bytes, l.max_tool_calls), (1 << 20, 128));
    /// ```
    fn default() -> Self {
        Self {
            max_stream_bytes: DEFAULT_MAX_STREAM_BYTES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_tool_call_bytes: DEFAULT_MAX_TOOL_CALL_BYTES,
            max_tool_calls: MAX_TOOL_CALLS,
        }
    }
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
/// use executionkit::provider::sse::{parse_sse_line, SseLine};
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
/// use executionkit::provider::sse::{parse_sse_data, SseLine};
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
            redact(&truncate_chars(data, 200))
        ))),
        Err(_) => Err(provider_err(format!(
            "Provider sent a non-JSON SSE data frame: {}",
            redact(&truncate_chars(data, 200))
        ))),
    }
}

/// A tool call being assembled from deltas.
#[derive(Debug, Clone, Default, PartialEq)]
struct PartialToolCall {
    index: u32,
    id: String,
    name: String,
    arguments: String,
}

/// Accumulates the chunks of one streamed completion into the final [`LlmResponse`].
///
/// ```
/// use executionkit::provider::sse::StreamAccumulator;
/// let mut acc = StreamAccumulator::new();
/// let mut out = Vec::new();
/// acc.push_data(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#, &mut out).unwrap();
/// assert_eq!(acc.usage().map(|u| u.output_tokens), Some(2));
/// assert!(acc.finish().unwrap_err().message().contains("stream ended early"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamAccumulator {
    limits: StreamLimits,
    text: String,
    tool_calls: Vec<PartialToolCall>,
    /// Where each tool call's `index` is in `tool_calls`.
    slots: HashMap<u32, usize>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    done: bool,
    id: Option<String>,
    model: Option<String>,
}

impl StreamAccumulator {
    /// An empty accumulator.
    ///
    /// ```
    /// assert!(!executionkit::provider::sse::StreamAccumulator::new().is_complete());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty accumulator that enforces `limits` (what it checks: the size of one event's
    /// `data`, the accumulated text, each tool call, and the number of tool calls).
    ///
    /// ```
    /// use executionkit::provider::sse::{StreamAccumulator, StreamLimits};
    /// let mut limits = StreamLimits::default();
    /// limits.max_event_bytes = 8;
    /// let mut acc = StreamAccumulator::with_limits(limits);
    /// assert_eq!(acc.limits().max_event_bytes, 8);
    /// let e = acc.push_data(r#"{"choices":[]}"#, &mut Vec::new()).unwrap_err();
    /// assert!(e.message().contains("StreamLimits::max_event_bytes"));
    /// ```
    #[must_use]
    pub fn with_limits(limits: StreamLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The limits this accumulator enforces.
    ///
    /// ```
    /// use executionkit::provider::sse::{StreamAccumulator, StreamLimits};
    /// assert_eq!(StreamAccumulator::new().limits(), StreamLimits::default());
    /// ```
    #[must_use]
    pub fn limits(&self) -> StreamLimits {
        self.limits
    }

    /// Feeds the `data` of one SSE event, pushing the deltas it carries onto `out`.
    ///
    /// ```
    /// use executionkit::provider::sse::StreamAccumulator;
    /// let mut acc = StreamAccumulator::new();
    /// let mut out = Vec::new();
    /// assert!(acc.push_data("not-json{", &mut out).unwrap_err().is_provider());
    /// ```
    pub fn push_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<()> {
        if data.len() > self.limits.max_event_bytes {
            return Err(limit_err(
                "an event's data",
                self.limits.max_event_bytes,
                "bytes",
                "max_event_bytes",
            ));
        }
        match parse_sse_data(data)? {
            SseLine::Data(chunk) => self.push_chunk(&chunk, out),
            SseLine::Done => {
                self.done = true;
                Ok(())
            }
            SseLine::Ignored => Ok(()),
        }
    }

    /// Feeds one decoded chunk (a `chat.completion.chunk` object).
    ///
    /// ```
    /// use executionkit::provider::sse::StreamAccumulator;
    /// use executionkit::StreamEvent;
    /// let mut acc = StreamAccumulator::new();
    /// let mut out = Vec::new();
    /// let chunk = serde_json::json!({"choices": [{"delta": {"content": "hi"}}]});
    /// acc.push_chunk(chunk.as_object().unwrap(), &mut out).unwrap();
    /// assert_eq!(out, vec![StreamEvent::TextDelta("hi".into())]);
    /// ```
    pub fn push_chunk(
        &mut self,
        chunk: &Map<String, Value>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<()> {
        if self.id.is_none() {
            self.id = chunk.get("id").and_then(Value::as_str).map(str::to_owned);
        }
        if self.model.is_none() {
            self.model = chunk
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        if let Some(Value::Object(u)) = chunk.get("usage") {
            self.usage = Some(parse_usage(u)?);
        }
        let choices = match chunk.get("choices") {
            Some(Value::Array(c)) => c.as_slice(),
            _ => &[],
        };
        if choices.is_empty() {
            // Some servers report a failure mid-stream as a chunk holding only `error`.
            if let Some(err) = chunk.get("error") {
                let detail = match err {
                    Value::Object(e) => e.get("message").and_then(Value::as_str),
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                };
                return Err(provider_err(match detail {
                    Some(d) => format!(
                        "Provider reported an error mid-stream: {}",
                        redact(&truncate_chars(d, 500))
                    ),
                    None => "Provider reported an error mid-stream".to_owned(),
                }));
            }
            return Ok(());
        }
        let Some(choice) = first_choice(choices) else {
            return Ok(());
        };
        if let Some(Value::Object(delta)) = choice.get("delta") {
            // An empty delta (the usual first `{"role": "assistant", "content": ""}`) carries
            // nothing and is not yielded, so a failure right after it can still be retried.
            if let Some(Value::String(s)) = delta.get("content") {
                if !s.is_empty() {
                    if self.text.len().saturating_add(s.len()) > self.limits.max_text_bytes {
                        return Err(limit_err(
                            "the stream's text",
                            self.limits.max_text_bytes,
                            "bytes",
                            "max_text_bytes",
                        ));
                    }
                    self.text.push_str(s);
                    out.push(StreamEvent::TextDelta(s.clone()));
                }
            }
            if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                for (position, call) in calls.iter().enumerate() {
                    if let Value::Object(call) = call {
                        self.push_tool_call(call, position, out)?;
                    }
                }
            }
        }
        if let Some(reason) = finish_reason(choice.get("finish_reason")) {
            self.finish_reason = Some(reason);
        }
        Ok(())
    }

    /// Adds one tool-call delta to the call with its `index` (found in O(1)).
    fn push_tool_call(
        &mut self,
        call: &Map<String, Value>,
        position: usize,
        out: &mut Vec<StreamEvent>,
    ) -> Result<()> {
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        let slot = match self.slots.get(&index) {
            Some(&i) => i,
            None => {
                if self.tool_calls.len() >= self.limits.max_tool_calls {
                    return Err(limit_err(
                        "the number of tool calls",
                        self.limits.max_tool_calls,
                        "calls",
                        "max_tool_calls",
                    ));
                }
                self.tool_calls.push(PartialToolCall {
                    index,
                    ..PartialToolCall::default()
                });
                self.slots.insert(index, self.tool_calls.len() - 1);
                self.tool_calls.len() - 1
            }
        };
        let max_call = self.limits.max_tool_call_bytes;
        let Some(acc) = self.tool_calls.get_mut(slot) else {
            return Ok(());
        };
        let mut new_id = None;
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            if !id.is_empty() && id != acc.id {
                id.clone_into(&mut acc.id);
                new_id = Some(acc.id.clone());
            }
        }
        let function = match call.get("function") {
            Some(Value::Object(f)) => Some(f),
            _ => None,
        };
        let mut new_name = None;
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) {
            // A repeated (or extended) full name replaces; a fragment is appended.
            if !name.is_empty() && name != acc.name {
                if name.starts_with(acc.name.as_str()) {
                    name.clone_into(&mut acc.name);
                } else {
                    acc.name.push_str(name);
                }
                new_name = Some(acc.name.clone());
            }
        }
        let arguments = match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(a)) => a.clone(),
            Some(Value::Object(o)) => Value::Object(o.clone()).to_string(),
            _ => String::new(),
        };
        if acc.name.len() + acc.arguments.len() + arguments.len() > max_call {
            return Err(limit_err(
                &format!("tool call {index} (its name and arguments)"),
                max_call,
                "bytes",
                "max_tool_call_bytes",
            ));
        }
        acc.arguments.push_str(&arguments);
        if new_id.is_some() || new_name.is_some() || !arguments.is_empty() {
            out.push(StreamEvent::ToolCallDelta {
                index,
                id: new_id,
                name: new_name,
                arguments,
            });
        }
        Ok(())
    }

    /// `true` once a finish reason or `[DONE]` was seen.
    ///
    /// ```
    /// let mut acc = executionkit::provider::sse::StreamAccumulator::new();
    /// acc.push_data("[DONE]", &mut Vec::new()).unwrap();
    /// assert!(acc.is_complete());
    /// ```
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.done || self.finish_reason.is_some()
    }

    /// `true` once `[DONE]` was seen (nothing more is expected).
    ///
    /// ```
    /// assert!(!executionkit::provider::sse::StreamAccumulator::new().saw_done());
    /// ```
    #[must_use]
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// The text accumulated so far.
    ///
    /// ```
    /// assert_eq!(executionkit::provider::sse::StreamAccumulator::new().text(), "");
    /// ```
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The usage of the last chunk that carried a `usage` object, if any.
    ///
    /// ```
    /// assert_eq!(executionkit::provider::sse::StreamAccumulator::new().usage(), None);
    /// ```
    #[must_use]
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The final response: accumulated text, tool calls (arguments decoded), finish reason and
    /// usage (zero when the server sent none). A stream that saw neither a finish reason nor
    /// `[DONE]` is a `provider` error ("stream ended early"); tool-call arguments that are not a
    /// JSON object are handled as in a non-streamed reply: the call is kept with empty
    /// `arguments` and [`ToolCall::arguments_error`](crate::ToolCall::arguments_error) set.
    ///
    /// ```
    /// let mut acc = executionkit::provider::sse::StreamAccumulator::new();
    /// acc.push_data(r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#, &mut Vec::new()).unwrap();
    /// assert!(acc.finish().unwrap().was_truncated());
    /// ```
    pub fn finish(self) -> Result<LlmResponse> {
        if !self.is_complete() {
            return Err(provider_err(
                "Provider stream ended early: no finish_reason and no [DONE] were received",
            ));
        }
        let tool_calls = if self.tool_calls.is_empty() {
            Vec::new()
        } else {
            let mut partial = self.tool_calls;
            partial.sort_by_key(|c| c.index);
            let wire: Vec<Value> = partial
                .into_iter()
                .map(|c| {
                    let arguments = if c.arguments.trim().is_empty() {
                        Value::Null
                    } else {
                        Value::String(c.arguments)
                    };
                    serde_json::json!({
                        "id": c.id,
                        "function": {"name": c.name, "arguments": arguments},
                    })
                })
                .collect();
            parse_tool_calls(Some(&Value::Array(wire)))?
        };
        Ok(LlmResponse {
            choices: vec![Choice {
                content: self.text,
                tool_calls,
                finish_reason: self.finish_reason,
            }],
            usage: self.usage.unwrap_or_default(),
            id: self.id,
            model: self.model,
        })
    }
}

/// The choice whose `index` is 0, else the first choice without an index.
fn first_choice(choices: &[Value]) -> Option<&Map<String, Value>> {
    choices.iter().find_map(|c| match c {
        Value::Object(o) => match o.get("index") {
            None | Some(Value::Null) => Some(o),
            Some(i) if i.as_u64() == Some(0) => Some(o),
            Some(_) => None,
        },
        _ => None,
    })
}

/// Why a byte stream with an idle deadline failed.
#[derive(Debug)]
pub(crate) enum IdleError<E> {
    /// The inner stream failed.
    Inner(E),
    /// Nothing arrived within the idle timeout.
    Idle(Duration),
}

impl<E: std::fmt::Display> std::fmt::Display for IdleError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inner(e) => e.fmt(f),
            Self::Idle(d) => write!(f, "no data received for {:.1} s", d.as_secs_f64()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that fails with [`IdleError::Idle`] when its inner stream yields nothing for
    /// `idle`, and ends after that failure.
    pub(crate) struct IdleTimeout<S> {
        #[pin]
        inner: S,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Duration,
        finished: bool,
    }
}

impl<S> IdleTimeout<S> {
    pub(crate) fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
            finished: false,
        }
    }
}

impl<S, T, E> Stream for IdleTimeout<S>
where
    S: Stream<Item = std::result::Result<T, E>>,
{
    type Item = std::result::Result<T, IdleError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(item)) => {
                let deadline = tokio::time::Instant::now() + *this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(item.map_err(IdleError::Inner)))
            }
            Poll::Ready(None) => {
                *this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    *this.finished = true;
                    Poll::Ready(Some(Err(IdleError::Idle(*this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Why a byte stream under [`ByteLimits`] failed: its inner stream failed, or it passed one of
/// the raw-byte limits of [`StreamLimits`] (each variant holds the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ByteLimitError<E> {
    /// The inner stream failed.
    Inner(E),
    /// A line (bytes since the last `\n` or `\r`) passed [`StreamLimits::max_line_bytes`].
    Line(usize),
    /// An event (bytes since the last blank line) passed [`StreamLimits::max_event_bytes`].
    Event(usize),
    /// The stream passed [`StreamLimits::max_stream_bytes`].
    Stream(u64),
}

impl<E> ByteLimitError<E> {
    /// The crate error: a limit passed is a `provider` error naming the limit; an inner error
    /// is given to `inner`.
    pub(crate) fn into_error(self, inner: impl FnOnce(E) -> Error) -> Error {
        match self {
            Self::Inner(e) => inner(e),
            Self::Line(n) => limit_err("an SSE line", n, "bytes", "max_line_bytes"),
            Self::Event(n) => limit_err("an SSE event", n, "bytes", "max_event_bytes"),
            Self::Stream(n) => limit_err("the stream", n, "bytes", "max_stream_bytes"),
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for ByteLimitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inner(e) => e.fmt(f),
            Self::Line(n) => write!(f, "an SSE line is over {n} bytes"),
            Self::Event(n) => write!(f, "an SSE event is over {n} bytes"),
            Self::Stream(n) => write!(f, "the stream is over {n} bytes"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ByteLimitError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Line(_) | Self::Event(_) | Self::Stream(_) => None,
        }
    }
}

/// Where a byte stream is in its SSE framing, for [`ByteLimits`]. Line endings are those of
/// the SSE grammar (and of `eventsource-stream`): `\r\n`, `\r` or `\n`; a blank line ends an
/// event.
#[derive(Debug, Clone, Copy, Default)]
struct Framing {
    /// Bytes since the last line ending.
    line: usize,
    /// Bytes since the last blank line: its lines with their endings.
    event: usize,
    /// The last byte seen was `\r` (a `\n` right after it ends nothing more).
    after_cr: AfterCr,
}

/// What the `\r` just seen ended, if the last byte was one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum AfterCr {
    #[default]
    No,
    /// A line: a `\n` next is the rest of its ending, counted in the event.
    Line,
    /// An event (it was a blank line): a `\n` next belongs to neither event.
    Event,
}

impl Framing {
    /// Counts `bytes`; the first limit passed, in byte order (a line before an event when both
    /// pass at the same byte), is the error.
    fn scan<E>(
        &mut self,
        mut bytes: &[u8],
        max_line: usize,
        max_event: usize,
    ) -> std::result::Result<(), ByteLimitError<E>> {
        loop {
            let (run, ending) = match memchr::memchr2(b'\n', b'\r', bytes) {
                Some(i) => (i, bytes.get(i).copied()),
                None => (bytes.len(), None),
            };
            if run > 0 {
                let line_room = max_line.saturating_sub(self.line);
                let event_room = max_event.saturating_sub(self.event);
                if run > line_room.min(event_room) {
                    return Err(if line_room <= event_room {
                        ByteLimitError::Line(max_line)
                    } else {
                        ByteLimitError::Event(max_event)
                    });
                }
                self.line += run;
                self.event += run;
                self.after_cr = AfterCr::No;
            }
            let Some(end) = ending else {
                return Ok(());
            };
            let cr = end == b'\r';
            match self.after_cr {
                // The `\n` of a `\r\n`: the line (or event) already ended at the `\r`.
                AfterCr::Line if !cr => self.event += 1,
                AfterCr::Event if !cr => {}
                _ if self.line == 0 => {
                    // A blank line: the event ends.
                    self.event = 0;
                }
                _ => {
                    self.line = 0;
                    self.event += 1;
                }
            }
            self.after_cr = match (cr, self.line == 0 && self.event == 0) {
                (false, _) => AfterCr::No,
                (true, true) => AfterCr::Event,
                (true, false) => AfterCr::Line,
            };
            if self.event > max_event {
                return Err(ByteLimitError::Event(max_event));
            }
            bytes = bytes.get(run + 1..).unwrap_or_default();
        }
    }
}

/// The most line endings in one piece [`ByteLimits`] passes on (see there).
const LINES_PER_PIECE: usize = 16;

pin_project_lite::pin_project! {
    /// A byte stream held to the raw-byte limits of [`StreamLimits`] (line, event and stream
    /// size), put in front of the SSE parser: `eventsource-stream` buffers an unfinished line
    /// or event without bound. The verdict does not depend on how the bytes are split into
    /// chunks; the chunk in which a limit is passed is not passed on: the stream yields the
    /// error and ends.
    ///
    /// The bytes are passed on re-cut at line endings, in pieces of whole lines (at most
    /// [`LINES_PER_PIECE`] line endings each), and an unfinished line is held here (at most
    /// `max_line_bytes`) until it ends or the stream does. The SSE parser's cost is quadratic
    /// otherwise: it parses its whole buffer again on every chunk while a line is unfinished
    /// (a 1 MiB line in 64-byte chunks took 6 s of CPU), and copies the rest of its buffer for
    /// every line it takes (256 KiB of blank lines in one chunk took 20 s).
    ///
    /// It goes after [`IdleTimeout`]:
    /// `EventStream::new(ByteLimits::new(IdleTimeout::new(body, idle), &limits))`, whose errors
    /// are `EventStreamError<ByteLimitError<IdleError<E>>>`. (The other way round also builds,
    /// but the idle timer would then see only whole lines, so bytes of a line still arriving
    /// would not count as activity.)
    pub(crate) struct ByteLimits<S> {
        #[pin]
        inner: S,
        framing: Framing,
        total: u64,
        max_line: usize,
        max_event: usize,
        max_stream: u64,
        // Whole lines received and not yet passed on.
        ready: Bytes,
        // The unfinished last line.
        partial: BytesMut,
        finished: bool,
    }
}

impl<S> ByteLimits<S> {
    /// Holds `inner` to the raw-byte limits of `limits`.
    pub(crate) fn new(inner: S, limits: &StreamLimits) -> Self {
        Self {
            inner,
            framing: Framing::default(),
            total: 0,
            max_line: limits.max_line_bytes,
            max_event: limits.max_event_bytes,
            max_stream: limits.max_stream_bytes,
            ready: Bytes::new(),
            partial: BytesMut::new(),
            finished: false,
        }
    }
}

/// The first piece of `ready`: up to and including its [`LINES_PER_PIECE`]-th line ending, or
/// all of it.
fn next_piece(ready: &mut Bytes) -> Bytes {
    let end = memchr::memchr2_iter(b'\n', b'\r', ready)
        .nth(LINES_PER_PIECE - 1)
        .map_or(ready.len(), |i| i + 1);
    ready.split_to(end)
}

impl<S, E> Stream for ByteLimits<S>
where
    S: Stream<Item = std::result::Result<Bytes, E>>,
{
    type Item = std::result::Result<Bytes, ByteLimitError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if !this.ready.is_empty() {
                return Poll::Ready(Some(Ok(next_piece(this.ready))));
            }
            if *this.finished {
                return Poll::Ready(None);
            }
            let chunk = match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // What is left of an unfinished line goes on as it is.
                    *this.finished = true;
                    *this.ready = this.partial.split().freeze();
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.finished = true;
                    return Poll::Ready(Some(Err(ByteLimitError::Inner(e))));
                }
                Poll::Ready(Some(Ok(chunk))) => chunk,
            };
            // The bytes still allowed are scanned first, so that a line or event limit passed
            // before the stream limit is the one reported, however the bytes come.
            let room = this.max_stream.saturating_sub(*this.total);
            let allowed = usize::try_from(room).map_or(chunk.len(), |r| r.min(chunk.len()));
            let verdict = this
                .framing
                .scan(
                    chunk.get(..allowed).unwrap_or_default(),
                    *this.max_line,
                    *this.max_event,
                )
                .and_then(|()| {
                    if allowed < chunk.len() {
                        Err(ByteLimitError::Stream(*this.max_stream))
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = verdict {
                *this.finished = true;
                this.partial.clear();
                return Poll::Ready(Some(Err(e)));
            }
            *this.total += chunk.len() as u64;
            match memchr::memrchr2(b'\n', b'\r', &chunk) {
                // No line ends here: the bytes wait with the rest of their line.
                None => this.partial.extend_from_slice(&chunk),
                Some(last) => {
                    let mut lines = chunk;
                    let rest = lines.split_off(last + 1);
                    *this.ready = if this.partial.is_empty() {
                        lines
                    } else {
                        this.partial.extend_from_slice(&lines);
                        this.partial.split().freeze()
                    };
                    this.partial.extend_from_slice(&rest);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn feed(acc: &mut StreamAccumulator, data: &str) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        acc.push_data(data, &mut out).unwrap();
        out
    }

    #[test]
    fn repeated_tool_call_ids_and_names_are_not_duplicated() {
        let mut acc = StreamAccumulator::new();
        let a = feed(
            &mut acc,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
        );
        assert_eq!(
            a,
            vec![StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("c1".into()),
                name: Some("get_weather".into()),
                arguments: String::new()
            }]
        );
        let b = feed(
            &mut acc,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":"}}]}}]}"#,
        );
        assert_eq!(
            b,
            vec![StreamEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "{\"city\":".into()
            }]
        );
        feed(
            &mut acc,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        );
        let r = acc.finish().unwrap();
        assert_eq!(r.tool_calls().len(), 1);
        assert_eq!(r.tool_calls()[0].id, "c1");
        assert_eq!(r.tool_calls()[0].name, "get_weather");
        assert_eq!(r.tool_calls()[0].arguments["city"], "Paris");
    }

    #[test]
    fn name_fragments_are_appended() {
        let mut acc = StreamAccumulator::new();
        feed(
            &mut acc,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"get_"}}]}}]}"#,
        );
        feed(
            &mut acc,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"weather"}}]},"finish_reason":"tool_calls"}]}"#,
        );
        let r = acc.finish().unwrap();
        assert_eq!(r.tool_calls()[0].name, "get_weather");
        assert!(r.tool_calls()[0].arguments.is_empty());
    }

    #[test]
    fn other_choices_are_not_mixed_into_choice_zero() {
        let mut acc = StreamAccumulator::new();
        let out = feed(
            &mut acc,
            r#"{"choices":[{"index":1,"delta":{"content":"B"}},{"index":0,"delta":{"content":"A"}}]}"#,
        );
        assert_eq!(out, vec![StreamEvent::TextDelta("A".into())]);
    }

    #[test]
    fn usage_details_of_a_stream_are_recorded() {
        let mut acc = StreamAccumulator::new();
        feed(
            &mut acc,
            r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
        );
        feed(
            &mut acc,
            r#"{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":16},"completion_tokens_details":{"reasoning_tokens":5}}}"#,
        );
        let u = acc.finish().unwrap().usage;
        assert_eq!((u.input_tokens, u.output_tokens), (20, 9));
        assert_eq!((u.cache_read_input_tokens, u.reasoning_tokens), (16, 5));
        assert_eq!(u.cache_write_input_tokens, 0);
    }

    #[test]
    fn error_chunk_is_a_provider_error() {
        let mut acc = StreamAccumulator::new();
        let e = acc
            .push_data(
                r#"{"error":{"message":"overloaded sk-abcdefgh"}}"#,
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(e.is_provider());
        assert!(e.message().contains("overloaded"));
        assert!(!e.message().contains("sk-abcdefgh"));
    }

    // ---- limits of the accumulator ----------------------------------------------------------

    fn limits() -> StreamLimits {
        StreamLimits::default()
    }

    fn text(s: &str) -> String {
        serde_json::json!({"choices": [{"delta": {"content": s}}]}).to_string()
    }

    fn call(index: u32, name: &str, arguments: &str) -> String {
        serde_json::json!({"choices": [{"delta": {"tool_calls": [
            {"index": index, "function": {"name": name, "arguments": arguments}}
        ]}}]})
        .to_string()
    }

    #[test]
    fn the_text_limit_allows_its_size_and_not_a_byte_more() {
        let mut l = limits();
        l.max_text_bytes = 5;
        let mut acc = StreamAccumulator::with_limits(l);
        feed(&mut acc, &text("hel"));
        feed(&mut acc, &text("lo"));
        let e = acc.push_data(&text("!"), &mut Vec::new()).unwrap_err();
        assert!(e.is_provider());
        assert_eq!(
            e.message(),
            "Provider stream exceeded a limit: the stream's text is over 5 bytes (StreamLimits::max_text_bytes)"
        );
        assert_eq!(acc.text(), "hello");
    }

    #[test]
    fn one_tool_calls_name_and_arguments_are_bounded() {
        let mut l = limits();
        l.max_tool_call_bytes = 10;
        let mut acc = StreamAccumulator::with_limits(l);
        feed(&mut acc, &call(0, "f", "{\"a\":"));
        feed(&mut acc, &call(0, "", "1}"));
        feed(&mut acc, &call(1, "g", "{}")); // another call has its own budget
        feed(&mut acc, &call(0, "", "  "));
        let e = acc
            .push_data(&call(0, "", " "), &mut Vec::new())
            .unwrap_err();
        assert!(e.message().contains("tool call 0 (its name and arguments) is over 10 bytes (StreamLimits::max_tool_call_bytes)"), "{}", e.message());
        // Name fragments count too.
        let mut acc = StreamAccumulator::with_limits(l);
        for i in 0..10 {
            feed(&mut acc, &call(3, ["a", "b"][i % 2], ""));
        }
        assert!(acc.push_data(&call(3, "a", ""), &mut Vec::new()).is_err());
    }

    #[test]
    fn the_number_of_tool_calls_is_bounded_and_known_calls_still_grow() {
        let mut acc = StreamAccumulator::new();
        // Sparse and out-of-order indices are found again by their index.
        let indices: Vec<u32> = (0..128u32)
            .map(|i| (i * 7919) % 128 + u32::from(i % 2 == 0) * 4_000_000_000)
            .collect();
        for &i in &indices {
            feed(&mut acc, &call(i, &format!("f{i}"), "{"));
        }
        for &i in indices.iter().rev() {
            let out = feed(&mut acc, &call(i, "", "}"));
            assert_eq!(
                out,
                vec![StreamEvent::ToolCallDelta {
                    index: i,
                    id: None,
                    name: None,
                    arguments: "}".into()
                }]
            );
        }
        let e = acc
            .push_data(&call(5000, "g", ""), &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            e.message(),
            "Provider stream exceeded a limit: the number of tool calls is over 128 calls (StreamLimits::max_tool_calls)"
        );
        acc.push_data("[DONE]", &mut Vec::new()).unwrap();
        let r = acc.finish().unwrap();
        assert_eq!(r.tool_calls().len(), 128);
        let mut sorted = indices;
        sorted.sort_unstable();
        for (c, i) in r.tool_calls().iter().zip(sorted) {
            assert_eq!(c.name, format!("f{i}"));
            assert!(c.arguments.is_empty() && c.arguments_error.is_none());
        }
    }

    #[test]
    fn one_events_data_is_bounded() {
        let mut l = limits();
        let data = text("abc");
        l.max_event_bytes = data.len();
        let mut acc = StreamAccumulator::with_limits(l);
        feed(&mut acc, &data);
        let e = acc
            .push_data(&format!("{data} "), &mut Vec::new())
            .unwrap_err();
        assert!(e.message().contains(&format!(
            "an event's data is over {} bytes (StreamLimits::max_event_bytes)",
            data.len()
        )));
    }

    // ---- the raw byte limits ------------------------------------------------------------------

    type Verdict = (Vec<u8>, Option<ByteLimitError<&'static str>>);

    /// Runs `chunks` through [`ByteLimits`]: the bytes passed on, and the error if any (after
    /// which the stream must end).
    fn run(chunks: Vec<Vec<u8>>, l: &StreamLimits) -> Verdict {
        let (pieces, e) = pieces(chunks, l);
        (pieces.concat(), e)
    }

    /// Runs `chunks` through [`ByteLimits`]: the pieces passed on, and the error if any. Every
    /// piece but a last one is whole lines, at most [`LINES_PER_PIECE`] line endings.
    fn pieces(
        chunks: Vec<Vec<u8>>,
        l: &StreamLimits,
    ) -> (Vec<Vec<u8>>, Option<ByteLimitError<&'static str>>) {
        futures::executor::block_on(async {
            let inner = futures::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, &'static str>(Bytes::from(c))),
            );
            let mut s = std::pin::pin!(ByteLimits::new(inner, l));
            let mut passed: Vec<Vec<u8>> = Vec::new();
            let mut error = None;
            while let Some(item) = futures::StreamExt::next(&mut s).await {
                match item {
                    Ok(c) => {
                        assert!(!c.is_empty());
                        passed.push(c.to_vec());
                    }
                    Err(e) => {
                        assert!(futures::StreamExt::next(&mut s).await.is_none());
                        error = Some(e);
                        break;
                    }
                }
            }
            let ends = |c: &[u8]| c.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
            for (i, p) in passed.iter().enumerate() {
                assert!(ends(p) <= LINES_PER_PIECE, "{p:?}");
                if i + 1 < passed.len() || error.is_some() {
                    assert!(matches!(p.last(), Some(b'\n' | b'\r')), "{p:?}");
                }
            }
            (passed, error)
        })
    }

    fn small(line: usize, event: usize, stream: u64) -> StreamLimits {
        StreamLimits {
            max_line_bytes: line,
            max_event_bytes: event,
            max_stream_bytes: stream,
            ..limits()
        }
    }

    #[test]
    fn a_line_may_have_its_size_and_not_a_byte_more_whatever_its_ending() {
        let l = small(4, 100, 1000);
        for ending in ["\n", "\r", "\r\n"] {
            let ok = format!("abcd{ending}efgh{ending}{ending}ijkl");
            assert_eq!(
                run(vec![ok.clone().into_bytes()], &l),
                (ok.into_bytes(), None)
            );
            let long = format!("abcd{ending}efghi{ending}");
            assert_eq!(
                run(vec![long.into_bytes()], &l).1,
                Some(ByteLimitError::Line(4))
            );
        }
        // An unended line fails as soon as it passes the limit, before any ending arrives
        // (and was never passed on: it waited for its end).
        let (passed, e) = run(vec![b"abc".to_vec(), b"de".to_vec(), b"\n".to_vec()], &l);
        assert_eq!((passed, e), (Vec::new(), Some(ByteLimitError::Line(4))));
    }

    #[test]
    fn an_event_ends_at_a_blank_line_and_is_bounded() {
        for blank in ["\n\n", "\r\r", "\r\n\r\n"] {
            // The event "ab\ncd" and the ending of its last line; the blank line's own ending
            // closes it, and the next event counts from 0.
            let size = "ab\ncd".len() + blank.len() / 2;
            let ok = format!("ab\ncd{blank}ab\ncd{blank}");
            let verdict = run(vec![ok.clone().into_bytes()], &small(100, size, 1000));
            assert_eq!(verdict, (ok.clone().into_bytes(), None), "{blank:?}");
            let verdict = run(vec![ok.into_bytes()], &small(100, size - 1, 1000));
            assert_eq!(
                verdict.1,
                Some(ByteLimitError::Event(size - 1)),
                "{blank:?}"
            );
        }
        // An unfinished event fails as soon as it passes the limit.
        let e = run(vec![b"ab\ncd\nx".to_vec()], &small(100, 6, 1000)).1;
        assert_eq!(e, Some(ByteLimitError::Event(6)));
        // Comments and keep-alive lines count towards the event they are in.
        let e = run(vec![b": ping\n".to_vec()], &small(100, 6, 1000)).1;
        assert_eq!(e, Some(ByteLimitError::Event(6)));
    }

    #[test]
    fn the_stream_may_have_its_size_and_not_a_byte_more() {
        let l = small(100, 100, 10);
        let (passed, e) = run(vec![b"12345\n\n".to_vec(), b"890".to_vec()], &l);
        assert_eq!((passed.len(), e), (10, None));
        let (passed, e) = run(
            vec![b"12345\n\n".to_vec(), b"890".to_vec(), b"x".to_vec()],
            &l,
        );
        // The unended "890" waited for its end.
        assert_eq!((passed.len(), e), (7, Some(ByteLimitError::Stream(10))));
        // A line passed before the stream's end is reported as the line.
        let e = run(vec![b"12345678901234".to_vec()], &small(4, 100, 10)).1;
        assert_eq!(e, Some(ByteLimitError::Line(4)));
    }

    #[test]
    fn inner_errors_pass_through_and_end_the_stream() {
        let verdict = futures::executor::block_on(async {
            let inner = futures::stream::iter(vec![
                Ok(Bytes::from_static(b"a\n")),
                Err("boom"),
                Ok(Bytes::from_static(b"b")),
            ]);
            let s = ByteLimits::new(inner, &limits());
            futures::StreamExt::collect::<Vec<_>>(s).await
        });
        assert_eq!(
            verdict,
            vec![
                Ok(Bytes::from_static(b"a\n")),
                Err(ByteLimitError::Inner("boom"))
            ]
        );
        let e = ByteLimitError::Inner("boom").into_error(provider_err);
        assert_eq!(e.message(), "boom");
        assert_eq!(
            ByteLimitError::<()>::Line(7)
                .into_error(|()| unreachable!())
                .message(),
            "Provider stream exceeded a limit: an SSE line is over 7 bytes (StreamLimits::max_line_bytes)"
        );
        assert!(
            ByteLimitError::<()>::Event(7)
                .into_error(|()| unreachable!())
                .message()
                .contains("StreamLimits::max_event_bytes")
        );
        assert!(
            ByteLimitError::<()>::Stream(7)
                .into_error(|()| unreachable!())
                .message()
                .contains("StreamLimits::max_stream_bytes")
        );
        assert_eq!(
            ByteLimitError::<&str>::Line(7).to_string(),
            "an SSE line is over 7 bytes"
        );
    }

    #[test]
    fn bytes_are_passed_on_in_pieces_of_whole_lines() {
        // An unfinished line waits for its end, however it is cut.
        let chunks = vec![
            b"da".to_vec(),
            b"ta: x".to_vec(),
            b"y\n\nda".to_vec(),
            b"ta".to_vec(),
        ];
        let (p, e) = pieces(chunks, &limits());
        assert_eq!(
            (p, e),
            (vec![b"data: xy\n\n".to_vec(), b"data".to_vec()], None)
        );
        // Many lines in one chunk are passed on a few at a time.
        let blank = vec![b'\n'; 1000];
        let (p, e) = pieces(vec![blank.clone()], &limits());
        assert_eq!(
            (p.len(), p.concat(), e),
            (1000usize.div_ceil(LINES_PER_PIECE), blank, None)
        );
        // A `\r\n` cut in two arrives whole.
        let chunks = vec![b"a\r".to_vec(), b"\nb\r".to_vec(), b"\n".to_vec()];
        let (p, e) = pieces(chunks, &limits());
        assert_eq!((p.concat(), e), (b"a\r\nb\r\n".to_vec(), None));
    }

    /// The chain the provider builds: body → idle timeout → raw-byte limits → SSE parser.
    #[tokio::test]
    async fn the_limits_compose_with_the_idle_timeout_and_the_sse_parser() {
        use futures::StreamExt;
        let l = small(16, 1000, 10_000);
        let body = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"data: {\"a\":1}\n\n")),
            Ok(Bytes::from_static(b"data: 0123456789")),
            Ok(Bytes::from_static(b"0123456789\n\n")),
        ]);
        let chained = ByteLimits::new(IdleTimeout::new(body, Duration::from_secs(60)), &l);
        let mut events = std::pin::pin!(eventsource_stream::EventStream::new(chained));
        assert_eq!(events.next().await.unwrap().unwrap().data, "{\"a\":1}");
        match events.next().await {
            Some(Err(eventsource_stream::EventStreamError::Transport(e))) => {
                assert!(matches!(e, ByteLimitError::Line(16)), "{e:?}");
                let e = e.into_error(|e| provider_err(e.to_string()));
                assert!(e.message().contains("max_line_bytes"));
            }
            other => panic!("{other:?}"),
        }
        assert!(events.next().await.is_none());
    }

    /// A body that sends `chunks`, each after `gap`.
    fn slow_body(
        chunks: &'static [&'static [u8]],
        gap: Duration,
    ) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> {
        futures::StreamExt::then(futures::stream::iter(chunks), move |c| async move {
            tokio::time::sleep(gap).await;
            Ok(Bytes::from_static(c))
        })
    }

    /// Bytes of a line still arriving count as activity for the idle timeout in front of the
    /// limits (behind them, the timer would see only whole lines).
    #[tokio::test(start_paused = true)]
    async fn a_line_arriving_slowly_is_not_idle() {
        use futures::StreamExt;
        const CHUNKS: &[&[u8]] = &[b"data: ", b"1", b"2", b"\n\n"];
        let (gap, idle) = (Duration::from_secs(40), Duration::from_secs(60));
        let chained = ByteLimits::new(IdleTimeout::new(slow_body(CHUNKS, gap), idle), &limits());
        let mut events = std::pin::pin!(eventsource_stream::EventStream::new(chained));
        assert_eq!(events.next().await.unwrap().unwrap().data, "12");
        let reversed = IdleTimeout::new(ByteLimits::new(slow_body(CHUNKS, gap), &limits()), idle);
        let mut events = std::pin::pin!(eventsource_stream::EventStream::new(reversed));
        assert!(matches!(
            events.next().await,
            Some(Err(eventsource_stream::EventStreamError::Transport(
                IdleError::Idle(_)
            )))
        ));
    }

    /// A straightforward model of the rules, one byte at a time.
    fn model(bytes: &[u8], l: &StreamLimits) -> Option<ByteLimitError<&'static str>> {
        // `prev`: the last byte, and whether it ended an event.
        let (mut line, mut event, mut prev) = (0usize, 0usize, (0u8, false));
        for (i, &b) in bytes.iter().enumerate() {
            if i as u64 >= l.max_stream_bytes {
                return Some(ByteLimitError::Stream(l.max_stream_bytes));
            }
            match b {
                b'\n' if prev.0 == b'\r' => {
                    if !prev.1 {
                        event += 1;
                    }
                    prev = (b, false);
                }
                b'\n' | b'\r' => {
                    let blank = line == 0;
                    if blank {
                        event = 0;
                    } else {
                        line = 0;
                        event += 1;
                    }
                    prev = (b, blank);
                }
                _ => {
                    line += 1;
                    event += 1;
                    prev = (b, false);
                    if line > l.max_line_bytes {
                        return Some(ByteLimitError::Line(l.max_line_bytes));
                    }
                }
            }
            if event > l.max_event_bytes {
                return Some(ByteLimitError::Event(l.max_event_bytes));
            }
        }
        None
    }

    fn split(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// However a stream is split into chunks (including empty ones), the verdict is the
        /// same, the bytes passed are a prefix of the stream (all of it when no limit is
        /// passed), and the verdict is the byte-at-a-time model's.
        #[test]
        fn chunking_never_changes_the_verdict(
            bytes in prop::collection::vec(prop::sample::select(&b"ab :\n\r"[..]), 0..120),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            line in 0usize..12,
            event in 0usize..40,
            stream in 0u64..130,
        ) {
            let l = small(line, event, stream);
            let whole = run(vec![bytes.clone()], &l);
            let chunked = run(split(&bytes, &cuts), &l);
            let bytewise = run(bytes.iter().map(|&b| vec![b]).collect(), &l);
            prop_assert_eq!(&whole.1, &chunked.1);
            prop_assert_eq!(&whole.1, &bytewise.1);
            prop_assert_eq!(&whole.1, &model(&bytes, &l));
            for passed in [&whole.0, &chunked.0, &bytewise.0] {
                prop_assert!(bytes.starts_with(passed));
            }
            if whole.1.is_none() {
                prop_assert_eq!(&chunked.0, &bytes);
            }
            // Without event and stream limits, a line error is exactly a line that is too long.
            let lines_only = small(line, usize::MAX, u64::MAX);
            let too_long = bytes.split(|&b| b == b'\n' || b == b'\r').any(|s| s.len() > line);
            prop_assert_eq!(run(split(&bytes, &cuts), &lines_only).1.is_some(), too_long);
        }
    }
}
