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
//! ([`Structured`](crate::Structured) also states the schema in the prompt); `n` above 1 is
//! refused (one choice per request: [`LlmProvider::supports_n`] is `false`). `extra` keys are
//! merged into the body last, as for [`Provider`](super::Provider).
//!
//! A reply's text blocks are joined, its `tool_use` blocks become [`ToolCall`]s, its
//! `stop_reason` becomes the finish reason in the OpenAI vocabulary the patterns use
//! (`end_turn` and `stop_sequence` → `stop`, `max_tokens` → `length`, `tool_use` →
//! `tool_calls`, `refusal` → `content_filter`; any other value is kept), and its usage is read
//! with the prompt cache counted in: `input_tokens` is the sum of Anthropic's `input_tokens`,
//! `cache_read_input_tokens` and `cache_creation_input_tokens`, the last two also kept as
//! [`Usage::cache_read_input_tokens`] and [`Usage::cache_write_input_tokens`].
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

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{
    ConnectOptions, Endpoint, SseError, SseEvents, add_headers, check_durations, endpoint_url,
    is_json, mask, secret_header,
};
use super::openai::{
    DEFAULT_STREAM_DEADLINE, DEFAULT_STREAM_IDLE_TIMEOUT, DEFAULT_TEMPERATURE, DEFAULT_TIMEOUT,
};
use super::parse::{MAX_REPORTED_TOKENS, parse_tool_calls, truncate_chars};
use super::transport::{self, Reply};
use super::{
    ChatRequest, ChatStream, Choice, DEFAULT_MAX_TOKENS, LlmProvider, LlmResponse, Message, Role,
    StreamEvent, ToolCall, ToolChoice, Usage,
};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::redact;

/// The API root of Anthropic's service.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent unless the builder says otherwise.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

fn provider_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Provider, msg)
}

/// The Anthropic Messages provider.
///
/// Cheap to clone: clones share one pooled connection (keep-alive, rustls, no redirects). Its
/// base URL is the API root, as in Anthropic's SDKs ([`ANTHROPIC_BASE_URL`]); `complete` posts to
/// `{base}/v1/messages` with `x-api-key`, `anthropic-version` ([`ANTHROPIC_VERSION`]) and
/// `content-type: application/json`; `stream` does the same with `"stream": true`, lazily.
/// Statuses map as for [`Provider`](super::Provider): 429 → `rate_limited` with its
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

/// Builds an [`AnthropicProvider`]; every argument is checked by
/// [`AnthropicProviderBuilder::build`] before any request is sent.
///
/// ```
/// use std::time::Duration;
/// use executionkit::AnthropicProvider;
/// let p = AnthropicProvider::builder("https://api.anthropic.com", "claude-sonnet-4-5")
///     .api_key("sk-ant-key")
///     .header("anthropic-beta", "prompt-caching-2024-07-31")
///     .timeout(Duration::from_secs(60))
///     .default_max_tokens(1024)
///     .build()
///     .unwrap();
/// assert_eq!(p.default_max_tokens(), 1024);
/// let e = AnthropicProvider::builder("file:///etc/passwd", "m").build().unwrap_err();
/// assert!(e.message().contains("scheme must be 'http' or 'https'"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct AnthropicProviderBuilder {
    base_url: String,
    model: String,
    api_key: String,
    version: String,
    timeout: Duration,
    stream_idle_timeout: Duration,
    connect_timeout: Option<Duration>,
    headers: Vec<(String, String)>,
    default_temperature: f64,
    default_max_tokens: u32,
    stream_deadline: Duration,
    max_response_bytes: usize,
    root_pems: Vec<Vec<u8>>,
    use_env_proxy: bool,
}

