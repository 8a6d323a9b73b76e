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

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde_json::{Map, Value};

use super::parse::{finish_reason, parse_tool_calls, parse_usage, truncate_chars};
use super::{Choice, LlmResponse, StreamEvent, Usage};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::redact;

fn provider_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Provider, msg)
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
    text: String,
    tool_calls: Vec<PartialToolCall>,
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

    /// Feeds the `data` of one SSE event, pushing the deltas it carries onto `out`.
    ///
    /// ```
    /// use executionkit::provider::sse::StreamAccumulator;
    /// let mut acc = StreamAccumulator::new();
    /// let mut out = Vec::new();
    /// assert!(acc.push_data("not-json{", &mut out).unwrap_err().is_provider());
    /// ```
    pub fn push_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<()> {
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
                    self.text.push_str(s);
                    out.push(StreamEvent::TextDelta(s.clone()));
                }
            }
            if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                for (position, call) in calls.iter().enumerate() {
                    if let Value::Object(call) = call {
                        self.push_tool_call(call, position, out);
                    }
                }
            }
        }
        if let Some(reason) = finish_reason(choice.get("finish_reason")) {
            self.finish_reason = Some(reason);
        }
        Ok(())
    }

    fn push_tool_call(
        &mut self,
        call: &Map<String, Value>,
        position: usize,
        out: &mut Vec<StreamEvent>,
    ) {
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        let slot = match self.tool_calls.iter().position(|c| c.index == index) {
            Some(i) => i,
            None => {
                self.tool_calls.push(PartialToolCall {
                    index,
                    ..PartialToolCall::default()
                });
                self.tool_calls.len() - 1
            }
        };
        let acc = &mut self.tool_calls[slot];
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
        acc.arguments.push_str(&arguments);
        if new_id.is_some() || new_name.is_some() || !arguments.is_empty() {
            out.push(StreamEvent::ToolCallDelta {
                index,
                id: new_id,
                name: new_name,
                arguments,
            });
        }
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
}
