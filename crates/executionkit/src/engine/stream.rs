//! Streaming completions through the budget (reference §9.5, OVERRIDES.md).
//!
//! [`stream_completion`] reserves the call (and its output tokens) **before** it returns, so a
//! spent budget fails before anything is sent. The [`StreamingResult`] it returns is a
//! [`Stream`] of text deltas; once drained, its [`cost`](StreamingResult::cost) holds the usage
//! the server reported. Underneath is [`RunContext::stream`], the checked call path for streams:
//! a failure before the first delta is retried under the run's
//! [`RetryPolicy`](super::RetryPolicy) (each attempt is a reserved call); after a delta was
//! delivered, a failure ends the stream with the error (deltas already delivered stay
//! delivered). Unlike `RunContext::stream`, a [`StreamingResult`] owns what it needs
//! (`'static`), yields text only, and keeps its own cost.
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, RunContext};
//! use executionkit::stream_completion;
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
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, SinkExt, Stream, StreamExt};

use super::budget::CostTracker;
use super::call::RunContext;
use crate::error::{Error, Result};
use crate::provider::{ChatRequest, LlmProvider, LlmResponse, StreamEvent};
use crate::result::{Metadata, PatternResult};
use crate::usage::TokenUsage;

/// Called once when a stream ends (drained, failed or dropped) with its tracker.
pub(crate) type OnDone = Box<dyn FnOnce(&CostTracker) + Send>;

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;
type SharedOnDone = Arc<Mutex<Option<OnDone>>>;

/// A streamed completion: a [`Stream`] of text deltas with a live cost.
///
/// [`cost`](Self::cost) reads the stream's own tracker: one call (or more, after retries) from
/// the start, and the tokens once the stream has been drained.
/// [`response`](Self::response) holds the accumulated response (text, tool calls, finish
/// reason, usage) after the end. `metadata` is `{"streaming": true}`. Dropping it cancels the
/// call in flight (its reservation returns; the call still counts).
///
/// ```
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use executionkit::{ChatRequest, Message, MockProvider, RunContext, stream_completion};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let req = ChatRequest::new(vec![Message::user("q")]);
/// let mut s = stream_completion(Arc::new(MockProvider::new(["hey"])), req, &RunContext::new()).await.unwrap();
/// let mut text = String::new();
/// while let Some(delta) = s.next().await {
///     text.push_str(&delta.unwrap());
/// }
/// assert_eq!(text, "hey");
/// assert_eq!(s.response().unwrap().content(), "hey");
/// # });
/// ```
#[must_use = "a stream does nothing unless polled"]
pub struct StreamingResult {
    /// Drives the checked stream and feeds `deltas`; `None` once finished.
    driver: Option<Driver>,
    deltas: mpsc::Receiver<Result<String>>,
    tracker: CostTracker,
    usd: bool,
    response: Arc<Mutex<Option<LlmResponse>>>,
    metadata: Metadata,
    on_done: SharedOnDone,
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
        if let Some(d) = self.driver.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.driver = None;
            }
        }
        self.deltas.poll_next_unpin(cx)
    }
}

impl Drop for StreamingResult {
    fn drop(&mut self) {
        // Cancel the call in flight first (its reservation returns), then report.
        self.driver = None;
        run_on_done(&self.on_done, &self.tracker);
    }
}

fn run_on_done(on_done: &SharedOnDone, tracker: &CostTracker) {
    let f = on_done
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(f) = f {
        f(tracker);
    }
}

impl StreamingResult {
    /// What the stream has spent so far (final once drained).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures::StreamExt;
    /// use executionkit::{ChatRequest, LlmResponse, Message, MockProvider, RunContext, stream_completion};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = Arc::new(MockProvider::new([LlmResponse::text("ok").with_usage(5, 1)]));
    /// let mut s = stream_completion(p, ChatRequest::new(vec![Message::user("q")]), &RunContext::new()).await.unwrap();
    /// assert_eq!(s.cost().llm_calls, 1); // counted from the start
    /// while s.next().await.is_some() {}
    /// assert_eq!((s.cost().input_tokens, s.cost().output_tokens), (5, 1));
    /// # });
    /// ```
    #[must_use]
    pub fn cost(&self) -> TokenUsage {
        self.tracker.usage()
    }

    /// Money spent so far, when the run's budget knows prices.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures::StreamExt;
    /// use executionkit::{Budget, ChatRequest, CostRates, LlmResponse, Message, MockProvider, RunContext, stream_completion};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = Arc::new(MockProvider::new([LlmResponse::text("ok").with_usage(0, 1_000_000)]));
    /// let req = ChatRequest::new(vec![Message::user("q")]);
    /// let s = stream_completion(p.clone(), req.clone(), &RunContext::new()).await.unwrap();
    /// assert_eq!(s.usd(), None); // no prices known
    /// let priced = RunContext::new().budget(Budget::new().default_price(CostRates::new(1.0, 4.0).unwrap()));
    /// let mut s = stream_completion(p, req, &priced).await.unwrap();
    /// while s.next().await.is_some() {}
    /// assert!((s.usd().unwrap() - 4.0).abs() < 1e-9);
    /// # });
    /// ```
    #[must_use]
    pub fn usd(&self) -> Option<f64> {
        self.usd.then(|| self.tracker.usd())
    }

