//! `RunContext::on_text`: the text of the call whose text is the value, delivered as the server
//! streams it. A scripted SSE endpoint on 127.0.0.1 (wiremock, one reply per request in order):
//! deltas in order and equal to the value, one request per call, the ledger and the events as
//! with `complete`, retries only before the first delta, a failure mid-stream. Patterns whose
//! value is not one call's text (consensus, pipes) deliver nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use executionkit::eval::{EvalCase, run_eval_suite};
use executionkit::events::Event;
use executionkit::{
    Budget, Consensus, MapReduce, MockProvider, Pipe, ReactLoop, RunContext, Step, StructuredValue,
    TextEvent, TokenUsage, Tool, Workflow,
};
use serde_json::{Map, Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

mod common;

use common::chat::{PATH, fast, provider};

/// What an `on_text` subscriber saw: `Delta` texts as they are, `Superseded` as `"|"`.
type Seen = Arc<Mutex<Vec<String>>>;

fn watching(ctx: RunContext) -> (RunContext, Seen) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let ctx = ctx.on_text(move |e| {
        let item = match e {
            TextEvent::Delta(d) => d.to_owned(),
            TextEvent::Superseded => "|".to_owned(),
            _ => "?".to_owned(),
        };
        s.lock().unwrap().push(item);
    });
    (ctx, seen)
}

fn seen(s: &Seen) -> Vec<String> {
    s.lock().unwrap().clone()
}

/// The kinds of events a run emitted, in order.
fn kinds(events: &Arc<Mutex<Vec<&'static str>>>) -> Vec<&'static str> {
    events.lock().unwrap().clone()
}

fn recording(ctx: RunContext) -> (RunContext, Arc<Mutex<Vec<&'static str>>>) {
    let events: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let e = Arc::clone(&events);
    let ctx = ctx.on_event(move |ev| {
        let k = match ev {
            Event::CallStarted { .. } => "started",
            Event::CallFinished { .. } => "finished",
            Event::CallRetried { .. } => "retried",
            Event::CallFailed { .. } => "failed",
            _ => return,
        };
        e.lock().unwrap().push(k);
    });
    (ctx, events)
}

fn sse(frames: &[Value]) -> ResponseTemplate {
    let mut body = String::new();
    for f in frames {
        body.push_str(&format!("data: {f}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(body)
}

/// A stream cut short: text chunks, then the body ends without a finish reason or `[DONE]`.
fn cut(frames: &[Value]) -> ResponseTemplate {
    let mut body = String::new();
    for f in frames {
        body.push_str(&format!("data: {f}\n\n"));
    }
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(body)
}

fn text(s: &str) -> Value {
    json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": s}, "finish_reason": null}]})
}

fn tool_call(name: &str, args: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1",
        "type": "function", "function": {"name": name, "arguments": args}}]}, "finish_reason": null}]})
}

fn finish(reason: &str, input: u64, output: u64) -> [Value; 2] {
    [
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}),
        json!({"choices": [], "usage": {"prompt_tokens": input, "completion_tokens": output,
            "total_tokens": input + output}}),
    ]
}

/// A complete text stream: the pieces, then `stop` with this usage.
fn answer(pieces: &[&str], input: u64, output: u64) -> ResponseTemplate {
    let mut frames: Vec<Value> = pieces.iter().map(|p| text(p)).collect();
    frames.extend(finish("stop", input, output));
    sse(&frames)
}

/// One reply per request, in order; the last one repeats.
struct Script {
    replies: Vec<ResponseTemplate>,
    n: AtomicUsize,
}

impl Respond for Script {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let i = self.n.fetch_add(1, Ordering::SeqCst);
        self.replies[i.min(self.replies.len() - 1)].clone()
    }
}

async fn scripted(replies: Vec<ResponseTemplate>) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(Script {
            replies,
            n: AtomicUsize::new(0),
        })
        .mount(&s)
        .await;
    s
}

