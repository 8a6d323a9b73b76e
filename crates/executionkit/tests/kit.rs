//! Conformance scenarios 143–148 (Kit) with OVERRIDES.md's expectations: usage includes failed
//! runs, rate limits apply per LLM call, streaming usage lands in the session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;
use executionkit::Kit;
use executionkit::MapReduce;
use executionkit::RateLimited;
use executionkit::ReactLoop;
use executionkit::Tool;
use executionkit::{
    Budget, ChatRequest, Choice, Consensus, Error, ErrorKind, LlmProvider, LlmResponse, Message,
    MockProvider, Pipe, RefineLoop, Result, RetryPolicy, Role, RunContext, TokenUsage, ToolCall,
    WithCallOptions,
};
use futures::{FutureExt, StreamExt};
use governor::Quota;
use serde_json::json;

fn tool_round(id: &str) -> LlmResponse {
    LlmResponse {
        choices: vec![Choice {
            content: String::new(),
            tool_calls: vec![ToolCall::new(id, "echo", json!({"text": "x"}))],
            finish_reason: Some("tool_calls".into()),
            logprobs: None,
        }],
        ..LlmResponse::default()
    }
    .with_usage(5, 1)
}

fn echo() -> Tool {
    Tool::new("echo", "echo", json!({"type": "object"}), |a| async move {
        Ok(a.get("text")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned())
    })
}

/// A provider that can neither call tools nor stream.
#[derive(Debug)]
struct Plain(MockProvider);

#[async_trait]
impl LlmProvider for Plain {
    fn model(&self) -> &str {
        "plain"
    }
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        self.0.complete(request).await
    }
}

#[tokio::test]
async fn s143_usage_accumulates_across_dispatches() {
    let p = MockProvider::new([LlmResponse::text("a").with_usage(10, 5)]);
    let kit = Kit::new(p.clone());
    assert_eq!(kit.usage(), TokenUsage::default());
    let r1 = kit
        .consensus("prompt", &Consensus::new().samples(2))
        .await
        .unwrap();
    assert_eq!(r1.cost, TokenUsage::new(20, 10, 2));
    let r2 = kit
        .consensus("prompt", &Consensus::new().samples(3))
        .await
        .unwrap();
    assert_eq!(r2.cost, TokenUsage::new(30, 15, 3));
    assert_eq!(kit.usage(), TokenUsage::new(50, 25, 5));

    // The pattern's options reach the provider unchanged.
    let r = kit
        .react(
            "prompt",
            &ReactLoop::new()
                .max_rounds(4)
                .temperature(0.1)
                .tools([echo()]),
        )
        .await
        .unwrap();
    assert_eq!(r.value, "a");
    assert_eq!(p.last_call().unwrap().request.temperature, Some(0.1));
    assert_eq!(p.last_call().unwrap().request.tools[0].name, "echo");
    assert_eq!(kit.usage(), TokenUsage::new(60, 30, 6));

    let quiet = Kit::new(p).track_cost(false);
    let _ = quiet
        .consensus("prompt", &Consensus::new().samples(2))
        .await
        .unwrap();
    assert_eq!(quiet.usage(), TokenUsage::default());
}

#[tokio::test]
async fn s144_failed_runs_count_and_patterns_report_their_calls() {
    let kit = Kit::new(MockProvider::new(["x"]));
    let err = kit
        .track(async {
            Err::<executionkit::PatternResult<String>, _>(
                Error::new(ErrorKind::BudgetExhausted, "LLM call budget exhausted")
                    .with_cost(TokenUsage::new(12, 4, 2)),
            )
        })
        .await
        .unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(kit.usage(), TokenUsage::new(12, 4, 2));

    // A real budget failure mid-run: its spend lands in the session.
    let kit = Kit::new(MockProvider::new([tool_round("t")]))
        .context(RunContext::new().budget(Budget::new().max_calls(2)));
    let err = kit
        .react("go", &ReactLoop::new().tools([echo()]))
        .await
        .unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(kit.usage(), TokenUsage::new(10, 2, 2));

    let kit = Kit::new(MockProvider::new(["the answer"; 5]));
    let r = kit
        .consensus("q", &Consensus::new().samples(5))
        .await
        .unwrap();
    assert_eq!(r.value, "the answer");
    assert_eq!(kit.usage().llm_calls, 5);

    let kit = Kit::new(MockProvider::new([
        "summary_x",
        "summary_y",
        "final_answer",
    ]));
    let r = kit
        .map_reduce(
            &["a".to_owned(), "b".to_owned()],
            &MapReduce::new()
                .map_template("Summarise: {item}")
                .reduce_template("Combine: {mapped_outputs}")
                .max_concurrency(1),
        )
        .await
        .unwrap();
    assert_eq!(r.value, "final_answer");
    assert_eq!(r.metadata["map_count"], 2);
    assert_eq!(r.metadata["total_calls"], 3);
    assert_eq!(kit.usage().llm_calls, 3);

    let kit = Kit::new(MockProvider::new(["hi", "HI"]));
    let r = kit
        .pipe("hi", &Pipe::new().step(Consensus::new().samples(2)))
        .await
        .unwrap();
    assert_eq!(r.cost.llm_calls, 2);
    assert_eq!(kit.usage().llm_calls, 2);
}

