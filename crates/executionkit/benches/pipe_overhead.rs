//! Library-only overhead of `Pipe` consensus → refine (divan) over a provider that does
//! nothing: every reply is "5", so consensus (5 samples) votes "5", the judge scores it 0.5
//! and the refine loop runs until its plateau rule stops it. The counter is one LLM call.
//!
//! `cargo bench -p executionkit --bench pipe_overhead`. Figures go to `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Noop, runtime};
use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use executionkit::{Consensus, LlmResponse, Pipe, RefineLoop, RunContext};

fn main() {
    divan::main();
}

fn pipe() -> Pipe {
    Pipe::new()
        .step(Consensus::new().samples(5))
        .step(RefineLoop::new())
}

const PROMPT: &str = "Write one sentence about Paris.";

/// The seed shape: consensus of 5, then refine with the LLM judge (the calls of one run are
/// counted once, before measuring).
#[divan::bench(sample_count = 200)]
fn consensus_then_refine(bencher: Bencher) {
    let rt = runtime();
    let p = Noop(LlmResponse::text("5").with_usage(12, 1));
    let pipe = pipe();
    let calls = rt
        .block_on(pipe.run(&p, PROMPT, &RunContext::new()))
        .unwrap()
        .cost
        .llm_calls;
    bencher
        .counter(ItemsCount::new(usize::try_from(calls).unwrap()))
        .bench_local(|| {
            let r = rt
                .block_on(pipe.run(&p, PROMPT, &RunContext::new()))
                .unwrap();
            black_box(r)
        });
}
