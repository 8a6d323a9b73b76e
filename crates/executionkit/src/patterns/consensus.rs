//! [`Consensus`]: sample the same prompt N times and vote.
//!
//! ```
//! use executionkit::{Consensus, MockProvider, RunContext};
//! # futures::executor::block_on(async {
//! let p = MockProvider::new(["Paris", "Paris", "Lyon"]);
//! let r = Consensus::new().samples(3).run(&p, "Capital of France?", &RunContext::new()).await.unwrap();
//! assert_eq!(r.value, "Paris");
//! assert_eq!(r.metadata["unique_responses"], 2);
//! # });
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Serialize, Serializer};
use tracing::Instrument;

use super::options::{CallOptions, WithCallOptions};
use super::{Pattern, StepInput};
use crate::engine::stop::{StopRule, VoteBook};
use crate::engine::voting::{VotingStrategy, normalized, tally_keys};
use crate::engine::{CostTracker, RunContext, seal};
use crate::error::{Error, Result};
use crate::provider::{ChatRequest, Choice, LlmProvider, Message};
use crate::redact::redact_secret;
use crate::result::{PatternResult, RedactStats};

/// What a vote observed: [`Consensus::run`]'s `stats`, and its `metadata` keys of the same
/// names (the metadata is these statistics serialised).
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["A", "A", "B", "A"]);
/// let r = Consensus::new().samples(4).run(&p, "Pick a letter", &RunContext::new()).await.unwrap();
/// assert_eq!((r.stats.agreement_ratio, r.stats.unique_responses, r.stats.tie_count), (0.75, 2, 1));
/// assert!(r.stats.early_stop.is_none()); // no stop rule: every sample was drawn
/// assert_eq!(r.metadata["agreement_ratio"], r.stats.agreement_ratio);
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsensusStats {
    /// The winner's votes over the samples voted on (also the result's `score`); with
    /// [`Consensus::logprob_weights`] applied, the winner's total weight over the samples.
    pub agreement_ratio: f64,
    /// Distinct vote keys.
    pub unique_responses: usize,
    /// Keys sharing the top count (the top weight when weighted): 1 is a clean win, 0 a
    /// unanimous vote's.
    pub tie_count: usize,
    /// With a stop rule ([`Consensus::early_stop`]) or [`Consensus::logprob_weights`]: how the
    /// sampling ended. Its fields are metadata keys of their own (`samples_used`,
    /// `stopped_early`, `stop_rule`, `vote_counts`), all absent otherwise.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStopStats>,
    /// With [`Consensus::logprob_weights`]: whether the votes were weighted (`false` when a
    /// sample came without log-probabilities, so every vote counted 1). Metadata key
    /// `logprob_weighted`, absent when weights were not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprob_weighted: Option<bool>,
    /// With [`Consensus::usc`], when every answer differed and the selection call ran: what it
    /// picked. Metadata key `usc`, absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usc: Option<UscStats>,
}

/// What universal self-consistency's selection call did ([`ConsensusStats::usc`]):
/// `{"picked": <sample index>|null, "failure": null|"unparsable"|<error kind>}`.
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext};
/// # futures::executor::block_on(async {
/// // Three different answers, then the selection call's reply.
/// let p = MockProvider::new(["It is four.", "4", "Four, I think.", r#"{"response": 1}"#]);
/// let r = Consensus::new().samples(3).max_concurrency(1).usc(true)
///     .run(&p, "What is 2 + 2?", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value, "4");
/// assert_eq!(r.stats.usc.unwrap().picked, Some(1));
/// assert_eq!(r.metadata["usc"], serde_json::json!({"picked": 1, "failure": null}));
/// assert_eq!(r.cost.llm_calls, 4);
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UscStats {
    /// The chosen answer's sample index (in the order the answers were counted), or `None`
    /// when the call failed or its reply named no answer (the vote's winner is kept).
    pub picked: Option<usize>,
    /// Why nothing was picked: `"unparsable"`, or the failed call's error kind
    /// (`budget_exhausted`, …).
    pub failure: Option<String>,
}

