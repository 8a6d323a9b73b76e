//! [`Plan`]: the caller's steps, run in order, each seeing the earlier outputs; and
//! [`Planner`]: a model proposes the steps (structured output), the proposal is checked, then
//! run as a [`Workflow`]. Both are built on [`Workflow`] and share the run context's budget.
//!
//! ```
//! use executionkit::{Consensus, MockProvider, Plan, PlanStep, RunContext};
//! # futures::executor::block_on(async {
//! let p = MockProvider::new(["a draft", "looks good"]);
//! let plan = Plan::new()
//!     .step(PlanStep::new("draft", "Write a first draft.", Consensus::new().samples(1)))
//!     .step(PlanStep::new("review", "Review the draft.", Consensus::new().samples(1)));
//! let r = plan.run(&p, "A haiku about Rust", &RunContext::new()).await.unwrap();
//! assert_eq!(r.value["review"], "looks good");
//! assert!(p.calls()[1].request.messages[0].content.contains("a draft"));
//! # });
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::approval::ApprovalGate;
use crate::engine::{RunContext, seal};
use crate::error::{Error, Result};
use crate::patterns::{Consensus, Pattern, StepInput, Structured, StructuredStats};
use crate::pipe::StepCost;
use crate::provider::LlmProvider;
use crate::result::{Metadata, PatternResult, RedactStats};
use crate::usage::Budget;
use crate::workflow::{Step, Workflow, WorkflowContext, WorkflowStats};

type PromptFn = Arc<dyn Fn(&WorkflowContext<'_>) -> String + Send + Sync>;

/// The prompt of a plan's step without a prompt function: the task, the outputs it may use
/// (`"Output of step `name`:\n…"`, by name) and its instruction.
fn step_prompt<'a>(
    task: &str,
    name: &str,
    instruction: &str,
    earlier: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = format!("Task:\n{task}\n\n");
    for (n, o) in earlier {
        out.push_str(&format!("Output of step `{n}`:\n{o}\n\n"));
    }
    out.push_str(&format!("Your step (`{name}`): {instruction}"));
    out
}

/// A step of a [`Plan`]: a name, an instruction and the [`Pattern`] that carries it out.
///
/// Without [`prompt`](PlanStep::prompt), the step's prompt is the task, every earlier step's
/// output (and the initial-context seeds), each as ``"Output of step `name`:"`` followed by the
/// text, and then ``"Your step (`name`): <instruction>"``.
///
/// ```
/// use executionkit::{Consensus, PlanStep};
/// let s = PlanStep::new("draft", "Write a draft.", Consensus::new().samples(1));
/// assert_eq!((s.name(), s.instruction()), ("draft", "Write a draft."));
/// ```
#[derive(Clone)]
#[must_use]
pub struct PlanStep {
    name: String,
    instruction: String,
    pattern: Arc<dyn Pattern>,
    prompt: Option<PromptFn>,
    provider: Option<Arc<dyn LlmProvider>>,
    metadata: Metadata,
}

