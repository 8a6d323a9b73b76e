//! The checked call path: every LLM call of every pattern goes through
//! [`RunContext::complete`], which reserves budget, retries, emits events and tracing spans,
//! and records usage.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::Retryable;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tracing::Instrument;

use super::budget::{BudgetLedger, CostTracker, Reservation};
use super::retry::{FullJitter, RetryPolicy};
use super::text_sink::{TextEvent, TextSink};
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, EventSink};
use crate::provider::wire::{self, WireProbe};
use crate::provider::{
    ChatRequest, DEFAULT_MAX_TOKENS, LlmProvider, LlmResponse, Route, RouteEntry, StreamEvent,
    moves_on,
};
use crate::redact::{redact_secret_json, redact_with};
use crate::result::{PatternResult, RedactStats};
use crate::telemetry::{
    ERROR_TYPE, EXECUTIONKIT_COST_USD, GEN_AI_OPERATION_NAME, GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_MODEL, GEN_AI_REQUEST_TEMPERATURE, GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID, GEN_AI_RESPONSE_MODEL, GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS, OPERATION_CHAT, int,
};
use crate::usage::{Budget, TokenUsage};

mod checked_stream;
use checked_stream::{CheckedStream, StreamRoute};

/// What every pattern of one run shares: the budget ledger, the retry policy and the event
/// subscriber. Cheap to clone (clones share the ledger).
///
/// ```
/// use executionkit::{Budget, RetryPolicy, RunContext};
/// let ctx = RunContext::new().budget(Budget::new().max_calls(20)).retry(RetryPolicy::none());
/// assert_eq!(ctx.ledger().budget().calls_limit(), Some(20));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RunContext {
    ledger: Arc<BudgetLedger>,
    retry: RetryPolicy,
    events: Option<EventSink>,
    text: Option<TextSink>,
}

impl Default for RunContext {
    fn default() -> Self {
        Self::new()
    }
}

impl RunContext {
    /// No limits, the default retry policy, no subscriber.
    ///
    /// ```
    /// assert!(executionkit::RunContext::new().ledger().budget().is_unlimited());
    /// ```
    pub fn new() -> Self {
        Self {
            ledger: Arc::new(BudgetLedger::unlimited()),
            retry: RetryPolicy::default(),
            events: None,
            text: None,
        }
    }

    /// Starts a fresh ledger enforcing `budget`, replacing the context's (to stay inside the
    /// context's limits, use [`nested_budget`](Self::nested_budget)).
    ///
    /// ```
    /// let ctx = executionkit::RunContext::new().budget(executionkit::Budget::new().max_calls(1));
    /// assert_eq!(ctx.ledger().remaining().llm_calls, Some(1));
    /// ```
    pub fn budget(mut self, budget: Budget) -> Self {
        self.ledger = Arc::new(BudgetLedger::new(budget));
        self
    }

    /// Runs under a child of the context's ledger enforcing `budget` as well
    /// ([`BudgetLedger::child`]): calls must fit both, and the context's ledger records them
    /// too. [`Pipe::max_budget`](crate::Pipe::max_budget) uses this.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, RunContext};
    /// let outer = RunContext::new().budget(Budget::new().max_calls(5));
    /// let inner = outer.clone().nested_budget(Budget::new().max_calls(30));
    /// assert!(Arc::ptr_eq(inner.ledger().parent().unwrap(), outer.ledger()));
    /// assert_eq!(inner.ledger().remaining().llm_calls, Some(5)); // the outer limit is tighter
    /// ```
    pub fn nested_budget(mut self, budget: Budget) -> Self {
        self.ledger = Arc::new(BudgetLedger::child(Arc::clone(&self.ledger), budget));
        self
    }

    /// Shares an existing ledger.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{RunContext, BudgetLedger};
    /// let l = Arc::new(BudgetLedger::unlimited());
    /// let ctx = RunContext::new().with_ledger(l.clone());
    /// assert!(Arc::ptr_eq(ctx.ledger(), &l));
    /// ```
    pub fn with_ledger(mut self, ledger: Arc<BudgetLedger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Sets the retry policy.
    ///
    /// ```
    /// let ctx = executionkit::RunContext::new().retry(executionkit::RetryPolicy::none());
    /// assert_eq!(ctx.retry_policy().max_retries(), 0);
    /// ```
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Subscribes `f` to the run's [`Event`]s.
    ///
    /// ```
    /// let ctx = executionkit::RunContext::new().on_event(|e| eprintln!("{e:?}"));
    /// # let _ = ctx;
    /// ```
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(EventSink::new(f));
        self
    }