/// How a consensus with a stop rule ended ([`ConsensusStats::early_stop`]).
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext, StopRule};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["Paris"]);
/// let r = Consensus::new().samples(40).max_concurrency(1).early_stop(StopRule::window(3))
///     .run(&p, "Capital of France?", &RunContext::new()).await.unwrap();
/// let stop = r.stats.early_stop.unwrap();
/// assert_eq!((stop.samples_used, stop.stopped_early, stop.stop_rule), (3, true, StopRule::window(3)));
/// assert_eq!((stop.vote_counts[0].answer.as_str(), stop.vote_counts[0].count), ("Paris", 3));
/// assert_eq!(r.metadata["stop_rule"], "window:3");
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EarlyStopStats {
    /// Samples that answered before the rule fired (or the cap was reached).
    pub samples_used: usize,
    /// Whether the rule fired before the cap.
    pub stopped_early: bool,
    /// The rule, serialised as its text (`"window:3"`, `"adaptive:0.95"`).
    #[serde(serialize_with = "as_text")]
    pub stop_rule: StopRule,
    /// Every answer's votes, highest count first (ties in order of arrival).
    pub vote_counts: Vec<VoteCount>,
}

/// One answer's votes in [`EarlyStopStats::vote_counts`]: `{"answer", "count", "weight"}`.
///
/// ```
/// let v = executionkit::VoteCount { answer: "4".into(), count: 2, weight: 2.0 };
/// assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"answer":"4","count":2,"weight":2.0}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoteCount {
    /// The vote key (the normalised text, or [`Consensus::vote_key`]'s value).
    pub answer: String,
    /// How many samples gave it.
    pub count: u64,
    /// Its weight in the vote: the sum of its samples' weights under
    /// [`Consensus::logprob_weights`], else the count (as a float).
    pub weight: f64,
}

fn as_text<S: Serializer>(rule: &StopRule, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(rule)
}

impl RedactStats for ConsensusStats {
    /// The answers are model text, as the metadata's `vote_counts` are.
    fn redact_secret(&mut self, secret: &str) {
        for v in self
            .early_stop
            .iter_mut()
            .flat_map(|e| e.vote_counts.iter_mut())
        {
            if let std::borrow::Cow::Owned(r) = redact_secret(&v.answer, secret) {
                v.answer = r;
            }
        }
    }
}

/// The most samples one consensus may draw.
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext, internals::patterns::MAX_SAMPLES};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["a"]);
/// let err = Consensus::new().samples(MAX_SAMPLES + 1).run(&p, "q", &RunContext::new()).await.unwrap_err();
/// assert!(err.is_invalid_argument());
/// assert_eq!(p.call_count(), 0); // refused before any call
/// # });
/// ```
pub const MAX_SAMPLES: usize = 1_000_000;

/// The sampling temperature when none is set: varied answers to vote on.
const DEFAULT_TEMPERATURE: f64 = 0.9;

/// The function a vote is taken on: maps a sample's text to the value voted on.
pub(crate) type VoteKey = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Consensus voting: N samples of one prompt, sent concurrently (up to `max_concurrency`),
/// tallied by majority or unanimity.
///
/// * The vote is on a **key** of each sample: by default its whitespace-normalised text; any
///   function of the text with [`Consensus::vote_key`] (e.g. the final number of an answer).
///   The value returned is the **original text** of the first sample with the winning key.
/// * `score` = `metadata.agreement_ratio` (winning votes / samples); metadata also holds
///   `unique_responses` (distinct keys) and `tie_count` (keys sharing the top count; 1 is a
///   clean win, 0 a unanimous vote).
/// * All or nothing: the first failing sample cancels the others, and the run fails with that
///   one error carrying the whole fan-out's spend. A budget that trips mid fan-out gives one
///   `budget_exhausted` error the same way. A failed unanimous vote is `consensus_failed`,
///   carrying the cost of its calls.
/// * Dropping the future cancels every request in flight.
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["A", "A", "B", "A", "C"]);
/// let r = Consensus::new().run(&p, "Pick a letter", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value, "A");
/// assert_eq!(r.score, Some(0.6));
/// assert_eq!(r.metadata["unique_responses"], 3);
/// assert_eq!(r.cost.llm_calls, 5);
/// # });
/// ```
#[derive(Clone)]
#[must_use]
pub struct Consensus {
    samples: usize,
    max_concurrency: usize,
    strategy: VotingStrategy,
    call: CallOptions,
    vote_key: Option<VoteKey>,
    use_n: bool,
    early_stop: StopRule,
    logprob_weights: bool,
    usc: bool,
}

