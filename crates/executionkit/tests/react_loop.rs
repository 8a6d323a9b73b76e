//! Conformance scenarios 96–121 (react_loop, history trimming, tools, approval) with the
//! expectations of OVERRIDES.md, plus the bad-input cases of issue 5 (tools that fail, panic or
//! hang; off-schema arguments).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::ChatStream;
use executionkit::Tool;
use executionkit::events::Event;
use executionkit::internals::patterns::trim_history;
use executionkit::internals::tools::truncate;
use executionkit::{ApprovalDecision, ApprovalGate, ApprovalRequest};
use executionkit::{
    Budget, ChatRequest, Choice, Error, LlmProvider, LlmResponse, Message, MockProvider, Result,
    Role, RunContext, TokenUsage, ToolCall, ToolChoice, WithCallOptions,
};
use executionkit::{ReactLoop, Summary};
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------- helpers

fn calls(list: &[(&str, &str, Value)]) -> LlmResponse {
    LlmResponse {
        choices: vec![Choice {
            content: String::new(),
            tool_calls: list
                .iter()
                .map(|(name, id, args)| ToolCall::new(*id, *name, args.clone()))
                .collect(),
            finish_reason: Some("tool_calls".into()),
            logprobs: None,
        }],
        ..LlmResponse::default()
    }
}

fn tr(name: &str, id: &str, args: Value) -> LlmResponse {
    calls(&[(name, id, args)])
}

fn fin(text: &str) -> LlmResponse {
    LlmResponse::text(text)
}

fn echo_tool() -> Tool {
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

/// A tool that counts its runs and answers `ran:<text>`.
fn counting_tool(name: &str, runs: Arc<AtomicUsize>) -> Tool {
    Tool::new(
        name,
        "counts",
        json!({"type": "object"}),
        move |args: Map<String, Value>| {
            let runs = Arc::clone(&runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(format!(
                    "ran:{}",
                    args.get("text").and_then(Value::as_str).unwrap_or("")
                ))
            }
        },
    )
}

/// The tool messages of the request sent at `call` (0-based).
fn tool_messages(p: &MockProvider, call: usize) -> Vec<Message> {
    p.calls()[call]
        .request
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .cloned()
        .collect()
}

fn transcript<S>(r: &executionkit::PatternResult<String, S>) -> Vec<Value> {
    r.metadata["messages"].as_array().unwrap().clone()
}

fn events_ctx() -> (RunContext, Arc<Mutex<Vec<Event>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let ctx = RunContext::new().on_event(move |e| s.lock().unwrap().push(e.clone()));
    (ctx, seen)
}

/// A provider that cannot call tools.
#[derive(Debug)]
struct NoTools(MockProvider);

#[async_trait]
impl LlmProvider for NoTools {
    fn model(&self) -> &str {
        "no-tools"
    }
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        self.0.complete(request).await
    }
    fn stream(&self, request: ChatRequest) -> ChatStream {
        self.0.stream(request)
    }
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn s096_calls_of_one_round_run_concurrently() {
    // Each call waits until all three are running: sequential execution would time out.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let b = Arc::clone(&barrier);
    let meet = Tool::new("meet", "waits for the others", json!({}), move |_| {
        let b = Arc::clone(&b);
        async move {
            b.wait().await;
            Ok("met".to_owned())
        }
    })
    .with_timeout(Duration::from_secs(20));
    let p = MockProvider::new([
        calls(&[
            ("meet", "t1", json!({})),
            ("meet", "t2", json!({})),
            ("meet", "t3", json!({})),
        ]),
        fin("done"),
    ]);
    let r = ReactLoop::new()
        .tools([meet])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.metadata["tool_calls_made"], 3);
    let obs = tool_messages(&p, 1);
    assert!(obs.iter().all(|m| m.content == "met"), "{obs:?}");

    // With tool_concurrency 1 the same round cannot meet: every call times out, the loop goes on.
    let barrier_tool = {
        let b = Arc::new(tokio::sync::Barrier::new(3));
        Tool::new("meet", "waits", json!({}), move |_| {
            let b = Arc::clone(&b);
            async move {
                b.wait().await;
                Ok("met".to_owned())
            }
        })
    };
    let p = MockProvider::new([
        calls(&[("meet", "t1", json!({})), ("meet", "t2", json!({}))]),
        fin("done"),
    ]);
    let r = ReactLoop::new()
        .tool_concurrency(1)
        .tool_timeout(Duration::from_millis(20))
        .tools([barrier_tool])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "done");
    assert!(
        tool_messages(&p, 1)
            .iter()
            .all(|m| m.content.contains("timed out"))
    );
}

#[tokio::test]
async fn s097_approval_callback_error_becomes_failed_observation() {
    let runs = Arc::new(AtomicUsize::new(0));
    let tools = [
        counting_tool("alpha", Arc::clone(&runs)),
        counting_tool("boom", Arc::clone(&runs)),
        counting_tool("beta", Arc::clone(&runs)),
    ];
    let round = calls(&[
        ("alpha", "tc1", json!({"text": "a"})),
        ("boom", "tc2", json!({"text": "b"})),
        ("beta", "tc3", json!({"text": "c"})),
    ]);
    let gate = ApprovalGate::new(|req: ApprovalRequest| async move {
        if req.subject == "boom" {
            Err(Error::new(executionkit::ErrorKind::Provider, "gate broke"))
        } else {
            Ok(true)
        }
    });
    let p = MockProvider::new([round.clone(), fin("ok")]);
    let r = ReactLoop::new()
        .approval_gate(gate)
        .tools(tools.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.metadata["tool_calls_made"], 3);
    let obs = tool_messages(&p, 1);
    assert_eq!(obs[0].content, "ran:a");
    assert!(obs[1].content.contains("failed"), "{}", obs[1].content);
    assert!(!obs[1].content.contains("gate broke"));
    assert_eq!(obs[2].content, "ran:c");
    assert_eq!(obs[1].tool_call_id.as_deref(), Some("tc2"));

    // A gate that panics fails that call only.
    let gate = ApprovalGate::new(|req: ApprovalRequest| async move {
        assert!(req.subject != "boom", "gate panics");
        Ok(true)
    });
    let p = MockProvider::new([round.clone(), fin("ok")]);
    let _ = ReactLoop::new()
        .approval_gate(gate)
        .tools(tools.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    let obs = tool_messages(&p, 1);
    assert_eq!(obs[0].content, "ran:a");
    assert!(obs[1].content.contains("failed"), "{}", obs[1].content);
    assert_eq!(obs[2].content, "ran:c");

    // A cancellation from the gate aborts the loop.
    let gate = ApprovalGate::new(|req: ApprovalRequest| async move {
        if req.subject == "boom" {
            Err(Error::cancelled())
        } else {
            Ok(true)
        }
    });
    let p = MockProvider::new([round, fin("ok")]);
    let err = ReactLoop::new()
        .approval_gate(gate)
        .tools(tools.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.cost().llm_calls, 1);
    assert_eq!(p.call_count(), 1);
}

#[tokio::test]
async fn s098_unknown_tool_is_an_observation_and_the_loop_continues() {
    let p = MockProvider::new([tr("nonexistent_tool", "tc1", json!({})), fin("recovered")]);
    let r = ReactLoop::new()
        .tools([echo_tool()])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "recovered");
    let obs = tool_messages(&p, 1);
    assert_eq!(obs[0].content, "Error: Unknown tool 'nonexistent_tool'");
    assert_eq!(r.metadata["tool_calls_made"], 1);
}

