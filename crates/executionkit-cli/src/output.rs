//! What `ek` prints: one JSON object with `--json`, else the value, the cost and the metadata.
//! Every byte goes through [`Secrets`] first: a key a model or server echoed (into the value,
//! an error or the metadata) is printed as `[REDACTED]`.

use std::fmt::Write as _;
use std::io::Write;

use executionkit::{Error, PatternResult};
use serde::Serialize;
use serde_json::Value;

use crate::secrets::Secrets;

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

/// Writes one JSON object and a newline on stdout, secrets redacted.
pub fn print_json(mut v: Value, secrets: &Secrets) {
    secrets.json(&mut v);
    write_redacted(&mut std::io::stdout().lock(), &format!("{v}\n"), secrets);
}

/// Writes `text` with every secret replaced (a second pass over what `json` already redacted:
/// it costs one scan and covers whatever a caller formatted by hand).
fn write_redacted(out: &mut dyn Write, text: &str, secrets: &Secrets) {
    let _ = out.write_all(secrets.text(text).as_bytes());
    let _ = out.flush();
}

/// Writes one line on stderr, secrets redacted.
pub fn eprint_line(line: &str, secrets: &Secrets) {
    write_redacted(&mut std::io::stderr().lock(), &format!("{line}\n"), secrets);
}

/// Prints a success: JSON, or the value, the cost line and the metadata. A text value prints
/// as is (but for secrets), a JSON value (`ek structured`) as compact JSON on one line.
pub fn print_success<T: Serialize + std::fmt::Display>(
    result: &PatternResult<T>,
    json: bool,
    shape: Shape,
    secrets: &Secrets,
) {
    if json {
        print_json(result.to_json(), secrets);
        return;
    }
    let mut out = String::new();
    let _ = writeln!(out, "{}", result.value);
    rest_lines(result, shape, secrets, &mut out);
    write_redacted(&mut std::io::stdout().lock(), &out, secrets);
}

/// Prints a success whose value was printed as it was generated (`--stream`): the cost line
/// and the metadata, as [`print_success`] prints them after the value.
pub fn print_after_stream<T>(result: &PatternResult<T>, shape: Shape, secrets: &Secrets) {
    let mut out = String::new();
    rest_lines(result, shape, secrets, &mut out);
    write_redacted(&mut std::io::stdout().lock(), &out, secrets);
}

/// The lines after the value: the cost, the usd and the metadata.
fn rest_lines<T>(result: &PatternResult<T>, shape: Shape, secrets: &Secrets, out: &mut String) {
    let _ = writeln!(out, "{}", result.cost);
    if let Some(usd) = result.usd {
        let _ = writeln!(out, "usd={usd:.6}");
    }
    let mut metadata = Value::Object(result.metadata.clone());
    secrets.json(&mut metadata);
    match shape {
        Shape::Single => {
            let _ = writeln!(out, "{metadata}");
        }
        Shape::Pipe => {
            if let Some(n) = metadata.get("step_count") {
                let _ = writeln!(out, "{n}");
            }
            if let Some(Value::Array(steps)) = metadata.get("step_metadata") {
                for (i, meta) in steps.iter().enumerate() {
                    let _ = writeln!(out, "step {i}: {meta}");
                }
            }
        }
    }
}

/// Prints a failure: the JSON object on stdout, or `ek: KIND: message` and the spend on stderr.
pub fn print_error(e: &Error, json: bool, secrets: &Secrets) {
    if json {
        print_json(error_json(e), secrets);
        return;
    }
    let mut out = String::new();
    let _ = writeln!(out, "ek: {}: {}", e.kind(), e.message());
    if !e.cost().is_zero() || e.usd().is_some() {
        let _ = writeln!(out, "spent: {}", e.cost());
        if let Some(usd) = e.usd() {
            let _ = writeln!(out, "usd={usd:.6}");
        }
    }
    if let Some(Value::Array(costs)) = e.metadata().get("step_costs") {
        for (i, c) in costs.iter().enumerate() {
            let _ = writeln!(out, "step {i} cost: {c}");
        }
    }
    write_redacted(&mut std::io::stderr().lock(), &out, secrets);
}
