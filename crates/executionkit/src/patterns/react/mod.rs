//! [`ReactLoop`]: the ReAct tool loop (reference §12.5–§12.8).
//!
//! Each round sends the conversation and the loop's tools to the model. A reply without tool
//! calls is the answer. A reply with tool calls is executed: the calls of one round run
//! concurrently (up to [`ReactLoop::tool_concurrency`]), each checked against its schema, asked
//! of an optional [`ApprovalGate`](crate::approval::ApprovalGate), run on its own task under a
//! timeout; every outcome, good or bad, goes back to the model as a `tool` message, and the next
//! round starts.
//!
//! The loop owns its tools ([`tools`](ReactLoop::tools), [`tool`](ReactLoop::tool)): the same
//! ones are offered whether it runs on its own ([`run`](ReactLoop::run)) or as a
//! [`Pipe`](crate::Pipe) step. The code is split by concern: the builder and its checks
//! (`builder.rs`), history trimming and summaries (`history.rs`), one round of tool calls
//! (`tools_round.rs`), and the loop itself (here).
//!
//! ```
//! use executionkit::ReactLoop;
//! use executionkit::Tool;
//! use executionkit::{Choice, LlmResponse, MockProvider, RunContext, ToolCall};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let call = LlmResponse {
//!     choices: vec![Choice {
//!         content: String::new(),
//!         tool_calls: vec![ToolCall::new("tc1", "add", serde_json::json!({"a": 2, "b": 3}))],
//!         finish_reason: Some("tool_calls".into()),
//!         logprobs: None,
//!     }],
//!     ..LlmResponse::default()
//! };
//! let provider = MockProvider::new([call, LlmResponse::text("2 + 3 = 5")]);
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Add { a: i64, b: i64 }
//! let add = Tool::typed("add", "Adds two integers", |x: Add| async move { Ok((x.a + x.b).to_string()) });
//!
//! let r = ReactLoop::new().tool(add).run(&provider, "What is 2 + 3?", &RunContext::new()).await.unwrap();
//! assert_eq!(r.value, "2 + 3 = 5");
//! assert_eq!(r.metadata["rounds"], 2);
//! assert_eq!(r.metadata["tool_calls_made"], 1);
//! assert_eq!(r.metadata["messages"][2]["content"], "5");
//! # });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::options::{CallOptions, WithCallOptions};
use crate::approval::ApprovalGate;
use crate::engine::{CostTracker, RunContext, seal};
use crate::error::{Error, ErrorKind, Result};
use crate::provider::{LlmProvider, Message, Role, ToolChoice};
use crate::result::PatternResult;
use crate::tools::{TRUNCATION_MARKER, Tool};
use crate::usage::TokenUsage;

mod builder;
mod history;
mod tools_round;

use history::SummarizerFn;
pub use history::Summary;
#[cfg_attr(not(feature = "testing"), allow(unused_imports))] // reached through `internals`
pub use history::{SUMMARY_PREFIX, trim_history};

/// The sampling temperature when none is set: steady tool use, little variety.
const DEFAULT_TEMPERATURE: f64 = 0.3;

/// Why a tool loop stopped (`metadata.termination_reason`).
///
/// ```
/// use executionkit::ReactTermination;
/// assert_eq!(ReactTermination::Natural.as_str(), "natural");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
    /// use executionkit::ReactTermination;
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

/// The state of a tool loop after one tool round, as given to [`ReactLoop::on_checkpoint`].
/// Serialises to `{"round", "last_response", "tool_calls_made", "cost", "messages"}`.
///
/// ```
/// use executionkit::{Message, TokenUsage, ReactCheckpoint};
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

