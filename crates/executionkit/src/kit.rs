//! [`Kit`]: a session facade (reference §13) holding a provider, a [`RunContext`], the
//! cumulative usage of everything it dispatched (failed runs included) and a conversation; and
//! [`RateLimited`], a provider wrapper that takes one [`governor`] permit per LLM call.
//!
//! ```
//! use executionkit::{Consensus, MockProvider, kit::Kit};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let kit = Kit::new(MockProvider::new(["Paris"]));
//! let r = kit.consensus("Capital of France?", &Consensus::new().samples(3)).await.unwrap();
//! assert_eq!(r.value, "Paris");
//! let r = kit.turn("And of Italy?", &[]).await.unwrap();
//! assert_eq!(kit.usage().llm_calls, 4);
//! assert_eq!(kit.messages().len(), 2); // the user turn and the answer
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::engine::stream::{StreamingResult, start as start_stream};
use crate::engine::{CostTracker, RunContext};
use crate::error::{Error, Result};
use crate::patterns::map_reduce::MapReduce;
use crate::patterns::react::ReactLoop;
use crate::patterns::{Consensus, RefineLoop};
use crate::pipe::Pipe;
use crate::provider::{ChatRequest, ChatStream, LlmProvider, LlmResponse, Message};
use crate::result::PatternResult;
use crate::tools::Tool;
use crate::usage::TokenUsage;

/// A session: one provider, one [`RunContext`] (budget, retry policy, events), the cumulative
/// usage of every run dispatched through it, and a conversation for [`turn`](Self::turn).
///
/// Usage counts failed runs too: every error carries its spend, and the Kit adds it before
/// passing the error on. Turns are serialised (one at a time); other methods may run
/// concurrently from several tasks.
///
/// ```
/// use executionkit::{Budget, LlmResponse, MockProvider, RunContext, kit::Kit};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let kit = Kit::new(MockProvider::new([LlmResponse::text("hi").with_usage(10, 2)]))
///     .context(RunContext::new().budget(Budget::new().max_calls(2)));
/// kit.turn("hello", &[]).await.unwrap();
/// kit.turn("again", &[]).await.unwrap();
/// // The session's budget is shared by every run: a third call is refused, and costs nothing.
/// assert!(kit.turn("more", &[]).await.unwrap_err().is_budget_exhausted());
/// assert_eq!(kit.usage().llm_calls, 2);
/// assert_eq!(kit.usage().input_tokens, 20);
/// # });
/// ```
pub struct Kit {
    provider: Arc<dyn LlmProvider>,
    ctx: RunContext,
    usage: CostTracker,
    track_cost: bool,
    messages: Mutex<Vec<Message>>,
    turn_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Kit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kit")
            .field("provider", &self.provider)
            .field("usage", &self.usage.usage())
            .field("track_cost", &self.track_cost)
            .field("messages", &self.lock_messages().len())
            .finish_non_exhaustive()
    }
}

impl Kit {
    /// A session over `provider` with a default [`RunContext`] and an empty conversation.
    ///
    /// ```
    /// let kit = executionkit::kit::Kit::new(executionkit::MockProvider::default());
    /// assert!(kit.usage().is_zero());
    /// ```
    #[must_use]
    pub fn new(provider: impl LlmProvider + 'static) -> Self {
        Self::from_arc(Arc::new(provider))
    }

