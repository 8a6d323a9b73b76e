//! Streaming completions through the budget (reference §9.5, OVERRIDES.md).
//!
//! [`stream_completion`] reserves the call (and its output tokens) **before** it returns, so a
//! spent budget fails before anything is sent. The [`StreamingResult`] it returns is a
//! [`Stream`] of text deltas; once drained, its [`cost`](StreamingResult::cost) holds the usage
//! the server reported. A failure before the first delta is retried under the run's
//! [`RetryPolicy`](super::RetryPolicy) (each attempt is a reserved call); after a delta was
//! delivered, a failure ends the stream with the error (deltas already delivered stay
//! delivered).
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, RunContext};
//! use executionkit::engine::stream::stream_completion;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let p: Arc<dyn LlmProvider> = Arc::new(MockProvider::new(["Hello there"]));
//! let req = ChatRequest::new(vec![Message::user("hi")]);
//! let mut s = stream_completion(p, req, &RunContext::new()).await.unwrap();
//! assert_eq!(s.cost().llm_calls, 1); // reserved up front
//! let mut text = String::new();
//! while let Some(delta) = s.next().await {
//!     text.push_str(&delta.unwrap());
//! }
//! assert_eq!(text, "Hello there");
//! assert_eq!(s.cost().output_tokens, 2); // known once drained
//! # });
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tracing::Instrument;

use super::budget::{CostTracker, Reservation};
use super::call::RunContext;
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::provider::{
    ChatRequest, ChatStream, DEFAULT_MAX_TOKENS, LlmProvider, LlmResponse, StreamEvent,
};
use crate::redact::redact_with;
use crate::result::{Metadata, PatternResult};
use crate::telemetry::{
    GEN_AI_OPERATION_NAME, GEN_AI_REQUEST_MAX_TOKENS, GEN_AI_REQUEST_MODEL, OPERATION_CHAT,
};
use crate::usage::TokenUsage;

/// Called once when a stream ends (drained, failed or dropped) with its tracker.
pub(crate) type OnDone = Box<dyn FnOnce(&CostTracker) + Send>;

/// A streamed completion: a [`Stream`] of text deltas with a live cost.
///
/// [`cost`](Self::cost) reads the stream's own tracker: one call (or more, after retries) from
/// the start, and the tokens once the stream has been drained.
/// [`response`](Self::response) holds the accumulated response (text, tool calls, finish
/// reason, usage) after the end. `metadata` is `{"streaming": true}`.
#[must_use = "a stream does nothing unless polled"]
pub struct StreamingResult {
    inner: BoxStream<'static, Result<String>>,
    tracker: CostTracker,
    usd: bool,
    response: Arc<Mutex<Option<LlmResponse>>>,
    metadata: Metadata,
}

