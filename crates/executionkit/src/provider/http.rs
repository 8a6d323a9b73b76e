//! The plumbing every HTTP provider shares, whatever its dialect: checking a base URL and the
//! builder's arguments, building the [`Transport`], sending a body within the request timeout,
//! mapping transport failures and non-2xx replies to our error kinds, reading an SSE body with
//! an idle timeout, and keeping the API key out of every error.
//!
//! [`OpenAiProvider`](super::OpenAiProvider) (OpenAI chat completions) and
//! [`AnthropicProvider`](super::AnthropicProvider) (Anthropic Messages) both sit on it, so a
//! status, a `Retry-After` or a broken connection means the same on either.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use url::Url;

use super::parse::{error_detail, is_insufficient_quota, parse_retry_after};
use super::sse::{ByteLimitError, ByteLimits, IdleError, IdleTimeout, StreamLimits};
use super::transport::{self, BodyStream, Reply, Settings, Transport, TransportError};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::{redact, redact_with};
use crate::text::prefix;

/// The longest error-body prefix read to classify a failed reply.
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;
/// The longest server-supplied detail kept in an error message.
pub(super) const MAX_DETAIL_CHARS: usize = 1000;

/// `***` for a key that is set, nothing for none (what `Debug` shows).
pub(super) fn mask(key: &str) -> &'static str {
    if key.is_empty() { "" } else { "***" }
}

/// The text before the first `://` (or the first `:`), lower-cased.
pub(super) fn scheme_of(url: &str) -> String {
    let url = url.trim();
    let end = url
        .find("://")
        .or_else(|| url.find(':'))
        .unwrap_or(url.len());
    url[..end].to_ascii_lowercase()
}

/// `base_url` checked (http or https, parsable, with a host) with `suffix` appended to its
/// path (`/chat/completions`, `/v1/messages`).
pub(super) fn endpoint_url(base_url: &str, suffix: &str) -> Result<Url> {
    let scheme = scheme_of(base_url);
    if scheme != "http" && scheme != "https" {
        return Err(Error::invalid_argument(
            "base_url",
            format!("base_url scheme must be 'http' or 'https', got '{scheme}://'"),
        ));
    }
    let mut url = Url::parse(base_url.trim()).map_err(|e| {
        Error::invalid_argument("base_url", format!("base_url is not a valid URL: {e}"))
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid_argument(
            "base_url",
            "base_url is not a valid URL: it has no host",
        ));
    }
    let path = format!("{}{suffix}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// Fails with `invalid_argument` naming the first duration that is zero.
pub(super) fn check_durations(durations: &[(&str, Option<Duration>)]) -> Result<()> {
    for (name, d) in durations {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid_argument(
                name,
                format!("{name} must be greater than zero"),
            ));
        }
    }
    Ok(())
}

/// A sensitive header value holding `value` (an API key), or `invalid_argument` naming
/// `argument` when it cannot be sent; the value is never shown.
pub(super) fn secret_header(value: &str, argument: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::invalid_argument(
            argument,
            format!("{argument} contains characters that cannot be sent in an HTTP header"),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Adds the caller's headers (each replaces a default of the same name; values are sensitive).
pub(super) fn add_headers(headers: &mut HeaderMap, extra: &[(String, String)]) -> Result<()> {
    for (name, value) in extra {
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
    Ok(())
}

/// What a builder says about the connection, checked by [`ConnectOptions::transport`].
pub(super) struct ConnectOptions<'a> {
    pub(super) connect_timeout: Option<Duration>,
    pub(super) max_response_bytes: usize,
    pub(super) root_pems: &'a [Vec<u8>],
    pub(super) use_env_proxy: bool,
}

impl ConnectOptions<'_> {
    /// The transport to `url` with `headers` on every request; `invalid_argument` for a zero
    /// body cap, a PEM text without a certificate, or a URL (or proxy) that cannot be used.
    pub(super) fn transport(&self, url: &Url, headers: HeaderMap) -> Result<Transport> {
        if self.max_response_bytes == 0 {
            return Err(Error::invalid_argument(
                "max_response_bytes",
                "max_response_bytes must be >= 1, got 0",
            ));
        }
        let mut roots = Vec::new();
        for pem in self.root_pems {
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
        Transport::new(url, headers, settings).map_err(|e| {
            Error::invalid_argument(
                "base_url",
                format!("base_url cannot be used: {}", redact(&e)),
            )
        })
    }
}

/// `true` when the reply's `Content-Type` is JSON.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..16)
                .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
        })
}

