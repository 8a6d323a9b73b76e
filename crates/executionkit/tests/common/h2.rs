//! An HTTPS + HTTP/2 test server on `127.0.0.1` (hyper 1.x `server::conn::http2` over
//! tokio-rustls, ALPN `h2` only, a throwaway CA from [`TestPki`]), answering every request
//! with a closure of the request: a status, headers and a body, whole or as chunks (SSE events)
//! with delays. It counts connections and requests, records the most streams in flight at once,
//! takes a `max_concurrent_streams`, and can send GOAWAY (a graceful shutdown of a connection:
//! hyper sends GOAWAY, lets open streams finish, refuses new ones), drop a connection with its
//! open streams (hyper's server offers no GOAWAY with a chosen last stream id or error code, so
//! an abrupt end is a dropped connection), or answer a stream with
//! `RST_STREAM(REFUSED_STREAM)` (a service error carrying an `h2::Error` of that reason, which
//! hyper turns into the reset's code).
//!
//! ```ignore
//! let server = H2Server::start(H2Options::default(), |req| H2Reply::json(completion("hi"))).await;
//! let p = OpenAiProvider::builder(format!("{}/v1", server.url()), "m").root_certificate_pem(&server.ca_pem);
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::tls::{AbortOnDrop, H2, TestPki};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request as the handler sees it.
#[derive(Debug, Clone)]
pub struct H2Request {
    pub method: String,
    pub path: String,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// 0 for the server's first connection, then 1, …
    pub connection: usize,
}

impl H2Request {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to send back.
#[derive(Debug, Clone)]
pub enum H2Body {
    /// One body.
    Full(Bytes),
    /// Chunks, each sent after its delay (an SSE stream: one event per chunk).
    Chunks(Vec<(Duration, Bytes)>),
    /// No response: `RST_STREAM(REFUSED_STREAM)`.
    Refuse,
}

/// The handler's answer.
#[derive(Debug, Clone)]
pub struct H2Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: H2Body,
    /// Waited before the response head is sent (keeps streams in flight together).
    pub delay: Duration,
    /// Start a graceful shutdown (GOAWAY) of this request's connection once it is received.
    pub goaway: bool,
    /// Close this request's connection at once, unanswered (no GOAWAY: the TCP connection is
    /// dropped with every stream on it).
    pub close: bool,
}

impl H2Reply {
    /// `200` with a JSON body.
    pub fn json(body: impl Into<String>) -> Self {
        Self::status(200, body).header("content-type", "application/json")
    }

    /// `status` with `body`.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: H2Body::Full(Bytes::from(body.into())),
            delay: Duration::ZERO,
            goaway: false,
            close: false,
        }
    }

    /// `200 text/event-stream` sending each `(delay, event)` as one chunk.
    pub fn sse(events: Vec<(Duration, String)>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: H2Body::Chunks(
                events
                    .into_iter()
                    .map(|(d, e)| (d, Bytes::from(e)))
                    .collect(),
            ),
            delay: Duration::ZERO,
            goaway: false,
            close: false,
        }
    }

    /// `RST_STREAM(REFUSED_STREAM)` instead of a response.
    pub fn refused() -> Self {
        Self {
            body: H2Body::Refuse,
            ..Self::status(200, "")
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Waits `d` before answering.
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Sends GOAWAY on this request's connection (the request itself is still answered).
    pub fn then_goaway(mut self) -> Self {
        self.goaway = true;
        self
    }

    /// Drops this request's connection at once (this request and every other one open on it
    /// stay unanswered).
    pub fn then_close(mut self) -> Self {
        self.close = true;
        self
    }
}

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct H2Options {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper's default, 200, when `None`).
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The server; stops when dropped.
pub struct H2Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA certificate (PEM) a client must trust.
    pub ca_pem: String,
    stats: Arc<Stats>,
    goaway: watch::Sender<u64>,
    _task: AbortOnDrop,
}

impl H2Server {
    /// Starts the server with `handler` answering every request.
    pub async fn start<F>(options: H2Options, handler: F) -> Self
    where
        F: Fn(H2Request) -> H2Reply + Send + Sync + 'static,
    {
        let pki = TestPki::new();
        let acceptor = TlsAcceptor::from(pki.server_config(&[H2]));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind h2");
        let addr = listener.local_addr().expect("h2 address");
        let stats = Arc::new(Stats::default());
        let (goaway, goaway_rx) = watch::channel(0u64);
        let handler = Arc::new(handler);
        let shared = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let index = shared.connections.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handler = Arc::clone(&handler);
                let stats = Arc::clone(&shared);
                let mut goaway_rx = goaway_rx.clone();
                let max_streams = options.max_concurrent_streams;
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let local_goaway = Arc::new(Notify::new());
                    let local_close = Arc::new(Notify::new());
                    let notify = (Arc::clone(&local_goaway), Arc::clone(&local_close));
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let stats = Arc::clone(&stats);
                        let (goaway, close) = (Arc::clone(&notify.0), Arc::clone(&notify.1));
                        serve(req, index, handler, stats, goaway, close)
                    });
                    let mut builder = http2::Builder::new(TokioExecutor::new());
                    if let Some(n) = max_streams {
                        builder.max_concurrent_streams(n);
                    }
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(conn);
                    let mut shutting_down = false;
                    loop {
                        tokio::select! {
                            _ = conn.as_mut() => break,
                            r = goaway_rx.changed(), if !shutting_down => {
                                if r.is_ok() {
                                    conn.as_mut().graceful_shutdown();
                                }
                                shutting_down = true;
                            }
                            () = local_goaway.notified(), if !shutting_down => {
                                conn.as_mut().graceful_shutdown();
                                shutting_down = true;
                            }
                            // Dropping the connection closes the socket under every stream.
                            () = local_close.notified() => break,
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            ca_pem: pki.ca_pem,
            stats,
            goaway,
            _task: AbortOnDrop(task),
        }
    }

    /// `https://127.0.0.1:PORT` (no trailing `/`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Requests received in full (the handler ran).
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// The most requests in the handler or its delay at once.
    pub fn max_in_flight(&self) -> usize {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }

    /// GOAWAY on every open connection (graceful: open streams finish, new ones are refused).
    pub fn goaway_all(&self) {
        self.goaway.send_modify(|g| *g += 1);
    }
}

async fn serve<F>(
    req: hyper::Request<Incoming>,
    connection: usize,
    handler: Arc<F>,
    stats: Arc<Stats>,
    goaway: Arc<Notify>,
    close: Arc<Notify>,
) -> Result<hyper::Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>
where
    F: Fn(H2Request) -> H2Reply,
{
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let request = H2Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        connection,
    };
    let reply = handler(request);
    if reply.goaway {
        goaway.notify_one();
    }
    if reply.close {
        close.notify_one();
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    let body: UnsyncBoxBody<Bytes, BoxError> = match reply.body {
        H2Body::Refuse => return Err(Box::new(::h2::Error::from(::h2::Reason::REFUSED_STREAM))),
        H2Body::Full(b) => Full::new(b)
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
        H2Body::Chunks(chunks) => {
            let frames = futures::stream::iter(chunks).then(|(delay, chunk)| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, BoxError>(Frame::data(chunk))
            });
            BodyExt::boxed_unsync(StreamBody::new(frames))
        }
    };
    let mut response = hyper::Response::builder().status(reply.status);
    for (n, v) in &reply.headers {
        response = response.header(n.as_str(), v.as_str());
    }
    Ok(response.body(body)?)
}
