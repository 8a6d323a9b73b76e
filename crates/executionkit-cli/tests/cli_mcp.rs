//! `ek mcp`: the built binary as an MCP server over stdio, spoken to in newline-delimited
//! JSON-RPC on its stdin/stdout, on the offline model (no endpoint configured).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// A running `ek mcp` and its pipes.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Session {
    async fn start(flags: &[&str]) -> Self {
        Self::start_env(flags, &[]).await
    }

    async fn start_env(flags: &[&str], env: &[(&str, String)]) -> Self {
        let mut args = vec!["mcp"];
        args.extend_from_slice(flags);
        let mut c = common::command(&args, env);
        c.stdin(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Self {
            child,
            stdin,
            lines,
        };
        let init = s
            .request(
                1,
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "cli_mcp", "version": "0"}
                }),
            )
            .await;
        assert_eq!(init["result"]["serverInfo"]["name"], "executionkit");
        assert!(init["result"]["capabilities"]["tools"].is_object());
        s.send_line(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await;
        s
    }

    async fn send_line(&mut self, line: &str) {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(line.as_bytes()).await.unwrap();
        w.write_all(b"\n").await.unwrap();
        w.flush().await.unwrap();
    }

    async fn read(&mut self) -> Value {
        let line = self.lines.next_line().await.unwrap().expect("a reply line");
        serde_json::from_str(&line).unwrap()
    }

    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send_line(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        )
        .await;
        let reply = self.read().await;
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    async fn call(&mut self, id: u64, tool: &str, arguments: Value) -> Value {
        let reply = self
            .request(
                id,
                "tools/call",
                json!({"name": tool, "arguments": arguments}),
            )
            .await;
        reply["result"].clone()
    }

    /// Closes stdin and waits for the server to exit.
    async fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        assert!(self.lines.next_line().await.unwrap().is_none());
        self.child.wait().await.unwrap().code().unwrap()
    }
}

