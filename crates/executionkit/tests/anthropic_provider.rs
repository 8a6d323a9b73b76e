//! The native Anthropic Messages provider against a loopback fake (wiremock on 127.0.0.1) that
//! follows the documented wire shapes: the request it sends, text and tool replies, a react
//! tool round, streaming (`message_start`, content blocks with `text_delta` and
//! `input_json_delta`, `ping`, `message_delta`, `message_stop`, `error`), status mapping,
//! prompt-cache usage and money, and the key kept out of every error. Consensus, refine and
//! structured run over it as over any provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use executionkit::CostTracker;
use executionkit::Tool;
use executionkit::structured;
use executionkit::{
    AnthropicProvider, Budget, ChatRequest, Consensus, CostRates, Error, LlmProvider, Message,
    ReactLoop, RefineLoop, RetryPolicy, RunContext, StreamEvent, ToolSpec,
};
use futures::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const PATH: &str = "/v1/messages";
const KEY: &str = "sk-ant-api03-secretkeyvalue0123456789";

/// A Messages reply holding `content` blocks.
#[allow(clippy::needless_pass_by_value)] // called with `json!` literals
fn message(content: Value, stop_reason: &str, usage: Value) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage,
    })
}

fn text_reply(text: &str) -> Value {
    message(
        json!([{"type": "text", "text": text}]),
        "end_turn",
        json!({"input_tokens": 12, "output_tokens": 3}),
    )
}

/// An SSE body: `event: <name>` and `data: <json>` per event.
fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

fn sse_template(events: &[Value]) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(sse(events), "text/event-stream")
}

async fn server_with(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn provider(server: &MockServer) -> AnthropicProvider {
    AnthropicProvider::builder(server.uri(), "claude-test")
        .api_key(KEY)
        .build()
        .unwrap()
}

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

fn bodies(reqs: &[Request]) -> Vec<Value> {
    reqs.iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// The key appears nowhere a user could see it.
fn assert_no_key(e: &Error) {
    for text in [e.to_string(), format!("{e:?}"), e.to_json().to_string()] {
        assert!(!text.contains(KEY), "{text}");
        assert!(!text.contains("secretkeyvalue"), "{text}");
    }
}

#[tokio::test]
async fn text_reply_sends_the_documented_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(text_reply("Hello!")))
        .mount(&server)
        .await;
    let req = ChatRequest::new(vec![
        Message::system("Be brief."),
        Message::user("Say hello."),
    ])
    .temperature(0.2)
    .max_tokens(64)
    .stop(["\n\n"]);
    let r = provider(&server).complete(&req).await.unwrap();
    assert_eq!(r.content(), "Hello!");
    assert_eq!(r.finish_reason(), Some("stop"));
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (12, 3));
    assert_eq!(r.model.as_deref(), Some("claude-test"));
    assert_eq!(r.id.as_deref(), Some("msg_01XFDUDYJgAACzvnptvVoYEL"));

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].headers.get("authorization").is_none());
    assert_eq!(
        bodies(&reqs)[0],
        json!({
            "model": "claude-test",
            "max_tokens": 64,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello."}],
            "temperature": 0.2,
            "stop_sequences": ["\n\n"],
        })
    );
}

#[tokio::test]
async fn max_tokens_is_always_sent() {
    let server = server_with(ResponseTemplate::new(200).set_body_json(text_reply("x"))).await;
    let p = AnthropicProvider::builder(server.uri(), "claude-test")
        .default_max_tokens(333)
        .build()
        .unwrap();
    p.complete(&hi()).await.unwrap();
    let b = bodies(&server.received_requests().await.unwrap());
    assert_eq!(b[0]["max_tokens"], 333);
    // Through the engine the request carries the ledger's grant.
    let ctx = RunContext::new().budget(Budget::new().max_output_tokens(50));
    ctx.complete(&p, hi(), &CostTracker::new()).await.unwrap();
    let b = bodies(&server.received_requests().await.unwrap());
    assert_eq!(b[1]["max_tokens"], 50);
}

/// The fake of a tool round: a `tool_use` first, then (once the tool result is in the
/// conversation) the final text.
struct ToolRound;

impl Respond for ToolRound {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let messages = body["messages"].as_array().unwrap();
        let answered = messages.iter().any(|m| {
            m["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
        });
        let reply = if answered {
            text_reply("2 + 3 = 5.")
        } else {
            message(
                json!([
                    {"type": "text", "text": "I'll add them."},
                    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "add",
                     "input": {"a": 2, "b": 3}},
                ]),
                "tool_use",
                json!({"input_tokens": 40, "output_tokens": 20}),
            )
        };
        ResponseTemplate::new(200).set_body_json(reply)
    }
}

