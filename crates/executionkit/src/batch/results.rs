//! Reading a batch's results file, line by line, into one report per entry; settling the
//! ledger; failing the batch when any entry did not succeed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::client::BatchProvider;
use super::state::{BatchRun, file_error};
use crate::engine::BudgetLedger;
use crate::error::{Error, ErrorKind, Result};
use crate::provider::parse::parse_completion_value;
use crate::provider::{Usage, parse_anthropic_message};
use crate::usage::TokenUsage;

/// How one entry of a batch ended.
///
/// ```
/// use executionkit::batch::EntryStatus;
/// assert_eq!(EntryStatus::Expired.as_str(), "expired");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    /// A 200 reply (or Anthropic's `succeeded`) with a parsable completion.
    Succeeded,
    /// The provider answered the entry with an error (a non-200 status or an `error`).
    Errored,
    /// The completion window ended before it ran.
    Expired,
    /// The batch was cancelled before it ran.
    Cancelled,
    /// The whole batch failed (e.g. its input file was refused).
    Failed,
    /// The results do not mention it.
    Missing,
    /// The results mention it more than once.
    Duplicate,
    /// Its result line could not be read.
    Malformed,
}

impl EntryStatus {
    /// The status as a snake-case string (as in error metadata).
    ///
    /// ```
    /// assert_eq!(executionkit::batch::EntryStatus::Succeeded.as_str(), "succeeded");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Errored => "errored",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
            Self::Missing => "missing",
            Self::Duplicate => "duplicate",
            Self::Malformed => "malformed",
        }
    }
}

/// One entry's outcome: its status, the tokens it used and, when it succeeded, its text.
///
/// ```
/// use executionkit::TokenUsage;
/// use executionkit::batch::{EntryReport, EntryStatus};
/// let r = EntryReport { custom_id: "a".into(), status: EntryStatus::Missing,
///     usage: TokenUsage::default(), text: None, detail: None };
/// assert_eq!(r.to_json()["status"], "missing");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EntryReport {
    /// The entry's id.
    pub custom_id: String,
    /// How it ended.
    pub status: EntryStatus,
    /// The tokens its result reports (`llm_calls` 1: every entry counts as a call).
    pub usage: TokenUsage,
    /// The reply's text, for a succeeded entry.
    pub text: Option<String>,
    /// The provider's error code or message, for an entry that did not succeed.
    pub detail: Option<String>,
}

impl EntryReport {
    /// `{"custom_id", "status", "input_tokens", "output_tokens", "detail"?}`.
    ///
    /// ```
    /// use executionkit::TokenUsage;
    /// use executionkit::batch::{EntryReport, EntryStatus};
    /// let r = EntryReport { custom_id: "a".into(), status: EntryStatus::Succeeded,
    ///     usage: TokenUsage::new(3, 2, 1), text: Some("hi".into()), detail: None };
    /// assert_eq!(r.to_json()["output_tokens"], 2);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "custom_id": self.custom_id,
            "status": self.status.as_str(),
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
        });
        if let (Some(d), Value::Object(m)) = (&self.detail, &mut v) {
            m.insert("detail".into(), Value::String(d.clone()));
        }
        v
    }
}

/// A batch whose every entry succeeded.
///
/// ```
/// use executionkit::TokenUsage;
/// use executionkit::batch::{BatchResults, EntryReport, EntryStatus};
/// let r = BatchResults { batch_id: "b".into(), cost: TokenUsage::new(1, 1, 1), usd: None,
///     entries: vec![EntryReport { custom_id: "a".into(), status: EntryStatus::Succeeded,
///         usage: TokenUsage::new(1, 1, 1), text: Some("x".into()), detail: None }] };
/// assert_eq!(r.texts(), vec!["x"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResults {
    /// The provider's batch id.
    pub batch_id: String,
    /// One report per entry, in submission order.
    pub entries: Vec<EntryReport>,
    /// The batch's total spend (`llm_calls` = number of entries).
    pub cost: TokenUsage,
    /// Its cost in USD, when the budget has prices for the model.
    pub usd: Option<f64>,
}

impl BatchResults {
    /// The texts, in submission order.
    ///
    /// ```
    /// # use executionkit::{TokenUsage, batch::BatchResults};
    /// let r = BatchResults { batch_id: "b".into(), entries: vec![], cost: TokenUsage::default(), usd: None };
    /// assert!(r.texts().is_empty());
    /// ```
    #[must_use]
    pub fn texts(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e.text.as_deref().unwrap_or(""))
            .collect()
    }
}