#[tokio::test]
async fn s146_failed_turns_leave_the_conversation_alone() {
    let p = MockProvider::new([LlmResponse::text("first answer"), tool_round("t")]);
    let kit = Kit::new(p.clone())
        .context(RunContext::new().budget(Budget::new().max_calls(2)))
        .with_messages(vec![Message::system("be brief")]);
    let r = kit
        .turn_with("first", &ReactLoop::new().tools([echo()]))
        .await
        .unwrap();
    assert_eq!(r.value, "first answer");
    let after_first = kit.messages();
    let roles: Vec<Role> = after_first.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant]);

    // The second turn calls a tool and then runs out of calls.
    let err = kit
        .turn_with("second", &ReactLoop::new().tools([echo()]))
        .await
        .unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(kit.messages(), after_first);
    assert_eq!(kit.usage().llm_calls, 2);
    // The second turn was sent on top of the first one's transcript.
    let sent = &p.last_call().unwrap().request.messages;
    assert_eq!(sent[3], Message::user("second"));

    let kit = Kit::new(Plain(MockProvider::new(["x"])));
    let err = kit.turn("hi").await.unwrap_err();
    assert!(err.is_invalid_argument());
    assert!(err.message().contains("does not support tool calls"));
    assert!(!err.message().contains("Provider"), "{}", err.message());
    let err = kit
        .react("hi", &ReactLoop::new().tools([echo()]))
        .await
        .unwrap_err();
    assert!(err.message().contains("does not support tool calls"));
    assert!(!err.message().contains("Provider"), "{}", err.message());
    assert!(kit.messages().is_empty());
}

#[tokio::test]
async fn s146_turns_keep_tool_turns_in_the_transcript() {
    let p = MockProvider::new([tool_round("t1"), LlmResponse::text("done")]);
    let kit = Kit::new(p);
    let _ = kit
        .turn_with("use the tool", &ReactLoop::new().tools([echo()]))
        .await
        .unwrap();
    let roles: Vec<Role> = kit.messages().iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
    );
    assert_eq!(kit.messages()[1].tool_calls[0].id, "t1");
}

fn roomy_quota() -> Quota {
    Quota::per_second(NonZeroU32::new(1_000_000).unwrap())
        .allow_burst(NonZeroU32::new(100).unwrap())
}

#[tokio::test]
async fn s147_rate_limits_apply_per_llm_call() {
    let limited = RateLimited::new(MockProvider::new(["yes"]), roomy_quota());
    let kit = Kit::new(limited.clone());
    let r = kit
        .consensus("q", &Consensus::new().samples(5))
        .await
        .unwrap();
    assert_eq!(r.value, "yes");
    assert_eq!(kit.usage().llm_calls, 5);
    assert_eq!(limited.permits_taken(), 5);

    // Three dispatches: one permit per call they make, not per dispatch.
    let _ = kit
        .refine(
            "q",
            &RefineLoop::new()
                .target_score(0.5)
                .evaluator(|_t| async { Ok(0.9) }),
        )
        .await
        .unwrap();
    let _ = kit.react("q", &ReactLoop::new()).await.unwrap();
    assert_eq!(limited.permits_taken(), kit.usage().llm_calls);

    // A dispatch that fails still took its permits and recorded its cost.
    let failing = RateLimited::new(
        MockProvider::failing(Error::new(ErrorKind::Permanent, "no")),
        roomy_quota(),
    );
    let kit = Kit::new(failing.clone());
    let err = kit
        .consensus("q", &Consensus::new().samples(1))
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(failing.permits_taken(), 1);
    assert_eq!(kit.usage().llm_calls, 1);

    // The limiter's own state shows five permits gone: a burst of 6 has exactly one left.
    let limited = RateLimited::new(
        MockProvider::new(["yes"]),
        Quota::per_hour(NonZeroU32::new(6).unwrap()),
    );
    let kit = Kit::new(limited.clone());
    let _ = kit
        .consensus("q", &Consensus::new().samples(5))
        .await
        .unwrap();
    assert!(
        limited.limiter().check().is_ok(),
        "the sixth permit is free"
    );
    assert!(limited.limiter().check().is_err(), "the seventh must wait");

    // No limiter: nothing changes.
    let kit = Kit::new(MockProvider::new(["yes"]));
    let r = kit
        .consensus("q", &Consensus::new().samples(5))
        .await
        .unwrap();
    assert_eq!((r.value.as_str(), kit.usage().llm_calls), ("yes", 5));
}

