//! [`ReactLoop`]: the ReAct tool loop (reference §12.5–§12.8).
//!
//! Each round sends the conversation and the tool descriptions to the model. A reply without
//! tool calls is the answer. A reply with tool calls is executed: the calls of one round run
//! concurrently (up to [`ReactLoop::tool_concurrency`]), each checked against its schema, asked
//! of an optional [`ApprovalGate`], run on its own task under a timeout; every outcome, good or
//! bad, goes back to the model as a `tool` message, and the next round starts.
//!
//! ```
//! use executionkit::patterns::react::ReactLoop;
//! use executionkit::tools::Tool;
//! use executionkit::{Choice, LlmResponse, MockProvider, RunContext, ToolCall};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let call = LlmResponse {
//!     choices: vec![Choice {
//!         content: String::new(),
//!         tool_calls: vec![ToolCall::new("tc1", "add", serde_json::json!({"a": 2, "b": 3}))],
//!         finish_reason: Some("tool_calls".into()),
//!     }],
//!     ..LlmResponse::default()
//! };
//! let provider = MockProvider::new([call, LlmResponse::text("2 + 3 = 5")]);
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Add { a: i64, b: i64 }
//! let add = Tool::typed("add", "Adds two integers", |x: Add| async move { Ok((x.a + x.b).to_string()) });
//!
//! let r = ReactLoop::new().run(&provider, "What is 2 + 3?", &[add], &RunContext::new()).await.unwrap();
//! assert_eq!(r.value, "2 + 3 = 5");
//! assert_eq!(r.metadata["rounds"], 2);
//! assert_eq!(r.metadata["tool_calls_made"], 1);
//! assert_eq!(r.metadata["messages"][2]["content"], "5");
//! # });
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value};

use crate::approval::{ApprovalGate, ApprovalRequest};
use crate::engine::{CostTracker, RunContext, seal};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::provider::{
    ChatRequest, LlmProvider, Message, Role, ToolCall, ToolChoice, check_temperature,
};
use crate::result::{Metadata, PatternResult};
use crate::tools::{Observation, ObservationKind, TRUNCATION_MARKER, Tool};
use crate::usage::TokenUsage;

/// The prefix of the system message that carries a summary of trimmed history.
///
/// ```
/// use executionkit::{Message, MockProvider, RunContext};
/// use executionkit::patterns::react::{ReactLoop, SUMMARY_PREFIX};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["ok"]);
/// let history: Vec<Message> = (0..6)
///     .map(|i| if i % 2 == 0 { Message::user(format!("q{i}")) } else { Message::assistant("a") })
///     .chain([Message::user("last")])
///     .collect();
/// let l = ReactLoop::new()
///     .max_history_messages(3)
///     .summarizer(|dropped| async move { Ok::<_, executionkit::Error>(format!("{} dropped", dropped.len())) });
/// l.run_messages(&p, history, &[], &RunContext::new()).await.unwrap();
/// let sent = p.last_call().unwrap().request.messages;
/// assert!(sent.iter().any(|m| m.content.starts_with(SUMMARY_PREFIX)));
/// # });
/// ```
pub const SUMMARY_PREFIX: &str = "Summary of earlier conversation: ";

/// Why a tool loop stopped (`metadata.termination_reason`).
///
/// ```
/// use executionkit::patterns::react::ReactTermination;
/// assert_eq!(ReactTermination::Natural.as_str(), "natural");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReactTermination {
    /// The model answered without calling a tool.
    Natural,
    /// `max_rounds` rounds ran without an answer (the run fails with `max_iterations`).
    MaxIterations,
}

impl ReactTermination {
    /// `"natural"` or `"max_iterations"`.
    ///
    /// ```
    /// use executionkit::patterns::react::ReactTermination;
    /// assert_eq!(ReactTermination::MaxIterations.as_str(), "max_iterations");
    /// assert_eq!(ReactTermination::Natural.to_string(), "natural");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Natural => "natural",
            Self::MaxIterations => "max_iterations",
        }
    }
}

impl fmt::Display for ReactTermination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a summarizer returns: the summary text and, optionally, what producing it cost
/// (added to the loop's cost).
///
/// ```
/// use executionkit::{TokenUsage, patterns::react::Summary};
/// let s: Summary = "two messages about weather".into();
/// assert!(s.usage.is_none());
/// let s: Summary = ("short".to_owned(), TokenUsage::new(100, 40, 1)).into();
/// assert_eq!(s.usage.unwrap().llm_calls, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The summary.
    pub text: String,
    /// Its cost, if it made calls.
    pub usage: Option<TokenUsage>,
}

impl From<String> for Summary {
    fn from(text: String) -> Self {
        Self { text, usage: None }
    }
}

