//! The attacks of the hostile-server suites, one function each, on [`Hostile`]: shared by the
//! library's `tests/hostile_server.rs` and `ek`'s `tests/hostile.rs` (which includes this file
//! and `hostile.rs` by path). Each names the class of issue #9 it plays and what a client must
//! do about it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::time::Duration;

use super::hostile::{self, Conn, Hostile, completion, ok_json, response};

/// 1 MiB.
pub const MIB: usize = 1024 * 1024;

/// The start of a [`Flood::ContentLength`] body.
const CL_PREFIX: &str = r#"{"choices":[{"message":{"role":"assistant","content":""#;

/// The memory attacks: every one ends in an error, with bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// `Content-Length: N` and N bytes of body.
    ContentLength,
    /// A chunked body of 1-byte chunks (6 raw bytes per decoded byte).
    OneByteChunks,
    /// One chunk-size line with an endless extension (`1;x=aaaa…`).
    ChunkExtension,
    /// A chunked body, then endless trailer lines.
    Trailers,
    /// An endless header line.
    HeaderLine,
    /// `text/event-stream` with one endless `data:` line (for streams).
    SseLine,
}

impl Flood {
    /// Every attack on a non-streaming call.
    pub const COMPLETE: [Self; 5] = [
        Self::ContentLength,
        Self::OneByteChunks,
        Self::ChunkExtension,
        Self::Trailers,
        Self::HeaderLine,
    ];
}

/// A server answering every request with a `kind` flood: a head, then `total` raw bytes of the
/// repeated part (or until the client goes away); it notes the bytes it wrote per request
/// ([`Hostile::notes`]), and holds the connection open until the client closes it.
pub async fn flood(kind: Flood, total: usize) -> Hostile {
    Hostile::start(move |mut conn: Conn| async move {
        conn.read_request().await?;
        let (head, piece): (String, &[u8]) = match kind {
            Flood::ContentLength => (
                // The body is exactly `total` bytes: a JSON prefix, then `a`s.
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{CL_PREFIX}",
                    total + CL_PREFIX.len()
                ),
                b"a",
            ),
            Flood::OneByteChunks => (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_owned(),
                b"1\r\na\r\n",
            ),
            Flood::ChunkExtension => (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1;x="
                    .to_owned(),
                b"a",
            ),
            Flood::Trailers => (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
                    .to_owned(),
                b"X-Trailer: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            ),
            Flood::HeaderLine => (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Long: ".to_owned(),
                b"a",
            ),
            Flood::SseLine => (
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: "
                    .to_owned(),
                b"a",
            ),
        };
        conn.write_all(head.as_bytes()).await?;
        let written = head.len() + conn.write_repeated(piece, total).await;
        conn.note(written.to_string());
        // Hold the connection until the client closes it: the end of the flood must not be
        // what stops the client.
        conn.drain_until_closed(Duration::from_secs(60)).await;
        Ok(())
    })
    .await
}

/// The bytes a [`flood`] server wrote per request.
pub fn flooded(server: &Hostile) -> Vec<usize> {
    server
        .notes()
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Double spend: on each connection, the first request is answered (keep-alive); the second is
/// read in full and the connection then closed without an answer. A client must not send that
/// request again by itself: only its retry policy may, and count it.
pub async fn close_after_second_request() -> Hostile {
    Hostile::start(|mut conn: Conn| async move {
        let req = conn.read_request().await?;
        conn.write_all(&ok_json(&completion(&format!("echo:{}", req.prompt()))))
            .await?;
        conn.read_request().await?;
        conn.close().await
    })
    .await
}

/// Desync: each request is answered with `echo:<prompt>`, and then by an unsolicited second
/// reply (`STALE:<prompt>` and `pad` more bytes of content), in the same write (`delay` `None`)
/// or after `delay`. Every answer must be its own request's. With a large `pad`, part of the
/// stale reply is still in the socket when the answer has been read.
pub async fn extra_reply(delay: Option<Duration>, pad: usize) -> Hostile {
    Hostile::start(move |mut conn: Conn| async move {
        while let Some(req) = conn.try_read_request().await? {
            let mut out = ok_json(&completion(&format!("echo:{}", req.prompt())));
            let extra = ok_json(&completion(&format!(
                "STALE:{}{}",
                req.prompt(),
                "x".repeat(pad)
            )));
            match delay {
                None => {
                    out.extend_from_slice(&extra);
                    conn.write_all(&out).await?;
                }
                Some(d) => {
                    conn.write_all(&out).await?;
                    tokio::time::sleep(d).await;
                    conn.write_all(&extra).await?;
                }
            }
        }
        Ok(())
    })
    .await
}

/// Lenient framing: replies a strict HTTP/1.1 client refuses or handles specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: +N` (RFC 9110: 1*DIGIT; a sign is invalid): an error.
    PlusLength,
    /// `Transfer-Encoding: chunked` and `Content-Length` together (a smuggling shape): an error,
    /// or at least the connection is never used again.
    TeAndCl,
    /// `Transfer-Encoding: gzip, chunked` with a body that is not gzip: never taken undecoded.
    GzipChunked,
    /// `101 Switching Protocols` to a request that asked for no upgrade: an error, connection
    /// closed.
    SwitchingProtocols,
    /// `100 Continue`, then `103 Early Hints`, then the `200`: the interim replies are skipped
    /// and the call succeeds.
    Interim,
}

