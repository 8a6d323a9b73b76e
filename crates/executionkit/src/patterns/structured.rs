//! Structured output: a reply parsed into a Rust type (or a JSON value under a caller's
//! schema), validated with a real JSON Schema implementation, with bounded repair retries.
//!
//! [`Structured<T>`] derives the schema from `T` (`schemars`), sends it as `response_format` in
//! OpenAI's strict dialect, extracts the JSON from the reply ([`extract_json`](crate::extract_json)), validates it
//! (`jsonschema`), deserialises it and runs an optional validator closure. A reply that fails
//! any step is sent back with the error for a repair, at most `max_repairs` times; each repair
//! is a counted call under the run's budget. [`StructuredValue`] is the untyped variant.
//!
//! Statistics ([`StructuredStats`], also the metadata keys): `parse_attempts` (replies
//! examined), `repair_attempts` (repair calls), `validated`. A `parse` error carries the same
//! keys in its metadata, with `validated: false`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::options::{CallOptions, WithCallOptions};
use super::{Pattern, StepInput, TypedStep};
use crate::engine::json::extract_json;
use crate::engine::schema::OutputSchema;
use crate::engine::{CostTracker, RunContext, seal};
use crate::error::{Error, ErrorKind, Result};
use crate::provider::{ChatRequest, LlmProvider};
use crate::result::{PatternResult, RedactStats, stats_metadata};

/// The temperature when none is set: the most likely, best-formed reply.
const DEFAULT_TEMPERATURE: f64 = 0.0;

/// The previous reply is quoted in a repair prompt up to this many characters.
const MAX_ECHO_CHARS: usize = 16_000;

/// The generic message of a validator that rejects without saying why.
const VALIDATOR_REJECTED: &str = "validator rejected the structured output";

/// A caller's check of a parsed value: `Ok(())` accepts, `Err(reason)` asks for a repair.
type ValidatorFn<T> = Arc<dyn Fn(&T) -> std::result::Result<(), String> + Send + Sync>;

/// What a structured run observed: [`Structured::run`]'s and [`StructuredValue::run`]'s `stats`,
/// and their `metadata` keys of the same names (the metadata is these statistics serialised).
///
/// ```
/// use executionkit::{MockProvider, RunContext, StructuredValue};
/// use executionkit::StructuredStats;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["not json", r#"{"answer": 42}"#]);
/// let r = StructuredValue::new().run(&p, "q", &RunContext::new()).await.unwrap();
/// assert_eq!(r.stats, StructuredStats { parse_attempts: 2, repair_attempts: 1, validated: true });
/// assert_eq!(r.metadata["repair_attempts"], 1);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StructuredStats {
    /// Replies examined (the first and each repair's).
    pub parse_attempts: usize,
    /// Repair calls made.
    pub repair_attempts: usize,
    /// Whether a reply was accepted: always `true` on a result (a `parse` error carries
    /// `false` in its metadata).
    pub validated: bool,
}

impl RedactStats for StructuredStats {}

/// Options shared by the typed and untyped variants.
#[derive(Debug, Clone)]
struct Options {
    max_repairs: usize,
    call: CallOptions,
    use_response_format: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_repairs: 3,
            call: CallOptions::new(),
            use_response_format: true,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        self.call.validate()
    }

    fn request(&self, user: String, response_format: Option<&Value>) -> ChatRequest {
        let mut req = self
            .call
            .request(self.call.messages(user), DEFAULT_TEMPERATURE);
        if let Some(rf) = response_format {
            req = req.response_format(rf.clone());
        }
        req
    }
}

macro_rules! option_setters {
    () => {
        /// How many repair calls may follow the first call (default 3; 0 = no repair).
        ///
        /// ```
        /// let s = executionkit::StructuredValue::new().max_repairs(0);
        /// # let _ = s;
        /// ```
        pub fn max_repairs(mut self, n: usize) -> Self {
            self.opts.max_repairs = n;
            self
        }

        /// Whether the schema is sent as `response_format` (default `true`). Turn it off for
        /// servers that reject the field; the schema is in the prompt either way.
        ///
        /// ```
        /// let s = executionkit::StructuredValue::new().use_response_format(false);
        /// # let _ = s;
        /// ```
        pub fn use_response_format(mut self, on: bool) -> Self {
            self.opts.use_response_format = on;
            self
        }
    };
}

