//! The providers' batch APIs: many chat requests submitted at once, run by the provider within
//! its completion window (at a discount), and collected later.
//!
//! This first slice speaks the **OpenAI Batch API** ([`BatchClient`]): the requests go up as a
//! JSONL file (`POST /files`, purpose `batch`), the batch is created (`POST /batches`), polled
//! (`GET /batches/{id}`) with backoff, and its output and error files are streamed to a file on
//! disk line by line (`GET /files/{id}/content`), never held whole in memory.
//!
//! * **Budget**: submitting reserves one call and `max_tokens` output tokens per entry in the
//!   [`BudgetLedger`], exactly as live calls do; collecting settles each entry with the usage it
//!   reports. An entry that failed, expired or is missing returns its tokens but still counts as
//!   a call.
//! * **All or nothing**: one failed, expired, cancelled, errored, missing, duplicated or
//!   malformed entry fails the batch with a `provider` error whose metadata `entries` lists
//!   every entry's status and spend (the reference's behaviour, with the spend added).
//! * **Resumable**: a [`BatchState`] file (JSON) is written when the batch is created and on
//!   every status change; a killed run picks the same batch up again by id
//!   ([`BatchClient::resume`], or [`run_job`] with the same state path) without resubmitting.
//! * **Polls are retried**: a rate-limited (honouring `Retry-After`, capped by the longest poll
//!   interval), timed-out, broken or 5xx poll is tried again, up to
//!   [`BatchClientBuilder::max_poll_failures`] in a row.
//! * **The key stays home**: every request goes to the base URL's origin; a file URL on another
//!   host is refused before anything is sent.
//!
//! [`consensus_batch`] and [`map_batch`] run the consensus vote (the same tally as
//! [`Consensus`](crate::Consensus)) and a map over a batch.
//!
//! ```no_run
//! use std::sync::Arc;
//! use executionkit::batch::{BatchFiles, BatchClient, consensus_batch};
//! use executionkit::{Budget, BudgetLedger, VotingStrategy};
//! # async fn demo() -> executionkit::Result<()> {
//! let client = BatchClient::openai("https://api.openai.com/v1", "gpt-4o-mini")
//!     .api_key(std::env::var("OPENAI_API_KEY").unwrap_or_default())
//!     .build()?;
//! let ledger = Arc::new(BudgetLedger::new(Budget::new().max_calls(10)));
//! let files = BatchFiles::new("capital.results.jsonl").state("capital.state.json");
//! let r = consensus_batch(&client, "Capital of France?", 5, VotingStrategy::Majority, &files, &ledger)
//!     .await?;
//! println!("{} ({} agree)", r.value, r.metadata["agreement_ratio"]);
//! # Ok(()) }
//! ```

mod client;
mod patterns;
mod results;
mod state;
#[cfg(test)]
mod tests;

pub use client::{BatchClient, BatchClientBuilder, BatchProvider};
pub use patterns::{
    consensus_batch, consensus_job, consensus_vote, map_batch, map_job, map_values, run_job,
};
pub use results::{BatchResults, EntryReport, EntryStatus};
pub use state::{BatchFiles, BatchRun, BatchState, PlannedEntry};

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::provider::ChatRequest;

/// The most entries one batch may hold (OpenAI's limit per batch).
pub const MAX_ENTRIES: usize = 50_000;

/// One request of a batch: its id (unique within the batch) and the chat request.
///
/// ```
/// use executionkit::{ChatRequest, Message, batch::BatchEntry};
/// let e = BatchEntry::new("q-1", ChatRequest::new(vec![Message::user("hi")]));
/// assert_eq!(e.custom_id, "q-1");
/// ```
#[derive(Debug, Clone)]
pub struct BatchEntry {
    /// The id the results name this entry by.
    pub custom_id: String,
    /// The request (its `max_tokens` is replaced by what the ledger grants).
    pub request: ChatRequest,
}

impl BatchEntry {
    /// An entry.
    ///
    /// ```
    /// use executionkit::{ChatRequest, batch::BatchEntry};
    /// assert_eq!(BatchEntry::new("a", ChatRequest::default()).custom_id, "a");
    /// ```
    pub fn new(custom_id: impl Into<String>, request: ChatRequest) -> Self {
        Self {
            custom_id: custom_id.into(),
            request,
        }
    }
}

/// The requests of one batch, checked: at least one, at most [`MAX_ENTRIES`], every id
/// non-empty and unique.
///
/// ```
/// use executionkit::{ChatRequest, batch::{BatchEntry, BatchJob}};
/// let e = |id: &str| BatchEntry::new(id, ChatRequest::default());
/// assert_eq!(BatchJob::new(vec![e("a"), e("b")]).unwrap().entries().len(), 2);
/// assert!(BatchJob::new(vec![]).unwrap_err().message().contains("no requests"));
/// assert!(BatchJob::new(vec![e("a"), e("a")]).unwrap_err().message().contains("duplicate"));
/// ```
#[derive(Debug, Clone)]
pub struct BatchJob {
    entries: Vec<BatchEntry>,
}

impl BatchJob {
    /// The job, or `invalid_argument` (no requests, too many, an empty or repeated id).
    ///
    /// ```
    /// use executionkit::{ChatRequest, batch::{BatchEntry, BatchJob}};
    /// assert!(BatchJob::new(vec![BatchEntry::new(" ", ChatRequest::default())]).is_err());
    /// ```
    pub fn new(entries: Vec<BatchEntry>) -> Result<Self> {
        if entries.is_empty() {
            return Err(Error::invalid_argument(
                "entries",
                "a batch needs requests: no requests",
            ));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(Error::invalid_argument(
                "entries",
                format!(
                    "a batch holds at most {MAX_ENTRIES} requests, got {}",
                    entries.len()
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(entries.len());
        for e in &entries {
            if e.custom_id.trim().is_empty() {
                return Err(Error::invalid_argument(
                    "custom_id",
                    "custom_id must not be empty",
                ));
            }
            if !seen.insert(e.custom_id.as_str()) {
                return Err(Error::invalid_argument(
                    "custom_id",
                    format!("duplicate custom_id '{}'", e.custom_id),
                ));
            }
        }
        Ok(Self { entries })
    }

    /// The entries, in the order given.
    ///
    /// ```
    /// use executionkit::{ChatRequest, batch::{BatchEntry, BatchJob}};
    /// let j = BatchJob::new(vec![BatchEntry::new("x", ChatRequest::default())]).unwrap();
    /// assert_eq!(j.entries()[0].custom_id, "x");
    /// ```
    #[must_use]
    pub fn entries(&self) -> &[BatchEntry] {
        &self.entries
    }
}
