//! Quickstart: one consensus vote and one refine loop, with a budget and a progress callback.
//!
//! ```text
//! cargo run -p executionkit --example quickstart
//! EXECUTIONKIT_BASE_URL=http://127.0.0.1:8081/v1 EXECUTIONKIT_MODEL=smollm2 \
//!   cargo run -p executionkit --example quickstart
//! ```

mod support;

use executionkit::WithCallOptions as _;
use executionkit::events::Event;
use executionkit::{Budget, Consensus, RefineLoop, RunContext};

#[tokio::main]
async fn main() -> Result<(), executionkit::Error> {
    let support::Endpoint { provider, offline } = support::endpoint()?;
    let seed = offline.then_some(0);

    // One context per run: its budget ledger is shared by everything run with it.
    let ctx = RunContext::new()
        .budget(Budget::new().max_calls(15).max_output_tokens(20_000))
        .on_event(|e| {
            if let Event::CallFinished { call, usage, .. } = e {
                eprintln!("call {call}: {usage}");
            }
        });

    let mut vote = Consensus::new().samples(5).temperature(0.9);
    if let Some(s) = seed {
        vote = vote.seed(s);
    }
    let answer = vote
        .run(
            provider.as_ref(),
            "What is the capital of France? One word.",
            &ctx,
        )
        .await?;
    println!("consensus: {} (agreement {:?})", answer.value, answer.score);
    println!("  {}", answer.cost);

    let mut refine = RefineLoop::new().target_score(0.8).max_iterations(3);
    if let Some(s) = seed {
        refine = refine.seed(s);
    }
    let draft = refine
        .run(
            provider.as_ref(),
            "Explain what a hash map is in two sentences.",
            &ctx,
        )
        .await?;
    println!("refine: {}", draft.value);
    println!("  score {:?}, {}", draft.score, draft.cost);
    println!("  {}", serde_json::Value::Object(draft.metadata));
    println!("whole run: {}", ctx.ledger().spent());
    Ok(())
}
