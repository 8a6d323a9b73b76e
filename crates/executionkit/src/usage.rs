//! Token usage, budgets and money.
//!
//! [`TokenUsage`] counts what a run spent; [`Budget`] says how much it may spend;
//! [`CostRates`] turns tokens into US dollars for a model.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::provider::Usage;

/// Tokens and calls spent by a call, a pattern or a whole run.
///
/// `input_tokens` counts every prompt token billed (cached ones included) and `output_tokens`
/// every completion token (reasoning included). Three subsets say what part of them was what:
/// [`cache_read_input_tokens`](Self::cache_read_input_tokens) and
/// [`cache_write_input_tokens`](Self::cache_write_input_tokens) of the input, and
/// [`reasoning_tokens`](Self::reasoning_tokens) of the output. They are never added to the
/// totals a second time; [`CostRates`] prices them.
///
/// All fields are unsigned: there is no subtraction that can go negative, only
/// [`checked_sub`](TokenUsage::checked_sub) and [`saturating_sub`](TokenUsage::saturating_sub).
/// Serialised, a subset that is zero is left out (so the shape of a usage without them is
/// unchanged).
///
/// ```
/// use executionkit::TokenUsage;
/// let a = TokenUsage::new(10, 5, 1);
/// let b = TokenUsage::new(20, 8, 2);
/// assert_eq!(a + b, TokenUsage::new(30, 13, 3));
/// assert_eq!(a.checked_sub(b), None);
/// assert_eq!(a.saturating_sub(b), TokenUsage::default());
/// assert_eq!(a.to_string(), "TokenUsage(input_tokens=10, output_tokens=5, llm_calls=1)");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens, as reported by the server: every one billed, cached ones included.
    pub input_tokens: u64,
    /// Completion tokens, as reported by the server, reasoning included.
    pub output_tokens: u64,
    /// LLM calls dispatched (every wire attempt counts, retries included).
    pub llm_calls: u64,
    /// Of `input_tokens`, those read from the server's prompt cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`, Anthropic's `cache_read_input_tokens`).
    #[serde(default, skip_serializing_if = "u64_is_zero")]
    pub cache_read_input_tokens: u64,
    /// Of `input_tokens`, those written to the server's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`).
    #[serde(default, skip_serializing_if = "u64_is_zero")]
    pub cache_write_input_tokens: u64,
    /// Of `output_tokens`, the reasoning tokens (OpenAI's
    /// `completion_tokens_details.reasoning_tokens`).
    #[serde(default, skip_serializing_if = "u64_is_zero")]
    pub reasoning_tokens: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn u64_is_zero(n: &u64) -> bool {
    *n == 0
}

impl TokenUsage {
    /// A usage of `input_tokens`, `output_tokens` and `llm_calls`.
    ///
    /// ```
    /// let u = executionkit::TokenUsage::new(1, 2, 3);
    /// assert_eq!((u.input_tokens, u.output_tokens, u.llm_calls), (1, 2, 3));
    /// ```
    #[must_use]
    pub const fn new(input_tokens: u64, output_tokens: u64, llm_calls: u64) -> Self {
        Self {
            input_tokens,
            output_tokens,
            llm_calls,
            cache_read_input_tokens: 0,
            cache_write_input_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// The same usage with these cache subsets of `input_tokens` (read from and written to the
    /// server's prompt cache).
    ///
    /// ```
    /// let u = executionkit::TokenUsage::new(100, 5, 1).with_cache(60, 30);
    /// assert_eq!((u.cache_read_input_tokens, u.cache_write_input_tokens), (60, 30));
    /// assert_eq!(u.uncached_input_tokens(), 10);
    /// ```
    #[must_use]
    pub const fn with_cache(mut self, read: u64, write: u64) -> Self {
        self.cache_read_input_tokens = read;
        self.cache_write_input_tokens = write;
        self
    }

    /// The same usage with `reasoning` of its `output_tokens` marked as reasoning.
    ///
    /// ```
    /// let u = executionkit::TokenUsage::new(10, 50, 1).with_reasoning(40);
    /// assert_eq!(u.reasoning_tokens, 40);
    /// assert_eq!(u.output_tokens, 50); // reasoning is part of the output, not added to it
    /// ```
    #[must_use]
    pub const fn with_reasoning(mut self, reasoning: u64) -> Self {
        self.reasoning_tokens = reasoning;
        self
    }

    /// The input tokens neither read from nor written to a cache:
    /// `input_tokens - cache_read_input_tokens - cache_write_input_tokens`, at least 0.
    ///
    /// ```
    /// use executionkit::TokenUsage;
    /// assert_eq!(TokenUsage::new(10, 0, 1).uncached_input_tokens(), 10);
    /// assert_eq!(TokenUsage::new(10, 0, 1).with_cache(8, 8).uncached_input_tokens(), 0);
    /// ```
    #[must_use]
    pub const fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cache_read_input_tokens)
            .saturating_sub(self.cache_write_input_tokens)
    }

