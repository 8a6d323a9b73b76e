//! Whole runs over a batch: [`run_job`], and the patterns [`consensus_batch`] and
//! [`map_batch`].

use std::sync::Arc;

use serde_json::Value;

use super::{BatchClient, BatchEntry, BatchFiles, BatchJob, BatchResults};
use crate::engine::BudgetLedger;
use crate::engine::voting::{VotingStrategy, tally};
use crate::error::{Error, Result};
use crate::provider::{ChatRequest, Message};
use crate::result::PatternResult;
use crate::usage::TokenUsage;

/// Submits `job` (or, when `files.state` names an existing state file, resumes the batch it
/// names without submitting again), waits for it, downloads its results to `files.results`
/// and collects them. The state file is removed once the results are collected; it stays
/// when anything fails, so that the next run resumes.
pub async fn run_job(
    client: &BatchClient,
    job: &BatchJob,
    files: &BatchFiles,
    ledger: &Arc<BudgetLedger>,
) -> Result<BatchResults> {
    let mut run = match files.state.as_deref().filter(|p| p.exists()) {
        Some(path) => {
            let run = client.resume(path)?;
            let same = run.state().entries.len() == job.entries().len()
                && run
                    .state()
                    .entries
                    .iter()
                    .zip(job.entries())
                    .all(|(a, b)| a.custom_id == b.custom_id);
            if !same {
                return Err(Error::invalid_argument(
                    "state",
                    format!(
                        "{} belongs to another batch job (its entries differ)",
                        path.display()
                    ),
                ));
            }
            run
        }
        None => client.submit(job, ledger, files.state.as_deref()).await?,
    };
    // Until collected, the spend this run knows of is the calls it reserved.
    let calls = if run.has_reservations() {
        run.state().entries.len() as u64
    } else {
        0
    };
    let spent = |e: Error| {
        if e.cost() == TokenUsage::default() {
            e.with_cost(TokenUsage::new(0, 0, calls))
        } else {
            e
        }
    };
    client.wait(&mut run).await.map_err(spent)?;
    client.download(&run, &files.results).await.map_err(spent)?;
    let results = client.collect(run, &files.results, ledger).await?;
    if let Some(p) = &files.state {
        // Best effort: a state left behind only makes the next run re-collect this batch.
        let _ = std::fs::remove_file(p);
    }
    Ok(results)
}

/// `n` samples of `prompt` in one batch (`consensus-0` … `consensus-<n-1>`, temperature 0.9,
/// the client's default `max_tokens`), voted on exactly as [`Consensus`](crate::Consensus)
/// votes: value = the winner, score = the agreement ratio, cost = the batch's usage, metadata
/// `agreement_ratio`, `unique_responses`, `tie_count`, `batch_id`. Every failure carries the
/// batch's spend.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use executionkit::{BudgetLedger, VotingStrategy, batch::{BatchFiles, BatchClient, consensus_batch}};
/// # async fn demo(client: BatchClient) -> executionkit::Result<()> {
/// let ledger = Arc::new(BudgetLedger::unlimited());
/// let r = consensus_batch(&client, "2+2?", 3, VotingStrategy::Majority,
///     &BatchFiles::new("out.jsonl"), &ledger).await?;
/// assert_eq!(r.metadata["batch_id"].as_str().is_some(), true);
/// # Ok(()) }
/// ```
pub async fn consensus_batch(
    client: &BatchClient,
    prompt: &str,
    samples: usize,
    strategy: VotingStrategy,
    files: &BatchFiles,
    ledger: &Arc<BudgetLedger>,
) -> Result<PatternResult<String>> {
    let job = consensus_job(prompt, samples)?;
    let results = run_job(client, &job, files, ledger).await?;
    consensus_vote(&results, strategy)
}

/// One request per prompt (`map-0` …), in one batch; the value is the texts in prompt order
/// (whatever the order of the results file). `temperature` is sent only when given. Metadata
/// `batch_id`, `num_requests`.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use executionkit::{BudgetLedger, batch::{BatchFiles, BatchClient, map_batch}};
/// # async fn demo(client: BatchClient) -> executionkit::Result<()> {
/// let ledger = Arc::new(BudgetLedger::unlimited());
/// let r = map_batch(&client, &["a?", "b?"], None, &BatchFiles::new("out.jsonl"), &ledger).await?;
/// assert_eq!(r.value.len(), 2);
/// # Ok(()) }
/// ```
pub async fn map_batch<S: AsRef<str>>(
    client: &BatchClient,
    prompts: &[S],
    temperature: Option<f64>,
    files: &BatchFiles,
    ledger: &Arc<BudgetLedger>,
) -> Result<PatternResult<Vec<String>>> {
    let job = map_job(prompts, temperature)?;
    let results = run_job(client, &job, files, ledger).await?;
    Ok(map_values(&results))
}