/// The ReAct tool loop as a typed builder. Defaults: no tools, 8 rounds, observations of at
/// most 12 000 characters, at most 32 tool calls per round of which 10 run at once, temperature
/// 0.3, `max_tokens` 4096, no history limit, no approval gate.
///
/// The model, system message, temperature, `max_tokens` and seed are the shared
/// [`CallOptions`], set through [`WithCallOptions`] (`use executionkit::prelude::*`). The system
/// message goes before the prompt; with [`run_messages`](Self::run_messages), only when the
/// transcript does not already start with one.
///
/// Metadata of the result (and of a `max_iterations` error): `rounds`, `tool_calls_made`,
/// `rejected_tool_calls`, `truncated_responses`, `truncated_observations`, `messages_trimmed`,
/// `summarized`, `termination_reason` (`"natural"` / `"max_iterations"`) and `messages` (the
/// whole transcript as JSON, never including injected summaries).
///
/// ```
/// use std::time::Duration;
/// use executionkit::prelude::*;
/// use executionkit::ToolChoice;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["done"]);
/// let r = ReactLoop::new()
///     .max_rounds(4)
///     .tool_timeout(Duration::from_secs(5))
///     .tool_choice(ToolChoice::Auto)
///     .max_history_messages(20)
///     .model("small-model")
///     .system("Be brief.")
///     .temperature(0.0)
///     .max_tokens(256)
///     .seed(7);
/// r.run(&p, "q", &RunContext::new()).await.unwrap();
/// let sent = p.last_call().unwrap().request;
/// assert_eq!(sent.model.as_deref(), Some("small-model"));
/// assert_eq!(sent.messages[0], executionkit::Message::system("Be brief."));
/// assert_eq!((sent.temperature, sent.max_tokens, sent.seed), (Some(0.0), Some(256), Some(7)));
/// # });
/// ```
#[derive(Clone)]
#[must_use]
pub struct ReactLoop {
    max_rounds: usize,
    max_observation_chars: usize,
    tool_timeout: Option<Duration>,
    max_tool_calls_per_round: usize,
    tool_concurrency: usize,
    call: CallOptions,
    max_history_messages: Option<usize>,
    summarizer: Option<Arc<SummarizerFn>>,
    approval_gate: Option<ApprovalGate>,
    tool_choice: Option<ToolChoice>,
    initial_tool_choice: Option<ToolChoice>,
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
            .field("call", &self.call)
            .field("max_history_messages", &self.max_history_messages)
            .field("summarizer", &self.summarizer.is_some())
            .field("on_checkpoint", &self.on_checkpoint.is_some())
            .field("approval_gate", &self.approval_gate)
            .field("tool_choice", &self.tool_choice)
            .field("initial_tool_choice", &self.initial_tool_choice)
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
            call: CallOptions::new(),
            max_history_messages: None,
            summarizer: None,
            approval_gate: None,
            tool_choice: None,
            initial_tool_choice: None,
            redact_tool_args: true,
            tools: Vec::new(),
            on_checkpoint: None,
        }
    }
}

impl WithCallOptions for ReactLoop {
    fn call_options(&self) -> &CallOptions {
        &self.call
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        &mut self.call
    }
}

/// The statistics of a react loop (`PatternResult::stats`); `metadata` holds the same keys.
///
/// ```
/// use executionkit::{MockProvider, ReactLoop, RunContext};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let p = MockProvider::new(["Paris"]);
/// let r = ReactLoop::new().run(&p, "Capital of France?", &RunContext::new()).await.unwrap();
/// assert_eq!((r.stats.rounds, r.stats.tool_calls_made), (1, 0));
/// assert_eq!(r.stats.termination_reason, executionkit::ReactTermination::Natural);
/// assert_eq!(r.metadata["rounds"], 1);
/// assert_eq!(r.stats.messages.len(), 2); // the question and the answer
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ReactStats {
    /// Model calls made (rounds).
    pub rounds: usize,
    /// Tool calls run (failed ones included).
    pub tool_calls_made: usize,
    /// Tool calls refused (unknown tool, over the per-round cap, denied by the approval gate).
    pub rejected_tool_calls: usize,
    /// Replies cut at `max_tokens`.
    pub truncated_responses: usize,
    /// Tool observations cut at `max_observation_chars`.
    pub truncated_observations: usize,
    /// Messages dropped from the window by `max_history_messages`.
    pub messages_trimmed: usize,
    /// Summaries made of dropped messages.
    pub summarized: usize,
    /// Why the loop ended.
    pub termination_reason: ReactTermination,
    /// The final transcript.
    pub messages: Vec<Message>,
}

impl crate::result::RedactStats for ReactStats {
    /// The transcript holds model text, tool arguments and tool output.
    fn redact_secret(&mut self, secret: &str) {
        let scrub = |s: &mut String| {
            if let std::borrow::Cow::Owned(r) = crate::redact::redact_secret(s, secret) {
                *s = r;
            }
        };
        for m in &mut self.messages {
            scrub(&mut m.content);
            for c in &mut m.tool_calls {
                let mut args = Value::Object(std::mem::take(&mut c.arguments));
                crate::redact::redact_secret_json(&mut args, secret);
                if let Value::Object(a) = args {
                    c.arguments = a;
                }
            }
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
    /// Runs the loop on a new conversation `[system?, user(prompt)]` with the loop's tools.
    ///
    /// # Errors
    /// `invalid_argument` before any call; budget, provider and summarizer errors as they
    /// happen; `max_iterations` when no answer came within `max_rounds` (its metadata holds
    /// the transcript). Every error carries the spend so far. Tool failures never fail the run.
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["Paris"]);
    /// let r = ReactLoop::new().run(&p, "Capital of France?", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "Paris");
    /// assert_eq!(r.metadata["termination_reason"], "natural");
    /// assert_eq!(r.metadata["rounds"], 1);
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<String, ReactStats>> {
        self.run_messages(provider, self.call.messages(prompt), ctx)
            .await
    }

    /// Continues a transcript (`messages` must not be empty) with the loop's tools; the final
    /// transcript is in `metadata.messages`.
    ///
    /// ```
    /// use executionkit::{Message, MockProvider, RunContext, ReactLoop};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = MockProvider::new(["Hi again"]);
    /// let history = vec![Message::user("hi"), Message::assistant("hello"), Message::user("hi?")];
    /// let r = ReactLoop::new().run_messages(&p, history, &RunContext::new()).await.unwrap();
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
        ctx: &RunContext,
    ) -> Result<PatternResult<String, ReactStats>> {
        self.run_transcript(provider, messages, ctx)
            .await
            .map(|(r, _)| r)
    }

