//! The batch client: OpenAI's Batch API and Anthropic's Message Batches.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::results::collect_file;
use super::state::{BatchRun, BatchState, PlannedEntry, file_error, tmp_path};
use super::{BatchJob, BatchResults};
use crate::engine::BudgetLedger;
use crate::error::{Error, ErrorKind, Result};
use crate::provider::ChatRequest;
use crate::provider::batch_http::{Auth, BatchHttp, io_error};
use crate::provider::{ANTHROPIC_VERSION, AnthropicProvider, OpenAiProvider};

/// The `max_tokens` an entry asks for when its request sets none.
pub const DEFAULT_BATCH_MAX_TOKENS: u32 = 4096;

/// Builds an [`BatchClient`].
///
/// ```
/// use std::time::Duration;
/// let c = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m")
///     .api_key("sk-test")
///     .poll_interval(Duration::from_millis(10))
///     .max_poll_interval(Duration::from_secs(1))
///     .build()
///     .unwrap();
/// assert!(!format!("{c:?}").contains("sk-test"));
/// ```
#[must_use]
pub struct BatchClientBuilder {
    provider: BatchProvider,
    anthropic_version: String,
    base_url: String,
    model: String,
    api_key: String,
    timeout: Duration,
    poll_interval: Duration,
    max_poll_interval: Duration,
    wait_timeout: Duration,
    max_poll_failures: u32,
    max_line_bytes: usize,
    max_download_bytes: usize,
    default_max_tokens: u32,
    use_env_proxy: bool,
}

