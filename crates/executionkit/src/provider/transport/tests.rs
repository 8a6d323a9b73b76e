//! The transport against raw TCP servers that misbehave on purpose (loopback only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A server whose every connection runs `serve`; counts connections and whole requests.
struct Server {
    url: url::Url,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

type Handler =
    Arc<dyn Fn(Conn) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    requests: Arc<AtomicUsize>,
}

impl Conn {
    /// Reads one request (head by httparse, then its Content-Length body); `None` at EOF.
    async fn request(&mut self) -> Option<String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = req.parse(&self.buf) {
                let len: usize = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0);
                let head = String::from_utf8_lossy(&self.buf[..head_len]).to_string();
                while self.buf.len() < head_len + len {
                    let mut chunk = [0u8; 4096];
                    let n = self.stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&self.buf[head_len..head_len + len]).to_string();
                self.buf.drain(..head_len + len);
                self.requests.fetch_add(1, Ordering::SeqCst);
                return Some(format!("{head}{body}"));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Server {
    async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // The server runs on a runtime of its own, so a client that blocks its thread does
        // not stop it.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(move |c| Box::pin(serve(c)));
        let (a, r) = (Arc::clone(&accepted), Arc::clone(&requests));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    a.fetch_add(1, Ordering::SeqCst);
                    let conn = Conn {
                        stream,
                        buf: Vec::new(),
                        requests: Arc::clone(&r),
                    };
                    tokio::spawn(handler(conn));
                }
            });
        });
        Self {
            url: format!("http://{addr}/v1/chat/completions")
                .parse()
                .unwrap(),
            accepted,
            requests,
        }
    }

    fn transport(&self, max: usize) -> Arc<Transport> {
        let settings = Settings {
            connect_timeout: Some(Duration::from_secs(5)),
            max_response_bytes: max,
            roots: Vec::new(),
            use_env_proxy: false,
        };
        Arc::new(Transport::new(&self.url, HeaderMap::new(), settings).unwrap())
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn call(t: &Arc<Transport>, body: &str) -> Result<(u16, String), TransportError> {
    let reply = t.send(Bytes::from(body.to_owned())).await?;
    let status = reply.status.as_u16();
    let bytes = reply.bytes().await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Echoes each request's body back, keeping the connection open.
async fn echo(mut c: Conn) {
    while let Some(req) = c.request().await {
        let body = req.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        c.send(&ok(&body)).await;
    }
}

#[tokio::test]
async fn one_connection_serves_sequential_calls_and_returns_to_the_pool() {
    let s = Server::start(echo).await;
    let t = s.transport(1 << 20);
    for i in 0..5 {
        let (status, body) = call(&t, &format!("q{i}")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, format!("q{i}").as_str()));
        assert_eq!(
            t.idle_connections(),
            1,
            "back in the pool before the call returns"
        );
    }
    assert_eq!(s.accepted(), 1);
}

#[tokio::test]
async fn concurrent_calls_open_no_more_connections_than_calls_in_flight() {
    let s = Server::start(echo).await;
    let t = s.transport(1 << 20);
    for _ in 0..3 {
        let bodies: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        let calls: Vec<_> = bodies.iter().map(|b| call(&t, b)).collect();
        for (i, r) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r.unwrap().1, i.to_string());
        }
    }
    assert!(s.accepted() <= 8, "{}", s.accepted());
    assert_eq!(s.requests(), 24);
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_without_sending_twice() {
    // Each connection answers one request, then closes.
    let s = Server::start(|mut c: Conn| async move {
        if c.request().await.is_some() {
            c.send(&ok("one")).await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    assert_eq!(call(&t, "a").await.unwrap().1, "one");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&t, "b").await.unwrap().1, "one");
    assert_eq!((s.accepted(), s.requests()), (2, 2));
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let s = Server::start(|mut c: Conn| async move {
        while c.request().await.is_some() {
            c.send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    for _ in 0..3 {
        assert_eq!(call(&t, "x").await.unwrap().1, "ok");
    }
    assert_eq!(s.accepted(), 3);
}

#[tokio::test]
async fn a_request_written_on_a_reused_connection_that_then_closes_is_not_sent_again() {
    // The first request is answered; the second is read in full, then the connection closes.
    let s = Server::start(|mut c: Conn| async move {
        if c.request().await.is_some() {
            c.send(&ok("first")).await;
        }
        let _ = c.request().await;
    })
    .await;
    let t = s.transport(1 << 20);
    assert_eq!(call(&t, "a").await.unwrap().1, "first");
    let e = call(&t, "b").await.unwrap_err();
    assert!(matches!(e, TransportError::Http(_)), "{e:?}");
    // Two requests reached the server: the transport did not send the second one again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.requests(), 2);
}

#[tokio::test]
async fn an_unsolicited_reply_never_answers_the_next_request() {
    // The first request gets its answer and a second, unasked-for one.
    let s = Server::start(|mut c: Conn| async move {
        while let Some(req) = c.request().await {
            let body = req.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
            let mut both = ok(&body);
            both.extend_from_slice(&ok("stale"));
            c.send(&both).await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    for i in 0..4 {
        let q = format!("q{i}");
        assert_eq!(call(&t, &q).await.unwrap().1, q);
    }
    assert_eq!(s.requests(), 4);
    assert_eq!(
        s.accepted(),
        4,
        "a connection with unread bytes is never reused"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_late_unsolicited_reply_never_answers_the_next_request() {
    // The stray reply arrives after the connection went back to the pool.
    let s = Server::start(|mut c: Conn| async move {
        while let Some(req) = c.request().await {
            let body = req.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
            c.send(&ok(&body)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.send(&ok("stale")).await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    for i in 0..3 {
        let q = format!("q{i}");
        assert_eq!(call(&t, &q).await.unwrap().1, q);
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(s.requests(), 3);
}

#[tokio::test]
async fn an_early_reply_is_returned() {
    // The server reads the head of a large request, answers 413 without reading the body, and
    // closes.
    let s = Server::start(|mut c: Conn| async move {
        loop {
            let mut chunk = [0u8; 4096];
            match c.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            }
            if c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        c.send(b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await;
    let t = s.transport(1 << 20);
    let big = "x".repeat(8 << 20);
    let (status, body) = call(&t, &big).await.unwrap();
    assert_eq!((status, body.as_str()), (413, "too big!"));
}

#[tokio::test]
async fn interim_replies_are_skipped() {
    let s = Server::start(|mut c: Conn| async move {
        while c.request().await.is_some() {
            c.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
                .await;
            c.send(&ok("after")).await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    assert_eq!(call(&t, "x").await.unwrap(), (200, "after".to_owned()));
    assert_eq!(call(&t, "y").await.unwrap(), (200, "after".to_owned()));
    assert_eq!(s.accepted(), 1);
}

#[tokio::test]
async fn switching_protocols_unasked_is_an_error_and_closes_the_connection() {
    let s = Server::start(|mut c: Conn| async move {
        while c.request().await.is_some() {
            c.send(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
            )
            .await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    let e = call(&t, "x").await.unwrap_err();
    assert!(e.is_protocol(), "{e:?}");
    assert_eq!(t.idle_connections(), 0);
}

#[tokio::test]
async fn framing_that_is_not_plain_is_refused_or_not_reused() {
    let s = Server::start(|mut c: Conn| async move {
        while let Some(req) = c.request().await {
            let reply: &[u8] = if req.ends_with("gzip") {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            } else if req.ends_with("plus") {
                b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"
            } else if req.ends_with("both") {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            } else if req.ends_with("deflate") {
                b"HTTP/1.1 200 OK\r\ncontent-encoding: deflate\r\ncontent-length: 2\r\n\r\nok"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            c.send(reply).await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    assert!(call(&t, "gzip").await.unwrap_err().is_protocol());
    assert!(call(&t, "deflate").await.unwrap_err().is_protocol());
    assert!(matches!(
        call(&t, "plus").await,
        Err(TransportError::Http(_))
    ));
    assert_eq!(t.idle_connections(), 0);
    // Both framings: read as chunked, and the connection is not reused.
    assert_eq!(call(&t, "both").await.unwrap().1, "ok");
    assert_eq!(t.idle_connections(), 0);
    assert_eq!(call(&t, "plain").await.unwrap().1, "ok");
    assert_eq!(t.idle_connections(), 1);
}

#[tokio::test]
async fn a_reply_over_the_cap_fails_however_it_is_framed() {
    let s = Server::start(|mut c: Conn| async move {
        while let Some(req) = c.request().await {
            if req.ends_with("length") {
                c.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
                    .await;
                c.send(&vec![b'a'; 1_000_000]).await;
            } else if req.ends_with("tiny-chunks") {
                // 1-byte chunks: 300 KB of framing for 60 KB of body.
                c.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = b"1\r\na\r\n".repeat(60_000);
                c.send(&chunk).await;
                c.send(b"0\r\n\r\n").await;
            } else if req.ends_with("extensions") {
                c.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let ext = format!("1;{}\r\na\r\n", "x=y;".repeat(2_000));
                for _ in 0..50 {
                    c.send(ext.as_bytes()).await;
                }
                c.send(b"0\r\n\r\n").await;
            } else if req.ends_with("trailers") {
                c.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n")
                    .await;
                for i in 0..100_000 {
                    c.send(format!("x-t{i}: {}\r\n", "v".repeat(64)).as_bytes())
                        .await;
                }
                c.send(b"\r\n").await;
            } else {
                c.send(b"HTTP/1.1 200 OK\r\nx-long: ").await;
                for _ in 0..1000 {
                    c.send(&[b'h'; 4096]).await;
                }
            }
        }
    })
    .await;
    let t = s.transport(100_000);
    let e = call(&t, "length").await.unwrap_err();
    assert!(
        matches!(e, TransportError::TooLarge { limit: 100_000, .. }),
        "{e:?}"
    );
    // 60 KB of body is within the cap, but 360 KB read is not.
    let e = call(&t, "tiny-chunks").await.unwrap_err();
    assert!(matches!(e, TransportError::TooLarge { .. }), "{e:?}");
    // hyper bounds chunk extensions and trailers; a head that never ends overflows its buffer.
    assert!(call(&t, "extensions").await.is_err());
    assert!(call(&t, "trailers").await.is_err());
    assert!(call(&t, "head").await.is_err());
    assert_eq!(t.idle_connections(), 0);
}

#[tokio::test]
async fn a_stream_fails_at_its_deadline_however_steadily_it_sends() {
    let s = Server::start(|mut c: Conn| async move {
        if c.request().await.is_some() {
            c.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            for _ in 0..200 {
                c.send(b"4\r\n: k\n\r\n").await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
    .await;
    let t = s.transport(1 << 20);
    let reply = t.send(Bytes::from_static(b"{}")).await.unwrap();
    let mut stream = reply.into_stream(Duration::from_millis(200));
    let mut chunks = 0;
    let err = loop {
        match futures::StreamExt::next(&mut stream).await {
            Some(Ok(_)) => chunks += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended"),
        }
    };
    assert!(err.is_timeout(), "{err:?}");
    assert!(chunks > 0);
    assert!(futures::StreamExt::next(&mut stream).await.is_none());
}

/// A reply that arrives in pieces with pauses between them: every read comes back short (and
/// clears the socket's readiness), yet every later piece is read.
async fn replies_in_pieces_arrive_whole() {
    let s = Server::start(|mut c: Conn| async move {
        while c.request().await.is_some() {
            let whole = ok(&"x".repeat(3000));
            for piece in whole.chunks(700) {
                c.send(piece).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    let t = s.transport(1 << 20);
    for _ in 0..3 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(20), call(&t, "q"))
            .await
            .expect("a piece was never read")
            .unwrap();
        assert_eq!((status, body.len()), (200, 3000));
    }
    assert_eq!(s.accepted(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn replies_in_pieces_arrive_whole_on_one_thread() {
    replies_in_pieces_arrive_whole().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_in_pieces_arrive_whole_on_two_threads() {
    replies_in_pieces_arrive_whole().await;
}

/// A body larger than one read (the per-thread read buffer is 64 KiB) arrives byte for byte.
#[tokio::test]
async fn a_body_larger_than_one_read_arrives_intact() {
    fn body() -> String {
        (0..300_000)
            .map(|i: u32| char::from(b'a' + u8::try_from(i % 26).unwrap()))
            .collect()
    }
    let s = Server::start(|mut c: Conn| async move {
        while c.request().await.is_some() {
            c.send(&ok(&body())).await;
        }
    })
    .await;
    let t = s.transport(1 << 20);
    for _ in 0..2 {
        let (status, got) = call(&t, "q").await.unwrap();
        assert_eq!(status, 200);
        assert!(got == body(), "the body was altered ({} bytes)", got.len());
    }
    assert_eq!(s.accepted(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url: url::Url = format!("http://{addr}/v1/chat/completions")
        .parse()
        .unwrap();
    let settings = Settings {
        connect_timeout: None,
        max_response_bytes: 1024,
        roots: Vec::new(),
        use_env_proxy: false,
    };
    let t = Arc::new(Transport::new(&url, HeaderMap::new(), settings).unwrap());
    let e = call(&t, "x").await.unwrap_err();
    assert!(matches!(e, TransportError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

/// glibc's malloc serves up to 1,032 bytes from its per-thread cache; the boxed future of an
/// HTTP/1.1 call above that took its slow path on every call (and was copied whole into its
/// box). Connecting and HTTP/2 are boxed apart for that reason.
#[tokio::test]
async fn an_http1_call_future_fits_the_allocators_fast_sizes() {
    let s = Server::start(echo).await;
    let t = s.transport(1 << 20);
    let f = t.send(Bytes::from_static(b"x"));
    assert!(size_of_val(&*f) <= 1024, "{} bytes", size_of_val(&*f));
    drop(f);
    // The future still does its work.
    assert_eq!(call(&t, "q").await.unwrap(), (200, "q".to_owned()));
}