    /// Field-wise difference (the subsets too), or `None` when any field would go below zero.
    ///
    /// ```
    /// use executionkit::TokenUsage;
    /// assert_eq!(
    ///     TokenUsage::new(10, 7, 3).checked_sub(TokenUsage::new(4, 2, 1)),
    ///     Some(TokenUsage::new(6, 5, 2))
    /// );
    /// let cached = TokenUsage::new(10, 7, 3).with_cache(1, 0);
    /// assert_eq!(TokenUsage::new(10, 7, 3).checked_sub(cached), None);
    /// ```
    #[must_use]
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        Some(Self {
            input_tokens: self.input_tokens.checked_sub(other.input_tokens)?,
            output_tokens: self.output_tokens.checked_sub(other.output_tokens)?,
            llm_calls: self.llm_calls.checked_sub(other.llm_calls)?,
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .checked_sub(other.cache_read_input_tokens)?,
            cache_write_input_tokens: self
                .cache_write_input_tokens
                .checked_sub(other.cache_write_input_tokens)?,
            reasoning_tokens: self.reasoning_tokens.checked_sub(other.reasoning_tokens)?,
        })
    }

    /// Field-wise difference (the subsets too) clamped at zero.
    ///
    /// ```
    /// use executionkit::TokenUsage;
    /// assert_eq!(
    ///     TokenUsage::new(4, 2, 1).saturating_sub(TokenUsage::new(10, 1, 3)),
    ///     TokenUsage::new(0, 1, 0)
    /// );
    /// let a = TokenUsage::new(9, 9, 1).with_cache(5, 2).with_reasoning(4);
    /// let b = TokenUsage::new(1, 1, 0).with_cache(1, 3).with_reasoning(1);
    /// assert_eq!(a.saturating_sub(b), TokenUsage::new(8, 8, 1).with_cache(4, 0).with_reasoning(3));
    /// ```
    #[must_use]
    pub fn saturating_sub(self, other: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_sub(other.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(other.output_tokens),
            llm_calls: self.llm_calls.saturating_sub(other.llm_calls),
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .saturating_sub(other.cache_read_input_tokens),
            cache_write_input_tokens: self
                .cache_write_input_tokens
                .saturating_sub(other.cache_write_input_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_sub(other.reasoning_tokens),
        }
    }

    /// `input_tokens + output_tokens`.
    ///
    /// ```
    /// assert_eq!(executionkit::TokenUsage::new(30, 15, 1).total_tokens(), 45);
    /// ```
    #[must_use]
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// `true` when every field is zero.
    ///
    /// ```
    /// assert!(executionkit::TokenUsage::default().is_zero());
    /// assert!(!executionkit::TokenUsage::default().with_reasoning(1).is_zero());
    /// ```
    #[must_use]
    pub const fn is_zero(&self) -> bool {
        self.input_tokens == 0
            && self.output_tokens == 0
            && self.llm_calls == 0
            && self.cache_read_input_tokens == 0
            && self.cache_write_input_tokens == 0
            && self.reasoning_tokens == 0
    }
}

