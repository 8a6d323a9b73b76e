//! Error replies: the detail of an error body, OpenAI's `insufficient_quota`, and the
//! `Retry-After` header.

use serde_json::Value;

/// The detail of an error body: `error.message` when `error` is an object with a string
/// `message`, else `error` when it is a string. Not JSON, or not an object: `None`.
///
/// ```
/// use executionkit::internals::parse::error_detail;
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
/// use executionkit::internals::parse::is_insufficient_quota;
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
/// use executionkit::internals::parse::parse_retry_after;
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