/// Typed structured output: the reply becomes a `T`.
///
/// ```
/// use executionkit::{MockProvider, RunContext};
/// use executionkit::structured;
///
/// #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
/// struct City { name: String, population: u64 }
///
/// # futures::executor::block_on(async {
/// let p = MockProvider::new([r#"Sure: {"name": "Tokyo", "population": 14000000}"#]);
/// let r = structured::<City>().run(&p, "The largest city?", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value.name, "Tokyo");
/// assert_eq!(r.metadata["parse_attempts"], 1);
/// let sent = p.last_call().unwrap().request;
/// assert_eq!(sent.response_format.unwrap()["json_schema"]["strict"], true);
/// # });
/// ```
#[must_use]
pub struct Structured<T> {
    opts: Options,
    validator: Option<ValidatorFn<T>>,
    _type: PhantomData<fn() -> T>,
}

/// Starts a [`Structured<T>`] builder with the defaults.
///
/// ```
/// let s = executionkit::structured::<Vec<String>>().max_repairs(1);
/// # let _ = s;
/// ```
pub fn structured<T: DeserializeOwned + JsonSchema>() -> Structured<T> {
    Structured::new()
}

impl<T> Clone for Structured<T> {
    fn clone(&self) -> Self {
        Self {
            opts: self.opts.clone(),
            validator: self.validator.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Structured<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Structured")
            .field("type", &std::any::type_name::<T>())
            .field("options", &self.opts)
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

impl<T: DeserializeOwned + JsonSchema> Default for Structured<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> WithCallOptions for Structured<T> {
    fn call_options(&self) -> &CallOptions {
        &self.opts.call
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        &mut self.opts.call
    }
}

impl WithCallOptions for StructuredValue {
    fn call_options(&self) -> &CallOptions {
        &self.opts.call
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        &mut self.opts.call
    }
}

impl<T: DeserializeOwned + JsonSchema> Structured<T> {
    /// The defaults: 3 repairs, temperature 0.0, 4096 tokens, `response_format` on.
    ///
    /// ```
    /// let s = executionkit::Structured::<serde_json::Value>::new();
    /// assert!(s.validate().is_ok());
    /// ```
    pub fn new() -> Self {
        Self {
            opts: Options::default(),
            validator: None,
            _type: PhantomData,
        }
    }

    option_setters!();

    /// An extra check after the schema and deserialisation: `Err(reason)` rejects the value
    /// and the reason is fed back in the repair prompt.
    ///
    /// ```
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Status { status: String }
    /// let s = executionkit::structured::<Status>()
    ///     .validator(|s: &Status| if s.status == "ready" { Ok(()) } else { Err("must be ready".into()) });
    /// # let _ = s;
    /// ```
    pub fn validator(
        mut self,
        f: impl Fn(&T) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(f));
        self
    }

    /// Checks the options (nothing is sent).
    ///
    /// # Errors
    /// `invalid_argument` for a bad temperature, `max_tokens` 0 or a blank model.
    ///
    /// ```
    /// use executionkit::WithCallOptions;
    /// let s = executionkit::Structured::<Vec<u8>>::new().max_tokens(0);
    /// assert!(s.validate().unwrap_err().is_invalid_argument());
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.opts.validate()
    }

    /// Asks for a `T` and returns it with the cost and `parse_attempts`, `repair_attempts`,
    /// `validated` metadata.
    ///
    /// # Errors
    /// `invalid_argument` for bad options; `parse` when no reply was acceptable after the
    /// repairs (the message is the last failure, e.g. "JSON parse failed: …"); any call error
    /// (budget, provider, …). Every error carries the spend.
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["no", "still no"]);
    /// let e = executionkit::structured::<Vec<i32>>()
    ///     .max_repairs(1)
    ///     .run(&p, "Three primes?", &RunContext::new())
    ///     .await
    ///     .unwrap_err();
    /// assert!(e.is_parse() && e.message().starts_with("JSON parse failed"));
    /// assert_eq!(e.cost().llm_calls, 2);
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<T, StructuredStats>> {
        Ok(self
            .run_full(provider, prompt, ctx)
            .await?
            .map(|(value, _)| value))
    }

