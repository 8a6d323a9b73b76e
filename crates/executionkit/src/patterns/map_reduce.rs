//! Map-reduce: one call per item (concurrently, under the run's shared budget), then a reduce
//! call over the joined outputs, hierarchical when they are too long for one prompt.
//!
//! Both templates are checked before any call, even for an empty input list: the map
//! template must contain `{item}`, the reduce template `{mapped_outputs}`. Substitution is
//! plain text (every occurrence; no other placeholder is interpreted).
//!
//! When the joined map outputs exceed [`MapReduce::max_reduce_input_chars`], they are reduced
//! in groups (each at most that size, and at least two outputs per group so every level
//! shrinks), the group results are reduced again, and so on until one reduce call sees
//! everything that is left. Statistics ([`MapReduceStats`], also the metadata keys):
//! `map_count`, `reduce_calls` (every reduce call), `reduce_levels` (1 for a flat reduce),
//! `total_calls` (every call, retries included).

use futures::StreamExt;
use serde::Serialize;

use super::options::{CallOptions, WithCallOptions};
use crate::engine::{CostTracker, RunContext, seal};
use crate::error::{Error, Result};
use crate::provider::{ChatRequest, LlmProvider};
use crate::result::{PatternResult, RedactStats};

/// The map template's placeholder.
///
/// ```
/// assert_eq!(executionkit::internals::patterns::ITEM, "{item}");
/// ```
pub const ITEM: &str = "{item}";
/// The reduce template's placeholder.
///
/// ```
/// assert_eq!(executionkit::internals::patterns::MAPPED_OUTPUTS, "{mapped_outputs}");
/// ```
pub const MAPPED_OUTPUTS: &str = "{mapped_outputs}";
/// The default separator between map outputs in the reduce prompt.
///
/// ```
/// assert_eq!(executionkit::internals::patterns::DEFAULT_SEPARATOR, "\n\n---\n\n");
/// ```
pub const DEFAULT_SEPARATOR: &str = "\n\n---\n\n";

/// What a map-reduce observed: [`MapReduce::run`]'s `stats`, and its `metadata` keys of the
/// same names (the metadata is these statistics serialised).
///
/// ```
/// use executionkit::{MapReduce, MockProvider, RunContext};
/// use executionkit::MapReduceStats;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["a", "b", "a and b"]);
/// let items = vec!["doc a".to_owned(), "doc b".to_owned()];
/// let r = MapReduce::new().map_template("{item}").reduce_template("{mapped_outputs}")
///     .max_concurrency(1).run(&p, &items, &RunContext::new()).await.unwrap();
/// assert_eq!(r.stats, MapReduceStats { map_count: 2, reduce_calls: 1, reduce_levels: 1, total_calls: 3 });
/// assert_eq!(r.metadata["total_calls"], 3);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MapReduceStats {
    /// Items mapped.
    pub map_count: usize,
    /// Reduce calls, at every level.
    pub reduce_calls: usize,
    /// Levels of reduction (1 for a flat reduce).
    pub reduce_levels: usize,
    /// Every call made, retries included.
    pub total_calls: u64,
}

impl RedactStats for MapReduceStats {}

/// The map-reduce pattern.
///
/// ```
/// use executionkit::{MockProvider, RunContext};
/// use executionkit::MapReduce;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["summary a", "summary b", "final"]);
/// let items = vec!["doc a".to_owned(), "doc b".to_owned()];
/// let r = MapReduce::new()
///     .map_template("Summarise: {item}")
///     .reduce_template("Combine:\n{mapped_outputs}")
///     .max_concurrency(1)
///     .run(&p, &items, &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!(r.value, "final");
/// assert_eq!(r.metadata["map_count"], 2);
/// assert_eq!(r.metadata["total_calls"], 3);
/// # });
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MapReduce {
    map_template: String,
    reduce_template: String,
    max_concurrency: usize,
    separator: String,
    max_reduce_input_chars: Option<usize>,
    call: CallOptions,
}

impl Default for MapReduce {
    fn default() -> Self {
        Self::new()
    }
}

/// The temperature when none is set.
const DEFAULT_TEMPERATURE: f64 = 0.3;

impl WithCallOptions for MapReduce {
    fn call_options(&self) -> &CallOptions {
        &self.call
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        &mut self.call
    }
}

impl MapReduce {
    /// Empty templates (set both), concurrency 10, temperature 0.3, 4096 tokens, separator
    /// `"\n\n---\n\n"`, no limit on the reduce input.
    ///
    /// ```
    /// let m = executionkit::MapReduce::new();
    /// assert!(m.validate().unwrap_err().message().contains("{item}"));
    /// ```
    pub fn new() -> Self {
        Self {
            map_template: String::new(),
            reduce_template: String::new(),
            max_concurrency: 10,
            separator: DEFAULT_SEPARATOR.to_owned(),
            max_reduce_input_chars: None,
            call: CallOptions::new(),
        }
    }

