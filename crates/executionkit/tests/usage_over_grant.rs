//! Usage above the grant (OVERRIDES.md "Budget"): a server may report more output tokens than
//! the `max_tokens` it was sent. The usage is recorded as reported, flagged in the call's event
//! and in the result's (or error's) `metadata.usage_over_grant`, and once a limit is passed
//! nothing more is dispatched. A request always carries the exact `max_tokens` it reserved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::WithCallOptions as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::CostTracker;
use executionkit::events::Event;
use executionkit::{
    Budget, ChatRequest, Consensus, Error, ErrorKind, LlmProvider, LlmResponse, MapReduce, Message,
    MockProvider, OpenAiProvider, Pipe, ReactLoop, RefineLoop, Result, RetryPolicy, RunContext,
    TokenUsage, UsageOverGrant, structured,
};
use futures::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A reply reporting `output` output tokens (and 5 input tokens).
fn reply(text: &str, output: u64) -> LlmResponse {
    LlmResponse::text(text).with_usage(5, output)
}

/// A context without retries that records every event.
fn recording(ctx: RunContext) -> (RunContext, Arc<Mutex<Vec<Event>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let ctx = ctx
        .retry(RetryPolicy::none())
        .on_event(move |e| s.lock().unwrap().push(e.clone()));
    (ctx, seen)
}

/// `usage_over_grant` of every `CallFinished`, in order.
fn over_grant_flags(events: &[Event]) -> Vec<Option<u64>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::CallFinished {
                usage_over_grant, ..
            } => Some(*usage_over_grant),
            _ => None,
        })
        .collect()
}

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

#[tokio::test]
async fn the_event_flags_the_excess_and_the_usage_is_as_reported() {
    let p = MockProvider::new([reply("a", 50), reply("b", 10)]);
    let (ctx, seen) = recording(RunContext::new());
    let t = CostTracker::new();
    ctx.complete(&p, hi().max_tokens(10), &t).await.unwrap();
    ctx.complete(&p, hi().max_tokens(10), &t).await.unwrap();
    let events = seen.lock().unwrap().clone();
    assert_eq!(over_grant_flags(&events), [Some(40), None]);
    match &events[1] {
        Event::CallFinished { usage, spent, .. } => {
            assert_eq!(*usage, TokenUsage::new(5, 50, 1)); // as reported, not clamped to 10
            assert_eq!(spent.output_tokens, 50);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.usage(), TokenUsage::new(10, 60, 2));
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(10, 60, 2));
    assert_eq!(
        t.over_grant(),
        UsageOverGrant {
            calls: 1,
            output_tokens: 40
        }
    );
}

