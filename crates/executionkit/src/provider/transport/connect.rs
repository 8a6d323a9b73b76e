//! Opening connections: TCP, an HTTP proxy's `CONNECT` tunnel (through hyper's own client and
//! upgrade), and TLS (tokio-rustls with the `ring` provider, ALPN `h2` then `http/1.1`).
//!
//! Every byte read from a connection is counted in the connection's [`RawCounter`], so the
//! transport can cap what one reply costs in raw bytes (chunk framing, trailers and all), not
//! only in decoded body bytes.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, PROXY_AUTHORIZATION};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::TransportError;

/// Bytes read from one connection so far.
pub(crate) type RawCounter = Arc<AtomicU64>;

/// Anything a connection can run over once it is not a bare TCP stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The byte stream under one HTTP connection: plain TCP (the common, static case) or TLS and
/// tunnels behind one box.
pub(crate) enum Stream {
    Tcp(SharedTcp),
    Boxed(Box<dyn Io>),
}

/// A TCP stream that the pool can look at while hyper owns the connection: at checkout, a
/// connection with bytes (or EOF) waiting that nobody asked for is dropped, not reused.
pub(crate) struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream))
    }

    /// A handle to look at the socket later ([`Peek::is_quiet`]).
    pub(crate) fn peek_handle(&self) -> Peek {
        Peek(Arc::clone(&self.0))
    }
}

/// A look at an idle connection's socket.
pub(crate) struct Peek(Arc<TcpStream>);

