//! Chaos between us and the server (issue #15, item 3): an [`OpenAiProvider`] over plain http
//! through a fault-injecting TCP proxy (`tests/common/chaos.rs`) in front of a raw-TCP server
//! (`tests/common/hostile.rs`), all on 127.0.0.1. Faults: latency, a bandwidth cap, a reset
//! mid-body, a stall mid-body, half-open connections, a server that never replies, and a black
//! hole (a listener whose accept queue is full: connects hang).
//!
//! What each test checks:
//! * a slow or narrow path still gives the whole answer (complete and stream);
//! * a reset mid-body is a typed `transport`/`provider` error, each retry a counted call;
//! * half-open, stalls, silence and black holes end in a `timeout` error (never a hang);
//! * dropping a call, a stream or a fan-out (cancelled by a budget trip) closes every connection
//!   at the proxy and returns every reservation;
//! * after resets and black-holed attempts the same provider works again once the path is
//!   clean, opening a bounded number of new connections;
//! * every request that reached the server is a counted call (server requests ≤ calls).
//!
//! Every call runs under an outer `tokio::time::timeout` ([`OUTER`]) far above the configured
//! timeouts: passing it is the only time a test asserts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::chaos::{BACKLOG, Chaos, Fault};
use common::h2::{H2Options, H2Reply, H2Server};
use common::hostile::{self, Conn, Hostile, Request};
use executionkit::{
    AnthropicProvider, Budget, ChatRequest, Consensus, CostTracker, Error, ErrorKind, LlmProvider,
    Message, OpenAiProvider, RetryPolicy, RunContext, StreamEvent, TokenUsage, stream_completion,
};
use futures::StreamExt;

/// No call may take this long: a hang fails the test (the configured timeouts are ≤ 2 s).
const OUTER: Duration = Duration::from_secs(60);
/// How long connections get to close after a call ends or is dropped.
const SETTLE: Duration = Duration::from_secs(10);
/// The request timeout of the providers here.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// The stream idle timeout.
const IDLE: Duration = Duration::from_millis(400);
/// The connect timeout of the providers that set one.
const CONNECT: Duration = Duration::from_millis(400);
/// The stream deadline.
const DEADLINE: Duration = Duration::from_secs(3);
/// Words in the answer.
const WORDS: usize = 60;

