//! `ConsensusSet`: many questions under one total sample budget (issue 12, item 3). The
//! allocation never exceeds the total or a question's cap and gives every question a sample;
//! split questions get more samples than unanimous ones; the budget ledger holds across the set;
//! a failing question keeps the others' results.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use executionkit::WithCallOptions as _;
use executionkit::{
    Budget, ChatRequest, Consensus, ConsensusSet, ConsensusSetResult, Error, ErrorKind,
    LlmProvider, LlmResponse, LogprobSummary, RetryPolicy, RunContext, StopRule,
};

/// Answers each question (its prompt) from its own script, indexed by the request's seed, so a
/// question's answers do not depend on how the set interleaves them. Records every call and the
/// most requests in flight at once (each reply yields to the runtime first).
#[derive(Debug, Default)]
struct ByQuestion {
    script: HashMap<String, Vec<String>>,
    fail: HashSet<String>,
    secret: Option<String>,
    calls: Mutex<Vec<(String, u64)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl ByQuestion {
    fn new<'a>(script: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>) -> Self {
        Self {
            script: script
                .into_iter()
                .map(|(q, a)| (q.to_owned(), a.into_iter().map(str::to_owned).collect()))
                .collect(),
            ..Self::default()
        }
    }

    /// The seeds question `q` was sent, in the order sent.
    fn seeds(&self, q: &str) -> Vec<u64> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.0 == q).map(|c| c.1).collect()
    }

    fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

#[async_trait]
impl LlmProvider for ByQuestion {
    fn model(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &ChatRequest) -> executionkit::Result<LlmResponse> {
        let prompt = request.messages.last().unwrap().content.clone();
        let seed = request.seed.unwrap_or(0);
        self.calls.lock().unwrap().push((prompt.clone(), seed));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.fail.contains(&prompt) {
            return Err(Error::new(ErrorKind::Permanent, "refused"));
        }
        let answers = &self.script[&prompt];
        let answer = answers[usize::try_from(seed).unwrap() % answers.len()].clone();
        // `text@logprob`: a reply with that mean token log-probability, when asked for.
        match answer.split_once('@') {
            Some((text, lp)) if request.logprobs => Ok(LlmResponse::text(text)
                .with_usage(3, 1)
                .with_logprobs(LogprobSummary {
                    sum: lp.parse().unwrap(),
                    tokens: 1,
                })),
            Some((text, _)) => Ok(LlmResponse::text(text).with_usage(3, 1)),
            None => Ok(LlmResponse::text(answer).with_usage(3, 1)),
        }
    }

    fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn run(
    p: &ByQuestion,
    set: &ConsensusSet,
    prompts: &[&str],
    ctx: &RunContext,
) -> ConsensusSetResult {
    block_on(set.run(p, prompts, ctx)).unwrap()
}

fn used(r: &ConsensusSetResult, q: usize) -> u64 {
    r.results[q].as_ref().unwrap().metadata["samples_used"]
        .as_u64()
        .unwrap()
}

#[test]
fn split_questions_get_more_samples_than_unanimous_ones() {
    let p = ByQuestion::new([
        ("easy", vec!["4"]),
        ("hard", vec!["a", "b"]),
        ("easy too", vec!["x"]),
    ]);
    let set = ConsensusSet::new()
        .consensus(Consensus::new().samples(20).max_concurrency(1).seed(0))
        .total_samples(30)
        .stop_rule(StopRule::adaptive(0.95));
    let r = run(&p, &set, &["easy", "hard", "easy too"], &RunContext::new());
    // The unanimous questions settle after 4 votes (P = 31/32); the split one gets the rest,
    // up to the total.
    assert_eq!((used(&r, 0), used(&r, 2)), (4, 4));
    assert_eq!(used(&r, 1), 20); // its cap
    assert_eq!(r.samples_used, 28);
    assert_eq!(p.call_count(), 28);
    let hard = r.results[1].as_ref().unwrap();
    assert_eq!(hard.metadata["stopped_early"], false);
    assert_eq!(hard.metadata["tie_count"], 2);
    assert_eq!(hard.metadata["stop_rule"], "adaptive:0.95");
    let easy = r.results[0].as_ref().unwrap();
    assert_eq!(easy.metadata["stopped_early"], true);
    assert_eq!(easy.value, "4");
    assert_eq!(easy.score, Some(1.0));
    assert_eq!(
        easy.metadata["vote_counts"],
        serde_json::json!([{"answer": "4", "count": 4, "weight": 4.0}])
    );
    assert_eq!(easy.cost.llm_calls, 4);
    // Every metadata key of a consensus with a stop rule.
    let mut keys: Vec<&str> = easy.metadata.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "agreement_ratio",
            "samples_used",
            "stop_rule",
            "stopped_early",
            "tie_count",
            "unique_responses",
            "vote_counts"
        ]
    );
}

