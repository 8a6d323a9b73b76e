//! The ledger stays exact under random cancellation (issue 15, item 5): random fan-outs and
//! pipes, over a provider whose calls take random times, cancelled at a random moment (the run's
//! future dropped), leave nothing reserved in the ledger; every call the provider received is
//! counted; the tokens recorded are exactly those of the calls that finished; and the calls left
//! to a budget are its limit minus the calls counted. Time is tokio's paused clock, so a case
//! costs no wall-clock time and replays exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::WithCallOptions as _;
use executionkit::{
    Budget, ChatRequest, Consensus, LlmProvider, LlmResponse, Pipe, Result, RetryPolicy, RunContext,
};
use proptest::prelude::*;

/// Each call takes `1 + (seed × 7919 mod spread)` ms of tokio time, then answers "a" with 3
/// input and 5 output tokens.
#[derive(Debug, Default)]
struct Slow {
    spread: u64,
    entered: AtomicU64,
    finished: AtomicU64,
}

#[async_trait]
impl LlmProvider for Slow {
    fn model(&self) -> &str {
        "slow"
    }
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let ms = 1 + request.seed.unwrap_or(0).wrapping_mul(7919) % self.spread.max(1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(LlmResponse::text("a").with_usage(3, 5))
    }
}

#[derive(Debug, Clone)]
struct Case {
    samples: usize,
    steps: usize,
    spread: u64,
    cancel_after_ms: u64,
    max_calls: u64,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1_usize..=12,
        1_usize..=3,
        1_u64..=40,
        0_u64..=60,
        1_u64..=40,
        any::<u64>(),
    )
        .prop_map(
            |(samples, steps, spread, cancel_after_ms, max_calls, seed)| Case {
                samples,
                steps,
                spread,
                cancel_after_ms,
                max_calls,
                seed: seed % 1_000_000,
            },
        )
}

fn check(c: &Case) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let provider = Slow {
            spread: c.spread,
            ..Slow::default()
        };
        let ctx = RunContext::new()
            .retry(RetryPolicy::none())
            .budget(Budget::new().max_calls(c.max_calls));
        let mut pipe = Pipe::new();
        for i in 0..c.steps {
            pipe = pipe.step(
                Consensus::new()
                    .samples(c.samples)
                    .seed(c.seed + 100 * i as u64),
            );
        }
        let outcome = tokio::time::timeout(
            Duration::from_millis(c.cancel_after_ms),
            pipe.run(&provider, "q", &ctx),
        )
        .await;

        let ledger = ctx.ledger();
        let spent = ledger.spent();
        let entered = provider.entered.load(Ordering::SeqCst);
        let finished = provider.finished.load(Ordering::SeqCst);
        assert_eq!(
            ledger.reserved_output_tokens(),
            0,
            "{c:?}: tokens left reserved"
        );
        assert!(
            entered <= spent.llm_calls,
            "{c:?}: the provider got {entered} calls, {} counted",
            spent.llm_calls
        );
        assert!(spent.llm_calls <= c.max_calls, "{c:?}: {spent:?}");
        assert_eq!(
            (spent.input_tokens, spent.output_tokens),
            (3 * finished, 5 * finished),
            "{c:?}: the tokens are not those of the {finished} finished calls"
        );
        assert_eq!(
            ledger.remaining().llm_calls,
            Some(c.max_calls - spent.llm_calls),
            "{c:?}"
        );
        match outcome {
            // Finished in time: the result's cost is the ledger's.
            Ok(Ok(r)) => assert_eq!(r.cost, spent, "{c:?}"),
            Ok(Err(e)) => assert_eq!(e.cost(), spent, "{c:?}: {e}"),
            Err(_) => {}
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_ledger_is_exact_whenever_the_run_is_cancelled(c in case()) {
        check(&c);
    }
}

/// Many cancelled fan-outs on one context: nothing is outstanding after any of them, and the
/// ledger's calls are the sum of theirs.
#[test]
fn a_thousand_cancelled_fan_outs_leave_nothing_outstanding() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let provider = Slow {
            spread: 20,
            ..Slow::default()
        };
        let ctx = RunContext::new().retry(RetryPolicy::none());
        for i in 0..1_000_u64 {
            let c = Consensus::new().samples(8).seed(i * 8);
            let _ =
                tokio::time::timeout(Duration::from_millis(i % 23), c.run(&provider, "q", &ctx))
                    .await;
            assert_eq!(ctx.ledger().reserved_output_tokens(), 0, "fan-out {i}");
        }
        let spent = ctx.ledger().spent();
        let (entered, finished) = (
            provider.entered.load(Ordering::SeqCst),
            provider.finished.load(Ordering::SeqCst),
        );
        // The cancellations did land mid-flight: calls were cut off after they were sent.
        assert!(
            finished > 0 && entered > finished,
            "{entered} entered, {finished} finished"
        );
        assert!(entered <= spent.llm_calls);
        assert_eq!(
            spent.output_tokens,
            5 * provider.finished.load(Ordering::SeqCst)
        );
    });
}