/// Issue 5, bad input: a call the provider marked with `arguments_error` is answered with a
/// bounded observation (the reason cut to 200 characters) and the tool does not run; an unknown
/// tool with bad arguments is still reported as unknown.
#[tokio::test]
async fn issue5_arguments_error_is_a_bounded_observation() {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut bad = ToolCall::new("tc1", "act", json!({}));
    bad.arguments_error = Some("x".repeat(10_000));
    let mut unknown = ToolCall::new("tc2", "nope", json!({}));
    unknown.arguments_error = Some("arguments were not valid JSON".into());
    let mut turn = calls(&[]);
    turn.choices[0].tool_calls = vec![bad, unknown];
    let p = MockProvider::new([turn, fin("done")]);
    let r = ReactLoop::new()
        .tools([counting_tool("act", Arc::clone(&runs))])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "done");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let obs = tool_messages(&p, 1);
    assert_eq!(obs.len(), 2);
    let prefix = "Error: invalid arguments for tool 'act': ";
    assert!(obs[0].content.starts_with(prefix), "{}", obs[0].content);
    assert_eq!(obs[0].content.chars().count(), prefix.len() + 200);
    assert_eq!(obs[1].content, "Error: Unknown tool 'nope'");
    assert_eq!(r.metadata["tool_calls_made"], 2);
}

#[tokio::test]
async fn s099_deny_all_blocks_and_allow_all_runs() {
    let runs = Arc::new(AtomicUsize::new(0));
    let tool = counting_tool("act", Arc::clone(&runs));
    let p = MockProvider::new([tr("act", "tc1", json!({"text": "x"})), fin("ok")]);
    let r = ReactLoop::new()
        .approval_gate(ApprovalGate::deny_all("not permitted"))
        .tool(tool.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let obs = &tool_messages(&p, 1)[0].content;
    assert!(
        obs.contains("blocked by approval") && obs.contains("not permitted"),
        "{obs}"
    );
    assert_eq!(r.metadata["tool_calls_made"], 1);

    // The gate sees the call id and the raw arguments.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let gate = ApprovalGate::new(move |req: ApprovalRequest| {
        s.lock().unwrap().push(req);
        async { Ok(ApprovalDecision::approve()) }
    });
    let p = MockProvider::new([tr("act", "tc1", json!({"text": "x"})), fin("ok")]);
    let _ = ReactLoop::new()
        .approval_gate(gate)
        .tools([tool])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(tool_messages(&p, 1)[0].content, "ran:x");
    let req = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (req.action.as_str(), req.subject.as_str()),
        ("tool_call", "act")
    );
    assert_eq!(req.metadata["tool_call_id"], "tc1");
    assert_eq!(req.metadata["arguments"], json!({"text": "x"}));

    // allow_all runs the body once with the given argument.
    let runs = Arc::new(AtomicUsize::new(0));
    let p = MockProvider::new([tr("act", "tc1", json!({"text": "y"})), fin("ok")]);
    let _ = ReactLoop::new()
        .approval_gate(ApprovalGate::allow_all())
        .tools([counting_tool("act", Arc::clone(&runs))])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(tool_messages(&p, 1)[0].content, "ran:y");
}

#[tokio::test]
async fn s101_hanging_tool_times_out_into_an_observation() {
    let hang = Tool::new("hang", "never returns", json!({}), |_| async {
        futures::future::pending::<std::result::Result<String, executionkit::ToolError>>().await
    });
    let p = MockProvider::new([tr("hang", "tc1", json!({})), fin("gave up waiting")]);
    let r = ReactLoop::new()
        .tool_timeout(Duration::from_millis(10))
        .tool(hang.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "gave up waiting");
    assert_eq!(
        tool_messages(&p, 1)[0].content,
        "Tool execution timed out after 0.01s"
    );

    // The tool's own timeout applies when the loop sets none.
    let p = MockProvider::new([tr("hang", "tc1", json!({})), fin("ok")]);
    let _ = ReactLoop::new()
        .tools([hang.with_timeout(Duration::from_millis(5))])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert!(tool_messages(&p, 1)[0].content.contains("timed out"));
}

#[tokio::test]
async fn s102_long_observations_are_truncated() {
    let big = Tool::new("big", "long output", json!({}), |_| async {
        Ok("x".repeat(20_000))
    });
    let p = MockProvider::new([tr("big", "tc1", json!({})), fin("ok")]);
    let r = ReactLoop::new()
        .max_observation_chars(100)
        .tools([big])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    let obs = &tool_messages(&p, 1)[0].content;
    assert!(obs.chars().count() <= 100);
    assert!(obs.ends_with("\n[truncated]"));
    assert_eq!(r.metadata["truncated_observations"], 1);
    assert_eq!(r.metadata["tool_calls_made"], 1);
    assert_eq!(r.metadata["rounds"], 2);

    let six = Tool::new("six", "abcdef", json!({}), |_| async {
        Ok("abcdef".into())
    });
    let p = MockProvider::new([tr("six", "tc1", json!({})), fin("ok")]);
    let _ = ReactLoop::new()
        .max_observation_chars(1)
        .tools([six])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(tool_messages(&p, 1)[0].content, "a");
}

