//! The reply: a Messages API `message` as an [`LlmResponse`], its usage with the prompt cache
//! counted in, its `stop_reason` in the OpenAI vocabulary, and error objects as our kinds.

use serde_json::{Map, Value, json};

use super::provider_err;
use crate::error::{Error, ErrorKind, Result};
use crate::provider::parse::{MAX_REPORTED_TOKENS, parse_tool_calls};
use crate::provider::{Choice, LlmResponse, ToolCall, Usage};
use crate::redact::redact;
use crate::text::prefix;

/// Anthropic's `stop_reason` in the vocabulary the patterns use.
pub(super) fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_owned()
}

/// One usage count: a whole number from 0 to one billion; absent or `null` is 0.
pub(super) fn usage_count(u: &Map<String, Value>, name: &str) -> Result<u64> {
    match u.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if x <= MAX_REPORTED_TOKENS => Ok(x),
            Some(x) => Err(provider_err(format!(
                "Provider usage field '{name}' is unreasonably large: {x}"
            ))),
            None => Err(provider_err(format!(
                "Provider usage field '{name}' must be a whole number >= 0, got {n}"
            ))),
        },
        Some(_) => Err(provider_err(format!(
            "Provider usage field '{name}' must be a whole number"
        ))),
    }
}

/// Anthropic usage: billed input is `input_tokens + cache_read_input_tokens +
/// cache_creation_input_tokens` (the cache parts also kept as subsets); output is
/// `output_tokens`.
pub(super) fn parse_anthropic_usage(u: &Map<String, Value>) -> Result<Usage> {
    let uncached = usage_count(u, "input_tokens")?;
    let read = usage_count(u, "cache_read_input_tokens")?;
    let write = usage_count(u, "cache_creation_input_tokens")?;
    Ok(Usage {
        input_tokens: uncached.saturating_add(read).saturating_add(write),
        output_tokens: usage_count(u, "output_tokens")?,
        cache_read_input_tokens: read,
        cache_write_input_tokens: write,
        reasoning_tokens: 0,
    })
}

/// The error an Anthropic error object (`{"type": "…_error", "message": …}`) stands for.
pub(super) fn error_event(error: Option<&Value>) -> Error {
    let kind_name = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = match kind_name {
        "rate_limit_error" => ErrorKind::RateLimited,
        "invalid_request_error"
        | "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "request_too_large"
        | "billing_error" => ErrorKind::Permanent,
        // overloaded_error, api_error and anything new: the server's fault, retryable.
        _ => ErrorKind::Provider,
    };
    let kind_name = redact(prefix(kind_name, 64));
    let text = if message.trim().is_empty() {
        format!("Provider reported an error ({kind_name})")
    } else {
        format!(
            "Provider reported an error ({kind_name}): {}",
            redact(prefix(message, 500))
        )
    };
    Error::new(kind, text)
}

/// Parses a 2xx Messages reply (a `message` object).
pub(crate) fn parse_message(body: &[u8]) -> Result<LlmResponse> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        provider_err(format!(
            "Provider returned a response body that is not JSON: {e}"
        ))
    })?;
    let Value::Object(mut obj) = value else {
        return Err(provider_err(
            "Provider returned a response body that is not a JSON object",
        ));
    };
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        return Err(error_event(obj.get("error")));
    }
    let Some(Value::Array(content)) = obj.remove("content") else {
        return Err(provider_err(
            "Provider response did not include a content list",
        ));
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        let Value::Object(mut block) = block else {
            return Err(provider_err("Provider content block was not an object"));
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(Value::String(t)) = block.remove("text") {
                    text.push_str(&t);
                }
            }
            Some("tool_use") => calls.push(json!({
                "id": block.remove("id").unwrap_or(Value::Null),
                "function": {
                    "name": block.remove("name").unwrap_or(Value::Null),
                    "arguments": block.remove("input").unwrap_or(Value::Null),
                },
            })),
            // thinking, redacted_thinking and server tool blocks carry no answer text.
            _ => {}
        }
    }
    let usage = match obj.get("usage") {
        Some(Value::Object(u)) => parse_anthropic_usage(u)?,
        _ => Usage::default(),
    };
    let mut string = |key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(LlmResponse {
        choices: vec![Choice {
            content: text,
            tool_calls: tool_calls(calls)?,
            finish_reason: string("stop_reason").map(|r| finish_reason(&r)),
            logprobs: None,
        }],
        usage,
        id: string("id"),
        model: string("model"),
    })
}

/// Tool calls from wire-shaped values (an `input` object, or a streamed JSON text), decoded as
/// every provider decodes them: a missing name is a `provider` error; arguments that are not a
/// JSON object leave `arguments` empty with [`ToolCall::arguments_error`] set.
pub(super) fn tool_calls(wire: Vec<Value>) -> Result<Vec<ToolCall>> {
    if wire.is_empty() {
        return Ok(Vec::new());
    }
    let wire: Vec<Value> = wire
        .into_iter()
        .map(|mut c| {
            // A non-object `input` goes through the string path, which records why it is unusable.
            let args = &mut c["function"]["arguments"];
            if !matches!(args, Value::Object(_) | Value::String(_) | Value::Null) {
                *args = Value::String(args.to_string());
            }
            c
        })
        .collect();
    parse_tool_calls(Some(&Value::Array(wire)))
}