/// The JSON bodies the server received.
async fn bodies(s: &MockServer) -> Vec<Value> {
    s.received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn echo() -> Tool {
    Tool::new(
        "echo",
        "Echoes its text",
        json!({"type": "object", "properties": {"text": {"type": "string"}}}),
        |args: Map<String, Value>| async move {
            Ok(args
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned())
        },
    )
}

/// A tool turn, then the answer in three pieces.
fn tool_then_answer() -> Vec<ResponseTemplate> {
    let mut turn = vec![tool_call("echo", r#"{"text":"hi"}"#)];
    turn.extend(finish("tool_calls", 10, 3));
    vec![sse(&turn), answer(&["The answer", " is", " 42."], 20, 4)]
}

#[tokio::test]
async fn react_delivers_the_final_turn_as_it_streams_and_spends_as_complete_does() {
    let server = scripted(tool_then_answer()).await;
    let (ctx, events) = recording(fast().budget(Budget::new().max_calls(2)));
    let (ctx, text) = watching(ctx);
    let react = ReactLoop::new().tool(echo());
    let r = react.run(&provider(&server), "q", &ctx).await.unwrap();
    assert_eq!(seen(&text), ["The answer", " is", " 42."]);
    assert_eq!(r.value, seen(&text).concat());
    assert_eq!(r.stats.rounds, 2);
    // One request per turn, both streamed.
    let sent = bodies(&server).await;
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|b| b["stream"] == true), "{sent:?}");
    // The ledger, the result and the events: the usage each stream reported, two calls.
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(30, 7, 2));
    assert_eq!(r.cost, TokenUsage::new(30, 7, 2));
    assert_eq!(
        kinds(&events),
        ["started", "finished", "started", "finished"]
    );

    // The same script without a subscriber: sent with `complete` (no `stream`), the same
    // value; the ledger and events are the same as the streamed run's.
    let server = scripted(vec![
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "echo", "arguments": "{\"text\":\"hi\"}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})),
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42."},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}})),
    ])
    .await;
    let (plain_ctx, plain_events) = recording(fast().budget(Budget::new().max_calls(2)));
    let p = react
        .run(&provider(&server), "q", &plain_ctx)
        .await
        .unwrap();
    assert_eq!(p.value, r.value);
    assert!(
        bodies(&server)
            .await
            .iter()
            .all(|b| b.get("stream").is_none())
    );
    assert_eq!(plain_ctx.ledger().spent(), ctx.ledger().spent());
    assert_eq!(kinds(&plain_events), kinds(&events));
}