/// The answer every request gets: long enough that a reply spans many chunks and bytes.
fn answer() -> String {
    (0..WORDS)
        .map(|i| format!("chaos-{i:02}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An SSE reply streaming [`answer`] one word per event, then usage and `[DONE]`.
fn sse_reply() -> Vec<u8> {
    let text = answer();
    let mut body = String::new();
    for (i, word) in text.split(' ').enumerate() {
        let piece = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        let frame = serde_json::json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        body.push_str(&format!("data: {frame}\n\n"));
    }
    let stop = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
    body.push_str(&format!(
        "data: {stop}\n\ndata: {usage}\n\ndata: [DONE]\n\n"
    ));
    hostile::response("200 OK", &[("Content-Type", "text/event-stream")], &body)
}

/// The reply to `req`: SSE when it asks for a stream, else JSON.
fn reply(req: &Request) -> Vec<u8> {
    if req.json()["stream"] == true {
        sse_reply()
    } else {
        hostile::ok_json(&hostile::completion(&answer()))
    }
}

/// A keep-alive upstream answering every request with [`reply`], behind a clean proxy.
async fn setup() -> (Hostile, Chaos) {
    let upstream = hostile::serve_each(reply).await;
    let proxy = Chaos::start(upstream.addr).await;
    (upstream, proxy)
}

fn provider(proxy: &Chaos) -> OpenAiProvider {
    OpenAiProvider::builder(proxy.url(), "m")
        .timeout(TIMEOUT)
        .stream_idle_timeout(IDLE)
        .connect_timeout(CONNECT)
        .stream_deadline(DEADLINE)
        .supports_n(false)
        .build()
        .unwrap()
}

/// One attempt, no retry; limits on calls and output tokens so reservations show.
fn ctx() -> RunContext {
    RunContext::new()
        .retry(RetryPolicy::none())
        .budget(Budget::new().max_calls(1000).max_output_tokens(1_000_000))
}

/// `retries` retries 1 to 5 ms apart.
fn retrying(retries: u32) -> RunContext {
    ctx().retry(
        RetryPolicy::new()
            .max_retries_count(retries)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(5)),
    )
}

fn request() -> ChatRequest {
    ChatRequest::new(vec![Message::user("q")])
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(OUTER, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {OUTER:?} (a hang)"))
}

/// One `complete` through the engine: its result and the calls it reported.
async fn complete(p: &OpenAiProvider, ctx: &RunContext) -> (Result<String, Error>, u64) {
    let tracker = CostTracker::new();
    let r = bounded("complete", ctx.complete(p, request(), &tracker)).await;
    (r.map(|r| r.content().to_owned()), tracker.usage().llm_calls)
}

/// One stream through the engine, drained: its text (or the error that ended it), the calls it
/// reported, and how many deltas arrived before the end.
async fn stream(p: &OpenAiProvider, ctx: &RunContext) -> (Result<String, Error>, u64, usize) {
    let p: Arc<dyn LlmProvider> = Arc::new(p.clone());
    bounded("stream", async {
        let mut s = match stream_completion(p, request(), ctx).await {
            Ok(s) => s,
            Err(e) => {
                let calls = e.cost().llm_calls;
                return (Err(e), calls, 0);
            }
        };
        let mut text = String::new();
        let mut deltas = 0;
        while let Some(d) = s.next().await {
            match d {
                Ok(d) => {
                    text.push_str(&d);
                    deltas += 1;
                }
                Err(e) => return (Err(e), s.cost().llm_calls, deltas),
            }
        }
        (Ok(text), s.cost().llm_calls, deltas)
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Complete,
    Stream,
}

const MODES: [Mode; 2] = [Mode::Complete, Mode::Stream];

async fn call(mode: Mode, p: &OpenAiProvider, ctx: &RunContext) -> (Result<String, Error>, u64) {
    match mode {
        Mode::Complete => complete(p, ctx).await,
        Mode::Stream => {
            let (r, calls, _) = stream(p, ctx).await;
            (r, calls)
        }
    }
}

/// Requests received by the server ≤ calls reported; returns whether they were equal.
fn check_counted(upstream: &Hostile, calls: u64, what: &str) -> bool {
    let seen = upstream.requests() as u64;
    assert!(
        seen <= calls,
        "{what}: the server received {seen} requests but only {calls} calls were reported"
    );
    if seen != calls {
        eprintln!("{what}: the server received {seen} requests for {calls} reported calls");
    }
    seen == calls
}

/// No connection stays open at the proxy, and the ledger holds no reservation.
async fn check_freed(proxy: &Chaos, ctx: &RunContext, what: &str) {
    let open = proxy.wait_closed(SETTLE).await;
    assert_eq!(
        open, 0,
        "{what}: {open} connections still open at the proxy"
    );
    assert_eq!(
        ctx.ledger().reserved_output_tokens(),
        0,
        "{what}: output tokens still reserved"
    );
}

fn assert_kind(r: &Result<String, Error>, kinds: &[ErrorKind], what: &str) {
    match r {
        Ok(t) => panic!(
            "{what}: expected {kinds:?}, got an answer of {} chars",
            t.len()
        ),
        Err(e) => assert!(
            kinds.contains(&e.kind()),
            "{what}: expected {kinds:?}, got {:?}: {e}",
            e.kind()
        ),
    }
}

// ---- a slow or narrow path ----

#[tokio::test]
async fn latency_and_a_bandwidth_cap_still_give_the_whole_answer() {
    for fault in [
        Fault::Latency(Duration::from_millis(20)),
        Fault::Bandwidth(16 * 1024),
    ] {
        for mode in MODES {
            let what = format!("{fault:?} {mode:?}");
            let (upstream, proxy) = setup().await;
            proxy.set(fault);
            let p = provider(&proxy);
            let ctx = ctx();
            let (r, calls) = call(mode, &p, &ctx).await;
            assert_eq!(r.unwrap(), answer(), "{what}");
            assert_eq!(calls, 1, "{what}");
            assert!(check_counted(&upstream, calls, &what));
            assert!(proxy.bytes_down() > answer().len() as u64, "{what}");
            // The connection is pooled (one idle), nothing is reserved.
            assert_eq!(proxy.open(), 1, "{what}");
            assert_eq!(ctx.ledger().reserved_output_tokens(), 0, "{what}");
            drop(p);
            check_freed(&proxy, &ctx, &what).await;
        }
    }
}

// ---- resets mid-body ----

#[tokio::test]
async fn a_reset_mid_body_is_a_typed_error() {
    for mode in MODES {
        let what = format!("reset {mode:?}");
        let (upstream, proxy) = setup().await;
        proxy.set(Fault::ResetAfter(40));
        let p = provider(&proxy);
        let ctx = ctx();
        let (r, calls) = call(mode, &p, &ctx).await;
        assert_kind(&r, &[ErrorKind::Transport], &what);
        if let Err(e) = &r {
            eprintln!("{what}: {:?}: {e}", e.kind());
        }
        assert_eq!(calls, 1, "{what}");
        assert_eq!(proxy.resets(), 1, "{what}");
        assert!(check_counted(&upstream, calls, &what));
        check_freed(&proxy, &ctx, &what).await;
    }
}

#[tokio::test]
async fn each_retry_after_a_reset_is_a_counted_call() {
    for mode in MODES {
        // Every attempt reset: 1 + 2 retries, all counted, all at the server.
        let what = format!("reset ×3 {mode:?}");
        let (upstream, proxy) = setup().await;
        proxy.set(Fault::ResetAfter(40));
        let p = provider(&proxy);
        let ctx = retrying(2);
        let (r, calls) = call(mode, &p, &ctx).await;
        assert_kind(&r, &[ErrorKind::Transport], &what);
        assert_eq!(calls, 3, "{what}");
        assert_eq!(proxy.resets(), 3, "{what}");
        assert_eq!(ctx.ledger().spent().llm_calls, 3, "{what}");
        assert!(check_counted(&upstream, calls, &what));
        check_freed(&proxy, &ctx, &what).await;

        // The first attempt reset, the retry clean: the answer, two calls.
        let what = format!("reset then clean {mode:?}");
        let (upstream, proxy) = setup().await;
        proxy.push_next(Fault::ResetAfter(40));
        let p = provider(&proxy);
        let ctx = retrying(2);
        let (r, calls) = call(mode, &p, &ctx).await;
        assert_eq!(r.unwrap(), answer(), "{what}");
        assert_eq!(calls, 2, "{what}");
        assert_eq!(proxy.resets(), 1, "{what}");
        assert!(check_counted(&upstream, calls, &what));
    }
}

#[tokio::test]
async fn a_reset_after_the_first_delta_ends_the_stream_without_a_retry() {
    let (upstream, proxy) = setup().await;
    // Well past the first events (each is ~100 bytes), well before the end (~6 KB).
    proxy.set(Fault::ResetAfter(1000));
    let p = provider(&proxy);
    let ctx = retrying(2);
    let (r, calls, deltas) = stream(&p, &ctx).await;
    assert_kind(&r, &[ErrorKind::Transport], "reset mid-stream");
    if let Err(e) = &r {
        eprintln!(
            "reset mid-stream: {:?}: {e} (after {deltas} deltas)",
            e.kind()
        );
    }
    assert!(deltas > 0 && deltas < WORDS, "{deltas} deltas");
    assert_eq!(calls, 1, "no retry once a delta was delivered");
    assert!(check_counted(&upstream, calls, "reset mid-stream"));
    check_freed(&proxy, &ctx, "reset mid-stream").await;
}

// ---- half-open, stalls, silence: timeouts ----

#[tokio::test]
async fn half_open_stalled_silent_and_slow_paths_end_in_a_timeout() {
    for fault in [
        Fault::HalfOpen,
        Fault::StallAfter(0),
        Fault::StallAfter(300),
        Fault::Silent,
        // Slower than the request timeout (complete) and the idle timeout (stream).
        Fault::Latency(Duration::from_secs(2)),
        // A drip: 5 bytes every 50 ms never trips the idle timeout; the request timeout
        // (complete) or the stream deadline (stream) ends it.
        Fault::Bandwidth(100),
    ] {
        for mode in MODES {
            let what = format!("{fault:?} {mode:?}");
            let (upstream, proxy) = setup().await;
            proxy.set(fault);
            let p = provider(&proxy);
            let ctx = ctx();
            let (r, calls) = call(mode, &p, &ctx).await;
            assert_kind(&r, &[ErrorKind::Timeout], &what);
            if let Err(e) = &r {
                eprintln!("{what}: {e}");
            }
            assert_eq!(calls, 1, "{what}");
            check_counted(&upstream, calls, &what);
            if fault == Fault::Silent {
                assert_eq!(upstream.requests(), 0, "{what}: nothing reached the server");
            }
            // The timed-out connection is closed, not pooled.
            check_freed(&proxy, &ctx, &what).await;
        }
    }
}

#[tokio::test]
async fn each_retry_after_a_timeout_is_a_counted_call_and_closes_its_connection() {
    for mode in MODES {
        let what = format!("half-open ×2 {mode:?}");
        let (upstream, proxy) = setup().await;
        proxy.set(Fault::HalfOpen);
        let p = provider(&proxy);
        let ctx = retrying(1);
        let (r, calls) = call(mode, &p, &ctx).await;
        assert_kind(&r, &[ErrorKind::Timeout], &what);
        assert_eq!(calls, 2, "{what}");
        assert_eq!(
            proxy.connections(),
            2,
            "{what}: a timed-out connection is not reused"
        );
        assert!(check_counted(&upstream, calls, &what));
        check_freed(&proxy, &ctx, &what).await;
    }
}

#[tokio::test]
async fn a_black_hole_ends_in_a_timeout() {
    for mode in MODES {
        for connect_timeout in [true, false] {
            let what = format!("black hole {mode:?} connect_timeout={connect_timeout}");
            let (upstream, proxy) = setup().await;
            let filled = proxy.black_hole().await;
            assert!(filled > 0, "{what}: the accept queue took no connection");
            eprintln!("{what}: the accept queue (backlog {BACKLOG}) took {filled} connections");
            let mut b = OpenAiProvider::builder(proxy.url(), "m")
                .timeout(TIMEOUT)
                .stream_idle_timeout(IDLE);
            if connect_timeout {
                b = b.connect_timeout(CONNECT);
            }
            let p = b.build().unwrap();
            let ctx = ctx();
            let (r, calls) = call(mode, &p, &ctx).await;
            assert_kind(&r, &[ErrorKind::Timeout], &what);
            assert_eq!(calls, 1, "{what}");
            assert_eq!(proxy.connections(), 0, "{what}: nothing was accepted");
            assert_eq!(upstream.requests(), 0, "{what}");
            assert_eq!(ctx.ledger().reserved_output_tokens(), 0, "{what}");
        }
    }
}

// ---- cancellation ----

/// Polls until the server has received `n` requests (bounded).
async fn until_requests(upstream: &Hostile, n: usize) {
    bounded("waiting for requests at the server", async {
        while upstream.requests() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn dropping_a_call_mid_request_frees_its_connection_and_reservation() {
    for fault in [Fault::HalfOpen, Fault::StallAfter(100)] {
        let what = format!("dropped complete {fault:?}");
        let (upstream, proxy) = setup().await;
        proxy.set(fault);
        // A long timeout: only the drop can end the call.
        let p = OpenAiProvider::builder(proxy.url(), "m")
            .timeout(OUTER * 10)
            .build()
            .unwrap();
        let ctx = ctx();
        let tracker = CostTracker::new();
        {
            let call = ctx.complete(&p, request(), &tracker);
            tokio::pin!(call);
            tokio::select! {
                r = &mut call => panic!("{what}: the call ended: {r:?}"),
                () = until_requests(&upstream, 1) => {}
            }
            assert!(ctx.ledger().reserved_output_tokens() > 0, "{what}");
            assert_eq!(proxy.open(), 1, "{what}");
        } // dropped here
        assert_eq!(tracker.usage().llm_calls, 1, "{what}");
        assert_eq!(ctx.ledger().spent().llm_calls, 1, "{what}");
        assert!(check_counted(&upstream, 1, &what));
        check_freed(&proxy, &ctx, &what).await;
        assert_eq!(
            ctx.ledger().remaining().output_tokens,
            Some(1_000_000),
            "{what}: every reserved token came back"
        );
    }
}

#[tokio::test]
async fn dropping_a_stream_mid_body_frees_its_connection_and_reservation() {
    let (upstream, proxy) = setup().await;
    proxy.set(Fault::StallAfter(1000));
    let p: Arc<dyn LlmProvider> = Arc::new(
        OpenAiProvider::builder(proxy.url(), "m")
            .timeout(OUTER * 10)
            .stream_idle_timeout(OUTER * 10)
            .build()
            .unwrap(),
    );
    let ctx = ctx();
    let mut s = bounded("stream start", stream_completion(p, request(), &ctx))
        .await
        .unwrap();
    let first = bounded("first delta", s.next()).await.unwrap().unwrap();
    assert_eq!(first, "chaos-00");
    assert!(ctx.ledger().reserved_output_tokens() > 0);
    drop(s);
    assert_eq!(ctx.ledger().spent().llm_calls, 1);
    assert!(check_counted(&upstream, 1, "dropped stream"));
    check_freed(&proxy, &ctx, "dropped stream").await;
    assert_eq!(ctx.ledger().remaining().output_tokens, Some(1_000_000));
}

/// An upstream that holds every request but the third, which it answers (and closes): with
/// three samples in flight, the fourth sample's reservation trips a `max_calls(3)` budget
/// while two requests are still held.
async fn third_answers() -> Hostile {
    let arrived = Arc::new(AtomicUsize::new(0));
    Hostile::start(move |mut conn: Conn| {
        let arrived = Arc::clone(&arrived);
        async move {
            let _req = conn.read_request().await?;
            if arrived.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                let body = hostile::completion("Paris");
                conn.write_all(&hostile::response(
                    "200 OK",
                    &[
                        ("Content-Type", "application/json"),
                        ("Connection", "close"),
                    ],
                    &body,
                ))
                .await?;
                return conn.close().await;
            }
            conn.drain_until_closed(Duration::from_secs(3600)).await;
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn a_fanout_cancelled_by_a_budget_trip_frees_every_connection() {
    let upstream = third_answers().await;
    let proxy = Chaos::start(upstream.addr).await;
    let p = OpenAiProvider::builder(proxy.url(), "m")
        .timeout(OUTER * 10)
        .supports_n(false)
        .build()
        .unwrap();
    let ctx = RunContext::new()
        .retry(RetryPolicy::none())
        .budget(Budget::new().max_calls(3).max_output_tokens(1_000_000));
    let e = bounded(
        "consensus",
        Consensus::new()
            .samples(5)
            .max_concurrency(3)
            .run(&p, "q", &ctx),
    )
    .await
    .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.cost().llm_calls, 3);
    assert_eq!(ctx.ledger().spent().llm_calls, 3);
    assert_eq!(proxy.connections(), 3);
    assert!(check_counted(&upstream, 3, "budget trip"));
    check_freed(&proxy, &ctx, "budget trip").await;
    assert_eq!(
        ctx.ledger().spent(),
        TokenUsage::new(3, 2, 3),
        "the answered sample's tokens"
    );
    assert_eq!(
        ctx.ledger().remaining().output_tokens,
        Some(1_000_000 - 2),
        "only what was spent is gone"
    );
}

// ---- the pool recovers ----

#[tokio::test]
async fn the_pool_recovers_after_resets_and_a_black_hole() {
    for mode in MODES {
        let (upstream, proxy) = setup().await;
        let p = provider(&proxy);
        let ctx = ctx();
        let mut calls = 0;

        // Clean: one connection, pooled.
        let (r, c) = call(mode, &p, &ctx).await;
        assert_eq!(r.unwrap(), answer());
        calls += c;

        // Resets (the pooled connection meets them too).
        proxy.set(Fault::ResetAfter(40));
        for _ in 0..3 {
            let (r, c) = call(mode, &p, &ctx).await;
            assert_kind(&r, &[ErrorKind::Transport], "reset");
            calls += c;
        }
        assert_eq!(proxy.resets(), 3, "{mode:?}");

        // A black hole: connects hang until the connect timeout.
        proxy.black_hole().await;
        for _ in 0..2 {
            let (r, c) = call(mode, &p, &ctx).await;
            assert_kind(&r, &[ErrorKind::Timeout], "black hole");
            calls += c;
        }

        // Clean again: the same provider answers, over one new connection for sequential
        // calls and at most three for three concurrent ones.
        proxy.clear().await;
        let before = proxy.connections();
        for _ in 0..5 {
            let (r, c) = call(mode, &p, &ctx).await;
            assert_eq!(r.unwrap(), answer(), "{mode:?} after recovery");
            calls += c;
        }
        let sequential = proxy.connections() - before;
        assert_eq!(
            sequential, 1,
            "{mode:?}: sequential calls share one connection"
        );
        let (a, b, c) = tokio::join!(
            call(mode, &p, &ctx),
            call(mode, &p, &ctx),
            call(mode, &p, &ctx)
        );
        for (r, n) in [a, b, c] {
            assert_eq!(r.unwrap(), answer());
            calls += n;
        }
        let opened = proxy.connections() - before;
        assert!(
            opened <= 3,
            "{mode:?}: {opened} connections for at most 3 in flight"
        );
        assert_eq!(calls, 1 + 3 + 2 + 5 + 3, "{mode:?}");
        assert_eq!(ctx.ledger().spent().llm_calls, calls, "{mode:?}");
        // Every request that reached the server is a call; the black-holed ones never did.
        check_counted(&upstream, calls, "recovered");
        assert!(upstream.requests() as u64 >= calls - 2, "{mode:?}");
        assert_eq!(ctx.ledger().reserved_output_tokens(), 0);
        drop(p);
        check_freed(&proxy, &ctx, "recovered").await;
    }
}

// ---- streams go back to the pool ----

/// `body` sent with `Transfer-Encoding: chunked`, one chunk per SSE event.
fn chunked_sse(body: &str) -> Vec<u8> {
    let mut out =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_owned();
    for event in body.split_inclusive("\n\n") {
        out.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
    }
    out.push_str("0\r\n\r\n");
    out.into_bytes()
}

/// An Anthropic Messages stream answering [`answer`].
fn anthropic_sse() -> String {
    let events = [
        serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "m", "content": [],
            "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": answer()}}),
        serde_json::json!({"type": "content_block_stop", "index": 0}),
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2}}),
        serde_json::json!({"type": "message_stop"}),
    ];
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

/// The SSE body of [`sse_reply`] (without its head).
fn openai_sse() -> String {
    let reply = sse_reply();
    let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    String::from_utf8(reply[at..].to_vec()).unwrap()
}

/// Regression (found by this suite): a stream that saw its end marker (`[DONE]`,
/// `message_stop`) was dropped without reading the end of its body, so its connection was
/// closed instead of pooled and every streamed call opened a new connection.
#[tokio::test]
async fn sequential_streams_share_one_connection() {
    for anthropic in [false, true] {
        for chunked in [false, true] {
            let what = format!("anthropic={anthropic} chunked={chunked}");
            let body = if anthropic {
                anthropic_sse()
            } else {
                openai_sse()
            };
            let upstream = hostile::serve_each(move |_| {
                if chunked {
                    chunked_sse(&body)
                } else {
                    hostile::response("200 OK", &[("Content-Type", "text/event-stream")], &body)
                }
            })
            .await;
            let proxy = Chaos::start(upstream.addr).await;
            let p: Box<dyn LlmProvider> = if anthropic {
                Box::new(
                    AnthropicProvider::builder(format!("http://{}", proxy.addr), "m")
                        .build()
                        .unwrap(),
                )
            } else {
                Box::new(provider(&proxy))
            };
            for _ in 0..3 {
                let items: Vec<_> = bounded("stream", p.stream(request()).collect()).await;
                let text: String = items
                    .iter()
                    .filter_map(|i| match i {
                        Ok(StreamEvent::TextDelta(t)) => Some(t.as_str()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(text, answer(), "{what}");
                assert!(
                    matches!(items.last(), Some(Ok(StreamEvent::Finished(_)))),
                    "{what}"
                );
            }
            assert_eq!(upstream.requests(), 3, "{what}");
            assert_eq!(
                proxy.connections(),
                1,
                "{what}: one connection for three streams"
            );
            assert_eq!(proxy.open(), 1, "{what}: and it is pooled");
        }
    }
}

// ---- HTTP/2: one shared connection ----

/// Over HTTP/2 every call shares one connection, so a connection whose path went half-open
/// (requests pass, nothing comes back, TCP stays up) must be noticed and replaced, or every
/// later call of the provider times out on it. Regression (found by this suite): the
/// transport sent no PING, so the dead connection was used forever; it now pings while
/// streams are open and closes a connection whose PING goes unanswered (10 s + 10 s).
#[tokio::test]
async fn http2_recovers_after_its_connection_goes_half_open() {
    let server = H2Server::start(H2Options::default(), |_req| {
        H2Reply::json(hostile::completion(&answer()))
    })
    .await;
    let proxy = Chaos::start(server.addr).await;
    let p = OpenAiProvider::builder(format!("https://{}/v1", proxy.addr), "m")
        .root_certificate_pem(&server.ca_pem)
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT)
        .build()
        .unwrap();
    let ctx = ctx();
    let (r, _) = complete(&p, &ctx).await;
    assert_eq!(r.unwrap(), answer());
    assert_eq!(proxy.connections(), 1);

    // The path of the (one, pooled) connection goes half-open.
    proxy.set(Fault::HalfOpen);
    let (r, _) = complete(&p, &ctx).await;
    assert_kind(&r, &[ErrorKind::Timeout], "half-open h2");

    // The path is clean again for new connections, but the old one stays dead: the provider
    // must stop using it. Calls until one succeeds, within the outer bound.
    proxy.clear().await;
    let mut failed = 0;
    bounded("h2 recovery", async {
        loop {
            let (r, _) = complete(&p, &ctx).await;
            match r {
                Ok(text) => {
                    assert_eq!(text, answer());
                    break;
                }
                Err(e) => {
                    // Timeouts, then the call in flight when the unanswered PING closes the
                    // connection: "http2 error: keep-alive timed out" (transport).
                    assert!(
                        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Transport),
                        "{e}"
                    );
                    eprintln!("h2 recovery: {:?}: {e}", e.kind());
                    failed += 1;
                }
            }
        }
    })
    .await;
    eprintln!("h2 recovery: {failed} calls timed out before a new connection answered");
    assert_eq!(proxy.connections(), 2, "one new connection");
    assert!(server.requests() as u64 <= ctx.ledger().spent().llm_calls);
}

/// Concurrent first calls over HTTP/2 wait for one handshake: when that handshake cannot happen
/// (a black hole: the connect hangs; silent: TCP is accepted, TLS never answered), every call
/// ends in a timeout, and once the path is clean the same provider connects and answers.
#[tokio::test]
async fn http2_first_calls_through_a_black_hole_or_a_silent_handshake_then_recover() {
    for black_hole in [true, false] {
        let what = if black_hole { "black hole" } else { "silent" };
        let server = H2Server::start(H2Options::default(), |_req| {
            H2Reply::json(hostile::completion(&answer()))
        })
        .await;
        let proxy = Chaos::start(server.addr).await;
        if black_hole {
            proxy.black_hole().await;
        } else {
            proxy.set(Fault::Silent);
        }
        let p = OpenAiProvider::builder(format!("https://{}/v1", proxy.addr), "m")
            .root_certificate_pem(&server.ca_pem)
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT)
            .build()
            .unwrap();
        let ctx = ctx();
        let (a, b, c) = tokio::join!(complete(&p, &ctx), complete(&p, &ctx), complete(&p, &ctx));
        for (r, calls) in [a, b, c] {
            assert_kind(&r, &[ErrorKind::Timeout], what);
            assert_eq!(calls, 1, "{what}");
        }
        assert_eq!(server.requests(), 0, "{what}");
        let during = proxy.connections();
        proxy.clear().await;
        let before = proxy.connections();
        let (a, b, c) = tokio::join!(complete(&p, &ctx), complete(&p, &ctx), complete(&p, &ctx));
        for (r, _) in [a, b, c] {
            assert_eq!(r.unwrap(), answer(), "{what}: after recovery");
        }
        eprintln!("{what}: {during} connections during the fault");
        assert_eq!(
            proxy.connections() - before,
            1,
            "{what}: the three calls share one new connection"
        );
        assert_eq!(server.requests(), 3, "{what}");
        assert_eq!(ctx.ledger().spent().llm_calls, 6, "{what}");
        assert_eq!(ctx.ledger().reserved_output_tokens(), 0, "{what}");
        drop(p);
        check_freed(&proxy, &ctx, what).await;
    }
}
