//! A lean HTTP/1.1 keep-alive client for plain `http://` endpoints: the hot path of
//! [`Provider`](super::Provider)'s non-streaming `complete`.
//!
//! Each request future owns its connection for the whole exchange (one `write` of head and
//! body, reads until the response is complete) and gives it back to the pool *before* it
//! returns, so a run never holds more connections than it has requests in flight, and no
//! connection task or channel sits between the caller and the socket. `https://` endpoints,
//! streams and proxied set-ups stay on `reqwest`.
//!
//! What the server sends is untrusted: heads are parsed by `httparse` (at most
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers), bodies are framed by `Content-Length`,
//! chunked transfer coding or the end of the connection, and capped at [`MAX_BODY`] bytes.

use std::fmt;
use std::io;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted.
const MAX_HEADERS: usize = 100;
/// The largest response body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// A connection idle longer than this is dropped instead of reused (as reqwest's pool).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A connection idle longer than this is checked for a close by the server before reuse.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// How long a reply sent before the request was fully written is waited for.
const EARLY_REPLY_WAIT: Duration = Duration::from_millis(500);
/// Header names this client writes itself: a custom header with one of them disables the
/// fast path (reqwest handles it).
const OWN_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "expect",
];

/// A failed exchange.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// Connecting failed.
    Connect(io::Error),
    /// Sending or receiving failed.
    Io(io::Error),
    /// The server closed the connection before the response was complete.
    Closed,
    /// The server sent something that is not HTTP/1.x.
    Protocol(&'static str),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "error sending request: tcp connect error: {e}"),
            Self::Io(e) => write!(f, "error sending request: {e}"),
            Self::Closed => f.write_str("connection closed before message completed"),
            Self::Protocol(what) => write!(f, "invalid HTTP response: {what}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The cause attached to an error built from a 4xx or 5xx reply (as reqwest's
/// `error_for_status`).
#[derive(Debug)]
pub(crate) struct StatusError(pub(crate) u16);

impl StatusError {
    /// The cause for `status`, when it is a client or server error.
    pub(crate) fn of(status: u16) -> Option<Self> {
        (400..600).contains(&status).then_some(Self(status))
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.0 < 500 { "client" } else { "server" };
        let reason = reqwest::StatusCode::from_u16(self.0)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("<unknown status code>");
        write!(f, "HTTP status {kind} error ({} {reason})", self.0)
    }
}

impl std::error::Error for StatusError {}

/// A complete response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// The headers, filled only for a status outside 2xx (error classification reads them).
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// One pooled connection with its buffers.
struct Conn {
    stream: TcpStream,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    idle_since: Instant,
    reused: bool,
}

/// The fast client of one endpoint URL.
pub(crate) struct Http1 {
    /// `host:port` to connect to.
    authority: String,
    /// `POST <path> HTTP/1.1\r\n`, every header, then `content-length: ` (the length and the
    /// blank line follow per request). Holds header values (keys): never shown.
    head: Vec<u8>,
    connect_timeout: Option<Duration>,
    idle: Mutex<Vec<Conn>>,
}

impl fmt::Debug for Http1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1").finish_non_exhaustive()
    }
}

/// `true` when a proxy variable reqwest honours is set (then reqwest handles every request).
fn proxy_configured() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

