//! The machinery under the patterns: the budget ledger, retries, the checked call path, voting
//! and convergence. Nothing here knows a pattern.

pub mod budget;
pub mod call;
pub(crate) mod convergence;
pub(crate) mod json;
pub mod parallel;
pub mod retry;
pub(crate) mod schema;
pub mod stop;
pub mod stream;
pub mod text_sink;
pub(crate) mod voting;

pub use budget::{BudgetLedger, CostTracker, Reservation};
pub use call::RunContext;
pub(crate) use call::seal;
pub use retry::RetryPolicy;
