//! The Python names, `consensus` and `refine_loop`, as thin aliases of the builders' `run`.
//!
//! The one way to configure a pattern is its builder ([`Consensus`], [`RefineLoop`]); these
//! functions only run a configured builder, in the same argument order as
//! [`blocking`](crate::blocking), for code translated from executionkit-Py.
//!
//! ```
//! use executionkit::prelude::*;
//! use executionkit::{consensus, refine_loop};
//! # futures::executor::block_on(async {
//! let ctx = RunContext::new();
//! let p = MockProvider::new(["Paris"]);
//! let r = consensus(&Consensus::new().samples(2), &p, "Capital of France?", &ctx).await.unwrap();
//! assert_eq!(r.value, "Paris");
//! let p = MockProvider::new(["draft", "9"]);
//! assert_eq!(refine_loop(&RefineLoop::new(), &p, "Write a haiku", &ctx).await.unwrap().value, "draft");
//! # });
//! ```

use super::{Consensus, ConsensusStats, RefineLoop, RefineStats};
use crate::engine::RunContext;
use crate::error::Result;
use crate::provider::LlmProvider;
use crate::result::PatternResult;

/// Runs `pattern` on `prompt`: the same as `pattern.run(provider, prompt, ctx)`.
///
/// ```
/// use executionkit::prelude::*;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["Paris", "Paris", "Lyon"]);
/// let c = Consensus::new().samples(3);
/// let r = executionkit::consensus(&c, &p, "Capital of France?", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value, "Paris");
/// # });
/// ```
///
/// # Errors
/// Those of [`Consensus::run`].
pub async fn consensus(
    pattern: &Consensus,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<String, ConsensusStats>> {
    pattern.run(provider, prompt, ctx).await
}

/// Runs `pattern` on `prompt`: the same as `pattern.run(provider, prompt, ctx)`.
///
/// ```
/// use executionkit::prelude::*;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["draft", "9"]);
/// let r = executionkit::refine_loop(&RefineLoop::new().target_score(0.9), &p, "Write a haiku", &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!(r.value, "draft");
/// # });
/// ```
///
/// # Errors
/// Those of [`RefineLoop::run`].
pub async fn refine_loop(
    pattern: &RefineLoop,
    provider: &dyn LlmProvider,
    prompt: &str,
    ctx: &RunContext,
) -> Result<PatternResult<String, RefineStats>> {
    pattern.run(provider, prompt, ctx).await
}