impl fmt::Debug for AnthropicProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AnthropicProviderBuilder")
            .field("base_url", &redact(&self.base_url))
            .field("model", &self.model)
            .field("api_key", &mask(&self.api_key))
            .field("version", &self.version)
            .field("timeout", &self.timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("headers", &header_names)
            .field("default_temperature", &self.default_temperature)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("stream_deadline", &self.stream_deadline)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("root_certificates", &self.root_pems.len())
            .field("use_env_proxy", &self.use_env_proxy)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// Starts a builder for `model` at `base_url`, the API root (e.g.
    /// [`ANTHROPIC_BASE_URL`], or `http://127.0.0.1:8080` for a local fake): requests go to
    /// `{base_url}/v1/messages`.
    ///
    /// ```
    /// use executionkit::{AnthropicProvider, provider::ANTHROPIC_BASE_URL};
    /// assert!(AnthropicProvider::builder(ANTHROPIC_BASE_URL, "claude-haiku-4-5").build().is_ok());
    /// ```
    pub fn builder(
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> AnthropicProviderBuilder {
        AnthropicProviderBuilder {
            base_url: base_url.into(),
            model: model.into(),
            api_key: String::new(),
            version: ANTHROPIC_VERSION.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            connect_timeout: None,
            headers: Vec::new(),
            default_temperature: DEFAULT_TEMPERATURE,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            stream_deadline: DEFAULT_STREAM_DEADLINE,
            max_response_bytes: transport::DEFAULT_MAX_RESPONSE_BYTES,
            root_pems: Vec::new(),
            use_env_proxy: true,
        }
    }

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

impl AnthropicProviderBuilder {
    /// Sets the API key, sent as `x-api-key` (nothing when empty).
    ///
    /// ```
    /// let p = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .api_key("sk-ant-1234").build().unwrap();
    /// assert!(format!("{p:?}").contains("***"));
    /// ```
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = key.into();
        self
    }

    /// Sets the `anthropic-version` header (default [`ANTHROPIC_VERSION`], `2023-06-01`).
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .anthropic_version("bad\nvalue").build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "anthropic_version");
    /// ```
    pub fn anthropic_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the per-request timeout (default 120 s): connecting, sending and reading the whole
    /// reply of `complete`, and receiving the response head of `stream`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .timeout(Duration::from_secs(5)).build().unwrap();
    /// assert_eq!(p.timeout(), Duration::from_secs(5));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the stream idle timeout (default 60 s): a stream that sends no byte for this long
    /// (Anthropic's `ping` events count) fails with a `timeout` error.
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .stream_idle_timeout(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "stream_idle_timeout");
    /// ```
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// Sets a connect timeout (default: none beyond the request timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .connect_timeout(Duration::from_secs(2));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Adds a header sent with every request (e.g. `anthropic-beta`; it replaces a default
    /// header of the same name). Header values are treated as sensitive and never shown.
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .header("bad name", "x").build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "header");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the temperature sent when a request sets none (default 0.7, as for
    /// [`Provider`](super::Provider); the Messages API accepts 0 to 1).
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .default_temperature(-1.0).build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "default_temperature");
    /// ```
    pub fn default_temperature(mut self, t: f64) -> Self {
        self.default_temperature = t;
        self
    }

    /// Sets the `max_tokens` sent when a request sets none (default 4096).
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .default_max_tokens(0).build().unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    pub fn default_max_tokens(mut self, n: u32) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// Sets a stream's total deadline (default 10 minutes).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .stream_deadline(Duration::from_secs(30));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn stream_deadline(mut self, deadline: Duration) -> Self {
        self.stream_deadline = deadline;
        self
    }

    /// Caps one reply body (default 64 MiB): a larger reply fails with a `provider` error.
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m")
    ///     .max_response_bytes(0).build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "max_response_bytes");
    /// ```
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Trusts every certificate in `pem` (e.g. a private CA) for https, beside webpki's roots
    /// and the system's.
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::builder("https://127.0.0.1:1", "m")
    ///     .root_certificate_pem("not a certificate").build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "root_certificate_pem");
    /// ```
    pub fn root_certificate_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_pems.push(pem.as_ref().to_vec());
        self
    }

    /// Ignores the proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), which
    /// are honoured by default.
    ///
    /// ```
    /// assert!(executionkit::AnthropicProvider::builder("http://127.0.0.1:1", "m").no_proxy().build().is_ok());
    /// ```
    pub fn no_proxy(mut self) -> Self {
        self.use_env_proxy = false;
        self
    }

    /// Checks every argument and creates the pooled connection. Fails with `invalid_argument`
    /// naming the argument: empty model, a scheme other than http/https, an unparsable URL, a
    /// non-finite or negative default temperature, zero default `max_tokens`, a zero timeout,
    /// or a header (API key, version) that cannot be sent.
    ///
    /// ```
    /// let e = executionkit::AnthropicProvider::builder("ftp://host", "m").build().unwrap_err();
    /// assert!(e.message().contains("ftp://"));
    /// ```
    pub fn build(self) -> Result<AnthropicProvider> {
        if self.model.trim().is_empty() {
            return Err(Error::invalid_argument("model", "model must not be empty"));
        }
        let url = endpoint_url(&self.base_url, "/v1/messages")?;
        if !self.default_temperature.is_finite() || self.default_temperature < 0.0 {
            return Err(Error::invalid_argument(
                "default_temperature",
                format!(
                    "default_temperature must be a finite number >= 0, got {}",
                    self.default_temperature
                ),
            ));
        }
        if self.default_max_tokens == 0 {
            return Err(Error::invalid_argument(
                "default_max_tokens",
                "default_max_tokens must be >= 1, got 0",
            ));
        }
        check_durations(&[
            ("timeout", Some(self.timeout)),
            ("stream_idle_timeout", Some(self.stream_idle_timeout)),
            ("connect_timeout", self.connect_timeout),
            ("stream_deadline", Some(self.stream_deadline)),
        ])?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let version = HeaderValue::from_str(self.version.trim()).map_err(|_| {
            Error::invalid_argument(
                "anthropic_version",
                "anthropic_version cannot be sent in an HTTP header",
            )
        })?;
        headers.insert(HeaderName::from_static("anthropic-version"), version);
        if !self.api_key.is_empty() {
            headers.insert(
                HeaderName::from_static("x-api-key"),
                secret_header(&self.api_key, "api_key")?,
            );
        }
        add_headers(&mut headers, &self.headers)?;
        let transport = ConnectOptions {
            connect_timeout: self.connect_timeout,
            max_response_bytes: self.max_response_bytes,
            root_pems: &self.root_pems,
            use_env_proxy: self.use_env_proxy,
        }
        .transport(&url, headers)?;
        Ok(AnthropicProvider {
            inner: Arc::new(Inner {
                http: Endpoint {
                    transport: Arc::new(transport),
                    api_key: self.api_key,
                    timeout: self.timeout,
                },
                base_url: self.base_url,
                model: self.model,
                stream_idle_timeout: self.stream_idle_timeout,
                stream_deadline: self.stream_deadline,
                default_temperature: self.default_temperature,
                default_max_tokens: self.default_max_tokens,
            }),
        })
    }
}

