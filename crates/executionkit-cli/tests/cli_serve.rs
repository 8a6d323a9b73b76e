//! `ek serve`: the built binary as an OpenAI-compatible gateway on 127.0.0.1 (port 0), in
//! front of wiremock upstreams that count their requests; reqwest is the client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Child;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789abcdef";

/// A running `ek serve` and its base URL; stderr is collected.
struct Serve {
    child: Child,
    base: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    async fn start(flags: &[&str], env: &[(&str, String)]) -> Self {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let mut child = common::command(&args, env).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let base = loop {
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!("ek serve exited: {:?}", stderr.lock().unwrap());
            };
            stderr.lock().unwrap().push(line.clone());
            if let Some(url) = line.strip_prefix("ek serve: listening on ") {
                break url.to_owned();
            }
        };
        let collected = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            base,
            stderr,
        }
    }

    async fn at(upstream: &MockServer, flags: &[&str]) -> Self {
        Self::start(flags, &upstream_env(upstream)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn chat(&self, body: &Value) -> (u16, Value) {
        let r = client()
            .post(self.url("/v1/chat/completions"))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn sse(&self, body: &Value) -> (u16, String) {
        let r = client()
            .post(self.url("/v1/chat/completions"))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn upstream_env(s: &MockServer) -> Vec<(&'static str, String)> {
    let mut env = common::endpoint(s);
    env.push(("EXECUTIONKIT_API_KEY", UPSTREAM_KEY.to_owned()));
    env
}

/// An OpenAI completion with `content`.
fn completion(content: &str) -> Value {
    json!({
        "id": "up-1",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
}

async fn upstream_saying(content: &str) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion(content)))
        .mount(&s)
        .await;
    s
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "What is 6 x 7?"}]})
}

/// `data:` payloads of an SSE body, `[DONE]` included.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The value of an unlabelled (or exactly labelled) metric line.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn upstream_models_pass_through_as_json() {
    let up = upstream_saying("forty-two").await;
    let s = Serve::at(&up, &[]).await;
    let health: Value = client()
        .get(s.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let mut body = ask("test-model");
    body["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    body["user"] = json!("u-7");
    body["max_tokens"] = json!(64);
    let (status, v) = s.chat(&body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "forty-two");
    assert_eq!(v["usage"]["total_tokens"], 7);
    let sent = common::bodies(&up).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "test-model");
    assert_eq!(sent[0]["tools"][0]["function"]["name"], "lookup");
    assert_eq!(sent[0]["user"], "u-7");
    assert_eq!(sent[0]["max_tokens"], 64);
    let models: Value = client()
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "test-model",
            "ek:consensus:3:test-model",
            "ek:refine:test-model"
        ]
    );
}

/// The upstream's SSE: a text delta, a tool call in two pieces, usage.
fn upstream_sse() -> String {
    let chunks = [
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me look."}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"rust\"}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}}),
    ];
    let mut s: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

#[tokio::test]
async fn upstream_models_stream_with_tool_calls_and_usage() {
    let up = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(upstream_sse()),
        )
        .mount(&up)
        .await;
    let s = Serve::at(&up, &[]).await;
    let mut body = ask("test-model");
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let (status, text) = s.sse(&body).await;
    assert_eq!(status, 200, "{text}");
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Let me look.");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"q":"rust"}"#);
    assert!(chunks.iter().any(|c| {
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "lookup"
            && c["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_1"
    }));
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    let usage = chunks.iter().find(|c| c.get("usage").is_some()).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 17);
    assert_eq!(common::bodies(&up).await[0]["stream"], true);
}

/// Echoes the `Authorization` header it received, in a reply or an error.
struct EchoKey {
    status: u16,
}

impl Respond for EchoKey {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let auth = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if self.status == 200 {
            ResponseTemplate::new(200).set_body_json(completion(&format!("your key: {auth}")))
        } else {
            ResponseTemplate::new(self.status)
                .set_body_json(json!({"error": {"message": format!("bad request from {auth}")}}))
        }
    }
}

