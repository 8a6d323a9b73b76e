//! Properties of the budget ledger under heavy concurrency (OVERRIDES.md "Budget"): the call
//! limit and the output-token limit are never exceeded, the reported spend is the sum of what
//! was recorded, and waiting reservations proceed when others return.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use executionkit::Usage;
use executionkit::{Budget, CostRates, LlmResponse, MockProvider, RunContext, TokenUsage};
use executionkit::{BudgetLedger, CostTracker};
use futures::FutureExt;
use proptest::prelude::*;

const RESERVATIONS: u64 = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A deterministic pseudo-random amount in `0..=max` for task `i`.
fn amount(i: u64, seed: u64, max: u64) -> u64 {
    let x = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(seed)
        .rotate_left(17);
    x % (max + 1)
}

/// What the concurrent reservations did.
#[derive(Debug, Default)]
struct Outcome {
    granted: u64,
    refused: u64,
    recorded: TokenUsage,
    max_output_seen: u64,
}

/// Runs `RESERVATIONS` tasks at once against `ledger`; each reserves, yields, and settles a
/// usage of at most its grant. While holding a grant each task checks that the ledger has not
/// gone over its output limit.
fn hammer(ledger: &Arc<BudgetLedger>, max_tokens: u64, seed: u64) -> Outcome {
    runtime().block_on(async {
        let input = Arc::new(AtomicU64::new(0));
        let output = Arc::new(AtomicU64::new(0));
        let max_seen = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(RESERVATIONS as usize);
        for i in 0..RESERVATIONS {
            let ledger = Arc::clone(ledger);
            let (input, output, max_seen) = (
                Arc::clone(&input),
                Arc::clone(&output),
                Arc::clone(&max_seen),
            );
            tasks.push(tokio::spawn(async move {
                let r = ledger.reserve("m", max_tokens, false).await?;
                assert!(r.max_tokens() >= 1 && r.max_tokens() <= max_tokens);
                tokio::task::yield_now().await;
                let spent = ledger.spent().output_tokens;
                max_seen.fetch_max(spent, Ordering::SeqCst);
                let used = Usage {
                    input_tokens: amount(i, seed, 50),
                    output_tokens: amount(i, seed ^ 0xABCD, r.max_tokens()),
                    ..Usage::default()
                };
                input.fetch_add(used.input_tokens, Ordering::SeqCst);
                output.fetch_add(used.output_tokens, Ordering::SeqCst);
                r.settle(used);
                Ok::<_, executionkit::Error>(())
            }));
        }
        let mut out = Outcome::default();
        let all = futures::future::join_all(tasks);
        // A guard against a deadlock, not a timing assertion.
        let results = tokio::time::timeout(Duration::from_secs(120), all)
            .await
            .expect("reservations deadlocked");
        for r in results {
            match r.unwrap() {
                Ok(()) => out.granted += 1,
                Err(e) => {
                    assert!(e.is_budget_exhausted(), "{e:?}");
                    out.refused += 1;
                }
            }
        }
        out.recorded = TokenUsage::new(
            input.load(Ordering::SeqCst),
            output.load(Ordering::SeqCst),
            out.granted,
        );
        out.max_output_seen = max_seen.load(Ordering::SeqCst);
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn call_limit_is_never_exceeded(limit in 1_u64..=2_000, seed in any::<u64>()) {
        let ledger = Arc::new(BudgetLedger::new(Budget::new().max_calls(limit)));
        let out = hammer(&ledger, 16, seed);
        prop_assert_eq!(out.granted, limit.min(RESERVATIONS));
        prop_assert_eq!(out.granted + out.refused, RESERVATIONS);
        prop_assert_eq!(ledger.spent().llm_calls, limit.min(RESERVATIONS));
        // The reported spend is the sum of the recorded usages.
        prop_assert_eq!(ledger.spent(), out.recorded);
        prop_assert_eq!(ledger.remaining().llm_calls, Some(limit.saturating_sub(RESERVATIONS)));
    }

    #[test]
    fn output_limit_is_never_exceeded(limit in 1_u64..=5_000, max_tokens in 1_u64..=64, seed in any::<u64>()) {
        let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(limit)));
        let out = hammer(&ledger, max_tokens, seed);
        prop_assert!(ledger.spent().output_tokens <= limit);
        prop_assert!(out.max_output_seen <= limit);
        prop_assert_eq!(out.granted + out.refused, RESERVATIONS);
        prop_assert_eq!(ledger.spent(), out.recorded);
        // Refusals only happen once the limit is reached.
        if out.refused > 0 {
            prop_assert_eq!(ledger.remaining().output_tokens, Some(0));
        }
    }

    #[test]
    fn both_limits_together(calls in 1_u64..=500, tokens in 1_u64..=2_000, seed in any::<u64>()) {
        let ledger = Arc::new(BudgetLedger::new(
            Budget::new().max_calls(calls).max_output_tokens(tokens),
        ));
        let out = hammer(&ledger, 8, seed);
        prop_assert!(ledger.spent().llm_calls <= calls);
        prop_assert!(ledger.spent().output_tokens <= tokens);
        prop_assert_eq!(ledger.spent(), out.recorded);
    }
}

