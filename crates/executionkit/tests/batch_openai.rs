//! The OpenAI Batch API client against a loopback fake (wiremock) that follows the documented
//! shapes: `POST /v1/files` (multipart), `POST /v1/batches`, `GET /v1/batches/{id}`,
//! `GET /v1/files/{id}/content` (JSONL `{custom_id, response: {status_code, body}, error}`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use executionkit::batch::{
    BatchClient, BatchEntry, BatchFiles, BatchJob, consensus_batch, map_batch, run_job,
};
use executionkit::{Budget, BudgetLedger, ChatRequest, Message, TokenUsage, VotingStrategy};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-batch-secret-4242";

/// A fresh directory for one test's files (removed by `Dir`'s drop).
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ek-batch-test-{}-{}",
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
    BatchClient::openai(format!("{}/v1", server.uri()), "gpt-test")
        .api_key(KEY)
        .poll_interval(Duration::from_millis(5))
        .max_poll_interval(Duration::from_millis(20))
        .default_max_tokens(64)
        .no_proxy()
        .build()
        .unwrap()
}

/// A succeeded result line.
fn ok(id: &str, text: &str, input: u64, output: u64) -> Value {
    json!({
        "id": format!("batch_req_{id}"),
        "custom_id": id,
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-test",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
            }
        },
        "error": null
    })
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn batch(status: &str, output: Option<&str>, error: Option<&str>) -> Value {
    json!({
        "id": "batch_1",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": status,
        "output_file_id": output,
        "error_file_id": error,
        "request_counts": {"total": 3, "completed": 0, "failed": 0}
    })
}

