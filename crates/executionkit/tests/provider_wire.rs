//! Wire tests of the HTTP provider against wiremock (127.0.0.1 only): the exact request,
//! every status mapping, the parsing edge cases, transport failures and redaction. Each test
//! that talks to a server runs over plain http/1.1, https/1.1 and https/2 (`name::http1`,
//! `name::https1`, `name::https2`; see `common::wire`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error as _;
use std::time::Duration;

use executionkit::CostTracker;
use executionkit::internals::parse::{parse_arguments, parse_retry_after};
use executionkit::redact::redact;
use executionkit::{
    ChatRequest, Error, LlmProvider, LlmResponse, Message, OpenAiProvider, RetryPolicy, RunContext,
    ToolSpec,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod common;

use common::wire::{Wire, WireMock, closed_port_url};

const PATH: &str = "/v1/chat/completions";

fn ok_body(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    })
}

async fn server_with(wire: Wire, template: ResponseTemplate) -> WireMock {
    let server = WireMock::start(wire).await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn provider(server: &WireMock) -> OpenAiProvider {
    server
        .builder(format!("{}/v1", server.uri()), "test-model")
        .build()
        .unwrap()
}

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

async fn complete_with(wire: Wire, template: ResponseTemplate) -> Result<LlmResponse, Error> {
    let server = server_with(wire, template).await;
    provider(&server).complete(&hi()).await
}

async fn complete_json(wire: Wire, body: Value) -> Result<LlmResponse, Error> {
    complete_with(wire, ResponseTemplate::new(200).set_body_json(body)).await
}

async fn only_request(server: &MockServer) -> wiremock::Request {
    let mut reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    reqs.remove(0)
}

#[test]
fn s011_base_url_scheme_must_be_http_or_https() {
    for bad in [
        "file:///etc/passwd",
        "ftp://example.com/v1",
        "gopher://example.com",
        "data:text/plain,hello",
        "javascript:alert(1)",
        "dict://example.com:11211/",
    ] {
        let e = OpenAiProvider::new(bad, "m").unwrap_err();
        assert!(e.is_invalid_argument(), "{bad}");
        assert!(
            e.message().contains("scheme must be 'http' or 'https'"),
            "{bad}: {}",
            e.message()
        );
        assert_eq!(e.metadata()["argument"], "base_url");
    }
    let e = OpenAiProvider::new("file:///etc/passwd", "m").unwrap_err();
    assert!(e.message().contains("file://"));
    for good in [
        "http://localhost:11434/v1",
        "http://127.0.0.1:8080/v1",
        "http://192.168.1.100:11434/v1",
        "https://api.openai.com/v1",
    ] {
        let p = OpenAiProvider::new(good, "m").unwrap();
        assert_eq!(p.base_url(), good);
    }
}

#[test]
fn invalid_builder_arguments_name_the_argument() {
    let base = "http://127.0.0.1:9/v1";
    let cases: Vec<(Result<OpenAiProvider, Error>, &str)> = vec![
        (OpenAiProvider::new(base, ""), "model"),
        (OpenAiProvider::new(base, "  "), "model"),
        (OpenAiProvider::new("http://", "m"), "base_url"),
        (
            OpenAiProvider::new("http://exa mple.com/v1", "m"),
            "base_url",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .default_temperature(f64::NAN)
                .build(),
            "default_temperature",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .default_temperature(f64::INFINITY)
                .build(),
            "default_temperature",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .default_temperature(-0.1)
                .build(),
            "default_temperature",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .default_max_tokens(0)
                .build(),
            "default_max_tokens",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .header("bad name", "x")
                .build(),
            "header",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .header("x-ok", "line\nbreak")
                .build(),
            "header",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .api_key("sk-\nnewline")
                .build(),
            "api_key",
        ),
        (
            OpenAiProvider::builder(base, "m")
                .timeout(Duration::ZERO)
                .build(),
            "timeout",
        ),
    ];
    for (result, argument) in cases {
        let e = result.unwrap_err();
        assert!(e.is_invalid_argument(), "{e:?}");
        assert_eq!(e.metadata()["argument"], argument, "{e:?}");
        assert!(!e.message().contains("newline"), "{e:?}");
    }
}

#[test]
fn s012_debug_masks_the_api_key() {
    let p = OpenAiProvider::builder("https://api.example.com/v1", "gpt-x")
        .api_key("sk-real-secret")
        .build()
        .unwrap();
    let shown = format!("{p:?}");
    assert!(shown.contains("***"));
    assert!(shown.contains("https://api.example.com/v1"));
    assert!(shown.contains("gpt-x"));
    assert!(!shown.contains("sk-real-secret"));
    assert_eq!(p.secret(), Some("sk-real-secret"));

    let b =
        OpenAiProvider::builder("https://api.example.com/v1", "gpt-x").api_key("sk-real-secret");
    assert!(!format!("{b:?}").contains("sk-real-secret"));

    let p = OpenAiProvider::new("https://api.example.com/v1", "gpt-x").unwrap();
    assert!(!format!("{p:?}").contains("***"));
    assert_eq!(p.secret(), None);
}

over_wires!(s013_default_body_is_exact);
async fn s013_default_body_is_exact(wire: Wire) {
    let server = server_with(
        wire,
        ResponseTemplate::new(200).set_body_json(ok_body("hello")),
    )
    .await;
    let p = server
        .builder(format!("{}/v1/", server.uri()), "test-model")
        .default_temperature(0.25)
        .default_max_tokens(321)
        .build()
        .unwrap();
    let r = p.complete(&hi()).await.unwrap();
    assert_eq!(r.content(), "hello");
    let req = only_request(&server).await;
    assert_eq!(req.url.path(), PATH);
    assert_eq!(
        std::str::from_utf8(&req.body).unwrap(),
        r#"{"model":"test-model","messages":[{"role":"user","content":"hi"}],"temperature":0.25,"max_tokens":321}"#
    );
    assert_eq!(req.headers["content-type"], "application/json");
    assert!(req.headers.get("authorization").is_none());
}

over_wires!(s014_body_with_tools_and_top_p_and_a_truncated_reply);
async fn s014_body_with_tools_and_top_p_and_a_truncated_reply(wire: Wire) {
    let mut body = ok_body("partial");
    body["choices"][0]["finish_reason"] = json!("length");
    let server = server_with(wire, ResponseTemplate::new(200).set_body_json(body)).await;
    let tool = ToolSpec::new(
        "search",
        "Search the web",
        json!({"type": "object", "properties": {"q": {"type": "string"}}}),
    );
    let req = hi()
        .temperature(0.9)
        .max_tokens(12)
        .tools(vec![tool])
        .top_p(0.8);
    let r = provider(&server).complete(&req).await.unwrap();
    assert!(r.was_truncated());
    let sent: Value = only_request(&server).await.body_json().unwrap();
    assert_eq!(
        sent,
        json!({
            "model": "test-model",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.9,
            "max_tokens": 12,
            "tools": [{"type": "function", "function": {"name": "search", "description": "Search the web",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
            "top_p": 0.8
        })
    );
}

over_wires!(full_body_key_order_and_extras_merged_last);
async fn full_body_key_order_and_extras_merged_last(wire: Wire) {
    let server = server_with(wire, ResponseTemplate::new(200).set_body_json(ok_body("x"))).await;
    let req = hi()
        .model("other-model")
        .temperature(0.5)
        .max_tokens(7)
        .tool_choice(executionkit::ToolChoice::Required)
        .tools(vec![ToolSpec::new("f", "d", json!({"type": "object"}))])
        .response_format(json!({"type": "json_object"}))
        .top_p(1.0)
        .stop(["\n\n"])
        .seed(42)
        .n(3)
        .extra("user", "u1")
        .extra("top_p", 0.5);
    provider(&server).complete(&req).await.unwrap();
    let req = only_request(&server).await;
    let text = std::str::from_utf8(&req.body).unwrap();
    // Top-level keys in the documented order; `top_p` overridden in place by the extra.
    let order = [
        "\"model\":\"other-model\"",
        "\"messages\":",
        "\"temperature\":0.5",
        "\"max_tokens\":7",
        "\"tools\":",
        "\"tool_choice\":\"required\"",
        "\"response_format\":",
        "\"top_p\":0.5",
        "\"stop\":",
        "\"seed\":42",
        "\"n\":3",
        "\"user\":\"u1\"",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| {
            text.find(k)
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(text.matches("\"top_p\"").count(), 1);
    let sent: Value = req.body_json().unwrap();
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}])
    );
    assert_eq!(sent["stop"], json!(["\n\n"]));
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
}

over_wires!(headers_api_key_extra_headers_and_query);
async fn headers_api_key_extra_headers_and_query(wire: Wire) {
    let server = server_with(wire, ResponseTemplate::new(200).set_body_json(ok_body("x"))).await;
    let p = server
        .builder(format!("{}/v1", server.uri()), "m")
        .api_key("sk-test-key-123")
        .header("X-Org", "acme")
        .header("api-key", "azure-style")
        .query("api-version", "2024-10-21")
        .build()
        .unwrap();
    p.complete(&hi()).await.unwrap();
    let req = only_request(&server).await;
    assert_eq!(req.headers["authorization"], "Bearer sk-test-key-123");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-org"], "acme");
    assert_eq!(req.headers["api-key"], "azure-style");
    assert_eq!(req.url.path(), PATH);
    assert_eq!(req.url.query(), Some("api-version=2024-10-21"));
}

over_wires!(clones_share_one_pooled_client);
async fn clones_share_one_pooled_client(wire: Wire) {
    let server = server_with(wire, ResponseTemplate::new(200).set_body_json(ok_body("x"))).await;
    let p = provider(&server);
    let q = p.clone();
    let req = hi();
    let (a, b) = tokio::join!(p.complete(&req), q.complete(&req));
    assert_eq!(a.unwrap().content(), "x");
    assert_eq!(b.unwrap().content(), "x");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

over_wires!(invalid_request_is_rejected_before_sending);
async fn invalid_request_is_rejected_before_sending(wire: Wire) {
    let server = server_with(wire, ResponseTemplate::new(200).set_body_json(ok_body("x"))).await;
    let p = provider(&server);
    let e = p.complete(&hi().temperature(f64::NAN)).await.unwrap_err();
    assert!(e.is_invalid_argument());
    let e = p.complete(&ChatRequest::new(vec![])).await.unwrap_err();
    assert!(e.is_invalid_argument());
    assert!(server.received_requests().await.unwrap().is_empty());
}

over_wires!(s016_rate_limited_with_retry_after);
async fn s016_rate_limited_with_retry_after(wire: Wire) {
    let e = complete_with(
        wire,
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "3")
            .set_body_json(json!({"error": {"message": "slow down", "type": "rate_limit_error"}})),
    )
    .await
    .unwrap_err();
    assert!(e.is_rate_limited());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(e.http_status(), Some(429));
    assert!(e.message().contains("rate limited"));
    assert!(e.message().contains("HTTP 429"));
    assert!(!e.message().contains("slow down"));

    // Without the header the default is one second; an HTTP date is honoured.
    let e = complete_with(wire, ResponseTemplate::new(429))
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    let e = complete_with(
        wire,
        ResponseTemplate::new(429).insert_header("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::ZERO));
    // retry-after-ms (sent by some servers for sub-second waits) wins over Retry-After.
    let e = complete_with(
        wire,
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "1")
            .insert_header("retry-after-ms", "250"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
}

over_wires!(s016_rate_limited_while_streaming);
async fn s016_rate_limited_while_streaming(wire: Wire) {
    use futures::StreamExt;
    let server = server_with(
        wire,
        ResponseTemplate::new(429).insert_header("Retry-After", "3"),
    )
    .await;
    let items: Vec<_> = provider(&server).stream(hi()).collect().await;
    assert_eq!(items.len(), 1);
    let e = items.into_iter().next().unwrap().unwrap_err();
    assert!(e.is_rate_limited());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
}

over_wires!(insufficient_quota_429_is_permanent);
async fn insufficient_quota_429_is_permanent(wire: Wire) {
    for key in ["code", "type"] {
        let e = complete_with(wire, ResponseTemplate::new(429).set_body_json(
            json!({"error": {"message": "You exceeded your current quota", key: "insufficient_quota"}}),
        ))
        .await
        .unwrap_err();
        assert!(e.is_permanent(), "{e:?}");
        assert!(!e.is_retryable());
        assert_eq!(e.http_status(), Some(429));
        assert!(e.message().contains("exceeded your current quota"));
    }
}

over_wires!(s017_status_mapping);
async fn s017_status_mapping(wire: Wire) {
    for status in [400, 401, 403, 404, 405, 413, 422] {
        let e = complete_with(wire, ResponseTemplate::new(status))
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{status}: {e:?}");
        assert!(!e.is_provider());
        assert_eq!(e.http_status(), Some(status));
        assert_eq!(e.metadata()["http_status"], status);
        assert!(
            e.source().is_some(),
            "{status}: the HTTP error is the cause"
        );
    }
    for status in [408, 409, 500, 502, 503, 504] {
        let e = complete_with(wire, ResponseTemplate::new(status))
            .await
            .unwrap_err();
        assert!(e.is_provider(), "{status}: {e:?}");
        assert!(!e.is_permanent());
        assert!(e.is_retryable());
        assert_eq!(e.http_status(), Some(status));
        assert!(
            e.source().is_some(),
            "{status}: the HTTP error is the cause"
        );
    }
}

over_wires!(redirects_are_not_followed_and_are_errors);
async fn redirects_are_not_followed_and_are_errors(wire: Wire) {
    for status in [301, 302, 307, 308] {
        let server = WireMock::start(wire).await;
        Mock::given(method("POST"))
            .and(path(PATH))
            .respond_with(
                ResponseTemplate::new(status).insert_header("Location", "http://127.0.0.1:9/x"),
            )
            .mount(&server)
            .await;
        let e = provider(&server).complete(&hi()).await.unwrap_err();
        assert!(e.is_provider(), "{status}: {e:?}");
        assert_eq!(e.http_status(), Some(status));
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }
}

over_wires!(s018_error_details);
async fn s018_error_details(wire: Wire) {
    let e = complete_with(
        wire,
        ResponseTemplate::new(500).set_body_json(json!({"error": {"message": "server error"}})),
    )
    .await
    .unwrap_err();
    assert!(e.is_provider());
    assert_eq!(
        e.message(),
        "Provider request failed with HTTP 500: server error"
    );
    for body in [&b"not-json"[..], br#"["not","a","dict"]"#, b"{\"error\": {"] {
        let e = complete_with(
            wire,
            ResponseTemplate::new(500).set_body_bytes(body.to_vec()),
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("HTTP 500"), "{e:?}");
        assert_eq!(e.message(), "Provider request failed with HTTP 500");
    }
    let e = complete_with(
        wire,
        ResponseTemplate::new(502).set_body_json(json!({"error": {"code": "bad_gateway"}})),
    )
    .await
    .unwrap_err();
    assert_eq!(e.message(), "Provider request failed with HTTP 502");
    let e = complete_with(
        wire,
        ResponseTemplate::new(503).set_body_json(json!({"error": "overloaded"})),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.message(),
        "Provider request failed with HTTP 503: overloaded"
    );
}

over_wires!(s019_error_details_are_redacted);
async fn s019_error_details_are_redacted(wire: Wire) {
    let e = complete_with(
        wire,
        ResponseTemplate::new(401)
            .set_body_json(json!({"error": {"message": "key sk-abc123xyz invalid"}})),
    )
    .await
    .unwrap_err();
    assert!(e.is_permanent());
    assert!(e.message().contains("[REDACTED]"), "{e:?}");
    assert!(!e.message().contains("sk-abc123xyz"));
    let e = complete_with(
        wire,
        ResponseTemplate::new(500).set_body_json(json!({"error": "token secret-abcdef failed"})),
    )
    .await
    .unwrap_err();
    assert!(!e.message().contains("secret-abcdef"), "{e:?}");
    assert!(e.message().contains("[REDACTED]"));
}

over_wires!(hostile_server_echoing_the_key_never_leaks_it);
async fn hostile_server_echoing_the_key_never_leaks_it(wire: Wire) {
    // A key with no credential shape: only the literal replacement can catch it.
    let key = "plainkey0123456789";
    let echo = format!("your key {key} is invalid; Authorization: Bearer {key}");
    for status in [200, 400, 401, 429, 500] {
        let body = if status == 200 {
            // A 2xx body whose tool-call arguments echo the key in invalid JSON.
            json!({"choices": [{"message": {"tool_calls": [{"id": "1",
                "function": {"name": "f", "arguments": format!("{{{key}")}}]}}]})
        } else {
            json!({"error": {"message": echo, "code": "invalid_api_key"}})
        };
        let server = server_with(wire, ResponseTemplate::new(status).set_body_json(body)).await;
        let p = server
            .builder(format!("{}/v1", server.uri()), "m")
            .api_key(key)
            .build()
            .unwrap();
        if status == 200 {
            // Issue 5: bad argument JSON no longer fails the reply; the call carries a reason
            // that holds none of the argument text.
            let r = p.complete(&hi()).await.unwrap();
            assert!(r.tool_calls()[0].arguments_error.is_some());
            assert!(!format!("{r:?}").contains(key), "{r:?}");
            let r = RunContext::new()
                .retry(RetryPolicy::none())
                .complete(&p, hi(), &CostTracker::new())
                .await
                .unwrap();
            assert!(!format!("{r:?}").contains(key), "{r:?}");
            continue;
        }
        let e = p.complete(&hi()).await.unwrap_err();
        assert!(!e.message().contains(key), "{status}: {e:?}");
        assert!(!format!("{e:?}").contains(key));
        assert!(!format!("{e}").contains(key));
        assert!(!e.to_json().to_string().contains(key));
        let mut source = e.source();
        while let Some(s) = source {
            assert!(!s.to_string().contains(key));
            source = s.source();
        }
        // Through the engine as well.
        let e = RunContext::new()
            .retry(RetryPolicy::none())
            .complete(&p, hi(), &CostTracker::new())
            .await
            .unwrap_err();
        assert!(!e.message().contains(key), "{status}: {e:?}");
    }
}

over_wires!(non_json_and_non_object_2xx_bodies_are_provider_errors);
async fn non_json_and_non_object_2xx_bodies_are_provider_errors(wire: Wire) {
    for body in [&b"not json at all"[..], b"[1,2,3]", b"\"text\"", b"42", b""] {
        let e = complete_with(
            wire,
            ResponseTemplate::new(200).set_body_bytes(body.to_vec()),
        )
        .await
        .unwrap_err();
        assert!(e.is_provider(), "{body:?}: {e:?}");
    }
}

over_wires!(s022_null_finish_reason_and_non_object_usage);
async fn s022_null_finish_reason_and_non_object_usage(wire: Wire) {
    let r = complete_json(
        wire,
        json!({
            "choices": [{"message": {"content": "hello"}, "finish_reason": null}],
            "usage": ["not", "a", "dict"]
        }),
    )
    .await
    .unwrap();
    assert_eq!(r.content(), "hello");
    assert_eq!(r.usage.input_tokens, 0);
    assert_eq!(r.usage.output_tokens, 0);
    // Our documented rule: a null (or absent) finish_reason is `None`, not the string "None".
    assert_eq!(r.finish_reason(), None);
    assert!(!r.was_truncated());
}

over_wires!(s023_missing_or_malformed_choices);
async fn s023_missing_or_malformed_choices(wire: Wire) {
    let e = complete_json(wire, json!({})).await.unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("did not include any choices"));
    let e = complete_json(wire, json!({"choices": []}))
        .await
        .unwrap_err();
    assert!(e.message().contains("did not include any choices"));
    let e = complete_json(wire, json!({"choices": ["bad"]}))
        .await
        .unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("was not an object"));
}

over_wires!(s024_content_shapes);
async fn s024_content_shapes(wire: Wire) {
    let r = complete_json(wire, json!({"choices": [{"message": {"content":
        ["alpha", {"type": "text", "text": "beta"}, {"type": "output_text", "text": {"value": "gamma"}},
         {"value": "delta"}, 123]}}]}))
    .await
    .unwrap();
    assert_eq!(r.content(), "alphabetagammadelta");
    let r = complete_json(wire, json!({"choices": [{"message": {"content": 42}}]}))
        .await
        .unwrap();
    assert_eq!(r.content(), "42");
    let r = complete_json(wire, json!({"choices": [{"message": {"content": null}}]}))
        .await
        .unwrap();
    assert_eq!(r.content(), "");
    let r = complete_json(wire, json!({"choices": [{}]})).await.unwrap();
    assert_eq!(r.content(), "");
}

over_wires!(every_choice_is_returned);
async fn every_choice_is_returned(wire: Wire) {
    let r = complete_json(
        wire,
        json!({"choices": [
            {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"},
            {"index": 1, "message": {"content": "b"}, "finish_reason": "length"}
        ]}),
    )
    .await
    .unwrap();
    assert_eq!(r.choices.len(), 2);
    assert_eq!(r.choices[1].content, "b");
    assert_eq!(r.choices[1].finish_reason.as_deref(), Some("length"));
}

async fn tool_calls_reply(wire: Wire, tool_calls: Value) -> Result<LlmResponse, Error> {
    complete_json(
        wire,
        json!({"choices": [{"message": {"content": null, "tool_calls": tool_calls}}]}),
    )
    .await
}

over_wires!(s026_tool_call_payload_errors);
async fn s026_tool_call_payload_errors(wire: Wire) {
    for (payload, fragment) in [
        (json!("bad"), "payload was not a list"),
        (json!(["bad"]), "payload was not an object"),
        (
            json!([{"function": "bad"}]),
            "function payload was not an object",
        ),
        (
            json!([{"function": {"arguments": "{}"}}]),
            "name was missing",
        ),
    ] {
        let e = tool_calls_reply(wire, payload).await.unwrap_err();
        assert!(e.is_provider());
        assert!(e.message().contains(fragment), "{fragment}: {e:?}");
    }
    let r = tool_calls_reply(
        wire,
        json!([{"id": "c1", "type": "function",
        "function": {"name": "search", "arguments": "{\"q\":\"rust\"}"}}]),
    )
    .await
    .unwrap();
    assert_eq!(r.tool_calls()[0].id, "c1");
    assert_eq!(r.tool_calls()[0].name, "search");
    assert_eq!(r.tool_calls()[0].arguments["q"], "rust");
    let r = tool_calls_reply(wire, json!(null)).await.unwrap();
    assert!(r.tool_calls().is_empty());
    let r = tool_calls_reply(wire, json!([{"id": 7, "function": {"name": "f"}}]))
        .await
        .unwrap();
    assert_eq!(r.tool_calls()[0].id, "");
}

fn call_with(arguments: &Value) -> Value {
    json!([{"id": "c", "function": {"name": "f", "arguments": arguments}}])
}

over_wires!(s027_tool_call_arguments);
async fn s027_tool_call_arguments(wire: Wire) {
    let r = tool_calls_reply(wire, call_with(&json!(null)))
        .await
        .unwrap();
    assert!(r.tool_calls()[0].arguments.is_empty());
    let r = tool_calls_reply(wire, call_with(&json!({"x": 1})))
        .await
        .unwrap();
    assert_eq!(r.tool_calls()[0].arguments["x"], 1);
    // A non-string, non-object value is a malformed reply.
    let e = tool_calls_reply(wire, call_with(&json!(123)))
        .await
        .unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("dict or JSON string"), "{e:?}");
    // The parser itself rejects bad argument strings, with the reference's messages...
    for (args, fragment) in [
        (json!("{bad json}"), "were not valid JSON"),
        (json!("[\"not\",\"object\"]"), "decode to a JSON object"),
        (json!(123), "dict or JSON string"),
    ] {
        let e = parse_arguments(Some(&args), "f").unwrap_err();
        assert!(e.is_provider());
        assert!(e.message().contains(fragment), "{fragment}: {e:?}");
    }
    let leaky = json!("{\"api_key\":\"ghp_1234567890abcdef\"");
    let e = parse_arguments(Some(&leaky), "f").unwrap_err();
    assert!(e.message().contains("[REDACTED]"), "{e:?}");
    assert!(!e.message().contains("ghp_1234567890abcdef"));
    // ...but a reply carrying them is not rejected (issue 5): the call is kept with empty
    // arguments and a bounded reason that holds none of the argument text, so that a tool loop
    // can answer the model with an observation.
    for (args, fragment) in [
        (json!("{bad json}"), "arguments were not valid JSON"),
        (
            json!("[\"not\",\"object\"]"),
            "arguments did not decode to a JSON object",
        ),
        (leaky, "arguments were not valid JSON"),
    ] {
        let r = tool_calls_reply(wire, call_with(&args)).await.unwrap();
        let call = &r.tool_calls()[0];
        assert_eq!((call.id.as_str(), call.name.as_str()), ("c", "f"));
        assert!(call.arguments.is_empty());
        let reason = call.arguments_error.as_deref().unwrap();
        assert!(reason.contains(fragment), "{fragment}: {reason}");
        assert!(reason.chars().count() <= 200, "{reason}");
        for raw in ["bad json", "\"not\"", "ghp_1234567890abcdef", "api_key"] {
            assert!(!reason.contains(raw), "{raw}: {reason}");
        }
    }
    let r = tool_calls_reply(wire, call_with(&json!("{\"x\": 1}")))
        .await
        .unwrap();
    assert_eq!(r.tool_calls()[0].arguments_error, None);
}

over_wires!(s028_usage_names_and_max_tokens_truncation);
async fn s028_usage_names_and_max_tokens_truncation(wire: Wire) {
    let r = complete_json(
        wire,
        json!({
            "choices": [{"message": {"content": "x"}, "finish_reason": "max_tokens"}],
            "usage": {"input_tokens": 0, "prompt_tokens": 5, "completion_tokens": 2}
        }),
    )
    .await
    .unwrap();
    assert_eq!(r.usage.input_tokens, 0);
    assert_eq!(r.usage.output_tokens, 2);
    assert!(r.was_truncated());
    let e = complete_json(
        wire,
        json!({
            "choices": [{"message": {"content": "x"}}],
            "usage": {"prompt_tokens": -1}
        }),
    )
    .await
    .unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("cannot be negative"));
}

#[test]
fn s029_retry_after_parsing() {
    for (v, want) in [("30", 30.0), ("2.5", 2.5), ("0", 0.0), ("-5", 0.0)] {
        assert_eq!(parse_retry_after(v, 1.0), want, "{v}");
    }
    let ahead = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    let secs = parse_retry_after(&ahead, 1.0);
    assert!((115.0..=125.0).contains(&secs), "{secs}");
    assert_eq!(parse_retry_after("not-a-date-or-number", 1.0), 1.0);
    assert_eq!(parse_retry_after("??", 5.0), 5.0);
    for v in ["inf", "nan", "-inf"] {
        assert_eq!(parse_retry_after(v, 1.0), 1.0, "{v}");
    }
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1.0), 0.0);
}

