//! The stream: a Messages API event stream as [`StreamEvent`]s and the final [`LlmResponse`].

use std::collections::VecDeque;
use std::sync::Arc;

use futures::{StreamExt, stream};
use serde_json::{Map, Value, json};

use super::reply::{
    error_event, finish_reason, parse_anthropic_usage, parse_message, tool_calls, usage_count,
};
use super::{Inner, provider_err};
use crate::error::{Error, Result};
use crate::provider::http::{SseError, SseEvents};
use crate::provider::transport::Reply;
use crate::provider::{ChatStream, Choice, LlmResponse, StreamEvent, Usage};
use crate::redact::redact;
use crate::text::prefix;

/// A `tool_use` block being streamed.
#[derive(Debug, Default)]
struct PartialTool {
    /// Its content-block index.
    block: u64,
    id: String,
    name: String,
    /// The `input` of `content_block_start` (usually `{}`), used when no delta arrives.
    start_input: Option<Value>,
    json: String,
}

/// Accumulates the events of one streamed message into the final [`LlmResponse`].
#[derive(Debug, Default)]
pub(super) struct MessageAccumulator {
    text: String,
    tools: Vec<PartialTool>,
    usage: Usage,
    stop_reason: Option<String>,
    stopped: bool,
    id: Option<String>,
    model: Option<String>,
}

impl MessageAccumulator {
    /// Feeds one SSE event (`event` is its name, `data` its payload), pushing the deltas it
    /// carries onto `out`. An `error` event is returned as the error it stands for.
    pub(super) fn push(
        &mut self,
        event: &str,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<()> {
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(data) else {
            return Err(provider_err(format!(
                "Provider sent an SSE data frame that is not a JSON object: {}",
                redact(prefix(data, 200))
            )));
        };
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event)
            .to_owned();
        match kind.as_str() {
            "message_start" => {
                if let Some(Value::Object(m)) = obj.get("message") {
                    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
                    self.id = text("id");
                    self.model = text("model");
                    if let Some(Value::Object(u)) = m.get("usage") {
                        self.usage = parse_anthropic_usage(u)?;
                    }
                }
            }
            "content_block_start" => self.block_start(&obj, out),
            "content_block_delta" => self.block_delta(&obj, out),
            "message_delta" => {
                if let Some(reason) = obj
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(Value::Object(u)) = obj.get("usage") {
                    self.merge_usage(u)?;
                }
            }
            "message_stop" => self.stopped = true,
            "error" => return Err(error_event(obj.get("error"))),
            // ping, content_block_stop, and event types added later: nothing to do.
            _ => {}
        }
        Ok(())
    }

    /// `message_delta` usage is cumulative: each count it carries replaces the one so far.
    fn merge_usage(&mut self, u: &Map<String, Value>) -> Result<()> {
        let has = |k: &str| u.get(k).is_some_and(|v| !v.is_null());
        if has("output_tokens") {
            self.usage.output_tokens = usage_count(u, "output_tokens")?;
        }
        if has("input_tokens")
            || has("cache_read_input_tokens")
            || has("cache_creation_input_tokens")
        {
            let uncached = if has("input_tokens") {
                usage_count(u, "input_tokens")?
            } else {
                uncached_input(&self.usage)
            };
            if has("cache_read_input_tokens") {
                self.usage.cache_read_input_tokens = usage_count(u, "cache_read_input_tokens")?;
            }
            if has("cache_creation_input_tokens") {
                self.usage.cache_write_input_tokens =
                    usage_count(u, "cache_creation_input_tokens")?;
            }
            self.usage.input_tokens = uncached
                .saturating_add(self.usage.cache_read_input_tokens)
                .saturating_add(self.usage.cache_write_input_tokens);
        }
        Ok(())
    }

    fn block_start(&mut self, obj: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let block_index = obj.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some(Value::Object(block)) = obj.get("content_block") else {
            return;
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = block.get("text").and_then(Value::as_str) {
                    self.push_text(t, out);
                }
            }
            Some("tool_use") => {
                let text = |k: &str| {
                    block
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let tool = PartialTool {
                    block: block_index,
                    id: text("id"),
                    name: text("name"),
                    start_input: block.get("input").cloned(),
                    json: String::new(),
                };
                out.push(StreamEvent::ToolCallDelta {
                    index: u32::try_from(self.tools.len()).unwrap_or(u32::MAX),
                    id: (!tool.id.is_empty()).then(|| tool.id.clone()),
                    name: (!tool.name.is_empty()).then(|| tool.name.clone()),
                    arguments: String::new(),
                });
                self.tools.push(tool);
            }
            _ => {}
        }
    }

