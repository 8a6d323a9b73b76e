//! Library-only overhead of `Consensus` (divan): 10,000 samples over a provider that does
//! nothing (it returns a prebuilt response and records nothing), so all the time is the
//! library's own: request building, budget reservation, retry wrapper, span, tally.
//!
//! `cargo bench -p executionkit --bench consensus_overhead`. The counter is one sample: divan's
//! `item/s` is the inverse of the overhead per sample. Figures go to `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Noop, runtime};
use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use executionkit::{Budget, Consensus, LlmResponse, RetryPolicy, RunContext};

const SAMPLES: usize = 10_000;

fn main() {
    divan::main();
}

fn paris() -> Noop {
    Noop(LlmResponse::text("Paris").with_usage(12, 1))
}

/// 10,000 samples at the given max concurrency, the defaults otherwise (as `ek consensus`).
#[divan::bench(args = [1, 50, 200], sample_count = 30)]
fn samples_10000(bencher: Bencher, concurrency: usize) {
    let rt = runtime();
    let p = paris();
    let c = Consensus::new()
        .samples(SAMPLES)
        .max_concurrency(concurrency);
    bencher.counter(ItemsCount::new(SAMPLES)).bench_local(|| {
        let r = rt
            .block_on(c.run(&p, "What is the capital of France?", &RunContext::new()))
            .unwrap();
        black_box(r)
    });
}

/// The same under a budget with every limit and a price (reservations of output tokens and
/// dollars on every call), no retries.
#[divan::bench(sample_count = 30)]
fn samples_10000_budgeted(bencher: Bencher) {
    let rt = runtime();
    let p = paris();
    let c = Consensus::new().samples(SAMPLES).max_concurrency(200);
    let budget = Budget::new()
        .max_calls(1_000_000)
        .max_input_tokens(1_000_000_000)
        .max_output_tokens(1_000_000_000)
        .max_usd(1e6)
        .default_price(executionkit::CostRates::new(0.15, 0.6).unwrap());
    bencher.counter(ItemsCount::new(SAMPLES)).bench_local(|| {
        let ctx = RunContext::new()
            .budget(budget.clone())
            .retry(RetryPolicy::none());
        let r = rt
            .block_on(c.run(&p, "What is the capital of France?", &ctx))
            .unwrap();
        black_box(r)
    });
}
