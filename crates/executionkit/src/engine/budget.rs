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
use crate::usage::{Budget, CostRates, TokenUsage, UsageOverGrant};

/// The shared spend and limits of one run.
///
/// ```
/// use std::sync::Arc;
/// use executionkit::{Budget, engine::BudgetLedger};
/// # futures::executor::block_on(async {
/// let ledger = Arc::new(BudgetLedger::new(Budget::new().max_calls(1)));
/// let r = ledger.reserve("m", 100, false).await.unwrap();
/// r.settle(executionkit::provider::Usage { input_tokens: 5, output_tokens: 3, ..Default::default() });
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
    /// let l = executionkit::engine::BudgetLedger::new(executionkit::Budget::new());
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
    /// use executionkit::{Budget, engine::BudgetLedger, provider::Usage};
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
    /// use executionkit::{Budget, engine::BudgetLedger};
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
    /// assert!(executionkit::engine::BudgetLedger::unlimited().budget().is_unlimited());
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
    /// let l = executionkit::engine::BudgetLedger::new(executionkit::Budget::new().max_calls(2));
    /// assert_eq!(l.budget().calls_limit(), Some(2));
    /// ```
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Everything spent so far (calls include those in flight).
    ///
    /// ```
    /// assert_eq!(executionkit::engine::BudgetLedger::unlimited().spent().llm_calls, 0);
    /// ```
    #[must_use]
    pub fn spent(&self) -> TokenUsage {
        self.lock().spent
    }

    /// Dollars spent so far, when prices are known.
    ///
    /// ```
    /// assert_eq!(executionkit::engine::BudgetLedger::unlimited().spent_usd(), None);
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
    /// use executionkit::{Budget, engine::BudgetLedger};
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
    /// use executionkit::{Budget, engine::BudgetLedger, provider::Usage};
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
    /// use executionkit::{Budget, engine::BudgetLedger};
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
        // Boxed: inline, the waiting state (tokio's `Notified`) would sit in every call's
        // future, and make it too large for the allocator's fast size classes.
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
        if self.budget.output_tokens_limit().is_some() {
            s.reserved_output += grant;
        }
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

    /// Returns `r` at this level and every level above, recording `usage` at each; wakes
    /// waiters once every level is updated. Returns the call's cost at this level's prices.
    fn release(&self, r: &Reservation, usage: Option<Usage>) -> f64 {
        let usd = self.release_level(r.max_tokens, r.own, usage);
        let mut level = self.parent.as_deref();
        for grant in &r.ancestors {
            let Some(l) = level else { break };
            l.release_level(r.max_tokens, *grant, usage);
            level = l.parent.as_deref();
        }
        // Read after the locks are released: a waiter counts itself before it reads the state.
        let root = self.root();
        if root.waiting.load(Ordering::SeqCst) > 0 {
            root.returned.notify_waiters();
        }
        usd
    }

    fn release_level(&self, granted: u64, grant: LevelGrant, usage: Option<Usage>) -> f64 {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if self.budget.output_tokens_limit().is_some() {
            s.reserved_output = s.reserved_output.saturating_sub(granted);
        }
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

/// One reserved call. Settle it with the usage the server reported; dropping it unsettled
/// (failure, cancellation) returns the reservation and records no tokens (the call still counts).
#[derive(Debug)]
#[must_use = "a reservation is returned when dropped"]
pub struct Reservation {
    ledger: Arc<BudgetLedger>,
    call: u64,
    max_tokens: u64,
    per_choice: u64,
    /// This ledger's part.
    own: LevelGrant,
    /// Each ancestor's part, nearest first (empty, so no allocation, without a parent).
    ancestors: Vec<LevelGrant>,
    settled: bool,
}

impl Reservation {
    /// The output tokens this call may use in total (all choices together).
    ///
    /// ```
    /// use std::sync::Arc;
    /// # futures::executor::block_on(async {
    /// let l = Arc::new(executionkit::engine::BudgetLedger::unlimited());
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
    /// let l = Arc::new(executionkit::engine::BudgetLedger::unlimited());
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
    /// let l = Arc::new(executionkit::engine::BudgetLedger::unlimited());
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
    /// use executionkit::{Budget, CostRates, engine::BudgetLedger, provider::Usage};
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

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger.release(self, None);
        }
    }
}

/// The spend of one pattern invocation (the ledger keeps the run's). Cheap to clone; clones share
/// the counters.
///
/// ```
/// let t = executionkit::engine::CostTracker::new();
/// t.add_call();
/// t.add_tokens(executionkit::provider::Usage { input_tokens: 2, output_tokens: 1, ..Default::default() }, 0.0);
/// assert_eq!(t.usage(), executionkit::TokenUsage::new(2, 1, 1));
/// ```
#[derive(Debug, Clone, Default)]
pub struct CostTracker(Arc<TrackerInner>);

