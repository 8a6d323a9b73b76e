//! `ek eval FILE.jsonl --step SPEC …`: runs the pipe of `--step`s (the `ek pipe` grammar) on
//! each case's prompt, in file order, under one budget ([`run_eval_suite`]), and checks the
//! value: `expected` (trimmed, case-insensitive equality), `contains` (case-insensitive
//! substring) or neither (the case passes when the pipe returns a value). The file is read and
//! checked whole before any request: every bad line exits 2, naming the line. Exit 1 when the
//! accuracy is below `--min-accuracy` (default 1.0: every case must pass).

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::sync::Mutex;

use executionkit::eval::{EvalCase, EvalReport, run_eval_suite};
use executionkit::{Error, LlmProvider, PatternResult, Pipe, RunContext, TokenUsage};
use serde_json::{Map, Value, json};

use crate::cli::EvalArgs;
use crate::output;
use crate::secrets::Secrets;

/// What a case's value is checked against.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Equal after trimming, ignoring case.
    Expected(String),
    /// Contains this, ignoring case.
    Contains(String),
    /// Any value passes.
    Run,
}

impl Check {
    /// `None` when `value` passes, else the reason.
    fn verdict(&self, value: &str) -> Option<String> {
        match self {
            Self::Expected(e) if value.trim().to_lowercase() != e.trim().to_lowercase() => {
                Some(format!("expected {e:?}"))
            }
            Self::Contains(c) if !value.to_lowercase().contains(&c.to_lowercase()) => {
                Some(format!("does not contain {c:?}"))
            }
            _ => None,
        }
    }
}

/// One case of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Its `id` as given (a string or a number), or its 1-based line number.
    pub id: Value,
    /// The prompt.
    pub prompt: String,
    /// The check.
    pub check: Check,
}

/// The cases and the pipe that runs each, checked.
#[derive(Debug)]
pub struct Eval {
    pipe: Pipe,
    cases: Vec<Case>,
    min_accuracy: f64,
}

/// A finished suite: each case's id, value or error, and the report.
#[derive(Debug)]
pub struct Outcome {
    ids: Vec<Value>,
    values: Vec<Option<String>>,
    report: EvalReport,
}

/// Reads `a.file` and checks `--min-accuracy`.
///
/// # Errors
/// `invalid_argument` for a file that cannot be read, any bad line, no case, or a
/// `--min-accuracy` outside [0, 1].
pub fn prepare(a: &EvalArgs, pipe: Pipe) -> Result<Eval, Error> {
    if !(0.0..=1.0).contains(&a.min_accuracy) {
        return Err(Error::invalid_argument(
            "min_accuracy",
            format!(
                "--min-accuracy must be a number in [0, 1]; got {}",
                a.min_accuracy
            ),
        ));
    }
    let name = if a.file == "-" { "stdin" } else { &a.file };
    let cases = parse(name, &read(&a.file, name)?)?;
    Ok(Eval {
        pipe,
        cases,
        min_accuracy: a.min_accuracy,
    })
}

impl Eval {
    /// Runs every case, in order, under `ctx`.
    ///
    /// # Errors
    /// An exhausted budget or a cancellation, with what every case spent.
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        ctx: &RunContext,
    ) -> Result<Outcome, Error> {
        let values: Vec<Mutex<Option<String>>> =
            self.cases.iter().map(|_| Mutex::new(None)).collect();
        let cases: Vec<EvalCase<'_, String>> = self
            .cases
            .iter()
            .zip(&values)
            .map(|(c, slot)| {
                EvalCase::new(
                    c.id.to_string(),
                    move |ctx: RunContext| async move {
                        self.pipe
                            .run(provider, &c.prompt, &ctx)
                            .await
                            .map(|r| r.value)
                    },
                    move |v: &String| {
                        if let Ok(mut s) = slot.lock() {
                            *s = Some(v.clone());
                        }
                        c.check.verdict(v)
                    },
                )
            })
            .collect();
        let report = run_eval_suite(cases, ctx, Some(self.min_accuracy)).await?;
        Ok(Outcome {
            ids: self.cases.iter().map(|c| c.id.clone()).collect(),
            values: values
                .into_iter()
                .map(|m| {
                    m.into_inner()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                })
                .collect(),
            report,
        })
    }
}