impl From<Usage> for TokenUsage {
    /// The tokens of one response (the subsets included), with no call counted.
    ///
    /// ```
    /// use executionkit::{TokenUsage, Usage};
    /// let u = Usage { input_tokens: 9, output_tokens: 2, cache_read_input_tokens: 4, ..Usage::default() };
    /// assert_eq!(TokenUsage::from(u), TokenUsage::new(9, 2, 0).with_cache(4, 0));
    /// ```
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            llm_calls: 0,
            cache_read_input_tokens: u.cache_read_input_tokens,
            cache_write_input_tokens: u.cache_write_input_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

impl Add for TokenUsage {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_add(rhs.input_tokens),
            output_tokens: self.output_tokens.saturating_add(rhs.output_tokens),
            llm_calls: self.llm_calls.saturating_add(rhs.llm_calls),
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .saturating_add(rhs.cache_read_input_tokens),
            cache_write_input_tokens: self
                .cache_write_input_tokens
                .saturating_add(rhs.cache_write_input_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(rhs.reasoning_tokens),
        }
    }
}

impl AddAssign for TokenUsage {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl std::iter::Sum for TokenUsage {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

impl fmt::Display for TokenUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenUsage(input_tokens={}, output_tokens={}, llm_calls={})",
            self.input_tokens, self.output_tokens, self.llm_calls
        )
    }
}

/// Output a server reported beyond what its calls were granted, summed over calls.
///
/// The ledger never grants past a limit: each call is sent the `max_tokens` it reserved. A server
/// may still report more output tokens than that. The usage is recorded as reported (the spend
/// is the truth), and the excess is counted here: `calls` is the number of calls whose reported
/// output exceeded their grant, `output_tokens` the total excess. A result's or error's metadata
/// holds it under [`UsageOverGrant::METADATA_KEY`] (`"usage_over_grant"`) as
/// `{"calls": …, "output_tokens": …}`, only when it happened.
///
/// ```
/// use executionkit::{Metadata, UsageOverGrant};
/// let over = UsageOverGrant { calls: 1, output_tokens: 40 };
/// let mut m = Metadata::new();
/// over.apply_to_metadata(&mut m);
/// assert_eq!(m["usage_over_grant"], serde_json::json!({"calls": 1, "output_tokens": 40}));
/// assert_eq!(UsageOverGrant::from_metadata(&m), over);
/// UsageOverGrant::default().apply_to_metadata(&mut m); // nothing over: no key
/// assert!(m.is_empty());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UsageOverGrant {
    /// Calls whose reported output tokens exceeded their grant.
    pub calls: u64,
    /// Output tokens reported beyond the grants, summed.
    pub output_tokens: u64,
}

impl UsageOverGrant {
    /// The metadata key: `"usage_over_grant"`.
    ///
    /// ```
    /// assert_eq!(executionkit::UsageOverGrant::METADATA_KEY, "usage_over_grant");
    /// ```
    pub const METADATA_KEY: &'static str = "usage_over_grant";

    /// `true` when no call went over its grant.
    ///
    /// ```
    /// assert!(executionkit::UsageOverGrant::default().is_zero());
    /// ```
    #[must_use]
    pub const fn is_zero(&self) -> bool {
        self.calls == 0 && self.output_tokens == 0
    }

