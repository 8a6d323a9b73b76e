//! The native Anthropic Messages provider: `POST {base}/v1/messages` over the crate's one HTTP
//! transport, in JSON and server-sent events.
//!
//! Our [`ChatRequest`] is mapped to the Messages API: system messages become the top-level
//! `system` text (joined by a blank line, in order); user and assistant messages keep their
//! roles, consecutive messages of one role are merged into one message (the API wants the roles
//! to alternate); an assistant's tool calls become `tool_use` blocks and tool results become
//! `tool_result` blocks of a user message; tools are sent as `{name, description, input_schema}`;
//! `stop` becomes `stop_sequences`; `max_tokens` is always sent (the API requires it).
//! `response_format` and `seed` have no Messages equivalent and are not sent
//! ([`Structured`](crate::Structured) also states the schema in the prompt), nor has
//! `logprobs` (replies carry no [`Choice::logprobs`](crate::Choice::logprobs)); `n` above 1 is
//! refused (one choice per request: [`LlmProvider::supports_n`] is `false`). `extra` keys are
//! merged into the body last, as for [`OpenAiProvider`](super::OpenAiProvider).
//!
//! A reply's text blocks are joined, its `tool_use` blocks become [`ToolCall`]s, its
//! `stop_reason` becomes the finish reason in the OpenAI vocabulary the patterns use
//! (`end_turn` and `stop_sequence` → `stop`, `max_tokens` → `length`, `tool_use` →
//! `tool_calls`, `refusal` → `content_filter`; any other value is kept), and its usage is read
//! with the prompt cache counted in: `input_tokens` is the sum of Anthropic's `input_tokens`,
//! `cache_read_input_tokens` and `cache_creation_input_tokens`, the last two also kept as
//! [`Usage::cache_read_input_tokens`] and [`Usage::cache_write_input_tokens`].
//!
//! [`ToolCall`]: crate::ToolCall
//! [`Usage::cache_read_input_tokens`]: crate::provider::Usage::cache_read_input_tokens
//! [`Usage::cache_write_input_tokens`]: crate::provider::Usage::cache_write_input_tokens
//!
//! ```
//! use executionkit::{AnthropicProvider, LlmProvider};
//! let p = AnthropicProvider::builder("https://api.anthropic.com", "claude-sonnet-4-5")
//!     .api_key("sk-ant-secret-key")
//!     .build()
//!     .unwrap();
//! assert_eq!(p.model(), "claude-sonnet-4-5");
//! assert!(!p.supports_n());
//! assert!(!format!("{p:?}").contains("sk-ant-secret-key"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};

use super::http::{Endpoint, is_json, mask};
use super::sse::StreamLimits;
use super::{ChatRequest, ChatStream, LlmProvider, LlmResponse};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::redact;

mod builder;
mod reply;
mod request;
mod streaming;
#[cfg(test)]
mod tests;

pub use builder::AnthropicProviderBuilder;
pub(crate) use reply::parse_message;

/// The API root of Anthropic's service.
#[cfg_attr(not(feature = "testing"), allow(dead_code))] // documents the default; tests use it
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent unless the builder says otherwise.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

fn provider_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Provider, msg)
}

/// The Anthropic Messages provider.
///
/// Cheap to clone: clones share one pooled connection (keep-alive, rustls, no redirects). Its
/// base URL is the API root, as in Anthropic's SDKs (`ANTHROPIC_BASE_URL`); `complete` posts to
/// `{base}/v1/messages` with `x-api-key`, `anthropic-version` (`ANTHROPIC_VERSION`) and
/// `content-type: application/json`; `stream` does the same with `"stream": true`, lazily.
/// Statuses map as for [`OpenAiProvider`](super::OpenAiProvider): 429 → `rate_limited` with its
/// `Retry-After`; 400, 401, 403, 404, 413 → `permanent`; 5xx and 529 (`overloaded_error`) →
/// `provider`, which the default retry policy retries. The API key is masked in `Debug` and
/// removed from every error.
///
/// ```
/// use executionkit::{AnthropicProvider, LlmProvider};
/// let p = AnthropicProvider::new("https://api.anthropic.com", "claude-haiku-4-5").unwrap();
/// assert_eq!(p.base_url(), "https://api.anthropic.com");
/// assert!(p.supports_streaming() && p.supports_tools() && !p.supports_n());
/// ```
#[derive(Clone)]
pub struct AnthropicProvider {
    inner: Arc<Inner>,
}

