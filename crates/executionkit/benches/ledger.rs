//! The budget ledger under contention (divan): many tokio tasks on a multi-threaded runtime
//! (one worker per CPU) each reserving and settling calls against one shared ledger.
//!
//! `cargo bench -p executionkit --bench ledger`. Figures go to `bench/RESULTS.md`; the counter
//! is one reserve + settle.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use executionkit::BudgetLedger;
use executionkit::Usage;
use executionkit::{Budget, CostRates};

/// Reserve + settle operations per task.
const OPS: usize = 100;

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `tasks` tasks × `OPS` reserve/settle each on one ledger.
fn contend(rt: &tokio::runtime::Runtime, ledger: &Arc<BudgetLedger>, tasks: usize) {
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let ledger = Arc::clone(ledger);
                tokio::spawn(async move {
                    for _ in 0..OPS {
                        let r = ledger.reserve("m", 64, false).await.unwrap();
                        black_box(r.max_tokens());
                        r.settle(Usage {
                            input_tokens: 12,
                            output_tokens: 1,
                            ..Usage::default()
                        });
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
}

/// No limits: the ledger only counts.
#[divan::bench(args = [1, 100, 1000], sample_count = 30)]
fn unlimited(bencher: Bencher, tasks: usize) {
    let rt = runtime();
    bencher
        .counter(ItemsCount::new(tasks * OPS))
        .with_inputs(|| Arc::new(BudgetLedger::unlimited()))
        .bench_local_values(|ledger| contend(&rt, &ledger, tasks));
}

/// Every limit set (calls, input and output tokens, dollars with a price): output tokens and
/// dollars are reserved and returned on every call.
#[divan::bench(args = [1, 100, 1000], sample_count = 30)]
fn all_limits(bencher: Bencher, tasks: usize) {
    let rt = runtime();
    let budget = Budget::new()
        .max_calls(u64::MAX / 4)
        .max_input_tokens(u64::MAX / 4)
        .max_output_tokens(u64::MAX / 4)
        .max_usd(1e12)
        .default_price(CostRates::new(0.15, 0.6).unwrap());
    bencher
        .counter(ItemsCount::new(tasks * OPS))
        .with_inputs(|| Arc::new(BudgetLedger::new(budget.clone())))
        .bench_local_values(|ledger| contend(&rt, &ledger, tasks));
}

/// A tight output limit: the tasks' whole spend (one output token per call) plus 8 × 64 tokens,
/// so at most about 8 calls hold a reservation and the others wait for returns (the waiting
/// path under contention).
#[divan::bench(args = [100, 1000], sample_count = 30)]
fn waiting_on_output_tokens(bencher: Bencher, tasks: usize) {
    let rt = runtime();
    let limit = (tasks * OPS) as u64 + 8 * 64;
    bencher
        .counter(ItemsCount::new(tasks * OPS))
        .with_inputs(|| Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(limit))))
        .bench_local_values(|ledger| contend(&rt, &ledger, tasks));
}