/// The job [`consensus_batch`] submits: `samples` entries `consensus-<i>`, each the user
/// message `prompt` at temperature 0.9. `invalid_argument` for 0 samples.
///
/// ```
/// let job = executionkit::batch::consensus_job("2+2?", 3).unwrap();
/// assert_eq!(job.entries()[2].custom_id, "consensus-2");
/// assert_eq!(job.entries()[0].request.temperature, Some(0.9));
/// assert!(executionkit::batch::consensus_job("q", 0).unwrap_err().is_invalid_argument());
/// ```
pub fn consensus_job(prompt: &str, samples: usize) -> Result<BatchJob> {
    if samples < 1 {
        return Err(Error::invalid_argument(
            "num_samples",
            "num_samples must be >= 1, got 0",
        ));
    }
    let entries = (0..samples)
        .map(|i| {
            let mut request = ChatRequest::new(vec![Message::user(prompt)]);
            request.temperature = Some(0.9);
            BatchEntry::new(format!("consensus-{i}"), request)
        })
        .collect();
    BatchJob::new(entries)
}

/// The vote over a collected batch, with the tally [`Consensus`](crate::Consensus) uses:
/// value = the winner, score = the agreement ratio, cost = the batch's usage, metadata
/// `agreement_ratio`, `unique_responses`, `tie_count`, `batch_id`. A failed vote carries the
/// batch's spend.
///
/// ```
/// use executionkit::{TokenUsage, VotingStrategy};
/// use executionkit::batch::{BatchResults, EntryReport, EntryStatus, consensus_vote};
/// let entry = |t: &str| EntryReport { custom_id: t.into(), status: EntryStatus::Succeeded,
///     usage: TokenUsage::new(1, 1, 1), text: Some(t.into()), detail: None };
/// let r = BatchResults { batch_id: "b".into(), entries: vec![entry("Paris"), entry("Paris"), entry("Rome")],
///     cost: TokenUsage::new(3, 3, 3), usd: None };
/// let v = consensus_vote(&r, VotingStrategy::Majority).unwrap();
/// assert_eq!((v.value.as_str(), v.metadata["unique_responses"].as_u64()), ("Paris", Some(2)));
/// let e = consensus_vote(&r, VotingStrategy::Unanimous).unwrap_err();
/// assert_eq!(e.cost(), TokenUsage::new(3, 3, 3));
/// ```
pub fn consensus_vote(
    results: &BatchResults,
    strategy: VotingStrategy,
) -> Result<PatternResult<String>> {
    let texts = results.texts();
    let t = tally(&texts, strategy).map_err(|e| {
        e.with_cost(results.cost)
            .with_usd(results.usd)
            .with_metadata("batch_id", results.batch_id.clone())
    })?;
    Ok(PatternResult::new(texts[t.winner_index].to_owned())
        .with_score(t.agreement_ratio)
        .with_cost(results.cost)
        .with_metadata("agreement_ratio", t.agreement_ratio)
        .with_metadata("unique_responses", t.unique_responses)
        .with_metadata("tie_count", t.tie_count)
        .with_metadata("batch_id", results.batch_id.clone()))
}

/// The job [`map_batch`] submits: one entry `map-<i>` per prompt; `temperature` only when
/// given. `invalid_argument` for no prompts.
///
/// ```
/// let job = executionkit::batch::map_job(&["a", "b"], None).unwrap();
/// assert_eq!(job.entries()[1].custom_id, "map-1");
/// assert!(executionkit::batch::map_job::<&str>(&[], None).unwrap_err().message().contains("non-empty"));
/// ```
pub fn map_job<S: AsRef<str>>(prompts: &[S], temperature: Option<f64>) -> Result<BatchJob> {
    if prompts.is_empty() {
        return Err(Error::invalid_argument(
            "prompts",
            "prompts must be a non-empty list",
        ));
    }
    let entries = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut request = ChatRequest::new(vec![Message::user(p.as_ref())]);
            request.temperature = temperature;
            BatchEntry::new(format!("map-{i}"), request)
        })
        .collect();
    BatchJob::new(entries)
}

/// The texts of a collected batch in submission order, with metadata `batch_id` and
/// `num_requests`.
///
/// ```
/// use executionkit::TokenUsage;
/// use executionkit::batch::{BatchResults, map_values};
/// let r = BatchResults { batch_id: "b".into(), entries: vec![], cost: TokenUsage::default(), usd: None };
/// assert_eq!(map_values(&r).metadata["num_requests"], 0);
/// ```
pub fn map_values(results: &BatchResults) -> PatternResult<Vec<String>> {
    let texts = results.texts().into_iter().map(str::to_owned).collect();
    PatternResult::new(texts)
        .with_cost(results.cost)
        .with_metadata("batch_id", results.batch_id.clone())
        .with_metadata("num_requests", Value::from(results.entries.len()))
}
