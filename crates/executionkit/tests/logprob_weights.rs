//! Confidence-weighted consensus from token log-probabilities: against a scripted server
//! (the weights change the winner, absent log-probabilities mean plain counting, the request
//! asks for them only when weights are on, the adaptive rule stops at an exact point) and
//! llama-server's real replies (tests/logprob_memory.rs measures what a huge list costs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use executionkit::WithCallOptions as _;
use executionkit::{
    ChatRequest, Consensus, LlmProvider, Message, OpenAiProvider, RunContext, StopRule,
};
use futures::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Answers sample `seed - 100` with `script[i]`: a text and the log-probabilities of its
/// tokens (`None`: no `logprobs` in the reply).
struct Script(Vec<(&'static str, Option<Vec<f64>>)>);

impl Respond for Script {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let i = usize::try_from(body["seed"].as_u64().unwrap() - 100).unwrap();
        let (text, logprobs) = &self.0[i % self.0.len()];
        let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"});
        if let Some(lps) = logprobs {
            let content: Vec<Value> = lps
                .iter()
                .map(|lp| json!({"token": "t", "logprob": lp, "bytes": [116], "top_logprobs": [{"token": "u", "logprob": -9.0}]}))
                .collect();
            choice["logprobs"] = json!({"content": content, "refusal": null});
        } else {
            choice["logprobs"] = Value::Null;
        }
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}
        }))
    }
}

async fn scripted(script: Vec<(&'static str, Option<Vec<f64>>)>) -> (MockServer, OpenAiProvider) {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(common::chat::PATH))
        .respond_with(Script(script))
        .mount(&s)
        .await;
    let p = common::chat::provider(&s);
    (s, p)
}

/// Whether every request `s` received asked for log-probabilities (`Some(true)`), none did
/// (`Some(false)`), or some did.
async fn asked_for_logprobs(s: &MockServer) -> Option<bool> {
    let flags: Vec<bool> = s
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body.get("logprobs") == Some(&json!(true))
        })
        .collect();
    if flags.iter().all(|&f| f) {
        Some(true)
    } else if flags.iter().all(|&f| !f) {
        Some(false)
    } else {
        None
    }
}

/// Three unsure "Lyon"s and two confident "Paris"es (two tokens each).
fn lyon_or_paris() -> Vec<(&'static str, Option<Vec<f64>>)> {
    let unsure = Some(vec![-3.0, -3.0]);
    let sure = Some(vec![-0.05, -0.15]);
    vec![
        ("Lyon", unsure.clone()),
        ("Paris", sure.clone()),
        ("Lyon", unsure.clone()),
        ("Paris", sure),
        ("Lyon", unsure),
    ]
}

fn consensus(weights: bool) -> Consensus {
    Consensus::new()
        .samples(5)
        .max_concurrency(5)
        .seed(100)
        .logprob_weights(weights)
}

