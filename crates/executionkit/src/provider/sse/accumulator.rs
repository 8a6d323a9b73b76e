//! [`StreamAccumulator`]: the `data` of each SSE event of a chat-completions stream, turned
//! into [`StreamEvent`]s and accumulated into the final [`LlmResponse`].

// Some items serve only the crate's tests and benchmarks (through `internals`).
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

use serde_json::{Map, Value};

use super::tool_calls::ToolCalls;
use super::{SseLine, StreamLimits, limit_err, parse_sse_data, provider_err};
use crate::error::Result;
use crate::provider::parse::{finish_reason, logprob_summary, parse_usage};
use crate::provider::{Choice, LlmResponse, LogprobSummary, StreamEvent, Usage};
use crate::redact::redact;
use crate::text::prefix;

/// Accumulates the chunks of one streamed completion into the final [`LlmResponse`].
///
/// ```
/// use executionkit::internals::sse::StreamAccumulator;
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
    tool_calls: ToolCalls,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    logprobs: Logprobs,
    done: bool,
    id: Option<String>,
    model: Option<String>,
}

impl StreamAccumulator {
    /// An empty accumulator.
    ///
    /// ```
    /// assert!(!executionkit::internals::sse::StreamAccumulator::new().is_complete());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty accumulator that enforces `limits` (what it checks: the size of one event's
    /// `data`, the accumulated text, each tool call, and the number of tool calls).
    ///
    /// ```
    /// use executionkit::{internals::sse::StreamAccumulator, StreamLimits};
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
    /// use executionkit::{internals::sse::StreamAccumulator, StreamLimits};
    /// assert_eq!(StreamAccumulator::new().limits(), StreamLimits::default());
    /// ```
    #[must_use]
    pub fn limits(&self) -> StreamLimits {
        self.limits
    }

    /// Feeds the `data` of one SSE event, pushing the deltas it carries onto `out`.
    ///
    /// ```
    /// use executionkit::internals::sse::StreamAccumulator;
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
    /// use executionkit::internals::sse::StreamAccumulator;
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
                        redact(prefix(d, 500))
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
                        self.tool_calls.push(call, position, &self.limits, out)?;
                    }
                }
            }
        }
        self.logprobs.push(choice.get("logprobs"));
        if let Some(reason) = finish_reason(choice.get("finish_reason")) {
            self.finish_reason = Some(reason);
        }
        Ok(())
    }

    /// `true` once a finish reason or `[DONE]` was seen.
    ///
    /// ```
    /// let mut acc = executionkit::internals::sse::StreamAccumulator::new();
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
    /// assert!(!executionkit::internals::sse::StreamAccumulator::new().saw_done());
    /// ```
    #[must_use]
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// The text accumulated so far.
    ///
    /// ```
    /// assert_eq!(executionkit::internals::sse::StreamAccumulator::new().text(), "");
    /// ```
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The usage of the last chunk that carried a `usage` object, if any.
    ///
    /// ```
    /// assert_eq!(executionkit::internals::sse::StreamAccumulator::new().usage(), None);
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
    /// let mut acc = executionkit::internals::sse::StreamAccumulator::new();
    /// acc.push_data(r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#, &mut Vec::new()).unwrap();
    /// assert!(acc.finish().unwrap().was_truncated());
    /// ```
    pub fn finish(self) -> Result<LlmResponse> {
        if !self.is_complete() {
            return Err(provider_err(
                "Provider stream ended early: no finish_reason and no [DONE] were received",
            ));
        }
        let tool_calls = self.tool_calls.finish()?;
        Ok(LlmResponse {
            choices: vec![Choice {
                content: self.text,
                tool_calls,
                finish_reason: self.finish_reason,
                logprobs: self.logprobs.summary(),
            }],
            usage: self.usage.unwrap_or_default(),
            id: self.id,
            model: self.model,
        })
    }
}

/// The log-probabilities of a stream's chunks, summed as they come (the tokens are not kept).
#[derive(Debug, Clone, Copy, Default)]
enum Logprobs {
    /// No chunk carried any.
    #[default]
    None,
    /// The sum so far.
    Sum(LogprobSummary),
    /// A chunk carried them in a shape that is not `content[].logprob` numbers.
    Broken,
}

impl Logprobs {
    /// Adds one chunk's `logprobs` (absent or `null` adds nothing).
    fn push(&mut self, v: Option<&Value>) {
        if matches!(v, None | Some(Value::Null)) || matches!(self, Self::Broken) {
            return;
        }
        *self = match (logprob_summary(v), *self) {
            (Some(chunk), Self::None) => Self::Sum(chunk),
            (Some(chunk), Self::Sum(mut s)) => {
                s.sum += chunk.sum;
                s.tokens = s.tokens.saturating_add(chunk.tokens);
                s.checked().map_or(Self::Broken, Self::Sum)
            }
            _ => Self::Broken,
        };
    }

    fn summary(self) -> Option<LogprobSummary> {
        match self {
            Self::Sum(s) => Some(s),
            Self::None | Self::Broken => None,
        }
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