#[test]
fn a_tight_total_goes_to_the_split_question() {
    let p = ByQuestion::new([("easy", vec!["4"]), ("hard", vec!["a", "b", "a", "c"])]);
    let set = ConsensusSet::new()
        .consensus(Consensus::new().samples(40).max_concurrency(1).seed(0))
        .total_samples(10)
        .stop_rule(StopRule::Fixed);
    let r = run(&p, &set, &["easy", "hard"], &RunContext::new());
    assert_eq!(r.samples_used, 10);
    assert!(
        used(&r, 1) > used(&r, 0),
        "{:?}",
        (used(&r, 0), used(&r, 1))
    );
    assert_eq!(used(&r, 0) + used(&r, 1), 10);
}

#[test]
fn sample_i_of_each_question_sends_seed_n_plus_i() {
    let p = ByQuestion::new([("q1", vec!["a", "b"]), ("q2", vec!["c"])]);
    let set = ConsensusSet::new()
        .consensus(Consensus::new().samples(6).max_concurrency(3).seed(100))
        .total_samples(9);
    let r = run(&p, &set, &["q1", "q2"], &RunContext::new());
    let mut s1 = p.seeds("q1");
    s1.sort_unstable();
    let expected: Vec<u64> = (100..100 + used(&r, 0)).collect();
    assert_eq!(s1, expected);
    let mut s2 = p.seeds("q2");
    s2.sort_unstable();
    assert_eq!(s2, (100..100 + used(&r, 1)).collect::<Vec<u64>>());
}

#[test]
fn requests_in_flight_span_the_questions_up_to_max_concurrency() {
    let p = ByQuestion::new([("q1", vec!["a"]), ("q2", vec!["b"]), ("q3", vec!["c", "d"])]);
    let set = ConsensusSet::new()
        .consensus(Consensus::new().samples(5).max_concurrency(3).seed(0))
        .stop_rule(StopRule::Fixed);
    let r = run(&p, &set, &["q1", "q2", "q3"], &RunContext::new());
    assert_eq!(p.max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(r.samples_used, 15); // the default total: 5 per question
    assert_eq!(r.total_samples, 15);
}

#[test]
fn the_budget_holds_across_the_set_and_voted_questions_keep_their_result() {
    let p = ByQuestion::new([("q1", vec!["a"]), ("q2", vec!["b", "c"]), ("q3", vec!["d"])]);
    let set = ConsensusSet::new()
        .consensus(Consensus::new().samples(10).max_concurrency(2).seed(0))
        .total_samples(30);
    let ctx = RunContext::new().budget(Budget::new().max_calls(5));
    let r = run(&p, &set, &["q1", "q2", "q3"], &ctx);
    assert!(r.budget_exhausted);
    assert_eq!(p.call_count(), 5);
    assert_eq!(r.cost.llm_calls, 5);
    assert_eq!(ctx.ledger().spent().llm_calls, 5);
    assert_eq!(r.failed(), 0); // each question had a vote before the budget ran out
    let votes: u64 = (0..3).map(|q| used(&r, q)).sum();
    assert_eq!(votes, 5);
    assert!(
        r.results
            .iter()
            .all(|x| x.as_ref().unwrap().metadata["stopped_early"] == false)
    );

    // Two calls for three questions: the third never gets a sample and fails with the budget.
    let p = ByQuestion::new([("q1", vec!["a"]), ("q2", vec!["b"]), ("q3", vec!["d"])]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(2));
    let r = run(&p, &set, &["q1", "q2", "q3"], &ctx);
    assert_eq!((p.call_count(), r.failed()), (2, 1));
    assert!(r.results[0].is_ok() && r.results[1].is_ok());
    let e = r.results[2].as_ref().unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.cost().llm_calls, 0);
    assert_eq!(r.samples_used, 2); // the third, refused by the ledger, is not counted
    assert_eq!(r.cost.llm_calls, 2);
}

