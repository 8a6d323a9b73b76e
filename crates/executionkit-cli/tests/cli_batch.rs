//! `ek batch submit|status|results` against a loopback fake of the OpenAI Batch API
//! (wiremock): submit writes the state file, status polls once, results waits, streams the
//! results to --out and prints the vote; the batch is created once across the three runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-cli-batch-secret-31337";

fn ok(id: &str, text: &str) -> Value {
    json!({
        "custom_id": id,
        "response": {"status_code": 200, "body": {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}
        }},
        "error": null
    })
}

fn batch(status: &str, output: Option<&str>) -> Value {
    json!({"id": "batch_1", "object": "batch", "status": status, "output_file_id": output, "error_file_id": null})
}

async fn fake(server: &MockServer, results: &[Value]) {
    let auth = format!("Bearer {KEY}");
    Mock::given(method("POST"))
        .and(path("/v1/files"))
        .and(header("authorization", auth.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "file-in"})))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/batches"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch("validating", None)))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch("in_progress", None)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(batch("completed", Some("file-out"))),
        )
        .with_priority(5)
        .mount(server)
        .await;
    let body: String = results.iter().map(|l| format!("{l}\n")).collect();
    Mock::given(method("GET"))
        .and(path("/v1/files/file-out/content"))
        .and(header("authorization", auth.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_string(body))
        .mount(server)
        .await;
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ek-cli-batch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn submit_status_results_run_one_consensus_batch() {
    let server = MockServer::start().await;
    fake(
        &server,
        &[
            ok("consensus-1", "Paris"),
            ok("consensus-0", "Paris"),
            ok("consensus-2", "Rome"),
        ],
    )
    .await;
    let d = dir("consensus");
    let state = d.join("state.json");
    let out = d.join("results.jsonl");
    let base = format!("{}/v1", server.uri());
    let endpoint = [
        "--base-url",
        base.as_str(),
        "--model",
        "gpt-test",
        "--api-key",
        KEY,
    ];
    let st = state.to_str().unwrap();

    let mut args = vec![
        "batch",
        "submit",
        "--samples",
        "3",
        "--state",
        st,
        "Capital of France?",
    ];
    args.extend(endpoint);
    let o = common::ek(&args).await;
    assert_eq!(common::code(&o), 0, "{o:?}");
    assert!(
        stdout(&o).contains("batch batch_1 submitted (3 entries"),
        "{o:?}"
    );
    assert!(state.exists());
    // Submitting again onto the same state file is refused (it names a batch).
    let o = common::ek(&args).await;
    assert_eq!(common::code(&o), 2, "{o:?}");

    let mut args = vec!["batch", "status", "--state", st];
    args.extend(endpoint);
    let o = common::ek(&args).await;
    assert_eq!(common::code(&o), 0, "{o:?}");
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["ended"].as_bool()),
        (Some("in_progress"), Some(false))
    );

    let mut args = vec![
        "batch",
        "results",
        "--state",
        st,
        "--out",
        out.to_str().unwrap(),
        "--poll-interval",
        "0.01",
        "--json",
    ];
    args.extend(endpoint);
    let o = common::ek(&args).await;
    assert_eq!(common::code(&o), 0, "{o:?}");
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["value"], "Paris");
    assert_eq!(v["metadata"]["batch_id"], "batch_1");
    assert_eq!(v["cost"]["llm_calls"], 3);
    assert!(!stdout(&o).contains(KEY) && !String::from_utf8_lossy(&o.stderr).contains(KEY));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    assert!(!state.exists());
    let posts = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == "/v1/batches")
        .count();
    assert_eq!(posts, 1);
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn one_request_per_prompt_prints_the_texts_in_order() {
    let server = MockServer::start().await;
    fake(&server, &[ok("map-1", "two"), ok("map-0", "one")]).await;
    let d = dir("map");
    let st = d.join("s.json");
    let out = d.join("o.jsonl");
    let base = format!("{}/v1", server.uri());
    let endpoint = [
        "--base-url",
        base.as_str(),
        "--model",
        "gpt-test",
        "--api-key",
        KEY,
    ];
    let mut args = vec![
        "batch",
        "submit",
        "--state",
        st.to_str().unwrap(),
        "a?",
        "b?",
    ];
    args.extend(endpoint);
    assert_eq!(common::code(&common::ek(&args).await), 0);
    let mut args = vec![
        "batch",
        "results",
        "--state",
        st.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--poll-interval",
        "0.01",
    ];
    args.extend(endpoint);
    let o = common::ek(&args).await;
    assert_eq!(common::code(&o), 0, "{o:?}");
    assert_eq!(stdout(&o), "one\ntwo\n");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn without_an_endpoint_it_is_a_usage_error() {
    let o = common::ek(&["batch", "status", "--state", "/nonexistent/s.json"]).await;
    assert_eq!(common::code(&o), 2, "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs an endpoint"),
        "{o:?}"
    );
}
