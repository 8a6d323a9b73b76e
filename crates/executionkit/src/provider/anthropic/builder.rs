//! [`AnthropicProviderBuilder`]: every setting of an [`AnthropicProvider`], checked by
//! [`AnthropicProviderBuilder::build`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{ANTHROPIC_VERSION, AnthropicProvider, Inner};
use crate::error::{Error, Result};
use crate::provider::DEFAULT_MAX_TOKENS;
use crate::provider::http::{
    ConnectOptions, Endpoint, add_headers, check_durations, endpoint_url, mask, secret_header,
};
use crate::provider::openai::{
    DEFAULT_STREAM_DEADLINE, DEFAULT_STREAM_IDLE_TIMEOUT, DEFAULT_TEMPERATURE, DEFAULT_TIMEOUT,
};
use crate::provider::transport;
use crate::redact::redact;

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
    /// `ANTHROPIC_BASE_URL`, or `http://127.0.0.1:8080` for a local fake): requests go to
    /// `{base_url}/v1/messages`.
    ///
    /// ```
    /// use executionkit::{AnthropicProvider, internals::provider::ANTHROPIC_BASE_URL};
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

    /// Sets the `anthropic-version` header (default `ANTHROPIC_VERSION`, `2023-06-01`).
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
    /// [`OpenAiProvider`](crate::OpenAiProvider); the Messages API accepts 0 to 1).
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
