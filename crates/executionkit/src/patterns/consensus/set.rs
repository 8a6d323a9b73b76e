//! [`ConsensusSet`]: consensus over many questions under one total sample budget, the samples
//! spent where the votes are most split (after Blend-ASC).
//!
//! A child module of `consensus`, so that it builds each sample's request exactly as
//! [`Consensus`] does (seed + *i* on sample *i*, the same call options and vote key).

use std::collections::BTreeSet;

use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use super::{Consensus, ConsensusStats, Votes};
use crate::engine::stop::{
    DEFAULT_CONFIDENCE, StopRule, leader_probability, leader_probability_weighted,
};
use crate::engine::voting::{VotingStrategy, normalized};
use crate::engine::{CostTracker, RunContext, seal};
use crate::error::{Error, Result};
use crate::provider::{LlmProvider, Message};
use crate::result::PatternResult;
use crate::usage::TokenUsage;

/// Consensus over a list of questions under one **total** sample budget, allocated adaptively:
/// every question gets a sample, and the rest go where the votes are most split.
///
/// The per-question settings are a [`Consensus`] ([`consensus`](Self::consensus)): its
/// `samples` is the **cap** per question, its `max_concurrency` bounds the requests in flight
/// **across all questions**, and its call options (model, temperature, seed, system message,
/// …) and vote key apply to every question. It must use the majority strategy and no
/// [`early_stop`](Consensus::early_stop) of its own: the rule that settles a question is the
/// set's [`stop_rule`](Self::stop_rule) (default `adaptive:0.95`). `use_n` is not used: every
/// sample is its own request, and sample *i* of a question sends seed + *i*.
///
/// # The allocation rule
///
/// Let *T* be the total ([`total_samples`](Self::total_samples); default: the cap × the number of
/// questions, i.e. a fixed number per question) and *C* the cap. A sample is counted against
/// *T* when it is sent. While fewer than `max_concurrency` samples are in flight, fewer than *T*
/// have been sent and the budget has not run out, the next sample goes to:
///
/// 1. the first question (in input order) that has not been sent a sample yet; otherwise
/// 2. among the **open** questions (not failed, not settled, fewer than *C* samples sent), the
///    one where one more sample buys the most: the highest `(1 − P) / n`, where
///    `P = leader_probability(a + f, b)` is the posterior probability that its leading answer
///    beats the runner-up, *a* and *b* are the vote counts of its leading and second answer so
///    far, *f* its samples in flight (counted as if they will agree with the leader, so that
///    samples in flight spread over the questions instead of piling onto one) and *n* the
///    samples it was sent. Dividing by *n* moves samples away from a question that stays split
///    after many samples (a near tie that more samples barely settle) to questions not yet
///    sampled much. On the synthetic benchmark (bench/quality, 2,000 questions) at 8 samples a
///    question this lost 3.1 accuracy points against fixed N = 40 where ranking by `P` alone
///    lost 4.25; at 10 a question both lost about 1.9 (RESULTS.md). Ties
///    go to the question sent fewer samples, then to the earlier one. `leader_probability` is
///    the closed form of [`StopRule::Adaptive`]: `P(θ > ½)` for `θ ~ Beta(a + 1, b + 1)`.
///
/// When none is open, the set waits for a reply. Each reply is a vote for its question; when the
/// stop rule fires on a question's votes before its cap, the question is **settled** and gets no
/// more samples (its samples already in flight are still awaited and counted). With
/// [`StopRule::Fixed`] no question settles: the whole total is spent, on the most split
/// questions first. Hence: no question gets more than *C* samples, the set sends at most
/// min(*T*, *C* × questions), and *T* must be at least the number of questions, so that (budget
/// permitting) every question gets at least one.
///
/// # Results, failures and the budget
///
/// Every call goes through the run's [`RunContext`] (one ledger for the whole set; each call is
/// reserved before it is sent). [`ConsensusSetResult::results`] holds, in input order, each
/// question's consensus result (value, score, cost, and the metadata of a consensus with a stop
/// rule: `agreement_ratio`, `unique_responses`, `tie_count`, `samples_used`, `stopped_early`,
/// `stop_rule`, `vote_counts`) or its error:
///
/// * A sample that fails (after the run's retries) fails **its question only**: the question's
///   samples in flight are cancelled, it gets no more, and its error carries its spend. The
///   other questions go on.
/// * When the budget runs out (a call cannot be reserved), no new sample is sent to any
///   question; those in flight are awaited. A question with at least one vote still gets its
///   result (`stopped_early: false`, fewer samples than it might have had); a question without
///   a vote gets the `budget_exhausted` error. [`ConsensusSetResult::budget_exhausted`] says so.
///
/// Dropping the future cancels every request in flight.
///
/// ```
/// use executionkit::{Consensus, ConsensusSet, MockProvider, RunContext, StopRule};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["Paris"]); // every sample agrees
/// let set = ConsensusSet::new()
///     .consensus(Consensus::new().samples(10).max_concurrency(1))
///     .total_samples(20)
///     .stop_rule(StopRule::adaptive(0.95));
/// let r = set.run(&p, &["Capital of France?", "Capital of France, again?"], &RunContext::new())
///     .await
///     .unwrap();
/// // 4 agreeing votes reach P = 31/32 >= 0.95: each question settles after 4 samples.
/// assert_eq!((r.samples_used, r.cost.llm_calls), (8, 8));
/// let first = r.results[0].as_ref().unwrap();
/// assert_eq!(first.value, "Paris");
/// assert_eq!(first.metadata["samples_used"], 4);
/// assert_eq!(first.metadata["stopped_early"], true);
/// # });
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ConsensusSet {
    consensus: Consensus,
    total_samples: Option<usize>,
    stop_rule: StopRule,
}

