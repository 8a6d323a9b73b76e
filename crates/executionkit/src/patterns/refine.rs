//! [`RefineLoop`]: draft, score, improve, rescore, until the score is good enough.
//!
//! ```
//! use executionkit::{MockProvider, RefineLoop, RunContext};
//! # futures::executor::block_on(async {
//! // Draft, judge "6", improvement, judge "9".
//! let p = MockProvider::new(["draft", "6", "better", "9"]);
//! let r = RefineLoop::new().run(&p, "Write a haiku", &RunContext::new()).await.unwrap();
//! assert_eq!(r.value, "better");
//! assert_eq!(r.cost.llm_calls, 4);
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::Serialize;
use tracing::Instrument;

use super::judge::{
    JUDGE_MAX_TOKENS, JUDGE_TEMPERATURE, judge_messages, judge_repair_messages,
    judge_response_format, parse_judge_score,
};
use super::options::{CallOptions, WithCallOptions};
use super::{Pattern, StepInput, TerminationReason};
use crate::engine::convergence::{
    ConvergenceDetector, StopRule, check_delta_threshold, check_patience,
};
use crate::engine::{CostTracker, RunContext, seal};
use crate::error::{Error, ErrorKind, Result};
use crate::provider::{LlmProvider, Message};
use crate::result::{PatternResult, RedactStats};
use crate::usage::TokenUsage;

/// A pure-code evaluator: scores a text in [0, 1].
pub(crate) type Evaluator = Arc<dyn Fn(String) -> BoxFuture<'static, Result<f64>> + Send + Sync>;

/// A checkpoint callback, called after the first score (iteration 0) and after each refinement.
pub(crate) type CheckpointFn = Arc<dyn Fn(&RefineCheckpoint) + Send + Sync>;

/// The state of a refine loop after one scoring, as given to [`RefineLoop::on_checkpoint`].
/// Serialises to `{"iteration", "current_text", "current_score", "cost"}`.
///
/// ```
/// use executionkit::{RefineCheckpoint, TokenUsage};
/// let c = RefineCheckpoint { iteration: 0, current_text: "d".into(), current_score: 0.5, cost: TokenUsage::new(1, 1, 1) };
/// assert_eq!(serde_json::to_value(&c).unwrap()["cost"]["llm_calls"], 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefineCheckpoint {
    /// 0 for the first draft, then 1, 2, … for each refinement.
    pub iteration: usize,
    /// The text just scored (the refinement, not the best so far).
    pub current_text: String,
    /// Its score.
    pub current_score: f64,
    /// The loop's spend so far.
    pub cost: TokenUsage,
}

/// What a refine loop observed: [`RefineLoop::run`]'s `stats`, and its `metadata` keys of the
/// same names (the metadata is these statistics serialised).
///
/// ```
/// use executionkit::{MockProvider, RefineLoop, RunContext, TerminationReason};
/// # futures::executor::block_on(async {
/// // The draft scores 0.5, the improvement 0.9: the target.
/// let p = MockProvider::new(["draft", "5", "better", "9"]);
/// let r = RefineLoop::new().target_score(0.9).run(&p, "Write a haiku", &RunContext::new()).await.unwrap();
/// assert_eq!(r.stats.iterations, 1);
/// assert!(r.stats.converged);
/// assert_eq!(r.stats.score_history, [0.5, 0.9]);
/// assert_eq!(r.stats.termination_reason, TerminationReason::TargetReached);
/// assert_eq!(r.metadata["termination_reason"], "target_reached");
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefineStats {
    /// Refinement rounds that were scored (0 when the first draft stopped the loop).
    pub iterations: usize,
    /// Whether the loop stopped on its own (target reached or score settled), rather than at
    /// `max_iterations` or the budget's end.
    pub converged: bool,
    /// Every score in order: the first draft's, then each refinement's.
    pub score_history: Vec<f64>,
    /// Why the loop stopped.
    pub termination_reason: TerminationReason,
}

