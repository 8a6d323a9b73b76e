//! The blocking API: a plain `fn main` with no async runtime and no `.await`, like the Python
//! package's `*_sync` helpers. Consensus, then the seed's consensus → refine pipe, each call
//! blocking until it is done.
//!
//! ```text
//! cargo run -p executionkit --example blocking
//! EXECUTIONKIT_BASE_URL=http://127.0.0.1:8081/v1 EXECUTIONKIT_MODEL=smollm2 \
//!   cargo run -p executionkit --example blocking
//! ```

mod support;

use executionkit::WithCallOptions as _;
use executionkit::{Budget, Consensus, Pipe, RefineLoop, RunContext, blocking};

fn main() -> Result<(), executionkit::Error> {
    let support::Endpoint { provider, offline } = support::endpoint()?;
    let seed = offline.then_some(0);
    let ctx = RunContext::new().budget(Budget::new().max_calls(30));

    let mut vote = Consensus::new().samples(5).temperature(0.9);
    if let Some(s) = seed {
        vote = vote.seed(s);
    }
    let answer = blocking::consensus(
        &vote,
        provider.as_ref(),
        "What is the capital of France? One word.",
        &ctx,
    )?;
    println!("consensus: {} (agreement {:?})", answer.value, answer.score);

    let mut refine = RefineLoop::new().target_score(0.9).max_iterations(3);
    if let Some(s) = seed {
        refine = refine.seed(s);
    }
    let pipe = Pipe::new()
        .step(vote)
        .step(refine)
        .max_budget(Budget::new().max_calls(20));
    let result = blocking::pipe(
        &pipe,
        provider.as_ref(),
        "Summarise the Turing test in one paragraph for a board.",
        &ctx,
    )?;
    println!("pipe: {}", result.value);
    println!("  {}", result.cost);
    // The pipe's 20-call budget nests inside the context's 30: the context saw every call.
    println!("whole run: {}", ctx.ledger().spent());
    Ok(())
}