#[test]
fn s103_truncate() {
    let abc = "abcdefghijklmnopqrstuvwxyz";
    assert_eq!(truncate(abc, 12), "abcdefghijkl");
    assert_eq!(truncate(abc, 13), "a\n[truncated]");
    assert_eq!(truncate(abc, 15), "abc\n[truncated]");
    assert_eq!(truncate(abc, 26), abc);
    assert_eq!(truncate(abc, 40), abc);
}

async fn one_call_observation(tool: &Tool, args: Value) -> String {
    let p = MockProvider::new([tr(tool.name(), "tc1", args), fin("ok")]);
    let _ = ReactLoop::new()
        .tool(tool.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    tool_messages(&p, 1)[0].content.clone()
}

#[tokio::test]
async fn s104_arguments_are_validated_before_the_tool_runs() {
    let runs = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (r2, s2) = (Arc::clone(&runs), Arc::clone(&seen));
    let search = Tool::new(
        "search",
        "searches",
        json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}),
        move |args| {
            r2.fetch_add(1, Ordering::SeqCst);
            s2.lock().unwrap().push(args);
            async { Ok("found".to_owned()) }
        },
    );
    let obs = one_call_observation(&search, json!({})).await;
    assert!(obs.contains("Missing required argument: 'query'"), "{obs}");
    assert!(obs.starts_with("Tool 'search' argument error: "));
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    let strict = Tool::new(
        "strict",
        "no extras",
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}),
        |_| async { Ok("ran".to_owned()) },
    );
    let obs = one_call_observation(&strict, json!({"a": "x", "z": 1})).await;
    assert!(
        obs.contains("Unexpected argument: 'z' (additionalProperties is false)"),
        "{obs}"
    );

    let count = Tool::new(
        "count",
        "integers",
        json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        |_| async { Ok("ran".to_owned()) },
    );
    let obs = one_call_observation(&count, json!({"n": "five"})).await;
    assert!(obs.contains("expected type 'integer', got str"), "{obs}");
    assert!(!obs.contains("five"));
    let obs = one_call_observation(&count, json!({"n": true})).await;
    assert!(obs.contains("bool"), "{obs}");

    let args = json!({"query": "rust", "extra": [1, {"k": null}]});
    assert_eq!(one_call_observation(&search, args.clone()).await, "found");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(Value::Object(seen.lock().unwrap()[0].clone()), args);
}

