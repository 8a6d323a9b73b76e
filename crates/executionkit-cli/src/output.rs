//! What `ek` prints: one JSON object with `--json`, else the value, the cost and the metadata.

use std::io::Write;

use executionkit::{Error, PatternResult};
use serde::Serialize;
use serde_json::Value;

/// Which command produced a result (the text layout differs for `pipe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A single pattern: metadata as one JSON line.
    Single,
    /// A pipe: `step_count`, then one `step {i}: {…}` line per step, as the seed prints them.
    Pipe,
}

/// The `--json` failure object: `{"error": {kind, message, cost, metadata}}`.
pub fn error_json(e: &Error) -> Value {
    serde_json::json!({ "error": e.to_json() })
}

/// Writes one JSON object and a newline on stdout.
pub fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Prints a success: JSON, or the value, the cost line and the metadata. A text value prints
/// as is, a JSON value (`ek structured`) as compact JSON on one line.
pub fn print_success<T: Serialize + std::fmt::Display>(
    result: &PatternResult<T>,
    json: bool,
    shape: Shape,
) {
    if json {
        print_json(&result.to_json());
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", result.value);
    let _ = writeln!(out, "{}", result.cost);
    if let Some(usd) = result.usd {
        let _ = writeln!(out, "usd={usd:.6}");
    }
    match shape {
        Shape::Single => {
            let _ = writeln!(out, "{}", Value::Object(result.metadata.clone()));
        }
        Shape::Pipe => {
            if let Some(n) = result.metadata.get("step_count") {
                let _ = writeln!(out, "{n}");
            }
            if let Some(Value::Array(steps)) = result.metadata.get("step_metadata") {
                for (i, meta) in steps.iter().enumerate() {
                    let _ = writeln!(out, "step {i}: {meta}");
                }
            }
        }
    }
    let _ = out.flush();
}

/// Prints a failure: the JSON object on stdout, or `ek: KIND: message` and the spend on stderr.
pub fn print_error(e: &Error, json: bool) {
    if json {
        print_json(&error_json(e));
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "ek: {}: {}", e.kind(), e.message());
    if !e.cost().is_zero() || e.usd().is_some() {
        let _ = writeln!(err, "spent: {}", e.cost());
        if let Some(usd) = e.usd() {
            let _ = writeln!(err, "usd={usd:.6}");
        }
    }
    if let Some(Value::Array(costs)) = e.metadata().get("step_costs") {
        for (i, c) in costs.iter().enumerate() {
            let _ = writeln!(err, "step {i} cost: {c}");
        }
    }
}
