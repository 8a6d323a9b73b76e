//! The OpenAI-compatible HTTP provider: one pooled hyper transport (HTTP/1.1 and HTTP/2,
//! rustls, proxies from the environment, no redirects) speaking the chat-completions dialect in
//! JSON and SSE.
//!
//! ```
//! use std::time::Duration;
//! use executionkit::OpenAiProvider;
//! let p = OpenAiProvider::builder("http://127.0.0.1:8080/v1", "smollm2")
//!     .api_key("sk-local-secret")
//!     .timeout(Duration::from_secs(30))
//!     .default_temperature(0.2)
//!     .build()
//!     .unwrap();
//! let shown = format!("{p:?}");
//! assert!(shown.contains("***") && !shown.contains("sk-local-secret"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};

use super::http::{Endpoint, is_json, mask};
use super::parse::parse_reply;
use super::sse::{StreamAccumulator, StreamLimits};
use super::{ChatRequest, ChatStream, LlmProvider, LlmResponse};
use crate::error::Result;
use crate::redact::redact;

mod builder;
mod request;
mod streaming;
#[cfg(test)]
mod tests;

pub use builder::{
    DEFAULT_STREAM_DEADLINE, DEFAULT_STREAM_IDLE_TIMEOUT, DEFAULT_TEMPERATURE, DEFAULT_TIMEOUT,
    OpenAiProviderBuilder,
};

/// The OpenAI-compatible HTTP provider.
///
/// Cheap to clone: clones share one pooled HTTP client (keep-alive, rustls, no redirects).
/// `complete` posts to `<base_url>/chat/completions`; `stream` does the same with
/// `"stream": true` and `"stream_options": {"include_usage": true}`, lazily (nothing is sent
/// until the stream is first polled). The API key is masked in `Debug` and removed from every
/// error message.
///
/// ```
/// use executionkit::{LlmProvider, OpenAiProvider};
/// let p = OpenAiProvider::new("https://api.example.com/v1/", "gpt-4o-mini").unwrap();
/// assert_eq!(p.model(), "gpt-4o-mini");
/// assert_eq!(p.base_url(), "https://api.example.com/v1/");
/// assert!(p.supports_streaming() && p.supports_tools());
/// ```
#[derive(Clone)]
pub struct OpenAiProvider {
    inner: Arc<Inner>,
}

struct Inner {
    http: Endpoint,
    base_url: String,
    model: String,
    stream_idle_timeout: Duration,
    default_temperature: f64,
    default_max_tokens: u32,
    supports_n: bool,
    stream_deadline: Duration,
    stream_limits: StreamLimits,
    /// Set once the endpoint refused a `response_format`
    /// ([`LlmProvider::note_response_format_refused`]).
    response_format_refused: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("base_url", &redact(&self.inner.base_url))
            .field("model", &self.inner.model)
            .field("api_key", &mask(&self.inner.http.api_key))
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// A provider with every default and no API key.
    ///
    /// ```
    /// let e = executionkit::OpenAiProvider::new("http://127.0.0.1:8080/v1", " ").unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Result<Self> {
        Self::builder(base_url, model).build()
    }

    /// The base URL, as given.
    ///
    /// ```
    /// let p = executionkit::OpenAiProvider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.base_url(), "http://127.0.0.1:8080/v1");
    /// ```
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The per-request timeout.
    ///
    /// ```
    /// let p = executionkit::OpenAiProvider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.timeout().as_secs(), 120);
    /// ```
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.inner.http.timeout
    }

    /// The stream idle timeout.
    ///
    /// ```
    /// let p = executionkit::OpenAiProvider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.stream_idle_timeout().as_secs(), 60);
    /// ```
    #[must_use]
    pub fn stream_idle_timeout(&self) -> Duration {
        self.inner.stream_idle_timeout
    }

    /// A stream's total deadline.
    ///
    /// ```
    /// let p = executionkit::OpenAiProvider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.stream_deadline().as_secs(), 600);
    /// ```
    #[must_use]
    pub fn stream_deadline(&self) -> Duration {
        self.inner.stream_deadline
    }

    /// The temperature sent when a request sets none.
    ///
    /// ```
    /// let p = executionkit::OpenAiProvider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.default_temperature(), 0.7);
    /// ```
    #[must_use]
    pub fn default_temperature(&self) -> f64 {
        self.inner.default_temperature
    }

    /// The `max_tokens` sent when a request sets none.
    ///
    /// ```
    /// let p = executionkit::OpenAiProvider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.default_max_tokens(), 4096);
    /// ```
    #[must_use]
    pub fn default_max_tokens(&self) -> u32 {
        self.inner.default_max_tokens
    }

    /// The JSON body [`LlmProvider::complete`] (or, with `stream`, [`LlmProvider::stream`])
    /// sends for `request`, serialised straight to bytes.
    ///
    /// ```
    /// use executionkit::{ChatRequest, Message, OpenAiProvider};
    /// let p = OpenAiProvider::builder("http://127.0.0.1:8080/v1", "test-model")
    ///     .default_temperature(0.25)
    ///     .default_max_tokens(321)
    ///     .build()
    ///     .unwrap();
    /// let body = p.request_body(&ChatRequest::new(vec![Message::user("hi")]), false).unwrap();
    /// assert_eq!(
    ///     std::str::from_utf8(&body).unwrap(),
    ///     r#"{"model":"test-model","messages":[{"role":"user","content":"hi"}],"temperature":0.25,"max_tokens":321}"#
    /// );
    /// ```
    pub fn request_body(&self, request: &ChatRequest, stream: bool) -> Result<Bytes> {
        self.inner.body(request, stream).map(Bytes::from)
    }
}

impl Inner {
    fn secret(&self) -> Option<&str> {
        self.http.secret()
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        request.validate()?;
        let body = self.body(request, false)?;
        let deadline = tokio::time::Instant::now() + self.http.timeout;
        let reply = self.http.send(body).await?;
        if !reply.status.is_success() {
            return Err(self.http.status_error(reply).await);
        }
        let bytes = self.http.read_body(reply, deadline).await?;
        parse_reply(&bytes).map_err(|e| self.http.scrub(e))
    }

    async fn open_stream(self: Arc<Self>, request: ChatRequest) -> Result<ChatStream> {
        request.validate()?;
        let body = self.body(&request, true)?;
        drop(request);
        let reply = self.http.send(body).await?;
        if !reply.status.is_success() {
            return Err(self.http.status_error(reply).await);
        }
        if is_json(&reply.headers) {
            // A server that ignores `"stream": true` answers with one JSON completion.
            return self.whole_reply_as_stream(reply).await;
        }
        let events = Endpoint::sse_events(
            reply,
            self.stream_deadline,
            self.stream_idle_timeout,
            &self.stream_limits,
        );
        let acc = StreamAccumulator::with_limits(self.stream_limits);
        Ok(streaming::decode(events, acc, self))
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    fn model(&self) -> &str {
        &self.inner.model
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        self.inner.complete(request).await
    }

    fn stream(&self, request: ChatRequest) -> ChatStream {
        let inner = Arc::clone(&self.inner);
        stream::once(inner.open_stream(request))
            .flat_map(|opened| match opened {
                Ok(events) => events,
                Err(e) => stream::iter([Err(e)]).boxed(),
            })
            .boxed()
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
        self.inner.secret()
    }

    fn response_format_refused(&self) -> bool {
        self.inner
            .response_format_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_response_format_refused(&self) {
        self.inner
            .response_format_refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
