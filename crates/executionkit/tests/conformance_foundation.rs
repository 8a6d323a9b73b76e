//! Conformance scenarios of the foundation (reference §26), with OVERRIDES.md's expectations
//! where it lists them. Each test's name carries its scenario number.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::events::Event;
use executionkit::internals::parse::{parse_retry_after, parse_usage};
use executionkit::{
    Budget, ChatRequest, CostRates, Error, ErrorKind, LlmProvider, LlmResponse, Message,
    MockProvider, PatternResult, RetryPolicy, RunContext, StreamEvent, TerminationReason,
    TokenUsage, ToolCall, VotingStrategy,
};
use executionkit::{BudgetLedger, CostTracker};
use executionkit::{ChatStream, Usage};
use futures::StreamExt;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Test doubles

/// A provider that answers from a script of results (then `""` forever) and counts calls.
#[derive(Debug, Default)]
struct Scripted {
    script: Mutex<VecDeque<executionkit::Result<LlmResponse>>>,
    streams: Mutex<VecDeque<Vec<executionkit::Result<StreamEvent>>>>,
    calls: AtomicUsize,
    seen: Mutex<Vec<ChatRequest>>,
    secret: Option<String>,
}

impl Scripted {
    fn new(script: Vec<executionkit::Result<LlmResponse>>) -> Self {
        Self {
            script: Mutex::new(script.into()),
            ..Self::default()
        }
    }

    fn streaming(streams: Vec<Vec<executionkit::Result<StreamEvent>>>) -> Self {
        Self {
            streams: Mutex::new(streams.into()),
            ..Self::default()
        }
    }

    fn always(e: &Error) -> Self {
        Self::new((0..64).map(|_| Err(e.clone())).collect())
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &ChatRequest) -> executionkit::Result<LlmResponse> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(request.clone());
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Ok(LlmResponse::text("")))
    }

    fn stream(&self, request: ChatRequest) -> ChatStream {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(request);
        let items = self.streams.lock().unwrap().pop_front().unwrap_or_default();
        Box::pin(futures::stream::iter(items))
    }

    fn supports_streaming(&self) -> bool {
        true
    }

    fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }
}

fn provider_error() -> Error {
    Error::new(ErrorKind::Provider, "Provider request failed with HTTP 500")
}

fn user(text: &str) -> ChatRequest {
    ChatRequest::new(vec![Message::user(text)])
}

/// A context without retry waits, and the events it emits.
fn recording(ctx: RunContext) -> (RunContext, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let ctx = ctx.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    (ctx, events)
}

fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy::new()
        .max_retries_count(max_retries)
        .base_delay(Duration::ZERO)
}