#[tokio::test]
async fn s106_the_full_validator_checks_every_constraint() {
    // The reference falls back to a subset validator and refuses schemas it cannot check; this
    // port always runs a full JSON Schema validator, so each of those constraints is enforced.
    let cases = [
        (
            json!({"type": "object", "properties": {"mode": {"enum": ["fast", "slow"]}}}),
            json!({"mode": "fast"}),
            json!({"mode": "medium"}),
        ),
        (
            json!({"type": "object", "properties": {"box": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}}}}}),
            json!({"box": {"n": 5}}),
            json!({"box": {"n": 6}}),
        ),
        (
            json!({"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}}}}),
            json!({"ids": ["abc"]}),
            json!({"ids": ["ABC"]}),
        ),
        (
            json!({"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "string"}}}}),
            json!({"xs": ["a"]}),
            json!({"xs": [1]}),
        ),
        (
            json!({"type": "object", "properties": {"n": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}),
            json!({"n": null}),
            json!({"n": "x"}),
        ),
        (
            json!({"type": "object", "properties": {"never": false}}),
            json!({}),
            json!({"never": 1}),
        ),
    ];
    for (schema, good, bad) in cases {
        let t = Tool::new("t", "d", schema.clone(), |_| async { Ok("ran".into()) });
        assert_eq!(one_call_observation(&t, good).await, "ran", "{schema}");
        let obs = one_call_observation(&t, bad).await;
        assert!(
            obs.starts_with("Tool 't' argument error: "),
            "{schema}: {obs}"
        );
    }
    // A schema the validator cannot compile is refused before any call.
    let broken = Tool::new("broken", "d", json!({"type": 42}), |_| async {
        Ok("x".into())
    });
    let p = MockProvider::new([fin("x")]);
    let err = ReactLoop::new()
        .tools([broken])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument() && err.message().contains("broken"));
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn s107_tool_errors_and_panics_never_leak_their_text() {
    let failing = Tool::new("failing", "fails", json!({}), |_| async {
        Err("ValueError: password=hunter2".into())
    });
    let obs = one_call_observation(&failing, json!({})).await;
    assert_eq!(obs, "Tool 'failing' failed: error");

    let panicking = Tool::new(
        "panicking",
        "panics",
        json!({}),
        |args: Map<String, Value>| async move {
            let secret = args.get("password").and_then(Value::as_str).unwrap_or("");
            panic!("cannot handle {secret}");
        },
    );
    let obs = one_call_observation(&panicking, json!({"password": "hunter2"})).await;
    assert_eq!(obs, "Tool 'panicking' failed: panic");
    assert!(!obs.contains("hunter2"));

    // A panic before the body's future exists is caught too.
    #[allow(unreachable_code)]
    let eager = Tool::new("eager", "panics early", json!({}), |_args| {
        panic!("password=hunter2");
        async { Ok(String::new()) }
    });
    assert_eq!(
        one_call_observation(&eager, json!({})).await,
        "Tool 'eager' failed: panic"
    );
}

#[tokio::test]
async fn s108_calls_over_the_round_cap_are_rejected() {
    let runs = Arc::new(AtomicUsize::new(0));
    let tool = counting_tool("echo", Arc::clone(&runs));
    let five: Vec<(String, String, Value)> = (0..5)
        .map(|i| {
            (
                "echo".to_owned(),
                format!("tc{i}"),
                json!({"text": format!("v{i}")}),
            )
        })
        .collect();
    let five: Vec<(&str, &str, Value)> = five
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.clone()))
        .collect();
    let p = MockProvider::new([calls(&five), fin("ok")]);
    let r = ReactLoop::new()
        .max_tool_calls_per_round(2)
        .tool(tool.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    let obs = tool_messages(&p, 1);
    assert_eq!(obs[0].content, "ran:v0");
    assert_eq!(obs[1].content, "ran:v1");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(r.metadata["tool_calls_made"], 2);
    assert_eq!(r.metadata["rejected_tool_calls"], 3);

    let four = calls(&[
        ("echo", "tc0", json!({})),
        ("echo", "tc1", json!({})),
        ("echo", "tc2", json!({})),
        ("echo", "tc3", json!({})),
    ]);
    let p = MockProvider::new([four, fin("ok")]);
    let _ = ReactLoop::new()
        .max_tool_calls_per_round(1)
        .tool(tool.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    let obs = tool_messages(&p, 1);
    let ids: Vec<_> = obs
        .iter()
        .map(|m| m.tool_call_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["tc0", "tc1", "tc2", "tc3"]);
    let rejected: Vec<_> = obs
        .iter()
        .filter(|m| m.content.contains("rejected"))
        .collect();
    assert_eq!(rejected.len(), 3);
    assert!(rejected[0].content.contains("limit of 1"));
    assert!(rejected[0].content.contains("requested 4"));

    let three = calls(&[
        ("echo", "tc0", json!({})),
        ("echo", "tc1", json!({})),
        ("echo", "tc2", json!({})),
    ]);
    let p = MockProvider::new([three, fin("ok")]);
    let r = ReactLoop::new()
        .max_tool_calls_per_round(3)
        .tool(tool.clone())
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.metadata["rejected_tool_calls"], 0);

    let err = ReactLoop::new()
        .max_tool_calls_per_round(0)
        .tools([tool])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument());
    assert!(err.message().contains("max_tool_calls_per_round"));
}

fn three_rounds_then_done(usage: bool) -> MockProvider {
    let u = |r: LlmResponse, i, o| if usage { r.with_usage(i, o) } else { r };
    MockProvider::new([
        u(tr("echo", "tc1", json!({"text": "1"})), 10, 10),
        u(tr("echo", "tc2", json!({"text": "2"})), 10, 10),
        u(tr("echo", "tc3", json!({"text": "3"})), 10, 10),
        u(fin("Done"), 10, 5),
    ])
}

#[tokio::test]
async fn s109_history_is_trimmed_per_round() {
    let p = three_rounds_then_done(false);
    let r = ReactLoop::new()
        .max_history_messages(3)
        .tools([echo_tool()])
        .run(&p, "the prompt", &RunContext::new())
        .await
        .unwrap();
    let sizes: Vec<usize> = p.calls().iter().map(|c| c.request.messages.len()).collect();
    assert_eq!(sizes, [1, 3, 3, 3]);
    for c in p.calls() {
        assert_eq!(c.request.messages[0], Message::user("the prompt"));
    }
    assert_eq!(r.metadata["messages_trimmed"], 2);
    assert_eq!(r.metadata["tool_calls_made"], 3);
    assert_eq!(r.cost.llm_calls, 4);
    // The transcript keeps everything.
    assert_eq!(transcript(&r).len(), 8);

    let p = three_rounds_then_done(false);
    let r = ReactLoop::new()
        .tools([echo_tool()])
        .run(&p, "the prompt", &RunContext::new())
        .await
        .unwrap();
    assert!(p.last_call().unwrap().request.messages.len() > 3);
    assert_eq!(r.metadata["messages_trimmed"], 0);
}

#[test]
fn s111_trimming_never_splits_a_tool_block_nor_drops_the_newest() {
    let call = |id: &str| ToolCall::new(id, "f", json!({}));
    let h = vec![
        Message::user("q"),
        Message::assistant_tool_calls("", vec![call("a")]),
        Message::tool_result("a", "1"),
        Message::assistant("final"),
    ];
    assert_eq!(
        trim_history(&h, 3).unwrap(),
        vec![Message::user("q"), Message::assistant("final")]
    );
    assert_eq!(trim_history(&h, 4).unwrap(), h);

    // OVERRIDES: the newest block is kept whole even when it alone is over the limit.
    let h = vec![
        Message::user("q"),
        Message::assistant_tool_calls("", vec![call("a"), call("b"), call("c")]),
        Message::tool_result("a", "1"),
        Message::tool_result("b", "2"),
        Message::tool_result("c", "3"),
    ];
    assert_eq!(trim_history(&h, 3).unwrap(), h);

    let plain: Vec<Message> = (0..6).map(|i| Message::user(format!("m{i}"))).collect();
    let t = trim_history(&plain, 3).unwrap();
    assert_eq!(
        t,
        vec![plain[0].clone(), plain[4].clone(), plain[5].clone()]
    );
    assert!(trim_history(&plain, 0).unwrap_err().is_invalid_argument());
}

#[tokio::test]
async fn s112_summaries_replace_trimmed_history() {
    let summarizer_calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&summarizer_calls);
    let p = three_rounds_then_done(true);
    let r = ReactLoop::new()
        .max_history_messages(3)
        .summarizer(move |dropped: Vec<Message>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, Error>(Summary::from((
                    format!("{} msgs", dropped.len()),
                    TokenUsage::new(100, 40, 1),
                )))
            }
        })
        .tools([echo_tool()])
        .run(&p, "the prompt", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.metadata["summarized"], 2);
    assert_eq!(r.metadata["messages_trimmed"], 2);
    let sent = p.calls();
    for (round, n) in [(2, "2 msgs"), (3, "4 msgs")] {
        let roles: Vec<Role> = sent[round]
            .request
            .messages
            .iter()
            .map(|m| m.role)
            .collect();
        assert_eq!(
            roles,
            [Role::User, Role::System, Role::Assistant, Role::Tool]
        );
        assert_eq!(
            sent[round].request.messages[1].content,
            format!("Summary of earlier conversation: {n}")
        );
    }
    assert_eq!(summarizer_calls.load(Ordering::SeqCst), 2);
    // 4 calls of (10,10)/(10,5) plus two summaries of (100,40,1).
    assert_eq!(r.cost, TokenUsage::new(240, 115, 6));
    let roles: Vec<String> = transcript(&r)
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );

    let p = three_rounds_then_done(true);
    let plain = ReactLoop::new()
        .max_history_messages(3)
        .tools([echo_tool()])
        .run(&p, "the prompt", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(plain.cost, TokenUsage::new(40, 35, 4));
}

