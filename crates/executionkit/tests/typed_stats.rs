//! Typed statistics (issue #10 item 3): each pattern's statistics are a struct reachable on its
//! result, every typed field equals its `metadata` key, the statistics serialise to exactly the
//! keys the metadata had before they were typed, and the JSON `ek --json` prints is unchanged
//! (the strings below were captured from the untyped implementation).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::StopRule;
use executionkit::prelude::*;
use executionkit::{LlmResponse, PatternResult, ReactTermination, TerminationReason};
use serde::Serialize;
use serde_json::Value;

/// Every key the statistics serialise to is in the metadata with the same value; returns the
/// statistics' keys, sorted.
fn agree<T, S: Serialize>(r: &PatternResult<T, S>) -> Vec<String> {
    let Value::Object(stats) = serde_json::to_value(&r.stats).unwrap() else {
        panic!("statistics serialise to an object");
    };
    for (k, v) in &stats {
        assert_eq!(
            r.metadata.get(k),
            Some(v),
            "metadata.{k} differs from the typed field"
        );
    }
    stats.keys().cloned().collect()
}

fn keys(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn consensus_stats_are_its_metadata() {
    let p = MockProvider::new(["a", "a", "b", "a"]);
    let r = Consensus::new()
        .samples(4)
        .max_concurrency(1)
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.stats.agreement_ratio, 0.75);
    assert_eq!(r.stats.unique_responses, 2);
    assert_eq!(r.stats.tie_count, 1);
    assert!(r.stats.early_stop.is_none());
    assert_eq!(r.metadata["agreement_ratio"], r.stats.agreement_ratio);
    assert_eq!(
        agree(&r),
        keys(&["agreement_ratio", "unique_responses", "tie_count"])
    );
    assert_eq!(
        r.to_json().to_string(),
        r#"{"cost":{"input_tokens":0,"llm_calls":4,"output_tokens":0},"metadata":{"agreement_ratio":0.75,"tie_count":1,"unique_responses":2},"score":0.75,"value":"a"}"#
    );
}

#[tokio::test]
async fn consensus_early_stop_stats_are_its_metadata() {
    let p = MockProvider::new(["Paris", "Lyon", "Paris", "Paris"]);
    let r = Consensus::new()
        .samples(40)
        .max_concurrency(1)
        .early_stop(StopRule::window(3))
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    let stop = r.stats.early_stop.as_ref().unwrap();
    assert_eq!(stop.samples_used, 5);
    assert!(stop.stopped_early);
    assert_eq!(stop.stop_rule, StopRule::window(3));
    assert_eq!(
        (
            stop.vote_counts[0].answer.as_str(),
            stop.vote_counts[0].count
        ),
        ("Paris", 4)
    );
    assert_eq!(r.metadata["samples_used"], stop.samples_used);
    assert_eq!(
        agree(&r),
        keys(&[
            "agreement_ratio",
            "unique_responses",
            "tie_count",
            "samples_used",
            "stopped_early",
            "stop_rule",
            "vote_counts",
        ])
    );
    assert_eq!(
        r.to_json().to_string(),
        r#"{"cost":{"input_tokens":0,"llm_calls":5,"output_tokens":0},"metadata":{"agreement_ratio":0.8,"samples_used":5,"stop_rule":"window:3","stopped_early":true,"tie_count":1,"unique_responses":2,"vote_counts":[{"answer":"Paris","count":4,"weight":4.0},{"answer":"Lyon","count":1,"weight":1.0}]},"score":0.8,"value":"Paris"}"#
    );
}