impl Default for Consensus {
    fn default() -> Self {
        Self {
            samples: 5,
            max_concurrency: 5,
            strategy: VotingStrategy::Majority,
            call: CallOptions::new(),
            vote_key: None,
            use_n: false,
            early_stop: StopRule::Fixed,
            logprob_weights: false,
            usc: false,
        }
    }
}

impl fmt::Debug for Consensus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consensus")
            .field("samples", &self.samples)
            .field("max_concurrency", &self.max_concurrency)
            .field("strategy", &self.strategy)
            .field("call", &self.call)
            .field("vote_key", &self.vote_key.as_ref().map(|_| "<fn>"))
            .field("use_n", &self.use_n)
            .field("early_stop", &self.early_stop)
            .field("logprob_weights", &self.logprob_weights)
            .field("usc", &self.usc)
            .finish()
    }
}

impl WithCallOptions for Consensus {
    fn call_options(&self) -> &CallOptions {
        &self.call
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        &mut self.call
    }
}

impl Consensus {
    /// The defaults: 5 samples, temperature 0.9, 5 at a time, majority, 4096 max tokens.
    ///
    /// ```
    /// let c = executionkit::Consensus::new();
    /// assert_eq!(c.samples_value(), 5);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How many samples to draw (1 to `MAX_SAMPLES`).
    ///
    /// ```
    /// assert_eq!(executionkit::Consensus::new().samples(3).samples_value(), 3);
    /// ```
    pub fn samples(mut self, n: usize) -> Self {
        self.samples = n;
        self
    }

    /// At most this many samples in flight (≥ 1).
    ///
    /// ```
    /// let c = executionkit::Consensus::new().max_concurrency(2);
    /// # let _ = c;
    /// ```
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// Majority (default) or unanimous.
    ///
    /// ```
    /// let c = executionkit::Consensus::new().strategy(executionkit::VotingStrategy::Unanimous);
    /// # let _ = c;
    /// ```
    pub fn strategy(mut self, s: VotingStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// Votes on `key(text)` instead of the normalised text (e.g. an extracted final answer).
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["So it is 4", "Answer: 4", "5"]);
    /// let last_word = |t: &str| t.split_whitespace().last().unwrap_or("").to_owned();
    /// let r = Consensus::new().samples(3).vote_key(last_word)
    ///     .run(&p, "2+2?", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "So it is 4");
    /// # });
    /// ```
    pub fn vote_key(mut self, key: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.vote_key = Some(Arc::new(key));
        self
    }

    /// Asks for all samples in one request with `n` when the provider honours it; any choices
    /// the server did not return are then drawn by separate requests.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["x", "x", "y"]).with_n_support();
    /// let r = Consensus::new().samples(3).use_n(true).run(&p, "q", &RunContext::new()).await.unwrap();
    /// assert_eq!((r.value.as_str(), p.call_count()), ("x", 1));
    /// # });
    /// ```
    pub fn use_n(mut self, yes: bool) -> Self {
        self.use_n = yes;
        self
    }

    /// The number of samples configured.
    ///
    /// ```
    /// assert_eq!(executionkit::Consensus::new().samples_value(), 5);
    /// ```
    #[must_use]
    pub fn samples_value(&self) -> usize {
        self.samples
    }