impl From<&str> for Summary {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

impl From<(String, TokenUsage)> for Summary {
    fn from((text, usage): (String, TokenUsage)) -> Self {
        Self {
            text,
            usage: Some(usage),
        }
    }
}

impl From<(&str, TokenUsage)> for Summary {
    fn from((text, usage): (&str, TokenUsage)) -> Self {
        Self::from((text.to_owned(), usage))
    }
}

type SummarizerFn = dyn Fn(Vec<Message>) -> BoxFuture<'static, Result<Summary>> + Send + Sync;

/// The state of a tool loop after one tool round, as given to [`ReactLoop::on_checkpoint`].
/// Serialises to `{"round", "last_response", "tool_calls_made", "cost", "messages"}`.
///
/// ```
/// use executionkit::{Message, TokenUsage, patterns::react::ReactCheckpoint};
/// let c = ReactCheckpoint {
///     round: 0,
///     last_response: String::new(),
///     tool_calls_made: vec!["search".into()],
///     cost: TokenUsage::new(5, 1, 1),
///     messages: vec![Message::user("q")],
/// };
/// assert_eq!(serde_json::to_value(&c).unwrap()["messages"][0]["role"], "user");
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReactCheckpoint {
    /// 0 after the first round, 1 after the second, …
    pub round: usize,
    /// The text of the reply that asked for the tools (often empty).
    pub last_response: String,
    /// The names of every call the round requested, rejected ones included.
    pub tool_calls_made: Vec<String>,
    /// The loop's spend so far.
    pub cost: TokenUsage,
    /// The whole transcript so far.
    pub messages: Vec<Message>,
}

type CheckpointFn = dyn Fn(&ReactCheckpoint) + Send + Sync;

/// The ReAct tool loop as a typed builder. Defaults: 8 rounds, observations of at most 12 000
/// characters, at most 32 tool calls per round of which 10 run at once, temperature 0.3,
/// `max_tokens` 4096, no history limit, no approval gate.
///
/// Metadata of the result (and of a `max_iterations` error): `rounds`, `tool_calls_made`,
/// `rejected_tool_calls`, `truncated_responses`, `truncated_observations`, `messages_trimmed`,
/// `summarized`, `termination_reason` (`"natural"` / `"max_iterations"`) and `messages` (the
/// whole transcript as JSON, never including injected summaries).
///
/// ```
/// use std::time::Duration;
/// use executionkit::{ToolChoice, patterns::react::ReactLoop};
/// let r = ReactLoop::new()
///     .max_rounds(4)
///     .tool_timeout(Duration::from_secs(5))
///     .tool_choice(ToolChoice::Auto)
///     .max_history_messages(20);
/// # let _ = r;
/// ```
#[derive(Clone)]
#[must_use]
pub struct ReactLoop {
    max_rounds: usize,
    max_observation_chars: usize,
    tool_timeout: Option<Duration>,
    max_tool_calls_per_round: usize,
    tool_concurrency: usize,
    temperature: f64,
    max_tokens: u32,
    max_history_messages: Option<usize>,
    summarizer: Option<Arc<SummarizerFn>>,
    approval_gate: Option<ApprovalGate>,
    tool_choice: Option<ToolChoice>,
    initial_tool_choice: Option<ToolChoice>,
    seed: Option<u64>,
    system: Option<String>,
    model: Option<String>,
    redact_tool_args: bool,
    tools: Vec<Tool>,
    on_checkpoint: Option<Arc<CheckpointFn>>,
}

impl fmt::Debug for ReactLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactLoop")
            .field("max_rounds", &self.max_rounds)
            .field("max_observation_chars", &self.max_observation_chars)
            .field("tool_timeout", &self.tool_timeout)
            .field("max_tool_calls_per_round", &self.max_tool_calls_per_round)
            .field("tool_concurrency", &self.tool_concurrency)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("max_history_messages", &self.max_history_messages)
            .field("summarizer", &self.summarizer.is_some())
            .field("on_checkpoint", &self.on_checkpoint.is_some())
            .field("approval_gate", &self.approval_gate)
            .field("tool_choice", &self.tool_choice)
            .field("initial_tool_choice", &self.initial_tool_choice)
            .field("seed", &self.seed)
            .field("model", &self.model)
            .field(
                "tools",
                &self.tools.iter().map(Tool::name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for ReactLoop {
    fn default() -> Self {
        Self {
            max_rounds: 8,
            max_observation_chars: 12_000,
            tool_timeout: None,
            max_tool_calls_per_round: 32,
            tool_concurrency: 10,
            temperature: 0.3,
            max_tokens: crate::provider::DEFAULT_MAX_TOKENS,
            max_history_messages: None,
            summarizer: None,
            approval_gate: None,
            tool_choice: None,
            initial_tool_choice: None,
            seed: None,
            system: None,
            model: None,
            redact_tool_args: true,
            tools: Vec::new(),
            on_checkpoint: None,
        }
    }
}

/// Counters reported in metadata.
#[derive(Debug, Default)]
struct Counters {
    rounds: usize,
    tool_calls_made: usize,
    rejected_tool_calls: usize,
    truncated_responses: usize,
    truncated_observations: usize,
    messages_trimmed: usize,
    summarized: usize,
}

impl ReactLoop {
    /// The defaults (see the type's docs).
    ///
    /// ```
    /// let r = executionkit::patterns::react::ReactLoop::new();
    /// # let _ = r;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The most LLM rounds (≥ 1; default 8). With no answer after them the run fails with
    /// `max_iterations`.
    ///
    /// ```
    /// use executionkit::{Choice, LlmResponse, MockProvider, RunContext, ToolCall};
    /// use executionkit::{patterns::react::ReactLoop, tools::Tool};
    /// # futures::executor::block_on(async {
    /// // A model that asks for a tool every round never answers.
    /// let ask = LlmResponse {
    ///     choices: vec![Choice {
    ///         content: String::new(),
    ///         tool_calls: vec![ToolCall::new("t1", "echo", serde_json::json!({}))],
    ///         finish_reason: Some("tool_calls".into()),
    ///     }],
    ///     ..LlmResponse::default()
    /// };
    /// let echo = Tool::new("echo", "Echoes", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let p = MockProvider::new([ask]);
    /// let err = ReactLoop::new().max_rounds(2).run(&p, "q", &[echo], &RunContext::new()).await.unwrap_err();
    /// assert!(err.is_max_iterations());
    /// assert_eq!(p.call_count(), 2);
    /// # });
    /// ```
    pub fn max_rounds(mut self, n: usize) -> Self {
        self.max_rounds = n;
        self
    }

    /// The longest tool result shown to the model, in characters (≥ 1; default 12 000).
    /// Longer results end with `"\n[truncated]"`.
    ///
    /// ```
    /// use executionkit::{MockProvider, patterns::react::ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().max_observation_chars(500).validate(&p, &[]).is_ok());
    /// let err = ReactLoop::new().max_observation_chars(0).validate(&p, &[]).unwrap_err();
    /// assert!(err.is_invalid_argument());
    /// ```
    pub fn max_observation_chars(mut self, n: usize) -> Self {
        self.max_observation_chars = n;
        self
    }

    /// One timeout for every tool, overriding each tool's own (must be > 0).
    ///
    /// ```
    /// use std::time::Duration;
    /// use executionkit::{MockProvider, patterns::react::ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().tool_timeout(Duration::from_secs(5)).validate(&p, &[]).is_ok());
    /// let err = ReactLoop::new().tool_timeout(Duration::ZERO).validate(&p, &[]).unwrap_err();
    /// assert!(err.message().contains("tool_timeout"));
    /// ```
    pub fn tool_timeout(mut self, timeout: Duration) -> Self {
        self.tool_timeout = Some(timeout);
        self
    }

    /// The most tool calls executed per round (≥ 1; default 32); the others are answered with
    /// a rejection the model can act on.
    ///
    /// ```
    /// use executionkit::{MockProvider, patterns::react::ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().max_tool_calls_per_round(4).validate(&p, &[]).is_ok());
    /// assert!(ReactLoop::new().max_tool_calls_per_round(0).validate(&p, &[]).unwrap_err().is_invalid_argument());
    /// ```
    pub fn max_tool_calls_per_round(mut self, n: usize) -> Self {
        self.max_tool_calls_per_round = n;
        self
    }

    /// How many tool calls of one round run at once (≥ 1; default 10).
    ///
    /// ```
    /// use executionkit::{MockProvider, patterns::react::ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().tool_concurrency(1).validate(&p, &[]).is_ok());
    /// assert!(ReactLoop::new().tool_concurrency(0).validate(&p, &[]).unwrap_err().is_invalid_argument());
    /// ```
    pub fn tool_concurrency(mut self, n: usize) -> Self {
        self.tool_concurrency = n;
        self
    }

    /// The sampling temperature (default 0.3).
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["done"]);
    /// ReactLoop::new().temperature(0.0).run(&p, "q", &[], &RunContext::new()).await.unwrap();
    /// assert_eq!(p.last_call().unwrap().request.temperature, Some(0.0));
    /// # });
    /// ```
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }

    /// `max_tokens` of each call (≥ 1; default 4096).
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["done"]);
    /// ReactLoop::new().max_tokens(256).run(&p, "q", &[], &RunContext::new()).await.unwrap();
    /// assert_eq!(p.last_call().unwrap().request.max_tokens, Some(256));
    /// # });
    /// ```
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sends at most about `n` messages per call (≥ 1): the first message, then the newest
    /// whole blocks that fit (see [`trim_history`]). The transcript itself keeps everything.
    ///
    /// ```
    /// use executionkit::{Message, MockProvider, RunContext, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["ok"]);
    /// let history: Vec<Message> = (0..9)
    ///     .map(|i| if i % 2 == 0 { Message::user(format!("q{i}")) } else { Message::assistant("a") })
    ///     .collect();
    /// let r = ReactLoop::new().max_history_messages(3).run_messages(&p, history, &[], &RunContext::new()).await.unwrap();
    /// assert!(p.last_call().unwrap().request.messages.len() <= 3);
    /// // The transcript in the metadata keeps every message.
    /// assert_eq!(r.metadata["messages"].as_array().unwrap().len(), 10);
    /// # });
    /// ```
    pub fn max_history_messages(mut self, n: usize) -> Self {
        self.max_history_messages = Some(n);
        self
    }

