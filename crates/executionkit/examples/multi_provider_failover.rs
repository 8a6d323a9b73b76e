//! The seed's "multi-provider failover" recipe: a consensus over a chain of providers, where a
//! provider that is down, rate limited or refusing the key hands over to the next, and every
//! attempt on every provider is counted in the one budget.
//!
//! By default the primary is an endpoint nobody listens on (127.0.0.1, port 9) and the backup
//! the embedded offline model, so the example runs anywhere; point them at real endpoints with
//! the environment:
//!
//! ```text
//! cargo run -p executionkit --example multi_provider_failover
//! EK_PRIMARY_URL=https://api.openai.com/v1 EK_PRIMARY_MODEL=gpt-4o-mini EK_PRIMARY_KEY=sk-… \
//! EK_BACKUP_URL=http://127.0.0.1:8081/v1 EK_BACKUP_MODEL=m \
//!   cargo run -p executionkit --example multi_provider_failover
//! ```

use std::time::Duration;

use executionkit::prelude::*;
use executionkit::{Failover, OpenAiProvider};

fn endpoint(prefix: &str, url: &str) -> Result<OpenAiProvider> {
    let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
    let mut b = OpenAiProvider::builder(url, var("MODEL").unwrap_or_else(|| "default".to_owned()))
        .connect_timeout(Duration::from_secs(2));
    if let Some(key) = var("KEY") {
        b = b.api_key(key);
    }
    b.build()
}

#[tokio::main]
async fn main() -> Result<()> {
    let primary_url =
        std::env::var("EK_PRIMARY_URL").unwrap_or_else(|_| "http://127.0.0.1:9/v1".to_owned());
    let mut chain = Failover::builder().provider("primary", endpoint("EK_PRIMARY", &primary_url)?);
    chain = match std::env::var("EK_BACKUP_URL") {
        Ok(url) => chain.provider("backup", endpoint("EK_BACKUP", &url)?),
        Err(_) => chain.provider("backup", OfflineModel::new()),
    };
    let chain = chain.build()?;

    // One budget for the whole run, whichever provider answers: 10 calls at most.
    let ctx = RunContext::new().budget(Budget::new().max_calls(10));
    let result = Consensus::new()
        .samples(3)
        .max_concurrency(1)
        .seed(0)
        .run(&chain, "What is 6 * 7? Answer with the number.", &ctx)
        .await?;

    println!("answer: {}", result.value);
    println!("cost:   {}", result.cost);
    println!("by provider: {}", result.metadata["cost_by_provider"]);
    Ok(())
}
