//! Anthropic Message Batches against a loopback fake (wiremock) that follows the documented
//! shapes: `POST /v1/messages/batches {requests: [{custom_id, params}]}`,
//! `GET /v1/messages/batches/{id}` (`processing_status`, `results_url`), and the results
//! JSONL `{custom_id, result: {type, message | error}}`. Reference section 22, scenarios
//! 181–184, with the spend on every error and the key kept to the provider's own origin.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_pass_by_value
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use executionkit::batch::{BatchClient, BatchFiles, consensus_batch, map_batch};
use executionkit::{BudgetLedger, TokenUsage, VotingStrategy};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-ant-batch-secret-77";

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ek-anthropic-batch-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn files(&self) -> BatchFiles {
        BatchFiles::new(self.0.join("results.jsonl")).state(self.0.join("state.json"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client(server: &MockServer) -> BatchClient {
    BatchClient::anthropic(server.uri(), "claude-x")
        .api_key(KEY)
        .poll_interval(Duration::from_millis(2))
        .max_poll_interval(Duration::from_millis(10))
        .no_proxy()
        .build()
        .unwrap()
}

fn succeeded(id: &str, blocks: Value, input: u64, output: u64) -> Value {
    json!({
        "custom_id": id,
        "result": {
            "type": "succeeded",
            "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": blocks, "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output}
            }
        }
    })
}

fn text(id: &str, t: &str) -> Value {
    succeeded(id, json!([{"type": "text", "text": t}]), 10, 5)
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn batch(status: &str, results_url: Option<String>) -> Value {
    json!({
        "id": "msgbatch_1",
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
        "results_url": results_url,
    })
}

/// Mounts the fake; `results_url` defaults to the fake's own results path.
async fn fake(
    server: &MockServer,
    in_progress_polls: u64,
    results: Option<String>,
    results_url: Option<String>,
) {
    Mock::given(method("POST"))
        .and(path("/v1/messages/batches"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch("in_progress", None)))
        .mount(server)
        .await;
    if in_progress_polls > 0 {
        Mock::given(method("GET"))
            .and(path("/v1/messages/batches/msgbatch_1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(batch("in_progress", None)))
            .up_to_n_times(in_progress_polls)
            .with_priority(1)
            .mount(server)
            .await;
    }
    let url = results_url.or_else(|| {
        results
            .as_ref()
            .map(|_| format!("{}/v1/messages/batches/msgbatch_1/results", server.uri()))
    });
    Mock::given(method("GET"))
        .and(path("/v1/messages/batches/msgbatch_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch("ended", url)))
        .with_priority(5)
        .mount(server)
        .await;
    if let Some(body) = results {
        Mock::given(method("GET"))
            .and(path("/v1/messages/batches/msgbatch_1/results"))
            .and(header("x-api-key", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_string(body))
            .mount(server)
            .await;
    }
}

async fn requests(server: &MockServer, m: &str, p: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == m && r.url.path() == p)
        .collect()
}

async fn consensus(
    server: &MockServer,
    n: usize,
    strategy: VotingStrategy,
) -> executionkit::Result<executionkit::PatternResult<String>> {
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::unlimited());
    consensus_batch(
        &client(server),
        "Capital of France?",
        n,
        strategy,
        &dir.files(),
        &ledger,
    )
    .await
}

#[tokio::test]
async fn consensus_batch_scenario_181_and_its_three_polls() {
    let server = MockServer::start().await;
    let results = jsonl(&[
        text("consensus-0", "Paris"),
        text("consensus-1", "Paris"),
        text("consensus-2", "London"),
    ]);
    fake(&server, 2, Some(results), None).await;
    let r = consensus(&server, 3, VotingStrategy::Majority)
        .await
        .unwrap();
    assert_eq!(r.value, "Paris");
    assert!((r.score.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(r.metadata["batch_id"], "msgbatch_1");
    assert_eq!(r.metadata["unique_responses"], 2);
    assert_eq!(r.cost, TokenUsage::new(30, 15, 3));
    let created = requests(&server, "POST", "/v1/messages/batches").await;
    assert_eq!(created.len(), 1);
    let body: Value = serde_json::from_slice(&created[0].body).unwrap();
    let first = &body["requests"][0];
    assert_eq!(first["custom_id"], "consensus-0");
    assert_eq!(first["params"]["model"], "claude-x");
    assert_eq!(
        first["params"]["messages"][0]["content"],
        "Capital of France?"
    );
    assert!(first["params"].get("stream").is_none());
    // in_progress, in_progress, ended.
    assert_eq!(
        requests(&server, "GET", "/v1/messages/batches/msgbatch_1")
            .await
            .len(),
        3
    );
}

#[tokio::test]
async fn unanimous_disagreement_and_an_errored_entry_fail_with_the_spend() {
    let server = MockServer::start().await;
    fake(
        &server,
        0,
        Some(jsonl(&[
            text("consensus-0", "Paris"),
            text("consensus-1", "London"),
        ])),
        None,
    )
    .await;
    let e = consensus(&server, 2, VotingStrategy::Unanimous)
        .await
        .unwrap_err();
    assert!(e.is_consensus_failed(), "{e}");
    assert_eq!(e.cost(), TokenUsage::new(20, 10, 2));
    assert_eq!(e.metadata()["batch_id"], "msgbatch_1");

    let server = MockServer::start().await;
    let errored = json!({"custom_id": "consensus-1", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}});
    fake(
        &server,
        0,
        Some(jsonl(&[text("consensus-0", "Paris"), errored])),
        None,
    )
    .await;
    let e = consensus(&server, 2, VotingStrategy::Majority)
        .await
        .unwrap_err();
    assert!(
        e.is_provider() && e.message().contains("consensus-1 (errored)"),
        "{e}"
    );
    assert_eq!(
        e.metadata()["entries"][1]["detail"],
        "invalid_request_error"
    );
    assert_eq!(e.cost(), TokenUsage::new(10, 5, 2));

    let e = consensus(&server, 0, VotingStrategy::Majority)
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument());
}

#[tokio::test]
async fn missing_duplicate_canceled_and_messageless_entries_are_named() {
    let server = MockServer::start().await;
    let results = jsonl(&[
        text("consensus-0", "a"),
        text("consensus-0", "a"),
        json!({"custom_id": "consensus-2", "result": {"type": "succeeded"}}),
        json!({"custom_id": "consensus-3", "result": {"type": "canceled"}}),
        json!({"custom_id": "consensus-4", "result": {"type": "expired"}}),
    ]);
    fake(&server, 0, Some(results), None).await;
    let e = consensus(&server, 5, VotingStrategy::Majority)
        .await
        .unwrap_err();
    for part in [
        "consensus-0 (duplicate)",
        "consensus-1 (missing)",
        "consensus-2 (malformed)",
        "consensus-3 (cancelled)",
        "consensus-4 (expired)",
    ] {
        assert!(e.message().contains(part), "{part}: {e}");
    }
    assert_eq!(e.metadata()["entries"][2]["detail"], "malformed_message");
    assert_eq!(e.cost(), TokenUsage::new(20, 10, 5));
}

#[tokio::test]
async fn map_batch_scenario_184_and_text_blocks_joined() {
    let server = MockServer::start().await;
    let results = jsonl(&[
        text("map-2", "third"),
        succeeded(
            "map-0",
            json!([{"type": "text", "text": "Hello, "}, {"type": "tool_use", "id": "t1", "name": "f", "input": {}}, {"type": "text", "text": "world"}]),
            1,
            1,
        ),
        text("map-1", "second"),
    ]);
    fake(&server, 0, Some(results), None).await;
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::unlimited());
    let r = map_batch(
        &client(&server),
        &["p0", "p1", "p2"],
        None,
        &dir.files(),
        &ledger,
    )
    .await
    .unwrap();
    assert_eq!(r.value, vec!["Hello, world", "second", "third"]);
    assert_eq!(r.score, None);
    assert_eq!(r.metadata["num_requests"], 3);
    let body: Value =
        serde_json::from_slice(&requests(&server, "POST", "/v1/messages/batches").await[0].body)
            .unwrap();
    assert!(
        body["requests"][0]["params"].get("temperature").is_none(),
        "{body}"
    );
    assert_eq!(ledger.spent(), TokenUsage::new(21, 11, 3));
}

#[tokio::test]
async fn ended_without_results_url_or_with_a_bad_scheme_fails() {
    let server = MockServer::start().await;
    fake(&server, 0, None, None).await;
    let e = consensus(&server, 1, VotingStrategy::Majority)
        .await
        .unwrap_err();
    assert!(
        e.is_provider() && e.message().contains("without a results_url"),
        "{e}"
    );

    let server = MockServer::start().await;
    fake(&server, 0, None, Some("file:///etc/passwd".into())).await;
    let e = consensus(&server, 1, VotingStrategy::Majority)
        .await
        .unwrap_err();
    assert!(e.message().contains("scheme"), "{e}");
}

#[tokio::test]
async fn the_key_is_not_sent_to_a_results_url_on_another_host() {
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(jsonl(&[text("consensus-0", "x")])),
        )
        .mount(&elsewhere)
        .await;
    fake(
        &server,
        0,
        None,
        Some(format!("{}/results", elsewhere.uri())),
    )
    .await;
    let e = consensus(&server, 1, VotingStrategy::Majority)
        .await
        .unwrap_err();
    assert!(
        e.is_permanent() && e.message().contains("refusing to send the API key"),
        "{e}"
    );
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
    assert!(!e.to_string().contains(KEY));
}

#[tokio::test]
async fn an_unreadable_results_line_is_named_by_number() {
    let server = MockServer::start().await;
    fake(
        &server,
        0,
        Some(format!("{}not json\n", jsonl(&[text("consensus-0", "x")]))),
        None,
    )
    .await;
    let e = consensus(&server, 1, VotingStrategy::Majority)
        .await
        .unwrap_err();
    assert!(e.is_provider() && e.message().contains("line 2"), "{e}");
}
