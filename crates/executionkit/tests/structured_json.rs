//! Structured output and extract_json: conformance scenarios 122–129 of the reference (§26),
//! the typed variant, the hostile-reply cases, a property test and a wire test showing
//! `response_format` is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::WithCallOptions as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use executionkit::internals::json::{INVALID_JSON_MESSAGE, NO_JSON_MESSAGE, extract_json};
use executionkit::{
    Budget, LlmResponse, MockProvider, OpenAiProvider, Pattern, RetryPolicy, Role, RunContext,
    StepInput, TokenUsage,
};
use executionkit::{StructuredValue, structured};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ctx() -> RunContext {
    RunContext::new().retry(RetryPolicy::none())
}

async fn run_value(
    p: &MockProvider,
    s: StructuredValue,
) -> executionkit::Result<executionkit::PatternResult<Value, executionkit::StructuredStats>> {
    s.run(p, "Give me data", &ctx()).await
}

#[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
struct Answer {
    answer: i64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
struct Status {
    status: String,
}

// ---------------------------------------------------------------- scenario 122

#[tokio::test]
async fn s122_structured_parses_plain_fenced_and_prose_replies_on_attempt_1() {
    let p = MockProvider::new([r#"{"answer": 42}"#]);
    let r = run_value(&p, StructuredValue::new()).await.unwrap();
    assert_eq!(r.value, json!({"answer": 42}));
    assert_eq!(r.metadata["parse_attempts"], 1);
    assert_eq!(r.metadata["repair_attempts"], 0);
    assert_eq!(r.metadata["validated"], true);
    assert_eq!(r.cost.llm_calls, 1);

    for (reply, want) in [
        ("```json\n{\"answer\": 42}\n```", json!({"answer": 42})),
        (
            r#"Sure! Here is the data: {"city": "Tokyo", "pop": 14}. Hope that helps."#,
            json!({"city": "Tokyo", "pop": 14}),
        ),
        (r#"{"msg": "say \"hi\""}"#, json!({"msg": "say \"hi\""})),
    ] {
        let p = MockProvider::new([reply]);
        let r = run_value(&p, StructuredValue::new()).await.unwrap();
        assert_eq!(r.value, want, "{reply}");
        assert_eq!(r.metadata["parse_attempts"], 1);
    }
}

#[tokio::test]
async fn s122_typed_structured_returns_the_type() {
    let p = MockProvider::new([r#"Here: {"answer": 42}"#]);
    let r = structured::<Answer>().run(&p, "q", &ctx()).await.unwrap();
    assert_eq!(r.value, Answer { answer: 42 });
    assert_eq!(r.metadata["parse_attempts"], 1);
    assert_eq!(r.metadata["repair_attempts"], 0);
    // The first call carries the JSON instruction and the prompt, temperature 0.0.
    let req = p.last_call().unwrap().request;
    assert_eq!(req.temperature, Some(0.0));
    assert_eq!(req.max_tokens, Some(4096));
    assert!(req.messages[0].content.ends_with("\n\nq"));
    assert!(req.messages[0].content.contains("JSON"));
}

// ---------------------------------------------------------------- scenario 123

#[tokio::test]
async fn s123_structured_repairs_an_unparseable_reply() {
    let p = MockProvider::new(["not json", r#"{"answer": 42}"#]);
    let r = run_value(&p, StructuredValue::new().max_repairs(1))
        .await
        .unwrap();
    assert_eq!(r.value, json!({"answer": 42}));
    assert_eq!(r.metadata["parse_attempts"], 2);
    assert_eq!(r.metadata["repair_attempts"], 1);
    assert_eq!(r.metadata["validated"], true);
    assert_eq!(r.cost.llm_calls, 2);
    // The repair prompt: the error, the original task (without the instruction) and the
    // previous reply.
    let repair = &p.calls()[1].request.messages[0].content;
    assert!(repair.contains("JSON parse failed"), "{repair}");
    assert!(repair.contains("Give me data"), "{repair}");
    assert!(repair.contains("not json"), "{repair}");
}

#[tokio::test]
async fn s123_structured_validator_rejection_is_repaired() {
    let p = MockProvider::new([r#"{"status":"draft"}"#, r#"{"status":"ready"}"#]);
    let s = StructuredValue::new().validator(|v: &Value| {
        if v["status"] == "ready" {
            Ok(())
        } else {
            Err("status must be ready".into())
        }
    });
    let r = run_value(&p, s).await.unwrap();
    assert_eq!(r.value["status"], "ready");
    assert_eq!(r.metadata["validated"], true);
    assert_eq!(r.metadata["repair_attempts"], 1);
    let repair = &p.calls()[1].request.messages[0].content;
    assert!(repair.contains("status must be ready"), "{repair}");

    // Typed: the same with a closure over the type.
    let p = MockProvider::new([r#"{"status":"draft"}"#, r#"{"status":"ready"}"#]);
    let r = structured::<Status>()
        .validator(|s: &Status| {
            if s.status == "ready" {
                Ok(())
            } else {
                Err(String::new())
            }
        })
        .run(&p, "q", &ctx())
        .await
        .unwrap();
    assert_eq!(r.value.status, "ready");
    assert_eq!(r.metadata["repair_attempts"], 1);
}

// ---------------------------------------------------------------- scenario 124

#[tokio::test]
async fn s124_structured_fails_with_parse_error_after_the_repairs() {
    for (replies, repairs, calls) in [(2, 1, 2), (3, 2, 3)] {
        let p = MockProvider::new(vec!["nope"; replies]);
        let e = run_value(&p, StructuredValue::new().max_repairs(repairs))
            .await
            .unwrap_err();
        assert!(e.is_parse());
        assert!(e.message().contains("JSON parse failed"), "{}", e.message());
        assert_eq!(e.cost().llm_calls, calls);
        assert_eq!(e.metadata()["parse_attempts"], calls);
        assert_eq!(e.metadata()["repair_attempts"], repairs);
        assert_eq!(p.call_count() as u64, calls);
    }
}

#[tokio::test]
async fn s124_validator_rejection_without_repairs_carries_the_spend() {
    let p = MockProvider::new([LlmResponse::text(r#"{"a": 1}"#).with_usage(7, 3)]);
    let e = run_value(
        &p,
        StructuredValue::new()
            .max_repairs(0)
            .validator(|_| Err(String::new())),
    )
    .await
    .unwrap_err();
    assert!(e.is_parse());
    assert_eq!(e.message(), "validator rejected the structured output");
    assert_eq!(e.cost(), TokenUsage::new(7, 3, 1));
    assert_eq!(e.metadata()["validated"], false);
}

#[tokio::test]
async fn s124_a_top_level_scalar_is_repaired() {
    let p = MockProvider::new(["42", "[1]"]);
    let r = run_value(&p, StructuredValue::new().max_repairs(1))
        .await
        .unwrap();
    assert_eq!(r.value, json!([1]));
    assert_eq!(r.metadata["parse_attempts"], 2);
}

// ---------------------------------------------------------------- scenario 126

#[tokio::test]
async fn s126_invalid_options_fail_before_any_call() {
    // `stream=true` and `max_retries=-1` cannot be expressed (no stream option; usize).
    let p = MockProvider::new(["{}"]);
    let e = run_value(&p, StructuredValue::new().max_tokens(0))
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument());
    assert!(e.message().contains("max_tokens"));
    let e = structured::<Answer>()
        .temperature(f64::NAN)
        .run(&p, "q", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument());
    let e = run_value(
        &p,
        StructuredValue::new().schema("bad", json!({"type": 12})),
    )
    .await
    .unwrap_err();
    assert!(e.is_invalid_argument());
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn s126_a_panicking_validator_propagates() {
    let p = MockProvider::new(["{}"]);
    let task = tokio::spawn(async move {
        StructuredValue::new()
            .validator(|_| panic!("validator bug"))
            .run(&p, "q", &ctx())
            .await
    });
    let joined = task.await;
    assert!(joined.unwrap_err().is_panic());
}

// ---------------------------------------------------------------- scenarios 127–129

#[test]
fn s127_extract_json_finds_the_embedded_value() {
    for (text, want) in [
        (r#"{"key": "value"}"#, json!({"key": "value"})),
        (r#"  {"key": 42}  "#, json!({"key": 42})),
        (
            "```json\n{\"answer\": \"yes\"}\n```",
            json!({"answer": "yes"}),
        ),
        ("```\n{\"answer\": \"yes\"}\n```", json!({"answer": "yes"})),
        (
            r#"Here is the result: {"score": 8, "reason": "good"} end."#,
            json!({"score": 8, "reason": "good"}),
        ),
        (
            r#"Thinking... {"outer": {"inner": [1, 2, 3]}} done."#,
            json!({"outer": {"inner": [1, 2, 3]}}),
        ),
        ("[1, 2, 3]", json!([1, 2, 3])),
        (
            r#"The list is: [{"a": 1}, {"b": 2}] thank you."#,
            json!([{"a": 1}, {"b": 2}]),
        ),
    ] {
        assert_eq!(extract_json(text).unwrap(), want, "{text}");
    }
}

#[test]
fn s128_extract_json_skips_decoys_and_reads_fences() {
    let deep = format!(
        "Result follows. {}",
        (0..50).fold("1".to_owned(), |acc, i| format!("{{\"k{i}\": {acc}}}"))
    );
    let deep_value: Value =
        serde_json::from_str(deep.trim_start_matches("Result follows. ")).unwrap();
    for (text, want) in [
        (
            r#"Use the format {key: value}. Here is the data: {"a": 1}"#.to_owned(),
            json!({"a": 1}),
        ),
        ("```json\n{\"a\": 1}".to_owned(), json!({"a": 1})),
        (
            "```\nnot json\n```\n```\n{\"b\":2}\n```".to_owned(),
            json!({"b": 2}),
        ),
        (r#"[1,2] and {"a":1}"#.to_owned(), json!([1, 2])),
        (r#"{"x": "}"}"#.to_owned(), json!({"x": "}"})),
        (deep, deep_value),
    ] {
        assert_eq!(extract_json(&text).unwrap(), want, "{text}");
    }
}

#[test]
fn s129_extract_json_errors() {
    let e = extract_json("No JSON here at all.").unwrap_err();
    assert!(e.is_parse());
    assert_eq!(e.message(), NO_JSON_MESSAGE);
    for bad in [
        "{not valid json}",
        r#"{"a": 1,}"#,
        r#"{"key": "value""#,
        r#"{"a": [1, 2}"#,
    ] {
        let e = extract_json(bad).unwrap_err();
        assert!(e.is_parse(), "{bad}");
        assert_eq!(e.message(), INVALID_JSON_MESSAGE, "{bad}");
    }
    for bad in ["42", ""] {
        assert!(extract_json(bad).unwrap_err().is_parse(), "{bad:?}");
    }
    // An unterminated fence over two million spaces is rejected (linear scan; no timing
    // assertion, the point is that it returns).
    let text = format!("```json{}", " ".repeat(2_000_000));
    assert!(extract_json(&text).unwrap_err().is_parse());
}

// ---------------------------------------------------------------- hostile replies

/// One mebibyte of prose and braces: openers that never close, closers with no opener,
/// quotes, and bracket soup.
fn hostile_reply() -> String {
    let unit = "{ [ {\"a\": { x } ] } } ] { \"x { [ {{{ ]]] }} prose ";
    let mut s = String::with_capacity(1 << 20);
    while s.len() < (1 << 20) {
        s.push_str(unit);
    }
    s
}

#[test]
fn hostile_mebibyte_of_braces_is_a_typed_error() {
    for text in [
        hostile_reply(),
        "{".repeat(1 << 20),
        "[".repeat(1 << 20),
        "{\"a\":".repeat(200_000),
        format!("{}{}", "[".repeat(1000), "1,".repeat(500_000)),
    ] {
        let e = extract_json(&text).unwrap_err();
        assert!(e.is_parse());
        assert!(e.message().len() < 100);
    }
    // ...but a real object after the soup is still found.
    let text = format!("{}\n{{\"found\": true}}", "{".repeat(1 << 20));
    assert_eq!(extract_json(&text).unwrap(), json!({"found": true}));
}

#[tokio::test]
async fn hostile_reply_fails_structured_with_spend_and_a_bounded_repair_prompt() {
    let p = MockProvider::new([LlmResponse::text(hostile_reply()).with_usage(10, 500)]);
    let e = structured::<Answer>()
        .max_repairs(1)
        .run(&p, "q", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_parse());
    assert!(e.message().starts_with("JSON parse failed"));
    assert_eq!(e.cost(), TokenUsage::new(20, 1000, 2));
    let repair = &p.calls()[1].request.messages[0].content;
    assert!(repair.len() < 20_000, "{}", repair.len());
    assert!(repair.contains("[truncated]"));
}

// ---------------------------------------------------------------- schema and budget

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
struct Person {
    name: String,
    age: u8,
    email: Option<String>,
}

#[tokio::test]
async fn schema_violations_are_fed_back_and_repaired() {
    let p = MockProvider::new([
        r#"{"name": "Ada", "age": 300}"#,
        r#"{"name": "Ada", "age": 36, "email": null}"#,
    ]);
    let r = structured::<Person>()
        .run(&p, "who?", &ctx())
        .await
        .unwrap();
    assert_eq!(r.value.age, 36);
    assert_eq!(r.metadata["repair_attempts"], 1);
    let repair = &p.calls()[1].request.messages[0].content;
    assert!(repair.contains("JSON Schema validation failed"), "{repair}");
    assert!(repair.contains("/age"), "{repair}");
    // Every call sent the strict schema as response_format.
    for call in p.calls() {
        let rf = call.request.response_format.unwrap();
        assert_eq!(rf["type"], "json_schema");
        assert_eq!(rf["json_schema"]["strict"], true);
        assert_eq!(rf["json_schema"]["schema"]["additionalProperties"], false);
        assert_eq!(
            rf["json_schema"]["schema"]["required"],
            json!(["age", "email", "name"])
        );
    }
}

#[tokio::test]
async fn response_format_can_be_turned_off_and_system_seed_model_are_sent() {
    let p = MockProvider::new([r#"{"answer": 1}"#]);
    let _ = structured::<Answer>()
        .use_response_format(false)
        .system("You are terse.")
        .seed(7)
        .model("other-model")
        .run(&p, "q", &ctx())
        .await
        .unwrap();
    let req = p.last_call().unwrap().request;
    assert!(req.response_format.is_none());
    assert_eq!(req.messages[0].role, Role::System);
    assert_eq!(req.seed, Some(7));
    assert_eq!(req.model.as_deref(), Some("other-model"));
}

#[tokio::test]
async fn budget_exhaustion_during_repair_carries_the_spend() {
    let p = MockProvider::new([LlmResponse::text("nope").with_usage(5, 2)]);
    let ctx = ctx().budget(Budget::new().max_calls(2));
    let e = StructuredValue::new().run(&p, "q", &ctx).await.unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(e.cost(), TokenUsage::new(10, 4, 2));
    assert_eq!(e.metadata()["repair_attempts"], 2);
}

#[tokio::test]
async fn structured_runs_as_a_pipe_step() {
    let p = MockProvider::new([r#"ok {"answer": 3}"#]);
    let r = structured::<Answer>()
        .run_step(&p, StepInput::new("q"), &ctx())
        .await
        .unwrap();
    assert_eq!(r.value, r#"{"answer":3}"#);
}

#[tokio::test]
async fn typed_validator_sees_the_deserialised_value() {
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = Arc::clone(&seen);
    let p = MockProvider::new([r#"{"answer": 5}"#]);
    let _ = structured::<Answer>()
        .validator(move |a: &Answer| {
            s2.store(usize::try_from(a.answer).unwrap(), Ordering::SeqCst);
            Ok(())
        })
        .run(&p, "q", &ctx())
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 5);
}

// ---------------------------------------------------------------- wire

#[tokio::test]
async fn response_format_is_sent_on_the_wire() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "c1",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant",
                        "content": "{\"name\": \"Ada\", \"age\": 36, \"email\": null}"},
                        "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
        })))
        .mount(&server)
        .await;
    assert!(server.uri().starts_with("http://127.0.0.1:"));
    let provider = OpenAiProvider::builder(format!("{}/v1", server.uri()), "m")
        .build()
        .unwrap();
    let r = structured::<Person>()
        .run(&provider, "Who wrote the first program?", &ctx())
        .await
        .unwrap();
    assert_eq!(r.value.name, "Ada");
    assert_eq!(r.cost, TokenUsage::new(30, 12, 1));
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    let rf = &body["response_format"];
    assert_eq!(rf["type"], "json_schema");
    assert_eq!(rf["json_schema"]["name"], "Person");
    assert_eq!(rf["json_schema"]["strict"], true);
    assert_eq!(rf["json_schema"]["schema"]["type"], "object");
    assert_eq!(rf["json_schema"]["schema"]["additionalProperties"], false);
    assert_eq!(body["temperature"], 0.0);
}

// ---------------------------------------------------------------- property

fn prose() -> impl Strategy<Value = String> {
    // Prose before the object: anything but quotes, closers and fences; unclosed `{` decoys
    // allowed.
    proptest::string::string_regex("[a-zA-Z0-9 .,:;!?'\\-\n{]{0,200}").unwrap()
}

fn tail() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 .,:;!?'\"\\-\n]{0,200}").unwrap()
}

fn json_object() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "[a-z{}\\[\\]\"\\\\ ]{0,12}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("[a-z{}\"]{1,6}", value, 1..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #[test]
    fn extract_json_finds_an_object_embedded_in_prose(
        before in prose(),
        object in json_object(),
        after in tail(),
        pretty in any::<bool>(),
    ) {
        let body = if pretty {
            serde_json::to_string_pretty(&object).unwrap()
        } else {
            serde_json::to_string(&object).unwrap()
        };
        let text = format!("{before} {body} {after}");
        prop_assert_eq!(extract_json(&text).unwrap(), object);
    }
}