fn started_attempts(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::CallStarted { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect()
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            Event::CallStarted { .. } => "started",
            Event::CallFinished { .. } => "finished",
            Event::CallRetried { .. } => "retried",
            Event::CallFailed { .. } => "failed",
            _ => "other",
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Types

#[test]
fn s001_token_usage_arithmetic() {
    let z = TokenUsage::default();
    assert_eq!((z.input_tokens, z.output_tokens, z.llm_calls), (0, 0, 0));
    let a = TokenUsage::new(10, 5, 1);
    let b = TokenUsage::new(20, 8, 2);
    assert_eq!(a + b, TokenUsage::new(30, 13, 3));
    assert_eq!(a, TokenUsage::new(10, 5, 1), "operands unchanged");
    assert_eq!(
        TokenUsage::new(10, 7, 3).checked_sub(TokenUsage::new(4, 2, 1)),
        Some(TokenUsage::new(6, 5, 2))
    );
    // OVERRIDES: u64 fields; the negative case is checked_sub → None, saturating_sub → zero.
    let small = TokenUsage::new(4, 2, 1);
    let big = TokenUsage::new(10, 7, 3);
    assert_eq!(small.checked_sub(big), None);
    assert_eq!(small.saturating_sub(big), TokenUsage::new(0, 0, 0));
    assert_eq!(
        a.to_string(),
        "TokenUsage(input_tokens=10, output_tokens=5, llm_calls=1)"
    );
    let j = serde_json::to_value(a).unwrap();
    assert_eq!(
        j,
        json!({"input_tokens": 10, "output_tokens": 5, "llm_calls": 1})
    );
}

#[test]
fn s002_pattern_result() {
    let r = PatternResult::new(42);
    assert_eq!(r.to_string(), "42");
    assert_eq!(r.score, None);
    assert_eq!(r.cost, TokenUsage::new(0, 0, 0));
    assert!(r.metadata.is_empty());
    // Immutability is Rust's: a result bound without `mut` cannot be written to (compile
    // time), so the reference's "writing into metadata fails" has no runtime form.
    assert_eq!(
        PatternResult::new("a").with_score(0.5),
        PatternResult::new("a").with_score(0.5)
    );
    assert_ne!(
        PatternResult::new("a").with_score(0.5),
        PatternResult::new("a").with_score(0.6)
    );
}

#[test]
fn s004_voting_strategy_and_termination_reason() {
    let e = "plurality".parse::<VotingStrategy>().unwrap_err();
    assert!(e.is_invalid_argument());
    assert!(e.message().contains("plurality"));
    assert_eq!(
        "majority".parse::<VotingStrategy>().unwrap(),
        VotingStrategy::Majority
    );
    assert_eq!(
        "unanimous".parse::<VotingStrategy>().unwrap(),
        VotingStrategy::Unanimous
    );
    // OVERRIDES: refine's termination reasons are these four strings.
    let names: Vec<&str> = [
        TerminationReason::TargetReached,
        TerminationReason::Converged,
        TerminationReason::MaxIterations,
        TerminationReason::BudgetExhausted,
    ]
    .iter()
    .map(|r| r.as_str())
    .collect();
    assert_eq!(
        names,
        [
            "target_reached",
            "converged",
            "max_iterations",
            "budget_exhausted"
        ]
    );
}

#[test]
fn s006_usage_field_precedence() {
    let u = |v: serde_json::Value| parse_usage(v.as_object().unwrap()).unwrap();
    assert_eq!(
        u(json!({"input_tokens": 5, "prompt_tokens": 99})).input_tokens,
        5
    );
    assert_eq!(
        u(json!({"input_tokens": 0, "prompt_tokens": 99})).input_tokens,
        0
    );
    assert_eq!(u(json!({"completion_tokens": 10})).output_tokens, 10);
    let t = u(json!({"prompt_tokens": 30, "completion_tokens": 15}));
    assert_eq!(t.input_tokens + t.output_tokens, 45);
}

#[test]
fn s007_usage_field_validation() {
    let err = |v: serde_json::Value| {
        let e = parse_usage(v.as_object().unwrap()).unwrap_err();
        assert!(e.is_provider(), "{e:?}");
        e.message().to_owned()
    };
    assert!(err(json!({"prompt_tokens": -1})).contains("cannot be negative"));
    assert!(err(json!({"prompt_tokens": true})).contains("must be an integer"));
    assert!(err(json!({"completion_tokens": "many"})).contains("integer"));
    assert!(err(json!({"input_tokens": 1_000_000_001_u64})).contains("unreasonably large"));
    assert!(err(json!({"completion_tokens": 2_000_000_000_u64})).contains("unreasonably large"));
}

#[test]
fn s008_was_truncated() {
    for (reason, truncated) in [("length", true), ("max_tokens", true), ("stop", false)] {
        let mut r = LlmResponse::text("x");
        r.choices[0].finish_reason = Some(reason.into());
        assert_eq!(r.was_truncated(), truncated, "{reason}");
    }
}

#[test]
fn s009_error_kinds_and_defaults() {
    let e = Error::rate_limited("x");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert!(e.is_rate_limited() && e.is_retryable());
    let e = Error::rate_limited("x").with_retry_after(Duration::from_secs(5));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    // Permanent is neither provider nor rate_limited, and is not retried.
    let p = Error::new(ErrorKind::Permanent, "no");
    assert!(p.is_permanent() && !p.is_provider() && !p.is_rate_limited() && !p.is_retryable());
    // Every error starts with zero cost and no metadata.
    for kind in ErrorKind::ALL {
        let e = Error::new(kind, "m");
        assert_eq!(e.kind(), kind);
        assert!(e.cost().is_zero());
        assert!(e.metadata().is_empty());
        assert_eq!(e.to_json()["kind"], kind.as_str());
    }
}

#[test]
fn s029_retry_after_parsing() {
    assert_eq!(parse_retry_after("30", 1.0), 30.0);
    assert_eq!(parse_retry_after("2.5", 1.0), 2.5);
    assert_eq!(parse_retry_after("0", 1.0), 0.0);
    assert_eq!(parse_retry_after("-5", 1.0), 0.0);
    let ahead = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    let s = parse_retry_after(&ahead, 1.0);
    assert!((115.0..=125.0).contains(&s), "{s}");
    assert_eq!(parse_retry_after("not-a-date-or-number", 1.0), 1.0);
    assert_eq!(parse_retry_after("??", 5.0), 5.0);
    for v in ["inf", "nan", "-inf"] {
        assert_eq!(parse_retry_after(v, 1.0), 1.0, "{v}");
    }
}

#[test]
fn s037_message_wire_shapes() {
    let v = |m: &Message| serde_json::to_value(m).unwrap();
    assert_eq!(
        v(&Message::system("s")),
        json!({"role": "system", "content": "s"})
    );
    assert_eq!(
        v(&Message::user("u")),
        json!({"role": "user", "content": "u"})
    );
    assert_eq!(
        v(&Message::assistant("hi")),
        json!({"role": "assistant", "content": "hi"})
    );
    assert_eq!(
        v(&Message::tool_result("tc1", "42")),
        json!({"role": "tool", "tool_call_id": "tc1", "content": "42"})
    );
    let call = ToolCall::new("tc1", "search", json!({"query": "hi"}));
    let turn = v(&Message::assistant_tool_calls("", vec![call]));
    let c = &turn["tool_calls"][0];
    assert_eq!(c["id"], "tc1");
    assert_eq!(c["type"], "function");
    assert_eq!(c["function"]["name"], "search");
    let args: serde_json::Value =
        serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"query": "hi"}));
    // OVERRIDES: a tool-call turn sends content "" (not null).
    assert_eq!(turn["content"], "");
}