/// A server answering the first request of its first connection with `kind` (the reply's
/// content `echo:<prompt>`), and every other request plainly. When the client sends another
/// request on that first connection, it notes `reused`.
pub async fn framing(kind: Framing) -> Hostile {
    Hostile::start(move |mut conn: Conn| async move {
        if conn.index > 0 {
            while let Some(req) = conn.try_read_request().await? {
                conn.write_all(&ok_json(&completion(&format!("echo:{}", req.prompt()))))
                    .await?;
            }
            return Ok(());
        }
        let req = conn.read_request().await?;
        let body = completion(&format!("echo:{}", req.prompt()));
        let reply: Vec<u8> = match kind {
            Framing::PlusLength => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: +{}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            Framing::TeAndCl => {
                // Chunked framing says: the JSON. Content-Length says: fewer bytes, and the rest
                // would be the start of the next response.
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
                .into_bytes()
            }
            Framing::GzipChunked => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            Framing::SwitchingProtocols => {
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .to_vec()
            }
            Framing::Interim => {
                let mut out = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n".to_vec();
                out.extend_from_slice(&ok_json(&body));
                out
            }
        };
        conn.write_all(&reply).await?;
        // Serve later requests on this connection plainly, noting that it was reused.
        while let Some(req) = conn
            .next_request_within(Duration::from_secs(30))
            .await
        {
            conn.note("reused");
            conn.write_all(&ok_json(&completion(&format!("echo:{}", req.prompt()))))
                .await?;
        }
        Ok(())
    })
    .await
}

/// How a [`key_echo`] server puts the key it was sent into its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// In a `400` error body.
    Status400,
    /// In a `500` error body (retryable).
    Status500,
    /// Upper-cased, in a `400` error body.
    Upper400,
    /// Percent-encoded, in a `400` error body.
    Percent400,
    /// As the reply's content (`200`).
    Content,
    /// As a malformed `200` body (not JSON).
    Malformed200,
}

/// Percent-encodes every byte of `s` but ASCII letters and digits.
pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Secrets: a keep-alive server that echoes the bearer key back as `how` says.
pub async fn key_echo(how: Echo) -> Hostile {
    hostile::serve_each(move |req| {
        let key = req.bearer();
        let error = |k: &str| {
            serde_json::json!({"error": {"message": format!("invalid key {k}: check it"), "type": "invalid_request_error"}})
                .to_string()
        };
        let json = [("Content-Type", "application/json")];
        match how {
            Echo::Status400 => response("400 Bad Request", &json, &error(&key)),
            Echo::Status500 => response("500 Internal Server Error", &json, &error(&key)),
            Echo::Upper400 => response("400 Bad Request", &json, &error(&key.to_uppercase())),
            Echo::Percent400 => response("400 Bad Request", &json, &error(&percent(&key))),
            Echo::Content => ok_json(&completion(&format!("your key is {key}"))),
            Echo::Malformed200 => ok_json(&format!("<html>key {key}</html>")),
        }
    })
    .await
}
