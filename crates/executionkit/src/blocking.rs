//! Blocking forms of the patterns, for callers without an async runtime (the Python package's
//! `*_sync` helpers).
//!
//! Each function takes the same builder as the async API and blocks the calling thread until the
//! run ends. The runs are driven by one Tokio runtime, a current-thread runtime made on first use
//! and kept for the life of the process (a provider's connections run as tasks on it, so they
//! outlive one call). Several threads may call these functions at once.
//!
//! Called from inside a Tokio runtime (an `async fn`, a spawned task, a `spawn_blocking`
//! closure), they refuse with an `invalid_argument` error (`metadata.argument = "runtime"`)
//! instead of blocking the runtime's thread: there, `.await` the async API.
//!
//! ```
//! use executionkit::{Consensus, MockProvider, RunContext, blocking};
//! // A plain `fn main`: no runtime, no `.await`.
//! let p = MockProvider::new(["Paris", "Paris", "Lyon"]);
//! let r = blocking::consensus(&Consensus::new().samples(3), &p, "Capital of France?", &RunContext::new())
//!     .unwrap();
//! assert_eq!(r.value, "Paris");
//! ```

use std::future::Future;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::engine::RunContext;
use crate::error::{Error, Result};
use crate::patterns::react::ReactLoop;
use crate::patterns::structured::StructuredValue;
use crate::patterns::{
    Consensus, ConsensusStats, MapReduce, MapReduceStats, Pattern, RefineLoop, RefineStats,
    StepInput, Structured, StructuredStats,
};
use crate::pipe::{Pipe, PipeStats};
use crate::provider::LlmProvider;
use crate::result::PatternResult;

/// The runtime every blocking call runs on, made on first use.
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                crate::error::ErrorKind::Permanent,
                format!("could not start the runtime for a blocking call: {e}"),
            )
        })?;
    // Two first calls may race: one runtime is kept, the other dropped (no task ever ran on it).
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Blocks the current thread on `future`, any future of the library (a [`Kit`](crate::Kit)
/// method, a stream's collection, your own composition).
///
/// ```
/// use executionkit::{Kit, MockProvider, blocking};
/// let kit = Kit::new(MockProvider::new(["hello"]));
/// let r = blocking::block_on(kit.turn("hi")).unwrap();
/// assert_eq!(r.value, "hello");
/// ```
///
/// # Errors
/// `invalid_argument` (`metadata.argument = "runtime"`) when called from inside a Tokio runtime;
/// a `permanent` error if the runtime cannot start; otherwise the future's own error.
pub fn block_on<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::invalid_argument(
            "runtime",
            "executionkit::blocking was called from inside a Tokio runtime, where blocking \
             would stall it: await the async API instead",
        ));
    }
    runtime()?.block_on(future)
}

/// Runs any [`Pattern`] (a pipe step: [`Consensus`], [`RefineLoop`], [`Pipe`],
/// [`Structured`], your own) on `input`, as a standalone step.
///
/// ```
/// use executionkit::{MockProvider, RefineLoop, RunContext, blocking};
/// let p = MockProvider::new(["draft", "9"]); // a draft, then the judge's 9/10
/// let r = blocking::run(&RefineLoop::new().target_score(0.8), &p, "Write a haiku", &RunContext::new())
///     .unwrap();
/// assert_eq!(r.value, "draft");
/// ```
///
/// # Errors
/// As [`block_on`], and the pattern's own errors.
pub fn run<P: Pattern + ?Sized>(
    pattern: &P,
    provider: &dyn LlmProvider,
    input: &str,
    ctx: &RunContext,
) -> Result<PatternResult<String>> {
    block_on(pattern.run_step(provider, StepInput::new(input), ctx))
}

