//! A raw-TCP HTTP/1.1 server on `127.0.0.1` that misbehaves at the byte level, for the
//! hostile-server suites (`tests/hostile_server.rs`, and `ek`'s `tests/hostile.rs`, which
//! includes this file by path: it depends only on tokio, httparse and serde_json).
//!
//! An attack is one function of a connection:
//!
//! ```ignore
//! let server = Hostile::start(|mut conn: Conn| async move {
//!     let req = conn.read_request().await?;
//!     conn.write_all(&ok_json(&completion(&format!("echo {}", req.prompt())))).await?;
//!     conn.close().await
//! })
//! .await;
//! let url = server.url(); // http://127.0.0.1:PORT/v1
//! ```
//!
//! The server counts connections accepted and requests fully received (head and body), so a
//! test can check the request-count invariant: requests received ≤ `llm_calls` reported, and
//! equal unless the test cuts a connection while a request is on the wire.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The longest request head read.
const MAX_REQUEST_HEAD: usize = 1024 * 1024;

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    heads: AtomicUsize,
    requests: AtomicUsize,
    notes: Mutex<Vec<String>>,
}

/// A hostile server: every accepted connection runs the attack function.
pub struct Hostile {
    /// Where it listens.
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Listens on `127.0.0.1:0` and runs `attack` on each connection (its error, e.g. the
    /// client going away, ends that connection only).
    pub async fn start<F, Fut>(attack: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hostile");
        let addr = listener.local_addr().expect("hostile address");
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let index = shared.connections.fetch_add(1, Ordering::SeqCst);
                let conn = Conn {
                    stream,
                    buf: Vec::new(),
                    index,
                    served: 0,
                    counters: Arc::clone(&shared),
                };
                conns.spawn(attack(conn));
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            counters,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/v1`: a base URL for `OpenAiProvider` or `ek`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Requests received in full (head and body) so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Request heads received so far (a request cut in its body counts here, not in
    /// [`requests`](Self::requests)).
    pub fn heads(&self) -> usize {
        self.counters.heads.load(Ordering::SeqCst)
    }

    /// What attacks recorded with [`Conn::note`], in order.
    pub fn notes(&self) -> Vec<String> {
        self.counters
            .notes
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The content of the last message (the prompt, for one-message requests).
    pub fn prompt(&self) -> String {
        let v = self.json();
        v["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The key in `Authorization: Bearer KEY` (empty without one).
    pub fn bearer(&self) -> String {
        self.header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned()
    }
}

/// One accepted connection, handed to the attack.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read past the last request.
    buf: Vec<u8>,
    /// 0 for the first connection the server accepted, then 1, …
    pub index: usize,
    /// Requests read on this connection so far.
    pub served: usize,
    counters: Arc<Counters>,
}

impl Conn {
    /// Reads one request (head, then a `Content-Length` or chunked body); an error when the
    /// client closes first.
    pub async fn read_request(&mut self) -> io::Result<Request> {
        self.try_read_request()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "client closed"))
    }

    /// Reads one request, or `None` when the client closes the connection cleanly before
    /// sending a byte of one (a keep-alive connection's end).
    pub async fn try_read_request(&mut self) -> io::Result<Option<Request>> {
        let (head_len, method, path, headers) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            if self.buf.len() > MAX_REQUEST_HEAD {
                return Err(io::Error::other("request head too long"));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "request cut"))
                };
            }
        };
        self.counters.heads.fetch_add(1, Ordering::SeqCst);
        self.buf.drain(..head_len);
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            self.read_chunked().await?
        } else {
            let len: usize = find("content-length")
                .map(|v| v.trim().parse())
                .transpose()
                .map_err(|_| io::Error::other("bad content-length"))?
                .unwrap_or(0);
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut"));
                }
            }
            self.buf.drain(..len).collect()
        };
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        self.served += 1;
        Ok(Some(Request {
            method,
            path,
            headers,
            body,
        }))
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let (start, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((start, size))) => break (start, size),
                    Ok(httparse::Status::Partial) => {
                        if self.fill().await? == 0 {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk cut"));
                        }
                    }
                    Err(_) => return Err(io::Error::other("bad chunk size")),
                }
            };
            let size = usize::try_from(size).map_err(io::Error::other)?;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                self.buf.drain(..start);
                loop {
                    if let Some(end) = find(&self.buf, b"\r\n") {
                        let line_empty = end == 0;
                        self.buf.drain(..end + 2);
                        if line_empty {
                            return Ok(body);
                        }
                    } else if self.fill().await? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "trailer cut"));
                    }
                }
            }
            while self.buf.len() < start + size + 2 {
                if self.fill().await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk cut"));
                }
            }
            body.extend_from_slice(&self.buf[start..start + size]);
            self.buf.drain(..start + size + 2);
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Writes `bytes` (and flushes).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Writes `bytes` `chunk` bytes at a time with `pause` between writes.
    pub async fn write_slowly(
        &mut self,
        bytes: &[u8],
        chunk: usize,
        pause: Duration,
    ) -> io::Result<()> {
        for part in bytes.chunks(chunk.max(1)) {
            self.write_all(part).await?;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    /// Writes `piece` again and again until `total` bytes are written or the client goes
    /// away; returns how many bytes were written (an "endless" stream is a large `total`).
    pub async fn write_repeated(&mut self, piece: &[u8], total: usize) -> usize {
        // Batch small pieces into ~64 KiB writes.
        let reps = (64 * 1024 / piece.len().max(1)).max(1);
        let block = piece.repeat(reps);
        let mut written = 0;
        while written < total {
            let n = block.len().min(total - written);
            if self.stream.write_all(&block[..n]).await.is_err() {
                break;
            }
            written += n;
        }
        written
    }

    /// Waits up to `wait` for the client to send another request on this connection:
    /// `Some` if it did (this connection was reused), `None` on a close, an error or silence.
    pub async fn next_request_within(&mut self, wait: Duration) -> Option<Request> {
        tokio::time::timeout(wait, self.try_read_request())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// Reads until the client closes (or `wait` passes); returns the bytes it sent meanwhile.
    pub async fn drain_until_closed(&mut self, wait: Duration) -> usize {
        let mut total = std::mem::take(&mut self.buf).len();
        let _ = tokio::time::timeout(wait, async {
            let mut chunk = [0u8; 16 * 1024];
            while let Ok(n) = self.stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
        })
        .await;
        total
    }

    /// Records `note` for the test to read ([`Hostile::notes`]).
    pub fn note(&self, note: impl Into<String>) {
        if let Ok(mut n) = self.counters.notes.lock() {
            n.push(note.into());
        }
    }

    /// Closes the connection cleanly (FIN).
    pub async fn close(mut self) -> io::Result<()> {
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Resets the connection (RST: `SO_LINGER` 0, then close).
    pub fn reset(self) -> io::Result<()> {
        self.stream.set_zero_linger()?;
        drop(self.stream);
        Ok(())
    }
}

type Head = (usize, String, String, Vec<(String, String)>);

fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some((
            len,
            req.method.unwrap_or_default().to_owned(),
            req.path.unwrap_or_default().to_owned(),
            req.headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::other(format!("bad request head: {e}"))),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A chat-completion body whose reply is `text` (usage 3 in, 2 out).
pub fn completion(text: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    })
    .to_string()
}

/// A complete response: `status_line` (e.g. `200 OK`), `headers`, and `body` with its
/// `Content-Length`.
pub fn response(status_line: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status_line}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

/// `200 OK` with a JSON `body` (keep-alive).
pub fn ok_json(body: &str) -> Vec<u8> {
    response("200 OK", &[("Content-Type", "application/json")], body)
}

/// A keep-alive server that answers every request with `reply(&request)` (a whole response).
pub async fn serve_each<F>(reply: F) -> Hostile
where
    F: Fn(&Request) -> Vec<u8> + Send + Sync + 'static,
{
    let reply = Arc::new(reply);
    Hostile::start(move |mut conn: Conn| {
        let reply = Arc::clone(&reply);
        async move {
            while let Some(req) = conn.try_read_request().await? {
                let bytes = reply(&req);
                conn.write_all(&bytes).await?;
            }
            Ok(())
        }
    })
    .await
}