#[tokio::test]
async fn the_upstream_key_never_reaches_a_client() {
    let up = MockServer::start().await;
    // Streamed, the key comes back split across three deltas.
    let (a, rest) = UPSTREAM_KEY.split_at(6);
    let (b, c) = rest.split_at(10);
    let sse: String = [format!("echo: {a}"), b.to_owned(), format!("{c} (done)")]
        .iter()
        .map(|t| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": t}}]})
            )
        })
        .collect::<String>()
        + "data: [DONE]\n\n";
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(wiremock::matchers::body_partial_json(
            json!({"stream": true, "model": "test-model"}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(sse),
        )
        .mount(&up)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(wiremock::matchers::body_partial_json(
            json!({"model": "bad"}),
        ))
        .respond_with(EchoKey { status: 400 })
        .mount(&up)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(EchoKey { status: 200 })
        .mount(&up)
        .await;
    let s = Serve::at(&up, &[]).await;
    let (status, v) = s.chat(&ask("test-model")).await;
    assert_eq!(status, 200);
    let text = v.to_string();
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    assert!(
        text.contains("[REDACTED]"),
        "the upstream did echo it: {text}"
    );
    let (status, v) = s.chat(&ask("bad")).await;
    assert_eq!(status, 400, "{v}");
    assert!(!v.to_string().contains(UPSTREAM_KEY), "{v}");
    let (status, v) = s.chat(&ask("ek:consensus:2:test-model")).await;
    assert_eq!(status, 200);
    assert!(!v.to_string().contains(UPSTREAM_KEY), "{v}");
    let mut body = ask("ek:refine:test-model");
    body["stream"] = json!(true);
    let (_, text) = s.sse(&body).await;
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    let (status, text) = s.sse(&json!({"model": "test-model", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(status, 200);
    let content: String = events(&text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "echo: [REDACTED] (done)", "{text}");
    assert!(!text.contains(a) || !text.contains(b), "{text}");
    // The upstream did get it.
    let got = up.received_requests().await.unwrap();
    assert!(
        got.iter().all(|r| r.headers.get("authorization").unwrap()
            == format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert!(!s.stderr.lock().unwrap().join("\n").contains(UPSTREAM_KEY));
}

#[tokio::test]
async fn errors_are_openai_shaped_with_sensible_statuses() {
    let up = MockServer::start().await;
    for (model, status) in [("limited", 429), ("unkeyed", 401), ("missing", 404)] {
        Mock::given(method("POST"))
            .and(wiremock::matchers::body_partial_json(
                json!({"model": model}),
            ))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "7")
                    .set_body_json(json!({"error": {"message": format!("{model} says no")}})),
            )
            .mount(&up)
            .await;
    }
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("down"))
        .mount(&up)
        .await;
    let s = Serve::at(&up, &["--max-retries", "0"]).await;
    let shaped = |v: &Value| {
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        v["error"]["code"].as_str().unwrap().to_owned()
    };
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(shaped(&r.json().await.unwrap()), "invalid_request");
    let (status, v) = s.chat(&json!({"model": "m"})).await;
    assert_eq!((status, shaped(&v).as_str()), (400, "invalid_request"));
    let (status, v) = s.chat(&ask("ek:nonsense:m")).await;
    assert_eq!((status, shaped(&v).as_str()), (404, "model_not_found"));
    let (status, v) = s.chat(&ask("ek:pipe:none")).await;
    assert_eq!((status, shaped(&v).as_str()), (404, "model_not_found"));
    let (status, v) = s.chat(&ask("test-model")).await;
    assert_eq!((status, shaped(&v).as_str()), (502, "provider"));
    // The upstream's 429 keeps its Retry-After; its 401 (the gateway's key) is the gateway's
    // problem (502); its 404 (an unknown model) is the client's.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&ask("limited"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(shaped(&r.json().await.unwrap()), "rate_limited");
    let (status, v) = s.chat(&ask("unkeyed")).await;
    assert_eq!((status, shaped(&v).as_str()), (502, "permanent"));
    let (status, v) = s.chat(&ask("missing")).await;
    assert_eq!((status, shaped(&v).as_str()), (404, "permanent"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing says no"),
        "{v}"
    );
    // A body declared over 8 MiB is refused from its headers, before it is sent.
    let (status, body) = raw_post(&s.base, 8 * 1024 * 1024 + 1, b"{").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        shaped(&serde_json::from_str(&body).unwrap()),
        "body_too_large"
    );
    let r = client().get(s.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let m = s.metrics().await;
    for kind in [
        "invalid_request",
        "model_not_found",
        "provider",
        "body_too_large",
    ] {
        assert!(
            metric(&m, &format!("ek_errors_total{{kind=\"{kind}\"}}")).unwrap() >= 1.0,
            "{kind}: {m}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "ek_requests_total{route=\"/v1/chat/completions\",status=\"413\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // One upstream call each (the 503, 429, 401, 404), no retry.
    assert_eq!(up.received_requests().await.unwrap().len(), 4);
}

/// A POST declaring `length` bytes of body but sending only `part`; the status and body of
/// the reply.
async fn raw_post(base: &str, length: usize, part: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.strip_prefix("http://").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(part).await.unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn the_budget_flags_apply_to_each_request() {
    let up = upstream_saying("42").await;
    let s = Serve::at(&up, &["--max-calls", "2"]).await;
    let (status, v) = s.chat(&ask("ek:consensus:3:test-model")).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "budget_exhausted", "{v}");
    // Each request has its own two calls.
    for _ in 0..3 {
        let (status, v) = s.chat(&ask("ek:consensus:2:test-model")).await;
        assert_eq!(status, 200, "{v}");
    }
}

#[tokio::test]
async fn a_non_loopback_address_needs_keys() {
    let o = common::ek(&["serve", "--listen", "0.0.0.0:0"]).await;
    assert_eq!(common::code(&o), 2, "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("--keys"),
        "{}",
        common::stderr(&o)
    );
    let o = common::ek(&["serve", "--listen", "somewhere"]).await;
    assert_eq!(common::code(&o), 2);
}

#[tokio::test]
async fn a_consensus_model_runs_the_pattern_and_reports_its_total() {
    let up = upstream_saying("42").await;
    // $1 and $2 per million input / output tokens.
    let s = Serve::at(&up, &["--price-in", "1", "--price-out", "2"]).await;
    let (status, v) = s.chat(&ask("ek:consensus:3:org/model:q4")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "ek:consensus:3:org/model:q4");
    assert_eq!(v["choices"][0]["message"]["content"], "42");
    assert_eq!(v["usage"]["prompt_tokens"], 15);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["executionkit"]["pattern"], "consensus");
    assert_eq!(v["executionkit"]["cost"]["llm_calls"], 3);
    assert_eq!(v["executionkit"]["metadata"]["agreement_ratio"], 1.0);
    let usd = v["executionkit"]["usd"].as_f64().unwrap();
    assert!((usd - 27e-6).abs() < 1e-12, "{v}");
    let sent = common::bodies(&up).await;
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter().all(|b| b["model"] == "org/model:q4"),
        "{sent:?}"
    );

    let mut body = ask("ek:consensus:2:test-model");
    body["stream"] = json!(true);
    let (status, text) = s.sse(&body).await;
    assert_eq!(status, 200);
    assert!(text.starts_with(": keep-alive\n\n"), "{text}");
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "42");
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["total_tokens"], 14);
    assert_eq!(last["executionkit"]["cost"]["llm_calls"], 2);
    let m = s.metrics().await;
    assert_eq!(metric(&m, "ek_upstream_calls_total"), Some(5.0), "{m}");
    assert_eq!(
        metric(&m, "ek_tokens_total{direction=\"input\"}"),
        Some(25.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_refine_model_and_a_named_pipe() {
    let up = MockServer::start().await;
    // The judge's reply scores 10/10 on any scale; the writer's is the text.
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion(r#"{"score": 10, "reasoning": "ok"}"#)),
        )
        .mount(&up)
        .await;
    let dir = std::env::temp_dir().join(format!("ek-serve-pipes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ek.toml");
    std::fs::write(
        &cfg,
        format!(
            "[providers.up]\nbase_url = \"{}/v1\"\nmodel = \"m\"\n\n[pipes]\nvote = [\"consensus samples=2\"]\n",
            up.uri()
        ),
    )
    .unwrap();
    let s = Serve::start(
        &["--config", cfg.to_str().unwrap(), "--provider", "up"],
        &[],
    )
    .await;
    let (status, v) = s.chat(&ask("ek:pipe:vote")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["executionkit"]["pattern"], "pipe");
    assert_eq!(v["executionkit"]["cost"]["llm_calls"], 2);
    let (status, v) = s.chat(&ask("ek:refine:m")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["executionkit"]["pattern"], "refine");
    assert!(
        v["executionkit"]["cost"]["llm_calls"].as_u64().unwrap() >= 2,
        "{v}"
    );
    let models: Value = client()
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "ek:pipe:vote"),
        "{models}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn keys_file(calls: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ek-serve-keys-{}-{calls}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("keys.toml");
    let hash = hex::encode(Sha256::digest(b"sk-client-alice"));
    std::fs::write(
        &f,
        format!(
            "[[keys]]\nname = \"alice\"\nsha256 = \"{hash}\"\ncalls = {calls}\nwindow_seconds = 3600\n"
        ),
    )
    .unwrap();
    f
}

#[tokio::test]
async fn keys_authenticate_and_their_budgets_are_enforced_before_the_call() {
    let up = upstream_saying("ok").await;
    let f = keys_file(2);
    let s = Serve::at(&up, &["--keys", f.to_str().unwrap()]).await;
    let send = |key: Option<&'static str>, body: Value| {
        let mut r = client().post(s.url("/v1/chat/completions")).json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = send(None, ask("test-model")).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (status, _) = send(Some("sk-client-bob"), ask("test-model")).await;
    assert_eq!(status, 401);
    let r = client().get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        send(Some("sk-client-alice"), ask("test-model")).await.0,
        200
    );
    // A 3-sample consensus does not fit the one call left: the ledger refuses a sample before
    // dispatch. The sample that got the call counts if its request was written, and is given
    // back if the refusal cancelled it first.
    let (status, v) = send(Some("sk-client-alice"), ask("ek:consensus:3:test-model")).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "budget_exhausted");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("alice"),
        "{v}"
    );
    let spent = v["executionkit"]["cost"]["llm_calls"].as_u64().unwrap_or(0);
    assert!(spent <= 1, "{v}");
    // What is left (the call given back, if it was) goes; then the key is refused up front.
    let (mut status, mut v) = send(Some("sk-client-alice"), ask("test-model")).await;
    if status == 200 {
        assert_eq!(spent, 0, "a third call was allowed: {v}");
        (status, v) = send(Some("sk-client-alice"), ask("test-model")).await;
    }
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`alice`"),
        "{v}"
    );
    // Never more than the key's two calls reached the upstream.
    let sent = up.received_requests().await.unwrap().len();
    assert!((1..=2).contains(&sent), "{sent}");
    std::fs::remove_dir_all(f.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_pattern_and_its_spend_stays_counted() {
    let up = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion("42"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&up)
        .await;
    let s = Serve::at(&up, &[]).await;
    // Nine samples, five at a time: the first five are in flight when the client leaves.
    let body = ask("ek:consensus:9:test-model");
    let client_task = tokio::spawn({
        let url = s.url("/v1/chat/completions");
        async move { client().post(url).json(&body).send().await }
    });
    for _ in 0..200 {
        if up.received_requests().await.unwrap().len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.received_requests().await.unwrap().len(), 5);
    client_task.abort();
    let _ = client_task.await;
    // Long enough for the first five to have answered and the next four to have been sent,
    // had the pattern kept running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up.received_requests().await.unwrap().len(), 5);
    let m = s.metrics().await;
    assert_eq!(metric(&m, "ek_upstream_calls_total"), Some(5.0), "{m}");
    assert_eq!(
        metric(&m, "ek_errors_total{kind=\"client_disconnected\"}"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_streaming_client_that_goes_away_cancels_its_pattern_too() {
    let up = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion("42"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&up)
        .await;
    let s = Serve::at(&up, &[]).await;
    let mut body = ask("ek:consensus:9:test-model");
    body["stream"] = json!(true);
    let mut r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b": keep-alive\n\n");
    for _ in 0..200 {
        if up.received_requests().await.unwrap().len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(r);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up.received_requests().await.unwrap().len(), 5);
    let m = s.metrics().await;
    assert_eq!(metric(&m, "ek_upstream_calls_total"), Some(5.0), "{m}");
}

#[tokio::test]
async fn sigterm_drains_the_requests_in_flight() {
    let up = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion("late"))
                .set_delay(Duration::from_millis(800)),
        )
        .mount(&up)
        .await;
    let mut s = Serve::at(&up, &[]).await;
    let pending = tokio::spawn({
        let url = s.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .json(&ask("test-model"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    while up.received_requests().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = s.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, v) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "late");
    let exit = s.child.wait().await.unwrap();
    assert_eq!(exit.code(), Some(0));
    let err = s.stderr.lock().unwrap().join("\n");
    assert!(err.contains("shutting down"), "{err}");
}

/// Answers a streamed request with SSE ("42" and usage), any other with JSON.
struct JsonOrSse;

impl Respond for JsonOrSse {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if body["stream"] == true {
            let sse = [
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "4"}}]}),
                json!({"choices": [{"index": 0, "delta": {"content": "2"}, "finish_reason": "stop"}]}),
                json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
            ]
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .collect::<String>()
                + "data: [DONE]\n\n";
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(sse)
        } else {
            ResponseTemplate::new(200).set_body_json(completion("42"))
        }
    }
}