impl RedactStats for RefineStats {}

/// The iterative refine loop.
///
/// Standalone ([`RefineLoop::run`]) it generates a first draft from the prompt. As a pipe step it
/// takes the previous step's value as the draft and the pipe's prompt as the task: the draft is
/// scored first (no generation call), then improved against the task and rescored. Each round
/// refines the **best** text so far; the best-scoring text is returned with its score.
///
/// It stops when the score reaches `target_score` (`termination_reason` `"target_reached"`),
/// when the score stays within `delta_threshold` for `patience` rounds (`"converged"`), after
/// `max_iterations` rounds (`"max_iterations"`), or when the budget runs out with a scored
/// draft in hand (`"budget_exhausted"`, returning the best so far; with no scored draft the run
/// fails with `budget_exhausted`).
///
/// The evaluator is the default LLM judge, whose reply is
/// retried once when it does not parse, or any async closure ([`RefineLoop::evaluator`]).
/// Statistics ([`RefineStats`], also the metadata keys): `iterations`, `converged`,
/// `score_history`, `termination_reason`.
///
/// ```
/// use executionkit::{MockProvider, RefineLoop, RunContext};
/// # futures::executor::block_on(async {
/// // generation, judge, refinement, judge
/// let p = MockProvider::new(["draft", "6", "better", "9"]);
/// let r = RefineLoop::new().run(&p, "Write a haiku", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value, "better");
/// assert_eq!(r.score, Some(0.9));
/// assert_eq!(r.metadata["termination_reason"], "target_reached");
/// assert_eq!(r.cost.llm_calls, 4);
/// # });
/// ```
#[derive(Clone)]
#[must_use]
pub struct RefineLoop {
    target_score: f64,
    max_iterations: usize,
    patience: usize,
    delta_threshold: f64,
    max_eval_chars: usize,
    call: CallOptions,
    evaluator: Option<Evaluator>,
    on_checkpoint: Option<CheckpointFn>,
}

impl Default for RefineLoop {
    fn default() -> Self {
        Self {
            target_score: 0.9,
            max_iterations: 5,
            patience: 3,
            delta_threshold: 0.01,
            max_eval_chars: 32_768,
            call: CallOptions::new(),
            evaluator: None,
            on_checkpoint: None,
        }
    }
}

impl fmt::Debug for RefineLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefineLoop")
            .field("target_score", &self.target_score)
            .field("max_iterations", &self.max_iterations)
            .field("patience", &self.patience)
            .field("delta_threshold", &self.delta_threshold)
            .field("max_eval_chars", &self.max_eval_chars)
            .field("call", &self.call)
            .field(
                "evaluator",
                &if self.evaluator.is_some() {
                    "custom"
                } else {
                    "llm_judge"
                },
            )
            .finish_non_exhaustive()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.$name = v;
            self
        }
    };
}

/// The temperature of generation and refinement calls when none is set.
const DEFAULT_TEMPERATURE: f64 = 0.7;

impl WithCallOptions for RefineLoop {
    fn call_options(&self) -> &CallOptions {
        &self.call
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        &mut self.call
    }
}