#[tokio::test]
async fn the_grant_is_the_trimmed_max_tokens_times_the_choices() {
    // The budget trims 64 to 30 output tokens; the server reports 45: 15 over.
    let p = MockProvider::new([reply("a", 45)]);
    let (ctx, seen) = recording(RunContext::new().budget(Budget::new().max_output_tokens(30)));
    ctx.complete(&p, hi().max_tokens(64), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(p.last_call().unwrap().request.max_tokens, Some(30));
    assert_eq!(over_grant_flags(&seen.lock().unwrap()), [Some(15)]);

    // Two choices of up to 10 each: 20 granted, 20 reported is within the grant.
    let p = MockProvider::new([reply("a", 12), reply("b", 8)]).with_n_support();
    let (ctx, seen) = recording(RunContext::new());
    ctx.complete(&p, hi().max_tokens(10).n(2), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(over_grant_flags(&seen.lock().unwrap()), [None]);
}

#[tokio::test]
async fn a_consensus_result_carries_the_excess_in_its_metadata() {
    let p = MockProvider::new([reply("Paris", 10), reply("Paris", 25), reply("Lyon", 12)]);
    let c = Consensus::new()
        .samples(3)
        .max_tokens(10)
        .max_concurrency(1);
    let r = c.run(&p, "q", &RunContext::new()).await.unwrap();
    assert_eq!(r.value, "Paris");
    assert_eq!(r.cost, TokenUsage::new(15, 47, 3));
    assert_eq!(
        r.metadata["usage_over_grant"],
        json!({"calls": 2, "output_tokens": 17})
    );
    assert_eq!(r.to_json()["metadata"]["usage_over_grant"]["calls"], 2);

    // Within the grant: no key, so `ek --json` output is unchanged.
    let p = MockProvider::new([reply("Paris", 10)]);
    let r = c.run(&p, "q", &RunContext::new()).await.unwrap();
    assert!(
        !r.metadata.contains_key("usage_over_grant"),
        "{:?}",
        r.metadata
    );
}

#[tokio::test]
async fn a_pipe_sums_the_excess_of_every_step() {
    // Step 1: one call 30 over. Step 2 (the last): within its grant.
    let p = MockProvider::new([reply("draft", 40), reply("final", 3)]);
    let pipe = Pipe::new()
        .step(Consensus::new().samples(1).max_tokens(10))
        .step(Consensus::new().samples(1).max_tokens(10));
    let r = pipe.run(&p, "task", &RunContext::new()).await.unwrap();
    assert_eq!(r.value, "final");
    assert_eq!(
        r.metadata["usage_over_grant"],
        json!({"calls": 1, "output_tokens": 30})
    );
    assert_eq!(
        r.metadata["step_metadata"][0]["usage_over_grant"],
        json!({"calls": 1, "output_tokens": 30})
    );
    assert!(
        r.metadata["step_metadata"][1]
            .get("usage_over_grant")
            .is_none()
    );

    // Both steps over: the pipe's is the sum; a nested pipe's sum adds in too.
    let p = MockProvider::new([reply("a", 15), reply("b", 17)]);
    let inner = Pipe::new().step(Consensus::new().samples(1).max_tokens(10));
    let pipe = Pipe::new()
        .step(Consensus::new().samples(1).max_tokens(10))
        .step(inner);
    let r = pipe.run(&p, "task", &RunContext::new()).await.unwrap();
    assert_eq!(
        r.metadata["usage_over_grant"],
        json!({"calls": 2, "output_tokens": 12})
    );

    // Nothing over: no key.
    let p = MockProvider::new([reply("a", 1)]);
    let r = Pipe::new()
        .step(Consensus::new().samples(2).max_tokens(10))
        .run(&p, "task", &RunContext::new())
        .await
        .unwrap();
    assert!(!r.metadata.contains_key("usage_over_grant"));
}

#[tokio::test]
async fn every_pattern_carries_the_excess() {
    let ctx = RunContext::new();
    let over =
        |calls: u64, output_tokens: u64| json!({"calls": calls, "output_tokens": output_tokens});

    // Refine: the judge is granted 16 tokens and reports 30.
    let p = MockProvider::new([reply("draft", 1), reply("9", 30)]);
    let r = RefineLoop::new()
        .target_score(0.9)
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    assert_eq!(r.metadata["usage_over_grant"], over(1, 14));

    // Map-reduce: two maps and the reduce, granted 10 each.
    let p = MockProvider::new([reply("x", 11), reply("y", 1), reply("z", 12)]);
    let items = vec!["a".to_owned(), "b".to_owned()];
    let r = MapReduce::new()
        .map_template("Summarise: {item}")
        .reduce_template("Combine: {mapped_outputs}")
        .max_tokens(10)
        .max_concurrency(1)
        .run(&p, &items, &ctx)
        .await
        .unwrap();
    assert_eq!(r.metadata["usage_over_grant"], over(2, 3));

    // Structured, on success and on failure.
    let p = MockProvider::new([reply("[2, 3]", 25)]);
    let r = structured::<Vec<i32>>()
        .max_tokens(10)
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    assert_eq!(r.metadata["usage_over_grant"], over(1, 15));
    let p = MockProvider::new([reply("no", 25)]);
    let e = structured::<Vec<i32>>()
        .max_tokens(10)
        .max_repairs(0)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_parse());
    assert_eq!(e.metadata()["usage_over_grant"], over(1, 15));

    // React.
    let p = MockProvider::new([reply("done", 25)]);
    let r = ReactLoop::new()
        .max_tokens(10)
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    assert_eq!(r.metadata["usage_over_grant"], over(1, 15));
}

#[tokio::test]
async fn once_the_output_limit_is_passed_nothing_more_is_dispatched() {
    // 100 output tokens; each sample asks 20. The first reply reports 150: the limit is passed,
    // so the four other samples are refused before dispatch.
    let p = MockProvider::new([reply("a", 150), reply("a", 1)]);
    let (ctx, seen) = recording(RunContext::new().budget(Budget::new().max_output_tokens(100)));
    let e = Consensus::new()
        .samples(5)
        .max_tokens(20)
        .max_concurrency(1)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    assert_eq!(e.metadata()["exhausted"], "output_tokens");
    assert_eq!(p.call_count(), 1);
    assert_eq!(e.cost(), TokenUsage::new(5, 150, 1));
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(5, 150, 1));
    // The error carries the excess: granted 20, reported 150.
    assert_eq!(
        e.metadata()["usage_over_grant"],
        json!({"calls": 1, "output_tokens": 130})
    );
    assert_eq!(e.to_json()["metadata"]["usage_over_grant"]["calls"], 1);
    let finished = over_grant_flags(&seen.lock().unwrap());
    assert_eq!(finished, [Some(130)]);

    // Later patterns on the same run are refused too.
    let e = Consensus::new()
        .samples(1)
        .max_tokens(1)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(p.call_count(), 1);
    // This pattern's own calls stayed within their grants: no key on its error.
    assert!(e.metadata().get("usage_over_grant").is_none());
}

