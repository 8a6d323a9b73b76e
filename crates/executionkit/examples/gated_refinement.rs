//! The seed's variation "gate refinement on consensus confidence", without hand-written glue:
//! a conditional step refines only when the consensus agreement is below 0.95.
//!
//! ```text
//! cargo run -p executionkit --example gated_refinement
//! ```

mod support;

use executionkit::WithCallOptions as _;
use executionkit::{Budget, Consensus, Pipe, RefineLoop, RunContext};

#[tokio::main]
async fn main() -> Result<(), executionkit::Error> {
    let support::Endpoint { provider, offline } = support::endpoint()?;
    let mut consensus = Consensus::new().samples(5);
    let mut refine = RefineLoop::new().target_score(0.9);
    if offline {
        consensus = consensus.seed(0);
        refine = refine.seed(0);
    }
    let result = Pipe::new()
        .step(consensus)
        // Runs only when consensus was unsure (its score is the agreement ratio).
        .step_if(|prev| prev.score.is_none_or(|s| s < 0.95), refine)
        .max_budget(Budget::new().max_calls(20))
        .run(
            provider.as_ref(),
            "In one sentence: why do distributed systems need consensus?",
            &RunContext::new(),
        )
        .await?;

    let steps = result
        .metadata
        .get("step_metadata")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    let agreement = steps
        .first()
        .and_then(|m| m.get("agreement_ratio"))
        .cloned();
    let skipped = steps
        .get(1)
        .and_then(|m| m.get("skipped"))
        .and_then(|s| s.as_bool())
        .unwrap_or(false);
    println!("{}", result.value);
    println!("{}", result.cost);
    println!(
        "agreement {}: refinement {}",
        agreement.unwrap_or_default(),
        if skipped { "skipped" } else { "ran" }
    );
    Ok(())
}