// ---------------------------------------------------------------------------------------------
// Retry

#[test]
fn s038_retry_policy_defaults() {
    let p = RetryPolicy::default();
    assert_eq!(p.max_retries(), 3);
    assert_eq!(p.delay_cap(1), Duration::from_secs(1)); // base 1.0
    assert_eq!(p.delay_cap(2), Duration::from_secs(2)); // factor 2.0
    assert_eq!(p.max_delay_value(), Duration::from_secs(60));
    assert!(p.should_retry(&Error::rate_limited("x")));
    assert!(p.should_retry(&provider_error()));
    let e = RetryPolicy::new().try_max_retries(-1).unwrap_err();
    assert!(e.is_invalid_argument());
    assert!(e.message().contains("max_retries must be >= 0"));
}

#[test]
fn s039_should_retry() {
    let p = RetryPolicy::default();
    assert!(p.should_retry(&Error::rate_limited("x")));
    assert!(p.should_retry(&provider_error()));
    assert!(p.should_retry(&Error::new(ErrorKind::Transport, "Transport failure")));
    assert!(p.should_retry(&Error::new(ErrorKind::Timeout, "timed out")));
    assert!(!p.should_retry(&Error::new(ErrorKind::Permanent, "401")));
    assert!(!p.should_retry(&Error::invalid_argument("x", "bad")));
    assert!(!p.should_retry(&Error::cancelled()));
    let only = RetryPolicy::new().retry_on([ErrorKind::InvalidArgument]);
    assert!(only.should_retry(&Error::invalid_argument("x", "bad")));
    assert!(!only.should_retry(&Error::rate_limited("x")));
}

#[tokio::test]
async fn s041_retry_then_success() {
    let p = Scripted::new(vec![
        Err(provider_error()),
        Err(provider_error()),
        Ok(LlmResponse::text("ok")),
    ]);
    let (ctx, events) = recording(RunContext::new().retry(fast_retry(3)));
    let t = CostTracker::new();
    let r = ctx.complete(&p, user("q"), &t).await.unwrap();
    assert_eq!(r.content(), "ok");
    assert_eq!(p.calls(), 3);
    assert_eq!(started_attempts(&events.lock().unwrap()), [1, 2, 3]);
    assert_eq!(t.usage().llm_calls, 3);
}

#[tokio::test]
async fn s042_always_failing_gives_up_after_four_calls() {
    let p = Scripted::always(&provider_error());
    let ctx = RunContext::new().retry(fast_retry(3));
    let e = ctx
        .complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap_err();
    assert!(e.is_provider());
    assert_eq!(p.calls(), 4);
}

