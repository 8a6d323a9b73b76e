//! The reasoning patterns: [`Consensus`] and [`RefineLoop`], each a typed builder that runs on
//! its own or as a step of a [`Pipe`](crate::Pipe) through the [`Pattern`] trait (and, for a
//! step with a typed value such as [`Structured`], the [`TypedStep`] trait).

use std::fmt;

use async_trait::async_trait;

use crate::engine::RunContext;
use crate::error::Result;
use crate::provider::LlmProvider;
use crate::result::PatternResult;

pub mod call;
pub mod consensus;
pub(crate) mod judge;
/// Map-reduce: one call per item, then a reduce call over the joined outputs.
///
/// ```
/// use executionkit::{MapReduce, MockProvider, RunContext};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["one", "two", "one and two"]);
/// let items = vec!["first".to_owned(), "second".to_owned()];
/// let r = MapReduce::new()
///     .map_template("Summarise: {item}")
///     .reduce_template("Combine: {mapped_outputs}")
///     .max_concurrency(1)
///     .run(&p, &items, &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!(r.value, "one and two");
/// assert_eq!(r.metadata["reduce_calls"], 1);
/// # });
/// ```
pub mod map_reduce;
pub mod options;
pub mod react;
pub mod refine;
/// Structured output: a reply parsed into a Rust type, validated against its JSON Schema.
///
/// ```
/// use executionkit::{MockProvider, RunContext, structured};
/// # futures::executor::block_on(async {
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct City { name: String, population: u64 }
/// let p = MockProvider::new([r#"Here: {"name": "Paris", "population": 2100000}"#]);
/// let r = structured::<City>().run(&p, "Largest French city?", &RunContext::new()).await.unwrap();
/// assert_eq!((r.value.name.as_str(), r.value.population), ("Paris", 2_100_000));
/// assert_eq!(r.metadata["validated"], true);
/// # });
/// ```
pub mod structured;
pub(crate) mod usc;
pub mod vote_keys;

pub use crate::engine::voting::VotingStrategy;

pub use consensus::{Consensus, ConsensusStats};
pub use map_reduce::{MapReduce, MapReduceStats};
pub use options::{CallOptions, WithCallOptions};
pub use refine::{RefineCheckpoint, RefineLoop, RefineStats};
pub use structured::{Structured, StructuredStats, StructuredValue};

/// What a pattern receives as one step of a pipe.
///
/// ```
/// let input = executionkit::StepInput { task: "Summarise X", previous: Some("draft") };
/// assert_eq!(input.prompt(), "draft");
/// assert_eq!(executionkit::StepInput::new("task").prompt(), "task");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInput<'a> {
    /// The pipe's original prompt.
    pub task: &'a str,
    /// The previous step's value (`None` for the first step or a standalone run).
    pub previous: Option<&'a str>,
}

impl<'a> StepInput<'a> {
    /// A standalone input: the task and no previous value.
    ///
    /// ```
    /// assert!(executionkit::StepInput::new("p").previous.is_none());
    /// ```
    #[must_use]
    pub const fn new(task: &'a str) -> Self {
        Self {
            task,
            previous: None,
        }
    }

    /// The text a prompt-driven step works on: the previous value, else the task.
    ///
    /// ```
    /// assert_eq!(executionkit::StepInput { task: "t", previous: None }.prompt(), "t");
    /// ```
    #[must_use]
    pub fn prompt(&self) -> &'a str {
        self.previous.unwrap_or(self.task)
    }
}

/// A pattern that can run as a step of a [`Pipe`](crate::Pipe).
///
/// Implement it to put your own step in a pipe; the value is passed on as text.
///
/// ```
/// use async_trait::async_trait;
/// use executionkit::{LlmProvider, Pattern, PatternResult, Pipe, MockProvider, Result, RunContext, StepInput};
///
/// #[derive(Debug)]
/// struct Upper;
///
/// #[async_trait]
/// impl Pattern for Upper {
///     fn name(&self) -> &'static str { "upper" }
///     fn validate(&self) -> Result<()> { Ok(()) }
///     async fn run_step(&self, _p: &dyn LlmProvider, input: StepInput<'_>, _ctx: &RunContext)
///         -> Result<PatternResult<String>> {
///         Ok(PatternResult::new(input.prompt().to_uppercase()))
///     }
/// }
///
/// # futures::executor::block_on(async {
/// let r = Pipe::new().step(Upper).run(&MockProvider::default(), "hi", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value, "HI");
/// # });
/// ```
#[async_trait]
pub trait Pattern: Send + Sync + fmt::Debug {
    /// The pattern's name (`"consensus"`, `"refine"`, …).
    fn name(&self) -> &'static str;

