//! Evals (reference §19): named cases, each a run and a check, run **in order** under one
//! budget (the [`RunContext`]'s ledger), summarised in an [`EvalReport`] with an accuracy and an
//! optional `min_accuracy` threshold; and conversation scripts, turns of a [`Kit`]'s
//! conversation each with its own check.
//!
//! A run's error (or a panic in a run or a check) is a failed result whose reason is
//! `<kind>: <message>` (the error's [`ErrorKind`] name, e.g.
//! `provider: boom`); later cases still run. Two errors end the whole suite instead, because no
//! later case could run either: an exhausted budget and a cancellation. That error carries
//! what every case spent ([`Error::cost`]) and, in its metadata, `eval_cases_run`.
//!
//! ```
//! use executionkit::{Consensus, MockProvider, RunContext, Budget, Pattern};
//! use executionkit::eval::{EvalCase, run_eval_suite};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let p = MockProvider::new(["Paris", "Lyon"]);
//! let ctx = RunContext::new().budget(Budget::new().max_calls(10));
//! let ask = |q: &'static str| {
//!     let p = p.clone();
//!     move |ctx: RunContext| async move {
//!         Consensus::new().samples(1).run(&p, q, &ctx).await.map(|r| r.value)
//!     }
//! };
//! let cases = vec![
//!     EvalCase::new("capital", ask("Capital of France?"), |v: &String| v == "Paris"),
//!     EvalCase::new("again", ask("Capital of France?"), |v: &String| v == "Paris"),
//! ];
//! let report = run_eval_suite(cases, &ctx, Some(0.5)).await.unwrap();
//! assert_eq!(report.summary(), "1/2 passed (50.0% accuracy)");
//! assert!(report.accuracy_passed());
//! assert_eq!(report.cost().llm_calls, 2);
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::engine::RunContext;
use crate::error::{Error, ErrorKind, Result};
use crate::kit::Kit;
use crate::result::PatternResult;
use crate::usage::TokenUsage;

/// The accuracy a live eval run is expected to reach (the reference's
/// `LIVE_EVAL_MIN_ACCURACY`).
///
/// ```
/// assert_eq!(executionkit::eval::LIVE_EVAL_MIN_ACCURACY, 0.9);
/// ```
pub const LIVE_EVAL_MIN_ACCURACY: f64 = 0.9;

/// A check's verdict, normalised: `()`, `true`, `None` and `""` pass; `false` fails with the
/// reason `check returned false`; any other string fails with that string as the reason; an
/// `Err` fails with `<kind>: <message>`.
///
/// ```
/// use executionkit::eval::Verdict;
/// assert_eq!(Verdict::from(true), Verdict::Pass);
/// assert_eq!(Verdict::from(""), Verdict::Pass);
/// assert_eq!(Verdict::from(None::<String>), Verdict::Pass);
/// assert_eq!(Verdict::from(false), Verdict::Fail("check returned false".into()));
/// assert_eq!(Verdict::from("expected ok"), Verdict::Fail("expected ok".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed, with this reason.
    Fail(String),
}

impl From<()> for Verdict {
    fn from((): ()) -> Self {
        Self::Pass
    }
}

impl From<bool> for Verdict {
    fn from(ok: bool) -> Self {
        if ok {
            Self::Pass
        } else {
            Self::Fail("check returned false".to_owned())
        }
    }
}

impl From<&str> for Verdict {
    fn from(s: &str) -> Self {
        if s.is_empty() {
            Self::Pass
        } else {
            Self::Fail(s.to_owned())
        }
    }
}

impl From<String> for Verdict {
    fn from(s: String) -> Self {
        if s.is_empty() {
            Self::Pass
        } else {
            Self::Fail(s)
        }
    }
}

impl<V: Into<Verdict>> From<Option<V>> for Verdict {
    fn from(v: Option<V>) -> Self {
        v.map_or(Self::Pass, Into::into)
    }
}