#[tokio::test]
async fn s043_calls_that_are_not_retried() {
    let t = CostTracker::new();
    // Permanent: one call.
    let p = Scripted::always(&Error::new(ErrorKind::Permanent, "HTTP 401"));
    let e = RunContext::new()
        .retry(fast_retry(3))
        .complete(&p, user("q"), &t)
        .await
        .unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(p.calls(), 1);
    // max_retries 0: success → 1 call; provider error → 1 call.
    let ctx = RunContext::new().retry(RetryPolicy::none());
    let p = Scripted::new(vec![Ok(LlmResponse::text("ok"))]);
    ctx.complete(&p, user("q"), &t).await.unwrap();
    assert_eq!(p.calls(), 1);
    let p = Scripted::always(&provider_error());
    assert!(
        ctx.complete(&p, user("q"), &t)
            .await
            .unwrap_err()
            .is_provider()
    );
    assert_eq!(p.calls(), 1);
    // Cancellation inside the call: one call, and it propagates.
    let p = Scripted::always(&Error::cancelled());
    let e = RunContext::new()
        .retry(fast_retry(3))
        .complete(&p, user("q"), &t)
        .await
        .unwrap_err();
    assert!(e.is_cancelled());
    assert_eq!(p.calls(), 1);
    // The request is forwarded as given.
    let p = MockProvider::new(["7"]);
    let req = user("3 + 4")
        .temperature(0.3)
        .max_tokens(12)
        .seed(9)
        .extra("y", 4);
    ctx.complete(&p, req.clone(), &t).await.unwrap();
    assert_eq!(p.last_call().unwrap().request, req);
}

#[tokio::test(start_paused = true)]
async fn s044_retry_after_is_capped_by_max_delay() {
    // OVERRIDES: Retry-After 5 with max_delay 1 → the first sleep is 1.0, then success.
    let p = Scripted::new(vec![
        Err(Error::rate_limited("HTTP 429").with_retry_after(Duration::from_secs(5))),
        Ok(LlmResponse::text("ok")),
    ]);
    let policy = RetryPolicy::new()
        .base_delay(Duration::ZERO)
        .max_delay(Duration::from_secs(1));
    let (ctx, events) = recording(RunContext::new().retry(policy));
    let start = tokio::time::Instant::now();
    let r = ctx
        .complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(r.content(), "ok");
    assert_eq!(p.calls(), 2);
    let delays: Vec<Duration> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::CallRetried { delay, kind, .. } => {
                assert_eq!(*kind, ErrorKind::RateLimited);
                Some(*delay)
            }
            _ => None,
        })
        .collect();
    assert_eq!(delays, [Duration::from_secs(1)]);
    // The paused clock advanced by exactly the reported sleep.
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn s044_retry_after_raises_a_shorter_jittered_delay() {
    // Retry-After 2 under max_delay 60 with base 0: the wait is the server's 2 s.
    let p = Scripted::new(vec![
        Err(Error::rate_limited("HTTP 429").with_retry_after(Duration::from_secs(2))),
        Ok(LlmResponse::text("ok")),
    ]);
    let (ctx, events) = recording(RunContext::new().retry(fast_retry(3)));
    ctx.complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap();
    assert!(events.lock().unwrap().iter().any(
        |e| matches!(e, Event::CallRetried { delay, .. } if *delay == Duration::from_secs(2))
    ));
}

// ---------------------------------------------------------------------------------------------
// Cost and budget

#[test]
fn s048_cost_estimate() {
    // 3e-6 and 15e-6 per token = 3 and 15 USD per million tokens.
    let r = CostRates::new(3.0, 15.0).unwrap();
    assert!((r.usd(&TokenUsage::new(1000, 500, 1)) - 0.0105).abs() < 1e-12);
    assert_eq!(
        r.usd(&TokenUsage::new(1000, 500, 1)),
        r.usd(&TokenUsage::new(1000, 500, 100))
    );
    assert_eq!(r.usd(&TokenUsage::default()), 0.0);
}

#[test]
fn s049_tracker_snapshots() {
    let t = CostTracker::new();
    t.add_usage(TokenUsage::new(5, 3, 1), None);
    let a = t.usage();
    let b = t.usage();
    assert_eq!(a, TokenUsage::new(5, 3, 1));
    assert_eq!(a, b);
    assert_eq!(t.usage(), a);
}