    /// [`run_messages`](Self::run_messages), also returning the final transcript.
    pub(crate) async fn run_transcript(
        &self,
        provider: &dyn LlmProvider,
        messages: Vec<Message>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String, ReactStats>, Vec<Message>)> {
        self.validate(provider)?;
        let span = tracing::info_span!(
            target: "executionkit",
            "pattern.react",
            max_rounds = crate::telemetry::int(self.max_rounds),
            tools = crate::telemetry::int(self.tools.len()),
        );
        let run = ctx.tracked(async |tracker| self.rounds(provider, messages, ctx, tracker).await);
        match tracing::Instrument::instrument(run, span).await {
            Ok(r) => {
                let mut transcript = Vec::new();
                let r = r.map(|(content, history)| {
                    transcript = history;
                    content
                });
                seal(Ok(r), provider).map(|r| (r, transcript))
            }
            Err(e) => Err(provider
                .secrets()
                .into_iter()
                .fold(e, |e, s| e.redacted_with(Some(s)))),
        }
    }

    /// The rounds: the value is the final answer and the transcript.
    async fn rounds(
        &self,
        provider: &dyn LlmProvider,
        messages: Vec<Message>,
        ctx: &RunContext,
        tracker: &CostTracker,
    ) -> Result<PatternResult<(String, Vec<Message>), ReactStats>> {
        if messages.is_empty() {
            return Err(Error::invalid_argument(
                "messages",
                "messages must be non-empty",
            ));
        }
        let mut history = messages;
        if let Some(s) = &self.call.system {
            if history.first().map(|m| m.role) != Some(Role::System) {
                history.insert(0, Message::system(s.clone()));
            }
        }
        let by_name: HashMap<&str, &Tool> = self.tools.iter().map(|t| (t.name(), t)).collect();
        let specs: Vec<_> = self.tools.iter().map(Tool::spec).collect();
        let mut counters = Counters::default();
        let mut summaries: HashMap<usize, String> = HashMap::new();

        for round in 1..=self.max_rounds {
            let window = self
                .window(&history, tracker, &mut counters, &mut summaries)
                .await?;
            let mut request = self
                .call
                .request(window, DEFAULT_TEMPERATURE)
                .tools(specs.clone());
            let choice = match &self.initial_tool_choice {
                Some(c) if round == 1 => Some(c),
                _ => self.tool_choice.as_ref(),
            };
            if let (false, Some(c)) = (specs.is_empty(), choice) {
                request = request.tool_choice(c.clone());
            }
            // A turn that calls no tool is the answer: every turn's text is delivered to an
            // `on_text` subscriber until its first tool-call delta, then superseded.
            let (resp, delivered) = ctx.complete_forwarding(provider, request, tracker).await?;
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
                let stats = Self::stats(&counters, ReactTermination::Natural, &history);
                return Ok(PatternResult::with_stats((content, history), stats));
            }
            ctx.supersede_text(delivered);
            history.push(Message::assistant_tool_calls(resp.content(), calls.clone()));
            let replies = self.run_round(&calls, &by_name, ctx).await?;
            for reply in replies {
                if reply.counted {
                    counters.tool_calls_made += 1;
                    if reply.text.ends_with(TRUNCATION_MARKER) {
                        counters.truncated_observations += 1;
                    }
                } else {
                    counters.rejected_tool_calls += 1;
                }
                history.push(Message::tool_result(reply.tool_call_id, reply.text));
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
        let stats = Self::stats(&counters, ReactTermination::MaxIterations, &history);
        let mut err = Error::new(
            ErrorKind::MaxIterations,
            format!(
                "react_loop reached max_rounds ({}) without a final answer",
                self.max_rounds
            ),
        );
        for (k, v) in crate::result::stats_metadata(&stats) {
            err = err.with_metadata(&k, v);
        }
        Err(err)
    }

    fn stats(c: &Counters, reason: ReactTermination, history: &[Message]) -> ReactStats {
        ReactStats {
            rounds: c.rounds,
            tool_calls_made: c.tool_calls_made,
            rejected_tool_calls: c.rejected_tool_calls,
            truncated_responses: c.truncated_responses,
            truncated_observations: c.truncated_observations,
            messages_trimmed: c.messages_trimmed,
            summarized: c.summarized,
            termination_reason: reason,
            messages: history.to_vec(),
        }
    }
}

#[async_trait::async_trait]
impl super::Pattern for ReactLoop {
    fn name(&self) -> &'static str {
        "react"
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }

    /// Runs the loop on the step's prompt (the previous value, else the task), as
    /// [`run`](ReactLoop::run) does: with the loop's own tools.
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: super::StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        self.run(provider, input.prompt(), ctx)
            .await
            .map(PatternResult::erase_stats)
    }
}