impl Default for ConsensusSet {
    fn default() -> Self {
        Self {
            consensus: Consensus::new(),
            total_samples: None,
            stop_rule: StopRule::adaptive(DEFAULT_CONFIDENCE),
        }
    }
}

/// What a [`ConsensusSet`] run gives back: each question's outcome in input order, and the
/// totals.
///
/// ```
/// use executionkit::{Consensus, ConsensusSet, MockProvider, RunContext, StopRule};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["yes", "no"]);
/// let r = ConsensusSet::new()
///     .consensus(Consensus::new().samples(3).max_concurrency(1))
///     .stop_rule(StopRule::Fixed)
///     .run(&p, &["a?", "b?"], &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!((r.results.len(), r.failed(), r.total_samples, r.samples_used), (2, 0, 6, 6));
/// assert!(!r.budget_exhausted);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ConsensusSetResult {
    /// Each question's consensus result or error, in input order.
    pub results: Vec<Result<PatternResult<String, ConsensusStats>>>,
    /// What the whole set spent (the sum of the questions' costs).
    pub cost: TokenUsage,
    /// Money spent, when prices are known.
    pub usd: Option<f64>,
    /// Samples sent over all questions (never more than `total_samples`; a sample the budget
    /// refused is not counted, one the run retried counts once).
    pub samples_used: usize,
    /// The total the set was allowed (as set, or the cap × the number of questions).
    pub total_samples: usize,
    /// Whether the budget ran out, stopping new samples everywhere.
    pub budget_exhausted: bool,
}

impl ConsensusSetResult {
    /// The number of questions that ended in an error.
    ///
    /// ```
    /// use executionkit::{ConsensusSet, Error, ErrorKind, MockProvider, RetryPolicy, RunContext};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::failing(Error::new(ErrorKind::Permanent, "no"));
    /// let ctx = RunContext::new().retry(RetryPolicy::none());
    /// let r = ConsensusSet::new().run(&p, &["q"], &ctx).await.unwrap();
    /// assert_eq!(r.failed(), 1);
    /// # });
    /// ```
    #[must_use]
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.is_err()).count()
    }
}