#[tokio::test]
async fn lists_calls_rejects_and_survives_malformed_lines() {
    let mut s = Session::start(&[]).await;

    // tools/list: the five tools with their schemas (rmcp lists them by name).
    let list = s.request(2, "tools/list", json!({})).await;
    let tools = list["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["consensus", "pipe", "react_loop", "refine", "structured"]
    );
    let consensus = &tools[0]["inputSchema"];
    assert_eq!(consensus["required"], json!(["prompt"]));
    assert_eq!(consensus["additionalProperties"], false);
    assert_eq!(consensus["properties"]["n"]["minimum"], 1);
    assert_eq!(consensus["properties"]["n"]["maximum"], 9);
    assert_eq!(consensus["properties"]["n"]["type"], "integer");
    assert_eq!(consensus["properties"]["n"]["default"], 3);
    assert_eq!(consensus["properties"]["temperature"]["type"], "number");
    assert_eq!(
        consensus["properties"]["strategy"]["enum"],
        json!(["majority", "unanimous"])
    );
    let react = &tools[2]["inputSchema"];
    assert_eq!(react["properties"]["max_rounds"]["maximum"], 8);
    assert_eq!(
        tools[4]["inputSchema"]["required"],
        json!(["prompt", "schema"])
    );
    assert_eq!(
        tools[1]["inputSchema"]["required"],
        json!(["prompt", "steps"])
    );
    for t in tools {
        assert!(
            t["description"].as_str().unwrap().contains("offline model"),
            "{t}"
        );
    }

    // consensus on the offline model: the value and the cost.
    let r = s
        .call(3, "consensus", json!({"prompt": "What is 2+2?", "n": 3}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let out = &r["structuredContent"];
    assert!(!out["value"].as_str().unwrap().is_empty());
    assert_eq!(out["cost"]["llm_calls"], 3);
    assert_eq!(out["metadata"]["agreement_ratio"], 1.0);
    let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(&text, out);

    // Bad arguments: tool errors that spent nothing.
    for (id, args, argument) in [
        (4, json!({"prompt": "q", "n": 20}), "n"),
        (5, json!({"prompt": "  "}), "prompt"),
        (6, json!({"prompt": "q", "strategy": "loudest"}), "strategy"),
        (7, json!({"prompt": "q", "temperature": 3.0}), "temperature"),
    ] {
        let r = s.call(id, "consensus", args).await;
        assert_eq!(r["isError"], true, "{r}");
        let e = &r["structuredContent"]["error"];
        assert_eq!(e["kind"], "invalid_argument", "{r}");
        assert_eq!(e["metadata"]["argument"], argument, "{r}");
        assert_eq!(e["cost"]["llm_calls"], 0, "{r}");
        assert_eq!(e["cost"]["input_tokens"], 0, "{r}");
    }
    let r = s
        .call(8, "react_loop", json!({"prompt": "q", "max_rounds": 9}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        r["structuredContent"]["error"]["metadata"]["argument"],
        "max_rounds"
    );

    // An unknown argument or one of the wrong type: rmcp's tool error naming it.
    let r = s
        .call(9, "consensus", json!({"prompt": "q", "bogus": 1}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        r["content"][0]["text"].as_str().unwrap().contains("bogus"),
        "{r}"
    );

    // Malformed lines: JSON that is not a message gets Invalid Request (id null); a line that is
    // not JSON gets a Parse error (id null); a blank line is skipped. The server goes on.
    s.send_line("[1, 2, 3]").await;
    let reply = s.read().await;
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(reply["id"].is_null());
    s.send_line("this is not json {").await;
    let reply = s.read().await;
    assert_eq!(reply["error"]["code"], -32700, "{reply}");
    assert_eq!(reply["error"]["message"], "Parse error", "{reply}");
    assert!(reply.as_object().unwrap().contains_key("id") && reply["id"].is_null());
    s.send_line("").await;

    // react_loop on the offline model answers without tools.
    let r = s
        .call(10, "react_loop", json!({"prompt": "What is 17 * 83?"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["metadata"]["rounds"], 1);

    // EOF ends the server.
    assert_eq!(s.finish().await, 0);
}

#[tokio::test]
async fn refine_structured_and_pipe_on_the_offline_model() {
    let mut s = Session::start(&[]).await;
    let r = s
        .call(
            2,
            "refine",
            json!({"prompt": "Explain tides", "max_iterations": 2}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert!(r["structuredContent"]["score"].is_number(), "{r}");
    assert!(
        r["structuredContent"]["metadata"]["iterations"]
            .as_u64()
            .unwrap()
            <= 2
    );

    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}},
        "required": ["name"]});
    let r = s
        .call(
            3,
            "structured",
            json!({"prompt": "A city", "schema": schema}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert!(r["structuredContent"]["value"]["name"].is_string(), "{r}");

    let r = s
        .call(
            4,
            "pipe",
            json!({"prompt": "Explain tides",
                "steps": ["consensus samples=3", "refine max_iterations=1"]}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["metadata"]["step_count"], 2, "{r}");

    // Bad steps and limits: tool errors that spent nothing.
    for (id, tool, args) in [
        (5, "pipe", json!({"prompt": "q", "steps": ["bogus"]})),
        (6, "pipe", json!({"prompt": "q", "steps": []})),
        (7, "refine", json!({"prompt": "q", "target_score": 2.0})),
        (
            8,
            "structured",
            json!({"prompt": "q", "schema": {}, "max_repairs": 9}),
        ),
    ] {
        let r = s.call(id, tool, args).await;
        assert_eq!(r["isError"], true, "{r}");
        let e = &r["structuredContent"]["error"];
        assert_eq!(e["kind"], "invalid_argument", "{r}");
        assert_eq!(e["cost"]["llm_calls"], 0, "{r}");
    }
    assert_eq!(s.finish().await, 0);
}

#[tokio::test]
async fn the_budget_flags_apply_to_each_tool_call() {
    let mut s = Session::start(&["--max-calls", "3"]).await;
    // Two calls of three samples each: each fits its own budget.
    for id in [2, 3] {
        let r = s
            .call(id, "consensus", json!({"prompt": "q", "n": 3}))
            .await;
        assert_eq!(r["isError"], false, "{r}");
        assert_eq!(r["structuredContent"]["cost"]["llm_calls"], 3);
    }
    // Five samples do not: a tool error that carries the spend.
    let r = s.call(4, "consensus", json!({"prompt": "q", "n": 5})).await;
    assert_eq!(r["isError"], true, "{r}");
    let e = &r["structuredContent"]["error"];
    assert_eq!(e["kind"], "budget_exhausted", "{r}");
    assert!(e["cost"].is_object(), "{r}");
    assert_eq!(s.finish().await, 0);
}

#[tokio::test]
async fn bad_flags_fail_before_serving() {
    let o = common::ek(&["mcp", "--max-usd", "1"]).await;
    assert_eq!(common::code(&o), 2);
    assert!(common::stderr(&o).contains("--max-usd"));
}

const KEY: &str = "sk-mcp-test-0123456789abcdef";

/// A chat completion whose content repeats the request's key (after 300 ms when delayed).
struct EchoKey {
    delayed: bool,
}

impl wiremock::Respond for EchoKey {
    fn respond(&self, r: &wiremock::Request) -> wiremock::ResponseTemplate {
        let key = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim_start_matches("Bearer ")
            .to_owned();
        let t = wiremock::ResponseTemplate::new(200);
        let t = if self.delayed {
            t.set_delay(std::time::Duration::from_millis(300))
        } else {
            t
        };
        t.set_body_json(json!({
            "id": "c", "object": "chat.completion", "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": format!("the key is {key}")}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        }))
    }
}

#[tokio::test]
async fn a_configured_endpoint_is_used_and_its_key_never_reaches_the_client() {
    use wiremock::matchers::method;
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(method("POST"))
        .respond_with(EchoKey { delayed: false })
        .mount(&server)
        .await;
    let mut env = common::endpoint(&server);
    env.push(("EXECUTIONKIT_API_KEY", KEY.to_owned()));
    let mut s = Session::start_env(&["--max-retries", "0"], &env).await;
    let r = s.call(2, "consensus", json!({"prompt": "q", "n": 2})).await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["cost"]["llm_calls"], 2);
    assert_eq!(r["structuredContent"]["cost"]["input_tokens"], 10);
    let text = r.to_string();
    assert!(text.contains("the key is"), "{text}");
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(common::bodies(&server).await.len(), 2);

    // A failing endpoint: a tool error carrying what was spent.
    server.reset().await;
    wiremock::Mock::given(method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(400).set_body_string(format!("bad {KEY}")))
        .mount(&server)
        .await;
    let r = s.call(3, "consensus", json!({"prompt": "q", "n": 1})).await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        r["structuredContent"]["error"]["cost"]["llm_calls"], 1,
        "{r}"
    );
    assert!(!r.to_string().contains(KEY), "{r}");
    assert_eq!(s.finish().await, 0);
}

#[tokio::test]
async fn requests_are_handled_concurrently() {
    use wiremock::matchers::method;
    let server = wiremock::MockServer::start().await;
    // Slow replies: both tool calls are in flight while the ping is answered.
    wiremock::Mock::given(method("POST"))
        .respond_with(EchoKey { delayed: true })
        .mount(&server)
        .await;
    let mut s = Session::start_env(&[], &common::endpoint(&server)).await;
    for id in [2, 3] {
        s.send_line(
            &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "consensus", "arguments": {"prompt": "q", "n": 1}}})
            .to_string(),
        )
        .await;
    }
    s.send_line(&json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}).to_string())
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = s.read().await;
        ids.push(reply["id"].as_u64().unwrap());
    }
    assert_eq!(ids[0], 4, "the ping waits for no tool call: {ids:?}");
    ids.sort_unstable();
    assert_eq!(ids, [2, 3, 4]);
    assert_eq!(s.finish().await, 0);
}