    /// Checks every option (see [`Pattern::validate`]).
    ///
    /// ```
    /// let e = executionkit::Consensus::new().samples(0).check().unwrap_err();
    /// assert!(e.to_string().contains("samples must be >= 1, got 0"));
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` naming the first bad option and its value.
    pub fn check(&self) -> Result<()> {
        if self.samples < 1 {
            return Err(Error::invalid_argument(
                "samples",
                format!("samples must be >= 1, got {}", self.samples),
            ));
        }
        if self.samples > MAX_SAMPLES {
            return Err(Error::invalid_argument(
                "samples",
                format!("samples must be <= {MAX_SAMPLES}, got {}", self.samples),
            ));
        }
        if self.max_concurrency < 1 {
            return Err(Error::invalid_argument(
                "max_concurrency",
                format!("max_concurrency must be >= 1, got {}", self.max_concurrency),
            ));
        }
        self.call.validate()?;
        self.early_stop.check()?;
        if self.early_stop.stops_early() && self.strategy == VotingStrategy::Unanimous {
            return Err(Error::invalid_argument(
                "early_stop",
                "early_stop needs the majority strategy (a unanimous vote must see every sample)",
            ));
        }
        Ok(())
    }

    fn request(&self, messages: &[Message], sample: usize) -> ChatRequest {
        let mut req = self.call.request(messages.to_vec(), DEFAULT_TEMPERATURE);
        if let Some(seed) = self.call.seed {
            req.seed = Some(seed.wrapping_add(sample as u64));
        }
        req.logprobs = self.logprob_weights;
        req
    }

    /// A sample's vote weight: its choice's [`LogprobSummary::weight`](crate::LogprobSummary::weight) when weights are on.
    fn weight_of(&self, choice: Option<&Choice>) -> Option<f64> {
        if self.logprob_weights {
            choice.and_then(|c| c.logprobs).and_then(|s| s.weight())
        } else {
            None
        }
    }

    /// Weighs each vote by the model's confidence in its answer (default off). Each request
    /// then asks for token log-probabilities (`"logprobs": true`), and a sample's weight is
    /// `exp(mean token log-probability)`, the geometric mean of its tokens' probabilities, in
    /// (0, 1] ([`LogprobSummary::weight`](crate::LogprobSummary::weight)). The answer of highest total weight wins (a tie goes
    /// to the answer seen first), `agreement_ratio` (and `score`) is the winner's weight over
    /// the samples used, and the metadata adds `logprob_weighted: true` and `vote_counts`
    /// with each answer's `weight` (and `samples_used`, `stopped_early`, `stop_rule` as with a
    /// stop rule). Stop rules use the weights ([`StopRule`]: the adaptive rule rescales them
    /// to sum to the number of samples; the window rule ignores them).
    ///
    /// **Off when log-probabilities are absent:** if any sample of the run comes without
    /// them (Anthropic, a server that ignores `logprobs`, a reply with none or in another
    /// shape, an empty answer), every vote of the run counts 1, as without this option, and
    /// `logprob_weighted` is `false`.
    ///
    /// ```
    /// use executionkit::{Consensus, LlmResponse, LogprobSummary, MockProvider, RunContext};
    /// # futures::executor::block_on(async {
    /// let sure = |t: &str| LlmResponse::text(t).with_logprobs(LogprobSummary { sum: -0.1, tokens: 1 });
    /// let unsure = |t: &str| LlmResponse::text(t).with_logprobs(LogprobSummary { sum: -3.0, tokens: 1 });
    /// let p = MockProvider::new([unsure("Lyon"), sure("Paris"), unsure("Lyon")]);
    /// let r = Consensus::new().samples(3).max_concurrency(1).logprob_weights(true)
    ///     .run(&p, "Capital of France?", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "Paris"); // 0.905 outweighs 2 × 0.050
    /// assert_eq!(r.metadata["logprob_weighted"], true);
    /// assert!(p.last_call().unwrap().request.logprobs);
    /// // Without log-probabilities, plain counting.
    /// let p = MockProvider::new(["Lyon", "Paris", "Lyon"]);
    /// let r = Consensus::new().samples(3).logprob_weights(true)
    ///     .run(&p, "Capital of France?", &RunContext::new()).await.unwrap();
    /// assert_eq!((r.value.as_str(), r.metadata["logprob_weighted"].as_bool()), ("Lyon", Some(false)));
    /// # });
    /// ```
    pub fn logprob_weights(mut self, yes: bool) -> Self {
        self.logprob_weights = yes;
        self
    }