fn add_tool() -> Tool {
    Tool::new(
        "add",
        "Adds two integers",
        json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        }),
        |args| async move {
            let a = args["a"].as_i64().unwrap_or(0);
            let b = args["b"].as_i64().unwrap_or(0);
            Ok((a + b).to_string())
        },
    )
}

#[tokio::test]
async fn react_loop_runs_a_tool_round() {
    let server = server_with_responder(ToolRound).await;
    let p = provider(&server);
    let r = ReactLoop::new()
        .tools([add_tool()])
        .run(&p, "What is 2 + 3?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "2 + 3 = 5.");
    assert_eq!(r.cost.llm_calls, 2);
    assert_eq!(r.cost.input_tokens, 52);

    let b = bodies(&server.received_requests().await.unwrap());
    assert_eq!(b.len(), 2);
    assert_eq!(
        b[0]["tools"],
        json!([{
            "name": "add",
            "description": "Adds two integers",
            "input_schema": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        }])
    );
    let second = b[1]["messages"].as_array().unwrap();
    assert_eq!(
        second[0],
        json!({"role": "user", "content": "What is 2 + 3?"})
    );
    assert_eq!(second[1]["role"], "assistant");
    assert_eq!(
        second[1]["content"][1],
        json!({"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "add",
               "input": {"a": 2, "b": 3}})
    );
    assert_eq!(second[2]["role"], "user");
    let result = &second[2]["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], "toolu_01A09q90qw90lq917835lq9");
    assert!(
        result["content"].as_str().unwrap().contains('5'),
        "{result}"
    );
    // Roles alternate: nothing else follows the tool result.
    assert_eq!(second.len(), 3);
}

async fn server_with_responder(r: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(r)
        .mount(&server)
        .await;
    server
}

/// The documented stream of a reply that says something, then calls a tool.
fn tool_stream() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_014p7gG3wDgGV9EUtLvnow3U",
            "type": "message", "role": "assistant", "model": "claude-test", "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 2}}}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": "Okay, let's check"}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": " the weather."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1,
               "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                                 "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1,
               "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 1,
               "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
        json!({"type": "content_block_delta", "index": 1,
               "delta": {"type": "input_json_delta", "partial_json": " \"San Francisco, CA\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"output_tokens": 89}}),
        json!({"type": "message_stop"}),
    ]
}

#[tokio::test]
async fn streaming_with_tool_use_deltas_and_a_ping() {
    let server = server_with(sse_template(&tool_stream())).await;
    let p = provider(&server);
    let weather = ToolSpec::new("get_weather", "Weather", json!({"type": "object"}));
    let items: Vec<StreamEvent> = p
        .stream(hi().tools(vec![weather]))
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(
        items[..2],
        [
            StreamEvent::TextDelta("Okay, let's check".into()),
            StreamEvent::TextDelta(" the weather.".into()),
        ]
    );
    assert_eq!(
        items[2],
        StreamEvent::ToolCallDelta {
            index: 0,
            id: Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6".into()),
            name: Some("get_weather".into()),
            arguments: String::new(),
        }
    );
    let args: String = items
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, "{\"location\": \"San Francisco, CA\"}");
    let finished: Vec<_> = items
        .iter()
        .filter(|e| matches!(e, StreamEvent::Finished(_)))
        .collect();
    assert_eq!(finished.len(), 1);
    let Some(StreamEvent::Finished(r)) = items.last() else {
        panic!("Finished is not last: {items:?}");
    };
    assert_eq!(r.content(), "Okay, let's check the weather.");
    assert_eq!(r.finish_reason(), Some("tool_calls"));
    assert_eq!(r.tool_calls()[0].name, "get_weather");
    assert_eq!(r.tool_calls()[0].arguments["location"], "San Francisco, CA");
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (472, 89));
    let b = bodies(&server.received_requests().await.unwrap());
    assert_eq!(b[0]["stream"], true);
}

#[tokio::test]
async fn a_streamed_call_through_the_engine_records_its_usage() {
    let server = server_with(sse_template(&tool_stream())).await;
    let p: Arc<dyn LlmProvider> = Arc::new(provider(&server));
    let mut s = executionkit::stream_completion(p, hi(), &RunContext::new())
        .await
        .unwrap();
    while let Some(e) = s.next().await {
        e.unwrap();
    }
    let cost = s.cost();
    assert_eq!(cost.llm_calls, 1);
    assert_eq!((cost.input_tokens, cost.output_tokens), (472, 89));
}