    /// A session over a shared provider.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{LlmProvider, MockProvider, kit::Kit};
    /// let p: Arc<dyn LlmProvider> = Arc::new(MockProvider::default());
    /// let kit = Kit::from_arc(p.clone());
    /// assert!(Arc::ptr_eq(kit.provider(), &p));
    /// ```
    #[must_use]
    pub fn from_arc(provider: Arc<dyn LlmProvider>) -> Self {
        Self {
            provider,
            ctx: RunContext::new(),
            usage: CostTracker::new(),
            track_cost: true,
            messages: Mutex::new(Vec::new()),
            turn_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs everything under `ctx` (its budget is shared by every run of the session).
    ///
    /// ```
    /// use executionkit::{Budget, MockProvider, RunContext, kit::Kit};
    /// let kit = Kit::new(MockProvider::default()).context(RunContext::new().budget(Budget::new().max_calls(10)));
    /// assert_eq!(kit.run_context().ledger().budget().calls_limit(), Some(10));
    /// ```
    #[must_use]
    pub fn context(mut self, ctx: RunContext) -> Self {
        self.ctx = ctx;
        self
    }

    /// Limits the session's LLM calls to `quota` (one permit per call: a 5-sample consensus
    /// takes 5). Wraps the provider in a [`RateLimited`].
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{MockProvider, kit::Kit};
    /// let kit = Kit::new(MockProvider::default())
    ///     .rate_limit(governor::Quota::per_second(NonZeroU32::new(5).unwrap()));
    /// # let _ = kit;
    /// ```
    #[must_use]
    pub fn rate_limit(mut self, quota: Quota) -> Self {
        self.provider = Arc::new(RateLimited::new(Arc::clone(&self.provider), quota));
        self
    }

    /// `false` turns accounting off: [`usage`](Self::usage) stays zero.
    ///
    /// ```
    /// let kit = executionkit::kit::Kit::new(executionkit::MockProvider::default()).track_cost(false);
    /// # let _ = kit;
    /// ```
    #[must_use]
    pub fn track_cost(mut self, on: bool) -> Self {
        self.track_cost = on;
        self
    }

    /// Seeds the conversation used by [`turn`](Self::turn).
    ///
    /// ```
    /// use executionkit::{Message, MockProvider, kit::Kit};
    /// let kit = Kit::new(MockProvider::default()).with_messages(vec![Message::system("be brief")]);
    /// assert_eq!(kit.messages().len(), 1);
    /// ```
    #[must_use]
    pub fn with_messages(self, messages: Vec<Message>) -> Self {
        *self.lock_messages() = messages;
        self
    }

    /// The provider (rate-limited when [`rate_limit`](Self::rate_limit) was used).
    ///
    /// ```
    /// use executionkit::{MockProvider, kit::Kit};
    /// let kit = Kit::new(MockProvider::default().with_model("m1"));
    /// assert_eq!(kit.provider().model(), "m1");
    /// ```
    #[must_use]
    pub fn provider(&self) -> &Arc<dyn LlmProvider> {
        &self.provider
    }

    /// The run context shared by every dispatch.
    ///
    /// ```
    /// use executionkit::{Budget, MockProvider, RunContext, kit::Kit};
    /// let kit = Kit::new(MockProvider::default()).context(RunContext::new().budget(Budget::new().max_calls(3)));
    /// assert_eq!(kit.run_context().ledger().budget().calls_limit(), Some(3));
    /// ```
    pub fn run_context(&self) -> &RunContext {
        &self.ctx
    }

    /// Everything dispatched through the session so far, failed runs included.
    ///
    /// ```
    /// use executionkit::{LlmResponse, MockProvider, kit::Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new([LlmResponse::text("ok").with_usage(7, 3)]));
    /// kit.turn("q", &[]).await.unwrap();
    /// assert_eq!((kit.usage().input_tokens, kit.usage().output_tokens, kit.usage().llm_calls), (7, 3, 1));
    /// # });
    /// ```
    #[must_use]
    pub fn usage(&self) -> TokenUsage {
        self.usage.usage()
    }

    /// Money spent through the session, when the budget knows prices.
    ///
    /// ```
    /// use executionkit::{Budget, CostRates, LlmResponse, MockProvider, RunContext, kit::Kit};
    /// # futures::executor::block_on(async {
    /// let reply = || MockProvider::new([LlmResponse::text("ok").with_usage(1_000_000, 0)]);
    /// let unpriced = Kit::new(reply());
    /// unpriced.turn("q", &[]).await.unwrap();
    /// assert_eq!(unpriced.usd(), None);
    /// let rates = CostRates::new(2.0, 8.0).unwrap();
    /// let priced = Kit::new(reply()).context(RunContext::new().budget(Budget::new().default_price(rates)));
    /// priced.turn("q", &[]).await.unwrap();
    /// assert!((priced.usd().unwrap() - 2.0).abs() < 1e-9);
    /// # });
    /// ```
    #[must_use]
    pub fn usd(&self) -> Option<f64> {
        self.ctx
            .ledger()
            .budget()
            .has_prices()
            .then(|| self.usage.usd())
    }

    /// A copy of the conversation.
    ///
    /// ```
    /// use executionkit::{Message, MockProvider, kit::Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["hello"]));
    /// kit.turn("hi", &[]).await.unwrap();
    /// assert_eq!(kit.messages(), vec![Message::user("hi"), Message::assistant("hello")]);
    /// # });
    /// ```
    #[must_use]
    pub fn messages(&self) -> Vec<Message> {
        self.lock_messages().clone()
    }

    /// Replaces the conversation.
    ///
    /// ```
    /// let kit = executionkit::kit::Kit::new(executionkit::MockProvider::default());
    /// kit.set_messages(Vec::new());
    /// assert!(kit.messages().is_empty());
    /// ```
    pub fn set_messages(&self, messages: Vec<Message>) {
        *self.lock_messages() = messages;
    }

    fn lock_messages(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, cost: TokenUsage, usd: Option<f64>) {
        if self.track_cost {
            self.usage.add_usage(cost, usd);
        }
    }

    /// The chokepoint every dispatch goes through: awaits `run` and adds its cost (or its
    /// error's cost) to the session's usage. Use it for patterns without a Kit method.
    ///
    /// ```
    /// use executionkit::{MockProvider, patterns::structured::StructuredValue, kit::Kit};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let kit = Kit::new(MockProvider::new([r#"{"a": 1}"#]));
    /// let r = kit.track(StructuredValue::new().run(kit.provider().as_ref(), "json please", kit.run_context())).await.unwrap();
    /// assert_eq!(r.value["a"], 1);
    /// assert_eq!(kit.usage().llm_calls, 1);
    /// # });
    /// ```
    ///
    /// # Errors
    /// `run`'s error, unchanged.
    pub async fn track<T, S, F>(&self, run: F) -> Result<PatternResult<T, S>>
    where
        F: Future<Output = Result<PatternResult<T, S>>>,
    {
        match run.await {
            Ok(r) => {
                self.record(r.cost, r.usd);
                Ok(r)
            }
            Err(e) => {
                self.record(e.cost(), e.usd());
                Err(e)
            }
        }
    }

    /// Runs a [`Consensus`] vote on `prompt`.
    ///
    /// # Errors
    /// As [`Consensus::run`].
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, kit::Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["Paris", "Paris", "Lyon"]));
    /// let r = kit.consensus("Capital of France?", &Consensus::new().samples(3)).await.unwrap();
    /// assert_eq!(r.value, "Paris");
    /// assert_eq!(kit.usage().llm_calls, 3);
    /// # });
    /// ```
    pub async fn consensus(
        &self,
        prompt: &str,
        pattern: &Consensus,
    ) -> Result<PatternResult<String, crate::ConsensusStats>> {
        self.track(pattern.run(self.provider.as_ref(), prompt, &self.ctx))
            .await
    }

