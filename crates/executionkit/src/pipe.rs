//! [`Pipe`]: run patterns one after another under one budget, each step working on the
//! previous step's value.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Serialize, Serializer};
use serde_json::Value;
use tracing::Instrument;

use crate::engine::{RunContext, seal};
use crate::error::{Error, Result};
use crate::patterns::{Pattern, StepInput, TypedStep};
use crate::provider::LlmProvider;
use crate::redact::redact_secret_json;
use crate::result::{Metadata, PatternResult, RedactStats, cost_json};
use crate::usage::{Budget, TokenUsage, UsageOverGrant};

/// A predicate deciding whether a conditional step runs.
pub(crate) type StepPredicate = Arc<dyn Fn(&PatternResult<String>) -> bool + Send + Sync>;

/// What a pipe observed: [`Pipe::run`]'s `stats`, and its `metadata` keys of the same names
/// (`step_count`, `step_metadata`, `step_costs`; the metadata is these statistics serialised,
/// plus the last run step's own keys). An empty pipe's are empty, and so is its metadata.
///
/// ```
/// use executionkit::{Consensus, MockProvider, Pipe, RunContext};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["a"]);
/// let r = Pipe::new()
///     .step(Consensus::new().samples(2))
///     .step_if(|_| false, Consensus::new())
///     .run(&p, "q", &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!(r.stats.step_count, 2);
/// assert_eq!(r.stats.step_costs[0].cost.llm_calls, 2);
/// assert_eq!(r.stats.step_metadata[1]["skipped"], true);
/// assert_eq!(r.metadata["step_metadata"][0]["unique_responses"], 1);
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipeStats {
    /// The steps of the pipe, skipped ones included.
    #[serde(skip_serializing_if = "is_zero")]
    pub step_count: usize,
    /// Each step's metadata, in order; a skipped step's is `{"skipped": true}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_metadata: Vec<Metadata>,
    /// Each step's spend, in order (zero for a skipped step).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_costs: Vec<StepCost>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl RedactStats for PipeStats {
    /// A step's metadata can hold text (a vote's answers), as the metadata's copy does.
    fn redact_secret(&mut self, secret: &str) {
        for m in &mut self.step_metadata {
            let mut v = Value::Object(std::mem::take(m));
            redact_secret_json(&mut v, secret);
            if let Value::Object(redacted) = v {
                *m = redacted;
            }
        }
    }
}

/// One step's spend in [`PipeStats::step_costs`]. Serialises as the `cost` of `ek --json`:
/// `{"input_tokens", "output_tokens", "llm_calls"}`, the cache and reasoning counts when not
/// zero, and `usd` when prices are known.
///
/// ```
/// use executionkit::{TokenUsage, StepCost};
/// let c = StepCost { cost: TokenUsage::new(3, 1, 1), usd: None };
/// assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"input_tokens":3,"llm_calls":1,"output_tokens":1}"#);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepCost {
    /// Tokens and calls.
    pub cost: TokenUsage,
    /// Money, when prices are known.
    pub usd: Option<f64>,
}

impl StepCost {
    fn json(&self) -> Value {
        cost_json(&self.cost, self.usd)
    }
}

impl Serialize for StepCost {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.json().serialize(s)
    }
}

/// A step's value as the pipe carries it: `None` when the value is the step's text (a text
/// step's, a skipped step's, a prompt's), else the value a typed step produced.
type Carried = Option<Box<dyn Any + Send>>;

/// One step of a pipe, its value's type erased.
#[async_trait]
trait ErasedStep: Send + Sync + fmt::Debug {
    fn validate(&self) -> Result<()>;

    fn name(&self) -> &'static str;

    async fn run(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Carried)>;
}

/// A step whose value is its text.
struct TextStep<P>(P);

/// A step whose value is its [`TypedStep::Output`].
struct Typed<P>(P);

impl<P: fmt::Debug> fmt::Debug for TextStep<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<P: fmt::Debug> fmt::Debug for Typed<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)?;
        f.write_str(" (typed)")
    }
}

