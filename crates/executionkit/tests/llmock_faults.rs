//! Fault tests against llmock (PyPI `llmock==0.2.2`), a fault-injecting OpenAI-compatible
//! server that also grades how the client coped (`GET /_llmock/verdict`).
//!
//! Start it with `eval "$(scripts/start-llmock.sh)"; export EK_LLMOCK_URL`. Without
//! it every test here says it is skipping and passes, unless
//! `EK_REQUIRE_SERVERS=1`, in which case it fails.
//!
//! llmock holds one global script of behaviours, so the cases run one after another inside a
//! single test, and each case sends a different prompt (llmock groups retries by body). The
//! suite runs over plain http/1.1, https/1.1 and https/2 (`llmock_fault_suite::http1`, …; see
//! `common::wire`), one wire at a time: llmock's faults reach the https/1.1 client byte for
//! byte through the TLS relay, and the https/2 client as the h2 relay translates them (a
//! disconnect mid-body becomes `RST_STREAM`, a truncated stream an early `END_STREAM`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use executionkit::CostTracker;
use executionkit::events::Event;
use executionkit::{
    ChatRequest, Error, ErrorKind, LlmProvider, Message, OpenAiProvider, RetryPolicy, RunContext,
    StreamEvent,
};
use futures::StreamExt;
use serde_json::{Value, json};

use common::wire::{Front, Wire};

const API_KEY: &str = "sk-llmock-test-key-0123456789";

struct Llmock {
    /// llmock's own URL, for its control routes (`/_llmock/...`), always over plain http.
    url: String,
    /// The wire the provider under test talks to llmock over.
    front: Front,
    http: reqwest::Client,
}

impl Llmock {
    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn reset(&self) {
        self.post("/_llmock/reset", json!({})).await;
    }

    async fn script(&self, behaviors: Value) {
        self.post("/_llmock/scenario", json!({ "behaviors": behaviors }))
            .await;
    }

    /// The requests llmock served whose first message is `prompt`.
    async fn requests_for(&self, prompt: &str) -> Vec<Value> {
        let all = self.get("/_llmock/requests").await;
        all["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["body"]["messages"][0]["content"] == prompt)
            .cloned()
            .collect()
    }

    fn provider(&self) -> OpenAiProvider {
        self.front
            .builder(format!("{}/v1", self.front.uri()), "gpt-4o-mini")
            .api_key(API_KEY)
            .stream_idle_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }
}

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new(vec![Message::user(prompt)]).max_tokens(64)
}

/// The retries a context saw: kind and delay.
type Retries = Arc<Mutex<Vec<(ErrorKind, Duration)>>>;

/// A context that records every retry (kind and delay).
fn context(policy: RetryPolicy) -> (RunContext, Retries) {
    let retries = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&retries);
    let ctx = RunContext::new().retry(policy).on_event(move |e| {
        if let Event::CallRetried { kind, delay, .. } = e {
            sink.lock().unwrap().push((*kind, *delay));
        }
    });
    (ctx, retries)
}

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries_count(2)
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_secs(5))
}

async fn rate_limited_then_success(m: &Llmock) {
    let prompt = "case: 429 then success";
    m.script(json!([{"type": "fail", "status": 429, "retry_after": 1, "times": 1}]))
        .await;
    let (ctx, retries) = context(policy());
    let tracker = CostTracker::new();
    let r = ctx
        .complete(&m.provider(), request(prompt), &tracker)
        .await
        .unwrap();
    assert!(!r.content().is_empty());
    assert_eq!(tracker.usage().llm_calls, 2);
    let retries = retries.lock().unwrap().clone();
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].0, ErrorKind::RateLimited);
    // The wait honours the server's Retry-After (1 s), capped by max_delay (5 s).
    assert!(retries[0].1 >= Duration::from_secs(1), "{retries:?}");
    let statuses: Vec<Value> = m
        .requests_for(prompt)
        .await
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(429), json!(200)]);
}

async fn server_error_then_success(m: &Llmock) {
    let prompt = "case: 500 then success";
    m.script(json!([{"type": "fail", "status": 500, "times": 1}]))
        .await;
    let (ctx, retries) = context(policy());
    let tracker = CostTracker::new();
    let r = ctx
        .complete(&m.provider(), request(prompt), &tracker)
        .await
        .unwrap();
    assert!(!r.content().is_empty());
    assert!(r.usage.output_tokens > 0);
    assert_eq!(tracker.usage().llm_calls, 2);
    assert_eq!(retries.lock().unwrap()[0].0, ErrorKind::Provider);
    assert_eq!(m.requests_for(prompt).await.len(), 2);
}