    /// Runs a [`RefineLoop`] on `prompt`.
    ///
    /// # Errors
    /// As [`RefineLoop::run`].
    ///
    /// ```
    /// use executionkit::{MockProvider, RefineLoop, kit::Kit};
    /// # futures::executor::block_on(async {
    /// // A draft, then the judge's score of 9/10, which meets the target.
    /// let kit = Kit::new(MockProvider::new(["draft", "9"]));
    /// let r = kit.refine("Write a haiku", &RefineLoop::new().target_score(0.8)).await.unwrap();
    /// assert_eq!(r.value, "draft");
    /// assert_eq!(kit.usage().llm_calls, 2);
    /// # });
    /// ```
    pub async fn refine(
        &self,
        prompt: &str,
        pattern: &RefineLoop,
    ) -> Result<PatternResult<String, crate::RefineStats>> {
        self.track(pattern.run(self.provider.as_ref(), prompt, &self.ctx))
            .await
    }

    /// Runs a [`Pipe`] on `prompt`.
    ///
    /// # Errors
    /// As [`Pipe::run`].
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, Pipe, kit::Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["42"]));
    /// let pipe = Pipe::new().step(Consensus::new().samples(2));
    /// let r = kit.pipe("6 * 7?", &pipe).await.unwrap();
    /// assert_eq!(r.value, "42");
    /// assert_eq!(kit.usage().llm_calls, 2);
    /// # });
    /// ```
    pub async fn pipe(
        &self,
        prompt: &str,
        pipe: &Pipe,
    ) -> Result<PatternResult<String, crate::PipeStats>> {
        self.track(pipe.run(self.provider.as_ref(), prompt, &self.ctx))
            .await
    }

    /// Runs a [`MapReduce`] over `items`.
    ///
    /// # Errors
    /// As [`MapReduce::run`].
    ///
    /// ```
    /// use executionkit::{MapReduce, MockProvider, kit::Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["a", "b", "a and b"]));
    /// let items = vec!["doc a".to_owned(), "doc b".to_owned()];
    /// let pattern = MapReduce::new()
    ///     .map_template("Summarise: {item}")
    ///     .reduce_template("Combine: {mapped_outputs}")
    ///     .max_concurrency(1);
    /// let r = kit.map_reduce(&items, &pattern).await.unwrap();
    /// assert_eq!(r.value, "a and b");
    /// assert_eq!(kit.usage().llm_calls, 3);
    /// # });
    /// ```
    pub async fn map_reduce(
        &self,
        items: &[String],
        pattern: &MapReduce,
    ) -> Result<PatternResult<String, crate::MapReduceStats>> {
        self.track(pattern.run(self.provider.as_ref(), items, &self.ctx))
            .await
    }

    /// Runs a [`ReactLoop`] on `prompt` with `tools` (a one-off conversation; see
    /// [`turn`](Self::turn) for the session's).
    ///
    /// # Errors
    /// As [`ReactLoop::run`] (a provider that cannot call tools is refused before any call).
    ///
    /// ```
    /// use executionkit::{MockProvider, kit::Kit, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["4"]));
    /// let r = kit.react("2 + 2?", &[], &ReactLoop::new()).await.unwrap();
    /// assert_eq!(r.value, "4");
    /// // A one-off conversation: the session's own stays empty.
    /// assert!(kit.messages().is_empty());
    /// # });
    /// ```
    pub async fn react(
        &self,
        prompt: &str,
        tools: &[Tool],
        pattern: &ReactLoop,
    ) -> Result<PatternResult<String>> {
        self.track(pattern.run(self.provider.as_ref(), prompt, tools, &self.ctx))
            .await
    }

    /// One turn of the session's conversation with the default [`ReactLoop`].
    ///
    /// # Errors
    /// As [`turn_with`](Self::turn_with).
    ///
    /// ```
    /// use executionkit::{MockProvider, kit::Kit};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["Paris", "Rome"]);
    /// let kit = Kit::new(p.clone());
    /// kit.turn("Capital of France?", &[]).await.unwrap();
    /// let r = kit.turn("And of Italy?", &[]).await.unwrap();
    /// assert_eq!(r.value, "Rome");
    /// // The second turn was sent the whole conversation so far.
    /// assert_eq!(p.last_call().unwrap().request.messages.len(), 3);
    /// # });
    /// ```
    pub async fn turn(&self, user_text: &str, tools: &[Tool]) -> Result<PatternResult<String>> {
        self.turn_with(user_text, tools, &ReactLoop::new()).await
    }

    /// One turn: runs `pattern` on the conversation plus `user(user_text)`; on success the
    /// conversation becomes the run's whole transcript (tool turns included); on failure it is
    /// left as it was. Turns run one at a time.
    ///
    /// ```
    /// use executionkit::{MockProvider, Role, kit::Kit, patterns::react::ReactLoop};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let kit = Kit::new(MockProvider::new(["hello", "fine, thanks"]));
    /// kit.turn_with("hi", &[], &ReactLoop::new().max_rounds(2)).await.unwrap();
    /// kit.turn("how are you?", &[]).await.unwrap();
    /// let roles: Vec<Role> = kit.messages().iter().map(|m| m.role).collect();
    /// assert_eq!(roles, [Role::User, Role::Assistant, Role::User, Role::Assistant]);
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`ReactLoop::run_messages`].
    pub async fn turn_with(
        &self,
        user_text: &str,
        tools: &[Tool],
        pattern: &ReactLoop,
    ) -> Result<PatternResult<String>> {
        let _one_at_a_time = self.turn_lock.lock().await;
        let mut history = self.messages();
        history.push(Message::user(user_text));
        let outcome = pattern
            .run_transcript(self.provider.as_ref(), history, tools, &self.ctx)
            .await;
        match outcome {
            Ok((r, transcript)) => {
                self.record(r.cost, r.usd);
                self.set_messages(transcript);
                Ok(r)
            }
            Err(e) => {
                self.record(e.cost(), e.usd());
                Err(e)
            }
        }
    }

    /// Streams one completion of `[user(prompt)]` (see [`stream_request`](Self::stream_request)).
    ///
    /// ```
    /// use futures::StreamExt;
    /// use executionkit::{MockProvider, kit::Kit};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let kit = Kit::new(MockProvider::new(["streamed answer"]));
    /// let s = kit.stream("question").await.unwrap();
    /// let text: Vec<String> = s.map(|d| d.unwrap()).collect().await;
    /// assert_eq!(text.concat(), "streamed answer");
    /// assert_eq!(kit.usage().llm_calls, 1);
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`stream_request`](Self::stream_request).
    pub async fn stream(&self, prompt: &str) -> Result<StreamingResult> {
        self.stream_request(ChatRequest::new(vec![Message::user(prompt)]))
            .await
    }

    /// Streams one completion of `request` under the session's budget. The call is reserved
    /// before this returns; the stream's usage is added to the session when it ends (drained,
    /// failed or dropped).
    ///
    /// # Errors
    /// `invalid_argument` when the provider cannot stream (a "StreamingProvider" is needed) or
    /// the request is bad; `budget_exhausted` when no call can be reserved.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use executionkit::{ChatRequest, Message, MockProvider, kit::Kit};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let kit = Kit::new(MockProvider::new(["streamed"]));
    /// let req = ChatRequest::new(vec![Message::user("q")]).max_tokens(64);
    /// let parts: Vec<String> = kit.stream_request(req).await.unwrap().map(|d| d.unwrap()).collect().await;
    /// assert_eq!(parts.concat(), "streamed");
    /// assert_eq!(kit.usage().llm_calls, 1);
    /// # });
    /// ```
    pub async fn stream_request(&self, request: ChatRequest) -> Result<StreamingResult> {
        let usage = self.usage.clone();
        let track = self.track_cost;
        let has_prices = self.ctx.ledger().budget().has_prices();
        let on_done = Box::new(move |t: &CostTracker| {
            if track {
                usage.add_usage(t.usage(), has_prices.then(|| t.usd()));
            }
        });
        start_stream(
            Arc::clone(&self.provider),
            request,
            &self.ctx,
            Some(on_done),
        )
        .await
    }
}

