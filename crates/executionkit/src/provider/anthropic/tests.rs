//! Request mapping, reply parsing and stream accumulation of the Anthropic provider.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::reply::parse_message;
use super::streaming::MessageAccumulator;
use super::*;
use crate::ToolSpec;
use crate::provider::{Message, StreamEvent, ToolCall, ToolChoice, Usage};

fn provider() -> AnthropicProvider {
    AnthropicProvider::builder("http://127.0.0.1:9", "claude-test")
        .build()
        .unwrap()
}

fn body(r: &ChatRequest) -> Value {
    serde_json::from_slice(&provider().request_body(r, false).unwrap()).unwrap()
}

#[test]
fn a_tool_round_maps_to_tool_use_and_tool_result_blocks() {
    let call = ToolCall::new("toolu_1", "add", json!({"a": 1, "b": 2}));
    let call2 = ToolCall::new("toolu_2", "add", json!({"a": 3, "b": 4}));
    let r = ChatRequest::new(vec![
        Message::system("You add."),
        Message::user("1+2 and 3+4?"),
        Message::assistant_tool_calls("Adding.", vec![call, call2]),
        Message::tool_result("toolu_1", "3"),
        Message::tool_result("toolu_2", "7"),
        Message::system("Answer with digits."),
    ])
    .tools(vec![ToolSpec::new(
        "add",
        "Adds",
        json!({"type": "object"}),
    )])
    .tool_choice(ToolChoice::Required)
    .stop(["END"])
    .top_p(0.5)
    .seed(3)
    .response_format(json!({"type": "json_object"}))
    .extra("top_k", 5);
    assert_eq!(
        body(&r),
        json!({
            "model": "claude-test",
            "max_tokens": 4096,
            "system": "You add.\n\nAnswer with digits.",
            "messages": [
                {"role": "user", "content": "1+2 and 3+4?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Adding."},
                    {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1, "b": 2}},
                    {"type": "tool_use", "id": "toolu_2", "name": "add", "input": {"a": 3, "b": 4}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "3"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "7"},
                ]},
            ],
            "tools": [{"name": "add", "description": "Adds", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "temperature": 0.7,
            "top_p": 0.5,
            "stop_sequences": ["END"],
            "top_k": 5,
        })
    );
}

#[test]
fn tool_choices_and_streams() {
    let t = ToolSpec::new("f", "d", json!({}));
    let with = |c: ToolChoice| {
        body(
            &ChatRequest::new(vec![Message::user("x")])
                .tools(vec![t.clone()])
                .tool_choice(c),
        )["tool_choice"]
            .clone()
    };
    assert_eq!(with(ToolChoice::Auto), json!({"type": "auto"}));
    assert_eq!(with(ToolChoice::None), json!({"type": "none"}));
    assert_eq!(
        with(ToolChoice::Function("f".into())),
        json!({"type": "tool", "name": "f"})
    );
    // Without tools no tool_choice is sent (the API would refuse it).
    let b = body(&ChatRequest::new(vec![Message::user("x")]).tool_choice(ToolChoice::Auto));
    assert!(b.get("tool_choice").is_none());
    let p = provider();
    let s: Value = serde_json::from_slice(
        &p.request_body(&ChatRequest::new(vec![Message::user("x")]), true)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(s["stream"], true);
}

#[test]
fn n_above_one_is_refused() {
    let e = provider()
        .request_body(&ChatRequest::new(vec![Message::user("x")]).n(2), false)
        .unwrap_err();
    assert!(e.is_invalid_argument());
    assert_eq!(e.metadata()["argument"], "n");
    assert!(
        provider()
            .request_body(&ChatRequest::new(vec![Message::user("x")]).n(1), false)
            .is_ok()
    );
}

#[test]
fn replies_parse_with_cache_usage_and_tool_calls() {
    let r = parse_message(
        br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test",
             "content":[{"type":"thinking","thinking":"hmm","signature":"s"},
                        {"type":"text","text":"Let me "},{"type":"text","text":"add."},
                        {"type":"tool_use","id":"toolu_1","name":"add","input":{"a":1}},
                        {"type":"tool_use","id":"toolu_2","name":"add","input":[1]}],
             "stop_reason":"tool_use","stop_sequence":null,
             "usage":{"input_tokens":5,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,"output_tokens":9}}"#,
    )
    .unwrap();
    assert_eq!(r.content(), "Let me add.");
    assert_eq!(r.finish_reason(), Some("tool_calls"));
    assert_eq!(r.tool_calls().len(), 2);
    assert_eq!(r.tool_calls()[0].arguments["a"], 1);
    assert!(r.tool_calls()[1].arguments_error.is_some());
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 125,
            output_tokens: 9,
            cache_read_input_tokens: 100,
            cache_write_input_tokens: 20,
            reasoning_tokens: 0
        }
    );
    assert_eq!(r.id.as_deref(), Some("msg_1"));
    for (stop, reason) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
    ] {
        let body = format!(r#"{{"content":[],"stop_reason":"{stop}"}}"#);
        let r = parse_message(body.as_bytes()).unwrap();
        assert_eq!(r.finish_reason(), Some(reason));
    }
}