// ------------------------------------------------------------------------------ the request

/// The content blocks of one wire message being built.
struct WireMessage {
    role: &'static str,
    blocks: Vec<Value>,
}

impl WireMessage {
    /// `{"role", "content"}`: one text block is sent as a plain string.
    fn into_json(self) -> Value {
        let content = match <[Value; 1]>::try_from(self.blocks) {
            Ok([block])
                if block["type"] == "text" && block.as_object().map(Map::len) == Some(2) =>
            {
                block["text"].clone()
            }
            Ok([block]) => Value::Array(vec![block]),
            Err(blocks) => Value::Array(blocks),
        };
        json!({"role": self.role, "content": content})
    }
}

/// The blocks `m` contributes, and the role it speaks in on the wire.
fn blocks_of(m: &Message) -> (&'static str, Vec<Value>) {
    let text = |t: &str| json!({"type": "text", "text": t});
    match m.role {
        Role::User | Role::System => {
            let blocks = if m.content.is_empty() {
                Vec::new()
            } else {
                vec![text(&m.content)]
            };
            ("user", blocks)
        }
        Role::Assistant => {
            let mut blocks = Vec::with_capacity(1 + m.tool_calls.len());
            if !m.content.is_empty() {
                blocks.push(text(&m.content));
            }
            blocks.extend(m.tool_calls.iter().map(tool_use_block));
            ("assistant", blocks)
        }
        Role::Tool => (
            "user",
            vec![json!({
                "type": "tool_result",
                "tool_use_id": m.tool_call_id.as_deref().unwrap_or(""),
                "content": m.content,
            })],
        ),
    }
}

fn tool_use_block(call: &ToolCall) -> Value {
    json!({
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": Value::Object(call.arguments.clone()),
    })
}

/// `system` (joined system messages, if any) and the alternating `messages`.
fn wire_messages(messages: &[Message]) -> (Option<String>, Vec<Value>) {
    let mut system: Option<String> = None;
    let mut out: Vec<WireMessage> = Vec::with_capacity(messages.len());
    for m in messages {
        if m.role == Role::System {
            if !m.content.is_empty() {
                match &mut system {
                    Some(s) => {
                        s.push_str("\n\n");
                        s.push_str(&m.content);
                    }
                    None => system = Some(m.content.clone()),
                }
            }
            continue;
        }
        let (role, blocks) = blocks_of(m);
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => out.push(WireMessage { role, blocks }),
        }
    }
    (
        system,
        out.into_iter().map(WireMessage::into_json).collect(),
    )
}

fn tool_choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    }
}

