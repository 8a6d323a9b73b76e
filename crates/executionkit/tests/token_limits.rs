//! Tokens per minute as a provider layer (issue #11 item 3): each call is charged its estimate
//! before it is sent (prompt at ~4 bytes a token, 4 per message, tools' JSON, `max_tokens` per
//! choice) and corrected from the reported usage; what a call reported beyond or below its
//! charge is carried to the next call. The quotas here are per hour, so the limiter refills by
//! less than one token while a test runs: the figures are exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;

use executionkit::{
    ChatRequest, Consensus, Error, LlmProvider, LlmResponse, Message, MockProvider, RateLimited,
    RunContext, StreamEvent, ToolSpec, WithCallOptions,
};
use futures::StreamExt;
use governor::Quota;
use serde_json::json;

fn per_hour(n: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(n).unwrap())
}

fn limited(p: MockProvider, tokens_per_hour: u32) -> RateLimited<MockProvider> {
    RateLimited::new(p, per_hour(1_000_000)).token_quota(per_hour(tokens_per_hour))
}

/// "hello world" is 11 bytes: 3 tokens, plus 4 for the message.
fn req(max_tokens: u32) -> ChatRequest {
    ChatRequest::new(vec![Message::user("hello world")]).max_tokens(max_tokens)
}

#[tokio::test]
async fn a_call_is_charged_its_estimate_and_the_next_one_the_correction() {
    let p = limited(
        MockProvider::new([LlmResponse::text("a").with_usage(7, 13)]),
        100_000,
    );
    p.complete(&req(50)).await.unwrap();
    assert_eq!(p.tokens_charged(), Some(57));
    // It used 20 of the 57 it was charged: a credit of 37 for the next call.
    assert_eq!(p.token_balance(), Some(-37));
    p.complete(&req(50)).await.unwrap();
    assert_eq!(p.tokens_charged(), Some(57 + 20));
    assert_eq!(p.token_balance(), Some(-37));
}

#[tokio::test]
async fn usage_beyond_the_estimate_is_a_debt_the_next_call_pays() {
    let p = limited(
        MockProvider::new([LlmResponse::text("long").with_usage(500, 500)]),
        100_000,
    );
    p.complete(&req(10)).await.unwrap();
    assert_eq!(p.tokens_charged(), Some(17));
    assert_eq!(p.token_balance(), Some(1000 - 17));
    p.complete(&req(10)).await.unwrap();
    // The second call pays its own estimate and the first one's debt.
    assert_eq!(p.tokens_charged(), Some(17 + 17 + 983));
}

#[tokio::test]
async fn the_estimate_counts_tools_and_every_choice() {
    let p = limited(MockProvider::new(["x"]), 100_000);
    let tool = ToolSpec::new(
        "lookup",
        "Look a word up",
        json!({"type": "object", "properties": {"w": {"type": "string"}}}),
    );
    let tools_bytes = serde_json::to_string(&vec![tool.clone()]).unwrap().len() as u64;
    let r = req(10).n(3).tools(vec![tool]);
    p.complete(&r).await.unwrap();
    let expected = (11 + tools_bytes).div_ceil(4) + 4 + 3 * 10;
    assert_eq!(p.tokens_charged(), Some(expected));
}

#[tokio::test]
async fn a_call_larger_than_the_bucket_takes_a_full_bucket_and_carries_the_rest() {
    let p = limited(MockProvider::new(["x"]), 100);
    // Estimate 507: the bucket holds 100, so 100 now and 407 carried; the reply reported no
    // usage, so the correction (0 - 507) leaves a credit of 100: charged + balance = used.
    p.complete(&req(500)).await.unwrap();
    assert_eq!(p.tokens_charged(), Some(100));
    assert_eq!(p.token_balance(), Some(-100));
}

#[tokio::test]
async fn a_failed_call_keeps_its_charge() {
    let p = limited(MockProvider::failing(Error::rate_limited("busy")), 100_000);
    p.complete(&req(50)).await.unwrap_err();
    assert_eq!(p.tokens_charged(), Some(57));
    assert_eq!(p.token_balance(), Some(0));
}

#[tokio::test]
async fn a_stream_is_charged_before_it_starts_and_corrected_when_it_finishes() {
    let p = limited(
        MockProvider::new([LlmResponse::text("streamed").with_usage(5, 5)]),
        100_000,
    );
    let events: Vec<StreamEvent> = p.stream(req(50)).map(|e| e.unwrap()).collect().await;
    assert!(matches!(events.last(), Some(StreamEvent::Finished(_))));
    assert_eq!(p.tokens_charged(), Some(57));
    assert_eq!(p.token_balance(), Some(10 - 57));
}

#[tokio::test]
async fn patterns_are_charged_per_call_under_one_limit() {
    // Five consensus samples through the engine: each asks for the grant (max_tokens 8).
    let p = limited(
        MockProvider::new([LlmResponse::text("4").with_usage(3, 1)]),
        100_000,
    );
    let r = Consensus::new()
        .samples(5)
        .max_concurrency(1)
        .max_tokens(8)
        .run(&p, "2+2?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "4");
    // "2+2?" is 1 token + 4 framing + 8 = 13 estimated; each reported 4: the first call pays 13,
    // every later one 13 - 9 (the credit left by the one before).
    assert_eq!(p.tokens_charged(), Some(13 + 4 * 4));
    assert_eq!(p.token_balance(), Some(-9));
}