fn cost_json(cost: TokenUsage, usd: Option<f64>) -> Value {
    let mut r = PatternResult::new(()).with_cost(cost);
    r.usd = usd;
    r.to_json()["cost"].take()
}

/// The `--json` object: `{"report", "cost", "results"}`.
fn to_json(o: &Outcome) -> Value {
    let r = &o.report;
    let results: Vec<Value> = o
        .ids
        .iter()
        .zip(&o.values)
        .zip(r.results())
        .map(|((id, value), res)| {
            let mut m = Map::new();
            m.insert("id".to_owned(), id.clone());
            m.insert("passed".to_owned(), res.passed.into());
            match (&res.error, value) {
                (Some(e), _) => {
                    m.insert("error".to_owned(), e.to_json());
                }
                (None, Some(v)) => {
                    m.insert("value".to_owned(), v.clone().into());
                }
                (None, None) => {}
            }
            m.insert("reason".to_owned(), res.reason.clone().into());
            m.insert("cost".to_owned(), cost_json(res.cost, None));
            Value::Object(m)
        })
        .collect();
    json!({
        "report": {
            "cases": r.total(),
            "passed": r.passed_count(),
            "failed": r.failed_count(),
            "accuracy": r.accuracy(),
            "min_accuracy": r.min_accuracy(),
            "passed_threshold": r.accuracy_passed(),
        },
        "cost": cost_json(r.cost(), r.usd()),
        "results": results,
    })
}

/// At most `n` characters of `s` on one line.
fn cell(s: &str, n: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > n {
        let mut t: String = one.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        one
    }
}

