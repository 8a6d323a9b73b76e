//! The [`ReactLoop`] builder: its options, its tools, and the checks run before any call.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::{ReactCheckpoint, ReactLoop, Summary};
use crate::approval::ApprovalGate;
use crate::error::{Error, Result};
use crate::provider::{LlmProvider, Message, ToolChoice};
use crate::tools::Tool;

impl ReactLoop {
    /// The defaults (see the type's docs).
    ///
    /// ```
    /// let r = executionkit::ReactLoop::new();
    /// # let _ = r;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The loop's tools, replacing any set before. [`run`](Self::run),
    /// [`run_messages`](Self::run_messages) and a [`Pipe`](crate::Pipe) step (through
    /// [`Pattern`](crate::Pattern)) all offer these same tools.
    ///
    /// ```
    /// use executionkit::{MockProvider, Pipe, RunContext, ReactLoop, Tool};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let echo = Tool::new("echo", "d", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let step = ReactLoop::new().max_rounds(3).tools([echo]);
    /// let p = MockProvider::new(["answer"]);
    /// let r = Pipe::new().step(step).run(&p, "q", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "answer");
    /// assert_eq!(p.last_call().unwrap().request.tools[0].name, "echo");
    /// # });
    /// ```
    pub fn tools(mut self, tools: impl IntoIterator<Item = Tool>) -> Self {
        self.tools = tools.into_iter().collect();
        self
    }

