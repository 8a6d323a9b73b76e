//! The OpenAI-compatible HTTP provider: one pooled hyper transport (HTTP/1.1 and HTTP/2,
//! rustls, proxies from the environment, no redirects) speaking the chat-completions dialect in
//! JSON and SSE.
//!
//! ```
//! use std::time::Duration;
//! use executionkit::Provider;
//! let p = Provider::builder("http://127.0.0.1:8080/v1", "smollm2")
//!     .api_key("sk-local-secret")
//!     .timeout(Duration::from_secs(30))
//!     .default_temperature(0.2)
//!     .build()
//!     .unwrap();
//! let shown = format!("{p:?}");
//! assert!(shown.contains("***") && !shown.contains("sk-local-secret"));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use url::Url;

use super::parse::{error_detail, is_insufficient_quota, parse_completion, parse_retry_after};
use super::sse::{IdleError, IdleTimeout, StreamAccumulator};
use super::transport::{self, BodyStream, Reply, Settings, Transport, TransportError};
use super::{ChatRequest, ChatStream, DEFAULT_MAX_TOKENS, LlmProvider, LlmResponse, StreamEvent};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::{redact, redact_with};

/// The default per-request timeout (120 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The default stream idle timeout (60 s): a stream that sends nothing for this long fails.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default total deadline of a stream (10 minutes): keep-alives and comments do not extend it.
pub const DEFAULT_STREAM_DEADLINE: Duration = Duration::from_secs(600);
/// The default temperature of requests that set none (0.7).
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

/// The longest error-body prefix read to classify a failed reply.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The longest server-supplied detail kept in an error message.
const MAX_DETAIL_CHARS: usize = 1000;

/// The OpenAI-compatible HTTP provider.
///
/// Cheap to clone: clones share one pooled HTTP client (keep-alive, rustls, no redirects).
/// `complete` posts to `<base_url>/chat/completions`; `stream` does the same with
/// `"stream": true` and `"stream_options": {"include_usage": true}`, lazily (nothing is sent
/// until the stream is first polled). The API key is masked in `Debug` and removed from every
/// error message.
///
/// ```
/// use executionkit::{LlmProvider, Provider};
/// let p = Provider::new("https://api.example.com/v1/", "gpt-4o-mini").unwrap();
/// assert_eq!(p.model(), "gpt-4o-mini");
/// assert_eq!(p.base_url(), "https://api.example.com/v1/");
/// assert!(p.supports_streaming() && p.supports_tools());
/// ```
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<Transport>,
    base_url: String,
    model: String,
    api_key: String,
    timeout: Duration,
    stream_idle_timeout: Duration,
    default_temperature: f64,
    default_max_tokens: u32,
    supports_n: bool,
    stream_deadline: Duration,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("base_url", &redact(&self.inner.base_url))
            .field("model", &self.inner.model)
            .field("api_key", &mask(&self.inner.api_key))
            .finish_non_exhaustive()
    }
}

fn mask(key: &str) -> &'static str {
    if key.is_empty() { "" } else { "***" }
}

/// Builds a [`Provider`]; every argument is checked by [`ProviderBuilder::build`] before any
/// request is sent.
///
/// ```
/// use executionkit::Provider;
/// let p = Provider::builder("https://my-azure.openai.azure.com/openai/deployments/gpt4o", "gpt-4o")
///     .header("api-key", "azure-key")
///     .query("api-version", "2024-10-21")
///     .supports_n(false)
///     .build()
///     .unwrap();
/// # let _ = p;
/// let e = Provider::builder("file:///etc/passwd", "m").build().unwrap_err();
/// assert!(e.message().contains("scheme must be 'http' or 'https'"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct ProviderBuilder {
    base_url: String,
    model: String,
    api_key: String,
    timeout: Duration,
    stream_idle_timeout: Duration,
    connect_timeout: Option<Duration>,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    default_temperature: f64,
    default_max_tokens: u32,
    supports_n: bool,
    stream_deadline: Duration,
    max_response_bytes: usize,
    root_pems: Vec<Vec<u8>>,
    use_env_proxy: bool,
}

