//! Names of tracing span fields, following the OpenTelemetry GenAI semantic conventions.
//!
//! Defined once here so every span uses the same spelling.
//!
//! ```
//! assert_eq!(executionkit::telemetry::GEN_AI_REQUEST_MODEL, "gen_ai.request.model");
//! ```

/// Span name of one LLM call.
///
/// ```
/// assert_eq!(executionkit::telemetry::SPAN_LLM_CALL, "llm.call");
/// ```
pub const SPAN_LLM_CALL: &str = "llm.call";
/// `gen_ai.operation.name` (always `"chat"` here).
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_OPERATION_NAME, "gen_ai.operation.name");
/// ```
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.request.model`.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_REQUEST_MODEL, "gen_ai.request.model");
/// ```
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.request.temperature`.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_REQUEST_TEMPERATURE, "gen_ai.request.temperature");
/// ```
pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
/// `gen_ai.request.max_tokens`.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_REQUEST_MAX_TOKENS, "gen_ai.request.max_tokens");
/// ```
pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
/// `gen_ai.response.finish_reasons`.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_RESPONSE_FINISH_REASONS, "gen_ai.response.finish_reasons");
/// ```
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// `gen_ai.response.model`: the model that answered, as the server named it.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_RESPONSE_MODEL, "gen_ai.response.model");
/// ```
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
/// `gen_ai.response.id`: the server's response id.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_RESPONSE_ID, "gen_ai.response.id");
/// ```
pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
/// `gen_ai.usage.input_tokens`.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_USAGE_INPUT_TOKENS, "gen_ai.usage.input_tokens");
/// ```
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`.
///
/// ```
/// assert_eq!(executionkit::telemetry::GEN_AI_USAGE_OUTPUT_TOKENS, "gen_ai.usage.output_tokens");
/// ```
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `error.type`: the error kind of a failed call (`"rate_limited"`, `"timeout"`, …).
///
/// ```
/// assert_eq!(executionkit::telemetry::ERROR_TYPE, "error.type");
/// ```
pub const ERROR_TYPE: &str = "error.type";
/// The value of `gen_ai.operation.name` for chat completions.
///
/// ```
/// assert_eq!(executionkit::telemetry::OPERATION_CHAT, "chat");
/// ```
pub const OPERATION_CHAT: &str = "chat";
/// `executionkit.cost.usd`: what one call cost in US dollars, recorded on its `llm.call` span
/// when the budget has prices for the model (absent otherwise).
///
/// ```
/// assert_eq!(executionkit::telemetry::EXECUTIONKIT_COST_USD, "executionkit.cost.usd");
/// ```
pub const EXECUTIONKIT_COST_USD: &str = "executionkit.cost.usd";

/// A count as a span field: `i64`, which an OpenTelemetry exporter sends as an integer
/// attribute (`tracing-opentelemetry` sends a `u64` field as text). Saturates.
pub(crate) fn int<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
