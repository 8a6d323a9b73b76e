//! The provider's key never leaves a pattern: a model or server that echoes it (as is,
//! upper-cased, percent-encoded) into a judge reply, a structured reply, a tool result or an
//! error body finds it redacted in every error message, error metadata and result metadata a
//! pattern returns. And a base URL's `user:pass@` never shows in `Debug` or errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use executionkit::ReactLoop;
use executionkit::StructuredValue;
use executionkit::Tool;
use executionkit::{
    Choice, Consensus, Error, ErrorKind, LlmProvider, LlmResponse, MockProvider, OpenAiProvider,
    Pattern, PatternResult, Pipe, RefineLoop, Result, RetryPolicy, RunContext, StepInput, ToolCall,
};
use serde_json::{Map, Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "sk-test-0123456789abcdef";

fn upper() -> String {
    KEY.to_uppercase()
}

/// The key with its dashes percent-encoded, as a URL-encoding echo gives it.
fn pct() -> String {
    KEY.replace('-', "%2D")
}

/// Whether `text` holds the key in any of the forms the tests echo: any case, percent-encoded
/// once or twice, or its distinctive tail alone.
fn leaks(text: &str) -> bool {
    let mut t = text.to_lowercase();
    for _ in 0..2 {
        t = t.replace("%25", "%").replace("%2d", "-");
    }
    t.contains("sk-test-0123") || t.contains("0123456789abcdef")
}

/// Asserts that no part of the error a caller can see holds the key.
fn assert_clean_error(e: &Error) {
    for (what, text) in [
        ("message", e.message().to_owned()),
        ("Display", e.to_string()),
        ("Debug", format!("{e:?}")),
        ("metadata", Value::Object(e.metadata().clone()).to_string()),
        ("to_json", e.to_json().to_string()),
    ] {
        assert!(
            !leaks(&text),
            "the key leaked into the error's {what}: {text}"
        );
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        assert!(!leaks(&s.to_string()), "the key leaked into a source: {s}");
        src = s.source();
    }
}

fn assert_clean_metadata<T, S: std::fmt::Debug>(r: &PatternResult<T, S>) {
    let text = Value::Object(r.metadata.clone()).to_string();
    assert!(!leaks(&text), "the key leaked into the metadata: {text}");
    let stats = format!("{:?}", r.stats);
    assert!(
        !leaks(&stats),
        "the key leaked into the typed statistics: {stats}"
    );
}

fn mock(replies: Vec<String>) -> MockProvider {
    MockProvider::new(replies).with_secret(KEY)
}

#[test]
fn leaks_sees_every_echo_the_tests_use() {
    // The detector itself must not be blind, or every test below would pass vacuously.
    for echo in [KEY.to_owned(), upper(), pct(), KEY.replace('-', "%252D")] {
        assert!(leaks(&format!("x {echo} y")), "{echo}");
    }
    assert!(!leaks("x [REDACTED] y"));
}

#[tokio::test]
async fn refine_judge_parse_error_holds_no_key() {
    // The draft, then a judge that twice answers with the key instead of a score: the judge's
    // replies are quoted in the parse error.
    for (first, second) in [(upper(), KEY.to_owned()), (KEY.to_owned(), upper())] {
        let p = mock(vec![
            "draft".into(),
            format!("no score: {first}"),
            format!("still none: {second}"),
        ]);
        let e = RefineLoop::new()
            .run(&p, "task", &RunContext::new())
            .await
            .unwrap_err();
        assert!(e.is_parse(), "{e:?}");
        assert_clean_error(&e);
    }
}

#[tokio::test]
async fn structured_validation_and_parse_errors_hold_no_key() {
    let schema = json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"]
    });
    for last in [
        // Fails the schema: the value is quoted in the validation message.
        json!({"n": KEY}).to_string(),
        json!({"n": upper()}).to_string(),
        json!({"n": pct()}).to_string(),
        // An object key, quoted as an unexpected property or in the path.
        json!({"n": 1, KEY: 2})
            .to_string()
            .replace("\"n\":1,", "\"n\":\"x\","),
        // Not JSON at all.
        format!("here is your key: {} {{", upper()),
    ] {
        let p = mock(vec![json!({"n": KEY}).to_string(), last.clone()]);
        let e = StructuredValue::new()
            .schema("thing", schema.clone())
            .max_repairs(1)
            .run(&p, "give n", &RunContext::new())
            .await
            .unwrap_err();
        assert!(e.is_parse(), "{last}: {e:?}");
        assert_clean_error(&e);
        // The repair prompt sent to the model quoted the key: that is the model's own text,
        // fed back to it, not output.
        assert_eq!(p.call_count(), 2);
    }
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

