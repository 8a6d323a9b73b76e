//! The OpenAI-compatible HTTP provider (placeholder until implemented).
use std::time::Duration;

use async_trait::async_trait;

use super::{ChatRequest, LlmProvider, LlmResponse};
use crate::error::{Error, ErrorKind, Result};

/// The OpenAI-compatible HTTP provider.
#[derive(Clone)]
pub struct Provider {
    model: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("model", &self.model).finish()
    }
}

/// Builds a [`Provider`].
#[derive(Debug, Clone)]
pub struct ProviderBuilder {
    model: String,
    timeout: Duration,
}

impl Provider {
    /// Starts a builder.
    #[must_use]
    pub fn builder(base_url: impl Into<String>, model: impl Into<String>) -> ProviderBuilder {
        let _ = base_url.into();
        ProviderBuilder {
            model: model.into(),
            timeout: Duration::from_secs(120),
        }
    }
}

impl ProviderBuilder {
    /// Builds the provider.
    pub fn build(self) -> Result<Provider> {
        let _ = self.timeout;
        Ok(Provider { model: self.model })
    }
}

#[async_trait]
impl LlmProvider for Provider {
    fn model(&self) -> &str {
        &self.model
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        Err(Error::new(ErrorKind::Provider, "not implemented"))
    }
}