impl Inner {
    fn body(&self, request: &ChatRequest, stream: bool) -> Result<Vec<u8>> {
        if let Some(n) = request.n.filter(|&n| n > 1) {
            return Err(Error::invalid_argument(
                "n",
                format!(
                    "the Anthropic Messages API returns one choice per request: n must be 1, got {n}"
                ),
            ));
        }
        let (system, messages) = wire_messages(&request.messages);
        let mut body = Map::new();
        body.insert(
            "model".into(),
            request.model.as_deref().unwrap_or(&self.model).into(),
        );
        body.insert(
            "max_tokens".into(),
            request.max_tokens.unwrap_or(self.default_max_tokens).into(),
        );
        if let Some(s) = system {
            body.insert("system".into(), s.into());
        }
        body.insert("messages".into(), Value::Array(messages));
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "description": t.description,
                        "input_schema": t.parameters,
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            if let Some(choice) = &request.tool_choice {
                body.insert("tool_choice".into(), tool_choice_json(choice));
            }
        }
        body.insert(
            "temperature".into(),
            request
                .temperature
                .unwrap_or(self.default_temperature)
                .into(),
        );
        if let Some(p) = request.top_p {
            body.insert("top_p".into(), p.into());
        }
        if !request.stop.is_empty() {
            body.insert("stop_sequences".into(), request.stop.clone().into());
        }
        if stream {
            body.insert("stream".into(), true.into());
        }
        for (k, v) in &request.extra {
            body.insert(k.clone(), v.clone());
        }
        serde_json::to_vec(&body).map_err(|e| {
            Error::invalid_argument(
                "request",
                format!("the request could not be encoded as JSON: {e}"),
            )
        })
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
        let decoder = Decoder {
            events: Endpoint::sse_events(
                reply,
                self.stream_deadline,
                self.stream_idle_timeout,
                &super::sse::StreamLimits::default(),
            ),
            acc: MessageAccumulator::default(),
            pending: VecDeque::new(),
            scratch: Vec::new(),
            provider: self,
        };
        Ok(stream::unfold(Some(decoder), |state| async move {
            let mut d = state?;
            match d.next_item().await {
                Step::Item(ev) => Some((Ok(ev), Some(d))),
                Step::Last(r) => Some((r, None)),
            }
        })
        .boxed())
    }

    /// A non-streamed JSON reply to a stream request, as the events a stream would give.
    async fn whole_reply_as_stream(&self, reply: Box<Reply>) -> Result<ChatStream> {
        let bytes = self.http.read_whole_reply(reply).await?;
        let r = parse_message(&bytes).map_err(|e| self.http.scrub(e))?;
        let mut events = Vec::with_capacity(2 + r.tool_calls().len());
        if !r.content().is_empty() {
            events.push(Ok(StreamEvent::TextDelta(r.content().to_owned())));
        }
        for (i, call) in r.tool_calls().iter().enumerate() {
            events.push(Ok(StreamEvent::ToolCallDelta {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                id: (!call.id.is_empty()).then(|| call.id.clone()),
                name: Some(call.name.clone()),
                arguments: Value::Object(call.arguments.clone()).to_string(),
            }));
        }
        events.push(Ok(StreamEvent::Finished(r)));
        Ok(stream::iter(events).boxed())
    }
}

// ------------------------------------------------------------------------------ the reply

/// Anthropic's `stop_reason` in the vocabulary the patterns use.
fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_owned()
}

/// One usage count: a whole number from 0 to one billion; absent or `null` is 0.
fn usage_count(u: &Map<String, Value>, name: &str) -> Result<u64> {
    match u.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if x <= MAX_REPORTED_TOKENS => Ok(x),
            Some(x) => Err(provider_err(format!(
                "Provider usage field '{name}' is unreasonably large: {x}"
            ))),
            None => Err(provider_err(format!(
                "Provider usage field '{name}' must be a whole number >= 0, got {n}"
            ))),
        },
        Some(_) => Err(provider_err(format!(
            "Provider usage field '{name}' must be a whole number"
        ))),
    }
}

/// Anthropic usage: billed input is `input_tokens + cache_read_input_tokens +
/// cache_creation_input_tokens` (the cache parts also kept as subsets); output is
/// `output_tokens`.
fn parse_anthropic_usage(u: &Map<String, Value>) -> Result<Usage> {
    let uncached = usage_count(u, "input_tokens")?;
    let read = usage_count(u, "cache_read_input_tokens")?;
    let write = usage_count(u, "cache_creation_input_tokens")?;
    Ok(Usage {
        input_tokens: uncached.saturating_add(read).saturating_add(write),
        output_tokens: usage_count(u, "output_tokens")?,
        cache_read_input_tokens: read,
        cache_write_input_tokens: write,
        reasoning_tokens: 0,
    })
}

/// The error an Anthropic error object (`{"type": "…_error", "message": …}`) stands for.
fn error_event(error: Option<&Value>) -> Error {
    let kind_name = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = match kind_name {
        "rate_limit_error" => ErrorKind::RateLimited,
        "invalid_request_error"
        | "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "request_too_large"
        | "billing_error" => ErrorKind::Permanent,
        // overloaded_error, api_error and anything new: the server's fault, retryable.
        _ => ErrorKind::Provider,
    };
    let kind_name = redact(&truncate_chars(kind_name, 64));
    let text = if message.trim().is_empty() {
        format!("Provider reported an error ({kind_name})")
    } else {
        format!(
            "Provider reported an error ({kind_name}): {}",
            redact(&truncate_chars(message, 500))
        )
    };
    Error::new(kind, text)
}