/// A provider wrapper that takes one permit of a [`governor`] rate limiter before every call
/// (and before every stream starts), so the limit applies per LLM call whatever the pattern.
/// Wrappers stack: a `RateLimited<Failover<…>>` limits the calls the failover makes. Clones
/// share the limiter.
///
/// A `rate_limited` error from the wrapped provider that carries a
/// [`retry_after`](Error::retry_after) puts the wrapper under a penalty (reference §8.3's
/// `drain`): every later permit waits until `now + retry_after`, on tokio's clock. Repeated 429s
/// extend the deadline, never shorten it.
///
/// ```
/// use std::num::NonZeroU32;
/// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, kit::RateLimited};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let p = RateLimited::per_second(MockProvider::new(["ok"]), NonZeroU32::new(100).unwrap());
/// let r = p.complete(&ChatRequest::new(vec![Message::user("hi")])).await.unwrap();
/// assert_eq!(r.content(), "ok");
/// assert_eq!(p.permits_taken(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct RateLimited<P> {
    inner: P,
    limiter: Arc<DefaultDirectRateLimiter>,
    permits: Arc<AtomicU64>,
    penalty: Arc<Mutex<Option<tokio::time::Instant>>>,
}

impl<P: fmt::Debug> fmt::Debug for RateLimited<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimited")
            .field("inner", &self.inner)
            .field("permits_taken", &self.permits.load(Ordering::Relaxed))
            .field("penalty_until", &self.penalty_until())
            .finish_non_exhaustive()
    }
}

