//! [`Tool`]: a function the model may call in a [`ReactLoop`](crate::patterns::react::ReactLoop),
//! with its JSON-Schema parameters, an async body and a timeout.
//!
//! Tools are values. Describe one by a Rust argument type (its schema is derived with
//! [`schemars`]) or by a JSON schema. Before a body runs, the model's arguments are checked
//! against the schema by a full JSON Schema implementation ([`jsonschema`]); the body then runs
//! on its own task under a timeout, so an error, a panic or a hang becomes a short
//! [`Observation`] for the model and never fails the loop. A body fails with a typed
//! [`ToolError`] (invalid arguments, failed, timed out, rejected); the loop turns its kind into
//! the text the model reads.
//!
//! ```
//! use executionkit::Tool;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Add { a: i64, b: i64 }
//! let add = Tool::typed("add", "Adds two integers", |x: Add| async move { Ok((x.a + x.b).to_string()) });
//! let args = serde_json::json!({"a": 2, "b": 3});
//! let obs = add.observe(args.as_object().unwrap(), None, 100).await;
//! assert_eq!(obs.text, "5");
//! let bad = serde_json::json!({"a": "two"});
//! let obs = add.observe(bad.as_object().unwrap(), None, 100).await;
//! assert!(obs.text.contains("argument error"));
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::provider::ToolSpec;
use crate::text::prefix;

/// The default time a tool body may run.
///
/// ```
/// use executionkit::{Tool, internals::tools::DEFAULT_TOOL_TIMEOUT};
/// let t = Tool::new("f", "d", serde_json::json!({}), |_| async { Ok(String::new()) });
/// assert_eq!(t.timeout(), DEFAULT_TOOL_TIMEOUT);
/// assert_eq!(DEFAULT_TOOL_TIMEOUT.as_secs(), 30);
/// ```
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The marker that ends a truncated observation.
///
/// ```
/// use executionkit::internals::tools::{TRUNCATION_MARKER, truncate};
/// assert!(truncate(&"x".repeat(100), 20).ends_with(TRUNCATION_MARKER));
/// ```
pub const TRUNCATION_MARKER: &str = "\n[truncated]";

/// The longest tool name (or argument-error detail) quoted back to the model.
const MAX_QUOTED_CHARS: usize = 100;
const MAX_DETAIL_CHARS: usize = 500;

type ExecuteFn = dyn Fn(Map<String, Value>) -> BoxFuture<'static, std::result::Result<String, ToolError>>
    + Send
    + Sync;

/// What went wrong in a tool body: the kind the model is told about (see [`ToolError`]).
///
/// ```
/// use executionkit::{ToolError, ToolErrorKind};
/// assert_eq!(ToolError::timed_out("upstream").kind(), ToolErrorKind::TimedOut);
/// assert_eq!(ToolErrorKind::Rejected.as_str(), "rejected");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ToolErrorKind {
    /// The arguments do not fit what the tool needs. The model reads
    /// `Tool '<name>' argument error: the arguments do not fit the tool's parameter type`.
    InvalidArguments,
    /// The tool could not do its work. The model reads `Tool '<name>' failed: error`.
    Failed,
    /// Something the tool waited on took too long. The model reads
    /// `Tool '<name>' failed: timeout`.
    TimedOut,
    /// The tool refused to act (e.g. its own approval said no). The model reads
    /// `Tool '<name>' blocked by approval`.
    Rejected,
}

impl ToolErrorKind {
    /// `"invalid_arguments"`, `"failed"`, `"timed_out"` or `"rejected"`.
    ///
    /// ```
    /// use executionkit::ToolErrorKind;
    /// assert_eq!(ToolErrorKind::InvalidArguments.as_str(), "invalid_arguments");
    /// assert_eq!(ToolErrorKind::Failed.to_string(), "failed");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArguments => "invalid_arguments",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ToolErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a tool body returns: a [`ToolErrorKind`] and a detail for the tool's author.
///
/// The loop tells the model the kind, in a fixed text naming the tool (see the variants of
/// [`ToolErrorKind`]); the detail is **never** shown to the model nor logged, since it may hold
/// argument values or secrets. To tell the model something it can act on ("file not found"),
/// return it as `Ok`. A `String` or `&str` converts into a [`Failed`](ToolErrorKind::Failed)
/// error, so `?` works on `Result<_, String>`.
///
/// ```
/// use executionkit::{ObservationKind, Tool, ToolError, ToolErrorKind};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let lookup = Tool::new("lookup", "Looks up a key", serde_json::json!({}), |args| async move {
///     let key = args.get("key").and_then(|v| v.as_str()).ok_or_else(|| ToolError::invalid_arguments("no key"))?;
///     Err::<String, _>(ToolError::failed(format!("backend down while reading {key}")))
/// });
/// let obs = lookup.observe(serde_json::json!({"key": "k"}).as_object().unwrap(), None, 100).await;
/// assert_eq!((obs.kind, obs.text.as_str()), (ObservationKind::Failed, "Tool 'lookup' failed: error"));
/// let obs = lookup.observe(&Default::default(), None, 100).await;
/// assert_eq!(obs.kind, ObservationKind::ArgumentError);
///
/// let e: ToolError = "disk full".into();
/// assert_eq!((e.kind(), e.detail()), (ToolErrorKind::Failed, "disk full"));
/// assert_eq!(e.to_string(), "tool failed: disk full");
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    kind: ToolErrorKind,
    detail: String,
}

