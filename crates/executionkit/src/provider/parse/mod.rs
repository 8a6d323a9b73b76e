//! Parsing of chat-completions replies (JSON bodies and error bodies), with every edge case of
//! the reference: content given as a list of parts, tool-call arguments given as a string or an
//! object, usage under either naming, and hostile values. Nothing here panics on server input.
//!
//! [`parse_reply`] is the reply parser: a typed serde pass that borrows from the body and builds
//! nothing for keys it does not need, with [`parse_completion`] (the general parser, over
//! `serde_json::Value`) as its one fallback for unusual shapes and for every error, so both give
//! the same answer for every body. A choice may carry at most [`MAX_TOOL_CALLS`] tool calls.

// Some items serve only the crate's tests and benchmarks (through `internals`).
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

use serde_json::{Map, Value};

use super::{Choice, LlmResponse, ToolCall, Usage};
use crate::error::{Error, ErrorKind, Result};

mod errors;
mod fields;
#[cfg(test)]
mod tests;
mod wire;

pub use errors::{error_detail, is_insufficient_quota, parse_retry_after};
pub use fields::{
    content_text, logprob_summary, parse_arguments, parse_tool_calls, parse_usage,
    with_usage_details,
};
pub(crate) use fields::{finish_reason, null_as_empty, wire_tool_calls};

/// The largest token count a server may report (one billion).
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// The most tool calls one choice of a reply may carry; a reply with more is a `provider` error
/// (a bound on what one reply can make the caller hold and run).
///
/// ```
/// use executionkit::internals::parse::{parse_completion, MAX_TOOL_CALLS};
/// let call = r#"{"id":"c","function":{"name":"f","arguments":"{}"}}"#;
/// let calls = vec![call; MAX_TOOL_CALLS + 1].join(",");
/// let body = format!(r#"{{"choices":[{{"message":{{"tool_calls":[{calls}]}}}}]}}"#);
/// let e = parse_completion(body.as_bytes()).unwrap_err();
/// assert!(e.is_provider());
/// assert!(e.message().contains("more than 128 tool calls"));
/// ```
pub const MAX_TOOL_CALLS: usize = 128;

fn provider_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Provider, msg)
}

fn too_many_tool_calls(choice: usize) -> Error {
    provider_err(format!(
        "Provider response choice {choice} has more than {MAX_TOOL_CALLS} tool calls (the limit MAX_TOOL_CALLS)"
    ))
}

/// Parses a 2xx response body. A body that is not JSON, or JSON that is not an object, is a
/// `provider` error.
///
/// ```
/// let r = executionkit::internals::parse::parse_completion(
///     br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
/// ).unwrap();
/// assert_eq!(r.content(), "hi");
/// assert_eq!(r.usage.input_tokens, 3);
/// assert!(executionkit::internals::parse::parse_completion(b"not json").unwrap_err().is_provider());
/// ```
pub fn parse_completion(body: &[u8]) -> Result<LlmResponse> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        provider_err(format!(
            "Provider returned a response body that is not JSON: {e}"
        ))
    })?;
    parse_completion_value(value)
}

/// Parses a decoded 2xx response body (see [`parse_completion`]). Takes the value by value so
/// that the texts are moved, not copied.
///
/// ```
/// let v = serde_json::json!({"choices": []});
/// let e = executionkit::internals::parse::parse_completion_value(v).unwrap_err();
/// assert!(e.message().contains("did not include any choices"));
/// ```
pub fn parse_completion_value(value: Value) -> Result<LlmResponse> {
    let Value::Object(mut obj) = value else {
        return Err(provider_err(
            "Provider returned a response body that is not a JSON object",
        ));
    };
    let choices = match obj.remove("choices") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => {
            return Err(provider_err(
                "Provider response did not include any choices",
            ));
        }
    };
    let mut out = Vec::with_capacity(choices.len());
    for (i, c) in choices.into_iter().enumerate() {
        let Value::Object(mut c) = c else {
            return Err(provider_err(format!(
                "Provider response choice {i} was not an object"
            )));
        };
        let mut message = match c.remove("message") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let content = match message.remove("content") {
            Some(Value::String(s)) => s,
            other => content_text(other.as_ref()),
        };
        let tool_calls = message.get("tool_calls");
        if let Some(Value::Array(calls)) = tool_calls {
            if calls.len() > MAX_TOOL_CALLS {
                return Err(too_many_tool_calls(i));
            }
        }
        out.push(Choice {
            content,
            tool_calls: parse_tool_calls(tool_calls)?,
            finish_reason: match c.remove("finish_reason") {
                Some(Value::String(s)) => Some(s),
                other => finish_reason(other.as_ref()),
            },
            logprobs: logprob_summary(c.get("logprobs")),
        });
    }
    let usage = match obj.get("usage") {
        Some(Value::Object(u)) => parse_usage(u)?,
        _ => Usage::default(),
    };
    let mut text = |key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(LlmResponse {
        choices: out,
        usage,
        id: text("id"),
        model: text("model"),
    })
}

/// Parses a 2xx response body: [`parse_completion`]'s result for every body, read the fast
/// way when it has one of the usual shapes.
///
/// The body is first read by a typed, borrowing serde pass (strings without escapes are not
/// copied until the response is built, and unknown keys build nothing) that understands the
/// shapes servers send: string, `null` or list-of-parts `content`, tool calls with string or
/// object arguments, either naming of usage. Whatever that pass does not take as is (a type
/// where another is expected, a count out of range, a tool call without a name, a body that is
/// not JSON, any error) goes to [`parse_completion`], which decides. Values the typed pass
/// skips are still checked as [`parse_completion`] checks them (numbers in range, strings
/// valid, nesting within serde_json's limit), so a body accepted here is one it accepts too,
/// read the same way.
///
/// A choice with more than [`MAX_TOOL_CALLS`] tool calls is a `provider` error; the typed pass
/// stops at the first call past the limit.
///
/// ```
/// use executionkit::internals::parse::{parse_completion, parse_reply};
/// let body = br#"{"id":"c1","model":"m","choices":[{"message":{"role":"assistant","content":"hi",
///   "tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},
///   "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
/// let r = parse_reply(body).unwrap();
/// assert_eq!(r.content(), "hi");
/// assert_eq!(r.tool_calls()[0].arguments["x"], 1);
/// assert_eq!(r.usage.input_tokens, 3);
/// assert_eq!(r, parse_completion(body).unwrap());
/// let odd = br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#;
/// assert_eq!(parse_reply(odd).unwrap_err().message(), parse_completion(odd).unwrap_err().message());
/// ```
pub fn parse_reply(body: &[u8]) -> Result<LlmResponse> {
    match typed_reply(body) {
        Some(r) => Ok(r),
        None => parse_completion(body),
    }
}

/// The typed pass of [`parse_reply`]; `None` when the body is left to [`parse_completion`].
fn typed_reply(body: &[u8]) -> Option<LlmResponse> {
    serde_json::from_slice::<wire::Obj<wire::Reply<'_>>>(body)
        .ok()?
        .0
        .into_response()
}
