//! [`PatternResult`]: what every pattern returns.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::usage::TokenUsage;

/// JSON metadata of a result, keyed by the documented names (`agreement_ratio`, `iterations`, …).
///
/// ```
/// use executionkit::{Consensus, Metadata, MockProvider, RunContext};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["a", "a", "b", "a"]);
/// let r = Consensus::new().samples(4).run(&p, "q", &RunContext::new()).await.unwrap();
/// let m: &Metadata = &r.metadata;
/// assert_eq!(m["agreement_ratio"], 0.75);
/// # });
/// ```
pub type Metadata = Map<String, Value>;

/// The value a pattern produced, its score, what it cost, its statistics and what it observed.
///
/// `S` is the pattern's typed statistics ([`ConsensusStats`](crate::ConsensusStats),
/// [`RefineStats`](crate::RefineStats), …; `()` for a result without any, such as a pipe
/// step's). A pattern builds its result with [`PatternResult::with_stats`], which also writes
/// the statistics into [`metadata`](Self::metadata) by serialising them, so the typed field and
/// the JSON key can never disagree; the engine then adds its own facts to the metadata
/// (`usage_over_grant`, …).
///
/// ```
/// use executionkit::{PatternResult, TokenUsage};
/// let r = PatternResult::new(42).with_score(0.5).with_cost(TokenUsage::new(1, 2, 1));
/// assert_eq!(r.to_string(), "42");
/// assert_eq!(r.score, Some(0.5));
/// assert_eq!(r.to_json()["cost"]["output_tokens"], 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[must_use]
pub struct PatternResult<T, S = ()> {
    /// The value (the winning text, the refined draft, the parsed object, …).
    pub value: T,
    /// A score in [0, 1] where the pattern has one (agreement ratio, judge score).
    pub score: Option<f64>,
    /// Tokens and calls spent.
    pub cost: TokenUsage,
    /// Money spent, when prices are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The pattern's metadata, serialisable to JSON: its statistics' keys, plus the engine's.
    pub metadata: Metadata,
    /// The pattern's typed statistics; each field is also a key of `metadata`. Not serialised
    /// on its own (the metadata already holds it).
    #[serde(skip)]
    pub stats: S,
}

impl<T> PatternResult<T> {
    /// A result holding `value` with no score, zero cost, no statistics and empty metadata.
    ///
    /// ```
    /// let r = executionkit::PatternResult::new("a");
    /// assert!(r.cost.is_zero() && r.metadata.is_empty() && r.score.is_none());
    /// ```
    pub fn new(value: T) -> Self {
        Self {
            value,
            score: None,
            cost: TokenUsage::default(),
            usd: None,
            metadata: Metadata::new(),
            stats: (),
        }
    }
}

impl<T, S: Serialize> PatternResult<T, S> {
    /// A result holding `value` and `stats`, whose metadata is `stats` serialised (a struct's
    /// fields become the keys; anything that does not serialise to a JSON object gives empty
    /// metadata). No score, zero cost.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Counts { tries: u32 }
    /// let r = executionkit::PatternResult::with_stats("ok", Counts { tries: 2 });
    /// assert_eq!(r.stats.tries, 2);
    /// assert_eq!(r.metadata["tries"], 2);
    /// ```
    pub fn with_stats(value: T, stats: S) -> Self {
        Self {
            value,
            score: None,
            cost: TokenUsage::default(),
            usd: None,
            metadata: stats_metadata(&stats),
            stats,
        }
    }
}

impl<T, S> PatternResult<T, S> {
    /// Sets the score.
    ///
    /// ```
    /// assert_eq!(executionkit::PatternResult::new(1).with_score(0.25).score, Some(0.25));
    /// ```
    pub fn with_score(mut self, score: f64) -> Self {
        self.score = Some(score);
        self
    }

    /// Sets the cost.
    ///
    /// ```
    /// use executionkit::{PatternResult, TokenUsage};
    /// assert_eq!(PatternResult::new(1).with_cost(TokenUsage::new(0, 0, 2)).cost.llm_calls, 2);
    /// ```
    pub fn with_cost(mut self, cost: TokenUsage) -> Self {
        self.cost = cost;
        self
    }

