//! The HTTP side of the batch APIs ([`crate::batch`]): JSON requests (POST and GET) and file
//! downloads streamed to disk, all through the crate's own [`Transport`], with the same
//! status mapping, `Retry-After` reading and key redaction as the chat providers.
//!
//! The API key is only ever sent to the origin (scheme, host, port) of the base URL: a URL
//! the server names (a results URL) on another origin is refused before anything is sent.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::http::{ConnectOptions, Endpoint, endpoint_url, secret_header};
use super::transport::DEFAULT_MAX_RESPONSE_BYTES;
use crate::error::{Error, ErrorKind, Result};

/// How the key is sent.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI).
    Bearer,
    /// `x-api-key: <key>` and `anthropic-version` (Anthropic).
    Anthropic { version: String },
}

/// One provider's batch endpoint: its base URL, key and limits.
pub(crate) struct BatchHttp {
    /// How the key is sent.
    pub(crate) auth: Auth,
    base_url: String,
    origin: url::Origin,
    api_key: String,
    /// The request timeout of each JSON request (and of each download's head).
    pub(crate) timeout: Duration,
    /// The longest a download may take in all.
    pub(crate) download_deadline: Duration,
    /// The cap on one downloaded file.
    pub(crate) max_download_bytes: usize,
    /// The cap on one line of a downloaded file.
    pub(crate) max_line_bytes: usize,
    /// Honour the proxy variables.
    pub(crate) use_env_proxy: bool,
}

impl BatchHttp {
    /// `invalid_argument` for a base URL that is not http(s) with a host.
    pub(crate) fn new(base_url: &str, api_key: String, timeout: Duration) -> Result<Self> {
        let url = endpoint_url(base_url, "")?;
        Ok(Self {
            auth: Auth::Bearer,
            base_url: base_url.trim().to_owned(),
            origin: url.origin(),
            api_key,
            timeout,
            download_deadline: Duration::from_secs(3600),
            max_download_bytes: 1 << 30,
            max_line_bytes: 1 << 20,
            use_env_proxy: true,
        })
    }

    /// `<base_url><suffix>`.
    pub(crate) fn url(&self, suffix: &str) -> Result<Url> {
        endpoint_url(&self.base_url, suffix)
    }

    fn endpoint(
        &self,
        url: &Url,
        content_type: Option<&str>,
        max_bytes: usize,
    ) -> Result<Endpoint> {
        if url.origin() != self.origin {
            return Err(Error::new(
                ErrorKind::Permanent,
                format!(
                    "refusing to send the API key to {}: it is not the provider's own origin",
                    crate::redact::redact(&url.origin().ascii_serialization())
                ),
            ));
        }
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            let v = HeaderValue::from_str(ct)
                .map_err(|_| Error::invalid_argument("content_type", "bad content type"))?;
            headers.insert(CONTENT_TYPE, v);
        }
        match &self.auth {
            Auth::Bearer if !self.api_key.is_empty() => {
                headers.insert(
                    AUTHORIZATION,
                    secret_header(&format!("Bearer {}", self.api_key), "api_key")?,
                );
            }
            Auth::Bearer => {}
            Auth::Anthropic { version } => {
                let v = HeaderValue::from_str(version).map_err(|_| {
                    Error::invalid_argument("anthropic_version", "bad anthropic-version")
                })?;
                headers.insert(HeaderName::from_static("anthropic-version"), v);
                if !self.api_key.is_empty() {
                    headers.insert(
                        HeaderName::from_static("x-api-key"),
                        secret_header(&self.api_key, "api_key")?,
                    );
                }
            }
        }
        let transport = ConnectOptions {
            connect_timeout: None,
            max_response_bytes: max_bytes,
            root_pems: &[],
            use_env_proxy: self.use_env_proxy,
        }
        .transport(url, headers)?;
        Ok(Endpoint {
            transport: Arc::new(transport),
            api_key: self.api_key.clone(),
            timeout: self.timeout,
        })
    }

    /// POSTs `body` to `<base><suffix>` and returns the JSON object of the reply.
    pub(crate) async fn post(
        &self,
        suffix: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value> {
        let url = self.url(suffix)?;
        let ep = self.endpoint(&url, Some(content_type), DEFAULT_MAX_RESPONSE_BYTES)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reply = ep.send(body).await.map_err(|e| ep.scrub(e))?;
        if !reply.status.is_success() {
            return Err(ep.scrub(ep.status_error(reply).await));
        }
        let bytes = ep
            .read_body(reply, deadline)
            .await
            .map_err(|e| ep.scrub(e))?;
        json_object(&bytes, suffix)
    }

    /// GETs `<base><suffix>` and returns the JSON object of the reply.
    pub(crate) async fn get(&self, suffix: &str) -> Result<Value> {
        let url = self.url(suffix)?;
        let ep = self.endpoint(&url, None, DEFAULT_MAX_RESPONSE_BYTES)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reply = Self::send_get(&ep).await?;
        let bytes = ep
            .read_body(reply, deadline)
            .await
            .map_err(|e| ep.scrub(e))?;
        json_object(&bytes, suffix)
    }

    async fn send_get(ep: &Endpoint) -> Result<Box<super::transport::Reply>> {
        let reply = match tokio::time::timeout(ep.timeout, ep.transport.get()).await {
            Ok(r) => r
                .map(Box::new)
                .map_err(|e| ep.scrub(ep.transport_error(e)))?,
            Err(_) => return Err(ep.no_response()),
        };
        if !reply.status.is_success() {
            return Err(ep.scrub(ep.status_error(reply).await));
        }
        Ok(reply)
    }

    /// GETs `url` (which must be on the base URL's origin) and appends its body to `out`,
    /// chunk by chunk; fails when a line is longer than `max_line_bytes`. Returns the bytes
    /// written; a body that does not end with a newline gets one.
    pub(crate) async fn download(&self, url: &Url, out: &mut tokio::fs::File) -> Result<u64> {
        let ep = self.endpoint(url, None, self.max_download_bytes)?;
        let reply = Self::send_get(&ep).await?;
        let mut body = (*reply).into_stream(self.download_deadline);
        let mut written = 0u64;
        let mut line = 0usize;
        let mut last = b'\n';
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ep.scrub(ep.transport_error(e)))?;
            for part in chunk.split_inclusive(|b| *b == b'\n') {
                line += part.len();
                if line > self.max_line_bytes.saturating_add(1) {
                    return Err(Error::new(
                        ErrorKind::Provider,
                        format!(
                            "a line of the batch results is longer than {} bytes",
                            self.max_line_bytes
                        ),
                    ));
                }
                if part.last() == Some(&b'\n') {
                    line = 0;
                }
            }
            if let Some(b) = chunk.last() {
                last = *b;
            }
            out.write_all(&chunk).await.map_err(|e| io_error(&e))?;
            written += chunk.len() as u64;
        }
        if last != b'\n' {
            out.write_all(b"\n").await.map_err(|e| io_error(&e))?;
            written += 1;
        }
        Ok(written)
    }
}

/// A local file error as an `invalid_argument` naming the path's role.
pub(crate) fn io_error(e: &std::io::Error) -> Error {
    Error::new(ErrorKind::InvalidArgument, format!("batch file: {e}"))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Value> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::new(
            ErrorKind::Provider,
            format!("batch API {what}: the response is not a JSON object"),
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Provider,
            format!("batch API {what}: the response is not valid JSON"),
        )),
    }
}