/// Mounts the fake: upload, create, `in_progress` polls before `final_status`, and the files.
async fn fake(
    server: &MockServer,
    in_progress_polls: u64,
    final_status: &str,
    output: Option<String>,
    errors: Option<String>,
) {
    Mock::given(method("POST"))
        .and(path("/v1/files"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"id": "file-in", "object": "file", "purpose": "batch", "bytes": 1}),
        ))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/batches"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch("validating", None, None)))
        .mount(server)
        .await;
    if in_progress_polls > 0 {
        Mock::given(method("GET"))
            .and(path("/v1/batches/batch_1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(batch(
                "in_progress",
                None,
                None,
            )))
            .up_to_n_times(in_progress_polls)
            .with_priority(1)
            .mount(server)
            .await;
    }
    let out_id = output.as_ref().map(|_| "file-out");
    let err_id = errors.as_ref().map(|_| "file-err");
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch(final_status, out_id, err_id)))
        .with_priority(5)
        .mount(server)
        .await;
    for (id, body) in [("file-out", output), ("file-err", errors)] {
        if let Some(body) = body {
            Mock::given(method("GET"))
                .and(path(format!("/v1/files/{id}/content")))
                .and(header("authorization", format!("Bearer {KEY}").as_str()))
                .respond_with(ResponseTemplate::new(200).set_body_string(body))
                .mount(server)
                .await;
        }
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

/// The JSONL lines of the uploaded file (the multipart part named `file`).
fn uploaded_lines(r: &Request) -> Vec<Value> {
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(body.contains("name=\"purpose\"\r\n\r\nbatch\r\n"), "{body}");
    let start = body
        .find("Content-Type: application/jsonl\r\n\r\n")
        .unwrap()
        + 35;
    let rest = &body[start..];
    let end = rest.rfind("\r\n--").unwrap();
    rest[..end]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn consensus_batch_votes_like_live_consensus_and_settles_the_ledger() {
    let server = MockServer::start().await;
    // Results in another order than submitted.
    let out = jsonl(&[
        ok("consensus-2", "London", 10, 5),
        ok("consensus-0", "Paris", 10, 5),
        ok("consensus-1", " Paris\n", 10, 5),
    ]);
    fake(&server, 2, "completed", Some(out), None).await;
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_calls(10)));
    let c = client(&server);
    let r = consensus_batch(
        &c,
        "Capital of France?",
        3,
        VotingStrategy::Majority,
        &dir.files(),
        &ledger,
    )
    .await
    .unwrap();
    assert_eq!(r.value, "Paris");
    assert!((r.score.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(r.metadata["unique_responses"], 2);
    assert_eq!(r.metadata["tie_count"], 1);
    assert_eq!(r.metadata["batch_id"], "batch_1");
    assert_eq!(r.cost, TokenUsage::new(30, 15, 3));
    assert_eq!(ledger.spent(), TokenUsage::new(30, 15, 3));
    assert_eq!(ledger.reserved_output_tokens(), 0);

    let uploads = requests(&server, "POST", "/v1/files").await;
    assert_eq!(uploads.len(), 1);
    let lines = uploaded_lines(&uploads[0]);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["custom_id"], "consensus-0");
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["url"], "/v1/chat/completions");
    assert_eq!(lines[0]["body"]["model"], "gpt-test");
    assert_eq!(lines[0]["body"]["max_tokens"], 64);
    assert_eq!(lines[0]["body"]["temperature"], 0.9);
    assert_eq!(
        lines[0]["body"]["messages"][0]["content"],
        "Capital of France?"
    );
    let created = requests(&server, "POST", "/v1/batches").await;
    assert_eq!(created.len(), 1);
    let body: Value = serde_json::from_slice(&created[0].body).unwrap();
    assert_eq!(
        body,
        json!({"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    );
    assert_eq!(
        requests(&server, "GET", "/v1/batches/batch_1").await.len(),
        3
    );
    // The results are on disk; the state file is gone once collected.
    let saved = std::fs::read_to_string(dir.0.join("results.jsonl")).unwrap();
    assert_eq!(saved.lines().count(), 3);
    assert!(!dir.0.join("state.json").exists());
}

#[tokio::test]
async fn map_batch_keeps_prompt_order_and_sends_no_temperature_unless_given() {
    let server = MockServer::start().await;
    let out = jsonl(&[
        ok("map-2", "third", 1, 1),
        ok("map-0", "first", 1, 1),
        ok("map-1", "second", 1, 1),
    ]);
    fake(&server, 0, "completed", Some(out), None).await;
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
    assert_eq!(r.value, vec!["first", "second", "third"]);
    assert_eq!(r.score, None);
    assert_eq!(r.metadata["num_requests"], 3);
    let lines = uploaded_lines(&requests(&server, "POST", "/v1/files").await[0]);
    assert_eq!(lines[1]["custom_id"], "map-1");
    assert!(
        lines[1]["body"].get("temperature").is_none(),
        "{}",
        lines[1]
    );
    let e = map_batch::<&str>(&client(&server), &[], None, &dir.files(), &ledger)
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument() && e.message().contains("non-empty"));
}

/// Statuses by custom id from an error's `entries` metadata.
fn statuses(e: &executionkit::Error) -> Vec<(String, String)> {
    e.metadata()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["custom_id"].as_str().unwrap().to_owned(),
                x["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_errored_entry_fails_the_batch_listing_every_entry_and_its_spend() {
    let server = MockServer::start().await;
    let errored = json!({
        "custom_id": "map-1",
        "response": {"status_code": 500, "body": {"error": {"message": "boom"}}},
        "error": null
    });
    let out = jsonl(&[ok("map-0", "a", 7, 3), errored, ok("map-2", "c", 7, 3)]);
    fake(&server, 0, "completed", Some(out), None).await;
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(1000)));
    let e = map_batch(
        &client(&server),
        &["a", "b", "c"],
        Some(0.0),
        &dir.files(),
        &ledger,
    )
    .await
    .unwrap_err();
    assert!(e.is_provider(), "{e}");
    assert!(e.message().contains("map-1 (errored)"), "{e}");
    assert_eq!(
        statuses(&e),
        [
            ("map-0", "succeeded"),
            ("map-1", "errored"),
            ("map-2", "succeeded")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(e.metadata()["entries"][0]["output_tokens"], 3);
    assert_eq!(e.metadata()["batch_id"], "batch_1");
    // Every entry counts as a call; the errored one returned its tokens.
    assert_eq!(e.cost(), TokenUsage::new(14, 6, 3));
    assert_eq!(ledger.spent(), TokenUsage::new(14, 6, 3));
    assert_eq!(ledger.reserved_output_tokens(), 0);
    // The state stays, so that a rerun could collect again.
    assert!(dir.0.join("state.json").exists());
}

#[tokio::test]
async fn expired_missing_duplicate_and_malformed_entries_are_each_named() {
    let server = MockServer::start().await;
    let out = jsonl(&[
        ok("consensus-0", "x", 1, 1),
        ok("consensus-0", "x", 1, 1), // duplicate
        json!({"custom_id": "consensus-3", "response": {"status_code": 200, "body": {"choices": []}}}),
    ]);
    let errors = jsonl(&[json!({
        "custom_id": "consensus-1",
        "response": null,
        "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
    })]);
    fake(&server, 1, "expired", Some(out), Some(errors)).await;
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::unlimited());
    let e = consensus_batch(
        &client(&server),
        "q",
        4,
        VotingStrategy::Majority,
        &dir.files(),
        &ledger,
    )
    .await
    .unwrap_err();
    assert_eq!(
        statuses(&e),
        [
            ("consensus-0", "duplicate"),
            ("consensus-1", "expired"),
            ("consensus-2", "missing"),
            ("consensus-3", "malformed"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    for part in [
        "consensus-0 (duplicate)",
        "consensus-1 (expired)",
        "consensus-2 (missing)",
        "4 of 4 entries",
    ] {
        assert!(e.message().contains(part), "{part}: {e}");
    }
    assert_eq!(e.metadata()["batch_status"], "expired");
    // The duplicate's tokens count twice: spend is what the provider reported.
    assert_eq!(e.cost(), TokenUsage::new(2, 2, 4));
    assert_eq!(ledger.spent(), TokenUsage::new(2, 2, 4));
}

#[tokio::test]
async fn a_failed_batch_fails_every_entry() {
    let server = MockServer::start().await;
    fake(&server, 0, "failed", None, None).await;
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::unlimited());
    let e = map_batch(&client(&server), &["a", "b"], None, &dir.files(), &ledger)
        .await
        .unwrap_err();
    assert_eq!(
        statuses(&e),
        [("map-0", "failed"), ("map-1", "failed")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(ledger.spent(), TokenUsage::new(0, 0, 2));
}

#[tokio::test]
async fn a_rate_limited_or_broken_poll_is_retried_and_a_permanent_one_is_not() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_1"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_1"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    fake(
        &server,
        0,
        "completed",
        Some(jsonl(&[ok("map-0", "a", 1, 1)])),
        None,
    )
    .await;
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::unlimited());
    let r = map_batch(&client(&server), &["a"], None, &dir.files(), &ledger)
        .await
        .unwrap();
    assert_eq!(r.value, vec!["a"]);
    assert_eq!(
        requests(&server, "GET", "/v1/batches/batch_1").await.len(),
        3
    );

    // A 404 on a poll stops at once (one poll), keeping the state for later.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_1"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": {"message": "no such batch"}})),
        )
        .with_priority(1)
        .mount(&server)
        .await;
    fake(&server, 0, "completed", None, None).await;
    let dir = Dir::new();
    let e = map_batch(&client(&server), &["a"], None, &dir.files(), &ledger)
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert_eq!(e.metadata()["batch_id"], "batch_1");
    assert_eq!(e.cost(), TokenUsage::new(0, 0, 1));
    assert_eq!(
        requests(&server, "GET", "/v1/batches/batch_1").await.len(),
        1
    );
    assert!(dir.0.join("state.json").exists());
}

#[tokio::test]
async fn too_many_failed_polls_in_a_row_give_up_with_the_last_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_1"))
        .respond_with(ResponseTemplate::new(500))
        .with_priority(1)
        .mount(&server)
        .await;
    fake(&server, 0, "completed", None, None).await;
    let dir = Dir::new();
    let c = BatchClient::openai(format!("{}/v1", server.uri()), "gpt-test")
        .api_key(KEY)
        .poll_interval(Duration::from_millis(1))
        .max_poll_interval(Duration::from_millis(2))
        .max_poll_failures(2)
        .no_proxy()
        .build()
        .unwrap();
    let e = map_batch(
        &c,
        &["a"],
        None,
        &dir.files(),
        &Arc::new(BudgetLedger::unlimited()),
    )
    .await
    .unwrap_err();
    assert!(e.is_provider() && e.message().contains("HTTP 500"), "{e}");
    assert_eq!(
        requests(&server, "GET", "/v1/batches/batch_1").await.len(),
        3
    );
}

#[tokio::test]
async fn a_batch_that_never_ends_times_out_naming_its_last_status() {
    let server = MockServer::start().await;
    fake(&server, 0, "in_progress", None, None).await;
    let dir = Dir::new();
    let c = BatchClient::openai(format!("{}/v1", server.uri()), "gpt-test")
        .poll_interval(Duration::from_millis(2))
        .wait_timeout(Duration::from_millis(30))
        .api_key(KEY)
        .no_proxy()
        .build()
        .unwrap();
    let e = map_batch(
        &c,
        &["a"],
        None,
        &dir.files(),
        &Arc::new(BudgetLedger::unlimited()),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    // The call it reserved counts: every error carries the spend.
    assert_eq!(e.cost(), TokenUsage::new(0, 0, 1));
    assert!(
        e.message().contains("did not end within") && e.message().contains("in_progress"),
        "{e}"
    );
}

#[tokio::test]
async fn a_killed_run_resumes_its_batch_without_submitting_again() {
    let server = MockServer::start().await;
    let out = jsonl(&[ok("map-0", "first", 4, 2), ok("map-1", "second", 4, 2)]);
    // Many in-progress polls: the first run is killed while polling.
    fake(&server, 1_000, "completed", Some(out), None).await;
    let dir = Dir::new();
    let files = dir.files();
    let state = files.state.clone().unwrap();
    let c = Arc::new(client(&server));
    let first_ledger = Arc::new(BudgetLedger::unlimited());
    let task = {
        let (c, files, ledger) = (Arc::clone(&c), files.clone(), Arc::clone(&first_ledger));
        tokio::spawn(async move { map_batch(&c, &["p0", "p1"], None, &files, &ledger).await })
    };
    // Kill it once the state is saved and it has polled.
    loop {
        let polled = !requests(&server, "GET", "/v1/batches/batch_1")
            .await
            .is_empty();
        if state.exists() && polled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["batch_id"], "batch_1");
    assert_eq!(saved["provider"], "openai");
    assert!(!std::fs::read_to_string(&state).unwrap().contains(KEY));
    // The killed process's reservations went with it.
    assert_eq!(first_ledger.reserved_output_tokens(), 0);

    // The in-progress polls run out; a new process resumes from the state file.
    server.reset().await;
    let out = jsonl(&[ok("map-1", "second", 4, 2), ok("map-0", "first", 4, 2)]);
    fake(&server, 1, "completed", Some(out), None).await;
    let ledger = Arc::new(BudgetLedger::unlimited());
    let r = map_batch(&client(&server), &["p0", "p1"], None, &files, &ledger)
        .await
        .unwrap();
    assert_eq!(r.value, vec!["first", "second"]);
    assert!(requests(&server, "POST", "/v1/batches").await.is_empty());
    assert!(requests(&server, "POST", "/v1/files").await.is_empty());
    // The resumed run charges what the batch reported: one call per entry.
    assert_eq!(ledger.spent(), TokenUsage::new(8, 4, 2));
    assert!(!state.exists());

    // A state file for another job is refused rather than resumed.
    fake(&server, 0, "completed", None, None).await;
    let other = Dir::new();
    let s = other.files().state.unwrap();
    std::fs::write(&s, std::fs::read(dir.0.join("results.jsonl")).unwrap()).unwrap();
    let e = map_batch(&client(&server), &["p0"], None, &other.files(), &ledger)
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument(), "{e}");
}

#[tokio::test]
async fn submitting_reserves_every_entry_and_refuses_what_the_budget_cannot_cover() {
    let server = MockServer::start().await;
    fake(&server, 0, "completed", None, None).await;
    let c = client(&server);
    let job = BatchJob::new(
        (0..3)
            .map(|i| BatchEntry::new(format!("e{i}"), ChatRequest::new(vec![Message::user("q")])))
            .collect(),
    )
    .unwrap();
    // Three entries, two calls left: nothing is sent.
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_calls(2)));
    let e = c.submit(&job, &ledger, None).await.unwrap_err();
    assert!(
        e.is_budget_exhausted() && e.metadata()["exhausted"] == "llm_calls",
        "{e}"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
    assert_eq!(ledger.spent(), TokenUsage::default());

    // 90 output tokens for three entries: each is granted (and sent) 30, all held at once.
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(90)));
    let run = c.submit(&job, &ledger, None).await.unwrap();
    assert!(run.has_reservations());
    assert_eq!(ledger.reserved_output_tokens(), 90);
    assert_eq!(ledger.spent().llm_calls, 3);
    let lines = uploaded_lines(&requests(&server, "POST", "/v1/files").await[0]);
    assert!(
        lines.iter().all(|l| l["body"]["max_tokens"] == 30),
        "{lines:?}"
    );
    assert!(run.state().entries.iter().all(|e| e.max_tokens == 30));
    drop(run);
    assert_eq!(ledger.reserved_output_tokens(), 0);
}