impl fmt::Debug for BatchClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchClientBuilder")
            .field("base_url", &crate::redact::redact(&self.base_url))
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl BatchClientBuilder {
    /// The API key (sent as `Authorization: Bearer`, only to the base URL's origin).
    ///
    /// ```
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m").api_key("k");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = key.into();
        self
    }

    /// The timeout of each request (default 60 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.timeout(Duration::ZERO).build().is_err());
    /// ```
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The first wait between polls (default 5 s); it doubles up to
    /// [`max_poll_interval`](Self::max_poll_interval).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.poll_interval(Duration::from_millis(1)).build().is_ok());
    /// ```
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// The longest wait between polls, also the cap on a `Retry-After` (default 60 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.max_poll_interval(Duration::from_secs(30)).build().is_ok());
    /// ```
    pub fn max_poll_interval(mut self, d: Duration) -> Self {
        self.max_poll_interval = d;
        self
    }

    /// How long [`BatchClient::wait`] waits for the batch to end (default 25 h: the 24 h
    /// window and the provider's finalising).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.wait_timeout(Duration::from_secs(60)).build().is_ok());
    /// ```
    pub fn wait_timeout(mut self, d: Duration) -> Self {
        self.wait_timeout = d;
        self
    }

    /// Failed polls in a row (rate limited, timed out, broken, 5xx) tolerated before
    /// [`BatchClient::wait`] gives up (default 10; a permanent error stops at once).
    ///
    /// ```
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.max_poll_failures(0).build().is_ok());
    /// ```
    pub fn max_poll_failures(mut self, n: u32) -> Self {
        self.max_poll_failures = n;
        self
    }

    /// The longest line accepted in a results file (default 1 MiB).
    ///
    /// ```
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.max_line_bytes(0).build().is_err());
    /// ```
    pub fn max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n;
        self
    }

    /// The largest results file downloaded (default 1 GiB).
    ///
    /// ```
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.max_download_bytes(1 << 20).build().is_ok());
    /// ```
    pub fn max_download_bytes(mut self, n: usize) -> Self {
        self.max_download_bytes = n;
        self
    }

    /// The `max_tokens` of an entry whose request sets none (default 4096).
    ///
    /// ```
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.default_max_tokens(0).build().is_err());
    /// ```
    pub fn default_max_tokens(mut self, n: u32) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// The `anthropic-version` header of an Anthropic client (default `2023-06-01`).
    ///
    /// ```
    /// let b = executionkit::batch::BatchClient::anthropic("http://127.0.0.1:9", "claude-x");
    /// assert!(b.anthropic_version("2023-06-01").build().is_ok());
    /// ```
    pub fn anthropic_version(mut self, v: impl Into<String>) -> Self {
        self.anthropic_version = v.into();
        self
    }

    /// Ignores the proxy variables.
    ///
    /// ```
    /// let b = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m");
    /// assert!(b.no_proxy().build().is_ok());
    /// ```
    pub fn no_proxy(mut self) -> Self {
        self.use_env_proxy = false;
        self
    }

    /// The client; `invalid_argument` for a bad base URL, an empty model, a zero duration or
    /// limit.
    ///
    /// ```
    /// assert!(executionkit::batch::BatchClient::openai("ftp://x", "m").build().is_err());
    /// ```
    pub fn build(self) -> Result<BatchClient> {
        if self.model.trim().is_empty() {
            return Err(Error::invalid_argument("model", "model must not be empty"));
        }
        for (name, d) in [
            ("timeout", self.timeout),
            ("poll_interval", self.poll_interval),
            ("max_poll_interval", self.max_poll_interval),
            ("wait_timeout", self.wait_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::invalid_argument(
                    name,
                    format!("{name} must be greater than zero"),
                ));
            }
        }
        for (name, n) in [
            ("max_line_bytes", self.max_line_bytes),
            ("max_download_bytes", self.max_download_bytes),
            ("default_max_tokens", self.default_max_tokens as usize),
        ] {
            if n == 0 {
                return Err(Error::invalid_argument(
                    name,
                    format!("{name} must be >= 1, got 0"),
                ));
            }
        }
        let mut http = BatchHttp::new(&self.base_url, self.api_key, self.timeout)?;
        if self.provider == BatchProvider::Anthropic {
            http.auth = Auth::Anthropic {
                version: self.anthropic_version,
            };
        }
        http.max_line_bytes = self.max_line_bytes;
        http.max_download_bytes = self.max_download_bytes;
        http.use_env_proxy = self.use_env_proxy;
        // Serialises each entry's body exactly as a live call would send it (no key).
        let bodies = match self.provider {
            BatchProvider::OpenAi => Bodies::OpenAi(
                OpenAiProvider::builder(self.base_url.clone(), self.model.clone())
                    .default_max_tokens(self.default_max_tokens)
                    .no_proxy()
                    .build()?,
            ),
            BatchProvider::Anthropic => Bodies::Anthropic(
                AnthropicProvider::builder(self.base_url.clone(), self.model.clone())
                    .default_max_tokens(self.default_max_tokens)
                    .no_proxy()
                    .build()?,
            ),
        };
        Ok(BatchClient {
            provider: self.provider,
            http,
            bodies,
            base_url: self.base_url,
            model: self.model,
            poll_interval: self.poll_interval,
            max_poll_interval: self.max_poll_interval.max(self.poll_interval),
            wait_timeout: self.wait_timeout,
            max_poll_failures: self.max_poll_failures,
            default_max_tokens: self.default_max_tokens,
        })
    }
}

/// Which batch API a [`BatchClient`] speaks.
///
/// ```
/// assert_eq!(executionkit::batch::BatchProvider::Anthropic.as_str(), "anthropic");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchProvider {
    /// OpenAI's Batch API: `<base_url>/files`, `<base_url>/batches` (base URL with `/v1`).
    OpenAi,
    /// Anthropic's Message Batches: `<base_url>/v1/messages/batches` (base URL without `/v1`).
    Anthropic,
}

impl BatchProvider {
    /// `"openai"` or `"anthropic"` (as in a [`BatchState`]).
    ///
    /// ```
    /// assert_eq!(executionkit::batch::BatchProvider::OpenAi.as_str(), "openai");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// Serialises each entry's body exactly as a live call of that dialect would send it.
enum Bodies {
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
}

/// A client of a provider's batch API: OpenAI's Batch API (entries sent to
/// `/v1/chat/completions`) or Anthropic's Message Batches.
///
/// ```
/// let c = executionkit::batch::BatchClient::new("http://127.0.0.1:9/v1", "gpt-4o-mini").unwrap();
/// assert_eq!(c.model(), "gpt-4o-mini");
/// ```
pub struct BatchClient {
    provider: BatchProvider,
    http: BatchHttp,
    bodies: Bodies,
    base_url: String,
    model: String,
    poll_interval: Duration,
    max_poll_interval: Duration,
    wait_timeout: Duration,
    max_poll_failures: u32,
    default_max_tokens: u32,
}

impl fmt::Debug for BatchClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchClient")
            .field("base_url", &crate::redact::redact(&self.base_url))
            .field("model", &self.model)
            .field("api_key", &"***")
            .finish_non_exhaustive()
    }
}

