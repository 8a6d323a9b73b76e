//! The budget ledger: one per run, shared by every pattern and step in it.
//!
//! * **Calls** are reserved before dispatch, so concurrent samples can never overshoot the call
//!   limit (retries count as calls).
//! * **Output tokens** are reserved too: a call reserves `min(max_tokens, output tokens not yet
//!   spent or reserved)` and sends that as its `max_tokens`; the unused part returns when the
//!   call finishes. With nothing left and calls in flight, a call waits for their returns; with
//!   nothing left and nothing in flight it fails. No grant ever goes past the output limit.
//! * **Input tokens** are checked before dispatch (spent < limit). A call in flight can overshoot
//!   by its own prompt: the one soft limit.
//! * **Money** is tracked when prices are known; its output part is reserved like output tokens
//!   and its input part checked like input tokens.
//! * **Usage above the grant.** A server may report more output tokens than the `max_tokens` it
//!   was sent. That usage is recorded as reported (the spend is the truth, never clamped), the
//!   engine flags it ([`UsageOverGrant`](crate::UsageOverGrant)), and once any limit is passed
//!   (spent > limit, through such usage or the soft input limit) every later reservation, retry
//!   or not, fails with `budget_exhausted` before dispatch, without waiting for calls in flight.
//! * **Nesting.** A ledger made with [`BudgetLedger::child`] (a pipe with its own `max_budget`
//!   inside a budgeted run) reserves every call in itself and in each ancestor, all at once under
//!   their locks (taken child first, so two nested runs never wait on each other's locks): the
//!   call goes only when every level has room, its grant is the smallest any level allows, and
//!   settling or dropping it returns and records at every level. So an inner limit holds, every
//!   outer limit holds, and an outer ledger's spend includes its children's.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::error::{Error, ErrorKind, Result};
use crate::events::Remaining;
use crate::provider::Usage;
use crate::usage::{Budget, CostRates, TokenUsage};

mod reservation;
#[cfg(test)]
mod tests;
mod tracker;

pub use reservation::Reservation;
pub use tracker::CostTracker;

/// The shared spend and limits of one run.
///
/// ```
/// use std::sync::Arc;
/// use executionkit::{Budget, BudgetLedger};
/// # futures::executor::block_on(async {
/// let ledger = Arc::new(BudgetLedger::new(Budget::new().max_calls(1)));
/// let r = ledger.reserve("m", 100, false).await.unwrap();
/// r.settle(executionkit::Usage { input_tokens: 5, output_tokens: 3, ..Default::default() });
/// let err = ledger.reserve("m", 100, false).await.unwrap_err();
/// assert!(err.is_budget_exhausted());
/// assert_eq!(err.metadata()["exhausted"], "llm_calls");
/// assert_eq!(ledger.spent().llm_calls, 1);
/// # });
/// ```
#[derive(Debug)]
pub struct BudgetLedger {
    budget: Budget,
    state: Mutex<State>,
    /// The enclosing run's ledger, which every reservation here also reserves from.
    parent: Option<Arc<BudgetLedger>>,
    /// How many ancestors this ledger has (0 for a run's own ledger).
    depth: u32,
    /// Used at the root only: every reservation holds a part of the root, so every release
    /// (the only thing that can let a waiter through) passes there.
    returned: Notify,
    /// Reservations waiting for a return (a release wakes waiters only when there are some).
    /// Root only, like `returned`.
    waiting: AtomicUsize,
    /// Root only: call numbers are unique across the whole tree.
    next_call: AtomicU64,
}

/// Counts one waiting reservation while it lives (a cancelled wait is uncounted too).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct State {
    spent: TokenUsage,
    usd: f64,
    reserved_output: u64,
    reserved_usd: f64,
    in_flight: u64,
}

/// The price and reserved dollars of one call at one level of the ledger tree.
#[derive(Debug, Clone, Copy)]
struct LevelGrant {
    usd_reserved: f64,
    rates: Option<CostRates>,
}