#[tokio::test]
async fn a_turn_that_goes_on_to_call_a_tool_is_superseded() {
    let mut turn = vec![text("Let me check."), tool_call("echo", r#"{"text":"x"}"#)];
    turn.extend(finish("tool_calls", 5, 5));
    let server = scripted(vec![sse(&turn), answer(&["Done."], 5, 1)]).await;
    let (ctx, text) = watching(fast());
    let r = ReactLoop::new()
        .tool(echo())
        .run(&provider(&server), "q", &ctx)
        .await
        .unwrap();
    assert_eq!(seen(&text), ["Let me check.", "|", "Done."]);
    // The value is the text after the last `Superseded`.
    assert_eq!(r.value, "Done.");
}

#[tokio::test]
async fn a_failure_mid_stream_is_not_retried_and_the_text_stays_delivered() {
    let server = scripted(vec![cut(&[text("Partial"), text(" answ")])]).await;
    let (ctx, events) = recording(fast());
    let (ctx, text) = watching(ctx);
    let e = ReactLoop::new()
        .tool(echo())
        .run(&provider(&server), "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_provider(), "{e:?}");
    assert_eq!(seen(&text), ["Partial", " answ"]);
    // One request: a stream that delivered text is never sent again.
    assert_eq!(bodies(&server).await.len(), 1);
    assert_eq!(e.cost().llm_calls, 1);
    assert_eq!(ctx.ledger().spent().llm_calls, 1);
    assert_eq!(kinds(&events), ["started", "failed"]);
}

#[tokio::test]
async fn a_failure_before_the_first_delta_is_retried_and_text_is_delivered_once() {
    let server = scripted(vec![
        ResponseTemplate::new(500).set_body_string("busy"),
        answer(&["ok", "!"], 3, 2),
    ])
    .await;
    let (ctx, events) = recording(fast());
    let (ctx, text) = watching(ctx);
    let r = ReactLoop::new()
        .tool(echo())
        .run(&provider(&server), "q", &ctx)
        .await
        .unwrap();
    assert_eq!(seen(&text), ["ok", "!"]);
    assert_eq!(r.value, "ok!");
    assert_eq!(bodies(&server).await.len(), 2);
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(3, 2, 2));
    assert_eq!(
        kinds(&events),
        ["started", "retried", "started", "finished"]
    );
}

#[tokio::test]
async fn a_spent_budget_fails_before_a_streamed_call_is_sent() {
    let server = scripted(vec![answer(&["never"], 1, 1)]).await;
    let (ctx, text) = watching(fast().budget(Budget::new().max_calls(0)));
    let e = ReactLoop::new()
        .tool(echo())
        .run(&provider(&server), "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    assert!(seen(&text).is_empty());
    assert_eq!(bodies(&server).await.len(), 0);
}

#[tokio::test]
async fn map_reduce_delivers_only_the_last_reduce_call() {
    // Four items of 4 characters, at most 10 characters per reduce: two reduce calls, then
    // the last one.
    let p = MockProvider::new(["aaaa", "bbbb", "cccc", "dddd", "ab", "cd", "all"]);
    let (ctx, text) = watching(RunContext::new());
    let items: Vec<String> = ["1", "2", "3", "4"].map(String::from).to_vec();
    let r = MapReduce::new()
        .map_template("{item}")
        .reduce_template("{mapped_outputs}")
        .separator("|")
        .max_reduce_input_chars(10)
        .max_concurrency(1)
        .run(&p, &items, &ctx)
        .await
        .unwrap();
    assert_eq!(r.value, "all");
    assert_eq!(r.stats.reduce_calls, 3);
    assert_eq!(seen(&text).concat(), "all");
    assert_eq!(p.call_count(), 7);
}

#[tokio::test]
async fn structured_supersedes_a_reply_that_is_repaired() {
    let p = MockProvider::new(["not json", r#"{"a": 1}"#]);
    let (ctx, text) = watching(RunContext::new());
    let r = StructuredValue::new().run(&p, "q", &ctx).await.unwrap();
    assert_eq!(r.value, json!({"a": 1}));
    let seen = seen(&text);
    let cut = seen.iter().position(|s| s == "|").unwrap();
    assert_eq!(seen[..cut].concat(), "not json");
    assert_eq!(seen[cut + 1..].concat(), r#"{"a": 1}"#);
}

#[tokio::test]
async fn consensus_pipes_workflows_and_eval_cases_deliver_no_text() {
    let p = MockProvider::new(["x"]);
    let (ctx, text) = watching(RunContext::new());
    let c = Consensus::new()
        .samples(3)
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    let pipe = Pipe::new().step(ReactLoop::new());
    let r = pipe.run(&p, "q", &ctx).await.unwrap();
    assert_eq!((c.value.as_str(), r.value.as_str()), ("x", "x"));
    // A workflow's react step and an eval case's react run: their text is not shown either.
    let wf = Workflow::new().step(Step::new("a", ReactLoop::new()));
    let w = wf.run(&p, "q", &ctx).await.unwrap();
    assert_eq!(w.value["a"], "x");
    let q = p.clone();
    let case = EvalCase::new(
        "c",
        move |ctx: RunContext| async move { ReactLoop::new().run(&q, "q", &ctx).await.map(|r| r.value) },
        |v: &String| v == "x",
    );
    let report = run_eval_suite(vec![case], &ctx, None).await.unwrap();
    assert!(report.accuracy_passed());
    assert!(seen(&text).is_empty(), "{:?}", seen(&text));
    // The same context does deliver a react run's own text.
    let own = ReactLoop::new().run(&p, "q", &ctx).await.unwrap();
    assert_eq!(seen(&text), [own.value]);
}

/// A provider that answers but cannot stream.
#[derive(Debug)]
struct NoStream(MockProvider);

#[async_trait::async_trait]
impl executionkit::LlmProvider for NoStream {
    fn model(&self) -> &str {
        self.0.model()
    }
    async fn complete(
        &self,
        request: &executionkit::ChatRequest,
    ) -> executionkit::Result<executionkit::LlmResponse> {
        self.0.complete(request).await
    }
    fn supports_tools(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_provider_that_cannot_stream_is_called_as_usual_and_delivers_nothing() {
    let p = NoStream(MockProvider::new(["plain answer"]));
    let (ctx, text) = watching(RunContext::new());
    let r = ReactLoop::new().run(&p, "q", &ctx).await.unwrap();
    assert_eq!(r.value, "plain answer");
    assert!(seen(&text).is_empty());
    assert_eq!(p.0.call_count(), 1);
    assert!(!p.0.last_call().unwrap().stream);
}
