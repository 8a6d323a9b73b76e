//! [`Reservation`]: one call's part of the budget, returned when settled or dropped.

use std::sync::Arc;

use super::{BudgetLedger, LevelGrant};
use crate::provider::Usage;

/// One reserved call. Settle it with the usage the server reported; dropping it unsettled
/// (failure, cancellation) returns the reservation and records no tokens (the call still counts).
///
/// ```
/// use std::sync::Arc;
/// use executionkit::{Budget, BudgetLedger, TokenUsage, Usage};
/// # futures::executor::block_on(async {
/// let l = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(100)));
/// let r = l.reserve("m", 60, false).await.unwrap();
/// assert_eq!(r.max_tokens(), 60);
/// drop(r); // a failed call: its 60 tokens come back, the call still counts
/// let r = l.reserve("m", 100, false).await.unwrap();
/// r.settle(Usage { input_tokens: 3, output_tokens: 7, ..Usage::default() });
/// assert_eq!(l.spent(), TokenUsage::new(3, 7, 2));
/// # });
/// ```
#[derive(Debug)]
#[must_use = "a reservation is returned when dropped"]
pub struct Reservation {
    pub(super) ledger: Arc<BudgetLedger>,
    pub(super) call: u64,
    pub(super) max_tokens: u64,
    pub(super) per_choice: u64,
    /// This ledger's part.
    pub(super) own: LevelGrant,
    /// Each ancestor's part, nearest first (empty, so no allocation, without a parent).
    pub(super) ancestors: Vec<LevelGrant>,
    pub(super) settled: bool,
}

impl Reservation {
    /// `true` when the budget has prices for this call's model, so that what
    /// [`Reservation::settle`] returns is its cost (not an unknown 0).
    pub(crate) fn priced(&self) -> bool {
        self.own.rates.is_some()
    }

    /// The output tokens this call may use in total (all choices together).
    ///
    /// ```
    /// use std::sync::Arc;
    /// # futures::executor::block_on(async {
    /// let l = Arc::new(executionkit::BudgetLedger::unlimited());
    /// assert_eq!(l.reserve("m", 64, false).await.unwrap().max_tokens(), 64);
    /// # });
    /// ```
    #[must_use]
    pub fn max_tokens(&self) -> u64 {
        self.max_tokens
    }

    /// The `max_tokens` each choice of the request may ask for.
    ///
    /// ```
    /// use std::sync::Arc;
    /// # futures::executor::block_on(async {
    /// let l = Arc::new(executionkit::BudgetLedger::unlimited());
    /// assert_eq!(l.reserve_choices("m", 64, 2, false).await.unwrap().max_tokens_per_choice(), 64);
    /// # });
    /// ```
    #[must_use]
    pub fn max_tokens_per_choice(&self) -> u64 {
        self.per_choice
    }

    /// The run-unique number of this call (1-based, in reservation order).
    ///
    /// ```
    /// use std::sync::Arc;
    /// # futures::executor::block_on(async {
    /// let l = Arc::new(executionkit::BudgetLedger::unlimited());
    /// assert_eq!(l.reserve("m", 1, false).await.unwrap().call(), 1);
    /// assert_eq!(l.reserve("m", 1, false).await.unwrap().call(), 2);
    /// # });
    /// ```
    #[must_use]
    pub fn call(&self) -> u64 {
        self.call
    }

    /// Records the usage as reported (even above the grant: never clamped) and returns what was
    /// not used; returns the call's cost in USD (0 without prices).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, CostRates, BudgetLedger, Usage};
    /// # futures::executor::block_on(async {
    /// let b = Budget::new().default_price(CostRates::new(1.0, 2.0).unwrap());
    /// let l = Arc::new(BudgetLedger::new(b));
    /// let usd = l.reserve("m", 8, false).await.unwrap()
    ///     .settle(Usage { input_tokens: 1_000_000, ..Usage::default() });
    /// assert_eq!(usd, 1.0);
    /// assert_eq!(l.spent_usd(), Some(1.0));
    /// # });
    /// ```
    pub fn settle(mut self, usage: Usage) -> f64 {
        self.settled = true;
        self.ledger.release(&self, Some(usage))
    }
}

impl Reservation {
    /// Returns the reservation and the call: the call never reached a server (it was cancelled
    /// before its request was handed to a connection), so it is not counted.
    pub(crate) fn unsent(mut self) {
        self.settled = true;
        self.ledger.release_as(&self, None, true);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger.release(self, None);
        }
    }
}
