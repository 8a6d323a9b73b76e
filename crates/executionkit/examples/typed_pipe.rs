//! Typed steps: a structured triage hands a typed value to the next step, whose prompt is built
//! from it (checked by the compiler), then consensus and refinement write the reply, all under
//! one 30-call budget.
//!
//! ```text
//! cargo run -p executionkit --example typed_pipe
//! ```

mod support;

use executionkit::WithCallOptions as _;
use executionkit::{Budget, Consensus, Pipe, RefineLoop, RunContext, structured};

/// What the first step extracts from the request.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Triage {
    category: Category,
    /// Whether the customer is blocked right now.
    urgent: bool,
}

/// The kind of request.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)] // in the schema itself rather than behind a `$ref`
enum Category {
    Billing,
    Technical,
    Other,
}

/// The typed value of step 1 and the original request become step 2's prompt.
fn answer_prompt(t: &Triage, request: &str) -> String {
    let tone = if t.urgent { "urgent" } else { "routine" };
    let topic = match t.category {
        Category::Billing => "billing",
        Category::Technical => "technical",
        Category::Other => "general",
    };
    format!(
        "Write the first reply a support agent sends to this {tone} {topic} request:\n{request}"
    )
}

#[tokio::main]
async fn main() -> Result<(), executionkit::Error> {
    let support::Endpoint { provider, offline } = support::endpoint()?;
    let mut answer = Consensus::new().samples(5);
    let mut polish = RefineLoop::new().target_score(0.9);
    if offline {
        answer = answer.seed(0);
        polish = polish.seed(0);
    }
    let result = Pipe::new()
        // 1. a typed triage: the pipe's value is now a `Triage`
        .step_typed(structured::<Triage>())
        // the compiler checks that this function takes a `Triage`
        .then_prompt(answer_prompt)
        // 2. answer with voting, 3. polish
        .step(answer)
        .step(polish)
        .max_budget(Budget::new().max_calls(30))
        .run(
            provider.as_ref(),
            "My invoice shows two charges for the same month.",
            &RunContext::new(),
        )
        .await?;

    println!("{}", result.value);
    println!("{}", result.cost);
    // The triage as the step saw it, and every step's spend, typed.
    println!(
        "step 0: {}",
        serde_json::Value::Object(result.stats.step_metadata[0].clone())
    );
    for (i, c) in result.stats.step_costs.iter().enumerate() {
        println!("step {i} cost: {}", c.cost);
    }
    Ok(())
}