    /// `{"calls": …, "output_tokens": …}`.
    ///
    /// ```
    /// let j = executionkit::UsageOverGrant { calls: 2, output_tokens: 7 }.to_json();
    /// assert_eq!(j["output_tokens"], 7);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"calls": self.calls, "output_tokens": self.output_tokens})
    }

    /// Reads the value under [`METADATA_KEY`](Self::METADATA_KEY) (zero when absent or not of
    /// that shape).
    ///
    /// ```
    /// use executionkit::{Metadata, UsageOverGrant};
    /// assert!(UsageOverGrant::from_metadata(&Metadata::new()).is_zero());
    /// ```
    #[must_use]
    pub fn from_metadata(metadata: &serde_json::Map<String, serde_json::Value>) -> Self {
        metadata
            .get(Self::METADATA_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// Writes itself under [`METADATA_KEY`](Self::METADATA_KEY), or removes the key when zero
    /// (so metadata holds it only when some call went over its grant).
    ///
    /// ```
    /// use executionkit::{Metadata, UsageOverGrant};
    /// let mut m = Metadata::new();
    /// UsageOverGrant { calls: 1, output_tokens: 3 }.apply_to_metadata(&mut m);
    /// assert_eq!(m["usage_over_grant"]["calls"], 1);
    /// ```
    pub fn apply_to_metadata(&self, metadata: &mut serde_json::Map<String, serde_json::Value>) {
        if self.is_zero() {
            metadata.remove(Self::METADATA_KEY);
        } else {
            metadata.insert(Self::METADATA_KEY.to_owned(), self.to_json());
        }
    }

    /// `error` with itself under [`METADATA_KEY`](Self::METADATA_KEY) when not zero.
    ///
    /// ```
    /// use executionkit::{Error, UsageOverGrant};
    /// let e = UsageOverGrant { calls: 1, output_tokens: 3 }.apply_to_error(Error::cancelled());
    /// assert_eq!(e.metadata()["usage_over_grant"]["output_tokens"], 3);
    /// assert!(UsageOverGrant::default().apply_to_error(Error::cancelled()).metadata().is_empty());
    /// ```
    #[must_use]
    pub fn apply_to_error(&self, error: Error) -> Error {
        if self.is_zero() {
            error
        } else {
            error.with_metadata(Self::METADATA_KEY, self.to_json())
        }
    }
}

impl Add for UsageOverGrant {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            calls: self.calls.saturating_add(rhs.calls),
            output_tokens: self.output_tokens.saturating_add(rhs.output_tokens),
        }
    }
}

impl AddAssign for UsageOverGrant {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

/// Prices of one model, in US dollars per million tokens.
///
/// Input tokens read from or written to a prompt cache can have their own prices
/// ([`with_cache_read`](Self::with_cache_read), [`with_cache_write`](Self::with_cache_write));
/// without them they cost the input price.
///
/// ```
/// use executionkit::{CostRates, TokenUsage};
/// let rates = CostRates::new(3.0, 15.0).unwrap();
/// let usd = rates.usd(&TokenUsage::new(1000, 500, 1));
/// assert!((usd - 0.0105).abs() < 1e-12);
/// // Anthropic-like prices: cache reads at a tenth, cache writes at 1.25x the input price.
/// let rates = rates.with_cache_read(0.3).unwrap().with_cache_write(3.75).unwrap();
/// let cached = TokenUsage::new(1_000_000, 0, 1).with_cache(600_000, 300_000);
/// assert!((rates.usd(&cached) - (0.3 + 0.18 + 1.125)).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostRates {
    /// USD per million input (prompt) tokens.
    pub input_per_million: f64,
    /// USD per million output (completion) tokens.
    pub output_per_million: f64,
    /// USD per million input tokens read from a prompt cache (`None`: the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_million: Option<f64>,
    /// USD per million input tokens written to a prompt cache (`None`: the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<f64>,
}

/// A price must be finite and ≥ 0.
fn check_price(name: &str, v: f64) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::invalid_argument(
            name,
            format!("{name} must be a finite number >= 0, got {v}"),
        ));
    }
    Ok(())
}

/// `tokens` at `per_million` USD per million tokens.
#[allow(clippy::cast_precision_loss)]
fn priced(tokens: u64, per_million: f64) -> f64 {
    tokens as f64 * per_million / 1e6
}