impl fmt::Debug for PlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanStep")
            .field("name", &self.name)
            .field("instruction", &self.instruction)
            .field("pattern", &self.pattern)
            .field("prompt", &self.prompt.as_ref().map(|_| "<fn>"))
            .field("provider", &self.provider.as_ref().map(|p| p.model()))
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl PlanStep {
    /// A step named `name` that runs `pattern` on `instruction`.
    ///
    /// ```
    /// let s = executionkit::PlanStep::new("a", "Do a.", executionkit::Consensus::new());
    /// # let _ = s;
    /// ```
    pub fn new(
        name: impl Into<String>,
        instruction: impl Into<String>,
        pattern: impl Pattern + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            instruction: instruction.into(),
            pattern: Arc::new(pattern),
            prompt: None,
            provider: None,
            metadata: Metadata::new(),
        }
    }

    /// Builds the step's prompt from the outputs so far instead of the default.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, Plan, PlanStep, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["x"]);
    /// let plan = Plan::new()
    ///     .initial_context([("lang", "Rust")])
    ///     .step(PlanStep::new("a", "ignored", Consensus::new().samples(1))
    ///         .prompt(|c| format!("Say hi in {}", c.get("lang").unwrap_or_default())));
    /// plan.run(&p, "t", &RunContext::new()).await.unwrap();
    /// assert_eq!(p.calls()[0].request.messages[0].content, "Say hi in Rust");
    /// # });
    /// ```
    pub fn prompt(
        mut self,
        f: impl Fn(&WorkflowContext<'_>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.prompt = Some(Arc::new(f));
        self
    }

    /// Runs the step on its own provider instead of the plan's.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Consensus, MockProvider, Plan, PlanStep, RunContext};
    /// # futures::executor::block_on(async {
    /// let own = Arc::new(MockProvider::new(["x"]));
    /// let main = MockProvider::new(["y"]);
    /// let plan = Plan::new().step(PlanStep::new("a", "Do a.", Consensus::new().samples(1)).provider(own));
    /// assert_eq!(plan.run(&main, "t", &RunContext::new()).await.unwrap().value["a"], "x");
    /// assert_eq!(main.call_count(), 0);
    /// # });
    /// ```
    pub fn provider(mut self, provider: Arc<dyn LlmProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Adds an entry to the metadata of the step's approval request.
    ///
    /// ```
    /// let s = executionkit::PlanStep::new("a", "Do a.", executionkit::Consensus::new()).metadata("risk", "low");
    /// # let _ = s;
    /// ```
    pub fn metadata(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// The step's name.
    ///
    /// ```
    /// assert_eq!(executionkit::PlanStep::new("a", "i", executionkit::Consensus::new()).name(), "a");
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's instruction.
    ///
    /// ```
    /// assert_eq!(executionkit::PlanStep::new("a", "i", executionkit::Consensus::new()).instruction(), "i");
    /// ```
    #[must_use]
    pub fn instruction(&self) -> &str {
        &self.instruction
    }
}

/// The caller's steps, run one after the other: each step sees every earlier output (and the
/// initial-context seeds). Built on [`Workflow`] (each step depends on the one before it), so
/// it shares its rules:
///
/// * **Checks before any call**: duplicate names are `invalid_argument`
///   (`Workflow step names must be unique`), so is an invalid pattern.
/// * **One budget**: every step reserves from the run context's ledger (and
///   [`max_budget`](Plan::max_budget)); a failing step's error carries the plan's whole spend,
///   `metadata.failed_step` and `metadata.step_costs`.
/// * **Approval**: with [`approval`](Plan::approval), the gate is asked before each step with
///   `action` `"plan_step"`, `subject` its name, `metadata` its `instruction`, `depends_on`
///   and the step's [`PlanStep::metadata`]; a denial aborts the plan.
/// * **Seeds**: unlike a workflow's, a step may have the name of an initial-context seed; the
///   steps before it see the seed, the steps after it (and the result) its output.
/// * **Result**: every seed and step output by name, the whole cost and [`WorkflowStats`].
///
/// ```
/// use executionkit::{Consensus, MockProvider, Plan, PlanStep, RunContext};
/// # futures::executor::block_on(async {
/// let plan = Plan::new()
///     .step(PlanStep::new("a", "Do a.", Consensus::new()))
///     .step(PlanStep::new("a", "Do a again.", Consensus::new()));
/// let e = plan.run(&MockProvider::new(["x"]), "t", &RunContext::new()).await.unwrap_err();
/// assert!(e.is_invalid_argument() && e.message().contains("unique"));
/// # });
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Plan {
    steps: Vec<PlanStep>,
    initial: BTreeMap<String, String>,
    gate: Option<ApprovalGate>,
    max_budget: Option<Budget>,
}

impl Plan {
    /// A plan with no steps.
    ///
    /// ```
    /// assert!(executionkit::Plan::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step after the ones already there.
    ///
    /// ```
    /// use executionkit::{Consensus, Plan, PlanStep};
    /// assert_eq!(Plan::new().step(PlanStep::new("a", "i", Consensus::new())).len(), 1);
    /// ```
    pub fn step(mut self, step: PlanStep) -> Self {
        self.steps.push(step);
        self
    }

    /// Seeds outputs the steps see (and the result keeps).
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, Plan, PlanStep, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["x"]);
    /// let plan = Plan::new()
    ///     .initial_context([("style", "terse")])
    ///     .step(PlanStep::new("a", "Do a.", Consensus::new().samples(1)));
    /// let r = plan.run(&p, "t", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value["style"], "terse");
    /// assert!(p.calls()[0].request.messages[0].content.contains("Output of step `style`:\nterse"));
    /// # });
    /// ```
    pub fn initial_context<I, K, V>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.initial
            .extend(seeds.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Asks `gate` before each step (`action` `"plan_step"`).
    ///
    /// ```
    /// use executionkit::{ApprovalGate, Consensus, MockProvider, Plan, PlanStep, RunContext};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = MockProvider::new(["x"]);
    /// let plan = Plan::new()
    ///     .step(PlanStep::new("a", "Do a.", Consensus::new().samples(1)))
    ///     .approval(ApprovalGate::deny_all("needs review"));
    /// let e = plan.run(&p, "t", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_approval_denied() && e.to_string().contains("needs review"));
    /// assert_eq!(p.call_count(), 0);
    /// # });
    /// ```
    pub fn approval(mut self, gate: ApprovalGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Limits the plan's own spend too, inside the run context's.
    ///
    /// ```
    /// use executionkit::{Budget, Consensus, MockProvider, Plan, PlanStep, RunContext};
    /// # futures::executor::block_on(async {
    /// let plan = Plan::new()
    ///     .step(PlanStep::new("a", "Do a.", Consensus::new().samples(1)))
    ///     .step(PlanStep::new("b", "Do b.", Consensus::new().samples(1)))
    ///     .max_budget(Budget::new().max_calls(1));
    /// let e = plan.run(&MockProvider::new(["x"]), "t", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_budget_exhausted() && e.cost().llm_calls == 1);
    /// # });
    /// ```
    pub fn max_budget(mut self, budget: Budget) -> Self {
        self.max_budget = Some(budget);
        self
    }

    /// The number of steps.
    ///
    /// ```
    /// assert_eq!(executionkit::Plan::new().len(), 0);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// `true` with no steps.
    ///
    /// ```
    /// assert!(executionkit::Plan::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The workflow the plan runs as: each step after the one before it.
    ///
    /// ```
    /// use executionkit::{Consensus, Plan, PlanStep};
    /// let plan = Plan::new()
    ///     .step(PlanStep::new("a", "i", Consensus::new()))
    ///     .step(PlanStep::new("b", "j", Consensus::new()));
    /// assert_eq!(plan.to_workflow().len(), 2);
    /// ```
    pub fn to_workflow(&self) -> Workflow {
        let mut wf = Workflow::new().initial_context(self.initial.clone());
        if let Some(gate) = &self.gate {
            wf = wf.approval(gate.clone());
        }
        if let Some(b) = &self.max_budget {
            wf = wf.max_budget(b.clone());
        }
        wf.action = Some("plan_step");
        wf.overwrite_seeds = true;
        let mut previous: Option<&str> = None;
        for s in &self.steps {
            let mut step = Step::shared(s.name.clone(), Arc::clone(&s.pattern))
                .metadata("instruction", s.instruction.clone());
            for (k, v) in &s.metadata {
                step = step.metadata(k, v.clone());
            }
            if let Some(prev) = previous {
                step = step.after([prev]);
            }
            if let Some(p) = &s.provider {
                step = step.provider(Arc::clone(p));
            }
            step = match &s.prompt {
                Some(f) => {
                    let f = Arc::clone(f);
                    step.prompt(move |c| f(c))
                }
                None => {
                    let instruction = s.instruction.clone();
                    step.prompt(move |c| {
                        let earlier = c
                            .outputs()
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .filter(|(k, _)| *k != c.step());
                        step_prompt(c.task(), c.step(), &instruction, earlier)
                    })
                }
            };
            wf = wf.step(step);
            previous = Some(&s.name);
        }
        wf
    }

    /// Runs the steps in order on `task`.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, Plan, PlanStep, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["1", "2"]);
    /// let plan = Plan::new()
    ///     .step(PlanStep::new("first", "Count.", Consensus::new().samples(1)))
    ///     .step(PlanStep::new("second", "Count on.", Consensus::new().samples(1)));
    /// let r = plan.run(&p, "t", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.stats.finished, ["first", "second"]);
    /// assert_eq!(r.cost.llm_calls, 2);
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`Workflow::run`]: `invalid_argument` before any call (duplicate names, an invalid
    /// pattern), or the failing step's error (budget, approval, provider, …) carrying the whole
    /// spend.
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<BTreeMap<String, String>, WorkflowStats>> {
        self.to_workflow().run(provider, task, ctx).await
    }
}

/// A step of a [`ProposedPlan`], as the [`Planner`]'s model writes it.
///
/// ```
/// let s: executionkit::ProposedStep = serde_json::from_str(
///     r#"{"name": "b", "instruction": "Use a.", "depends_on": ["a"]}"#).unwrap();
/// assert_eq!(s.depends_on, ["a"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProposedStep {
    /// A short identifier, unique in the plan.
    pub name: String,
    /// What the step must do.
    pub instruction: String,
    /// The names of the steps whose outputs this one needs (`[]` for none).
    pub depends_on: Vec<String>,
}

/// The steps a [`Planner`]'s model proposes (its structured output).
///
/// ```
/// let p = executionkit::ProposedPlan::from_json(
///     r#"{"steps": [{"name": "a", "instruction": "Do a.", "depends_on": []}]}"#).unwrap();
/// assert_eq!(p.steps.len(), 1);
/// assert!(p.check(8).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ProposedPlan {
    /// The steps, in any order consistent with their dependencies.
    pub steps: Vec<ProposedStep>,
}

/// The pattern of a proposal's steps while the proposal is only checked.
#[derive(Debug)]
struct Unrun;

#[async_trait]
impl Pattern for Unrun {
    fn name(&self) -> &'static str {
        "unrun"
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }

    async fn run_step(
        &self,
        _provider: &dyn LlmProvider,
        input: StepInput<'_>,
        _ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        Ok(PatternResult::new(input.prompt().to_owned()))
    }
}

