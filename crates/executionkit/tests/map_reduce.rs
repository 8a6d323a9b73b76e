//! map_reduce: conformance scenarios 131–134 of the reference (§26, with OVERRIDES.md's
//! expectations for 132 and 134), the concurrency cap, cancellation on the first failure, and
//! the hierarchical reduce.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::WithCallOptions as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::MapReduce;
use executionkit::{
    Budget, ChatRequest, Error, ErrorKind, LlmProvider, LlmResponse, MockProvider, RetryPolicy,
    RunContext, TokenUsage,
};

fn ctx() -> RunContext {
    RunContext::new().retry(RetryPolicy::none())
}

fn items(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| (*s).to_owned()).collect()
}

fn mr(map: &str, reduce: &str) -> MapReduce {
    MapReduce::new().map_template(map).reduce_template(reduce)
}

fn prompt_of(req: &ChatRequest) -> String {
    req.messages.last().unwrap().content.clone()
}

// ---------------------------------------------------------------- scenario 131

#[tokio::test]
async fn s131_templates_substitute_every_placeholder() {
    let p = MockProvider::new(["about apple", "about banana", "final"]);
    let r = mr("Describe: {item}", "Join: {mapped_outputs}")
        .max_concurrency(1)
        .run(&p, &items(&["apple", "banana"]), &ctx())
        .await
        .unwrap();
    assert_eq!(r.value, "final");
    let calls = p.calls();
    assert_eq!(calls.len(), 3);
    assert!(prompt_of(&calls[0].request).contains("apple"));
    assert!(prompt_of(&calls[1].request).contains("banana"));
    assert_eq!(
        prompt_of(&calls[2].request),
        "Join: about apple\n\n---\n\nabout banana"
    );
    for c in &calls {
        assert_eq!(c.request.temperature, Some(0.3));
    }

    let p = MockProvider::new(["x", "y"]);
    let _ = mr("Do {item} {item}", "{mapped_outputs}")
        .run(&p, &items(&["a"]), &ctx())
        .await
        .unwrap();
    assert_eq!(prompt_of(&p.calls()[0].request), "Do a a");
}

// ---------------------------------------------------------------- scenario 132

#[tokio::test]
async fn s132_empty_inputs_make_one_reduce_call() {
    let p = MockProvider::new(["nothing to summarise"]);
    let r = mr("Describe: {item}", "Summary: {mapped_outputs}")
        .run(&p, &[], &ctx())
        .await
        .unwrap();
    assert_eq!(r.value, "nothing to summarise");
    assert_eq!(p.call_count(), 1);
    assert_eq!(prompt_of(&p.calls()[0].request), "Summary: ");
    assert_eq!(r.metadata["map_count"], 0);
    assert_eq!(r.metadata["reduce_calls"], 1);
    assert_eq!(r.metadata["reduce_levels"], 1);
    assert_eq!(r.metadata["total_calls"], 1);
}

#[tokio::test]
async fn s132_override_map_template_is_checked_even_for_empty_inputs() {
    let p = MockProvider::new(["x"]);
    let e = mr("no placeholder", "Summary: {mapped_outputs}")
        .run(&p, &[], &ctx())
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument());
    assert!(e.message().contains("{item}"));
    assert_eq!(p.call_count(), 0);
}

// ---------------------------------------------------------------- scenario 133

#[tokio::test]
async fn s133_cost_sums_every_call_and_budget_trips_at_reduce() {
    let p = MockProvider::new([LlmResponse::text("r").with_usage(10, 5)]);
    let r = mr("{item}", "{mapped_outputs}")
        .run(&p, &items(&["a", "b"]), &ctx())
        .await
        .unwrap();
    assert_eq!(r.cost, TokenUsage::new(30, 15, 3));

    let p = MockProvider::new([LlmResponse::text("r").with_usage(10, 5)]);
    let e = mr("{item}", "{mapped_outputs}")
        .run(
            &p,
            &items(&["a", "b"]),
            &ctx().budget(Budget::new().max_calls(2)),
        )
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(e.cost(), TokenUsage::new(20, 10, 2));
    assert_eq!(e.metadata()["exhausted"], "llm_calls");
    assert_eq!(p.call_count(), 2);
}

// ---------------------------------------------------------------- scenario 134

#[tokio::test]
async fn s134_invalid_options_fail_before_any_call() {
    let p = MockProvider::new(["x"]);
    let one = items(&["a"]);
    let cases = [
        (
            mr("{item}", "{mapped_outputs}").max_concurrency(0),
            "max_concurrency",
        ),
        (mr("{item}", "{mapped_outputs}").max_tokens(0), "max_tokens"),
        (mr("no item", "{mapped_outputs}"), "{item}"),
        // OVERRIDES.md: the reduce template is checked before the map calls too.
        (mr("{item}", "no outputs"), "{mapped_outputs}"),
        (
            mr("{item}", "{mapped_outputs}").max_reduce_input_chars(0),
            "max_reduce_input_chars",
        ),
        (
            mr("{item}", "{mapped_outputs}").temperature(-1.0),
            "temperature",
        ),
    ];
    for (m, fragment) in cases {
        let e = m.run(&p, &one, &ctx()).await.unwrap_err();
        assert!(e.is_invalid_argument(), "{fragment}");
        assert!(e.message().contains(fragment), "{}", e.message());
        assert!(e.cost().is_zero());
    }
    assert_eq!(p.call_count(), 0);
}

// ---------------------------------------------------------------- fan-out behaviour

/// A provider answering by closure after an optional (paused-clock) delay, recording the
/// calls in flight and the calls dropped before they finished.
#[derive(Debug, Clone, Default)]
struct Scripted {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    prompts: Arc<Mutex<Vec<String>>>,
}