    /// Summarises the messages trimming dropped; the summary is sent as a system message after
    /// the first message. Its reported usage is added to the loop's cost. (To count its calls
    /// against the run's budget, make them through the same [`RunContext`].)
    ///
    /// ```
    /// use executionkit::{Result, patterns::react::{ReactLoop, Summary}};
    /// let r = ReactLoop::new().max_history_messages(6).summarizer(|dropped| async move {
    ///     Ok::<_, executionkit::Error>(format!("{} earlier messages", dropped.len()))
    /// });
    /// # let _ = r;
    /// ```
    pub fn summarizer<F, Fut, S>(mut self, f: F) -> Self
    where
        F: Fn(Vec<Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S>> + Send + 'static,
        S: Into<Summary>,
    {
        self.summarizer = Some(Arc::new(move |m| f(m).map(|r| r.map(Into::into)).boxed()));
        self
    }

    /// Asks `gate` before every tool call (action `"tool_call"`, subject the tool's name,
    /// metadata `tool_call_id` and `arguments`). A denial becomes the observation
    /// `Tool '<name>' blocked by approval[: <reason>]`; the tool does not run.
    ///
    /// ```
    /// use executionkit::{Choice, LlmResponse, MockProvider, RunContext, ToolCall};
    /// use executionkit::{approval::ApprovalGate, patterns::react::ReactLoop, tools::Tool};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let ask = LlmResponse {
    ///     choices: vec![Choice {
    ///         content: String::new(),
    ///         tool_calls: vec![ToolCall::new("t1", "rm", serde_json::json!({}))],
    ///         finish_reason: Some("tool_calls".into()),
    ///     }],
    ///     ..LlmResponse::default()
    /// };
    /// let rm = Tool::new("rm", "Deletes", serde_json::json!({}), |_| async { Ok("deleted".to_owned()) });
    /// let p = MockProvider::new([ask, LlmResponse::text("I may not delete it")]);
    /// let r = ReactLoop::new()
    ///     .approval_gate(ApprovalGate::deny_all("read-only"))
    ///     .run(&p, "delete it", &[rm], &RunContext::new())
    ///     .await
    ///     .unwrap();
    /// let observation = r.metadata["messages"][2]["content"].as_str().unwrap();
    /// assert!(observation.contains("blocked by approval"));
    /// # });
    /// ```
    pub fn approval_gate(mut self, gate: ApprovalGate) -> Self {
        self.approval_gate = Some(gate);
        self
    }

    /// How the model may use the tools (sent only when there are tools).
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, ToolChoice, patterns::react::ReactLoop, tools::Tool};
    /// # futures::executor::block_on(async {
    /// let echo = Tool::new("echo", "Echoes", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let p = MockProvider::new(["done"]);
    /// ReactLoop::new().tool_choice(ToolChoice::Auto).run(&p, "q", &[echo], &RunContext::new()).await.unwrap();
    /// assert_eq!(p.last_call().unwrap().request.tool_choice, Some(ToolChoice::Auto));
    /// # });
    /// ```
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// The tool choice of the first round only (later rounds use
    /// [`tool_choice`](Self::tool_choice)): e.g. force one tool call, then let the model answer.
    ///
    /// ```
    /// use executionkit::{ToolChoice, patterns::react::ReactLoop};
    /// let r = ReactLoop::new()
    ///     .initial_tool_choice(ToolChoice::Function("search".into()))
    ///     .tool_choice(ToolChoice::Auto);
    /// # let _ = r;
    /// ```
    pub fn initial_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.initial_tool_choice = Some(choice);
        self
    }

    /// The sampling seed.
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["done"]);
    /// ReactLoop::new().seed(7).run(&p, "q", &[], &RunContext::new()).await.unwrap();
    /// assert_eq!(p.last_call().unwrap().request.seed, Some(7));
    /// # });
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// A system message put before the prompt (with [`run_messages`](Self::run_messages): only
    /// when the transcript does not start with one).
    ///
    /// ```
    /// use executionkit::{Message, MockProvider, RunContext, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["done"]);
    /// ReactLoop::new().system("Be brief.").run(&p, "q", &[], &RunContext::new()).await.unwrap();
    /// assert_eq!(p.last_call().unwrap().request.messages[0], Message::system("Be brief."));
    /// # });
    /// ```
    pub fn system(mut self, text: impl Into<String>) -> Self {
        self.system = Some(text.into());
        self
    }

    /// Another model than the provider's default.
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["done"]);
    /// ReactLoop::new().model("small-model").run(&p, "q", &[], &RunContext::new()).await.unwrap();
    /// assert_eq!(p.last_call().unwrap().request.model.as_deref(), Some("small-model"));
    /// # });
    /// ```
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Calls `f` after each tool round with the loop's state (a [`ReactCheckpoint`], JSON-
    /// serialisable), e.g. to save progress. A panic inside `f` is logged and ignored.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use executionkit::patterns::react::ReactLoop;
    /// let rounds = Arc::new(Mutex::new(Vec::new()));
    /// let r = rounds.clone();
    /// let l = ReactLoop::new().on_checkpoint(move |c| r.lock().unwrap().push(c.round));
    /// # let _ = l;
    /// ```
    pub fn on_checkpoint(mut self, f: impl Fn(&ReactCheckpoint) + Send + Sync + 'static) -> Self {
        self.on_checkpoint = Some(Arc::new(f));
        self
    }

    /// Whether tool-call events carry `"[redacted]"` for every argument value (default true).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use executionkit::{Choice, LlmResponse, MockProvider, RunContext, ToolCall};
    /// use executionkit::{events::Event, patterns::react::ReactLoop, tools::Tool};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let ask = LlmResponse {
    ///     choices: vec![Choice {
    ///         content: String::new(),
    ///         tool_calls: vec![ToolCall::new("t1", "echo", serde_json::json!({"text": "hi"}))],
    ///         finish_reason: Some("tool_calls".into()),
    ///     }],
    ///     ..LlmResponse::default()
    /// };
    /// let echo = Tool::new("echo", "Echoes", serde_json::json!({}), |_| async { Ok("hi".to_owned()) });
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let ctx = RunContext::new().on_event(move |e| {
    ///     if let Event::ToolCallStarted { arguments, .. } = e {
    ///         s.lock().unwrap().push(arguments["text"].clone());
    ///     }
    /// });
    /// let p = MockProvider::new([ask, LlmResponse::text("done")]);
    /// ReactLoop::new().redact_tool_args(false).run(&p, "q", &[echo], &ctx).await.unwrap();
    /// assert_eq!(seen.lock().unwrap()[0], "hi");
    /// # });
    /// ```
    pub fn redact_tool_args(mut self, redact: bool) -> Self {
        self.redact_tool_args = redact;
        self
    }

    /// The tools used when the loop runs as a [`Pipe`](crate::Pipe) step (through
    /// [`Pattern`]); [`run`](Self::run) and [`run_messages`](Self::run_messages) take theirs as
    /// an argument.
    ///
    /// ```
    /// use executionkit::{MockProvider, Pipe, RunContext, patterns::react::ReactLoop, tools::Tool};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let echo = Tool::new("echo", "d", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let step = ReactLoop::new().max_rounds(3).tools([echo]);
    /// let r = Pipe::new().step(step).run(&MockProvider::new(["answer"]), "q", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "answer");
    /// # });
    /// ```
    pub fn tools(mut self, tools: impl IntoIterator<Item = Tool>) -> Self {
        self.tools = tools.into_iter().collect();
        self
    }

    /// Checks the options and the tools (reference §12.5, in that order): the provider must
    /// call tools; every number in range; tool names unique; every tool schema valid.
    ///
    /// # Errors
    /// `invalid_argument` naming the first problem.
    ///
    /// ```
    /// use executionkit::{MockProvider, patterns::react::ReactLoop, tools::Tool};
    /// let t = || Tool::new("echo", "Echoes", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().validate(&p, &[t()]).is_ok());
    /// let err = ReactLoop::new().validate(&p, &[t(), t()]).unwrap_err();
    /// assert!(err.message().contains("duplicated: 'echo'"));
    /// ```
    pub fn validate(&self, provider: &dyn LlmProvider, tools: &[Tool]) -> Result<()> {
        if !provider.supports_tools() {
            return Err(Error::invalid_argument(
                "provider",
                "react_loop needs a tool-calling provider (ToolCallingProvider): this provider \
                 does not support tools",
            ));
        }
        self.check(tools)
    }

    /// The provider-independent checks of [`validate`](Self::validate).
    fn check(&self, tools: &[Tool]) -> Result<()> {
        let at_least_one = |name: &str, v: usize| {
            if v < 1 {
                Err(Error::invalid_argument(
                    name,
                    format!("{name} must be >= 1, got {v}"),
                ))
            } else {
                Ok(())
            }
        };
        at_least_one("max_rounds", self.max_rounds)?;
        at_least_one("max_tool_calls_per_round", self.max_tool_calls_per_round)?;
        at_least_one("max_observation_chars", self.max_observation_chars)?;
        if let Some(t) = self.tool_timeout {
            if t.is_zero() {
                return Err(Error::invalid_argument(
                    "tool_timeout",
                    "tool_timeout must be > 0, got 0s",
                ));
            }
        }
        super::check_max_tokens(self.max_tokens)?;
        if let Some(n) = self.max_history_messages {
            at_least_one("max_history_messages", n)?;
        }
        at_least_one("tool_concurrency", self.tool_concurrency)?;
        check_temperature(self.temperature)?;
        super::check_model(self.model.as_deref())?;
        let mut seen = HashSet::new();
        let mut dups: Vec<&str> = Vec::new();
        for t in tools {
            if !seen.insert(t.name()) && !dups.contains(&t.name()) {
                dups.push(t.name());
            }
        }
        if !dups.is_empty() {
            let list: Vec<String> = dups.iter().map(|d| format!("'{d}'")).collect();
            return Err(Error::invalid_argument(
                "tools",
                format!("tool names must be unique; duplicated: {}", list.join(", ")),
            ));
        }
        for t in tools {
            if t.name().is_empty() {
                return Err(Error::invalid_argument(
                    "tools",
                    "a tool name must not be empty",
                ));
            }
            t.check_schema()?;
        }
        Ok(())
    }

    /// Runs the loop on a new conversation `[system?, user(prompt)]`.
    ///
    /// # Errors
    /// `invalid_argument` before any call; budget, provider and summarizer errors as they
    /// happen; `max_iterations` when no answer came within `max_rounds` (its metadata holds
    /// the transcript). Every error carries the spend so far. Tool failures never fail the run.
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, patterns::react::ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["Paris"]);
    /// let r = ReactLoop::new().run(&p, "Capital of France?", &[], &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "Paris");
    /// assert_eq!(r.metadata["termination_reason"], "natural");
    /// assert_eq!(r.metadata["rounds"], 1);
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        tools: &[Tool],
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        let mut history = Vec::with_capacity(2);
        if let Some(s) = &self.system {
            history.push(Message::system(s.clone()));
        }
        history.push(Message::user(prompt));
        self.run_messages(provider, history, tools, ctx).await
    }

    /// Continues a transcript (`messages` must not be empty); the final transcript is in
    /// `metadata.messages`.
    ///
    /// ```
    /// use executionkit::{Message, MockProvider, RunContext, patterns::react::ReactLoop};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = MockProvider::new(["Hi again"]);
    /// let history = vec![Message::user("hi"), Message::assistant("hello"), Message::user("hi?")];
    /// let r = ReactLoop::new().run_messages(&p, history, &[], &RunContext::new()).await.unwrap();
    /// assert_eq!(r.metadata["messages"].as_array().unwrap().len(), 4);
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_messages(
        &self,
        provider: &dyn LlmProvider,
        messages: Vec<Message>,
        tools: &[Tool],
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        self.run_transcript(provider, messages, tools, ctx)
            .await
            .map(|(r, _)| r)
    }

    /// [`run_messages`](Self::run_messages), also returning the final transcript.
    pub(crate) async fn run_transcript(
        &self,
        provider: &dyn LlmProvider,
        messages: Vec<Message>,
        tools: &[Tool],
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Vec<Message>)> {
        match self.run_unsealed(provider, messages, tools, ctx).await {
            Ok((r, transcript)) => seal(Ok(r), provider).map(|r| (r, transcript)),
            Err(e) => Err(e.redacted_with(provider.secret())),
        }
    }

    async fn run_unsealed(
        &self,
        provider: &dyn LlmProvider,
        messages: Vec<Message>,
        tools: &[Tool],
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Vec<Message>)> {
        self.validate(provider, tools)?;
        if messages.is_empty() {
            return Err(Error::invalid_argument(
                "messages",
                "messages must be non-empty",
            ));
        }
        let mut history = messages;
        if let Some(s) = &self.system {
            if history.first().map(|m| m.role) != Some(Role::System) {
                history.insert(0, Message::system(s.clone()));
            }
        }
        let tracker = CostTracker::new();
        let by_name: HashMap<&str, &Tool> = tools.iter().map(|t| (t.name(), t)).collect();
        let specs: Vec<_> = tools.iter().map(Tool::spec).collect();
        let mut counters = Counters::default();
        let mut summaries: HashMap<usize, String> = HashMap::new();

        for round in 1..=self.max_rounds {
            let window = self
                .window(&history, &tracker, &mut counters, &mut summaries)
                .await?;
            let mut request = ChatRequest::new(window)
                .temperature(self.temperature)
                .max_tokens(self.max_tokens)
                .tools(specs.clone());
            let choice = match &self.initial_tool_choice {
                Some(c) if round == 1 => Some(c),
                _ => self.tool_choice.as_ref(),
            };
            if let (false, Some(c)) = (specs.is_empty(), choice) {
                request = request.tool_choice(c.clone());
            }
            if let Some(s) = self.seed {
                request = request.seed(s);
            }
            if let Some(m) = &self.model {
                request = request.model(m.clone());
            }
            let resp = ctx.complete(provider, request, &tracker).await?;
            if resp.was_truncated() {
                counters.truncated_responses += 1;
                tracing::warn!(
                    target: "executionkit",
                    round,
                    finish_reason = resp.finish_reason().unwrap_or(""),
                    "react_loop: the model's reply was cut at max_tokens"
                );
            }
            counters.rounds = round;
            let calls = resp.tool_calls().to_vec();
            if calls.is_empty() {
                let content = resp.content().to_owned();
                history.push(Message::assistant(content.clone()));
                let metadata = self.metadata(&counters, ReactTermination::Natural, &history);
                let mut result = PatternResult::new(content);
                result.metadata = metadata;
                return Ok((ctx.spend_result(result, &tracker), history));
            }
            history.push(Message::assistant_tool_calls(resp.content(), calls.clone()));
            let replies = self
                .run_round(&calls, &by_name, ctx)
                .await
                .map_err(|e| ctx.spend_error(e, &tracker))?;
            for (obs, counted) in replies {
                if counted {
                    counters.tool_calls_made += 1;
                    if obs.1.ends_with(TRUNCATION_MARKER) {
                        counters.truncated_observations += 1;
                    }
                } else {
                    counters.rejected_tool_calls += 1;
                }
                history.push(Message::tool_result(obs.0, obs.1));
            }
            if let Some(f) = &self.on_checkpoint {
                let checkpoint = ReactCheckpoint {
                    round: round - 1,
                    last_response: resp.content().to_owned(),
                    tool_calls_made: calls.iter().map(|c| c.name.clone()).collect(),
                    cost: tracker.usage(),
                    messages: history.clone(),
                };
                let called =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&checkpoint)));
                if called.is_err() {
                    tracing::warn!(target: "executionkit", round, "react_loop: the checkpoint callback panicked");
                }
            }
        }
        let metadata = self.metadata(&counters, ReactTermination::MaxIterations, &history);
        let mut err = ctx.spend_error(
            Error::new(
                ErrorKind::MaxIterations,
                format!(
                    "react_loop reached max_rounds ({}) without a final answer",
                    self.max_rounds
                ),
            ),
            &tracker,
        );
        for (k, v) in metadata {
            err = err.with_metadata(&k, v);
        }
        Err(err)
    }

    fn metadata(&self, c: &Counters, reason: ReactTermination, history: &[Message]) -> Metadata {
        let mut m = Metadata::new();
        m.insert("rounds".into(), c.rounds.into());
        m.insert("tool_calls_made".into(), c.tool_calls_made.into());
        m.insert("rejected_tool_calls".into(), c.rejected_tool_calls.into());
        m.insert("truncated_responses".into(), c.truncated_responses.into());
        m.insert(
            "truncated_observations".into(),
            c.truncated_observations.into(),
        );
        m.insert("messages_trimmed".into(), c.messages_trimmed.into());
        m.insert("summarized".into(), c.summarized.into());
        m.insert("termination_reason".into(), reason.as_str().into());
        m.insert(
            "messages".into(),
            serde_json::to_value(history).unwrap_or(Value::Array(Vec::new())),
        );
        m
    }

    /// The messages sent this round: trimmed, with a summary of what was dropped.
    async fn window(
        &self,
        history: &[Message],
        tracker: &CostTracker,
        counters: &mut Counters,
        summaries: &mut HashMap<usize, String>,
    ) -> Result<Vec<Message>> {
        let Some(max) = self.max_history_messages else {
            return Ok(history.to_vec());
        };
        let mut window = trim_history(history, max)?;
        if window.len() >= history.len() {
            return Ok(window);
        }
        counters.messages_trimmed += 1;
        let Some(summarizer) = &self.summarizer else {
            return Ok(window);
        };
        let boundary = history.len() - (window.len() - 1);
        let text = if let Some(t) = summaries.get(&boundary) {
            t.clone()
        } else {
            let dropped = history[1..boundary].to_vec();
            let summary = summarizer(dropped).await.map_err(|e| {
                tracker
                    .over_grant()
                    .apply_to_error(e.add_cost(tracker.usage(), None))
            })?;
            if let Some(u) = summary.usage {
                tracker.add_usage(u, None);
            }
            summaries.insert(boundary, summary.text.clone());
            summary.text
        };
        counters.summarized += 1;
        window.insert(1, Message::system(format!("{SUMMARY_PREFIX}{text}")));
        Ok(window)
    }

    /// Executes one round; returns `((tool_call_id, text), counted)` in request order
    /// (`counted` is false for calls over the cap). Fails only when cancelled.
    async fn run_round(
        &self,
        calls: &[ToolCall],
        tools: &HashMap<&str, &Tool>,
        ctx: &RunContext,
    ) -> Result<Vec<((String, String), bool)>> {
        let cap = self.max_tool_calls_per_round.min(calls.len());
        let (executed, rejected) = calls.split_at(cap);
        let mut pending = Vec::with_capacity(executed.len());
        for c in executed {
            let tool = tools.get(c.name.as_str()).copied();
            pending.push(self.execute_call(c, tool, ctx));
        }
        let outcomes: Vec<Result<Observation>> = futures::stream::iter(pending)
            .buffered(self.tool_concurrency)
            .collect()
            .await;
        let mut out = Vec::with_capacity(calls.len());
        for (call, obs) in executed.iter().zip(outcomes) {
            out.push(((call.id.clone(), obs?.text), true));
        }
        for call in rejected {
            out.push((
                (
                    call.id.clone(),
                    format!(
                        "Tool call rejected: this round requested {} tool calls, over the limit \
                         of {} per round. Call at most {} tools per round and retry the rest.",
                        calls.len(),
                        self.max_tool_calls_per_round,
                        self.max_tool_calls_per_round
                    ),
                ),
                false,
            ));
        }
        Ok(out)
    }

    /// One call: event, approval, execution, event. Fails only when cancelled.
    async fn execute_call(
        &self,
        call: &ToolCall,
        tool: Option<&Tool>,
        ctx: &RunContext,
    ) -> Result<Observation> {
        let name = quoted(&call.name);
        if let Some(sink) = ctx.events() {
            let arguments: Map<String, Value> = if self.redact_tool_args {
                call.arguments
                    .keys()
                    .map(|k| (k.clone(), Value::from("[redacted]")))
                    .collect()
            } else {
                call.arguments.clone()
            };
            sink.emit(&Event::ToolCallStarted {
                tool_name: call.name.clone(),
                tool_call_id: call.id.clone(),
                arguments,
            });
        }
        let mut blocked = false;
        // Arguments the server sent unusable (not JSON, not an object): the tool never runs and
        // the gate is not asked; the model is told why, never shown the argument text.
        let mut obs = match (&call.arguments_error, tool) {
            (Some(reason), Some(_)) => Some(Observation::new(
                ObservationKind::ArgumentError,
                format!(
                    "Error: invalid arguments for tool '{name}': {}",
                    crate::redact::redact(&crate::provider::parse::truncate_chars(reason, 200))
                ),
            )),
            _ => None,
        };
        if let (None, Some(gate)) = (&obs, &self.approval_gate) {
            let req = ApprovalRequest::new("tool_call", call.name.clone())
                .with_metadata("tool_call_id", call.id.clone())
                .with_metadata("arguments", Value::Object(call.arguments.clone()));
            // A panicking gate is one more failure of this call, not of the loop.
            let asked = std::panic::AssertUnwindSafe(gate.request(req))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::ApprovalDenied,
                        "the approval callback panicked",
                    ))
                });
            match asked {
                Ok(d) if d.approved => {}
                Ok(d) => {
                    blocked = true;
                    let mut text = format!("Tool '{name}' blocked by approval");
                    if !d.reason.is_empty() {
                        text.push_str(": ");
                        text.push_str(&d.reason);
                    }
                    obs = Some(Observation::new(ObservationKind::Blocked, text));
                }
                Err(e) if e.is_cancelled() => return Err(e),
                Err(e) => {
                    tracing::debug!(target: "executionkit", tool = %name, kind = %e.kind(), "approval gate failed");
                    obs = Some(Observation::new(
                        ObservationKind::Failed,
                        format!("Tool '{name}' failed: approval {}", e.kind()),
                    ));
                }
            }
        }
        let obs = match (obs, tool) {
            (Some(o), _) => o,
            (None, None) => Observation::new(
                ObservationKind::UnknownTool,
                format!("Error: Unknown tool '{name}'"),
            ),
            (None, Some(t)) => {
                t.observe(
                    &call.arguments,
                    self.tool_timeout,
                    self.max_observation_chars,
                )
                .await
            }
        };
        if let Some(sink) = ctx.events() {
            sink.emit(&Event::ToolCallFinished {
                tool_name: call.name.clone(),
                tool_call_id: call.id.clone(),
                blocked,
            });
        }
        Ok(obs)
    }
}