impl fmt::Debug for ProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ProviderBuilder")
            .field("base_url", &redact(&self.base_url))
            .field("model", &self.model)
            .field("api_key", &mask(&self.api_key))
            .field("timeout", &self.timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("headers", &header_names)
            .field("default_temperature", &self.default_temperature)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("supports_n", &self.supports_n)
            .field("stream_deadline", &self.stream_deadline)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("root_certificates", &self.root_pems.len())
            .field("use_env_proxy", &self.use_env_proxy)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Starts a builder for `model` at `base_url` (e.g. `http://127.0.0.1:8080/v1`).
    ///
    /// ```
    /// let b = executionkit::Provider::builder("http://localhost:11434/v1", "llama3");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn builder(base_url: impl Into<String>, model: impl Into<String>) -> ProviderBuilder {
        ProviderBuilder {
            base_url: base_url.into(),
            model: model.into(),
            api_key: String::new(),
            timeout: DEFAULT_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            connect_timeout: None,
            headers: Vec::new(),
            query: Vec::new(),
            default_temperature: DEFAULT_TEMPERATURE,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            supports_n: true,
            stream_deadline: DEFAULT_STREAM_DEADLINE,
            max_response_bytes: transport::DEFAULT_MAX_RESPONSE_BYTES,
            root_pems: Vec::new(),
            use_env_proxy: true,
        }
    }

    /// A provider with every default and no API key.
    ///
    /// ```
    /// let e = executionkit::Provider::new("http://127.0.0.1:8080/v1", " ").unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Result<Self> {
        Self::builder(base_url, model).build()
    }

    /// The base URL, as given.
    ///
    /// ```
    /// let p = executionkit::Provider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.base_url(), "http://127.0.0.1:8080/v1");
    /// ```
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The per-request timeout.
    ///
    /// ```
    /// let p = executionkit::Provider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.timeout().as_secs(), 120);
    /// ```
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The stream idle timeout.
    ///
    /// ```
    /// let p = executionkit::Provider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.stream_idle_timeout().as_secs(), 60);
    /// ```
    #[must_use]
    pub fn stream_idle_timeout(&self) -> Duration {
        self.inner.stream_idle_timeout
    }

    /// A stream's total deadline.
    ///
    /// ```
    /// let p = executionkit::Provider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.stream_deadline().as_secs(), 600);
    /// ```
    #[must_use]
    pub fn stream_deadline(&self) -> Duration {
        self.inner.stream_deadline
    }

    /// The temperature sent when a request sets none.
    ///
    /// ```
    /// let p = executionkit::Provider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert_eq!(p.default_temperature(), 0.7);
    /// ```
    #[must_use]
    pub fn default_temperature(&self) -> f64 {
        self.inner.default_temperature
    }

    /// The `max_tokens` sent when a request sets none.
    ///
    /// ```
    /// let p = executionkit::Provider::new("http://127.0.0.1:8080/v1", "m").unwrap();
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
    /// use executionkit::{ChatRequest, Message, Provider};
    /// let p = Provider::builder("http://127.0.0.1:8080/v1", "test-model")
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