/// What one result line says.
struct Line {
    status: EntryStatus,
    usage: Usage,
    text: Option<String>,
    detail: Option<String>,
}

/// Reads one OpenAI result line (`{custom_id, response: {status_code, body}, error}`).
fn read_openai_line(v: Value) -> (Option<String>, Line) {
    let Value::Object(mut obj) = v else {
        return (None, malformed("the line is not a JSON object"));
    };
    let id = match obj.remove("custom_id") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    if let Some(err) = obj.remove("error").filter(|e| !e.is_null()) {
        let code = err
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let status = match code.as_str() {
            "batch_expired" => EntryStatus::Expired,
            "batch_cancelled" => EntryStatus::Cancelled,
            _ => EntryStatus::Errored,
        };
        let detail = if code.is_empty() {
            err.get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        } else {
            Some(code)
        };
        return (
            id,
            Line {
                status,
                usage: Usage::default(),
                text: None,
                detail: detail
                    .map(|d| crate::text::prefix(&crate::redact::redact(&d), 200).to_owned()),
            },
        );
    }
    let Some(Value::Object(mut response)) = obj.remove("response") else {
        return (id, malformed("the line has no response"));
    };
    let status_code = response.get("status_code").and_then(Value::as_u64);
    let body = response.remove("body").unwrap_or(Value::Null);
    if status_code != Some(200) {
        let usage = parse_completion_value(body)
            .map(|r| r.usage)
            .unwrap_or_default();
        return (
            id,
            Line {
                status: EntryStatus::Errored,
                usage,
                text: None,
                detail: Some(format!(
                    "HTTP {}",
                    status_code.map_or_else(|| "?".to_owned(), |s| s.to_string())
                )),
            },
        );
    }
    match parse_completion_value(body) {
        Ok(r) => {
            let text = r.content().to_owned();
            (
                id,
                Line {
                    status: EntryStatus::Succeeded,
                    usage: r.usage,
                    text: Some(text),
                    detail: None,
                },
            )
        }
        Err(e) => (id, malformed(e.message())),
    }
}

/// Reads one Anthropic result line (`{custom_id, result: {type, message | error}}`).
fn read_anthropic_line(v: Value) -> (Option<String>, Line) {
    let Value::Object(mut obj) = v else {
        return (None, malformed("the line is not a JSON object"));
    };
    let id = match obj.remove("custom_id") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let Some(Value::Object(mut result)) = obj.remove("result") else {
        return (id, malformed("malformed_result"));
    };
    let kind = result.get("type").and_then(Value::as_str).unwrap_or("");
    let status = match kind {
        "succeeded" => EntryStatus::Succeeded,
        "errored" => EntryStatus::Errored,
        "canceled" => EntryStatus::Cancelled,
        "expired" => EntryStatus::Expired,
        _ => return (id, malformed("unknown result type")),
    };
    if status != EntryStatus::Succeeded {
        let detail = result
            .get("error")
            .and_then(|e| e.get("error").or(Some(e)))
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .map(|d| crate::text::prefix(&crate::redact::redact(d), 200).to_owned());
        return (
            id,
            Line {
                status,
                usage: Usage::default(),
                text: None,
                detail,
            },
        );
    }
    let Some(message @ Value::Object(_)) = result.remove("message") else {
        return (id, malformed("malformed_message"));
    };
    let bytes = serde_json::to_vec(&message).unwrap_or_default();
    match parse_anthropic_message(&bytes) {
        Ok(r) => {
            let text = r.content().to_owned();
            (
                id,
                Line {
                    status: EntryStatus::Succeeded,
                    usage: r.usage,
                    text: Some(text),
                    detail: None,
                },
            )
        }
        Err(e) => (id, malformed(e.message())),
    }
}

fn malformed(why: &str) -> Line {
    Line {
        status: EntryStatus::Malformed,
        usage: Usage::default(),
        text: None,
        detail: Some(crate::text::prefix(why, 200).to_owned()),
    }
}