    /// Sets one metadata key.
    ///
    /// ```
    /// let r = executionkit::PatternResult::new(1).with_metadata("k", "v");
    /// assert_eq!(r.metadata["k"], "v");
    /// ```
    pub fn with_metadata(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// Maps the value, keeping score, cost, statistics and metadata.
    ///
    /// ```
    /// let r = executionkit::PatternResult::new(2).map(|v| v * 10);
    /// assert_eq!(r.value, 20);
    /// ```
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> PatternResult<U, S> {
        PatternResult {
            value: f(self.value),
            score: self.score,
            cost: self.cost,
            usd: self.usd,
            metadata: self.metadata,
            stats: self.stats,
        }
    }

    /// Drops the typed statistics, keeping everything else (the metadata still holds them as
    /// JSON): what a pipe step returns, or a way to put results of different patterns in one
    /// collection.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, PatternResult, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["a", "a"]);
    /// let r = Consensus::new().samples(2).run(&p, "q", &RunContext::new()).await.unwrap();
    /// let plain: PatternResult<String> = r.erase_stats();
    /// assert_eq!(plain.metadata["unique_responses"], 1);
    /// # });
    /// ```
    pub fn erase_stats(self) -> PatternResult<T> {
        PatternResult {
            value: self.value,
            score: self.score,
            cost: self.cost,
            usd: self.usd,
            metadata: self.metadata,
            stats: (),
        }
    }
}

impl<T: Serialize, S> PatternResult<T, S> {
    /// The `ek --json` success shape: `{"value", "score", "cost", "metadata"}`, with `cost.usd`
    /// present when money was tracked, and `cost.cache_read_input_tokens`,
    /// `cost.cache_write_input_tokens` and `cost.reasoning_tokens` each present when not zero.
    ///
    /// ```
    /// use executionkit::{PatternResult, TokenUsage};
    /// let j = PatternResult::new("x").to_json();
    /// assert_eq!(j["value"], "x");
    /// assert!(j["score"].is_null());
    /// assert_eq!(j["cost"].to_string(), r#"{"input_tokens":0,"llm_calls":0,"output_tokens":0}"#);
    /// let mut r = PatternResult::new("x");
    /// r.cost = TokenUsage::new(10, 4, 1).with_cache(6, 0).with_reasoning(3);
    /// let cost = &r.to_json()["cost"];
    /// assert_eq!((cost["cache_read_input_tokens"].as_u64(), cost["reasoning_tokens"].as_u64()), (Some(6), Some(3)));
    /// assert!(cost.get("cache_write_input_tokens").is_none());
    /// ```
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "value": serde_json::to_value(&self.value).unwrap_or(Value::Null),
            "score": self.score,
            "cost": cost_json(&self.cost, self.usd),
            "metadata": Value::Object(self.metadata.clone()),
        })
    }
}

impl<T: fmt::Display, S> fmt::Display for PatternResult<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

/// `{"input_tokens", "output_tokens", "llm_calls"[, "cache_read_input_tokens",
/// "cache_write_input_tokens", "reasoning_tokens"][, "usd"]}`: each subset only when it is not
/// zero, so a cost without them keeps its shape.
pub(crate) fn cost_json(cost: &TokenUsage, usd: Option<f64>) -> Value {
    let mut m = Map::new();
    m.insert("input_tokens".into(), cost.input_tokens.into());
    m.insert("output_tokens".into(), cost.output_tokens.into());
    m.insert("llm_calls".into(), cost.llm_calls.into());
    for (key, n) in [
        ("cache_read_input_tokens", cost.cache_read_input_tokens),
        ("cache_write_input_tokens", cost.cache_write_input_tokens),
        ("reasoning_tokens", cost.reasoning_tokens),
    ] {
        if n > 0 {
            m.insert(key.into(), n.into());
        }
    }
    if let Some(usd) = usd {
        m.insert("usd".into(), usd.into());
    }
    Value::Object(m)
}

/// `stats` serialised to a JSON object: the metadata keys of a pattern's statistics (empty
/// when they do not serialise to an object, as `()`).
pub(crate) fn stats_metadata<S: Serialize>(stats: &S) -> Metadata {
    match serde_json::to_value(stats) {
        Ok(Value::Object(m)) => m,
        _ => Metadata::new(),
    }
}

/// Statistics that can hold text from a model or a server (an answer voted on, a step's
/// metadata). The boundary that removes the provider's key from a result's metadata (`seal`,
/// in `engine/call.rs`) removes it from the statistics the same way, so the typed
/// field and its metadata key stay equal. Statistics of counts and flags keep the default.
pub(crate) trait RedactStats {
    /// Replaces `secret` (as [`redact_secret`](crate::redact::redact_secret)) in every string.
    fn redact_secret(&mut self, _secret: &str) {}
}

impl RedactStats for () {}