/// `Kit::tokens_per_minute`: a token limit on the session's provider, in the same
/// `RateLimited` layer as `rate_limit` when it follows it, and a call that does not fit the
/// minute's tokens waits.
#[tokio::test]
async fn tokens_per_minute_limits_the_sessions_tokens() {
    // "hi" is 1 token, the message 4, max_tokens 4096 (the default): 4101 estimated per turn.
    const ESTIMATE: u64 = 4101;
    let reply = || MockProvider::new([LlmResponse::text("ok").with_usage(5, 4096)]);

    // Joined to the request limit: one layer counts both.
    let kit = Kit::new(reply())
        .rate_limit(roomy_quota())
        .tokens_per_minute(NonZeroU32::new(1_000_000).unwrap());
    for _ in 0..3 {
        kit.set_messages(Vec::new());
        let _ = kit.turn("hi").await.unwrap();
    }
    let layer = kit.rate_limited().unwrap();
    assert_eq!(layer.permits_taken(), 3);
    assert_eq!(layer.tokens_charged(), Some(3 * ESTIMATE));
    assert_eq!(layer.token_balance(), Some(0)); // usage 5 + 4096 = the estimate
    // The request limit is the one `rate_limit` set: its burst of 100 has 97 permits left.
    assert!(
        layer
            .limiter()
            .check_n(NonZeroU32::new(97).unwrap())
            .unwrap()
            .is_ok()
    );

    // A minute's tokens are one turn's: the first turn takes them all, the next one waits (it
    // is still pending when first polled; the same turn without the limit completes at once).
    let limited = Kit::new(reply()).tokens_per_minute(NonZeroU32::new(4101).unwrap());
    let unlimited = Kit::new(reply());
    for kit in [&limited, &unlimited] {
        let _ = kit.turn("hi").await.unwrap();
        kit.set_messages(Vec::new());
    }
    let second = limited.turn("hi").now_or_never();
    assert!(
        second.is_none(),
        "a turn beyond the minute's tokens must wait"
    );
    assert!(unlimited.turn("hi").now_or_never().unwrap().is_ok());
    let layer = limited.rate_limited().unwrap();
    assert_eq!(layer.tokens_charged(), Some(ESTIMATE));
    assert_eq!(
        layer.permits_taken(),
        2,
        "the waiting turn took its request permit"
    );
    assert!(unlimited.rate_limited().is_none());
}

#[tokio::test]
async fn s148_streams_count_once_drained() {
    let kit = Kit::new(MockProvider::new(["streamed answer"]));
    let mut s = kit.stream("question").await.unwrap();
    assert_eq!(s.metadata()["streaming"], true);
    assert_eq!(s.cost(), TokenUsage::new(0, 0, 1));
    let mut text = String::new();
    while let Some(d) = s.next().await {
        text.push_str(&d.unwrap());
    }
    assert_eq!(text, "streamed answer");
    assert!(s.cost().output_tokens > 0);
    assert_eq!(kit.usage(), s.cost());
    assert_eq!(kit.usage().llm_calls, 1);

    // A stream dropped after its first delta still counts its call.
    let mut s = kit.stream("again").await.unwrap();
    let _first = s.next().await.unwrap().unwrap();
    drop(s);
    assert_eq!(kit.usage().llm_calls, 2);

    let kit = Kit::new(Plain(MockProvider::new(["x"])));
    let err = kit.stream("q").await.unwrap_err();
    assert!(err.is_invalid_argument());
    assert!(err.message().contains("does not support streaming"));
    assert!(!err.message().contains("Provider"), "{}", err.message());
    assert!(kit.usage().is_zero());

    // Streams go through the rate limiter too.
    let limited = RateLimited::new(MockProvider::new(["ok"]), roomy_quota());
    let kit = Kit::from_arc(Arc::new(limited.clone()));
    let r = kit.stream("q").await.unwrap().collect_text().await.unwrap();
    assert_eq!(r.value, "ok");
    assert_eq!(limited.permits_taken(), 1);
}