impl<V: Into<Verdict>> From<std::result::Result<V, Error>> for Verdict {
    fn from(r: std::result::Result<V, Error>) -> Self {
        match r {
            Ok(v) => v.into(),
            Err(e) => Self::Fail(reason(&e)),
        }
    }
}

/// `<kind>: <message>`, the reason of a failed run.
fn reason(e: &Error) -> String {
    format!("{}: {}", e.kind(), e.message())
}

/// The reason of a panic.
fn panic_reason(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("panic: {msg}")
}

type RunFn<'a, T> = Box<dyn FnOnce(RunContext) -> BoxFuture<'a, Result<T>> + Send + 'a>;
type CheckFn<'a, T> = Box<dyn FnOnce(&T) -> Verdict + Send + 'a>;

/// One case: a name, a run (given the suite's [`RunContext`], so its calls count against the
/// suite's budget) and a check of the run's value; optional metadata copied to its result.
///
/// ```
/// use executionkit::eval::EvalCase;
/// use executionkit::RunContext;
/// let case = EvalCase::new("adds", |_ctx: RunContext| async { Ok(1 + 1) }, |v: &i32| *v == 2)
///     .metadata("topic", "math");
/// assert_eq!(case.name(), "adds");
/// ```
pub struct EvalCase<'a, T> {
    name: String,
    run: RunFn<'a, T>,
    check: CheckFn<'a, T>,
    metadata: Map<String, Value>,
}

impl<T> fmt::Debug for EvalCase<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvalCase")
            .field("name", &self.name)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl<'a, T: 'a> EvalCase<'a, T> {
    /// A case named `name` running `run` and judging its value with `check` (anything that
    /// becomes a [`Verdict`]: `bool`, `()`, a reason string, `Option`, `Result`).
    ///
    /// ```
    /// use executionkit::eval::EvalCase;
    /// use executionkit::RunContext;
    /// let case = EvalCase::new("echo", |_: RunContext| async { Ok("ok".to_owned()) },
    ///     |v: &String| if v == "ok" { String::new() } else { format!("expected ok, got {v}") });
    /// assert_eq!(case.name(), "echo");
    /// ```
    pub fn new<R, Fut, C, V>(name: impl Into<String>, run: R, check: C) -> Self
    where
        R: FnOnce(RunContext) -> Fut + Send + 'a,
        Fut: Future<Output = Result<T>> + Send + 'a,
        C: FnOnce(&T) -> V + Send + 'a,
        V: Into<Verdict>,
    {
        Self {
            name: name.into(),
            run: Box::new(move |ctx| Box::pin(run(ctx))),
            check: Box::new(move |v| check(v).into()),
            metadata: Map::new(),
        }
    }

    /// Adds `key: value` to the metadata copied to the case's result.
    ///
    /// ```
    /// use executionkit::eval::EvalCase;
    /// use executionkit::RunContext;
    /// let c = EvalCase::new("x", |_: RunContext| async { Ok(()) }, |_: &()| ()).metadata("k", 1);
    /// assert_eq!(format!("{c:?}"), r#"EvalCase { name: "x", metadata: {"k": Number(1)}, .. }"#);
    /// ```
    #[must_use]
    pub fn metadata(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// The case's name.
    ///
    /// ```
    /// use executionkit::{eval::EvalCase, RunContext};
    /// assert_eq!(EvalCase::new("n", |_: RunContext| async { Ok(()) }, |_: &()| true).name(), "n");
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One case's outcome: its name, whether it passed, the reason (`passed`, or why not), the
/// case's metadata, what it spent, and the run's error when it failed with one.
///
/// ```
/// use executionkit::eval::EvalResult;
/// let r = EvalResult::new("a", false, "expected ok");
/// assert!(!r.passed);
/// assert_eq!(r.reason, "expected ok");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EvalResult {
    /// The case's name (`<script>[<i>]` for a conversation turn).
    pub name: String,
    /// Whether the check passed.
    pub passed: bool,
    /// `passed`, or the reason it failed.
    pub reason: String,
    /// A copy of the case's metadata.
    pub metadata: Map<String, Value>,
    /// What the case spent (its run's calls, failed ones included).
    pub cost: TokenUsage,
    /// The run's error, when the run failed.
    pub error: Option<Error>,
}