impl ToolError {
    /// An error of `kind` with `detail` (for the author; never shown to the model).
    ///
    /// ```
    /// use executionkit::{ToolError, ToolErrorKind};
    /// let e = ToolError::new(ToolErrorKind::Rejected, "the user said no");
    /// assert_eq!(e.kind(), ToolErrorKind::Rejected);
    /// ```
    #[must_use]
    pub fn new(kind: ToolErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The arguments do not fit what the tool needs.
    ///
    /// ```
    /// let e = executionkit::ToolError::invalid_arguments("n must be positive");
    /// assert_eq!(e.to_string(), "invalid tool arguments: n must be positive");
    /// ```
    #[must_use]
    pub fn invalid_arguments(detail: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidArguments, detail)
    }

    /// The tool could not do its work.
    ///
    /// ```
    /// let e = executionkit::ToolError::failed("connection refused");
    /// assert_eq!(e.detail(), "connection refused");
    /// ```
    #[must_use]
    pub fn failed(detail: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Failed, detail)
    }

    /// Something the tool waited on took too long.
    ///
    /// ```
    /// let e = executionkit::ToolError::timed_out("the search backend");
    /// assert_eq!(e.to_string(), "tool timed out: the search backend");
    /// ```
    #[must_use]
    pub fn timed_out(detail: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::TimedOut, detail)
    }

    /// The tool refused to act.
    ///
    /// ```
    /// let e = executionkit::ToolError::rejected("not confirmed");
    /// assert_eq!(e.to_string(), "tool call rejected by approval: not confirmed");
    /// ```
    #[must_use]
    pub fn rejected(detail: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Rejected, detail)
    }

    /// What kind of failure this is.
    ///
    /// ```
    /// use executionkit::{ToolError, ToolErrorKind};
    /// assert_eq!(ToolError::from("x").kind(), ToolErrorKind::Failed);
    /// ```
    #[must_use]
    pub fn kind(&self) -> ToolErrorKind {
        self.kind
    }

    /// The detail given by the tool (never shown to the model).
    ///
    /// ```
    /// assert_eq!(executionkit::ToolError::failed("why").detail(), "why");
    /// ```
    #[must_use]
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// What the model is told about this error from tool `name` (already cut for quoting).
    fn observation(&self, name: &str) -> Observation {
        match self.kind {
            ToolErrorKind::InvalidArguments => Observation::new(
                ObservationKind::ArgumentError,
                format!("Tool '{name}' argument error: {ARGS_DO_NOT_FIT}"),
            ),
            ToolErrorKind::Failed => Observation::new(
                ObservationKind::Failed,
                format!("Tool '{name}' failed: error"),
            ),
            ToolErrorKind::TimedOut => Observation::new(
                ObservationKind::TimedOut,
                format!("Tool '{name}' failed: timeout"),
            ),
            ToolErrorKind::Rejected => Observation::new(
                ObservationKind::Blocked,
                format!("Tool '{name}' blocked by approval"),
            ),
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ToolErrorKind::InvalidArguments => "invalid tool arguments",
            ToolErrorKind::Failed => "tool failed",
            ToolErrorKind::TimedOut => "tool timed out",
            ToolErrorKind::Rejected => "tool call rejected by approval",
        })?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ToolError {}

impl From<String> for ToolError {
    fn from(detail: String) -> Self {
        Self::failed(detail)
    }
}

impl From<&str> for ToolError {
    fn from(detail: &str) -> Self {
        Self::failed(detail)
    }
}

