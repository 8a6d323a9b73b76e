//! [`CostTracker`]: the spend of one pattern invocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::provider::Usage;
use crate::usage::{TokenUsage, UsageOverGrant};

/// The spend of one pattern invocation (the ledger keeps the run's). Cheap to clone; clones share
/// the counters.
///
/// ```
/// let t = executionkit::CostTracker::new();
/// t.add_call();
/// t.add_tokens(executionkit::Usage { input_tokens: 2, output_tokens: 1, ..Default::default() }, 0.0);
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
    /// What each provider of a failover chain cost, in the order they were first used.
    by_provider: std::sync::Mutex<Vec<(Arc<str>, crate::usage::TokenUsage)>>,
}

impl CostTracker {
    /// A tracker at zero.
    ///
    /// ```
    /// assert!(executionkit::CostTracker::new().usage().is_zero());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `usage` to what the provider named `name` (an entry of a failover chain) cost.
    pub(crate) fn add_provider_cost(&self, name: &Arc<str>, usage: crate::usage::TokenUsage) {
        let mut all = self
            .0
            .by_provider
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match all.iter_mut().find(|(n, _)| n == name) {
            Some((_, u)) => *u += usage,
            None => all.push((Arc::clone(name), usage)),
        }
    }

    /// `{name: cost}` for every provider of a failover chain used, or `None` when none was.
    pub(crate) fn cost_by_provider(&self) -> Option<serde_json::Value> {
        let all = self
            .0
            .by_provider
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.is_empty() {
            return None;
        }
        let map: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|(n, u)| (n.to_string(), crate::result::cost_json(u, None)))
            .collect();
        Some(serde_json::Value::Object(map))
    }

    /// Takes back a call counted by [`add_call`](Self::add_call) (and its entry's share) that
    /// never reached a server.
    pub(crate) fn remove_call(&self, entry: Option<&Arc<str>>) {
        let _ = self
            .0
            .calls
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
        if let Some(name) = entry {
            let mut all = self
                .0
                .by_provider
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, u)) = all.iter_mut().find(|(n, _)| n == name) {
                u.llm_calls = u.llm_calls.saturating_sub(1);
            }
        }
    }

    /// Counts one call.
    ///
    /// ```
    /// let t = executionkit::CostTracker::new();
    /// t.add_call();
    /// assert_eq!(t.usage().llm_calls, 1);
    /// ```
    pub fn add_call(&self) {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds tokens (no call; the cache and reasoning subsets too) and dollars.
    ///
    /// ```
    /// use executionkit::{TokenUsage, Usage};
    /// let t = executionkit::CostTracker::new();
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
    /// use executionkit::{TokenUsage, CostTracker};
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
    /// let t = executionkit::CostTracker::new();
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
    /// assert!(executionkit::CostTracker::new().over_grant().is_zero());
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
    /// let t = executionkit::CostTracker::new();
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
    /// assert_eq!(executionkit::CostTracker::new().usd(), 0.0);
    /// ```
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn usd(&self) -> f64 {
        self.0.pico_usd.load(Ordering::Relaxed) as f64 / 1e12
    }
}