impl EvalResult {
    /// A result with no metadata, cost or error.
    ///
    /// ```
    /// let r = executionkit::eval::EvalResult::new("a", true, "passed");
    /// assert!(r.passed && r.error.is_none());
    /// ```
    #[must_use]
    pub fn new(name: impl Into<String>, passed: bool, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed,
            reason: reason.into(),
            metadata: Map::new(),
            cost: TokenUsage::default(),
            error: None,
        }
    }
}

/// A suite's results in case order, immutable, with an optional accuracy threshold and what
/// the whole suite spent.
///
/// ```
/// use executionkit::eval::{EvalReport, EvalResult};
/// let report = EvalReport::new(
///     vec![EvalResult::new("a", true, "passed"), EvalResult::new("b", false, "nope")],
///     Some(0.5),
/// ).unwrap();
/// assert_eq!(report.total(), 2);
/// assert!(!report.passed());
/// assert!(report.accuracy_passed());
/// assert_eq!(report.failures()[0].name, "b");
/// ```
#[derive(Debug, Clone)]
pub struct EvalReport {
    results: Vec<EvalResult>,
    min_accuracy: Option<f64>,
    cost: TokenUsage,
    usd: Option<f64>,
}

impl EvalReport {
    /// A report over `results` with an optional threshold; its cost is the results' sum.
    ///
    /// ```
    /// use executionkit::eval::EvalReport;
    /// assert!(EvalReport::new(vec![], Some(1.5)).is_err());
    /// assert_eq!(EvalReport::new(vec![], None).unwrap().summary(), "0/0 passed (0.0% accuracy)");
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` when `min_accuracy` is not a number in [0, 1].
    pub fn new(results: Vec<EvalResult>, min_accuracy: Option<f64>) -> Result<Self> {
        check_min_accuracy(min_accuracy)?;
        let cost = results
            .iter()
            .fold(TokenUsage::default(), |acc, r| acc + r.cost);
        Ok(Self {
            results,
            min_accuracy,
            cost,
            usd: None,
        })
    }

    /// The results, in case order.
    ///
    /// ```
    /// use executionkit::eval::{EvalReport, EvalResult};
    /// let r = EvalReport::new(vec![EvalResult::new("a", true, "passed")], None).unwrap();
    /// assert_eq!(r.results()[0].name, "a");
    /// ```
    #[must_use]
    pub fn results(&self) -> &[EvalResult] {
        &self.results
    }

    /// The threshold, if any.
    ///
    /// ```
    /// let r = executionkit::eval::EvalReport::new(vec![], Some(0.9)).unwrap();
    /// assert_eq!(r.min_accuracy(), Some(0.9));
    /// ```
    #[must_use]
    pub fn min_accuracy(&self) -> Option<f64> {
        self.min_accuracy
    }

    /// The number of results.
    ///
    /// ```
    /// assert_eq!(executionkit::eval::EvalReport::new(vec![], None).unwrap().total(), 0);
    /// ```
    #[must_use]
    pub fn total(&self) -> usize {
        self.results.len()
    }

