//! The one HTTP transport: hyper 1.x's connection-level clients (`http1`, `http2`) under a pool
//! of our own, for `http://` and `https://` (tokio-rustls, ALPN), directly or through a proxy.
//!
//! The rules it keeps, whatever a server does:
//!
//! * **Only what was never written is sent again.** A pooled HTTP/1.1 connection that turns out
//!   to be closed hands the request back unsent (`TrySendError::take_message`), and only then is
//!   it sent on another connection. Anything else (written then closed, reset, GOAWAY) is an
//!   error for the engine's retry, which reserves, counts and reports each try.
//! * **A reply belongs to its request.** An HTTP/1.1 connection goes back to the pool only after
//!   its reply was read to the end; at checkout a connection that hyper saw closed (EOF, or
//!   bytes nobody asked for, which hyper treats as an error while idle) is dropped. A `101`
//!   closes the connection; interim `1xx` replies are skipped by hyper.
//! * **Memory is bounded.** Reply bodies are capped (in raw bytes read from the connection for
//!   HTTP/1.1, chunk framing and trailers included; in body bytes for HTTP/2, whose frames and
//!   flow-control windows bound the rest); hyper caps heads, chunk extensions and trailers.
//! * **Never more HTTP/1.1 connections than calls in flight**: a connection is opened only when
//!   no idle one is left. HTTP/2 (chosen by ALPN) multiplexes every call over one connection
//!   per provider, replaced when it closes; while streams are open, a connection that goes
//!   silent is pinged and closed when no PONG comes (a half-open path is not kept forever).

mod connect;
mod get;

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, HOST, PROXY_AUTHORIZATION, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;

pub(crate) use connect::pem_certificates;
use connect::{Counted, Peek, Proxy, RawCounter, Stream as ConnStream, Target};

/// The default cap on one reply body (64 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// An idle HTTP/1.1 connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// hyper's read buffer, which also bounds a response head.
const MAX_BUF: usize = 128 * 1024;
/// Header fields in one response head.
const MAX_HEADERS: usize = 128;
/// An HTTP/2 connection with streams open that received nothing for this long is pinged.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
/// An HTTP/2 connection whose PING is not answered within this is closed (and replaced).
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams opened before the server's SETTINGS say how many it allows.
const INITIAL_H2_STREAMS: usize = 16;
/// Raw bytes allowed beyond the body cap for the head and chunk framing.
const FRAMING_ALLOWANCE: u64 = MAX_BUF as u64;

/// The request body: marks the attempt's wire probe when hyper reads it (`provider::wire`).
type Body = crate::provider::wire::WireBody;

/// What went wrong below HTTP semantics. The provider maps it to an [`crate::Error`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// No request was written: connecting, the proxy tunnel or TLS failed.
    #[error("{what}")]
    Connect {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connect phase took longer than the connect timeout.
    #[error("could not connect within {:.1} s (connect timeout)", .0.as_secs_f64())]
    ConnectTimeout(Duration),
    /// A proxy answered a tunnel request with an error.
    #[error("{0}")]
    Proxy(String),
    /// Refused for good: the server's certificate did not verify, or the proxy refused the
    /// tunnel with a 4xx (its credentials, its rules). Retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// The connection failed while the request was sent or the reply read.
    #[error(transparent)]
    Http(hyper::Error),
    /// The server broke the protocol (a `101` nobody asked for, an unsupported framing).
    #[error("{0}")]
    Protocol(String),
    /// The reply exceeded a cap.
    #[error("the {what} exceeded the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    /// A stream passed its total deadline.
    #[error("the stream did not finish within {:.1} s (stream deadline)", .0.as_secs_f64())]
    Deadline(Duration),
}

impl TransportError {
    fn connect(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Connect {
            what: what.into(),
            source: source.into(),
        }
    }

    /// `true` for a timeout (connect timeout or a stream's deadline).
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, Self::ConnectTimeout(_) | Self::Deadline(_))
    }

    /// `true` when retrying cannot help (a certificate that does not verify, a proxy's 4xx).
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// `true` when the server broke the protocol or a cap (a provider fault, not the network).
    pub(crate) fn is_protocol(&self) -> bool {
        matches!(self, Self::Protocol(_) | Self::TooLarge { .. })
    }
}