    /// The prompt for each item; every `{item}` is replaced by the item.
    ///
    /// ```
    /// let m = executionkit::MapReduce::new().map_template("Do {item} {item}");
    /// assert_eq!(m.map_prompt("a"), "Do a a");
    /// ```
    pub fn map_template(mut self, template: impl Into<String>) -> Self {
        self.map_template = template.into();
        self
    }

    /// The reduce prompt; every `{mapped_outputs}` is replaced by the joined map outputs.
    ///
    /// ```
    /// let m = executionkit::MapReduce::new().reduce_template("Join: {mapped_outputs}");
    /// # let _ = m;
    /// ```
    pub fn reduce_template(mut self, template: impl Into<String>) -> Self {
        self.reduce_template = template.into();
        self
    }

    /// How many calls may be in flight at once (default 10, at least 1).
    ///
    /// ```
    /// let m = executionkit::MapReduce::new().max_concurrency(0);
    /// # let m = m.map_template("{item}").reduce_template("{mapped_outputs}");
    /// assert!(m.validate().unwrap_err().message().contains("max_concurrency"));
    /// ```
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// What joins the map outputs in the reduce prompt (default `"\n\n---\n\n"`).
    ///
    /// ```
    /// let m = executionkit::MapReduce::new().separator("\n");
    /// # let _ = m;
    /// ```
    pub fn separator(mut self, separator: impl Into<String>) -> Self {
        self.separator = separator.into();
        self
    }

    /// The most characters of joined outputs one reduce call receives; above it the reduce
    /// is hierarchical. At least 1; unlimited by default.
    ///
    /// ```
    /// let m = executionkit::MapReduce::new().max_reduce_input_chars(8_000);
    /// # let _ = m;
    /// ```
    pub fn max_reduce_input_chars(mut self, n: usize) -> Self {
        self.max_reduce_input_chars = Some(n);
        self
    }

    /// The map prompt for `item`.
    #[must_use]
    pub fn map_prompt(&self, item: &str) -> String {
        self.map_template.replace(ITEM, item)
    }