impl ProposedPlan {
    /// Reads a proposal from JSON.
    ///
    /// ```
    /// assert!(executionkit::ProposedPlan::from_json("[]").unwrap_err().is_invalid_argument());
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` when the text is not a proposal.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json)
            .map_err(|e| Error::invalid_argument("plan", format!("not a plan: {e}")))
    }

    /// Checks the proposal: at least one step and at most `max_steps`, every name and
    /// instruction non-blank, unique names, every dependency naming a step, no dependency
    /// cycle.
    ///
    /// ```
    /// let p = executionkit::ProposedPlan::from_json(r#"{"steps": [
    ///     {"name": "a", "instruction": "Do a.", "depends_on": ["b"]},
    ///     {"name": "b", "instruction": "Do b.", "depends_on": ["a"]}]}"#).unwrap();
    /// let e = p.check(8).unwrap_err();
    /// assert!(e.is_invalid_argument() && e.message().contains("cycle among steps a, b"));
    /// assert!(p.check(1).unwrap_err().message().contains("at most 1"));
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` (argument `plan`) saying what is wrong, naming the steps.
    pub fn check(&self, max_steps: usize) -> Result<()> {
        let bad = |m: String| {
            Err(Error::invalid_argument(
                "plan",
                format!("invalid plan: {m}"),
            ))
        };
        if self.steps.is_empty() {
            return bad("the plan has no steps".into());
        }
        if self.steps.len() > max_steps {
            return bad(format!(
                "the plan has {} steps; at most {max_steps} are allowed",
                self.steps.len()
            ));
        }
        for (i, s) in self.steps.iter().enumerate() {
            if s.name.trim().is_empty() {
                return bad(format!("step {} has an empty name", i + 1));
            }
            if s.instruction.trim().is_empty() {
                return bad(format!("step '{}' has an empty instruction", s.name));
            }
        }
        match self
            .workflow(&(Arc::new(Unrun) as Arc<dyn Pattern>), None)
            .check()
        {
            Ok(()) => Ok(()),
            Err(e) => bad(e.message().to_owned()),
        }
    }

    /// The proposal as a workflow whose steps run `pattern`: each step's prompt is the task, its
    /// dependencies' outputs and its instruction (as a [`PlanStep`]'s).
    fn workflow(&self, pattern: &Arc<dyn Pattern>, gate: Option<&ApprovalGate>) -> Workflow {
        let mut wf = Workflow::new();
        if let Some(gate) = gate {
            wf = wf.approval(gate.clone());
        }
        for s in &self.steps {
            let instruction = s.instruction.clone();
            let deps = s.depends_on.clone();
            let step = Step::shared(s.name.clone(), Arc::clone(pattern))
                .after(s.depends_on.iter().cloned())
                .metadata("instruction", s.instruction.clone())
                .prompt(move |c| {
                    let earlier = deps
                        .iter()
                        .map(|d| (d.as_str(), c.get(d).unwrap_or_default()));
                    step_prompt(c.task(), c.step(), &instruction, earlier)
                });
            wf = wf.step(step);
        }
        wf
    }
}

/// What a [`Planner`] run observed: its `stats` (and its `metadata`, these serialised).
///
/// ```
/// use executionkit::{MockProvider, Planner, RunContext};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new([r#"{"steps": [{"name": "a", "instruction": "Do a.", "depends_on": []}]}"#, "done"]);
/// let r = Planner::new().run(&p, "t", &RunContext::new()).await.unwrap();
/// assert_eq!(r.stats.plan.steps[0].name, "a");
/// assert_eq!(r.stats.planning.cost.llm_calls, 1);
/// assert_eq!(r.metadata["workflow"]["finished"][0], "a");
/// # });
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct PlannerStats {
    /// The accepted proposal.
    pub plan: ProposedPlan,
    /// The planning call's structured-output statistics (attempts, repairs).
    pub planning_stats: StructuredStats,
    /// The spend of the planning call(s).
    pub planning: StepCost,
    /// The workflow's statistics (its steps' costs and metadata).
    pub workflow: WorkflowStats,
}

impl RedactStats for PlannerStats {
    fn redact_secret(&mut self, secret: &str) {
        self.workflow.redact_secret(secret);
    }
}

/// How many steps a proposal may have when no [`Planner::max_steps`] is set.
const DEFAULT_MAX_STEPS: usize = 8;

/// A model proposes the steps for a task, the proposal is checked, then run as a [`Workflow`].
///
/// * **Planning.** One [`Structured<ProposedPlan>`] call (`response_format` with the schema)
///   asks for at most [`max_steps`](Planner::max_steps) steps, each with a unique `name`, an
///   `instruction` and `depends_on`. The proposal is checked as [`ProposedPlan::check`] does;
///   a bad one is sent back for repair (the structured pattern's loop, at most
///   [`max_repairs`](Planner::max_repairs) times). When none is acceptable: a `parse` error
///   whose message says what is wrong.
/// * **Running.** The steps run as a workflow (dependency order; independent steps at once),
///   each with [`step_pattern`](Planner::step_pattern) (default: one sample of
///   [`Consensus`]) on a prompt made of the task, its dependencies' outputs and its
///   instruction. An [`approval`](Planner::approval) gate is asked before each step
///   (`"workflow_step"`, `metadata.instruction`).
/// * **One budget.** Planning and steps reserve from the run context's ledger (and
///   [`max_budget`](Planner::max_budget)); every error carries the whole spend (planning
///   included) and, once a plan is accepted, `metadata.plan`.
///
/// ```
/// use executionkit::{MockProvider, Planner, RunContext};
/// # futures::executor::block_on(async {
/// let proposal = r#"{"steps": [
///     {"name": "facts", "instruction": "List facts.", "depends_on": []},
///     {"name": "summary", "instruction": "Summarise the facts.", "depends_on": ["facts"]}]}"#;
/// let p = MockProvider::new([proposal, "Rust is fast.", "Fast."]);
/// let r = Planner::new().run(&p, "About Rust", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value["summary"], "Fast.");
/// assert_eq!(r.cost.llm_calls, 3); // the planning call and two steps
/// # });
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Planner {
    max_steps: usize,
    max_repairs: usize,
    pattern: Arc<dyn Pattern>,
    gate: Option<ApprovalGate>,
    max_budget: Option<Budget>,
}

impl Default for Planner {
    fn default() -> Self {
        Self::new()
    }
}

impl Planner {
    /// At most 8 steps, 2 repairs of a bad proposal, steps run with one consensus sample.
    ///
    /// ```
    /// let p = executionkit::Planner::new();
    /// # let _ = p;
    /// ```
    pub fn new() -> Self {
        Self {
            max_steps: DEFAULT_MAX_STEPS,
            max_repairs: 2,
            pattern: Arc::new(Consensus::new().samples(1)),
            gate: None,
            max_budget: None,
        }
    }