/// Holds the first `outputs.len()` calls until `together` of them are in flight, then answers
/// call `i` with `input` input and `outputs[i]` output tokens. With `fail_others`, every call
/// after the first instead fails (retryably) once the first has answered.
#[derive(Debug)]
struct Together {
    calls: AtomicUsize,
    gate: tokio::sync::Barrier,
    first_done: tokio::sync::Notify,
    input: u64,
    outputs: Vec<u64>,
    fail_others: bool,
}

impl Together {
    fn new(together: usize, input: u64, outputs: Vec<u64>, fail_others: bool) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            gate: tokio::sync::Barrier::new(together),
            first_done: tokio::sync::Notify::new(),
            input,
            outputs,
            fail_others,
        }
    }

    fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LlmProvider for Together {
    fn model(&self) -> &str {
        "m"
    }

    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        let i = self.calls.fetch_add(1, Ordering::SeqCst);
        if i < self.outputs.len() {
            self.gate.wait().await;
        }
        if i == 0 {
            self.first_done.notify_one();
        } else if self.fail_others {
            self.first_done.notified().await;
            return Err(Error::new(ErrorKind::Provider, "HTTP 500"));
        }
        let output = self.outputs.get(i).copied().unwrap_or(1);
        Ok(LlmResponse::text("a").with_usage(self.input, output))
    }
}

#[tokio::test]
async fn calls_in_flight_finish_but_no_new_call_starts() {
    // Concurrency 3 with 3 x 20 reserved of 100: all three go out together. The first reports
    // 150; the two others finish, and samples 4 and 5 are refused at once.
    let p = Together::new(3, 5, vec![150, 1, 1], false);
    let ctx = RunContext::new()
        .budget(Budget::new().max_output_tokens(100))
        .retry(RetryPolicy::none());
    let e = Consensus::new()
        .samples(5)
        .max_tokens(20)
        .max_concurrency(3)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    assert_eq!(e.metadata()["exhausted"], "output_tokens");
    assert_eq!(p.count(), 3);
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(15, 152, 3));
    assert_eq!(e.cost().llm_calls, 3);
    assert_eq!(
        e.metadata()["usage_over_grant"],
        json!({"calls": 1, "output_tokens": 130})
    );
}