impl RefineLoop {
    /// The defaults: target 0.9, 5 iterations, patience 3, delta 0.01, temperature 0.7,
    /// 4096 max tokens, 32768 evaluated characters, the LLM judge.
    ///
    /// ```
    /// let r = executionkit::RefineLoop::new();
    /// # let _ = r;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    setter! {
        /// The score (in [0, 1]) that ends the loop.
        ///
        /// ```
        /// let r = executionkit::RefineLoop::new().target_score(0.8);
        /// # let _ = r;
        /// ```
        target_score: f64
    }
    setter! {
        /// The most refinement rounds after the first score (0 = score only).
        ///
        /// ```
        /// let r = executionkit::RefineLoop::new().max_iterations(3);
        /// # let _ = r;
        /// ```
        max_iterations: usize
    }
    setter! {
        /// Rounds in a row whose score moves by at most `delta_threshold` before stopping (≥ 1).
        ///
        /// ```
        /// let r = executionkit::RefineLoop::new().patience(2);
        /// # let _ = r;
        /// ```
        patience: usize
    }
    setter! {
        /// The largest score change that still counts as "no progress" (finite, ≥ 0).
        ///
        /// ```
        /// let r = executionkit::RefineLoop::new().delta_threshold(0.05);
        /// # let _ = r;
        /// ```
        delta_threshold: f64
    }
    setter! {
        /// The judge sees at most this many characters of a text (≥ 1).
        ///
        /// ```
        /// let r = executionkit::RefineLoop::new().max_eval_chars(1000);
        /// # let _ = r;
        /// ```
        max_eval_chars: usize
    }

    /// Scores texts with `f` instead of the LLM judge. A score outside [0, 1] (or NaN) fails the
    /// run with `invalid_argument` (`Invalid score: …`).
    ///
    /// ```
    /// use executionkit::{MockProvider, RefineLoop, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["short", "a longer answer"]);
    /// let r = RefineLoop::new()
    ///     .target_score(0.5)
    ///     .evaluator(|text: String| async move { Ok((text.len() as f64 / 20.0).min(1.0)) })
    ///     .run(&p, "Explain", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "a longer answer");
    /// assert_eq!(r.cost.llm_calls, 2);
    /// # });
    /// ```
    pub fn evaluator<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<f64>> + Send + 'static,
    {
        self.evaluator = Some(Arc::new(move |s| Box::pin(f(s))));
        self
    }

    /// Calls `f` after the first score (iteration 0) and after each refinement's score. A panic
    /// inside `f` is logged and ignored: the loop goes on.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use executionkit::{MockProvider, RefineLoop, RunContext};
    /// # futures::executor::block_on(async {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let p = MockProvider::new(["d", "9"]);
    /// RefineLoop::new().on_checkpoint(move |c| s.lock().unwrap().push(c.iteration))
    ///     .run(&p, "x", &RunContext::new()).await.unwrap();
    /// assert_eq!(*seen.lock().unwrap(), vec![0]);
    /// # });
    /// ```
    pub fn on_checkpoint(mut self, f: impl Fn(&RefineCheckpoint) + Send + Sync + 'static) -> Self {
        self.on_checkpoint = Some(Arc::new(f));
        self
    }

    /// Checks every option (see [`Pattern::validate`]).
    ///
    /// ```
    /// let e = executionkit::RefineLoop::new().target_score(1.5).check().unwrap_err();
    /// assert!(e.to_string().contains("target_score must be in [0, 1], got 1.5"));
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` naming the first bad option and its value.
    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.target_score) {
            return Err(Error::invalid_argument(
                "target_score",
                format!("target_score must be in [0, 1], got {}", self.target_score),
            ));
        }
        check_patience(self.patience)?;
        check_delta_threshold(self.delta_threshold)?;
        if self.max_eval_chars < 1 {
            return Err(Error::invalid_argument(
                "max_eval_chars",
                format!("max_eval_chars must be >= 1, got {}", self.max_eval_chars),
            ));
        }
        self.call.validate()
    }

    /// Runs the loop standalone: generates a first draft for `prompt`, then refines it.
    ///
    /// # Errors
    /// `invalid_argument` before any call; `budget_exhausted` when the budget runs out before a
    /// draft was scored; `parse` when the judge twice gives no usable score; provider failures.
    /// Every error carries the spend.
    ///
    /// ```
    /// use executionkit::{MockProvider, RefineLoop, RunContext};
    /// # futures::executor::block_on(async {
    /// // The draft scores 0.5 (judge: "5"), the improvement 0.9 (judge: "9"), which meets the target.
    /// let p = MockProvider::new(["draft", "5", "better", "9"]);
    /// let r = RefineLoop::new().target_score(0.9).run(&p, "Write a haiku", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "better");
    /// assert_eq!(r.score, Some(0.9));
    /// assert_eq!(r.metadata["termination_reason"], "target_reached");
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<String, RefineStats>> {
        self.run_from(provider, prompt, None, ctx).await
    }

    /// Runs the loop on an existing `draft` for `task`: scores the draft first (no generation),
    /// then refines it. This is what a pipe step does with the previous step's value.
    ///
    /// ```
    /// use executionkit::{MockProvider, RefineLoop, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["9"]); // only the judge is called
    /// let r = RefineLoop::new().improve(&p, "task", "my draft", &RunContext::new()).await.unwrap();
    /// assert_eq!((r.value.as_str(), r.cost.llm_calls), ("my draft", 1));
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`RefineLoop::run`].
    pub async fn improve(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        draft: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<String, RefineStats>> {
        self.run_from(provider, task, Some(draft), ctx).await
    }

    async fn run_from(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        draft: Option<&str>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String, RefineStats>> {
        self.check()?;
        let span = tracing::info_span!(
            target: "executionkit",
            "pattern.refine",
            max_iterations = crate::telemetry::int(self.max_iterations),
            target_score = self.target_score,
            from_draft = draft.is_some(),
        );
        let r = ctx.tracked(async |tracker| {
            let run = Run {
                cfg: self,
                provider,
                ctx,
                tracker,
                task,
                plain_judge: std::sync::atomic::AtomicBool::new(false),
            };
            run.execute(draft).await
        });
        seal(r.instrument(span).await, provider)
    }
}

/// One invocation's state.
struct Run<'a> {
    cfg: &'a RefineLoop,
    provider: &'a dyn LlmProvider,
    ctx: &'a RunContext,
    tracker: &'a CostTracker,
    task: &'a str,
    /// Set when the endpoint refused the judge's `response_format`: the rest of the run asks
    /// in plain text.
    plain_judge: std::sync::atomic::AtomicBool,
}

