//! [`Pipe`]: run patterns one after another under one budget, each step working on the
//! previous step's value.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Serialize, Serializer};
use serde_json::Value;
use tracing::Instrument;

use crate::engine::{RunContext, seal};
use crate::error::Result;
use crate::patterns::{Pattern, StepInput};
use crate::provider::LlmProvider;
use crate::redact::redact_secret_json;
use crate::result::{Metadata, PatternResult, RedactStats, cost_json};
use crate::usage::{Budget, TokenUsage, UsageOverGrant};

/// A predicate deciding whether a conditional step runs.
///
/// ```
/// use std::sync::Arc;
/// use executionkit::{PatternResult, pipe::StepPredicate};
/// let short: StepPredicate = Arc::new(|r: &PatternResult<String>| r.value.len() < 10);
/// assert!(short(&PatternResult::new("tiny".to_owned())));
/// assert!(!short(&PatternResult::new("far too long to pass".to_owned())));
/// ```
pub type StepPredicate = Arc<dyn Fn(&PatternResult<String>) -> bool + Send + Sync>;

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
/// use executionkit::{TokenUsage, pipe::StepCost};
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

#[derive(Clone)]
struct PipeStep {
    pattern: Arc<dyn Pattern>,
    predicate: Option<StepPredicate>,
    provider: Option<Arc<dyn LlmProvider>>,
}

/// A chain of patterns sharing one budget ledger.
///
/// * Step k+1 receives step k's value as [`StepInput::previous`] and the pipe's prompt as
///   [`StepInput::task`]; a consensus step votes on the previous value, a refine step improves it.
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
///   ([`UsageOverGrant`](crate::UsageOverGrant)); each step's own is in its `step_metadata`.
/// * An empty pipe returns the prompt at zero cost with empty metadata.
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
#[derive(Clone, Default)]
#[must_use]
pub struct Pipe {
    steps: Vec<PipeStep>,
    max_budget: Option<Budget>,
}