#[tokio::test]
async fn a_pipe_error_carries_the_excess_of_earlier_steps() {
    // Step 1 passes the output limit; step 2 is refused before dispatch.
    let p = MockProvider::new([reply("draft", 500)]);
    let ctx = RunContext::new().budget(Budget::new().max_output_tokens(100));
    let e = Pipe::new()
        .step(Consensus::new().samples(1).max_tokens(50))
        .step(Consensus::new().samples(1).max_tokens(50))
        .run(&p, "task", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    assert_eq!(e.metadata()["failed_step"], 1);
    assert_eq!(p.call_count(), 1);
    assert_eq!(e.cost(), TokenUsage::new(5, 500, 1));
    assert_eq!(
        e.metadata()["usage_over_grant"],
        json!({"calls": 1, "output_tokens": 450})
    );
    assert_eq!(
        e.metadata()["step_costs"],
        json!([
            {"input_tokens": 5, "output_tokens": 500, "llm_calls": 1},
            {"input_tokens": 0, "output_tokens": 0, "llm_calls": 0}
        ])
    );
}

#[tokio::test]
async fn a_passed_input_limit_refuses_the_retry_too() {
    // Both samples go out together; the first reports 150 input tokens of a 100 limit (the
    // soft limit), then the second fails with a retryable error: its retry is refused.
    let p = Together::new(2, 150, vec![1, 1], true);
    let ctx = RunContext::new()
        .budget(Budget::new().max_input_tokens(100))
        .retry(RetryPolicy::new().base_delay(Duration::ZERO));
    let e = Consensus::new()
        .samples(2)
        .max_concurrency(2)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    assert_eq!(e.metadata()["exhausted"], "input_tokens");
    assert!(e.message().contains("before retry dispatch"), "{e}");
    assert_eq!(p.count(), 2);
    assert_eq!(e.cost(), TokenUsage::new(150, 1, 2));
    // Input past its limit is the soft limit, not usage over a grant.
    assert!(e.metadata().get("usage_over_grant").is_none());
}

#[tokio::test]
async fn a_request_without_max_tokens_sends_its_reservation() {
    let t = CostTracker::new();
    // Unlimited: the default reservation, 4096, is what is sent.
    let p = MockProvider::new(["a"]);
    RunContext::new().complete(&p, hi(), &t).await.unwrap();
    assert_eq!(p.last_call().unwrap().request.max_tokens, Some(4096));
    // An output limit: what is left is reserved and sent.
    let ctx = RunContext::new().budget(Budget::new().max_output_tokens(100));
    ctx.complete(&p, hi(), &t).await.unwrap();
    assert_eq!(p.last_call().unwrap().request.max_tokens, Some(100));
    // A request's own max_tokens within the limit is sent unchanged.
    ctx.complete(&p, hi().max_tokens(7), &t).await.unwrap();
    assert_eq!(p.last_call().unwrap().request.max_tokens, Some(7));
    // Streams too.
    let unlimited = RunContext::new();
    let s = unlimited.stream(&p, hi(), &t).await.unwrap();
    let _: Vec<_> = s.collect().await;
    let last = p.last_call().unwrap();
    assert!(last.stream);
    assert_eq!(last.request.max_tokens, Some(4096));
}

const PATH: &str = "/v1/chat/completions";

async fn server_reporting(completion_tokens: u64) -> MockServer {
    let server = MockServer::start().await;
    let body = json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": completion_tokens}
    });
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    server
}

async fn sent_max_tokens(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["max_tokens"].clone())
        .collect()
}

#[tokio::test]
async fn on_the_wire_max_tokens_is_the_reservation_not_the_providers_default() {
    let server = server_reporting(1).await;
    let p = OpenAiProvider::builder(format!("{}/v1", server.uri()), "m")
        .default_max_tokens(321)
        .build()
        .unwrap();
    let t = CostTracker::new();
    RunContext::new().complete(&p, hi(), &t).await.unwrap();
    let ctx = RunContext::new().budget(Budget::new().max_output_tokens(100));
    ctx.complete(&p, hi(), &t).await.unwrap();
    ctx.complete(&p, hi().max_tokens(9), &t).await.unwrap();
    assert_eq!(
        sent_max_tokens(&server).await,
        [json!(4096), json!(100), json!(9)]
    );
}

#[tokio::test]
async fn on_the_wire_usage_over_the_grant_is_flagged_and_stops_the_run() {
    // Granted 40, the server reports 500 of a 100-token limit: the next call is never sent.
    let server = server_reporting(500).await;
    let p = OpenAiProvider::builder(format!("{}/v1", server.uri()), "m")
        .build()
        .unwrap();
    let (ctx, seen) = recording(RunContext::new().budget(Budget::new().max_output_tokens(100)));
    let t = CostTracker::new();
    ctx.complete(&p, hi().max_tokens(40), &t).await.unwrap();
    let e = ctx.complete(&p, hi().max_tokens(40), &t).await.unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(e.metadata()["exhausted"], "output_tokens");
    assert_eq!(
        e.metadata()["usage_over_grant"],
        json!({"calls": 1, "output_tokens": 460})
    );
    assert_eq!(sent_max_tokens(&server).await, [json!(40)]);
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(3, 500, 1));
    assert_eq!(over_grant_flags(&seen.lock().unwrap()), [Some(460)]);
}
