//! `ek --otlp-endpoint URL`: a run's spans reach a loopback OTLP/HTTP collector started in the
//! test (decoded from protobuf) before `ek` exits: the pattern's span with its calls as
//! children, the GenAI attributes and the cost; never the key or the prompt. A collector that
//! cannot be reached is a warning, not a failure; a bad URL is a usage error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;
#[path = "../../executionkit/tests/common/otlp.rs"]
mod otlp;

use common::{code, ek_env, json_out, stderr};
use otlp::Collector;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-otlp-0123456789abcdefSECRET";

async fn llm() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1",
            "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Forty-two"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
        })))
        .mount(&s)
        .await;
    s
}

#[tokio::test]
async fn ek_exports_the_runs_spans_before_it_exits() {
    let collector = Collector::start().await;
    let server = llm().await;
    let base = format!("{}/v1", server.uri());
    let o = ek_env(
        &[
            "consensus",
            "The meaning of life, the universe and everything?",
            "--samples",
            "2",
            "--price-in",
            "1",
            "--price-out",
            "2",
            "--otlp-endpoint",
            &collector.url,
            "--json",
        ],
        &[
            ("EXECUTIONKIT_BASE_URL", base.as_str()),
            ("EXECUTIONKIT_MODEL", "test-model"),
            ("EXECUTIONKIT_API_KEY", KEY),
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json_out(&o)["value"], "Forty-two");

    // Flushed at exit: everything is there once `ek` returned.
    let spans = collector.spans();
    let pattern: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "pattern.consensus")
        .collect();
    assert_eq!(pattern.len(), 1, "{spans:#?}");
    assert_eq!(pattern[0].service.as_deref(), Some("ek"));
    let calls: Vec<_> = spans.iter().filter(|s| s.name == "llm.call").collect();
    assert_eq!(calls.len(), 2);
    for c in calls {
        assert_eq!(c.parent_span_id, pattern[0].span_id);
        assert_eq!(c.attr("gen_ai.operation.name"), "chat");
        assert_eq!(c.attr("gen_ai.request.model"), "test-model");
        assert_eq!(c.attr("gen_ai.usage.input_tokens"), &json!(10));
        assert_eq!(c.attr("gen_ai.usage.output_tokens"), &json!(4));
        assert_eq!(c.attr("gen_ai.response.finish_reasons"), r#"["stop"]"#);
        // 10 in at $1 and 4 out at $2 per million.
        let usd = c.attr("executionkit.cost.usd").as_f64().unwrap();
        assert!((usd - 18e-6).abs() < 1e-12, "{usd}");
    }
    for req in collector.requests() {
        assert_eq!(req.path, "/v1/traces");
        let raw = String::from_utf8_lossy(&req.body);
        assert!(!raw.contains("0123456789abcdef"), "the key was exported");
        assert!(!raw.contains("universe"), "the prompt was exported");
        assert!(!raw.contains("Forty"), "the answer was exported");
    }
}

#[tokio::test]
async fn an_unreachable_collector_is_a_warning_and_a_bad_url_a_usage_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let o = ek_env::<&str>(&["consensus", "2+2?", "--otlp-endpoint", &url], &[]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: OTLP export failed"),
        "{}",
        stderr(&o)
    );

    let o = ek_env::<&str>(
        &[
            "consensus",
            "2+2?",
            "--otlp-endpoint",
            "localhost:4318",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(code(&o), 2);
    let v = json_out(&o);
    assert_eq!(v["error"]["kind"], "invalid_argument");
    assert_eq!(v["error"]["metadata"]["argument"], "otlp_endpoint");
}