#[tokio::test]
async fn s113_text_only_summaries_cost_nothing() {
    let p = three_rounds_then_done(true);
    let r = ReactLoop::new()
        .max_history_messages(3)
        .summarizer(|_dropped| async { Ok::<_, Error>("short") })
        .tools([echo_tool()])
        .run(&p, "the prompt", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.cost, TokenUsage::new(40, 35, 4));
    assert_eq!(r.metadata["summarized"], 2);

    // Without a summarizer no system message is ever sent.
    let p = three_rounds_then_done(true);
    let r = ReactLoop::new()
        .max_history_messages(3)
        .tools([echo_tool()])
        .run(&p, "the prompt", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.metadata["summarized"], 0);
    assert!(
        p.calls()
            .iter()
            .all(|c| c.request.messages.iter().all(|m| m.role != Role::System))
    );

    // A failing summarizer fails the run with the spend so far.
    let p = three_rounds_then_done(true);
    let err = ReactLoop::new()
        .max_history_messages(3)
        .summarizer(|_dropped| async {
            Err::<Summary, _>(Error::new(
                executionkit::ErrorKind::Provider,
                "summary failed",
            ))
        })
        .tools([echo_tool()])
        .run(&p, "the prompt", &RunContext::new())
        .await
        .unwrap_err();
    assert_eq!(err.message(), "summary failed");
    assert_eq!(err.cost(), TokenUsage::new(20, 20, 2));
}

#[tokio::test]
async fn s114_transcripts_continue() {
    let p = MockProvider::new([fin("hello")]);
    let seed = vec![Message::system("be nice"), Message::user("hi")];
    let _ = ReactLoop::new()
        .run_messages(&p, seed.clone(), &RunContext::new())
        .await
        .unwrap();
    assert_eq!(p.calls()[0].request.messages, seed);

    let p = MockProvider::new([fin("answer"), fin("second")]);
    let r = ReactLoop::new()
        .run(&p, "ask", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(
        r.metadata["messages"],
        json!([{"role": "user", "content": "ask"}, {"role": "assistant", "content": "answer"}])
    );
    let mut history: Vec<Message> = serde_json::from_value(r.metadata["messages"].clone()).unwrap();
    history.push(Message::user("q2"));
    let before = history.clone();
    let r2 = ReactLoop::new()
        .run_messages(&p, history.clone(), &RunContext::new())
        .await
        .unwrap();
    let roles: Vec<Role> = p.calls()[1]
        .request
        .messages
        .iter()
        .map(|m| m.role)
        .collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::User]);
    assert_eq!(history, before);
    assert_eq!(r2.value, "second");
    assert_eq!(transcript(&r2).len(), 4);

    let err = ReactLoop::new()
        .run_messages(&p, Vec::new(), &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument() && err.message().contains("non-empty"));
}

#[tokio::test]
async fn s116_providers_without_tools_and_duplicate_names_are_refused() {
    let inner = MockProvider::new([fin("x")]);
    let p = NoTools(inner.clone());
    let err = ReactLoop::new()
        .tools([echo_tool()])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument());
    // Said in Rust terms: no type name of the Python package (`ToolCallingProvider`).
    assert!(err.message().contains("does not support tool calls"));
    assert!(!err.message().contains("Provider"), "{}", err.message());
    assert_eq!(inner.call_count(), 0);

    let t = |n: &str| Tool::new(n, "d", json!({}), |_| async { Ok(String::new()) });
    let p = MockProvider::new([fin("x")]);
    let err = ReactLoop::new()
        .tools([t("a"), t("a"), t("b"), t("b"), t("c")])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument());
    assert!(
        err.message().contains("duplicated: 'a', 'b'"),
        "{}",
        err.message()
    );
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn s117_numeric_options_are_validated() {
    let p = MockProvider::new([fin("x")]);
    let ctx = RunContext::new();
    let cases = [
        (ReactLoop::new().max_rounds(0), "max_rounds must be >= 1"),
        (
            ReactLoop::new().tool_timeout(Duration::ZERO),
            "tool_timeout must be > 0",
        ),
        (
            ReactLoop::new().max_history_messages(0),
            "max_history_messages must be >= 1",
        ),
        (
            ReactLoop::new().max_observation_chars(0),
            "max_observation_chars must be >= 1",
        ),
        (ReactLoop::new().max_tokens(0), "max_tokens must be >= 1"),
        (
            ReactLoop::new().tool_concurrency(0),
            "tool_concurrency must be >= 1",
        ),
        (ReactLoop::new().temperature(-1.0), "temperature"),
    ];
    for (r, msg) in cases {
        let err = r.run(&p, "go", &ctx).await.unwrap_err();
        assert!(err.is_invalid_argument());
        assert!(err.message().contains(msg), "{} / {msg}", err.message());
    }
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn s118_tool_call_events_redact_arguments() {
    let args = json!({"query": "hello", "api_key": "SECRET-KEY-12345"});
    let tool = Tool::new("search", "d", json!({"type": "object"}), |_| async {
        Ok("r".into())
    });

    let (ctx, seen) = events_ctx();
    let p = MockProvider::new([tr("search", "tc1", args.clone()), fin("ok")]);
    let _ = ReactLoop::new()
        .tool(tool.clone())
        .run(&p, "go", &ctx)
        .await
        .unwrap();
    let started: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::ToolCallStarted { arguments, .. } => Some(arguments.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        Value::Object(started[0].clone()),
        json!({"query": "[redacted]", "api_key": "[redacted]"})
    );
    assert!(!format!("{:?}", seen.lock().unwrap()).contains("SECRET-KEY"));

    let (ctx, seen) = events_ctx();
    let p = MockProvider::new([tr("search", "tc1", args.clone()), fin("ok")]);
    let _ = ReactLoop::new()
        .redact_tool_args(false)
        .tools([tool])
        .run(&p, "go", &ctx)
        .await
        .unwrap();
    assert!(format!("{:?}", seen.lock().unwrap()).contains("SECRET-KEY-12345"));
}

#[tokio::test]
async fn s119_event_order_of_one_tool_round() {
    let (ctx, seen) = events_ctx();
    let p = MockProvider::new([tr("echo", "tc1", json!({"text": "x"})), fin("ok")]);
    let _ = ReactLoop::new()
        .tools([echo_tool()])
        .run(&p, "go", &ctx)
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let names: Vec<&str> = seen
        .iter()
        .map(|e| match e {
            Event::CallStarted { .. } => "call_start",
            Event::CallFinished { .. } => "call_end",
            Event::ToolCallStarted { .. } => "tool_start",
            Event::ToolCallFinished { .. } => "tool_end",
            _ => "other",
        })
        .collect();
    assert_eq!(
        names,
        [
            "call_start",
            "call_end",
            "tool_start",
            "tool_end",
            "call_start",
            "call_end"
        ]
    );
    assert!(matches!(
        seen[0],
        Event::CallStarted {
            attempt: 1,
            call: 1,
            ..
        }
    ));
    assert!(matches!(
        seen[3],
        Event::ToolCallFinished { blocked: false, .. }
    ));
    assert!(matches!(seen[4], Event::CallStarted { call: 2, .. }));
}

#[tokio::test]
async fn s121_truncated_replies_are_counted() {
    let mut cut = fin("partial answ");
    cut.choices[0].finish_reason = Some("length".into());
    let p = MockProvider::new([cut]);
    let r = ReactLoop::new()
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.metadata["truncated_responses"], 1);
    assert_eq!(r.metadata["rounds"], 1);
    assert_eq!(r.metadata["termination_reason"], "natural");
}

