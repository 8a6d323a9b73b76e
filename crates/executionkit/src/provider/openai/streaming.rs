//! The stream: the SSE events of a chat-completions stream, decoded by [`StreamAccumulator`]
//! into [`StreamEvent`]s and the final [`LlmResponse`](crate::LlmResponse).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::{StreamExt, stream};
use serde_json::Value;

use super::Inner;
use crate::error::{Error, Result};
use crate::provider::http::{SseError, SseEvents};
use crate::provider::parse::parse_reply;
use crate::provider::sse::StreamAccumulator;
use crate::provider::transport::Reply;
use crate::provider::{ChatStream, StreamEvent};

/// The SSE decoding state of one open stream.
struct Decoder {
    events: SseEvents,
    acc: StreamAccumulator,
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
            if self.acc.saw_done() {
                crate::provider::sse::drain_tail(&mut self.events).await;
                return Step::Last(self.finish());
            }
            match self.events.next().await {
                None => return Step::Last(self.finish()),
                Some(Ok(event)) => {
                    if let Err(e) = self.acc.push_data(&event.data, &mut self.scratch) {
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

/// The events of an open SSE reply, decoded by `acc`: deltas, then [`StreamEvent::Finished`]
/// (or the error that ended the stream).
pub(super) fn decode(
    events: SseEvents,
    acc: StreamAccumulator,
    provider: Arc<Inner>,
) -> ChatStream {
    let decoder = Decoder {
        events,
        acc,
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
        let r = parse_reply(&bytes).map_err(|e| self.http.scrub(e))?;
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