    async fn run_full(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<(T, Value), StructuredStats>> {
        self.opts.validate()?;
        let schema = OutputSchema::of::<T>()?;
        run_core(&self.opts, Some(&schema), provider, prompt, ctx, |v| {
            let value: T = serde_json::from_value(v)
                .map_err(|e| format!("the JSON does not match the expected type: {e}"))?;
            if let Some(check) = &self.validator {
                check(&value).map_err(|r| validator_message(&r))?;
            }
            Ok(value)
        })
        .await
    }
}

#[async_trait]
impl<T: DeserializeOwned + JsonSchema + Send + 'static> Pattern for Structured<T> {
    fn name(&self) -> &'static str {
        "structured"
    }

    fn validate(&self) -> Result<()> {
        Structured::validate(self)
    }

    /// Runs on the step's prompt; the value passed on is the accepted JSON, as text.
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        let r = self.run_full(provider, input.prompt(), ctx).await?;
        Ok(r.map(|(_, v)| v.to_string()).erase_stats())
    }
}

/// In a pipe ([`Pipe::step_typed`](crate::Pipe::step_typed)), the value handed on is the `T`;
/// its text is the accepted JSON.
#[async_trait]
impl<T: DeserializeOwned + JsonSchema + Send + 'static> TypedStep for Structured<T> {
    type Output = T;

    async fn run_typed(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, T)> {
        let r = self.run_full(provider, input.prompt(), ctx).await?;
        Ok(split(r))
    }
}

/// A structured result as a step's: its text (the accepted JSON) and its typed value.
fn split<A>(r: PatternResult<(A, Value), StructuredStats>) -> (PatternResult<String>, A) {
    let PatternResult {
        value: (typed, json),
        score,
        cost,
        usd,
        metadata,
        stats: _,
    } = r;
    let text = PatternResult {
        value: json.to_string(),
        score,
        cost,
        usd,
        metadata,
        stats: (),
    };
    (text, typed)
}

/// Untyped structured output: a JSON object or array, checked against an optional caller's
/// schema and validator.
///
/// ```
/// use executionkit::{MockProvider, RunContext};
/// use executionkit::StructuredValue;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["not json", r#"{"answer": 42}"#]);
/// let r = StructuredValue::new().max_repairs(1).run(&p, "q", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value["answer"], 42);
/// assert_eq!(r.metadata["repair_attempts"], 1);
/// # });
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct StructuredValue {
    opts: Options,
    schema: Option<(String, Value)>,
    validator: Option<ValidatorFn<Value>>,
}

impl fmt::Debug for StructuredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StructuredValue")
            .field("options", &self.opts)
            .field("schema", &self.schema)
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

impl StructuredValue {
    /// No schema (any object or array), 3 repairs, temperature 0.0, 4096 tokens.
    ///
    /// ```
    /// assert!(executionkit::StructuredValue::new().validate().is_ok());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    option_setters!();

    /// Validates replies against `schema` (any JSON Schema) and sends it as `response_format`
    /// under `name`; `strict` is `true` only if the schema already fits the strict dialect
    /// after the rewrite of `strict_schema`.
    ///
    /// ```
    /// let s = executionkit::StructuredValue::new()
    ///     .schema("city", serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}}));
    /// assert!(s.validate().is_ok());
    /// ```
    pub fn schema(mut self, name: impl Into<String>, schema: Value) -> Self {
        self.schema = Some((name.into(), schema));
        self
    }