/// Settings of a [`Transport`], fixed when the provider is built.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) max_response_bytes: usize,
    /// Extra roots (DER) trusted beside webpki's and the system's.
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// Honour the proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`).
    pub(crate) use_env_proxy: bool,
}

/// The HTTP protocol a provider's connections speak, once known.
const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// One provider's connections to one origin (or the proxy in front of it).
pub(crate) struct Transport {
    tls: bool,
    origin: Target,
    proxy: Option<Proxy>,
    /// The request URI: origin-form for HTTP/1.1 direct, absolute for a proxy or HTTP/2.
    h1_uri: Uri,
    h2_uri: Uri,
    /// Headers sent with every request (built once), `Host` included.
    headers: HeaderMap,
    /// The same without `Host`, for HTTP/2.
    h2_headers: HeaderMap,
    settings: Settings,
    tls_config: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    pool: Mutex<Pool>,
    proto: AtomicU8,
    /// Held while an https connection whose protocol is not yet known (or HTTP/2) is opened, so
    /// that concurrent first calls share one HTTP/2 connection instead of opening one each.
    h2_gate: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Pool {
    idle: Vec<IdleH1>,
    h2: Option<http2::SendRequest<Body>>,
}

struct IdleH1 {
    sender: http1::SendRequest<Body>,
    read: RawCounter,
    peek: Peek,
    /// Raw bytes read when it went idle: more since means bytes nobody asked for.
    read_at_checkin: u64,
    since: Instant,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls)
            .field("origin", &self.origin.authority())
            .field("proxied", &self.proxy.is_some())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport for `url` (already validated: http or https, with a host) with the headers
    /// every request carries.
    pub(crate) fn new(
        url: &url::Url,
        mut headers: HeaderMap,
        settings: Settings,
    ) -> Result<Self, String> {
        let tls = url.scheme() == "https";
        let host = url.host_str().ok_or("the URL has no host")?.to_owned();
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let origin = Target { host, port };
        let absolute: Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("the URL cannot be sent: {e}"))?;
        let origin_form: Uri = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
        .parse()
        .map_err(|e| format!("the URL cannot be sent: {e}"))?;

