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

/// The value a pattern produced, its score, what it cost and what it observed.
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
pub struct PatternResult<T> {
    /// The value (the winning text, the refined draft, the parsed object, …).
    pub value: T,
    /// A score in [0, 1] where the pattern has one (agreement ratio, judge score).
    pub score: Option<f64>,
    /// Tokens and calls spent.
    pub cost: TokenUsage,
    /// Money spent, when prices are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The pattern's metadata, serialisable to JSON.
    pub metadata: Metadata,
}

impl<T> PatternResult<T> {
    /// A result holding `value` with no score, zero cost and empty metadata.
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
        }
    }

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

    /// Maps the value, keeping score, cost and metadata.
    ///
    /// ```
    /// let r = executionkit::PatternResult::new(2).map(|v| v * 10);
    /// assert_eq!(r.value, 20);
    /// ```
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> PatternResult<U> {
        PatternResult {
            value: f(self.value),
            score: self.score,
            cost: self.cost,
            usd: self.usd,
            metadata: self.metadata,
        }
    }
}

impl<T: Serialize> PatternResult<T> {
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

impl<T: fmt::Display> fmt::Display for PatternResult<T> {
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