impl ConsensusSet {
    /// The defaults: the per-question settings of [`Consensus::new`] (a cap of 5 samples, 5 in
    /// flight), a total of 5 × the number of questions, settled at `adaptive:0.95`.
    ///
    /// ```
    /// let s = executionkit::ConsensusSet::new();
    /// assert_eq!(s.total_for(3), 15);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The per-question settings: `samples` is the cap per question, `max_concurrency` the
    /// requests in flight across the set; call options and vote key apply to every question.
    ///
    /// ```
    /// use executionkit::{Consensus, ConsensusSet};
    /// let s = ConsensusSet::new().consensus(Consensus::new().samples(40));
    /// assert_eq!(s.total_for(10), 400);
    /// ```
    pub fn consensus(mut self, consensus: Consensus) -> Self {
        self.consensus = consensus;
        self
    }

    /// The total samples over all questions (at least the number of questions). Default: the
    /// cap × the number of questions.
    ///
    /// ```
    /// let s = executionkit::ConsensusSet::new().total_samples(12);
    /// assert_eq!(s.total_for(10), 12);
    /// ```
    pub fn total_samples(mut self, n: usize) -> Self {
        self.total_samples = Some(n);
        self
    }

    /// The rule that settles a question (default `adaptive:0.95`; [`StopRule::Fixed`]: none
    /// settles, the whole total is spent).
    ///
    /// ```
    /// let s = executionkit::ConsensusSet::new().stop_rule(executionkit::StopRule::window(3));
    /// # let _ = s;
    /// ```
    pub fn stop_rule(mut self, rule: StopRule) -> Self {
        self.stop_rule = rule;
        self
    }

    /// The total for `questions` questions: as set, or the cap × `questions`.
    ///
    /// ```
    /// use executionkit::{Consensus, ConsensusSet};
    /// assert_eq!(ConsensusSet::new().consensus(Consensus::new().samples(4)).total_for(3), 12);
    /// ```
    #[must_use]
    pub fn total_for(&self, questions: usize) -> usize {
        self.total_samples
            .unwrap_or_else(|| self.consensus.samples.saturating_mul(questions))
    }

    /// Checks every option for a set of `questions` questions.
    ///
    /// ```
    /// use executionkit::{Consensus, ConsensusSet, StopRule};
    /// let e = ConsensusSet::new().total_samples(2).check(3).unwrap_err();
    /// assert!(e.to_string().contains("total_samples must be >= the number of questions (3), got 2"));
    /// let e = ConsensusSet::new().consensus(Consensus::new().early_stop(StopRule::window(3)))
    ///     .check(1).unwrap_err();
    /// assert!(e.is_invalid_argument());
    /// assert!(ConsensusSet::new().check(0).is_err());
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` naming the first bad option: the consensus's own (see
    /// [`Consensus::check`]), a unanimous strategy or an `early_stop` set on the consensus, a
    /// bad stop rule, no questions, or a total below the number of questions.
    pub fn check(&self, questions: usize) -> Result<()> {
        self.consensus.check()?;
        if self.consensus.strategy != VotingStrategy::Majority {
            return Err(Error::invalid_argument(
                "strategy",
                "a consensus set needs the majority strategy",
            ));
        }
        if self.consensus.early_stop.stops_early() {
            return Err(Error::invalid_argument(
                "early_stop",
                "a consensus set settles questions by its own stop_rule; leave the consensus's early_stop unset",
            ));
        }
        if self.consensus.usc {
            return Err(Error::invalid_argument(
                "usc",
                "universal self-consistency (usc) is not available in a consensus set; leave it off",
            ));
        }
        self.stop_rule.check()?;
        if questions == 0 {
            return Err(Error::invalid_argument(
                "prompts",
                "a consensus set needs at least one question",
            ));
        }
        let total = self.total_for(questions);
        if total < questions {
            return Err(Error::invalid_argument(
                "total_samples",
                format!(
                    "total_samples must be >= the number of questions ({questions}), got {total}"
                ),
            ));
        }
        Ok(())
    }

    /// Runs consensus on every prompt under the total (see the allocation rule above).
    ///
    /// # Errors
    /// Only `invalid_argument`, before any call ([`check`](Self::check)); each question's
    /// failure is in its own slot of [`ConsensusSetResult::results`].
    ///
    /// ```
    /// use executionkit::{Consensus, ConsensusSet, MockProvider, RunContext, StopRule};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["a", "b"]);
    /// let err = ConsensusSet::new().run(&p, &[] as &[&str], &RunContext::new()).await.unwrap_err();
    /// assert!(err.is_invalid_argument() && p.call_count() == 0);
    /// # });
    /// ```
    pub async fn run<P: AsRef<str>>(
        &self,
        provider: &dyn LlmProvider,
        prompts: &[P],
        ctx: &RunContext,
    ) -> Result<ConsensusSetResult> {
        self.check(prompts.len())?;
        let span = tracing::info_span!(
            target: "executionkit",
            "pattern.consensus_set",
            questions = crate::telemetry::int(prompts.len()),
            samples = crate::telemetry::int(self.consensus.samples),
            total_samples = crate::telemetry::int(self.total_for(prompts.len())),
        );
        Ok(self.allocate(provider, prompts, ctx).instrument(span).await)
    }

