//! [`MockProvider`]: a scripted provider for tests, part of the public API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{ChatRequest, ChatStream, LlmProvider, LlmResponse, StreamEvent, Usage};
use crate::error::{Error, Result};

/// One recorded call of a [`MockProvider`].
///
/// ```
/// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["a"]);
/// p.complete(&ChatRequest::new(vec![Message::user("q")]).temperature(0.5)).await.unwrap();
/// let call = p.last_call().unwrap();
/// assert_eq!(call.request.temperature, Some(0.5));
/// assert!(!call.stream);
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MockCall {
    /// The request as received.
    pub request: ChatRequest,
    /// `true` when it came through [`LlmProvider::stream`].
    pub stream: bool,
}

/// A provider that replays scripted responses in a cycle and records every call.
///
/// With no responses it answers `""`; with an error set it fails every call (after recording it).
/// Clones share the script, the position and the record.
///
/// ```
/// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["r1", "r2"]);
/// let req = ChatRequest::new(vec![Message::user("q")]);
/// let got: Vec<String> = futures::future::join_all((0..3).map(|_| p.complete(&req)))
///     .await.into_iter().map(|r| r.unwrap().content().to_owned()).collect();
/// assert_eq!(got, ["r1", "r2", "r1"]);
/// assert_eq!(p.call_count(), 3);
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct MockProvider {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    responses: Vec<LlmResponse>,
    error: Option<Error>,
    next: AtomicUsize,
    calls: Mutex<Vec<MockCall>>,
    model: String,
    supports_n: bool,
    secret: Masked,
}

/// A secret that never shows in `Debug`.
#[derive(Clone, Default)]
struct Masked(Option<String>);

impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(***)"
        } else {
            "None"
        })
    }
}

impl From<&str> for LlmResponse {
    fn from(s: &str) -> Self {
        Self::text(s)
    }
}

impl From<String> for LlmResponse {
    fn from(s: String) -> Self {
        Self::text(s)
    }
}

