//! The general parser's readers of one part of a reply, over `serde_json::Value`: content,
//! tool calls and their arguments, usage, finish reason (and the serde helpers [`Choice`]'s
//! `Deserialize` uses).
//!
//! [`Choice`]: crate::Choice

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{MAX_REPORTED_TOKENS, ToolCall, Usage, provider_err};
use crate::error::Result;
use crate::provider::LogprobSummary;
use crate::redact::redact;
use crate::text::prefix;

/// `finish_reason`: a string is kept; absent or `null` is `None`; another value becomes its
/// JSON text.
pub(crate) fn finish_reason(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// A choice's `logprobs` value summarised: `{"content": [{"logprob": x, …}, …]}` with every
/// `x` a number ≤ 0 gives their sum and count; anything else (absent, `null`, another shape,
/// an entry without a `logprob` number, a positive one, a sum that is not finite) gives
/// `None`. Token strings and `top_logprobs` are not read.
///
/// ```
/// use executionkit::internals::parse::logprob_summary;
/// let v = serde_json::json!({"content": [{"token": "Par", "logprob": -0.25, "top_logprobs": []},
///                                        {"token": "is", "logprob": -0.75}]});
/// let s = logprob_summary(Some(&v)).unwrap();
/// assert_eq!((s.sum, s.tokens), (-1.0, 2));
/// assert_eq!(logprob_summary(Some(&serde_json::json!({"content": [{"logprob": "x"}]}))), None);
/// assert_eq!(logprob_summary(Some(&serde_json::Value::Null)), None);
/// ```
#[must_use]
pub fn logprob_summary(v: Option<&Value>) -> Option<LogprobSummary> {
    let Some(Value::Array(tokens)) = v.and_then(|l| l.get("content")) else {
        return None;
    };
    let mut s = LogprobSummary::default();
    for t in tokens {
        s.add(token_logprob(t.get("logprob")?.as_f64()?)?);
    }
    s.checked()
}

/// A token's log-probability when it is one (a finite number ≤ 0).
pub(super) fn token_logprob(x: f64) -> Option<f64> {
    (x.is_finite() && x <= 0.0).then_some(x)
}

/// Extracts text from a `content` value: `null` → `""`, a string as is, a list of parts
/// concatenated (strings, `{"type": "text"|"output_text", "text": …}`, `{"value": …}`), any
/// other value as its JSON text.
///
/// ```
/// use executionkit::internals::parse::content_text;
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
/// use executionkit::internals::parse::parse_tool_calls;
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
pub(super) fn decode_argument_string(s: &str) -> (Map<String, Value>, Option<String>) {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => (m, None),
        Ok(_) => (
            Map::new(),
            Some("arguments did not decode to a JSON object".to_owned()),
        ),
        Err(e) => (
            Map::new(),
            Some(
                prefix(
                    &redact(&format!("arguments were not valid JSON ({e})")),
                    200,
                )
                .to_owned(),
            ),
        ),
    }
}

/// Decodes tool-call arguments: `null` → `{}`, an object as is, a string holding a JSON object.
/// Used directly, every failure is a `provider` error (reference scenario 27); through
/// [`parse_tool_calls`], a bad string becomes [`ToolCall::arguments_error`] instead.
///
/// ```
/// use executionkit::internals::parse::parse_arguments;
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
                redact(prefix(s, 200))
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
/// use executionkit::internals::parse::parse_usage;
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
/// use executionkit::{Usage, internals::parse::with_usage_details};
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
