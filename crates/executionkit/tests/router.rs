//! `Router` (issue #11 item 2) over real HTTP providers on 127.0.0.1 (wiremock): rules by
//! estimated prompt tokens, tools and a `tier` tag (first match wins, then the default), a rule's
//! model, round-robin and weighted choice counted per server, a chosen failover chain keeping its
//! chain, a plain target keeping the run's retry policy, and every request a counted call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::prelude::*;
use executionkit::{ChatRequest, Failover, Message, RateLimited, Router, ToolSpec};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod common;

use common::chat::{PATH, fast, ok, provider, received, server};

async fn bodies(s: &MockServer) -> Vec<Value> {
    s.received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn rules_pick_by_size_tools_and_tier_first_match_wins() {
    let cheap = server(ok("cheap")).await;
    let tools = server(ok("tools")).await;
    let best = server(ok("best")).await;
    let router = Router::builder()
        .rule(|r| r.tier == Some("best"), "best", provider(&best))
        .rule(|r| r.has_tools, "tools", provider(&tools))
        .rule(|r| r.prompt_tokens < 50, "cheap", provider(&cheap))
        .default("best", provider(&best))
        .build()
        .unwrap();
    let ctx = fast();
    let short = Consensus::new()
        .samples(1)
        .run(&router, "Hi?", &ctx)
        .await
        .unwrap();
    assert_eq!(short.value, "cheap");
    let long_prompt = "word ".repeat(100);
    let long = Consensus::new()
        .samples(1)
        .run(&router, &long_prompt, &ctx)
        .await
        .unwrap();
    assert_eq!(long.value, "best");
    // The tier tag wins over the size rule, and is not sent.
    let tagged = Consensus::new()
        .samples(1)
        .tier("best")
        .run(&router, "Hi?", &ctx)
        .await
        .unwrap();
    assert_eq!(tagged.value, "best");
    assert_eq!(tagged.metadata["cost_by_provider"]["best"]["llm_calls"], 1);
    let with_tools = ChatRequest::new(vec![Message::user("Hi?")]).tools(vec![ToolSpec::new(
        "t",
        "a tool",
        json!({"type": "object"}),
    )]);
    let tracker = executionkit::CostTracker::new();
    let r = ctx.complete(&router, with_tools, &tracker).await.unwrap();
    assert_eq!(r.content(), "tools");
    assert_eq!(
        (
            received(&cheap).await,
            received(&tools).await,
            received(&best).await
        ),
        (1, 1, 2)
    );
    for body in bodies(&best).await {
        assert!(body.get("tier").is_none(), "{body}");
    }
}

#[tokio::test]
async fn a_rule_can_set_the_model() {
    let s = server(ok("x")).await;
    let router = Router::builder()
        .rule_with_model(
            |r| r.tier == Some("cheap"),
            "mini",
            provider(&s),
            "small-model",
        )
        .default("main", provider(&s))
        .build()
        .unwrap();
    let _ = Consensus::new()
        .samples(1)
        .tier("cheap")
        .run(&router, "q", &fast())
        .await
        .unwrap();
    let _ = Consensus::new()
        .samples(1)
        .run(&router, "q", &fast())
        .await
        .unwrap();
    let models: Vec<Value> = bodies(&s)
        .await
        .iter()
        .map(|b| b["model"].clone())
        .collect();
    assert_eq!(models, [json!("small-model"), json!("m")]);
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let a = server(ok("a")).await;
    let b = server(ok("b")).await;
    let router = Router::round_robin(vec![("a", provider(&a)), ("b", provider(&b))]).unwrap();
    let r = Consensus::new()
        .samples(10)
        .max_concurrency(1)
        .run(&router, "q", &fast())
        .await
        .unwrap();
    assert_eq!((received(&a).await, received(&b).await), (5, 5));
    assert_eq!(r.metadata["cost_by_provider"]["a"]["llm_calls"], 5);
    assert_eq!(r.cost.llm_calls, 10);
}

#[tokio::test]
async fn weighted_choice_follows_the_weights_exactly() {
    let a = server(ok("a")).await;
    let b = server(ok("b")).await;
    let router = Router::weighted(vec![("a", provider(&a), 3), ("b", provider(&b), 1)]).unwrap();
    let _ = Consensus::new()
        .samples(12)
        .max_concurrency(1)
        .run(&router, "q", &fast())
        .await
        .unwrap();
    assert_eq!((received(&a).await, received(&b).await), (9, 3));
}

#[tokio::test]
async fn a_chosen_failover_chain_keeps_its_chain() {
    let down = server(ResponseTemplate::new(503).set_body_string("down")).await;
    let up = server(ok("up")).await;
    let cheap = server(ok("cheap")).await;
    let chain = Failover::builder()
        .provider("down", provider(&down))
        .provider("up", provider(&up))
        .build()
        .unwrap();
    let router = Router::builder()
        .rule(|r| r.tier == Some("best"), "chain", chain)
        .default("cheap", provider(&cheap))
        .build()
        .unwrap();
    let r = Consensus::new()
        .samples(1)
        .tier("best")
        .run(&router, "q", &fast())
        .await
        .unwrap();
    assert_eq!(r.value, "up");
    assert_eq!(r.cost.llm_calls, 2);
    assert_eq!(r.metadata["cost_by_provider"]["down"]["llm_calls"], 1);
    assert_eq!(r.metadata["cost_by_provider"]["up"]["llm_calls"], 1);
    assert_eq!(received(&cheap).await, 0);
}

#[tokio::test]
async fn a_plain_target_keeps_the_run_retry_policy() {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(500).set_body_string("flaky"))
        .up_to_n_times(2)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ok("third time"))
        .mount(&s)
        .await;
    let router = Router::round_robin(vec![("only", provider(&s))]).unwrap();
    let r = Consensus::new()
        .samples(1)
        .run(&router, "q", &fast())
        .await
        .unwrap();
    assert_eq!(r.value, "third time");
    assert_eq!(r.cost.llm_calls, 3);
    assert_eq!(received(&s).await, 3);
    assert_eq!(r.metadata["cost_by_provider"]["only"]["llm_calls"], 3);
}