impl<P> RateLimited<P> {
    /// Wraps `inner` under a new limiter enforcing `quota`.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// let q = governor::Quota::per_minute(NonZeroU32::new(60).unwrap());
    /// let p = executionkit::kit::RateLimited::new(executionkit::MockProvider::default(), q);
    /// assert_eq!(p.permits_taken(), 0);
    /// ```
    pub fn new(inner: P, quota: Quota) -> Self {
        Self::with_limiter(inner, Arc::new(RateLimiter::direct(quota)))
    }

    /// Wraps `inner` allowing `n` calls per second (bursts of up to `n`).
    ///
    /// ```
    /// let p = executionkit::kit::RateLimited::per_second(
    ///     executionkit::MockProvider::default(), std::num::NonZeroU32::new(2).unwrap());
    /// # let _ = p;
    /// ```
    pub fn per_second(inner: P, n: NonZeroU32) -> Self {
        Self::new(inner, Quota::per_second(n))
    }

    /// A token bucket refilling `rate` permits per second (fractions allowed: `0.5` is one call
    /// every two seconds) holding at most `capacity`; it starts full, so a burst of `capacity`
    /// calls never waits. Validated before any call: `rate` must be finite and > 0, `capacity`
    /// at least 1.
    ///
    /// # Errors
    /// `invalid_argument` "rate must be > 0" or "capacity must be >= 1", or when `rate` is so
    /// low that `capacity` permits would take longer than governor can count (centuries).
    ///
    /// ```
    /// use executionkit::{MockProvider, kit::RateLimited};
    /// let p = RateLimited::token_bucket(MockProvider::default(), 2.5, 10).unwrap();
    /// assert!(p.limiter().check_n(std::num::NonZeroU32::new(10).unwrap()).unwrap().is_ok());
    /// let err = RateLimited::token_bucket(MockProvider::default(), 0.0, 10).unwrap_err();
    /// assert!(err.message().contains("rate must be > 0"));
    /// let err = RateLimited::token_bucket(MockProvider::default(), 1.0, 0).unwrap_err();
    /// assert!(err.message().contains("capacity must be >= 1"));
    /// ```
    pub fn token_bucket(inner: P, rate: f64, capacity: u32) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::invalid_argument(
                "rate",
                format!("rate must be > 0, got {rate}"),
            ));
        }
        let Some(burst) = NonZeroU32::new(capacity) else {
            return Err(Error::invalid_argument(
                "capacity",
                format!("capacity must be >= 1, got {capacity}"),
            ));
        };
        // governor counts in u64 nanoseconds: the period times the burst must fit.
        let period_ns = (1e9 / rate).max(1.0);
        if period_ns * f64::from(capacity) >= 1.8e19 {
            return Err(Error::invalid_argument(
                "rate",
                format!("rate {rate}/s is too low for a capacity of {capacity}"),
            ));
        }
        let period = Duration::from_secs_f64(period_ns / 1e9).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).ok_or_else(|| {
            Error::invalid_argument("rate", format!("rate must be > 0, got {rate}"))
        })?;
        Ok(Self::new(inner, quota.allow_burst(burst)))
    }

    /// Wraps `inner` under an existing limiter (shared with other providers).
    ///
    /// ```
    /// use std::{num::NonZeroU32, sync::Arc};
    /// let l = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::new(9).unwrap())));
    /// let a = executionkit::kit::RateLimited::with_limiter(executionkit::MockProvider::default(), l.clone());
    /// let b = executionkit::kit::RateLimited::with_limiter(executionkit::MockProvider::default(), l);
    /// # let _ = (a, b);
    /// ```
    pub fn with_limiter(inner: P, limiter: Arc<DefaultDirectRateLimiter>) -> Self {
        Self {
            inner,
            limiter,
            permits: Arc::new(AtomicU64::new(0)),
            penalty: Arc::new(Mutex::new(None)),
        }
    }

    /// Holds every later permit until `after` from now (tokio's clock), as a 429 with that
    /// `retry_after` does; a later deadline already set is kept (penalties extend, never
    /// shorten). Clones share the penalty.
    ///
    /// ```
    /// use std::time::Duration;
    /// use executionkit::{MockProvider, kit::RateLimited};
    /// let p = RateLimited::token_bucket(MockProvider::default(), 10.0, 10).unwrap();
    /// p.penalize(Duration::from_secs(5));
    /// let until = p.penalty_until().unwrap();
    /// p.penalize(Duration::from_secs(1)); // shorter: the deadline stays
    /// assert_eq!(p.penalty_until(), Some(until));
    /// ```
    pub fn penalize(&self, after: Duration) {
        penalize(&self.penalty, after);
    }

    /// The deadline of the current penalty, if one was ever set (it may be in the past).
    ///
    /// ```
    /// let p = executionkit::kit::RateLimited::token_bucket(
    ///     executionkit::MockProvider::default(), 1.0, 1).unwrap();
    /// assert_eq!(p.penalty_until(), None);
    /// ```
    #[must_use]
    pub fn penalty_until(&self) -> Option<tokio::time::Instant> {
        *self.penalty.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The permits taken through this wrapper (and its clones) so far.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, kit::RateLimited};
    /// # futures::executor::block_on(async {
    /// let p = RateLimited::per_second(MockProvider::new(["ok"]), NonZeroU32::new(100).unwrap());
    /// let clone = p.clone();
    /// clone.complete(&ChatRequest::new(vec![Message::user("q")])).await.unwrap();
    /// assert_eq!(p.permits_taken(), 1); // clones share the count
    /// # });
    /// ```
    #[must_use]
    pub fn permits_taken(&self) -> u64 {
        self.permits.load(Ordering::Relaxed)
    }

    /// The limiter.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{MockProvider, kit::RateLimited};
    /// let p = RateLimited::per_second(MockProvider::default(), NonZeroU32::new(1).unwrap());
    /// assert!(p.limiter().check().is_ok()); // the first permit is free
    /// assert!(p.limiter().check().is_err()); // the burst of one is used up
    /// ```
    #[must_use]
    pub fn limiter(&self) -> &Arc<DefaultDirectRateLimiter> {
        &self.limiter
    }

    /// The wrapped provider.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{MockProvider, kit::RateLimited};
    /// let p = RateLimited::per_second(MockProvider::default(), NonZeroU32::new(5).unwrap());
    /// assert_eq!(p.inner().call_count(), 0);
    /// ```
    #[must_use]
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for RateLimited<P> {
    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        acquire(&self.limiter, &self.penalty, &self.permits).await;
        let result = self.inner.complete(request).await;
        if let Err(e) = &result {
            penalize_for(&self.penalty, e);
        }
        result
    }

    fn stream(&self, request: ChatRequest) -> ChatStream {
        let limiter = Arc::clone(&self.limiter);
        let permits = Arc::clone(&self.permits);
        let penalty = Arc::clone(&self.penalty);
        let on_error = Arc::clone(&self.penalty);
        let inner = self.inner.stream(request).inspect(move |item| {
            if let Err(e) = item {
                penalize_for(&on_error, e);
            }
        });
        let wait = futures::stream::once(async move {
            acquire(&limiter, &penalty, &permits).await;
        })
        .filter_map(|()| async { None });
        Box::pin(wait.chain(inner))
    }

    fn supports_tools(&self) -> bool {
        self.inner.supports_tools()
    }

    fn supports_streaming(&self) -> bool {
        self.inner.supports_streaming()
    }

    fn supports_n(&self) -> bool {
        self.inner.supports_n()
    }

    fn secret(&self) -> Option<&str> {
        self.inner.secret()
    }
}