    /// Universal self-consistency for free text (off by default): when the samples' answers
    /// all differ (no two equal after normalisation or [`vote_key`](Self::vote_key)), one
    /// extra call shows the model every answer and asks which is the most consistent with the
    /// others; its choice becomes the value. The call is counted in the budget like any other
    /// (a refused JSON-schema `response_format` is asked again in plain text, as the refine
    /// judge does). When it fails, or its reply names no answer, the vote's winner is kept and
    /// `metadata.usc` says why; the run does not fail for it. See [`UscStats`].
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext};
    /// # futures::executor::block_on(async {
    /// // Two answers agree: no selection call.
    /// let p = MockProvider::new(["4", "4", "four"]);
    /// let r = Consensus::new().samples(3).usc(true).run(&p, "2 + 2?", &RunContext::new()).await.unwrap();
    /// assert_eq!((r.value.as_str(), r.cost.llm_calls), ("4", 3));
    /// assert!(r.metadata.get("usc").is_none());
    /// # });
    /// ```
    pub fn usc(mut self, yes: bool) -> Self {
        self.usc = yes;
        self
    }

    /// Stops sampling when the answer is settled ([`StopRule`]; default [`StopRule::Fixed`]:
    /// every sample). With a rule, `samples` is the cap; samples go out `max_concurrency` at a
    /// time, each its own request (sample *i* still sends seed + *i*; `use_n` is not used), and
    /// when the rule fires the calls in flight are cancelled (what they cost is counted) and no
    /// more start. Votes are counted in the order replies arrive, and a tie goes to the answer
    /// that arrived first. The metadata then adds `samples_used`, `stopped_early`, `stop_rule`
    /// and `vote_counts` (`[{"answer", "count", "weight"}]`, highest first), and
    /// `agreement_ratio` is the winner's weight over `samples_used`. A rule needs the majority
    /// strategy.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext, StopRule};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["Paris"]);
    /// let r = Consensus::new()
    ///     .samples(40)
    ///     .max_concurrency(1)
    ///     .early_stop(StopRule::window(3))
    ///     .run(&p, "Capital of France?", &RunContext::new())
    ///     .await
    ///     .unwrap();
    /// assert_eq!(r.cost.llm_calls, 3);
    /// assert_eq!(r.metadata["samples_used"], 3);
    /// assert_eq!(r.metadata["stopped_early"], true);
    /// assert_eq!(r.metadata["stop_rule"], "window:3");
    /// # });
    /// ```
    pub fn early_stop(mut self, rule: StopRule) -> Self {
        self.early_stop = rule;
        self
    }

    /// Runs the vote on `prompt`.
    ///
    /// # Errors
    /// `invalid_argument` before any call; `consensus_failed` when a unanimous vote splits;
    /// `budget_exhausted` or the first provider failure otherwise. Every error carries the spend.
    ///
    /// ```
    /// use executionkit::{Consensus, MockProvider, RunContext, VotingStrategy};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["yes", "yes", "no"]);
    /// let r = Consensus::new().samples(3).run(&p, "Is 7 prime?", &RunContext::new()).await.unwrap();
    /// assert_eq!(r.value, "yes");
    /// let err = Consensus::new()
    ///     .samples(3)
    ///     .strategy(VotingStrategy::Unanimous)
    ///     .run(&p, "Is 7 prime?", &RunContext::new())
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.is_consensus_failed());
    /// # });
    /// ```
    pub async fn run(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
    ) -> Result<PatternResult<String, ConsensusStats>> {
        self.check()?;
        let span = tracing::info_span!(
            target: "executionkit",
            "pattern.consensus",
            samples = crate::telemetry::int(self.samples),
            strategy = self.strategy.as_str(),
        );
        let vote = ctx.tracked(async |tracker| self.vote(provider, prompt, ctx, tracker).await);
        seal(vote.instrument(span).await, provider)
    }

    async fn vote(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        ctx: &RunContext,
        tracker: &CostTracker,
    ) -> Result<PatternResult<String, ConsensusStats>> {
        let messages = self.call.messages(prompt);
        let (result, distinct) = if self.early_stop.stops_early() {
            self.vote_until_settled(provider, &messages, ctx, tracker)
                .await?
        } else {
            self.vote_fixed(provider, &messages, ctx, tracker).await?
        };
        Ok(match distinct {
            Some(texts) => {
                self.select_usc(provider, prompt, &texts, result, ctx, tracker)
                    .await
            }
            None => result,
        })
    }

    /// The texts of a vote of `samples` whose answers all differ (`unique == samples`, at
    /// least two), when [`usc`](Self::usc) is on: what the selection call chooses from.
    fn distinct_texts<'t>(
        &self,
        samples: usize,
        unique: usize,
        texts: impl Iterator<Item = &'t str>,
    ) -> Option<Vec<String>> {
        (self.usc && samples >= 2 && unique == samples).then(|| texts.map(str::to_owned).collect())
    }

    /// Universal self-consistency's selection call over `texts`; sets the value and
    /// `stats.usc`. A failure keeps the vote's winner.
    async fn select_usc(
        &self,
        provider: &dyn LlmProvider,
        prompt: &str,
        texts: &[String],
        result: PatternResult<String, ConsensusStats>,
        ctx: &RunContext,
        tracker: &CostTracker,
    ) -> PatternResult<String, ConsensusStats> {
        use super::usc::{
            USC_MAX_CHARS, USC_MAX_TOKENS, USC_TEMPERATURE, parse_usc_choice, usc_messages,
            usc_response_format,
        };
        let answers: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut plain = self.call.request(
            usc_messages(prompt, &answers, USC_MAX_CHARS),
            USC_TEMPERATURE,
        );
        plain.temperature = Some(USC_TEMPERATURE);
        plain.max_tokens = Some(USC_MAX_TOKENS);
        let reply = super::judge::complete_with_format(
            ctx,
            provider,
            plain,
            usc_response_format(texts.len()),
            tracker,
            None,
        )
        .await;
        let mut value = result.value;
        let usc = match reply {
            Ok(resp) => match parse_usc_choice(resp.content(), texts.len()) {
                Some(k) => {
                    value.clone_from(&texts[k]);
                    UscStats {
                        picked: Some(k),
                        failure: None,
                    }
                }
                None => UscStats {
                    picked: None,
                    failure: Some("unparsable".to_owned()),
                },
            },
            Err(e) => UscStats {
                picked: None,
                failure: Some(e.kind().as_str().to_owned()),
            },
        };
        let mut stats = result.stats;
        stats.usc = Some(usc);
        let mut r = PatternResult::with_stats(value, stats);
        r.score = result.score;
        r
    }

    /// Every sample drawn (no stop rule), then the vote.
    async fn vote_fixed(
        &self,
        provider: &dyn LlmProvider,
        messages: &[Message],
        ctx: &RunContext,
        tracker: &CostTracker,
    ) -> Result<(PatternResult<String, ConsensusStats>, Option<Vec<String>>)> {
        let mut texts: Vec<Option<String>> = vec![None; self.samples];
        let mut weights: Vec<Option<f64>> = vec![None; self.samples];

        if self.use_n && self.samples > 1 && provider.supports_n() {
            if let Ok(n) = u32::try_from(self.samples) {
                let req = self.request(messages, 0).n(n);
                let resp = ctx.complete(provider, req, tracker).await?;
                for ((slot, weight), choice) in
                    texts.iter_mut().zip(weights.iter_mut()).zip(resp.choices)
                {
                    *weight = self.weight_of(Some(&choice));
                    *slot = Some(choice.content);
                }
            }
        }

        let missing: Vec<usize> = (0..self.samples).filter(|&i| texts[i].is_none()).collect();
        {
            let mut in_flight = futures::stream::iter(missing)
                .map(|i| {
                    let req = self.request(messages, i);
                    async move { (i, ctx.complete(provider, req, tracker).await) }
                })
                .buffer_unordered(self.max_concurrency);
            while let Some((i, r)) = in_flight.next().await {
                match r {
                    Ok(resp) => {
                        weights[i] = self.weight_of(resp.choices.first());
                        texts[i] = Some(resp.into_content());
                    }
                    Err(e) => {
                        // Dropping the stream cancels the samples still in flight; their
                        // reserved calls stay counted in the tracker, whose spend the error
                        // leaves with.
                        drop(in_flight);
                        return Err(e);
                    }
                }
            }
        }

        let texts: Vec<String> = texts.into_iter().map(Option::unwrap_or_default).collect();
        let keys: Vec<Cow<'_, str>> = match &self.vote_key {
            Some(key) => texts.iter().map(|t| Cow::Owned(key(t))).collect(),
            None => texts.iter().map(|t| normalized(t)).collect(),
        };
        let t = tally_keys(&keys, self.strategy)?;
        let distinct = self.distinct_texts(
            texts.len(),
            t.unique_responses,
            texts.iter().map(String::as_str),
        );
        if self.logprob_weights {
            // Tally again with weights, in sample order (the unanimous check is done).
            let mut votes = Votes::default();
            for ((key, text), weight) in keys.iter().zip(&texts).zip(weights) {
                votes.push(key, text, weight);
            }
            let weighted = votes.book.is_weighted();
            let (mut stats, value) = votes.stats(StopRule::Fixed, false);
            if self.strategy == VotingStrategy::Unanimous {
                stats.tie_count = t.tie_count;
            }
            stats.logprob_weighted = Some(weighted);
            let score = stats.agreement_ratio;
            return Ok((
                PatternResult::with_stats(value, stats).with_score(score),
                distinct,
            ));
        }
        let value = texts.into_iter().nth(t.winner_index).unwrap_or_default();
        let stats = ConsensusStats {
            agreement_ratio: t.agreement_ratio,
            unique_responses: t.unique_responses,
            tie_count: t.tie_count,
            early_stop: None,
            logprob_weighted: None,
            usc: None,
        };
        Ok((
            PatternResult::with_stats(value, stats).with_score(t.agreement_ratio),
            distinct,
        ))
    }
}

