//! Typed steps (issue #10 item 3): a `Structured<T>` step in a `Pipe` hands its `T` on, a
//! `then_prompt` function maps it into the next step's prompt (checked by the compiler), and a
//! typed pipe keeps everything a text pipe has: one budget, nested budgets, conditional steps,
//! per-step providers, step metadata and costs, errors carrying the spend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use executionkit::prelude::*;
use executionkit::{Error, ErrorKind, LlmResponse, PatternResult, RetryPolicy, TypedStep};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, serde::Deserialize, schemars::JsonSchema)]
struct Plan {
    steps: Vec<String>,
}

const PLAN: &str = r#"{"steps": ["boil water", "add tea"]}"#;

fn reply(text: &str) -> LlmResponse {
    LlmResponse::text(text).with_usage(10, 5)
}

fn plan_prompt(plan: &Plan, task: &str) -> String {
    format!("{task}: {}", plan.steps.join(" -> "))
}

fn prompt_of(p: &MockProvider, call: usize) -> String {
    p.calls()[call]
        .request
        .messages
        .last()
        .unwrap()
        .content
        .clone()
}

#[tokio::test]
async fn the_typed_value_reaches_the_next_steps_prompt() {
    let p = MockProvider::new([reply(PLAN), reply("done"), reply("done")]);
    let r = Pipe::new()
        .step_typed(structured::<Plan>())
        .then_prompt(plan_prompt)
        .step(Consensus::new().samples(2).max_concurrency(1))
        .run(&p, "Make tea", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "done");
    assert_eq!(prompt_of(&p, 1), "Make tea: boil water -> add tea");
    assert_eq!(prompt_of(&p, 2), "Make tea: boil water -> add tea");
    // One entry per step: the prompt mapping is not a step.
    assert_eq!(r.stats.step_count, 2);
    assert_eq!(r.stats.step_metadata[0]["validated"], true);
    assert_eq!(r.stats.step_costs[0].cost.llm_calls, 1);
    assert_eq!(r.stats.step_costs[1].cost.llm_calls, 2);
    assert_eq!(r.cost, TokenUsage::new(30, 15, 3));
}

#[tokio::test]
async fn a_pipe_ending_in_a_typed_step_returns_its_value() {
    let p = MockProvider::new(["Make tea", PLAN]);
    let pipe: Pipe<Plan> = Pipe::new()
        .step(Consensus::new().samples(1))
        .step_typed(structured::<Plan>());
    let r: PatternResult<Plan, executionkit::PipeStats> =
        pipe.run(&p, "q", &RunContext::new()).await.unwrap();
    assert_eq!(r.value.steps, ["boil water", "add tea"]);
    assert_eq!(r.metadata["parse_attempts"], 1); // the last step's keys, as for text
    // The structured step was asked about the previous step's text.
    assert!(prompt_of(&p, 1).ends_with("Make tea"));
}

#[tokio::test]
async fn a_text_step_after_a_typed_step_receives_its_json() {
    let p = MockProvider::new([PLAN, "ok"]);
    let r = Pipe::new()
        .step_typed(structured::<Plan>())
        .step(Consensus::new().samples(1))
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "ok");
    let sent: Value = serde_json::from_str(&prompt_of(&p, 1)).unwrap();
    assert_eq!(sent["steps"][1], "add tea");
}

#[tokio::test]
async fn then_prompt_maps_text_values_and_can_end_a_pipe() {
    let p = MockProvider::new(["Paris"]);
    let r = Pipe::new()
        // Before any step the value is the prompt itself.
        .then_prompt(|prompt: &String, _task: &str| format!("{prompt}? (one word)"))
        .step(Consensus::new().samples(1))
        .then_prompt(|city: &String, _task: &str| format!("The answer is {city}."))
        .run(&p, "Capital of France", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(prompt_of(&p, 0), "Capital of France? (one word)");
    assert_eq!(r.value, "The answer is Paris.");
    assert_eq!(r.stats.step_count, 1);
    // The last step's score and keys are kept.
    assert_eq!(r.score, Some(1.0));
    assert_eq!(r.metadata["unique_responses"], 1);
}

#[tokio::test]
async fn a_skipped_step_after_a_typed_step_passes_its_text_on() {
    let p = MockProvider::new([PLAN, "summary"]);
    let r = Pipe::new()
        .step_typed(structured::<Plan>())
        .step_if(|_| false, RefineLoop::new())
        .then_prompt(|text: &String, _task: &str| format!("Summarise {text}"))
        .step(Consensus::new().samples(1))
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "summary");
    assert!(prompt_of(&p, 1).starts_with("Summarise {"));
    assert_eq!(r.stats.step_metadata[1]["skipped"], true);
}

#[tokio::test]
async fn typed_steps_share_the_one_budget() {
    // The structured step's call and the consensus samples draw on one ledger of 2 calls.
    let p = MockProvider::new([reply(PLAN), reply("a"), reply("a")]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(2));
    let pipe = Pipe::new()
        .step_typed(structured::<Plan>())
        .then_prompt(plan_prompt)
        .step(Consensus::new().samples(2).max_concurrency(1));
    let err = pipe.run(&p, "Make tea", &ctx).await.unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(err.cost().llm_calls, 2);
    assert_eq!(ctx.ledger().spent().llm_calls, 2);
    assert_eq!(err.metadata()["failed_step"], 1);
    assert_eq!(err.metadata()["step_costs"][0]["llm_calls"], 1);

    // The pipe's own max_budget nests under the context's: the tighter one wins.
    let ctx = RunContext::new().budget(Budget::new().max_calls(30));
    let err = pipe
        .clone()
        .max_budget(Budget::new().max_calls(2))
        .run(&p, "Make tea", &ctx)
        .await
        .unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(err.metadata()["budget_level"], 0);
    assert_eq!(ctx.ledger().spent().llm_calls, 2);
}