// ---------------------------------------------------------------- beyond the scenarios

#[tokio::test]
async fn max_rounds_without_an_answer_fails_with_the_transcript() {
    let p = MockProvider::new([tr("echo", "tc", json!({"text": "again"})).with_usage(3, 2)]);
    let err = ReactLoop::new()
        .max_rounds(2)
        .tools([echo_tool()])
        .run(&p, "loop", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_max_iterations());
    assert!(err.message().contains("max_rounds (2)"));
    assert_eq!(err.cost(), TokenUsage::new(6, 4, 2));
    assert_eq!(err.metadata()["termination_reason"], "max_iterations");
    assert_eq!(err.metadata()["rounds"], 2);
    assert_eq!(err.metadata()["tool_calls_made"], 2);
    assert_eq!(err.metadata()["messages"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn tool_call_turns_are_sent_with_empty_content_and_the_tool_schemas() {
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Weather {
        /// The city.
        city: String,
        days: u8,
    }
    let weather = Tool::typed("weather", "Forecast", |w: Weather| async move {
        Ok(format!("sunny in {} for {} days", w.city, w.days))
    });
    let p = MockProvider::new([
        tr("weather", "tc1", json!({"city": "Oslo", "days": 2})),
        tr("weather", "tc2", json!({"city": "Oslo", "days": 300})),
        fin("ok"),
    ]);
    let r = ReactLoop::new()
        .tool_choice(ToolChoice::Required)
        .seed(7)
        .model("m2")
        .system("use tools")
        .tools([weather])
        .run(&p, "weather?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "ok");
    let first = &p.calls()[0].request;
    assert_eq!(first.tools[0].name, "weather");
    assert_eq!(
        first.tools[0].parameters["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(first.tool_choice, Some(ToolChoice::Required));
    assert_eq!((first.seed, first.model.as_deref()), (Some(7), Some("m2")));
    assert_eq!(first.messages[0], Message::system("use tools"));
    assert_eq!(first.temperature, Some(0.3));
    let second = serde_json::to_value(&p.calls()[1].request.messages).unwrap();
    assert_eq!(second[2]["role"], "assistant");
    assert_eq!(second[2]["content"], "");
    assert_eq!(second[2]["tool_calls"][0]["function"]["name"], "weather");
    assert_eq!(second[3]["content"], "sunny in Oslo for 2 days");
    // 300 does not fit a u8: an argument error, without the value.
    let obs = &tool_messages(&p, 2)[1].content;
    assert!(obs.starts_with("Tool 'weather' argument error"), "{obs}");
    assert!(!obs.contains("300"), "{obs}");
}

#[tokio::test]
async fn the_initial_tool_choice_applies_to_the_first_round_only() {
    let p = MockProvider::new([tr("echo", "tc1", json!({"text": "a"})), fin("ok")]);
    let _ = ReactLoop::new()
        .initial_tool_choice(ToolChoice::Function("echo".into()))
        .tool_choice(ToolChoice::None)
        .tools([echo_tool()])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    let choices: Vec<_> = p
        .calls()
        .iter()
        .map(|c| c.request.tool_choice.clone())
        .collect();
    assert_eq!(
        choices,
        [
            Some(ToolChoice::Function("echo".into())),
            Some(ToolChoice::None)
        ]
    );
}

#[tokio::test]
async fn checkpoints_follow_each_tool_round() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let p = MockProvider::new([
        calls(&[
            ("echo", "a", json!({"text": "1"})),
            ("nope", "b", json!({})),
        ])
        .with_usage(3, 1),
        tr("echo", "c", json!({"text": "2"})).with_usage(3, 1),
        fin("done"),
    ]);
    let r = ReactLoop::new()
        .max_tool_calls_per_round(1)
        .on_checkpoint(move |c| {
            s.lock().unwrap().push(serde_json::to_value(c).unwrap());
            assert!(c.round < 1, "a panicking callback is ignored");
        })
        .tools([echo_tool()])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "done");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["round"], 0);
    assert_eq!(seen[0]["tool_calls_made"], json!(["echo", "nope"]));
    assert_eq!(seen[0]["cost"]["llm_calls"], 1);
    assert_eq!(seen[0]["messages"].as_array().unwrap().len(), 4);
    assert_eq!(seen[1]["round"], 1);
    assert_eq!(seen[1]["cost"]["input_tokens"], 6);
}

#[tokio::test]
async fn no_tools_sends_no_tool_choice() {
    let p = MockProvider::new([fin("plain")]);
    let r = ReactLoop::new()
        .tool_choice(ToolChoice::Required)
        .run(&p, "hi", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "plain");
    let req = &p.calls()[0].request;
    assert!(req.tools.is_empty() && req.tool_choice.is_none());
}

#[tokio::test]
async fn the_budget_stops_the_loop_with_the_spend() {
    let p = MockProvider::new([tr("echo", "tc", json!({"text": "a"})).with_usage(5, 1)]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(2));
    let err = ReactLoop::new()
        .tools([echo_tool()])
        .run(&p, "go", &ctx)
        .await
        .unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(err.cost(), TokenUsage::new(10, 2, 2));
    assert_eq!(p.call_count(), 2);
}

#[tokio::test]
async fn a_panicking_or_hanging_tool_does_not_stop_its_siblings() {
    let panicking = Tool::new("p", "panics", json!({}), |_| async { panic!("boom") });
    let hang = Tool::new("h", "hangs", json!({}), |_| async {
        futures::future::pending::<std::result::Result<String, executionkit::ToolError>>().await
    })
    .with_timeout(Duration::from_millis(10));
    let p = MockProvider::new([
        calls(&[
            ("p", "tc1", json!({})),
            ("h", "tc2", json!({})),
            ("echo", "tc3", json!({"text": "fine"})),
        ]),
        fin("done"),
    ]);
    let r = ReactLoop::new()
        .tools([panicking, hang, echo_tool()])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "done");
    let obs: Vec<String> = tool_messages(&p, 1)
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(
        obs,
        [
            "Tool 'p' failed: panic",
            "Tool execution timed out after 0.01s",
            "fine"
        ]
    );
}

#[tokio::test]
async fn blocking_approval_gates_run_off_the_async_threads() {
    let gate = ApprovalGate::blocking(|req: ApprovalRequest| {
        Ok(ApprovalDecision {
            approved: req.subject == "echo",
            reason: "only echo".into(),
        })
    });
    let p = MockProvider::new([
        calls(&[
            ("echo", "tc1", json!({"text": "x"})),
            ("other", "tc2", json!({})),
        ]),
        fin("ok"),
    ]);
    let _ = ReactLoop::new()
        .approval_gate(gate)
        .tools([echo_tool()])
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    let obs = tool_messages(&p, 1);
    assert_eq!(obs[0].content, "x");
    assert_eq!(
        obs[1].content,
        "Tool 'other' blocked by approval: only echo"
    );
}

#[tokio::test]
async fn runs_are_send_and_work_as_pipe_steps() {
    let p = MockProvider::new([tr("echo", "tc1", json!({"text": "hi"})), fin("spawned")]);
    let p2 = p.clone();
    let r = tokio::spawn(async move {
        ReactLoop::new()
            .tools([echo_tool()])
            .run(&p2, "go", &RunContext::new())
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.value, "spawned");

    let p = MockProvider::new([tr("echo", "tc1", json!({"text": "hi"})), fin("piped")]);
    let r = executionkit::Pipe::new()
        .step(ReactLoop::new().max_rounds(3).tools([echo_tool()]))
        .run(&p, "task", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "piped");
    assert_eq!(r.cost.llm_calls, 2);
    assert_eq!(tool_messages(&p, 1)[0].content, "hi");

    // As a step, options and tools are checked before any call.
    let t = || echo_tool();
    let err = executionkit::Pipe::new()
        .step(ReactLoop::new().tools([t(), t()]))
        .run(&p, "task", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument() && err.message().contains("duplicated: 'echo'"));
    assert_eq!(p.call_count(), 2);
}

#[tokio::test]
async fn run_and_run_step_offer_and_use_the_same_tools() {
    // One loop, run on its own and as a pipe step: the same tool specs are sent, and the same
    // tools execute, in both.
    let runs = Arc::new(AtomicUsize::new(0));
    let l = ReactLoop::new()
        .tools([echo_tool()])
        .tool(counting_tool("count", Arc::clone(&runs)));
    let script = || {
        MockProvider::new([
            calls(&[
                ("echo", "tc1", json!({"text": "hi"})),
                ("count", "tc2", json!({"text": "n"})),
            ]),
            fin("done"),
        ])
    };
    let alone = script();
    let r = l.run(&alone, "task", &RunContext::new()).await.unwrap();
    assert_eq!(r.metadata["tool_calls_made"], 2);

    let piped = script();
    let r = executionkit::Pipe::new()
        .step(l.clone())
        .run(&piped, "task", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "done");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the tool ran once per run");

    for round in 0..2 {
        let (a, b) = (&alone.calls()[round].request, &piped.calls()[round].request);
        let names: Vec<&str> = a.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["echo", "count"]);
        assert_eq!(a.tools, b.tools);
    }
    let texts = |p: &MockProvider| -> Vec<String> {
        tool_messages(p, 1).into_iter().map(|m| m.content).collect()
    };
    assert_eq!(texts(&alone), ["hi", "ran:n"]);
    assert_eq!(texts(&alone), texts(&piped));
}

#[tokio::test]
async fn typed_tool_errors_reach_the_model_as_their_kind_and_are_counted() {
    use executionkit::{ToolError, ToolErrorKind};
    let failing = |name: &str, error: ToolError| {
        Tool::new(name, "fails", json!({}), move |_| {
            let error = error.clone();
            async move { Err(error) }
        })
    };
    let secret = "password=hunter2";
    let tools = [
        failing("bad_args", ToolError::invalid_arguments(secret)),
        failing("failed", ToolError::failed(secret)),
        failing("slow", ToolError::timed_out(secret)),
        failing("refused", ToolError::rejected(secret)),
        failing("plain", ToolError::from(secret)),
    ];
    let p = MockProvider::new([
        calls(&[
            ("bad_args", "tc0", json!({})),
            ("failed", "tc1", json!({})),
            ("slow", "tc2", json!({})),
            ("refused", "tc3", json!({})),
            ("plain", "tc4", json!({})),
        ]),
        fin("done"),
    ]);
    let r = ReactLoop::new()
        .tools(tools)
        .run(&p, "go", &RunContext::new())
        .await
        .unwrap();
    let obs: Vec<String> = tool_messages(&p, 1)
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(
        obs,
        [
            "Tool 'bad_args' argument error: the arguments do not fit the tool's parameter type",
            "Tool 'failed' failed: error",
            "Tool 'slow' failed: timeout",
            "Tool 'refused' blocked by approval",
            "Tool 'plain' failed: error",
        ]
    );
    assert!(obs.iter().all(|o| !o.contains("hunter2")));
    // Every call ran (and is counted as made); none was over the round cap.
    assert_eq!(r.metadata["tool_calls_made"], 5);
    assert_eq!(r.metadata["rejected_tool_calls"], 0);
    assert_eq!(r.metadata["truncated_observations"], 0);
    assert_eq!(ToolError::from(secret).kind(), ToolErrorKind::Failed);
}

#[tokio::test]
async fn refusals_name_no_python_class() {
    // Each way a tool-less provider can reach the loop says what is missing in Rust terms.
    let p = NoTools(MockProvider::new([fin("x")]));
    let l = ReactLoop::new().tools([echo_tool()]);
    let mut messages = vec![
        l.validate(&p).unwrap_err().message().to_owned(),
        l.run(&p, "go", &RunContext::new())
            .await
            .unwrap_err()
            .message()
            .to_owned(),
        l.run_messages(&p, vec![Message::user("go")], &RunContext::new())
            .await
            .unwrap_err()
            .message()
            .to_owned(),
        executionkit::Pipe::new()
            .step(l.clone())
            .run(&p, "go", &RunContext::new())
            .await
            .unwrap_err()
            .message()
            .to_owned(),
    ];
    let stream = executionkit::stream_completion(
        Arc::new(NoStreams),
        ChatRequest::new(vec![Message::user("q")]),
        &RunContext::new(),
    )
    .await;
    messages.push(stream.err().unwrap().message().to_owned());
    for m in &messages {
        for python in ["ToolCallingProvider", "StreamingProvider", "Provider)"] {
            assert!(!m.contains(python), "{m}");
        }
        assert!(m.contains("does not support"), "{m}");
    }
}

/// A provider that cannot stream.
#[derive(Debug)]
struct NoStreams;

#[async_trait]
impl LlmProvider for NoStreams {
    fn model(&self) -> &str {
        "no-streams"
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        Ok(fin("x"))
    }
}

// ---------------------------------------------------------------- over HTTP

mod over_http {
    use super::*;
    use executionkit::OpenAiProvider;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn reply(message: &Value, finish: &str) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}
        }))
    }

    /// The whole loop through the HTTP provider: the tool-call turn goes back with
    /// `content: ""` and the arguments as a JSON string, the result as a `tool` message.
    #[tokio::test]
    async fn a_tool_round_over_the_wire() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(reply(
                &json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "echo", "arguments": "{\"text\": \"over http\"}"}
                }]}),
                "tool_calls",
            ))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(reply(
                &json!({"role": "assistant", "content": "It said: over http"}),
                "stop",
            ))
            .with_priority(2)
            .mount(&server)
            .await;
        let p = OpenAiProvider::builder(format!("{}/v1", server.uri()), "m")
            .api_key("sk-wire-test-key-123456")
            .build()
            .unwrap();
        let r = ReactLoop::new()
            .tool_choice(ToolChoice::Function("echo".into()))
            .temperature(0.0)
            .seed(1)
            .tools([echo_tool()])
            .run(&p, "repeat 'over http'", &RunContext::new())
            .await
            .unwrap();
        assert_eq!(r.value, "It said: over http");
        assert_eq!(r.cost, TokenUsage::new(14, 6, 2));

        let bodies: Vec<Value> = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|q| serde_json::from_slice(&q.body).unwrap())
            .collect();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0]["tools"][0]["function"]["name"], "echo");
        assert_eq!(
            bodies[0]["tool_choice"],
            json!({"type": "function", "function": {"name": "echo"}})
        );
        assert_eq!(bodies[0]["temperature"], 0.0);
        let turn = &bodies[1]["messages"][1];
        assert_eq!(turn["role"], "assistant");
        assert_eq!(turn["content"], "");
        assert_eq!(turn["tool_calls"][0]["id"], "call_1");
        let args: Value = serde_json::from_str(
            turn["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args, json!({"text": "over http"}));
        assert_eq!(
            bodies[1]["messages"][2],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "over http"})
        );
    }

    /// Issue 5, bad input: a tool call whose arguments are not JSON (or not an object) does not
    /// fail the response; the tool never runs, the model is told why in a bounded observation
    /// that holds none of the argument text, and the loop ends naturally.
    #[tokio::test]
    async fn issue5_invalid_tool_argument_json_is_an_observation() {
        for (raw, fragment) in [
            ("{bad json", "arguments were not valid JSON"),
            (
                "[\"secret-marker-ghp_1234567890abcdef\"]",
                "arguments did not decode to a JSON object",
            ),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(path("/v1/chat/completions"))
                .respond_with(reply(
                    &json!({"role": "assistant", "content": null, "tool_calls": [{
                        "id": "call_1", "type": "function",
                        "function": {"name": "act", "arguments": raw}
                    }]}),
                    "tool_calls",
                ))
                .up_to_n_times(1)
                .with_priority(1)
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(path("/v1/chat/completions"))
                .respond_with(reply(
                    &json!({"role": "assistant", "content": "gave up on the tool"}),
                    "stop",
                ))
                .with_priority(2)
                .mount(&server)
                .await;
            let p = OpenAiProvider::builder(format!("{}/v1", server.uri()), "m")
                .api_key("sk-wire-test-key-123456")
                .build()
                .unwrap();
            let runs = Arc::new(AtomicUsize::new(0));
            let asked = Arc::new(AtomicUsize::new(0));
            let a = Arc::clone(&asked);
            let gate = ApprovalGate::new(move |_req: ApprovalRequest| {
                a.fetch_add(1, Ordering::SeqCst);
                async { Ok(ApprovalDecision::approve()) }
            });
            let r = ReactLoop::new()
                .approval_gate(gate)
                .tools([counting_tool("act", Arc::clone(&runs))])
                .run(&p, "go", &RunContext::new())
                .await
                .unwrap();
            assert_eq!(r.value, "gave up on the tool");
            assert_eq!(r.metadata["termination_reason"], "natural");
            assert_eq!(r.metadata["tool_calls_made"], 1);
            assert_eq!(runs.load(Ordering::SeqCst), 0, "the tool must not run");
            assert_eq!(asked.load(Ordering::SeqCst), 0, "nothing to approve");

            let bodies: Vec<Value> = server
                .received_requests()
                .await
                .unwrap()
                .iter()
                .map(|q| serde_json::from_slice(&q.body).unwrap())
                .collect();
            assert_eq!(bodies.len(), 2);
            // The call goes back with `{}` as its arguments, never the raw text.
            let turn = &bodies[1]["messages"][1];
            assert_eq!(turn["tool_calls"][0]["function"]["arguments"], "{}");
            let tool_msg = &bodies[1]["messages"][2];
            assert_eq!(tool_msg["role"], "tool");
            assert_eq!(tool_msg["tool_call_id"], "call_1");
            let obs = tool_msg["content"].as_str().unwrap();
            assert!(
                obs.starts_with("Error: invalid arguments for tool 'act': ")
                    && obs.contains(fragment),
                "{obs}"
            );
            assert!(obs.chars().count() <= 300, "{obs}");
            assert!(!obs.contains(raw), "{obs}");
            assert!(
                !obs.contains("bad json") && !obs.contains("secret-marker"),
                "{obs}"
            );
            let whole = bodies[1].to_string();
            assert!(!whole.contains("bad json") && !whole.contains("secret-marker"));
        }
    }
}