    /// Whether every result passed (true for no results).
    ///
    /// ```
    /// assert!(executionkit::eval::EvalReport::new(vec![], None).unwrap().passed());
    /// ```
    #[must_use]
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// How many results passed.
    ///
    /// ```
    /// use executionkit::eval::{EvalReport, EvalResult};
    /// let r = EvalReport::new(vec![EvalResult::new("a", true, "passed")], None).unwrap();
    /// assert_eq!((r.passed_count(), r.failed_count()), (1, 0));
    /// ```
    #[must_use]
    pub fn passed_count(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// How many results failed.
    ///
    /// ```
    /// use executionkit::eval::{EvalReport, EvalResult};
    /// let r = EvalReport::new(vec![EvalResult::new("a", false, "no")], None).unwrap();
    /// assert_eq!(r.failed_count(), 1);
    /// ```
    #[must_use]
    pub fn failed_count(&self) -> usize {
        self.total() - self.passed_count()
    }

    /// The failed results, in order.
    ///
    /// ```
    /// use executionkit::eval::{EvalReport, EvalResult};
    /// let r = EvalReport::new(vec![EvalResult::new("a", false, "no")], None).unwrap();
    /// assert_eq!(r.failures()[0].reason, "no");
    /// ```
    #[must_use]
    pub fn failures(&self) -> Vec<&EvalResult> {
        self.results.iter().filter(|r| !r.passed).collect()
    }

    /// passed / total; 0.0 when there are no results.
    ///
    /// ```
    /// use executionkit::eval::{EvalReport, EvalResult};
    /// let r = EvalReport::new(vec![EvalResult::new("a", true, ""), EvalResult::new("b", false, "x")], None).unwrap();
    /// assert_eq!(r.accuracy(), 0.5);
    /// ```
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn accuracy(&self) -> f64 {
        if self.results.is_empty() {
            0.0
        } else {
            self.passed_count() as f64 / self.total() as f64
        }
    }

    /// `accuracy >= min_accuracy`, or [`passed`](Self::passed) when there is no threshold.
    ///
    /// ```
    /// use executionkit::eval::{EvalReport, EvalResult};
    /// let r = EvalReport::new(vec![EvalResult::new("a", false, "x")], None).unwrap();
    /// assert!(!r.accuracy_passed());
    /// ```
    #[must_use]
    pub fn accuracy_passed(&self) -> bool {
        match self.min_accuracy {
            Some(min) => self.accuracy() >= min,
            None => self.passed(),
        }
    }

    /// `<passed>/<total> passed (<accuracy, percent, one decimal>% accuracy)`.
    ///
    /// ```
    /// use executionkit::eval::{EvalReport, EvalResult};
    /// let mut v: Vec<_> = (0..7).map(|i| EvalResult::new(i.to_string(), true, "passed")).collect();
    /// v.extend((0..2).map(|i| EvalResult::new(i.to_string(), false, "x")));
    /// assert_eq!(EvalReport::new(v, None).unwrap().summary(), "7/9 passed (77.8% accuracy)");
    /// ```
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "{}/{} passed ({:.1}% accuracy)",
            self.passed_count(),
            self.total(),
            self.accuracy() * 100.0
        )
    }

    /// What the whole suite spent.
    ///
    /// ```
    /// assert!(executionkit::eval::EvalReport::new(vec![], None).unwrap().cost().is_zero());
    /// ```
    #[must_use]
    pub fn cost(&self) -> TokenUsage {
        self.cost
    }

    /// The suite's spend in USD, when prices are known.
    ///
    /// ```
    /// assert_eq!(executionkit::eval::EvalReport::new(vec![], None).unwrap().usd(), None);
    /// ```
    #[must_use]
    pub fn usd(&self) -> Option<f64> {
        self.usd
    }
}

fn check_min_accuracy(min: Option<f64>) -> Result<()> {
    match min {
        Some(m) if !(0.0..=1.0).contains(&m) => Err(Error::invalid_argument(
            "min_accuracy",
            format!("min_accuracy must be a number in [0, 1]; got {m}"),
        )),
        _ => Ok(()),
    }
}

/// Whether `e` ends the whole suite (no later case could run).
fn ends_suite(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::BudgetExhausted | ErrorKind::Cancelled)
}

