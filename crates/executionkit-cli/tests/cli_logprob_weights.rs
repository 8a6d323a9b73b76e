//! `ek consensus --logprob-weights` and `logprob_weights=` in pipe steps (issue 12).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bodies, code, ek_at, json_out, stderr};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Sample `seed - 1`: "Lyon" (unsure) three times in five, "Paris" (sure) twice.
struct LyonOrParis;

impl Respond for LyonOrParis {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let i = body["seed"].as_u64().unwrap() - 1;
        let (text, logprob) = if i % 2 == 1 {
            ("Paris", -0.1)
        } else {
            ("Lyon", -3.0)
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"content": text}, "finish_reason": "stop",
                         "logprobs": {"content": [{"token": text, "logprob": logprob, "top_logprobs": []}]}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1}
        }))
    }
}

async fn server() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(LyonOrParis)
        .mount(&s)
        .await;
    s
}

const CONSENSUS: &[&str] = &["consensus", "q", "--samples", "5", "--seed", "1", "--json"];

#[tokio::test]
async fn the_flag_asks_for_logprobs_and_weighs_the_votes() {
    let s = server().await;
    let o = ek_at(&s, CONSENSUS).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "Lyon");
    assert!(v["metadata"].get("logprob_weighted").is_none());
    assert!(bodies(&s).await.iter().all(|b| b.get("logprobs").is_none()));

    let s = server().await;
    let o = ek_at(&s, &[CONSENSUS, &["--logprob-weights"]].concat()).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "Paris");
    assert_eq!(v["metadata"]["logprob_weighted"], true);
    assert_eq!(v["metadata"]["vote_counts"][0]["answer"], "Paris");
    let w = v["metadata"]["vote_counts"][0]["weight"].as_f64().unwrap();
    assert!((w - 2.0 * (-0.1f64).exp()).abs() < 1e-12);
    assert_eq!(v["score"], v["metadata"]["agreement_ratio"]);
    let sent = bodies(&s).await;
    assert_eq!(sent.len(), 5);
    assert!(sent.iter().all(|b| b["logprobs"] == true));
}

#[tokio::test]
async fn a_pipe_step_takes_logprob_weights() {
    let s = server().await;
    let o = ek_at(
        &s,
        &[
            "pipe",
            "q",
            "--seed",
            "1",
            "--step",
            "consensus samples=5 logprob_weights=true early_stop=window:4",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "Paris");
    assert_eq!(v["metadata"]["step_metadata"][0]["logprob_weighted"], true);
    assert!(bodies(&s).await.iter().all(|b| b["logprobs"] == true));

    let o = ek_at(
        &s,
        &["pipe", "q", "--step", "consensus logprob_weights=yes"],
    )
    .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("true or false"), "{}", stderr(&o));
    let o = ek_at(
        &s,
        &["pipe", "q", "--step", "consensus logprob_weight=true"],
    )
    .await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("logprob_weights"), "{}", stderr(&o));
}
