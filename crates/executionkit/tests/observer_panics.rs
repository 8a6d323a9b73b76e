//! Callbacks are observers (issue #10 item 8): a refine checkpoint callback that panics is
//! caught and logged, as react's is, and the loop finishes with its result and spend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use executionkit::{LlmResponse, MockProvider, RefineLoop, RunContext, TokenUsage};

#[tokio::test]
async fn a_panicking_refine_checkpoint_does_not_stop_the_loop() {
    // A draft judged 5/10, an improvement judged 9/10: the target is reached on iteration 1.
    let p = MockProvider::new([
        LlmResponse::text("draft").with_usage(10, 5),
        LlmResponse::text("5").with_usage(10, 1),
        LlmResponse::text("improved").with_usage(10, 5),
        LlmResponse::text("9").with_usage(10, 1),
    ]);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let r = RefineLoop::new()
        .target_score(0.9)
        .max_iterations(3)
        .on_checkpoint(move |cp| {
            c.fetch_add(1, Ordering::SeqCst);
            panic!("checkpoint {} failed to save", cp.iteration);
        })
        .run(&p, "Write a title", &RunContext::new())
        .await
        .expect("the loop finishes despite the callback");
    assert_eq!(r.value, "improved");
    assert_eq!(r.metadata["termination_reason"], "target_reached");
    assert_eq!(r.cost, TokenUsage::new(40, 12, 4));
    // Called after the first score and after the refinement, panicking both times.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The same inside a pipe step (the checkpoint runs in the step's future).
#[tokio::test]
async fn a_panicking_checkpoint_in_a_pipe_step_does_not_fail_the_pipe() {
    let p = MockProvider::new(["draft", "9"]);
    let r = executionkit::Pipe::new()
        .step(
            RefineLoop::new()
                .target_score(0.9)
                .on_checkpoint(|_| panic!("boom")),
        )
        .run(&p, "q", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.metadata["step_count"], 1);
    assert_eq!(r.cost.llm_calls, 2);
}