/// Parses a 2xx Messages reply (a `message` object).
fn parse_message(body: &[u8]) -> Result<LlmResponse> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        provider_err(format!(
            "Provider returned a response body that is not JSON: {e}"
        ))
    })?;
    let Value::Object(mut obj) = value else {
        return Err(provider_err(
            "Provider returned a response body that is not a JSON object",
        ));
    };
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        return Err(error_event(obj.get("error")));
    }
    let Some(Value::Array(content)) = obj.remove("content") else {
        return Err(provider_err(
            "Provider response did not include a content list",
        ));
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        let Value::Object(mut block) = block else {
            return Err(provider_err("Provider content block was not an object"));
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(Value::String(t)) = block.remove("text") {
                    text.push_str(&t);
                }
            }
            Some("tool_use") => calls.push(json!({
                "id": block.remove("id").unwrap_or(Value::Null),
                "function": {
                    "name": block.remove("name").unwrap_or(Value::Null),
                    "arguments": block.remove("input").unwrap_or(Value::Null),
                },
            })),
            // thinking, redacted_thinking and server tool blocks carry no answer text.
            _ => {}
        }
    }
    let usage = match obj.get("usage") {
        Some(Value::Object(u)) => parse_anthropic_usage(u)?,
        _ => Usage::default(),
    };
    let mut string = |key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(LlmResponse {
        choices: vec![Choice {
            content: text,
            tool_calls: tool_calls(calls)?,
            finish_reason: string("stop_reason").map(|r| finish_reason(&r)),
        }],
        usage,
        id: string("id"),
        model: string("model"),
    })
}

/// Tool calls from wire-shaped values (an `input` object, or a streamed JSON text), decoded as
/// every provider decodes them: a missing name is a `provider` error; arguments that are not a
/// JSON object leave `arguments` empty with [`ToolCall::arguments_error`] set.
fn tool_calls(wire: Vec<Value>) -> Result<Vec<ToolCall>> {
    if wire.is_empty() {
        return Ok(Vec::new());
    }
    let wire: Vec<Value> = wire
        .into_iter()
        .map(|mut c| {
            // A non-object `input` goes through the string path, which records why it is unusable.
            let args = &mut c["function"]["arguments"];
            if !matches!(args, Value::Object(_) | Value::String(_) | Value::Null) {
                *args = Value::String(args.to_string());
            }
            c
        })
        .collect();
    parse_tool_calls(Some(&Value::Array(wire)))
}

// ------------------------------------------------------------------------------ the stream

/// A `tool_use` block being streamed.
#[derive(Debug, Default)]
struct PartialTool {
    /// Its content-block index.
    block: u64,
    id: String,
    name: String,
    /// The `input` of `content_block_start` (usually `{}`), used when no delta arrives.
    start_input: Option<Value>,
    json: String,
}

/// Accumulates the events of one streamed message into the final [`LlmResponse`].
#[derive(Debug, Default)]
struct MessageAccumulator {
    text: String,
    tools: Vec<PartialTool>,
    usage: Usage,
    stop_reason: Option<String>,
    stopped: bool,
    id: Option<String>,
    model: Option<String>,
}

