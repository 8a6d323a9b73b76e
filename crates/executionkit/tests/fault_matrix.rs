//! The fault matrix (issue 15, item 2): every fault kind llmock injects × (complete, stream) ×
//! (consensus, refine, react, pipe), against llmock (PyPI `llmock==0.2.2`; start it with
//! `eval "$(scripts/start-llmock.sh)"; export EK_LLMOCK_URL`).
//!
//! For every cell: the run ends (a hang fails the test at 60 s) with a value or a typed error,
//! never a panic; the spend is exact (the requests llmock received, counted by a relay too, equal
//! the calls reported, on success and on error, cancelled calls included); and llmock's own verdict of the client's handling passes (no ignored
//! `Retry-After`, no retried 4xx, no accepted truncated stream, no ignored malformed chunk, …).
//!
//! In the stream column every call of the pattern goes through `LlmProvider::stream` (the SSE
//! decoder), through [`Streamed`]; in the complete column through `complete`. llmock applies its
//! stream faults (and slow first token) to streamed requests only, and its tool faults to
//! requests that offer tools, so those cells are run where they can fire: a cell whose fault
//! cannot reach its requests is not run. The table is printed (`--nocapture`) and kept in
//! docs/reliability.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::counting::CountingRelay;
use common::tls::addr_of;
use executionkit::WithCallOptions as _;
use executionkit::events::Event;
use executionkit::{
    ChatRequest, ChatStream, Consensus, Error, LlmProvider, LlmResponse, OpenAiProvider, Pipe,
    ReactLoop, RefineLoop, Result, RetryPolicy, RunContext, StreamEvent, TokenUsage, Tool,
};
use futures::StreamExt;
use serde_json::{Map, Value, json};

const API_KEY: &str = "sk-llmock-matrix-key-0123456789";

/// Every call of `inner` goes through its streaming API: `complete` drains `stream`.
#[derive(Debug)]
struct Streamed(OpenAiProvider);

#[async_trait]
impl LlmProvider for Streamed {
    fn model(&self) -> &str {
        self.0.model()
    }
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        let mut events = self.0.stream(request.clone());
        while let Some(ev) = events.next().await {
            if let StreamEvent::Finished(r) = ev? {
                return Ok(r);
            }
        }
        Err(Error::new(
            executionkit::ErrorKind::Provider,
            "stream ended without its response",
        ))
    }
    fn stream(&self, request: ChatRequest) -> ChatStream {
        self.0.stream(request)
    }
    fn supports_tools(&self) -> bool {
        self.0.supports_tools()
    }
    fn supports_streaming(&self) -> bool {
        self.0.supports_streaming()
    }
    fn secret(&self) -> Option<&str> {
        self.0.secret()
    }
    fn response_format_refused(&self) -> bool {
        self.0.response_format_refused()
    }
    fn note_response_format_refused(&self) {
        self.0.note_response_format_refused();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Complete,
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Consensus,
    Refine,
    React,
    Pipe,
}

/// One fault: its name, llmock's behaviour, and where it can fire.
struct Fault {
    name: &'static str,
    behavior: Value,
    stream_only: bool,
    tools_only: bool,
}

fn faults() -> Vec<Fault> {
    let fail = |status: u16| json!({"type": "fail", "status": status, "times": 1});
    let stream = |kind: &str| json!({"type": "stream_fault", "kind": kind, "after_chunks": 1, "stall_seconds": 2, "times": 1});
    let f = |name, behavior, stream_only, tools_only| Fault {
        name,
        behavior,
        stream_only,
        tools_only,
    };
    vec![
        f("none", Value::Null, false, false),
        f(
            "429 retry-after",
            json!({"type": "fail", "status": 429, "retry_after": 0.3, "times": 1}),
            false,
            false,
        ),
        f("500", fail(500), false, false),
        f("503", fail(503), false, false),
        f("400", fail(400), false, false),
        f("401", fail(401), false, false),
        f(
            "delay",
            json!({"type": "delay", "seconds": 0.3, "times": 1}),
            false,
            false,
        ),
        f(
            "slow first token",
            json!({"type": "slow_first_token", "seconds": 0.2, "times": 1}),
            true,
            false,
        ),
        f("truncate", stream("truncate"), true, false),
        f("disconnect", stream("disconnect"), true, false),
        f("malformed", stream("malformed"), true, false),
        f("stall", stream("stall"), true, false),
        f(
            "tool: malformed arguments",
            json!({"type": "tool_fault", "kind": "malformed_arguments", "times": 1}),
            false,
            true,
        ),
        f(
            "tool: unknown tool",
            json!({"type": "tool_fault", "kind": "unknown_tool", "times": 1}),
            false,
            true,
        ),
    ]
}