#[tokio::test]
async fn s051_budget_exhausted_before_dispatch() {
    // OVERRIDES: no sentinel; a step that starts with its calls used up fails before dispatch
    // with the limits and the tripped field in metadata and the spend so far as cost.
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_calls(1)));
    let ctx = RunContext::new().with_ledger(Arc::clone(&ledger));
    let p = MockProvider::new([LlmResponse::text("a").with_usage(0, 5)]);
    let first = CostTracker::new();
    ctx.complete(&p, user("q"), &first).await.unwrap();
    let second = CostTracker::new();
    let e = ctx.complete(&p, user("q"), &second).await.unwrap_err();
    assert!(e.is_budget_exhausted());
    assert!(
        e.message()
            .contains("LLM call budget exhausted before dispatch")
    );
    assert_eq!(
        e.metadata()["budget"],
        json!({"input_tokens": null, "output_tokens": null, "llm_calls": 1, "usd": null})
    );
    assert_eq!(e.metadata()["exhausted"], "llm_calls");
    assert!(e.cost().is_zero(), "this step spent nothing");
    assert_eq!(p.call_count(), 1);
    assert_eq!(ledger.spent(), TokenUsage::new(0, 5, 1));

    // An input-token limit already passed.
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_input_tokens(100)));
    ledger.reserve("m", 1, false).await.unwrap().settle(Usage {
        input_tokens: 500,
        output_tokens: 0,
        ..Usage::default()
    });
    let e = ledger.reserve("m", 1, false).await.unwrap_err();
    assert!(e.message().contains("Input token"));
    assert_eq!(e.metadata()["exhausted"], "input_tokens");
}

#[tokio::test]
async fn s052_spent_input_budget_blocks_dispatch() {
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_input_tokens(50)));
    ledger
        .reserve("scripted", 1, false)
        .await
        .unwrap()
        .settle(Usage {
            input_tokens: 100,
            output_tokens: 0,
            ..Usage::default()
        });
    let p = Scripted::new(vec![Ok(LlmResponse::text("never"))]);
    let e = RunContext::new()
        .with_ledger(ledger)
        .complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    assert!(e.message().contains("Input token"));
    assert_eq!(p.calls(), 0);
}

#[tokio::test]
async fn s053_every_attempt_counts_as_a_call() {
    let p = Scripted::always(&provider_error());
    let t = CostTracker::new();
    let e = RunContext::new()
        .retry(fast_retry(3))
        .complete(&p, user("q"), &t)
        .await
        .unwrap_err();
    assert!(e.is_provider());
    assert_eq!(t.usage().llm_calls, 4);
    assert_eq!(e.cost().llm_calls, 4, "the error carries the spend");
}

#[tokio::test]
async fn s054_call_budget_limits_retries() {
    let p = Scripted::always(&provider_error());
    let t = CostTracker::new();
    let e = RunContext::new()
        .budget(Budget::new().max_calls(1))
        .retry(fast_retry(3))
        .complete(&p, user("q"), &t)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    assert!(
        e.message().contains("before retry dispatch"),
        "{}",
        e.message()
    );
    assert_eq!(p.calls(), 1);
    assert_eq!(t.usage().llm_calls, 1);
    assert_eq!(e.cost().llm_calls, 1);

    let p = Scripted::always(&provider_error());
    let e = RunContext::new()
        .budget(Budget::new().max_calls(2))
        .retry(fast_retry(5))
        .complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(p.calls(), 2);
    assert_eq!(e.cost().llm_calls, 2);
}

