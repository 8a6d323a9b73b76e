//! The machinery under the patterns: the budget ledger, retries, the checked call path, voting
//! and convergence. Nothing here knows a pattern.

pub mod budget;
pub mod call;
pub mod convergence;
pub mod json;
pub mod parallel;
pub mod retry;
pub mod schema;
pub mod stream;
pub mod voting;

pub use budget::{BudgetLedger, CostTracker, Reservation};
pub use call::RunContext;
pub(crate) use call::seal;
pub use retry::RetryPolicy;
pub use voting::VotingStrategy;
