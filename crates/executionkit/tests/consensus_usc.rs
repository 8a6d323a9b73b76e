//! Universal self-consistency (`Consensus::usc`): when every answer differs, one extra call
//! picks the most consistent one; it is counted in the budget, refused JSON schemas fall back to
//! plain text (remembered by the provider), and a failed or unparsable selection keeps the
//! vote's winner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::internals::usc::usc_response_format;
use executionkit::{
    Budget, Consensus, ConsensusSet, MockProvider, OpenAiProvider, RunContext, StopRule,
    WithCallOptions as _,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

async fn run(
    p: &MockProvider,
    c: Consensus,
    ctx: &RunContext,
) -> executionkit::PatternResult<String, executionkit::ConsensusStats> {
    c.run(p, "What is 2 + 2?", ctx).await.unwrap()
}

#[tokio::test]
async fn all_different_answers_are_settled_by_one_counted_call() {
    let p = MockProvider::new(["It is four.", "4", "Four, I think.", r#"{"response": 2}"#]);
    let r = run(
        &p,
        Consensus::new().samples(3).max_concurrency(1).usc(true),
        &RunContext::new(),
    )
    .await;
    assert_eq!(r.value, "Four, I think.");
    assert_eq!(r.cost.llm_calls, 4);
    assert_eq!(r.metadata["usc"], json!({"picked": 2, "failure": null}));
    // The vote's own statistics are unchanged: three answers, one vote each.
    assert_eq!(r.metadata["unique_responses"], 3);
    assert_eq!(r.score, Some(1.0 / 3.0));
    let calls = p.calls();
    let select = &calls[3].request;
    assert_eq!(select.response_format, Some(usc_response_format(3)));
    assert_eq!(select.temperature, Some(0.0));
    let body = &select.messages[1].content;
    assert!(body.contains("What is 2 + 2?"));
    for (i, a) in ["It is four.", "4", "Four, I think."].iter().enumerate() {
        assert!(
            body.contains(&format!("<response index=\"{i}\">\n{a}\n</response>")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn agreeing_answers_or_usc_off_make_no_extra_call() {
    let p = MockProvider::new(["4", "four", "4"]);
    let r = run(
        &p,
        Consensus::new().samples(3).usc(true),
        &RunContext::new(),
    )
    .await;
    assert_eq!((r.value.as_str(), r.cost.llm_calls), ("4", 3));
    assert!(r.metadata.get("usc").is_none());
    let p = MockProvider::new(["a", "b", "c"]);
    let r = run(
        &p,
        Consensus::new().samples(3).max_concurrency(1),
        &RunContext::new(),
    )
    .await;
    assert_eq!((r.value.as_str(), r.cost.llm_calls), ("a", 3));
    assert!(r.stats.usc.is_none());
    // One sample has nothing to compare.
    let p = MockProvider::new(["a"]);
    let r = run(
        &p,
        Consensus::new().samples(1).usc(true),
        &RunContext::new(),
    )
    .await;
    assert_eq!(r.cost.llm_calls, 1);
}

#[tokio::test]
async fn an_unparsable_or_refused_selection_keeps_the_winner() {
    let p = MockProvider::new(["a", "b", "c", "I cannot decide."]);
    let r = run(
        &p,
        Consensus::new().samples(3).max_concurrency(1).usc(true),
        &RunContext::new(),
    )
    .await;
    assert_eq!(r.value, "a");
    assert_eq!(
        r.metadata["usc"],
        json!({"picked": null, "failure": "unparsable"})
    );
    assert_eq!(r.cost.llm_calls, 4);

    // The budget has room for the samples only: the selection is refused before it is sent,
    // and the run still succeeds with the vote's winner.
    let p = MockProvider::new(["a", "b", "c", r#"{"response": 1}"#]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(3));
    let r = run(
        &p,
        Consensus::new().samples(3).max_concurrency(1).usc(true),
        &ctx,
    )
    .await;
    assert_eq!(r.value, "a");
    assert_eq!(r.metadata["usc"]["failure"], "budget_exhausted");
    assert_eq!(r.cost.llm_calls, 3);
    assert_eq!(p.calls().len(), 3);
}

#[tokio::test]
async fn with_a_stop_rule_the_selection_follows_the_cap() {
    // Every answer differs, so the adaptive rule never fires: 4 samples, then the selection.
    let p = MockProvider::new(["w", "x", "y", "z", "Response 3"]);
    let c = Consensus::new()
        .samples(4)
        .max_concurrency(1)
        .early_stop(StopRule::adaptive(0.95))
        .usc(true);
    let r = run(&p, c, &RunContext::new()).await;
    assert_eq!(r.value, "z");
    assert_eq!(r.metadata["usc"]["picked"], 3);
    assert_eq!(r.metadata["samples_used"], 4);
    assert_eq!(r.cost.llm_calls, 5);
}

#[tokio::test]
async fn a_consensus_set_refuses_usc() {
    let p = MockProvider::new(["a"]);
    let set = ConsensusSet::new().consensus(Consensus::new().usc(true));
    let e = set.run(&p, &["q"], &RunContext::new()).await.unwrap_err();
    assert!(e.is_invalid_argument() && e.message().contains("usc"));
    assert!(p.calls().is_empty());
}

/// Answers sample *i* (seed *i*) with `answer i`; refuses any `response_format` with a 400; the
/// selection call (its prompt holds `<responses>`) gets `Response 1`.
struct NoSchema;

impl Respond for NoSchema {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        if body.get("response_format").is_some() {
            return ResponseTemplate::new(400).set_body_json(json!({
                "error": {"message": "response_format is not supported", "type": "invalid_request_error"}
            }));
        }
        let text = if body["messages"].to_string().contains("<responses>") {
            "Response 1".to_owned()
        } else {
            format!("answer {}", body["seed"])
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}
        }))
    }
}

#[tokio::test]
async fn a_refused_schema_is_asked_in_plain_text_and_remembered() {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(NoSchema)
        .mount(&s)
        .await;
    let p = OpenAiProvider::new(format!("{}/v1", s.uri()), "m").unwrap();
    let c = Consensus::new().samples(3).seed(0).usc(true);
    let r = c.run(&p, "q", &RunContext::new()).await.unwrap();
    assert_eq!(r.value, "answer 1");
    assert_eq!(r.metadata["usc"]["picked"], 1);
    // Three samples, the refused selection and its plain-text repeat.
    assert_eq!(r.cost.llm_calls, 5);
    assert_eq!(s.received_requests().await.unwrap().len(), 5);
    // The next run on this provider asks in plain text at once.
    let r = c.run(&p, "q", &RunContext::new()).await.unwrap();
    assert_eq!(r.cost.llm_calls, 4);
    assert_eq!(r.value, "answer 1");
}