#[async_trait]
impl<P: Pattern> ErasedStep for TextStep<P> {
    fn validate(&self) -> Result<()> {
        self.0.validate()
    }

    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn run(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Carried)> {
        Ok((self.0.run_step(provider, input, ctx).await?, None))
    }
}

#[async_trait]
impl<P: TypedStep> ErasedStep for Typed<P> {
    fn validate(&self) -> Result<()> {
        self.0.validate()
    }

    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn run(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Carried)> {
        let (r, value) = self.0.run_typed(provider, input, ctx).await?;
        Ok((r, Some(Box::new(value))))
    }
}

/// A [`Pipe::then_prompt`] function: the previous value (erased) and the task to the next
/// step's text; `None` when the value is not of the type the function takes (which the
/// builder's types rule out).
type PromptFn = Arc<dyn Fn(&(dyn Any + Send), &str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct PipeStep {
    step: Arc<dyn ErasedStep>,
    predicate: Option<StepPredicate>,
    provider: Option<Arc<dyn LlmProvider>>,
}

#[derive(Clone)]
enum Stage {
    Step(PipeStep),
    Prompt {
        f: PromptFn,
        /// The type `f` takes, for the message of the error that cannot happen.
        takes: &'static str,
    },
}

/// A chain of patterns sharing one budget ledger.
///
/// * Step k+1 receives step k's value as [`StepInput::previous`] and the pipe's prompt as
///   [`StepInput::task`]; a consensus step votes on the previous value, a refine step improves it.
/// * Steps pass typed values. `Out` is the type of the pipe's current value: `String` for a
///   text step ([`Pipe::step`]), `T` after a typed step ([`Pipe::step_typed`], e.g.
///   [`structured::<T>()`](crate::structured())). [`Pipe::then_prompt`] maps that value (and the
///   task) into the text the next step receives, checked by the compiler; a text step after a
///   typed one receives the typed step's text (a structured step's: its JSON). A pipe ending in a
///   typed step returns its value, typed.
/// * Every step uses the run's ledger: the context's, or with [`Pipe::max_budget`] a child of
///   it ([`RunContext::nested_budget`]). The limits are a ceiling for the whole chain, not per
///   step, and they add to the context's: a pipe with its own budget inside a budgeted run (a
///   pipe step of a pipe, [`Kit::pipe`](crate::kit::Kit::pipe) on a budgeted session) stays
///   within every enclosing limit, and the enclosing ledger records its spend.
/// * The result's value and score are the last run step's; `cost` is the sum of the steps';
///   metadata holds the last run step's keys plus `step_count`, `step_metadata` (one map per
///   step) and `step_costs` (one `{input_tokens, output_tokens, llm_calls}` per step).
/// * A conditional step ([`Pipe::step_if`]) whose predicate says no is skipped: it shows as
///   `{"skipped": true}` with zero cost and passes its input on unchanged.
/// * An error in step k carries the spend of steps 1..k and `metadata.step_costs` (the failing
///   step's own spend last).
/// * When a server reported more output tokens than a call was granted, in any step, the
///   result's (or error's) `metadata.usage_over_grant` sums every step's
///   ([`UsageOverGrant`]); each step's own is in its `step_metadata`.
/// * When a step ran on a failover chain or a router
///   ([`Failover`](crate::Failover), [`Router`](crate::Router)), the result's (and every
///   error's) `metadata.cost_by_provider` adds up every step's per provider
///   (`{name: {input_tokens, output_tokens, llm_calls}}`, the failing step's included); each
///   step's own is in its `step_metadata`. Without one the key is absent.
/// * An empty pipe returns the prompt at zero cost with empty metadata.
///
/// Internally every step hands on its text and, for a typed step, its value (type-erased); the
/// builder's types make sure the value a [`then_prompt`](Pipe::then_prompt) function is given
/// is the one the step before produced.
///
/// ```
/// use executionkit::{Budget, Consensus, MockProvider, Pipe, RefineLoop, RunContext};
/// # futures::executor::block_on(async {
/// // 3 consensus samples, then the judge scores the winner 9/10: the target is reached.
/// let p = MockProvider::new(["Paris", "Paris", "Lyon", "9"]);
/// let r = Pipe::new()
///     .step(Consensus::new().samples(3))
///     .step(RefineLoop::new().target_score(0.9))
///     .max_budget(Budget::new().max_input_tokens(20_000).max_output_tokens(10_000).max_calls(20))
///     .run(&p, "Capital of France?", &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!(r.value, "Paris");
/// assert_eq!(r.metadata["step_count"], 2);
/// assert_eq!(r.cost.llm_calls, 4);
/// # });
/// ```
///
/// A typed step's value, mapped into the next step's prompt:
///
/// ```
/// use executionkit::{Consensus, MockProvider, Pipe, RunContext, structured};
/// # futures::executor::block_on(async {
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Plan { steps: Vec<String> }
///
/// let p = MockProvider::new([r#"{"steps": ["boil water", "add tea"]}"#, "Done in 2 steps"]);
/// let r = Pipe::new()
///     .step_typed(structured::<Plan>())
///     .then_prompt(|plan: &Plan, task: &str| format!("{task}: carry out {}", plan.steps.join(", then ")))
///     .step(Consensus::new().samples(1))
///     .run(&p, "Make tea", &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!(r.value, "Done in 2 steps");
/// let sent = &p.calls()[1].request.messages[0].content;
/// assert_eq!(sent, "Make tea: carry out boil water, then add tea");
/// # });
/// ```
#[must_use]
pub struct Pipe<Out = String> {
    stages: Vec<Stage>,
    max_budget: Option<Budget>,
    out: PhantomData<fn() -> Out>,
}

impl<Out> Clone for Pipe<Out> {
    fn clone(&self) -> Self {
        Self {
            stages: self.stages.clone(),
            max_budget: self.max_budget.clone(),
            out: PhantomData,
        }
    }
}

impl Default for Pipe {
    fn default() -> Self {
        Self {
            stages: Vec::new(),
            max_budget: None,
            out: PhantomData,
        }
    }
}

impl<Out> fmt::Debug for Pipe<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self
            .stages
            .iter()
            .map(|s| match s {
                Stage::Step(s) => {
                    let mut d = format!("{:?}", s.step);
                    if s.predicate.is_some() {
                        d.push_str(" if <predicate>");
                    }
                    if let Some(p) = &s.provider {
                        d.push_str(&format!(" on {}", p.model()));
                    }
                    d
                }
                Stage::Prompt { takes, .. } => format!("then_prompt(<fn(&{takes}, &str)>)"),
            })
            .collect();
        f.debug_struct("Pipe")
            .field("steps", &steps)
            .field("max_budget", &self.max_budget)
            .finish()
    }
}

