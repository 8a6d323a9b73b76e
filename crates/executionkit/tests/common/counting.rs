//! A counting TCP relay on `127.0.0.1:0` in front of a shared HTTP/1.1 server (llmock,
//! llama-server): bytes pass unchanged both ways, and the client→server direction is parsed
//! (httparse) to count the requests of this test alone: heads seen and requests whose body
//! passed in full. A reset on one side resets the other.
//!
//! ```ignore
//! let relay = CountingRelay::start(addr_of(&llmock_url)).await;
//! let p = OpenAiProvider::new(format!("{}/v1", relay.url()), "m")?;
//! // … calls …
//! assert!(relay.requests() <= reported.llm_calls);
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::tls::AbortOnDrop;

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    heads: AtomicUsize,
    requests: AtomicUsize,
}

/// The relay; stops when dropped.
pub struct CountingRelay {
    /// Where clients connect.
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    _task: AbortOnDrop,
}

impl CountingRelay {
    /// A relay to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let counts = Arc::clone(&shared);
                conns.spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        client.set_zero_linger().ok();
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    relay(client, server, counts).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            counts,
            _task: AbortOnDrop(task),
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing `/`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Client connections accepted.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    /// Request heads that passed to the server.
    pub fn heads(&self) -> usize {
        self.counts.heads.load(Ordering::SeqCst)
    }

    /// Requests whose head and whole body passed to the server.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }
}

async fn relay(mut client: TcpStream, mut server: TcpStream, counts: Arc<Counts>) {
    let result = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        // Both directions until both end; the first error ends both.
        tokio::try_join!(
            pump(&mut cr, &mut sw, Some(&counts)),
            pump(&mut sr, &mut cw, None)
        )
    };
    if let Err(e) = result {
        if e.kind() == io::ErrorKind::ConnectionReset {
            // Pass a reset on as a reset.
            client.set_zero_linger().ok();
            server.set_zero_linger().ok();
        }
    }
}

/// Copies `from` to `to` until EOF (then shuts `to` down) or an error; counts requests when
/// given `counts`.
async fn pump<R, W>(from: &mut R, to: &mut W, counts: Option<&Counts>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut parser = RequestCounter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        if let Some(c) = counts {
            parser.feed(&buf[..n], c);
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Where the client→server parser is.
#[derive(Default)]
enum State {
    /// Reading a head (bytes kept until it is complete).
    #[default]
    Head,
    /// Skipping `n` more body bytes.
    Body(u64),
    /// In a chunked body: reading a chunk-size line.
    ChunkSize,
    /// In a chunked body: skipping `n` data bytes and their CRLF.
    ChunkData(u64),
    /// After the last chunk: reading trailer lines up to the empty one.
    Trailers,
    /// Unparseable: stop counting.
    Lost,
}

#[derive(Default)]
struct RequestCounter {
    state: State,
    pending: Vec<u8>,
}

impl RequestCounter {
    fn feed(&mut self, bytes: &[u8], counts: &Counts) {
        self.pending.extend_from_slice(bytes);
        loop {
            match self.state {
                State::Lost => {
                    self.pending.clear();
                    return;
                }
                State::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; 128];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(&self.pending) {
                        Ok(httparse::Status::Complete(len)) => {
                            counts.heads.fetch_add(1, Ordering::SeqCst);
                            let chunked = req.headers.iter().any(|h| {
                                h.name.eq_ignore_ascii_case("transfer-encoding")
                                    && String::from_utf8_lossy(h.value).contains("chunked")
                            });
                            let length = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .and_then(|h| std::str::from_utf8(h.value).ok())
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .unwrap_or(0);
                            self.pending.drain(..len);
                            self.state = if chunked {
                                State::ChunkSize
                            } else {
                                State::Body(length)
                            };
                        }
                        Ok(httparse::Status::Partial) => return,
                        Err(_) => self.state = State::Lost,
                    }
                }
                State::Body(n) => {
                    let take = n.min(self.pending.len() as u64);
                    self.pending.drain(..take as usize);
                    if take == n {
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        self.state = State::Head;
                    } else {
                        self.state = State::Body(n - take);
                        return;
                    }
                }
                State::ChunkSize => match httparse::parse_chunk_size(&self.pending) {
                    Ok(httparse::Status::Complete((start, 0))) => {
                        self.pending.drain(..start);
                        self.state = State::Trailers;
                    }
                    Ok(httparse::Status::Complete((start, size))) => {
                        self.pending.drain(..start);
                        self.state = State::ChunkData(size + 2);
                    }
                    Ok(httparse::Status::Partial) => return,
                    Err(_) => self.state = State::Lost,
                },
                State::ChunkData(n) => {
                    let take = n.min(self.pending.len() as u64);
                    self.pending.drain(..take as usize);
                    if take == n {
                        self.state = State::ChunkSize;
                    } else {
                        self.state = State::ChunkData(n - take);
                        return;
                    }
                }
                State::Trailers => {
                    let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    self.pending.drain(..end + 2);
                    if end == 0 {
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        self.state = State::Head;
                    }
                }
            }
        }
    }
}