impl CostRates {
    /// Rates in USD per million input and output tokens; both must be finite and ≥ 0. Cache
    /// reads and writes cost the input price until set otherwise.
    ///
    /// ```
    /// assert!(executionkit::CostRates::new(-1.0, 2.0).unwrap_err().is_invalid_argument());
    /// ```
    pub fn new(input_per_million: f64, output_per_million: f64) -> Result<Self> {
        check_price("price_in", input_per_million)?;
        check_price("price_out", output_per_million)?;
        Ok(Self {
            input_per_million,
            output_per_million,
            cache_read_per_million: None,
            cache_write_per_million: None,
        })
    }

    /// The same rates with a price for input tokens read from a prompt cache (finite, ≥ 0).
    ///
    /// ```
    /// use executionkit::CostRates;
    /// let r = CostRates::new(1.0, 2.0).unwrap().with_cache_read(0.1).unwrap();
    /// assert_eq!(r.cache_read_per_million, Some(0.1));
    /// let e = CostRates::new(1.0, 2.0).unwrap().with_cache_read(f64::NAN).unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "price_cache_read");
    /// ```
    pub fn with_cache_read(mut self, usd_per_million: f64) -> Result<Self> {
        check_price("price_cache_read", usd_per_million)?;
        self.cache_read_per_million = Some(usd_per_million);
        Ok(self)
    }

    /// The same rates with a price for input tokens written to a prompt cache (finite, ≥ 0).
    ///
    /// ```
    /// use executionkit::CostRates;
    /// let r = CostRates::new(1.0, 2.0).unwrap().with_cache_write(1.25).unwrap();
    /// assert_eq!(r.cache_write_per_million, Some(1.25));
    /// assert!(CostRates::new(1.0, 2.0).unwrap().with_cache_write(-1.0).is_err());
    /// ```
    pub fn with_cache_write(mut self, usd_per_million: f64) -> Result<Self> {
        check_price("price_cache_write", usd_per_million)?;
        self.cache_write_per_million = Some(usd_per_million);
        Ok(self)
    }

    /// Dollars for `usage` (calls are free): uncached input at the input price, cache reads and
    /// cache writes at theirs (the input price when unset), output at the output price.
    /// Reasoning tokens are output tokens and cost the output price.
    ///
    /// ```
    /// use executionkit::{CostRates, TokenUsage};
    /// let r = CostRates::new(1.0, 2.0).unwrap();
    /// assert_eq!(r.usd(&TokenUsage::new(1_000_000, 1_000_000, 9)), 3.0);
    /// // Without cache prices, cached tokens cost the input price: the same total.
    /// assert_eq!(r.usd(&TokenUsage::new(1_000_000, 1_000_000, 9).with_cache(500_000, 0)), 3.0);
    /// let r = r.with_cache_read(0.0).unwrap();
    /// assert_eq!(r.usd(&TokenUsage::new(1_000_000, 1_000_000, 9).with_cache(500_000, 0)), 2.5);
    /// ```
    #[must_use]
    pub fn usd(&self, usage: &TokenUsage) -> f64 {
        // The subsets are clamped to the input they are part of, reads first.
        let read = usage.cache_read_input_tokens.min(usage.input_tokens);
        let write = usage
            .cache_write_input_tokens
            .min(usage.input_tokens - read);
        let uncached = usage.input_tokens - read - write;
        self.input_usd(uncached)
            + priced(
                read,
                self.cache_read_per_million
                    .unwrap_or(self.input_per_million),
            )
            + priced(
                write,
                self.cache_write_per_million
                    .unwrap_or(self.input_per_million),
            )
            + self.output_usd(usage.output_tokens)
    }

    /// Dollars for `tokens` input tokens (at the input price: uncached).
    ///
    /// ```
    /// assert_eq!(executionkit::CostRates::new(2.0, 0.0).unwrap().input_usd(500_000), 1.0);
    /// ```
    #[must_use]
    pub fn input_usd(&self, tokens: u64) -> f64 {
        priced(tokens, self.input_per_million)
    }