#[tokio::test]
async fn kits_are_shared_across_tasks() {
    let kit = Arc::new(Kit::new(MockProvider::new(["a"])));
    let mut handles = Vec::new();
    for i in 0..4 {
        let kit = Arc::clone(&kit);
        handles.push(tokio::spawn(async move {
            kit.turn(&format!("q{i}")).await.map(|r| r.value)
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap(), "a");
    }
    // Turns are serialised: each one saw the previous ones' transcript.
    assert_eq!(kit.messages().len(), 8);
    assert_eq!(kit.usage().llm_calls, 4);
}

#[tokio::test]
async fn s046_bucket_construction_is_validated() {
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = RateLimited::token_bucket(MockProvider::new(["x"]), rate, 10).unwrap_err();
        assert!(err.is_invalid_argument(), "rate {rate}");
        assert!(
            err.message().contains("rate must be > 0"),
            "{}",
            err.message()
        );
    }
    let err = RateLimited::token_bucket(MockProvider::new(["x"]), 10.0, 0).unwrap_err();
    assert!(err.is_invalid_argument());
    assert!(err.message().contains("capacity must be >= 1"));
    // A rate too low for governor's nanosecond counter is refused, not a panic.
    let err = RateLimited::token_bucket(MockProvider::new(["x"]), 1e-12, 10).unwrap_err();
    assert!(err.is_invalid_argument());
    // Fractional and very high rates are fine.
    assert!(RateLimited::token_bucket(MockProvider::new(["x"]), 0.5, 1).is_ok());
    assert!(RateLimited::token_bucket(MockProvider::new(["x"]), 1e12, 1).is_ok());
}

#[tokio::test(start_paused = true)]
async fn s046_full_bucket_never_waits() {
    let p = RateLimited::token_bucket(MockProvider::new(["ok"]), 10.0, 10).unwrap();
    let start = tokio::time::Instant::now();
    let req = ChatRequest::new(vec![Message::user("q")]);
    for _ in 0..10 {
        // Ready on the first poll: no sleep of any kind, on any clock.
        let r = futures::FutureExt::now_or_never(p.complete(&req)).expect("no wait");
        assert_eq!(r.unwrap().content(), "ok");
    }
    assert_eq!(tokio::time::Instant::now(), start);
    assert_eq!(p.permits_taken(), 10);
    // The ten permits came out of the bucket: it is empty now.
    assert!(p.limiter().check().is_err());
}

/// A provider replaying scripted results, each after `delay` of tokio's clock, and noting
/// when each call started.
#[derive(Debug, Default)]
struct Scripted {
    script: std::sync::Mutex<std::collections::VecDeque<Result<LlmResponse>>>,
    starts: std::sync::Mutex<Vec<tokio::time::Instant>>,
    delay: std::time::Duration,
}

impl Scripted {
    fn new(script: Vec<Result<LlmResponse>>) -> Self {
        Self {
            script: std::sync::Mutex::new(script.into()),
            ..Self::default()
        }
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        self.starts
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        tokio::time::sleep(self.delay).await;
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Ok(LlmResponse::text("ok")))
    }
}

fn too_many(after_s: u64) -> Error {
    Error::rate_limited("429 Too Many Requests")
        .with_retry_after(std::time::Duration::from_secs(after_s))
}

