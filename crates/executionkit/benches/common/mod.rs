//! What the overhead benches share: a provider that does nothing and the runtime `ek` uses.

use async_trait::async_trait;
use executionkit::{ChatRequest, LlmProvider, LlmResponse};

/// Answers every request with the same response and records nothing.
#[derive(Debug)]
pub struct Noop(pub LlmResponse);

#[async_trait]
impl LlmProvider for Noop {
    fn model(&self) -> &str {
        "m"
    }

    async fn complete(&self, _request: &ChatRequest) -> executionkit::Result<LlmResponse> {
        Ok(self.0.clone())
    }
}

/// A current-thread runtime, as `ek` runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
