//! `ek batch submit|status|results`: the providers' batch APIs (OpenAI Batch, Anthropic
//! Message Batches) from the shell. `submit` sends the prompts and writes the state file;
//! `status` polls once; `results` waits (polls with backoff), streams the results to `--out`,
//! and prints the vote (a consensus batch) or the texts (one line per prompt). A killed
//! `results` is simply run again: the state file names the batch.

use std::path::Path;
use std::sync::Arc;

use executionkit::batch::{
    BatchClient, BatchProvider, consensus_job, consensus_vote, map_job, map_values,
};
use executionkit::{Budget, BudgetLedger, Error, VotingStrategy};
use serde_json::json;

use crate::cli::{BatchAction, BatchArgs, BatchTarget, Common};
use crate::endpoint::{self, Env};
use crate::output::{self, Shape};
use crate::secrets::Secrets;

/// Runs one `ek batch` action; the exit code (0, 1 after a failure, 2 for invalid usage).
pub async fn run(args: &BatchArgs, env: &Env, secrets: &Secrets) -> u8 {
    let json = args.action.common().json;
    match action(&args.action, env, secrets).await {
        Ok(()) => 0,
        Err(e) => {
            output::print_error(&e, json, secrets);
            if e.is_invalid_argument() { 2 } else { 1 }
        }
    }
}

async fn action(action: &BatchAction, env: &Env, secrets: &Secrets) -> Result<(), Error> {
    let common = action.common();
    match action {
        BatchAction::Submit(a) => {
            let client = client(common, &a.target, env, Some(a.max_tokens), None)?;
            let job = match a.samples {
                Some(n) => {
                    let [prompt] = a.prompts.as_slice() else {
                        return Err(Error::invalid_argument(
                            "samples",
                            "--samples takes exactly one prompt",
                        ));
                    };
                    consensus_job(prompt, n)?
                }
                None => map_job(&a.prompts, None)?,
            };
            let ledger = Arc::new(BudgetLedger::new(budget(common)));
            let state = Path::new(&a.target.state);
            if state.exists() {
                return Err(Error::invalid_argument(
                    "state",
                    format!(
                        "{} already exists: it names a batch (collect it with `ek batch results`)",
                        state.display()
                    ),
                ));
            }
            let run = client.submit(&job, &ledger, Some(state)).await?;
            let s = run.state();
            if common.json {
                output::print_json(
                    json!({"batch_id": s.batch_id, "status": s.status, "entries": s.entries.len(), "state": a.target.state}),
                    secrets,
                );
            } else {
                print_text(
                    &format!(
                        "batch {} submitted ({} entries, status {}); state: {}",
                        s.batch_id,
                        s.entries.len(),
                        s.status,
                        a.target.state
                    ),
                    secrets,
                );
            }
            Ok(())
        }
        BatchAction::Status(a) => {
            let client = client(common, &a.target, env, None, None)?;
            let mut run = client.resume(Path::new(&a.target.state))?;
            client.poll(&mut run).await?;
            let s = run.state();
            output::print_json(
                json!({"batch_id": s.batch_id, "status": s.status, "ended": s.is_ended(), "entries": s.entries.len()}),
                secrets,
            );
            Ok(())
        }
        BatchAction::Results(a) => {
            let client = client(common, &a.target, env, None, Some(a.poll_interval))?;
            let state = Path::new(&a.target.state);
            let mut run = client.resume(state)?;
            let consensus = run
                .state()
                .entries
                .first()
                .is_some_and(|e| e.custom_id.starts_with("consensus-"));
            client.wait(&mut run).await?;
            let out = Path::new(&a.out);
            client.download(&run, out).await?;
            let ledger = Arc::new(BudgetLedger::new(budget(common)));
            let results = client.collect(run, out, &ledger).await?;
            let _ = std::fs::remove_file(state);
            if consensus {
                let strategy = match a.strategy.as_str() {
                    "unanimous" => VotingStrategy::Unanimous,
                    _ => VotingStrategy::Majority,
                };
                let r = consensus_vote(&results, strategy)?;
                output::print_success(&r, common.json, Shape::Single, secrets);
            } else {
                let r = map_values(&results);
                if common.json {
                    output::print_json(r.to_json(), secrets);
                } else {
                    print_text(&r.value.join("\n"), secrets);
                }
            }
            Ok(())
        }
    }
}

/// Prints `text` and a newline on stdout, secrets redacted.
fn print_text(text: &str, secrets: &Secrets) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", secrets.text(text));
    let _ = out.flush();
}

/// The batch client from the endpoint flags and variables (no offline model here).
fn client(
    common: &Common,
    target: &BatchTarget,
    env: &Env,
    max_tokens: Option<u32>,
    poll_interval: Option<f64>,
) -> Result<BatchClient, Error> {
    let base = common
        .base_url
        .clone()
        .or_else(|| env.base_url.clone())
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            Error::invalid_argument(
                "base_url",
                "ek batch needs an endpoint: --base-url or EXECUTIONKIT_BASE_URL",
            )
        })?;
    let model = common
        .model
        .clone()
        .or_else(|| env.model.clone())
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| {
            Error::invalid_argument("model", "ek batch needs --model or EXECUTIONKIT_MODEL")
        })?;
    let url = url::Url::parse(base.trim())
        .map_err(|e| Error::invalid_argument("base_url", format!("base_url: {e}")))?;
    let provider = match target.api.as_str() {
        "anthropic" => BatchProvider::Anthropic,
        _ => BatchProvider::OpenAi,
    };
    let mut b =
        BatchClient::builder(provider, base, model).timeout(endpoint::timeout(common.timeout)?);
    if let Some(key) = endpoint::api_key_for(&url, common.api_key.as_deref(), env) {
        b = b.api_key(key);
    }
    if let Some(n) = max_tokens {
        b = b.default_max_tokens(n);
    }
    if let Some(secs) = poll_interval {
        let d = std::time::Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::invalid_argument("poll_interval", "--poll-interval must be > 0 seconds")
            })?;
        b = b.poll_interval(d);
    }
    b.build()
}

/// The limits of `--max-calls`, `--max-input-tokens`, `--max-output-tokens`.
fn budget(common: &Common) -> Budget {
    let mut b = Budget::new();
    if let Some(n) = common.max_calls {
        b = b.max_calls(n);
    }
    if let Some(n) = common.max_input_tokens {
        b = b.max_input_tokens(n);
    }
    if let Some(n) = common.max_output_tokens {
        b = b.max_output_tokens(n);
    }
    b
}