#[derive(Debug, Default)]
struct TrackerInner {
    input: AtomicU64,
    output: AtomicU64,
    calls: AtomicU64,
    cache_read: AtomicU64,
    cache_write: AtomicU64,
    reasoning: AtomicU64,
    /// Micro-dollars ×1e6 (pico-dollars) to keep an atomic integer.
    pico_usd: AtomicU64,
    /// Calls that reported more output tokens than they were granted, and the excess.
    over_calls: AtomicU64,
    over_output: AtomicU64,
}

impl CostTracker {
    /// A tracker at zero.
    ///
    /// ```
    /// assert!(executionkit::engine::CostTracker::new().usage().is_zero());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one call.
    ///
    /// ```
    /// let t = executionkit::engine::CostTracker::new();
    /// t.add_call();
    /// assert_eq!(t.usage().llm_calls, 1);
    /// ```
    pub fn add_call(&self) {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds tokens (no call; the cache and reasoning subsets too) and dollars.
    ///
    /// ```
    /// use executionkit::{TokenUsage, provider::Usage};
    /// let t = executionkit::engine::CostTracker::new();
    /// t.add_tokens(Usage { input_tokens: 4, output_tokens: 2, cache_read_input_tokens: 3, ..Usage::default() }, 0.25);
    /// assert_eq!(t.usage(), TokenUsage::new(4, 2, 0).with_cache(3, 0));
    /// assert_eq!(t.usd(), 0.25);
    /// ```
    pub fn add_tokens(&self, usage: Usage, usd: f64) {
        self.0
            .input
            .fetch_add(usage.input_tokens, Ordering::Relaxed);
        self.0
            .output
            .fetch_add(usage.output_tokens, Ordering::Relaxed);
        // The subsets are usually zero: skip the atomic writes then.
        for (counter, n) in [
            (&self.0.cache_read, usage.cache_read_input_tokens),
            (&self.0.cache_write, usage.cache_write_input_tokens),
            (&self.0.reasoning, usage.reasoning_tokens),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        if usd > 0.0 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            self.0
                .pico_usd
                .fetch_add((usd * 1e12).round() as u64, Ordering::Relaxed);
        }
    }

    /// Adds a whole usage (calls included).
    ///
    /// ```
    /// use executionkit::{TokenUsage, engine::CostTracker};
    /// let t = CostTracker::new();
    /// t.add_usage(TokenUsage::new(5, 3, 1), None);
    /// assert_eq!(t.usage(), TokenUsage::new(5, 3, 1));
    /// ```
    pub fn add_usage(&self, usage: TokenUsage, usd: Option<f64>) {
        self.0.calls.fetch_add(usage.llm_calls, Ordering::Relaxed);
        self.add_tokens(
            Usage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_read_input_tokens: usage.cache_read_input_tokens,
                cache_write_input_tokens: usage.cache_write_input_tokens,
                reasoning_tokens: usage.reasoning_tokens,
            },
            usd.unwrap_or(0.0),
        );
    }

    /// Counts one call whose server reported `excess` output tokens beyond its grant (nothing
    /// when `excess` is 0). [`RunContext::complete`](crate::RunContext::complete) calls it.
    ///
    /// ```
    /// let t = executionkit::engine::CostTracker::new();
    /// t.add_over_grant(0);
    /// assert!(t.over_grant().is_zero());
    /// t.add_over_grant(12);
    /// assert_eq!(t.over_grant(), executionkit::UsageOverGrant { calls: 1, output_tokens: 12 });
    /// ```
    pub fn add_over_grant(&self, excess: u64) {
        if excess > 0 {
            self.0.over_calls.fetch_add(1, Ordering::Relaxed);
            self.0.over_output.fetch_add(excess, Ordering::Relaxed);
        }
    }

    /// The calls that went over their grant so far, and by how many output tokens.
    ///
    /// ```
    /// assert!(executionkit::engine::CostTracker::new().over_grant().is_zero());
    /// ```
    #[must_use]
    pub fn over_grant(&self) -> UsageOverGrant {
        UsageOverGrant {
            calls: self.0.over_calls.load(Ordering::Relaxed),
            output_tokens: self.0.over_output.load(Ordering::Relaxed),
        }
    }

