//! The refine judge asks for `{"score": N}` through a JSON-schema `response_format`, and falls
//! back to plain text when the endpoint refuses it, remembered by the provider for later runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::internals::judge::judge_response_format;
use executionkit::{OpenAiProvider, RefineLoop, RunContext};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

fn reply(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2}
    }))
}

/// Refuses `response_format` with a 400 (as a server without JSON-schema support does);
/// answers judge prompts with a score and anything else with a draft.
struct NoSchema;

impl Respond for NoSchema {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        if body.get("response_format").is_some() {
            return ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "error": {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}
            }));
        }
        let judged = body["messages"].to_string().contains("response_to_rate");
        reply(if judged { "6" } else { "a draft" })
    }
}

/// Honours `response_format` (a JSON score), as llama-server's grammar does.
struct Schema;

impl Respond for Schema {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        match body.get("response_format") {
            Some(f) => {
                assert_eq!(*f, judge_response_format());
                reply(r#"{"score": 10}"#)
            }
            None => reply("a draft"),
        }
    }
}

async fn server(r: impl Respond + 'static) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(r)
        .mount(&s)
        .await;
    s
}

#[tokio::test]
async fn a_refused_response_format_is_asked_again_in_plain_text_and_remembered() {
    let s = server(NoSchema).await;
    let p = OpenAiProvider::new(format!("{}/v1", s.uri()), "m").unwrap();
    let r = RefineLoop::new()
        .max_iterations(2)
        .target_score(0.99)
        .run(&p, "Write a haiku", &RunContext::new())
        .await
        .unwrap();
    let bodies: Vec<serde_json::Value> = s
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let with_format = bodies
        .iter()
        .filter(|b| b.get("response_format").is_some())
        .count();
    // Only the first judge call carried it; the refusal was counted as a call.
    assert_eq!(with_format, 1);
    assert_eq!(r.cost.llm_calls as usize, bodies.len());
    assert_eq!(r.score, Some(0.6));

    // A later run on the same provider (or a clone) asks in plain text from the start.
    let again = RefineLoop::new()
        .max_iterations(1)
        .target_score(0.99)
        .run(&p.clone(), "Write a limerick", &RunContext::new())
        .await
        .unwrap();
    let all = s.received_requests().await.unwrap();
    let with_format = all
        .iter()
        .filter(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body)
                .unwrap()
                .get("response_format")
                .is_some()
        })
        .count();
    assert_eq!(with_format, 1, "the refusal was not remembered");
    assert_eq!(again.cost.llm_calls as usize, all.len() - bodies.len());
    // A new provider for the same endpoint has not seen the refusal: it asks once more.
    let fresh = OpenAiProvider::new(format!("{}/v1", s.uri()), "m").unwrap();
    let r = RefineLoop::new()
        .max_iterations(0)
        .run(&fresh, "Write a poem", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.score, Some(0.6));
    let with_format = s
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body)
                .unwrap()
                .get("response_format")
                .is_some()
        })
        .count();
    assert_eq!(with_format, 2);
}

#[tokio::test]
async fn a_json_score_is_read() {
    let s = server(Schema).await;
    let p = OpenAiProvider::new(format!("{}/v1", s.uri()), "m").unwrap();
    let r = RefineLoop::new()
        .run(&p, "Write a haiku", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.score, Some(1.0));
    assert_eq!(r.cost.llm_calls, 2, "a draft and one judge call");
}