#[tokio::test]
async fn an_error_event_mid_stream_is_a_provider_error() {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude-test", "content": [],
            "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": "Partial"}}),
        json!({"type": "error", "error": {"type": "overloaded_error",
               "message": format!("Overloaded (key {KEY})")}}),
    ];
    let server = server_with(sse_template(&events)).await;
    let items: Vec<Result<StreamEvent, Error>> = provider(&server).stream(hi()).collect().await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        items[0].as_ref().unwrap(),
        &StreamEvent::TextDelta("Partial".into())
    );
    let e = items[1].as_ref().unwrap_err();
    assert!(e.is_provider(), "{e:?}");
    assert!(e.message().contains("overloaded_error"), "{e}");
    assert!(e.message().contains("Overloaded"), "{e}");
    assert_no_key(e);
}

#[tokio::test]
async fn a_stream_without_message_stop_ended_early() {
    let mut events = tool_stream();
    events.truncate(5); // cut after the text deltas
    let server = server_with(sse_template(&events)).await;
    let items: Vec<Result<StreamEvent, Error>> = provider(&server).stream(hi()).collect().await;
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("ended early"), "{e}");
}

#[tokio::test]
async fn a_429_is_rate_limited_with_its_retry_after() {
    let server = server_with(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "7")
            .set_body_json(
                json!({"type": "error", "error": {"type": "rate_limit_error",
                "message": "Number of request tokens has exceeded your per-minute rate limit"}}),
            ),
    )
    .await;
    let e = provider(&server).complete(&hi()).await.unwrap_err();
    assert!(e.is_rate_limited(), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(e.http_status(), Some(429));
}

fn overloaded() -> ResponseTemplate {
    ResponseTemplate::new(529).set_body_json(
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}

#[tokio::test]
async fn a_529_is_a_retryable_provider_error() {
    let server = server_with(overloaded()).await;
    let e = provider(&server).complete(&hi()).await.unwrap_err();
    assert!(e.is_provider(), "{e:?}");
    assert_eq!(e.http_status(), Some(529));
    assert!(e.message().contains("Overloaded"), "{e}");

    // The engine retries it, and counts both attempts.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(overloaded())
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(text_reply("ok")))
        .mount(&server)
        .await;
    let ctx = RunContext::new().retry(RetryPolicy::new().base_delay(Duration::ZERO));
    let t = CostTracker::new();
    let r = ctx.complete(&provider(&server), hi(), &t).await.unwrap();
    assert_eq!(r.content(), "ok");
    assert_eq!(t.usage().llm_calls, 2);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn statuses_map_to_our_kinds() {
    for status in [400, 401, 403, 404, 413] {
        let server = server_with(ResponseTemplate::new(status).set_body_json(
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}),
        ))
        .await;
        let e = provider(&server).complete(&hi()).await.unwrap_err();
        assert!(e.is_permanent(), "{status}: {e:?}");
        assert_eq!(e.http_status(), Some(status));
        assert!(e.message().contains("bad"), "{e}");
    }
    for status in [500, 502, 503] {
        let server = server_with(ResponseTemplate::new(status)).await;
        let e = provider(&server).complete(&hi()).await.unwrap_err();
        assert!(e.is_provider(), "{status}: {e:?}");
    }
}

#[tokio::test]
async fn cache_usage_is_summed_recorded_and_priced() {
    let usage = json!({"input_tokens": 10, "cache_creation_input_tokens": 200,
                       "cache_read_input_tokens": 1000, "output_tokens": 5});
    let server = server_with(ResponseTemplate::new(200).set_body_json(message(
        json!([{"type": "text", "text": "cached"}]),
        "end_turn",
        usage,
    )))
    .await;
    let p = provider(&server);
    let r = p.complete(&hi()).await.unwrap();
    assert_eq!(r.usage.input_tokens, 1210);
    assert_eq!(r.usage.cache_read_input_tokens, 1000);
    assert_eq!(r.usage.cache_write_input_tokens, 200);
    assert_eq!(r.usage.output_tokens, 5);

    // $3 in, $15 out, $0.30 cache reads, $3.75 cache writes (per million).
    let rates = CostRates::new(3.0, 15.0)
        .unwrap()
        .with_cache_read(0.3)
        .unwrap()
        .with_cache_write(3.75)
        .unwrap();
    let ctx = RunContext::new().budget(Budget::new().default_price(rates).max_usd(1.0));
    let result = Consensus::new()
        .samples(1)
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    assert_eq!(result.cost.input_tokens, 1210);
    assert_eq!(result.cost.cache_read_input_tokens, 1000);
    assert_eq!(result.cost.cache_write_input_tokens, 200);
    let expected = (10.0 * 3.0 + 1000.0 * 0.3 + 200.0 * 3.75 + 5.0 * 15.0) / 1e6;
    assert!((result.usd.unwrap() - expected).abs() < 1e-12, "{result:?}");
    let cost = &result.to_json()["cost"];
    assert_eq!(cost["cache_read_input_tokens"], 1000);
    assert_eq!(cost["cache_write_input_tokens"], 200);
    assert!(cost.get("reasoning_tokens").is_none());
}

