//! [`Kit`]: a session facade (reference §13) holding a provider, a [`RunContext`], the
//! cumulative usage of everything it dispatched (failed runs included) and a conversation. Its
//! rate limits (requests, tokens per minute) are the provider layer [`RateLimited`].
//!
//! ```
//! use executionkit::{Consensus, MockProvider, Kit};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let kit = Kit::new(MockProvider::new(["Paris"]));
//! let r = kit.consensus("Capital of France?", &Consensus::new().samples(3)).await.unwrap();
//! assert_eq!(r.value, "Paris");
//! let r = kit.turn("And of Italy?").await.unwrap();
//! assert_eq!(kit.usage().llm_calls, 4);
//! assert_eq!(kit.messages().len(), 2); // the user turn and the answer
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use governor::Quota;

use crate::engine::stream::{StreamingResult, start as start_stream};
use crate::engine::{CostTracker, RunContext};
use crate::error::Result;
use crate::patterns::map_reduce::MapReduce;
use crate::patterns::react::ReactLoop;
use crate::patterns::{Consensus, RefineLoop};
use crate::pipe::Pipe;
use crate::provider::{ChatRequest, LlmProvider, Message, RateLimited};
use crate::result::PatternResult;
use crate::usage::TokenUsage;

/// A session: one provider, one [`RunContext`] (budget, retry policy, events), the cumulative
/// usage of every run dispatched through it, and a conversation for [`turn`](Self::turn).
///
/// Usage counts failed runs too: every error carries its spend, and the Kit adds it before
/// passing the error on. Turns are serialised (one at a time); other methods may run
/// concurrently from several tasks.
///
/// ```
/// use executionkit::{Budget, LlmResponse, MockProvider, RunContext, Kit};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let kit = Kit::new(MockProvider::new([LlmResponse::text("hi").with_usage(10, 2)]))
///     .context(RunContext::new().budget(Budget::new().max_calls(2)));
/// kit.turn("hello").await.unwrap();
/// kit.turn("again").await.unwrap();
/// // The session's budget is shared by every run: a third call is refused, and costs nothing.
/// assert!(kit.turn("more").await.unwrap_err().is_budget_exhausted());
/// assert_eq!(kit.usage().llm_calls, 2);
/// assert_eq!(kit.usage().input_tokens, 20);
/// # });
/// ```
pub struct Kit {
    provider: Arc<dyn LlmProvider>,
    /// The rate-limit layer the Kit made last, when `provider` is that layer.
    limited: Option<RateLimited<Arc<dyn LlmProvider>>>,
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
    /// let kit = executionkit::Kit::new(executionkit::MockProvider::default());
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
    /// use executionkit::{LlmProvider, MockProvider, Kit};
    /// let p: Arc<dyn LlmProvider> = Arc::new(MockProvider::default());
    /// let kit = Kit::from_arc(p.clone());
    /// assert!(Arc::ptr_eq(kit.provider(), &p));
    /// ```
    #[must_use]
    pub fn from_arc(provider: Arc<dyn LlmProvider>) -> Self {
        Self {
            provider,
            limited: None,
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
    /// use executionkit::{Budget, MockProvider, RunContext, Kit};
    /// let kit = Kit::new(MockProvider::default()).context(RunContext::new().budget(Budget::new().max_calls(10)));
    /// assert_eq!(kit.run_context().ledger().budget().calls_limit(), Some(10));
    /// ```
    #[must_use]
    pub fn context(mut self, ctx: RunContext) -> Self {
        self.ctx = ctx;
        self
    }

    /// Limits the session's LLM calls to `quota` (one permit per call: a 5-sample consensus
    /// takes 5). Wraps the provider in a [`RateLimited`]; each call of this method adds a layer.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{MockProvider, Kit};
    /// let kit = Kit::new(MockProvider::default())
    ///     .rate_limit(governor::Quota::per_second(NonZeroU32::new(5).unwrap()));
    /// assert_eq!(kit.rate_limited().unwrap().permits_taken(), 0);
    /// ```
    #[must_use]
    pub fn rate_limit(mut self, quota: Quota) -> Self {
        let layer = RateLimited::new(Arc::clone(&self.provider), quota);
        self.provider = Arc::new(layer.clone());
        self.limited = Some(layer);
        self
    }

    /// Limits the session's tokens to `n` per minute, with
    /// [`RateLimited::tokens_per_minute`]: each call is charged its estimate (the prompt at
    /// about four bytes a token, four per message, the tools' JSON, `max_tokens` for each
    /// choice) before it is sent, waiting while the minute's tokens are spent, and the
    /// difference from the usage the server reports is carried to the next call. Right after
    /// [`rate_limit`](Self::rate_limit) it joins that layer (one [`RateLimited`] limits both
    /// requests and tokens); otherwise it wraps the provider in a new layer whose request limit
    /// never binds. Called again, the new token limit replaces the old one.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{Kit, LlmResponse, MockProvider};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let kit = Kit::new(MockProvider::new([LlmResponse::text("ok").with_usage(5, 1)]))
    ///     .rate_limit(governor::Quota::per_second(NonZeroU32::new(10).unwrap()))
    ///     .tokens_per_minute(NonZeroU32::new(90_000).unwrap());
    /// kit.turn("hi").await.unwrap();
    /// let layer = kit.rate_limited().unwrap();
    /// assert_eq!(layer.permits_taken(), 1);
    /// // "hi" (1) + one message (4) + max_tokens (4096, the default), then corrected by the
    /// // reported 6: the next call gets the difference back.
    /// assert_eq!(layer.tokens_charged(), Some(4101));
    /// assert_eq!(layer.token_balance(), Some(6 - 4101));
    /// # });
    /// ```
    #[must_use]
    pub fn tokens_per_minute(mut self, n: NonZeroU32) -> Self {
        let layer = match self.limited.take() {
            Some(layer) => layer,
            None => RateLimited::new(
                Arc::clone(&self.provider),
                // One permit a nanosecond, four billion at once: never the limit.
                Quota::per_second(NonZeroU32::MAX),
            ),
        }
        .tokens_per_minute(n);
        self.provider = Arc::new(layer.clone());
        self.limited = Some(layer);
        self
    }

    /// The rate-limit layer made by the last [`rate_limit`](Self::rate_limit) or
    /// [`tokens_per_minute`](Self::tokens_per_minute), to read its counters (`None` without
    /// one). Clones share the counters with the provider the session uses.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{Kit, MockProvider};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["ok"]));
    /// assert!(kit.rate_limited().is_none());
    /// let kit = kit.tokens_per_minute(NonZeroU32::new(100_000).unwrap());
    /// kit.turn("hi").await.unwrap();
    /// assert_eq!(kit.rate_limited().unwrap().permits_taken(), 1);
    /// # });
    /// ```
    #[must_use]
    pub fn rate_limited(&self) -> Option<&RateLimited<Arc<dyn LlmProvider>>> {
        self.limited.as_ref()
    }

    /// `false` turns accounting off: [`usage`](Self::usage) stays zero.
    ///
    /// ```
    /// let kit = executionkit::Kit::new(executionkit::MockProvider::default()).track_cost(false);
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
    /// use executionkit::{Message, MockProvider, Kit};
    /// let kit = Kit::new(MockProvider::default()).with_messages(vec![Message::system("be brief")]);
    /// assert_eq!(kit.messages().len(), 1);
    /// ```
    #[must_use]
    pub fn with_messages(self, messages: Vec<Message>) -> Self {
        *self.lock_messages() = messages;
        self
    }

    /// The provider (rate-limited when [`rate_limit`](Self::rate_limit) or
    /// [`tokens_per_minute`](Self::tokens_per_minute) was used).
    ///
    /// ```
    /// use executionkit::{MockProvider, Kit};
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
    /// use executionkit::{Budget, MockProvider, RunContext, Kit};
    /// let kit = Kit::new(MockProvider::default()).context(RunContext::new().budget(Budget::new().max_calls(3)));
    /// assert_eq!(kit.run_context().ledger().budget().calls_limit(), Some(3));
    /// ```
    pub fn run_context(&self) -> &RunContext {
        &self.ctx
    }

    /// Everything dispatched through the session so far, failed runs included.
    ///
    /// ```
    /// use executionkit::{LlmResponse, MockProvider, Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new([LlmResponse::text("ok").with_usage(7, 3)]));
    /// kit.turn("q").await.unwrap();
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
    /// use executionkit::{Budget, CostRates, LlmResponse, MockProvider, RunContext, Kit};
    /// # futures::executor::block_on(async {
    /// let reply = || MockProvider::new([LlmResponse::text("ok").with_usage(1_000_000, 0)]);
    /// let unpriced = Kit::new(reply());
    /// unpriced.turn("q").await.unwrap();
    /// assert_eq!(unpriced.usd(), None);
    /// let rates = CostRates::new(2.0, 8.0).unwrap();
    /// let priced = Kit::new(reply()).context(RunContext::new().budget(Budget::new().default_price(rates)));
    /// priced.turn("q").await.unwrap();
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
    /// use executionkit::{Message, MockProvider, Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["hello"]));
    /// kit.turn("hi").await.unwrap();
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
    /// let kit = executionkit::Kit::new(executionkit::MockProvider::default());
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
    /// use executionkit::{MockProvider, StructuredValue, Kit};
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
    /// use executionkit::{Consensus, MockProvider, Kit};
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
    /// use executionkit::{MockProvider, RefineLoop, Kit};
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
    /// use executionkit::{Consensus, MockProvider, Pipe, Kit};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["42"]));
    /// let pipe = Pipe::new().step(Consensus::new().samples(2));
    /// let r = kit.pipe("6 * 7?", &pipe).await.unwrap();
    /// assert_eq!(r.value, "42");
    /// assert_eq!(kit.usage().llm_calls, 2);
    /// # });
    /// ```
    pub async fn pipe<Out: Send + 'static>(
        &self,
        prompt: &str,
        pipe: &Pipe<Out>,
    ) -> Result<PatternResult<Out, crate::PipeStats>> {
        self.track(pipe.run(self.provider.as_ref(), prompt, &self.ctx))
            .await
    }

    /// Runs a [`MapReduce`] over `items`.
    ///
    /// # Errors
    /// As [`MapReduce::run`].
    ///
    /// ```
    /// use executionkit::{MapReduce, MockProvider, Kit};
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

    /// Runs a [`ReactLoop`] (with its own tools) on `prompt`: a one-off conversation; see
    /// [`turn`](Self::turn) for the session's.
    ///
    /// # Errors
    /// As [`ReactLoop::run`] (a provider that cannot call tools is refused before any call).
    ///
    /// ```
    /// use executionkit::{MockProvider, Kit, ReactLoop};
    /// # futures::executor::block_on(async {
    /// let kit = Kit::new(MockProvider::new(["4"]));
    /// let r = kit.react("2 + 2?", &ReactLoop::new()).await.unwrap();
    /// assert_eq!(r.value, "4");
    /// // A one-off conversation: the session's own stays empty.
    /// assert!(kit.messages().is_empty());
    /// # });
    /// ```
    pub async fn react(
        &self,
        prompt: &str,
        pattern: &ReactLoop,
    ) -> Result<PatternResult<String, crate::ReactStats>> {
        self.track(pattern.run(self.provider.as_ref(), prompt, &self.ctx))
            .await
    }

    /// One turn of the session's conversation with the default [`ReactLoop`] (no tools; give
    /// a loop with tools to [`turn_with`](Self::turn_with)).
    ///
    /// # Errors
    /// As [`turn_with`](Self::turn_with).
    ///
    /// ```
    /// use executionkit::{MockProvider, Kit};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["Paris", "Rome"]);
    /// let kit = Kit::new(p.clone());
    /// kit.turn("Capital of France?").await.unwrap();
    /// let r = kit.turn("And of Italy?").await.unwrap();
    /// assert_eq!(r.value, "Rome");
    /// // The second turn was sent the whole conversation so far.
    /// assert_eq!(p.last_call().unwrap().request.messages.len(), 3);
    /// # });
    /// ```
    pub async fn turn(&self, user_text: &str) -> Result<PatternResult<String, crate::ReactStats>> {
        self.turn_with(user_text, &ReactLoop::new()).await
    }

    /// One turn: runs `pattern` (with its own tools) on the conversation plus
    /// `user(user_text)`; on success the
    /// conversation becomes the run's whole transcript (tool turns included); on failure it is
    /// left as it was. Turns run one at a time.
    ///
    /// ```
    /// use executionkit::{MockProvider, Role, Kit, ReactLoop};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let kit = Kit::new(MockProvider::new(["hello", "fine, thanks"]));
    /// kit.turn_with("hi", &ReactLoop::new().max_rounds(2)).await.unwrap();
    /// kit.turn("how are you?").await.unwrap();
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
        pattern: &ReactLoop,
    ) -> Result<PatternResult<String, crate::ReactStats>> {
        let _one_at_a_time = self.turn_lock.lock().await;
        let mut history = self.messages();
        history.push(Message::user(user_text));
        let outcome = pattern
            .run_transcript(self.provider.as_ref(), history, &self.ctx)
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
    /// use executionkit::{MockProvider, Kit};
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
    /// `invalid_argument` when the provider cannot stream or the request is bad; `budget_exhausted` when no call can be reserved.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use executionkit::{ChatRequest, Message, MockProvider, Kit};
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