/// Counts the requests it receives and answers each after the delay (ms).
struct SlowCounter(std::sync::Arc<std::sync::atomic::AtomicUsize>, u64);

impl wiremock::Respond for SlowCounter {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        wiremock::ResponseTemplate::new(200)
            .set_delay(std::time::Duration::from_millis(self.1))
            .set_body_json(json!({
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "a"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1}
            }))
    }
}

#[tokio::test]
async fn a_cancelled_call_stops_its_pattern() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use wiremock::matchers::method;
    let server = wiremock::MockServer::start().await;
    let seen = Arc::new(AtomicUsize::new(0));
    wiremock::Mock::given(method("POST"))
        .respond_with(SlowCounter(Arc::clone(&seen), 500))
        .mount(&server)
        .await;
    let mut s = Session::start_env(&["--max-retries", "0"], &common::endpoint(&server)).await;
    // Nine samples, five at a time: the first five are in flight when the call is cancelled.
    s.send_line(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "consensus", "arguments": {"prompt": "q", "n": 9}}})
        .to_string(),
    )
    .await;
    // Wait until the server has the first requests, then cancel.
    while seen.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.send_line(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "test"}})
        .to_string(),
    )
    .await;
    // Long enough for an uncancelled run to send all nine (each wave takes 500 ms).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let ping = s.request(8, "ping", json!({})).await;
    assert!(ping.get("result").is_some(), "{ping}");
    assert!(
        seen.load(Ordering::SeqCst) <= 5,
        "the cancelled pattern kept sampling: {} requests",
        seen.load(Ordering::SeqCst)
    );
    // No reply to the cancelled request, and the server still exits cleanly at EOF.
    assert_eq!(s.finish().await, 0);
}