impl Pipe {
    /// An empty pipe.
    ///
    /// ```
    /// assert_eq!(executionkit::Pipe::new().len(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
}

impl<Out> Pipe<Out> {
    fn then<Next>(mut self, stage: Stage) -> Pipe<Next> {
        self.stages.push(stage);
        Pipe {
            stages: self.stages,
            max_budget: self.max_budget,
            out: PhantomData,
        }
    }

    fn text_step(
        self,
        pattern: impl Pattern + 'static,
        predicate: Option<StepPredicate>,
        provider: Option<Arc<dyn LlmProvider>>,
    ) -> Pipe<String> {
        self.then(Stage::Step(PipeStep {
            step: Arc::new(TextStep(pattern)),
            predicate,
            provider,
        }))
    }

    /// Appends a step; its value, passed on, is its text.
    ///
    /// ```
    /// let p = executionkit::Pipe::new().step(executionkit::Consensus::new());
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn step(self, pattern: impl Pattern + 'static) -> Pipe<String> {
        self.text_step(pattern, None, None)
    }

    /// Appends a step that runs only when `predicate` holds for the previous result (the last
    /// step that ran; for a first step, the prompt with no score). Skipped, it passes its input
    /// on as text.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, Pipe, RefineLoop, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["A"]);
    /// let r = Pipe::new()
    ///     .step(Consensus::new().samples(2))
    ///     .step_if(|prev| prev.score.is_none_or(|s| s < 0.95), RefineLoop::new())
    ///     .run(&p, "q", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.metadata["step_metadata"][1]["skipped"], true);
    /// assert_eq!(r.cost.llm_calls, 2);
    /// # });
    /// ```
    pub fn step_if(
        self,
        predicate: impl Fn(&PatternResult<String>) -> bool + Send + Sync + 'static,
        pattern: impl Pattern + 'static,
    ) -> Pipe<String> {
        self.text_step(pattern, Some(Arc::new(predicate)), None)
    }