#[test]
fn a_failing_question_does_not_lose_the_others() {
    let mut p = ByQuestion::new([("good", vec!["a"]), ("also good", vec!["b"])]);
    p.fail.insert("bad".to_owned());
    let set = ConsensusSet::new().consensus(Consensus::new().samples(5).max_concurrency(4).seed(0));
    let ctx = RunContext::new().retry(RetryPolicy::none());
    let r = run(&p, &set, &["good", "bad", "also good"], &ctx);
    assert_eq!(r.failed(), 1);
    let e = r.results[1].as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert_eq!(e.cost().llm_calls, 1, "one call, then no more for it");
    assert_eq!(p.seeds("bad").len(), 1);
    assert_eq!(r.results[0].as_ref().unwrap().value, "a");
    assert_eq!(r.results[2].as_ref().unwrap().value, "b");
    // The failed question's call is in the totals.
    let per_question: u64 = r
        .results
        .iter()
        .map(|x| match x {
            Ok(v) => v.cost.llm_calls,
            Err(e) => e.cost().llm_calls,
        })
        .sum();
    assert_eq!(per_question, r.cost.llm_calls);
    assert_eq!(r.cost.llm_calls, ctx.ledger().spent().llm_calls);
}

#[test]
fn bad_settings_are_refused_before_any_call() {
    let p = ByQuestion::new([("q", vec!["a"])]);
    let cases = [
        ConsensusSet::new().total_samples(1),
        ConsensusSet::new().consensus(Consensus::new().early_stop(StopRule::window(3))),
        ConsensusSet::new()
            .consensus(Consensus::new().strategy(executionkit::VotingStrategy::Unanimous)),
        ConsensusSet::new().consensus(Consensus::new().samples(0)),
        ConsensusSet::new().stop_rule(StopRule::adaptive(2.0)),
    ];
    for set in cases {
        let e = block_on(set.run(&p, &["q", "q"], &RunContext::new())).unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");
    }
    assert_eq!(p.call_count(), 0);
}

