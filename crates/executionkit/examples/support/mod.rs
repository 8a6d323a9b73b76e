//! Endpoint selection shared by the examples, by the rules of `ek` (docs/cli.md):
//! `EXECUTIONKIT_BASE_URL` + `EXECUTIONKIT_MODEL` pick a real endpoint; the key is
//! `EXECUTIONKIT_API_KEY`, or `OPENAI_API_KEY` only when the host is `api.openai.com`.
//! Without an endpoint the examples run on the embedded offline model.

use std::sync::Arc;

use executionkit::{LlmProvider, OfflineModel, OpenAiProvider};

/// The provider the example runs on, and whether it is the offline model (which then gets
/// `seed 0`, so consensus samples differ but the run is reproducible).
pub struct Endpoint {
    pub provider: Arc<dyn LlmProvider>,
    pub offline: bool,
}

/// Reads the environment.
pub fn endpoint() -> executionkit::Result<Endpoint> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let (Some(base_url), Some(model)) = (var("EXECUTIONKIT_BASE_URL"), var("EXECUTIONKIT_MODEL"))
    else {
        eprintln!(
            "no endpoint configured; using the embedded offline model \
             (set EXECUTIONKIT_BASE_URL and EXECUTIONKIT_MODEL to use a real one)"
        );
        return Ok(Endpoint {
            provider: Arc::new(OfflineModel::new()),
            offline: true,
        });
    };
    let key = var("EXECUTIONKIT_API_KEY")
        .or_else(|| var("OPENAI_API_KEY").filter(|_| host(&base_url) == "api.openai.com"));
    let mut builder = OpenAiProvider::builder(base_url, model);
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    Ok(Endpoint {
        provider: Arc::new(builder.build()?),
        offline: false,
    })
}

/// The host of `url` (`https://api.openai.com/v1` → `api.openai.com`), lower-cased.
fn host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    host_port
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}