/// Runs `cases` one after another, in order, under `ctx` (one budget for all of them) and
/// reports with the threshold `min_accuracy`. A case's cost is what `ctx`'s ledger was charged
/// while it ran.
///
/// ```
/// use executionkit::eval::{EvalCase, run_eval_suite};
/// use executionkit::{Error, ErrorKind, RunContext};
/// # futures::executor::block_on(async {
/// let cases = vec![
///     EvalCase::new("ok", |_: RunContext| async { Ok(2) }, |v: &i32| *v == 2),
///     EvalCase::new("boom", |_: RunContext| async { Err(Error::new(ErrorKind::Provider, "boom")) },
///         |_: &i32| true),
/// ];
/// let r = run_eval_suite(cases, &RunContext::new(), None).await.unwrap();
/// assert_eq!(r.failures()[0].reason, "provider: boom");
/// # });
/// ```
///
/// # Errors
/// `invalid_argument` for a `min_accuracy` outside [0, 1], before any case runs; a case's
/// `budget_exhausted` or `cancelled` error, which ends the suite, carrying what every case
/// spent and `eval_cases_run` (the cases started, that one included) in its metadata.
pub async fn run_eval_suite<T>(
    cases: Vec<EvalCase<'_, T>>,
    ctx: &RunContext,
    min_accuracy: Option<f64>,
) -> Result<EvalReport> {
    check_min_accuracy(min_accuracy)?;
    let ledger = ctx.ledger();
    let start = ledger.spent();
    let start_usd = ledger.spent_usd();
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        let before = ledger.spent();
        let EvalCase {
            name,
            run,
            check,
            metadata,
        } = case;
        // A case's text is checked, not shown: none goes to an `on_text` subscriber.
        let outcome = AssertUnwindSafe(run(ctx.without_text().into_owned()))
            .catch_unwind()
            .await;
        let cost = ledger.spent().saturating_sub(before);
        let mut result = EvalResult {
            name,
            passed: false,
            reason: String::new(),
            metadata,
            cost,
            error: None,
        };
        match outcome {
            Err(p) => result.reason = panic_reason(p.as_ref()),
            Ok(Err(e)) if ends_suite(&e) => {
                let total = ledger.spent().saturating_sub(start);
                return Err(e
                    .with_cost(total)
                    .with_usd(usd_since(ledger.spent_usd(), start_usd))
                    .with_metadata("eval_cases_run", results.len() + 1));
            }
            Ok(Err(e)) => {
                result.reason = reason(&e);
                result.error = Some(e);
            }
            Ok(Ok(v)) => {
                let verdict = std::panic::catch_unwind(AssertUnwindSafe(|| check(&v)))
                    .unwrap_or_else(|p| Verdict::Fail(panic_reason(p.as_ref())));
                match verdict {
                    Verdict::Pass => {
                        result.passed = true;
                        "passed".clone_into(&mut result.reason);
                    }
                    Verdict::Fail(why) => result.reason = why,
                }
            }
        }
        results.push(result);
    }
    let mut report = EvalReport::new(results, min_accuracy)?;
    report.cost = ledger.spent().saturating_sub(start);
    report.usd = usd_since(ledger.spent_usd(), start_usd);
    Ok(report)
}

fn usd_since(now: Option<f64>, start: Option<f64>) -> Option<f64> {
    now.map(|n| n - start.unwrap_or(0.0))
}

/// One turn of a [`ConversationScript`]: the user's text and a check of the turn's result.
///
/// ```
/// use executionkit::eval::Turn;
/// let t = Turn::new("hello", |r| r.value == "hi");
/// assert_eq!(t.user(), "hello");
/// ```
pub struct Turn {
    user: String,
    check: TurnCheck,
}