/// [`Consensus::run`], blocking.
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext, blocking};
/// let p = MockProvider::new(["4", "4", "5"]);
/// let r = blocking::consensus(&Consensus::new().samples(3), &p, "2 + 2?", &RunContext::new()).unwrap();
/// assert_eq!(r.value, "4");
/// assert_eq!(r.cost.llm_calls, 3);
/// ```
///
/// # Errors
/// As [`block_on`] and [`Consensus::run`].
pub fn consensus(
    pattern: &Consensus,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<String, ConsensusStats>> {
    block_on(pattern.run(provider, prompt, ctx))
}

/// [`RefineLoop::run`], blocking.
///
/// ```
/// use executionkit::{MockProvider, RefineLoop, RunContext, blocking};
/// let p = MockProvider::new(["draft", "9"]);
/// let r = blocking::refine_loop(&RefineLoop::new().target_score(0.9), &p, "Write a haiku", &RunContext::new())
///     .unwrap();
/// assert_eq!(r.metadata["termination_reason"], "target_reached");
/// ```
///
/// # Errors
/// As [`block_on`] and [`RefineLoop::run`].
pub fn refine_loop(
    pattern: &RefineLoop,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<String, RefineStats>> {
    block_on(pattern.run(provider, prompt, ctx))
}

/// [`ReactLoop::run`], blocking.
///
/// ```
/// use executionkit::{MockProvider, ReactLoop, RunContext, blocking};
/// let p = MockProvider::new(["No tool needed: 42."]);
/// let r = blocking::react(&ReactLoop::new(), &p, "What is 6 * 7?", &RunContext::new()).unwrap();
/// assert_eq!(r.value, "No tool needed: 42.");
/// ```
///
/// # Errors
/// As [`block_on`] and [`ReactLoop::run`].
pub fn react(
    pattern: &ReactLoop,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<String, crate::ReactStats>> {
    block_on(pattern.run(provider, prompt, ctx))
}

/// [`Structured::run`], blocking: the reply parsed into `T` and validated against its schema.
///
/// ```
/// use executionkit::{MockProvider, RunContext, blocking, structured};
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct City { name: String }
/// let p = MockProvider::new([r#"{"name": "Paris"}"#]);
/// let r = blocking::structured(&structured::<City>(), &p, "Capital of France?", &RunContext::new()).unwrap();
/// assert_eq!(r.value.name, "Paris");
/// ```
///
/// # Errors
/// As [`block_on`] and [`Structured::run`].
pub fn structured<T: DeserializeOwned + JsonSchema>(
    pattern: &Structured<T>,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<T, StructuredStats>> {
    block_on(pattern.run(provider, prompt, ctx))
}

/// [`StructuredValue::run`], blocking: a JSON reply validated against a schema given as JSON.
///
/// ```
/// use executionkit::{MockProvider, RunContext, StructuredValue, blocking};
/// let p = MockProvider::new([r#"{"a": 1}"#]);
/// let r = blocking::structured_value(&StructuredValue::new(), &p, "json please", &RunContext::new()).unwrap();
/// assert_eq!(r.value["a"], 1);
/// ```
///
/// # Errors
/// As [`block_on`] and [`StructuredValue::run`].
pub fn structured_value(
    pattern: &StructuredValue,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<Value, StructuredStats>> {
    block_on(pattern.run(provider, prompt, ctx))
}

/// [`MapReduce::run`], blocking.
///
/// ```
/// use executionkit::{MapReduce, MockProvider, RunContext, blocking};
/// let p = MockProvider::new(["a", "b", "a and b"]);
/// let items = vec!["doc a".to_owned(), "doc b".to_owned()];
/// let pattern = MapReduce::new()
///     .map_template("Summarise: {item}")
///     .reduce_template("Combine: {mapped_outputs}")
///     .max_concurrency(1);
/// let r = blocking::map_reduce(&pattern, &p, &items, &RunContext::new()).unwrap();
/// assert_eq!(r.value, "a and b");
/// ```
///
/// # Errors
/// As [`block_on`] and [`MapReduce::run`].
pub fn map_reduce(
    pattern: &MapReduce,
    provider: &dyn LlmProvider,
    items: &[String],
    ctx: &RunContext,
) -> Result<PatternResult<String, MapReduceStats>> {
    block_on(pattern.run(provider, items, ctx))
}

/// [`Pipe::run`], blocking.
///
/// ```
/// use executionkit::{Budget, Consensus, MockProvider, Pipe, RefineLoop, RunContext, blocking};
/// let p = MockProvider::new(["Paris", "Paris", "Lyon", "9"]);
/// let pipe = Pipe::new()
///     .step(Consensus::new().samples(3))
///     .step(RefineLoop::new().target_score(0.9))
///     .max_budget(Budget::new().max_calls(20));
/// let r = blocking::pipe(&pipe, &p, "Capital of France?", &RunContext::new()).unwrap();
/// assert_eq!(r.value, "Paris");
/// assert_eq!(r.cost.llm_calls, 4);
/// ```
///
/// # Errors
/// As [`block_on`] and [`Pipe::run`].
pub fn pipe<Out: Send + 'static>(
    pipe: &Pipe<Out>,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<Out, PipeStats>> {
    block_on(pipe.run(provider, prompt, ctx))
}