    async fn allocate<P: AsRef<str>>(
        &self,
        provider: &dyn LlmProvider,
        prompts: &[P],
        ctx: &RunContext,
    ) -> ConsensusSetResult {
        let c = &self.consensus;
        let total = self.total_for(prompts.len());
        let messages: Vec<Vec<Message>> = prompts
            .iter()
            .map(|p| c.call.messages(p.as_ref()))
            .collect();
        let trackers: Vec<CostTracker> = prompts.iter().map(|_| CostTracker::new()).collect();
        let mut queue = Queue::new(prompts.len(), c.samples);
        let mut sent = 0usize;
        let mut exhausted: Option<Error> = None;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < c.max_concurrency && sent < total && exhausted.is_none() {
                let Some(q) = queue.pop() else { break };
                let i = queue.states[q].sent;
                let req = c.request(&messages[q], i);
                let (handle, registration) = AbortHandle::new_pair();
                queue.states[q].sent += 1;
                queue.states[q].in_flight.push((i, handle));
                queue.update(q);
                sent += 1;
                let tracker = &trackers[q];
                in_flight.push(async move {
                    let reply =
                        Abortable::new(ctx.complete(provider, req, tracker), registration).await;
                    (q, i, reply)
                });
            }
            let Some((q, i, reply)) = in_flight.next().await else {
                break;
            };
            let st = &mut queue.states[q];
            st.in_flight.retain(|(j, _)| *j != i);
            match reply {
                // The question had already failed; its reserved call stays counted.
                Err(_aborted) => {}
                Ok(Ok(resp)) if st.error.is_none() => {
                    let weight = c.weight_of(resp.choices.first());
                    let text = resp.into_content();
                    let key = match &c.vote_key {
                        Some(key) => key(&text),
                        None => normalized(&text).into_owned(),
                    };
                    st.votes.push(&key, &text, weight);
                    if !st.settled
                        && st.votes.book.len() < c.samples
                        && self.stop_rule.should_stop(&st.votes.book)
                    {
                        st.settled = true;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.is_budget_exhausted() => {
                    // No new sample anywhere; the ones in flight are awaited. A sample the
                    // budget refused is not counted as sent.
                    st.sent -= 1;
                    sent -= 1;
                    if exhausted.is_none() {
                        exhausted = Some(e.clone());
                    }
                    st.budget_error.get_or_insert(e);
                }
                Ok(Err(e)) => {
                    for (_, h) in st.in_flight.drain(..) {
                        h.abort();
                    }
                    st.error.get_or_insert(e);
                }
            }
            queue.update(q);
        }

        let results = queue
            .states
            .into_iter()
            .zip(&trackers)
            .map(|(st, tracker)| {
                let outcome = if let Some(e) = st.error {
                    Err(e)
                } else if st.votes.book.is_empty() {
                    Err(st
                        .budget_error
                        .or_else(|| exhausted.clone())
                        .unwrap_or_else(Error::cancelled))
                } else {
                    Ok(st.finish(self.stop_rule, c.logprob_weights))
                };
                let outcome = match outcome {
                    Ok(r) => Ok(ctx.spend_result(r, tracker)),
                    Err(e) => Err(ctx.spend_error(e, tracker)),
                };
                seal(outcome, provider)
            })
            .collect();
        let cost = trackers.iter().map(CostTracker::usage).sum();
        let usd = ctx
            .ledger()
            .budget()
            .has_prices()
            .then(|| trackers.iter().map(CostTracker::usd).sum());
        ConsensusSetResult {
            results,
            cost,
            usd,
            samples_used: sent,
            total_samples: total,
            budget_exhausted: exhausted.is_some(),
        }
    }
}

/// One question's votes and sampling state.
#[derive(Default)]
struct QuestionState {
    /// The votes, counted (and weighted) as a single consensus counts them.
    votes: Votes,
    sent: usize,
    /// The samples in flight: their index and the handle that cancels them.
    in_flight: Vec<(usize, AbortHandle)>,
    settled: bool,
    error: Option<Error>,
    budget_error: Option<Error>,
}

impl QuestionState {
    #[cfg(test)]
    fn vote(&mut self, key: &str) {
        self.votes.push(key, key, None);
    }

