//! `ek react` printing its answer as it is generated: `--stream` against a scripted SSE server
//! on 127.0.0.1 (the same bytes on stdout as without it, every request streamed), `--json`
//! never streaming, a failure mid-stream (the partial text stays on stdout, the exit code and
//! stderr tell the failure), text a model wrote before a tool call (printed, then the answer
//! on its own line), `ek map-reduce --stream` (only the reduce call streams), and the default
//! inside a pseudo-terminal (util-linux `script`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use common::{bodies, code, ek_at, endpoint, json_out, stderr, stdout};

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// One scripted turn, served as an SSE stream to a request with `"stream": true` and as one
/// JSON reply otherwise.
#[derive(Clone)]
enum Turn {
    /// The answer, streamed in these pieces; 20 prompt and 6 completion tokens.
    Answer(&'static [&'static str]),
    /// A call of the calculator; 10 prompt and 4 completion tokens.
    Calculator(&'static str),
    /// Some text, then a call of the calculator in the same turn; 10 and 4 tokens.
    SayThenCalculate(&'static str, &'static str),
    /// The answer's first pieces, then the stream breaks off (a JSON reply: a 500).
    Cut(&'static [&'static str]),
}

fn chunk(delta: &Value, finish: Option<&str>) -> String {
    let c = json!({"id": "c1", "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn usage(input: u64, output: u64) -> (String, Value) {
    let u = json!({"prompt_tokens": input, "completion_tokens": output,
        "total_tokens": input + output});
    (
        format!("data: {}\n\n", json!({"choices": [], "usage": u})),
        u,
    )
}

fn sse(body: String) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(body)
}

impl Turn {
    fn reply(&self, streamed: bool) -> ResponseTemplate {
        let call = |expr: &str| {
            json!([{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "calculator",
                    "arguments": json!({"expression": expr}).to_string()}}])
        };
        match (self, streamed) {
            (Self::Answer(pieces), true) => {
                let mut b: String = pieces
                    .iter()
                    .map(|p| chunk(&json!({"content": p}), None))
                    .collect();
                b.push_str(&chunk(&json!({}), Some("stop")));
                b.push_str(&usage(20, 6).0);
                b.push_str("data: [DONE]\n\n");
                sse(b)
            }
            (Self::Answer(pieces), false) => ResponseTemplate::new(200).set_body_json(json!({
                "id": "c1", "model": "test-model",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": pieces.concat()}}],
                "usage": usage(20, 6).1})),
            (Self::Calculator(expr), true) => {
                let mut b = chunk(&json!({"tool_calls": call(expr)}), None);
                b.push_str(&chunk(&json!({}), Some("tool_calls")));
                b.push_str(&usage(10, 4).0);
                b.push_str("data: [DONE]\n\n");
                sse(b)
            }
            (Self::Calculator(expr), false) => ResponseTemplate::new(200).set_body_json(json!({
                "id": "c1", "model": "test-model",
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": null, "tool_calls": call(expr)}}],
                "usage": usage(10, 4).1})),
            (Self::SayThenCalculate(say, expr), true) => {
                let mut b = chunk(&json!({"content": say}), None);
                b.push_str(&chunk(&json!({"tool_calls": call(expr)}), None));
                b.push_str(&chunk(&json!({}), Some("tool_calls")));
                b.push_str(&usage(10, 4).0);
                b.push_str("data: [DONE]\n\n");
                sse(b)
            }
            (Self::SayThenCalculate(say, expr), false) => {
                ResponseTemplate::new(200).set_body_json(json!({
                    "id": "c1", "model": "test-model",
                    "choices": [{"index": 0, "finish_reason": "tool_calls",
                        "message": {"role": "assistant", "content": say,
                            "tool_calls": call(expr)}}],
                    "usage": usage(10, 4).1}))
            }
            (Self::Cut(pieces), true) => sse(pieces
                .iter()
                .map(|p| chunk(&json!({"content": p}), None))
                .collect()),
            (Self::Cut(_), false) => ResponseTemplate::new(500).set_body_string("broken"),
        }
    }
}

