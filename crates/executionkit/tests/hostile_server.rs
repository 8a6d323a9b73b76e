//! The hostile-server suite for the library (issue #9): an [`OpenAiProvider`] over plain http against
//! servers that misbehave at the byte level (`tests/common/attacks.rs`, on
//! `tests/common/hostile.rs`), one test per class of "Why":
//!
//! 1. bounded memory: floods end in a typed error, the process's peak RSS grows by less than
//!    [`MAX_GROWTH`], and an endless flood is cut by the client;
//! 2. double spend: a request written in full on a reused connection that then closes is not
//!    sent again by the transport (requests received ≤ calls made);
//! 3. desync: with an unsolicited extra reply after each answer, every answer is its request's;
//! 4. lenient framing: `+N` lengths, TE with CL, `gzip, chunked`, a 101 are refused (and their
//!    connection never reused); interim 100 / 103 replies are skipped;
//! 5. secrets: a key or URL password echoed by the server is in no error text, `Debug` or
//!    metadata.
//!
//! Each test says what it expects, how the hand-written transport (`provider/http1.rs` and
//! reqwest) failed it, and whether the one hyper transport passes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::attacks::{self, Echo, Flood, Framing, MIB};
use common::hostile::{Conn, Hostile};
use executionkit::{
    ChatRequest, Error, ErrorKind, LlmProvider, LlmResponse, Message, OpenAiProvider,
};
use futures::StreamExt;

const KEY: &str = "sk-hostile-SECRET-0123456789abcdef";
/// A part of [`KEY`] found in its upper-cased and percent-encoded forms too (checked ignoring
/// case).
const KEY_TAIL: &str = "0123456789abcdef";
/// The most a flood may grow the test process's peak RSS.
const MAX_GROWTH: u64 = 100 * MIB as u64;
/// No call may take this long (a hang is a failure, not a wait).
const CALL_LIMIT: Duration = Duration::from_secs(120);
/// No stream may take this long to fail under a flood.
const STREAM_LIMIT: Duration = Duration::from_secs(60);

fn provider_at(url: &str) -> OpenAiProvider {
    OpenAiProvider::builder(url, "test-model")
        .api_key(KEY)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn provider(server: &Hostile) -> OpenAiProvider {
    provider_at(&server.url())
}

async fn call(p: &OpenAiProvider, prompt: &str) -> Result<LlmResponse, Error> {
    let req = ChatRequest::new(vec![Message::user(prompt)]);
    tokio::time::timeout(CALL_LIMIT, p.complete(&req))
        .await
        .expect("the call hung")
}

/// A typed failure of the exchange: `provider` (bad reply) or `transport` (connection).
fn assert_exchange_error(r: &Result<LlmResponse, Error>, what: &str) {
    match r {
        Ok(resp) => panic!(
            "{what}: expected an error, got a reply of {} chars",
            resp.content().len()
        ),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::Provider | ErrorKind::Transport),
            "{what}: expected a provider or transport error, got {:?}: {e}",
            e.kind()
        ),
    }
}

// ---- 1. bounded memory ----

/// Memory tests run one at a time: each measures the process's peak RSS.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

/// Resets the peak RSS (`VmHWM`) to the current RSS (`/proc/self/clear_refs`, Linux ≥ 4.0)
/// and returns the current RSS in bytes.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    proc_status_kib("VmRSS:") * 1024
}

fn peak() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