struct Guard<'a>(&'a Scripted, bool);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &ChatRequest) -> executionkit::Result<LlmResponse> {
        let prompt = prompt_of(request);
        self.prompts.lock().unwrap().push(prompt.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut guard = Guard(self, false);
        if prompt == "MAP bad" {
            guard.1 = true;
            return Err(Error::new(ErrorKind::Permanent, "bad item"));
        }
        tokio::time::sleep(Duration::from_secs(if prompt.contains("slow") {
            60
        } else {
            1
        }))
        .await;
        guard.1 = true;
        self.finished.fetch_add(1, Ordering::SeqCst);
        let reply = if prompt.starts_with("MAP") {
            "m".repeat(100)
        } else {
            "sum".to_owned()
        };
        Ok(LlmResponse::text(reply).with_usage(2, 1))
    }
}

#[tokio::test(start_paused = true)]
async fn map_calls_respect_max_concurrency() {
    let p = Scripted::default();
    let xs: Vec<String> = (0..6).map(|i| format!("i{i}")).collect();
    let r = mr("MAP {item}", "REDUCE {mapped_outputs}")
        .max_concurrency(2)
        .run(&p, &xs, &ctx())
        .await
        .unwrap();
    assert_eq!(r.value, "sum");
    assert_eq!(p.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(r.metadata["map_count"], 6);
    assert_eq!(r.metadata["total_calls"], 7);
    assert_eq!(r.cost, TokenUsage::new(14, 7, 7));
}

#[tokio::test(start_paused = true)]
async fn first_map_failure_cancels_the_rest_with_one_error_and_the_whole_spend() {
    let p = Scripted::default();
    let xs = items(&["slow1", "slow2", "bad", "slow3"]);
    let e = mr("MAP {item}", "REDUCE {mapped_outputs}")
        .run(&p, &xs, &ctx())
        .await
        .unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.message(), "bad item");
    // The error's cost counts every dispatched call; the slow ones in flight were dropped
    // unfinished, and nothing reached the reduce step.
    let dispatched = p.prompts.lock().unwrap().len();
    assert!(dispatched >= 3, "{dispatched}");
    assert_eq!(e.cost().llm_calls, dispatched as u64);
    assert_eq!(p.finished.load(Ordering::SeqCst), 0);
    assert_eq!(p.cancelled.load(Ordering::SeqCst), dispatched - 1);
    assert_eq!(p.in_flight.load(Ordering::SeqCst), 0);
    assert!(
        p.prompts
            .lock()
            .unwrap()
            .iter()
            .all(|x| x.starts_with("MAP"))
    );
}

#[tokio::test]
async fn a_failing_provider_fails_the_map_with_the_spend() {
    let p = MockProvider::failing(Error::new(ErrorKind::Permanent, "denied"));
    let e = mr("{item}", "{mapped_outputs}")
        .max_concurrency(1)
        .run(&p, &items(&["a", "b", "c"]), &ctx())
        .await
        .unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.cost().llm_calls, 1);
    assert_eq!(p.call_count(), 1);
}

// ---------------------------------------------------------------- hierarchical reduce

#[tokio::test(start_paused = true)]
async fn long_map_outputs_are_reduced_hierarchically() {
    let p = Scripted::default();
    let xs: Vec<String> = (0..8).map(|i| format!("doc{i}")).collect();
    let r = mr("MAP {item}", "REDUCE {mapped_outputs}")
        .separator("|")
        .max_reduce_input_chars(250)
        .run(&p, &xs, &ctx())
        .await
        .unwrap();
    assert_eq!(r.value, "sum");
    // 8 outputs of 100 chars, at most 250 per reduce: 4 groups of 2, then one final reduce.
    assert_eq!(r.metadata["map_count"], 8);
    assert_eq!(r.metadata["reduce_calls"], 5);
    assert_eq!(r.metadata["reduce_levels"], 2);
    assert_eq!(r.metadata["total_calls"], 13);
    let prompts = p.prompts.lock().unwrap().clone();
    let reduces: Vec<&String> = prompts.iter().filter(|x| x.starts_with("REDUCE")).collect();
    assert_eq!(reduces.len(), 5);
    for group in &reduces[..4] {
        let input = group.trim_start_matches("REDUCE ");
        assert!(input.chars().count() <= 250, "{}", input.len());
        assert_eq!(input.split('|').count(), 2);
    }
    assert_eq!(reduces[4].as_str(), "REDUCE sum|sum|sum|sum");
}

#[tokio::test]
async fn short_outputs_need_one_reduce_even_with_a_limit() {
    let p = MockProvider::new(["a", "b", "c", "final"]);
    let r = mr("{item}", "{mapped_outputs}")
        .max_concurrency(1)
        .max_reduce_input_chars(1_000)
        .run(&p, &items(&["1", "2", "3"]), &ctx())
        .await
        .unwrap();
    assert_eq!(r.value, "final");
    assert_eq!(r.metadata["reduce_calls"], 1);
    assert_eq!(r.metadata["reduce_levels"], 1);
}

#[tokio::test]
async fn system_seed_and_model_reach_every_call() {
    let p = MockProvider::new(["x"]);
    let _ = mr("{item}", "{mapped_outputs}")
        .system("Be brief.")
        .seed(11)
        .model("small")
        .max_tokens(64)
        .run(&p, &items(&["a", "b"]), &ctx())
        .await
        .unwrap();
    for c in p.calls() {
        assert_eq!(c.request.messages[0].content, "Be brief.");
        assert_eq!(c.request.seed, Some(11));
        assert_eq!(c.request.model.as_deref(), Some("small"));
        assert_eq!(c.request.max_tokens, Some(64));
    }
}