impl BatchClient {
    /// OpenAI: uploads the JSONL file and creates the batch; the file id and the batch object.
    async fn create_openai(&self, lines: &[Value]) -> Result<(Option<String>, Value)> {
        let mut jsonl = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut jsonl, line).map_err(|e| {
                Error::new(ErrorKind::InvalidArgument, format!("request body: {e}"))
            })?;
            jsonl.push(b'\n');
        }
        let boundary = format!("ek-batch-{:032x}", rand::random::<u128>());
        let file = self
            .http
            .post(
                "/files",
                &format!("multipart/form-data; boundary={boundary}"),
                multipart(&boundary, &jsonl),
            )
            .await?;
        let file_id = id_of(&file, "file upload")?;
        let create = json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        });
        let batch = self
            .http
            .post(
                "/batches",
                "application/json",
                serde_json::to_vec(&create).unwrap_or_default(),
            )
            .await?;
        Ok((Some(file_id), batch))
    }

    /// The URLs holding an ended batch's results, in reading order.
    fn result_urls(&self, run: &BatchRun) -> Result<Vec<url::Url>> {
        let s = &run.state;
        match self.provider {
            BatchProvider::OpenAi => [&s.output_file_id, &s.error_file_id]
                .into_iter()
                .flatten()
                .map(|id| {
                    self.http
                        .url(&format!("/files/{}/content", path_segment(id)))
                })
                .collect(),
            BatchProvider::Anthropic => {
                let Some(u) = s.results_url.as_deref().filter(|u| !u.trim().is_empty()) else {
                    return Err(Error::new(
                        ErrorKind::Provider,
                        format!("batch {} ended without a results_url", s.batch_id),
                    ));
                };
                let url = url::Url::parse(u).map_err(|_| {
                    Error::new(
                        ErrorKind::Provider,
                        format!("batch {}: its results_url is not a URL", s.batch_id),
                    )
                })?;
                if url.scheme() != "http" && url.scheme() != "https" {
                    return Err(Error::new(
                        ErrorKind::Provider,
                        format!(
                            "batch {}: its results_url has an unexpected scheme '{}'",
                            s.batch_id,
                            url.scheme()
                        ),
                    ));
                }
                Ok(vec![url])
            }
        }
    }
}

/// The wait before the next poll after `error` (a retryable one): its `Retry-After` when it
/// has one, else the current interval; never more than `max`.
pub(crate) fn retry_delay(error: &Error, interval: Duration, max: Duration) -> Duration {
    error.retry_after().unwrap_or(interval).min(max)
}

impl BatchClient {
    /// An OpenAI client with every default and no key.
    ///
    /// ```
    /// assert!(executionkit::batch::BatchClient::new("http://127.0.0.1:9/v1", " ").is_err());
    /// ```
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Result<Self> {
        Self::openai(base_url, model).build()
    }

    /// A builder of an OpenAI Batch API client (`base_url` ends with `/v1`).
    ///
    /// ```
    /// let c = executionkit::batch::BatchClient::openai("http://127.0.0.1:9/v1", "m").build();
    /// assert!(c.is_ok());
    /// ```
    pub fn openai(base_url: impl Into<String>, model: impl Into<String>) -> BatchClientBuilder {
        Self::builder(BatchProvider::OpenAi, base_url, model)
    }

    /// A builder of an Anthropic Message Batches client (`base_url` without `/v1`, e.g.
    /// `https://api.anthropic.com`).
    ///
    /// ```
    /// let c = executionkit::batch::BatchClient::anthropic("https://api.anthropic.com", "claude-x").build();
    /// assert!(c.is_ok());
    /// ```
    pub fn anthropic(base_url: impl Into<String>, model: impl Into<String>) -> BatchClientBuilder {
        Self::builder(BatchProvider::Anthropic, base_url, model)
    }