impl fmt::Debug for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                let mut d = format!("{:?}", s.pattern);
                if s.predicate.is_some() {
                    d.push_str(" if <predicate>");
                }
                if let Some(p) = &s.provider {
                    d.push_str(&format!(" on {}", p.model()));
                }
                d
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

    /// Appends a step.
    ///
    /// ```
    /// let p = executionkit::Pipe::new().step(executionkit::Consensus::new());
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn step(mut self, pattern: impl Pattern + 'static) -> Self {
        self.steps.push(PipeStep {
            pattern: Arc::new(pattern),
            predicate: None,
            provider: None,
        });
        self
    }

    /// Appends a step that runs only when `predicate` holds for the previous result (the last
    /// step that ran; for a first step, the prompt with no score).
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
        mut self,
        predicate: impl Fn(&PatternResult<String>) -> bool + Send + Sync + 'static,
        pattern: impl Pattern + 'static,
    ) -> Self {
        self.steps.push(PipeStep {
            pattern: Arc::new(pattern),
            predicate: Some(Arc::new(predicate)),
            provider: None,
        });
        self
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
        mut self,
        provider: Arc<dyn LlmProvider>,
        pattern: impl Pattern + 'static,
    ) -> Self {
        self.steps.push(PipeStep {
            pattern: Arc::new(pattern),
            predicate: None,
            provider: Some(provider),
        });
        self
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
        mut self,
        predicate: impl Fn(&PatternResult<String>) -> bool + Send + Sync + 'static,
        provider: Arc<dyn LlmProvider>,
        pattern: impl Pattern + 'static,
    ) -> Self {
        self.steps.push(PipeStep {
            pattern: Arc::new(pattern),
            predicate: Some(Arc::new(predicate)),
            provider: Some(provider),
        });
        self
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
        self.steps.len()
    }

    /// `true` with no steps.
    ///
    /// ```
    /// assert!(executionkit::Pipe::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
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
        for (i, s) in self.steps.iter().enumerate() {
            s.pattern
                .validate()
                .map_err(|e| e.with_metadata("step", i))?;
        }
        Ok(())
    }

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
    ) -> Result<PatternResult<String, PipeStats>> {
        seal(self.run_unsealed(provider, prompt, ctx).await, provider)
    }

    async fn run_unsealed(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<String, PipeStats>> {
        self.check()?;
        if self.steps.is_empty() {
            let stats = PipeStats {
                step_count: 0,
                step_metadata: Vec::new(),
                step_costs: Vec::new(),
            };
            return Ok(PatternResult::with_stats(prompt.to_owned(), stats));
        }
        let ctx = match &self.max_budget {
            Some(b) => ctx.clone().nested_budget(b.clone()),
            None => ctx.clone(),
        };
        let mut total = TokenUsage::default();
        let mut total_usd: Option<f64> = None;
        let mut over_grant = UsageOverGrant::default();
        let mut current: Option<String> = None;
        let mut last: Option<PatternResult<String>> = None;
        let mut step_metadata: Vec<Metadata> = Vec::with_capacity(self.steps.len());
        let mut step_costs: Vec<StepCost> = Vec::with_capacity(self.steps.len());
        let start = PatternResult::new(prompt.to_owned());

        for (i, step) in self.steps.iter().enumerate() {
            if let Some(pred) = &step.predicate {
                if !pred(last.as_ref().unwrap_or(&start)) {
                    let mut skipped = Metadata::new();
                    skipped.insert("skipped".into(), Value::Bool(true));
                    step_metadata.push(skipped);
                    step_costs.push(StepCost::default());
                    continue;
                }
            }
            let p: &dyn LlmProvider = match &step.provider {
                Some(p) => p.as_ref(),
                None => provider,
            };
            let input = StepInput {
                task: prompt,
                previous: current.as_deref(),
            };
            let span = tracing::info_span!(
                target: "executionkit",
                "pipe.step",
                step = i,
                pattern = step.pattern.name(),
            );
            match step.pattern.run_step(p, input, &ctx).instrument(span).await {
                Ok(r) => {
                    total += r.cost;
                    total_usd = add_usd(total_usd, r.usd);
                    over_grant += UsageOverGrant::from_metadata(&r.metadata);
                    step_costs.push(StepCost {
                        cost: r.cost,
                        usd: r.usd,
                    });
                    step_metadata.push(r.metadata.clone());
                    current = Some(r.value.clone());
                    last = Some(r);
                }
                Err(e) => {
                    step_costs.push(StepCost {
                        cost: e.cost(),
                        usd: e.usd(),
                    });
                    over_grant += UsageOverGrant::from_metadata(e.metadata());
                    let costs = step_costs.iter().map(StepCost::json).collect();
                    return Err(over_grant
                        .apply_to_error(e)
                        .add_cost(total, total_usd)
                        .with_metadata("step_costs", Value::Array(costs))
                        .with_metadata("failed_step", i));
                }
            }
        }

        let (value, score, last_metadata) = match last {
            Some(r) => (r.value, r.score, r.metadata),
            None => (prompt.to_owned(), None, Metadata::new()),
        };
        let stats = PipeStats {
            step_count: self.steps.len(),
            step_metadata,
            step_costs,
        };
        let mut result = PatternResult::with_stats(value, stats).with_cost(total);
        result.score = score;
        result.usd = total_usd;
        // The last run step's keys show too, under the pipe's own.
        for (k, v) in last_metadata {
            result.metadata.entry(k).or_insert(v);
        }
        // The last step's count is replaced by the whole chain's.
        over_grant.apply_to_metadata(&mut result.metadata);
        Ok(result)
    }
}

fn add_usd(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}

#[async_trait]
impl Pattern for Pipe {
    fn name(&self) -> &'static str {
        "pipe"
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }

    /// Runs the nested pipe on the previous value (or the task for a first step).
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        Ok(self.run(provider, input.prompt(), ctx).await?.erase_stats())
    }
}