#[test]
fn bad_replies_are_provider_errors() {
    for (body, needle) in [
        (&b"not json"[..], "not JSON"),
        (b"[1]", "not a JSON object"),
        (br#"{"type":"message"}"#, "content list"),
        (br#"{"content":[1]}"#, "not an object"),
        (
            br#"{"content":[{"type":"tool_use","id":"t","input":{}}]}"#,
            "name was missing",
        ),
        (
            br#"{"content":[],"usage":{"input_tokens":-1}}"#,
            "whole number",
        ),
        (
            br#"{"content":[],"usage":{"cache_read_input_tokens":2000000000}}"#,
            "unreasonably large",
        ),
    ] {
        let e = parse_message(body).unwrap_err();
        assert!(e.is_provider(), "{e:?}");
        assert!(e.message().contains(needle), "{needle}: {e}");
    }
    let e = parse_message(
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )
    .unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("overloaded_error"));
}

fn feed(acc: &mut MessageAccumulator, data: &str) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    acc.push("", data, &mut out).unwrap();
    out
}

#[test]
fn a_stream_with_a_tool_use_accumulates_and_counts_cache_usage() {
    let mut acc = MessageAccumulator::default();
    feed(
        &mut acc,
        r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-test","content":[],"usage":{"input_tokens":3,"cache_read_input_tokens":40,"cache_creation_input_tokens":0,"output_tokens":1}}}"#,
    );
    assert!(feed(&mut acc, r#"{"type":"ping"}"#).is_empty());
    feed(
        &mut acc,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    );
    let t = feed(
        &mut acc,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Adding"}}"#,
    );
    assert_eq!(t, vec![StreamEvent::TextDelta("Adding".into())]);
    feed(&mut acc, r#"{"type":"content_block_stop","index":0}"#);
    let start = feed(
        &mut acc,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"add","input":{}}}"#,
    );
    assert_eq!(
        start,
        vec![StreamEvent::ToolCallDelta {
            index: 0,
            id: Some("toolu_1".into()),
            name: Some("add".into()),
            arguments: String::new()
        }]
    );
    for part in [r#"{\"a\": "#, r"1}"] {
        let d = feed(
            &mut acc,
            &format!(
                r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"input_json_delta","partial_json":"{part}"}}}}"#
            ),
        );
        assert!(
            matches!(
                &d[..],
                [StreamEvent::ToolCallDelta {
                    index: 0,
                    id: None,
                    ..
                }]
            ),
            "{d:?}"
        );
    }
    feed(
        &mut acc,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":17}}"#,
    );
    feed(&mut acc, r#"{"type":"message_stop"}"#);
    let r = acc.finish().unwrap();
    assert_eq!(r.content(), "Adding");
    assert_eq!(r.finish_reason(), Some("tool_calls"));
    assert_eq!(r.tool_calls()[0].arguments["a"], 1);
    assert_eq!(
        (
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.usage.cache_read_input_tokens
        ),
        (43, 17, 40)
    );
}

#[test]
fn a_tool_without_deltas_takes_its_start_input_and_unknown_events_pass() {
    let mut acc = MessageAccumulator::default();
    feed(
        &mut acc,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"now","input":{}}}"#,
    );
    assert!(feed(&mut acc, r#"{"type":"something_new","x":1}"#).is_empty());
    feed(
        &mut acc,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":2,"input_tokens":7,"cache_creation_input_tokens":5}}"#,
    );
    let r = acc.finish().unwrap();
    assert!(r.tool_calls()[0].arguments.is_empty());
    assert!(r.tool_calls()[0].arguments_error.is_none());
    assert_eq!(
        (r.usage.input_tokens, r.usage.cache_write_input_tokens),
        (12, 5)
    );
}

#[test]
fn error_events_map_to_our_kinds_and_early_ends_fail() {
    let mut acc = MessageAccumulator::default();
    for (kind, check) in [
        ("overloaded_error", Error::is_provider as fn(&Error) -> bool),
        ("api_error", Error::is_provider),
        ("rate_limit_error", Error::is_rate_limited),
        ("invalid_request_error", Error::is_permanent),
    ] {
        let e = acc
            .push(
                "error",
                &format!(
                    r#"{{"type":"error","error":{{"type":"{kind}","message":"no sk-abcdefghijklmnop"}}}}"#
                ),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(check(&e), "{kind}: {e:?}");
        assert!(!e.message().contains("sk-abcdefghijklmnop"), "{e}");
    }
    let mut acc = MessageAccumulator::default();
    feed(
        &mut acc,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
    );
    let e = acc.finish().unwrap_err();
    assert!(e.message().contains("ended early"), "{e}");
    assert!(
        MessageAccumulator::default()
            .push("", "not json", &mut Vec::new())
            .unwrap_err()
            .is_provider()
    );
}
