//! [`extract_json`]: find the JSON object or array in a model's reply, in linear time.
//!
//! Models wrap JSON in prose, in Markdown fences, or both, and prose has braces of its own
//! ("use the format {key: value}"). The extractor tries, in order (first success wins):
//!
//! 1. the whole text, trimmed;
//! 2. the body of the first ```` ```json ```` fence (when it is closed), then the bodies of
//!    the generic ```` ``` ```` fences, pairwise from the start, that begin with `{` or `[`
//!    (a leading language tag line is skipped);
//! 3. a balanced scan: one pass over the text with a bounded stack of open brackets, tracking
//!    string and escape state inside brackets. Every closed bracket pair whose parent never
//!    closes (or that is at top level) is a candidate; candidates are parsed in order of their
//!    start and the first that parses to an object or array wins. Candidates are disjoint, so
//!    the parses cost at most one more pass over the text. A candidate that fails to parse is
//!    searched inside for a smaller candidate ("{Result: {"a": 1}}" gives `{"a": 1}`), within a
//!    fixed work budget of a few passes over the text.
//!
//! Everything is linear in the length of the text, with memory bounded by the text length: a
//! hostile reply of one mebibyte of braces costs a few milliseconds and fails with a `parse`
//! error.

use std::collections::VecDeque;

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// The message when the text holds no `{` or `[` at all.
///
/// ```
/// use executionkit::internals::json::{NO_JSON_MESSAGE, extract_json};
/// assert_eq!(extract_json("plain").unwrap_err().message(), NO_JSON_MESSAGE);
/// ```
pub const NO_JSON_MESSAGE: &str = "No JSON object or array found in text";
/// The message when brackets were found but nothing parsed.
///
/// ```
/// use executionkit::internals::json::{INVALID_JSON_MESSAGE, extract_json};
/// assert_eq!(extract_json("{a: 1}").unwrap_err().message(), INVALID_JSON_MESSAGE);
/// ```
pub const INVALID_JSON_MESSAGE: &str = "No valid JSON could be extracted from the text";

/// Openers deeper than this in the scan stack are forgotten (the oldest first). A span that
/// nests deeper than serde_json's recursion limit (128) cannot parse anyway, so this loses no
/// result and bounds the stack.
const MAX_STACK: usize = 512;

/// Extra bytes (beyond the first pass) the scan may spend searching inside candidates that
/// failed to parse, as a multiple of the text length.
const INNER_BUDGET_FACTOR: usize = 3;

/// Extracts the first JSON object or array from `text`.
///
/// # Errors
///
/// A `parse` error: `NO_JSON_MESSAGE` when the text has no `{` or `[`, else
/// `INVALID_JSON_MESSAGE`. A bare scalar (`42`) is not accepted.
///
/// ```
/// use executionkit::internals::json::extract_json;
/// let v = extract_json(r#"Use the format {key: value}. Here is the data: {"a": 1}"#).unwrap();
/// assert_eq!(v, serde_json::json!({"a": 1}));
/// let v = extract_json("```json\n[1, 2]\n```").unwrap();
/// assert_eq!(v, serde_json::json!([1, 2]));
/// let v = extract_json(r#"{"x": "}"} trailing"#).unwrap();
/// assert_eq!(v, serde_json::json!({"x": "}"}));
/// assert!(extract_json("no json here").unwrap_err().is_parse());
/// ```
pub fn extract_json(text: &str) -> Result<Value> {
    let trimmed = text.trim();
    if let Some(v) = parse_container(trimmed.as_bytes()) {
        return Ok(v);
    }
    if let Some(v) = from_fences(text) {
        return Ok(v);
    }
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b == b'{' || b == b'[') {
        return Err(Error::new(ErrorKind::Parse, NO_JSON_MESSAGE));
    }
    let mut budget = bytes.len().saturating_mul(INNER_BUDGET_FACTOR);
    scan(bytes, &mut budget).ok_or_else(|| Error::new(ErrorKind::Parse, INVALID_JSON_MESSAGE))
}

/// Parses `bytes` as one JSON value and keeps it when it is an object or array.
fn parse_container(bytes: &[u8]) -> Option<Value> {
    match bytes.first() {
        Some(b'{' | b'[') => {}
        _ => return None,
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => Some(v),
        _ => None,
    }
}

/// Strategy 2: fenced blocks (plain substring search, each byte visited a bounded number of
/// times).
fn from_fences(text: &str) -> Option<Value> {
    const FENCE: &str = "```";
    if let Some(open) = text.find("```json") {
        let body_start = open + "```json".len();
        if let Some(len) = text[body_start..].find(FENCE) {
            if let Some(v) = parse_container(text[body_start..body_start + len].trim().as_bytes()) {
                return Some(v);
            }
        }
    }
    let mut pos = 0;
    while let Some(o) = text[pos..].find(FENCE) {
        let body_start = pos + o + FENCE.len();
        let len = text[body_start..].find(FENCE)?;
        let body = fence_body(&text[body_start..body_start + len]);
        if let Some(v) = parse_container(body.as_bytes()) {
            return Some(v);
        }
        pos = body_start + len + FENCE.len();
    }
    None
}