#[tokio::test]
async fn a_typed_pipe_nests_as_a_typed_step() {
    let p = MockProvider::new([PLAN, "done"]);
    let inner: Pipe<Plan> = Pipe::new()
        .step_typed(structured::<Plan>())
        .max_budget(Budget::new().max_calls(1));
    let outer = Pipe::new()
        .step_typed(inner)
        .then_prompt(|plan: &Plan, _task: &str| format!("{} steps", plan.steps.len()))
        .step(Consensus::new().samples(1))
        .max_budget(Budget::new().max_calls(2));
    let ctx = RunContext::new();
    let r = outer.run(&p, "Make tea", &ctx).await.unwrap();
    assert_eq!(r.value, "done");
    assert_eq!(prompt_of(&p, 1), "2 steps");
    assert_eq!(r.cost.llm_calls, 2);
    assert_eq!(ctx.ledger().spent().llm_calls, 2);
    // The inner pipe's statistics are its step's metadata.
    assert_eq!(r.stats.step_metadata[0]["step_count"], 1);
}

#[tokio::test]
async fn an_error_after_a_typed_step_carries_the_spend() {
    let failing = Arc::new(MockProvider::failing(Error::new(
        ErrorKind::Permanent,
        "refused",
    )));
    let p = MockProvider::new([reply(PLAN)]);
    let err = Pipe::new()
        .step_typed(structured::<Plan>())
        .then_prompt(plan_prompt)
        .step_with_provider(failing.clone(), Consensus::new().samples(1))
        .run(
            &p,
            "Make tea",
            &RunContext::new().retry(RetryPolicy::none()),
        )
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.cost(), TokenUsage::new(10, 5, 2));
    assert_eq!(err.metadata()["failed_step"], 1);
    assert_eq!(err.metadata()["step_costs"][0]["llm_calls"], 1);
    assert_eq!(failing.call_count(), 1);
}

#[tokio::test]
async fn a_structured_parse_failure_stops_the_pipe_with_its_spend() {
    let p = MockProvider::new([
        reply("no json here"),
        reply("still none"),
        reply("never sent"),
    ]);
    let err = Pipe::new()
        .step_typed(structured::<Plan>().max_repairs(1))
        .then_prompt(plan_prompt)
        .step(Consensus::new().samples(1))
        .run(&p, "Make tea", &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_parse());
    assert_eq!(err.cost(), TokenUsage::new(20, 10, 2));
    assert_eq!(err.metadata()["failed_step"], 0);
    assert_eq!(err.metadata()["validated"], false);
    assert_eq!(err.metadata()["step_costs"][0]["llm_calls"], 2);
    assert_eq!(p.call_count(), 2); // the consensus step never ran
}

#[tokio::test]
async fn a_typed_step_can_run_on_its_own_provider() {
    let json = Arc::new(MockProvider::new([PLAN]));
    let main = MockProvider::new(["done"]);
    let r = Pipe::new()
        .step_typed_with_provider(json.clone(), structured::<Plan>())
        .then_prompt(plan_prompt)
        .step(Consensus::new().samples(1))
        .run(&main, "Make tea", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "done");
    assert_eq!((json.call_count(), main.call_count()), (1, 1));
}

#[tokio::test]
async fn structured_value_is_a_typed_step_of_json() {
    let p = MockProvider::new([r#"{"n": 3}"#]);
    let r = Pipe::new()
        .step_typed(StructuredValue::new())
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    let v: Value = r.value;
    assert_eq!(v["n"], 3);
}

#[tokio::test]
async fn a_typed_steps_text_is_what_run_step_returns() {
    // TypedStep::run_typed and Pattern::run_step agree on the text and the spend.
    let p = MockProvider::new([PLAN]);
    let s = structured::<Plan>();
    let (text, plan) = s
        .run_typed(&p, executionkit::StepInput::new("q"), &RunContext::new())
        .await
        .unwrap();
    let step = s
        .run_step(&p, executionkit::StepInput::new("q"), &RunContext::new())
        .await
        .unwrap();
    assert_eq!(text, step);
    assert_eq!(plan.steps.len(), 2);
}

#[tokio::test]
async fn plain_text_pipes_are_unchanged() {
    let p = MockProvider::new(["Paris", "Paris", "Lyon", "9"]);
    let r = Pipe::new()
        .step(Consensus::new().samples(3))
        .step(RefineLoop::new().target_score(0.9))
        .run(&p, "Capital of France?", &RunContext::new())
        .await
        .unwrap();
    let value: String = r.value;
    assert_eq!(value, "Paris");
    assert_eq!(r.metadata["step_count"], 2);
    assert!(
        format!("{:?}", Pipe::new().step(Consensus::new()))
            .starts_with("Pipe { steps: [\"Consensus")
    );
}

#[tokio::test]
async fn a_typed_pipe_runs_on_a_kit_and_its_usage_is_counted() {
    let p = MockProvider::new([reply(PLAN)]);
    let kit = executionkit::Kit::new(p);
    let pipe = Pipe::new().step_typed(structured::<Plan>());
    let r = kit.pipe("Make tea", &pipe).await.unwrap();
    assert_eq!(r.value.steps, ["boil water", "add tea"]);
    assert_eq!(kit.usage(), TokenUsage::new(10, 5, 1));
}

#[test]
fn a_typed_pipe_runs_blocking() {
    let p = MockProvider::new([reply(PLAN)]);
    let pipe = Pipe::new().step_typed(structured::<Plan>());
    let r = executionkit::blocking::pipe(&pipe, &p, "Make tea", &RunContext::new()).unwrap();
    let plan: Plan = r.value;
    assert_eq!(plan.steps.len(), 2);
}