impl Run<'_> {
    async fn execute(&self, draft: Option<&str>) -> Result<PatternResult<String, RefineStats>> {
        let cfg = self.cfg;
        let mut detector =
            ConvergenceDetector::new(cfg.delta_threshold, cfg.patience, Some(cfg.target_score))?;

        // Until a draft is scored, every failure (budget included) fails the run.
        let first = match draft {
            Some(d) => d.to_owned(),
            None => self.generate(self.task_messages()).await?,
        };
        let first_score = self.score(&first).await?;
        self.checkpoint(0, &first, first_score);
        let mut history = vec![first_score];
        let mut best = (first, first_score);
        let mut stop = detector.observe(first_score)?;
        let mut iterations = 0;
        let mut budget_out = false;

        if stop.is_none() {
            for i in 1..=cfg.max_iterations {
                let mut messages = self.task_messages();
                messages.push(Message::assistant(best.0.clone()));
                messages.push(Message::user(refine_instruction(best.1)));
                let refined = match self.generate(messages).await {
                    Ok(t) => t,
                    Err(e) if e.is_budget_exhausted() => {
                        budget_out = true;
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let score = match self.score(&refined).await {
                    Ok(s) => s,
                    Err(e) if e.is_budget_exhausted() => {
                        budget_out = true;
                        break;
                    }
                    Err(e) => return Err(e),
                };
                iterations = i;
                history.push(score);
                self.checkpoint(i, &refined, score);
                if score > best.1 {
                    best = (refined, score);
                }
                stop = detector.observe(score)?;
                if stop.is_some() {
                    break;
                }
            }
        }

        let reason = match stop {
            Some(StopRule::ScoreThreshold) => TerminationReason::TargetReached,
            Some(StopRule::Plateau) => TerminationReason::Converged,
            None if budget_out => TerminationReason::BudgetExhausted,
            None => TerminationReason::MaxIterations,
        };
        let (text, score) = best;
        let stats = RefineStats {
            iterations,
            converged: stop.is_some(),
            score_history: history,
            termination_reason: reason,
        };
        Ok(PatternResult::with_stats(text, stats).with_score(score))
    }

    fn task_messages(&self) -> Vec<Message> {
        self.cfg.call.messages(self.task)
    }

    async fn generate(&self, messages: Vec<Message>) -> Result<String> {
        let req = self.cfg.call.request(messages, DEFAULT_TEMPERATURE);
        let resp = self.ctx.complete(self.provider, req, self.tracker).await?;
        Ok(resp.into_content())
    }

    async fn score(&self, text: &str) -> Result<f64> {
        if let Some(f) = &self.cfg.evaluator {
            return f(text.to_owned()).await;
        }
        let messages = judge_messages(text, self.cfg.max_eval_chars);
        let resp = self.ask_judge(messages.clone()).await?;
        let first = match parse_judge_score(resp.content()) {
            Ok(s) => return Ok(s.normalized()),
            Err(e) => e,
        };
        // An unparsable reply is asked again once (a new, counted call), showing the judge its
        // reply and asking for the number alone: repeating the same request to a deterministic
        // server would only repeat the reply.
        let mut retry = messages;
        retry.extend(judge_repair_messages(resp.content()));
        let resp = self.ask_judge(retry).await?;
        match parse_judge_score(resp.content()) {
            Ok(s) => Ok(s.normalized()),
            Err(e) => Err(Error::new(
                ErrorKind::Parse,
                format!(
                    "the judge gave no usable 0-10 score twice: {}; then: {}",
                    first.message(),
                    e.message()
                ),
            )),
        }
    }

    /// One judge call: with [`judge_response_format`] (a `{"score": 0..10}` JSON schema, which
    /// llama-server turns into a grammar) unless the endpoint refused it earlier in this run; a
    /// refusal (HTTP 400 or 422 to a request carrying it) is asked again once in plain text, a
    /// new counted call, and remembered for the rest of the run and by the provider
    /// ([`LlmProvider::note_response_format_refused`]) for later runs.
    async fn ask_judge(&self, messages: Vec<Message>) -> Result<crate::provider::LlmResponse> {
        // The judge keeps the run's model and seed but its own temperature and length.
        let mut plain = self.cfg.call.request(messages, JUDGE_TEMPERATURE);
        plain.temperature = Some(JUDGE_TEMPERATURE);
        plain.max_tokens = Some(JUDGE_MAX_TOKENS);
        super::judge::complete_with_format(
            self.ctx,
            self.provider,
            plain,
            judge_response_format(),
            self.tracker,
            Some(&self.plain_judge),
        )
        .await
    }

    fn checkpoint(&self, iteration: usize, text: &str, score: f64) {
        if let Some(f) = &self.cfg.on_checkpoint {
            let checkpoint = RefineCheckpoint {
                iteration,
                current_text: text.to_owned(),
                current_score: score,
                cost: self.tracker.usage(),
            };
            // A callback is an observer: its panic must not lose the loop's work and spend.
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&checkpoint)));
            if called.is_err() {
                tracing::warn!(target: "executionkit", iteration, "refine_loop: the checkpoint callback panicked");
            }
        }
    }
}

/// The instruction of a refinement round.
fn refine_instruction(score: f64) -> String {
    format!(
        "Your previous response scored {score:.2} out of 1.0. Write an improved response, \
         focusing on quality, completeness and accuracy. Reply with the improved response only."
    )
}

#[async_trait]
impl Pattern for RefineLoop {
    fn name(&self) -> &'static str {
        "refine"
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }

    /// With a previous value, improves it against the task; as a first step, generates a draft.
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        Ok(self
            .run_from(provider, input.task, input.previous, ctx)
            .await?
            .erase_stats())
    }
}
