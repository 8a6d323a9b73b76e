//! One conformance suite, run unchanged against every provider that ships with the crate: the
//! mock, the embedded offline model, the `AnthropicProvider` against a loopback fake of the
//! Messages API (wiremock), and the HTTP `OpenAiProvider` against llama-server + SmolLM2 when
//! `EK_LLAMA_URL` is set (see `tests/real_server.rs` for how to start it). The two HTTP
//! providers run over plain http/1.1, https/1.1 and https/2 (`name::http1`, `name::https1`,
//! `name::https2`; see `common::wire`); the mock and the offline model have no wire.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use executionkit::CostTracker;
use executionkit::{
    ChatRequest, LlmProvider, LlmResponse, Message, MockProvider, OfflineModel, RunContext,
    StreamEvent,
};
use futures::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use common::wire::{Front, Wire, WireMock};

fn request() -> ChatRequest {
    ChatRequest::new(vec![Message::user("Name a colour.")])
        .max_tokens(12)
        .temperature(0.0)
        .seed(1)
}

/// Every rule a provider must keep, whatever it is.
async fn conformance(name: &str, p: Arc<dyn LlmProvider>) {
    // complete: at least one choice with text, a finish reason and the usage.
    let r = p.complete(&request()).await.unwrap();
    assert!(!r.choices.is_empty(), "{name}: no choice");
    assert!(!r.content().trim().is_empty(), "{name}: empty text");
    assert!(r.finish_reason().is_some(), "{name}: no finish reason");
    assert!(r.usage.output_tokens > 0, "{name}: no usage");
    assert!(r.usage.output_tokens <= 12, "{name}: max_tokens ignored");

    // Through the checked call path the tracker records exactly the reported usage.
    let ctx = RunContext::new();
    let t = CostTracker::new();
    let r = ctx.complete(p.as_ref(), request(), &t).await.unwrap();
    assert_eq!(t.usage().input_tokens, r.usage.input_tokens, "{name}");
    assert_eq!(t.usage().output_tokens, r.usage.output_tokens, "{name}");
    assert_eq!(t.usage().llm_calls, 1, "{name}");

    // A bad argument is refused before anything is sent or counted.
    let t = CostTracker::new();
    let e = ctx
        .complete(p.as_ref(), request().temperature(f64::NAN), &t)
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument(), "{name}: {e:?}");
    assert_eq!(t.usage().llm_calls, 0, "{name}");

    // n: as many choices as asked, when the provider says it honours n.
    if p.supports_n() {
        let r = p.complete(&request().n(2)).await.unwrap();
        assert_eq!(r.choices.len(), 2, "{name}: n ignored");
    }

    // stream: deltas, then exactly one Finished whose text is the deltas' concatenation.
    if p.supports_streaming() {
        let items: Vec<StreamEvent> = p.stream(request()).map(|e| e.unwrap()).collect().await;
        let finished: Vec<&LlmResponse> = items
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Finished(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(finished.len(), 1, "{name}: one Finished");
        assert!(
            matches!(items.last(), Some(StreamEvent::Finished(_))),
            "{name}: Finished comes last"
        );
        let text: String = items
            .iter()
            .filter_map(|e| match e {
                StreamEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(finished[0].content(), text, "{name}");
        assert!(
            finished[0].usage.output_tokens > 0,
            "{name}: streamed usage"
        );
    }
}

#[tokio::test]
async fn mock_provider_conforms() {
    let p = MockProvider::new([
        LlmResponse::text("Blue.").with_usage(6, 2),
        LlmResponse::text("Red.").with_usage(6, 2),
    ])
    .with_n_support();
    conformance("mock", Arc::new(p)).await;
}

#[tokio::test]
async fn offline_model_conforms() {
    conformance("offline", Arc::new(OfflineModel::new())).await;
}

/// A fake of Anthropic's Messages API: "Blue." as one JSON message, or as the documented event
/// stream when the request asks to stream.
struct FakeMessages;

impl Respond for FakeMessages {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let usage = json!({"input_tokens": 6, "output_tokens": 2});
        if body["stream"] != true {
            return ResponseTemplate::new(200).set_body_json(json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
                "content": [{"type": "text", "text": "Blue."}],
                "stop_reason": "end_turn", "stop_sequence": null, "usage": usage,
            }));
        }
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude-test", "content": [],
                "usage": {"input_tokens": 6, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "Bl"}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "ue."}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                   "usage": {"output_tokens": 2}}),
            json!({"type": "message_stop"}),
        ];
        let text: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect();
        ResponseTemplate::new(200).set_body_raw(text, "text/event-stream")
    }
}

over_wires!(anthropic_provider_conforms_against_a_fake);
async fn anthropic_provider_conforms_against_a_fake(wire: Wire) {
    let server = WireMock::start(wire).await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(FakeMessages)
        .mount(&server)
        .await;
    let p = server
        .front()
        .anthropic(server.uri(), "claude-test")
        .api_key("sk-ant-test")
        .build()
        .unwrap();
    conformance(&format!("anthropic over {wire}"), Arc::new(p)).await;
}

over_wires!(http_provider_conforms_against_llama_server);
async fn http_provider_conforms_against_llama_server(wire: Wire) {
    let Some((url, key)) = common::llama() else {
        return;
    };
    let front = Front::start(wire, &url).await;
    let p = front
        .builder(front.uri(), "smollm2")
        .api_key(key)
        .supports_n(true)
        .build()
        .unwrap();
    conformance(&format!("llama-server over {wire}"), Arc::new(p)).await;
}
