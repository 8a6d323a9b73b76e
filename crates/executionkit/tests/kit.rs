//! Conformance scenarios 143–148 (Kit) with OVERRIDES.md's expectations: usage includes failed
//! runs, rate limits apply per LLM call, streaming usage lands in the session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;
use executionkit::kit::{Kit, RateLimited};
use executionkit::patterns::map_reduce::MapReduce;
use executionkit::patterns::react::ReactLoop;
use executionkit::tools::Tool;
use executionkit::{
    Budget, ChatRequest, Choice, Consensus, Error, ErrorKind, LlmProvider, LlmResponse, Message,
    MockProvider, Pipe, RefineLoop, Result, Role, RunContext, TokenUsage, ToolCall,
};
use futures::StreamExt;
use governor::Quota;
use serde_json::json;

fn tool_round(id: &str) -> LlmResponse {
    LlmResponse {
        choices: vec![Choice {
            content: String::new(),
            tool_calls: vec![ToolCall::new(id, "echo", json!({"text": "x"}))],
            finish_reason: Some("tool_calls".into()),
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
            &[echo()],
            &ReactLoop::new().max_rounds(4).temperature(0.1),
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
        .react("go", &[echo()], &ReactLoop::new())
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
    let r = kit.turn("first", &[echo()]).await.unwrap();
    assert_eq!(r.value, "first answer");
    let after_first = kit.messages();
    let roles: Vec<Role> = after_first.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant]);

    // The second turn calls a tool and then runs out of calls.
    let err = kit.turn("second", &[echo()]).await.unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(kit.messages(), after_first);
    assert_eq!(kit.usage().llm_calls, 2);
    // The second turn was sent on top of the first one's transcript.
    let sent = &p.last_call().unwrap().request.messages;
    assert_eq!(sent[3], Message::user("second"));

    let kit = Kit::new(Plain(MockProvider::new(["x"])));
    let err = kit.turn("hi", &[]).await.unwrap_err();
    assert!(err.is_invalid_argument());
    assert!(err.message().contains("ToolCallingProvider"));
    let err = kit
        .react("hi", &[echo()], &ReactLoop::new())
        .await
        .unwrap_err();
    assert!(err.message().contains("ToolCallingProvider"));
    assert!(kit.messages().is_empty());
}

#[tokio::test]
async fn s146_turns_keep_tool_turns_in_the_transcript() {
    let p = MockProvider::new([tool_round("t1"), LlmResponse::text("done")]);
    let kit = Kit::new(p);
    let _ = kit.turn("use the tool", &[echo()]).await.unwrap();
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
    let _ = kit.react("q", &[], &ReactLoop::new()).await.unwrap();
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
    assert!(err.message().contains("StreamingProvider"));
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
            kit.turn(&format!("q{i}"), &[]).await.map(|r| r.value)
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap(), "a");
    }
    // Turns are serialised: each one saw the previous ones' transcript.
    assert_eq!(kit.messages().len(), 8);
    assert_eq!(kit.usage().llm_calls, 4);
}
