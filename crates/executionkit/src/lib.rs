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

pub mod approval;
pub mod blocking;
pub mod engine;
pub mod error;
pub mod events;
pub mod guide;
pub mod kit;
pub mod patterns;
pub mod pipe;
pub mod provider;
pub mod redact;
pub mod result;
pub mod telemetry;
pub mod tools;
pub mod usage;

pub use approval::{ApprovalDecision, ApprovalGate, ApprovalRequest};
pub use engine::json::extract_json;
pub use engine::stream::{StreamingResult, stream_completion};
pub use engine::{RetryPolicy, RunContext};
pub use error::{Error, ErrorKind, Result};
pub use kit::{Kit, RateLimited};
pub use patterns::call::{consensus, refine_loop};
pub use patterns::react::ReactLoop;
pub use patterns::{CallOptions, WithCallOptions};
pub use patterns::{
    Consensus, Pattern, RefineCheckpoint, RefineLoop, StepInput, TerminationReason, VotingStrategy,
};
pub use patterns::{ConsensusStats, MapReduceStats, RefineStats, StructuredStats, TypedStep};
pub use patterns::{MapReduce, Structured, StructuredValue, structured};
pub use pipe::{Pipe, PipeStats};
pub use provider::{
    AnthropicProvider, AnthropicProviderBuilder, ChatRequest, Choice, LlmProvider, LlmResponse,
    Message, MockProvider, OfflineModel, Provider, ProviderBuilder, Role, StreamEvent, ToolCall,
    ToolChoice, ToolSpec,
};
pub use result::{Metadata, PatternResult};
pub use tools::Tool;
pub use usage::{Budget, CostRates, TokenUsage, UsageOverGrant};

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
    pub use crate::{
        Budget, CallOptions, Consensus, Error, LlmProvider, MapReduce, MockProvider, Pattern, Pipe,
        ReactLoop, RefineLoop, Result, RunContext, Structured, StructuredValue, TokenUsage, Tool,
        WithCallOptions, structured,
    };
}

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