    /// Appends a step that runs on its own provider (e.g. a cheaper model for drafts).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Consensus, MockProvider, Pipe, RunContext};
    /// # futures::executor::block_on(async {
    /// let cheap = Arc::new(MockProvider::new(["x"]));
    /// let main = MockProvider::new(["y"]);
    /// let r = Pipe::new().step_with_provider(cheap.clone(), Consensus::new().samples(1))
    ///     .run(&main, "q", &RunContext::new()).await.unwrap();
    /// assert_eq!((r.value.as_str(), cheap.call_count(), main.call_count()), ("x", 1, 0));
    /// # });
    /// ```
    pub fn step_with_provider(
        self,
        provider: Arc<dyn LlmProvider>,
        pattern: impl Pattern + 'static,
    ) -> Pipe<String> {
        self.text_step(pattern, None, Some(provider))
    }

    /// Appends a conditional step on its own provider.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Consensus, MockProvider, Pipe};
    /// let p = Pipe::new().step_if_with_provider(|_| true, Arc::new(MockProvider::default()), Consensus::new());
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn step_if_with_provider(
        self,
        predicate: impl Fn(&PatternResult<String>) -> bool + Send + Sync + 'static,
        provider: Arc<dyn LlmProvider>,
        pattern: impl Pattern + 'static,
    ) -> Pipe<String> {
        self.text_step(pattern, Some(Arc::new(predicate)), Some(provider))
    }