    /// Subscribes `f` to the text of the calls whose text may be the run's value, as the server
    /// streams it (which calls: [`TextEvent`]). Those
    /// calls then go through [`stream`](Self::stream) when the provider can stream
    /// ([`LlmProvider::supports_streaming`]), else through [`complete`](Self::complete) with
    /// nothing delivered. A streamed call is reserved, counted, settled and reported in events
    /// exactly as a completed one; it is retried only before its first delta, so no text is
    /// delivered twice. When a streamed call fails after some text was delivered, the run fails
    /// with that error: the delivered text stays delivered.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use executionkit::{MapReduce, MockProvider, RunContext, TextEvent};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let text = Arc::new(Mutex::new(String::new()));
    /// let t = Arc::clone(&text);
    /// let ctx = RunContext::new().on_text(move |e| {
    ///     if let TextEvent::Delta(d) = e {
    ///         t.lock().unwrap().push_str(d);
    ///     }
    /// });
    /// // Two map calls, then the reduce call: only the reduce call's text is delivered.
    /// let p = MockProvider::new(["a", "b", "a and b"]);
    /// let m = MapReduce::new().map_template("{item}").reduce_template("{mapped_outputs}");
    /// let r = m.run(&p, &["x".into(), "y".into()], &ctx).await.unwrap();
    /// assert_eq!((r.value.as_str(), text.lock().unwrap().as_str()), ("a and b", "a and b"));
    /// # });
    /// ```
    pub fn on_text(mut self, f: impl Fn(TextEvent<'_>) + Send + Sync + 'static) -> Self {
        self.text = Some(TextSink::new(f));
        self
    }

    /// This context without its [`on_text`](Self::on_text) subscriber (same ledger, retry
    /// policy and events): for calls whose text is not the run's value.
    pub(crate) fn without_text(&self) -> Cow<'_, Self> {
        if self.text.is_none() {
            return Cow::Borrowed(self);
        }
        let mut ctx = self.clone();
        ctx.text = None;
        Cow::Owned(ctx)
    }

    /// Sends `request` like [`complete`](Self::complete); with an [`on_text`](Self::on_text)
    /// subscriber and a provider that streams, streams it instead and delivers its text deltas
    /// until the first tool-call delta. Also returns whether any text was delivered.
    pub(crate) async fn complete_forwarding(
        &self,
        provider: &dyn LlmProvider,
        request: ChatRequest,
        tracker: &CostTracker,
    ) -> Result<(LlmResponse, bool)> {
        let Some(sink) = self.text.as_ref().filter(|_| provider.supports_streaming()) else {
            return Ok((self.complete(provider, request, tracker).await?, false));
        };
        let mut stream = self.stream(provider, request, tracker).await?;
        let mut delivered = false;
        let mut calls_tools = false;
        while let Some(item) = stream.next().await {
            match item? {
                StreamEvent::TextDelta(t) if !calls_tools && !t.is_empty() => {
                    sink.emit(TextEvent::Delta(&t));
                    delivered = true;
                }
                StreamEvent::ToolCallDelta { .. } => calls_tools = true,
                StreamEvent::Finished(resp) => return Ok((resp, delivered)),
                _ => {}
            }
        }
        // `stream` ends with `Finished` or an error; this is not reached.
        let e = Error::new(
            ErrorKind::Provider,
            "the stream ended without a final response",
        );
        Err(self.spend_error(e, tracker))
    }

    /// Tells the [`on_text`](Self::on_text) subscriber that the text delivered so far is not
    /// the value (when some was delivered).
    pub(crate) fn supersede_text(&self, delivered: bool) {
        if let (true, Some(sink)) = (delivered, &self.text) {
            sink.emit(TextEvent::Superseded);
        }
    }

    /// The shared ledger.
    ///
    /// ```
    /// let ctx = executionkit::RunContext::new();
    /// assert!(ctx.ledger().spent().is_zero());
    /// ```
    #[must_use]
    pub fn ledger(&self) -> &Arc<BudgetLedger> {
        &self.ledger
    }

    /// The retry policy.
    ///
    /// ```
    /// let ctx = executionkit::RunContext::new();
    /// assert_eq!(ctx.retry_policy().max_retries(), 3);
    /// ```
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The event subscriber, if any.
    ///
    /// ```
    /// assert!(executionkit::RunContext::new().events().is_none());
    /// assert!(executionkit::RunContext::new().on_event(|_| {}).events().is_some());
    /// ```
    #[must_use]
    pub fn events(&self) -> Option<&EventSink> {
        self.events.as_ref()
    }