#[tokio::test(start_paused = true)]
async fn s047_a_429_holds_later_permits_for_retry_after() {
    use std::time::Duration;
    let p = RateLimited::token_bucket(Scripted::new(vec![Err(too_many(5))]), 10.0, 10).unwrap();
    let req = ChatRequest::new(vec![Message::user("q")]);
    let t0 = tokio::time::Instant::now();
    assert!(p.complete(&req).await.unwrap_err().is_rate_limited());
    assert_eq!(p.penalty_until(), Some(t0 + Duration::from_secs(5)));
    let r = p.complete(&req).await.unwrap();
    assert_eq!(r.content(), "ok");
    let starts = p.inner().starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2);
    assert!(starts[1] - starts[0] >= Duration::from_secs(5));
    // Once the penalty is over, calls go straight through again.
    let before = tokio::time::Instant::now();
    p.complete(&req).await.unwrap();
    assert_eq!(tokio::time::Instant::now(), before);

    // A shorter 429 after a longer one does not shorten the hold: two calls in flight, both
    // answered after 100 ms, the first with 5 s, the second with 1 s.
    let p = RateLimited::token_bucket(
        Scripted {
            delay: Duration::from_millis(100),
            ..Scripted::new(vec![Err(too_many(5)), Err(too_many(1))])
        },
        10.0,
        10,
    )
    .unwrap();
    let t0 = tokio::time::Instant::now();
    let (a, b) = tokio::join!(p.complete(&req), p.complete(&req));
    assert!(a.unwrap_err().is_rate_limited() && b.unwrap_err().is_rate_limited());
    let late = t0 + Duration::from_millis(100) + Duration::from_secs(5);
    assert_eq!(p.penalty_until(), Some(late));
    p.complete(&req).await.unwrap();
    assert!(tokio::time::Instant::now() - t0 >= Duration::from_secs(5));
    let starts = p.inner().starts.lock().unwrap().clone();
    assert!(starts[2] >= late);

    // A later, longer 429 extends it.
    let p = RateLimited::token_bucket(
        Scripted::new(vec![Err(too_many(1)), Err(too_many(3))]),
        10.0,
        10,
    )
    .unwrap();
    let t0 = tokio::time::Instant::now();
    let _ = p.complete(&req).await.unwrap_err(); // t0: hold until t0+1
    let _ = p.complete(&req).await.unwrap_err(); // t0+1: hold until t0+4
    p.complete(&req).await.unwrap();
    assert!(tokio::time::Instant::now() - t0 >= Duration::from_secs(4));

    // Other errors, and a 429 without retry_after, set no penalty.
    let p = RateLimited::token_bucket(
        Scripted::new(vec![
            Err(Error::new(ErrorKind::Provider, "500")),
            Err(Error::new(ErrorKind::RateLimited, "429 without a hint")),
        ]),
        10.0,
        10,
    )
    .unwrap();
    let _ = p.complete(&req).await.unwrap_err();
    let _ = p.complete(&req).await.unwrap_err();
    assert_eq!(p.penalty_until(), None);
}

#[tokio::test(start_paused = true)]
async fn s047_the_penalty_holds_streams_and_kit_calls_too() {
    use std::time::Duration;
    // A stream that fails with a 429 penalises the limiter as well.
    let p = RateLimited::token_bucket(MockProvider::failing(too_many(5)), 10.0, 10).unwrap();
    let t0 = tokio::time::Instant::now();
    let items: Vec<_> = p
        .stream(ChatRequest::new(vec![Message::user("q")]))
        .collect()
        .await;
    assert!(items[0].as_ref().unwrap_err().is_rate_limited());
    assert_eq!(p.penalty_until(), Some(t0 + Duration::from_secs(5)));
    // The next stream's permit waits it out.
    let _ = p
        .stream(ChatRequest::new(vec![Message::user("q")]))
        .collect::<Vec<_>>()
        .await;
    assert!(tokio::time::Instant::now() - t0 >= Duration::from_secs(5));
    assert_eq!(p.permits_taken(), 2);

    // Through a Kit: the second consensus run waits out the first one's 429.
    let limited =
        RateLimited::token_bucket(Scripted::new(vec![Err(too_many(5))]), 10.0, 10).unwrap();
    let limited = Arc::new(limited);
    let kit = Kit::from_arc(limited.clone()).context(RunContext::new().retry(RetryPolicy::none()));
    let t0 = tokio::time::Instant::now();
    let err = kit
        .consensus("q", &Consensus::new().samples(1))
        .await
        .unwrap_err();
    assert!(err.is_rate_limited());
    let r = kit
        .consensus("q", &Consensus::new().samples(1))
        .await
        .unwrap();
    assert_eq!(r.value, "ok");
    assert!(limited.inner().starts.lock().unwrap()[1] - t0 >= Duration::from_secs(5));
}
