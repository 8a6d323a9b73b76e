//! [`WorkflowCheckpoint`]: what a workflow saves after each finished step, and reads back to
//! resume.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::usage::TokenUsage;

/// The state of a workflow after a finished step, to [`resume`](Workflow::resume) from.
/// Serialises with serde (as JSON: `{"outputs", "finished", "step_costs", "spent", "usd"?}`).
///
/// * `outputs`: the initial-context seeds and every finished step's output.
/// * `finished`: the finished steps, in the order they finished.
/// * `step_costs`: each finished step's spend.
/// * `spent`: everything the workflow had spent when the checkpoint was taken: the finished
///   steps, the calls of steps still running (every call counts when it is reserved; the
///   tokens of a call still in flight are not known yet) and what an earlier run it resumed had
///   spent.
/// * `in_flight_output_tokens`: the output tokens granted to the calls still in flight.
///
/// [`Workflow::resume`] starts its ledger with `spent` plus `in_flight_output_tokens` (the
/// lost calls' worst case), so the runs together stay within the output-token limit.
///
/// ```
/// use executionkit::{TokenUsage, WorkflowCheckpoint};
/// let json = r#"{"outputs": {"a": "x"}, "finished": ["a"],
///                "step_costs": {"a": {"input_tokens": 3, "output_tokens": 1, "llm_calls": 1}},
///                "spent": {"input_tokens": 3, "output_tokens": 1, "llm_calls": 1}}"#;
/// let cp = WorkflowCheckpoint::from_json(json).unwrap();
/// assert_eq!(cp.spent, TokenUsage::new(3, 1, 1));
/// assert_eq!(WorkflowCheckpoint::from_json(&cp.to_json()).unwrap(), cp);
/// let err = WorkflowCheckpoint::from_json(r#"{"outputs": {}}"#).unwrap_err();
/// assert!(err.is_invalid_argument() && err.message().contains("finished"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowCheckpoint {
    /// Seeds and finished steps' outputs, by name.
    pub outputs: BTreeMap<String, String>,
    /// Finished steps, in finishing order.
    pub finished: Vec<String>,
    /// Each finished step's spend.
    pub step_costs: BTreeMap<String, TokenUsage>,
    /// The workflow's whole spend when the checkpoint was taken.
    pub spent: TokenUsage,
    /// The same in dollars, when prices are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The output tokens granted to calls still in flight when the checkpoint was taken: a
    /// resumed run counts them as spent (a call lost in a crash may have used its whole grant).
    #[serde(default)]
    pub in_flight_output_tokens: u64,
}

impl WorkflowCheckpoint {
    /// The checkpoint as JSON.
    ///
    /// ```
    /// let cp = executionkit::WorkflowCheckpoint::default();
    /// assert!(cp.to_json().contains("\"finished\":[]"));
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        // A map of strings to strings and numbers: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a checkpoint from JSON.
    ///
    /// ```
    /// let e = executionkit::WorkflowCheckpoint::from_json("[]").unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` naming what is missing or malformed.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| {
            Error::invalid_argument("checkpoint", format!("not a workflow checkpoint: {e}"))
        })
    }

    /// Reads a checkpoint written by [`Workflow::checkpoint_file`].
    ///
    /// ```
    /// let e = executionkit::WorkflowCheckpoint::read("/nonexistent/cp.json").unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` when the file cannot be read or is not a checkpoint.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_argument("checkpoint", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_json(&text)
    }
}