/// Which dimension of a budget tripped, at which level: `level` is `None` for a ledger without
/// a parent (its errors keep their historical shape), else how many levels above the
/// reserving ledger the tripped one is (0: its own limit, 1: the enclosing run's, …).
fn exhausted(budget: &Budget, field: &str, label: &str, retry: bool, level: Option<u32>) -> Error {
    let when = if retry {
        "before retry dispatch"
    } else {
        "before dispatch"
    };
    let whose = match level {
        Some(l) if l > 0 => " (an enclosing budget)",
        _ => "",
    };
    let e = Error::new(
        ErrorKind::BudgetExhausted,
        format!("{label} budget{whose} exhausted {when}"),
    )
    .with_metadata("budget", budget.to_json())
    .with_metadata("exhausted", field);
    match level {
        Some(l) => e.with_metadata("budget_level", l),
        None => e,
    }
}

impl BudgetLedger {
    /// A ledger enforcing `budget`.
    ///
    /// ```
    /// let l = executionkit::BudgetLedger::new(executionkit::Budget::new());
    /// assert!(l.spent().is_zero());
    /// ```
    #[must_use]
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            state: Mutex::new(State::default()),
            parent: None,
            depth: 0,
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            next_call: AtomicU64::new(1),
        }
    }

    /// A ledger enforcing `budget` inside `parent`: every call reserved here is also reserved
    /// in `parent` (and its ancestors), so both limits hold and the parent's spend includes this
    /// ledger's. A `budget` without prices takes the parent's, so both price calls alike.
    ///
    /// A reservation refused by an ancestor is a `budget_exhausted` error naming that level's
    /// limits (`metadata.budget`) and how far up it is (`metadata.budget_level`: 0 is this
    /// ledger, 1 its parent, …); nothing is taken at any level then.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, BudgetLedger, Usage};
    /// # futures::executor::block_on(async {
    /// let outer = Arc::new(BudgetLedger::new(Budget::new().max_calls(2)));
    /// let inner = Arc::new(BudgetLedger::child(outer.clone(), Budget::new().max_calls(30)));
    /// inner.reserve("m", 10, false).await.unwrap().settle(Usage { input_tokens: 4, output_tokens: 2, ..Usage::default() });
    /// inner.reserve("m", 10, false).await.unwrap().settle(Usage { input_tokens: 4, output_tokens: 2, ..Usage::default() });
    /// // The inner limit (30) has room; the outer one (2) does not.
    /// let err = inner.reserve("m", 10, false).await.unwrap_err();
    /// assert_eq!(err.metadata()["budget_level"], 1);
    /// assert_eq!(err.metadata()["exhausted"], "llm_calls");
    /// assert_eq!(outer.spent(), inner.spent()); // the outer spend includes the inner one
    /// # });
    /// ```
    #[must_use]
    pub fn child(parent: Arc<BudgetLedger>, mut budget: Budget) -> Self {
        if !budget.has_prices() {
            budget.inherit_prices(&parent.budget);
        }
        Self {
            budget,
            state: Mutex::new(State::default()),
            depth: parent.depth + 1,
            parent: Some(parent),
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            next_call: AtomicU64::new(1),
        }
    }

    /// The enclosing ledger, for one made with [`child`](Self::child).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, BudgetLedger};
    /// let outer = Arc::new(BudgetLedger::unlimited());
    /// let inner = BudgetLedger::child(outer.clone(), Budget::new().max_calls(3));
    /// assert!(Arc::ptr_eq(inner.parent().unwrap(), &outer));
    /// assert!(outer.parent().is_none());
    /// ```
    #[must_use]
    pub fn parent(&self) -> Option<&Arc<BudgetLedger>> {
        self.parent.as_ref()
    }

    /// The outermost ledger (`self` without a parent).
    fn root(&self) -> &BudgetLedger {
        let mut l = self;
        while let Some(p) = &l.parent {
            l = p;
        }
        l
    }

    /// A ledger with no limits.
    ///
    /// ```
    /// assert!(executionkit::BudgetLedger::unlimited().budget().is_unlimited());
    /// ```
    #[must_use]
    pub fn unlimited() -> Self {
        Self::new(Budget::new())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent (each update
        // is a few plain additions), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits.
    ///
    /// ```
    /// let l = executionkit::BudgetLedger::new(executionkit::Budget::new().max_calls(2));
    /// assert_eq!(l.budget().calls_limit(), Some(2));
    /// ```
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Everything spent so far (calls include those in flight).
    ///
    /// ```
    /// assert_eq!(executionkit::BudgetLedger::unlimited().spent().llm_calls, 0);
    /// ```
    #[must_use]
    pub fn spent(&self) -> TokenUsage {
        self.lock().spent
    }

    /// Dollars spent so far, when prices are known.
    ///
    /// ```
    /// assert_eq!(executionkit::BudgetLedger::unlimited().spent_usd(), None);
    /// ```
    #[must_use]
    pub fn spent_usd(&self) -> Option<f64> {
        self.budget.has_prices().then(|| self.lock().usd)
    }

    /// What is left of each limit: for a [`child`](Self::child) ledger, the least left at
    /// any level (what a call reserved here can still use).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, BudgetLedger};
    /// let l = BudgetLedger::new(Budget::new().max_calls(4));
    /// assert_eq!(l.remaining().llm_calls, Some(4));
    /// assert_eq!(l.remaining().input_tokens, None);
    /// let inner = BudgetLedger::child(Arc::new(l), Budget::new().max_calls(30).max_input_tokens(9));
    /// assert_eq!((inner.remaining().llm_calls, inner.remaining().input_tokens), (Some(4), Some(9)));
    /// ```
    #[must_use]
    pub fn remaining(&self) -> Remaining {
        let own = self.own_remaining();
        match &self.parent {
            None => own,
            Some(p) => {
                let up = p.remaining();
                Remaining {
                    input_tokens: min_limit(own.input_tokens, up.input_tokens),
                    output_tokens: min_limit(own.output_tokens, up.output_tokens),
                    llm_calls: min_limit(own.llm_calls, up.llm_calls),
                    usd: match (own.usd, up.usd) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                }
            }
        }
    }

    fn own_remaining(&self) -> Remaining {
        let s = self.lock();
        let b = &self.budget;
        Remaining {
            input_tokens: b
                .input_tokens_limit()
                .map(|l| l.saturating_sub(s.spent.input_tokens)),
            output_tokens: b
                .output_tokens_limit()
                .map(|l| l.saturating_sub(s.spent.output_tokens + s.reserved_output)),
            llm_calls: b.calls_limit().map(|l| l.saturating_sub(s.spent.llm_calls)),
            usd: b.usd_limit().map(|l| (l - s.usd - s.reserved_usd).max(0.0)),
        }
    }

    /// Reserves one call for `model` that wants up to `max_tokens` output tokens.
    ///
    /// Returns the reservation (its [`Reservation::max_tokens`] is what the request may ask
    /// for), or a `budget_exhausted` error whose metadata names the limits (`budget`) and the
    /// one that tripped (`exhausted`). `retry` marks a retry attempt: only the call limit and
    /// the reserved limits (output tokens, dollars) are checked, plus the input limit once it is
    /// passed, and the message says "before retry dispatch". Waits while output tokens (or
    /// dollars) are all reserved by calls in flight; fails at once when what is already spent
    /// reaches a limit (no return can free anything then).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, BudgetLedger, Usage};
    /// # futures::executor::block_on(async {
    /// let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(10)));
    /// let r = ledger.reserve("m", 64, false).await.unwrap();
    /// assert_eq!(r.max_tokens(), 10); // clamped to what is left
    /// r.settle(Usage { input_tokens: 3, output_tokens: 4, ..Usage::default() });
    /// assert_eq!(ledger.remaining().output_tokens, Some(6)); // the unused 6 came back
    /// # });
    /// ```
    pub async fn reserve(
        self: &Arc<Self>,
        model: &str,
        max_tokens: u64,
        retry: bool,
    ) -> Result<Reservation> {
        self.reserve_choices(model, max_tokens, 1, retry).await
    }

    /// Like [`reserve`](Self::reserve) for a request asking `n` choices of up to
    /// `max_tokens` output tokens each. The grant is a whole number of tokens per choice
    /// ([`Reservation::max_tokens_per_choice`]), so `n` choices can never overshoot the output
    /// limit; with less than one token per choice left the call waits or fails.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, BudgetLedger};
    /// # futures::executor::block_on(async {
    /// let ledger = Arc::new(BudgetLedger::new(Budget::new().max_output_tokens(10)));
    /// let r = ledger.reserve_choices("m", 64, 3, false).await.unwrap();
    /// assert_eq!((r.max_tokens_per_choice(), r.max_tokens()), (3, 9));
    /// # });
    /// ```
    pub async fn reserve_choices(
        self: &Arc<Self>,
        model: &str,
        max_tokens: u64,
        n: u64,
        retry: bool,
    ) -> Result<Reservation> {
        let n = n.max(1);
        let per_choice = max_tokens.max(1);
        // Most reservations succeed at once; only one that must wait registers for returns.
        if let Some(r) = self.try_reserve(model, per_choice, n, retry)? {
            return Ok(r);
        }
        // Boxed: the rare waiting state (tokio's `Notified`) would sit in every call's future
        // (docs/architecture.md, "Future sizes").
        Box::pin(self.wait_and_reserve(model, per_choice, n, retry)).await
    }

    /// Waits for returns until the reservation fits (or can never fit).
    async fn wait_and_reserve(
        self: &Arc<Self>,
        model: &str,
        per_choice: u64,
        n: u64,
        retry: bool,
    ) -> Result<Reservation> {
        // Waits at the root: whatever level is full, only a release there can free room, and
        // every release reaches the root. Counted before the state is read again under the
        // locks, so a release that follows that read sees the count and wakes this waiter.
        let root = self.root();
        let _waiting = Waiting::new(&root.waiting);
        loop {
            let notified = root.returned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_reserve(model, per_choice, n, retry)? {
                Some(r) => return Ok(r),
                None => notified.await,
            }
        }
    }

    fn rates(&self, model: &str) -> Result<Option<CostRates>> {
        // A NaN or negative money limit, or one without prices, is the caller's mistake.
        self.budget.validate()?;
        let rates = self.budget.rates_for(model);
        if rates.is_none() && self.budget.usd_limit().is_some() {
            return Err(Error::invalid_argument(
                "max_usd",
                format!("the budget has a USD limit but no price for model '{model}'"),
            ));
        }
        Ok(rates)
    }

    /// One attempt under the locks of this ledger and its ancestors: `Ok(None)` means "wait
    /// for a return".
    fn try_reserve(
        self: &Arc<Self>,
        model: &str,
        per_choice: u64,
        n: u64,
        retry: bool,
    ) -> Result<Option<Reservation>> {
        let mut ancestors = Vec::new();
        let Some((per, own)) =
            self.reserve_level(model, per_choice, n, retry, 0, &mut ancestors)?
        else {
            return Ok(None);
        };
        Ok(Some(Reservation {
            ledger: Arc::clone(self),
            call: self.root().next_call.fetch_add(1, Ordering::Relaxed),
            max_tokens: per.saturating_mul(n),
            per_choice: per,
            own,
            ancestors,
            settled: false,
        }))
    }

    /// Checks this level under its lock, then (still holding it) the levels above; when all
    /// fit, takes the call at each level on the way back down with the smallest grant any
    /// level allowed. Returns that grant per choice and this level's part; the ancestors'
    /// parts are pushed to `ancestors`, nearest first. Nothing is taken unless every level fits.
    fn reserve_level(
        &self,
        model: &str,
        per_choice: u64,
        n: u64,
        retry: bool,
        level: u32,
        ancestors: &mut Vec<LevelGrant>,
    ) -> Result<Option<(u64, LevelGrant)>> {
        let rates = self.rates(model)?;
        let mut s = self.lock();
        let Some(per) = self.check(&s, rates, per_choice, n, retry, level)? else {
            return Ok(None);
        };
        let per = match &self.parent {
            None => per,
            Some(p) => {
                let Some((per, up)) =
                    p.reserve_level(model, per, n, retry, level + 1, ancestors)?
                else {
                    return Ok(None);
                };
                // Pushed after the parent's own ancestors: reverse to nearest first below.
                ancestors.push(up);
                if level == 0 {
                    ancestors.reverse();
                }
                per
            }
        };
        let grant = per.saturating_mul(n);
        let usd_reserved = match (self.budget.usd_limit(), rates) {
            (Some(_), Some(r)) => r.output_usd(grant),
            _ => 0.0,
        };
        s.spent.llm_calls += 1;
        s.in_flight += 1;
        // Kept at every level, limit or not: a workflow checkpoint reports it.
        s.reserved_output += grant;
        s.reserved_usd += usd_reserved;
        Ok(Some((
            per,
            LevelGrant {
                usd_reserved,
                rates,
            },
        )))
    }

    /// Whether one call fits this level's limits: the grant per choice it allows (at most
    /// `per_choice`), `None` to wait for a return, or the `budget_exhausted` error.
    fn check(
        &self,
        s: &State,
        rates: Option<CostRates>,
        per_choice: u64,
        n: u64,
        retry: bool,
        level: u32,
    ) -> Result<Option<u64>> {
        let b = &self.budget;
        let level = (self.depth > 0 || level > 0).then_some(level);
        // Nothing left, but calls in flight may return some: wait. Nothing in flight: fail.
        let wait_or_fail = |field: &str, label: &str| {
            if s.in_flight > 0 {
                Ok(None)
            } else {
                Err(exhausted(b, field, label, retry, level))
            }
        };
        if let Some(limit) = b.calls_limit() {
            if s.spent.llm_calls >= limit {
                return Err(exhausted(b, "llm_calls", "LLM call", retry, level));
            }
        }
        if let Some(limit) = b.input_tokens_limit() {
            // A first attempt needs input left; a retry is refused once the limit is passed.
            if s.spent.input_tokens > limit || (!retry && s.spent.input_tokens >= limit) {
                return Err(exhausted(b, "input_tokens", "Input token", retry, level));
            }
        }
        let mut per = per_choice;
        if let Some(limit) = b.output_tokens_limit() {
            // Spent alone uses it all (a server reported more than it was granted, or the
            // grants were used in full): no return can free anything, so do not wait.
            if s.spent.output_tokens >= limit {
                return Err(exhausted(b, "output_tokens", "Output token", retry, level));
            }
            let free = limit.saturating_sub(s.spent.output_tokens + s.reserved_output);
            if free / n == 0 {
                return wait_or_fail("output_tokens", "Output token");
            }
            per = per.min(free / n);
        }
        if let (Some(limit), Some(r)) = (b.usd_limit(), rates) {
            if s.usd >= limit {
                return Err(exhausted(b, "usd", "USD", retry, level));
            }
            let free = limit - s.usd - s.reserved_usd;
            if free.is_nan() || free <= 0.0 {
                return wait_or_fail("usd", "USD");
            }
            if r.output_per_million > 0.0 {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let affordable = (free * 1e6 / r.output_per_million / n as f64).floor() as u64;
                if affordable == 0 {
                    return wait_or_fail("usd", "USD");
                }
                per = per.min(affordable);
            }
        }
        Ok(Some(per))
    }

    /// The output tokens granted to calls in flight (reserved, not yet returned).
    ///
    /// ```
    /// use std::sync::Arc;
    /// # futures::executor::block_on(async {
    /// let l = Arc::new(executionkit::BudgetLedger::unlimited());
    /// let r = l.reserve("m", 64, false).await.unwrap();
    /// assert_eq!(l.reserved_output_tokens(), 64);
    /// drop(r);
    /// assert_eq!(l.reserved_output_tokens(), 0);
    /// # });
    /// ```
    #[must_use]
    pub fn reserved_output_tokens(&self) -> u64 {
        self.lock().reserved_output
    }

    /// Records spend made outside this ledger (a resumed run's earlier spend, from a
    /// [`WorkflowCheckpoint`](crate::WorkflowCheckpoint)) here and at every level above, as if
    /// its calls had run here: later reservations see it, so a resumed run stays within the
    /// limits in total. `usd` is added at the levels that know prices. Nothing is refused: spend
    /// past a limit makes every later reservation fail with `budget_exhausted`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use executionkit::{Budget, BudgetLedger, TokenUsage};
    /// # futures::executor::block_on(async {
    /// let outer = Arc::new(BudgetLedger::new(Budget::new().max_calls(3)));
    /// let inner = BudgetLedger::child(outer.clone(), Budget::new());
    /// inner.charge(TokenUsage::new(10, 5, 3), None);
    /// assert_eq!(outer.spent(), TokenUsage::new(10, 5, 3));
    /// let inner = Arc::new(inner);
    /// assert!(inner.reserve("m", 8, false).await.unwrap_err().is_budget_exhausted());
    /// # });
    /// ```
    pub fn charge(&self, usage: TokenUsage, usd: Option<f64>) {
        let mut level = Some(self);
        while let Some(l) = level {
            let mut s = l.lock();
            s.spent += usage;
            if let (Some(usd), true) = (usd, l.budget.has_prices()) {
                s.usd += usd;
            }
            drop(s);
            level = l.parent.as_deref();
        }
    }

    /// Returns `r` at this level and every level above, recording `usage` at each; wakes
    /// waiters once every level is updated. Returns the call's cost at this level's prices.
    fn release(&self, r: &Reservation, usage: Option<Usage>) -> f64 {
        self.release_as(r, usage, false)
    }

    /// [`release`](Self::release); with `unsent`, the call is given back too (it never reached
    /// a server: [`Reservation::unsent`]).
    fn release_as(&self, r: &Reservation, usage: Option<Usage>, unsent: bool) -> f64 {
        let usd = self.release_level(r.max_tokens, r.own, usage, unsent);
        let mut level = self.parent.as_deref();
        for grant in &r.ancestors {
            let Some(l) = level else { break };
            l.release_level(r.max_tokens, *grant, usage, unsent);
            level = l.parent.as_deref();
        }
        // Read after the locks are released: a waiter counts itself before it reads the state.
        let root = self.root();
        if root.waiting.load(Ordering::SeqCst) > 0 {
            root.returned.notify_waiters();
        }
        usd
    }

    fn release_level(
        &self,
        granted: u64,
        grant: LevelGrant,
        usage: Option<Usage>,
        unsent: bool,
    ) -> f64 {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if unsent {
            s.spent.llm_calls = s.spent.llm_calls.saturating_sub(1);
        }
        s.reserved_output = s.reserved_output.saturating_sub(granted);
        s.reserved_usd = (s.reserved_usd - grant.usd_reserved).max(0.0);
        let mut usd = 0.0;
        if let Some(u) = usage {
            let tokens = TokenUsage::from(u);
            s.spent += tokens;
            if let Some(rates) = grant.rates {
                usd = rates.usd(&tokens);
                s.usd += usd;
            }
        }
        usd
    }
}

fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