    /// Checks every option, both templates included (nothing is sent).
    ///
    /// # Errors
    /// `invalid_argument` naming the first bad option: a map template without `{item}`, a
    /// reduce template without `{mapped_outputs}`, `max_concurrency` 0, `max_tokens` 0,
    /// `max_reduce_input_chars` 0, a bad temperature or a blank model.
    ///
    /// ```
    /// use executionkit::MapReduce;
    /// let m = MapReduce::new().map_template("{item}").reduce_template("no placeholder");
    /// assert!(m.validate().unwrap_err().message().contains("{mapped_outputs}"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        if !self.map_template.contains(ITEM) {
            return Err(Error::invalid_argument(
                "map_template",
                format!("map_template must contain the placeholder {ITEM}"),
            ));
        }
        if !self.reduce_template.contains(MAPPED_OUTPUTS) {
            return Err(Error::invalid_argument(
                "reduce_template",
                format!("reduce_template must contain the placeholder {MAPPED_OUTPUTS}"),
            ));
        }
        if self.max_concurrency < 1 {
            return Err(Error::invalid_argument(
                "max_concurrency",
                "max_concurrency must be >= 1, got 0",
            ));
        }
        if self.max_reduce_input_chars == Some(0) {
            return Err(Error::invalid_argument(
                "max_reduce_input_chars",
                "max_reduce_input_chars must be >= 1, got 0",
            ));
        }
        self.call.validate()
    }

    /// Maps every item, then reduces. An empty `items` makes one reduce call over `""`.
    ///
    /// # Errors
    /// `invalid_argument` before any call for a bad option; the first failing call aborts the
    /// run (the calls in flight are cancelled) with one error carrying the whole spend.
    ///
    /// ```
    /// use executionkit::{Budget, MockProvider, RunContext};
    /// use executionkit::MapReduce;
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["x"]);
    /// let ctx = RunContext::new().budget(Budget::new().max_calls(2));
    /// let items = vec!["a".to_owned(), "b".to_owned()];
    /// let e = MapReduce::new().map_template("{item}").reduce_template("{mapped_outputs}")
    ///     .run(&p, &items, &ctx).await.unwrap_err();
    /// assert!(e.is_budget_exhausted()); // the reduce call had no budget left
    /// assert_eq!(e.cost().llm_calls, 2);
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        items: &[String],
        ctx: &RunContext,
    ) -> Result<PatternResult<String, MapReduceStats>> {
        self.validate()?;
        let span = tracing::info_span!(
            target: "executionkit",
            "pattern.map_reduce",
            items = crate::telemetry::int(items.len()),
        );
        let run =
            ctx.tracked(async |tracker| self.map_then_reduce(provider, items, ctx, tracker).await);
        seal(tracing::Instrument::instrument(run, span).await, provider)
    }

    async fn map_then_reduce(
        &self,
        provider: &dyn LlmProvider,
        items: &[String],
        ctx: &RunContext,
        tracker: &CostTracker,
    ) -> Result<PatternResult<String, MapReduceStats>> {
        let prompts: Vec<String> = items.iter().map(|it| self.map_prompt(it)).collect();
        let mut outputs = self.fan_out(provider, prompts, ctx, tracker, false).await?;
        let mut reduce_calls = 0usize;
        let mut levels = 0usize;
        let value = loop {
            levels += 1;
            let groups = self.groups(&outputs);
            let prompts: Vec<String> = groups
                .iter()
                .map(|g| self.reduce_prompt(&outputs[g.clone()]))
                .collect();
            reduce_calls += prompts.len();
            // One group: this is the last reduce call, whose text is the value.
            let last = prompts.len() == 1;
            let mut reduced = self.fan_out(provider, prompts, ctx, tracker, last).await?;
            if reduced.len() == 1 {
                break reduced.pop().unwrap_or_default();
            }
            outputs = reduced;
        };
        let stats = MapReduceStats {
            map_count: items.len(),
            reduce_calls,
            reduce_levels: levels,
            total_calls: tracker.usage().llm_calls,
        };
        Ok(PatternResult::with_stats(value, stats))
    }

    fn reduce_prompt(&self, outputs: &[String]) -> String {
        self.reduce_template
            .replace(MAPPED_OUTPUTS, &outputs.join(&self.separator))
    }

    /// Splits `outputs` into consecutive groups whose joined text fits the limit, each with at
    /// least two outputs (when two are left) so every level shrinks. One group when all fits.
    fn groups(&self, outputs: &[String]) -> Vec<std::ops::Range<usize>> {
        let sep = self.separator.chars().count();
        let lens: Vec<usize> = outputs.iter().map(|o| o.chars().count()).collect();
        let total = lens.iter().sum::<usize>() + sep * outputs.len().saturating_sub(1);
        let limit = match self.max_reduce_input_chars {
            Some(limit) if total > limit && outputs.len() > 2 => limit,
            _ => return std::iter::once(0..outputs.len()).collect(),
        };
        let mut groups = Vec::new();
        let (mut start, mut size) = (0, 0);
        for (i, &len) in lens.iter().enumerate() {
            let n = i - start;
            if n >= 2 && size + sep + len > limit {
                groups.push(start..i);
                start = i;
                size = 0;
            }
            size += if i == start { len } else { sep + len };
        }
        groups.push(start..outputs.len());
        // A lone last output would not shrink: merge it into the previous group.
        if groups.len() > 1 && groups.last().is_some_and(|g| g.len() == 1) {
            let last = groups.pop().unwrap_or(0..0);
            if let Some(prev) = groups.last_mut() {
                prev.end = last.end;
            }
        }
        groups
    }

    fn request(&self, prompt: String) -> ChatRequest {
        self.call
            .request(self.call.messages(prompt), DEFAULT_TEMPERATURE)
    }

    /// One call per prompt, at most `max_concurrency` in flight, outputs in prompt order. The
    /// first failure drops (cancels) the rest and returns (the run's tracker, which counted
    /// them, gives the error its whole spend). `last`: the text of these calls (one) is the
    /// value, delivered to an `on_text` subscriber.
    async fn fan_out(
        &self,
        provider: &dyn LlmProvider,
        prompts: Vec<String>,
        ctx: &RunContext,
        tracker: &CostTracker,
        last: bool,
    ) -> Result<Vec<String>> {
        let mut out = vec![String::new(); prompts.len()];
        let quiet = ctx.without_text();
        let ctx: &RunContext = if last { ctx } else { &quiet };
        let mut calls = futures::stream::iter(prompts.into_iter().enumerate().map(|(i, p)| {
            let req = self.request(p);
            async move {
                let r = ctx.complete_forwarding(provider, req, tracker).await;
                (i, r.map(|(resp, _)| resp))
            }
        }))
        .buffer_unordered(self.max_concurrency);
        while let Some((i, r)) = calls.next().await {
            match r {
                Ok(resp) => resp.content().clone_into(&mut out[i]),
                Err(e) => {
                    drop(calls);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn mr(limit: usize) -> MapReduce {
        MapReduce::new()
            .map_template("{item}")
            .reduce_template("{mapped_outputs}")
            .separator("|")
            .max_reduce_input_chars(limit)
    }

    fn outs(lens: &[usize]) -> Vec<String> {
        lens.iter().map(|&n| "x".repeat(n)).collect()
    }

    fn pairs(m: &MapReduce, lens: &[usize]) -> Vec<(usize, usize)> {
        m.groups(&outs(lens))
            .into_iter()
            .map(|g| (g.start, g.end))
            .collect()
    }

    #[test]
    fn groups_fit_the_limit_and_shrink() {
        let m = mr(10);
        assert_eq!(pairs(&m, &[3, 3]), [(0, 2)]);
        assert_eq!(pairs(&m, &[4, 4, 4, 4]), [(0, 2), (2, 4)]);
        // Oversized outputs still pair up (progress), and a lone tail merges back.
        assert_eq!(pairs(&m, &[20, 20, 20]), [(0, 3)]);
        assert_eq!(pairs(&m, &[20, 20, 20, 20]), [(0, 2), (2, 4)]);
        assert_eq!(pairs(&m, &[1, 1, 1]), [(0, 3)]);
    }
}
