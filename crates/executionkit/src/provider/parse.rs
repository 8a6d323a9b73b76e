//! Parsing of chat-completions replies (JSON bodies and error bodies), with every edge case of
//! the reference: content given as a list of parts, tool-call arguments given as a string or an
//! object, usage under either naming, and hostile values. Nothing here panics on server input.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{Choice, LlmResponse, ToolCall, Usage};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::redact;

/// The largest token count a server may report (one billion).
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

fn provider_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Provider, msg)
}

/// Parses a 2xx response body. A body that is not JSON, or JSON that is not an object, is a
/// `provider` error.
///
/// ```
/// let r = executionkit::provider::parse::parse_completion(
///     br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
/// ).unwrap();
/// assert_eq!(r.content(), "hi");
/// assert_eq!(r.usage.input_tokens, 3);
/// assert!(executionkit::provider::parse::parse_completion(b"not json").unwrap_err().is_provider());
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
/// let e = executionkit::provider::parse::parse_completion_value(v).unwrap_err();
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
        out.push(Choice {
            content,
            tool_calls: parse_tool_calls(message.get("tool_calls"))?,
            finish_reason: match c.remove("finish_reason") {
                Some(Value::String(s)) => Some(s),
                other => finish_reason(other.as_ref()),
            },
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

/// `finish_reason`: a string is kept; absent or `null` is `None`; another value becomes its
/// JSON text.
pub(crate) fn finish_reason(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// Extracts text from a `content` value: `null` → `""`, a string as is, a list of parts
/// concatenated (strings, `{"type": "text"|"output_text", "text": …}`, `{"value": …}`), any
/// other value as its JSON text.
///
/// ```
/// use executionkit::provider::parse::content_text;
/// let v = serde_json::json!(["alpha", {"type":"text","text":"beta"},
///     {"type":"output_text","text":{"value":"gamma"}}, {"value":"delta"}, 123]);
/// assert_eq!(content_text(Some(&v)), "alphabetagammadelta");
/// assert_eq!(content_text(Some(&serde_json::json!(42))), "42");
/// assert_eq!(content_text(None), "");
/// ```
#[must_use]
pub fn content_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match p {
                    Value::String(t) => s.push_str(t),
                    Value::Object(o) => {
                        let is_text = matches!(
                            o.get("type").and_then(Value::as_str),
                            Some("text" | "output_text")
                        );
                        if is_text {
                            match o.get("text") {
                                Some(Value::String(t)) => s.push_str(t),
                                Some(Value::Object(t)) => {
                                    if let Some(Value::String(v)) = t.get("value") {
                                        s.push_str(v);
                                    }
                                }
                                _ => {}
                            }
                        } else if let Some(Value::String(v)) = o.get("value") {
                            s.push_str(v);
                        }
                    }
                    _ => {}
                }
            }
            s
        }
        Some(other) => other.to_string(),
    }
}

/// Parses `message.tool_calls` (see the reference §5.3 for every error message).
///
/// Malformed shapes (not a list, an item or `function` not an object, a missing name,
/// `arguments` neither a string nor an object nor `null`) are `provider` errors. An `arguments`
/// string that is not valid JSON, or does not decode to an object, does not fail the response:
/// the call is kept with empty `arguments` and [`ToolCall::arguments_error`] set, so that a tool
/// loop can answer the model with an observation.
///
/// ```
/// use executionkit::provider::parse::parse_tool_calls;
/// let v = serde_json::json!([{"id": "a", "function": {"name": "f", "arguments": "{\"x\":1}"}}]);
/// let calls = parse_tool_calls(Some(&v)).unwrap();
/// assert_eq!(calls[0].arguments["x"], 1);
/// assert_eq!(calls[0].arguments_error, None);
/// assert!(parse_tool_calls(Some(&serde_json::json!("bad"))).is_err());
/// let v = serde_json::json!([{"id": "b", "function": {"name": "f", "arguments": "[1]"}}]);
/// let calls = parse_tool_calls(Some(&v)).unwrap();
/// assert!(calls[0].arguments.is_empty());
/// assert_eq!(calls[0].arguments_error.as_deref(), Some("arguments did not decode to a JSON object"));
/// ```
pub fn parse_tool_calls(v: Option<&Value>) -> Result<Vec<ToolCall>> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(provider_err("Provider tool_calls payload was not a list"));
        }
    };
    let mut calls = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(item) = item else {
            return Err(provider_err("Provider tool call payload was not an object"));
        };
        let Some(Value::Object(function)) = item.get("function") else {
            return Err(provider_err(
                "Provider tool call function payload was not an object",
            ));
        };
        let name = match function.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(provider_err("Provider tool call name was missing")),
        };
        let (arguments, arguments_error) = match function.get("arguments") {
            Some(Value::String(s)) => decode_argument_string(s),
            other => (parse_arguments(other, &name)?, None),
        };
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        calls.push(ToolCall {
            id,
            name,
            arguments,
            arguments_error,
        });
    }
    Ok(calls)
}