struct Llmock {
    url: String,
    http: reqwest::Client,
}

impl Llmock {
    async fn post(&self, path: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn provider(&self, relay: &CountingRelay) -> OpenAiProvider {
        OpenAiProvider::builder(format!("{}/v1", relay.url()), "gpt-4o-mini")
            .api_key(API_KEY)
            .stream_idle_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

fn echo_tool() -> Tool {
    Tool::new(
        "echo",
        "Echoes its text",
        json!({"type": "object", "properties": {"text": {"type": "string"}}}),
        |args: Map<String, Value>| async move {
            Ok(args
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned())
        },
    )
}

/// What a run gave: its spend, the value or the error, and how many of its calls were cancelled
/// in flight (started, and neither finished, retried nor failed: a fan-out stops its other
/// samples when one fails for good).
struct Outcome {
    cost: TokenUsage,
    result: std::result::Result<String, Error>,
    cancelled: u64,
}

/// Runs `shape` on `provider`. Consensus samples carry seeds (sample i sends seed 7 + i), so
/// that their bodies differ: llmock groups requests with equal bodies as retries of one call.
async fn run(shape: Shape, provider: &dyn LlmProvider) -> Outcome {
    let started = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let (s, e) = (Arc::clone(&started), Arc::clone(&ended));
    let ctx = RunContext::new()
        .retry(
            RetryPolicy::new()
                .max_retries_count(2)
                .base_delay(Duration::from_millis(20))
                .max_delay(Duration::from_secs(2)),
        )
        .on_event(move |ev| match ev {
            Event::CallStarted { .. } => {
                s.fetch_add(1, Ordering::SeqCst);
            }
            Event::CallFinished { .. } | Event::CallRetried { .. } | Event::CallFailed { .. } => {
                e.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        });
    let prompt = "What is 3 + 4? Answer with the number.";
    let refine = || RefineLoop::new().target_score(0.9).max_iterations(2);
    let out = match shape {
        Shape::Consensus => Consensus::new()
            .samples(3)
            .seed(7)
            .run(provider, prompt, &ctx)
            .await
            .map(|r| (r.cost, r.value)),
        Shape::Refine => refine()
            .run(provider, prompt, &ctx)
            .await
            .map(|r| (r.cost, r.value)),
        Shape::React => ReactLoop::new()
            .tools([echo_tool()])
            .max_rounds(3)
            .run(provider, prompt, &ctx)
            .await
            .map(|r| (r.cost, r.value)),
        Shape::Pipe => Pipe::new()
            .step(Consensus::new().samples(3).seed(7))
            .step(refine())
            .run(provider, prompt, &ctx)
            .await
            .map(|r| (r.cost, r.value)),
    };
    let cancelled = started
        .load(Ordering::SeqCst)
        .saturating_sub(ended.load(Ordering::SeqCst));
    let (cost, result) = match out {
        Ok((cost, v)) => (cost, Ok(v)),
        Err(e) => (e.cost(), Err(e)),
    };
    Outcome {
        cost,
        result,
        cancelled,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_every_mode_every_pattern() {
    let Some(url) = common::server_url("EK_LLMOCK_URL", "scripts/start-llmock.sh") else {
        return;
    };
    let m = Llmock {
        url,
        http: reqwest::Client::new(),
    };
    let mut table = String::from(
        "| pattern | mode | fault | outcome | requests at llmock | calls reported | cancelled in flight |\n|---|---|---|---|---:|---:|---:|\n",
    );
    let mut cells = 0;
    for shape in [Shape::Consensus, Shape::Refine, Shape::React, Shape::Pipe] {
        for mode in [Mode::Complete, Mode::Stream] {
            for fault in faults() {
                if (fault.stream_only && mode != Mode::Stream)
                    || (fault.tools_only && shape != Shape::React)
                {
                    continue;
                }
                cells += 1;
                m.post("/_llmock/reset", json!({})).await;
                let mut behaviors = Vec::new();
                if !fault.behavior.is_null() {
                    behaviors.push(fault.behavior.clone());
                }
                if shape == Shape::React {
                    // One turn that calls the tool, then answers.
                    behaviors.push(json!({"type": "reply", "tool_calls": [
                        {"name": "echo", "arguments": {"text": "7"}}
                    ], "times": 1, "match": {"tools": true}}));
                }
                behaviors.push(json!({"type": "reply", "text": "7", "times": null}));
                m.post("/_llmock/scenario", json!({ "behaviors": behaviors }))
                    .await;

                let relay = CountingRelay::start(addr_of(&m.url)).await;
                let provider = m.provider(&relay);
                let streamed = Streamed(m.provider(&relay));
                let p: &dyn LlmProvider = match mode {
                    Mode::Complete => &provider,
                    Mode::Stream => &streamed,
                };
                let cell = format!("{shape:?} / {mode:?} / {}", fault.name);
                let Outcome {
                    cost,
                    result: outcome,
                    cancelled,
                } = tokio::time::timeout(Duration::from_secs(60), run(shape, p))
                    .await
                    .unwrap_or_else(|_| panic!("{cell}: no outcome within 60 s"));

                let journal = m.get("/_llmock/requests").await;
                let journal = journal["requests"].as_array().unwrap();
                let requests = journal.len() as u64;
                // Every request that reached llmock is a counted call, and every counted call
                // reached it: a call cancelled before its request was written is given back.
                assert_eq!(
                    relay.heads() as u64,
                    requests,
                    "{cell}: the relay saw {} requests, llmock {requests}",
                    relay.heads()
                );
                assert_eq!(
                    requests, cost.llm_calls,
                    "{cell}: llmock received {requests} requests, {} calls reported, {cancelled} \
                     cancelled ({outcome:?})",
                    cost.llm_calls
                );
                // Retryable faults end in the value; a 4xx ends in a `permanent` error.
                let permanent = matches!(fault.name, "400" | "401");
                match &outcome {
                    Ok(v) => assert!(!permanent && v == "7", "{cell}: {v:?}"),
                    Err(e) => assert!(permanent && e.is_permanent(), "{cell}: {e}"),
                }
                let shown = match &outcome {
                    Ok(v) => format!("value {:?}", v.chars().take(20).collect::<String>()),
                    Err(e) => {
                        assert!(
                            !e.to_string().contains(API_KEY),
                            "{cell}: the key leaked: {e}"
                        );
                        format!("error `{}`", e.kind().as_str())
                    }
                };
                let verdict = m.get("/_llmock/verdict").await;
                assert_eq!(
                    verdict["passed"], true,
                    "{cell}: llmock's verdict: {verdict:#}"
                );
                assert_eq!(
                    verdict["errors"], 0,
                    "{cell}: llmock's verdict: {verdict:#}"
                );
                // The fault fired: llmock counts its failures and stream faults; a broken tool
                // call shows as the observation the loop sent back (not the echo of "7").
                let injected = verdict["faults_injected"].as_u64().unwrap_or(0);
                if fault.behavior["type"] == "fail" || fault.behavior["type"] == "stream_fault" {
                    assert!(injected >= 1, "{cell}: the fault did not fire: {verdict:#}");
                }
                if fault.tools_only {
                    let tool_said: Vec<&str> = journal
                        .iter()
                        .flat_map(|r| r["body"]["messages"].as_array().into_iter().flatten())
                        .filter(|m| m["role"] == "tool")
                        .filter_map(|m| m["content"].as_str())
                        .collect();
                    assert!(
                        !tool_said.is_empty() && tool_said.iter().all(|c| *c != "7"),
                        "{cell}: the broken tool call was not reported back: {tool_said:?}"
                    );
                }
                writeln!(
                    table,
                    "| {shape:?} | {mode:?} | {} | {shown} | {requests} | {} | {cancelled} |",
                    fault.name, cost.llm_calls
                )
                .unwrap();
            }
        }
    }
    println!("{cells} cells\n{table}");
    assert!(cells >= 60, "{cells} cells");
}