impl MessageAccumulator {
    /// Feeds one SSE event (`event` is its name, `data` its payload), pushing the deltas it
    /// carries onto `out`. An `error` event is returned as the error it stands for.
    fn push(&mut self, event: &str, data: &str, out: &mut Vec<StreamEvent>) -> Result<()> {
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(data) else {
            return Err(provider_err(format!(
                "Provider sent an SSE data frame that is not a JSON object: {}",
                redact(&truncate_chars(data, 200))
            )));
        };
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event)
            .to_owned();
        match kind.as_str() {
            "message_start" => {
                if let Some(Value::Object(m)) = obj.get("message") {
                    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
                    self.id = text("id");
                    self.model = text("model");
                    if let Some(Value::Object(u)) = m.get("usage") {
                        self.usage = parse_anthropic_usage(u)?;
                    }
                }
            }
            "content_block_start" => self.block_start(&obj, out),
            "content_block_delta" => self.block_delta(&obj, out),
            "message_delta" => {
                if let Some(reason) = obj
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(Value::Object(u)) = obj.get("usage") {
                    self.merge_usage(u)?;
                }
            }
            "message_stop" => self.stopped = true,
            "error" => return Err(error_event(obj.get("error"))),
            // ping, content_block_stop, and event types added later: nothing to do.
            _ => {}
        }
        Ok(())
    }

    /// `message_delta` usage is cumulative: each count it carries replaces the one so far.
    fn merge_usage(&mut self, u: &Map<String, Value>) -> Result<()> {
        let has = |k: &str| u.get(k).is_some_and(|v| !v.is_null());
        if has("output_tokens") {
            self.usage.output_tokens = usage_count(u, "output_tokens")?;
        }
        if has("input_tokens")
            || has("cache_read_input_tokens")
            || has("cache_creation_input_tokens")
        {
            let uncached = if has("input_tokens") {
                usage_count(u, "input_tokens")?
            } else {
                uncached_input(&self.usage)
            };
            if has("cache_read_input_tokens") {
                self.usage.cache_read_input_tokens = usage_count(u, "cache_read_input_tokens")?;
            }
            if has("cache_creation_input_tokens") {
                self.usage.cache_write_input_tokens =
                    usage_count(u, "cache_creation_input_tokens")?;
            }
            self.usage.input_tokens = uncached
                .saturating_add(self.usage.cache_read_input_tokens)
                .saturating_add(self.usage.cache_write_input_tokens);
        }
        Ok(())
    }

    fn block_start(&mut self, obj: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let block_index = obj.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some(Value::Object(block)) = obj.get("content_block") else {
            return;
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = block.get("text").and_then(Value::as_str) {
                    self.push_text(t, out);
                }
            }
            Some("tool_use") => {
                let text = |k: &str| {
                    block
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let tool = PartialTool {
                    block: block_index,
                    id: text("id"),
                    name: text("name"),
                    start_input: block.get("input").cloned(),
                    json: String::new(),
                };
                out.push(StreamEvent::ToolCallDelta {
                    index: u32::try_from(self.tools.len()).unwrap_or(u32::MAX),
                    id: (!tool.id.is_empty()).then(|| tool.id.clone()),
                    name: (!tool.name.is_empty()).then(|| tool.name.clone()),
                    arguments: String::new(),
                });
                self.tools.push(tool);
            }
            _ => {}
        }
    }

    fn block_delta(&mut self, obj: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let block_index = obj.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some(Value::Object(delta)) = obj.get("delta") else {
            return;
        };
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    self.push_text(t, out);
                }
            }
            Some("input_json_delta") => {
                let Some(part) = delta.get("partial_json").and_then(Value::as_str) else {
                    return;
                };
                let Some(ordinal) = self.tools.iter().position(|t| t.block == block_index) else {
                    return;
                };
                self.tools[ordinal].json.push_str(part);
                if !part.is_empty() {
                    out.push(StreamEvent::ToolCallDelta {
                        index: u32::try_from(ordinal).unwrap_or(u32::MAX),
                        id: None,
                        name: None,
                        arguments: part.to_owned(),
                    });
                }
            }
            // thinking, signature and citations deltas carry no answer text.
            _ => {}
        }
    }

    /// An empty text is not yielded (it carries nothing, and would close the engine's
    /// retry-before-first-delta window).
    fn push_text(&mut self, t: &str, out: &mut Vec<StreamEvent>) {
        if !t.is_empty() {
            self.text.push_str(t);
            out.push(StreamEvent::TextDelta(t.to_owned()));
        }
    }

    /// The final response; a stream that saw neither `message_stop` nor a stop reason ended
    /// early (a `provider` error).
    fn finish(self) -> Result<LlmResponse> {
        if !self.stopped && self.stop_reason.is_none() {
            return Err(provider_err(
                "Provider stream ended early: no stop_reason and no message_stop were received",
            ));
        }
        let wire = self
            .tools
            .into_iter()
            .map(|t| {
                let arguments = if t.json.trim().is_empty() {
                    t.start_input.unwrap_or(Value::Null)
                } else {
                    Value::String(t.json)
                };
                json!({"id": t.id, "function": {"name": t.name, "arguments": arguments}})
            })
            .collect();
        Ok(LlmResponse {
            choices: vec![Choice {
                content: self.text,
                tool_calls: tool_calls(wire)?,
                finish_reason: self.stop_reason.as_deref().map(finish_reason),
            }],
            usage: self.usage,
            id: self.id,
            model: self.model,
        })
    }
}

/// Input tokens that were neither cache reads nor cache writes.
fn uncached_input(u: &Usage) -> u64 {
    u.input_tokens
        .saturating_sub(u.cache_read_input_tokens)
        .saturating_sub(u.cache_write_input_tokens)
}

/// The SSE decoding state of one open stream.
struct Decoder {
    events: SseEvents,
    acc: MessageAccumulator,
    pending: VecDeque<StreamEvent>,
    scratch: Vec<StreamEvent>,
    provider: Arc<Inner>,
}

enum Step {
    Item(StreamEvent),
    Last(Result<StreamEvent>),
}

