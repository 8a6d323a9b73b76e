//! The seed's three-step pipe: classify → answer with voting → polish, under a 30-call ceiling.
//! The classification label becomes the next step's prompt, so step 2 is given a system message
//! that tells it what to do with a label.
//!
//! ```text
//! cargo run -p executionkit --example three_step_pipe
//! ```

mod support;

use executionkit::WithCallOptions as _;
use executionkit::{Budget, Consensus, Pipe, RefineLoop, RunContext};

#[tokio::main]
async fn main() -> Result<(), executionkit::Error> {
    let support::Endpoint { provider, offline } = support::endpoint()?;
    // 1. cheap classification: deterministic, 3 votes.
    let mut classify = Consensus::new()
        .samples(3)
        .temperature(0.0)
        .system("Classify the request as one word: billing, technical or other.");
    // 2. answer with voting, interpreting the label it is given.
    let mut answer = Consensus::new().samples(5).system(
        "You receive a support category. Write the first reply a support agent sends for it.",
    );
    // 3. polish.
    let mut polish = RefineLoop::new().target_score(0.9);
    if offline {
        classify = classify.seed(0);
        answer = answer.seed(0);
        polish = polish.seed(0);
    }
    let result = Pipe::new()
        .step(classify)
        .step(answer)
        .step(polish)
        // The seed's `TokenUsage(llm_calls=30)`: 30 calls, tokens unlimited (a zero token
        // field there means "no limit"; here it would be a limit of zero).
        .max_budget(Budget::new().max_calls(30))
        .run(
            provider.as_ref(),
            "My invoice shows two charges for the same month.",
            &RunContext::new(),
        )
        .await?;

    println!("{}", result.value);
    println!("{}", result.cost);
    if let Some(costs) = result.metadata.get("step_costs").and_then(|c| c.as_array()) {
        for (i, c) in costs.iter().enumerate() {
            println!("step {i} cost: {c}");
        }
    }
    Ok(())
}