    /// Adds one tool to the loop's tools.
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext, ReactLoop, Tool};
    /// # futures::executor::block_on(async {
    /// let t = |name: &str| Tool::new(name, "d", serde_json::json!({}), |_| async { Ok(String::new()) });
    /// let l = ReactLoop::new().tool(t("search")).tool(t("fetch"));
    /// let p = MockProvider::new(["done"]);
    /// l.run(&p, "q", &RunContext::new()).await.unwrap();
    /// let names: Vec<String> = p.last_call().unwrap().request.tools.iter().map(|s| s.name.clone()).collect();
    /// assert_eq!(names, ["search", "fetch"]);
    /// # });
    /// ```
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// The most LLM rounds (≥ 1; default 8). With no answer after them the run fails with
    /// `max_iterations`.
    ///
    /// ```
    /// use executionkit::{Choice, LlmResponse, MockProvider, RunContext, ToolCall};
    /// use executionkit::{ReactLoop, Tool};
    /// # futures::executor::block_on(async {
    /// // A model that asks for a tool every round never answers.
    /// let ask = LlmResponse {
    ///     choices: vec![Choice {
    ///         content: String::new(),
    ///         tool_calls: vec![ToolCall::new("t1", "echo", serde_json::json!({}))],
    ///         finish_reason: Some("tool_calls".into()),
    ///         logprobs: None,
    ///     }],
    ///     ..LlmResponse::default()
    /// };
    /// let echo = Tool::new("echo", "Echoes", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let p = MockProvider::new([ask]);
    /// let err = ReactLoop::new().max_rounds(2).tool(echo).run(&p, "q", &RunContext::new()).await.unwrap_err();
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
    /// use executionkit::{MockProvider, ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().max_observation_chars(500).validate(&p).is_ok());
    /// let err = ReactLoop::new().max_observation_chars(0).validate(&p).unwrap_err();
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
    /// use executionkit::{MockProvider, ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().tool_timeout(Duration::from_secs(5)).validate(&p).is_ok());
    /// let err = ReactLoop::new().tool_timeout(Duration::ZERO).validate(&p).unwrap_err();
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
    /// use executionkit::{MockProvider, ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().max_tool_calls_per_round(4).validate(&p).is_ok());
    /// assert!(ReactLoop::new().max_tool_calls_per_round(0).validate(&p).unwrap_err().is_invalid_argument());
    /// ```
    pub fn max_tool_calls_per_round(mut self, n: usize) -> Self {
        self.max_tool_calls_per_round = n;
        self
    }

    /// How many tool calls of one round run at once (≥ 1; default 10).
    ///
    /// ```
    /// use executionkit::{MockProvider, ReactLoop};
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().tool_concurrency(1).validate(&p).is_ok());
    /// assert!(ReactLoop::new().tool_concurrency(0).validate(&p).unwrap_err().is_invalid_argument());
    /// ```
    pub fn tool_concurrency(mut self, n: usize) -> Self {
        self.tool_concurrency = n;
        self
    }

    /// Sends at most about `n` messages per call (≥ 1): the first message, then the newest
    /// whole blocks that fit (see `trim_history`). The transcript itself
    /// keeps everything.
    ///
    /// ```
    /// use executionkit::{Message, MockProvider, RunContext, ReactLoop};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["ok"]);
    /// let history: Vec<Message> = (0..9)
    ///     .map(|i| if i % 2 == 0 { Message::user(format!("q{i}")) } else { Message::assistant("a") })
    ///     .collect();
    /// let r = ReactLoop::new().max_history_messages(3).run_messages(&p, history, &RunContext::new()).await.unwrap();
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
    /// against the run's budget, make them through the same [`RunContext`](crate::RunContext).)
    ///
    /// ```
    /// use executionkit::{ReactLoop, Result, Summary};
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
    /// use executionkit::{ApprovalGate, ReactLoop, Tool};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let ask = LlmResponse {
    ///     choices: vec![Choice {
    ///         content: String::new(),
    ///         tool_calls: vec![ToolCall::new("t1", "rm", serde_json::json!({}))],
    ///         finish_reason: Some("tool_calls".into()),
    ///         logprobs: None,
    ///     }],
    ///     ..LlmResponse::default()
    /// };
    /// let rm = Tool::new("rm", "Deletes", serde_json::json!({}), |_| async { Ok("deleted".to_owned()) });
    /// let p = MockProvider::new([ask, LlmResponse::text("I may not delete it")]);
    /// let r = ReactLoop::new()
    ///     .tool(rm)
    ///     .approval_gate(ApprovalGate::deny_all("read-only"))
    ///     .run(&p, "delete it", &RunContext::new())
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
    /// use executionkit::{MockProvider, RunContext, ToolChoice, ReactLoop, Tool};
    /// # futures::executor::block_on(async {
    /// let echo = Tool::new("echo", "Echoes", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let p = MockProvider::new(["done"]);
    /// ReactLoop::new().tool(echo).tool_choice(ToolChoice::Auto).run(&p, "q", &RunContext::new()).await.unwrap();
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
    /// use executionkit::{ToolChoice, ReactLoop};
    /// let r = ReactLoop::new()
    ///     .initial_tool_choice(ToolChoice::Function("search".into()))
    ///     .tool_choice(ToolChoice::Auto);
    /// # let _ = r;
    /// ```
    pub fn initial_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.initial_tool_choice = Some(choice);
        self
    }

    /// Calls `f` after each tool round with the loop's state (a [`ReactCheckpoint`], JSON-
    /// serialisable), e.g. to save progress. A panic inside `f` is logged and ignored.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use executionkit::ReactLoop;
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
    /// use executionkit::{events::Event, ReactLoop, Tool};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let ask = LlmResponse {
    ///     choices: vec![Choice {
    ///         content: String::new(),
    ///         tool_calls: vec![ToolCall::new("t1", "echo", serde_json::json!({"text": "hi"}))],
    ///         finish_reason: Some("tool_calls".into()),
    ///         logprobs: None,
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
    /// ReactLoop::new().tool(echo).redact_tool_args(false).run(&p, "q", &ctx).await.unwrap();
    /// assert_eq!(seen.lock().unwrap()[0], "hi");
    /// # });
    /// ```
    pub fn redact_tool_args(mut self, redact: bool) -> Self {
        self.redact_tool_args = redact;
        self
    }

    /// Checks the options and the loop's tools (reference §12.5, in that order): the provider
    /// must call tools; every number in range; tool names unique; every tool schema valid.
    ///
    /// # Errors
    /// `invalid_argument` naming the first problem.
    ///
    /// ```
    /// use executionkit::{MockProvider, ReactLoop, Tool};
    /// let t = || Tool::new("echo", "Echoes", serde_json::json!({}), |_| async { Ok("e".to_owned()) });
    /// let p = MockProvider::default();
    /// assert!(ReactLoop::new().tool(t()).validate(&p).is_ok());
    /// let err = ReactLoop::new().tools([t(), t()]).validate(&p).unwrap_err();
    /// assert!(err.message().contains("duplicated: 'echo'"));
    /// ```
    pub fn validate(&self, provider: &dyn LlmProvider) -> Result<()> {
        if !provider.supports_tools() {
            return Err(Error::invalid_argument(
                "provider",
                "react_loop needs a provider that can call tools: this provider does not \
                 support tool calls",
            ));
        }
        self.check()
    }

    /// The provider-independent checks of [`validate`](Self::validate).
    pub(super) fn check(&self) -> Result<()> {
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
        if let Some(n) = self.max_history_messages {
            at_least_one("max_history_messages", n)?;
        }
        at_least_one("tool_concurrency", self.tool_concurrency)?;
        self.call.validate()?;
        let mut seen = HashSet::new();
        let mut dups: Vec<&str> = Vec::new();
        for t in &self.tools {
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
        for t in &self.tools {
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
}