    fn block_delta(&mut self, obj: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let block_index = obj.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some(Value::Object(delta)) = obj.get("delta") else {
            return;
        };
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    self.push_text(t, out);
                }
            }
            Some("input_json_delta") => {
                let Some(part) = delta.get("partial_json").and_then(Value::as_str) else {
                    return;
                };
                let Some(ordinal) = self.tools.iter().position(|t| t.block == block_index) else {
                    return;
                };
                self.tools[ordinal].json.push_str(part);
                if !part.is_empty() {
                    out.push(StreamEvent::ToolCallDelta {
                        index: u32::try_from(ordinal).unwrap_or(u32::MAX),
                        id: None,
                        name: None,
                        arguments: part.to_owned(),
                    });
                }
            }
            // thinking, signature and citations deltas carry no answer text.
            _ => {}
        }
    }

    /// An empty text is not yielded (it carries nothing, and would close the engine's
    /// retry-before-first-delta window).
    fn push_text(&mut self, t: &str, out: &mut Vec<StreamEvent>) {
        if !t.is_empty() {
            self.text.push_str(t);
            out.push(StreamEvent::TextDelta(t.to_owned()));
        }
    }

    /// The final response; a stream that saw neither `message_stop` nor a stop reason ended
    /// early (a `provider` error).
    pub(super) fn finish(self) -> Result<LlmResponse> {
        if !self.stopped && self.stop_reason.is_none() {
            return Err(provider_err(
                "Provider stream ended early: no stop_reason and no message_stop were received",
            ));
        }
        let wire = self
            .tools
            .into_iter()
            .map(|t| {
                let arguments = if t.json.trim().is_empty() {
                    t.start_input.unwrap_or(Value::Null)
                } else {
                    Value::String(t.json)
                };
                json!({"id": t.id, "function": {"name": t.name, "arguments": arguments}})
            })
            .collect();
        Ok(LlmResponse {
            choices: vec![Choice {
                content: self.text,
                tool_calls: tool_calls(wire)?,
                finish_reason: self.stop_reason.as_deref().map(finish_reason),
                logprobs: None,
            }],
            usage: self.usage,
            id: self.id,
            model: self.model,
        })
    }
}

/// Input tokens that were neither cache reads nor cache writes.
fn uncached_input(u: &Usage) -> u64 {
    u.input_tokens
        .saturating_sub(u.cache_read_input_tokens)
        .saturating_sub(u.cache_write_input_tokens)
}

/// The SSE decoding state of one open stream.
struct Decoder {
    events: SseEvents,
    acc: MessageAccumulator,
    pending: VecDeque<StreamEvent>,
    scratch: Vec<StreamEvent>,
    provider: Arc<Inner>,
}

enum Step {
    Item(StreamEvent),
    Last(Result<StreamEvent>),
}

impl Decoder {
    async fn next_item(&mut self) -> Step {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Step::Item(ev);
            }
            if self.acc.stopped {
                crate::provider::sse::drain_tail(&mut self.events).await;
                return Step::Last(self.finish());
            }
            match self.events.next().await {
                None => return Step::Last(self.finish()),
                Some(Ok(event)) => {
                    if let Err(e) = self.acc.push(&event.event, &event.data, &mut self.scratch) {
                        return Step::Last(Err(self.provider.http.scrub(e)));
                    }
                    self.pending.extend(self.scratch.drain(..));
                }
                Some(Err(e)) => return Step::Last(Err(self.stream_error(e))),
            }
        }
    }

    fn finish(&mut self) -> Result<StreamEvent> {
        std::mem::take(&mut self.acc)
            .finish()
            .map(StreamEvent::Finished)
            .map_err(|e| self.provider.http.scrub(e))
    }

    fn stream_error(&self, e: SseError) -> Error {
        self.provider.http.sse_error(e)
    }
}

/// The events of an open SSE reply, decoded: deltas, then [`StreamEvent::Finished`] (or the
/// error that ended the stream).
pub(super) fn decode(events: SseEvents, provider: Arc<Inner>) -> ChatStream {
    let decoder = Decoder {
        events,
        acc: MessageAccumulator::default(),
        pending: VecDeque::new(),
        scratch: Vec::new(),
        provider,
    };
    stream::unfold(Some(decoder), |state| async move {
        let mut d = state?;
        match d.next_item().await {
            Step::Item(ev) => Some((Ok(ev), Some(d))),
            Step::Last(r) => Some((r, None)),
        }
    })
    .boxed()
}

impl Inner {
    /// A non-streamed JSON reply to a stream request, as the events a stream would give.
    pub(super) async fn whole_reply_as_stream(&self, reply: Box<Reply>) -> Result<ChatStream> {
        let bytes = self.http.read_whole_reply(reply).await?;
        let r = parse_message(&bytes).map_err(|e| self.http.scrub(e))?;
        let mut events = Vec::with_capacity(2 + r.tool_calls().len());
        if !r.content().is_empty() {
            events.push(Ok(StreamEvent::TextDelta(r.content().to_owned())));
        }
        for (i, call) in r.tool_calls().iter().enumerate() {
            events.push(Ok(StreamEvent::ToolCallDelta {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                id: (!call.id.is_empty()).then(|| call.id.clone()),
                name: Some(call.name.clone()),
                arguments: Value::Object(call.arguments.clone()).to_string(),
            }));
        }
        events.push(Ok(StreamEvent::Finished(r)));
        Ok(stream::iter(events).boxed())
    }
}
