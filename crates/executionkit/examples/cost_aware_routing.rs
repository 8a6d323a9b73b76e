//! The seed's "cost-aware routing" recipe: short, tool-free questions go to a cheap model; long
//! ones, and any request tagged `tier = "best"`, go to the strong one. Every call counts in the
//! one budget, and `cost_by_provider` says where the money went.
//!
//! By default both providers are the embedded offline model (the routing still happens); point
//! them at real endpoints with the environment:
//!
//! ```text
//! cargo run -p executionkit --example cost_aware_routing
//! EK_CHEAP_URL=https://api.openai.com/v1 EK_CHEAP_MODEL=gpt-4o-mini EK_CHEAP_KEY=sk-… \
//! EK_BEST_URL=https://api.openai.com/v1 EK_BEST_MODEL=gpt-4o EK_BEST_KEY=sk-… \
//!   cargo run -p executionkit --example cost_aware_routing
//! ```

use std::sync::Arc;

use executionkit::prelude::*;
use executionkit::{OpenAiProvider, Router};

fn endpoint(prefix: &str) -> Result<Arc<dyn LlmProvider>> {
    let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
    let Some(url) = var("URL") else {
        return Ok(Arc::new(OfflineModel::new()));
    };
    let mut b = OpenAiProvider::builder(url, var("MODEL").unwrap_or_else(|| "default".to_owned()));
    if let Some(key) = var("KEY") {
        b = b.api_key(key);
    }
    Ok(Arc::new(b.build()?))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cheap = endpoint("EK_CHEAP")?;
    let best = endpoint("EK_BEST")?;
    let router = Router::builder()
        .rule(|r| r.tier == Some("best"), "best", Arc::clone(&best))
        .rule(|r| r.prompt_tokens < 2000 && !r.has_tools, "cheap", cheap)
        .default("best", best)
        .build()?;

    let ctx = RunContext::new().budget(Budget::new().max_calls(20));
    // A quick vote goes to the cheap model; the final answer is asked of the best one.
    let vote = Consensus::new()
        .samples(3)
        .seed(0)
        .run(&router, "What is 6 * 7? Answer with the number.", &ctx)
        .await?;
    let check = Consensus::new()
        .samples(1)
        .seed(0)
        .tier("best")
        .run(&router, "Is 42 equal to 6 * 7? Answer yes or no.", &ctx)
        .await?;

    println!(
        "vote:  {} (by provider: {})",
        vote.value, vote.metadata["cost_by_provider"]
    );
    println!(
        "check: {} (by provider: {})",
        check.value, check.metadata["cost_by_provider"]
    );
    println!("whole run: {}", ctx.ledger().spent());
    Ok(())
}
