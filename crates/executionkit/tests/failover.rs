//! `Failover` (issue #11 item 1) over real HTTP providers on 127.0.0.1 (wiremock): which errors
//! move to the next provider, entry retries, Retry-After cool-downs, and the one promise: every
//! request a server received is a call in the run's ledger, on the provider it went to
//! (`metadata.cost_by_provider`), and a budget holds across the whole chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::prelude::*;
use std::sync::Arc;

use executionkit::{ChatRequest, Failover, Message, OpenAiProvider, Router};
use serde_json::{Value, json};
use wiremock::{MockServer, ResponseTemplate};

mod common;

use common::chat::{fast, ok, provider, received, server};

fn chain(a: &MockServer, b: &MockServer) -> Failover {
    Failover::builder()
        .provider("a", provider(a))
        .provider("b", provider(b))
        .build()
        .unwrap()
}

fn calls(v: &Value, name: &str) -> u64 {
    v["cost_by_provider"][name]["llm_calls"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_5xx_moves_to_the_next_provider_and_both_attempts_are_counted() {
    let a = server(ResponseTemplate::new(500).set_body_string("down")).await;
    let b = server(ok("Paris")).await;
    let r = Consensus::new()
        .samples(1)
        .run(&chain(&a, &b), "Capital of France?", &fast())
        .await
        .unwrap();
    assert_eq!(r.value, "Paris");
    assert_eq!((received(&a).await, received(&b).await), (1, 1));
    assert_eq!(r.cost.llm_calls, 2);
    let m = Value::Object(r.metadata.clone());
    assert_eq!((calls(&m, "a"), calls(&m, "b")), (1, 1));
    assert_eq!(m["cost_by_provider"]["b"]["input_tokens"], 3);
    assert_eq!(m["cost_by_provider"]["a"]["input_tokens"], 0);
}

#[tokio::test]
async fn errors_the_next_provider_would_repeat_do_not_move() {
    for status in [400, 413, 422] {
        let a = server(ResponseTemplate::new(status).set_body_string("bad request")).await;
        let b = server(ok("x")).await;
        let e = Consensus::new()
            .samples(1)
            .run(&chain(&a, &b), "q", &fast())
            .await
            .unwrap_err();
        assert_eq!(received(&b).await, 0, "HTTP {status} must not move on");
        assert_eq!(e.cost().llm_calls, 1, "HTTP {status}");
        assert_eq!(e.metadata()["cost_by_provider"]["a"]["llm_calls"], 1);
    }
}

#[tokio::test]
async fn auth_and_not_found_errors_move_on() {
    for status in [401, 403, 404] {
        let a = server(ResponseTemplate::new(status).set_body_string("no")).await;
        let b = server(ok("fine")).await;
        let r = Consensus::new()
            .samples(1)
            .run(&chain(&a, &b), "q", &fast())
            .await
            .unwrap();
        assert_eq!(r.value, "fine", "HTTP {status}");
        assert_eq!(received(&a).await + received(&b).await, r.cost.llm_calls);
    }
}

#[tokio::test]
async fn an_entry_is_retried_its_own_number_of_times_before_the_chain_moves() {
    let a = server(ResponseTemplate::new(503).set_body_string("busy")).await;
    let b = server(ok("ok")).await;
    let f = Failover::builder()
        .provider_with_retries("a", provider(&a), 2)
        .provider("b", provider(&b))
        .build()
        .unwrap();
    let r = Consensus::new()
        .samples(1)
        .run(&f, "q", &fast())
        .await
        .unwrap();
    assert_eq!((received(&a).await, received(&b).await), (3, 1));
    assert_eq!(r.cost.llm_calls, 4);
    let m = Value::Object(r.metadata.clone());
    assert_eq!((calls(&m, "a"), calls(&m, "b")), (3, 1));
}

#[tokio::test]
async fn the_run_retry_policy_does_not_wrap_the_chain() {
    // Both fail with a retryable 500: without entry retries, one attempt each, then the error
    // (with both attempts' spend), although the run's policy would retry a plain provider.
    let a = server(ResponseTemplate::new(500).set_body_string("x")).await;
    let b = server(ResponseTemplate::new(502).set_body_string("y")).await;
    let e = Consensus::new()
        .samples(1)
        .run(&chain(&a, &b), "q", &fast())
        .await
        .unwrap_err();
    assert_eq!((received(&a).await, received(&b).await), (1, 1));
    assert_eq!(e.cost().llm_calls, 2);
    assert_eq!(e.http_status(), Some(502));
}

#[tokio::test]
async fn a_429_with_retry_after_cools_the_provider_down() {
    let a = server(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "30")
            .set_body_string("slow down"),
    )
    .await;
    let b = server(ok("B")).await;
    let f = chain(&a, &b);
    let r = Consensus::new()
        .samples(4)
        .max_concurrency(1)
        .run(&f, "q", &fast())
        .await
        .unwrap();
    assert_eq!(r.value, "B");
    // The first sample met the 429; the other three went straight to b.
    assert_eq!((received(&a).await, received(&b).await), (1, 4));
    assert_eq!(r.cost.llm_calls, 5);
}

#[tokio::test]
async fn when_every_provider_cools_down_beyond_max_delay_the_call_fails_rate_limited() {
    let a = server(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "60")
            .set_body_string("a busy"),
    )
    .await;
    let b = server(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "60")
            .set_body_string("b busy"),
    )
    .await;
    let f = chain(&a, &b);
    let e = Consensus::new()
        .samples(1)
        .run(&f, "q", &fast())
        .await
        .unwrap_err();
    assert!(e.is_rate_limited(), "{e:?}");
    assert_eq!(e.cost().llm_calls, 2);
    // A second run finds both cooling: it fails at once, without a request.
    let e = Consensus::new()
        .samples(1)
        .run(&f, "q", &fast())
        .await
        .unwrap_err();
    assert!(e.is_rate_limited());
    assert_eq!(e.cost().llm_calls, 0);
    assert_eq!((received(&a).await, received(&b).await), (1, 1));
}

