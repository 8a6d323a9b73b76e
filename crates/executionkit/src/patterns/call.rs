//! One-call forms mirroring the Python names: `consensus(&provider, prompt).samples(3).await`.
//!
//! Each returns a small builder holding the provider, the prompt, a [`RunContext`] and the
//! pattern; set options on it and `.await` it. The options are the pattern's own builder methods.
//!
//! ```
//! use executionkit::{MockProvider, consensus, refine_loop};
//! # futures::executor::block_on(async {
//! let p = MockProvider::new(["Paris"]);
//! let r = consensus(&p, "Capital of France?").samples(2).await.unwrap();
//! assert_eq!(r.value, "Paris");
//! let p = MockProvider::new(["draft", "9"]);
//! assert_eq!(refine_loop(&p, "Write a haiku").await.unwrap().value, "draft");
//! # });
//! ```

use std::future::{Future, IntoFuture};

use futures::future::BoxFuture;

use super::{Consensus, RefineCheckpoint, RefineLoop, VotingStrategy};
use crate::engine::RunContext;
use crate::error::Result;
use crate::provider::LlmProvider;
use crate::result::PatternResult;

macro_rules! forward {
    ($($(#[$doc:meta])* $name:ident($ty:ty);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, v: $ty) -> Self {
                self.pattern = self.pattern.$name(v);
                self
            }
        )*
    };
}

/// Consensus on `prompt` with default options; set options, then `.await`.
///
/// ```
/// use executionkit::{MockProvider, consensus};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["Paris", "Paris", "Lyon"]);
/// let r = consensus(&p, "Capital of France?").samples(3).await.unwrap();
/// assert_eq!(r.value, "Paris");
/// # });
/// ```
pub fn consensus<'a>(provider: &'a dyn LlmProvider, prompt: &'a str) -> ConsensusCall<'a> {
    ConsensusCall {
        provider,
        prompt,
        ctx: RunContext::new(),
        pattern: Consensus::new(),
    }
}

/// A refine loop on `prompt` with default options; set options, then `.await`.
///
/// ```
/// use executionkit::{MockProvider, refine_loop};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["draft", "9"]);
/// let r = refine_loop(&p, "Write a haiku").target_score(0.9).await.unwrap();
/// assert_eq!(r.value, "draft");
/// # });
/// ```
pub fn refine_loop<'a>(provider: &'a dyn LlmProvider, prompt: &'a str) -> RefineCall<'a> {
    RefineCall {
        provider,
        prompt,
        ctx: RunContext::new(),
        pattern: RefineLoop::new(),
    }
}

/// The builder returned by [`consensus`].
///
/// ```
/// use executionkit::{MockProvider, consensus};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["4", "4", "5"]);
/// let r = consensus(&p, "2 + 2?").samples(3).temperature(0.5).await.unwrap();
/// assert_eq!(r.value, "4");
/// assert_eq!(p.last_call().unwrap().request.temperature, Some(0.5));
/// # });
/// ```
#[derive(Debug)]
#[must_use = "a consensus call does nothing until awaited"]
pub struct ConsensusCall<'a> {
    provider: &'a dyn LlmProvider,
    prompt: &'a str,
    ctx: RunContext,
    pattern: Consensus,
}

impl ConsensusCall<'_> {
    /// Runs under `ctx` (its budget ledger, retry policy and event subscriber).
    ///
    /// ```
    /// use executionkit::{Budget, MockProvider, RunContext, consensus};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["a"]);
    /// let ctx = RunContext::new().budget(Budget::new().max_calls(2));
    /// let e = consensus(&p, "q").context(ctx).await.unwrap_err();
    /// assert!(e.is_budget_exhausted());
    /// # });
    /// ```
    pub fn context(mut self, ctx: RunContext) -> Self {
        self.ctx = ctx;
        self
    }

    forward! {
        /// See [`Consensus::samples`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").samples(3);
        /// # let _ = c;
        /// ```
        samples(usize);
        /// See [`Consensus::temperature`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").temperature(0.2);
        /// # let _ = c;
        /// ```
        temperature(f64);
        /// See [`Consensus::max_concurrency`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").max_concurrency(2);
        /// # let _ = c;
        /// ```
        max_concurrency(usize);
        /// See [`Consensus::strategy`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").strategy(executionkit::VotingStrategy::Unanimous);
        /// # let _ = c;
        /// ```
        strategy(VotingStrategy);
        /// See [`Consensus::max_tokens`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").max_tokens(64);
        /// # let _ = c;
        /// ```
        max_tokens(u32);
        /// See [`Consensus::seed`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").seed(1);
        /// # let _ = c;
        /// ```
        seed(u64);
        /// See [`Consensus::system`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").system(String::from("Be brief."));
        /// # let _ = c;
        /// ```
        system(String);
        /// See [`Consensus::model`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").model(String::from("m"));
        /// # let _ = c;
        /// ```
        model(String);
        /// See [`Consensus::use_n`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::consensus(&p, "q").use_n(true);
        /// # let _ = c;
        /// ```
        use_n(bool);
    }

    /// See [`Consensus::vote_key`].
    ///
    /// ```
    /// # let p = executionkit::MockProvider::default();
    /// let c = executionkit::consensus(&p, "q").vote_key(|t: &str| t.to_lowercase());
    /// # let _ = c;
    /// ```
    pub fn vote_key(mut self, key: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.pattern = self.pattern.vote_key(key);
        self
    }
}

