//! A scripted OpenAI-compatible endpoint on 127.0.0.1 (wiremock) and the pieces the provider
//! layer tests share: a server answering every chat completion one way, a provider for it, how
//! many requests it received, and a run context whose retries wait a millisecond.

use std::time::Duration;

use executionkit::{OpenAiProvider, RetryPolicy, RunContext};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The chat-completions path.
pub const PATH: &str = "/v1/chat/completions";

/// A 200 reply with `content`, 3 prompt and 2 completion tokens.
pub fn ok(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    }))
}

/// A server answering every chat completion with `template`.
pub async fn server(template: ResponseTemplate) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(template)
        .mount(&s)
        .await;
    s
}

/// An OpenAI-compatible provider for `s`, model `m`.
pub fn provider(s: &MockServer) -> OpenAiProvider {
    OpenAiProvider::new(format!("{}/v1", s.uri()), "m").unwrap()
}

/// The requests `s` received.
pub async fn received(s: &MockServer) -> u64 {
    s.received_requests().await.unwrap().len() as u64
}

/// A context whose retries wait 1 to 5 ms.
pub fn fast() -> RunContext {
    RunContext::new().retry(
        RetryPolicy::new()
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(5)),
    )
}