impl ProviderBuilder {
    /// Sets the API key, sent as `Authorization: Bearer <key>` (nothing when empty).
    ///
    /// ```
    /// let p = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").api_key("k-1234").build().unwrap();
    /// assert!(format!("{p:?}").contains("***"));
    /// ```
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = key.into();
        self
    }

    /// Sets the per-request timeout (default 120 s): connecting, sending and reading the whole
    /// reply of `complete`, and receiving the response head of `stream`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").timeout(Duration::from_secs(5)).build().unwrap();
    /// assert_eq!(p.timeout(), Duration::from_secs(5));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the stream idle timeout (default 60 s): a stream that sends no byte for this long
    /// fails with a `timeout` error.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m")
    ///     .stream_idle_timeout(Duration::from_millis(300)).build().unwrap();
    /// assert_eq!(p.stream_idle_timeout(), Duration::from_millis(300));
    /// ```
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// Sets a connect timeout (default: none beyond the request timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").connect_timeout(Duration::from_secs(2));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Adds a header sent with every request (it replaces a default header of the same name).
    /// Header values are treated as sensitive and never shown.
    ///
    /// ```
    /// let e = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").header("bad name", "x").build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "header");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a query parameter to the endpoint URL (e.g. Azure's `api-version`).
    ///
    /// ```
    /// let b = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").query("api-version", "2024-10-21");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Sets the temperature sent when a request sets none (default 0.7).
    ///
    /// ```
    /// let e = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").default_temperature(f64::NAN).build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "default_temperature");
    /// ```
    pub fn default_temperature(mut self, t: f64) -> Self {
        self.default_temperature = t;
        self
    }

    /// Sets the `max_tokens` sent when a request sets none (default 4096).
    ///
    /// ```
    /// let e = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").default_max_tokens(0).build().unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    pub fn default_max_tokens(mut self, n: u32) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// Declares whether the server honours `n` (several choices per request; default `true`).
    ///
    /// ```
    /// use executionkit::LlmProvider;
    /// let p = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").supports_n(false).build().unwrap();
    /// assert!(!p.supports_n());
    /// ```
    pub fn supports_n(mut self, yes: bool) -> Self {
        self.supports_n = yes;
        self
    }

    /// Sets a stream's total deadline (default 10 minutes): a stream still open this long after
    /// its reply head arrived fails with a `timeout` error, however steadily it sends.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m")
    ///     .stream_deadline(Duration::from_secs(30)).build().unwrap();
    /// assert_eq!(p.stream_deadline(), Duration::from_secs(30));
    /// ```
    pub fn stream_deadline(mut self, deadline: Duration) -> Self {
        self.stream_deadline = deadline;
        self
    }

    /// Caps one reply body (default 64 MiB, counted in raw bytes read over HTTP/1.1): a larger
    /// reply fails with a `provider` error and its connection is closed.
    ///
    /// ```
    /// let e = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").max_response_bytes(0).build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "max_response_bytes");
    /// ```
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Trusts every certificate in `pem` (e.g. a private CA) for https, beside webpki's roots
    /// and the system's (`SSL_CERT_FILE` / `SSL_CERT_DIR` replace the system's when set).
    ///
    /// ```
    /// let e = executionkit::Provider::builder("https://127.0.0.1:1/v1", "m")
    ///     .root_certificate_pem("not a certificate").build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "root_certificate_pem");
    /// ```
    pub fn root_certificate_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_pems.push(pem.as_ref().to_vec());
        self
    }

    /// Ignores the proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, in
    /// either case), which are honoured by default.
    ///
    /// ```
    /// let p = executionkit::Provider::builder("http://127.0.0.1:1/v1", "m").no_proxy().build();
    /// assert!(p.is_ok());
    /// ```
    pub fn no_proxy(mut self) -> Self {
        self.use_env_proxy = false;
        self
    }

    /// Checks every argument and creates the pooled client. Fails with `invalid_argument`
    /// naming the argument: empty model, a scheme other than http/https, an unparsable URL, a
    /// non-finite or negative default temperature, zero default `max_tokens`, a zero timeout,
    /// or a header name/value (or API key) that cannot be sent.
    ///
    /// ```
    /// let e = executionkit::Provider::builder("ftp://host/v1", "m").build().unwrap_err();
    /// assert!(e.message().contains("ftp://"));
    /// ```
    pub fn build(self) -> Result<Provider> {
        if self.model.trim().is_empty() {
            return Err(Error::invalid_argument("model", "model must not be empty"));
        }
        let scheme = scheme_of(&self.base_url);
        if scheme != "http" && scheme != "https" {
            return Err(Error::invalid_argument(
                "base_url",
                format!("base_url scheme must be 'http' or 'https', got '{scheme}://'"),
            ));
        }
        let mut url = Url::parse(self.base_url.trim()).map_err(|e| {
            Error::invalid_argument("base_url", format!("base_url is not a valid URL: {e}"))
        })?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::invalid_argument(
                "base_url",
                "base_url is not a valid URL: it has no host",
            ));
        }
        let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
        url.set_path(&path);
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &self.query {
                pairs.append_pair(k, v);
            }
        }
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
        for (name, d) in [
            ("timeout", Some(self.timeout)),
            ("stream_idle_timeout", Some(self.stream_idle_timeout)),
            ("connect_timeout", self.connect_timeout),
            ("stream_deadline", Some(self.stream_deadline)),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(Error::invalid_argument(
                    name,
                    format!("{name} must be greater than zero"),
                ));
            }
        }

        if self.max_response_bytes == 0 {
            return Err(Error::invalid_argument(
                "max_response_bytes",
                "max_response_bytes must be >= 1, got 0",
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !self.api_key.is_empty() {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", self.api_key)).map_err(|_| {
                    Error::invalid_argument(
                        "api_key",
                        "api_key contains characters that cannot be sent in an HTTP header",
                    )
                })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                Error::invalid_argument(
                    "header",
                    format!(
                        "header name {:?} is not a valid HTTP header name",
                        redact(name)
                    ),
                )
            })?;
            let mut v = HeaderValue::from_str(value).map_err(|_| {
                Error::invalid_argument(
                    "header",
                    format!("the value of header '{n}' cannot be sent in an HTTP header"),
                )
            })?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }

        let mut roots = Vec::new();
        for pem in &self.root_pems {
            roots.extend(transport::pem_certificates(pem).map_err(|e| {
                Error::invalid_argument(
                    "root_certificate_pem",
                    format!("root_certificate_pem: {e}"),
                )
            })?);
        }
        let settings = Settings {
            connect_timeout: self.connect_timeout,
            max_response_bytes: self.max_response_bytes,
            roots,
            use_env_proxy: self.use_env_proxy,
        };
        let transport = Transport::new(&url, headers, settings).map_err(|e| {
            Error::invalid_argument(
                "base_url",
                format!("base_url cannot be used: {}", redact(&e)),
            )
        })?;
        Ok(Provider {
            inner: Arc::new(Inner {
                transport: Arc::new(transport),
                base_url: self.base_url,
                model: self.model,
                api_key: self.api_key,
                timeout: self.timeout,
                stream_idle_timeout: self.stream_idle_timeout,
                default_temperature: self.default_temperature,
                default_max_tokens: self.default_max_tokens,
                supports_n: self.supports_n,
                stream_deadline: self.stream_deadline,
            }),
        })
    }
}