/// A tool the model may call: name, description, JSON-Schema parameters, an async body and a
/// timeout (default 30 s). Cheap to clone.
///
/// The body returns `Ok(text)` (shown to the model, truncated to the loop's
/// `max_observation_chars`) or `Err(`[`ToolError`]`)`. The model is told the error's kind
/// (`Tool '<name>' failed: error` for a plain failure), **never** its detail, which may hold
/// argument values or secrets and is not logged either. To tell the model something, return it
/// as `Ok`.
///
/// ```
/// use executionkit::Tool;
/// let echo = Tool::new(
///     "echo",
///     "Repeats text",
///     serde_json::json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
///     |args| async move { Ok(args["text"].as_str().unwrap_or_default().to_owned()) },
/// );
/// assert_eq!(echo.name(), "echo");
/// assert_eq!(echo.timeout(), std::time::Duration::from_secs(30));
/// assert_eq!(serde_json::to_value(echo.spec()).unwrap()["function"]["name"], "echo");
/// ```
#[derive(Clone)]
#[must_use]
pub struct Tool {
    name: String,
    description: String,
    parameters: Value,
    timeout: Duration,
    validator: std::result::Result<Arc<jsonschema::Validator>, String>,
    execute: Arc<ExecuteFn>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("parameters", &self.parameters)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool whose parameters are given as a JSON schema; the body receives the model's
    /// arguments as a JSON object (already validated against `parameters`).
    ///
    /// ```
    /// let t = executionkit::Tool::new("now", "The time", serde_json::json!({"type": "object"}),
    ///     |_args| async { Ok("12:00".to_owned()) });
    /// assert!(t.check_schema().is_ok());
    /// ```
    pub fn new<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        body: F,
    ) -> Self
    where
        F: Fn(Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<String, ToolError>> + Send + 'static,
    {
        let validator = jsonschema::validator_for(&parameters)
            .map(Arc::new)
            .map_err(|e| prefix(&e.to_string(), MAX_DETAIL_CHARS).to_owned());
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
            timeout: DEFAULT_TOOL_TIMEOUT,
            validator,
            execute: Arc::new(move |args| body(args).boxed()),
        }
    }

    /// A tool whose parameters are the fields of `A`: the schema is derived from the type, and
    /// the body receives the arguments deserialised into an `A`.
    ///
    /// ```
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Query {
    ///     /// What to look up.
    ///     query: String,
    /// }
    /// let t = executionkit::Tool::typed("search", "Searches", |q: Query| async move { Ok(q.query) });
    /// assert_eq!(t.parameters()["properties"]["query"]["type"], "string");
    /// assert_eq!(t.parameters()["required"][0], "query");
    /// ```
    pub fn typed<A, F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        body: F,
    ) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<String, ToolError>> + Send + 'static,
    {
        let mut schema = schemars::schema_for!(A).to_value();
        if let Value::Object(m) = &mut schema {
            m.remove("$schema");
            m.remove("title");
        }
        let body = Arc::new(body);
        Self::new(name, description, schema, move |args| {
            let body = Arc::clone(&body);
            async move {
                // The arguments passed the schema; a value that still does not fit the type is
                // reported without the value (serde's message would quote it).
                match serde_json::from_value::<A>(Value::Object(args)) {
                    Ok(a) => body(a).await,
                    Err(_) => Err(ToolError::invalid_arguments(ARGS_DO_NOT_FIT)),
                }
            }
        })
    }

    /// Sets how long the body may run (default 30 s). A loop's `tool_timeout` overrides it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let t = executionkit::Tool::new("f", "d", serde_json::json!({}), |_| async { Ok(String::new()) })
    ///     .with_timeout(Duration::from_millis(500));
    /// assert_eq!(t.timeout(), Duration::from_millis(500));
    /// ```
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The tool's name.
    ///
    /// ```
    /// let t = executionkit::Tool::new("search", "d", serde_json::json!({}), |_| async { Ok(String::new()) });
    /// assert_eq!(t.name(), "search");
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the tool does, for the model.
    ///
    /// ```
    /// let t = executionkit::Tool::new("f", "Looks things up", serde_json::json!({}), |_| async { Ok(String::new()) });
    /// assert_eq!(t.description(), "Looks things up");
    /// ```
    #[must_use]
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON schema of the arguments.
    ///
    /// ```
    /// use executionkit::Tool;
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Query { q: String }
    /// let t = Tool::typed("search", "d", |a: Query| async move { Ok(a.q) });
    /// assert_eq!(t.parameters()["type"], "object");
    /// assert_eq!(t.parameters()["required"][0], "q");
    /// ```
    #[must_use]
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    /// How long the body may run.
    ///
    /// ```
    /// use std::time::Duration;
    /// let t = executionkit::Tool::new("f", "d", serde_json::json!({}), |_| async { Ok(String::new()) })
    ///     .with_timeout(Duration::from_secs(2));
    /// assert_eq!(t.timeout(), Duration::from_secs(2));
    /// ```
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The wire description sent to the model.
    ///
    /// ```
    /// let t = executionkit::Tool::new("f", "d", serde_json::json!({"type": "object"}), |_| async { Ok(String::new()) });
    /// assert_eq!(t.spec().description, "d");
    /// ```
    #[must_use]
    pub fn spec(&self) -> ToolSpec {
        ToolSpec::new(
            self.name.clone(),
            self.description.clone(),
            self.parameters.clone(),
        )
    }

    /// Checks that the parameters are a schema the validator accepts (an `invalid_argument`
    /// error naming the tool otherwise). [`ReactLoop`](crate::patterns::react::ReactLoop) checks
    /// every tool this way before its first call.
    ///
    /// ```
    /// let bad = executionkit::Tool::new("f", "d", serde_json::json!({"type": 12}), |_| async { Ok(String::new()) });
    /// assert!(bad.check_schema().unwrap_err().is_invalid_argument());
    /// ```
    pub fn check_schema(&self) -> Result<()> {
        match &self.validator {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::invalid_argument(
                "tools",
                format!(
                    "the parameters of tool '{}' are not a valid JSON schema: {e}",
                    self.name
                ),
            )),
        }
    }

    /// Checks `args` against the parameters: first the common checks with the reference's
    /// messages (a missing required key, an unexpected key when `additionalProperties` is
    /// false, a top-level type mismatch), then the whole schema with the full validator. The
    /// message never quotes an argument value.
    ///
    /// ```
    /// let t = executionkit::Tool::new("f", "d",
    ///     serde_json::json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}}, "required": ["n"]}),
    ///     |_| async { Ok(String::new()) });
    /// let check = |v: serde_json::Value| t.validate_arguments(v.as_object().unwrap());
    /// assert_eq!(check(serde_json::json!({})).unwrap_err(), "Missing required argument: 'n'");
    /// assert!(check(serde_json::json!({"n": "five"})).unwrap_err().contains("expected type 'integer', got string"));
    /// assert!(check(serde_json::json!({"n": 9})).is_err());
    /// assert!(check(serde_json::json!({"n": 3})).is_ok());
    /// ```
    pub fn validate_arguments(&self, args: &Map<String, Value>) -> std::result::Result<(), String> {
        tier_a(&self.parameters, args)?;
        let validator = match &self.validator {
            Ok(v) => v,
            Err(e) => return Err(format!("the tool's schema is invalid: {e}")),
        };
        let instance = Value::Object(args.clone());
        if let Some(err) = validator.iter_errors(&instance).next() {
            let path = err.instance_path().to_string();
            let detail = err.masked_with("the argument").to_string();
            let detail = prefix(&detail, MAX_DETAIL_CHARS).to_owned();
            return Err(if path.is_empty() {
                detail
            } else {
                format!("{detail} (at {})", prefix(&path, MAX_QUOTED_CHARS))
            });
        }
        Ok(())
    }

    /// Runs the body directly: no validation, no timeout, no panic guard.
    ///
    /// ```
    /// let t = executionkit::Tool::new("f", "d", serde_json::json!({}), |_| async { Ok("x".to_owned()) });
    /// assert_eq!(futures::executor::block_on(t.call(Default::default())), Ok("x".to_owned()));
    /// ```
    pub fn call(
        &self,
        args: Map<String, Value>,
    ) -> impl Future<Output = std::result::Result<String, ToolError>> + Send + 'static {
        (self.execute)(args)
    }

    /// Runs one call the way a tool loop does and never fails: validates `args`, runs the body
    /// on its own task under `timeout` (or the tool's own), and turns the outcome into an
    /// [`Observation`]. A successful result is truncated to `max_chars` (see `truncate`);
    /// errors, panics and timeouts give short fixed texts that name the kind and never quote
    /// the arguments or the error's detail. Needs a Tokio runtime (for the task and the timer):
    /// without one the body does not run and the observation says so.
    ///
    /// ```
    /// use std::time::Duration;
    /// use executionkit::{ObservationKind, Tool};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let hang = Tool::new("hang", "never ends", serde_json::json!({}),
    ///     |_| async { futures::future::pending::<Result<String, executionkit::ToolError>>().await });
    /// let obs = hang.observe(&Default::default(), Some(Duration::from_millis(10)), 100).await;
    /// assert_eq!(obs.kind, ObservationKind::TimedOut);
    /// assert_eq!(obs.text, "Tool execution timed out after 0.01s");
    /// # });
    /// ```
    pub async fn observe(
        &self,
        args: &Map<String, Value>,
        timeout: Option<Duration>,
        max_chars: usize,
    ) -> Observation {
        if let Err(detail) = self.validate_arguments(args) {
            return Observation::new(
                ObservationKind::ArgumentError,
                format!(
                    "Tool '{}' argument error: {detail}",
                    prefix(&self.name, MAX_QUOTED_CHARS)
                ),
            );
        }
        let timeout = timeout.unwrap_or(self.timeout);
        let name = prefix(&self.name, MAX_QUOTED_CHARS);
        // Bodies run on their own Tokio task under a Tokio timer; without a runtime they
        // cannot be bounded, so they do not run at all.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Observation::new(
                ObservationKind::Failed,
                format!("Tool '{name}' failed: no Tokio runtime to run it on"),
            );
        };
        // The body is called inside the task, so a panic in its synchronous part is caught too.
        let execute = Arc::clone(&self.execute);
        let args = args.clone();
        let task = AbortOnDrop(runtime.spawn(async move { execute(args).await }));
        match tokio::time::timeout(timeout, task).await {
            Err(_elapsed) => Observation::new(
                ObservationKind::TimedOut,
                format!("Tool execution timed out after {}s", timeout.as_secs_f64()),
            ),
            Ok(Ok(Ok(text))) => {
                let text = truncate(&text, max_chars);
                Observation::new(ObservationKind::Ok, text)
            }
            Ok(Ok(Err(error))) => {
                // The kind only: the detail may hold argument values or secrets.
                tracing::debug!(target: "executionkit", tool = %name, kind = %error.kind(), "tool returned an error");
                error.observation(name)
            }
            Ok(Err(_)) => {
                tracing::debug!(target: "executionkit", tool = %name, "tool panicked");
                Observation::new(
                    ObservationKind::Panicked,
                    format!("Tool '{name}' failed: panic"),
                )
            }
        }
    }
}

