//! Consensus stop rules: exact stop points on scripted answers, cancellation and spend when a
//! rule fires, and the metadata they add.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::WithCallOptions as _;
use std::time::Duration;

use executionkit::StopRule;
use executionkit::{Budget, Consensus, MockProvider, OpenAiProvider, RunContext, VotingStrategy};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

fn run(
    rule: StopRule,
    answers: &[&str],
    cap: usize,
) -> (
    executionkit::PatternResult<String, executionkit::ConsensusStats>,
    usize,
) {
    let p = MockProvider::new(answers.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let r = futures::executor::block_on(
        Consensus::new()
            .samples(cap)
            .max_concurrency(1)
            .seed(100)
            .early_stop(rule)
            .run(&p, "q", &RunContext::new()),
    )
    .unwrap();
    (r, p.call_count())
}

#[test]
fn window_stops_at_the_first_agreeing_run() {
    let (r, calls) = run(StopRule::window(3), &["a", "b", "a", "a", "a", "b"], 40);
    assert_eq!(calls, 5);
    assert_eq!(r.cost.llm_calls, 5);
    assert_eq!(r.value, "a");
    assert_eq!(r.metadata["samples_used"], 5);
    assert_eq!(r.metadata["stopped_early"], true);
    assert_eq!(r.metadata["stop_rule"], "window:3");
    assert_eq!(r.metadata["agreement_ratio"], 0.8);
    assert_eq!(
        r.metadata["vote_counts"],
        serde_json::json!([
            {"answer": "a", "count": 4, "weight": 4.0},
            {"answer": "b", "count": 1, "weight": 1.0}
        ])
    );
}

#[test]
fn adaptive_stops_when_the_posterior_passes() {
    // a b a a a a a: P(leader) reaches 0.965 at the 7th answer (6 to 1).
    let (r, calls) = run(
        StopRule::adaptive(0.95),
        &["a", "b", "a", "a", "a", "a", "a", "a"],
        40,
    );
    assert_eq!(calls, 7);
    assert_eq!(r.metadata["samples_used"], 7);
    // Unanimous answers settle after 4.
    let (_, calls) = run(StopRule::adaptive(0.95), &["x"], 40);
    assert_eq!(calls, 4);
}

#[test]
fn a_split_vote_runs_to_the_cap_and_says_it_did_not_stop_early() {
    let (r, calls) = run(StopRule::window(3), &["a", "b"], 10);
    assert_eq!(calls, 10);
    assert_eq!(r.metadata["stopped_early"], false);
    assert_eq!(r.metadata["samples_used"], 10);
    assert_eq!(r.metadata["tie_count"], 2);
    assert_eq!(r.value, "a");
}

#[test]
fn each_sample_keeps_its_seed() {
    let p = MockProvider::new(["same"]);
    let _ = futures::executor::block_on(
        Consensus::new()
            .samples(40)
            .max_concurrency(1)
            .seed(7)
            .use_n(true)
            .early_stop(StopRule::window(2))
            .run(&p, "q", &RunContext::new()),
    )
    .unwrap();
    let seeds: Vec<_> = p
        .calls()
        .iter()
        .map(|c| (c.request.seed, c.request.n))
        .collect();
    assert_eq!(seeds, vec![(Some(7), None), (Some(8), None)]);
}

#[test]
fn the_fixed_rule_keeps_todays_metadata() {
    let p = MockProvider::new(["a", "a", "b"]);
    let r =
        futures::executor::block_on(Consensus::new().samples(3).run(&p, "q", &RunContext::new()))
            .unwrap();
    let mut keys: Vec<_> = r.metadata.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["agreement_ratio", "tie_count", "unique_responses"]);
}

#[test]
fn bad_rules_are_refused_before_any_call() {
    let p = MockProvider::new(["a"]);
    for c in [
        Consensus::new().early_stop(StopRule::window(1)),
        Consensus::new().early_stop(StopRule::adaptive(0.4)),
        Consensus::new()
            .early_stop(StopRule::window(3))
            .strategy(VotingStrategy::Unanimous),
    ] {
        let e = futures::executor::block_on(c.run(&p, "q", &RunContext::new())).unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");
        assert_eq!(e.metadata()["argument"], "early_stop");
    }
    assert_eq!(p.call_count(), 0);
}

/// Answers "A" after a delay that grows with the sample's seed, so that when the rule fires
/// later samples are still in flight.
struct Slow;

impl Respond for Slow {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let seed = body["seed"].as_u64().unwrap();
        ResponseTemplate::new(200)
            // The slow ones would hold the run for a minute if they were awaited.
            .set_delay(Duration::from_millis(if seed < 3 { 10 } else { 60_000 }))
            .set_body_json(serde_json::json!({
                "choices": [{"message": {"content": "A"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}
            }))
    }
}

#[tokio::test]
async fn when_the_rule_fires_calls_in_flight_are_cancelled_and_counted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Slow)
        .mount(&server)
        .await;
    let p = OpenAiProvider::new(format!("{}/v1", server.uri()), "m").unwrap();
    let ctx = RunContext::new().budget(Budget::new().max_calls(100));
    let r = Consensus::new()
        .samples(40)
        .max_concurrency(6)
        .seed(0)
        .early_stop(StopRule::window(3))
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    // Samples 0-2 answer at once and settle the vote; 3-5 were in flight and are cancelled,
    // and so are the (up to two) samples started as 0 and 1 freed their slots.
    assert_eq!(r.metadata["samples_used"], 3);
    let calls = r.cost.llm_calls;
    assert!(
        (6..=8).contains(&calls),
        "the cancelled calls are counted: {calls}"
    );
    assert_eq!(
        r.cost.input_tokens, 9,
        "only the answered calls report tokens"
    );
    let received = server.received_requests().await.unwrap().len();
    assert!(
        received as u64 <= calls,
        "{received} requests received for {calls} calls"
    );
    assert_eq!(ctx.ledger().spent().llm_calls, calls);
}