    /// The question's result from its votes (at least one), as a consensus with a stop rule
    /// reports it (`weights`: whether log-probability weights were asked for).
    fn finish(self, rule: StopRule, weights: bool) -> PatternResult<String, ConsensusStats> {
        let weighted = weights.then(|| self.votes.book.is_weighted());
        let (mut stats, value) = self.votes.stats(rule, self.settled);
        stats.logprob_weighted = weighted;
        let agreement = stats.agreement_ratio;
        PatternResult::with_stats(value, stats).with_score(agreement)
    }

    /// The allocation's rank key, lowest first: `1 − (1 − P) / n`, `P` from
    /// [`leader`](Self::leader) and `n` the samples sent (at least 1; a question not yet sent
    /// one is ranked first anyway).
    #[allow(clippy::cast_precision_loss)]
    fn priority(&self) -> f64 {
        let n = self.sent.max(1) as f64;
        1.0 - (1.0 - self.leader()) / n
    }

    /// `P(leader beats runner-up)` with the samples in flight counted for the leader (weights
    /// rescaled to the number of votes, as the adaptive rule reads them).
    #[allow(clippy::cast_precision_loss)]
    fn leader(&self) -> f64 {
        let book = &self.votes.book;
        let pending = self.in_flight.len() as u64;
        if book.is_weighted() {
            let (a, b) = book.top_two_weights();
            let scale = book.len() as f64 / book.total_weight();
            leader_probability_weighted(a * scale + pending as f64, b * scale)
        } else {
            let (a, b) = book.top_two();
            leader_probability(a + pending, b)
        }
    }
}

/// The order in which open questions get their next sample: (not yet sampled first, the
/// priority's bits, samples sent, index). The priority is a probability (≥ 0), whose bits
/// order as the numbers do.
type Rank = (bool, u64, usize, usize);

/// The open questions, ranked by the allocation rule.
struct Queue {
    states: Vec<QuestionState>,
    /// Each state's rank in `ranked`, when it is open.
    ranks: Vec<Option<Rank>>,
    ranked: BTreeSet<Rank>,
    cap: usize,
}

impl Queue {
    fn new(questions: usize, cap: usize) -> Self {
        let mut q = Self {
            states: (0..questions).map(|_| QuestionState::default()).collect(),
            ranks: vec![None; questions],
            ranked: BTreeSet::new(),
            cap,
        };
        for i in 0..questions {
            q.update(i);
        }
        q
    }