/// Reads `path` line by line (each at most `max_line` bytes), settles the ledger and returns
/// the results, or the `provider` error listing every entry when any did not succeed.
pub(crate) fn collect_file(
    run: BatchRun,
    path: &Path,
    max_line: usize,
    provider: BatchProvider,
    ledger: &Arc<BudgetLedger>,
) -> Result<BatchResults> {
    let BatchRun {
        state,
        reservations: mut held,
        ..
    } = run;
    let index: HashMap<&str, usize> = state
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.custom_id.as_str(), i))
        .collect();
    let mut found: Vec<Option<Line>> = (0..state.entries.len()).map(|_| None).collect();
    let mut stray = Vec::new();
    if state.status != "failed" {
        let file = std::fs::File::open(path).map_err(|e| file_error(path, &e))?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut number = 0usize;
        loop {
            buf.clear();
            let limit = u64::try_from(max_line)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            let n = (&mut reader)
                .take(limit)
                .read_until(b'\n', &mut buf)
                .map_err(|e| file_error(path, &e))?;
            if n == 0 {
                break;
            }
            number += 1;
            if buf.len() > max_line && buf.last() != Some(&b'\n') {
                return Err(Error::new(
                    ErrorKind::Provider,
                    format!("batch results line {number} is longer than {max_line} bytes"),
                ));
            }
            if buf.trim_ascii().is_empty() {
                continue;
            }
            let (id, line) = match serde_json::from_slice::<Value>(&buf) {
                Ok(v) => match provider {
                    BatchProvider::OpenAi => read_openai_line(v),
                    BatchProvider::Anthropic => read_anthropic_line(v),
                },
                Err(_) => (None, malformed("not JSON")),
            };
            let slot = id.as_deref().and_then(|id| index.get(id).copied());
            match slot {
                Some(i) => match &mut found[i] {
                    Some(prev) => {
                        // Spend is the truth: a duplicate's tokens count too.
                        prev.usage.input_tokens += line.usage.input_tokens;
                        prev.usage.output_tokens += line.usage.output_tokens;
                        prev.status = EntryStatus::Duplicate;
                        prev.text = None;
                        prev.detail = Some("the results hold it more than once".into());
                    }
                    None => found[i] = Some(line),
                },
                None => stray.push(number),
            }
        }
    }
    let failed_batch = state.status == "failed";
    let rates = ledger.budget().rates_for(&state.model);
    let mut entries = Vec::with_capacity(state.entries.len());
    let mut cost = TokenUsage::default();
    let mut usd = 0.0;
    for (plan, line) in state.entries.iter().zip(found) {
        let line = line.unwrap_or_else(|| Line {
            status: if failed_batch {
                EntryStatus::Failed
            } else {
                EntryStatus::Missing
            },
            usage: Usage::default(),
            text: None,
            detail: None,
        });
        let mut usage = TokenUsage::from(line.usage);
        usage.llm_calls = 1;
        match held.remove(&plan.custom_id) {
            Some(r) if line.status == EntryStatus::Succeeded || line.usage != Usage::default() => {
                usd += r.settle(line.usage);
            }
            Some(r) => drop(r), // returns its tokens; the call still counts
            None => {
                let u = rates.map(|r| r.usd(&usage));
                usd += u.unwrap_or(0.0);
                ledger.charge(usage, u);
            }
        }
        cost += usage;
        entries.push(EntryReport {
            custom_id: plan.custom_id.clone(),
            status: line.status,
            usage,
            text: line.text,
            detail: line.detail,
        });
    }
    let usd = rates.map(|_| usd);
    let bad: Vec<&EntryReport> = entries
        .iter()
        .filter(|e| e.status != EntryStatus::Succeeded)
        .collect();
    if bad.is_empty() && stray.is_empty() {
        return Ok(BatchResults {
            batch_id: state.batch_id,
            entries,
            cost,
            usd,
        });
    }
    let mut names: Vec<String> = bad
        .iter()
        .take(20)
        .map(|e| format!("{} ({})", e.custom_id, e.status.as_str()))
        .collect();
    if bad.len() > 20 {
        names.push(format!("and {} more", bad.len() - 20));
    }
    let mut msg = format!(
        "batch {} failed: {} of {} entries did not succeed",
        state.batch_id,
        bad.len(),
        entries.len()
    );
    if !names.is_empty() {
        msg.push_str(": ");
        msg.push_str(&names.join(", "));
    }
    if !stray.is_empty() {
        msg.push_str(&format!(
            "; {} result line(s) name no entry of the batch (first: line {})",
            stray.len(),
            stray[0]
        ));
    }
    Err(Error::new(ErrorKind::Provider, msg)
        .with_cost(cost)
        .with_usd(usd)
        .with_metadata("batch_id", state.batch_id.clone())
        .with_metadata("batch_status", state.status.clone())
        .with_metadata(
            "entries",
            Value::Array(entries.iter().map(EntryReport::to_json).collect()),
        ))
}