#[test]
fn the_key_is_scrubbed_from_every_result() {
    let key = "sk-test-0123456789abcdefXYZ";
    let mut p = ByQuestion::new([("q", vec![key])]);
    p.secret = Some(key.to_owned());
    let set = ConsensusSet::new().consensus(Consensus::new().samples(2).seed(0));
    let r = run(&p, &set, &["q"], &RunContext::new());
    let res = r.results[0].as_ref().unwrap();
    let meta = serde_json::Value::Object(res.metadata.clone()).to_string();
    assert!(!meta.contains(key), "{meta}");
    let typed = &res.stats.early_stop.as_ref().unwrap().vote_counts[0].answer;
    assert!(!typed.contains(key));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Under random answer distributions, caps, totals, concurrency and rules: the samples sent
    /// never exceed the total, no question exceeds its cap, every question gets at least one,
    /// each question's seeds are N, N+1, …, and the calls add up.
    #[test]
    fn allocation_stays_within_the_total_and_covers_every_question(
        scripts in proptest::collection::vec(
            proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c", "d"]), 1..6),
            1..7,
        ),
        cap in 1usize..12,
        extra in 0usize..40,
        conc in 1usize..5,
        rule in proptest::sample::select(vec![
            StopRule::Fixed, StopRule::adaptive(0.95), StopRule::adaptive(0.8), StopRule::window(2), StopRule::window(3),
        ]),
    ) {
        let names: Vec<String> = (0..scripts.len()).map(|i| format!("q{i}")).collect();
        let p = ByQuestion::new(names.iter().map(String::as_str).zip(scripts.iter().cloned()));
        let total = scripts.len() + extra;
        let set = ConsensusSet::new()
            .consensus(Consensus::new().samples(cap).max_concurrency(conc).seed(7))
            .total_samples(total)
            .stop_rule(rule);
        let prompts: Vec<&str> = names.iter().map(String::as_str).collect();
        let ctx = RunContext::new();
        let r = run(&p, &set, &prompts, &ctx);
        proptest::prop_assert!(r.samples_used <= total);
        proptest::prop_assert!(r.samples_used <= cap * scripts.len());
        proptest::prop_assert_eq!(p.call_count(), r.samples_used);
        proptest::prop_assert_eq!(r.cost.llm_calls as usize, r.samples_used);
        proptest::prop_assert_eq!(ctx.ledger().spent().llm_calls as usize, r.samples_used);
        proptest::prop_assert!(p.max_in_flight.load(Ordering::SeqCst) <= conc);
        proptest::prop_assert_eq!(r.failed(), 0);
        let mut sum = 0;
        for (q, name) in names.iter().enumerate() {
            let n = used(&r, q);
            proptest::prop_assert!(n >= 1 && n <= cap as u64, "question {} used {}", q, n);
            let mut seeds = p.seeds(name);
            seeds.sort_unstable();
            proptest::prop_assert_eq!(seeds, (7..7 + n).collect::<Vec<u64>>());
            sum += n;
        }
        proptest::prop_assert_eq!(sum as usize, r.samples_used);
        // With no rule to settle questions, the whole total (as far as the caps allow) is spent.
        if rule == StopRule::Fixed {
            proptest::prop_assert_eq!(r.samples_used, total.min(cap * scripts.len()));
        }
    }
}

#[test]
fn log_probability_weights_apply_per_question() {
    let p = ByQuestion::new([
        ("weighted", vec!["Lyon@-3.0", "Lyon@-3.0", "Paris@-0.05"]),
        ("plain", vec!["a@-0.1", "a@-0.1", "b@-0.1"]),
    ]);
    let consensus = || Consensus::new().samples(3).max_concurrency(1).seed(0);
    let prompts = ["weighted", "plain"];
    let set = ConsensusSet::new()
        .consensus(consensus().logprob_weights(true))
        .stop_rule(StopRule::Fixed);
    let r = run(&p, &set, &prompts, &RunContext::new());
    let w = r.results[0].as_ref().unwrap();
    // Two unsure votes for Lyon (2 e^-3 ≈ 0.10) lose to one sure vote for Paris (e^-0.05).
    assert_eq!(w.value, "Paris");
    assert_eq!(w.metadata["logprob_weighted"], true);
    assert_eq!(w.metadata["vote_counts"][0]["answer"], "Paris");
    assert_eq!(w.metadata["vote_counts"][0]["count"], 1);
    assert!((w.score.unwrap() - (-0.05f64).exp() / 3.0).abs() < 1e-12);
    assert_eq!(r.results[1].as_ref().unwrap().value, "a");
    // Without weights the same answers count 2 to 1, and no request asks for log-probabilities.
    let p2 = ByQuestion::new([("weighted", vec!["Lyon@-3.0", "Lyon@-3.0", "Paris@-0.05"])]);
    let set = ConsensusSet::new()
        .consensus(consensus())
        .stop_rule(StopRule::Fixed);
    let r = run(&p2, &set, &["weighted"], &RunContext::new());
    let plain = r.results[0].as_ref().unwrap();
    assert_eq!(plain.value, "Lyon");
    assert!(plain.metadata.get("logprob_weighted").is_none());
}