#[tokio::test]
async fn s054_output_tokens_are_clamped_and_returned() {
    // OVERRIDES: a call reserves min(max_tokens, output left) and sends that as max_tokens.
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(10)));
    let ctx = RunContext::new().with_ledger(Arc::clone(&ledger));
    let p = MockProvider::new([LlmResponse::text("abc").with_usage(2, 4)]);
    ctx.complete(&p, user("q").max_tokens(64), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(p.last_call().unwrap().request.max_tokens, Some(10));
    ctx.complete(&p, user("q").max_tokens(64), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(p.last_call().unwrap().request.max_tokens, Some(6));
    assert_eq!(ledger.remaining().output_tokens, Some(2));
}

// ---------------------------------------------------------------------------------------------
// Events (the reference's trace events, as typed events)

#[tokio::test]
async fn s056_events_of_one_call() {
    let p = MockProvider::new([LlmResponse::text("a").with_usage(3, 1)]);
    let (ctx, events) = recording(RunContext::new());
    ctx.complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap();
    let ev = events.lock().unwrap().clone();
    assert_eq!(kinds(&ev), ["started", "finished"]);
    assert!(matches!(&ev[0], Event::CallStarted { call: 1, attempt: 1, model } if model == "mock"));
    match &ev[1] {
        Event::CallFinished {
            call,
            usage,
            spent,
            finish_reason,
            ..
        } => {
            assert_eq!(*call, 1);
            assert_eq!(*usage, TokenUsage::new(3, 1, 1));
            assert_eq!(spent.llm_calls, 1);
            assert_eq!(finish_reason.as_deref(), Some("stop"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn s057_secrets_never_reach_events_or_errors() {
    const LEAK: &str = "sk-ABCD1234efgh5678ijklSECRET";
    let p = MockProvider::new([format!("the key is {LEAK} keep it safe")]);
    let (ctx, events) = recording(RunContext::new());
    let r = ctx
        .complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap();
    assert!(
        r.content().contains(LEAK),
        "the caller's own response is untouched"
    );
    for e in events.lock().unwrap().iter() {
        assert!(!format!("{e:?}").contains(LEAK));
    }

    // A server error echoing the provider's key and a credential-shaped token.
    let key = "my-very-secret-key-123";
    let failing = Scripted {
        secret: Some(key.to_owned()),
        ..Scripted::always(
            &Error::new(
                ErrorKind::Permanent,
                format!("HTTP 401: bad key {key} (also {LEAK})"),
            )
            .with_metadata("detail", format!("Incorrect API key provided: {key}")),
        )
    };
    let (ctx, events) = recording(RunContext::new());
    let e = ctx
        .complete(&failing, user("q"), &CostTracker::new())
        .await
        .unwrap_err();
    for text in [
        e.to_string(),
        format!("{e:?}"),
        e.to_json().to_string(),
        format!("{:?}", events.lock().unwrap()),
    ] {
        assert!(!text.contains(key), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }
    assert!(e.message().contains("[REDACTED]"));
    assert!(e.is_permanent());
}

// ---------------------------------------------------------------------------------------------
// Checked streams

async fn drain(
    s: futures::stream::BoxStream<'_, executionkit::Result<StreamEvent>>,
) -> Vec<executionkit::Result<StreamEvent>> {
    s.collect().await
}

#[tokio::test]
async fn s059_stream_cost_after_draining() {
    let p = MockProvider::new(["hello world from the stream"]);
    let ctx = RunContext::new();
    let t = CostTracker::new();
    let s = ctx.stream(&p, user("q"), &t).await.unwrap();
    let items = drain(s).await;
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(t.usage().output_tokens, 5);
    assert_eq!(t.usage().llm_calls, 1);
}

#[tokio::test]
async fn s061_stream_counts_on_start_and_records_on_end() {
    let p = MockProvider::new(["one two three"]);
    let (ctx, events) = recording(RunContext::new());
    let t = CostTracker::new();
    let s = ctx.stream(&p, user("q"), &t).await.unwrap();
    assert_eq!(t.usage().llm_calls, 1);
    assert_eq!(t.usage().output_tokens, 0);
    assert_eq!(kinds(&events.lock().unwrap()), ["started"]);
    drain(s).await;
    assert!(t.usage().output_tokens > 0);
    assert_eq!(kinds(&events.lock().unwrap()), ["started", "finished"]);

    // A spent budget fails before the provider's stream is asked for.
    let p = MockProvider::new(["x"]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(0));
    let e = ctx.stream(&p, user("q"), &t).await.err().unwrap();
    assert!(e.is_budget_exhausted());
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn s062_stream_error_after_deltas_is_not_retried() {
    let delta = |s: &str| Ok(StreamEvent::TextDelta(s.to_owned()));
    let p = Scripted::streaming(vec![vec![
        delta("a"),
        delta("b"),
        delta("c"),
        Err(provider_error()),
    ]]);
    let (ctx, events) = recording(RunContext::new().retry(fast_retry(3)));
    let t = CostTracker::new();
    let items = drain(ctx.stream(&p, user("q"), &t).await.unwrap()).await;
    let texts: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Ok(StreamEvent::TextDelta(s)) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["a", "b", "c"]);
    let last = items.last().unwrap().as_ref().unwrap_err();
    assert!(last.is_provider());
    assert_eq!(last.cost().llm_calls, 1);
    assert_eq!(p.calls(), 1, "no retry once a delta was delivered");
    assert_eq!(kinds(&events.lock().unwrap()), ["started", "failed"]);
}

#[tokio::test]
async fn s063_stream_is_retried_before_the_first_delta() {
    // OVERRIDES: streaming retries are allowed before the first delta, never after.
    let p = Scripted::streaming(vec![
        vec![Err(Error::new(ErrorKind::Transport, "Transport failure"))],
        vec![
            Ok(StreamEvent::TextDelta("ok".into())),
            Ok(StreamEvent::Finished(
                LlmResponse::text("ok").with_usage(2, 1),
            )),
        ],
    ]);
    let (ctx, events) = recording(RunContext::new().retry(fast_retry(3)));
    let t = CostTracker::new();
    let items = drain(ctx.stream(&p, user("q"), &t).await.unwrap()).await;
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(p.calls(), 2);
    assert_eq!(t.usage(), TokenUsage::new(2, 1, 2));
    assert_eq!(
        kinds(&events.lock().unwrap()),
        ["started", "retried", "started", "finished"]
    );
}

// ---------------------------------------------------------------------------------------------
// MockProvider and events

#[tokio::test]
async fn s064_mock_streaming_and_defaults() {
    let p = MockProvider::new(["héllo"]);
    let chunks: Vec<String> = p
        .stream(user("q"))
        .filter_map(|e| async move {
            match e.unwrap() {
                StreamEvent::TextDelta(s) => Some(s),
                _ => None,
            }
        })
        .collect()
        .await;
    assert_eq!(chunks, ["h", "é", "l", "l", "o"]);

    let p = MockProvider::new(["one two three"]);
    let last = p
        .stream(user("q"))
        .collect::<Vec<_>>()
        .await
        .pop()
        .unwrap()
        .unwrap();
    match last {
        StreamEvent::Finished(r) => assert_eq!(r.usage.output_tokens, 3),
        other => panic!("{other:?}"),
    }

    let p = MockProvider::default();
    let r = p.complete(&user("q")).await.unwrap();
    assert_eq!(r.content(), "");
    assert_eq!(p.call_count(), 1);
    let last = p.last_call().unwrap();
    assert!(!last.stream);
    assert!(last.request.extra.is_empty());
}

#[tokio::test]
async fn s188_events_reach_each_subscriber_once() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    let ctx = RunContext::new().on_event(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let p = MockProvider::new(["a"]);
    ctx.complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "started + finished, once each"
    );
    // No subscriber: emitting is a no-op and the call works.
    let r = RunContext::new()
        .complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(r.content(), "a");
    // Clones of a context share the subscriber; each event still arrives once.
    let ctx2 = ctx.clone();
    ctx2.complete(&p, user("q"), &CostTracker::new())
        .await
        .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn s189_mock_provider_cycles_records_and_fails() {
    let p = MockProvider::new(["r1", "r2"]);
    let mut got = Vec::new();
    for i in 0..3 {
        let req = user(&format!("q{i}")).temperature(0.5).max_tokens(7);
        got.push(p.complete(&req).await.unwrap().content().to_owned());
    }
    assert_eq!(got, ["r1", "r2", "r1"]);
    let calls = p.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].request.messages, vec![Message::user("q2")]);
    assert_eq!(calls[2].request.temperature, Some(0.5));
    assert_eq!(calls[2].request.max_tokens, Some(7));
    assert!(calls[2].request.tools.is_empty());

    let p = MockProvider::failing(Error::new(ErrorKind::Permanent, "nope"));
    for _ in 0..2 {
        assert!(p.complete(&user("q")).await.unwrap_err().is_permanent());
    }
    assert_eq!(p.call_count(), 2, "calls are recorded before failing");
    assert!(p.supports_tools());
    let _: &dyn LlmProvider = &p;
}

/// Answers but cannot stream.
#[derive(Debug)]
struct NoStream;

#[async_trait]
impl LlmProvider for NoStream {
    fn model(&self) -> &str {
        "no-stream"
    }
    async fn complete(&self, _: &ChatRequest) -> executionkit::Result<LlmResponse> {
        Ok(LlmResponse::text("ok"))
    }
}

#[tokio::test]
async fn s061_stream_needs_a_streaming_provider() {
    let t = CostTracker::new();
    let ctx = RunContext::new().retry(fast_retry(3));
    let e = ctx.stream(&NoStream, user("q"), &t).await.err().unwrap();
    assert!(e.is_invalid_argument(), "{e:?}");
    assert!(t.usage().is_zero(), "nothing was reserved or sent");
}

#[tokio::test]
async fn s058_one_call_finished_event_per_llm_call_across_patterns() {
    let (ctx, events) = recording(RunContext::new());
    let p = MockProvider::new([r#"{"ok": true}"#]);
    let r = executionkit::StructuredValue::new()
        .run(&p, "Is it ok?", &ctx)
        .await
        .unwrap();
    assert_eq!(r.value, json!({"ok": true}));
    let p = MockProvider::new(["answer"]);
    let r = executionkit::RefineLoop::new()
        .evaluator(|_text: String| async { Ok(1.0) })
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    assert_eq!(r.value, "answer");
    let ev = events.lock().unwrap();
    let finished = ev
        .iter()
        .filter(|e| matches!(e, Event::CallFinished { .. }))
        .count();
    assert_eq!(finished, 2);
}

// ---------------------------------------------------------------------------------------------
// Parallel helpers

/// Sets its flag when dropped: observes cancellation.
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn s066_gather_strict() {
    use executionkit::gather_strict;
    type Task = futures::future::BoxFuture<'static, executionkit::Result<u64>>;
    let sleepy = |ms: u64, v: u64| -> Task {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(v)
        })
    };
    let failing = |ms: u64, msg: &'static str| -> Task {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Err(Error::new(ErrorKind::Provider, msg))
        })
    };
    // Results in input order, whatever the finishing order.
    let out = gather_strict(vec![sleepy(30, 1), sleepy(10, 2), sleepy(20, 3)], 3)
        .await
        .unwrap();
    assert_eq!(out, [1, 2, 3]);
    // One failure among successes: that error, unwrapped; the slow sibling is cancelled.
    let cancelled = Arc::new(AtomicUsize::new(0));
    let guard = DropFlag(Arc::clone(&cancelled));
    let slow: Task = Box::pin(async move {
        let _g = guard;
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(9)
    });
    let e = gather_strict(vec![sleepy(1, 1), failing(5, "boom"), slow], 3)
        .await
        .unwrap_err();
    assert_eq!(e.message(), "boom");
    assert_eq!(cancelled.load(Ordering::SeqCst), 1);
    // Two or three failures: one error (OVERRIDES), the first to happen.
    let e = gather_strict(vec![failing(2, "first"), failing(1, "second")], 2)
        .await
        .unwrap_err();
    assert_eq!(e.message(), "second");
    let e = gather_strict(vec![failing(3, "a"), failing(2, "b"), failing(1, "c")], 3)
        .await
        .unwrap_err();
    assert!(e.is_provider());
    // A limit of 1 over 5 tasks: never more than one in flight.
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks = (0..5_u64).map(|i| {
        let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
        async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Error>(i)
        }
    });
    assert_eq!(gather_strict(tasks, 1).await.unwrap(), [0, 1, 2, 3, 4]);
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    // Empty input, and the limit checked even then.
    assert!(
        gather_strict(Vec::<Task>::new(), 2)
            .await
            .unwrap()
            .is_empty()
    );
    let e = gather_strict(Vec::<Task>::new(), 0).await.unwrap_err();
    assert!(e.message().contains("max_concurrency must be >= 1"));
}

#[tokio::test(start_paused = true)]
async fn s067_dropping_gather_resilient_cancels_its_tasks() {
    use executionkit::gather_resilient;
    let dropped = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let tasks = (0..2).map(|_| {
        let guard = DropFlag(Arc::clone(&dropped));
        let finished = Arc::clone(&finished);
        async move {
            let _g = guard;
            tokio::time::sleep(Duration::from_secs(10)).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(())
        }
    });
    let r = tokio::time::timeout(Duration::from_millis(10), gather_resilient(tasks, 10)).await;
    assert!(r.is_err(), "the caller sees the cancellation");
    assert_eq!(dropped.load(Ordering::SeqCst), 2, "both tasks were dropped");
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    // Without cancellation each slot holds its own result.
    let out = gather_resilient(
        vec![
            Box::pin(async { Ok(1) })
                as futures::future::BoxFuture<'static, executionkit::Result<i32>>,
            Box::pin(async { Err(Error::cancelled()) }),
        ],
        2,
    )
    .await
    .unwrap();
    assert_eq!(*out[0].as_ref().unwrap(), 1);
    assert!(out[1].as_ref().unwrap_err().is_cancelled());
}
