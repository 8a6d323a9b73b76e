//! `ek react`'s fixed toolset: `calculator`, `utc_now` and `echo`. None has a side effect: no
//! file, network or process access, and no code is ever evaluated.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use executionkit::{ChatRequest, ChatStream, LlmProvider, LlmResponse, Result, Tool};
use serde_json::json;
use std::sync::Arc;

use crate::calc;

/// The built-in tools, in the order they are offered to the model.
pub fn builtin() -> Vec<Tool> {
    vec![calculator(), utc_now(), echo()]
}

/// `calculator {expression}`: arithmetic on a safe parser ([`calc`]). A bad expression or a
/// division by zero is answered as `error: <reason>` so the model can correct itself.
pub fn calculator() -> Tool {
    Tool::new(
        "calculator",
        "Evaluates an arithmetic expression and returns the number. Supports + - * / ** \
         (power), parentheses, unary minus and decimals; nothing else.",
        json!({
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": "The expression, e.g. \"17 * 83\" or \"(2 + 3) ** 2 / 4\"",
                    "maxLength": calc::MAX_EXPRESSION_LEN
                }
            },
            "required": ["expression"],
            "additionalProperties": false
        }),
        |args| async move {
            let expr = args
                .get("expression")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            Ok(calculate(expr))
        },
    )
}

/// The calculator's observation for `expr`: the number, or `error: <reason>`.
pub fn calculate(expr: &str) -> String {
    match calc::evaluate_to_string(expr) {
        Ok(v) => v,
        Err(e) => format!("error: {e}"),
    }
}

/// `utc_now {}`: the current UTC time, RFC 3339 (`2026-11-26T19:22:06Z`).
pub fn utc_now() -> Tool {
    Tool::new(
        "utc_now",
        "Returns the current date and time in UTC, RFC 3339 (e.g. 2026-01-31T12:00:00Z).",
        json!({"type": "object", "properties": {}, "additionalProperties": false}),
        |_args| async move {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|_| "the system clock is before 1970".to_owned())?
                .as_secs();
            Ok(rfc3339(secs))
        },
    )
}

/// `echo {text}`: returns `text` unchanged.
pub fn echo() -> Tool {
    Tool::new(
        "echo",
        "Returns the given text unchanged.",
        json!({
            "type": "object",
            "properties": {"text": {"type": "string", "description": "The text to return"}},
            "required": ["text"],
            "additionalProperties": false
        }),
        |args| async move {
            Ok(args
                .get("text")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned())
        },
    )
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`), by the days-to-civil
/// algorithm (proleptic Gregorian calendar).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days, for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// The offline model as a tool-calling provider for `ek react`: the tools are sent to it, and,
/// as the offline model never calls a tool, it answers in the first round. (The library's
/// `ReactLoop` rejects providers that do not declare tool support.)
#[derive(Debug)]
pub struct AnswersWithoutTools(pub Arc<dyn LlmProvider>);

#[async_trait]
impl LlmProvider for AnswersWithoutTools {
    fn model(&self) -> &str {
        self.0.model()
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        self.0.complete(request).await
    }

    fn stream(&self, request: ChatRequest) -> ChatStream {
        self.0.stream(request)
    }

    fn supports_streaming(&self) -> bool {
        self.0.supports_streaming()
    }

    fn supports_tools(&self) -> bool {
        true
    }

    fn supports_n(&self) -> bool {
        self.0.supports_n()
    }

    fn secret(&self) -> Option<&str> {
        self.0.secret()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[tokio::test]
    async fn tools_observe() {
        let args = |v: serde_json::Value| v.as_object().unwrap().clone();
        let calc = calculator();
        let obs = calc
            .observe(&args(json!({"expression": "17*83"})), None, 100)
            .await;
        assert_eq!(obs.text, "1411");
        let obs = calc
            .observe(&args(json!({"expression": "1 / 0"})), None, 100)
            .await;
        assert_eq!(obs.text, "error: division by zero");
        let obs = calc
            .observe(&args(json!({"expression": "1", "code": "x"})), None, 100)
            .await;
        assert!(obs.text.contains("argument error"), "{}", obs.text);
        let obs = echo()
            .observe(&args(json!({"text": "hi"})), None, 100)
            .await;
        assert_eq!(obs.text, "hi");
        let obs = utc_now().observe(&args(json!({})), None, 100).await;
        assert_eq!(obs.text.len(), 20, "{}", obs.text);
        assert!(obs.text.ends_with('Z'));
        for t in builtin() {
            assert!(t.check_schema().is_ok());
        }
    }
}