impl<'a> IntoFuture for ConsensusCall<'a> {
    type Output = Result<PatternResult<String>>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.pattern
                .run(self.provider, self.prompt, &self.ctx)
                .await
        })
    }
}

/// The builder returned by [`refine_loop`].
///
/// ```
/// use executionkit::{MockProvider, refine_loop};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["short", "a longer answer"]);
/// let r = refine_loop(&p, "Explain")
///     .target_score(0.5)
///     .evaluator(|text: String| async move { Ok((text.len() as f64 / 20.0).min(1.0)) })
///     .await
///     .unwrap();
/// assert_eq!(r.value, "a longer answer");
/// # });
/// ```
#[derive(Debug)]
#[must_use = "a refine call does nothing until awaited"]
pub struct RefineCall<'a> {
    provider: &'a dyn LlmProvider,
    prompt: &'a str,
    ctx: RunContext,
    pattern: RefineLoop,
}

impl RefineCall<'_> {
    /// Runs under `ctx` (its budget ledger, retry policy and event subscriber).
    ///
    /// ```
    /// # let p = executionkit::MockProvider::default();
    /// let c = executionkit::refine_loop(&p, "q").context(executionkit::RunContext::new());
    /// # let _ = c;
    /// ```
    pub fn context(mut self, ctx: RunContext) -> Self {
        self.ctx = ctx;
        self
    }

    forward! {
        /// See [`RefineLoop::target_score`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").target_score(0.8);
        /// # let _ = c;
        /// ```
        target_score(f64);
        /// See [`RefineLoop::max_iterations`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").max_iterations(2);
        /// # let _ = c;
        /// ```
        max_iterations(usize);
        /// See [`RefineLoop::patience`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").patience(2);
        /// # let _ = c;
        /// ```
        patience(usize);
        /// See [`RefineLoop::delta_threshold`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").delta_threshold(0.05);
        /// # let _ = c;
        /// ```
        delta_threshold(f64);
        /// See [`RefineLoop::temperature`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").temperature(0.5);
        /// # let _ = c;
        /// ```
        temperature(f64);
        /// See [`RefineLoop::max_tokens`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").max_tokens(128);
        /// # let _ = c;
        /// ```
        max_tokens(u32);
        /// See [`RefineLoop::max_eval_chars`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").max_eval_chars(1000);
        /// # let _ = c;
        /// ```
        max_eval_chars(usize);
        /// See [`RefineLoop::seed`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").seed(3);
        /// # let _ = c;
        /// ```
        seed(u64);
        /// See [`RefineLoop::system`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").system(String::from("Be brief."));
        /// # let _ = c;
        /// ```
        system(String);
        /// See [`RefineLoop::model`].
        ///
        /// ```
        /// # let p = executionkit::MockProvider::default();
        /// let c = executionkit::refine_loop(&p, "q").model(String::from("m"));
        /// # let _ = c;
        /// ```
        model(String);
    }

    /// See [`RefineLoop::evaluator`].
    ///
    /// ```
    /// # let p = executionkit::MockProvider::default();
    /// let c = executionkit::refine_loop(&p, "q").evaluator(|_t: String| async { Ok(1.0) });
    /// # let _ = c;
    /// ```
    pub fn evaluator<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<f64>> + Send + 'static,
    {
        self.pattern = self.pattern.evaluator(f);
        self
    }

    /// See [`RefineLoop::on_checkpoint`].
    ///
    /// ```
    /// # let p = executionkit::MockProvider::default();
    /// let c = executionkit::refine_loop(&p, "q").on_checkpoint(|c| eprintln!("{}", c.iteration));
    /// # let _ = c;
    /// ```
    pub fn on_checkpoint(mut self, f: impl Fn(&RefineCheckpoint) + Send + Sync + 'static) -> Self {
        self.pattern = self.pattern.on_checkpoint(f);
        self
    }
}

impl<'a> IntoFuture for RefineCall<'a> {
    type Output = Result<PatternResult<String>>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.pattern
                .run(self.provider, self.prompt, &self.ctx)
                .await
        })
    }
}