/// The text before the first `://` (or the first `:`), lower-cased.
fn scheme_of(url: &str) -> String {
    let url = url.trim();
    let end = url
        .find("://")
        .or_else(|| url.find(':'))
        .unwrap_or(url.len());
    url[..end].to_ascii_lowercase()
}

/// The JSON body: model, messages, temperature, max_tokens, tools, tool_choice,
/// response_format, top_p, stop, seed, n, (stream, stream_options), then `extra` merged last:
/// an extra key that names one of these replaces its value in place; the others follow.
struct WireBody<'a> {
    model: &'a str,
    request: &'a ChatRequest,
    temperature: f64,
    max_tokens: u32,
    stream: bool,
}

impl WireBody<'_> {
    /// `true` when the body already holds `key` (so an extra with that name replaced it).
    fn has_key(&self, key: &str) -> bool {
        let r = self.request;
        match key {
            "model" | "messages" | "temperature" | "max_tokens" => true,
            "tools" => !r.tools.is_empty(),
            "tool_choice" => r.tool_choice.is_some(),
            "response_format" => r.response_format.is_some(),
            "top_p" => r.top_p.is_some(),
            "stop" => !r.stop.is_empty(),
            "seed" => r.seed.is_some(),
            "n" => r.n.is_some(),
            "stream" | "stream_options" => self.stream,
            _ => false,
        }
    }
}

fn put<M: SerializeMap, T: Serialize + ?Sized>(
    m: &mut M,
    extra: &Map<String, Value>,
    key: &'static str,
    value: &T,
) -> std::result::Result<(), M::Error> {
    match extra.get(key) {
        Some(v) => m.serialize_entry(key, v),
        None => m.serialize_entry(key, value),
    }
}

struct StreamOptions;

impl Serialize for StreamOptions {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("include_usage", &true)?;
        m.end()
    }
}