    /// An extra check of the parsed value; `Err(reason)` is fed back in the repair prompt.
    ///
    /// ```
    /// let s = executionkit::StructuredValue::new()
    ///     .validator(|v: &serde_json::Value| if v.is_array() { Ok(()) } else { Err("want an array".into()) });
    /// # let _ = s;
    /// ```
    pub fn validator(
        mut self,
        f: impl Fn(&Value) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(f));
        self
    }

    /// Checks the options and compiles the schema (nothing is sent).
    ///
    /// # Errors
    /// `invalid_argument` for a bad temperature, `max_tokens` 0, a blank model or a schema
    /// that is not valid JSON Schema.
    ///
    /// ```
    /// let s = executionkit::StructuredValue::new()
    ///     .schema("x", serde_json::json!({"type": 5}));
    /// assert!(s.validate().unwrap_err().is_invalid_argument());
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.compile().map(|_| ())
    }

    fn compile(&self) -> Result<Option<OutputSchema>> {
        self.opts.validate()?;
        self.schema
            .as_ref()
            .map(|(name, schema)| OutputSchema::from_value(name, schema.clone()))
            .transpose()
    }

    /// Asks for JSON and returns the accepted object or array.
    ///
    /// # Errors
    /// As [`Structured::run`].
    ///
    /// ```
    /// use executionkit::{MockProvider, RunContext};
    /// use executionkit::StructuredValue;
    /// # futures::executor::block_on(async {
    /// let schema = serde_json::json!({"type": "array", "items": {"type": "integer"}});
    /// let p = MockProvider::new([r#"["a"]"#, "[2, 3, 5]"]);
    /// let r = StructuredValue::new().schema("primes", schema).run(&p, "q", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, serde_json::json!([2, 3, 5]));
    /// assert_eq!(r.metadata["repair_attempts"], 1);
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<Value, StructuredStats>> {
        let schema = self.compile()?;
        let r = run_core(&self.opts, schema.as_ref(), provider, prompt, ctx, |v| {
            if let Some(check) = &self.validator {
                check(&v).map_err(|r| validator_message(&r))?;
            }
            Ok(())
        })
        .await?;
        Ok(r.map(|((), v)| v))
    }
}

#[async_trait]
impl Pattern for StructuredValue {
    fn name(&self) -> &'static str {
        "structured"
    }

    fn validate(&self) -> Result<()> {
        StructuredValue::validate(self)
    }

    /// Runs on the step's prompt; the value passed on is the JSON text.
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        let r = self.run(provider, input.prompt(), ctx).await?;
        Ok(r.map(|v| v.to_string()).erase_stats())
    }
}

/// In a pipe ([`Pipe::step_typed`](crate::Pipe::step_typed)), the value handed on is the JSON
/// value; its text is the JSON text.
#[async_trait]
impl TypedStep for StructuredValue {
    type Output = Value;