#[tokio::test]
async fn a_garbage_line_gets_a_parse_error_and_the_connection_goes_on() {
    let mut s = Session::start(&[]).await;
    for garbage in [
        "garbage",
        "{\"jsonrpc\": \"2.0\", \"id\": 5,",
        "\u{fffd}\u{1}",
    ] {
        s.send_line(garbage).await;
        let reply = s.read().await;
        assert_eq!(
            reply,
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}})
        );
    }
    // Not valid UTF-8 either.
    let w = s.stdin.as_mut().unwrap();
    w.write_all(b"\xff\xfe{}\n").await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(s.read().await["error"]["code"], -32700);
    // The same connection still serves requests.
    let list = s.request(2, "tools/list", json!({})).await;
    assert_eq!(
        list["result"]["tools"].as_array().unwrap().len(),
        5,
        "{list}"
    );
    // A CRLF line and a UTF-8 byte-order mark are fine.
    s.send_line("\u{feff}{\"jsonrpc\": \"2.0\", \"id\": 3, \"method\": \"ping\"}\r")
        .await;
    let ping = s.read().await;
    assert_eq!(ping["id"], 3, "{ping}");
    assert!(ping["result"].is_object(), "{ping}");
    assert_eq!(s.finish().await, 0);
}

#[tokio::test]
async fn unknown_methods_get_an_error_reply() {
    // Before initialize: the Python SDK's 2.x client first sends `server/discover` and falls back
    // to `initialize` only on an error reply.
    let mut c = common::command(&["mcp"], &[] as &[(&str, &str)]);
    c.stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let discover = json!({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {}});
    stdin
        .write_all(format!("{discover}\n").as_bytes())
        .await
        .unwrap();
    let reply: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["id"], 0, "{reply}");
    assert!(reply["error"]["code"].is_i64(), "{reply}");
    // The fallback: `initialize` on the same connection works.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "cli_mcp", "version": "0"}}});
    stdin
        .write_all(format!("{init}\n").as_bytes())
        .await
        .unwrap();
    let reply: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(
        reply["result"]["serverInfo"]["name"], "executionkit",
        "{reply}"
    );
    drop(stdin);
    assert!(lines.next_line().await.unwrap().is_none());
    assert_eq!(child.wait().await.unwrap().code(), Some(0));

    // After initialize: Method not found.
    let mut s = Session::start(&[]).await;
    let r = s.request(2, "foo/bar", json!({})).await;
    assert_eq!(r["error"]["code"], -32601, "{r}");
    assert_eq!(s.finish().await, 0);
}