impl Serialize for WireBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let r = self.request;
        let x = &r.extra;
        let mut m = s.serialize_map(None)?;
        put(&mut m, x, "model", self.model)?;
        put(&mut m, x, "messages", &r.messages)?;
        put(&mut m, x, "temperature", &self.temperature)?;
        put(&mut m, x, "max_tokens", &self.max_tokens)?;
        if !r.tools.is_empty() {
            put(&mut m, x, "tools", &r.tools)?;
        }
        if let Some(tc) = &r.tool_choice {
            put(&mut m, x, "tool_choice", tc)?;
        }
        if let Some(rf) = &r.response_format {
            put(&mut m, x, "response_format", rf)?;
        }
        if let Some(p) = r.top_p {
            put(&mut m, x, "top_p", &p)?;
        }
        if !r.stop.is_empty() {
            put(&mut m, x, "stop", &r.stop)?;
        }
        if let Some(seed) = r.seed {
            put(&mut m, x, "seed", &seed)?;
        }
        if let Some(n) = r.n {
            put(&mut m, x, "n", &n)?;
        }
        if self.stream {
            put(&mut m, x, "stream", &true)?;
            put(&mut m, x, "stream_options", &StreamOptions)?;
        }
        for (k, v) in x {
            if !self.has_key(k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl Inner {
    fn body(&self, request: &ChatRequest, stream: bool) -> Result<Vec<u8>> {
        let body = WireBody {
            model: request.model.as_deref().unwrap_or(&self.model),
            request,
            temperature: request.temperature.unwrap_or(self.default_temperature),
            max_tokens: request.max_tokens.unwrap_or(self.default_max_tokens),
            stream,
        };
        let estimate = 192
            + request
                .messages
                .iter()
                .map(|m| m.content.len() + 32)
                .sum::<usize>();
        let mut buf = Vec::with_capacity(estimate);
        serde_json::to_writer(&mut buf, &body).map_err(|e| {
            Error::invalid_argument(
                "request",
                format!("the request could not be encoded as JSON: {e}"),
            )
        })?;
        Ok(buf)
    }

    fn secret(&self) -> Option<&str> {
        (!self.api_key.is_empty()).then_some(self.api_key.as_str())
    }

    /// Redacts credential shapes and the key itself (any case, percent-encoded, base64) from
    /// server or transport text.
    fn clean(&self, text: &str) -> String {
        redact_with(text, self.secret())
    }

    /// Makes sure the key appears nowhere in an error's message or metadata.
    fn scrub(&self, e: Error) -> Error {
        e.redacted_with(self.secret())
    }

    /// A `transport` (or, for a timeout, `timeout`; for a protocol break or a cap, `provider`)
    /// error: "Transport failure: <reason>".
    fn transport_error(&self, e: TransportError) -> Error {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_protocol() {
            ErrorKind::Provider
        } else {
            ErrorKind::Transport
        };
        let msg = format!("Transport failure: {}", self.clean(&error_chain(&e)));
        Error::new(kind, msg).with_source(e)
    }

    /// Reads (a bounded prefix of) a failed reply and classifies it (§3.1).
    async fn status_error(&self, reply: Box<Reply>) -> Error {
        let status = reply.status.as_u16();
        let retry_after = (status == 429).then(|| retry_after_of(&reply.headers));
        // An unreadable or slow error body is treated as `{}`.
        let body = tokio::time::timeout(self.timeout, Box::pin((*reply).prefix(MAX_ERROR_BODY)))
            .await
            .unwrap_or_default();
        let e = classify_status(status, &body, retry_after, |d| self.clean(d));
        e.with_source(StatusError(status))
    }

    /// Sends `body` and waits for the reply head (within the request timeout).
    /// The reply is boxed: it lives across the body's reads in every call's future. (The
    /// transport's future comes boxed.)
    async fn send(&self, body: Vec<u8>) -> Result<Box<Reply>> {
        match tokio::time::timeout(self.timeout, self.transport.send(Bytes::from(body))).await {
            Ok(r) => r.map(Box::new).map_err(|e| self.transport_error(e)),
            Err(_) => Err(self.no_response()),
        }
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        request.validate()?;
        let body = self.body(request, false)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reply = self.send(body).await?;
        if !reply.status.is_success() {
            return Err(self.status_error(reply).await);
        }
        let bytes = match tokio::time::timeout_at(deadline, Box::pin((*reply).bytes())).await {
            Ok(r) => r.map_err(|e| self.transport_error(e))?,
            Err(_) => return Err(self.no_response()),
        };
        parse_reply(&bytes).map_err(|e| self.scrub(e))
    }

    /// The error of a request that got no (whole) response within the request timeout.
    fn no_response(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "Transport failure: no response within {:.1} s (request timeout)",
                self.timeout.as_secs_f64()
            ),
        )
    }

    async fn open_stream(self: Arc<Self>, request: ChatRequest) -> Result<ChatStream> {
        request.validate()?;
        let body = self.body(&request, true)?;
        drop(request);
        let reply = self.send(body).await?;
        if !reply.status.is_success() {
            return Err(self.status_error(reply).await);
        }
        if is_json(&reply.headers) {
            // A server that ignores `"stream": true` answers with one JSON completion.
            return self.whole_reply_as_stream(reply).await;
        }
        let bytes: BodyStream = (*reply).into_stream(self.stream_deadline);
        let bytes = IdleTimeout::new(bytes, self.stream_idle_timeout);
        let decoder = Decoder {
            events: eventsource_stream::EventStream::new(EventPieces::new(bytes)).boxed(),
            acc: StreamAccumulator::new(),
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
        let bytes = match tokio::time::timeout(self.timeout, (*reply).bytes()).await {
            Ok(r) => r.map_err(|e| self.transport_error(e))?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "Transport failure: the reply was not read within {:.1} s (request timeout)",
                        self.timeout.as_secs_f64()
                    ),
                ));
            }
        };
        let r = parse_reply(&bytes).map_err(|e| self.scrub(e))?;
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

/// The cause attached to an error built from a 4xx or 5xx reply.
#[derive(Debug)]
struct StatusError(u16);

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = http::StatusCode::from_u16(self.0)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        write!(f, "HTTP status {} {reason}", self.0)
    }
}

impl std::error::Error for StatusError {}

/// A 2xx body of the common shape, read without building a JSON tree: a top-level object whose
/// `choices` is a non-empty list of objects with an optional `message` object holding a string
/// (or null) `content` and no `tool_calls`, and a string (or null) `finish_reason`.
#[derive(serde::Deserialize)]
struct PlainReply<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    choices: Vec<PlainChoice<'a>>,
    #[serde(default)]
    usage: Option<PlainUsage>,
}

/// `usage` as whole token counts; each field tells "absent" (`None`) from `null`
/// (`Some(None)`), as `parse_usage` does. Anything else (negative, fractional, another type)
/// fails the fast path.
#[derive(serde::Deserialize)]
struct PlainUsage {
    #[serde(default, deserialize_with = "present")]
    input_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    prompt_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    output_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    completion_tokens: Option<Option<u64>>,
}

/// A field that is present, `null` or not.
fn present<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<Option<Option<u64>>, D::Error> {
    <Option<u64> as serde::Deserialize>::deserialize(de).map(Some)
}

