//! The tool loop and streaming against real servers and a real model (SmolLM2-135M,
//! TESTING.md §1):
//!
//! * react_loop against llama-cpp-python's server with `--chat_format chatml-function-calling`
//!   (`eval "$(scripts/start-llama-tools.sh)"; export EK_LLAMA_TOOLS_URL`), which makes the model
//!   emit real tool calls;
//! * `stream_completion` and `Kit::stream` against llama-server
//!   (`eval "$(scripts/start-llama.sh)"; export EK_LLAMA_URL EK_LLAMA_KEY`).
//!
//! Without the URL a test says so and passes; with `EK_REQUIRE_SERVERS=1` it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use executionkit::Tool;
use executionkit::{
    Budget, ChatRequest, Kit, Message, OpenAiProvider, ReactLoop, RetryPolicy, RunContext,
    ToolChoice, WithCallOptions, stream_completion,
};
use futures::StreamExt;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Add {
    /// The first number.
    a: i64,
    /// The second number.
    b: i64,
}

/// The two tests take turns at the one small server: under a loaded machine, a call queued
/// behind the other test's could time out, and the streaming test's budget leaves no call for a
/// retry.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn real_model_calls_a_tool_through_the_loop() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(url) = common::server_url("EK_LLAMA_TOOLS_URL", "scripts/start-llama-tools.sh") else {
        return;
    };
    let provider = OpenAiProvider::builder(url, "smollm2")
        .api_key("ek-unused-key")
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = Arc::clone(&runs);
    let add = Tool::typed("add", "Adds two integers a and b", move |x: Add| {
        r2.fetch_add(1, Ordering::SeqCst);
        async move { Ok((x.a + x.b).to_string()) }
    });
    let ctx = RunContext::new()
        .retry(RetryPolicy::none())
        .budget(Budget::new().max_calls(4));
    let r = ReactLoop::new()
        .initial_tool_choice(ToolChoice::Function("add".into()))
        .tool_choice(ToolChoice::None)
        .temperature(0.0)
        .seed(42)
        .max_tokens(64)
        .max_rounds(2)
        .tools([add])
        .run(&provider, "What is 2 plus 3? Use the add tool.", &ctx)
        .await
        .unwrap();
    eprintln!(
        "answer: {:?}\nmetadata: {}",
        r.value, r.metadata["messages"]
    );
    assert_eq!(r.metadata["termination_reason"], "natural");
    assert_eq!(r.metadata["rounds"], 2);
    assert!(r.metadata["tool_calls_made"].as_u64().unwrap() >= 1);
    let transcript = r.metadata["messages"].as_array().unwrap();
    assert_eq!(transcript[1]["role"], "assistant");
    assert_eq!(transcript[1]["tool_calls"][0]["function"]["name"], "add");
    assert_eq!(transcript[2]["role"], "tool");
    // The grammar-constrained arguments fit the schema, so the body ran.
    assert!(
        runs.load(Ordering::SeqCst) >= 1,
        "{}",
        transcript[2]["content"]
    );
    assert!(r.cost.llm_calls == 2 && r.cost.output_tokens > 0);
}

#[tokio::test]
async fn real_server_streams_through_the_budget() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(url) = common::server_url("EK_LLAMA_URL", "scripts/start-llama.sh") else {
        return;
    };
    let key = std::env::var("EK_LLAMA_KEY").unwrap_or_else(|_| "ek-test-key".to_owned());
    let provider = Arc::new(
        OpenAiProvider::builder(url, "smollm2")
            .api_key(key)
            .build()
            .unwrap(),
    );
    let ctx = RunContext::new().budget(Budget::new().max_calls(2).max_output_tokens(24));
    let req = ChatRequest::new(vec![Message::user("Count from one to five.")])
        .temperature(0.0)
        .seed(1)
        .max_tokens(16);
    let mut s = stream_completion(provider.clone(), req.clone(), &ctx)
        .await
        .unwrap();
    let mut deltas = 0;
    let mut text = String::new();
    while let Some(d) = s.next().await {
        text.push_str(&d.unwrap());
        deltas += 1;
    }
    assert!(deltas > 1, "{text:?}");
    let cost = s.cost();
    assert_eq!(cost.llm_calls, 1);
    assert!(cost.input_tokens > 0 && cost.output_tokens > 0 && cost.output_tokens <= 16);
    assert_eq!(s.response().unwrap().content(), text);

    // The Kit adds the stream's usage once drained; the second stream gets what is left of the
    // 24 output tokens as its max_tokens, so the limit holds.
    let kit = Kit::from_arc(provider).context(ctx.clone());
    let r = kit
        .stream_request(req)
        .await
        .unwrap()
        .collect_text()
        .await
        .unwrap();
    assert_eq!(kit.usage(), r.cost);
    assert!(ctx.ledger().spent().output_tokens <= 24);
    // Both calls are used: a third stream fails before anything is sent.
    assert!(kit.stream("again").await.unwrap_err().is_budget_exhausted());
}