/// The votes of a consensus in the order they are counted: the [`VoteBook`] the stop rules
/// read, and each answer's key, first text, count and total weight.
#[derive(Default)]
struct Votes {
    book: VoteBook,
    answers: Vec<(String, String, u64, f64)>,
}

impl Votes {
    /// Counts one sample (`weight` `None`: no weight, which turns weighting off).
    fn push(&mut self, key: &str, text: &str, weight: Option<f64>) {
        self.book.push_weighted(key, weight);
        let w = weight.unwrap_or(0.0);
        match self.answers.iter_mut().find(|a| a.0 == key) {
            Some(a) => {
                a.2 += 1;
                a.3 += w;
            }
            None => self.answers.push((key.to_owned(), text.to_owned(), 1, w)),
        }
    }

    /// The statistics of the vote and the winning text. Weights are the answers' total
    /// weights when every vote had one, else their counts; the winner has the highest, the
    /// first counted among equals.
    #[allow(clippy::cast_precision_loss)]
    fn stats(self, rule: StopRule, stopped_early: bool) -> (ConsensusStats, String) {
        let used = self.book.len();
        let weighted = self.book.is_weighted();
        let weight = |a: &(String, String, u64, f64)| if weighted { a.3 } else { a.2 as f64 };
        let unique = self.answers.len();
        // A stable sort keeps the counting order among equal weights: the first is the winner.
        let mut ranked: Vec<(String, String, u64, f64)> = self
            .answers
            .into_iter()
            .map(|a| {
                let w = weight(&a);
                (a.0, a.1, a.2, w)
            })
            .collect();
        ranked.sort_by(|x, y| y.3.total_cmp(&x.3));
        let top = ranked.first().map_or(0.0, |a| a.3);
        let tie_count = ranked.iter().filter(|a| a.3 == top).count();
        let agreement = if used == 0 { 0.0 } else { top / used as f64 };
        let vote_counts = ranked
            .iter()
            .map(|a| VoteCount {
                answer: a.0.clone(),
                count: a.2,
                weight: a.3,
            })
            .collect();
        let value = ranked.into_iter().next().map(|a| a.1).unwrap_or_default();
        let stats = ConsensusStats {
            agreement_ratio: agreement,
            unique_responses: unique,
            tie_count,
            early_stop: Some(EarlyStopStats {
                samples_used: used,
                stopped_early,
                stop_rule: rule,
                vote_counts,
            }),
            logprob_weighted: None,
            usc: None,
        };
        (stats, value)
    }
}

