//! `ek consensus --inputs FILE.jsonl [--total-samples N]`: consensus over many questions under
//! one total sample budget ([`ConsensusSet`]), printed as JSON Lines: one line per question in
//! input order (the `--json` success or error object plus `"id"`), then a `{"summary": …}`
//! line. The file is read and checked whole before any request: every bad line exits 2,
//! naming the line.

use std::io::Read;

use executionkit::{
    Consensus, ConsensusSet, ConsensusSetResult, Error, LlmProvider, PatternResult, RunContext,
    StopRule,
};
use serde_json::{Value, json};

use crate::cli::ConsensusArgs;
use crate::output;
use crate::secrets::Secrets;

/// One question of the inputs file.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Its `id` as given (a string or a number), or its 1-based line number.
    pub id: Value,
    /// The prompt.
    pub prompt: String,
}

/// The questions and the set that runs them, checked.
#[derive(Debug)]
pub struct Many {
    set: ConsensusSet,
    inputs: Vec<Input>,
}

/// A finished set: each question's id and outcome, and the totals.
#[derive(Debug)]
pub struct Outcome {
    ids: Vec<Value>,
    result: ConsensusSetResult,
}

/// The `--inputs` file, if any.
///
/// # Errors
/// `invalid_argument` for `--total-samples` without `--inputs`. (clap's `requires` cannot say
/// it: PROMPT, which conflicts with `--inputs`, would excuse the missing flag.)
pub fn inputs(a: &ConsensusArgs) -> Result<Option<&str>, Error> {
    match (&a.inputs, a.total_samples) {
        (None, Some(_)) => Err(Error::invalid_argument(
            "total_samples",
            "--total-samples needs --inputs FILE.jsonl (one total for many questions)",
        )),
        (inputs, _) => Ok(inputs.as_deref()),
    }
}

/// Reads `path` and builds the set from the command's consensus (`c`, built from the flags):
/// `--samples` is the cap per question, `--early-stop` the rule that settles a question
/// (`none`: no question settles), `--total-samples` the total (default: `--samples` × the
/// number of questions).
///
/// # Errors
/// `invalid_argument` for a file that cannot be read, any bad line, or settings the set refuses.
pub fn prepare(a: &ConsensusArgs, path: &str, c: Consensus) -> Result<Many, Error> {
    let inputs = parse(&shown(path), &read(path)?)?;
    // Already checked when `c` was built; the set takes the rule, the consensus none.
    let rule: StopRule = a.early_stop.parse()?;
    let mut set = ConsensusSet::new()
        .consensus(c.early_stop(StopRule::Fixed))
        .stop_rule(rule);
    if let Some(n) = a.total_samples {
        set = set.total_samples(n);
    }
    set.check(inputs.len()).map_err(|e| {
        let flag = match e.metadata().get("argument").and_then(Value::as_str) {
            Some("total_samples") => "--total-samples",
            Some("strategy") => "--strategy",
            _ => "--inputs",
        };
        Error::invalid_argument("inputs", format!("{flag}: {}", e.message()))
    })?;
    Ok(Many { set, inputs })
}

impl Many {
    /// Runs every question under the one total.
    ///
    /// # Errors
    /// Only what the set refuses before any call (already checked by [`prepare`]).
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        ctx: &RunContext,
    ) -> Result<Outcome, Error> {
        let prompts: Vec<&str> = self.inputs.iter().map(|i| i.prompt.as_str()).collect();
        let result = self.set.run(provider, &prompts, ctx).await?;
        Ok(Outcome {
            ids: self.inputs.iter().map(|i| i.id.clone()).collect(),
            result,
        })
    }
}

/// Prints one JSON line per question and the summary line, secrets redacted; returns the exit
/// code: 0 when every question succeeded, else 1.
pub fn print(o: &Outcome, secrets: &Secrets) -> u8 {
    for line in lines(o) {
        output::print_json(line, secrets);
    }
    if o.result.failed() == 0 { 0 } else { 1 }
}

/// The JSON lines of an outcome: each question's, then the summary.
fn lines(o: &Outcome) -> Vec<Value> {
    let r = &o.result;
    let mut out: Vec<Value> = o
        .ids
        .iter()
        .zip(&r.results)
        .map(|(id, res)| {
            let mut v = match res {
                Ok(p) => p.to_json(),
                Err(e) => output::error_json(e),
            };
            if let Value::Object(m) = &mut v {
                m.insert("id".to_owned(), id.clone());
            }
            v
        })
        .collect();
    let mut total = PatternResult::new(()).with_cost(r.cost);
    total.usd = r.usd;
    out.push(json!({"summary": {
        "questions": r.results.len(),
        "failed": r.failed(),
        "cost": total.to_json()["cost"],
        "samples_used": r.samples_used,
        "total_samples": r.total_samples,
        "budget_exhausted": r.budget_exhausted,
    }}));
    out
}

