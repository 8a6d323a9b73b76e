//! [`Workflow`]: named steps with dependencies, each starting as soon as its own dependencies
//! have finished, all under one budget, with a checkpoint after every finished step and
//! [`Workflow::resume`] from one.
//!
//! ```
//! use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
//! # futures::executor::block_on(async {
//! let p = MockProvider::new(["facts", "summary"]);
//! let wf = Workflow::new()
//!     .step(Step::new("research", Consensus::new().samples(1)))
//!     .step(
//!         Step::new("summary", Consensus::new().samples(1))
//!             .after(["research"])
//!             .prompt(|c| format!("Summarise: {}", c.get("research").unwrap_or_default())),
//!     );
//! let r = wf.run(&p, "Rust", &RunContext::new()).await.unwrap();
//! assert_eq!(r.value["summary"], "summary");
//! assert_eq!(p.calls()[1].request.messages[0].content, "Summarise: facts");
//! assert_eq!(r.cost.llm_calls, 2);
//! # });
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

mod checkpoint;
pub use checkpoint::WorkflowCheckpoint;

use crate::approval::{ApprovalGate, ApprovalRequest};
use crate::engine::{RunContext, seal};
use crate::error::{Error, ErrorKind, Result};
use crate::patterns::{Pattern, StepInput};
use crate::pipe::StepCost;
use crate::provider::LlmProvider;
use crate::redact::redact_secret_json;
use crate::result::{Metadata, PatternResult, RedactStats};
use crate::usage::{Budget, TokenUsage};

/// What a step's [`Step::prompt`] function sees: the workflow's task and every output so far
/// (the [`Workflow::initial_context`] seeds and the finished steps', its dependencies' among
/// them).
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["ok"]);
/// let wf = Workflow::new()
///     .initial_context([("tone", "formal")])
///     .step(Step::new("a", Consensus::new().samples(1)).prompt(|c| {
///         format!("{} ({}, step {})", c.task(), c.get("tone").unwrap_or("plain"), c.step())
///     }));
/// wf.run(&p, "Greet", &RunContext::new()).await.unwrap();
/// assert_eq!(p.calls()[0].request.messages[0].content, "Greet (formal, step a)");
/// # });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct WorkflowContext<'a> {
    task: &'a str,
    step: &'a str,
    outputs: &'a BTreeMap<String, String>,
}

impl<'a> WorkflowContext<'a> {
    /// The task the workflow runs on.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # let outputs = BTreeMap::new();
    /// let c = executionkit::WorkflowContext::new("task", "s", &outputs);
    /// assert_eq!(c.task(), "task");
    /// ```
    #[must_use]
    pub fn task(&self) -> &'a str {
        self.task
    }

    /// The name of the step whose input is being built.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # let outputs = BTreeMap::new();
    /// assert_eq!(executionkit::WorkflowContext::new("t", "s", &outputs).step(), "s");
    /// ```
    #[must_use]
    pub fn step(&self) -> &'a str {
        self.step
    }

    /// The output of a finished step or an initial-context seed named `name`.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// let outputs = BTreeMap::from([("a".to_string(), "x".to_string())]);
    /// let c = executionkit::WorkflowContext::new("t", "s", &outputs);
    /// assert_eq!((c.get("a"), c.get("b")), (Some("x"), None));
    /// ```
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.outputs.get(name).map(String::as_str)
    }

    /// Every output so far, by name.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// let outputs = BTreeMap::from([("a".to_string(), "x".to_string())]);
    /// assert_eq!(executionkit::WorkflowContext::new("t", "s", &outputs).outputs().len(), 1);
    /// ```
    #[must_use]
    pub fn outputs(&self) -> &'a BTreeMap<String, String> {
        self.outputs
    }

    /// A context over `outputs` (for testing a prompt function on its own).
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// let outputs = BTreeMap::new();
    /// let c = executionkit::WorkflowContext::new("t", "s", &outputs);
    /// assert!(c.outputs().is_empty());
    /// ```
    #[must_use]
    pub fn new(task: &'a str, step: &'a str, outputs: &'a BTreeMap<String, String>) -> Self {
        Self {
            task,
            step,
            outputs,
        }
    }
}