    /// Sends `request` through the budget and retry policy.
    ///
    /// Each attempt reserves a call (and output tokens) before it is sent; every attempt counts
    /// in `tracker` and in the ledger. On success the usage is recorded; on failure the error
    /// carries `tracker`'s spend, and its text holds no credential.
    ///
    /// ```
    /// use executionkit::{ChatRequest, Message, MockProvider, RunContext, CostTracker};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["hi"]);
    /// let t = CostTracker::new();
    /// let r = RunContext::new()
    ///     .complete(&p, ChatRequest::new(vec![Message::user("x")]), &t)
    ///     .await
    ///     .unwrap();
    /// assert_eq!(r.content(), "hi");
    /// assert_eq!(t.usage().llm_calls, 1);
    /// # });
    /// ```
    pub fn complete<'a>(
        &'a self,
        provider: &'a dyn LlmProvider,
        request: ChatRequest,
        tracker: &'a CostTracker,
    ) -> impl Future<Output = Result<LlmResponse>> + 'a {
        // Boxed: keeps the call future small (docs/architecture.md, "Future sizes").
        self.complete_boxed(provider, Box::new(request), tracker)
    }

    async fn complete_boxed(
        &self,
        provider: &dyn LlmProvider,
        request: Box<ChatRequest>,
        tracker: &CostTracker,
    ) -> Result<LlmResponse> {
        if let Err(e) = request.validate() {
            return Err(self.fail(e, 0, provider, tracker));
        }
        if let Some(route) = provider.route(&request) {
            // Boxed: the chain's state would sit in every call's future (docs/architecture.md,
            // "Future sizes").
            return Box::pin(self.complete_routed(&route, &request, tracker)).await;
        }
        let attempt = AtomicU32::new(0);
        let request = &*request;
        let result = (|| async {
            let n = attempt.fetch_add(1, Ordering::Relaxed) + 1;
            self.attempt(provider, request, tracker, n, None).await
        })
        .retry(self.retry.backoff())
        .sleep(tokio::time::sleep)
        .when(|(_, e)| self.retry.should_retry(e))
        .adjust(|(_, e), d| d.map(|d| cap_retry_after(&self.retry, e, d)))
        .notify(|(call, e), delay| {
            self.retried(*call, attempt.load(Ordering::Relaxed), delay, e.kind());
        })
        .await;
        match result {
            Ok((_, resp)) => Ok(resp),
            Err((call, e)) => Err(self.fail(e, call, provider, tracker)),
        }
    }

    /// A failover chain: each entry in order (skipping those cooling down after a 429), each
    /// attempt reserved and counted like any other, its cost also added to the entry's share
    /// (`metadata.cost_by_provider`). The run's retry policy gives the delays of an entry's own
    /// retries and the longest wait for a cooled-down chain; it does not wrap the chain.
    async fn complete_routed(
        &self,
        route: &Route,
        request: &ChatRequest,
        tracker: &CostTracker,
    ) -> Result<LlmResponse> {
        let mut n = 0_u32;
        let mut waited = false;
        loop {
            let now = tokio::time::Instant::now();
            let mut last: Option<(u64, Error, usize)> = None;
            for (i, entry) in route.entries.iter().enumerate() {
                if entry.cooling_until(now).is_some() {
                    continue;
                }
                let mut backoff = self.retry.backoff();
                let request = entry.request_for(request);
                for tries in 0..=self.entry_retries(entry) {
                    n = n.saturating_add(1);
                    let on = Some(&entry.name);
                    match self
                        .attempt(&*entry.provider, &request, tracker, n, on)
                        .await
                    {
                        Ok((_, resp)) => return Ok(resp),
                        Err((call, e)) => {
                            match self.after_failure(entry, &e, tries, &mut backoff) {
                                AfterFailure::Stop => {
                                    return Err(self.fail(e, call, &*entry.provider, tracker));
                                }
                                AfterFailure::Retry(d) => {
                                    last = Some((call, e, i));
                                    tokio::time::sleep(d).await;
                                }
                                AfterFailure::MoveOn => {
                                    last = Some((call, e, i));
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            // Every provider is cooling down: wait for the first back, once, if that is within
            // the policy's longest delay.
            let now = tokio::time::Instant::now();
            let back = route
                .entries
                .iter()
                .map(|e| e.cooling_until(now))
                .collect::<Option<Vec<_>>>()
                .and_then(|all| all.into_iter().min());
            match (back, last) {
                (Some(at), last)
                    if !waited && at.duration_since(now) <= self.retry.max_delay_value() =>
                {
                    drop(last);
                    waited = true;
                    tokio::time::sleep_until(at).await;
                }
                (_, Some((call, e, i))) => {
                    return Err(self.fail(e, call, &*route.entries[i].provider, tracker));
                }
                (_, None) => {
                    let e = Error::rate_limited(
                        "every provider of the failover chain is cooling down (Retry-After) beyond the retry policy's max_delay",
                    );
                    return Err(self.fail(e, 0, &*route.entries[0].provider, tracker));
                }
            }
        }
    }

    /// The retries of a route entry: its own (a chain's entry), else the run's policy's (a
    /// router's plain target).
    fn entry_retries(&self, entry: &RouteEntry) -> u32 {
        entry.retries.unwrap_or_else(|| self.retry.max_retries())
    }

    /// What a route does after `tries` retries of `entry` failed with `err`: give up, try the
    /// entry again after a delay, or move to the next entry. A chain's entry that answered 429
    /// with `Retry-After` cools down and the route moves on; a router's plain target retries it
    /// as any provider does. One rule for calls and streams.
    fn after_failure(
        &self,
        entry: &RouteEntry,
        err: &Error,
        tries: u32,
        backoff: &mut FullJitter,
    ) -> AfterFailure {
        if !moves_on(err) {
            return AfterFailure::Stop;
        }
        if entry.retries.is_some() {
            if let (true, Some(after)) = (err.is_rate_limited(), err.retry_after()) {
                entry.cool_down(after);
                return AfterFailure::MoveOn;
            }
        }
        if tries < self.entry_retries(entry) {
            if let Some(d) = self.next_delay(err, backoff) {
                return AfterFailure::Retry(d);
            }
        }
        AfterFailure::MoveOn
    }

    /// Money spent by `tracker`, when prices are known.
    ///
    /// ```
    /// use executionkit::{RunContext, CostTracker};
    /// assert_eq!(RunContext::new().tracker_usd(&CostTracker::new()), None);
    /// ```
    #[must_use]
    pub fn tracker_usd(&self, tracker: &CostTracker) -> Option<f64> {
        self.ledger.budget().has_prices().then(|| tracker.usd())
    }

    /// `result` with `tracker`'s spend: its `cost`, its `usd` (when prices are known) and, when
    /// some call went over its grant, `metadata.usage_over_grant` (see
    /// [`UsageOverGrant`](crate::UsageOverGrant); the key is removed otherwise). Patterns get
    /// it through [`tracked`](Self::tracked).
    pub(crate) fn spend_result<T, S>(
        &self,
        mut result: PatternResult<T, S>,
        tracker: &CostTracker,
    ) -> PatternResult<T, S> {
        result.cost = tracker.usage();
        result.usd = self.tracker_usd(tracker);
        tracker.over_grant().apply_to_metadata(&mut result.metadata);
        if let Some(by) = tracker.cost_by_provider() {
            result.metadata.insert("cost_by_provider".to_owned(), by);
        }
        result
    }

    /// `error` with `tracker`'s spend: its cost, its `usd` (when prices are known) and, when
    /// some call went over its grant, `metadata.usage_over_grant`. Patterns get it through
    /// [`tracked`](Self::tracked).
    #[must_use]
    pub(crate) fn spend_error(&self, error: Error, tracker: &CostTracker) -> Error {
        let error = tracker.over_grant().apply_to_error(
            error
                .with_cost(tracker.usage())
                .with_usd(self.tracker_usd(tracker)),
        );
        match tracker.cost_by_provider() {
            Some(by) => error.with_metadata("cost_by_provider", by),
            None => error,
        }
    }

    /// Runs a pattern's body with a new [`CostTracker`] and attaches the tracker's spend to
    /// whatever comes back, result or error, early returns and `?` included: its cost, its
    /// `usd` (when prices are known) and, when some call went over its grant,
    /// `metadata.usage_over_grant` ([`UsageOverGrant`](crate::UsageOverGrant)). This is the one
    /// place a pattern's spend is attached: the body only makes calls through the tracker and
    /// returns.
    ///
    /// ```
    /// use executionkit::{ChatRequest, Message, MockProvider, PatternResult, RunContext, TokenUsage};
    /// use executionkit::LlmResponse;
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new([LlmResponse::text("hi").with_usage(4, 2)]);
    /// let ctx = RunContext::new();
    /// let r = ctx
    ///     .tracked(async |tracker| {
    ///         let req = ChatRequest::new(vec![Message::user("hello")]);
    ///         let reply = ctx.complete(&p, req, tracker).await?;
    ///         Ok(PatternResult::new(reply.into_content()))
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!((r.value.as_str(), r.cost), ("hi", TokenUsage::new(4, 2, 1)));
    ///
    /// // An error leaving the body carries what was spent before it.
    /// let e = ctx
    ///     .tracked(async |tracker| -> executionkit::Result<PatternResult<()>> {
    ///         ctx.complete(&p, ChatRequest::new(vec![Message::user("a")]), tracker).await?;
    ///         Err(executionkit::Error::cancelled())
    ///     })
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(e.cost(), TokenUsage::new(4, 2, 1));
    /// # });
    /// ```
    ///
    /// # Errors
    /// The body's error, with the spend.
    pub async fn tracked<T, S>(
        &self,
        body: impl AsyncFnOnce(&CostTracker) -> Result<PatternResult<T, S>>,
    ) -> Result<PatternResult<T, S>> {
        let tracker = CostTracker::new();
        match body(&tracker).await {
            Ok(r) => Ok(self.spend_result(r, &tracker)),
            Err(e) => Err(self.spend_error(e, &tracker)),
        }
    }

    /// Streams `request` through the budget and retry policy.
    ///
    /// The first attempt's call is reserved before this returns, so a spent budget fails here,
    /// before the provider is asked. The stream yields the provider's deltas and ends with
    /// [`StreamEvent::Finished`], whose usage is recorded in `tracker` and the ledger. A failure
    /// before the first delta is retried like [`complete`](Self::complete) (each attempt is a
    /// call); once a delta has been delivered a failure ends the stream with the error (the
    /// deltas already delivered stay delivered). Errors carry `tracker`'s spend and no
    /// credential.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use executionkit::{ChatRequest, Message, MockProvider, RunContext, StreamEvent, CostTracker};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["hey"]);
    /// let t = CostTracker::new();
    /// let ctx = RunContext::new();
    /// let s = ctx.stream(&p, ChatRequest::new(vec![Message::user("x")]), &t).await.unwrap();
    /// let items: Vec<_> = s.collect().await;
    /// assert_eq!(items.len(), 4); // "h", "e", "y", Finished
    /// assert!(matches!(items.last(), Some(Ok(StreamEvent::Finished(_)))));
    /// assert_eq!(t.usage().output_tokens, 1);
    /// # });
    /// ```
    pub async fn stream<'a>(
        &'a self,
        provider: &'a dyn LlmProvider,
        request: ChatRequest,
        tracker: &'a CostTracker,
    ) -> Result<BoxStream<'a, Result<StreamEvent>>> {
        if !provider.supports_streaming() {
            let e = Error::invalid_argument(
                "provider",
                "this provider does not support streaming: use complete() instead",
            );
            return Err(self.fail(e, 0, provider, tracker));
        }
        if let Err(e) = request.validate() {
            return Err(self.fail(e, 0, provider, tracker));
        }
        let route = provider.route(&request).map(|route| StreamRoute {
            route,
            entry: 0,
            tries: 0,
        });
        let mut state = CheckedStream {
            ctx: self,
            provider,
            tracker,
            request,
            backoff: self.retry.backoff(),
            attempt: 0,
            current: None,
            delivered: false,
            done: false,
            route,
        };
        if let Some(r) = &mut state.route {
            if !r.skip_cooling() {
                let e = Error::rate_limited(
                    "every provider of the failover chain is cooling down (Retry-After)",
                );
                return Err(self.fail(e, 0, provider, tracker));
            }
        }
        if let Err((call, e)) = state.open().await {
            let p = state.entry_provider();
            return Err(self.fail(e, call, p.as_deref().unwrap_or(provider), tracker));
        }
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move { st.next_item().await.map(|item| (item, st)) },
        )))
    }

    pub(crate) fn emit(&self, event: &Event) {
        if let Some(sink) = &self.events {
            sink.emit(event);
        }
    }

    /// A failed attempt that will be retried after `delay`: a `tracing` event (a span event
    /// of the pattern's span in an exported trace) and [`Event::CallRetried`].
    fn retried(&self, call: u64, attempt: u32, delay: Duration, kind: ErrorKind) {
        tracing::debug!(
            target: "executionkit",
            call = int(call),
            attempt = i64::from(attempt),
            delay_ms = int(delay.as_millis()),
            kind = kind.as_str(),
            "retrying LLM call"
        );
        self.emit(&Event::CallRetried {
            call,
            attempt,
            delay,
            kind,
        });
    }

    /// The final form of a failure: events, redaction, spend.
    fn fail(
        &self,
        e: Error,
        call: u64,
        provider: &dyn LlmProvider,
        tracker: &CostTracker,
    ) -> Error {
        if e.is_budget_exhausted() {
            let exhausted = e
                .metadata()
                .get("exhausted")
                .and_then(Value::as_str)
                .unwrap_or("budget")
                .to_owned();
            tracing::info!(
                target: "executionkit",
                exhausted = exhausted.as_str(),
                "budget exhausted"
            );
            if self.events.is_some() {
                self.emit(&Event::BudgetExhausted {
                    exhausted,
                    spent: self.ledger.spent(),
                    remaining: self.ledger.remaining(),
                });
            }
        }
        self.emit(&Event::CallFailed {
            call,
            kind: e.kind(),
        });
        self.spend_error(redact_error(e, provider.secret()), tracker)
    }

    /// Reserves one attempt's call: the reservation and the request to send (its `max_tokens`
    /// the grant).
    async fn reserve<'r>(
        &self,
        provider: &dyn LlmProvider,
        request: &'r ChatRequest,
        tracker: &CostTracker,
        attempt: u32,
    ) -> Result<(Reservation, Sent<'r>)> {
        let model = request.model.as_deref().unwrap_or_else(|| provider.model());
        let n = u64::from(request.n.unwrap_or(1).max(1));
        let wanted = u64::from(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
        let reservation = self
            .ledger
            .reserve_choices(model, wanted, n, attempt > 1)
            .await?;
        tracker.add_call();
        // The request asks for exactly what was reserved: the grant replaces a larger
        // `max_tokens`, and fills in a missing one (the provider's own default is never used).
        // The grant is at least 1 and at most `wanted`, so it fits a `u32`.
        let granted = u32::try_from(reservation.max_tokens_per_choice())
            .unwrap_or(u32::MAX)
            .max(1);
        let req = if request.max_tokens == Some(granted) {
            Sent::Same(request)
        } else {
            let mut r = request.clone();
            r.max_tokens = Some(granted);
            Sent::Granted(Box::new(r))
        };
        if self.events.is_some() {
            self.emit(&Event::CallStarted {
                call: reservation.call(),
                attempt,
                model: model.to_owned(),
            });
        }
        Ok((reservation, req))
    }

    /// Records a successful response: ledger, tracker, span, event.
    fn finish(
        &self,
        reservation: Reservation,
        resp: &LlmResponse,
        tracker: &CostTracker,
        span: &tracing::Span,
    ) {
        let call = reservation.call();
        let priced = reservation.priced();
        // Recorded as reported, even past the grant (the spend is the truth); the excess is
        // flagged in the tracker (and so in the pattern's metadata) and in the event.
        let excess = resp
            .usage
            .output_tokens
            .saturating_sub(reservation.max_tokens());
        if excess > 0 {
            tracing::warn!(
                target: "executionkit",
                call,
                granted = reservation.max_tokens(),
                output_tokens = resp.usage.output_tokens,
                "the server reported more output tokens than the call was granted"
            );
        }
        let usd = reservation.settle(resp.usage);
        tracker.add_tokens(resp.usage, usd);
        tracker.add_over_grant(excess);
        if !span.is_disabled() {
            let reasons: Vec<&str> = resp
                .choices
                .iter()
                .map(|c| c.finish_reason.as_deref().unwrap_or(""))
                .collect();
            span.record(GEN_AI_RESPONSE_FINISH_REASONS, format!("{reasons:?}"));
            span.record(GEN_AI_USAGE_INPUT_TOKENS, int(resp.usage.input_tokens));
            span.record(GEN_AI_USAGE_OUTPUT_TOKENS, int(resp.usage.output_tokens));
            if let Some(m) = &resp.model {
                span.record(GEN_AI_RESPONSE_MODEL, m.as_str());
            }
            if let Some(id) = &resp.id {
                span.record(GEN_AI_RESPONSE_ID, id.as_str());
            }
            if priced {
                span.record(EXECUTIONKIT_COST_USD, usd);
            }
        }
        // Built only for a subscriber: the ledger snapshots take its lock twice.
        if self.events.is_some() {
            self.emit(&Event::CallFinished {
                call,
                usage: TokenUsage {
                    llm_calls: 1,
                    ..TokenUsage::from(resp.usage)
                },
                finish_reason: resp.finish_reason().map(str::to_owned),
                spent: self.ledger.spent(),
                remaining: self.ledger.remaining(),
                usage_over_grant: (excess > 0).then_some(excess),
            });
        }
    }

    /// The wait before the next attempt after `e`, or `None` when `e` is not retried or no
    /// attempt is left. `Retry-After` raises the wait but never beyond `max_delay`.
    fn next_delay(&self, e: &Error, backoff: &mut FullJitter) -> Option<Duration> {
        if !self.retry.should_retry(e) {
            return None;
        }
        backoff.next().map(|d| cap_retry_after(&self.retry, e, d))
    }

    async fn attempt(
        &self,
        provider: &dyn LlmProvider,
        request: &ChatRequest,
        tracker: &CostTracker,
        attempt: u32,
        entry: Option<&Arc<str>>,
    ) -> std::result::Result<(u64, LlmResponse), (u64, Error)> {
        let (reservation, req) = self
            .reserve(provider, request, tracker, attempt)
            .await
            .map_err(|e| (0, e))?;
        // A failover entry's share is counted when its call is reserved, so a call cancelled
        // in flight is in it too (unless it never reached the wire: `InFlight`).
        if let Some(name) = entry {
            tracker.add_provider_cost(name, TokenUsage::new(0, 0, 1));
        }
        let call = reservation.call();
        let span = llm_span(provider, &req, attempt);
        let in_flight = InFlight::new(reservation, tracker, entry);
        let sent = wire::scope(Arc::clone(&in_flight.probe), provider.complete(&req));
        match sent.instrument(span.clone()).await {
            Ok(resp) => {
                if let Some(reservation) = in_flight.done() {
                    self.finish(reservation, &resp, tracker, &span);
                }
                if let Some(name) = entry {
                    tracker.add_provider_cost(name, TokenUsage::from(resp.usage));
                }
                Ok((call, resp))
            }
            Err(e) => {
                // A failed call counts, sent or not (as every attempt does).
                drop(in_flight.done());
                span.record(ERROR_TYPE, e.kind().as_str());
                span.record("otel.status_code", "ERROR");
                Err((call, e))
            }
        }
    }
}