    /// A builder for `provider`.
    ///
    /// ```
    /// use executionkit::batch::{BatchClient, BatchProvider};
    /// let c = BatchClient::builder(BatchProvider::OpenAi, "http://127.0.0.1:9/v1", "m").build().unwrap();
    /// assert_eq!(c.provider(), BatchProvider::OpenAi);
    /// ```
    pub fn builder(
        provider: BatchProvider,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> BatchClientBuilder {
        BatchClientBuilder {
            provider,
            anthropic_version: ANTHROPIC_VERSION.to_owned(),
            base_url: base_url.into(),
            model: model.into(),
            api_key: String::new(),
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            max_poll_interval: Duration::from_secs(60),
            wait_timeout: Duration::from_secs(25 * 3600),
            max_poll_failures: 10,
            max_line_bytes: 1 << 20,
            max_download_bytes: 1 << 30,
            default_max_tokens: DEFAULT_BATCH_MAX_TOKENS,
            use_env_proxy: true,
        }
    }

    /// The default model of the entries.
    ///
    /// ```
    /// # let c = executionkit::batch::BatchClient::new("http://127.0.0.1:9/v1", "m").unwrap();
    /// assert_eq!(c.model(), "m");
    /// ```
    #[must_use]
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The batch API this client speaks.
    ///
    /// ```
    /// # let c = executionkit::batch::BatchClient::anthropic("http://127.0.0.1:9", "m").build().unwrap();
    /// assert_eq!(c.provider(), executionkit::batch::BatchProvider::Anthropic);
    /// ```
    #[must_use]
    pub fn provider(&self) -> BatchProvider {
        self.provider
    }

    /// The body of one entry, as a live call would send it (no `temperature` unless set).
    fn entry_body(&self, request: &ChatRequest) -> Result<Value> {
        let bytes = match &self.bodies {
            Bodies::OpenAi(p) => p.request_body(request, false)?,
            Bodies::Anthropic(p) => p.request_body(request, false)?,
        };
        let mut body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("request body: {e}")))?;
        if let Value::Object(m) = &mut body {
            if request.temperature.is_none() {
                m.remove("temperature");
            }
            m.remove("stream");
        }
        Ok(body)
    }

    /// The path of the batch object.
    fn batch_path(&self, id: &str) -> String {
        match self.provider {
            BatchProvider::OpenAi => format!("/batches/{}", path_segment(id)),
            BatchProvider::Anthropic => format!("/v1/messages/batches/{}", path_segment(id)),
        }
    }

    /// Reserves one call and `max_tokens` output tokens per entry, uploads the entries as a
    /// JSONL file and creates the batch. The state is saved at `state_path` (when given) as
    /// soon as the batch exists. When the upload or the creation fails, the reservations are
    /// dropped: their tokens come back and their calls count, as for a failed live call.
    pub async fn submit(
        &self,
        job: &BatchJob,
        ledger: &Arc<BudgetLedger>,
        state_path: Option<&Path>,
    ) -> Result<BatchRun> {
        let share = batch_share(job.entries().len(), &self.model, ledger)?;
        let mut reservations = HashMap::with_capacity(job.entries().len());
        let mut planned = Vec::with_capacity(job.entries().len());
        let mut lines = Vec::with_capacity(job.entries().len());
        for entry in job.entries() {
            let mut request = entry.request.clone();
            let model = request.model.clone().unwrap_or_else(|| self.model.clone());
            let wanted = request
                .max_tokens
                .unwrap_or(self.default_max_tokens)
                .min(share);
            let r = ledger.reserve(&model, u64::from(wanted), false).await?;
            request.max_tokens = Some(u32::try_from(r.max_tokens()).unwrap_or(wanted));
            let body = self.entry_body(&request)?;
            lines.push(match self.provider {
                BatchProvider::OpenAi => json!({
                    "custom_id": entry.custom_id,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }),
                BatchProvider::Anthropic => json!({"custom_id": entry.custom_id, "params": body}),
            });
            planned.push(PlannedEntry {
                custom_id: entry.custom_id.clone(),
                max_tokens: r.max_tokens(),
            });
            reservations.insert(entry.custom_id.clone(), r);
        }
        let (file_id, batch) = match self.provider {
            BatchProvider::OpenAi => self.create_openai(&lines).await?,
            BatchProvider::Anthropic => {
                let body = serde_json::to_vec(&json!({ "requests": lines })).map_err(|e| {
                    Error::new(ErrorKind::InvalidArgument, format!("request body: {e}"))
                })?;
                let batch = self
                    .http
                    .post("/v1/messages/batches", "application/json", body)
                    .await?;
                (None, batch)
            }
        };
        let batch_id = id_of(&batch, "batch creation")?;
        let mut state = BatchState {
            provider: self.provider.as_str().into(),
            model: self.model.clone(),
            batch_id,
            input_file_id: file_id,
            status: String::new(),
            output_file_id: None,
            error_file_id: None,
            results_url: None,
            entries: planned,
        };
        update_state(&mut state, &batch);
        let run = BatchRun {
            state,
            state_path: state_path.map(Path::to_path_buf),
            reservations,
        };
        run.save()?;
        Ok(run)
    }

    /// Picks up the batch named by the state file at `path` (written by
    /// [`submit`](Self::submit)); nothing is sent.
    ///
    /// ```
    /// let c = executionkit::batch::BatchClient::new("http://127.0.0.1:9/v1", "m").unwrap();
    /// assert!(c.resume("/nonexistent/state.json".as_ref()).unwrap_err().is_invalid_argument());
    /// ```
    pub fn resume(&self, path: &Path) -> Result<BatchRun> {
        let state = BatchState::load(path)?;
        if state.provider != "openai" {
            return Err(Error::invalid_argument(
                "state",
                format!(
                    "the state names a '{}' batch, not an OpenAI one",
                    state.provider
                ),
            ));
        }
        Ok(BatchRun::from_state(state, Some(path.to_path_buf())))
    }

    /// Polls the batch once and updates (and saves) its state. No retry here: see
    /// [`wait`](Self::wait).
    pub async fn poll(&self, run: &mut BatchRun) -> Result<()> {
        let id = &run.state.batch_id;
        let v = self
            .http
            .get(&self.batch_path(id))
            .await
            .map_err(|e| e.with_metadata("batch_id", id.clone()))?;
        let before = run.state.clone();
        update_state(&mut run.state, &v);
        if run.state != before {
            run.save()?;
        }
        Ok(())
    }

    /// Polls until the batch ends: the wait starts at the poll interval and doubles up to the
    /// longest; a failed poll that may pass (rate limited, timeout, transport, 5xx) is retried
    /// after its `Retry-After` (capped) or the interval, up to the failures allowed in a row.
    /// Fails with `timeout` ("did not end within") after the wait timeout.
    pub async fn wait(&self, run: &mut BatchRun) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        let mut interval = self.poll_interval;
        let mut failures = 0u32;
        loop {
            let delay = match self.poll(run).await {
                Ok(()) => {
                    failures = 0;
                    if run.state.is_ended() {
                        return Ok(());
                    }
                    let d = interval;
                    interval = (interval * 2).min(self.max_poll_interval);
                    d
                }
                Err(e) if e.is_retryable() && failures < self.max_poll_failures => {
                    failures += 1;
                    tracing::warn!(batch_id = %run.state.batch_id, error = %e, "batch poll failed; retrying");
                    retry_delay(&e, interval, self.max_poll_interval)
                }
                Err(e) => return Err(e),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "batch {} did not end within {:.1} s (last status: {})",
                        run.state.batch_id,
                        self.wait_timeout.as_secs_f64(),
                        run.state.status
                    ),
                )
                .with_metadata("batch_id", run.state.batch_id.clone()));
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
        }
    }

    /// Streams the ended batch's output file, then its error file, into `path` (written beside
    /// it and renamed into place), line by line; returns the bytes written.
    pub async fn download(&self, run: &BatchRun, path: &Path) -> Result<u64> {
        if !run.state.is_ended() {
            return Err(Error::invalid_argument(
                "batch",
                format!(
                    "batch {} has not ended (status: {})",
                    run.state.batch_id, run.state.status
                ),
            ));
        }
        let tmp = tmp_path(path);
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| file_error(&tmp, &e))?;
        let mut written = 0;
        for url in self.result_urls(run)? {
            written += self.http.download(&url, &mut out).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(|e| io_error(&e))?;
        drop(out);
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| file_error(path, &e))?;
        Ok(written)
    }

    /// Reads the downloaded results at `path` line by line and settles the ledger: each entry
    /// with a reservation settles it with its reported usage (or returns it); a resumed run
    /// charges the reported usage and one call per entry. Any entry that did not succeed fails
    /// the batch (`provider`, metadata `entries`: every entry's status and tokens).
    pub async fn collect(
        &self,
        run: BatchRun,
        path: &Path,
        ledger: &Arc<BudgetLedger>,
    ) -> Result<BatchResults> {
        let path = path.to_path_buf();
        let max = self.http.max_line_bytes;
        let ledger = Arc::clone(ledger);
        let provider = self.provider;
        tokio::task::spawn_blocking(move || collect_file(run, &path, max, provider, &ledger))
            .await
            .map_err(|e| Error::new(ErrorKind::Provider, format!("batch collection: {e}")))?
    }
}