        let proxy = if settings.use_env_proxy {
            proxy_for(&absolute)?
        } else {
            None
        };
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        headers.insert(
            HOST,
            HeaderValue::from_str(&host_header).map_err(|e| format!("bad host: {e}"))?,
        );
        // Plain http through a proxy: the request goes to the proxy in absolute form, with the
        // proxy's credentials. https goes through a CONNECT tunnel and carries neither.
        let h1_uri = match (&proxy, tls) {
            (Some(p), false) => {
                if let Some(auth) = &p.auth {
                    headers.insert(PROXY_AUTHORIZATION, auth.clone());
                }
                absolute.clone()
            }
            _ => origin_form,
        };
        Ok(Self {
            tls,
            origin,
            proxy,
            h1_uri,
            h2_uri: absolute,
            h2_headers: {
                let mut h2 = headers.clone();
                h2.remove(HOST);
                h2
            },
            headers,
            settings,
            tls_config: OnceLock::new(),
            pool: Mutex::new(Pool::default()),
            proto: AtomicU8::new(if tls { PROTO_UNKNOWN } else { PROTO_H1 }),
            h2_gate: tokio::sync::Mutex::new(()),
        })
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // The pool is a list of handles; a panic cannot leave it half-updated.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request(&self, body: Bytes, uri: &Uri) -> Request<Body> {
        self.request_with(body, uri, &self.headers)
    }

    /// An HTTP/2 request: absolute URI, and no `Host` (`:authority` carries it).
    fn h2_request(&self, body: Bytes) -> Request<Body> {
        self.request_with(body, &self.h2_uri, &self.h2_headers)
    }

    fn request_with(&self, body: Bytes, uri: &Uri, headers: &HeaderMap) -> Request<Body> {
        let mut req = Request::new(Body::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        req
    }

    /// Sends one POST with `body` and returns the reply head; the body is read through the
    /// returned [`Reply`]. Nothing is re-sent unless hyper handed it back unwritten.
    ///
    /// Boxed here, one layout per protocol, so an HTTP/1.1 call does not carry the larger
    /// HTTP/2 states (keeps the call future small: docs/architecture.md, "Future sizes").
    pub(crate) fn send(self: &Arc<Self>, body: Bytes) -> SendFuture<'_> {
        crate::provider::wire::begun();
        if self.proto.load(Ordering::Acquire) == PROTO_H1 {
            return Box::pin(self.send_h1(body));
        }
        Box::pin(async move {
            if let Some(reply) = self.send_h2(&body).await? {
                return Ok(reply);
            }
            self.send_h1(body).await
        })
    }

    /// Over HTTP/2 when the origin speaks it; `None` when it speaks HTTP/1.1.
    ///
    /// The rare paths (the first connection, a connection found gone) are boxed, so that the
    /// common one, a stream on the live connection, keeps the call's future small.
    async fn send_h2(self: &Arc<Self>, body: &Bytes) -> Result<Option<Reply>, TransportError> {
        let mut sender = match self.live_h2() {
            Some(s) => s,
            None => match Box::pin(self.first_h2(body)).await? {
                H2Sender::Ready(s) => s,
                H2Sender::Done(reply) => return Ok(reply),
            },
        };
        let req = self.h2_request(body.clone());
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // Never written: the connection was already gone. Once more on a new one.
                Some(req) => return Box::pin(self.resend_h2(req, body)).await.map(Some),
                None => return Err(TransportError::Http(e.into_error())),
            },
        };
        Reply::new(resp, None, self.settings.max_response_bytes).map(Some)
    }

    /// The HTTP/2 sender when no connection is live: opened under the gate (concurrent first
    /// calls share it), or the outcome when the origin turned out to speak HTTP/1.1.
    async fn first_h2(self: &Arc<Self>, body: &Bytes) -> Result<H2Sender, TransportError> {
        let gate = self.h2_gate.lock().await;
        if let Some(s) = self.live_h2() {
            return Ok(H2Sender::Ready(s));
        }
        if self.proto.load(Ordering::Acquire) == PROTO_H1 {
            return Ok(H2Sender::Done(None));
        }
        match self.connect().await? {
            Opened::H2(s) => Ok(H2Sender::Ready(s)),
            Opened::H1(conn) => {
                drop(gate);
                let reply = self.send_on_fresh_h1(conn, body.clone()).await?;
                Ok(H2Sender::Done(Some(reply)))
            }
        }
    }

    /// Sends `req`, which hyper handed back unwritten, on a new (or newly live) connection.
    async fn resend_h2(
        self: &Arc<Self>,
        req: Request<Body>,
        body: &Bytes,
    ) -> Result<Reply, TransportError> {
        self.pool().h2 = None;
        let gate = self.h2_gate.lock().await;
        let mut sender = match self.live_h2() {
            Some(s) => s,
            None => match self.connect().await? {
                Opened::H2(s) => s,
                Opened::H1(conn) => {
                    drop(gate);
                    return self.send_on_fresh_h1(conn, body.clone()).await;
                }
            },
        };
        drop(gate);
        let resp = sender
            .send_request(req)
            .await
            .map_err(TransportError::Http)?;
        Reply::new(resp, None, self.settings.max_response_bytes)
    }

    /// The pooled HTTP/2 sender, when its connection is still open.
    fn live_h2(&self) -> Option<http2::SendRequest<Body>> {
        let mut pool = self.pool();
        match &pool.h2 {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                pool.h2 = None;
                None
            }
            None => None,
        }
    }

    async fn send_h1(self: &Arc<Self>, body: Bytes) -> Result<Reply, TransportError> {
        let mut req = self.request(body, &self.h1_uri);
        loop {
            let idle = self.pool().idle.pop();
            let Some(mut conn) = idle else { break };
            if conn.sender.is_closed()
                || conn.since.elapsed() > IDLE_TIMEOUT
                || raw(&conn.read) != conn.read_at_checkin
                || !conn.peek.is_quiet()
            {
                continue;
            }
            // A connection whose last reply was just read may still be finishing it.
            if conn.sender.ready().await.is_err() {
                continue;
            }
            let start = raw(&conn.read);
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        transport: Arc::clone(self),
                        sender: conn.sender,
                        read: conn.read,
                        peek: conn.peek,
                        start,
                    };
                    return Reply::new(resp, Some(lease), self.settings.max_response_bytes);
                }
                Err(mut e) => match e.take_message() {
                    // Never written (the connection closed under us): try the next one.
                    Some(r) => req = r,
                    None => return Err(TransportError::Http(e.into_error())),
                },
            }
        }
        // No idle connection: a new one (boxed: it holds the connect and the handshake, once
        // per connection).
        Box::pin(self.send_on_new(req)).await
    }

    /// Opens a connection and sends `req` on it.
    async fn send_on_new(self: &Arc<Self>, req: Request<Body>) -> Result<Reply, TransportError> {
        match self.connect().await? {
            Opened::H1(conn) => self.send_on(conn, req).await,
            Opened::H2(mut sender) => {
                // The origin now speaks HTTP/2 (learned on this connect).
                let mut req = req;
                *req.uri_mut() = self.h2_uri.clone();
                *req.headers_mut() = self.h2_headers.clone();
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(TransportError::Http)?;
                Reply::new(resp, None, self.settings.max_response_bytes)
            }
        }
    }

    async fn send_on_fresh_h1(
        self: &Arc<Self>,
        conn: FreshH1,
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let req = self.request(body, &self.h1_uri);
        self.send_on(conn, req).await
    }

    /// Sends on a connection just opened (no second chance: it was never idle).
    async fn send_on(
        self: &Arc<Self>,
        mut conn: FreshH1,
        req: Request<Body>,
    ) -> Result<Reply, TransportError> {
        let start = raw(&conn.read);
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(TransportError::Http)?;
        let lease = Lease {
            transport: Arc::clone(self),
            sender: conn.sender,
            read: conn.read,
            peek: conn.peek,
            start,
        };
        Reply::new(resp, Some(lease), self.settings.max_response_bytes)
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        self.tls_config
            .get_or_init(|| {
                connect::client_config(&self.settings.roots).map_err(|e| error_text(&e))
            })
            .clone()
            .map_err(|what| TransportError::Protocol(format!("TLS could not be set up: {what}")))
    }

    /// Opens a connection (through the proxy and TLS as configured) and runs hyper's handshake.
    ///
    /// Boxed: connecting (TCP, a proxy tunnel, a TLS handshake) is a large future that runs once
    /// per connection; inline, it made every call's `send` future 4 KiB (docs/architecture.md,
    /// "Future sizes").
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(connect::within(self.settings.connect_timeout, self.open()))
    }

    async fn open(&self) -> Result<Opened, TransportError> {
        let (stream, peek, h2) = match (&self.proxy, self.tls) {
            (None, false) | (Some(_), false) => {
                let tcp = match &self.proxy {
                    Some(p) => connect::tcp(&p.target).await.map_err(connect::to_proxy)?,
                    None => connect::tcp(&self.origin).await?,
                };
                let peek = tcp.peek_handle();
                (ConnStream::Tcp(tcp), peek, false)
            }
            (None, true) => {
                let tcp = connect::tcp(&self.origin).await?;
                let peek = tcp.peek_handle();
                let tls = connect::tls(self.tls_config()?, &self.origin.host, tcp).await?;
                (ConnStream::Boxed(tls.stream), peek, tls.h2)
            }
            (Some(p), true) => {
                let (tunnel, peek) = connect::tunnel(p, &self.origin).await?;
                let tls = connect::tls(self.tls_config()?, &self.origin.host, tunnel).await?;
                (ConnStream::Boxed(tls.stream), peek, tls.h2)
            }
        };
        let (io, read) = Counted::new(stream);
        let io = TokioIo::new(io);
        if h2 {
            // Until the server's SETTINGS arrive, open few streams: a burst beyond its
            // max_concurrent_streams would be refused (REFUSED_STREAM) and cost retries.
            // While streams are open, a connection silent for H2_PING_INTERVAL is pinged and
            // closed when no PONG comes within H2_PING_TIMEOUT: a dead path (half-open, black
            // holed) is then replaced instead of timing out every later call.
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .keep_alive_while_idle(false)
                .initial_max_send_streams(INITIAL_H2_STREAMS)
                .max_header_list_size(MAX_BUF as u32)
                .handshake::<_, Body>(io)
                .await
                .map_err(|e| TransportError::connect("the HTTP/2 handshake failed", e))?;
            tokio::spawn(conn);
            self.proto.store(PROTO_H2, Ordering::Release);
            self.pool().h2 = Some(sender.clone());
            Ok(Opened::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                .max_buf_size(MAX_BUF)
                .max_headers(MAX_HEADERS)
                .handshake::<_, Body>(io)
                .await
                .map_err(|e| TransportError::connect("the HTTP/1.1 handshake failed", e))?;
            tokio::spawn(conn);
            self.proto.store(PROTO_H1, Ordering::Release);
            Ok(Opened::H1(FreshH1 { sender, read, peek }))
        }
    }

    fn checkin(&self, sender: http1::SendRequest<Body>, read: RawCounter, peek: Peek) {
        if sender.is_closed() {
            return;
        }
        let read_at_checkin = raw(&read);
        self.pool().idle.push(IdleH1 {
            sender,
            read,
            peek,
            read_at_checkin,
            since: Instant::now(),
        });
    }

    /// Idle HTTP/1.1 connections in the pool (tests).
    #[cfg(test)]
    pub(crate) fn idle_connections(&self) -> usize {
        self.pool().idle.len()
    }
}