/// Decodes an `arguments` string for [`parse_tool_calls`]: the object, or `{}` and a bounded
/// reason that never holds the argument text (serde_json's messages name only a position).
fn decode_argument_string(s: &str) -> (Map<String, Value>, Option<String>) {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => (m, None),
        Ok(_) => (
            Map::new(),
            Some("arguments did not decode to a JSON object".to_owned()),
        ),
        Err(e) => (
            Map::new(),
            Some(truncate_chars(
                &redact(&format!("arguments were not valid JSON ({e})")),
                200,
            )),
        ),
    }
}

/// Decodes tool-call arguments: `null` → `{}`, an object as is, a string holding a JSON object.
/// Used directly, every failure is a `provider` error (reference scenario 27); through
/// [`parse_tool_calls`], a bad string becomes [`ToolCall::arguments_error`] instead.
///
/// ```
/// use executionkit::provider::parse::parse_arguments;
/// assert!(parse_arguments(None, "f").unwrap().is_empty());
/// let e = parse_arguments(Some(&serde_json::json!("{bad json}")), "f").unwrap_err();
/// assert!(e.message().contains("were not valid JSON"));
/// ```
pub fn parse_arguments(v: Option<&Value>, name: &str) -> Result<Map<String, Value>> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(provider_err(format!(
                "Arguments of tool call '{name}' must decode to a JSON object"
            ))),
            Err(_) => Err(provider_err(format!(
                "Arguments of tool call '{name}' were not valid JSON: {}",
                redact(&truncate_chars(s, 200))
            ))),
        },
        Some(_) => Err(provider_err(format!(
            "Arguments of tool call '{name}' must be a dict or JSON string"
        ))),
    }
}

/// Reads usage: `input_tokens` when present (even 0) else `prompt_tokens`; `output_tokens` else
/// `completion_tokens`; each must be a non-negative integer (not a boolean) ≤ one billion.
///
/// ```
/// use executionkit::provider::parse::parse_usage;
/// let u = serde_json::json!({"input_tokens": 0, "prompt_tokens": 99, "completion_tokens": 10});
/// let u = parse_usage(u.as_object().unwrap()).unwrap();
/// assert_eq!((u.input_tokens, u.output_tokens), (0, 10));
/// let bad = serde_json::json!({"prompt_tokens": -1});
/// assert!(parse_usage(bad.as_object().unwrap()).unwrap_err().message().contains("cannot be negative"));
/// ```
pub fn parse_usage(u: &Map<String, Value>) -> Result<Usage> {
    Ok(with_usage_details(
        u,
        Usage {
            input_tokens: usage_field(u, "input_tokens", "prompt_tokens")?,
            output_tokens: usage_field(u, "output_tokens", "completion_tokens")?,
            ..Usage::default()
        },
    ))
}