    /// Re-ranks question `q` after its state changed.
    fn update(&mut self, q: usize) {
        if let Some(old) = self.ranks[q].take() {
            self.ranked.remove(&old);
        }
        let st = &self.states[q];
        if st.error.is_some() || st.settled || st.sent >= self.cap {
            return;
        }
        let priority = st.priority();
        let rank = (st.sent > 0, priority.to_bits(), st.sent, q);
        self.ranked.insert(rank);
        self.ranks[q] = Some(rank);
    }

    /// The question the next sample goes to (removed from the ranking until `update`).
    fn pop(&mut self) -> Option<usize> {
        let rank = self.ranked.pop_first()?;
        self.ranks[rank.3] = None;
        Some(rank.3)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unsampled_questions_come_first_then_the_most_split() {
        let mut q = Queue::new(3, 10);
        assert_eq!(q.pop(), Some(0));
        q.states[0].sent = 1;
        q.states[0].vote("a");
        q.states[0].vote("b");
        q.update(0);
        assert_eq!(q.pop(), Some(1)); // not sampled yet beats a 1-1 split
        q.states[1].sent = 1;
        q.states[1].vote("a");
        q.update(1);
        assert_eq!(q.pop(), Some(2));
        q.states[2].sent = 1;
        q.states[2].vote("a");
        q.states[2].vote("a");
        q.update(2);
        // 0: 1-1 (P = 0.5), 1: 1-0 (0.75), 2: 2-0 (0.875), one sample sent each.
        assert_eq!(q.pop(), Some(0));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn capped_failed_and_settled_questions_are_closed() {
        let mut q = Queue::new(3, 2);
        q.states[0].sent = 2;
        q.states[1].settled = true;
        q.states[2].error = Some(Error::cancelled());
        for i in 0..3 {
            q.update(i);
        }
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn samples_in_flight_count_for_the_leader() {
        let mut q = Queue::new(2, 10);
        for i in 0..2 {
            q.states[i].sent = 1;
            q.states[i].vote("a");
        }
        let (h, _) = AbortHandle::new_pair();
        q.states[0].in_flight.push((1, h));
        q.states[0].sent = 2;
        q.update(0);
        q.update(1);
        // Both 1-0, but question 0 has one in flight: P(2, 0) > P(1, 0).
        assert_eq!(q.pop(), Some(1));
    }

    #[test]
    fn a_question_still_split_after_many_samples_yields_to_a_less_sampled_one() {
        let mut q = Queue::new(2, 40);
        // 0: 10-10 after 20 samples, (1 - 0.5) / 20 = 0.025; 1: 2-1 after 3, P(2, 1) = 0.6875,
        // (1 - 0.6875) / 3 = 0.104.
        for _ in 0..10 {
            q.states[0].vote("a");
            q.states[0].vote("b");
        }
        q.states[0].sent = 20;
        for k in ["a", "a", "b"] {
            q.states[1].vote(k);
        }
        q.states[1].sent = 3;
        q.update(0);
        q.update(1);
        assert_eq!(q.pop(), Some(1));
        // With the same samples sent, the more split one comes first.
        let mut q = Queue::new(2, 40);
        for (i, keys) in [["a", "a", "b"], ["a", "b", "c"]].iter().enumerate() {
            for k in keys {
                q.states[i].vote(k);
            }
            q.states[i].sent = 3;
            q.update(i);
        }
        assert_eq!(q.pop(), Some(1));
    }
}