    /// Checks every option; an `invalid_argument` error names the argument and its bad value.
    /// Called before any request is sent.
    ///
    /// # Errors
    /// `invalid_argument` for the first bad option.
    fn validate(&self) -> Result<()>;

    /// Runs the pattern as one step: `input.task` is the pipe's prompt, `input.previous` the
    /// previous step's value.
    ///
    /// # Errors
    /// Any error of the run; it carries the step's own spend.
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>>;
}

/// A pipe step with a typed value. Added with [`Pipe::step_typed`](crate::Pipe::step_typed),
/// its [`Output`](Self::Output) is handed on as a value, not only as text: the pipe's type
/// becomes [`Pipe<Output>`](crate::Pipe), [`Pipe::then_prompt`](crate::Pipe::then_prompt) maps
/// it into the next step's prompt, and a pipe ending with it returns it.
///
/// Implemented by [`Structured<T>`] (a `T`), [`StructuredValue`] (a JSON value) and
/// [`Pipe<Out>`](crate::Pipe) (its last value); implement it for your own step.
///
/// ```
/// use async_trait::async_trait;
/// use executionkit::{LlmProvider, MockProvider, Pattern, PatternResult, Pipe, Result, RunContext, StepInput, TypedStep};
///
/// /// Counts the words of its input, as a number.
/// #[derive(Debug)]
/// struct WordCount;
///
/// #[async_trait]
/// impl Pattern for WordCount {
///     fn name(&self) -> &'static str { "word_count" }
///     fn validate(&self) -> Result<()> { Ok(()) }
///     async fn run_step(&self, p: &dyn LlmProvider, input: StepInput<'_>, ctx: &RunContext)
///         -> Result<PatternResult<String>> {
///         Ok(self.run_typed(p, input, ctx).await?.0)
///     }
/// }
///
/// #[async_trait]
/// impl TypedStep for WordCount {
///     type Output = usize;
///     async fn run_typed(&self, _p: &dyn LlmProvider, input: StepInput<'_>, _ctx: &RunContext)
///         -> Result<(PatternResult<String>, usize)> {
///         let n = input.prompt().split_whitespace().count();
///         Ok((PatternResult::new(n.to_string()), n))
///     }
/// }
///
/// # futures::executor::block_on(async {
/// let pipe = Pipe::new()
///     .step_typed(WordCount)
///     .then_prompt(|n: &usize, _task: &str| format!("{}", n * 2))
///     .step_typed(WordCount);
/// let r = pipe.run(&MockProvider::default(), "three short words", &RunContext::new()).await.unwrap();
/// let one: usize = r.value; // "6" is one word
/// assert_eq!(one, 1);
/// # });
/// ```
#[async_trait]
pub trait TypedStep: Pattern {
    /// The step's value.
    type Output: Send + 'static;

    /// Runs the step as [`Pattern::run_step`] does, returning its result as text (what a text
    /// step after it receives) and its typed value.
    ///
    /// # Errors
    /// Any error of the run; it carries the step's own spend.
    async fn run_typed(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Self::Output)>;
}

/// Why a refine loop stopped ([`RefineStats::termination_reason`], `metadata.termination_reason`).
/// Serialises as [`as_str`](Self::as_str) gives it.
///
/// ```
/// use executionkit::TerminationReason;
/// assert_eq!(TerminationReason::BudgetExhausted.as_str(), "budget_exhausted");
/// assert_eq!(serde_json::to_value(TerminationReason::TargetReached).unwrap(), "target_reached");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// The score reached `target_score`.
    TargetReached,
    /// The score stopped moving (more than `patience` changes of at most `delta_threshold`).
    Converged,
    /// `max_iterations` refinements ran without reaching the target.
    MaxIterations,
    /// The budget ran out; the best answer so far was returned.
    BudgetExhausted,
}

impl TerminationReason {
    /// `"target_reached"`, `"converged"`, `"max_iterations"` or `"budget_exhausted"`.
    ///
    /// ```
    /// assert_eq!(executionkit::TerminationReason::TargetReached.as_str(), "target_reached");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TargetReached => "target_reached",
            Self::Converged => "converged",
            Self::MaxIterations => "max_iterations",
            Self::BudgetExhausted => "budget_exhausted",
        }
    }
}

impl fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `max_tokens` must be ≥ 1.
pub(crate) fn check_max_tokens(n: u32) -> Result<()> {
    if n < 1 {
        return Err(crate::Error::invalid_argument(
            "max_tokens",
            format!("max_tokens must be >= 1, got {n}"),
        ));
    }
    Ok(())
}