    /// The spend so far (a snapshot: reading it changes nothing).
    ///
    /// ```
    /// let t = executionkit::engine::CostTracker::new();
    /// assert_eq!(t.usage(), t.usage());
    /// ```
    #[must_use]
    pub fn usage(&self) -> TokenUsage {
        TokenUsage {
            input_tokens: self.0.input.load(Ordering::Relaxed),
            output_tokens: self.0.output.load(Ordering::Relaxed),
            llm_calls: self.0.calls.load(Ordering::Relaxed),
            cache_read_input_tokens: self.0.cache_read.load(Ordering::Relaxed),
            cache_write_input_tokens: self.0.cache_write.load(Ordering::Relaxed),
            reasoning_tokens: self.0.reasoning.load(Ordering::Relaxed),
        }
    }

    /// Dollars so far (0 without prices).
    ///
    /// ```
    /// assert_eq!(executionkit::engine::CostTracker::new().usd(), 0.0);
    /// ```
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn usd(&self) -> f64 {
        self.0.pico_usd.load(Ordering::Relaxed) as f64 / 1e12
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures::FutureExt;
    use futures::executor::block_on;

    use super::*;

    fn ledger(b: Budget) -> Arc<BudgetLedger> {
        Arc::new(BudgetLedger::new(b))
    }

    fn usage(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
            ..Usage::default()
        }
    }

    /// A reservation that must resolve at once (no waiting for returns).
    fn reserve_now(l: &Arc<BudgetLedger>, max_tokens: u64, retry: bool) -> Result<Reservation> {
        l.reserve("m", max_tokens, retry)
            .now_or_never()
            .expect("the reservation waited instead of answering at once")
    }

    fn exhausted_field(r: Result<Reservation>) -> String {
        let e = r.unwrap_err();
        assert!(e.is_budget_exhausted(), "{e:?}");
        e.metadata()["exhausted"].as_str().unwrap().to_owned()
    }

    #[test]
    fn usage_over_the_grant_is_recorded_as_reported() {
        let l = ledger(Budget::new().max_output_tokens(10));
        let r = reserve_now(&l, 64, false).unwrap();
        assert_eq!(r.max_tokens(), 10);
        r.settle(usage(7, 25));
        assert_eq!(l.spent(), TokenUsage::new(7, 25, 1));
        assert_eq!(l.remaining().output_tokens, Some(0));
    }

    #[test]
    fn usd_over_the_reservation_is_recorded_as_reported() {
        let b = Budget::new()
            .default_price(CostRates::new(0.0, 1.0).unwrap())
            .max_usd(1.0);
        let l = ledger(b);
        let r = reserve_now(&l, 100_000, false).unwrap();
        // 100k tokens reserved ($0.10); the server reports 3M ($3).
        let usd = r.settle(usage(0, 3_000_000));
        assert!((usd - 3.0).abs() < 1e-9);
        assert_eq!(l.spent_usd().map(|u| (u * 1e6).round()), Some(3e6));
        assert_eq!(l.remaining().usd, Some(0.0));
    }

    #[test]
    fn cached_input_is_priced_at_the_cache_rates_and_recorded() {
        let rates = CostRates::new(10.0, 0.0)
            .unwrap()
            .with_cache_read(1.0)
            .unwrap()
            .with_cache_write(20.0)
            .unwrap();
        let l = ledger(Budget::new().default_price(rates).max_usd(100.0));
        let cached = Usage {
            input_tokens: 1_000_000,
            output_tokens: 10,
            cache_read_input_tokens: 500_000,
            cache_write_input_tokens: 250_000,
            reasoning_tokens: 4,
        };
        let usd = reserve_now(&l, 10, false).unwrap().settle(cached);
        // 250k uncached at $10, 500k read at $1, 250k written at $20.
        assert!((usd - (2.5 + 0.5 + 5.0)).abs() < 1e-9, "{usd}");
        assert_eq!(
            l.spent(),
            TokenUsage::new(1_000_000, 10, 1)
                .with_cache(500_000, 250_000)
                .with_reasoning(4)
        );
        // Without cache rates the same usage costs the input rate throughout.
        let l = ledger(Budget::new().default_price(CostRates::new(10.0, 0.0).unwrap()));
        let usd = reserve_now(&l, 10, false).unwrap().settle(cached);
        assert!((usd - 10.0).abs() < 1e-9, "{usd}");
    }

