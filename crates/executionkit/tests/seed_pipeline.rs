//! The user's seed pipeline through the library: consensus (5 samples, temperature 0.9) then
//! refine_loop (target 0.9, max_iterations 3) under max_budget(20 000 in, 10 000 out, 20 calls),
//! against scripted MockProvider replies; plus its variations (gated refinement, per-step
//! providers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::WithCallOptions as _;
use std::sync::Arc;

use executionkit::{
    Budget, Consensus, LlmResponse, Message, MockProvider, Pipe, RefineLoop, RetryPolicy, Role,
    RunContext, TokenUsage,
};
use serde_json::Value;

const PROMPT: &str = "Write a one-paragraph executive summary of the Turing test \
                      for an audience of non-technical board members.";

fn r(text: &str, i: u64, o: u64) -> LlmResponse {
    LlmResponse::text(text).with_usage(i, o)
}

/// 5 samples (A wins 4/5), then judge/refine rounds that never reach 0.9:
/// scores 0.5, 0.6, 0.6, 0.7.
fn script() -> Vec<LlmResponse> {
    vec![
        r("Summary A", 40, 100),
        r("Summary A", 40, 101),
        r("Summary B", 40, 90),
        r("Summary  A\n", 40, 99),
        r("Summary A", 40, 100),
        r("5", 150, 1),
        r("Refined 1", 200, 120),
        r("6", 160, 1),
        r("Refined 2", 200, 130),
        r("6", 170, 1),
        r("Refined 3", 200, 125),
        r("7", 170, 1),
    ]
}

fn script_usage() -> TokenUsage {
    script()
        .iter()
        .map(|r| TokenUsage::new(r.usage.input_tokens, r.usage.output_tokens, 1))
        .sum()
}

fn seed_pipe(calls: u64) -> Pipe {
    Pipe::new()
        .step(Consensus::new().samples(5).temperature(0.9))
        .step(RefineLoop::new().target_score(0.9).max_iterations(3))
        .max_budget(
            Budget::new()
                .max_input_tokens(20_000)
                .max_output_tokens(10_000)
                .max_calls(calls),
        )
}

fn ctx() -> RunContext {
    RunContext::new().retry(RetryPolicy::none())
}