impl PlainUsage {
    /// The counts, or `None` when one is beyond what `parse_usage` accepts (it then reports the
    /// error).
    fn counts(&self) -> Option<super::Usage> {
        let pick = |primary: Option<Option<u64>>, fallback: Option<Option<u64>>| {
            let n = primary.or(fallback).flatten().unwrap_or(0);
            (n <= super::parse::MAX_REPORTED_TOKENS).then_some(n)
        };
        Some(super::Usage {
            input_tokens: pick(self.input_tokens, self.prompt_tokens)?,
            output_tokens: pick(self.output_tokens, self.completion_tokens)?,
        })
    }
}

#[derive(serde::Deserialize)]
struct PlainChoice<'a> {
    #[serde(borrow, default)]
    message: Option<PlainMessage<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct PlainMessage<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
}

/// [`parse_completion`], with a typed fast path for the common shape ([`PlainReply`]); any
/// other body (tool calls, content parts, odd types, errors) goes through `parse_completion`,
/// so the result is the same either way.
fn parse_reply(body: &[u8]) -> Result<LlmResponse> {
    if let Some(reply) = super::plain::scan(body) {
        return Ok(reply);
    }
    let Ok(plain) = serde_json::from_slice::<PlainReply<'_>>(body) else {
        return parse_completion(body);
    };
    if plain.choices.is_empty()
        || plain
            .choices
            .iter()
            .any(|c| c.message.as_ref().is_some_and(|m| m.tool_calls.is_some()))
    {
        return parse_completion(body);
    }
    let usage = match &plain.usage {
        Some(u) => match u.counts() {
            Some(c) => c,
            None => return parse_completion(body),
        },
        None => super::Usage::default(),
    };
    let choices = plain
        .choices
        .into_iter()
        .map(|c| super::Choice {
            content: c
                .message
                .and_then(|m| m.content)
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default(),
            tool_calls: Vec::new(),
            finish_reason: c.finish_reason.map(std::borrow::Cow::into_owned),
        })
        .collect();
    Ok(LlmResponse {
        choices,
        usage,
        id: plain.id.map(std::borrow::Cow::into_owned),
        model: plain.model.map(std::borrow::Cow::into_owned),
    })
}

pin_project_lite::pin_project! {
    /// Hands a stream's bytes to the SSE parser an event (or a line) at a time.
    ///
    /// eventsource-stream copies what is left of its buffer into a new `String` after every
    /// line it parses, so a read holding many events cost O(lines × read size): a 16 KiB read
    /// of 85 events copied ~8 KiB per event (callgrind: 6,200 of 16,600 instructions per event),
    /// and 64 KiB of two-byte comment lines would copy up to 64 KiB 32,768 times. Pieces end
    /// after a line end and the blank line right after it (one OpenAI event, `data: …\n\n`),
    /// or after a lone line end; a byte `\n` never falls inside a UTF-8 sequence, and the
    /// pieces share the read's memory. The parser sees the same bytes in the same order.
    struct EventPieces<S> {
        #[pin]
        inner: S,
        pending: Bytes,
    }
}

impl<S> EventPieces<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
        }
    }
}

/// The length of the first piece of `bytes`: through its first line end (and an empty line
/// right after it), or all of it when it holds no line end.
fn piece_len(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) if bytes.get(i + 1) == Some(&b'\n') => i + 2,
        Some(i) => i + 1,
        None => bytes.len(),
    }
}

impl<S, E> futures::Stream for EventPieces<S>
where
    S: futures::Stream<Item = std::result::Result<Bytes, E>>,
{
    type Item = std::result::Result<Bytes, E>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if !this.pending.is_empty() {
                let n = piece_len(this.pending);
                return std::task::Poll::Ready(Some(Ok(this.pending.split_to(n))));
            }
            match std::task::ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(bytes)) => *this.pending = bytes,
                other => return std::task::Poll::Ready(other),
            }
        }
    }
}

/// The SSE decoding state of one open stream.
struct Decoder {
    events: stream::BoxStream<'static, std::result::Result<eventsource_stream::Event, SseError>>,
    acc: StreamAccumulator,
    pending: VecDeque<StreamEvent>,
    scratch: Vec<StreamEvent>,
    provider: Arc<Inner>,
}

enum Step {
    Item(StreamEvent),
    Last(Result<StreamEvent>),
}

type SseError = eventsource_stream::EventStreamError<IdleError<TransportError>>;

