//! The blocking API (issue #10 item 9), used as a program without a runtime uses it: every test
//! here is a plain `#[test]` calling `executionkit::blocking` from a thread with no Tokio
//! runtime (no `#[tokio::test]`). A real HTTP provider (wiremock on 127.0.0.1, running on its
//! own thread) checks that pooled connections work from one blocking call to the next.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use executionkit::Tool;
use executionkit::{
    Budget, Choice, Consensus, Kit, LlmResponse, MapReduce, MockProvider, OpenAiProvider, Pipe,
    ReactLoop, RefineLoop, RunContext, StructuredValue, ToolCall, blocking, structured,
};
use serde_json::json;

fn ctx() -> RunContext {
    RunContext::new()
}

#[test]
fn consensus_refine_and_pipe_block_until_done() {
    let p = MockProvider::new(["Paris", "Paris", "Lyon"]);
    let r = blocking::consensus(&Consensus::new().samples(3), &p, "Capital?", &ctx()).unwrap();
    assert_eq!((r.value.as_str(), r.cost.llm_calls), ("Paris", 3));

    let p = MockProvider::new(["draft", "4", "better", "9"]);
    let r =
        blocking::refine_loop(&RefineLoop::new().target_score(0.9), &p, "Write", &ctx()).unwrap();
    assert_eq!(r.value, "better");
    assert_eq!(r.cost.llm_calls, 4);

    let p = MockProvider::new(["Paris", "Paris", "Lyon", "9"]);
    let pipe = Pipe::new()
        .step(Consensus::new().samples(3))
        .step(RefineLoop::new().target_score(0.9))
        .max_budget(Budget::new().max_calls(30));
    let r = blocking::pipe(&pipe, &p, "Capital?", &ctx()).unwrap();
    assert_eq!((r.value.as_str(), r.cost.llm_calls), ("Paris", 4));
    // The generic form takes any Pattern, the pipe included.
    let r = blocking::run(&pipe, &p, "Capital?", &ctx()).unwrap();
    assert_eq!(r.metadata["step_count"], 2);
}

#[test]
fn react_runs_its_tools_on_the_blocking_runtime() {
    let reply = LlmResponse {
        choices: vec![Choice {
            content: String::new(),
            tool_calls: vec![ToolCall::new("c1", "add", json!({"a": 2, "b": 3}))],
            finish_reason: Some("tool_calls".into()),
            logprobs: None,
        }],
        ..LlmResponse::default()
    };
    let p = MockProvider::new([reply, LlmResponse::text("5")]);
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Add {
        a: i64,
        b: i64,
    }
    let ran = Arc::new(AtomicUsize::new(0));
    let r2 = Arc::clone(&ran);
    let add = Tool::typed("add", "Adds", move |x: Add| {
        let r2 = Arc::clone(&r2);
        async move {
            r2.fetch_add(1, Ordering::SeqCst);
            // A tool may use the runtime's timers: the blocking runtime has them.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            Ok((x.a + x.b).to_string())
        }
    });
    let r = blocking::react(&ReactLoop::new().tools([add]), &p, "2 + 3?", &ctx()).unwrap();
    assert_eq!(r.value, "5");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn structured_and_map_reduce_block_too() {
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct City {
        name: String,
    }
    let p = MockProvider::new([r#"{"name": "Paris"}"#]);
    let r = blocking::structured(&structured::<City>(), &p, "City?", &ctx()).unwrap();
    assert_eq!(r.value.name, "Paris");
    let r = blocking::structured_value(&StructuredValue::new(), &p, "City?", &ctx()).unwrap();
    assert_eq!(r.value["name"], "Paris");

    let p = MockProvider::new(["a", "b", "a and b"]);
    let items = vec!["doc a".to_owned(), "doc b".to_owned()];
    let mr = MapReduce::new()
        .map_template("Summarise: {item}")
        .reduce_template("Combine: {mapped_outputs}")
        .max_concurrency(1);
    let r = blocking::map_reduce(&mr, &p, &items, &ctx()).unwrap();
    assert_eq!(r.value, "a and b");
}

#[test]
fn errors_come_back_as_values_with_their_spend() {
    let p = MockProvider::new(["a"]);
    let c = RunContext::new().budget(Budget::new().max_calls(2));
    let e = blocking::consensus(&Consensus::new().samples(3), &p, "q", &c).unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    // Invalid options are refused before any call, as in the async API.
    let e = blocking::consensus(&Consensus::new().samples(0), &p, "q", &ctx()).unwrap_err();
    assert!(e.is_invalid_argument());
}

#[test]
fn many_threads_may_block_at_once() {
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let answer = format!("answer {i}");
                let p = MockProvider::new([answer.as_str()]);
                let r = blocking::consensus(&Consensus::new().samples(5), &p, "q", &ctx()).unwrap();
                assert_eq!(r.value, answer);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_kit_session_blocks_through_block_on() {
    let kit = Kit::new(MockProvider::new(["hello", "again"]));
    let first = blocking::block_on(kit.turn("hi")).unwrap();
    assert_eq!(first.value, "hello");
    let r = blocking::block_on(kit.turn("more")).unwrap();
    assert_eq!(r.value, "again");
    assert_eq!(kit.messages().len(), 4);
}

#[test]
fn inside_a_runtime_it_refuses_instead_of_panicking() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let p = MockProvider::new(["x"]);
    let e = rt
        .block_on(async { blocking::consensus(&Consensus::new().samples(1), &p, "q", &ctx()) })
        .unwrap_err();
    assert!(e.is_invalid_argument(), "{e}");
    assert_eq!(e.metadata()["argument"], "runtime");
    assert!(e.message().contains("await the async API"), "{e}");
    assert_eq!(p.call_count(), 0);
    // The same from a multi-thread runtime's task.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let e = rt
        .block_on(async {
            tokio::spawn(async { blocking::block_on(async { Ok(()) }) })
                .await
                .unwrap()
        })
        .unwrap_err();
    assert!(e.is_invalid_argument());
    // Outside again, it works.
    let r = blocking::consensus(&Consensus::new().samples(1), &p, "q", &ctx()).unwrap();
    assert_eq!(r.value, "x");
}

/// A real HTTP provider: the transport's connection tasks live on the blocking runtime, so a
/// second call (a pooled connection) works like the first.
#[test]
fn a_real_http_provider_across_blocking_calls() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    // The server runs on its own runtime and thread; the test thread has none.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_rt.block_on(async {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "c1",
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            })))
            .mount(&server)
            .await;
        server
    });
    let provider = OpenAiProvider::builder(format!("{}/v1", server.uri()), "m")
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = blocking::consensus(&Consensus::new().samples(2), &provider, "Capital?", &ctx())
            .unwrap();
        assert_eq!(r.value, "Paris");
        assert_eq!(r.cost.input_tokens, 6);
    }
    let received = server_rt.block_on(server.received_requests()).unwrap();
    assert_eq!(received.len(), 6);
}