#[tokio::test]
async fn a_waiting_reservation_proceeds_when_another_returns() {
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(10)));
    let first = ledger.reserve("m", 10, false).await.unwrap();
    assert_eq!(first.max_tokens(), 10);
    let mut waiting = Box::pin(ledger.reserve("m", 5, false));
    assert!(
        (&mut waiting).now_or_never().is_none(),
        "nothing left while the first call is in flight: wait"
    );
    first.settle(Usage {
        input_tokens: 1,
        output_tokens: 4,
        ..Usage::default()
    });
    let second = waiting.await.unwrap();
    assert_eq!(second.max_tokens(), 5, "6 came back; 5 were asked for");
    second.settle(Usage {
        input_tokens: 1,
        output_tokens: 5,
        ..Usage::default()
    });
    let third = ledger.reserve("m", 5, false).await.unwrap();
    assert_eq!(third.max_tokens(), 1);
    third.settle(Usage {
        input_tokens: 0,
        output_tokens: 1,
        ..Usage::default()
    });
    // Nothing left and nothing in flight: fail at once.
    let e = ledger.reserve("m", 5, false).await.unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(e.metadata()["exhausted"], "output_tokens");
    assert_eq!(ledger.spent().output_tokens, 10);
}

#[tokio::test]
async fn a_dropped_reservation_returns_its_tokens_but_keeps_its_call() {
    let ledger = Arc::new(BudgetLedger::new(
        Budget::new().max_output_tokens(10).max_calls(5),
    ));
    let r = ledger.reserve("m", 8, false).await.unwrap();
    assert_eq!(ledger.remaining().output_tokens, Some(2));
    drop(r); // a failed or cancelled call
    assert_eq!(ledger.remaining().output_tokens, Some(10));
    assert_eq!(ledger.remaining().llm_calls, Some(4));
}

#[tokio::test]
async fn usd_budget_reserves_output_and_checks_input() {
    // 1000 USD per million output tokens = 0.001 per token: 0.01 buys 10 output tokens.
    let budget = Budget::new()
        .max_usd(0.01)
        .default_price(CostRates::new(100.0, 1000.0).unwrap());
    let ledger = Arc::new(BudgetLedger::new(budget));
    let r = ledger.reserve("m", 100, false).await.unwrap();
    assert_eq!(r.max_tokens(), 10, "clamped to what the money buys");
    let usd = r.settle(Usage {
        input_tokens: 10,
        output_tokens: 5,
        ..Usage::default()
    });
    assert!((usd - (10.0 * 100.0 + 5.0 * 1000.0) / 1e6).abs() < 1e-12);
    assert!((ledger.spent_usd().unwrap() - 0.006).abs() < 1e-12);
    let r = ledger.reserve("m", 100, false).await.unwrap();
    assert_eq!(r.max_tokens(), 4);
    r.settle(Usage {
        input_tokens: 0,
        output_tokens: 4,
        ..Usage::default()
    });
    let e = ledger.reserve("m", 100, false).await.unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(e.metadata()["exhausted"], "usd");
    assert!(ledger.spent_usd().unwrap() <= 0.01 + 1e-12);
}

#[tokio::test]
async fn usd_spend_reaches_the_tracker_and_errors() {
    let budget = Budget::new()
        .max_usd(1.0)
        .max_calls(1)
        .price("mock", CostRates::new(1.0, 2.0).unwrap());
    let ctx = RunContext::new().budget(budget);
    let p = MockProvider::new([LlmResponse::text("a").with_usage(1_000, 500)]);
    let t = CostTracker::new();
    ctx.complete(
        &p,
        executionkit::ChatRequest::new(vec![executionkit::Message::user("q")]),
        &t,
    )
    .await
    .unwrap();
    let expected = (1_000.0 * 1.0 + 500.0 * 2.0) / 1e6;
    assert!((ctx.tracker_usd(&t).unwrap() - expected).abs() < 1e-12);
    let e = ctx
        .complete(
            &p,
            executionkit::ChatRequest::new(vec![executionkit::Message::user("q")]),
            &t,
        )
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    assert!((e.usd().unwrap() - expected).abs() < 1e-12);
    assert_eq!(e.cost(), TokenUsage::new(1_000, 500, 1));
}

#[tokio::test]
async fn a_money_limit_without_a_price_for_the_model_is_an_invalid_argument() {
    let ledger = Arc::new(BudgetLedger::new(
        Budget::new()
            .max_usd(1.0)
            .price("other", CostRates::new(1.0, 1.0).unwrap()),
    ));
    let e = ledger.reserve("m", 1, false).await.unwrap_err();
    assert!(e.is_invalid_argument());
}

#[tokio::test]
async fn n_choices_reserve_whole_tokens_per_choice() {
    let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(10)));
    let r = ledger.reserve_choices("m", 64, 4, false).await.unwrap();
    assert_eq!((r.max_tokens_per_choice(), r.max_tokens()), (2, 8));
    r.settle(Usage {
        input_tokens: 0,
        output_tokens: 8,
        ..Usage::default()
    });
    // 2 left, 4 choices: not even one token each, nothing in flight → exhausted.
    let e = ledger.reserve_choices("m", 64, 4, false).await.unwrap_err();
    assert!(e.is_budget_exhausted());
    assert!(ledger.spent().output_tokens <= 10);
}

#[tokio::test]
async fn a_bad_money_limit_is_an_invalid_argument_before_any_call() {
    let p = MockProvider::new(["x"]);
    let ctx = RunContext::new().budget(
        Budget::new()
            .max_usd(f64::NAN)
            .default_price(CostRates::new(1.0, 1.0).unwrap()),
    );
    let e = ctx
        .complete(
            &p,
            executionkit::ChatRequest::new(vec![executionkit::Message::user("q")]),
            &CostTracker::new(),
        )
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument());
    assert_eq!(e.metadata()["argument"], "max_usd");
    assert_eq!(p.call_count(), 0);
}