/// The most output tokens each of `n` entries may reserve so that all `n` fit at once (the
/// entries' reservations are held together until the batch ends, so one entry must never wait
/// for another's return); `budget_exhausted` when the calls or the output tokens left cannot
/// cover `n` entries. Nothing is reserved here.
pub(crate) fn batch_share(n: usize, model: &str, ledger: &BudgetLedger) -> Result<u32> {
    let left = ledger.remaining();
    let n64 = n as u64;
    let exhausted = |field: &str, what: String| {
        Error::new(
            ErrorKind::BudgetExhausted,
            format!("Budget exhausted before batch submission: {what}"),
        )
        .with_cost(ledger.spent())
        .with_metadata("budget", ledger.budget().to_json())
        .with_metadata("exhausted", field)
    };
    if let Some(calls) = left.llm_calls.filter(|c| *c < n64) {
        return Err(exhausted(
            "llm_calls",
            format!("{n} entries need {n} calls, {calls} left"),
        ));
    }
    let mut share = u64::from(u32::MAX);
    if let Some(tokens) = left.output_tokens {
        if tokens / n64.max(1) == 0 {
            return Err(exhausted(
                "output_tokens",
                format!("{n} entries need at least {n} output tokens, {tokens} left"),
            ));
        }
        share = share.min(tokens / n64.max(1));
    }
    // Dollars are reserved for the output part too: every entry's part must fit at once.
    let per_million = ledger
        .budget()
        .rates_for(model)
        .map(|r| r.output_usd(1_000_000))
        .filter(|p| *p > 0.0);
    if let (Some(usd), Some(per_million)) = (left.usd, per_million) {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let tokens = (usd * 1e6 / n as f64 / per_million).floor().max(0.0) as u64;
        if tokens == 0 {
            return Err(exhausted(
                "usd",
                format!("{n} entries need more than the ${usd:.6} left"),
            ));
        }
        share = share.min(tokens);
    }
    Ok(u32::try_from(share).unwrap_or(u32::MAX))
}

