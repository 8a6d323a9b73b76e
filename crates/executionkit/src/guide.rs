//! Guides: the Markdown files under `docs/`, included here so that every Rust example in them
//! is compiled and run by `cargo test --doc`.

#[doc = include_str!("../../../docs/guide-pipe.md")]
pub mod pipe {}

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub mod readme {}

#[doc = include_str!("../../../docs/guide-consensus-refine.md")]
pub mod consensus_refine {}

#[doc = include_str!("../../../docs/guide-react-kit.md")]
pub mod react_kit {}

#[doc = include_str!("../../../docs/guide-providers.md")]
pub mod providers {}

#[doc = include_str!("../../../docs/guide-consensus-set.md")]
pub mod consensus_set {}

#[doc = include_str!("../../../docs/guide-workflow.md")]
pub mod workflow {}

#[doc = include_str!("../../../docs/guide-evals.md")]
pub mod evals {}

#[doc = include_str!("../../../docs/guide-batch.md")]
pub mod batch {}

#[cfg(feature = "otel")]
#[doc = include_str!("../../../docs/guide-tracing.md")]
pub mod traces {}