    /// Appends a typed step: the pipe's value becomes the step's
    /// [`Output`](TypedStep::Output) (a [`structured::<T>()`](crate::structured()) step's `T`),
    /// for [`then_prompt`](Self::then_prompt) to map into the next step's prompt, or for
    /// [`run`](Self::run) to return. A text step after it receives its text.
    ///
    /// ```
    /// use executionkit::{MockProvider, Pipe, RunContext, structured};
    /// # futures::executor::block_on(async {
    /// #[derive(Debug, PartialEq, serde::Deserialize, schemars::JsonSchema)]
    /// struct City { name: String, population: u64 }
    /// let p = MockProvider::new([r#"{"name": "Paris", "population": 2100000}"#]);
    /// let pipe: Pipe<City> = Pipe::new().step_typed(structured::<City>());
    /// let r = pipe.run(&p, "Largest French city?", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, City { name: "Paris".into(), population: 2_100_000 });
    /// assert_eq!(r.metadata["validated"], true); // the last step's keys, as for any step
    /// # });
    /// ```
    pub fn step_typed<P: TypedStep + 'static>(self, step: P) -> Pipe<P::Output> {
        self.typed_step(step, None)
    }

    /// Appends a typed step that runs on its own provider.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{MockProvider, Pipe, RunContext, StructuredValue};
    /// # futures::executor::block_on(async {
    /// let json = Arc::new(MockProvider::new([r#"{"ok": true}"#]));
    /// let r = Pipe::new()
    ///     .step_typed_with_provider(json.clone(), StructuredValue::new())
    ///     .run(&MockProvider::default(), "q", &RunContext::new())
    ///     .await
    ///     .unwrap();
    /// assert_eq!((r.value["ok"].as_bool(), json.call_count()), (Some(true), 1));
    /// # });
    /// ```
    pub fn step_typed_with_provider<P: TypedStep + 'static>(
        self,
        provider: Arc<dyn LlmProvider>,
        step: P,
    ) -> Pipe<P::Output> {
        self.typed_step(step, Some(provider))
    }

    fn typed_step<P: TypedStep + 'static>(
        self,
        step: P,
        provider: Option<Arc<dyn LlmProvider>>,
    ) -> Pipe<P::Output> {
        self.then(Stage::Step(PipeStep {
            step: Arc::new(Typed(step)),
            predicate: None,
            provider,
        }))
    }

    /// Maps the pipe's current value and its prompt (the task) into the text the next step
    /// receives as its previous value: the prompt of a consensus or structured step, the draft
    /// a refine step improves. Nothing is called and it is not a step (it has no entry in
    /// `step_metadata`); a pipe that ends with it returns the text.
    ///
    /// The function takes the value's type: after [`step_typed`](Self::step_typed) it is the
    /// step's output, after a text step `String`; any other type does not compile.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, Pipe, RunContext, StructuredValue};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new([r#"{"topic": "tides"}"#, "Tides follow the Moon."]);
    /// let r = Pipe::new()
    ///     .step_typed(StructuredValue::new())
    ///     .then_prompt(|v: &serde_json::Value, task: &str| format!("{task} Topic: {}", v["topic"]))
    ///     .step(Consensus::new().samples(1))
    ///     .run(&p, "Write one sentence.", &RunContext::new())
    ///     .await
    ///     .unwrap();
    /// assert_eq!(r.value, "Tides follow the Moon.");
    /// assert_eq!(p.calls()[1].request.messages[0].content, r#"Write one sentence. Topic: "tides""#);
    /// assert_eq!(r.stats.step_count, 2);
    /// # });
    /// ```
    ///
    /// A function of the wrong type is refused by the compiler:
    ///
    /// ```compile_fail
    /// use executionkit::{Pipe, StructuredValue};
    /// // The value after this step is a serde_json::Value, not a String.
    /// let _ = Pipe::new().step_typed(StructuredValue::new()).then_prompt(|s: &String, _: &str| s.clone());
    /// ```
    pub fn then_prompt(
        self,
        f: impl Fn(&Out, &str) -> String + Send + Sync + 'static,
    ) -> Pipe<String>
    where
        Out: 'static,
    {
        let f: PromptFn = Arc::new(move |value: &(dyn Any + Send), task: &str| {
            value.downcast_ref::<Out>().map(|v| f(v, task))
        });
        self.then(Stage::Prompt {
            f,
            takes: std::any::type_name::<Out>(),
        })
    }

    /// Limits the pipe's whole chain of steps. The limits hold together with the context's:
    /// the pipe runs on a child of the context's ledger, so a call must fit both (the tighter
    /// wins) and the context's ledger records what the pipe spends.
    ///
    /// ```
    /// use executionkit::{Budget, Consensus, MockProvider, Pipe, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["a", "b", "c"]);
    /// let pipe = Pipe::new()
    ///     .step(Consensus::new().samples(1))
    ///     .step(Consensus::new().samples(1))
    ///     .max_budget(Budget::new().max_calls(30));
    /// // The enclosing run allows one call: the pipe's own 30 cannot lift that.
    /// let ctx = RunContext::new().budget(Budget::new().max_calls(1));
    /// let err = pipe.run(&p, "q", &ctx).await.unwrap_err();
    /// assert!(err.is_budget_exhausted());
    /// assert_eq!(err.metadata()["budget_level"], 1);
    /// assert_eq!(ctx.ledger().spent().llm_calls, 1);
    /// # });
    /// ```
    pub fn max_budget(mut self, budget: Budget) -> Self {
        self.max_budget = Some(budget);
        self
    }

    /// The number of steps.
    ///
    /// ```
    /// assert!(executionkit::Pipe::new().is_empty());
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.steps().count()
    }

    /// `true` with no steps.
    ///
    /// ```
    /// assert!(executionkit::Pipe::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps().next().is_none()
    }

    fn steps(&self) -> impl Iterator<Item = &PipeStep> {
        self.stages.iter().filter_map(|s| match s {
            Stage::Step(s) => Some(s),
            Stage::Prompt { .. } => None,
        })
    }

    /// Validates the budget and every step, in order, before anything runs.
    ///
    /// ```
    /// let p = executionkit::Pipe::new().step(executionkit::Consensus::new().samples(0));
    /// assert!(p.check().unwrap_err().is_invalid_argument());
    /// ```
    ///
    /// # Errors
    /// The first step's `invalid_argument`, with `metadata.step` (0-based) added.
    pub fn check(&self) -> Result<()> {
        if let Some(b) = &self.max_budget {
            b.validate()?;
        }
        for (i, s) in self.steps().enumerate() {
            s.step.validate().map_err(|e| e.with_metadata("step", i))?;
        }
        Ok(())
    }

    /// Checks, runs every stage and removes the provider's key from the result's metadata:
    /// the value is the last stage's text and, after a typed step, its typed value.
    async fn run_sealed(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<(String, Carried), PipeStats>> {
        let run = async {
            self.check()?;
            run_stages(
                &self.stages,
                self.len(),
                self.max_budget.as_ref(),
                provider,
                prompt,
                ctx,
            )
            .await
        };
        // The parent of the steps' `pipe.step` spans: one trace per run.
        let span = tracing::info_span!(
            target: "executionkit",
            "pipe",
            steps = crate::telemetry::int(self.len()),
        );
        seal(run.instrument(span).await, provider)
    }
}