#[tokio::test]
async fn the_key_never_appears_in_any_error() {
    let echo = format!("invalid x-api-key: {KEY}");
    let cases = [
        ResponseTemplate::new(401).set_body_json(
            json!({"type": "error", "error": {"type": "authentication_error", "message": echo}}),
        ),
        ResponseTemplate::new(500).set_body_string(echo.clone()),
        ResponseTemplate::new(200).set_body_string(format!("not json {KEY}")),
        ResponseTemplate::new(200).set_body_json(json!({"type": "error",
            "error": {"type": "api_error", "message": echo}})),
    ];
    for template in cases {
        let server = server_with(template).await;
        let p = provider(&server);
        let e = p.complete(&hi()).await.unwrap_err();
        assert_no_key(&e);
        // Through the engine and a pattern too.
        let e = Consensus::new()
            .samples(1)
            .run(&p, "q", &RunContext::new().retry(RetryPolicy::none()))
            .await
            .unwrap_err();
        assert_no_key(&e);
    }
    let bad_args = [json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": format!("data {KEY}")}})];
    let server = server_with(ResponseTemplate::new(200).set_body_raw(
        format!("{}data: {{not json {KEY}\n\n", sse(&bad_args)),
        "text/event-stream",
    ))
    .await;
    let items: Vec<Result<StreamEvent, Error>> = provider(&server).stream(hi()).collect().await;
    assert_no_key(items.last().unwrap().as_ref().unwrap_err());
    let p = provider(&server);
    assert!(!format!("{p:?}").contains(KEY));
    assert_eq!(p.secret(), Some(KEY));
}

// --------------------------------------------------------------- patterns over the provider

/// Replies by what is asked: the judge's envelope gets a score, a request for JSON gets a city,
/// anything else "Paris". Counts requests.
struct Patterns {
    calls: AtomicUsize,
}

impl Respond for Patterns {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&request.body);
        let reply = if text.contains("<response_to_rate>") {
            "9"
        } else if text.contains("JSON") {
            r#"{"name": "Tokyo", "population": 14000000}"#
        } else {
            "Paris"
        };
        ResponseTemplate::new(200).set_body_json(text_reply(reply))
    }
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct City {
    name: String,
    population: u64,
}

#[tokio::test]
async fn consensus_refine_and_structured_run_over_it() {
    let server = server_with_responder(Patterns {
        calls: AtomicUsize::new(0),
    })
    .await;
    let p = provider(&server);
    let ctx = RunContext::new();

    let r = Consensus::new()
        .samples(3)
        .run(&p, "Capital of France?", &ctx)
        .await
        .unwrap();
    assert_eq!(r.value, "Paris");
    assert_eq!(r.cost.llm_calls, 3);
    let b = bodies(&server.received_requests().await.unwrap());
    assert_eq!(b.len(), 3, "one request per sample: n is not supported");
    assert!(b.iter().all(|b| b.get("n").is_none()));

    let r = RefineLoop::new()
        .run(&p, "Capital of France?", &ctx)
        .await
        .unwrap();
    assert_eq!(r.value, "Paris");
    assert_eq!(r.score, Some(0.9));
    assert_eq!(r.metadata["termination_reason"], "target_reached");
    assert_eq!(r.cost.llm_calls, 2);

    let r = structured::<City>()
        .run(&p, "The largest city?", &ctx)
        .await
        .unwrap();
    assert_eq!(r.value.name, "Tokyo");
    assert_eq!(r.value.population, 14_000_000);
    let b = bodies(&server.received_requests().await.unwrap());
    let last = b.last().unwrap();
    assert!(
        last.get("response_format").is_none(),
        "the Messages API has no response_format"
    );
    assert_eq!(b.len(), 6);
}