    #[test]
    fn a_passed_output_limit_refuses_at_once_even_with_calls_in_flight() {
        let l = ledger(Budget::new().max_output_tokens(100));
        let a = reserve_now(&l, 10, false).unwrap();
        let in_flight = reserve_now(&l, 10, false).unwrap();
        a.settle(usage(0, 150)); // granted 10, reported 150: 150 > 100
        // Before: 100 - 150 - 10 saturates to 0 free with a call in flight, so this waited for
        // a return that could never free anything.
        assert_eq!(exhausted_field(reserve_now(&l, 10, false)), "output_tokens");
        assert_eq!(exhausted_field(reserve_now(&l, 10, true)), "output_tokens");
        drop(in_flight);
        assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "output_tokens");
        assert_eq!(l.spent().output_tokens, 150);
        assert_eq!(l.spent().llm_calls, 2);
    }

    #[test]
    fn output_spent_to_the_limit_exactly_refuses_at_once() {
        let l = ledger(Budget::new().max_output_tokens(10));
        let a = reserve_now(&l, 5, false).unwrap();
        let _in_flight = reserve_now(&l, 5, false).unwrap();
        a.settle(usage(0, 10));
        assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "output_tokens");
    }

    #[test]
    fn a_passed_input_limit_refuses_retries_too() {
        let l = ledger(Budget::new().max_input_tokens(100));
        reserve_now(&l, 1, false).unwrap().settle(usage(100, 1));
        // At the limit exactly: a first attempt is refused, a retry still goes (as before).
        assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "input_tokens");
        reserve_now(&l, 1, true).unwrap().settle(usage(20, 1));
        // Past it (the soft limit overshot): nothing more, retry or not.
        assert_eq!(l.spent().input_tokens, 120);
        assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "input_tokens");
        let e = reserve_now(&l, 1, true).unwrap_err();
        assert_eq!(e.metadata()["exhausted"], "input_tokens");
        assert!(e.message().contains("before retry dispatch"), "{e}");
    }

    #[test]
    fn a_passed_usd_limit_refuses_at_once_even_with_calls_in_flight() {
        let b = Budget::new()
            .default_price(CostRates::new(0.0, 1.0).unwrap())
            .max_usd(1.0);
        let l = ledger(b);
        let a = reserve_now(&l, 100_000, false).unwrap();
        let _in_flight = reserve_now(&l, 100_000, false).unwrap();
        a.settle(usage(0, 2_000_000)); // $2 spent against $1
        assert_eq!(exhausted_field(reserve_now(&l, 10, false)), "usd");
        assert_eq!(exhausted_field(reserve_now(&l, 10, true)), "usd");
    }

    #[test]
    fn a_waiting_reservation_fails_when_a_return_passes_the_limit() {
        let l = ledger(Budget::new().max_output_tokens(10));
        let a = reserve_now(&l, 10, false).unwrap();
        let mut waiting = Box::pin(l.reserve("m", 5, false));
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "nothing free: it waits"
        );
        a.settle(usage(0, 12));
        let e = block_on(waiting).unwrap_err();
        assert_eq!(e.metadata()["exhausted"], "output_tokens");
    }

    #[test]
    fn within_the_limit_nothing_changes() {
        let l = ledger(Budget::new().max_output_tokens(10).max_input_tokens(50));
        reserve_now(&l, 4, false).unwrap().settle(usage(10, 4));
        let r = reserve_now(&l, 64, false).unwrap();
        assert_eq!(r.max_tokens(), 6);
    }

    fn child(parent: &Arc<BudgetLedger>, b: Budget) -> Arc<BudgetLedger> {
        Arc::new(BudgetLedger::child(Arc::clone(parent), b))
    }

    fn in_flight(l: &BudgetLedger) -> u64 {
        l.lock().in_flight
    }

    #[test]
    fn a_nested_grant_is_the_smallest_any_level_allows() {
        let root = ledger(Budget::new().max_output_tokens(100));
        let mid = child(&root, Budget::new().max_output_tokens(7));
        let leaf = child(&mid, Budget::new().max_calls(5));
        let r = reserve_now(&leaf, 64, false).unwrap();
        assert_eq!(r.max_tokens(), 7);
        assert_eq!(
            (
                root.remaining().output_tokens,
                mid.remaining().output_tokens
            ),
            (Some(93), Some(0))
        );
        assert_eq!(leaf.remaining().output_tokens, Some(0));
        r.settle(usage(3, 2));
        for l in [&root, &mid, &leaf] {
            assert_eq!(l.spent(), TokenUsage::new(3, 2, 1));
            assert_eq!(in_flight(l), 0);
        }
        assert_eq!(root.remaining().output_tokens, Some(98));
    }

    #[test]
    fn a_refusal_at_any_level_takes_nothing_anywhere() {
        let root = ledger(Budget::new().max_calls(1));
        let leaf = child(&root, Budget::new().max_calls(5));
        reserve_now(&leaf, 4, false).unwrap().settle(usage(1, 1));
        let e = reserve_now(&leaf, 4, false).unwrap_err();
        assert_eq!(e.metadata()["exhausted"], "llm_calls");
        assert_eq!(e.metadata()["budget_level"], 1);
        assert_eq!(e.metadata()["budget"]["llm_calls"], 1);
        assert!(e.message().contains("enclosing"), "{e}");
        assert_eq!(
            leaf.spent().llm_calls,
            1,
            "the refused call is not counted below"
        );
        assert_eq!((in_flight(&root), in_flight(&leaf)), (0, 0));

        // Refused by the inner level: the outer one is untouched.
        let root = ledger(Budget::new().max_calls(10));
        let leaf = child(&root, Budget::new().max_calls(1));
        reserve_now(&leaf, 4, false).unwrap().settle(usage(1, 1));
        let e = reserve_now(&leaf, 4, false).unwrap_err();
        assert_eq!(e.metadata()["budget_level"], 0);
        assert!(!e.message().contains("enclosing"), "{e}");
        assert_eq!(root.spent().llm_calls, 1);
        // A ledger without a parent keeps its errors as they were.
        let e = reserve_now(&ledger(Budget::new().max_calls(0)), 1, false).unwrap_err();
        assert!(e.metadata().get("budget_level").is_none());
    }

    #[test]
    fn a_dropped_nested_reservation_returns_at_every_level() {
        let root = ledger(Budget::new().max_output_tokens(10));
        let leaf = child(&root, Budget::new().max_output_tokens(50));
        let r = reserve_now(&leaf, 8, false).unwrap();
        assert_eq!(root.remaining().output_tokens, Some(2));
        drop(r);
        assert_eq!(root.remaining().output_tokens, Some(10));
        assert_eq!(leaf.remaining().output_tokens, Some(10)); // the root's is tighter
        assert_eq!(leaf.spent(), TokenUsage::new(0, 0, 1));
        assert_eq!((in_flight(&root), in_flight(&leaf)), (0, 0));
    }

    #[test]
    fn a_waiter_blocked_by_an_ancestor_wakes_when_a_sibling_returns() {
        let root = ledger(Budget::new().max_output_tokens(10));
        let a = child(&root, Budget::new().max_calls(5));
        let b = child(&root, Budget::new().max_calls(5));
        let held = reserve_now(&a, 10, false).unwrap();
        let mut waiting = Box::pin(b.reserve("m", 4, false));
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "the root is full: it waits"
        );
        held.settle(usage(0, 3));
        let r = block_on(waiting).unwrap();
        assert_eq!(r.max_tokens(), 4);
        assert_eq!(root.spent().llm_calls, 2);
        assert_eq!(b.spent().llm_calls, 1);
    }

    #[test]
    fn call_numbers_are_unique_across_the_tree() {
        let root = ledger(Budget::new());
        let a = child(&root, Budget::new());
        let b = child(&a, Budget::new());
        let calls: Vec<u64> = [&root, &a, &b, &a]
            .iter()
            .map(|l| reserve_now(l, 1, false).unwrap().call())
            .collect();
        assert_eq!(calls, [1, 2, 3, 4]);
    }

    #[test]
    fn a_child_without_prices_prices_like_its_parent() {
        let rates = CostRates::new(1.0, 2.0).unwrap();
        let root = ledger(Budget::new().default_price(rates).max_usd(10.0));
        let leaf = child(&root, Budget::new().max_calls(3));
        assert!(leaf.budget().has_prices());
        assert!(leaf.budget().usd_limit().is_none(), "prices, not limits");
        let usd = reserve_now(&leaf, 8, false)
            .unwrap()
            .settle(usage(1_000_000, 0));
        assert!((usd - 1.0).abs() < 1e-9);
        assert_eq!(root.spent_usd(), leaf.spent_usd());
        // A child with its own prices keeps them; each level counts at its own prices.
        let own = child(
            &root,
            Budget::new().default_price(CostRates::new(3.0, 0.0).unwrap()),
        );
        let usd = reserve_now(&own, 8, false)
            .unwrap()
            .settle(usage(1_000_000, 0));
        assert!((usd - 3.0).abs() < 1e-9);
        assert!((root.spent_usd().unwrap() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn the_tracker_counts_calls_over_their_grant() {
        let t = CostTracker::new();
        t.add_over_grant(0);
        t.add_over_grant(5);
        let shared = t.clone(); // clones share the counters
        shared.add_over_grant(7);
        assert_eq!(
            t.over_grant(),
            UsageOverGrant {
                calls: 2,
                output_tokens: 12
            }
        );
    }
}
