//! # executionkit
//!
//! Composable LLM reasoning patterns over any OpenAI-compatible endpoint: consensus voting,
//! iterative refinement, tool loops, structured output, map-reduce, and `pipe` composition,
//! all under **one shared budget**.
//!
//! ```
//! use executionkit::Budget;
//! let budget = Budget::new().max_input_tokens(20_000).max_output_tokens(10_000).max_calls(20);
//! assert_eq!(budget.calls_limit(), Some(20));
//! ```

mod approval;
pub mod batch;
pub mod blocking;
mod engine;
mod error;
pub mod eval;
pub mod events;
#[cfg(feature = "testing")]
mod fuzzing;
pub mod guide;
mod kit;
#[cfg(feature = "otel")]
pub mod otel;
mod patterns;
mod pipe;
mod plan;
mod provider;
pub mod redact;
mod result;
pub mod telemetry;
mod text;
mod tools;
mod usage;
mod workflow;

pub use approval::{ApprovalDecision, ApprovalGate, ApprovalRequest, OnTimeout};
pub use engine::json::extract_json;
pub use engine::parallel::{gather_resilient, gather_strict};
pub use engine::stop::StopRule;
pub use engine::stream::{StreamingResult, stream_completion};
pub use engine::text_sink::TextEvent;
pub use engine::{BudgetLedger, CostTracker, Reservation, RetryPolicy, RunContext};
pub use error::{Error, ErrorKind, Result};
pub use kit::Kit;
pub use patterns::call::{consensus, refine_loop};
pub use patterns::consensus::{ConsensusSet, ConsensusSetResult};
pub use patterns::consensus::{EarlyStopStats, UscStats, VoteCount};
pub use patterns::react::{ReactCheckpoint, ReactLoop, ReactStats, ReactTermination, Summary};
pub use patterns::structured::structured;
pub use patterns::vote_keys;
pub use patterns::{CallOptions, WithCallOptions};
pub use patterns::{
    Consensus, Pattern, RefineCheckpoint, RefineLoop, StepInput, TerminationReason, VotingStrategy,
};
pub use patterns::{ConsensusStats, MapReduceStats, RefineStats, StructuredStats, TypedStep};
pub use patterns::{MapReduce, Structured, StructuredValue};
pub use pipe::{Pipe, PipeStats, StepCost};
pub use plan::{Plan, PlanStep, Planner, PlannerStats, ProposedPlan, ProposedStep};
#[cfg(feature = "offline")]
pub use provider::OfflineModel;
pub use provider::{
    AnthropicProvider, AnthropicProviderBuilder, ChatRequest, ChatStream, Choice, Failover,
    FailoverBuilder, LlmProvider, LlmResponse, LogprobSummary, Message, OpenAiProvider,
    OpenAiProviderBuilder, RateLimited, Role, Route, RouteRequest, Router, RouterBuilder,
    StreamEvent, StreamLimits, ToolCall, ToolChoice, ToolSpec, Usage,
};
#[cfg(any(test, feature = "testing"))]
pub use provider::{MockCall, MockProvider};
pub use result::{Metadata, PatternResult};
pub use tools::{Observation, ObservationKind, Tool, ToolError, ToolErrorKind};
pub use usage::{Budget, CostRates, TokenUsage, UsageOverGrant};
pub use workflow::{Step, Workflow, WorkflowCheckpoint, WorkflowContext, WorkflowStats};

/// The names most programs need, in one import: `use executionkit::prelude::*;`.
///
/// It brings the pattern builders, [`WithCallOptions`] (whose setters every builder shares),
/// the provider trait and types, the budget and the run context.
///
/// ```
/// use executionkit::prelude::*;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["yes"]);
/// let ctx = RunContext::new().budget(Budget::new().max_calls(1));
/// let r = Consensus::new().samples(1).model("m").run(&p, "ok?", &ctx).await.unwrap();
/// assert_eq!(r.value, "yes");
/// # });
/// ```
pub mod prelude {
    #[cfg(any(test, feature = "testing"))]
    pub use crate::MockProvider;
    #[cfg(feature = "offline")]
    pub use crate::OfflineModel;
    pub use crate::{
        Budget, CallOptions, Consensus, Error, LlmProvider, MapReduce, Pattern, Pipe, ReactLoop,
        RefineLoop, Result, RunContext, Structured, StructuredValue, TokenUsage, Tool,
        WithCallOptions, structured,
    };
}

/// Internals that the crate's own integration tests, benchmarks and doc examples reach: not part
/// of the API (hidden, behind the `testing` feature, and free to change in any release).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod internals {
    /// The refine loop's convergence detector.
    pub mod convergence {
        pub use crate::engine::convergence::*;
    }
    /// JSON extraction.
    pub mod json {
        pub use crate::engine::json::*;
    }
    /// The default judge.
    pub mod judge {
        pub use crate::patterns::judge::*;
    }
    /// The reply parser.
    pub mod parse {
        pub use crate::provider::parse::*;
    }
    /// Output schemas.
    pub mod schema {
        pub use crate::engine::schema::*;
    }
    /// The bodies of the fuzz targets (`fuzz/`), replayed on the committed corpus by the tests.
    pub mod fuzz {
        pub use crate::fuzzing::*;
    }
    /// Server-sent events.
    pub mod sse {
        pub use crate::provider::sse::*;
    }
    /// Vote tallies.
    pub mod voting {
        pub use crate::engine::voting::*;
    }
    /// Universal self-consistency's selection call.
    pub mod usc {
        pub use crate::patterns::usc::*;
    }
    /// Stop rules' vote book.
    pub mod stop {
        pub use crate::engine::stop::*;
    }
    /// Tool observations' truncation.
    pub mod tools {
        pub use crate::tools::{DEFAULT_TOOL_TIMEOUT, TRUNCATION_MARKER, truncate};
    }
    /// Pattern constants and helpers.
    pub mod patterns {
        pub use crate::patterns::consensus::MAX_SAMPLES;
        pub use crate::patterns::map_reduce::{DEFAULT_SEPARATOR, ITEM, MAPPED_OUTPUTS};
        pub use crate::patterns::react::{SUMMARY_PREFIX, trim_history};
    }
    /// Provider constants.
    pub mod provider {
        pub use crate::provider::{ANTHROPIC_BASE_URL, ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS};
    }
}

/// The crate version.
///
/// ```
/// assert!(executionkit::VERSION.starts_with("0."));
/// ```
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