    /// Dollars for `tokens` output tokens.
    ///
    /// ```
    /// assert_eq!(executionkit::CostRates::new(0.0, 4.0).unwrap().output_usd(250_000), 1.0);
    /// ```
    #[must_use]
    pub fn output_usd(&self, tokens: u64) -> f64 {
        priced(tokens, self.output_per_million)
    }
}

/// The limits of one run: input tokens, output tokens, calls and money, each optional.
///
/// An absent limit is unlimited; there are no sentinel values. Money needs prices: set them per
/// model with [`Budget::price`] or for every model with [`Budget::default_price`].
///
/// ```
/// use executionkit::Budget;
/// let b = Budget::new().max_calls(20).max_output_tokens(10_000);
/// assert_eq!(b.calls_limit(), Some(20));
/// assert_eq!(b.input_tokens_limit(), None);
/// // The Python `max_budget=TokenUsage(llm_calls=30)` (0 there means "no limit") is only a call
/// // limit here: a zero would be a limit of zero.
/// let b = Budget::new().max_calls(30);
/// assert_eq!((b.calls_limit(), b.output_tokens_limit()), (Some(30), None));
/// ```
///
/// There is deliberately no conversion from [`TokenUsage`]: a usage is a spend, every field a
/// number, so a zero field would have to mean either "nothing allowed" or "unlimited"; name the
/// limits you mean instead.
///
/// ```compile_fail
/// use executionkit::{Budget, TokenUsage};
/// let b: Budget = TokenUsage::new(0, 0, 30).into(); // no such conversion
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct Budget {
    max_input_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    max_calls: Option<u64>,
    max_usd: Option<f64>,
    default_rates: Option<CostRates>,
    rates: HashMap<String, CostRates>,
}