#[test]
fn s031_redaction() {
    for (input, secret) in [
        ("api_key=sk-supersecretvalue", "supersecretvalue"),
        ("API_KEY=sk-supersecretvalue", "supersecretvalue"),
        ("apikey=supersecretvalue1234", "supersecretvalue1234"),
        ("password=hunter2hunter", "hunter2hunter"),
        ("PASSWORD=hunter2hunter", "hunter2hunter"),
        ("access_key=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
        ("https://host/v1?api_key=supersecretval", "supersecretval"),
        (
            "https://host/v1?foo=bar&api_key=supersecretval",
            "supersecretval",
        ),
        ("https://host/?password=mypassword12", "mypassword12"),
    ] {
        let out = redact(input);
        assert!(!out.contains(secret), "{input} -> {out}");
        assert!(out.contains("[REDACTED]"), "{input} -> {out}");
    }
    assert_eq!(
        redact("The monkey ate the turkey."),
        "The monkey ate the turkey."
    );
    assert_eq!(redact("key=abc"), "key=abc");
}

over_wires!(s031_server_error_text_is_redacted_end_to_end);
async fn s031_server_error_text_is_redacted_end_to_end(wire: Wire) {
    let e = complete_with(wire, ResponseTemplate::new(400).set_body_json(json!({"error": {
        "message": "bad request to https://host/v1?foo=bar&api_key=supersecretval with password=hunter2hunter"
    }})))
    .await
    .unwrap_err();
    assert!(!e.message().contains("supersecretval"), "{e:?}");
    assert!(!e.message().contains("hunter2hunter"));
    assert!(e.message().contains("[REDACTED]"));
}

// The refusal comes before TLS, so ALPN (https/1.1 or https/2) is never reached: the
// https case runs once, as `https1`.
over_wires!(connection_refused_is_a_transport_failure => [http1: Http1, https1: Https1]);
async fn connection_refused_is_a_transport_failure(wire: Wire) {
    // Bind then drop a listener: the port is closed.
    let p = OpenAiProvider::new(closed_port_url(wire), "m").unwrap();
    let e = p.complete(&hi()).await.unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    assert!(e.is_retryable());
    assert!(e.message().starts_with("Transport failure: "), "{e:?}");
    assert!(e.source().is_some());
}

over_wires!(slow_reply_is_a_timeout);
async fn slow_reply_is_a_timeout(wire: Wire) {
    let server = server_with(
        wire,
        ResponseTemplate::new(200)
            .set_body_json(ok_body("late"))
            .set_delay(Duration::from_secs(5)),
    )
    .await;
    let p = server
        .builder(format!("{}/v1", server.uri()), "m")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let e = p.complete(&hi()).await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(e.message().contains("Transport failure"), "{e:?}");
}

over_wires!(s021_every_read_times_out_and_is_retried);
async fn s021_every_read_times_out_and_is_retried(wire: Wire) {
    let server = server_with(
        wire,
        ResponseTemplate::new(200)
            .set_body_json(ok_body("late"))
            .set_delay(Duration::from_secs(5)),
    )
    .await;
    let p = server
        .builder(format!("{}/v1", server.uri()), "m")
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let tracker = CostTracker::new();
    let ctx = RunContext::new().retry(
        RetryPolicy::new()
            .max_retries_count(2)
            .base_delay(Duration::ZERO),
    );
    let e = ctx.complete(&p, hi(), &tracker).await.unwrap_err();
    assert!(e.is_timeout() || e.is_transport(), "{e:?}");
    assert!(e.message().contains("Transport failure"), "{e:?}");
    assert_eq!(tracker.usage().llm_calls, 3);
    assert_eq!(e.cost().llm_calls, 3);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

over_wires!(engine_retries_a_500_then_succeeds);
async fn engine_retries_a_500_then_succeeds(wire: Wire) {
    let server = WireMock::start(wire).await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("ok")))
        .mount(&server)
        .await;
    let tracker = CostTracker::new();
    let ctx = RunContext::new().retry(RetryPolicy::new().base_delay(Duration::ZERO));
    let r = ctx
        .complete(&provider(&server), hi(), &tracker)
        .await
        .unwrap();
    assert_eq!(r.content(), "ok");
    assert_eq!(tracker.usage().llm_calls, 2);
    assert_eq!(tracker.usage().input_tokens, 3);
}