impl fmt::Debug for StreamingResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingResult")
            .field("cost", &self.tracker.usage())
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl Stream for StreamingResult {
    type Item = Result<String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl StreamingResult {
    /// What the stream has spent so far (final once drained).
    #[must_use]
    pub fn cost(&self) -> TokenUsage {
        self.tracker.usage()
    }

    /// Money spent so far, when the run's budget knows prices.
    #[must_use]
    pub fn usd(&self) -> Option<f64> {
        self.usd.then(|| self.tracker.usd())
    }

    /// `{"streaming": true}`.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The accumulated response, once the stream has finished.
    #[must_use]
    pub fn response(&self) -> Option<LlmResponse> {
        self.response
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drains the stream and returns the whole text as a result with the final cost.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{ChatRequest, Message, MockProvider, RunContext, engine::stream::stream_completion};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let req = ChatRequest::new(vec![Message::user("hi")]);
    /// let s = stream_completion(Arc::new(MockProvider::new(["a b c"])), req, &RunContext::new()).await.unwrap();
    /// let r = s.collect_text().await.unwrap();
    /// assert_eq!((r.value.as_str(), r.cost.output_tokens), ("a b c", 3));
    /// assert_eq!(r.metadata["streaming"], true);
    /// # });
    /// ```
    ///
    /// # Errors
    /// The stream's error, carrying the spend.
    pub async fn collect_text(mut self) -> Result<PatternResult<String>> {
        let mut text = String::new();
        while let Some(delta) = self.next().await {
            text.push_str(&delta?);
        }
        let mut r = PatternResult::new(text).with_cost(self.cost());
        r.usd = self.usd();
        r.metadata = self.metadata.clone();
        Ok(r)
    }
}

/// Starts a streamed completion of `request` under `ctx`'s budget and retry policy.
///
/// The first call is reserved before this returns: a spent budget fails here, before the
/// provider is asked. See the [module docs](self) for retries and cost.
///
/// # Errors
/// `invalid_argument` for a bad request or a provider that cannot stream (the reference's
/// "StreamingProvider" check); `budget_exhausted` when no call can be reserved.
pub async fn stream_completion(
    provider: Arc<dyn LlmProvider>,
    request: ChatRequest,
    ctx: &RunContext,
) -> Result<StreamingResult> {
    start(provider, request, ctx, None).await
}

/// [`stream_completion`] with a hook called once with the tracker when the stream ends.
pub(crate) async fn start(
    provider: Arc<dyn LlmProvider>,
    request: ChatRequest,
    ctx: &RunContext,
    on_done: Option<OnDone>,
) -> Result<StreamingResult> {
    let tracker = CostTracker::new();
    let mut state = State {
        provider,
        request,
        ctx: ctx.clone(),
        tracker: tracker.clone(),
        reservation: None,
        call: 0,
        inner: None,
        attempt: 1,
        yielded: false,
        done: false,
        response: Arc::new(Mutex::new(None)),
        on_done,
    };
    if !state.provider.supports_streaming() {
        return Err(Error::invalid_argument(
            "provider",
            "streaming needs a provider that streams (StreamingProvider): this provider does \
             not support streaming",
        ));
    }
    state.request.validate()?;
    // Reserve eagerly: a spent budget fails before anything is sent.
    state.reserve().await.map_err(|e| state.fail(e))?;
    let response = Arc::clone(&state.response);
    let inner = futures::stream::unfold(state, State::step).boxed();
    let mut metadata = Metadata::new();
    metadata.insert("streaming".into(), true.into());
    Ok(StreamingResult {
        inner,
        usd: ctx.ledger().budget().has_prices(),
        tracker,
        response,
        metadata,
    })
}

struct State {
    provider: Arc<dyn LlmProvider>,
    request: ChatRequest,
    ctx: RunContext,
    tracker: CostTracker,
    reservation: Option<Reservation>,
    call: u64,
    inner: Option<ChatStream>,
    /// The attempt in progress (1-based).
    attempt: u32,
    /// `true` once a delta was handed to the consumer: no retry after that.
    yielded: bool,
    done: bool,
    response: Arc<Mutex<Option<LlmResponse>>>,
    on_done: Option<OnDone>,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f(&self.tracker);
        }
    }
}

impl State {
    fn model(&self) -> String {
        self.request
            .model
            .clone()
            .unwrap_or_else(|| self.provider.model().to_owned())
    }