/// A fence body, trimmed, without a leading language tag line (```` ```JSON ````, ```` ```js ````).
fn fence_body(body: &str) -> &str {
    let t = body.trim();
    if t.starts_with('{') || t.starts_with('[') {
        return t;
    }
    match body.split_once('\n') {
        Some((tag, rest)) if !tag.trim().is_empty() && !tag.contains(['{', '[', ' ']) => {
            rest.trim()
        }
        _ => t,
    }
}

/// One open bracket of the scan: its byte offset and kind.
#[derive(Clone, Copy)]
struct Open {
    at: usize,
    kind: u8,
}

/// Strategy 3 on `bytes`: the first candidate span that parses, searching inside failed
/// candidates while `budget` (bytes) lasts.
fn scan(bytes: &[u8], budget: &mut usize) -> Option<Value> {
    let mut stack: VecDeque<Open> = VecDeque::new();
    // How many `{` and `[` the stack holds, so a closer with no match is skipped in O(1).
    let mut open_count = [0_usize; 2];
    // Closed spans whose enclosing opener is still open: disjoint, sorted by start.
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' || b == b'\n' {
                // A raw newline cannot be inside a JSON string: the quote was prose.
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' if !stack.is_empty() => in_string = true,
            b'{' | b'[' => {
                if stack.len() == MAX_STACK {
                    if let Some(o) = stack.pop_front() {
                        open_count[slot(o.kind)] -= 1;
                    }
                }
                stack.push_back(Open { at: i, kind: b });
                open_count[slot(b)] += 1;
            }
            b'}' | b']' => {
                let want = if b == b'}' { b'{' } else { b'[' };
                if open_count[slot(want)] == 0 {
                    continue;
                }
                // Openers above the matching one never closed: forget them.
                let mut start = 0;
                while let Some(o) = stack.pop_back() {
                    open_count[slot(o.kind)] -= 1;
                    if o.kind == want {
                        start = o.at;
                        break;
                    }
                }
                while pending.last().is_some_and(|&(s, _)| s > start) {
                    pending.pop();
                }
                pending.push((start, i + 1));
                if stack.is_empty() {
                    // Nothing can enclose these spans any more: they are final.
                    if let Some(v) = try_spans(bytes, &pending, budget) {
                        return Some(v);
                    }
                    pending.clear();
                }
            }
            _ => {}
        }
    }
    try_spans(bytes, &pending, budget)
}

/// The `open_count` index of an opener.
fn slot(kind: u8) -> usize {
    usize::from(kind == b'[')
}

/// Parses each final span in order; a span that fails is searched inside (budget allowing).
fn try_spans(bytes: &[u8], spans: &[(usize, usize)], budget: &mut usize) -> Option<Value> {
    for &(s, e) in spans {
        let span = &bytes[s..e];
        if let Some(v) = parse_container(span) {
            return Some(v);
        }
        let inner = &span[1..span.len() - 1];
        if inner.len() <= *budget && inner.iter().any(|&b| b == b'{' || b == b'[') {
            *budget -= inner.len();
            if let Some(v) = scan(inner, budget) {
                return Some(v);
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decoy_unclosed_brace_before_json() {
        let v = extract_json(r#"Note {unclosed. Result: {"a": 1} bye"#).unwrap();
        assert_eq!(v, json!({"a": 1}));
    }

    #[test]
    fn json_inside_failed_outer_span() {
        let v = extract_json(r#"{Result: {"a": 1}}"#).unwrap();
        assert_eq!(v, json!({"a": 1}));
    }

    #[test]
    fn mismatched_closer_is_skipped() {
        let v = extract_json(r#"see [note {a] then {"b": 2}"#).unwrap();
        assert_eq!(v, json!({"b": 2}));
    }

    #[test]
    fn prose_quote_inside_decoy_does_not_swallow_the_rest() {
        let v = extract_json("Say {\"hello\nthen {\"a\": 1}").unwrap();
        assert_eq!(v, json!({"a": 1}));
    }

    #[test]
    fn fence_with_language_tag() {
        let v = extract_json("```JSON\n{\"a\": 1}\n```").unwrap();
        assert_eq!(v, json!({"a": 1}));
    }

    #[test]
    fn deep_stack_is_bounded() {
        let text = format!("{}{{\"a\": 1}}", "[".repeat(100_000));
        assert_eq!(extract_json(&text).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn very_deep_balanced_nesting_stays_bounded() {
        // Deeper than serde_json's recursion limit: the scan searches inward within its
        // budget and finds the innermost value that parses, without deep recursion.
        let text = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let v = extract_json(&text).unwrap();
        assert!(v.is_array());
        let text = format!("{}1{}", "{\"a\":[".repeat(50_000), "]}".repeat(50_000));
        let v = extract_json(&text).unwrap();
        assert!(v.is_object() || v.is_array());
    }

    #[test]
    fn errors_are_parse_kind() {
        let e = extract_json("No JSON here at all.").unwrap_err();
        assert!(e.is_parse());
        assert_eq!(e.message(), NO_JSON_MESSAGE);
        let e = extract_json("{not valid json}").unwrap_err();
        assert_eq!(e.message(), INVALID_JSON_MESSAGE);
    }
}