/// The table: one row per case (id, PASS/FAIL, the value or the reason), then the summary and
/// the cost.
fn table(o: &Outcome) -> String {
    let r = &o.report;
    let ids: Vec<String> = o
        .ids
        .iter()
        .map(|id| id.as_str().map_or_else(|| id.to_string(), str::to_owned))
        .map(|id| cell(&id, 24))
        .collect();
    let w = ids
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(2)
        .max(2);
    let mut out = String::new();
    let _ = writeln!(out, "{:<w$}  {:<4}  DETAIL", "ID", "OK");
    for ((id, value), res) in ids.iter().zip(&o.values).zip(r.results()) {
        let detail = match (res.passed, value) {
            (true, Some(v)) => cell(v, 60),
            (false, Some(v)) => format!("{}; got {}", res.reason, cell(v, 40)),
            (_, None) => cell(&res.reason, 60),
        };
        let ok = if res.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "{id:<w$}  {ok:<4}  {detail}");
    }
    let _ = writeln!(
        out,
        "{} (min accuracy {:.1}%: {})",
        r.summary(),
        r.min_accuracy().unwrap_or(1.0) * 100.0,
        if r.accuracy_passed() {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = writeln!(out, "{}", r.cost());
    if let Some(usd) = r.usd() {
        let _ = writeln!(out, "usd={usd:.6}");
    }
    out
}

/// Prints the outcome (the JSON object, or the table), secrets redacted; returns the exit code:
/// 0 when the accuracy reaches `--min-accuracy`, else 1.
pub fn print(o: &Outcome, json: bool, secrets: &Secrets) -> u8 {
    if json {
        output::print_json(to_json(o), secrets);
    } else {
        let t = table(o);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(secrets.text(&t).as_bytes());
        let _ = out.flush();
    }
    u8::from(!o.report.accuracy_passed())
}

/// The file (`-`: stdin), as UTF-8 text.
fn read(path: &str, name: &str) -> Result<String, Error> {
    let mut bytes = Vec::new();
    let read = if path == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|e| Error::invalid_argument("file", format!("cannot read {name}: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::invalid_argument("file", format!("{name} is not UTF-8 text")))
}

/// The cases of an eval file: one JSON object per line with a non-empty string `prompt`, an
/// optional `id` (a string or a number; default: the 1-based line number; unique) and at most
/// one of `expected` and `contains` (strings); other keys are ignored; blank lines are skipped
/// (they still count for line numbers).
///
/// # Errors
/// `invalid_argument` naming `file`: `NAME, line N: …` for the first bad line, or no case.
fn parse(name: &str, text: &str) -> Result<Vec<Case>, Error> {
    let bad = |line: usize, what: String| {
        Error::invalid_argument("file", format!("{name}, line {line}: {what}"))
    };
    let mut cases = Vec::new();
    for l in crate::inputs::prompt_lines(text, "{\"prompt\": \"…\", \"contains\": \"…\"}", &bad)?
    {
        let (line, id, prompt, mut obj) = (l.line, l.id, l.prompt, l.rest);
        let text_of = |key: &str, v: Option<Value>| match v {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
            Some(Value::String(_)) => Err(bad(line, format!("\"{key}\" is empty"))),
            Some(_) => Err(bad(line, format!("\"{key}\" must be a string"))),
        };
        let expected = text_of("expected", obj.remove("expected"))?;
        let contains = text_of("contains", obj.remove("contains"))?;
        let check = match (expected, contains) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    line,
                    "give \"expected\" or \"contains\", not both".to_owned(),
                ));
            }
            (Some(e), None) => Check::Expected(e),
            (None, Some(c)) => Check::Contains(c),
            (None, None) => Check::Run,
        };
        cases.push(Case { id, prompt, check });
    }
    if cases.is_empty() {
        return Err(Error::invalid_argument(
            "file",
            format!("{name} has no case (one JSON object with a \"prompt\" per line)"),
        ));
    }
    Ok(cases)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("e.jsonl", text).unwrap_err().message().to_owned()
    }

    #[test]
    fn lines_parse_into_cases() {
        let got = parse(
            "e.jsonl",
            "{\"prompt\": \"a\", \"expected\": \"A\"}\n\n{\"prompt\": \"b\", \"id\": \"x\", \"contains\": \"b\"}\n{\"prompt\": \"c\", \"id\": 7, \"note\": 1}\n",
        )
        .unwrap();
        assert_eq!(got[0].id, json!(1));
        assert_eq!(got[0].check, Check::Expected("A".into()));
        assert_eq!(got[1].id, json!("x"));
        assert_eq!(got[1].check, Check::Contains("b".into()));
        assert_eq!(got[2].check, Check::Run);
    }

    #[test]
    fn every_bad_line_is_named() {
        assert_eq!(
            err("{\"prompt\": \"a\"}\nnope\n"),
            "e.jsonl, line 2: not valid JSON (expected ident at line 1 column 2)"
        );
        assert_eq!(
            err("{\"prompt\": \"a\", \"expected\": \"x\", \"contains\": \"y\"}"),
            "e.jsonl, line 1: give \"expected\" or \"contains\", not both"
        );
        assert_eq!(
            err("{\"prompt\": \"a\", \"expected\": 3}"),
            "e.jsonl, line 1: \"expected\" must be a string"
        );
        assert_eq!(err("{\"id\": 1}"), "e.jsonl, line 1: no \"prompt\"");
        assert_eq!(
            err("{\"prompt\": \"a\", \"id\": \"k\"}\n{\"prompt\": \"b\", \"id\": \"k\"}"),
            "e.jsonl, line 2: id \"k\" was already used on line 1"
        );
        assert!(err("\n").contains("has no case"));
    }

    #[test]
    fn checks_normalise_text() {
        assert_eq!(Check::Expected("Paris".into()).verdict("  paris\n"), None);
        assert!(Check::Expected("Paris".into()).verdict("Paris.").is_some());
        assert_eq!(
            Check::Contains("PARIS".into()).verdict("The capital is Paris."),
            None
        );
        assert_eq!(
            Check::Contains("Lyon".into()).verdict("Paris"),
            Some("does not contain \"Lyon\"".into())
        );
        assert_eq!(Check::Run.verdict(""), None);
    }
}