impl Budget {
    /// A budget with no limits.
    ///
    /// ```
    /// assert!(executionkit::Budget::new().is_unlimited());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Limit the prompt tokens of the run (checked before each call; see the guide).
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().max_input_tokens(5).input_tokens_limit(), Some(5));
    /// ```
    pub fn max_input_tokens(mut self, n: u64) -> Self {
        self.max_input_tokens = Some(n);
        self
    }

    /// Limit the completion tokens of the run (reserved before each call: never exceeded).
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().max_output_tokens(5).output_tokens_limit(), Some(5));
    /// ```
    pub fn max_output_tokens(mut self, n: u64) -> Self {
        self.max_output_tokens = Some(n);
        self
    }

    /// Limit the number of LLM calls (reserved before dispatch; retries count).
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().max_calls(3).calls_limit(), Some(3));
    /// ```
    pub fn max_calls(mut self, n: u64) -> Self {
        self.max_calls = Some(n);
        self
    }

    /// Limit the money spent, in US dollars. Needs prices ([`Budget::price`] or
    /// [`Budget::default_price`]); [`Budget::validate`] rejects a money limit without them.
    ///
    /// ```
    /// use executionkit::{Budget, CostRates};
    /// let b = Budget::new().max_usd(0.5).default_price(CostRates::new(1.0, 2.0).unwrap());
    /// assert_eq!(b.usd_limit(), Some(0.5));
    /// assert!(b.validate().is_ok());
    /// assert!(Budget::new().max_usd(0.5).validate().is_err());
    /// ```
    pub fn max_usd(mut self, usd: f64) -> Self {
        self.max_usd = Some(usd);
        self
    }

    /// Prices for one model name.
    ///
    /// ```
    /// use executionkit::{Budget, CostRates};
    /// let r = CostRates::new(0.15, 0.6).unwrap();
    /// let b = Budget::new().price("gpt-4o-mini", r);
    /// assert_eq!(b.rates_for("gpt-4o-mini"), Some(r));
    /// assert_eq!(b.rates_for("other"), None);
    /// ```
    pub fn price(mut self, model: impl Into<String>, rates: CostRates) -> Self {
        self.rates.insert(model.into(), rates);
        self
    }

    /// Prices for every model without its own entry.
    ///
    /// ```
    /// use executionkit::{Budget, CostRates};
    /// let r = CostRates::new(1.0, 1.0).unwrap();
    /// assert_eq!(Budget::new().default_price(r).rates_for("anything"), Some(r));
    /// ```
    pub fn default_price(mut self, rates: CostRates) -> Self {
        self.default_rates = Some(rates);
        self
    }

    /// Takes `other`'s prices (a nested ledger without its own prices prices calls like its
    /// parent).
    pub(crate) fn inherit_prices(&mut self, other: &Budget) {
        self.default_rates = other.default_rates;
        self.rates.clone_from(&other.rates);
    }

    /// The input-token limit, if any.
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().input_tokens_limit(), None);
    /// ```
    #[must_use]
    pub fn input_tokens_limit(&self) -> Option<u64> {
        self.max_input_tokens
    }

    /// The output-token limit, if any.
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().output_tokens_limit(), None);
    /// ```
    #[must_use]
    pub fn output_tokens_limit(&self) -> Option<u64> {
        self.max_output_tokens
    }

    /// The call limit, if any.
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().calls_limit(), None);
    /// ```
    #[must_use]
    pub fn calls_limit(&self) -> Option<u64> {
        self.max_calls
    }

    /// The money limit in USD, if any.
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().usd_limit(), None);
    /// ```
    #[must_use]
    pub fn usd_limit(&self) -> Option<f64> {
        self.max_usd
    }

    /// The prices that apply to `model`, if known.
    ///
    /// ```
    /// assert_eq!(executionkit::Budget::new().rates_for("m"), None);
    /// ```
    #[must_use]
    pub fn rates_for(&self, model: &str) -> Option<CostRates> {
        self.rates.get(model).copied().or(self.default_rates)
    }

    /// `true` when any prices are known (so spend in USD is tracked).
    ///
    /// ```
    /// assert!(!executionkit::Budget::new().has_prices());
    /// ```
    #[must_use]
    pub fn has_prices(&self) -> bool {
        self.default_rates.is_some() || !self.rates.is_empty()
    }

    /// `true` when no limit is set.
    ///
    /// ```
    /// assert!(!executionkit::Budget::new().max_calls(1).is_unlimited());
    /// ```
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.max_input_tokens.is_none()
            && self.max_output_tokens.is_none()
            && self.max_calls.is_none()
            && self.max_usd.is_none()
    }

    /// Checks the budget: a money limit must be finite, ≥ 0 and come with prices.
    ///
    /// ```
    /// let err = executionkit::Budget::new().max_usd(f64::NAN).validate().unwrap_err();
    /// assert!(err.is_invalid_argument());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if let Some(usd) = self.max_usd {
            if !usd.is_finite() || usd < 0.0 {
                return Err(Error::invalid_argument(
                    "max_usd",
                    format!("max_usd must be a finite number >= 0, got {usd}"),
                ));
            }
            if !self.has_prices() {
                return Err(Error::invalid_argument(
                    "max_usd",
                    "max_usd needs prices (USD per million input/output tokens): set Budget::price or Budget::default_price",
                ));
            }
        }
        Ok(())
    }

    /// The limits as JSON, `null` for an absent limit: the `metadata.budget` of a
    /// `budget_exhausted` error.
    ///
    /// ```
    /// let j = executionkit::Budget::new().max_calls(5).to_json();
    /// assert_eq!(j, serde_json::json!({"input_tokens": null, "output_tokens": null, "llm_calls": 5, "usd": null}));
    /// ```
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "input_tokens": self.max_input_tokens,
            "output_tokens": self.max_output_tokens,
            "llm_calls": self.max_calls,
            "usd": self.max_usd,
        })
    }
}