#[tokio::test]
async fn weights_change_the_winner_and_are_asked_for_only_when_on() {
    let (s, p) = scripted(lyon_or_paris()).await;
    let plain = consensus(false)
        .run(&p, "Capital of France?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(plain.value, "Lyon");
    assert_eq!(plain.score, Some(0.6));
    assert!(plain.metadata.get("logprob_weighted").is_none());
    assert!(plain.metadata.get("vote_counts").is_none());
    assert_eq!(asked_for_logprobs(&s).await, Some(false));

    let (s, p) = scripted(lyon_or_paris()).await;
    let weighted = consensus(true)
        .run(&p, "Capital of France?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(asked_for_logprobs(&s).await, Some(true));
    assert_eq!(weighted.value, "Paris");
    assert_eq!(weighted.metadata["logprob_weighted"], true);
    let (sure, unsure) = ((-0.1f64).exp(), (-3.0f64).exp());
    let counts = weighted.metadata["vote_counts"].as_array().unwrap();
    assert_eq!(counts[0]["answer"], "Paris");
    assert_eq!(counts[0]["count"], 2);
    assert!((counts[0]["weight"].as_f64().unwrap() - 2.0 * sure).abs() < 1e-12);
    assert_eq!(counts[1]["answer"], "Lyon");
    assert!((counts[1]["weight"].as_f64().unwrap() - 3.0 * unsure).abs() < 1e-12);
    // agreement_ratio (and score) = the winner's weight over the samples.
    let ratio = weighted.metadata["agreement_ratio"].as_f64().unwrap();
    assert!((ratio - 2.0 * sure / 5.0).abs() < 1e-12);
    assert_eq!(weighted.score, Some(ratio));
    assert_eq!(weighted.metadata["samples_used"], 5);
    assert_eq!(weighted.metadata["stopped_early"], false);
    assert_eq!(weighted.metadata["stop_rule"], "fixed");
    assert_eq!(weighted.cost.llm_calls, 5);
}

#[tokio::test]
async fn one_sample_without_logprobs_means_plain_counting() {
    let mut script = lyon_or_paris();
    script[1].1 = None; // one "Paris" without log-probabilities
    let (s, p) = scripted(script).await;
    let r = consensus(true)
        .run(&p, "Capital of France?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(asked_for_logprobs(&s).await, Some(true));
    assert_eq!(r.value, "Lyon");
    assert_eq!(r.metadata["logprob_weighted"], false);
    assert_eq!(r.score, Some(0.6));
    assert_eq!(
        r.metadata["vote_counts"],
        json!([
            {"answer": "Lyon", "count": 3, "weight": 3.0},
            {"answer": "Paris", "count": 2, "weight": 2.0}
        ])
    );
    // A reply whose list is malformed counts as one without them, too.
    let mut script = lyon_or_paris();
    script[3].1 = Some(vec![-0.1, 0.5]);
    let (_s, p) = scripted(script).await;
    let r = consensus(true)
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(
        (r.value.as_str(), &r.metadata["logprob_weighted"]),
        ("Lyon", &json!(false))
    );
}

/// a b a a a a a a …: confident a's (weight 0.9) and an unsure b (0.1).
fn a_then_b(b_weight: f64) -> Vec<(&'static str, Option<Vec<f64>>)> {
    let mut s = vec![("a", Some(vec![0.9f64.ln()])); 20];
    s[1] = ("b", Some(vec![b_weight.ln()]));
    s
}

#[tokio::test]
async fn the_adaptive_rule_stops_where_the_weighted_posterior_passes() {
    let run = async |script, weights: bool| {
        let (s, p) = scripted(script).await;
        let r = Consensus::new()
            .samples(20)
            .max_concurrency(1)
            .seed(100)
            .early_stop(StopRule::adaptive(0.95))
            .logprob_weights(weights)
            .run(&p, "q", &RunContext::new())
            .await
            .unwrap();
        (r, common::chat::received(&s).await)
    };
    // Counted plainly, a b a a a a a settles at the 7th answer (6 to 1: P = 0.965).
    let (r, calls) = run(a_then_b(0.1), false).await;
    assert_eq!((calls, &r.metadata["samples_used"]), (7, &json!(7)));
    // Weighted: after a b a a the weights rescaled to 4 votes are a = 3.857, b = 0.143
    // (P = 0.957); after a b a they were a = 2.842, b = 0.158 (P = 0.913).
    let (r, calls) = run(a_then_b(0.1), true).await;
    assert_eq!((calls, &r.metadata["samples_used"]), (4, &json!(4)));
    assert_eq!(r.metadata["stopped_early"], true);
    assert_eq!(r.metadata["logprob_weighted"], true);
    assert_eq!(r.value, "a");
    // A confident dissenter (b at 0.9, as sure as the a's) is plain counting again: 7.
    let (_, calls) = run(a_then_b(0.9), true).await;
    assert_eq!(calls, 7);
    // An unsure leader (0.3) behind a confident dissenter (0.9) needs more than counting
    // would: after 10 answers a = 7.5, b = 2.5 (P = 0.936), after 11 a = 8.46, b = 2.54
    // (P = 0.9585).
    let mut script = vec![("a", Some(vec![0.3f64.ln()])); 20];
    script[1] = ("b", Some(vec![0.9f64.ln()]));
    let (r, calls) = run(script, true).await;
    assert_eq!(
        (calls, r.metadata["stopped_early"].as_bool()),
        (11, Some(true))
    );
}

const MODEL: &str = "smollm2";

/// One test at a time against the shared server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn llama_provider(url: &str, key: &str) -> OpenAiProvider {
    OpenAiProvider::builder(url, MODEL)
        .api_key(key)
        .build()
        .unwrap()
}

#[tokio::test]
async fn llama_server_returns_logprobs_and_the_weights_are_probabilities() {
    let Some((url, key)) = common::llama() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let p = llama_provider(&url, &key);
    let ask = || {
        ChatRequest::new(vec![Message::user(
            "What is the capital of France? One word.",
        )])
        .max_tokens(4)
        .temperature(0.8)
        .seed(1)
    };
    // Not asked: none.
    let r = p.complete(&ask()).await.unwrap();
    assert_eq!(r.choices[0].logprobs, None);
    // Asked: one per generated token, each a log-probability.
    let r = p.complete(&ask().logprobs(true)).await.unwrap();
    let s = r.choices[0].logprobs.expect("llama-server sends logprobs");
    assert_eq!(s.tokens, r.usage.output_tokens, "{s:?} {:?}", r.usage);
    let w = s.weight().unwrap();
    assert!(w > 0.0 && w <= 1.0, "{w}");
    // In a stream too, chunk by chunk.
    let mut last = None;
    let mut stream = p.stream(ask().logprobs(true));
    while let Some(e) = stream.next().await {
        if let executionkit::StreamEvent::Finished(r) = e.unwrap() {
            last = Some(r);
        }
    }
    let r = last.expect("a finished stream");
    let s = r.choices[0].logprobs.expect("streamed logprobs");
    assert_eq!(s.tokens, r.usage.output_tokens);
    assert!(s.weight().is_some_and(|w| w > 0.0 && w <= 1.0));

    // A weighted consensus: every vote weighs in (0, 1].
    let r = Consensus::new()
        .samples(3)
        .max_concurrency(1)
        .seed(7)
        .max_tokens(4)
        .logprob_weights(true)
        .run(
            &p,
            "What is the capital of France? One word.",
            &RunContext::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.metadata["logprob_weighted"], true);
    let counts = r.metadata["vote_counts"].as_array().unwrap();
    let mut total = 0.0;
    for c in counts {
        let (w, n) = (c["weight"].as_f64().unwrap(), c["count"].as_f64().unwrap());
        assert!(w > 0.0 && w <= n, "{c}");
        total += n;
    }
    assert_eq!(total, 3.0);
    let ratio = r.metadata["agreement_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio <= 1.0);
}

fn scripted_mock(script: &[(&str, f64)]) -> executionkit::MockProvider {
    executionkit::MockProvider::new(
        script
            .iter()
            .map(|(t, lp)| {
                executionkit::LlmResponse::text(*t).with_logprobs(executionkit::LogprobSummary {
                    sum: *lp,
                    tokens: 1,
                })
            })
            .collect::<Vec<_>>(),
    )
}

#[test]
fn one_request_with_n_weighs_each_choice() {
    let p = scripted_mock(&[("Lyon", -3.0), ("Paris", -0.1), ("Lyon", -3.0)]).with_n_support();
    let r = futures::executor::block_on(
        Consensus::new()
            .samples(3)
            .use_n(true)
            .logprob_weights(true)
            .run(&p, "q", &RunContext::new()),
    )
    .unwrap();
    assert_eq!(p.call_count(), 1);
    assert!(p.last_call().unwrap().request.logprobs);
    assert_eq!(
        (r.value.as_str(), &r.metadata["logprob_weighted"]),
        ("Paris", &json!(true))
    );
}

#[test]
fn a_unanimous_vote_keeps_its_rule_and_scores_the_confidence() {
    let p = scripted_mock(&[("Paris", -0.5)]);
    let r = futures::executor::block_on(
        Consensus::new()
            .samples(4)
            .strategy(executionkit::VotingStrategy::Unanimous)
            .logprob_weights(true)
            .run(&p, "q", &RunContext::new()),
    )
    .unwrap();
    assert_eq!(r.metadata["tie_count"], 0);
    assert!((r.score.unwrap() - (-0.5f64).exp()).abs() < 1e-12);
    let p = scripted_mock(&[("Paris", -0.1), ("Lyon", -3.0)]);
    let e = futures::executor::block_on(
        Consensus::new()
            .samples(2)
            .strategy(executionkit::VotingStrategy::Unanimous)
            .logprob_weights(true)
            .run(&p, "q", &RunContext::new()),
    )
    .unwrap_err();
    assert!(e.is_consensus_failed());
}