/// `usage` with the subsets OpenAI reports in a usage object: `prompt_tokens_details.cached_tokens`
/// (cache reads, part of the input) and `completion_tokens_details.reasoning_tokens` (part of the
/// output). Each is a subset, so it is capped at its total; a detail that is absent, `null` or not
/// a whole number counts 0 (it only informs, and never fails a reply).
///
/// ```
/// use executionkit::provider::{Usage, parse::with_usage_details};
/// let u = serde_json::json!({"prompt_tokens_details": {"cached_tokens": 7},
///                            "completion_tokens_details": {"reasoning_tokens": 99}});
/// let base = Usage { input_tokens: 10, output_tokens: 20, ..Usage::default() };
/// let d = with_usage_details(u.as_object().unwrap(), base);
/// assert_eq!((d.cache_read_input_tokens, d.reasoning_tokens), (7, 20));
/// ```
#[must_use]
pub fn with_usage_details(u: &Map<String, Value>, mut usage: Usage) -> Usage {
    let detail = |outer: &str, inner: &str| {
        u.get(outer)
            .and_then(|d| d.get(inner))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    usage.cache_read_input_tokens =
        detail("prompt_tokens_details", "cached_tokens").min(usage.input_tokens);
    usage.reasoning_tokens =
        detail("completion_tokens_details", "reasoning_tokens").min(usage.output_tokens);
    usage
}

fn usage_field(u: &Map<String, Value>, primary: &str, fallback: &str) -> Result<u64> {
    let (name, v) = match u.get(primary) {
        Some(v) => (primary, v),
        None => match u.get(fallback) {
            Some(v) => (fallback, v),
            None => return Ok(0),
        },
    };
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_u64() {
                if x > MAX_REPORTED_TOKENS {
                    Err(provider_err(format!(
                        "Provider usage field '{name}' is unreasonably large: {x}"
                    )))
                } else {
                    Ok(x)
                }
            } else if n.as_i64().is_some_and(|x| x < 0) {
                Err(provider_err(format!(
                    "Provider usage field '{name}' cannot be negative: {n}"
                )))
            } else if n.as_f64().is_some_and(|x| x < 0.0) {
                Err(provider_err(format!(
                    "Provider usage field '{name}' cannot be negative and must be an integer: {n}"
                )))
            } else {
                Err(provider_err(format!(
                    "Provider usage field '{name}' must be an integer, got {n}"
                )))
            }
        }
        Value::Null => Ok(0),
        _ => Err(provider_err(format!(
            "Provider usage field '{name}' must be an integer, got {}",
            json_type(v)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The detail of an error body: `error.message` when `error` is an object with a string
/// `message`, else `error` when it is a string. Not JSON, or not an object: `None`.
///
/// ```
/// use executionkit::provider::parse::error_detail;
/// assert_eq!(error_detail(br#"{"error":{"message":"server error"}}"#).as_deref(), Some("server error"));
/// assert_eq!(error_detail(br#"{"error":"boom"}"#).as_deref(), Some("boom"));
/// assert_eq!(error_detail(b"not-json"), None);
/// ```
#[must_use]
pub fn error_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match v.get("error")? {
        Value::Object(e) => e.get("message").and_then(Value::as_str).map(str::to_owned),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// `true` when an error body's `error.code` or `error.type` is `insufficient_quota`.
///
/// ```
/// use executionkit::provider::parse::is_insufficient_quota;
/// assert!(is_insufficient_quota(br#"{"error":{"type":"insufficient_quota","message":"x"}}"#));
/// assert!(!is_insufficient_quota(b"{}"));
/// ```
#[must_use]
pub fn is_insufficient_quota(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let Some(Value::Object(e)) = v.get("error") else {
        return false;
    };
    ["code", "type"]
        .iter()
        .any(|k| e.get(*k).and_then(Value::as_str) == Some("insufficient_quota"))
}

/// Parses a `Retry-After` value into seconds (reference §3.2): a finite decimal number
/// (negative → 0), else an HTTP date (seconds from now, at least 0), else `default`.
///
/// ```
/// use executionkit::provider::parse::parse_retry_after;
/// assert_eq!(parse_retry_after("30", 1.0), 30.0);
/// assert_eq!(parse_retry_after("2.5", 1.0), 2.5);
/// assert_eq!(parse_retry_after("-5", 1.0), 0.0);
/// assert_eq!(parse_retry_after("inf", 1.0), 1.0);
/// assert_eq!(parse_retry_after("??", 5.0), 5.0);
/// assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1.0), 0.0); // in the past
/// ```
#[must_use]
pub fn parse_retry_after(value: &str, default: f64) -> f64 {
    let value = value.trim();
    if let Ok(x) = value.parse::<f64>() {
        return if x.is_finite() { x.max(0.0) } else { default };
    }
    match httpdate::parse_http_date(value) {
        Ok(when) => match when.duration_since(std::time::SystemTime::now()) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(_) => 0.0,
        },
        Err(_) => default,
    }
}

/// The first `max` characters of `s`.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// serde helper: `null` or absent content as `""`, lists of parts flattened.
pub(crate) fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(content_text(v.as_ref()))
}

/// serde helper: wire-shaped tool calls.
pub(crate) fn wire_tool_calls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ToolCall>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    parse_tool_calls(v.as_ref()).map_err(serde::de::Error::custom)
}
