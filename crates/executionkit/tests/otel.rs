//! Traces a collector can read (feature `otel`): patterns run against a scripted
//! OpenAI-compatible server (wiremock) while `Otlp` exports their spans to a loopback OTLP/HTTP
//! collector started in the test; the collector decodes the protobuf and the test checks span
//! names, parents, GenAI attributes, the cost, the events of retries, budget exhaustion and
//! approvals, and that no key or message text was exported.

#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

#[allow(dead_code)]
#[path = "common/chat.rs"]
mod chat;
#[path = "common/otlp.rs"]
mod otlp;

use std::time::Duration;

use executionkit::otel::Otlp;
use executionkit::telemetry::{
    ERROR_TYPE, EXECUTIONKIT_COST_USD, GEN_AI_OPERATION_NAME, GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_FINISH_REASONS, GEN_AI_RESPONSE_MODEL, GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS, SPAN_LLM_CALL,
};
use executionkit::{
    ApprovalGate, ApprovalRequest, Budget, Consensus, CostRates, MockProvider, OpenAiProvider,
    RunContext, Step, Workflow,
};
use serde_json::json;
use tracing::instrument::WithSubscriber as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use otlp::{Collector, Span};

const KEY: &str = "sk-otel-0123456789abcdefSECRET";
const PROMPT: &str = "What is the airspeed velocity of an unladen swallow?";

/// An exporter to `collector` (service `ek-test`).
fn exporter(collector: &Collector) -> Otlp {
    Otlp::builder(&collector.url)
        .service_name("ek-test")
        .build()
        .unwrap()
}