#[tokio::test]
async fn a_progress_token_gets_progress_notifications_before_the_result() {
    let mut s = Session::start(&[]).await;
    s.send_line(
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "consensus", "arguments": {"prompt": "q", "n": 5},
                "_meta": {"progressToken": "tok-1"}}})
        .to_string(),
    )
    .await;
    let mut progress = Vec::new();
    let result = loop {
        let m = s.read().await;
        if m["method"] == "notifications/progress" {
            progress.push(m["params"].clone());
        } else {
            break m;
        }
    };
    assert_eq!(result["id"], 2, "{result}");
    assert_eq!(result["result"]["isError"], false, "{result}");
    assert_eq!(progress.len(), 5, "{progress:?}");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["progressToken"], "tok-1", "{p}");
        assert_eq!(p["progress"].as_f64().unwrap(), (i + 1) as f64, "{p}");
        assert_eq!(p["total"].as_f64().unwrap(), 5.0, "{p}");
        assert!(p["message"].as_str().unwrap().contains("consensus"), "{p}");
    }

    // A numeric token, a budget as the total of a pattern without a planned count.
    let mut s2 = Session::start(&["--max-calls", "4"]).await;
    s2.send_line(
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "refine", "arguments": {"prompt": "q", "max_iterations": 1},
                "_meta": {"progressToken": 77}}})
        .to_string(),
    )
    .await;
    let mut seen = 0.0;
    let result = loop {
        let m = s2.read().await;
        if m["method"] != "notifications/progress" {
            break m;
        }
        assert_eq!(m["params"]["progressToken"], 77, "{m}");
        assert_eq!(m["params"]["total"], 4.0, "{m}");
        let p = m["params"]["progress"].as_f64().unwrap();
        assert!(p > seen, "not monotone: {m}");
        seen = p;
    };
    assert_eq!(result["id"], 2, "{result}");
    assert!(seen >= 1.0, "no progress for refine");
    assert_eq!(s2.finish().await, 0);

    // Without a token: no notifications, the reply comes first.
    let r = s
        .request(
            3,
            "tools/call",
            json!({"name": "consensus",
        "arguments": {"prompt": "q", "n": 2}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert_eq!(s.finish().await, 0);
}

/// The client script of the real-client tests.
const PY_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/python_client.py");

/// Runs the Python client script in `mode` against the built `ek`, with `env`; its JSON line.
async fn python_client(python: &str, mode: &str, env: &[(&str, String)]) -> Value {
    let mut c = tokio::process::Command::new(python);
    c.args([PY_CLIENT, env!("CARGO_BIN_EXE_ek"), mode])
        .env_remove("EXECUTIONKIT_BASE_URL")
        .env_remove("EXECUTIONKIT_MODEL")
        .env_remove("EXECUTIONKIT_API_KEY")
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "python client ({mode}) failed: {}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[tokio::test]
async fn python_mcp_client_lists_and_calls_every_tool() {
    let Some(python) = common::server_url("EK_MCP_PY", "scripts/setup-mcp-clients.sh") else {
        return;
    };
    let seen = python_client(&python, "tools", &[]).await;
    assert_eq!(seen["server"], "executionkit", "{seen}");
    assert_eq!(
        seen["tools"],
        json!(["consensus", "pipe", "react_loop", "refine", "structured"])
    );
    for tool in ["consensus", "react_loop", "refine", "structured", "pipe"] {
        assert!(seen["calls"][tool].as_u64().unwrap() >= 1, "{seen}");
    }
    assert_eq!(seen["concurrent"], 4, "{seen}");
    assert_eq!(seen["progress"].as_array().unwrap().len(), 5, "{seen}");
    assert_eq!(seen["error"], "invalid_argument", "{seen}");
    assert_eq!(seen["client"], "ok", "{seen}");
}

#[tokio::test]
async fn python_mcp_client_cancels_a_call() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use wiremock::matchers::method;
    let Some(python) = common::server_url("EK_MCP_PY", "scripts/setup-mcp-clients.sh") else {
        return;
    };
    let server = wiremock::MockServer::start().await;
    let seen = Arc::new(AtomicUsize::new(0));
    // Each reply takes 2 s: the client cancels after 1 s, while the first five are in flight.
    wiremock::Mock::given(method("POST"))
        .respond_with(SlowCounter(Arc::clone(&seen), 2000))
        .mount(&server)
        .await;
    let out = python_client(&python, "cancel", &common::endpoint(&server)).await;
    assert_eq!(out["cancelled"], true, "{out}");
    assert_eq!(out["ping"], "ok", "{out}");
    // The client waited 3 s after cancelling: an uncancelled run would have sent its second wave.
    assert!(
        seen.load(Ordering::SeqCst) <= 5,
        "the cancelled pattern kept sampling: {} requests",
        seen.load(Ordering::SeqCst)
    );
}

/// Runs the MCP Inspector's CLI (`--cli`) against `ek mcp` with `args`; its JSON output.
async fn inspector(cli_js: &str, args: &[&str]) -> Value {
    let o = tokio::process::Command::new("node")
        .args([cli_js, "--cli", env!("CARGO_BIN_EXE_ek"), "mcp"])
        .args(args)
        .env_remove("EXECUTIONKIT_BASE_URL")
        .env_remove("EXECUTIONKIT_MODEL")
        .env_remove("EXECUTIONKIT_API_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "inspector {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test]
async fn mcp_inspector_cli_lists_and_calls_every_tool() {
    let Some(cli) = common::server_url("EK_MCP_INSPECTOR", "scripts/setup-mcp-clients.sh") else {
        return;
    };
    let list = inspector(&cli, &["--method", "tools/list"]).await;
    let names: Vec<&str> = list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["consensus", "pipe", "react_loop", "refine", "structured"]
    );
    // The inspector passes every --tool-arg as a string and converts it by the schema's type
    // (numbers, arrays and objects), so these exercise the schemas too.
    let schema = r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#;
    let steps = r#"["consensus samples=2","refine max_iterations=1"]"#;
    let calls: [(&str, Vec<String>); 5] = [
        (
            "consensus",
            vec![
                "prompt=What is 2+2?".into(),
                "n=3".into(),
                "strategy=majority".into(),
                "temperature=0.5".into(),
            ],
        ),
        (
            "react_loop",
            vec!["prompt=What is 17 * 83?".into(), "max_rounds=2".into()],
        ),
        (
            "refine",
            vec![
                "prompt=Explain tides".into(),
                "max_iterations=1".into(),
                "target_score=0.5".into(),
            ],
        ),
        (
            "structured",
            vec![
                "prompt=A city".into(),
                format!("schema={schema}"),
                "max_repairs=1".into(),
            ],
        ),
        (
            "pipe",
            vec!["prompt=Explain tides".into(), format!("steps={steps}")],
        ),
    ];
    for (tool, args) in calls {
        let mut a = vec!["--method", "tools/call", "--tool-name", tool];
        for arg in &args {
            a.extend(["--tool-arg", arg.as_str()]);
        }
        let r = inspector(&cli, &a).await;
        assert_ne!(r["isError"], true, "{tool}: {r}");
        assert!(
            r["structuredContent"]["cost"]["llm_calls"]
                .as_u64()
                .unwrap()
                >= 1,
            "{tool}: {r}"
        );
    }
    // A tool error: the inspector exits 0 and shows isError with the error's JSON.
    let r = inspector(
        &cli,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "consensus",
            "--tool-arg",
            "prompt=q",
            "--tool-arg",
            "n=20",
        ],
    )
    .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        r["structuredContent"]["error"]["kind"], "invalid_argument",
        "{r}"
    );
}

#[tokio::test]
async fn requests_in_flight_at_eof_are_answered_with_their_progress() {
    let mut s = Session::start(&[]).await;
    for id in [2, 3] {
        s.send_line(
            &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "consensus", "arguments": {"prompt": "q", "n": 3},
                    "_meta": {"progressToken": id}}})
            .to_string(),
        )
        .await;
    }
    // A request rmcp cannot parse: its Invalid Request reply has no id, and EOF does not wait on it.
    s.send_line(r#"{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": "bad"}"#)
        .await;
    drop(s.stdin.take());
    let (mut progress, mut results) = (0, Vec::new());
    while let Some(line) = s.lines.next_line().await.unwrap() {
        let m: Value = serde_json::from_str(&line).unwrap();
        if m["method"] == "notifications/progress" {
            progress += 1;
        } else if m["result"].is_object() {
            results.push(m["id"].as_u64().unwrap());
        }
    }
    results.sort_unstable();
    assert_eq!(results, [2, 3]);
    assert_eq!(progress, 6);
    assert_eq!(s.child.wait().await.unwrap().code(), Some(0));
}
