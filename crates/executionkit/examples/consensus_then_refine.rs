//! The seed's main example: consensus for a robust draft, then refine it until it crosses the
//! score gate, under one budget for the whole chain.
//!
//! ```text
//! cargo run -p executionkit --example consensus_then_refine
//! EXECUTIONKIT_BASE_URL=https://api.openai.com/v1 EXECUTIONKIT_MODEL=gpt-4o-mini \
//!   OPENAI_API_KEY=sk-… cargo run -p executionkit --example consensus_then_refine
//! ```

mod support;

use executionkit::WithCallOptions as _;
use executionkit::{Budget, Consensus, Pipe, RefineLoop, RunContext};

#[tokio::main]
async fn main() -> Result<(), executionkit::Error> {
    let support::Endpoint { provider, offline } = support::endpoint()?;
    // Step 1: 5 parallel drafts, take the majority winner.
    let mut consensus = Consensus::new().samples(5).temperature(0.9);
    // Step 2: refine the winner until score >= 0.9 or 3 iterations.
    let mut refine = RefineLoop::new().target_score(0.9).max_iterations(3);
    if offline {
        consensus = consensus.seed(0);
        refine = refine.seed(0);
    }
    let result = Pipe::new()
        .step(consensus)
        .step(refine)
        // End-to-end ceiling: hard cap at 20 LLM calls / 30K tokens.
        .max_budget(
            Budget::new()
                .max_input_tokens(20_000)
                .max_output_tokens(10_000)
                .max_calls(20),
        )
        .run(
            provider.as_ref(),
            "Write a one-paragraph executive summary of the Turing test \
             for an audience of non-technical board members.",
            &RunContext::new(),
        )
        .await?;

    println!("{}", result.value); // final refined paragraph
    println!("{}", result.cost); // cumulative cost across both steps
    if let Some(n) = result.metadata.get("step_count") {
        println!("{n}"); // 2
    }
    if let Some(steps) = result
        .metadata
        .get("step_metadata")
        .and_then(|s| s.as_array())
    {
        for (i, meta) in steps.iter().enumerate() {
            println!("step {i}: {meta}");
        }
    }
    Ok(())
}
