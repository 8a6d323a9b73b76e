//! Traces a collector can read (feature `otel`): executionkit's `tracing` spans exported to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf).
//!
//! Every LLM call is an `llm.call` span with the GenAI attributes of [`crate::telemetry`]
//! (`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`, …) and, when the budget has
//! prices for the model, [`EXECUTIONKIT_COST_USD`](crate::telemetry::EXECUTIONKIT_COST_USD).
//! It is a child of its pattern's span (`pattern.consensus`, `pattern.refine`, …), itself inside
//! `pipe.step` and `pipe`, or `workflow.step` and `workflow`, when it is a step. Retries, budget exhaustion and approvals are span events. No span or
//! event carries a key or the text of a message.
//!
//! Spans go through the crate's own HTTP transport (the one providers use: `http://` and
//! `https://`, the proxy variables), batched on a thread of their own; [`Otlp::shutdown`]
//! sends what is left. Only spans and events of the `executionkit` target are exported.
//!
//! The endpoint, protocol (protobuf), timeout and headers are the builder's: the
//! `OTEL_EXPORTER_OTLP_*` variables are not used, and spans are sent uncompressed.
//!
//! ```no_run
//! use executionkit::otel::Otlp;
//! use executionkit::{Consensus, OfflineModel, Pattern, RunContext};
//! # fn main() -> executionkit::Result<()> {
//! let otlp = Otlp::builder("http://localhost:4318").service_name("my-app").build()?;
//! otlp.install()?; // the process-wide tracing subscriber
//! let rt = tokio::runtime::Runtime::new().expect("a runtime");
//! rt.block_on(Consensus::new().samples(3).run(&OfflineModel::new(), "2+2?", &RunContext::new()))?;
//! otlp.shutdown()?; // flushes: a short run's spans arrive too
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::TokioCurrentThread;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;

use crate::error::{Error, ErrorKind, Result};
use crate::provider::{Settings, Transport, TransportError};
use crate::redact::redact;

/// The path OTLP/HTTP collectors take traces on.
const TRACES_PATH: &str = "/v1/traces";
/// The cap on a collector's reply (it is a small protobuf message).
const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Exports executionkit's spans to an OTLP/HTTP collector. Build with [`Otlp::builder`], put
/// [`Otlp::layer`] in a subscriber (or call [`Otlp::install`]), and call [`Otlp::shutdown`] at
/// the end so the last batch is sent.
///
/// ```
/// # fn main() -> executionkit::Result<()> {
/// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318").build()?;
/// assert_eq!(otlp.endpoint(), "http://127.0.0.1:4318/v1/traces");
/// otlp.shutdown()?;
/// # Ok(()) }
/// ```
pub struct Otlp {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl fmt::Debug for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// How an [`Otlp`] exporter is set up: endpoint, service name, headers, timeout.
///
/// ```
/// use std::time::Duration;
/// # fn main() -> executionkit::Result<()> {
/// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318")
///     .service_name("ek")
///     .header("x-team", "search")
///     .timeout(Duration::from_secs(2))
///     .build()?;
/// # otlp.shutdown()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct OtlpBuilder {
    endpoint: String,
    service_name: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl fmt::Debug for OtlpBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be credentials: only their names are shown.
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OtlpBuilder")
            .field("endpoint", &redact(&self.endpoint))
            .field("service_name", &self.service_name)
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl OtlpBuilder {
    /// The `service.name` resource attribute (default `"executionkit"`).
    ///
    /// ```
    /// let b = executionkit::otel::Otlp::builder("http://127.0.0.1:4318").service_name("ek");
    /// # let _ = b;
    /// ```
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// A header sent with every export (e.g. a collector's API key; never shown by `Debug`).
    ///
    /// ```
    /// let b = executionkit::otel::Otlp::builder("http://127.0.0.1:4318").header("x-api-key", "k");
    /// assert!(!format!("{b:?}").contains("\"k\""));
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// How long one export may take, retries included, and the connect timeout (default 5 s).
    ///
    /// ```
    /// let b = executionkit::otel::Otlp::builder("http://127.0.0.1:4318")
    ///     .timeout(std::time::Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The exporter. `invalid_argument` for an endpoint that is not an `http://` or `https://`
    /// URL with a host, or a header that cannot be sent. Starts the export thread.
    ///
    /// ```
    /// use executionkit::otel::Otlp;
    /// let e = Otlp::builder("ftp://collector").build().unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// ```
    pub fn build(self) -> Result<Otlp> {
        let url = traces_url(&self.endpoint)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Error::invalid_argument("header", format!("'{name}' is not a header name"))
            })?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                Error::invalid_argument("header", format!("the value of '{name}' cannot be sent"))
            })?;
            headers.insert(n, v);
        }
        let settings = Settings {
            connect_timeout: Some(self.timeout),
            max_response_bytes: MAX_REPLY_BYTES,
            roots: Vec::new(),
            use_env_proxy: true,
        };
        let transport = Transport::new(&url, headers, settings).map_err(|e| {
            Error::invalid_argument(
                "otlp_endpoint",
                format!("the OTLP endpoint cannot be used: {}", redact(&e)),
            )
        })?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(TransportClient(Arc::new(transport)))
            .with_endpoint(url.as_str())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(self.timeout)
            .build()
            .map_err(|e| {
                Error::invalid_argument(
                    "otlp_endpoint",
                    format!(
                        "the OTLP exporter cannot be built: {}",
                        redact(&e.to_string())
                    ),
                )
            })?;
        // The batch runs on a thread of its own with its own Tokio runtime: the caller's
        // runtime may be single-threaded, and `shutdown` blocks until the last batch is sent.
        let processor = BatchSpanProcessor::builder(exporter, TokioCurrentThread).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(self.service_name)
                    .build(),
            )
            .build();
        Ok(Otlp {
            provider,
            endpoint: url.to_string(),
        })
    }
}