#[tokio::test]
async fn a_line_longer_than_the_cap_fails_the_download() {
    let server = MockServer::start().await;
    let long = "x".repeat(4000);
    fake(
        &server,
        0,
        "completed",
        Some(jsonl(&[ok("map-0", &long, 1, 1)])),
        None,
    )
    .await;
    let dir = Dir::new();
    let c = BatchClient::openai(format!("{}/v1", server.uri()), "gpt-test")
        .api_key(KEY)
        .poll_interval(Duration::from_millis(2))
        .max_line_bytes(1000)
        .no_proxy()
        .build()
        .unwrap();
    let job = BatchJob::new(vec![BatchEntry::new(
        "map-0",
        ChatRequest::new(vec![Message::user("q")]),
    )])
    .unwrap();
    let e = run_job(&c, &job, &dir.files(), &Arc::new(BudgetLedger::unlimited()))
        .await
        .unwrap_err();
    assert!(
        e.is_provider() && e.message().contains("longer than 1000 bytes"),
        "{e}"
    );
}

#[tokio::test]
async fn the_key_never_appears_in_errors() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/files"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"message": format!("Incorrect API key provided: {KEY}")}}),
        ))
        .mount(&server)
        .await;
    let dir = Dir::new();
    let ledger = Arc::new(BudgetLedger::unlimited());
    let e = map_batch(&client(&server), &["a"], None, &dir.files(), &ledger)
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(
        !e.to_string().contains(KEY) && !format!("{e:?}").contains(KEY),
        "{e:?}"
    );
    assert!(!format!("{:?}", client(&server)).contains(KEY));
    // The upload failed: the reserved tokens came back, the call counts.
    assert_eq!(ledger.reserved_output_tokens(), 0);
    assert_eq!(ledger.spent().llm_calls, 1);
    assert!(!dir.0.join("state.json").exists());
}