/// Returns once the peak RSS is more than [`MAX_GROWTH`] above `before` (never otherwise): raced
/// against a call, it stops a client that is filling memory without waiting for it.
async fn over_growth(before: u64) {
    loop {
        if peak().saturating_sub(before) >= MAX_GROWTH {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `total` raw bytes of `kind` at one `complete`: less than [`MAX_GROWTH`] of peak RSS, a
/// typed error (not a timeout: the client must stop reading by itself), and (`cut`) the flood
/// not read to its end.
async fn complete_flood(kind: Flood, total: usize, cut: bool) {
    let server = attacks::flood(kind, total).await;
    complete_flood_with(&server, provider(&server), kind, total, cut).await;
}

async fn complete_flood_with(
    server: &Hostile,
    p: OpenAiProvider,
    kind: Flood,
    total: usize,
    cut: bool,
) {
    let _one = MEMORY.lock().await;
    let before = reset_peak();
    let r = tokio::select! {
        r = call(&p, "flood") => Some(r),
        () = over_growth(before) => None,
    };
    let grew = peak().saturating_sub(before);
    let Some(r) = r else {
        panic!(
            "{kind:?}: peak RSS grew by {} MiB and kept growing (the call was stopped)",
            grew / MIB as u64
        );
    };
    assert!(
        grew < MAX_GROWTH,
        "{kind:?}: peak RSS grew by {} MiB",
        grew / MIB as u64
    );
    assert_exchange_error(&r, &format!("{kind:?}"));
    if cut {
        drop(p);
        let written = wait_flooded(server).await;
        assert!(
            written < total,
            "{kind:?}: the client read the whole flood ({} MiB)",
            written / MIB
        );
    }
}

/// The bytes the flood server wrote, once it is done.
async fn wait_flooded(server: &Hostile) -> usize {
    for _ in 0..2000 {
        if let Some(n) = attacks::flooded(server).first() {
            return *n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the flood server never finished writing");
}

// Expected: a typed error, bounded memory, the flood cut at the 64 MiB cap. Passed on http1.rs
// (it refused the length at once); passes on the hyper transport, which reads up to the cap
// before failing (ek's peak RSS 79 MiB in tests/hostile.rs: refusing a Content-Length over
// the cap at once would save that).
#[tokio::test]
async fn memory_content_length_200_mib() {
    complete_flood(Flood::ContentLength, 200 * MIB, true).await;
}

// Expected: a typed error with bounded memory, and the cap counted in raw bytes: 32 MiB of
// 1-byte chunks decode to 5.3 MiB, under the 8 MiB cap set here, so only counting the framing
// stops the client (at about 8 MiB read; a smaller cap than the default keeps the test short:
// hyper decodes a 1-byte chunk in microseconds in a debug build). FAILED on http1.rs: its
// chunked decoder kept every raw byte and counted only decoded ones. Passes on hyper.
#[tokio::test]
async fn memory_one_byte_chunks_raw_bytes_count() {
    let total = 32 * MIB;
    let server = attacks::flood(Flood::OneByteChunks, total).await;
    let p = OpenAiProvider::builder(server.url(), "test-model")
        .api_key(KEY)
        .timeout(Duration::from_secs(60))
        .max_response_bytes(8 * MIB)
        .build()
        .unwrap();
    complete_flood_with(&server, p, Flood::OneByteChunks, total, true).await;
}

// Expected: a typed error after a few KiB of chunk extension, the flood cut. Passed on
// http1.rs (its chunk-size line was held to the head limit) and passes on hyper.
#[tokio::test]
async fn memory_endless_chunk_extension() {
    complete_flood(Flood::ChunkExtension, 256 * MIB, true).await;
}

// Expected: a typed error after a bounded amount of trailers, the flood cut. FAILED on
// http1.rs: trailer lines were read and kept without bound. Passes on hyper.
#[tokio::test]
async fn memory_endless_trailers() {
    complete_flood(Flood::Trailers, 256 * MIB, true).await;
}

// Expected: a typed error once the response head passes its limit, the flood cut. Passed on
// http1.rs (64 KiB head limit) and passes on hyper.
#[tokio::test]
async fn memory_endless_header_line() {
    complete_flood(Flood::HeaderLine, 256 * MIB, true).await;
}

// Expected: a stream fed one endless SSE line ends in a typed error with bounded memory, and
// the flood is cut. FAILED on the reqwest stream path: no cap on an SSE line, and the stream
// neither failed nor ended in 120 s (bytes keep coming, so the idle timeout never fires).
// FAILS on the hyper transport: an SSE line is bounded only by the 64 MiB body cap, and
// eventsource-stream rescans the growing line on every chunk, so the time to reach the cap is
// quadratic (debug build: a 1 MiB cap fails in 3.3 s, 4 MiB in 59 s, 64 MiB in hours) and the
// stream neither fails nor ends within a minute; one run peaked past 100 MiB of RSS instead
// (issue #9, 6: SSE lines and events need their own cap).
#[tokio::test]
async fn memory_stream_endless_sse_line() {
    let _one = MEMORY.lock().await;
    let total = 256 * MIB;
    let server = attacks::flood(Flood::SseLine, total).await;
    let p = provider(&server);
    let before = reset_peak();
    let mut stream = p.stream(ChatRequest::new(vec![Message::user("flood")]));
    let outcome = tokio::select! {
        o = tokio::time::timeout(STREAM_LIMIT, async {
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    return Some(e);
                }
            }
            None
        }) => o,
        () = over_growth(before) => {
            panic!(
                "peak RSS grew by {} MiB and kept growing (the stream was stopped)",
                peak().saturating_sub(before) / MIB as u64
            )
        }
    };
    drop(stream);
    let grew = peak().saturating_sub(before);
    assert!(
        grew < MAX_GROWTH,
        "peak RSS grew by {} MiB",
        grew / MIB as u64
    );
    let e = outcome
        .expect("the stream neither failed nor ended: an endless SSE line must fail at a bound")
        .expect("the stream ended without an error");
    assert!(
        matches!(e.kind(), ErrorKind::Provider | ErrorKind::Transport),
        "{:?}: {e}",
        e.kind()
    );
    drop(p);
    let written = wait_flooded(&server).await;
    assert!(
        written < total,
        "the client read the whole flood ({} MiB)",
        written / MIB
    );
}

// ---- 2. double spend ----

// Expected: the second call (written in full on the reused connection, which then closes with
// no answer) fails with a retryable error, and the server received exactly the 2 requests made.
// FAILED on http1.rs: it sent the second request again on a new connection by itself, so the
// server received (and billed) 3 requests for 2 calls. Passes on hyper.
#[tokio::test]
async fn double_spend_written_request_is_not_resent_by_the_transport() {
    let server = attacks::close_after_second_request().await;
    let p = provider(&server);
    let first = call(&p, "one").await.unwrap();
    assert_eq!(first.content(), "echo:one");
    let second = call(&p, "two").await;
    assert!(
        server.requests() <= 2,
        "the server received {} requests for 2 calls: the transport re-sent a written request",
        server.requests()
    );
    let e = second.expect_err("the connection closed without an answer");
    assert!(e.is_retryable(), "{:?}: {e}", e.kind());
    assert_eq!(server.requests(), 2);
}

// ---- 3. desync ----

async fn each_answer_is_its_own(delay: Option<Duration>, pad: usize) {
    let server = attacks::extra_reply(delay, pad).await;
    let p = provider(&server);
    for i in 0..3 {
        let prompt = format!("question {i}");
        let r = call(&p, &prompt).await.unwrap();
        assert_eq!(
            r.content(),
            format!("echo:{prompt}"),
            "call {i} got another request's answer"
        );
        if let Some(d) = delay {
            // Let the unsolicited reply arrive while the connection is idle in the pool.
            tokio::time::sleep(d * 3).await;
        }
    }
    assert_eq!(server.requests(), 3);
}

// Expected: every answer is its own request's (a connection with unread bytes is dropped, not
// reused). Passed on http1.rs (the extra bytes arrived with the answer and were dropped with
// the read buffer) and passes on hyper.
#[tokio::test]
async fn desync_extra_reply_in_the_same_write() {
    each_answer_is_its_own(None, 0).await;
}

// Expected: as above, with a stale reply larger than a read, so that part of it is still in
// the socket when the answer has been read. Passed on http1.rs and passes on hyper.
#[tokio::test]
async fn desync_large_extra_reply_in_the_same_write() {
    each_answer_is_its_own(None, 512 * 1024).await;
}

// Expected: as above, with the unsolicited reply arriving after the answer, while the
// connection is idle in the pool. FAILED on http1.rs: the stale reply was taken as the next
// call's answer, and every later answer was off by one. Passes on hyper.
#[tokio::test]
async fn desync_extra_reply_while_idle() {
    each_answer_is_its_own(Some(Duration::from_millis(50)), 0).await;
}

// ---- 4. lenient framing ----

/// One call with `kind`, checked by `first_ok`; then a second call, which must succeed and,
/// with `no_reuse`, not use the first's connection.
async fn framing_then_next(
    kind: Framing,
    first_ok: fn(&Result<LlmResponse, Error>),
    no_reuse: bool,
) {
    let server = attacks::framing(kind).await;
    let p = provider(&server);
    let first = call(&p, "first").await;
    first_ok(&first);
    let second = call(&p, "second").await;
    assert_eq!(
        second.as_ref().map(LlmResponse::content).ok(),
        Some("echo:second"),
        "{kind:?}: the next call failed or got a wrong answer: {second:?}"
    );
    if no_reuse {
        assert!(
            !server.notes().iter().any(|n| n == "reused"),
            "{kind:?}: the connection was reused after that reply"
        );
    }
}

// Expected: `Content-Length: +N` is an error (RFC 9110: the value is digits only), and the
// connection is not reused. FAILED on http1.rs, which parsed `+N` as N and took the reply.
// Passes on hyper.
#[tokio::test]
async fn framing_plus_content_length_is_an_error() {
    framing_then_next(
        Framing::PlusLength,
        |r| assert_exchange_error(r, "Content-Length: +N"),
        true,
    )
    .await;
}

// Expected: a reply with both Transfer-Encoding and Content-Length is refused, or taken by its
// chunked framing with the connection closed after it (RFC 9112 §6.3): never reused. FAILED
// on http1.rs, which kept the connection alive. Passes on hyper.
#[tokio::test]
async fn framing_te_with_cl_never_reuses_the_connection() {
    framing_then_next(
        Framing::TeAndCl,
        |r| {
            if let Ok(r) = r {
                assert_eq!(r.content(), "echo:first");
            }
        },
        true,
    )
    .await;
}

// Expected: `Transfer-Encoding: gzip, chunked` is not taken undecoded (the body here is not
// gzip, so the call fails; the chunked framing itself was sound, so the connection may be
// reused). FAILED on http1.rs, which ignored the gzip coding and returned the reply. Passes on
// hyper.
#[tokio::test]
async fn framing_gzip_chunked_is_not_taken_undecoded() {
    framing_then_next(
        Framing::GzipChunked,
        |r| assert_exchange_error(r, "Transfer-Encoding: gzip, chunked"),
        false,
    )
    .await;
}

// Expected: a 101 to a request that asked for no upgrade is an error and its connection is
// closed. FAILED on http1.rs: the call failed, but the 101's connection went back to the pool
// and was reused. Passes on hyper.
#[tokio::test]
async fn framing_101_is_an_error_and_closes() {
    framing_then_next(
        Framing::SwitchingProtocols,
        |r| assert_exchange_error(r, "101 Switching Protocols"),
        true,
    )
    .await;
}

// Expected: interim `100 Continue` and `103 Early Hints` are skipped and the 200 is the answer
// (RFC 9110 §15.2). Passed on http1.rs and passes on hyper.
#[tokio::test]
async fn framing_interim_replies_are_skipped() {
    let server = attacks::framing(Framing::Interim).await;
    let p = provider(&server);
    let r = call(&p, "first").await.unwrap();
    assert_eq!(r.content(), "echo:first");
}

// ---- 5. secrets ----

/// Where `secret` (ignoring case) shows in `e`: its text, `Debug`, JSON or metadata.
fn leaks(e: &Error, secret: &str) -> Option<String> {
    let secret = secret.to_lowercase();
    [
        e.to_string(),
        format!("{e:?}"),
        e.to_json().to_string(),
        serde_json::to_string(e.metadata()).unwrap(),
    ]
    .into_iter()
    .find(|t| t.to_lowercase().contains(&secret))
}

// Expected: an error built from a reply that echoes the key (as sent, upper-cased or
// percent-encoded; in a 400, a 500 or a malformed 200) shows none of it. FAILED on the old
// code for the percent-encoded echo (redaction knew the key as sent and upper-cased only);
// passes on main since the secrets work (issue #9, 7).
#[tokio::test]
async fn secrets_key_echoed_in_errors_is_never_shown() {
    let mut shown = Vec::new();
    for how in [
        Echo::Status400,
        Echo::Status500,
        Echo::Upper400,
        Echo::Percent400,
        Echo::Malformed200,
    ] {
        let server = attacks::key_echo(how).await;
        let p = provider(&server);
        let e = call(&p, "q")
            .await
            .expect_err("the server answers with an error");
        assert_eq!(server.requests(), 1);
        if let Some(t) = leaks(&e, KEY_TAIL) {
            shown.push(format!("{how:?}: {t}"));
        }
    }
    assert!(shown.is_empty(), "the key is shown:\n{}", shown.join("\n"));
}

// Expected: a password in the base URL is in no error and no `Debug` (a server that resets
// every connection makes a transport error; one that answers 400, a status error). FAILED on
// the old code: `OpenAiProvider`'s `Debug` printed the base URL with its password; passes on main
// since the secrets work (issue #9, 7).
#[tokio::test]
async fn secrets_url_password_is_never_shown() {
    let reset = Hostile::start(|conn: Conn| async move { conn.reset() }).await;
    let refuse = attacks::key_echo(Echo::Status400).await;
    let mut shown = Vec::new();
    for (what, server) in [("reset", &reset), ("400", &refuse)] {
        let url = format!("http://user:hunter2pw@{}/v1", server.addr);
        let p = provider_at(&url);
        let debug = format!("{p:?}");
        if debug.contains("hunter2pw") {
            shown.push(format!("Provider Debug: {debug}"));
        }
        let e = call(&p, "q")
            .await
            .expect_err("the server fails every call");
        if let Some(t) = leaks(&e, "hunter2pw") {
            shown.push(format!("{what}: {t}"));
        }
    }
    assert!(
        shown.is_empty(),
        "the password is shown:\n{}",
        shown.join("\n")
    );
}