impl Decoder {
    async fn next_item(&mut self) -> Step {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Step::Item(ev);
            }
            if self.acc.saw_done() {
                return Step::Last(self.finish());
            }
            match self.events.next().await {
                None => return Step::Last(self.finish()),
                Some(Ok(event)) => {
                    if let Err(e) = self.acc.push_data(&event.data, &mut self.scratch) {
                        return Step::Last(Err(self.provider.scrub(e)));
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
            .map_err(|e| self.provider.scrub(e))
    }

    fn stream_error(&self, e: SseError) -> Error {
        use eventsource_stream::EventStreamError as E;
        match e {
            E::Transport(IdleError::Inner(e)) => self.provider.transport_error(e),
            E::Transport(IdleError::Idle(d)) => Error::new(
                ErrorKind::Timeout,
                format!(
                    "Transport failure: the stream sent nothing for {:.1} s (stream idle timeout)",
                    d.as_secs_f64()
                ),
            ),
            E::Utf8(_) => Error::new(ErrorKind::Provider, "Provider stream is not valid UTF-8"),
            E::Parser(_) => Error::new(
                ErrorKind::Provider,
                "Provider stream is not valid server-sent events",
            ),
        }
    }
}

/// `true` when the reply's `Content-Type` is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..16)
                .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
        })
}

/// The wait a 429 asks for: `retry-after-ms` when present and valid, else `Retry-After`
/// (§3.2; an absent header counts as "1").
fn retry_after_of(headers: &HeaderMap) -> Duration {
    let ms = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|x| x.is_finite());
    let secs = match ms {
        Some(ms) => (ms / 1000.0).max(0.0),
        None => match headers.get(RETRY_AFTER) {
            Some(v) => parse_retry_after(v.to_str().unwrap_or(""), 1.0),
            None => 1.0,
        },
    };
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(u64::from(u32::MAX)))
}

/// Classifies a non-2xx reply (reference §3.1 and OVERRIDES): 429 → `rate_limited` (unless
/// the body says `insufficient_quota`, then `permanent`); 400, 401, 403, 404, 405, 413, 422 →
/// `permanent`; anything else → `provider`. `clean` redacts the server's detail.
fn classify_status(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    clean: impl Fn(&str) -> String,
) -> Error {
    let detail = error_detail(body)
        .filter(|d| !d.trim().is_empty())
        .map(|d| clean(&super::parse::truncate_chars(&d, MAX_DETAIL_CHARS)));
    let with_detail = |head: String| match &detail {
        Some(d) => format!("{head}: {d}"),
        None => head,
    };
    let e = match status {
        429 if is_insufficient_quota(body) => Error::new(
            ErrorKind::Permanent,
            with_detail("Provider request failed with HTTP 429 (insufficient quota)".to_owned()),
        ),
        429 => Error::new(
            ErrorKind::RateLimited,
            "Provider rate limited the request (HTTP 429)",
        )
        .with_retry_after(retry_after.unwrap_or(Duration::from_secs(1))),
        400 | 401 | 403 | 404 | 405 | 413 | 422 => Error::new(
            ErrorKind::Permanent,
            with_detail(format!("Provider request failed with HTTP {status}")),
        ),
        _ => Error::new(
            ErrorKind::Provider,
            with_detail(format!("Provider request failed with HTTP {status}")),
        ),
    };
    e.with_http_status(status)
}

/// An error and its causes, joined by ": ", skipping repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[async_trait]
impl LlmProvider for Provider {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// glibc's malloc serves requests up to 1,032 bytes from its per-thread cache; a call's
    /// future above that took its slow path on every call (callgrind: ~1,000 instructions).
    #[test]
    fn a_call_future_fits_the_allocators_fast_sizes() {
        let p = Provider::builder("http://127.0.0.1:9/v1", "m")
            .build()
            .unwrap();
        let req = ChatRequest::new(vec![super::super::Message::user("x")]);
        let provider_future = LlmProvider::complete(&p, &req);
        assert!(
            size_of_val(&*provider_future) <= 1024,
            "{}",
            size_of_val(&*provider_future)
        );
        let ctx = crate::RunContext::new();
        let tracker = crate::engine::CostTracker::new();
        let checked = ctx.complete(&p, req.clone(), &tracker);
        assert!(size_of_val(&checked) <= 1024, "{}", size_of_val(&checked));
    }

    #[test]
    fn event_pieces_are_whole_events_or_lines_and_keep_every_byte() {
        let reads: Vec<std::result::Result<Bytes, ()>> = vec![
            Ok(Bytes::from_static(
                b"data: a\n\ndata: b\n\n: c\n:d\ndata: \xc3",
            )),
            Ok(Bytes::from_static(b"\xa9\r\n\r\ndata: e\ndata: f\n\n")),
            Err(()),
            Ok(Bytes::from_static(b"after the error")),
        ];
        let pieces: Vec<_> =
            futures::executor::block_on(EventPieces::new(stream::iter(reads)).collect::<Vec<_>>());
        let text: Vec<std::result::Result<&[u8], ()>> = pieces
            .iter()
            .map(|p| p.as_ref().map(|b| &b[..]).map_err(|&()| ()))
            .collect();
        let expected: Vec<std::result::Result<&[u8], ()>> = vec![
            Ok(b"data: a\n\n"),
            Ok(b"data: b\n\n"),
            Ok(b": c\n"),
            Ok(b":d\n"),
            Ok(b"data: \xc3"),
            Ok(b"\xa9\r\n"),
            Ok(b"\r\n"),
            Ok(b"data: e\n"),
            Ok(b"data: f\n\n"),
            Err(()),
            Ok(b"after the error"),
        ];
        assert_eq!(text, expected);
    }