impl Http1 {
    /// The fast client for `url` with `headers`, or `None` when the request must go through
    /// reqwest (not `http`, a proxy configured, or a custom header this client writes itself).
    pub(crate) fn for_url(
        url: &Url,
        headers: &HeaderMap,
        connect_timeout: Option<Duration>,
    ) -> Option<Self> {
        if url.scheme() != "http" || proxy_configured() {
            return None;
        }
        if headers.keys().any(|k| OWN_HEADERS.contains(&k.as_str())) {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut target = url.path().to_owned();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(host_header.as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            put_header(&mut head, name, value);
        }
        if !headers.contains_key(reqwest::header::ACCEPT) {
            head.extend_from_slice(b"accept: */*\r\n");
        }
        head.extend_from_slice(b"content-length: ");
        Some(Self {
            authority: format!("{host}:{port}"),
            head,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// POSTs `body` and reads the whole response.
    ///
    /// The rare paths (a new connection, a resend after a stale one, an early answer) are boxed
    /// futures: inline they made every call's future larger than the allocator's fast size
    /// classes (1,088 bytes for this one alone), a cost paid on every call.
    pub(crate) async fn post(&self, body: &[u8]) -> Result<Reply, HttpError> {
        let mut conn = match self.checkout() {
            Some(c) => c,
            None => Box::pin(self.connect()).await?,
        };
        match self.roundtrip(&mut conn, body).await {
            Ok((reply, keep)) => {
                if keep {
                    self.checkin(conn);
                }
                Ok(reply)
            }
            // A reused connection that failed before any byte of an answer: the server closed
            // it while it sat idle (or the runtime it was registered with is gone). The other
            // idle connections are likely in the same state: drop them all and send once more
            // on a fresh connection.
            Err(Failure { error, answered }) if conn.reused && !answered && is_stale(&error) => {
                drop(conn);
                self.lock().clear();
                Box::pin(self.resend(body)).await
            }
            Err(f) => Err(f.error),
        }
    }

    /// `body` once more, on a fresh connection.
    async fn resend(&self, body: &[u8]) -> Result<Reply, HttpError> {
        let mut fresh = self.connect().await?;
        let (reply, keep) = self
            .roundtrip(&mut fresh, body)
            .await
            .map_err(|f| f.error)?;
        if keep {
            self.checkin(fresh);
        }
        Ok(reply)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still usable.
    fn checkout(&self) -> Option<Conn> {
        loop {
            let mut conn = self.lock().pop()?;
            let idle = conn.idle_since.elapsed();
            if idle > IDLE_TIMEOUT {
                continue;
            }
            if idle > PROBE_AFTER && !still_open(&conn.stream) {
                continue;
            }
            conn.reused = true;
            return Some(conn);
        }
    }

    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        self.lock().push(conn);
    }

    async fn connect(&self) -> Result<Conn, HttpError> {
        let connect = TcpStream::connect(self.authority.as_str());
        let stream = match self.connect_timeout {
            Some(d) => match tokio::time::timeout(d, connect).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out (connect timeout)",
                )),
            },
            None => connect.await,
        }
        .map_err(HttpError::Connect)?;
        stream.set_nodelay(true).map_err(HttpError::Connect)?;
        Ok(Conn {
            stream,
            wbuf: Vec::with_capacity(1024),
            rbuf: Vec::with_capacity(4096),
            idle_since: Instant::now(),
            reused: false,
        })
    }

    /// One request and its response on `conn`: the reply and whether the connection may be
    /// reused.
    async fn roundtrip(&self, conn: &mut Conn, body: &[u8]) -> Result<(Reply, bool), Failure> {
        conn.wbuf.clear();
        conn.wbuf.extend_from_slice(&self.head);
        let mut len = itoa_buf();
        conn.wbuf.extend_from_slice(itoa(body.len(), &mut len));
        conn.wbuf.extend_from_slice(b"\r\n\r\n");
        conn.wbuf.extend_from_slice(body);
        conn.rbuf.clear();
        if let Err(e) = conn.stream.write_all(&conn.wbuf).await {
            // The server may have answered (e.g. 413) and closed before taking the whole
            // request: read what it said, if it said it at once.
            let early = Box::pin(tokio::time::timeout(
                EARLY_REPLY_WAIT,
                read_response(&mut conn.stream, &mut conn.rbuf),
            ))
            .await;
            return match early {
                Ok(Ok((reply, _))) => Ok((reply, false)),
                _ => Err(Failure::unanswered(HttpError::Io(e))),
            };
        }
        let done = read_response(&mut conn.stream, &mut conn.rbuf).await?;
        if done.1 {
            // The reply is complete and nothing follows it: forget the socket's read readiness,
            // so the next exchange waits for the next reply instead of trying a read that can
            // only say "would block" (one system call per call saved).
            let _ = conn.stream.try_io(Interest::READABLE, || {
                Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
            });
        }
        Ok(done)
    }
}

/// A failure and whether any response byte had arrived.
struct Failure {
    error: HttpError,
    answered: bool,
}

impl Failure {
    fn unanswered(error: HttpError) -> Self {
        Self {
            error,
            answered: false,
        }
    }
    fn answered(error: HttpError) -> Self {
        Self {
            error,
            answered: true,
        }
    }
}

/// A failure of the connection itself (not of what the server said).
fn is_stale(e: &HttpError) -> bool {
    matches!(e, HttpError::Closed | HttpError::Io(_))
}

/// `false` when the peer has closed an idle connection (or sent something unexpected).
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn put_header(head: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    head.extend_from_slice(name.as_str().as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value.as_bytes());
    head.extend_from_slice(b"\r\n");
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// The decimal digits of `n`, written at the end of `buf`.
fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is a single digit.
        buf[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Reads more bytes into `buf`; `Ok(0)` is the end of the stream.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(buf.capacity().max(4096));
    }
    stream.read_buf(buf).await
}

/// What a response head says.
struct Head {
    status: u16,
    len: usize,
    keep_alive: bool,
    framing: Framing,
    /// Boxed, and only outside 2xx: a head lives across reads, in every call's future.
    headers: Option<Box<HeaderMap>>,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
    Empty,
}

/// Reads one response (skipping `1xx` heads) into `buf`.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(Reply, bool), Failure> {
    let head = loop {
        match parse_head(buf).map_err(Failure::answered)? {
            Some(h) if (100..200).contains(&h.status) && h.status != 101 => {
                buf.drain(..h.len);
            }
            Some(h) => break h,
            None => {
                if buf.len() > MAX_HEAD {
                    return Err(Failure::answered(HttpError::Protocol(
                        "the response head is too large",
                    )));
                }
                let n = fill(stream, buf).await.map_err(|e| Failure {
                    answered: !buf.is_empty(),
                    error: HttpError::Io(e),
                })?;
                if n == 0 {
                    return Err(Failure {
                        answered: !buf.is_empty(),
                        error: HttpError::Closed,
                    });
                }
            }
        }
    };
    let start = head.len;
    let (body, keep) = match head.framing {
        Framing::Empty => (Vec::new(), head.keep_alive && buf.len() == start),
        Framing::Length(n) => {
            if n > MAX_BODY {
                return Err(Failure::answered(HttpError::Protocol(
                    "the response body is too large",
                )));
            }
            while buf.len() < start + n {
                let got = fill(stream, buf)
                    .await
                    .map_err(|e| Failure::answered(HttpError::Io(e)))?;
                if got == 0 {
                    return Err(Failure::answered(HttpError::Closed));
                }
            }
            let keep = head.keep_alive && buf.len() == start + n;
            (buf[start..start + n].to_vec(), keep)
        }
        Framing::Chunked => {
            let (body, end) = read_chunked(stream, buf, start).await?;
            (body, head.keep_alive && buf.len() == end)
        }
        Framing::UntilClose => {
            loop {
                if buf.len() - start > MAX_BODY {
                    return Err(Failure::answered(HttpError::Protocol(
                        "the response body is too large",
                    )));
                }
                let got = fill(stream, buf)
                    .await
                    .map_err(|e| Failure::answered(HttpError::Io(e)))?;
                if got == 0 {
                    break;
                }
            }
            (buf[start..].to_vec(), false)
        }
    };
    Ok((
        Reply {
            status: head.status,
            headers: head.headers.map(|h| *h).unwrap_or_default(),
            body,
        },
        keep,
    ))
}