#[tokio::test]
async fn a_budget_holds_across_the_whole_chain() {
    // 20 samples under 20 calls with a first provider that always fails: never more than 20
    // requests reach the two servers together, and the error carries every provider's cost.
    let a = server(ResponseTemplate::new(500).set_body_string("down")).await;
    let b = server(ok("yes")).await;
    let ctx = fast().budget(Budget::new().max_calls(20));
    let outcome = Consensus::new()
        .samples(20)
        .max_concurrency(4)
        .run(&chain(&a, &b), "q", &ctx)
        .await;
    let total = received(&a).await + received(&b).await;
    assert!(total <= 20, "{total} requests for a budget of 20 calls");
    let e = outcome.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    // Every call that was sent is counted (a call cancelled in flight when the vote failed
    // counts once its request was written; one cancelled before that is given back): what the
    // servers received is at most that, and the providers' shares add up to it.
    let spent = e.cost().llm_calls;
    assert!(
        spent <= 20 && spent >= total,
        "{spent} calls for {total} requests"
    );
    let m = Value::Object(e.metadata().clone());
    assert_eq!(calls(&m, "a") + calls(&m, "b"), spent);
    assert!(calls(&m, "a") >= received(&a).await, "{m}");
    assert!(calls(&m, "b") >= received(&b).await, "{m}");
    assert_eq!(ctx.ledger().spent().llm_calls, spent);
}

#[tokio::test]
async fn a_direct_call_tries_the_chain_once() {
    let a = server(ResponseTemplate::new(500).set_body_string("x")).await;
    let b = server(ok("direct")).await;
    let f = chain(&a, &b);
    let r = f
        .complete(&ChatRequest::new(vec![Message::user("q")]))
        .await
        .unwrap();
    assert_eq!(r.content(), "direct");
    assert_eq!((received(&a).await, received(&b).await), (1, 1));
}

#[tokio::test]
async fn a_rate_limited_chain_takes_a_permit_per_attempt() {
    let a = server(ResponseTemplate::new(500).set_body_string("x")).await;
    let b = server(ok("ok")).await;
    let limited = executionkit::RateLimited::per_second(
        chain(&a, &b),
        std::num::NonZeroU32::new(1000).unwrap(),
    );
    let r = Consensus::new()
        .samples(1)
        .run(&limited, "q", &fast())
        .await
        .unwrap();
    assert_eq!(r.cost.llm_calls, 2);
    assert_eq!(limited.permits_taken(), 2);
}