impl<Out: Send + 'static> Pipe<Out> {
    /// Runs every step on `prompt`.
    ///
    /// # Errors
    /// `invalid_argument` before any call; otherwise the failing step's error, carrying the
    /// spend of all steps so far and `metadata.step_costs`.
    ///
    /// ```
    /// use executionkit::{Budget, Consensus, MockProvider, Pipe, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["draft", "final"]);
    /// let pipe = Pipe::new()
    ///     .step(Consensus::new().samples(1))
    ///     .step(Consensus::new().samples(1));
    /// let r = pipe.run(&p, "Write a title", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "final");
    /// assert_eq!(r.cost.llm_calls, 2);
    /// // The steps share one budget: two calls do not fit in one.
    /// let ctx = RunContext::new().budget(Budget::new().max_calls(1));
    /// assert!(pipe.run(&p, "Write a title", &ctx).await.unwrap_err().is_budget_exhausted());
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<Out, PipeStats>> {
        let r = self.run_sealed(provider, prompt, ctx).await?;
        let PatternResult {
            value: (text, carried),
            score,
            cost,
            usd,
            metadata,
            stats,
        } = r;
        match into_value::<Out>(carried, text) {
            Ok(value) => Ok(PatternResult {
                value,
                score,
                cost,
                usd,
                metadata,
                stats,
            }),
            Err(e) => {
                let e = e.with_cost(cost).with_usd(usd);
                Err(match metadata.get(COST_BY_PROVIDER) {
                    Some(by) => e.with_metadata(COST_BY_PROVIDER, by.clone()),
                    None => e,
                })
            }
        }
    }
}

/// The pipe's value as an `Out`: the typed value carried, or the text.
fn into_value<Out: 'static>(carried: Carried, text: String) -> Result<Out> {
    let value: Box<dyn Any + Send> = carried.unwrap_or_else(|| Box::new(text));
    value
        .downcast::<Out>()
        .map(|v| *v)
        .map_err(|_| mismatch(std::any::type_name::<Out>()))
}

/// The error of a value of the wrong type, which the builder's types rule out.
fn mismatch(expected: &str) -> Error {
    Error::invalid_argument(
        "pipe",
        format!("the pipe's value is not a {expected} (a step's value type does not match)"),
    )
}

/// The metadata key of what each provider of a failover chain or router cost.
const COST_BY_PROVIDER: &str = "cost_by_provider";

/// The steps' `cost_by_provider` added up: each provider's cost over every step, in the order
/// the providers were first used. Empty when no step used a chain or a router.
#[derive(Debug, Default)]
struct ProviderCosts(Vec<(String, TokenUsage)>);