    #[test]
    fn a_read_of_many_events_decodes_as_one_event_per_read() {
        let one_read: String = (0..50)
            .map(|i| {
                format!(
                    "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{i}é\"}}}}]}}\n\n: ping\n"
                )
            })
            .collect();
        let decode = |reads: Vec<Bytes>| {
            let reads = stream::iter(reads.into_iter().map(Ok::<_, std::convert::Infallible>));
            futures::executor::block_on(
                eventsource_stream::EventStream::new(EventPieces::new(reads))
                    .map(|e| e.unwrap().data)
                    .collect::<Vec<_>>(),
            )
        };
        let whole = decode(vec![Bytes::from(one_read.clone())]);
        let bytewise = decode(
            one_read
                .as_bytes()
                .iter()
                .map(|b| Bytes::copy_from_slice(&[*b]))
                .collect(),
        );
        assert_eq!(whole.len(), 50);
        assert_eq!(whole, bytewise);
        assert_eq!(whole[7], r#"{"choices":[{"delta":{"content":"7é"}}]}"#);
    }

    #[test]
    fn scheme_is_text_before_separator() {
        assert_eq!(scheme_of("FILE:///etc/passwd"), "file");
        assert_eq!(scheme_of("data:text/plain,hello"), "data");
        assert_eq!(scheme_of("javascript:alert(1)"), "javascript");
        assert_eq!(scheme_of("localhost"), "localhost");
    }

    #[test]
    fn extra_keys_replace_in_place_and_append() {
        let p = Provider::builder("http://127.0.0.1:1/v1", "m")
            .build()
            .unwrap();
        let r = ChatRequest::new(vec![super::super::Message::user("x")])
            .extra("zeta", 1)
            .extra("temperature", 0.1)
            .extra("model", "other");
        let body = p.request_body(&r, true).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"model":"other","messages":[{"role":"user","content":"x"}],"temperature":0.1,"max_tokens":4096,"stream":true,"stream_options":{"include_usage":true},"zeta":1}"#
        );
    }

    #[test]
    fn plain_replies_parse_as_parse_completion_does() {
        let bodies: [&[u8]; 17] = [
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.5}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":"lots"}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"output_tokens":1000000001}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":"7"}}"#,
            br#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#,
            br#"{"choices":[{"message":{"content":"a\nb\u00e9"},"finish_reason":null},{"message":{"content":null}}],"usage":{"input_tokens":3,"prompt_tokens":9,"output_tokens":null}}"#,
            br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"parts"}]},"finish_reason":7}]}"#,
            br#"{"id":5,"model":null,"choices":[{"message":"odd"}],"usage":null}"#,
            br#"{"choices":[],"usage":{}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":2000000000}}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"choices":[{"message":{"content":"b"}}]}"#,
            br#"[1,2]"#,
            br#"not json"#,
            br#"{"choices":[{"message":{"content":"x"}}]} trailing"#,
        ];
        for b in bodies {
            let slow = parse_completion(b);
            let fast = parse_reply(b);
            match (slow, fast) {
                (Ok(s), Ok(f)) => assert_eq!(s, f, "{}", String::from_utf8_lossy(b)),
                (Err(s), Err(f)) => assert_eq!(
                    (s.kind(), s.message().to_owned()),
                    (f.kind(), f.message().to_owned())
                ),
                (s, f) => panic!("{}: {s:?} vs {f:?}", String::from_utf8_lossy(b)),
            }
        }
    }

    #[test]
    fn classify_every_status() {
        let id = |s: &str| s.to_owned();
        for s in [400, 401, 403, 404, 405, 413, 422] {
            assert!(classify_status(s, b"{}", None, id).is_permanent(), "{s}");
        }
        for s in [300, 302, 408, 409, 500, 502, 503] {
            assert!(classify_status(s, b"{}", None, id).is_provider(), "{s}");
        }
        let e = classify_status(429, b"{}", Some(Duration::from_secs(3)), id);
        assert!(e.is_rate_limited());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let q = br#"{"error":{"code":"insufficient_quota","message":"out of credit"}}"#;
        assert!(classify_status(429, q, None, id).is_permanent());
    }
}