impl Peek {
    /// `true` when nothing is waiting to be read: no stray bytes, no EOF, no error. Asks the
    /// socket itself (a non-blocking `MSG_PEEK`), not tokio's cached readiness, which has not
    /// seen bytes that arrived while this thread was busy.
    pub(crate) fn is_quiet(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(&*self.0).peek(&mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

/// The largest [`SCRATCH`]: the most one read of a connection takes from the socket.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// A read buffer per thread, zeroed once (per size it grows to). hyper hands every read of
    /// a plain TCP connection a fresh, uninitialised buffer, and reading into it through
    /// tokio's `ReadBuf` would zero all of it first (`initialize_unfilled`): 8 KiB or more per
    /// read, two reads per call. Reading here and copying what was read costs only the bytes
    /// read. (tokio-rustls reads into its own, initialised buffer, and copies into hyper's.)
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl SharedTcp {
    /// Reads into `dst` once the socket is readable.
    fn poll_read_into(&self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        let len = dst.len();
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            let mut read = None;
            // As tokio's own `TcpStream` does: a read that did not fill the buffer emptied the
            // socket, so its readiness is cleared at once (the readiness seen before the read is
            // cleared; bytes arriving later raise a new one). Otherwise the next poll (hyper
            // polls a kept-alive connection after every reply) costs a `recv` that fails with
            // EAGAIN.
            let result = self.0.try_io(Interest::READABLE, || {
                let n = self.0.try_read(&mut *dst)?;
                read = Some(n);
                if 0 < n && n < len {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match (read, result) {
                (Some(n), _) => return Poll::Ready(Ok(n)),
                (None, Err(e)) if e.kind() != io::ErrorKind::WouldBlock => {
                    return Poll::Ready(Err(e));
                }
                (None, _) => {}
            }
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // An initialised buffer (tokio-rustls's) is read into straight; an uninitialised one
        // (hyper's) through the thread's scratch buffer.
        if buf.initialized().len() < buf.capacity() {
            let scratch = SCRATCH.with(|cell| {
                let Ok(mut scratch) = cell.try_borrow_mut() else {
                    return None; // only if a read ever ran inside another one on this thread
                };
                // Grown to what reads ask for (hyper starts at 8 KiB), zeroed once per size.
                let want = buf.remaining().min(SCRATCH_LEN);
                if scratch.len() < want {
                    scratch.resize(want, 0);
                }
                Some(self.poll_read_into(cx, &mut scratch[..want]).map_ok(|n| {
                    buf.put_slice(&scratch[..n]);
                }))
            });
            if let Some(poll) = scratch {
                return poll;
            }
        }
        let n = std::task::ready!(self.poll_read_into(cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The socket closes when the last handle to it is dropped (the pool's look included).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A stream that counts the bytes read from it.
pub(crate) struct Counted {
    inner: Stream,
    read: RawCounter,
}

impl Counted {
    pub(crate) fn new(inner: Stream) -> (Self, RawCounter) {
        let read = RawCounter::default();
        (
            Self {
                inner,
                read: Arc::clone(&read),
            },
            read,
        )
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = match &mut this.inner {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Boxed(s) => Pin::new(s).poll_read(cx, buf),
        };
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Boxed(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Boxed(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Boxed(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Boxed(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Boxed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Where a connection goes: host and port of the origin, or of the proxy in front of it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    /// `host:port`, with an IPv6 host in brackets.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn socket_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A proxy the connection goes through.
#[derive(Clone)]
pub(crate) struct Proxy {
    pub(crate) target: Target,
    /// `Proxy-Authorization` (marked sensitive), from the proxy URL's credentials.
    pub(crate) auth: Option<HeaderValue>,
}

/// Names the proxy in a failure to reach it.
pub(crate) fn to_proxy(e: TransportError) -> TransportError {
    match e {
        TransportError::Connect { what, source } => TransportError::Connect {
            what: format!("{what} (the proxy)"),
            source,
        },
        other => other,
    }
}

/// Opens a TCP connection with `TCP_NODELAY`.
pub(crate) async fn tcp(target: &Target) -> Result<SharedTcp, TransportError> {
    let stream = TcpStream::connect((target.socket_host(), target.port))
        .await
        .map_err(|e| {
            TransportError::connect(format!("could not connect to {}", target.authority()), e)
        })?;
    // Small request bodies go out at once; a failure here only costs latency.
    let _ = stream.set_nodelay(true);
    Ok(SharedTcp::new(stream))
}

/// Opens a tunnel to `origin` through `proxy` with `CONNECT`, using hyper's HTTP/1.1 client and
/// its upgrade (bytes the proxy sent after its reply are kept).
pub(crate) async fn tunnel(
    proxy: &Proxy,
    origin: &Target,
) -> Result<(Box<dyn Io>, Peek), TransportError> {
    let stream = tcp(&proxy.target).await.map_err(to_proxy)?;
    let peek = stream.peek_handle();
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| TransportError::connect("could not talk to the proxy", e))?;
    let driver = tokio::spawn(conn.with_upgrades());
    let authority = origin.authority();
    let host = HeaderValue::from_str(&authority)
        .map_err(|e| TransportError::connect("the origin cannot be named in a CONNECT", e))?;
    let mut req = Request::new(Empty::new());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = authority
        .parse()
        .map_err(|e| TransportError::connect("the origin cannot be named in a CONNECT", e))?;
    req.headers_mut().insert(HOST, host);
    if let Some(auth) = &proxy.auth {
        req.headers_mut().insert(PROXY_AUTHORIZATION, auth.clone());
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| TransportError::connect("the proxy did not answer the CONNECT", e))?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            driver.abort();
            return Err(TransportError::Refused(format!(
                "the proxy at {} requires authentication (HTTP 407){}",
                proxy.target.authority(),
                if proxy.auth.is_some() {
                    "; the credentials were refused"
                } else {
                    ""
                }
            )));
        }
        s if s.is_client_error() => {
            driver.abort();
            return Err(TransportError::Refused(format!(
                "the proxy at {} refused the tunnel to {authority} (HTTP {})",
                proxy.target.authority(),
                s.as_u16()
            )));
        }
        s => {
            driver.abort();
            return Err(TransportError::Proxy(format!(
                "the proxy at {} refused the tunnel to {authority} (HTTP {})",
                proxy.target.authority(),
                s.as_u16()
            )));
        }
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| TransportError::connect("the proxy tunnel could not be opened", e))?;
    Ok((Box::new(TokioIo::new(upgraded)), peek))
}

/// The outcome of a TLS handshake: the stream and whether the server chose HTTP/2.
pub(crate) struct Tls {
    pub(crate) stream: Box<dyn Io>,
    pub(crate) h2: bool,
}

/// Runs a TLS handshake over `io` for `host`, offering `h2` and `http/1.1`.
pub(crate) async fn tls<S: Io>(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    io: S,
) -> Result<Tls, TransportError> {
    let name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| TransportError::connect(format!("'{host}' is not a valid TLS server name"), e))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, io)
        .await
        .map_err(|e| {
            // A certificate that does not verify will not verify on a retry either.
            let refused = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                            | rustls::Error::UnsupportedNameType
                    )
                });
            if refused {
                TransportError::Refused(format!("TLS handshake failed: {e}"))
            } else {
                TransportError::connect("TLS handshake failed", e)
            }
        })?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok(Tls {
        stream: Box::new(stream),
        h2,
    })
}

/// The roots every https connection trusts: webpki's, the system's (or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set), loaded once per process on the first https connect.
fn default_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Unreadable system certificates are skipped: webpki's roots remain.
        let native = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(native.certs);
        roots
    })
}

/// Builds the client configuration: default roots plus `extra` (DER certificates from the
/// builder), ALPN `h2` then `http/1.1`.
pub(crate) fn client_config(
    extra: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = default_roots().clone();
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| {
            TransportError::connect("a root certificate given to the provider is not valid", e)
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::connect("TLS could not be set up", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Parses every certificate of a PEM text.
pub(crate) fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the PEM text holds no readable certificate: {e}"))?;
    if certs.is_empty() {
        return Err("the PEM text holds no certificate".to_owned());
    }
    Ok(certs)
}

/// Runs `fut` under `limit` (when set), as a connect timeout.
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    fut: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    match limit {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .unwrap_or(Err(TransportError::ConnectTimeout(d))),
    }
}