impl ProviderCosts {
    /// Adds a step's `cost_by_provider` (from its result's or error's metadata).
    fn add(&mut self, metadata: &Metadata) {
        let Some(Value::Object(by)) = metadata.get(COST_BY_PROVIDER) else {
            return;
        };
        for (name, cost) in by {
            let Ok(cost) = serde_json::from_value::<TokenUsage>(cost.clone()) else {
                continue;
            };
            match self.0.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += cost,
                None => self.0.push((name.clone(), cost)),
            }
        }
    }

    /// `{name: cost}`, or `None` when no step used a chain or a router.
    fn json(&self) -> Option<Value> {
        (!self.0.is_empty()).then(|| {
            Value::Object(
                self.0
                    .iter()
                    .map(|(n, u)| (n.clone(), cost_json(u, None)))
                    .collect(),
            )
        })
    }

    /// Writes the sums over a step's own (the last step's keys are copied to the pipe's).
    fn apply_to_metadata(&self, metadata: &mut Metadata) {
        if let Some(v) = self.json() {
            metadata.insert(COST_BY_PROVIDER.to_owned(), v);
        }
    }

    /// `error` with the sums, replacing the failing step's own.
    fn apply_to_error(&self, error: Error) -> Error {
        match self.json() {
            Some(v) => error.with_metadata(COST_BY_PROVIDER, v),
            None => error,
        }
    }
}

/// The pipe's loop over its stages, on the run's ledger (or a child of it with `max_budget`).
async fn run_stages(
    stages: &[Stage],
    step_count: usize,
    max_budget: Option<&Budget>,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<(String, Carried), PipeStats>> {
    let ctx = match max_budget {
        Some(b) => ctx.clone().nested_budget(b.clone()),
        None => ctx.clone(),
    };
    // A pipe's value is made of its steps': no step's text goes to an `on_text` subscriber.
    let ctx = ctx.without_text().into_owned();
    let mut total = TokenUsage::default();
    let mut total_usd: Option<f64> = None;
    let mut over_grant = UsageOverGrant::default();
    let mut by_provider = ProviderCosts::default();
    // The previous result: the last step that ran, or the prompt with no score; its value is
    // the text the next step receives once `moved` (a step ran or a prompt was mapped).
    let mut prev = PatternResult::new(prompt.to_owned());
    let mut moved = false;
    let mut carried: Carried = None;
    let mut step_metadata: Vec<Metadata> = Vec::with_capacity(step_count);
    let mut step_costs: Vec<StepCost> = Vec::with_capacity(step_count);

    for stage in stages {
        let step = match stage {
            Stage::Step(step) => step,
            Stage::Prompt { f, takes } => {
                let value: &(dyn Any + Send) = match &carried {
                    Some(v) => v.as_ref(),
                    None => &prev.value,
                };
                let Some(text) = f(value, prompt) else {
                    let costs = step_costs.iter().map(StepCost::json).collect();
                    return Err(by_provider
                        .apply_to_error(over_grant.apply_to_error(mismatch(takes)))
                        .add_cost(total, total_usd)
                        .with_metadata("step_costs", Value::Array(costs)));
                };
                prev.value = text;
                moved = true;
                carried = None;
                continue;
            }
        };
        let i = step_metadata.len();
        if let Some(pred) = &step.predicate {
            if !pred(&prev) {
                let mut skipped = Metadata::new();
                skipped.insert("skipped".into(), Value::Bool(true));
                step_metadata.push(skipped);
                step_costs.push(StepCost::default());
                // The input passes on unchanged, as text.
                carried = None;
                continue;
            }
        }
        let p: &dyn LlmProvider = match &step.provider {
            Some(p) => p.as_ref(),
            None => provider,
        };
        let input = StepInput {
            task: prompt,
            previous: moved.then_some(prev.value.as_str()),
        };
        let span = tracing::info_span!(
            target: "executionkit",
            "pipe.step",
            step = crate::telemetry::int(i),
            pattern = step.step.name(),
        );
        match step.step.run(p, input, &ctx).instrument(span).await {
            Ok((r, value)) => {
                total += r.cost;
                total_usd = add_usd(total_usd, r.usd);
                over_grant += UsageOverGrant::from_metadata(&r.metadata);
                by_provider.add(&r.metadata);
                step_costs.push(StepCost {
                    cost: r.cost,
                    usd: r.usd,
                });
                step_metadata.push(r.metadata.clone());
                prev = r;
                moved = true;
                carried = value;
            }
            Err(e) => {
                step_costs.push(StepCost {
                    cost: e.cost(),
                    usd: e.usd(),
                });
                over_grant += UsageOverGrant::from_metadata(e.metadata());
                by_provider.add(e.metadata());
                let costs = step_costs.iter().map(StepCost::json).collect();
                return Err(by_provider
                    .apply_to_error(over_grant.apply_to_error(e))
                    .add_cost(total, total_usd)
                    .with_metadata("step_costs", Value::Array(costs))
                    .with_metadata("failed_step", i));
            }
        }
    }

    let stats = PipeStats {
        step_count,
        step_metadata,
        step_costs,
    };
    let PatternResult {
        value: text,
        score,
        metadata: last_metadata,
        ..
    } = prev;
    let mut result = PatternResult::with_stats((text, carried), stats).with_cost(total);
    result.score = score;
    result.usd = total_usd;
    // The last run step's keys show too, under the pipe's own.
    for (k, v) in last_metadata {
        result.metadata.entry(k).or_insert(v);
    }
    // The last step's count and costs by provider are replaced by the whole chain's.
    over_grant.apply_to_metadata(&mut result.metadata);
    by_provider.apply_to_metadata(&mut result.metadata);
    Ok(result)
}

fn add_usd(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}

#[async_trait]
impl<Out: Send + 'static> Pattern for Pipe<Out> {
    fn name(&self) -> &'static str {
        "pipe"
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }

    /// Runs the nested pipe on the previous value (or the task for a first step); the value
    /// passed on is its last text.
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        let r = self.run_sealed(provider, input.prompt(), ctx).await?;
        Ok(r.map(|(text, _)| text).erase_stats())
    }
}