const ARGS_DO_NOT_FIT: &str = "the arguments do not fit the tool's parameter type";

/// Aborts a spawned task when dropped, so a cancelled loop or a timeout stops the tool.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// How a tool call ended.
///
/// ```
/// use executionkit::{ObservationKind, Tool};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let t = Tool::new("f", "d", serde_json::json!({}), |_| async { Err::<String, _>("secret detail".into()) });
/// let obs = t.observe(&Default::default(), None, 100).await;
/// assert_eq!(obs.kind, ObservationKind::Failed);
/// assert!(!obs.text.contains("secret"));
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObservationKind {
    /// The body returned text.
    Ok,
    /// The arguments did not match the schema (the body did not run), or the body found they
    /// do not fit ([`ToolErrorKind::InvalidArguments`]).
    ArgumentError,
    /// The body returned an error (or the call could not be made).
    Failed,
    /// The body panicked.
    Panicked,
    /// The body ran past its timeout and was stopped, or reported a timeout itself.
    TimedOut,
    /// The model named a tool that does not exist.
    UnknownTool,
    /// An approval gate refused the call (the body did not run), or the body refused it.
    Blocked,
    /// The call was over the per-round limit (the body did not run).
    Rejected,
}

/// What the model is told about one tool call.
///
/// ```
/// use executionkit::{Observation, ObservationKind};
/// let o = Observation::new(ObservationKind::Ok, "42");
/// assert_eq!(o.text, "42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// How the call ended.
    pub kind: ObservationKind,
    /// The text sent back as the tool message.
    pub text: String,
}