/// A reserved call in flight. Dropped before [`done`](Self::done) (its future was cancelled)
/// after the transport began its request but before any connection was given it
/// ([`WireProbe::never_sent`]), the call never reached a server: it is given back to the ledger
/// and taken out of the tracker and the entry's share, so that the calls counted are the
/// requests the servers received. A call cancelled later, or on a provider off the transport,
/// counts.
struct InFlight<'t> {
    reservation: Option<Reservation>,
    probe: Arc<WireProbe>,
    tracker: &'t CostTracker,
    entry: Option<Arc<str>>,
}

impl<'t> InFlight<'t> {
    fn new(reservation: Reservation, tracker: &'t CostTracker, entry: Option<&Arc<str>>) -> Self {
        Self {
            reservation: Some(reservation),
            probe: Arc::new(WireProbe::default()),
            tracker,
            entry: entry.cloned(),
        }
    }

    /// The call's number.
    fn call(&self) -> u64 {
        self.reservation.as_ref().map_or(0, Reservation::call)
    }

    /// The call ended (answered or failed): its reservation, to settle or drop as usual
    /// (always there: `new` holds one and `done` consumes the guard).
    fn done(mut self) -> Option<Reservation> {
        self.reservation.take()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            if self.probe.never_sent() {
                r.unsent();
                self.tracker.remove_call(self.entry.as_ref());
            }
        }
    }
}