#[async_trait::async_trait]
impl super::Pattern for ReactLoop {
    fn name(&self) -> &'static str {
        "react"
    }

    fn validate(&self) -> Result<()> {
        self.check(&self.tools)
    }

    /// Runs the loop on the step's prompt (the previous value, else the task) with the tools
    /// given to [`tools`](ReactLoop::tools).
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: super::StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        self.run(provider, input.prompt(), &self.tools, ctx).await
    }
}

/// A model-supplied name, cut to 100 characters before it is quoted back.
fn quoted(name: &str) -> String {
    match name.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_owned(),
    }
}

/// Trims a transcript to about `max` messages, keeping `history[0]` and the newest whole
/// blocks: an assistant turn with tool calls and the tool messages after it form one block,
/// which is never split; every other message is a block of its own.
///
/// Walking from the newest block back, blocks are kept while they fit in `max − 1`; the newest
/// block is **always** kept, even when it alone is larger (so the model never loses the results
/// it just asked for). A history of at most `max` messages is returned unchanged.
///
/// ```
/// use executionkit::{Message, ToolCall, patterns::react::trim_history};
/// let call = |id: &str| ToolCall::new(id, "f", serde_json::json!({}));
/// let h = vec![
///     Message::user("q"),
///     Message::assistant_tool_calls("", vec![call("a"), call("b"), call("c")]),
///     Message::tool_result("a", "1"),
///     Message::tool_result("b", "2"),
///     Message::tool_result("c", "3"),
/// ];
/// assert_eq!(trim_history(&h, 3).unwrap().len(), 5); // the newest block is never dropped
/// let plain: Vec<Message> = (0..6).map(|i| Message::user(i.to_string())).collect();
/// let t = trim_history(&plain, 3).unwrap();
/// assert_eq!(t.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["0", "4", "5"]);
/// ```
///
/// # Errors
/// `invalid_argument` when `max` is 0.
pub fn trim_history(history: &[Message], max: usize) -> Result<Vec<Message>> {
    if max < 1 {
        return Err(Error::invalid_argument(
            "max_messages",
            "max_messages must be >= 1, got 0",
        ));
    }
    if history.len() <= max {
        return Ok(history.to_vec());
    }
    // Block boundaries over history[1..], as (start, end) index pairs.
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut i = 1;
    while i < history.len() {
        let start = i;
        i += 1;
        if history[start].role == Role::Assistant && !history[start].tool_calls.is_empty() {
            while i < history.len() && history[i].role == Role::Tool {
                i += 1;
            }
        }
        blocks.push((start, i));
    }
    let budget = max - 1;
    let mut kept = 0;
    let mut first_kept = history.len();
    for (n, &(start, end)) in blocks.iter().rev().enumerate() {
        let size = end - start;
        if n > 0 && kept + size > budget {
            break;
        }
        kept += size;
        first_kept = start;
    }
    let mut out = Vec::with_capacity(1 + kept);
    out.push(history[0].clone());
    out.extend_from_slice(&history[first_kept..]);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn summaries_are_memoised_per_boundary() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let r =
            ReactLoop::new()
                .max_history_messages(3)
                .summarizer(move |dropped: Vec<Message>| {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        Ok::<_, Error>((
                            format!("{} msgs", dropped.len()),
                            TokenUsage::new(70, 30, 1),
                        ))
                    }
                });
        let history: Vec<Message> = (0..6).map(|i| Message::user(i.to_string())).collect();
        let tracker = CostTracker::new();
        let mut counters = Counters::default();
        let mut memo = HashMap::new();
        let a = r
            .window(&history, &tracker, &mut counters, &mut memo)
            .await
            .unwrap_or_default();
        let b = r
            .window(&history, &tracker, &mut counters, &mut memo)
            .await
            .unwrap_or_default();
        assert_eq!(a, b);
        assert_eq!(a[1].content, "Summary of earlier conversation: 3 msgs");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(tracker.usage(), TokenUsage::new(70, 30, 1));
        assert_eq!((counters.summarized, counters.messages_trimmed), (2, 2));
    }
}