/// Parses a complete head at the start of `buf`, or `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    // Uninitialised header slots: nothing to zero on every parse.
    let mut headers = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::Protocol("too many response headers"));
        }
        Err(_) => return Err(HttpError::Protocol("the response head is malformed")),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut map = HeaderMap::new();
    let keep_map = !(200..300).contains(&status);
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(HttpError::Protocol("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Protocol("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
                .unwrap_or_default();
            if last.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(HttpError::Protocol("unsupported transfer-encoding"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        }
        if keep_map {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        len,
        keep_alive,
        framing,
        headers: keep_map.then(|| Box::new(map)),
    }))
}

/// Decodes a chunked body starting at `buf[start..]`: the body and the end of the message.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: usize,
) -> Result<(Vec<u8>, usize), Failure> {
    let mut body = Vec::new();
    let mut pos = start;
    loop {
        // The size line.
        let line_end = loop {
            if let Some(i) = find_crlf(&buf[pos..]) {
                break pos + i;
            }
            if buf.len() - pos > 4096 {
                return Err(Failure::answered(HttpError::Protocol("invalid chunk size")));
            }
            more(stream, buf).await?;
        };
        let size = chunk_size(&buf[pos..line_end])
            .ok_or(Failure::answered(HttpError::Protocol("invalid chunk size")))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = loop {
                    if let Some(i) = find_crlf(&buf[pos..]) {
                        break pos + i;
                    }
                    if buf.len() - pos > MAX_HEAD {
                        return Err(Failure::answered(HttpError::Protocol(
                            "the response trailers are too large",
                        )));
                    }
                    more(stream, buf).await?;
                };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok((body, pos));
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(Failure::answered(HttpError::Protocol(
                "the response body is too large",
            )));
        }
        while buf.len() < pos + size + 2 {
            more(stream, buf).await?;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(Failure::answered(HttpError::Protocol(
                "a chunk does not end with CRLF",
            )));
        }
        pos += size + 2;
    }
}