    async fn run_typed(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<(PatternResult<String>, Value)> {
        let r = self.run(provider, input.prompt(), ctx).await?;
        let mut value = Value::Null;
        let text = r.erase_stats().map(|v| {
            let text = v.to_string();
            value = v;
            text
        });
        Ok((text, value))
    }
}

/// `Err` reason of a validator, as fed back to the model.
fn validator_message(reason: &str) -> String {
    if reason.trim().is_empty() {
        VALIDATOR_REJECTED.to_owned()
    } else {
        format!("{VALIDATOR_REJECTED}: {reason}")
    }
}

/// The instruction put before the caller's prompt.
fn instruction(schema: Option<&OutputSchema>) -> String {
    match schema {
        None => "Respond with a valid JSON object or array only, without markdown fences or \
                 commentary."
            .to_owned(),
        Some(s) => {
            let shown = if s.is_strict_compatible() {
                s.strict_schema()
            } else {
                s.schema()
            };
            format!(
                "Respond with valid JSON only, without markdown fences or commentary, matching \
                 this JSON Schema:\n{shown}"
            )
        }
    }
}

/// The repair prompt: what went wrong, the task, the previous reply (bounded) and the ask.
fn repair_prompt(error: &str, prompt: &str, previous: &str) -> String {
    let previous = crate::text::cut_with(previous, MAX_ECHO_CHARS, "\n[truncated]");
    format!(
        "Your previous response was not valid structured output.\n\nError: {error}\n\n\
         Original task:\n{prompt}\n\nYour previous response:\n{previous}\n\n\
         Return a corrected JSON object or array only, without markdown fences or commentary."
    )
}

/// The loop shared by both variants: `accept` turns an extracted JSON value into the result
/// or a reason to repair. Its result or error leaves with the spend and with the key removed.
async fn run_core<A>(
    opts: &Options,
    schema: Option<&OutputSchema>,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
    accept: impl Fn(Value) -> std::result::Result<A, String>,
) -> Result<PatternResult<(A, Value), StructuredStats>> {
    let span = tracing::info_span!(
        target: "executionkit",
        "pattern.structured",
        max_repairs = crate::telemetry::int(opts.max_repairs),
        schema = schema.is_some(),
    );
    let run = ctx.tracked(async |tracker| {
        repair_loop(opts, schema, provider, prompt, ctx, tracker, &accept).await
    });
    seal(tracing::Instrument::instrument(run, span).await, provider)
}

async fn repair_loop<A>(
    opts: &Options,
    schema: Option<&OutputSchema>,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
    tracker: &CostTracker,
    accept: impl Fn(Value) -> std::result::Result<A, String>,
) -> Result<PatternResult<(A, Value), StructuredStats>> {
    let response_format = schema
        .filter(|_| opts.use_response_format)
        .map(OutputSchema::response_format);
    let first = format!("{}\n\n{prompt}", instruction(schema));
    let mut parse_attempts = 0usize;
    let mut repair_attempts = 0usize;
    let with_counts = |e: Error, parse_attempts: usize, repair_attempts: usize| {
        let stats = StructuredStats {
            parse_attempts,
            repair_attempts,
            validated: false,
        };
        stats_metadata(&stats)
            .into_iter()
            .fold(e, |e, (k, v)| e.with_metadata(&k, v))
    };
    // Each reply's text is delivered to an `on_text` subscriber, superseded when a repair
    // follows.
    let (resp, mut delivered) = ctx
        .complete_forwarding(
            provider,
            opts.request(first, response_format.as_ref()),
            tracker,
        )
        .await
        .map_err(|e| with_counts(e, 0, 0))?;
    let mut text = resp.into_content();
    let mut last_error;
    loop {
        parse_attempts += 1;
        last_error = match extract_json(&text) {
            Err(e) => format!("JSON parse failed: {}", e.message()),
            Ok(v) => match schema.map_or(Ok(()), |s| s.validate(&v)) {
                Err(msg) => format!("JSON Schema validation failed: {msg}"),
                Ok(()) => match accept(v.clone()) {
                    Ok(a) => {
                        let stats = StructuredStats {
                            parse_attempts,
                            repair_attempts,
                            validated: true,
                        };
                        return Ok(PatternResult::with_stats((a, v), stats));
                    }
                    Err(msg) => msg,
                },
            },
        };
        if repair_attempts >= opts.max_repairs {
            break;
        }
        repair_attempts += 1;
        ctx.supersede_text(delivered);
        let req = opts.request(
            repair_prompt(&last_error, prompt, &text),
            response_format.as_ref(),
        );
        let (resp, d) = ctx
            .complete_forwarding(provider, req, tracker)
            .await
            .map_err(|e| with_counts(e, parse_attempts, repair_attempts))?;
        (text, delivered) = (resp.into_content(), d);
    }
    Err(with_counts(
        Error::new(ErrorKind::Parse, last_error),
        parse_attempts,
        repair_attempts,
    ))
}