type TurnCheck = Box<dyn FnOnce(&PatternResult<String, crate::ReactStats>) -> Verdict + Send>;

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Turn {
    /// A turn sending `user` and judging the result with `check`.
    ///
    /// ```
    /// let t = executionkit::eval::Turn::new("hi", |_| ());
    /// assert_eq!(t.user(), "hi");
    /// ```
    pub fn new<C, V>(user: impl Into<String>, check: C) -> Self
    where
        C: FnOnce(&PatternResult<String, crate::ReactStats>) -> V + Send + 'static,
        V: Into<Verdict>,
    {
        Self {
            user: user.into(),
            check: Box::new(move |r| check(r).into()),
        }
    }

    /// The user's text.
    ///
    /// ```
    /// assert_eq!(executionkit::eval::Turn::new("q", |_| true).user(), "q");
    /// ```
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// A named sequence of turns, run on one [`Kit`]'s conversation.
///
/// ```
/// use executionkit::eval::{ConversationScript, Turn};
/// let s = ConversationScript::new("greet", vec![Turn::new("hi", |_| true)]);
/// assert_eq!(s.name(), "greet");
/// ```
#[derive(Debug)]
pub struct ConversationScript {
    name: String,
    turns: Vec<Turn>,
}

impl ConversationScript {
    /// A script named `name` with `turns`.
    ///
    /// ```
    /// let s = executionkit::eval::ConversationScript::new("s", vec![]);
    /// assert_eq!(s.name(), "s");
    /// ```
    pub fn new(name: impl Into<String>, turns: Vec<Turn>) -> Self {
        Self {
            name: name.into(),
            turns,
        }
    }

    /// The script's name.
    ///
    /// ```
    /// assert_eq!(executionkit::eval::ConversationScript::new("s", vec![]).name(), "s");
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Runs each turn `i` as [`Kit::turn`] then its check; results are named `<script>[<i>]`, a
/// failed turn is a failed result and later turns still run; the report has no threshold. All
/// turns spend from the Kit's [`RunContext`].
///
/// ```
/// use executionkit::eval::{ConversationScript, Turn, run_conversation_script};
/// use executionkit::{Kit, MockProvider};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let kit = Kit::new(MockProvider::new(["one", "two"]));
/// let script = ConversationScript::new("greet", vec![
///     Turn::new("hi", |r| r.value == "one"),
///     Turn::new("again", |r| r.value == "one"),
/// ]);
/// let report = run_conversation_script(script, &kit).await.unwrap();
/// assert_eq!(report.failures()[0].name, "greet[1]");
/// # });
/// ```
///
/// # Errors
/// As [`run_eval_suite`]: a turn's `budget_exhausted` or `cancelled` error ends the script.
pub async fn run_conversation_script(script: ConversationScript, kit: &Kit) -> Result<EvalReport> {
    let ctx = kit.run_context();
    let ledger = ctx.ledger();
    let start = ledger.spent();
    let start_usd = ledger.spent_usd();
    let mut results = Vec::with_capacity(script.turns.len());
    for (i, turn) in script.turns.into_iter().enumerate() {
        let before = ledger.spent();
        let outcome = AssertUnwindSafe(kit.turn(&turn.user)).catch_unwind().await;
        let mut result = EvalResult::new(format!("{}[{i}]", script.name), false, "");
        result.cost = ledger.spent().saturating_sub(before);
        match outcome {
            Err(p) => result.reason = panic_reason(p.as_ref()),
            Ok(Err(e)) if ends_suite(&e) => {
                return Err(e
                    .with_cost(ledger.spent().saturating_sub(start))
                    .with_usd(usd_since(ledger.spent_usd(), start_usd))
                    .with_metadata("eval_cases_run", i + 1));
            }
            Ok(Err(e)) => {
                result.reason = reason(&e);
                result.error = Some(e);
            }
            Ok(Ok(r)) => {
                let check = turn.check;
                let verdict = std::panic::catch_unwind(AssertUnwindSafe(|| check(&r)))
                    .unwrap_or_else(|p| Verdict::Fail(panic_reason(p.as_ref())));
                match verdict {
                    Verdict::Pass => {
                        result.passed = true;
                        "passed".clone_into(&mut result.reason);
                    }
                    Verdict::Fail(why) => result.reason = why,
                }
            }
        }
        results.push(result);
    }
    let mut report = EvalReport::new(results, None)?;
    report.cost = ledger.spent().saturating_sub(start);
    report.usd = usd_since(ledger.spent_usd(), start_usd);
    Ok(report)
}