/// The body of `POST /files`: `purpose=batch` and the JSONL as `file`.
fn multipart(boundary: &str, jsonl: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(jsonl.len() + 512);
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"batch.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(jsonl);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

/// The non-empty string `id` of a reply.
fn id_of(v: &Value, what: &str) -> Result<String> {
    match v.get("id").and_then(Value::as_str) {
        Some(id) if !id.trim().is_empty() => Ok(id.to_owned()),
        _ => Err(Error::new(
            ErrorKind::Provider,
            format!("batch API {what}: the response has no id"),
        )),
    }
}

/// An id as one path segment (percent-encoded, so it cannot reach another path).
pub(crate) fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// Copies the status and file ids of a batch object into the state.
fn update_state(state: &mut BatchState, v: &Value) {
    let status = v
        .get("status")
        .or_else(|| v.get("processing_status"))
        .and_then(Value::as_str);
    if let Some(s) = status {
        s.clone_into(&mut state.status);
    }
    if let Some(u) = v
        .get("results_url")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        state.results_url = Some(u.to_owned());
    }
    for (key, slot) in [
        ("output_file_id", &mut state.output_file_id),
        ("error_file_id", &mut state.error_file_id),
    ] {
        if let Some(id) = v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
            *slot = Some(id.to_owned());
        }
    }
}
