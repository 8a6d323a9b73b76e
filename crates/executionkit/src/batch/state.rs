//! The local state of a submitted batch, saved as JSON so that a killed run resumes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::Reservation;
use crate::error::{Error, ErrorKind, Result};

/// One entry as submitted: its id and the output tokens it was granted.
///
/// ```
/// let e = executionkit::batch::PlannedEntry { custom_id: "a".into(), max_tokens: 64 };
/// assert_eq!(e.max_tokens, 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedEntry {
    /// The entry's id.
    pub custom_id: String,
    /// The `max_tokens` it was sent with.
    pub max_tokens: u64,
}

/// What is known of a submitted batch: enough to poll it and collect it from another process.
/// Holds no secret (the key is the client's).
///
/// ```
/// use executionkit::batch::{BatchState, PlannedEntry};
/// let s = BatchState {
///     provider: "openai".into(), model: "m".into(), batch_id: "batch_1".into(),
///     input_file_id: Some("file_1".into()), status: "in_progress".into(),
///     output_file_id: None, error_file_id: None, results_url: None,
///     entries: vec![PlannedEntry { custom_id: "a".into(), max_tokens: 8 }],
/// };
/// assert!(!s.is_ended());
/// let back: BatchState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
/// assert_eq!(back, s);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchState {
    /// `"openai"` or `"anthropic"`.
    pub provider: String,
    /// The default model of the entries.
    pub model: String,
    /// The provider's batch id.
    pub batch_id: String,
    /// The uploaded input file.
    #[serde(default)]
    pub input_file_id: Option<String>,
    /// The last status seen (OpenAI: `validating`, `in_progress`, `finalizing`, `completed`,
    /// `failed`, `expired`, `cancelling`, `cancelled`; Anthropic: `in_progress`, `canceling`,
    /// `ended`).
    pub status: String,
    /// The output file, once the batch ended.
    #[serde(default)]
    pub output_file_id: Option<String>,
    /// The error file, once the batch ended.
    #[serde(default)]
    pub error_file_id: Option<String>,
    /// Where the results are (Anthropic), once the batch ended.
    #[serde(default)]
    pub results_url: Option<String>,
    /// The entries, in submission order.
    pub entries: Vec<PlannedEntry>,
}

impl BatchState {
    /// `true` once the provider will change nothing more (OpenAI's `completed`, `failed`,
    /// `expired`, `cancelled`; Anthropic's `ended`).
    ///
    /// ```
    /// # use executionkit::batch::BatchState;
    /// let mut s = BatchState { provider: "openai".into(), model: "m".into(), batch_id: "b".into(),
    ///     input_file_id: None, status: "completed".into(), output_file_id: None,
    ///     error_file_id: None, results_url: None, entries: vec![] };
    /// assert!(s.is_ended());
    /// s.status = "finalizing".into();
    /// assert!(!s.is_ended());
    /// ```
    #[must_use]
    pub fn is_ended(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "expired" | "cancelled" | "ended"
        )
    }

    /// Writes the state to `path` (JSON; written beside it, then renamed into place, so a kill
    /// never leaves half a file).
    ///
    /// ```
    /// # use executionkit::batch::BatchState;
    /// let s = BatchState { provider: "openai".into(), model: "m".into(), batch_id: "b".into(),
    ///     input_file_id: None, status: "validating".into(), output_file_id: None,
    ///     error_file_id: None, results_url: None, entries: vec![] };
    /// let path = std::env::temp_dir().join(format!("ek-doc-state-{}.json", std::process::id()));
    /// s.save(&path).unwrap();
    /// assert_eq!(BatchState::load(&path).unwrap(), s);
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("batch state: {e}")))?;
        let tmp = tmp_path(path);
        std::fs::write(&tmp, text).map_err(|e| file_error(&tmp, &e))?;
        std::fs::rename(&tmp, path).map_err(|e| file_error(path, &e))
    }

    /// Reads a state written by [`save`](Self::save); `invalid_argument` when it cannot be read
    /// or is not a batch state.
    ///
    /// ```
    /// let e = executionkit::batch::BatchState::load("/nonexistent/ek-state.json".as_ref()).unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| file_error(path, &e))?;
        serde_json::from_slice(&text).map_err(|e| {
            Error::invalid_argument(
                "state",
                format!("{} is not a batch state file: {e}", path.display()),
            )
        })
    }
}

/// `<path>.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

pub(crate) fn file_error(path: &Path, e: &std::io::Error) -> Error {
    Error::invalid_argument("path", format!("batch file {}: {e}", path.display()))
}