enum Opened {
    H1(FreshH1),
    H2(http2::SendRequest<Body>),
}

/// A sender for HTTP/2, or the call's outcome when the origin spoke HTTP/1.1.
enum H2Sender {
    Ready(http2::SendRequest<Body>),
    Done(Option<Reply>),
}

/// The future of one [`Transport::send`].
pub(crate) type SendFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Reply, TransportError>> + Send + 'a>>;

type ConnectFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Opened, TransportError>> + Send + 'a>>;

struct FreshH1 {
    sender: http1::SendRequest<Body>,
    read: RawCounter,
    peek: Peek,
}

fn raw(counter: &RawCounter) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !t.is_empty() && !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}

/// The proxy for `uri` from the environment, if any.
fn proxy_for(uri: &Uri) -> Result<Option<Proxy>, String> {
    let matcher = hyper_util::client::proxy::matcher::Matcher::from_env();
    let Some(intercept) = matcher.intercept(uri) else {
        return Ok(None);
    };
    let proxy_uri = intercept.uri();
    match proxy_uri.scheme_str() {
        Some("http") | None => {}
        Some(other) => {
            return Err(format!(
                "proxy scheme '{other}' is not supported (only http:// proxies)"
            ));
        }
    }
    let host = proxy_uri
        .host()
        .ok_or("the proxy URL has no host")?
        .to_owned();
    let port = proxy_uri.port_u16().unwrap_or(80);
    let auth = intercept.basic_auth().cloned().map(|mut v| {
        v.set_sensitive(true);
        v
    });
    Ok(Some(Proxy {
        target: Target { host, port },
        auth,
    }))
}