/// The collector's traces URL: `endpoint` with `/v1/traces` appended unless it ends with it.
fn traces_url(endpoint: &str) -> Result<url::Url> {
    let bad = |why: &str| {
        Error::invalid_argument(
            "otlp_endpoint",
            format!("the OTLP endpoint '{}' {why}", redact(endpoint)),
        )
    };
    let mut url = url::Url::parse(endpoint.trim()).map_err(|_| bad("is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("must be an http:// or https:// URL with a host"));
    }
    if !url.path().ends_with(TRACES_PATH) {
        let path = format!("{}{TRACES_PATH}", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

impl Otlp {
    /// A builder for the collector at `endpoint`, its OTLP/HTTP base URL
    /// (`http://localhost:4318`); `/v1/traces` is appended unless the URL ends with it.
    ///
    /// ```
    /// # fn main() -> executionkit::Result<()> {
    /// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318/v1/traces").build()?;
    /// assert_eq!(otlp.endpoint(), "http://127.0.0.1:4318/v1/traces");
    /// # otlp.shutdown()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(endpoint: impl Into<String>) -> OtlpBuilder {
        OtlpBuilder {
            endpoint: endpoint.into(),
            service_name: "executionkit".to_owned(),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }

    /// The URL spans are sent to.
    ///
    /// ```
    /// # fn main() -> executionkit::Result<()> {
    /// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318/").build()?;
    /// assert_eq!(otlp.endpoint(), "http://127.0.0.1:4318/v1/traces");
    /// # otlp.shutdown()?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A `tracing` layer exporting the spans and events of the `executionkit` target (levels
    /// down to `DEBUG`) and nothing else, for a subscriber of your own.
    ///
    /// ```
    /// use tracing_subscriber::layer::SubscriberExt;
    /// # fn main() -> executionkit::Result<()> {
    /// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318").build()?;
    /// let subscriber = tracing_subscriber::registry().with(otlp.layer());
    /// tracing::subscriber::with_default(subscriber, || { /* run patterns here */ });
    /// otlp.shutdown()?;
    /// # Ok(()) }
    /// ```
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("executionkit"))
            .with_filter(Targets::new().with_target("executionkit", tracing::Level::DEBUG))
    }

    /// A subscriber with only [`Otlp::layer`], for `tracing::subscriber::with_default` or
    /// `tracing::instrument::WithSubscriber::with_subscriber` (a test, one task).
    ///
    /// ```
    /// # fn main() -> executionkit::Result<()> {
    /// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318").build()?;
    /// tracing::subscriber::with_default(otlp.subscriber(), || {});
    /// otlp.shutdown()?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn subscriber(&self) -> impl Subscriber + Send + Sync + 'static {
        tracing_subscriber::registry().with(self.layer())
    }

    /// Makes [`Otlp::subscriber`] the process-wide default; fails when one is already set.
    ///
    /// ```no_run
    /// # fn main() -> executionkit::Result<()> {
    /// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318").build()?;
    /// otlp.install()?;
    /// # Ok(()) }
    /// ```
    pub fn install(&self) -> Result<()> {
        tracing::subscriber::set_global_default(self.subscriber()).map_err(|_| {
            Error::invalid_argument("otlp", "a global tracing subscriber is already set")
        })
    }

    /// Sends the spans that ended so far and waits for the collector's answer. Blocks: call it
    /// outside async code (or in `spawn_blocking`).
    ///
    /// ```
    /// # fn main() -> executionkit::Result<()> {
    /// let otlp = executionkit::otel::Otlp::builder("http://127.0.0.1:4318").build()?;
    /// otlp.force_flush()?; // nothing ended yet: nothing to send
    /// # otlp.shutdown()?;
    /// # Ok(()) }
    /// ```
    pub fn force_flush(&self) -> Result<()> {
        self.provider.force_flush().map_err(|e| export_error(&e))
    }

    /// Sends what is left and stops the export thread. Blocks, at most about the builder's
    /// timeout per batch: call it outside async code (or in `spawn_blocking`). A collector
    /// that cannot be reached is an error; the spans are then lost.
    ///
    /// ```
    /// # fn main() -> executionkit::Result<()> {
    /// executionkit::otel::Otlp::builder("http://127.0.0.1:4318").build()?.shutdown()?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown(self) -> Result<()> {
        self.provider.shutdown().map_err(|e| export_error(&e))
    }
}

fn export_error(e: &opentelemetry_sdk::error::OTelSdkError) -> Error {
    Error::new(
        ErrorKind::Provider,
        format!("OTLP export failed: {}", redact(&e.to_string())),
    )
}

/// opentelemetry-otlp's HTTP client over the crate's transport: one POST to the traces URL.
#[derive(Debug)]
struct TransportClient(Arc<Transport>);

#[async_trait]
impl HttpClient for TransportClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> std::result::Result<Response<Bytes>, HttpError> {
        let reply = self.0.send(request.into_body()).await.map_err(boxed)?;
        let status = reply.status;
        let body = reply.bytes().await.map_err(boxed)?;
        Ok(Response::builder().status(status).body(body)?)
    }
}

fn boxed(e: TransportError) -> HttpError {
    Box::new(e)
}