fn tool_call(text: &str) -> LlmResponse {
    LlmResponse {
        choices: vec![Choice {
            content: String::new(),
            tool_calls: vec![ToolCall::new("c1", "echo", json!({ "text": text }))],
            finish_reason: Some("tool_calls".into()),
            logprobs: None,
        }],
        ..LlmResponse::default()
    }
}

#[tokio::test]
async fn react_error_and_result_metadata_hold_no_key() {
    // max_rounds reached: the error's metadata carries the transcript, tool result included.
    let p = MockProvider::new([tool_call(&upper())]).with_secret(KEY);
    let e = ReactLoop::new()
        .max_rounds(1)
        .tools([echo_tool()])
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap_err();
    assert!(e.is_max_iterations(), "{e:?}");
    assert!(
        e.metadata().contains_key("messages"),
        "the transcript is expected in the metadata: {e:?}"
    );
    assert_clean_error(&e);

    // A success: the transcript in the metadata is redacted; the value is the model's answer
    // and is returned as given.
    let p = MockProvider::new([tool_call(&pct()), LlmResponse::text(format!("done {KEY}"))])
        .with_secret(KEY);
    let r = ReactLoop::new()
        .tools([echo_tool()])
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_clean_metadata(&r);
    assert_eq!(r.value, format!("done {KEY}"));
}

/// A pipe step of the caller's own whose error quotes the key.
#[derive(Debug)]
struct Leaky;

#[async_trait]
impl Pattern for Leaky {
    fn name(&self) -> &'static str {
        "leaky"
    }
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    async fn run_step(
        &self,
        _p: &dyn LlmProvider,
        _input: StepInput<'_>,
        _ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        Err(Error::new(ErrorKind::Provider, format!("echo {}", upper()))
            .with_metadata("reply", json!({ KEY: [pct()] })))
    }
}

#[tokio::test]
async fn pipe_errors_of_any_step_hold_no_key() {
    let p = mock(vec![]);
    let e = Pipe::new()
        .step(Leaky)
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap_err();
    assert!(e.is_provider());
    assert_clean_error(&e);
    assert_eq!(e.metadata()["reply"], json!({"[REDACTED]": ["[REDACTED]"]}));
}

#[tokio::test]
async fn without_a_secret_nothing_is_rewritten() {
    let p = MockProvider::new(["draft", "no score", "none"]);
    let e = RefineLoop::new()
        .run(&p, "task", &RunContext::new())
        .await
        .unwrap_err();
    assert!(e.message().contains("no score"), "{e:?}");
}

/// Echoes the request's `Authorization` header, upper-cased and percent-encoded, into a 401
/// error body.
struct EchoAuth;

impl Respond for EchoAuth {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let key = auth.trim_start_matches("Bearer ");
        ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": format!(
                "invalid key {} (as sent: {}; url-encoded: {})",
                key.to_uppercase(),
                key,
                key.replace('-', "%2d")
            ),
        }}))
    }
}

#[tokio::test]
async fn url_credentials_and_echoed_keys_stay_out_of_errors_and_debug() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(EchoAuth)
        .mount(&server)
        .await;
    let authority = server.uri().trim_start_matches("http://").to_owned();
    let with_creds = format!("http://bot:hunter2pass@{authority}/v1");
    let p = OpenAiProvider::builder(with_creds.clone(), "m")
        .api_key(KEY)
        .build()
        .unwrap();
    for text in [
        format!("{p:?}"),
        format!("{:?}", OpenAiProvider::builder(with_creds, "m")),
    ] {
        assert!(!text.contains("hunter2pass"), "{text}");
        assert!(!leaks(&text), "{text}");
    }

    let ctx = RunContext::new().retry(RetryPolicy::none());
    let e = Consensus::new()
        .samples(1)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e:?}");
    assert!(
        server.received_requests().await.unwrap().len() == 1,
        "the request was expected to reach the server"
    );
    assert_clean_error(&e);
    assert!(!format!("{e:?}").contains("hunter2pass"));

    // A port nothing listens on: a transport error, which must not name the credentials.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = OpenAiProvider::builder(format!("http://bot:hunter2pass@127.0.0.1:{port}/v1"), "m")
        .api_key(KEY)
        .build()
        .unwrap();
    let e = Consensus::new()
        .samples(1)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_transport() || e.is_timeout(), "{e:?}");
    let mut texts = vec![format!("{e:?}"), e.to_json().to_string()];
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        texts.push(s.to_string());
        src = s.source();
    }
    for t in texts {
        assert!(!t.contains("hunter2pass"), "{t}");
        assert!(!leaks(&t), "{t}");
    }
}