impl Decoder {
    async fn next_item(&mut self) -> Step {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Step::Item(ev);
            }
            if self.acc.stopped {
                return Step::Last(self.finish());
            }
            match self.events.next().await {
                None => return Step::Last(self.finish()),
                Some(Ok(event)) => {
                    if let Err(e) = self.acc.push(&event.event, &event.data, &mut self.scratch) {
                        return Step::Last(Err(self.provider.http.scrub(e)));
                    }
                    self.pending.extend(self.scratch.drain(..));
                }
                Some(Err(e)) => return Step::Last(Err(self.stream_error(e))),
            }
        }
    }

    fn finish(&mut self) -> Result<StreamEvent> {
        std::mem::take(&mut self.acc)
            .finish()
            .map(StreamEvent::Finished)
            .map_err(|e| self.provider.http.scrub(e))
    }

    fn stream_error(&self, e: SseError) -> Error {
        self.provider.http.sse_error(e)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ToolSpec;

    fn provider() -> AnthropicProvider {
        AnthropicProvider::builder("http://127.0.0.1:9", "claude-test")
            .build()
            .unwrap()
    }

    fn body(r: &ChatRequest) -> Value {
        serde_json::from_slice(&provider().request_body(r, false).unwrap()).unwrap()
    }

    #[test]
    fn a_tool_round_maps_to_tool_use_and_tool_result_blocks() {
        let call = ToolCall::new("toolu_1", "add", json!({"a": 1, "b": 2}));
        let call2 = ToolCall::new("toolu_2", "add", json!({"a": 3, "b": 4}));
        let r = ChatRequest::new(vec![
            Message::system("You add."),
            Message::user("1+2 and 3+4?"),
            Message::assistant_tool_calls("Adding.", vec![call, call2]),
            Message::tool_result("toolu_1", "3"),
            Message::tool_result("toolu_2", "7"),
            Message::system("Answer with digits."),
        ])
        .tools(vec![ToolSpec::new(
            "add",
            "Adds",
            json!({"type": "object"}),
        )])
        .tool_choice(ToolChoice::Required)
        .stop(["END"])
        .top_p(0.5)
        .seed(3)
        .response_format(json!({"type": "json_object"}))
        .extra("top_k", 5);
        assert_eq!(
            body(&r),
            json!({
                "model": "claude-test",
                "max_tokens": 4096,
                "system": "You add.\n\nAnswer with digits.",
                "messages": [
                    {"role": "user", "content": "1+2 and 3+4?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Adding."},
                        {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1, "b": 2}},
                        {"type": "tool_use", "id": "toolu_2", "name": "add", "input": {"a": 3, "b": 4}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "3"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "7"},
                    ]},
                ],
                "tools": [{"name": "add", "description": "Adds", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any"},
                "temperature": 0.7,
                "top_p": 0.5,
                "stop_sequences": ["END"],
                "top_k": 5,
            })
        );
    }

    #[test]
    fn tool_choices_and_streams() {
        let t = ToolSpec::new("f", "d", json!({}));
        let with = |c: ToolChoice| {
            body(
                &ChatRequest::new(vec![Message::user("x")])
                    .tools(vec![t.clone()])
                    .tool_choice(c),
            )["tool_choice"]
                .clone()
        };
        assert_eq!(with(ToolChoice::Auto), json!({"type": "auto"}));
        assert_eq!(with(ToolChoice::None), json!({"type": "none"}));
        assert_eq!(
            with(ToolChoice::Function("f".into())),
            json!({"type": "tool", "name": "f"})
        );
        // Without tools no tool_choice is sent (the API would refuse it).
        let b = body(&ChatRequest::new(vec![Message::user("x")]).tool_choice(ToolChoice::Auto));
        assert!(b.get("tool_choice").is_none());
        let p = provider();
        let s: Value = serde_json::from_slice(
            &p.request_body(&ChatRequest::new(vec![Message::user("x")]), true)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(s["stream"], true);
    }

    #[test]
    fn n_above_one_is_refused() {
        let e = provider()
            .request_body(&ChatRequest::new(vec![Message::user("x")]).n(2), false)
            .unwrap_err();
        assert!(e.is_invalid_argument());
        assert_eq!(e.metadata()["argument"], "n");
        assert!(
            provider()
                .request_body(&ChatRequest::new(vec![Message::user("x")]).n(1), false)
                .is_ok()
        );
    }

    #[test]
    fn replies_parse_with_cache_usage_and_tool_calls() {
        let r = parse_message(
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test",
                 "content":[{"type":"thinking","thinking":"hmm","signature":"s"},
                            {"type":"text","text":"Let me "},{"type":"text","text":"add."},
                            {"type":"tool_use","id":"toolu_1","name":"add","input":{"a":1}},
                            {"type":"tool_use","id":"toolu_2","name":"add","input":[1]}],
                 "stop_reason":"tool_use","stop_sequence":null,
                 "usage":{"input_tokens":5,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,"output_tokens":9}}"#,
        )
        .unwrap();
        assert_eq!(r.content(), "Let me add.");
        assert_eq!(r.finish_reason(), Some("tool_calls"));
        assert_eq!(r.tool_calls().len(), 2);
        assert_eq!(r.tool_calls()[0].arguments["a"], 1);
        assert!(r.tool_calls()[1].arguments_error.is_some());
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 125,
                output_tokens: 9,
                cache_read_input_tokens: 100,
                cache_write_input_tokens: 20,
                reasoning_tokens: 0
            }
        );
        assert_eq!(r.id.as_deref(), Some("msg_1"));
        for (stop, reason) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
            ("pause_turn", "pause_turn"),
        ] {
            let body = format!(r#"{{"content":[],"stop_reason":"{stop}"}}"#);
            let r = parse_message(body.as_bytes()).unwrap();
            assert_eq!(r.finish_reason(), Some(reason));
        }
    }

    #[test]
    fn bad_replies_are_provider_errors() {
        for (body, needle) in [
            (&b"not json"[..], "not JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"type":"message"}"#, "content list"),
            (br#"{"content":[1]}"#, "not an object"),
            (
                br#"{"content":[{"type":"tool_use","id":"t","input":{}}]}"#,
                "name was missing",
            ),
            (
                br#"{"content":[],"usage":{"input_tokens":-1}}"#,
                "whole number",
            ),
            (
                br#"{"content":[],"usage":{"cache_read_input_tokens":2000000000}}"#,
                "unreasonably large",
            ),
        ] {
            let e = parse_message(body).unwrap_err();
            assert!(e.is_provider(), "{e:?}");
            assert!(e.message().contains(needle), "{needle}: {e}");
        }
        let e = parse_message(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap_err();
        assert!(e.is_provider());
        assert!(e.message().contains("overloaded_error"));
    }

    fn feed(acc: &mut MessageAccumulator, data: &str) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        acc.push("", data, &mut out).unwrap();
        out
    }

    #[test]
    fn a_stream_with_a_tool_use_accumulates_and_counts_cache_usage() {
        let mut acc = MessageAccumulator::default();
        feed(
            &mut acc,
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-test","content":[],"usage":{"input_tokens":3,"cache_read_input_tokens":40,"cache_creation_input_tokens":0,"output_tokens":1}}}"#,
        );
        assert!(feed(&mut acc, r#"{"type":"ping"}"#).is_empty());
        feed(
            &mut acc,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        );
        let t = feed(
            &mut acc,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Adding"}}"#,
        );
        assert_eq!(t, vec![StreamEvent::TextDelta("Adding".into())]);
        feed(&mut acc, r#"{"type":"content_block_stop","index":0}"#);
        let start = feed(
            &mut acc,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"add","input":{}}}"#,
        );
        assert_eq!(
            start,
            vec![StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("toolu_1".into()),
                name: Some("add".into()),
                arguments: String::new()
            }]
        );
        for part in [r#"{\"a\": "#, r"1}"] {
            let d = feed(
                &mut acc,
                &format!(
                    r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"input_json_delta","partial_json":"{part}"}}}}"#
                ),
            );
            assert!(
                matches!(
                    &d[..],
                    [StreamEvent::ToolCallDelta {
                        index: 0,
                        id: None,
                        ..
                    }]
                ),
                "{d:?}"
            );
        }
        feed(
            &mut acc,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":17}}"#,
        );
        feed(&mut acc, r#"{"type":"message_stop"}"#);
        let r = acc.finish().unwrap();
        assert_eq!(r.content(), "Adding");
        assert_eq!(r.finish_reason(), Some("tool_calls"));
        assert_eq!(r.tool_calls()[0].arguments["a"], 1);
        assert_eq!(
            (
                r.usage.input_tokens,
                r.usage.output_tokens,
                r.usage.cache_read_input_tokens
            ),
            (43, 17, 40)
        );
    }

    #[test]
    fn a_tool_without_deltas_takes_its_start_input_and_unknown_events_pass() {
        let mut acc = MessageAccumulator::default();
        feed(
            &mut acc,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"now","input":{}}}"#,
        );
        assert!(feed(&mut acc, r#"{"type":"something_new","x":1}"#).is_empty());
        feed(
            &mut acc,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":2,"input_tokens":7,"cache_creation_input_tokens":5}}"#,
        );
        let r = acc.finish().unwrap();
        assert!(r.tool_calls()[0].arguments.is_empty());
        assert!(r.tool_calls()[0].arguments_error.is_none());
        assert_eq!(
            (r.usage.input_tokens, r.usage.cache_write_input_tokens),
            (12, 5)
        );
    }

    #[test]
    fn error_events_map_to_our_kinds_and_early_ends_fail() {
        let mut acc = MessageAccumulator::default();
        for (kind, check) in [
            ("overloaded_error", Error::is_provider as fn(&Error) -> bool),
            ("api_error", Error::is_provider),
            ("rate_limit_error", Error::is_rate_limited),
            ("invalid_request_error", Error::is_permanent),
        ] {
            let e = acc
                .push(
                    "error",
                    &format!(
                        r#"{{"type":"error","error":{{"type":"{kind}","message":"no sk-abcdefghijklmnop"}}}}"#
                    ),
                    &mut Vec::new(),
                )
                .unwrap_err();
            assert!(check(&e), "{kind}: {e:?}");
            assert!(!e.message().contains("sk-abcdefghijklmnop"), "{e}");
        }
        let mut acc = MessageAccumulator::default();
        feed(
            &mut acc,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
        );
        let e = acc.finish().unwrap_err();
        assert!(e.message().contains("ended early"), "{e}");
        assert!(
            MessageAccumulator::default()
                .push("", "not json", &mut Vec::new())
                .unwrap_err()
                .is_provider()
        );
    }
}