/// Shuts the exporter down off the runtime (it blocks until the collector answered).
async fn shutdown(otlp: Otlp) {
    tokio::task::spawn_blocking(move || otlp.shutdown())
        .await
        .unwrap()
        .unwrap();
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn keyed(s: &MockServer) -> OpenAiProvider {
    OpenAiProvider::builder(format!("{}/v1", s.uri()), "m")
        .api_key(KEY)
        .build()
        .unwrap()
}

#[tokio::test]
async fn consensus_spans_reach_the_collector_with_gen_ai_attributes_and_cost() {
    let collector = Collector::start().await;
    let server = chat::server(chat::ok("Roughly eleven metres per second")).await;
    let otlp = exporter(&collector);
    // $1 per million input tokens, $2 per million output: 3 in + 2 out = $0.000007 a call.
    let ctx = RunContext::new().budget(Budget::new().price("m", CostRates::new(1.0, 2.0).unwrap()));
    let r = Consensus::new()
        .samples(3)
        .run(&keyed(&server), PROMPT, &ctx)
        .with_subscriber(otlp.subscriber())
        .await
        .unwrap();
    assert_eq!(r.cost.llm_calls, 3);
    shutdown(otlp).await;

    let requests = collector.requests();
    assert!(!requests.is_empty());
    for req in &requests {
        assert_eq!(req.path, "/v1/traces");
        assert_eq!(req.content_type, "application/x-protobuf");
    }
    let spans = collector.spans();
    let pattern = named(&spans, "pattern.consensus");
    assert_eq!(pattern.len(), 1, "{spans:#?}");
    let pattern = pattern[0];
    assert!(
        pattern.parent_span_id.is_empty(),
        "the pattern span is a root"
    );
    assert_eq!(pattern.attr("samples"), &json!(3));
    assert_eq!(pattern.service.as_deref(), Some("ek-test"));
    let calls = named(&spans, SPAN_LLM_CALL);
    assert_eq!(calls.len(), 3);
    for c in calls {
        assert_eq!(
            c.parent_span_id, pattern.span_id,
            "each call is the pattern's child"
        );
        assert_eq!(c.trace_id, pattern.trace_id);
        assert_eq!(c.kind, 3, "a client span");
        assert_eq!(c.attr(GEN_AI_OPERATION_NAME), "chat");
        assert_eq!(c.attr(GEN_AI_REQUEST_MODEL), "m");
        assert_eq!(c.attr(GEN_AI_RESPONSE_MODEL), "m");
        assert_eq!(c.attr(GEN_AI_USAGE_INPUT_TOKENS), &json!(3));
        assert_eq!(c.attr(GEN_AI_USAGE_OUTPUT_TOKENS), &json!(2));
        assert_eq!(c.attr(GEN_AI_RESPONSE_FINISH_REASONS), r#"["stop"]"#);
        let usd = c.attr(EXECUTIONKIT_COST_USD).as_f64().unwrap();
        assert!((usd - 7e-6).abs() < 1e-12, "{usd}");
        assert_eq!(c.status, 0, "unset: the call succeeded");
    }
    // Neither the key nor a message's text was exported.
    for req in &requests {
        let raw = String::from_utf8_lossy(&req.body);
        assert!(!raw.contains("SECRET"), "the key was exported");
        assert!(!raw.contains("swallow"), "the prompt was exported");
        assert!(!raw.contains("eleven"), "the answer was exported");
    }
}

#[tokio::test]
async fn without_prices_a_call_has_no_cost_attribute() {
    let collector = Collector::start().await;
    let server = chat::server(chat::ok("4")).await;
    let otlp = exporter(&collector);
    let _ = Consensus::new()
        .samples(1)
        .run(&chat::provider(&server), "2+2?", &RunContext::new())
        .with_subscriber(otlp.subscriber())
        .await
        .unwrap();
    shutdown(otlp).await;
    let spans = collector.spans();
    let calls = named(&spans, SPAN_LLM_CALL);
    assert_eq!(calls.len(), 1);
    assert!(!calls[0].attributes.contains_key(EXECUTIONKIT_COST_USD));
    assert_eq!(calls[0].attr(GEN_AI_USAGE_OUTPUT_TOKENS), &json!(2));
}

#[tokio::test]
async fn a_retry_is_an_error_span_and_an_event_of_the_pattern() {
    let collector = Collector::start().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(chat::PATH))
        .respond_with(ResponseTemplate::new(500).set_body_string(format!("upstream said {KEY}")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(chat::PATH))
        .respond_with(chat::ok("4"))
        .mount(&server)
        .await;
    let otlp = exporter(&collector);
    let _ = Consensus::new()
        .samples(1)
        .run(&keyed(&server), "2+2?", &chat::fast())
        .with_subscriber(otlp.subscriber())
        .await
        .unwrap();
    shutdown(otlp).await;
    let spans = collector.spans();
    let calls = named(&spans, SPAN_LLM_CALL);
    assert_eq!(calls.len(), 2);
    let failed: Vec<_> = calls.iter().filter(|c| c.status == 2).collect();
    assert_eq!(failed.len(), 1, "one attempt failed: {calls:#?}");
    assert_eq!(failed[0].attr("attempt"), &json!(1));
    assert!(failed[0].attributes.contains_key(ERROR_TYPE));
    let pattern = named(&spans, "pattern.consensus")[0];
    let retry = pattern
        .events
        .iter()
        .find(|(n, _)| n == "retrying LLM call")
        .unwrap_or_else(|| panic!("no retry event: {:?}", pattern.events));
    assert_eq!(retry.1["attempt"], json!(1));
    assert!(retry.1.contains_key("delay_ms"));
    for req in collector.requests() {
        assert!(!String::from_utf8_lossy(&req.body).contains("SECRET"));
    }
}

#[tokio::test]
async fn budget_exhaustion_is_an_event_of_the_pattern() {
    let collector = Collector::start().await;
    let server = chat::server(chat::ok("4")).await;
    let otlp = exporter(&collector);
    let ctx = RunContext::new().budget(Budget::new().max_calls(1));
    let _ = Consensus::new()
        .samples(3)
        .run(&chat::provider(&server), "2+2?", &ctx)
        .with_subscriber(otlp.subscriber())
        .await;
    shutdown(otlp).await;
    let spans = collector.spans();
    let pattern = named(&spans, "pattern.consensus")[0];
    let ev = pattern
        .events
        .iter()
        .find(|(n, _)| n == "budget exhausted")
        .unwrap_or_else(|| panic!("no budget event: {:?}", pattern.events));
    assert_eq!(ev.1["exhausted"], "llm_calls");
}

#[tokio::test]
async fn workflow_steps_and_approvals_are_in_the_trace() {
    let collector = Collector::start().await;
    let otlp = exporter(&collector);
    let gate =
        ApprovalGate::new(|req: ApprovalRequest| async move { Ok(req.subject != "publish") });
    let wf = Workflow::new()
        .step(Step::new("draft", Consensus::new().samples(1)))
        .step(Step::new("publish", Consensus::new().samples(1)).after(["draft"]))
        .approval(gate);
    let p = MockProvider::new(["a draft"]);
    let e = wf
        .run(&p, "write", &RunContext::new())
        .with_subscriber(otlp.subscriber())
        .await
        .unwrap_err();
    assert!(e.is_approval_denied());
    shutdown(otlp).await;
    let spans = collector.spans();
    let workflow = named(&spans, "workflow");
    assert_eq!(workflow.len(), 1, "{spans:#?}");
    let workflow = workflow[0];
    assert_eq!(
        workflow.event_names(),
        [
            "approval requested",
            "approval granted",
            "approval requested",
            "approval denied"
        ]
    );
    assert_eq!(workflow.events[0].1["subject"], "draft");
    assert_eq!(workflow.events[3].1["subject"], "publish");
    // The approved step ran: its span is the workflow's child, its pattern and call below it.
    let step = named(&spans, "workflow.step");
    assert_eq!(step.len(), 1);
    assert_eq!(step[0].parent_span_id, workflow.span_id);
    assert_eq!(step[0].attr("step"), "draft");
    let pattern = named(&spans, "pattern.consensus")[0];
    assert_eq!(pattern.parent_span_id, step[0].span_id);
    assert_eq!(
        named(&spans, SPAN_LLM_CALL)[0].parent_span_id,
        pattern.span_id
    );
}

#[tokio::test]
async fn an_unreachable_collector_fails_the_shutdown_not_the_run() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let otlp = Otlp::builder(format!("http://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = Consensus::new()
        .samples(1)
        .run(&MockProvider::new(["4"]), "2+2?", &RunContext::new())
        .with_subscriber(otlp.subscriber())
        .await
        .unwrap();
    assert_eq!(r.value, "4");
    let e = tokio::task::spawn_blocking(move || otlp.shutdown())
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.message().contains("OTLP export failed"), "{e}");
}

#[test]
fn endpoints_get_the_traces_path_once_and_bad_ones_are_refused() {
    for (given, sent) in [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        (
            "http://127.0.0.1:4318/v1/traces",
            "http://127.0.0.1:4318/v1/traces",
        ),
        (
            "https://otel.example/otlp",
            "https://otel.example/otlp/v1/traces",
        ),
    ] {
        let otlp = Otlp::builder(given).build().unwrap();
        assert_eq!(otlp.endpoint(), sent);
        otlp.shutdown().unwrap();
    }
    for bad in ["", "localhost:4318", "ftp://h/x", "http://"] {
        let e = Otlp::builder(bad).build().unwrap_err();
        assert!(e.is_invalid_argument(), "{bad}: {e}");
    }
    let e = Otlp::builder("http://127.0.0.1:4318")
        .header("bad header", "v")
        .build()
        .unwrap_err();
    assert!(e.is_invalid_argument());
}

#[tokio::test]
async fn a_pipe_is_one_trace_its_steps_children_of_the_pipe_span() {
    let collector = Collector::start().await;
    let otlp = exporter(&collector);
    let pipe = executionkit::Pipe::new()
        .step(Consensus::new().samples(1))
        .step(executionkit::RefineLoop::new().max_iterations(1));
    let _ = pipe
        .run(
            &MockProvider::new(["draft", "0.9", "better", "1.0"]),
            "write",
            &RunContext::new(),
        )
        .with_subscriber(otlp.subscriber())
        .await;
    shutdown(otlp).await;
    let spans = collector.spans();
    let root = named(&spans, "pipe");
    assert_eq!(root.len(), 1, "{spans:#?}");
    assert!(root[0].parent_span_id.is_empty());
    assert_eq!(root[0].attr("steps"), &json!(2));
    let steps = named(&spans, "pipe.step");
    assert_eq!(steps.len(), 2);
    for s in &steps {
        assert_eq!(s.parent_span_id, root[0].span_id);
    }
    assert!(
        spans.iter().all(|s| s.trace_id == root[0].trace_id),
        "one trace"
    );
    assert_eq!(
        named(&spans, "pattern.refine")[0].parent_span_id,
        steps[1].span_id
    );
}
