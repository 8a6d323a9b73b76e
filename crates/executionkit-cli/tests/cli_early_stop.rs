//! `ek consensus --early-stop` and `early_stop=` in pipe steps (issue 12).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bodies, code, ek, ek_at, json_out, stderr};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn same_answer() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "choices": [{"message": {"content": "Paris"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1}
        })))
        .mount(&s)
        .await;
    s
}

#[tokio::test]
async fn a_window_rule_stops_sampling_and_reports_it() {
    let s = same_answer().await;
    let o = ek_at(
        &s,
        &[
            "consensus",
            "q",
            "--samples",
            "40",
            "--max-concurrency",
            "1",
            "--early-stop",
            "window:3",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["cost"]["llm_calls"], 3);
    assert_eq!(v["metadata"]["samples_used"], 3);
    assert_eq!(v["metadata"]["stopped_early"], true);
    assert_eq!(v["metadata"]["stop_rule"], "window:3");
    assert_eq!(v["metadata"]["vote_counts"][0]["answer"], "Paris");
    assert_eq!(
        bodies(&s).await.len(),
        3,
        "requests received = calls reported"
    );
}

#[tokio::test]
async fn adaptive_in_a_pipe_step() {
    let s = same_answer().await;
    let o = ek_at(
        &s,
        &[
            "pipe",
            "q",
            "--step",
            "consensus samples=40 max_concurrency=1 early_stop=adaptive",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["cost"]["llm_calls"], 4);
    assert_eq!(
        v["metadata"]["step_metadata"][0]["stop_rule"],
        "adaptive:0.95"
    );
}

#[tokio::test]
async fn without_a_rule_the_output_is_unchanged() {
    let o = ek(&["consensus", "q", "--samples", "3", "--json"]).await;
    let v = json_out(&o);
    let keys: Vec<&String> = v["metadata"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["agreement_ratio", "tie_count", "unique_responses"]);
}

#[tokio::test]
async fn a_bad_rule_exits_2_before_any_call() {
    let s = same_answer().await;
    for rule in ["window:1", "adaptive:1.5", "sometimes", "window:x"] {
        let o = ek_at(&s, &["consensus", "q", "--early-stop", rule]).await;
        assert_eq!(code(&o), 2, "{rule}: {}", stderr(&o));
        assert!(stderr(&o).contains("early"), "{}", stderr(&o));
    }
    let o = ek_at(
        &s,
        &[
            "consensus",
            "q",
            "--early-stop",
            "window",
            "--strategy",
            "unanimous",
        ],
    )
    .await;
    assert_eq!(code(&o), 2);
    assert!(bodies(&s).await.is_empty());
}