#[tokio::test]
async fn openai_python_sdk_is_a_client() {
    let Some(python) = common::server_url("EK_OPENAI_PY", "scripts/setup-openai-sdk.sh") else {
        return;
    };
    let up = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(JsonOrSse)
        .mount(&up)
        .await;
    let f = keys_file(10);
    let s = Serve::at(&up, &["--keys", f.to_str().unwrap()]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    let o = tokio::process::Command::new(&python)
        .args([
            script,
            &format!("{}/v1", s.base),
            "sk-client-alice",
            "test-model",
        ])
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        v["models"],
        json!([
            "test-model",
            "ek:consensus:3:test-model",
            "ek:refine:test-model"
        ])
    );
    assert_eq!(v["plain"], json!({"content": "42", "total_tokens": 7}));
    assert_eq!(v["stream"], json!({"content": "42", "total_tokens": 7}));
    assert_eq!(
        v["consensus"],
        json!({"content": "42", "total_tokens": 21, "llm_calls": 3})
    );
    assert_eq!(
        v["consensus_stream"],
        json!({"content": "42", "total_tokens": 21})
    );
    assert_eq!(v["wrong_key"], 401);
    assert_eq!(v["exhausted"]["status"], 429, "{v}");
    assert_eq!(v["exhausted"]["code"], "budget_exhausted", "{v}");
    // 1 + 1 + 3 + 3 calls, then two more until the key's ten were spent.
    assert_eq!(up.received_requests().await.unwrap().len(), 10);
    std::fs::remove_dir_all(f.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn openai_python_sdk_against_llama_server() {
    let Some(python) = common::server_url("EK_OPENAI_PY", "scripts/setup-openai-sdk.sh") else {
        return;
    };
    let Some(url) = common::server_url("EK_LLAMA_URL", "scripts/start-llama.sh") else {
        return;
    };
    let key = common::llama_key();
    let env = [
        ("EXECUTIONKIT_BASE_URL", url),
        ("EXECUTIONKIT_MODEL", "smollm2".to_owned()),
        ("EXECUTIONKIT_API_KEY", key.clone()),
    ];
    let s = Serve::start(&[], &env).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    let o = tokio::process::Command::new(&python)
        .args([script, &format!("{}/v1", s.base), "any", "smollm2", "real"])
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!stdout.contains(&key), "{stdout}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["models"][0], "smollm2");
    for part in ["plain", "stream", "consensus", "consensus_stream"] {
        let text = v[part]["content"].as_str().unwrap_or_default();
        assert!(!text.trim().is_empty(), "{part}: {v}");
        assert!(
            v[part]["total_tokens"].as_u64().unwrap_or(0) > 0,
            "{part}: {v}"
        );
    }
    // Same question, temperature 0: the plain and streamed answers agree.
    assert_eq!(v["plain"]["content"], v["stream"]["content"], "{v}");
    assert_eq!(v["consensus"]["llm_calls"], 3, "{v}");
}