type PromptFn = Arc<dyn Fn(&WorkflowContext<'_>) -> String + Send + Sync>;

/// A step of a [`Workflow`]: a name, a [`Pattern`], the steps it waits for, and how its input
/// is built.
///
/// Without [`prompt`](Step::prompt) the step runs like a [`Pipe`](crate::Pipe) step: its
/// [`StepInput::task`] is the workflow's task and its [`StepInput::previous`] is nothing (no
/// dependencies), its one dependency's output, or, with several, each dependency's output as
/// `"name:\noutput"` joined by blank lines in [`after`](Step::after) order. With a prompt
/// function, the text it returns is the step's task and there is no previous value.
///
/// ```
/// use executionkit::{Consensus, Step};
/// let s = Step::new("review", Consensus::new().samples(3)).after(["draft", "facts"]);
/// assert_eq!(s.name(), "review");
/// assert_eq!(s.depends_on(), ["draft", "facts"]);
/// ```
#[derive(Clone)]
#[must_use]
pub struct Step {
    name: String,
    depends_on: Vec<String>,
    pattern: Arc<dyn Pattern>,
    prompt: Option<PromptFn>,
    provider: Option<Arc<dyn LlmProvider>>,
    metadata: Metadata,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("depends_on", &self.depends_on)
            .field("pattern", &self.pattern)
            .field("prompt", &self.prompt.as_ref().map(|_| "<fn>"))
            .field("provider", &self.provider.as_ref().map(|p| p.model()))
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl Step {
    /// A step named `name` running `pattern`, with no dependencies.
    ///
    /// ```
    /// let s = executionkit::Step::new("a", executionkit::Consensus::new());
    /// assert!(s.depends_on().is_empty());
    /// ```
    pub fn new(name: impl Into<String>, pattern: impl Pattern + 'static) -> Self {
        Self {
            name: name.into(),
            depends_on: Vec::new(),
            pattern: Arc::new(pattern),
            prompt: None,
            provider: None,
            metadata: Metadata::new(),
        }
    }

    /// A step running a shared pattern (a [`Plan`](crate::Plan)'s or a
    /// [`Planner`](crate::Planner)'s steps share theirs).
    pub(crate) fn shared(name: impl Into<String>, pattern: Arc<dyn Pattern>) -> Self {
        Self {
            name: name.into(),
            depends_on: Vec::new(),
            pattern,
            prompt: None,
            provider: None,
            metadata: Metadata::new(),
        }
    }

    /// Adds the steps this one waits for (it starts once every one has finished).
    ///
    /// ```
    /// let s = executionkit::Step::new("c", executionkit::Consensus::new()).after(["a"]).after(["b"]);
    /// assert_eq!(s.depends_on(), ["a", "b"]);
    /// ```
    pub fn after<I, S>(mut self, steps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.depends_on.extend(steps.into_iter().map(Into::into));
        self
    }

    /// Builds the step's input from the outputs so far (see [`WorkflowContext`]).
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["4"]);
    /// let wf = Workflow::new().step(Step::new("a", Consensus::new().samples(1)).prompt(|c| c.task().to_uppercase()));
    /// wf.run(&p, "two plus two?", &RunContext::new()).await.unwrap();
    /// assert_eq!(p.calls()[0].request.messages[0].content, "TWO PLUS TWO?");
    /// # });
    /// ```
    pub fn prompt(
        mut self,
        f: impl Fn(&WorkflowContext<'_>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.prompt = Some(Arc::new(f));
        self
    }

    /// Runs the step on its own provider instead of the workflow's.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
    /// # futures::executor::block_on(async {
    /// let cheap = Arc::new(MockProvider::new(["x"]));
    /// let main = MockProvider::new(["y"]);
    /// let wf = Workflow::new().step(Step::new("a", Consensus::new().samples(1)).provider(cheap.clone()));
    /// let r = wf.run(&main, "q", &RunContext::new()).await.unwrap();
    /// assert_eq!((r.value["a"].as_str(), main.call_count()), ("x", 0));
    /// # });
    /// ```
    pub fn provider(mut self, provider: Arc<dyn LlmProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Adds an entry to the metadata of the step's [`ApprovalRequest`].
    ///
    /// ```
    /// let s = executionkit::Step::new("a", executionkit::Consensus::new()).metadata("owner", "ops");
    /// # let _ = s;
    /// ```
    pub fn metadata(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// The step's name.
    ///
    /// ```
    /// assert_eq!(executionkit::Step::new("a", executionkit::Consensus::new()).name(), "a");
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The steps this one waits for.
    ///
    /// ```
    /// assert!(executionkit::Step::new("a", executionkit::Consensus::new()).depends_on().is_empty());
    /// ```
    #[must_use]
    pub fn depends_on(&self) -> &[String] {
        &self.depends_on
    }

    /// The step's input, as described on [`Step`]: `(task, previous)`.
    fn input(&self, task: &str, outputs: &BTreeMap<String, String>) -> (String, Option<String>) {
        if let Some(f) = &self.prompt {
            return (f(&WorkflowContext::new(task, &self.name, outputs)), None);
        }
        let dep = |d: &String| outputs.get(d).map_or("", String::as_str);
        let previous = match self.depends_on.as_slice() {
            [] => None,
            [one] => Some(dep(one).to_owned()),
            many => Some(
                many.iter()
                    .map(|d| format!("{d}:\n{}", dep(d)))
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            ),
        };
        (task.to_owned(), previous)
    }
}

/// What a workflow observed: [`Workflow::run`]'s `stats`, and its `metadata` (these serialised).
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["x"]);
/// let r = Workflow::new()
///     .step(Step::new("a", Consensus::new().samples(2)))
///     .run(&p, "q", &RunContext::new()).await.unwrap();
/// assert_eq!(r.stats.finished, ["a"]);
/// assert_eq!(r.stats.step_costs["a"].cost.llm_calls, 2);
/// assert_eq!(r.metadata["step_costs"]["a"]["llm_calls"], 2);
/// # });
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkflowStats {
    /// The steps that ran in this run, in the order they finished.
    pub finished: Vec<String>,
    /// The steps taken from the checkpoint a resumed run started from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<String>,
    /// The spend of each step that ran in this run.
    pub step_costs: BTreeMap<String, StepCost>,
    /// The metadata of each step that ran in this run.
    pub step_metadata: BTreeMap<String, Metadata>,
    /// The spend carried over from the checkpoint, its calls' in-flight output grants included
    /// (zero for a fresh run).
    #[serde(skip_serializing_if = "TokenUsage::is_zero")]
    pub carried: TokenUsage,
}

impl RedactStats for WorkflowStats {
    fn redact_secret(&mut self, secret: &str) {
        for m in self.step_metadata.values_mut() {
            let mut v = Value::Object(std::mem::take(m));
            redact_secret_json(&mut v, secret);
            if let Value::Object(redacted) = v {
                *m = redacted;
            }
        }
    }
}

type CheckpointFn = Arc<dyn Fn(&WorkflowCheckpoint) -> Result<()> + Send + Sync>;

/// Named steps with dependencies under one budget.
///
/// * **Order.** A step starts as soon as every step it depends on has finished, not when a
///   whole "wave" has; steps that do not depend on each other run at the same time.
/// * **Checks before any call.** Step names must be unique, every dependency must name a step,
///   the dependencies must not form a cycle, every pattern must be valid, and no
///   [`initial_context`](Workflow::initial_context) key may be a step's name: otherwise an
///   `invalid_argument` error naming the steps (or keys), sorted, and nothing is sent.
/// * **One budget.** Every step reserves from the run context's ledger (through a child of it,
///   limited by [`max_budget`](Workflow::max_budget) when set), like [`Pipe`](crate::Pipe).
/// * **Approval.** With [`approval`](Workflow::approval), each step asks the gate
///   (`action` `"workflow_step"`, `subject` its name, `metadata` its `depends_on` and the step's
///   [`Step::metadata`]) before it runs; a denial aborts the workflow.
/// * **Failure** is all-or-nothing: the first failing step cancels the steps still running and
///   its error carries the workflow's whole spend (`cost`, `usd`), `metadata.failed_step` and
///   `metadata.step_costs` (every finished step's and the failing one's).
/// * **Checkpoints.** After each finished step, a [`WorkflowCheckpoint`] goes to
///   [`on_checkpoint`](Workflow::on_checkpoint) and/or [`checkpoint_file`](Workflow::checkpoint_file);
///   an error writing it aborts the run. [`resume`](Workflow::resume) skips the finished steps
///   and starts the ledger with the checkpoint's spend.
/// * **Result.** The value maps every seed and step name to its output; `cost` is the whole
///   spend, the carried-over part included; `stats` ([`WorkflowStats`]) has each step's cost and
///   metadata.
///
/// ```
/// use executionkit::{Budget, Consensus, MockProvider, RunContext, Step, Workflow};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["x"]);
/// let wf = Workflow::new()
///     .step(Step::new("a", Consensus::new().samples(1)))
///     .step(Step::new("b", Consensus::new().samples(1)))
///     .step(Step::new("c", Consensus::new().samples(1)).after(["a", "b"]));
/// let r = wf.run(&p, "q", &RunContext::new()).await.unwrap();
/// assert_eq!(r.stats.finished.last().map(String::as_str), Some("c"));
/// // One budget for the whole workflow: three calls do not fit in two.
/// let ctx = RunContext::new().budget(Budget::new().max_calls(2));
/// let e = wf.run(&p, "q", &ctx).await.unwrap_err();
/// assert!(e.is_budget_exhausted());
/// assert_eq!(e.cost().llm_calls, 2);
/// # });
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct Workflow {
    steps: Vec<Step>,
    initial: BTreeMap<String, String>,
    gate: Option<ApprovalGate>,
    on_checkpoint: Option<CheckpointFn>,
    file: Option<PathBuf>,
    max_budget: Option<Budget>,
    /// The approval request's action (`None`: `"workflow_step"`); a [`Plan`](crate::Plan)
    /// asks with `"plan_step"`.
    pub(crate) action: Option<&'static str>,
    /// Whether a step may overwrite an initial-context seed of its name (a
    /// [`Plan`](crate::Plan)'s rule) instead of the run failing.
    pub(crate) overwrite_seeds: bool,
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field("steps", &self.steps)
            .field("initial_context", &self.initial.keys().collect::<Vec<_>>())
            .field("approval", &self.gate)
            .field(
                "on_checkpoint",
                &self.on_checkpoint.as_ref().map(|_| "<fn>"),
            )
            .field("checkpoint_file", &self.file)
            .field("max_budget", &self.max_budget)
            .finish()
    }
}

impl Workflow {
    /// A workflow with no steps.
    ///
    /// ```
    /// assert!(executionkit::Workflow::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step.
    ///
    /// ```
    /// use executionkit::{Consensus, Step, Workflow};
    /// assert_eq!(Workflow::new().step(Step::new("a", Consensus::new())).len(), 1);
    /// ```
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Seeds outputs that every step's [`WorkflowContext`] sees and that the result keeps. A key
    /// equal to a step's name is an error when the workflow runs (the reference's collision
    /// rule). Ignored by [`resume`](Workflow::resume): the checkpoint's outputs hold the seeds.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
    /// # futures::executor::block_on(async {
    /// let wf = Workflow::new()
    ///     .initial_context([("a", "seed")])
    ///     .step(Step::new("a", Consensus::new().samples(1)));
    /// let e = wf.run(&MockProvider::new(["x"]), "q", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_invalid_argument() && e.message().contains("a"));
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

    /// Asks `gate` before each step runs.
    ///
    /// ```
    /// use executionkit::{ApprovalGate, Consensus, MockProvider, RunContext, Step, Workflow};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = MockProvider::new(["x"]);
    /// let wf = Workflow::new()
    ///     .step(Step::new("deploy", Consensus::new().samples(1)))
    ///     .approval(ApprovalGate::deny_all("needs review"));
    /// let e = wf.run(&p, "q", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_approval_denied() && e.to_string().contains("needs review"));
    /// assert_eq!(p.call_count(), 0);
    /// # });
    /// ```
    pub fn approval(mut self, gate: ApprovalGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Calls `f` with a checkpoint after each finished step; an error from it aborts the run.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
    /// # futures::executor::block_on(async {
    /// let saved = Arc::new(Mutex::new(Vec::new()));
    /// let s = saved.clone();
    /// let wf = Workflow::new()
    ///     .step(Step::new("a", Consensus::new().samples(1)))
    ///     .step(Step::new("b", Consensus::new().samples(1)).after(["a"]))
    ///     .on_checkpoint(move |cp| { s.lock().unwrap().push(cp.clone()); Ok(()) });
    /// wf.run(&MockProvider::new(["x"]), "q", &RunContext::new()).await.unwrap();
    /// let saved = saved.lock().unwrap();
    /// assert_eq!(saved[0].finished, ["a"]);
    /// assert_eq!(saved[1].finished, ["a", "b"]);
    /// # });
    /// ```
    pub fn on_checkpoint(
        mut self,
        f: impl Fn(&WorkflowCheckpoint) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.on_checkpoint = Some(Arc::new(f));
        self
    }

    /// Writes each checkpoint to `path` as JSON (replacing the file whole: written beside it,
    /// then renamed); read it back with [`WorkflowCheckpoint::read`].
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow, WorkflowCheckpoint};
    /// # futures::executor::block_on(async {
    /// let path = std::env::temp_dir().join(format!("ek-wf-doc-{}.json", std::process::id()));
    /// let wf = Workflow::new()
    ///     .step(Step::new("a", Consensus::new().samples(1)))
    ///     .checkpoint_file(&path);
    /// wf.run(&MockProvider::new(["x"]), "q", &RunContext::new()).await.unwrap();
    /// assert_eq!(WorkflowCheckpoint::read(&path).unwrap().outputs["a"], "x");
    /// std::fs::remove_file(&path).unwrap();
    /// # });
    /// ```
    pub fn checkpoint_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Limits the workflow's own spend too, inside the run context's
    /// ([`RunContext::nested_budget`]).
    ///
    /// ```
    /// use executionkit::{Budget, Consensus, MockProvider, RunContext, Step, Workflow};
    /// # futures::executor::block_on(async {
    /// let wf = Workflow::new()
    ///     .step(Step::new("a", Consensus::new().samples(3)))
    ///     .max_budget(Budget::new().max_calls(2));
    /// let e = wf.run(&MockProvider::new(["x"]), "q", &RunContext::new()).await.unwrap_err();
    /// assert!(e.is_budget_exhausted());
    /// # });
    /// ```
    pub fn max_budget(mut self, budget: Budget) -> Self {
        self.max_budget = Some(budget);
        self
    }

    /// The number of steps.
    ///
    /// ```
    /// assert_eq!(executionkit::Workflow::new().len(), 0);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// `true` with no steps.
    ///
    /// ```
    /// assert!(executionkit::Workflow::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Checks the workflow as [`run`](Workflow::run) does before any call.
    ///
    /// ```
    /// use executionkit::{Consensus, Step, Workflow};
    /// let wf = Workflow::new()
    ///     .step(Step::new("a", Consensus::new()).after(["b"]))
    ///     .step(Step::new("b", Consensus::new()).after(["a"]))
    ///     .step(Step::new("c", Consensus::new()).after(["zz"]));
    /// let e = wf.check().unwrap_err();
    /// assert!(e.is_invalid_argument() && e.message().contains("'c'") && e.message().contains("zz"));
    /// let wf = Workflow::new()
    ///     .step(Step::new("a", Consensus::new()).after(["b"]))
    ///     .step(Step::new("b", Consensus::new()).after(["a"]));
    /// assert!(wf.check().unwrap_err().message().contains("cycle among steps a, b"));
    /// ```
    ///
    /// # Errors
    /// `invalid_argument`: duplicate names, unknown dependencies, a cycle, an invalid pattern
    /// (`metadata.step` its name), an initial-context key equal to a step's name.
    pub fn check(&self) -> Result<()> {
        if let Some(b) = &self.max_budget {
            b.validate()?;
        }
        let mut names = BTreeSet::new();
        let mut dup = BTreeSet::new();
        for s in &self.steps {
            if !names.insert(s.name.as_str()) {
                dup.insert(s.name.as_str());
            }
        }
        if !dup.is_empty() {
            return Err(Error::invalid_argument(
                "steps",
                format!("Workflow step names must be unique: {} repeated", join(dup)),
            ));
        }
        for s in &self.steps {
            let missing: BTreeSet<&str> = s
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| !names.contains(d))
                .collect();
            if !missing.is_empty() {
                return Err(Error::invalid_argument(
                    "depends_on",
                    format!(
                        "workflow step '{}' depends on unknown steps: {}",
                        s.name,
                        join(missing)
                    ),
                ));
            }
        }
        let cycle = self.cycle();
        if !cycle.is_empty() {
            return Err(Error::invalid_argument(
                "depends_on",
                format!("workflow dependency cycle among steps {}", join(cycle)),
            ));
        }
        let collide: BTreeSet<&str> = self
            .initial
            .keys()
            .map(String::as_str)
            .filter(|k| !self.overwrite_seeds && names.contains(k))
            .collect();
        if !collide.is_empty() {
            return Err(Error::invalid_argument(
                "initial_context",
                format!(
                    "initial_context keys collide with step names: {}",
                    join(collide)
                ),
            ));
        }
        for s in &self.steps {
            s.pattern
                .validate()
                .map_err(|e| e.with_metadata("step", s.name.clone()))?;
        }
        Ok(())
    }

    /// The steps on a dependency cycle (or between cycles), sorted; empty without one.
    fn cycle(&self) -> BTreeSet<&str> {
        // Peel off steps with no unfinished dependency (Kahn), then, of what is left, steps
        // nothing left depends on: what remains lies on cycles.
        let mut left: BTreeSet<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        let deps = |n: &str| {
            self.steps
                .iter()
                .find(|s| s.name == n)
                .map(|s| s.depends_on.as_slice())
                .unwrap_or_default()
        };
        loop {
            let free: Vec<&str> = left
                .iter()
                .copied()
                .filter(|n| deps(n).iter().all(|d| !left.contains(d.as_str())))
                .collect();
            if free.is_empty() {
                break;
            }
            for n in free {
                left.remove(n);
            }
        }
        loop {
            let leaves: Vec<&str> = left
                .iter()
                .copied()
                .filter(|n| !left.iter().any(|m| deps(m).iter().any(|d| d == n)))
                .collect();
            if leaves.is_empty() {
                break;
            }
            for n in leaves {
                left.remove(n);
            }
        }
        left
    }

    /// Runs every step on `task`.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["root", "leaf"]);
    /// let wf = Workflow::new()
    ///     .step(Step::new("root", Consensus::new().samples(1)))
    ///     .step(Step::new("leaf", Consensus::new().samples(1)).after(["root"]));
    /// let r = wf.run(&p, "q", &RunContext::new()).await.unwrap();
    /// // Without a prompt function, the one dependency's output is the step's input.
    /// assert_eq!(p.calls()[1].request.messages[0].content, "root");
    /// assert_eq!(r.value["leaf"], "leaf");
    /// # });
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` before any call (see [`check`](Workflow::check)); otherwise the first
    /// failing step's error, carrying the workflow's spend, or the checkpoint writer's.
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<BTreeMap<String, String>, WorkflowStats>> {
        seal(self.execute(provider, task, ctx, None).await, provider)
    }

    /// Runs the steps `checkpoint` has not finished: the finished ones' outputs are taken as
    /// they are and the run's ledger starts with the checkpoint's spend, so the limits hold for
    /// both runs together. The initial context is not used (the checkpoint's outputs hold it).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use executionkit::{Consensus, MockProvider, RunContext, Step, Workflow, WorkflowCheckpoint};
    /// # futures::executor::block_on(async {
    /// let wf = Workflow::new()
    ///     .step(Step::new("a", Consensus::new().samples(1)))
    ///     .step(Step::new("b", Consensus::new().samples(1)).after(["a"]));
    /// let cp = WorkflowCheckpoint {
    ///     outputs: [("a".to_string(), "done".to_string())].into(),
    ///     finished: vec!["a".into()],
    ///     spent: executionkit::TokenUsage::new(10, 5, 1),
    ///     ..WorkflowCheckpoint::default()
    /// };
    /// let p = MockProvider::new(["b!"]);
    /// let r = wf.resume(&p, "q", &RunContext::new(), &cp).await.unwrap();
    /// assert_eq!(p.call_count(), 1); // only b ran, on a's output
    /// assert_eq!(p.calls()[0].request.messages[0].content, "done");
    /// assert_eq!(r.cost.llm_calls, 2); // a's call is carried over
    /// assert_eq!(r.stats.resumed, ["a"]);
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`run`](Workflow::run); also `invalid_argument` when the checkpoint names a step the
    /// workflow does not have or lacks a finished step's output.
    pub async fn resume(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
        checkpoint: &WorkflowCheckpoint,
    ) -> Result<PatternResult<BTreeMap<String, String>, WorkflowStats>> {
        seal(
            self.execute(provider, task, ctx, Some(checkpoint)).await,
            provider,
        )
    }

    fn check_checkpoint(&self, cp: &WorkflowCheckpoint) -> Result<()> {
        let unknown: BTreeSet<&str> = cp
            .finished
            .iter()
            .map(String::as_str)
            .filter(|n| !self.steps.iter().any(|s| s.name == *n))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::invalid_argument(
                "checkpoint",
                format!(
                    "the checkpoint names steps the workflow does not have: {}",
                    join(unknown)
                ),
            ));
        }
        let missing: BTreeSet<&str> = cp
            .finished
            .iter()
            .map(String::as_str)
            .filter(|n| !cp.outputs.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid_argument(
                "checkpoint",
                format!(
                    "the checkpoint has no output for finished steps: {}",
                    join(missing)
                ),
            ));
        }
        Ok(())
    }

    fn save(&self, cp: &WorkflowCheckpoint) -> Result<()> {
        if let Some(f) = &self.on_checkpoint {
            f(cp)?;
        }
        if let Some(path) = &self.file {
            let mut tmp = path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            std::fs::write(&tmp, cp.to_json())
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Permanent,
                        format!(
                            "cannot write the workflow checkpoint {}: {e}",
                            path.display()
                        ),
                    )
                })?;
        }
        Ok(())
    }

    /// The run in a `workflow` span, the parent of its steps' spans (and approvals' events).
    async fn execute(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
        resume: Option<&WorkflowCheckpoint>,
    ) -> Result<PatternResult<BTreeMap<String, String>, WorkflowStats>> {
        let span = tracing::info_span!(
            target: "executionkit",
            "workflow",
            steps = crate::telemetry::int(self.steps.len()),
            resumed = resume.is_some(),
        );
        self.execute_steps(provider, task, ctx, resume)
            .instrument(span)
            .await
    }

    async fn execute_steps(
        &self,
        provider: &dyn LlmProvider,
        task: &str,
        ctx: &RunContext,
        resume: Option<&WorkflowCheckpoint>,
    ) -> Result<PatternResult<BTreeMap<String, String>, WorkflowStats>> {
        self.check()?;
        if let Some(cp) = resume {
            self.check_checkpoint(cp)?;
        }
        // The value is every step's: no step's text goes to an `on_text` subscriber.
        let ctx = ctx
            .without_text()
            .into_owned()
            .nested_budget(self.max_budget.clone().unwrap_or_default());
        let ledger = Arc::clone(ctx.ledger());
        let mut stats = WorkflowStats::default();
        let mut outputs;
        let mut finished: Vec<String>;
        let mut costs: BTreeMap<String, TokenUsage>;
        let mut total_usd: Option<f64>;
        match resume {
            Some(cp) => {
                let carried = cp.spent + TokenUsage::new(0, cp.in_flight_output_tokens, 0);
                ledger.charge(carried, cp.usd);
                outputs = cp.outputs.clone();
                finished = cp.finished.clone();
                costs = cp.step_costs.clone();
                total_usd = cp.usd;
                stats.carried = carried;
                stats.resumed = cp.finished.clone();
            }
            None => {
                outputs = self.initial.clone();
                finished = Vec::new();
                costs = BTreeMap::new();
                total_usd = None;
            }
        }
        let mut total = stats.carried;
        let mut started: Vec<bool> = self
            .steps
            .iter()
            .map(|s| finished.contains(&s.name))
            .collect();
        let mut running = FuturesUnordered::new();
        loop {
            for (i, s) in self.steps.iter().enumerate() {
                if started[i] || !s.depends_on.iter().all(|d| finished.contains(d)) {
                    continue;
                }
                started[i] = true;
                let (text, previous) = s.input(task, &outputs);
                running.push(self.run_step(s, provider, text, previous, &ctx));
            }
            let Some((s, result)) = running.next().await else {
                break;
            };
            match result {
                Ok(r) => {
                    total += r.cost;
                    total_usd = add_usd(total_usd, r.usd);
                    costs.insert(s.name.clone(), r.cost);
                    stats.step_costs.insert(
                        s.name.clone(),
                        StepCost {
                            cost: r.cost,
                            usd: r.usd,
                        },
                    );
                    stats.step_metadata.insert(s.name.clone(), r.metadata);
                    stats.finished.push(s.name.clone());
                    outputs.insert(s.name.clone(), r.value);
                    finished.push(s.name.clone());
                    if self.on_checkpoint.is_some() || self.file.is_some() {
                        let cp = WorkflowCheckpoint {
                            outputs: outputs.clone(),
                            finished: finished.clone(),
                            step_costs: costs.clone(),
                            spent: ledger.spent(),
                            usd: ledger.spent_usd(),
                            in_flight_output_tokens: ledger.reserved_output_tokens(),
                        };
                        if let Err(e) = self.save(&cp) {
                            drop(running);
                            return Err(fail(e, &ledger, &stats, None));
                        }
                    }
                }
                Err(e) => {
                    drop(running);
                    let own = StepCost {
                        cost: e.cost(),
                        usd: e.usd(),
                    };
                    return Err(fail(e, &ledger, &stats, Some((&s.name, own))));
                }
            }
        }
        let mut result = PatternResult::with_stats(outputs, stats).with_cost(total);
        result.usd = total_usd;
        if let Ok(Value::Object(m)) = serde_json::to_value(&result.stats) {
            result.metadata = m;
        }
        Ok(result)
    }

    /// One step: approval, then its pattern, in a span named after it.
    async fn run_step<'a>(
        &'a self,
        step: &'a Step,
        provider: &'a dyn LlmProvider,
        text: String,
        previous: Option<String>,
        ctx: &'a RunContext,
    ) -> (&'a Step, Result<PatternResult<String>>) {
        let run = async {
            if let Some(gate) = &self.gate {
                let mut req =
                    ApprovalRequest::new(self.action.unwrap_or("workflow_step"), step.name.clone())
                        .with_metadata("depends_on", step.depends_on.clone());
                for (k, v) in &step.metadata {
                    req = req.with_metadata(k, v.clone());
                }
                gate.require_in(req, ctx).await?;
            }
            let p: &dyn LlmProvider = match &step.provider {
                Some(p) => p.as_ref(),
                None => provider,
            };
            let input = StepInput {
                task: &text,
                previous: previous.as_deref(),
            };
            let span = tracing::info_span!(
                target: "executionkit",
                "workflow.step",
                step = step.name.as_str(),
                pattern = step.pattern.name(),
                kind = self.action.unwrap_or("workflow_step"),
            );
            step.pattern.run_step(p, input, ctx).instrument(span).await
        };
        (step, run.await)
    }
}

/// A failed run's error: the workflow's whole spend (the ledger's: the carried-over part, the
/// finished steps, the failing one and the calls of the steps it cancelled), the failing step
/// and every step's cost.
fn fail(
    e: Error,
    ledger: &crate::engine::BudgetLedger,
    stats: &WorkflowStats,
    failed: Option<(&str, StepCost)>,
) -> Error {
    let mut step_costs: serde_json::Map<String, Value> = stats
        .step_costs
        .iter()
        .filter_map(|(n, c)| serde_json::to_value(c).ok().map(|v| (n.clone(), v)))
        .collect();
    let mut e = e;
    if let Some((name, own)) = failed {
        if let Ok(v) = serde_json::to_value(own) {
            step_costs.insert(name.to_owned(), v);
        }
        e = e.with_metadata("failed_step", name);
    }
    e.with_cost(ledger.spent())
        .with_usd(ledger.spent_usd())
        .with_metadata("step_costs", Value::Object(step_costs))
}

fn add_usd(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}

fn join<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}