#[tokio::test]
async fn refine_stats_are_its_metadata() {
    let p = MockProvider::new(["draft", "5", "better", "9"]);
    let r = RefineLoop::new()
        .target_score(0.9)
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.stats.iterations, 1);
    assert!(r.stats.converged);
    assert_eq!(r.stats.score_history, [0.5, 0.9]);
    assert_eq!(r.stats.termination_reason, TerminationReason::TargetReached);
    assert_eq!(r.metadata["termination_reason"], "target_reached");
    assert_eq!(
        agree(&r),
        keys(&[
            "iterations",
            "converged",
            "score_history",
            "termination_reason"
        ])
    );
    assert_eq!(
        r.to_json().to_string(),
        r#"{"cost":{"input_tokens":0,"llm_calls":4,"output_tokens":0},"metadata":{"converged":true,"iterations":1,"score_history":[0.5,0.9],"termination_reason":"target_reached"},"score":0.9,"value":"better"}"#
    );
}

#[tokio::test]
async fn structured_stats_are_its_metadata() {
    let p = MockProvider::new(["no json", r#"{"a": 1}"#]);
    let r = StructuredValue::new()
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(
        (
            r.stats.parse_attempts,
            r.stats.repair_attempts,
            r.stats.validated
        ),
        (2, 1, true)
    );
    assert_eq!(
        agree(&r),
        keys(&["parse_attempts", "repair_attempts", "validated"])
    );
    assert_eq!(
        r.to_json().to_string(),
        r#"{"cost":{"input_tokens":0,"llm_calls":2,"output_tokens":0},"metadata":{"parse_attempts":2,"repair_attempts":1,"validated":true},"score":null,"value":{"a":1}}"#
    );

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    struct A {
        a: u32,
    }
    let p = MockProvider::new([r#"{"a": 7}"#]);
    let r = structured::<A>()
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!((r.value.a, r.stats.parse_attempts), (7, 1));
    agree(&r);

    // A parse failure carries the same keys, not validated.
    let p = MockProvider::new(["no", "still no"]);
    let e = StructuredValue::new()
        .max_repairs(1)
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap_err();
    let m = e.metadata();
    assert_eq!(
        (&m["parse_attempts"], &m["repair_attempts"], &m["validated"]),
        (&Value::from(2), &Value::from(1), &Value::Bool(false))
    );
}

#[tokio::test]
async fn map_reduce_stats_are_its_metadata() {
    let p = MockProvider::new(["x", "y", "z", "w"]);
    let items = vec!["1".to_owned(), "2".to_owned(), "3".to_owned()];
    let r = MapReduce::new()
        .map_template("{item}")
        .reduce_template("{mapped_outputs}")
        .max_concurrency(1)
        .run(&p, &items, &RunContext::new())
        .await
        .unwrap();
    assert_eq!(
        (
            r.stats.map_count,
            r.stats.reduce_calls,
            r.stats.reduce_levels,
            r.stats.total_calls
        ),
        (3, 1, 1, 4)
    );
    assert_eq!(
        agree(&r),
        keys(&["map_count", "reduce_calls", "reduce_levels", "total_calls"])
    );
    assert_eq!(
        r.to_json().to_string(),
        r#"{"cost":{"input_tokens":0,"llm_calls":4,"output_tokens":0},"metadata":{"map_count":3,"reduce_calls":1,"reduce_levels":1,"total_calls":4},"score":null,"value":"w"}"#
    );
}

#[tokio::test]
async fn pipe_stats_are_its_metadata() {
    // The first step's first call reports more output than its grant of 2 tokens.
    let p = MockProvider::new([
        LlmResponse::text("A").with_usage(3, 5),
        LlmResponse::text("A").with_usage(3, 1),
        LlmResponse::text("9").with_usage(2, 1),
    ]);
    let r = Pipe::new()
        .step(Consensus::new().samples(2).max_tokens(2))
        .step_if(|prev| prev.score.is_none_or(|s| s < 0.5), RefineLoop::new())
        .step(RefineLoop::new().target_score(0.8))
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.stats.step_count, 3);
    assert_eq!(r.stats.step_costs[0].cost.output_tokens, 6);
    assert!(r.stats.step_costs[1].cost.is_zero());
    assert_eq!(r.stats.step_metadata[1]["skipped"], true);
    assert_eq!(
        agree(&r),
        keys(&["step_count", "step_metadata", "step_costs"])
    );
    // The last run step's keys and the engine's (usage_over_grant) are there too.
    assert_eq!(r.metadata["termination_reason"], "target_reached");
    assert_eq!(
        r.to_json().to_string(),
        r#"{"cost":{"input_tokens":8,"llm_calls":3,"output_tokens":7},"metadata":{"converged":true,"iterations":0,"score_history":[0.9],"step_costs":[{"input_tokens":6,"llm_calls":2,"output_tokens":6},{"input_tokens":0,"llm_calls":0,"output_tokens":0},{"input_tokens":2,"llm_calls":1,"output_tokens":1}],"step_count":3,"step_metadata":[{"agreement_ratio":1.0,"tie_count":1,"unique_responses":1,"usage_over_grant":{"calls":1,"output_tokens":3}},{"skipped":true},{"converged":true,"iterations":0,"score_history":[0.9],"termination_reason":"target_reached"}],"termination_reason":"target_reached","usage_over_grant":{"calls":1,"output_tokens":3}},"score":0.9,"value":"A"}"#
    );

    // An empty pipe: no statistics, empty metadata (as before).
    let r = Pipe::new().run(&p, "q", &RunContext::new()).await.unwrap();
    assert_eq!(r.stats.step_count, 0);
    assert!(r.metadata.is_empty());
    assert!(agree(&r).is_empty());
}

/// The provider's key is removed from the statistics exactly as from the metadata.
#[tokio::test]
async fn a_redacted_key_leaves_stats_and_metadata_equal() {
    const KEY: &str = "sk-test-0123456789abcdef";
    let p = MockProvider::new([format!("the key is {KEY}")]).with_secret(KEY);
    let r = Consensus::new()
        .samples(3)
        .max_concurrency(1)
        .early_stop(StopRule::window(2))
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    let answer = &r.stats.early_stop.as_ref().unwrap().vote_counts[0].answer;
    assert!(!answer.contains(KEY), "{answer}");
    assert!(!r.metadata.values().any(|v| v.to_string().contains(KEY)));
    agree(&r);

    let r = Pipe::new()
        .step(
            Consensus::new()
                .samples(2)
                .max_concurrency(1)
                .early_stop(StopRule::window(2)),
        )
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert!(!format!("{:?}", r.stats).contains(KEY));
    agree(&r);
}

#[tokio::test]
async fn react_stats_are_its_metadata() {
    let p = MockProvider::new(["Paris"]);
    let r = ReactLoop::new()
        .run(&p, "Capital of France?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!((r.stats.rounds, r.stats.tool_calls_made), (1, 0));
    assert_eq!(r.stats.termination_reason, ReactTermination::Natural);
    assert_eq!(r.stats.messages.len(), 2);
    assert_eq!(
        agree(&r),
        keys(&[
            "messages",
            "messages_trimmed",
            "rejected_tool_calls",
            "rounds",
            "summarized",
            "termination_reason",
            "tool_calls_made",
            "truncated_observations",
            "truncated_responses",
        ])
    );
    assert_eq!(r.metadata["termination_reason"], "natural");
}

#[tokio::test]
async fn react_stats_of_a_failed_run_are_in_the_error() {
    let reply = LlmResponse {
        choices: vec![executionkit::Choice {
            content: String::new(),
            tool_calls: vec![executionkit::ToolCall::new(
                "c1",
                "missing",
                serde_json::json!({}),
            )],
            finish_reason: Some("tool_calls".into()),
            logprobs: None,
        }],
        ..LlmResponse::default()
    };
    let p = MockProvider::new([reply]);
    let e = ReactLoop::new()
        .max_rounds(1)
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap_err();
    assert!(e.is_max_iterations());
    assert_eq!(e.metadata()["termination_reason"], "max_iterations");
    assert_eq!(e.metadata()["tool_calls_made"], 1); // an unknown tool is answered with an error observation
    assert_eq!(e.metadata()["rounds"], 1);
}