/// Reads more bytes of a response already under way; the end of the stream is an error.
async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Failure> {
    match fill(stream, buf).await {
        Ok(0) => Err(Failure::answered(HttpError::Closed)),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::answered(HttpError::Io(e))),
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The size of a chunk from its size line (hex digits, optional `;extensions`).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let s = std::str::from_utf8(digits).ok()?;
    usize::from_str_radix(s, 16).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use super::*;

    #[test]
    fn itoa_writes_digits() {
        let mut b = itoa_buf();
        assert_eq!(itoa(0, &mut b), b"0");
        let mut b = itoa_buf();
        assert_eq!(itoa(1234567, &mut b), b"1234567");
        let mut b = itoa_buf();
        assert_eq!(itoa(usize::MAX, &mut b), usize::MAX.to_string().as_bytes());
    }

    #[test]
    fn heads_are_framed() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.keep_alive && h.len == 38);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Chunked));
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(matches!(h.framing, Framing::UntilClose) && !h.keep_alive);
        let h = parse_head(b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive && h.headers.as_ref().unwrap()["retry-after"] == "3");
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0;ext=1"), Some(0));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"zz"), None);
        assert_eq!(chunk_size(b"ffffffffffffffffff"), None);
    }

    #[tokio::test]
    async fn reads_chunked_and_length_bodies_over_one_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for reply in [
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: 1\r\n\r\n"[..],
                &b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}"[..],
            ] {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(reply).await.unwrap();
            }
            seen
        });
        let url = Url::parse(&format!("http://{addr}/v1/chat/completions?a=b")).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let c = Http1::for_url(&url, &headers, None).unwrap();
        let r = c.post(b"{\"x\":1}").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        let r = c.post(b"{}").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"{}"[..]));
        let seen = server.await.unwrap();
        assert_eq!(
            seen[0],
            format!(
                "POST /v1/chat/completions?a=b HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: */*\r\ncontent-length: 7\r\n\r\n{{\"x\":1}}"
            )
        );
        assert!(seen[1].ends_with("content-length: 2\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_and_close_is_honoured() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            // 1st connection: one reply, then closed by the server (idle timeout).
            // 2nd: one reply with `Connection: close`. 3rd: one reply.
            for close_header in [false, true, false] {
                let (mut s, _) = listener.accept().await.unwrap();
                accepted += 1;
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await.unwrap();
                if close_header {
                    s.write_all(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                    )
                    .await
                    .unwrap();
                } else {
                    s.write_all(ok).await.unwrap();
                }
                drop(s);
            }
            accepted
        });
        let url = Url::parse(&format!("http://{addr}/v1/chat/completions")).unwrap();
        let c = Http1::for_url(&url, &HeaderMap::new(), None).unwrap();
        for _ in 0..3 {
            let r = c.post(b"{}").await.unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_early_reply_to_a_request_the_server_did_not_read_is_returned() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
            // Reset the connection without reading the request.
            #[allow(deprecated)] // a zero linger is what makes the reset
            s.set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
        });
        let url = Url::parse(&format!("http://{addr}/v1/chat/completions")).unwrap();
        let c = Http1::for_url(&url, &HeaderMap::new(), None).unwrap();
        let big = vec![b'x'; 8 << 20];
        let r = tokio::time::timeout(Duration::from_secs(10), c.post(&big))
            .await
            .unwrap();
        server.await.unwrap();
        match r {
            Ok(r) => assert_eq!(r.status, 413),
            // The reset may also discard the reply before it is read: then it is a transport
            // failure, never a hang.
            Err(e) => assert!(matches!(e, HttpError::Io(_) | HttpError::Closed), "{e}"),
        }
    }

    #[test]
    fn https_proxy_and_own_headers_use_reqwest() {
        let h = HeaderMap::new();
        assert!(Http1::for_url(&Url::parse("https://x/v1").unwrap(), &h, None).is_none());
        let mut own = HeaderMap::new();
        own.insert("connection", HeaderValue::from_static("close"));
        assert!(Http1::for_url(&Url::parse("http://x/v1").unwrap(), &own, None).is_none());
    }
}