fn cost(v: &Value) -> TokenUsage {
    TokenUsage::new(
        v["input_tokens"].as_u64().unwrap(),
        v["output_tokens"].as_u64().unwrap(),
        v["llm_calls"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn seed_pipeline_runs_end_to_end() {
    let p = MockProvider::new(script());
    let res = seed_pipe(20).run(&p, PROMPT, &ctx()).await.unwrap();

    assert_eq!(res.value, "Refined 3");
    assert_eq!(res.score, Some(0.7));
    // 5 samples + 1 score of the draft + 3 × (refine + score) = 12 (OVERRIDES: not 13).
    assert_eq!(p.call_count(), 12);
    assert_eq!(res.cost, script_usage());
    assert_eq!(res.metadata["step_count"], 2);
    assert_eq!(res.metadata["step_metadata"][0]["agreement_ratio"], 0.8);
    assert_eq!(res.metadata["step_metadata"][0]["unique_responses"], 2);
    assert_eq!(res.metadata["step_metadata"][1]["iterations"], 3);
    assert_eq!(res.metadata["termination_reason"], "max_iterations");
    assert_eq!(res.metadata["converged"], false);
    let history: Vec<f64> = res.metadata["score_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(history, [0.5, 0.6, 0.6, 0.7]);

    let steps: Vec<TokenUsage> = res.metadata["step_costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(cost)
        .collect();
    assert_eq!(steps[0].llm_calls, 5);
    assert_eq!(steps[1].llm_calls, 7);
    assert_eq!(steps[0] + steps[1], res.cost);

    // Step 2 scores the consensus winner first (no generation), then improves it against the
    // pipe's original prompt.
    let calls = p.calls();
    let judge = &calls[5].request.messages;
    assert_eq!(judge[0].role, Role::System);
    assert!(judge[1].content.contains("Summary A"));
    let refine = &calls[6].request.messages;
    assert_eq!(refine[0], Message::user(PROMPT));
    assert_eq!(refine[1], Message::assistant("Summary A"));
    assert!(refine[2].content.contains("0.50 out of 1.0"));
    for c in &calls[..5] {
        assert_eq!(c.request.temperature, Some(0.9));
        assert_eq!(c.request.messages, vec![Message::user(PROMPT)]);
    }
}

#[tokio::test]
async fn seed_pipeline_call_budget_5_fails_in_step_2() {
    let p = MockProvider::new(script());
    let e = seed_pipe(5).run(&p, PROMPT, &ctx()).await.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.metadata()["exhausted"], "llm_calls");
    assert_eq!(p.call_count(), 5);
    let consensus_cost: TokenUsage = script()[..5]
        .iter()
        .map(|r| TokenUsage::new(r.usage.input_tokens, r.usage.output_tokens, 1))
        .sum();
    assert_eq!(e.cost(), consensus_cost);
    let steps: Vec<TokenUsage> = e.metadata()["step_costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(cost)
        .collect();
    assert_eq!(steps, [consensus_cost, TokenUsage::default()]);
    assert_eq!(e.to_json()["kind"], "budget_exhausted");
}

#[tokio::test]
async fn seed_pipeline_call_budget_7_ends_with_best_draft() {
    let p = MockProvider::new(script());
    let res = seed_pipe(7).run(&p, PROMPT, &ctx()).await.unwrap();
    // 5 samples, the draft's score, one refinement; its score would be call 8.
    assert_eq!(p.call_count(), 7);
    assert_eq!(res.cost.llm_calls, 7);
    assert_eq!(res.value, "Summary A");
    assert_eq!(res.score, Some(0.5));
    assert_eq!(res.metadata["termination_reason"], "budget_exhausted");
    assert_eq!(res.metadata["iterations"], 0);
    assert_eq!(res.metadata["step_count"], 2);
    let sum: TokenUsage = script()[..7]
        .iter()
        .map(|r| TokenUsage::new(r.usage.input_tokens, r.usage.output_tokens, 1))
        .sum();
    assert_eq!(res.cost, sum);
}

#[tokio::test]
async fn seed_variation_gated_refinement() {
    let gated = || {
        Pipe::new()
            .step(Consensus::new().samples(5))
            .step_if(
                |prev| prev.score.is_none_or(|s| s < 0.95),
                RefineLoop::new().target_score(0.9).max_iterations(3),
            )
            .max_budget(
                Budget::new()
                    .max_input_tokens(20_000)
                    .max_output_tokens(10_000)
                    .max_calls(20),
            )
    };

    // Unanimous consensus (agreement 1.0): refinement is skipped.
    let p = MockProvider::new([r("Same", 10, 5)]);
    let res = gated().run(&p, PROMPT, &ctx()).await.unwrap();
    assert_eq!(res.value, "Same");
    assert_eq!(res.score, Some(1.0));
    assert_eq!(p.call_count(), 5);
    assert_eq!(res.metadata["step_count"], 2);
    assert_eq!(
        res.metadata["step_metadata"][1],
        serde_json::json!({"skipped": true})
    );
    assert_eq!(cost(&res.metadata["step_costs"][1]), TokenUsage::default());
    assert_eq!(res.metadata["agreement_ratio"], 1.0);
    assert_eq!(res.cost, TokenUsage::new(50, 25, 5));

    // Split consensus (0.8): refinement runs.
    let p = MockProvider::new(script());
    let res = gated().run(&p, PROMPT, &ctx()).await.unwrap();
    assert_eq!(p.call_count(), 12);
    assert_eq!(res.value, "Refined 3");
}

#[tokio::test]
async fn seed_variation_per_step_provider() {
    let cheap = Arc::new(MockProvider::new([r("Draft", 10, 10)]).with_model("cheap"));
    let strong = MockProvider::new([r("9", 20, 1)]).with_model("strong");
    let res = Pipe::new()
        .step_with_provider(cheap.clone(), Consensus::new().samples(3))
        .step(RefineLoop::new().target_score(0.9).model("strong-judge"))
        .run(&strong, PROMPT, &ctx())
        .await
        .unwrap();
    assert_eq!(res.value, "Draft");
    assert_eq!(res.metadata["termination_reason"], "target_reached");
    assert_eq!(cheap.call_count(), 3);
    assert_eq!(strong.call_count(), 1);
    assert_eq!(
        strong.calls()[0].request.model.as_deref(),
        Some("strong-judge")
    );
    assert_eq!(res.cost, TokenUsage::new(50, 31, 4));
}

#[tokio::test]
async fn seed_variation_three_step_pipe() {
    // classify → answer with voting → polish, under 30 calls.
    let p = MockProvider::new([
        r("billing", 5, 1),
        r("billing", 5, 1),
        r("billing", 5, 1),
        r("Refund policy", 8, 20),
        r("Refund policy", 8, 20),
        r("Refund policy", 8, 20),
        r("Refund policy", 8, 20),
        r("Refund policy", 8, 20),
        r("9", 30, 1),
    ]);
    let res = Pipe::new()
        .step(Consensus::new().samples(3).temperature(0.0))
        .step(Consensus::new().samples(5))
        .step(RefineLoop::new().target_score(0.9))
        .max_budget(Budget::new().max_calls(30))
        .run(&p, "I was charged twice", &ctx())
        .await
        .unwrap();
    assert_eq!(res.value, "Refund policy");
    assert_eq!(res.metadata["step_count"], 3);
    assert_eq!(p.call_count(), 9);
    // Step 2 votes on step 1's value.
    assert_eq!(
        p.calls()[3].request.messages,
        vec![Message::user("billing")]
    );
}