/// The turns in order (the last one repeats), each served as the request asks.
struct Script {
    turns: Vec<Turn>,
    i: AtomicUsize,
}

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let i = self.i.fetch_add(1, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        self.turns[i.min(self.turns.len() - 1)].reply(body["stream"] == true)
    }
}

async fn server(turns: Vec<Turn>) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Script {
            turns,
            i: AtomicUsize::new(0),
        })
        .mount(&s)
        .await;
    s
}

/// How many requests asked for a stream, of how many.
async fn streamed(s: &MockServer) -> (usize, usize) {
    let b = bodies(s).await;
    (b.iter().filter(|b| b["stream"] == true).count(), b.len())
}

fn tool_then_answer() -> Vec<Turn> {
    vec![
        Turn::Calculator("17*83"),
        Turn::Answer(&["17 × 83", " = ", "1411."]),
    ]
}

#[tokio::test]
async fn react_stream_prints_the_answer_from_a_scripted_sse_server() {
    let s = server(tool_then_answer()).await;
    let o = ek_at(&s, &["react", "--stream", "What is 17*83?"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "17 × 83 = 1411.", "{out}");
    assert_eq!(
        lines[1],
        "TokenUsage(input_tokens=30, output_tokens=10, llm_calls=2)"
    );
    assert_eq!(streamed(&s).await, (2, 2));

    // Not streamed (stdout is a pipe here): the same bytes, from plain JSON replies.
    let plain = server(tool_then_answer()).await;
    let o2 = ek_at(&plain, &["react", "What is 17*83?"]).await;
    assert_eq!(code(&o2), 0, "{}", stderr(&o2));
    assert_eq!(stdout(&o2), out);
    assert_eq!(streamed(&plain).await, (0, 2));
}

#[tokio::test]
async fn text_before_a_tool_call_is_printed_then_the_answer_on_its_own_line() {
    let turns = || {
        vec![
            Turn::SayThenCalculate("Let me compute that.", "17*83"),
            Turn::Answer(&["1411."]),
        ]
    };
    let s = server(turns()).await;
    let o = ek_at(&s, &["react", "--stream", "What is 17*83?"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("Let me compute that.\n1411.\nTokenUsage("),
        "{out}"
    );
    // Without streaming only the value is printed.
    let s = server(turns()).await;
    let o = ek_at(&s, &["react", "What is 17*83?"]).await;
    assert!(
        stdout(&o).starts_with("1411.\nTokenUsage("),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn map_reduce_streams_only_its_reduce_call() {
    let turns = || {
        vec![
            Turn::Answer(&["m"]),
            Turn::Answer(&["m"]),
            Turn::Answer(&["both", " items"]),
        ]
    };
    let args = [
        "map-reduce",
        "--lines",
        "--map-template",
        "{item}",
        "--reduce-template",
        "{mapped_outputs}",
        "--max-concurrency",
        "1",
        "-",
    ];
    let s = server(turns()).await;
    let mut streamed_args = args.to_vec();
    streamed_args.push("--stream");
    let o = common::command(&streamed_args, &endpoint(&s))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = feed(o, "a\nb\n").await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("both items\n"), "{}", stdout(&o));
    let b = bodies(&s).await;
    let flags: Vec<bool> = b.iter().map(|b| b["stream"] == true).collect();
    assert_eq!(flags, [false, false, true]);

    let plain = server(turns()).await;
    let o2 = common::command(&args, &endpoint(&plain))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o2 = feed(o2, "a\nb\n").await;
    assert_eq!(stdout(&o2), stdout(&o));
}

/// Writes `text` on the child's stdin, closes it, and waits for the output.
async fn feed(mut child: tokio::process::Child, text: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(text.as_bytes()).await.unwrap();
    drop(pipe);
    child.wait_with_output().await.unwrap()
}

#[tokio::test]
async fn json_never_streams() {
    let s = server(tool_then_answer()).await;
    let o = ek_at(&s, &["react", "--stream", "--json", "What is 17*83?"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "17 × 83 = 1411.", "{v}");
    assert_eq!(streamed(&s).await, (0, 2));
}

#[tokio::test]
async fn a_failure_mid_stream_leaves_the_partial_text_and_fails() {
    let s = server(vec![Turn::Cut(&["The answer", " is"])]).await;
    let o = ek_at(&s, &["react", "--stream", "--max-retries", "0", "q"]).await;
    assert_eq!(code(&o), 1, "{} {}", stdout(&o), stderr(&o));
    // The text printed before the failure stays, ended by a newline; no value line follows.
    assert_eq!(stdout(&o), "The answer is\n");
    let err = stderr(&o);
    assert!(err.contains("ek: provider:"), "{err}");
    assert!(err.contains("spent: TokenUsage("), "{err}");
    // A text that was delivered is never asked again.
    assert_eq!(streamed(&s).await, (1, 1));

    // With --json: nothing streams, stdout is the error object alone.
    let s = server(vec![Turn::Cut(&["The answer", " is"])]).await;
    let o = ek_at(
        &s,
        &["react", "--stream", "--json", "--max-retries", "0", "q"],
    )
    .await;
    assert_eq!(code(&o), 1);
    assert_eq!(json_out(&o)["error"]["kind"], "provider");
}

#[tokio::test]
async fn stream_and_no_stream_conflict_and_other_commands_have_neither() {
    let s = server(tool_then_answer()).await;
    let o = ek_at(&s, &["react", "--stream", "--no-stream", "q"]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = ek_at(&s, &["consensus", "--stream", "q"]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(bodies(&s).await.is_empty());
}

/// Runs `ek ARGS` inside a pseudo-terminal (`script -qec … /dev/null`) with `s`'s endpoint:
/// `None` when util-linux `script` is not installed.
async fn in_pty(s: &MockServer, args: &[&str]) -> Option<String> {
    let mut line = common::EK.to_owned();
    for a in args {
        line.push_str(" '");
        line.push_str(&a.replace('\'', r"'\''"));
        line.push('\'');
    }
    let mut c = tokio::process::Command::new("script");
    c.args(["-qec", &line, "/dev/null"])
        .env_remove("EXECUTIONKIT_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in endpoint(s) {
        c.env(k, v);
    }
    let o = match c.output().await {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("script: {e}"),
    };
    assert!(o.status.success(), "{o:?}");
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[tokio::test]
async fn on_a_terminal_the_answer_streams_by_default() {
    let s = server(tool_then_answer()).await;
    let Some(out) = in_pty(&s, &["react", "What is 17*83?"]).await else {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    };
    assert!(out.contains("17 × 83 = 1411.\r\n"), "{out:?}");
    assert!(out.contains("llm_calls=2"), "{out:?}");
    assert_eq!(streamed(&s).await, (2, 2));

    // --no-stream on a terminal: the answer once the run has finished, from plain replies.
    let s = server(tool_then_answer()).await;
    let out = in_pty(&s, &["react", "--no-stream", "What is 17*83?"])
        .await
        .unwrap();
    assert!(out.contains("17 × 83 = 1411.\r\n"), "{out:?}");
    assert_eq!(streamed(&s).await, (0, 2));
}

#[tokio::test]
async fn a_key_echoed_across_deltas_is_redacted_in_the_streamed_answer() {
    const KEY: &str = "sk-test-0123456789abcdef";
    let s = server(vec![Turn::Answer(&[
        "Your key is sk-te",
        "st-01234",
        "56789abcdef, keep it safe.",
    ])])
    .await;
    let o = ek_at(&s, &["react", "--stream", "--api-key", KEY, "q"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains("0123456789"), "{out}");
    assert!(
        out.starts_with("Your key is [REDACTED], keep it safe.\n"),
        "{out}"
    );
    assert_eq!(streamed(&s).await, (1, 1));
}