/// Sets the penalty deadline to `max(existing, now + after)`.
fn penalize(penalty: &Mutex<Option<tokio::time::Instant>>, after: Duration) {
    let Some(until) = tokio::time::Instant::now().checked_add(after) else {
        return;
    };
    let mut slot = penalty.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none_or(|d| d < until) {
        *slot = Some(until);
    }
}

/// A `rate_limited` error with a `retry_after` penalises the limiter.
fn penalize_for(penalty: &Mutex<Option<tokio::time::Instant>>, error: &Error) {
    if let (true, Some(after)) = (error.is_rate_limited(), error.retry_after()) {
        penalize(penalty, after);
    }
}

/// Waits out any penalty (re-reading it, since another call's 429 may extend it meanwhile).
async fn wait_penalty(penalty: &Mutex<Option<tokio::time::Instant>>) {
    loop {
        let deadline = *penalty.lock().unwrap_or_else(PoisonError::into_inner);
        match deadline {
            Some(d) if d > tokio::time::Instant::now() => tokio::time::sleep_until(d).await,
            _ => return,
        }
    }
}

/// One permit: the penalty first, then the limiter, then the penalty again (a 429 seen while
/// this call waited for its permit holds it too).
async fn acquire(
    limiter: &DefaultDirectRateLimiter,
    penalty: &Mutex<Option<tokio::time::Instant>>,
    permits: &AtomicU64,
) {
    wait_penalty(penalty).await;
    limiter.until_ready().await;
    wait_penalty(penalty).await;
    permits.fetch_add(1, Ordering::Relaxed);
}
