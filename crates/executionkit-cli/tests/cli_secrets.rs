//! `ek` never prints the key it was given, nor a base URL's password: a wiremock server on
//! 127.0.0.1 echoes the request's key (as sent, upper-cased and percent-encoded) into judge
//! replies, structured replies and answers, and every byte of stdout and stderr is checked,
//! with and without `--json`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use common::{code, ek_env, stderr, stdout};

use std::path::PathBuf;
use std::process::Output;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "sk-test-0123456789abcdef";
const PASSWORD: &str = "hunter2password";

/// Whether `text` holds the key in any form the server echoes (any case, percent-encoded once
/// or twice, or its distinctive tail alone), or the URL password.
fn leaks(text: &str) -> bool {
    let mut t = text.to_lowercase();
    for _ in 0..2 {
        t = t.replace("%25", "%").replace("%2d", "-");
    }
    t.contains("sk-test-0123") || t.contains("0123456789abcdef") || t.contains(PASSWORD)
}

fn assert_clean(o: &Output, what: &str) {
    let (out, err) = (stdout(o), stderr(o));
    assert!(!leaks(&out), "{what}: a secret on stdout:\n{out}");
    assert!(!leaks(&err), "{what}: a secret on stderr:\n{err}");
}

/// How the server answers: with the key it was sent, echoed three ways.
#[derive(Clone, Copy)]
enum Echo {
    /// `no score: KEY-UPPER / key%2Dencoded / key`: not a judge score, and an answer.
    Text,
    /// `{"n": "…the echoes…"}`: not an integer.
    Json,
}

struct EchoKey(Echo);

impl Respond for EchoKey {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let key = auth.strip_prefix("Bearer ").unwrap_or(auth);
        let echoes = format!(
            "{} / {} / {}",
            key.to_uppercase(),
            key.replace('-', "%2D"),
            key
        );
        let content = match self.0 {
            Echo::Text => format!("no score: {echoes}"),
            Echo::Json => json!({ "n": echoes }).to_string(),
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
        }))
    }
}

async fn echo_server(echo: Echo) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(EchoKey(echo))
        .mount(&s)
        .await;
    s
}

/// The server really was sent the key (so the echoes above really hold it).
async fn assert_key_was_sent(s: &MockServer) {
    let reqs = s.received_requests().await.unwrap();
    assert!(!reqs.is_empty(), "no request reached the server");
    for r in reqs {
        let auth = r.headers.get("authorization").unwrap().to_str().unwrap();
        assert_eq!(auth, format!("Bearer {KEY}"));
    }
}

fn schema_file(name: &str, schema: &Value) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ek-cli-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, schema.to_string()).unwrap();
    p.to_string_lossy().into_owned()
}

/// `ek args` against `s`, the key given by `--api-key` or by `EXECUTIONKIT_API_KEY`, with
/// and without `--json`: each run's output is returned for the caller's checks.
async fn run_both_ways(s: &MockServer, args: &[&str]) -> Vec<(String, Output)> {
    let base = format!("{}/v1", s.uri());
    let mut outs = Vec::new();
    for json in [false, true] {
        for by_flag in [false, true] {
            let mut a: Vec<&str> = args.to_vec();
            if json {
                a.push("--json");
            }
            let mut env = vec![
                ("EXECUTIONKIT_BASE_URL", base.clone()),
                ("EXECUTIONKIT_MODEL", "test-model".to_owned()),
            ];
            if by_flag {
                a.extend(["--api-key", KEY]);
            } else {
                env.push(("EXECUTIONKIT_API_KEY", KEY.to_owned()));
            }
            let o = ek_env(&a, &env).await;
            let what = format!("{a:?} (json: {json}, key by flag: {by_flag})");
            assert_clean(&o, &what);
            outs.push((what, o));
        }
    }
    outs
}

#[test]
fn leaks_sees_every_echo_the_tests_use() {
    // The detector itself must not be blind, or every test below would pass vacuously.
    for echo in [
        KEY.to_owned(),
        KEY.to_uppercase(),
        KEY.replace('-', "%2D"),
        KEY.replace('-', "%252d"),
        PASSWORD.to_uppercase(),
    ] {
        assert!(leaks(&format!("x {echo} y")), "{echo}");
    }
    assert!(!leaks("x [REDACTED] y"));
}