/// An HTTP/1.1 connection lent to one reply; it goes back to the pool only when the reply was
/// read to its end.
struct Lease {
    transport: Arc<Transport>,
    sender: http1::SendRequest<Body>,
    read: RawCounter,
    peek: Peek,
    start: u64,
}

impl Lease {
    fn raw_read(&self) -> u64 {
        raw(&self.read).saturating_sub(self.start)
    }
}

/// A reply's head, with its body still to read.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    body: Incoming,
    lease: Option<Lease>,
    limit: u64,
    read: u64,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Reply {
    fn new(
        resp: http::Response<Incoming>,
        mut lease: Option<Lease>,
        limit: usize,
    ) -> Result<Self, TransportError> {
        let (parts, body) = resp.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(TransportError::Protocol(
                "the server switched protocols (HTTP 101) though no upgrade was asked for"
                    .to_owned(),
            ));
        }
        if let Some(te) = parts.headers.get(TRANSFER_ENCODING) {
            if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(TransportError::Protocol(format!(
                    "the reply uses an unsupported transfer encoding ({})",
                    String::from_utf8_lossy(te.as_bytes())
                        .chars()
                        .take(64)
                        .collect::<String>()
                )));
            }
            // Both framings at once: read this body as chunked, then never reuse the connection.
            if parts.headers.contains_key(CONTENT_LENGTH) {
                lease = None;
            }
        }
        // A success whose declared length is over the cap fails before any of the body is read
        // (an error reply is read only up to a short prefix anyway).
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if parts.status.is_success() && declared.is_some_and(|n| n > limit as u64) {
            return Err(TransportError::TooLarge {
                what: "reply",
                limit: limit as u64,
            });
        }
        if let Some(ce) = parts.headers.get(CONTENT_ENCODING) {
            if !ce.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity") {
                return Err(TransportError::Protocol(format!(
                    "the reply is compressed ({}) though no compression was asked for",
                    String::from_utf8_lossy(ce.as_bytes())
                        .chars()
                        .take(64)
                        .collect::<String>()
                )));
            }
        }
        Ok(Self {
            status: parts.status,
            headers: parts.headers,
            body,
            lease,
            limit: limit as u64,
            read: 0,
        })
    }

    /// Counts `n` body bytes and checks the caps (raw bytes on HTTP/1.1, body bytes on both).
    fn count(&mut self, n: usize, limit: u64) -> Result<(), TransportError> {
        self.read += n as u64;
        let raw = self.lease.as_ref().map_or(0, Lease::raw_read);
        if self.read > limit || raw > limit.saturating_add(FRAMING_ALLOWANCE) {
            self.lease = None;
            return Err(TransportError::TooLarge {
                what: "reply",
                limit,
            });
        }
        Ok(())
    }

    /// The next chunk of body bytes, or `None` at the end (the connection is then returned).
    async fn next_data(&mut self, limit: u64) -> Result<Option<Bytes>, TransportError> {
        loop {
            match self.body.frame().await {
                None => {
                    if let Some(l) = self.lease.take() {
                        l.transport.checkin(l.sender, l.read, l.peek);
                    }
                    return Ok(None);
                }
                Some(Err(e)) => {
                    self.lease = None;
                    return Err(TransportError::Http(e));
                }
                Some(Ok(frame)) => {
                    // Trailers are bounded by hyper and carry nothing we use.
                    if let Ok(data) = frame.into_data() {
                        self.count(data.len(), limit)?;
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    } else {
                        self.count(0, limit)?;
                    }
                }
            }
        }
    }

    /// Reads the whole body (up to the reply cap).
    pub(crate) async fn bytes(mut self) -> Result<Bytes, TransportError> {
        let limit = self.limit;
        let Some(first) = self.next_data(limit).await? else {
            return Ok(Bytes::new());
        };
        let Some(second) = self.next_data(limit).await? else {
            return Ok(first);
        };
        let hint = self
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or(0, |n| n.min(limit));
        let mut buf = Vec::with_capacity(
            usize::try_from(hint)
                .unwrap_or(0)
                .max(first.len() + second.len()),
        );
        buf.extend_from_slice(&first);
        buf.extend_from_slice(&second);
        while let Some(more) = self.next_data(limit).await? {
            buf.extend_from_slice(&more);
        }
        Ok(Bytes::from(buf))
    }

    /// Reads at most `cap` bytes of the body (an error reply's detail); the connection is not
    /// reused unless the body ended within the cap.
    pub(crate) async fn prefix(mut self, cap: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        while buf.len() < cap {
            match self.next_data(self.limit).await {
                Ok(Some(d)) => buf.extend_from_slice(&d[..d.len().min(cap - buf.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        buf
    }

    /// The body as a stream of chunks, ending with an error when `deadline` passes.
    pub(crate) fn into_stream(self, deadline: Duration) -> BodyStream {
        let sleep = Box::pin(tokio::time::sleep(deadline));
        let limit = self.limit;
        let inner = futures::stream::unfold(Some(self), move |state| async move {
            let mut reply = state?;
            match reply.next_data(limit).await {
                Ok(Some(d)) => Some((Ok(d), Some(reply))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        BodyStream {
            inner: Box::pin(inner),
            deadline: sleep,
            total: deadline,
            done: false,
        }
    }
}

/// A reply body as a stream of byte chunks, with a total deadline.
pub(crate) struct BodyStream {
    inner: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    total: Duration,
    done: bool,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = self.inner.as_mut().poll_next(cx) {
            if !matches!(item, Some(Ok(_))) {
                self.done = true;
            }
            return Poll::Ready(item);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(TransportError::Deadline(self.total))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