fn sse_ok(text: &str) -> ResponseTemplate {
    let frames = [
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}),
    ];
    let mut body: String = frames.iter().map(|f| format!("data: {f}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

#[tokio::test]
async fn a_stream_moves_to_the_next_provider_before_its_first_delta() {
    use futures::StreamExt;
    let a = server(ResponseTemplate::new(503).set_body_string("down")).await;
    let b = server(sse_ok("streamed")).await;
    let f = chain(&a, &b);
    let ctx = fast();
    let tracker = executionkit::CostTracker::new();
    let s = ctx
        .stream(&f, ChatRequest::new(vec![Message::user("q")]), &tracker)
        .await
        .unwrap();
    let items: Vec<_> = s.collect().await;
    let text: String = items
        .iter()
        .filter_map(|i| match i {
            Ok(executionkit::StreamEvent::TextDelta(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "streamed");
    assert!(matches!(
        items.last(),
        Some(Ok(executionkit::StreamEvent::Finished(_)))
    ));
    assert_eq!((received(&a).await, received(&b).await), (1, 1));
    assert_eq!(tracker.usage().llm_calls, 2);
    assert_eq!(tracker.usage().input_tokens, 4);
}

#[tokio::test]
async fn a_stream_does_not_move_on_a_request_the_next_provider_would_refuse() {
    let a = server(ResponseTemplate::new(400).set_body_string("bad")).await;
    let b = server(sse_ok("never")).await;
    let f = chain(&a, &b);
    let ctx = fast();
    let tracker = executionkit::CostTracker::new();
    let outcome = ctx
        .stream(&f, ChatRequest::new(vec![Message::user("q")]), &tracker)
        .await;
    let e = match outcome {
        Err(e) => e,
        Ok(mut s) => {
            use futures::StreamExt;
            s.next().await.unwrap().unwrap_err()
        }
    };
    assert_eq!(e.http_status(), Some(400));
    assert_eq!(received(&b).await, 0);
    assert_eq!(tracker.usage().llm_calls, 1);
}

#[tokio::test]
async fn every_provider_key_of_a_chain_is_kept_out_of_metadata() {
    // The backup's reply echoes the backup's own key; with a stop rule, the vote counts (model
    // text) are in the metadata: the key must not be.
    let key_a = "sk-primary-0123456789";
    let key_b = "sk-backup-9876543210";
    let down = MockProvider::failing(executionkit::Error::new(
        executionkit::ErrorKind::Transport,
        "refused",
    ))
    .with_secret(key_a);
    let backup = MockProvider::new([format!("the key is {key_b}")]).with_secret(key_b);
    let f = Failover::builder()
        .provider("a", down)
        .provider("b", backup)
        .build()
        .unwrap();
    let r = Consensus::new()
        .samples(3)
        .max_concurrency(1)
        .early_stop(executionkit::StopRule::window(2))
        .run(&f, "q", &fast())
        .await
        .unwrap();
    let meta = Value::Object(r.metadata.clone()).to_string();
    assert!(!meta.contains(key_b), "{meta}");
    assert!(!format!("{:?}", r.stats).contains(key_b));
    assert!(meta.contains("[REDACTED]"), "{meta}");
}

/// A primary that misbehaves after reading the request: closes, sends garbage, or sends a body
/// without end. Each moves the call to the backup; memory stays bounded (the reply cap), the
/// requests the primary read equal the calls counted for it, and its key is printed nowhere.
#[tokio::test]
async fn hostile_primaries_move_on_with_every_request_counted_and_no_key_shown() {
    use common::hostile::{Conn, Hostile};
    const KEY: &str = "sk-hostile-primary-0123456789";
    let close = Hostile::start(|mut c: Conn| async move {
        c.read_request().await?;
        c.close().await
    })
    .await;
    let garbage = Hostile::start(|mut c: Conn| async move {
        c.read_request().await?;
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{not json")
            .await?;
        c.close().await
    })
    .await;
    let endless = Hostile::start(|mut c: Conn| async move {
        c.read_request().await?;
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
            .await?;
        c.write_repeated(b"{\"a\":", 64 << 20).await;
        Ok(())
    })
    .await;
    let backup = server(ok("safe")).await;
    for (what, hostile) in [
        ("close", &close),
        ("garbage", &garbage),
        ("endless", &endless),
    ] {
        let primary = OpenAiProvider::builder(hostile.url(), "m")
            .api_key(KEY)
            .max_response_bytes(1 << 20)
            .build()
            .unwrap();
        let f = Failover::builder()
            .provider("primary", primary)
            .provider("backup", provider(&backup))
            .build()
            .unwrap();
        let r = Consensus::new()
            .samples(1)
            .run(&f, "q", &fast())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(r.value, "safe", "{what}");
        let m = Value::Object(r.metadata.clone());
        assert_eq!(
            calls(&m, "primary"),
            hostile.requests() as u64,
            "{what}: requests read = calls counted"
        );
        assert_eq!(calls(&m, "primary"), 1, "{what}");
        assert!(!format!("{r:?} {m}").contains(KEY), "{what}");
    }
}

/// A pipe's `metadata.cost_by_provider` adds up every step's, on the result and on an error in
/// a later step (each step's own stays in `step_metadata`): step 1 runs on a failover chain,
/// step 2 on a router (success) or another chain (failure), and provider "b" serves both.
#[tokio::test]
async fn a_pipe_sums_cost_by_provider_over_its_steps() {
    let down = server(ResponseTemplate::new(500).set_body_string("down")).await;
    let up = server(ok("x")).await; // 3 in, 2 out a call
    let chain = |first: &str, second: &str, second_up: bool| {
        Failover::builder()
            .provider(first, provider(&down))
            .provider(second, provider(if second_up { &up } else { &down }))
            .build()
            .unwrap()
    };
    let router = Router::builder()
        .default("b", provider(&up))
        .build()
        .unwrap();
    let cost = |m: &Value, name: &str| {
        let c = &m["cost_by_provider"][name];
        (
            c["llm_calls"].as_u64().unwrap(),
            c["input_tokens"].as_u64().unwrap(),
            c["output_tokens"].as_u64().unwrap(),
        )
    };

    // Step 1: two samples, each failing on "a" then answered by "b"; step 2: one call on "b".
    let pipe = Pipe::new()
        .step_with_provider(
            Arc::new(chain("a", "b", true)),
            Consensus::new().samples(2).max_concurrency(1),
        )
        .step_with_provider(Arc::new(router), Consensus::new().samples(1));
    let r = pipe.run(&provider(&up), "q", &fast()).await.unwrap();
    let m = Value::Object(r.metadata.clone());
    assert_eq!(cost(&m, "a"), (2, 0, 0));
    assert_eq!(cost(&m, "b"), (3, 9, 6), "both steps' b: {m}");
    assert_eq!(m["cost_by_provider"].as_object().unwrap().len(), 2);
    assert_eq!(r.cost, TokenUsage::new(9, 6, 5));
    // Each step's own.
    let step = |i: usize| Value::Object(r.stats.step_metadata[i].clone());
    assert_eq!(cost(&step(0), "b"), (2, 6, 4));
    assert_eq!(cost(&step(1), "b"), (1, 3, 2));
    assert!(step(1)["cost_by_provider"].get("a").is_none());

    // Step 2 fails on a chain whose providers are both down ("c", then "b" again).
    let pipe = Pipe::new()
        .step_with_provider(
            Arc::new(chain("a", "b", true)),
            Consensus::new().samples(2).max_concurrency(1),
        )
        .step_with_provider(
            Arc::new(chain("c", "b", false)),
            Consensus::new().samples(1),
        );
    let e = pipe.run(&provider(&up), "q", &fast()).await.unwrap_err();
    let m = Value::Object(e.metadata().clone());
    assert_eq!(m["failed_step"], 1);
    assert_eq!(cost(&m, "a"), (2, 0, 0));
    assert_eq!(cost(&m, "b"), (3, 6, 4), "{m}");
    assert_eq!(cost(&m, "c"), (1, 0, 0));
    assert_eq!(e.cost(), TokenUsage::new(6, 4, 6));
    let by = m["cost_by_provider"].as_object().unwrap();
    let calls: u64 = by.values().map(|c| c["llm_calls"].as_u64().unwrap()).sum();
    assert_eq!(calls, e.cost().llm_calls, "the shares add up to the spend");

    // No chain or router in any step: no key.
    let r = Pipe::new()
        .step(Consensus::new().samples(1))
        .step(Consensus::new().samples(1))
        .run(&provider(&up), "q", &fast())
        .await
        .unwrap();
    assert!(r.metadata.get("cost_by_provider").is_none());
}