struct Inner {
    http: Endpoint,
    base_url: String,
    model: String,
    stream_idle_timeout: Duration,
    stream_deadline: Duration,
    default_temperature: f64,
    default_max_tokens: u32,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("base_url", &redact(&self.inner.base_url))
            .field("model", &self.inner.model)
            .field("api_key", &mask(&self.inner.http.api_key))
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// A provider with every default and no API key.
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::new("https://api.anthropic.com", " ").unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Result<Self> {
        Self::builder(base_url, model).build()
    }

    /// The base URL (the API root), as given.
    ///
    /// ```
    /// let p = executionkit::AnthropicProvider::new("http://127.0.0.1:8080", "m").unwrap();
    /// assert_eq!(p.base_url(), "http://127.0.0.1:8080");
    /// ```
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The per-request timeout.
    ///
    /// ```
    /// let p = executionkit::AnthropicProvider::new("http://127.0.0.1:8080", "m").unwrap();
    /// assert_eq!(p.timeout().as_secs(), 120);
    /// ```
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.inner.http.timeout
    }

    /// The temperature sent when a request sets none.
    ///
    /// ```
    /// let p = executionkit::AnthropicProvider::new("http://127.0.0.1:8080", "m").unwrap();
    /// assert_eq!(p.default_temperature(), 0.7);
    /// ```
    #[must_use]
    pub fn default_temperature(&self) -> f64 {
        self.inner.default_temperature
    }

    /// The `max_tokens` sent when a request sets none (the Messages API requires one).
    ///
    /// ```
    /// let p = executionkit::AnthropicProvider::new("http://127.0.0.1:8080", "m").unwrap();
    /// assert_eq!(p.default_max_tokens(), 4096);
    /// ```
    #[must_use]
    pub fn default_max_tokens(&self) -> u32 {
        self.inner.default_max_tokens
    }

    /// The JSON body [`LlmProvider::complete`] (or, with `stream`, [`LlmProvider::stream`])
    /// sends for `request`.
    ///
    /// ```
    /// use executionkit::{AnthropicProvider, ChatRequest, Message};
    /// let p = AnthropicProvider::builder("http://127.0.0.1:8080", "claude-test")
    ///     .default_max_tokens(256)
    ///     .build()
    ///     .unwrap();
    /// let req = ChatRequest::new(vec![Message::system("Be brief."), Message::user("hi")]).temperature(0.0);
    /// let body: serde_json::Value = serde_json::from_slice(&p.request_body(&req, false).unwrap()).unwrap();
    /// assert_eq!(body, serde_json::json!({
    ///     "model": "claude-test",
    ///     "max_tokens": 256,
    ///     "system": "Be brief.",
    ///     "messages": [{"role": "user", "content": "hi"}],
    ///     "temperature": 0.0,
    /// }));
    /// ```
    pub fn request_body(&self, request: &ChatRequest, stream: bool) -> Result<Bytes> {
        self.inner.body(request, stream).map(Bytes::from)
    }
}

impl Inner {
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        request.validate()?;
        let body = self.body(request, false)?;
        let deadline = tokio::time::Instant::now() + self.http.timeout;
        let reply = self.http.send(body).await?;
        if !reply.status.is_success() {
            return Err(self.http.status_error(reply).await);
        }
        let bytes = self.http.read_body(reply, deadline).await?;
        parse_message(&bytes).map_err(|e| self.http.scrub(e))
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
            // A server that ignores `"stream": true` answers with one JSON message.
            return self.whole_reply_as_stream(reply).await;
        }
        let events = Endpoint::sse_events(
            reply,
            self.stream_deadline,
            self.stream_idle_timeout,
            &StreamLimits::default(),
        );
        Ok(streaming::decode(events, self))
    }
}

#[async_trait]
impl LlmProvider for AnthropicProvider {
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
        false
    }

    fn secret(&self) -> Option<&str> {
        self.inner.http.secret()
    }
}