impl Consensus {
    /// Samples until the stop rule fires or the cap is reached, counting votes as they arrive.
    #[allow(clippy::cast_precision_loss)]
    async fn vote_until_settled(
        &self,
        provider: &dyn LlmProvider,
        messages: &[Message],
        ctx: &RunContext,
        tracker: &CostTracker,
    ) -> Result<(PatternResult<String, ConsensusStats>, Option<Vec<String>>)> {
        let mut votes = Votes::default();
        let mut stopped_early = false;
        {
            let mut in_flight = futures::stream::iter(0..self.samples)
                .map(|i| {
                    let req = self.request(messages, i);
                    async move { ctx.complete(provider, req, tracker).await }
                })
                .buffer_unordered(self.max_concurrency);
            while let Some(r) = in_flight.next().await {
                let (text, weight) = match r {
                    Ok(resp) => {
                        let weight = self.weight_of(resp.choices.first());
                        (resp.into_content(), weight)
                    }
                    Err(e) => {
                        drop(in_flight);
                        return Err(e);
                    }
                };
                let key = match &self.vote_key {
                    Some(key) => key(&text),
                    None => normalized(&text).into_owned(),
                };
                votes.push(&key, &text, weight);
                if votes.book.len() < self.samples && self.early_stop.should_stop(&votes.book) {
                    // Dropping the stream cancels the samples in flight; their reserved calls
                    // stay counted in the tracker.
                    stopped_early = true;
                    break;
                }
            }
        }
        let weighted = self.logprob_weights.then(|| votes.book.is_weighted());
        let distinct = self.distinct_texts(
            votes.book.len(),
            votes.answers.len(),
            votes.answers.iter().map(|a| a.1.as_str()),
        );
        let (mut stats, value) = votes.stats(self.early_stop, stopped_early);
        stats.logprob_weighted = weighted;
        let agreement = stats.agreement_ratio;
        Ok((
            PatternResult::with_stats(value, stats).with_score(agreement),
            distinct,
        ))
    }
}

#[async_trait]
impl Pattern for Consensus {
    fn name(&self) -> &'static str {
        "consensus"
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }

    /// Votes on the previous step's value (or the task for a first step).
    async fn run_step(
        &self,
        provider: &dyn LlmProvider,
        input: StepInput<'_>,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        Ok(self.run(provider, input.prompt(), ctx).await?.erase_stats())
    }
}

// Many questions under one total sample budget; a child module, so that its samples are built
// as this module builds them.
mod set;
pub use set::{ConsensusSet, ConsensusSetResult};
