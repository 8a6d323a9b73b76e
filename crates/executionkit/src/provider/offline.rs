//! The embedded offline model (placeholder until implemented).
use async_trait::async_trait;

use super::{ChatRequest, LlmProvider, LlmResponse};
use crate::error::Result;

/// The embedded offline model: deterministic, no weights, no network. For demos, examples and
/// tests only.
#[derive(Debug, Clone, Default)]
pub struct OfflineModel {}

impl OfflineModel {
    /// The offline model.
    #[must_use]
    pub fn new() -> Self {
        Self {}
    }
}

#[async_trait]
impl LlmProvider for OfflineModel {
    fn model(&self) -> &str {
        "offline"
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        Ok(LlmResponse::text("offline"))
    }
}