impl Observation {
    /// An observation.
    ///
    /// ```
    /// use executionkit::{Observation, ObservationKind};
    /// let o = Observation::new(ObservationKind::Blocked, "Tool 'rm' blocked by approval");
    /// assert_eq!(o.kind, ObservationKind::Blocked);
    /// assert!(o.text.starts_with("Tool 'rm'"));
    /// ```
    #[must_use]
    pub fn new(kind: ObservationKind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
        }
    }
}

/// Cuts `text` to at most `max` characters: unchanged when it fits; the first `max` characters
/// when `max` ≤ the marker's length (12); otherwise the first `max − 12` characters followed by
/// `"\n[truncated]"`.
///
/// ```
/// use executionkit::internals::tools::truncate;
/// let abc = "abcdefghijklmnopqrstuvwxyz";
/// assert_eq!(truncate(abc, 12), "abcdefghijkl");
/// assert_eq!(truncate(abc, 13), "a\n[truncated]");
/// assert_eq!(truncate(abc, 26), abc);
/// ```
#[must_use]
pub fn truncate(text: &str, max: usize) -> String {
    let marker = TRUNCATION_MARKER.chars().count();
    if text.chars().nth(max).is_none() {
        return text.to_owned();
    }
    if max <= marker {
        return prefix(text, max).to_owned();
    }
    let mut out = prefix(text, max - marker).to_owned();
    out.push_str(TRUNCATION_MARKER);
    out
}