    /// Reserves the call of the current attempt.
    async fn reserve(&mut self) -> Result<()> {
        let model = self.model();
        let wanted = u64::from(self.request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
        let r = self
            .ctx
            .ledger()
            .reserve(&model, wanted, self.attempt > 1)
            .await?;
        self.tracker.add_call();
        self.call = r.call();
        if r.max_tokens() < wanted {
            self.request.max_tokens =
                Some(u32::try_from(r.max_tokens()).unwrap_or(u32::MAX).max(1));
        }
        self.reservation = Some(r);
        if let Some(sink) = self.ctx.events() {
            sink.emit(&Event::CallStarted {
                call: self.call,
                attempt: self.attempt,
                model,
            });
        }
        Ok(())
    }

    /// The error handed to the consumer: redacted, with the spend.
    fn fail(&self, e: Error) -> Error {
        if let Some(sink) = self.ctx.events() {
            if self.call > 0 {
                sink.emit(&Event::CallFailed {
                    call: self.call,
                    kind: e.kind(),
                });
            }
        }
        let e = if e.is_budget_exhausted() || e.is_invalid_argument() {
            e
        } else {
            redact_error(e, self.provider.secret())
        };
        e.with_cost(self.tracker.usage())
            .with_usd(self.ctx.tracker_usd(&self.tracker))
    }

    async fn step(mut self) -> Option<(Result<String>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if self.inner.is_none() {
                if self.reservation.is_none() {
                    if let Err(e) = self.reserve().await {
                        self.done = true;
                        let e = self.fail(e);
                        return Some((Err(e), self));
                    }
                }
                self.inner = Some(self.provider.stream(self.request.clone()));
            }
            let span = tracing::info_span!(
                target: "executionkit",
                "llm.stream",
                { GEN_AI_OPERATION_NAME } = OPERATION_CHAT,
                { GEN_AI_REQUEST_MODEL } = self.model(),
                { GEN_AI_REQUEST_MAX_TOKENS } = self.request.max_tokens,
                attempt = self.attempt,
            );
            let item = match self.inner.as_mut() {
                Some(s) => s.next().instrument(span).await,
                None => None,
            };
            let err = match item {
                Some(Ok(StreamEvent::TextDelta(t))) => {
                    if t.is_empty() {
                        continue;
                    }
                    self.yielded = true;
                    return Some((Ok(t), self));
                }
                Some(Ok(StreamEvent::Finished(resp))) => {
                    self.finish(resp);
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => e,
                None => Error::new(
                    ErrorKind::Provider,
                    "Provider stream ended early: the stream closed without a final response",
                ),
            };
            // The attempt failed: its reservation returns (the call still counts).
            self.inner = None;
            self.reservation = None;
            let policy = self.ctx.retry_policy();
            if !self.yielded && self.attempt <= policy.max_retries() && policy.should_retry(&err) {
                let delay = policy.wait_after(&err, self.attempt);
                if let Some(sink) = self.ctx.events() {
                    sink.emit(&Event::CallRetried {
                        call: self.call,
                        attempt: self.attempt,
                        delay,
                        kind: err.kind(),
                    });
                }
                tokio::time::sleep(delay).await;
                self.attempt += 1;
                continue;
            }
            self.done = true;
            let e = self.fail(err);
            return Some((Err(e), self));
        }
    }

    fn finish(&mut self, resp: LlmResponse) {
        self.done = true;
        self.inner = None;
        let usd = match self.reservation.take() {
            Some(r) => r.settle(resp.usage),
            None => 0.0,
        };
        self.tracker.add_tokens(resp.usage, usd);
        if let Some(sink) = self.ctx.events() {
            sink.emit(&Event::CallFinished {
                call: self.call,
                usage: TokenUsage::new(resp.usage.input_tokens, resp.usage.output_tokens, 1),
                finish_reason: resp.finish_reason().map(str::to_owned),
                spent: self.ctx.ledger().spent(),
                remaining: self.ctx.ledger().remaining(),
            });
        }
        *self.response.lock().unwrap_or_else(PoisonError::into_inner) = Some(resp);
    }
}

/// Redacts credential shapes and the provider's key from an error's message.
fn redact_error(e: Error, secret: Option<&str>) -> Error {
    let msg = redact_with(e.message(), secret);
    if msg == e.message() {
        return e;
    }
    let mut out = Error::new(e.kind(), msg);
    for (k, v) in e.metadata() {
        out = out.with_metadata(k, v.clone());
    }
    if let Some(ra) = e.retry_after() {
        out = out.with_retry_after(ra);
    }
    if let Some(s) = e.http_status() {
        out = out.with_http_status(s);
    }
    out
}
