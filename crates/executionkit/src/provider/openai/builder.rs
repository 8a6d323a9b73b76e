//! [`OpenAiProviderBuilder`]: every setting of an [`OpenAiProvider`], checked by [`OpenAiProviderBuilder::build`],
//! and the defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};

use super::{Inner, OpenAiProvider};
use crate::error::{Error, Result};
use crate::provider::DEFAULT_MAX_TOKENS;
use crate::provider::http::{
    ConnectOptions, Endpoint, add_headers, check_durations, endpoint_url, mask, secret_header,
};
use crate::provider::sse::StreamLimits;
use crate::provider::transport::{self, Transport};
use crate::redact::redact;

/// The default per-request timeout (120 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The default stream idle timeout (60 s): a stream that sends nothing for this long fails.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default total deadline of a stream (10 minutes): keep-alives and comments do not extend it.
pub const DEFAULT_STREAM_DEADLINE: Duration = Duration::from_secs(600);
/// The default temperature of requests that set none (0.7).
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

/// Builds an [`OpenAiProvider`]; every argument is checked by [`OpenAiProviderBuilder::build`] before any
/// request is sent.
///
/// ```
/// use executionkit::OpenAiProvider;
/// let p = OpenAiProvider::builder("https://my-azure.openai.azure.com/openai/deployments/gpt4o", "gpt-4o")
///     .header("api-key", "azure-key")
///     .query("api-version", "2024-10-21")
///     .supports_n(false)
///     .build()
///     .unwrap();
/// # let _ = p;
/// let e = OpenAiProvider::builder("file:///etc/passwd", "m").build().unwrap_err();
/// assert!(e.message().contains("scheme must be 'http' or 'https'"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct OpenAiProviderBuilder {
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
    stream_limits: StreamLimits,
}

impl fmt::Debug for OpenAiProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OpenAiProviderBuilder")
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
            .field("stream_limits", &self.stream_limits)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("root_certificates", &self.root_pems.len())
            .field("use_env_proxy", &self.use_env_proxy)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Starts a builder for `model` at `base_url` (e.g. `http://127.0.0.1:8080/v1`).
    ///
    /// ```
    /// let b = executionkit::OpenAiProvider::builder("http://localhost:11434/v1", "llama3");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn builder(base_url: impl Into<String>, model: impl Into<String>) -> OpenAiProviderBuilder {
        OpenAiProviderBuilder {
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
            stream_limits: StreamLimits::default(),
        }
    }
}

impl OpenAiProviderBuilder {
    /// Sets the API key, sent as `Authorization: Bearer <key>` (nothing when empty).
    ///
    /// ```
    /// let p = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").api_key("k-1234").build().unwrap();
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
    /// let p = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").timeout(Duration::from_secs(5)).build().unwrap();
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
    /// let p = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m")
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
    /// let b = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").connect_timeout(Duration::from_secs(2));
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
    /// let e = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").header("bad name", "x").build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "header");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a query parameter to the endpoint URL (e.g. Azure's `api-version`).
    ///
    /// ```
    /// let b = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").query("api-version", "2024-10-21");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Sets the temperature sent when a request sets none (default 0.7).
    ///
    /// ```
    /// let e = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").default_temperature(f64::NAN).build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "default_temperature");
    /// ```
    pub fn default_temperature(mut self, t: f64) -> Self {
        self.default_temperature = t;
        self
    }

    /// Sets the `max_tokens` sent when a request sets none (default 4096).
    ///
    /// ```
    /// let e = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").default_max_tokens(0).build().unwrap_err();
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
    /// let p = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").supports_n(false).build().unwrap();
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
    /// let p = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m")
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
    /// let e = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").max_response_bytes(0).build().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "max_response_bytes");
    /// ```
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Sets the caps on one stream (raw bytes, line, event, text, tool calls; see
    /// [`StreamLimits`]); passing one is a `provider` error naming it.
    ///
    /// ```
    /// use executionkit::StreamLimits;
    /// let mut limits = StreamLimits::default();
    /// limits.max_text_bytes = 1 << 20;
    /// let p = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").stream_limits(limits).build();
    /// assert!(p.is_ok());
    /// ```
    pub fn stream_limits(mut self, limits: StreamLimits) -> Self {
        self.stream_limits = limits;
        self
    }

    /// Trusts every certificate in `pem` (e.g. a private CA) for https, beside webpki's roots
    /// and the system's (`SSL_CERT_FILE` / `SSL_CERT_DIR` replace the system's when set).
    ///
    /// ```
    /// let e = executionkit::OpenAiProvider::builder("https://127.0.0.1:1/v1", "m")
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
    /// let p = executionkit::OpenAiProvider::builder("http://127.0.0.1:1/v1", "m").no_proxy().build();
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
    /// let e = executionkit::OpenAiProvider::builder("ftp://host/v1", "m").build().unwrap_err();
    /// assert!(e.message().contains("ftp://"));
    /// ```
    pub fn build(self) -> Result<OpenAiProvider> {
        if self.model.trim().is_empty() {
            return Err(Error::invalid_argument("model", "model must not be empty"));
        }
        let mut url = endpoint_url(&self.base_url, "/chat/completions")?;
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
        check_durations(&[
            ("timeout", Some(self.timeout)),
            ("stream_idle_timeout", Some(self.stream_idle_timeout)),
            ("connect_timeout", self.connect_timeout),
            ("stream_deadline", Some(self.stream_deadline)),
        ])?;

        if self.max_response_bytes == 0 {
            return Err(Error::invalid_argument(
                "max_response_bytes",
                "max_response_bytes must be >= 1, got 0",
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !self.api_key.is_empty() {
            let v = secret_header(&format!("Bearer {}", self.api_key), "api_key")?;
            headers.insert(AUTHORIZATION, v);
        }
        add_headers(&mut headers, &self.headers)?;

        let transport: Transport = ConnectOptions {
            connect_timeout: self.connect_timeout,
            max_response_bytes: self.max_response_bytes,
            root_pems: &self.root_pems,
            use_env_proxy: self.use_env_proxy,
        }
        .transport(&url, headers)?;
        Ok(OpenAiProvider {
            inner: Arc::new(Inner {
                http: Endpoint {
                    transport: Arc::new(transport),
                    api_key: self.api_key,
                    timeout: self.timeout,
                },
                base_url: self.base_url,
                model: self.model,
                stream_idle_timeout: self.stream_idle_timeout,
                default_temperature: self.default_temperature,
                default_max_tokens: self.default_max_tokens,
                supports_n: self.supports_n,
                stream_deadline: self.stream_deadline,
                stream_limits: self.stream_limits,
                response_format_refused: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}