/// The wait a reply's headers ask for, when they ask: `retry-after-ms` when present and valid,
/// else `Retry-After` (§3.2).
pub(super) fn explicit_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let ms = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|x| x.is_finite());
    let secs = match ms {
        Some(ms) => (ms / 1000.0).max(0.0),
        None => parse_retry_after(headers.get(RETRY_AFTER)?.to_str().unwrap_or(""), 1.0),
    };
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(u64::from(u32::MAX))))
}

/// The wait a 429 asks for: [`explicit_retry_after`], and an absent header counts as "1"
/// (§3.2).
pub(super) fn retry_after_of(headers: &HeaderMap) -> Duration {
    explicit_retry_after(headers).unwrap_or(Duration::from_secs(1))
}

/// Classifies a non-2xx reply (reference §3.1 and OVERRIDES): 429 → `rate_limited` (unless
/// the body says `insufficient_quota`, then `permanent`); 400, 401, 403, 404, 405, 413, 422 →
/// `permanent`; anything else (5xx, Anthropic's 529 "overloaded" among them) → `provider`,
/// which the default retry policy retries. `retry_after` is kept on a 429 (1 s when absent) and
/// on a 5xx that sent one (beyond the reference, which reads it on 429 only: a 503 with
/// `Retry-After` says when the service expects to be back, and the retry waits for it, within
/// the policy's `max_delay`). `clean` redacts the server's detail.
pub(super) fn classify_status(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    clean: impl Fn(&str) -> String,
) -> Error {
    let detail = error_detail(body)
        .filter(|d| !d.trim().is_empty())
        .map(|d| clean(prefix(&d, MAX_DETAIL_CHARS)));
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
        _ => {
            let e = Error::new(
                ErrorKind::Provider,
                with_detail(format!("Provider request failed with HTTP {status}")),
            );
            match retry_after {
                Some(d) if status >= 500 => e.with_retry_after(d),
                _ => e,
            }
        }
    };
    e.with_http_status(status)
}

/// An error and its causes, joined by ": ", skipping repeats.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

/// The cause attached to an error built from a 4xx or 5xx reply.
#[derive(Debug, thiserror::Error)]
#[error("HTTP status {0} {reason}", reason = canonical_reason(*.0))]
pub(super) struct StatusError(pub(super) u16);

fn canonical_reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// A failure while reading server-sent events.
pub(super) type SseError =
    eventsource_stream::EventStreamError<ByteLimitError<IdleError<TransportError>>>;

/// The SSE events of a reply body, failing when nothing arrives for the idle timeout.
pub(super) type SseEvents =
    stream::BoxStream<'static, std::result::Result<eventsource_stream::Event, SseError>>;

/// One provider's connection to its endpoint: the transport, the API key (to keep out of
/// errors) and the request timeout.
pub(super) struct Endpoint {
    pub(super) transport: Arc<Transport>,
    pub(super) api_key: String,
    pub(super) timeout: Duration,
}

impl Endpoint {
    /// The key, when one is set.
    pub(super) fn secret(&self) -> Option<&str> {
        (!self.api_key.is_empty()).then_some(self.api_key.as_str())
    }

    /// Redacts credential shapes and the key itself (any case, percent-encoded, base64) from
    /// server or transport text.
    pub(super) fn clean(&self, text: &str) -> String {
        redact_with(text, self.secret())
    }

    /// Makes sure the key appears nowhere in an error's message or metadata.
    pub(super) fn scrub(&self, e: Error) -> Error {
        e.redacted_with(self.secret())
    }

    /// A `transport` (or, for a timeout, `timeout`; for a protocol break or a cap, `provider`)
    /// error: "Transport failure: <reason>".
    pub(super) fn transport_error(&self, e: TransportError) -> Error {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_refused() {
            ErrorKind::Permanent
        } else if e.is_protocol() {
            ErrorKind::Provider
        } else {
            ErrorKind::Transport
        };
        let msg = format!("Transport failure: {}", self.clean(&error_chain(&e)));
        Error::new(kind, msg).with_source(e)
    }

    /// Reads (a bounded prefix of) a failed reply and classifies it (§3.1).
    pub(super) async fn status_error(&self, reply: Box<Reply>) -> Error {
        let status = reply.status.as_u16();
        let retry_after = match status {
            429 => Some(retry_after_of(&reply.headers)),
            500..=599 => explicit_retry_after(&reply.headers),
            _ => None,
        };
        // An unreadable or slow error body is treated as `{}`.
        let body = tokio::time::timeout(self.timeout, Box::pin((*reply).prefix(MAX_ERROR_BODY)))
            .await
            .unwrap_or_default();
        let e = classify_status(status, &body, retry_after, |d| self.clean(d));
        e.with_source(StatusError(status))
    }