impl MockProvider {
    /// A mock replaying `responses` (strings become responses with zero usage).
    ///
    /// ```
    /// let p = executionkit::MockProvider::new([executionkit::LlmResponse::text("a").with_usage(3, 1)]);
    /// assert_eq!(p.call_count(), 0);
    /// ```
    #[must_use]
    pub fn new<I, R>(responses: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<LlmResponse>,
    {
        Self {
            inner: Arc::new(Inner {
                responses: responses.into_iter().map(Into::into).collect(),
                model: "mock".to_owned(),
                ..Inner::default()
            }),
        }
    }

    /// A mock that fails every call with `error`.
    ///
    /// ```
    /// use executionkit::{Error, ErrorKind, MockProvider};
    /// let p = MockProvider::failing(Error::new(ErrorKind::Permanent, "no"));
    /// # let _ = p;
    /// ```
    #[must_use]
    pub fn failing(error: Error) -> Self {
        Self {
            inner: Arc::new(Inner {
                error: Some(error),
                model: "mock".to_owned(),
                ..Inner::default()
            }),
        }
    }

    /// Makes the mock honour `n`: a request with `n = k` gets the next `k` scripted responses
    /// as its choices.
    ///
    /// ```
    /// let p = executionkit::MockProvider::new(["a"]).with_n_support();
    /// # use executionkit::LlmProvider;
    /// assert!(p.supports_n());
    /// ```
    #[must_use]
    pub fn with_n_support(self) -> Self {
        self.rebuild(|i| i.supports_n = true)
    }

    /// Sets the model name the mock reports.
    ///
    /// ```
    /// # use executionkit::LlmProvider;
    /// assert_eq!(executionkit::MockProvider::default().with_model("m2").model(), "m2");
    /// ```
    #[must_use]
    pub fn with_model(self, model: impl Into<String>) -> Self {
        let model = model.into();
        self.rebuild(|i| i.model = model)
    }

    /// Gives the mock an API key, as [`LlmProvider::secret`] reports it, so tests can check that
    /// the key never reaches an error, an event or a log line. It is masked in `Debug`.
    ///
    /// ```
    /// # use executionkit::LlmProvider;
    /// let p = executionkit::MockProvider::new(["a"]).with_secret("sk-test-1234567890");
    /// assert_eq!(p.secret(), Some("sk-test-1234567890"));
    /// assert!(!format!("{p:?}").contains("sk-test"));
    /// ```
    #[must_use]
    pub fn with_secret(self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.rebuild(|i| i.secret = Masked(Some(key)))
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            responses: self.inner.responses.clone(),
            error: self.inner.error.clone(),
            next: AtomicUsize::new(self.inner.next.load(Ordering::SeqCst)),
            calls: Mutex::new(self.calls()),
            model: self.inner.model.clone(),
            supports_n: self.inner.supports_n,
            secret: self.inner.secret.clone(),
        };
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Every call so far, in order.
    ///
    /// ```
    /// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["a"]);
    /// p.complete(&ChatRequest::new(vec![Message::user("q")])).await.unwrap();
    /// assert_eq!(p.calls()[0].request.messages, vec![Message::user("q")]);
    /// # });
    /// ```
    #[must_use]
    pub fn calls(&self) -> Vec<MockCall> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The number of calls so far.
    ///
    /// ```
    /// assert_eq!(executionkit::MockProvider::default().call_count(), 0);
    /// ```
    #[must_use]
    pub fn call_count(&self) -> usize {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The last call, if any.
    ///
    /// ```
    /// assert!(executionkit::MockProvider::default().last_call().is_none());
    /// ```
    #[must_use]
    pub fn last_call(&self) -> Option<MockCall> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .cloned()
    }

    fn record(&self, request: &ChatRequest, stream: bool) {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(MockCall {
                request: request.clone(),
                stream,
            });
    }

    fn next_response(&self) -> LlmResponse {
        let r = &self.inner.responses;
        if r.is_empty() {
            return LlmResponse::text("");
        }
        let i = self.inner.next.fetch_add(1, Ordering::SeqCst);
        r[i % r.len()].clone()
    }
}

#[async_trait]
impl LlmProvider for MockProvider {
    fn model(&self) -> &str {
        &self.inner.model
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        self.record(request, false);
        if let Some(e) = &self.inner.error {
            return Err(e.clone());
        }
        let mut resp = self.next_response();
        if self.inner.supports_n {
            for _ in 1..request.n.unwrap_or(1) {
                let extra = self.next_response();
                let u = &mut resp.usage;
                u.input_tokens += extra.usage.input_tokens;
                u.output_tokens += extra.usage.output_tokens;
                u.cache_read_input_tokens += extra.usage.cache_read_input_tokens;
                u.cache_write_input_tokens += extra.usage.cache_write_input_tokens;
                u.reasoning_tokens += extra.usage.reasoning_tokens;
                resp.choices.extend(extra.choices);
            }
        }
        Ok(resp)
    }

    /// Streams the next response one character at a time; usage is the scripted one, or
    /// `max(1, words)` output tokens when the script has none.
    fn stream(&self, request: ChatRequest) -> ChatStream {
        self.record(&request, true);
        if let Some(e) = &self.inner.error {
            let e = e.clone();
            return Box::pin(futures::stream::once(async move { Err(e) }));
        }
        let mut resp = self.next_response();
        if resp.usage == Usage::default() {
            let words = resp.content().split_whitespace().count() as u64;
            resp.usage.output_tokens = if resp.content().is_empty() {
                0
            } else {
                words.max(1)
            };
        }
        let mut items: Vec<Result<StreamEvent>> = resp
            .content()
            .chars()
            .map(|c| Ok(StreamEvent::TextDelta(c.to_string())))
            .collect();
        items.push(Ok(StreamEvent::Finished(resp)));
        Box::pin(futures::stream::iter(items))
    }

    fn supports_tools(&self) -> bool {
        true
    }

    fn supports_streaming(&self) -> bool {
        true
    }

    fn supports_n(&self) -> bool {
        self.inner.supports_n
    }

    fn secret(&self) -> Option<&str> {
        self.inner.secret.0.as_deref()
    }
}