/// A nested pipe as a typed step: the outer pipe's value becomes the inner pipe's.
#[async_trait]
impl<Out: Send + 'static> TypedStep for Pipe<Out> {
    type Output = Out;

    async fn run_typed(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Out)> {
        let r = self.run_sealed(provider, input.prompt(), ctx).await?;
        let PatternResult {
            value: (text, carried),
            score,
            cost,
            usd,
            metadata,
            stats: _,
        } = r;
        let value = match carried {
            Some(v) => into_value::<Out>(Some(v), String::new()),
            None => into_value::<Out>(None, text.clone()),
        }
        .map_err(|e| e.with_cost(cost).with_usd(usd))?;
        let r = PatternResult {
            value: text,
            score,
            cost,
            usd,
            metadata,
            stats: (),
        };
        Ok((r, value))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Consensus, MockProvider};

    #[test]
    fn a_value_of_another_type_is_an_error_not_a_panic() {
        assert_eq!(into_value::<String>(None, "x".into()).unwrap(), "x");
        assert_eq!(
            into_value::<u32>(Some(Box::new(7_u32)), String::new()).unwrap(),
            7
        );
        let e = into_value::<u32>(None, "x".into()).unwrap_err();
        assert!(e.is_invalid_argument() && e.message().contains("u32"));
    }

    /// The builder's types make a mismatch impossible; assembled by hand, the stages fail with
    /// the spend so far instead of panicking.
    #[tokio::test]
    async fn a_mismatched_prompt_function_fails_with_the_spend() {
        let typed: Pipe<u32> = Pipe {
            stages: Vec::new(),
            max_budget: None,
            out: PhantomData,
        };
        let pipe = Pipe::new()
            .step(Consensus::new().samples(1))
            .then(Stage::Prompt {
                f: typed.then_prompt(|n: &u32, _: &str| n.to_string()).stages[0].prompt_fn(),
                takes: "u32",
            });
        let pipe: Pipe = pipe;
        let p = MockProvider::new([crate::LlmResponse::text("a").with_usage(3, 1)]);
        let e = pipe.run(&p, "q", &RunContext::new()).await.unwrap_err();
        assert!(
            e.is_invalid_argument() && e.message().contains("u32"),
            "{e}"
        );
        assert_eq!(e.cost(), TokenUsage::new(3, 1, 1));
        assert_eq!(e.metadata()["step_costs"][0]["llm_calls"], 1);
    }

    impl Stage {
        fn prompt_fn(&self) -> PromptFn {
            match self {
                Stage::Prompt { f, .. } => f.clone(),
                Stage::Step(_) => panic!("not a prompt stage"),
            }
        }
    }
}
