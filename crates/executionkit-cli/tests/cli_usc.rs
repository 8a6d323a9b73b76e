//! `ek consensus --usc` and `usc=` in pipe steps (issue 12): when every answer differs, one
//! extra, counted call picks the most consistent answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bodies, code, ek, ek_at, json_out, stderr};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Sample `i` (seed `i`) answers `answer i`; the selection call (its prompt holds
/// `<responses>`) answers `{"response": 2}`.
struct Distinct;

impl Respond for Distinct {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let text = if body["messages"].to_string().contains("<responses>") {
            r#"{"response": 2}"#.to_owned()
        } else {
            format!("answer {}", body["seed"])
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2}
        }))
    }
}

async fn server() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Distinct)
        .mount(&s)
        .await;
    s
}

#[tokio::test]
async fn the_flag_and_the_step_key_pick_the_most_consistent_answer() {
    let args = ["consensus", "q", "--samples", "4", "--seed", "0", "--json"];
    let s = server().await;
    let o = ek_at(&s, &args).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "answer 0");
    assert!(v["metadata"].get("usc").is_none());
    assert_eq!(v["cost"]["llm_calls"], 4);

    let s = server().await;
    let o = ek_at(&s, &[&args[..], &["--usc"]].concat()).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "answer 2");
    assert_eq!(v["metadata"]["usc"], json!({"picked": 2, "failure": null}));
    assert_eq!(v["cost"]["llm_calls"], 5);
    let sent = bodies(&s).await;
    assert_eq!(sent.len(), 5);
    assert_eq!(
        sent.iter()
            .filter(|b| b.get("response_format").is_some())
            .count(),
        1
    );

    let s = server().await;
    let o = ek_at(
        &s,
        &[
            "pipe",
            "q",
            "--seed",
            "0",
            "--json",
            "--step",
            "consensus samples=4 usc=true",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json_out(&o)["value"], "answer 2");
}

#[tokio::test]
async fn bad_usc_usage_exits_2() {
    let o = ek(&["pipe", "q", "--json", "--step", "consensus usc=maybe"]).await;
    assert_eq!(code(&o), 2);
    assert!(
        json_out(&o)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad value `maybe` for usc")
    );
    // Not with many questions.
    let dir = std::env::temp_dir().join(format!("ek-usc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("q.jsonl");
    std::fs::write(&f, "{\"prompt\": \"q\"}\n").unwrap();
    let o = ek(&[
        "consensus",
        "--inputs",
        f.to_str().unwrap(),
        "--usc",
        "--json",
    ])
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(common::stdout(&o).contains("usc"));
}
