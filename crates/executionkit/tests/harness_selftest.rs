//! Tests of the test servers in `tests/common` (TLS relay, HTTP/2 server, HTTP/2 relay and the
//! wires' fronts, hostile server, counting relay), driven by plain clients (hyper's
//! connection-level client, raw bytes), so a failure of a transport test is the transport's and
//! not the harness's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::counting::CountingRelay;
use common::h2::{H2Options, H2Reply, H2Server};
use common::h2relay::H2Relay;
use common::hostile::{self, Conn, Hostile};
use common::tls::{self, H2, HTTP11, TestPki, TlsRelay};
use common::wire::{Wire, WireMock};
use executionkit::{ChatRequest, LlmProvider, Message};
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// A wiremock server answering each POST with `echo:<body>`.
async fn echo_server() -> MockServer {
    struct Echo;
    impl Respond for Echo {
        fn respond(&self, r: &Request) -> ResponseTemplate {
            ResponseTemplate::new(200)
                .set_body_string(format!("echo:{}", String::from_utf8_lossy(&r.body)))
        }
    }
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Echo)
        .mount(&s)
        .await;
    s
}

fn post(authority: &str, body: &'static str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post("/v1/chat/completions")
        .header("host", authority)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn text(r: hyper::Response<hyper::body::Incoming>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

// ---- tls ----

#[tokio::test]
async fn tls_relay_carries_http11_to_upstream_and_back() {
    let upstream = echo_server().await;
    let relay = TlsRelay::http11(*upstream.address()).await;
    let stream = tls::connect(relay.addr, &relay.ca_pem, &[HTTP11])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(HTTP11));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let authority = relay.addr.to_string();
    for body in ["one", "two"] {
        let r = send.send_request(post(&authority, body)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(text(r).await, format!("echo:{body}"));
    }
    // Both requests went over one TLS connection, and on to the server.
    assert_eq!(relay.connections(), 1);
    assert_eq!(upstream.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn tls_relay_is_trusted_only_with_its_ca() {
    let upstream = echo_server().await;
    let relay = TlsRelay::http11(*upstream.address()).await;
    let other = TestPki::new();
    let e = tls::connect(relay.addr, &other.ca_pem, &[HTTP11])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // The CA file for SSL_CERT_FILE holds the relay's CA.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = tls::write_ca_file(&relay.ca_pem, &dir);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    tls::connect(relay.addr, &pem, &[HTTP11]).await.unwrap();
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn tls_relay_passes_bytes_and_resets_unchanged() {
    // Whatever the server writes (here a malformed status line, then a reset) reaches the
    // client byte for byte, then as an error, not as a clean close.
    let server = Hostile::start(|mut conn: Conn| async move {
        conn.read_request().await?;
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello")
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.reset()
    })
    .await;
    let relay = TlsRelay::http11(server.addr).await;
    let mut stream = tls::connect(relay.addr, &relay.ca_pem, &[HTTP11])
        .await
        .unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        match stream.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    assert_eq!(got, b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello");
    assert!(end.is_err(), "a reset must not look like a clean close");
    assert_eq!(server.requests(), 1);
}

// ---- h2 ----

async fn h2_client(
    server: &H2Server,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tls::connect(server.addr, &server.ca_pem, &[H2, HTTP11])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(H2));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

fn h2_post(server: &H2Server, body: String) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("{}/v1/chat/completions", server.url()))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn h2_server_multiplexes_within_max_concurrent_streams() {
    let server = H2Server::start(
        H2Options {
            max_concurrent_streams: Some(5),
        },
        |req| {
            H2Reply::json(format!("echo:{}", String::from_utf8_lossy(&req.body)))
                .delayed(Duration::from_millis(20))
        },
    )
    .await;
    let (mut send, _conn) = h2_client(&server).await;
    // One request first: until the server's SETTINGS arrive, a client does not know the
    // stream limit, and streams above it are refused.
    let r = send
        .send_request(h2_post(&server, "r".into()))
        .await
        .unwrap();
    assert_eq!(text(r).await, "echo:r");
    let calls = (0..20).map(|i| {
        let mut send = send.clone();
        let req = h2_post(&server, format!("r{i}"));
        async move {
            let r = send.send_request(req).await.unwrap();
            assert_eq!(r.version(), hyper::Version::HTTP_2);
            assert_eq!(r.status(), 200);
            assert_eq!(text(r).await, format!("echo:r{i}"));
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(server.requests(), 21);
    assert_eq!(server.connections(), 1);
    let most = server.max_in_flight();
    assert!((1..=5).contains(&most), "{most} streams at once");
}

#[tokio::test]
async fn h2_server_streams_sse_chunks_in_order() {
    let events: Vec<(Duration, String)> = (0..5)
        .map(|i| (Duration::from_millis(5), format!("data: {i}\n\n")))
        .chain([(Duration::ZERO, "data: [DONE]\n\n".to_owned())])
        .collect();
    let expected: String = events.iter().map(|(_, e)| e.as_str()).collect();
    let server = H2Server::start(H2Options::default(), move |_| H2Reply::sse(events.clone())).await;
    let (mut send, _conn) = h2_client(&server).await;
    let r = send
        .send_request(h2_post(&server, "{}".into()))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(text(r).await, expected);
}

#[tokio::test]
async fn h2_server_refuses_a_stream_with_refused_stream() {
    let server = H2Server::start(H2Options::default(), |_| H2Reply::refused()).await;
    let (mut send, _conn) = h2_client(&server).await;
    let e = send
        .send_request(h2_post(&server, "{}".into()))
        .await
        .unwrap_err();
    let reason = std::iter::successors(std::error::Error::source(&e), |s| s.source())
        .find_map(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::REFUSED_STREAM), "{e:?}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn h2_server_goaway_after_a_request_ends_the_connection() {
    let server = H2Server::start(H2Options::default(), |req| {
        let reply = H2Reply::json("ok");
        if req.body.as_ref() == b"last" {
            reply.then_goaway()
        } else {
            reply
        }
    })
    .await;
    let (mut send, conn) = h2_client(&server).await;
    let r = send
        .send_request(h2_post(&server, "first".into()))
        .await
        .unwrap();
    assert_eq!(text(r).await, "ok");
    // The request that triggers GOAWAY is still answered; then the connection ends.
    let r = send
        .send_request(h2_post(&server, "last".into()))
        .await
        .unwrap();
    assert_eq!(text(r).await, "ok");
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the client connection ends after GOAWAY")
        .unwrap()
        .unwrap();
    assert!(
        send.send_request(h2_post(&server, "after".into()))
            .await
            .is_err()
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn h2_server_goaway_all_lets_open_streams_finish() {
    let server = H2Server::start(H2Options::default(), |_| {
        H2Reply::json("slow").delayed(Duration::from_millis(300))
    })
    .await;
    let (mut send, conn) = h2_client(&server).await;
    let pending = send.send_request(h2_post(&server, "{}".into()));
    let pending = tokio::spawn(pending);
    while server.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.goaway_all();
    let r = pending.await.unwrap().unwrap();
    assert_eq!(text(r).await, "slow");
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the client connection ends after GOAWAY")
        .unwrap()
        .unwrap();
}

// ---- h2 relay and wires ----

/// An HTTP/2 client connection to an [`H2Relay`] (asserting ALPN `h2`).
async fn h2_relay_client(relay: &H2Relay) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tls::connect(relay.addr, &relay.ca_pem, &[H2, HTTP11])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(H2));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn relay_post(relay: &H2Relay, path: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("{}{path}", relay.url()))
        .header("x-test", "yes")
        .body(Full::new(Bytes::from_static(b"{\"q\":1}")))
        .unwrap()
}

/// The `RST_STREAM` reason in an error's chain, if any.
fn reset_reason(e: &(dyn std::error::Error + 'static)) -> Option<::h2::Reason> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<::h2::Error>() {
            return h2.reason();
        }
        source = s.source();
    }
    None
}

const CHUNKED_SSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Transfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Up: 1\r\n\r\n";

#[tokio::test]
async fn h2_relay_forwards_each_stream_and_streams_frames_as_they_come() {
    // The upstream sends its second chunk only once the client holds the first, so the first
    // can only have arrived if the relay streams (no timing involved).
    let go = Arc::new(tokio::sync::Notify::new());
    let next = Arc::clone(&go);
    let server = Hostile::start(move |mut conn: Conn| {
        let next = Arc::clone(&next);
        async move {
            let req = conn.read_request().await?;
            conn.note(format!(
                "{} {} host={} x-test={} body={}",
                req.method,
                req.path,
                req.header("host").unwrap_or(""),
                req.header("x-test").unwrap_or(""),
                String::from_utf8_lossy(&req.body)
            ));
            conn.write_all(CHUNKED_SSE).await?;
            conn.write_all(b"5\r\nfirst\r\n").await?;
            next.notified().await;
            conn.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await?;
            // Keep the connection: the terminating chunk alone must end the stream.
            conn.drain_until_closed(Duration::from_secs(30)).await;
            Ok(())
        }
    })
    .await;
    let relay = H2Relay::start(server.addr).await;
    let mut send = h2_relay_client(&relay).await;
    let r = send
        .send_request(relay_post(&relay, "/v1/chat/completions?x=1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), hyper::Version::HTTP_2);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-up"], "1");
    for hop in ["connection", "keep-alive", "transfer-encoding"] {
        assert!(r.headers().get(hop).is_none(), "{hop} was relayed");
    }
    let mut body = r.into_body();
    // A relay that buffered the body would never deliver this (the upstream waits for us).
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the relay held back the first chunk")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "first");
    go.notify_one();
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(rest, b"second");
    assert_eq!(
        server.notes(),
        [format!(
            "POST /v1/chat/completions?x=1 host={} x-test=yes body={{\"q\":1}}",
            server.addr
        )]
    );
    assert_eq!((relay.connections(), relay.requests()), (1, 1));
}

#[tokio::test]
async fn h2_relay_turns_an_upstream_reset_or_early_close_into_a_reset_stream() {
    let go = Arc::new(tokio::sync::Notify::new());
    let next = Arc::clone(&go);
    let server = Hostile::start(move |mut conn: Conn| {
        let next = Arc::clone(&next);
        async move {
            let req = conn.read_request().await?;
            match req.path.as_str() {
                "/reset-mid-body" => {
                    conn.write_all(CHUNKED_SSE).await?;
                    conn.write_all(b"4\r\npart\r\n").await?;
                    next.notified().await;
                    conn.reset()
                }
                "/short-body" => {
                    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                        .await?;
                    conn.close().await
                }
                "/close-before-head" => conn.close().await,
                _ => {
                    conn.write_all(&hostile::ok_json("{}")).await?;
                    conn.close().await
                }
            }
        }
    })
    .await;
    let relay = H2Relay::start(server.addr).await;
    let mut send = h2_relay_client(&relay).await;

    // A reset mid-body: the bytes before it, then RST_STREAM.
    let r = send
        .send_request(relay_post(&relay, "/reset-mid-body"))
        .await
        .unwrap();
    let mut body = r.into_body();
    let part = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(part, "part");
    go.notify_one();
    let e = loop {
        match body.frame().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("a reset upstream must not end the stream cleanly"),
        }
    };
    assert_eq!(
        reset_reason(&e),
        Some(::h2::Reason::INTERNAL_ERROR),
        "{e:?}"
    );

    // A body shorter than its Content-Length: RST_STREAM, not END_STREAM.
    let r = send
        .send_request(relay_post(&relay, "/short-body"))
        .await
        .unwrap();
    let e = r.into_body().collect().await.unwrap_err();
    assert_eq!(
        reset_reason(&e),
        Some(::h2::Reason::INTERNAL_ERROR),
        "{e:?}"
    );

    // No response head at all: the stream is reset instead of answered.
    let e = send
        .send_request(relay_post(&relay, "/close-before-head"))
        .await
        .unwrap_err();
    assert_eq!(
        reset_reason(&e),
        Some(::h2::Reason::INTERNAL_ERROR),
        "{e:?}"
    );

    // Each was one stream's reset: the connection still carries the next request.
    let r = send.send_request(relay_post(&relay, "/ok")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(relay.connections(), 1);
}

#[tokio::test]
async fn each_wire_front_speaks_its_protocol() {
    for wire in Wire::ALL {
        let server = WireMock::start(wire).await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_string(hostile::completion("hi"))
                    .insert_header("content-type", "application/json"),
            )
            .mount(&server)
            .await;
        assert!(server.uri().starts_with(&format!("{}://", wire.scheme())));
        let p = server
            .builder(format!("{}/v1", server.uri()), "m")
            .build()
            .unwrap();
        let r = p
            .complete(&ChatRequest::new(vec![Message::user("x")]))
            .await
            .unwrap();
        assert_eq!(r.content(), "hi", "{wire}");
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
        let front = server.front();
        match wire {
            Wire::Http1 => assert_eq!(front.connections(), None),
            Wire::Https1 | Wire::Https2 => {
                assert_eq!(front.connections(), Some(1), "{wire}");
                // Offered both, the front picks its own protocol.
                let addr = tls::addr_of(&server.uri());
                let s = tls::connect(addr, front.ca_pem().unwrap(), &[H2, HTTP11])
                    .await
                    .unwrap();
                let want = if wire == Wire::Https2 { H2 } else { HTTP11 };
                assert_eq!(s.get_ref().1.alpn_protocol(), Some(want), "{wire}");
            }
        }
    }
}

// ---- hostile ----

#[tokio::test]
async fn hostile_reads_content_length_and_chunked_requests_on_one_connection() {
    let server = hostile::serve_each(|req| {
        hostile::ok_json(&hostile::completion(&format!(
            "{} {} {}",
            req.method,
            req.path,
            String::from_utf8_lossy(&req.body)
        )))
    })
    .await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(
        TcpStream::connect(server.addr).await.unwrap(),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let authority = server.addr.to_string();
    let r = send.send_request(post(&authority, "one")).await.unwrap();
    assert!(text(r).await.contains("POST /v1/chat/completions one"));
    // A body of unknown length goes chunked.
    let (mut send2, conn2) = hyper::client::conn::http1::handshake(TokioIo::new(
        TcpStream::connect(server.addr).await.unwrap(),
    ))
    .await
    .unwrap();
    tokio::spawn(conn2);
    let chunks = futures::stream::iter(["tw", "o"])
        .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c.as_bytes()))));
    let req = hyper::Request::post("/x")
        .header("host", &authority)
        .body(StreamBody::new(chunks))
        .unwrap();
    let r = send2.send_request(req).await.unwrap();
    assert!(text(r).await.contains("POST /x two"));
    let r = send.send_request(post(&authority, "three")).await.unwrap();
    assert!(text(r).await.contains("three"));
    assert_eq!(server.connections(), 2);
    assert_eq!(server.requests(), 3);
    assert_eq!(server.heads(), 3);
}

#[tokio::test]
async fn hostile_counts_a_request_cut_in_its_body_as_a_head_only() {
    let server = Hostile::start(|mut conn: Conn| async move {
        let r = conn.read_request().await;
        conn.note(format!("{}", r.is_ok()));
        Ok(())
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    while server.notes().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.notes(), ["false"]);
    assert_eq!((server.heads(), server.requests()), (1, 0));
}

#[tokio::test]
async fn hostile_writes_slowly_closes_and_resets() {
    let server = Hostile::start(|mut conn: Conn| async move {
        let req = conn.read_request().await?;
        let reply = hostile::response("200 OK", &[("Connection", "close")], "abcdef");
        conn.write_slowly(&reply, 3, Duration::from_millis(1))
            .await?;
        if req.path == "/reset" {
            // Let the client read what was sent before the reset discards it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.reset()
        } else {
            conn.close().await
        }
    })
    .await;
    for (path, reset) in [("/close", false), ("/reset", true)] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let end = loop {
            match s.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.kind()),
            }
        };
        assert!(got.ends_with(b"\r\n\r\nabcdef"), "{path}: {got:?}");
        let want = reset.then_some(std::io::ErrorKind::ConnectionReset);
        assert_eq!(end, want, "{path}");
    }
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn hostile_write_repeated_stops_when_the_client_goes() {
    let server = Hostile::start(|mut conn: Conn| async move {
        conn.read_request().await?;
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            .await?;
        let n = conn.write_repeated(b"a", 1_000_000_000).await;
        conn.note(n.to_string());
        Ok(())
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while total < 1_000_000 {
        total += s.read(&mut buf).await.unwrap();
    }
    drop(s);
    while server.notes().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let written: usize = server.notes()[0].parse().unwrap();
    assert!(written < 1_000_000_000, "{written}");
}

// ---- counting ----

#[tokio::test]
async fn counting_relay_counts_each_request_once() {
    let upstream = echo_server().await;
    let relay = CountingRelay::start(*upstream.address()).await;
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let authority = relay.addr.to_string();
    for body in ["a", "bb", "ccc"] {
        let r = send.send_request(post(&authority, body)).await.unwrap();
        assert_eq!(text(r).await, format!("echo:{body}"));
    }
    // A chunked body, on a second connection.
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunks = futures::stream::iter(["d", "dd"])
        .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c.as_bytes()))));
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", &authority)
        .body(StreamBody::new(chunks))
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(text(r).await, "echo:ddd");
    assert_eq!(relay.connections(), 2);
    assert_eq!((relay.heads(), relay.requests()), (4, 4));
    assert_eq!(upstream.received_requests().await.unwrap().len(), 4);
}

#[tokio::test]
async fn counting_relay_counts_a_cut_request_as_a_head_only_and_passes_resets() {
    let server = Hostile::start(|mut conn: Conn| async move {
        // Wait for a request that never completes, then reset.
        let _ = conn.next_request_within(Duration::from_millis(200)).await;
        conn.reset()
    })
    .await;
    let relay = CountingRelay::start(server.addr).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"POST /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let e = s.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!((relay.heads(), relay.requests()), (1, 0));
    assert_eq!((server.heads(), server.requests()), (1, 0));
}