    /// The most steps a proposal may have (default 8).
    ///
    /// ```
    /// use executionkit::{MockProvider, Planner, RunContext};
    /// # futures::executor::block_on(async {
    /// let two = r#"{"steps": [{"name": "a", "instruction": "A.", "depends_on": []},
    ///                         {"name": "b", "instruction": "B.", "depends_on": []}]}"#;
    /// let p = MockProvider::new([two]);
    /// let e = Planner::new().max_steps(1).max_repairs(0).run(&p, "t", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_parse() && e.message().contains("at most 1"));
    /// # });
    /// ```
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// How many repair calls may follow a bad proposal (default 2).
    ///
    /// ```
    /// let p = executionkit::Planner::new().max_repairs(0);
    /// # let _ = p;
    /// ```
    pub fn max_repairs(mut self, n: usize) -> Self {
        self.max_repairs = n;
        self
    }

    /// The pattern every proposed step runs.
    ///
    /// ```
    /// let p = executionkit::Planner::new().step_pattern(executionkit::Consensus::new().samples(3));
    /// # let _ = p;
    /// ```
    pub fn step_pattern(mut self, pattern: impl Pattern + 'static) -> Self {
        self.pattern = Arc::new(pattern);
        self
    }

    /// Asks `gate` before each proposed step.
    ///
    /// ```
    /// use executionkit::{ApprovalGate, MockProvider, Planner, RunContext};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = MockProvider::new([r#"{"steps": [{"name": "rm", "instruction": "Delete.", "depends_on": []}]}"#]);
    /// let e = Planner::new().approval(ApprovalGate::deny_all("no"))
    ///     .run(&p, "t", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_approval_denied());
    /// assert_eq!(e.cost().llm_calls, 1); // the planning call
    /// # });
    /// ```
    pub fn approval(mut self, gate: ApprovalGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Limits the planner's own spend (planning and steps) inside the run context's.
    ///
    /// ```
    /// use executionkit::{Budget, MockProvider, Planner, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new([r#"{"steps": [{"name": "a", "instruction": "A.", "depends_on": []}]}"#]);
    /// let e = Planner::new().max_budget(Budget::new().max_calls(1))
    ///     .run(&p, "t", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_budget_exhausted() && e.cost().llm_calls == 1);
    /// # });
    /// ```
    pub fn max_budget(mut self, budget: Budget) -> Self {
        self.max_budget = Some(budget);
        self
    }

    fn structured(&self) -> Structured<ProposedPlan> {
        let max = self.max_steps;
        Structured::<ProposedPlan>::new()
            .max_repairs(self.max_repairs)
            .validator(move |p: &ProposedPlan| p.check(max).map_err(|e| e.message().to_owned()))
    }

    fn planning_prompt(&self, task: &str) -> String {
        format!(
            "Break the task below into at most {} steps. Give each step a short unique `name`, \
             an `instruction` saying what it must do, and `depends_on`: the names of the steps \
             whose outputs it needs ([] for none). Steps that do not depend on each other run \
             at the same time; the dependencies must not form a cycle.\n\nTask:\n{task}",
            self.max_steps
        )
    }

    /// Only asks the model for a proposal (checked; nothing is run).
    ///
    /// ```
    /// use executionkit::{MockProvider, Planner, RunContext};
    /// # futures::executor::block_on(async {
    /// let bad = r#"{"steps": []}"#;
    /// let good = r#"{"steps": [{"name": "a", "instruction": "A.", "depends_on": []}]}"#;
    /// let p = MockProvider::new([bad, good]);
    /// let r = Planner::new().propose(&p, "t", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value.steps.len(), 1);
    /// assert_eq!(r.stats.repair_attempts, 1); // the empty plan was sent back
    /// # });
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` when `max_steps` is 0; `parse` when no acceptable proposal came after
    /// the repairs; any call error. Every error carries the spend.
    pub async fn propose(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<ProposedPlan, StructuredStats>> {
        if self.max_steps == 0 {
            return Err(Error::invalid_argument(
                "max_steps",
                "max_steps must be at least 1",
            ));
        }
        self.structured()
            .run(provider, &self.planning_prompt(task), ctx)
            .await
    }

    /// Asks for a proposal, checks it, and runs it as a workflow.
    ///
    /// ```
    /// use executionkit::{MockProvider, Planner, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new([r#"{"steps": [{"name": "a", "instruction": "A.", "depends_on": []}]}"#, "x"]);
    /// let r = Planner::new().run(&p, "t", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value["a"], "x");
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`propose`](Planner::propose), then as [`Workflow::run`]; every error carries the
    /// whole spend, planning included.
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<BTreeMap<String, String>, PlannerStats>> {
        // The value is every step's: no text goes to an `on_text` subscriber.
        let ctx = ctx
            .without_text()
            .into_owned()
            .nested_budget(self.max_budget.clone().unwrap_or_default());
        let ledger = Arc::clone(ctx.ledger());
        let whole = |e: Error| e.with_cost(ledger.spent()).with_usd(ledger.spent_usd());
        let run = async {
            if let Some(b) = &self.max_budget {
                b.validate()?;
            }
            self.pattern.validate()?;
            let proposal = self.propose(provider, task, &ctx).await.map_err(whole)?;
            self.execute(provider, task, &ctx, proposal).await
        };
        seal(run.await, provider)
    }

    /// Runs an accepted proposal: the workflow, then the totals.
    async fn execute(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
        proposal: PatternResult<ProposedPlan, StructuredStats>,
    ) -> Result<PatternResult<BTreeMap<String, String>, PlannerStats>> {
        let ledger = ctx.ledger();
        let plan = proposal.value;
        let plan_json = serde_json::to_value(&plan).unwrap_or_default();
        let wf = plan.workflow(&self.pattern, self.gate.as_ref());
        let r = wf.run(provider, task, ctx).await.map_err(|e| {
            e.with_cost(ledger.spent())
                .with_usd(ledger.spent_usd())
                .with_metadata("plan", plan_json.clone())
        })?;
        let stats = PlannerStats {
            plan,
            planning_stats: proposal.stats,
            planning: StepCost {
                cost: proposal.cost,
                usd: proposal.usd,
            },
            workflow: r.stats,
        };
        let mut result =
            PatternResult::with_stats(r.value, stats).with_cost(proposal.cost + r.cost);
        result.usd = match (proposal.usd, r.usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        if let Ok(Value::Object(m)) = serde_json::to_value(&result.stats) {
            result.metadata = m;
        }
        Ok(result)
    }
}