/// The request an attempt sends: the caller's when its `max_tokens` is the grant, else a copy
/// whose `max_tokens` is set to the grant (trimmed, or filled in when the caller set none).
/// The copy is boxed: held by value, it would sit in every call's future (240 bytes).
enum Sent<'r> {
    Same(&'r ChatRequest),
    Granted(Box<ChatRequest>),
}

impl Deref for Sent<'_> {
    type Target = ChatRequest;
    fn deref(&self) -> &ChatRequest {
        match self {
            Self::Same(r) => r,
            Self::Granted(r) => r,
        }
    }
}

impl Sent<'_> {
    fn into_owned(self) -> ChatRequest {
        match self {
            Self::Same(r) => r.clone(),
            Self::Granted(r) => *r,
        }
    }
}

/// `delay` raised to the error's `Retry-After` (a 429's, or a 5xx's that sent one), capped at the
/// policy's `max_delay`.
fn cap_retry_after(policy: &RetryPolicy, e: &Error, delay: Duration) -> Duration {
    match e.retry_after() {
        Some(ra) => delay.max(ra).min(policy.max_delay_value()),
        None => delay,
    }
}

/// The `llm.call` span of one attempt, with the GenAI request attributes.
fn llm_span(provider: &dyn LlmProvider, req: &ChatRequest, attempt: u32) -> tracing::Span {
    let model = req.model.as_deref().unwrap_or_else(|| provider.model());
    tracing::info_span!(
        target: "executionkit",
        "llm.call",
        otel.kind = "client",
        { GEN_AI_OPERATION_NAME } = OPERATION_CHAT,
        { GEN_AI_REQUEST_MODEL } = model,
        { GEN_AI_REQUEST_TEMPERATURE } = req.temperature,
        { GEN_AI_REQUEST_MAX_TOKENS } = req.max_tokens.map(i64::from),
        { GEN_AI_RESPONSE_FINISH_REASONS } = tracing::field::Empty,
        { GEN_AI_RESPONSE_MODEL } = tracing::field::Empty,
        { GEN_AI_RESPONSE_ID } = tracing::field::Empty,
        { GEN_AI_USAGE_INPUT_TOKENS } = tracing::field::Empty,
        { GEN_AI_USAGE_OUTPUT_TOKENS } = tracing::field::Empty,
        { EXECUTIONKIT_COST_USD } = tracing::field::Empty,
        attempt = i64::from(attempt),
        { ERROR_TYPE } = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The decision after a failed attempt on a route entry ([`RunContext::after_failure`]).
enum AfterFailure {
    Stop,
    Retry(Duration),
    MoveOn,
}

/// Redacts credential shapes and the provider's own key from an error's message, metadata and
/// source chain. Budget and argument errors hold no server text: only the key is looked for.
fn redact_error(e: Error, secret: Option<&str>) -> Error {
    if e.is_budget_exhausted() || e.is_invalid_argument() {
        return e.redacted_with(secret);
    }
    e.redact_text(&|t| {
        let r = redact_with(t, secret);
        if r == t {
            Cow::Borrowed(t)
        } else {
            Cow::Owned(r)
        }
    })
}

/// The boundary every pattern's public `run` returns through: the provider's keys (every
/// provider's, for a failover chain or a router), in every form
/// [`redact_secret`](crate::redact::redact_secret) knows, are removed from an error's message
/// and metadata and from a result's metadata (the value itself, the model's answer, is returned
/// as given), and the same way from its typed statistics, which stay equal to it.
pub(crate) fn seal<T, S: RedactStats>(
    r: crate::error::Result<PatternResult<T, S>>,
    provider: &dyn LlmProvider,
) -> crate::error::Result<PatternResult<T, S>> {
    // Once per run, not per call.
    let mut r = r;
    for s in provider.secrets() {
        r = seal_one(r, s);
    }
    r
}

fn seal_one<T, S: RedactStats>(
    r: crate::error::Result<PatternResult<T, S>>,
    secret: &str,
) -> crate::error::Result<PatternResult<T, S>> {
    if secret.len() < crate::redact::MIN_SECRET_LEN {
        return r;
    }
    match r {
        Ok(mut result) => {
            if !result.metadata.is_empty() {
                let mut meta = Value::Object(std::mem::take(&mut result.metadata));
                redact_secret_json(&mut meta, secret);
                if let Value::Object(m) = meta {
                    result.metadata = m;
                }
            }
            result.stats.redact_secret(secret);
            Ok(result)
        }
        Err(e) => Err(e.redacted_with(Some(secret))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod spend_tests {
    use super::*;
    use crate::usage::TokenUsage;

    #[test]
    fn the_spend_goes_on_a_result_and_on_an_error() {
        let t = CostTracker::new();
        t.add_usage(TokenUsage::new(5, 3, 1), None);
        let e = RunContext::new().spend_error(Error::cancelled(), &t);
        assert_eq!(e.cost(), TokenUsage::new(5, 3, 1));
        assert!(e.metadata().get("usage_over_grant").is_none()); // no call went over
        t.add_over_grant(2);
        let r = RunContext::new().spend_result(PatternResult::new("x"), &t);
        assert_eq!(r.cost, TokenUsage::new(5, 3, 1));
        assert_eq!(r.metadata["usage_over_grant"]["output_tokens"], 2);
    }
}