    /// `{"streaming": true}`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{ChatRequest, Message, MockProvider, RunContext, stream_completion};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let req = ChatRequest::new(vec![Message::user("q")]);
    /// let s = stream_completion(Arc::new(MockProvider::new(["x"])), req, &RunContext::new()).await.unwrap();
    /// assert_eq!(s.metadata()["streaming"], true);
    /// # });
    /// ```
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The accumulated response, once the stream has finished.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures::StreamExt;
    /// use executionkit::{ChatRequest, Message, MockProvider, RunContext, stream_completion};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let req = ChatRequest::new(vec![Message::user("q")]);
    /// let mut s = stream_completion(Arc::new(MockProvider::new(["done"])), req, &RunContext::new()).await.unwrap();
    /// assert!(s.response().is_none()); // not finished yet
    /// while s.next().await.is_some() {}
    /// let r = s.response().unwrap();
    /// assert_eq!((r.content(), r.choices[0].finish_reason.as_deref()), ("done", Some("stop")));
    /// # });
    /// ```
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
    /// use executionkit::{ChatRequest, Message, MockProvider, RunContext, stream_completion};
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
        self.tracker.over_grant().apply_to_metadata(&mut r.metadata);
        Ok(r)
    }
}

/// Starts a streamed completion of `request` under `ctx`'s budget and retry policy.
///
/// The first call is reserved before this returns: a spent budget fails here, before the
/// provider is asked. See [`RunContext::stream`] for retries and cost.
///
/// # Errors
/// `invalid_argument` for a bad request or a provider that cannot stream
/// ([`LlmProvider::supports_streaming`] is false); `budget_exhausted` when no call can be
/// reserved.
///
/// ```
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use executionkit::{Budget, ChatRequest, Message, MockProvider, RunContext, stream_completion};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let req = ChatRequest::new(vec![Message::user("q")]);
/// let s = stream_completion(Arc::new(MockProvider::new(["a b"])), req.clone(), &RunContext::new()).await.unwrap();
/// let parts: Vec<String> = s.map(|d| d.unwrap()).collect().await;
/// assert_eq!(parts.concat(), "a b");
/// // A spent budget fails before the provider is asked.
/// let p = Arc::new(MockProvider::new(["x"]));
/// let ctx = RunContext::new().budget(Budget::new().max_calls(0));
/// assert!(stream_completion(p.clone(), req, &ctx).await.unwrap_err().is_budget_exhausted());
/// assert_eq!(p.call_count(), 0);
/// # });
/// ```
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
    let on_done: SharedOnDone = Arc::new(Mutex::new(on_done));
    if !provider.supports_streaming() {
        run_on_done(&on_done, &tracker);
        return Err(Error::invalid_argument(
            "provider",
            "streaming needs a provider that can stream: this provider does not support \
             streaming",
        ));
    }
    let response = Arc::new(Mutex::new(None));
    let (opened_tx, mut opened_rx) = oneshot::channel::<Result<()>>();
    let (tx, deltas) = mpsc::channel::<Result<String>>(0);
    let mut driver: Driver = Box::pin(drive(
        provider,
        request,
        ctx.clone(),
        tracker.clone(),
        Arc::clone(&response),
        Arc::clone(&on_done),
        opened_tx,
        tx,
    ));
    // Run the driver until the first call is reserved (or refused): a spent budget fails here.
    let mut finished = false;
    let opened = futures::future::poll_fn(|cx| {
        if !finished && driver.as_mut().poll(cx).is_ready() {
            finished = true;
        }
        opened_rx.poll_unpin(cx)
    })
    .await;
    match opened {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(oneshot::Canceled) => return Err(Error::cancelled()),
    }
    let mut metadata = Metadata::new();
    metadata.insert("streaming".into(), true.into());
    Ok(StreamingResult {
        driver: (!finished).then_some(driver),
        deltas,
        usd: ctx.ledger().budget().has_prices(),
        tracker,
        response,
        metadata,
        on_done,
    })
}

/// Opens the checked stream, then forwards its text deltas until it ends; reports the end to
/// `on_done` before the consumer sees it.
#[allow(clippy::too_many_arguments)]
async fn drive(
    provider: Arc<dyn LlmProvider>,
    request: ChatRequest,
    ctx: RunContext,
    tracker: CostTracker,
    response: Arc<Mutex<Option<LlmResponse>>>,
    on_done: SharedOnDone,
    opened: oneshot::Sender<Result<()>>,
    mut tx: mpsc::Sender<Result<String>>,
) {
    let mut events = match ctx.stream(provider.as_ref(), request, &tracker).await {
        Ok(s) => s,
        Err(e) => {
            run_on_done(&on_done, &tracker);
            let _ = opened.send(Err(e));
            return;
        }
    };
    let _ = opened.send(Ok(()));
    while let Some(item) = events.next().await {
        let out = match item {
            Ok(StreamEvent::TextDelta(t)) if !t.is_empty() => Ok(t),
            Ok(StreamEvent::Finished(r)) => {
                *response.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                continue;
            }
            Ok(_) => continue,
            Err(e) => Err(e),
        };
        let failed = out.is_err();
        if failed {
            run_on_done(&on_done, &tracker);
        }
        if tx.send(out).await.is_err() || failed {
            return;
        }
    }
    drop(events);
    run_on_done(&on_done, &tracker);
    drop(tx);
}