#[tokio::test]
async fn refine_judge_reply_echoing_the_key_is_redacted() {
    let s = echo_server(Echo::Text).await;
    for (what, o) in run_both_ways(&s, &["refine", "Write a haiku"]).await {
        assert_eq!(code(&o), 1, "{what}: {} {}", stdout(&o), stderr(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(all.contains("parse"), "{what}: {all}");
        // The judge's reply is quoted in the error, with the key replaced.
        assert!(all.contains("[REDACTED]"), "{what}: {all}");
        if what.contains("json: true") {
            let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
            assert_eq!(v["error"]["kind"], "parse", "{v}");
        }
    }
    assert_key_was_sent(&s).await;
}

#[tokio::test]
async fn structured_reply_echoing_the_key_is_redacted() {
    let schema = schema_file(
        "int.json",
        &json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
    );
    let s = echo_server(Echo::Json).await;
    let args = [
        "structured",
        "give n",
        "--schema",
        &schema,
        "--max-repairs",
        "1",
    ];
    for (what, o) in run_both_ways(&s, &args).await {
        assert_eq!(code(&o), 1, "{what}: {} {}", stdout(&o), stderr(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            all.contains("JSON Schema validation failed"),
            "{what}: {all}"
        );
        assert!(all.contains("[REDACTED]"), "{what}: {all}");
    }
    assert_key_was_sent(&s).await;
}

#[tokio::test]
async fn values_holding_the_key_are_printed_redacted() {
    // A text answer (consensus) and a JSON answer (structured) that quote the key.
    let s = echo_server(Echo::Text).await;
    for (what, o) in run_both_ways(&s, &["consensus", "q", "--samples", "1"]).await {
        assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.contains("no score: [REDACTED] / [REDACTED] / [REDACTED]"),
            "{what}: {out}"
        );
    }
    let schema = schema_file("object.json", &json!({"type": "object"}));
    let s = echo_server(Echo::Json).await;
    for (what, o) in run_both_ways(&s, &["structured", "q", "--schema", &schema]).await {
        assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
        let first = stdout(&o).lines().next().unwrap().to_owned();
        let v: Value = serde_json::from_str(&first).unwrap();
        let value = if what.contains("json: true") {
            v["value"].clone()
        } else {
            v
        };
        assert_eq!(
            value,
            json!({"n": "[REDACTED] / [REDACTED] / [REDACTED]"}),
            "{what}"
        );
    }
    assert_key_was_sent(&s).await;
}

#[tokio::test]
async fn url_credentials_are_never_printed() {
    let s = echo_server(Echo::Text).await;
    let authority = s.uri().trim_start_matches("http://").to_owned();
    let with_creds = format!("http://bot:{PASSWORD}@{authority}/v1");
    for json in [false, true] {
        let mut args = vec!["refine", "q"];
        if json {
            args.push("--json");
        }
        // No model: a usage error that names the endpoint.
        let o = ek_env(&args, &[("EXECUTIONKIT_BASE_URL", with_creds.clone())]).await;
        assert_eq!(code(&o), 2, "{} {}", stdout(&o), stderr(&o));
        assert_clean(&o, "usage error");
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(all.contains("[REDACTED]@127.0.0.1"), "{all}");

        // A run: whatever the transport and the server make of the credentials, none is
        // printed.
        let mut a = args.clone();
        a.extend(["--base-url", &with_creds, "--model", "m", "--api-key", KEY]);
        let o = ek_env::<&str>(&a, &[]).await;
        assert_clean(&o, "run with URL credentials");

        // Not a URL at all: quoted back without the credentials.
        let bad = format!("http://bot:{PASSWORD}@[::1/v1");
        let mut a = args.clone();
        a.extend(["--base-url", &bad, "--model", "m"]);
        let o = ek_env::<&str>(&a, &[]).await;
        assert_eq!(code(&o), 2, "{} {}", stdout(&o), stderr(&o));
        assert_clean(&o, "unparsable URL");
    }
}

#[tokio::test]
async fn usage_errors_quoting_the_key_are_redacted() {
    // A stray positional argument that is the key: clap quotes it back.
    for json in [false, true] {
        let mut args = vec!["refine", "q", KEY, "--api-key", KEY];
        if json {
            args.push("--json");
        }
        let o = ek_env::<&str>(&args, &[]).await;
        assert_eq!(code(&o), 2, "{} {}", stdout(&o), stderr(&o));
        assert_clean(&o, "clap error");
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(all.contains("[REDACTED]"), "{all}");
    }
}