/// Where a batch run keeps its files: the results (JSONL, the provider's lines as sent) and,
/// optionally, the state that lets a killed run resume.
///
/// ```
/// let f = executionkit::batch::BatchFiles::new("out.jsonl").state("state.json");
/// assert_eq!(f.results.to_str(), Some("out.jsonl"));
/// assert_eq!(f.state.as_deref().and_then(|p| p.to_str()), Some("state.json"));
/// ```
#[derive(Debug, Clone)]
pub struct BatchFiles {
    /// The results file (overwritten when the results are downloaded).
    pub results: PathBuf,
    /// The state file: when it exists, the run resumes the batch it names.
    pub state: Option<PathBuf>,
}

impl BatchFiles {
    /// Results at `results`, no state file.
    ///
    /// ```
    /// assert!(executionkit::batch::BatchFiles::new("r.jsonl").state.is_none());
    /// ```
    pub fn new(results: impl Into<PathBuf>) -> Self {
        Self {
            results: results.into(),
            state: None,
        }
    }

    /// Keeps the state at `path` (and resumes from it when it exists).
    ///
    /// ```
    /// assert!(executionkit::batch::BatchFiles::new("r").state("s").state.is_some());
    /// ```
    #[must_use]
    pub fn state(mut self, path: impl Into<PathBuf>) -> Self {
        self.state = Some(path.into());
        self
    }
}

/// A batch in flight: its state, where that state is saved, and (when this process submitted
/// it) the ledger's reservation for each entry.
///
/// ```
/// # use executionkit::batch::{BatchRun, BatchState};
/// let s = BatchState { provider: "openai".into(), model: "m".into(), batch_id: "b".into(),
///     input_file_id: None, status: "in_progress".into(), output_file_id: None,
///     error_file_id: None, results_url: None, entries: vec![] };
/// let run = BatchRun::from_state(s, None);
/// assert_eq!(run.state().batch_id, "b");
/// assert!(!run.has_reservations());
/// ```
#[derive(Debug)]
pub struct BatchRun {
    pub(crate) state: BatchState,
    pub(crate) state_path: Option<PathBuf>,
    pub(crate) reservations: HashMap<String, Reservation>,
}

impl BatchRun {
    /// A run picked up from a state (no reservations: the spend is charged when collected).
    ///
    /// ```
    /// # use executionkit::batch::{BatchRun, BatchState};
    /// # let s = BatchState { provider: "openai".into(), model: "m".into(), batch_id: "b".into(),
    /// #     input_file_id: None, status: "in_progress".into(), output_file_id: None,
    /// #     error_file_id: None, results_url: None, entries: vec![] };
    /// let run = BatchRun::from_state(s, Some("state.json".into()));
    /// assert_eq!(run.state().status, "in_progress");
    /// ```
    #[must_use]
    pub fn from_state(state: BatchState, state_path: Option<PathBuf>) -> Self {
        Self {
            state,
            state_path,
            reservations: HashMap::new(),
        }
    }

    /// What is known of the batch.
    ///
    /// ```
    /// # use executionkit::batch::{BatchRun, BatchState};
    /// # let s = BatchState { provider: "openai".into(), model: "m".into(), batch_id: "b".into(),
    /// #     input_file_id: None, status: "completed".into(), output_file_id: None,
    /// #     error_file_id: None, results_url: None, entries: vec![] };
    /// assert!(BatchRun::from_state(s, None).state().is_ended());
    /// ```
    #[must_use]
    pub fn state(&self) -> &BatchState {
        &self.state
    }

    /// `true` when this process holds the ledger's reservations for the entries (it submitted
    /// the batch), `false` for a resumed run.
    ///
    /// ```
    /// # use executionkit::batch::{BatchRun, BatchState};
    /// # let s = BatchState { provider: "openai".into(), model: "m".into(), batch_id: "b".into(),
    /// #     input_file_id: None, status: "completed".into(), output_file_id: None,
    /// #     error_file_id: None, results_url: None, entries: vec![] };
    /// assert!(!BatchRun::from_state(s, None).has_reservations());
    /// ```
    #[must_use]
    pub fn has_reservations(&self) -> bool {
        !self.reservations.is_empty()
    }

    /// Saves the state when a path is set.
    pub(crate) fn save(&self) -> Result<()> {
        match &self.state_path {
            Some(p) => self.state.save(p),
            None => Ok(()),
        }
    }
}