async fn unauthorized_is_not_retried(m: &Llmock) {
    let prompt = "case: 401 not retried";
    m.script(json!([{"type": "fail", "status": 401, "times": 1,
        "message": format!("Incorrect API key provided: {API_KEY}")}]))
        .await;
    let (ctx, retries) = context(policy());
    let tracker = CostTracker::new();
    let e = ctx
        .complete(&m.provider(), request(prompt), &tracker)
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e:?}");
    assert_eq!(e.http_status(), Some(401));
    assert!(!e.message().contains(API_KEY), "{e:?}");
    assert_eq!(tracker.usage().llm_calls, 1);
    assert_eq!(e.cost().llm_calls, 1);
    assert!(retries.lock().unwrap().is_empty());
    assert_eq!(m.requests_for(prompt).await.len(), 1);
}

async fn drain(provider: &OpenAiProvider, req: ChatRequest) -> (Vec<StreamEvent>, Option<Error>) {
    let mut s = provider.stream(req);
    let mut events = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(ev) => events.push(ev),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn fault(kind: &str, after_chunks: u32) -> Value {
    // A stall shorter than 1 s: long enough to trip our 300 ms idle timeout, short enough that
    // llmock never sees a client sitting through a long stall.
    json!([{"type": "stream_fault", "kind": kind, "after_chunks": after_chunks, "stall_seconds": 0.9}])
}

/// A broken stream is reported as an error (after the deltas already delivered); the caller's
/// retry of the same request then succeeds.
async fn broken_stream_is_an_error(m: &Llmock, kind: &str, expected: ErrorKind, fragment: &str) {
    let prompt = format!("case: stream {kind} reported");
    m.script(fault(kind, 2)).await;
    let p = m.provider();
    let (events, err) = drain(&p, request(&prompt)).await;
    let e = err.unwrap_or_else(|| panic!("{kind}: the stream did not fail: {events:?}"));
    assert_eq!(e.kind(), expected, "{kind}: {e:?}");
    assert!(e.message().contains(fragment), "{kind}: {e:?}");
    assert!(!e.message().contains(API_KEY));
    assert!(
        !events.iter().any(|e| matches!(e, StreamEvent::Finished(_))),
        "{kind}: a broken stream must not finish"
    );
    // Back off briefly, as a caller would: llmock then sees the retry start after the broken
    // attempt ended and grades the two as one call.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (events, err) = drain(&p, request(&prompt)).await;
    assert!(err.is_none(), "{kind}: retry failed: {err:?}");
    assert!(matches!(events.last(), Some(StreamEvent::Finished(r)) if !r.content().is_empty()));
}

/// Through the engine: a stream that breaks before its first delta is retried and succeeds.
async fn broken_stream_is_retried_by_the_engine(m: &Llmock, kind: &str, expected: ErrorKind) {
    let prompt = format!("case: stream {kind} retried");
    m.script(fault(kind, 1)).await;
    let (ctx, retries) = context(policy());
    let tracker = CostTracker::new();
    let p = m.provider();
    let s = ctx.stream(&p, request(&prompt), &tracker).await.unwrap();
    let items: Vec<_> = s.collect().await;
    let last = items.last().unwrap();
    assert!(
        matches!(last, Ok(StreamEvent::Finished(r)) if !r.content().is_empty()),
        "{kind}: {items:?}"
    );
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(tracker.usage().llm_calls, 2, "{kind}");
    let retries = retries.lock().unwrap().clone();
    assert_eq!(retries.len(), 1, "{kind}: {retries:?}");
    assert_eq!(retries[0].0, expected, "{kind}");
}

/// llmock holds one global script and one verdict, so the wires take turns.
static LLMOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

over_wires!(llmock_fault_suite);
async fn llmock_fault_suite(wire: Wire) {
    let Some(url) = common::server_url("EK_LLMOCK_URL", "scripts/start-llmock.sh") else {
        return;
    };
    let _turn = LLMOCK.lock().await;
    let front = Front::start(wire, &url).await;
    let m = Llmock {
        url,
        front,
        http: reqwest::Client::new(),
    };
    m.reset().await;

    rate_limited_then_success(&m).await;
    server_error_then_success(&m).await;
    unauthorized_is_not_retried(&m).await;
    for (kind, expected, fragment) in [
        ("truncate", ErrorKind::Provider, "stream ended early"),
        ("disconnect", ErrorKind::Transport, "Transport failure"),
        ("malformed", ErrorKind::Provider, "non-JSON SSE data frame"),
        ("stall", ErrorKind::Timeout, "Transport failure"),
    ] {
        broken_stream_is_an_error(&m, kind, expected, fragment).await;
        broken_stream_is_retried_by_the_engine(&m, kind, expected).await;
    }

    let verdict = m.get("/_llmock/verdict").await;
    let report = m
        .http
        .get(format!("{}/_llmock/verdict?format=text", m.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    println!("over {wire}:\n{report}");
    assert_eq!(verdict["passed"], true, "{report}");
    assert_eq!(verdict["errors"], 0, "{report}");
    assert!(
        verdict["faults_injected"].as_u64().unwrap() >= 11,
        "{report}"
    );
}
