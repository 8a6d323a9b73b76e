//! [`H2Relay`]: an HTTPS + HTTP/2 terminating reverse proxy on `127.0.0.1` in front of a
//! plain-http/1.1 server (wiremock, llmock, a raw TCP test server), so that a suite written
//! against such a server runs over h2 unchanged.
//!
//! It accepts TLS offering ALPN `h2` only (a throwaway CA from [`TestPki`]), serves HTTP/2 with
//! hyper, and forwards each request on a new HTTP/1.1 connection to the upstream (hyper's
//! client `conn::http1`), then streams the response back as it comes: the status, the headers
//! except the hop-by-hop ones, and each body frame when the upstream sends it (an SSE stream
//! stays a stream, a delay stays a delay, a stall stays a stall). What the upstream breaks
//! reaches the client as HTTP/2 breaks it: an upstream that closes or resets before the head,
//! or mid-body (an incomplete chunked body, a short `Content-Length`), becomes
//! `RST_STREAM(INTERNAL_ERROR)` on that stream; a body ended by its terminating chunk ends the
//! stream (`END_STREAM`), even if the upstream then keeps the connection open. When the client
//! resets or drops a stream, the upstream connection under it is closed.
//!
//! ```ignore
//! let relay = H2Relay::start(*wiremock.address()).await;
//! let p = OpenAiProvider::builder(format!("{}/v1", relay.url()), "m").root_certificate_pem(&relay.ca_pem);
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::tls::{AbortOnDrop, H2, TestPki};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The relay; stops when dropped.
pub struct H2Relay {
    /// Where clients connect (`https://{addr}`).
    pub addr: SocketAddr,
    /// The CA certificate (PEM) that signed the relay's certificate.
    pub ca_pem: String,
    stats: Arc<Stats>,
    _task: AbortOnDrop,
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

impl H2Relay {
    /// A relay to the plain-http/1.1 server at `upstream`, with a fresh [`TestPki`].
    pub async fn start(upstream: SocketAddr) -> Self {
        let pki = TestPki::new();
        let acceptor = TlsAcceptor::from(pki.server_config(&[H2]));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind h2 relay");
        let addr = listener.local_addr().expect("h2 relay address");
        let stats = Arc::new(Stats::default());
        let shared = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let stats = Arc::clone(&shared);
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        stats.requests.fetch_add(1, Ordering::SeqCst);
                        forward(req, upstream)
                    });
                    // Ends when the client closes the connection; the relay's task aborting
                    // (the relay dropped) drops it, and with it every stream and upstream.
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            ca_pem: pki.ca_pem,
            stats,
            _task: AbortOnDrop(task),
        }
    }

    /// `https://127.0.0.1:PORT` (no trailing `/`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Requests (HTTP/2 streams) forwarded so far.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }
}

/// Hop-by-hop fields (RFC 9110 7.6.1), which HTTP/2 does not carry, plus the ones that
/// connection-specific framing uses.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
];

/// Copies `from` without the hop-by-hop fields (and those `Connection` names).
fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let mut to = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if HOP_BY_HOP.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    to
}

/// One request: a new HTTP/1.1 connection to `upstream`, the request on it, the response back
/// with its body streamed. An error (no upstream, a close before the head) resets the stream.
async fn forward(
    req: hyper::Request<Incoming>,
    upstream: SocketAddr,
) -> Result<hyper::Response<Relayed>, BoxError> {
    let (parts, body) = req.into_parts();
    // Request bodies are small (JSON): read it whole, so the upstream gets a Content-Length.
    let body = body.collect().await?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut headers = end_to_end(&parts.headers);
    headers.insert(header::HOST, HeaderValue::from_str(&upstream.to_string())?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut up_req = hyper::Request::builder()
        .method(parts.method)
        .uri(path)
        .body(http_body_util::Full::new(body))?;
    *up_req.headers_mut() = headers;

    let tcp = TcpStream::connect(upstream).await?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    // The connection runs until the body is read to its end (or fails); dropping the relayed
    // body (the client reset or dropped the stream) aborts it, closing the upstream socket.
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(up_req).await?;
    let (parts, body) = response.into_parts();
    let mut out = hyper::Response::builder().status(parts.status);
    *out.headers_mut().expect("a fresh builder") = end_to_end(&parts.headers);
    Ok(out.body(Relayed { body, _conn: conn })?)
}

/// The upstream's body, frame by frame, holding its connection open while it is read.
pub struct Relayed {
    body: Incoming,
    _conn: AbortOnDrop,
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