fn shown(path: &str) -> String {
    if path == "-" {
        "stdin".to_owned()
    } else {
        path.to_owned()
    }
}

/// The file (`-`: stdin), as UTF-8 text.
fn read(path: &str) -> Result<String, Error> {
    let mut bytes = Vec::new();
    let read = if path == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|e| {
        Error::invalid_argument(
            "inputs",
            format!("cannot read --inputs {}: {e}", shown(path)),
        )
    })?;
    String::from_utf8(bytes).map_err(|_| {
        Error::invalid_argument(
            "inputs",
            format!("--inputs {} is not UTF-8 text", shown(path)),
        )
    })
}

/// The questions of an inputs file: one JSON object per line with a non-empty string `prompt`
/// and an optional `id` (a string or a number; default: the 1-based line number), unique;
/// other keys are ignored; blank lines are skipped (they still count for line numbers).
///
/// # Errors
/// `invalid_argument` naming `inputs`: `--inputs NAME, line N: …` for the first bad line, or
/// no question at all.
fn parse(name: &str, text: &str) -> Result<Vec<Input>, Error> {
    let bad = |line: usize, what: String| {
        Error::invalid_argument("inputs", format!("--inputs {name}, line {line}: {what}"))
    };
    let lines = crate::inputs::prompt_lines(text, "{\"prompt\": \"…\", \"id\": \"…\"}", &bad)?;
    let mut inputs = Vec::new();
    for crate::inputs::PromptLine { id, prompt, .. } in lines {
        inputs.push(Input { id, prompt });
    }
    if inputs.is_empty() {
        return Err(Error::invalid_argument(
            "inputs",
            format!("--inputs {name} has no question (one JSON object with a \"prompt\" per line)"),
        ));
    }
    Ok(inputs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("q.jsonl", text).unwrap_err().message().to_owned()
    }

    #[test]
    fn ids_default_to_the_line_number_and_blank_lines_are_skipped() {
        let got = parse(
            "q.jsonl",
            "{\"prompt\": \"a\"}\n\n  \n{\"prompt\": \"b\", \"id\": \"x\"}\r\n{\"prompt\": \"c\", \"id\": 7, \"answer\": 1}\n",
        )
        .unwrap();
        let ids: Vec<Value> = got.iter().map(|i| i.id.clone()).collect();
        assert_eq!(ids, [json!(1), json!("x"), json!(7)]);
        assert_eq!(got[2].prompt, "c");
    }

    #[test]
    fn every_bad_line_is_named() {
        assert_eq!(
            err("{\"prompt\": \"a\"}\nnope\n"),
            "--inputs q.jsonl, line 2: not valid JSON (expected ident at line 1 column 2)"
        );
        assert!(err("[1]").starts_with("--inputs q.jsonl, line 1: expected a JSON object"));
        assert_eq!(
            err("{\"id\": 1}"),
            "--inputs q.jsonl, line 1: no \"prompt\""
        );
        assert_eq!(
            err("{\"prompt\": \" \"}"),
            "--inputs q.jsonl, line 1: \"prompt\" is empty"
        );
        assert_eq!(
            err("{\"prompt\": 3}"),
            "--inputs q.jsonl, line 1: \"prompt\" must be a string"
        );
        assert_eq!(
            err("{\"prompt\": \"a\", \"id\": [1]}"),
            "--inputs q.jsonl, line 1: \"id\" must be a string or a number"
        );
        assert_eq!(
            err("{\"prompt\": \"a\", \"id\": \"k\"}\n{\"prompt\": \"b\", \"id\": \"k\"}"),
            "--inputs q.jsonl, line 2: id \"k\" was already used on line 1"
        );
        // A default id (the line number) collides with an explicit one.
        assert_eq!(
            err("{\"prompt\": \"a\", \"id\": 2}\n{\"prompt\": \"b\"}"),
            "--inputs q.jsonl, line 2: id 2 was already used on line 1"
        );
        assert!(err("\n \n").contains("has no question"));
    }
}