/// The checks every schema gets, with the reference's messages.
fn tier_a(schema: &Value, args: &Map<String, Value>) -> std::result::Result<(), String> {
    let Value::Object(schema) = schema else {
        return Ok(());
    };
    let empty = Map::new();
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if let Some(Value::Array(required)) = schema.get("required") {
        for key in required.iter().filter_map(Value::as_str) {
            if !args.contains_key(key) {
                return Err(format!(
                    "Missing required argument: '{}'",
                    prefix(key, MAX_QUOTED_CHARS)
                ));
            }
        }
    }
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        if let Some(key) = args.keys().find(|k| !props.contains_key(*k)) {
            return Err(format!(
                "Unexpected argument: '{}' (additionalProperties is false)",
                prefix(key, MAX_QUOTED_CHARS)
            ));
        }
    }
    for (key, value) in args {
        let Some(expected) = props
            .get(key)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let ok = match expected {
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => true,
        };
        if !ok {
            return Err(format!(
                "Argument '{}' expected type '{expected}', got {}",
                prefix(key, MAX_QUOTED_CHARS),
                json_kind(value)
            ));
        }
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn truncate_follows_the_reference() {
        let abc = "abcdefghijklmnopqrstuvwxyz";
        assert_eq!(truncate(abc, 15), "abc\n[truncated]");
        assert_eq!(truncate("abcdef", 1), "a");
        assert_eq!(truncate("", 1), "");
        assert_eq!(truncate("héllo wörld, héllo wörld", 14), "hé\n[truncated]");
    }

    #[test]
    fn without_a_runtime_tools_do_not_run() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = std::sync::Arc::clone(&ran);
        let t = Tool::new("t", "d", serde_json::json!({}), move |_| {
            r.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Ok("x".to_owned()) }
        });
        let obs = futures::executor::block_on(t.observe(&Map::new(), None, 100));
        assert_eq!(obs.kind, ObservationKind::Failed);
        assert!(obs.text.contains("no Tokio runtime"));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_tool_error_tells_the_model_its_kind_never_its_detail() {
        let cases = [
            (
                ToolError::invalid_arguments("secret"),
                ObservationKind::ArgumentError,
                "Tool 't' argument error: the arguments do not fit the tool's parameter type",
            ),
            (
                ToolError::failed("secret"),
                ObservationKind::Failed,
                "Tool 't' failed: error",
            ),
            (
                ToolError::timed_out("secret"),
                ObservationKind::TimedOut,
                "Tool 't' failed: timeout",
            ),
            (
                ToolError::rejected("secret"),
                ObservationKind::Blocked,
                "Tool 't' blocked by approval",
            ),
        ];
        for (error, kind, text) in cases {
            assert_eq!(error.observation("t"), Observation::new(kind, text));
            assert!(error.to_string().ends_with(": secret"), "{error}");
        }
        assert_eq!(ToolError::failed("").to_string(), "tool failed");
        assert_eq!(ToolError::from("x".to_owned()), ToolError::failed("x"));
    }

    #[test]
    fn tier_a_messages() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}, "x": {"type": "number"}},
            "additionalProperties": false
        });
        let a = |v: Value| tier_a(&schema, v.as_object().unwrap_or(&Map::new()));
        assert!(
            a(serde_json::json!({"n": 5.0}))
                .unwrap_err()
                .contains("got number")
        );
        assert!(
            a(serde_json::json!({"n": true}))
                .unwrap_err()
                .contains("got boolean")
        );
        assert!(a(serde_json::json!({"x": 5})).is_ok());
        assert_eq!(
            a(serde_json::json!({"z": 1})).unwrap_err(),
            "Unexpected argument: 'z' (additionalProperties is false)"
        );
    }
}