#[tokio::test]
async fn a_budget_holds_through_a_router() {
    let a = server(ok("a")).await;
    let b = server(ok("b")).await;
    let router = Router::round_robin(vec![("a", provider(&a)), ("b", provider(&b))]).unwrap();
    let ctx = fast().budget(Budget::new().max_calls(7));
    let e = Consensus::new()
        .samples(10)
        .max_concurrency(2)
        .run(&router, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    // Every call that was sent counts (one cancelled in flight before its request was written
    // is given back): at most the 7 allowed, and at least what the servers received.
    let spent = e.cost().llm_calls;
    assert!(spent <= 7, "{spent}");
    assert!(received(&a).await + received(&b).await <= spent);
    assert_eq!(ctx.ledger().spent().llm_calls, spent);
}

#[tokio::test]
async fn layers_stack_a_rate_limit_around_a_router() {
    let a = server(ok("a")).await;
    let b = server(ok("b")).await;
    let router = Router::round_robin(vec![("a", provider(&a)), ("b", provider(&b))]).unwrap();
    let limited = RateLimited::per_second(router, std::num::NonZeroU32::new(1000).unwrap());
    let _ = Consensus::new()
        .samples(4)
        .max_concurrency(1)
        .run(&limited, "q", &fast())
        .await
        .unwrap();
    assert_eq!(limited.permits_taken(), 4);
    assert_eq!((received(&a).await, received(&b).await), (2, 2));
}

#[test]
fn builders_check_their_arguments() {
    assert!(Router::builder().build().unwrap_err().is_invalid_argument());
    let e = Router::weighted(vec![("a", MockProvider::default(), 0)]).unwrap_err();
    assert!(e.is_invalid_argument());
    assert!(
        Router::round_robin(vec![(" ", MockProvider::default())])
            .unwrap_err()
            .is_invalid_argument()
    );
}