    /// Sends `body` and waits for the reply head (within the request timeout).
    /// The reply is boxed: it lives across the body's reads in every call's future.
    pub(super) async fn send(&self, body: Vec<u8>) -> Result<Box<Reply>> {
        match tokio::time::timeout(
            self.timeout,
            Box::pin(self.transport.send(Bytes::from(body))),
        )
        .await
        {
            Ok(r) => r.map(Box::new).map_err(|e| self.transport_error(e)),
            Err(_) => Err(self.no_response()),
        }
    }

    /// Reads a whole 2xx body by `deadline` (a `timeout` error after it).
    pub(super) async fn read_body(
        &self,
        reply: Box<Reply>,
        deadline: tokio::time::Instant,
    ) -> Result<Bytes> {
        match tokio::time::timeout_at(deadline, Box::pin((*reply).bytes())).await {
            Ok(r) => r.map_err(|e| self.transport_error(e)),
            Err(_) => Err(self.no_response()),
        }
    }

    /// Reads the whole JSON reply a server sent to a stream request (within the request
    /// timeout).
    pub(super) async fn read_whole_reply(&self, reply: Box<Reply>) -> Result<Bytes> {
        match tokio::time::timeout(self.timeout, (*reply).bytes()).await {
            Ok(r) => r.map_err(|e| self.transport_error(e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "Transport failure: the reply was not read within {:.1} s (request timeout)",
                    self.timeout.as_secs_f64()
                ),
            )),
        }
    }

    /// The error of a request that got no (whole) response within the request timeout.
    pub(super) fn no_response(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "Transport failure: no response within {:.1} s (request timeout)",
                self.timeout.as_secs_f64()
            ),
        )
    }

    /// The reply body as SSE events: at most `deadline` in all, and no more than `idle`
    /// without a byte.
    pub(super) fn sse_events(
        reply: Box<Reply>,
        deadline: Duration,
        idle: Duration,
        limits: &StreamLimits,
    ) -> SseEvents {
        // The idle timer sees every chunk; the byte limits cut lines for the SSE parser.
        let bytes: BodyStream = (*reply).into_stream(deadline);
        let bytes = IdleTimeout::new(bytes, idle);
        let bytes = ByteLimits::new(bytes, limits);
        eventsource_stream::EventStream::new(bytes).boxed()
    }

    /// Maps a failure of [`sse_events`](Self::sse_events) to our kinds.
    pub(super) fn sse_error(&self, e: SseError) -> Error {
        use eventsource_stream::EventStreamError as E;
        match e {
            E::Transport(e) => e.into_error(|e| match e {
                IdleError::Inner(e) => self.transport_error(e),
                IdleError::Idle(d) => Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "Transport failure: the stream sent nothing for {:.1} s (stream idle timeout)",
                        d.as_secs_f64()
                    ),
                ),
            }),
            E::Utf8(_) => Error::new(ErrorKind::Provider, "Provider stream is not valid UTF-8"),
            E::Parser(_) => Error::new(
                ErrorKind::Provider,
                "Provider stream is not valid server-sent events",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_is_text_before_separator() {
        assert_eq!(scheme_of("FILE:///etc/passwd"), "file");
        assert_eq!(scheme_of("data:text/plain,hello"), "data");
        assert_eq!(scheme_of("javascript:alert(1)"), "javascript");
        assert_eq!(scheme_of("localhost"), "localhost");
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
        // A 5xx keeps a Retry-After it sent (the retry waits for it); other statuses do not.
        let e = classify_status(503, b"{}", Some(Duration::from_secs(2)), id);
        assert!(e.is_provider());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(classify_status(500, b"{}", None, id).retry_after(), None);
        assert_eq!(
            classify_status(404, b"{}", Some(Duration::from_secs(2)), id).retry_after(),
            None
        );
    }

    #[test]
    fn retry_after_is_explicit_or_absent() {
        let mut h = HeaderMap::new();
        assert_eq!(explicit_retry_after(&h), None);
        assert_eq!(retry_after_of(&h), Duration::from_secs(1));
        h.insert(RETRY_AFTER, HeaderValue::from_static("2.5"));
        assert_eq!(explicit_retry_after(&h), Some(Duration::from_millis(2500)));
        h.insert("retry-after-ms", HeaderValue::from_static("300"));
        assert_eq!(explicit_retry_after(&h), Some(Duration::from_millis(300)));
    }
}
