//! The checked call path: every LLM call of every pattern goes through
//! [`RunContext::complete`], which reserves budget, retries, emits events and tracing spans,
//! and records usage.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use backon::Retryable;
use tracing::Instrument;

use super::budget::{BudgetLedger, CostTracker};
use super::retry::RetryPolicy;
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::provider::{ChatRequest, DEFAULT_MAX_TOKENS, LlmProvider, LlmResponse};
use crate::redact::redact_with;
use crate::telemetry::{
    ERROR_TYPE, GEN_AI_OPERATION_NAME, GEN_AI_REQUEST_MAX_TOKENS, GEN_AI_REQUEST_MODEL,
    GEN_AI_REQUEST_TEMPERATURE, GEN_AI_RESPONSE_FINISH_REASONS, GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS, OPERATION_CHAT,
};
use crate::usage::{Budget, TokenUsage};

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
        }
    }

    /// Starts a fresh ledger enforcing `budget`.
    ///
    /// ```
    /// let ctx = executionkit::RunContext::new().budget(executionkit::Budget::new().max_calls(1));
    /// assert_eq!(ctx.ledger().remaining().llm_calls, Some(1));
    /// ```
    pub fn budget(mut self, budget: impl Into<Budget>) -> Self {
        self.ledger = Arc::new(BudgetLedger::new(budget.into()));
        self
    }

    /// Shares an existing ledger.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{RunContext, engine::BudgetLedger};
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

    /// The shared ledger.
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
    /// use executionkit::{ChatRequest, Message, MockProvider, RunContext, engine::CostTracker};
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
    pub async fn complete(
        &self,
        provider: &dyn LlmProvider,
        request: ChatRequest,
        tracker: &CostTracker,
    ) -> Result<LlmResponse> {
        if let Err(e) = request.validate() {
            return Err(e
                .with_cost(tracker.usage())
                .with_usd(self.tracker_usd(tracker)));
        }
        let attempt = AtomicU32::new(0);
        let last_call = std::sync::atomic::AtomicU64::new(0);
        let request = &request;
        let result = (|| async {
            let n = attempt.fetch_add(1, Ordering::Relaxed) + 1;
            let (call, resp) = self.attempt(provider, request, tracker, n).await?;
            last_call.store(call, Ordering::Relaxed);
            Ok::<_, (u64, Error)>(resp)
        })
        .retry(self.retry.backoff())
        .sleep(tokio::time::sleep)
        .when(|(_, e)| self.retry.should_retry(e))
        .adjust(|(_, e), d| {
            d.map(|d| match e.retry_after() {
                Some(ra) if e.is_rate_limited() => d.max(ra).min(self.retry.max_delay_value()),
                _ => d,
            })
        })
        .notify(|(call, e), delay| {
            if let Some(sink) = &self.events {
                sink.emit(&Event::CallRetried {
                    call: *call,
                    attempt: attempt.load(Ordering::Relaxed),
                    delay,
                    kind: e.kind(),
                });
            }
        })
        .await;
        match result {
            Ok(resp) => Ok(resp),
            Err((call, e)) => {
                if let Some(sink) = &self.events {
                    sink.emit(&Event::CallFailed {
                        call,
                        kind: e.kind(),
                    });
                }
                let e = if e.is_budget_exhausted() || e.is_invalid_argument() {
                    e
                } else {
                    redact_error(e, provider.secret())
                };
                Err(e
                    .with_cost(tracker.usage())
                    .with_usd(self.tracker_usd(tracker)))
            }
        }
    }

    /// Money spent by `tracker`, when prices are known.
    #[must_use]
    pub fn tracker_usd(&self, tracker: &CostTracker) -> Option<f64> {
        self.ledger.budget().has_prices().then(|| tracker.usd())
    }

    async fn attempt(
        &self,
        provider: &dyn LlmProvider,
        request: &ChatRequest,
        tracker: &CostTracker,
        attempt: u32,
    ) -> std::result::Result<(u64, LlmResponse), (u64, Error)> {
        let model = request.model.as_deref().unwrap_or_else(|| provider.model());
        let n = u64::from(request.n.unwrap_or(1).max(1));
        let wanted = u64::from(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
        let reservation = self
            .ledger
            .reserve_choices(model, wanted, n, attempt > 1)
            .await
            .map_err(|e| (0, e))?;
        let call = reservation.call();
        tracker.add_call();
        let granted = reservation.max_tokens_per_choice();
        let req: Cow<'_, ChatRequest> = if granted < wanted {
            let mut r = request.clone();
            r.max_tokens = Some(u32::try_from(granted).unwrap_or(u32::MAX).max(1));
            Cow::Owned(r)
        } else {
            Cow::Borrowed(request)
        };
        if let Some(sink) = &self.events {
            sink.emit(&Event::CallStarted {
                call,
                attempt,
                model: model.to_owned(),
            });
        }
        let span = tracing::info_span!(
            target: "executionkit",
            "llm.call",
            { GEN_AI_OPERATION_NAME } = OPERATION_CHAT,
            { GEN_AI_REQUEST_MODEL } = model,
            { GEN_AI_REQUEST_TEMPERATURE } = req.temperature,
            { GEN_AI_REQUEST_MAX_TOKENS } = req.max_tokens,
            { GEN_AI_RESPONSE_FINISH_REASONS } = tracing::field::Empty,
            { GEN_AI_USAGE_INPUT_TOKENS } = tracing::field::Empty,
            { GEN_AI_USAGE_OUTPUT_TOKENS } = tracing::field::Empty,
            attempt = attempt,
            { ERROR_TYPE } = tracing::field::Empty,
        );
        let resp = match provider.complete(&req).instrument(span.clone()).await {
            Ok(resp) => resp,
            Err(e) => {
                span.record(ERROR_TYPE, e.kind().as_str());
                return Err((call, e));
            }
        };
        let usd = reservation.settle(resp.usage);
        tracker.add_tokens(resp.usage, usd);
        if !span.is_disabled() {
            let reasons: Vec<&str> = resp
                .choices
                .iter()
                .map(|c| c.finish_reason.as_deref().unwrap_or(""))
                .collect();
            span.record(GEN_AI_RESPONSE_FINISH_REASONS, format!("{reasons:?}"));
            span.record(GEN_AI_USAGE_INPUT_TOKENS, resp.usage.input_tokens);
            span.record(GEN_AI_USAGE_OUTPUT_TOKENS, resp.usage.output_tokens);
        }
        if let Some(sink) = &self.events {
            sink.emit(&Event::CallFinished {
                call,
                usage: TokenUsage::new(resp.usage.input_tokens, resp.usage.output_tokens, 1),
                finish_reason: resp.finish_reason().map(str::to_owned),
                spent: self.ledger.spent(),
                remaining: self.ledger.remaining(),
            });
        }
        Ok((call, resp))
    }
}

/// Redacts credential shapes and the provider's own key from an error's message.
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
