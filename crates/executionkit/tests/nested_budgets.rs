//! Budgets nest (issue #10 item 1): a pipe with its own `max_budget` inside a budgeted run
//! reserves from every enclosing ledger too. Random trees of nested budgeted pipes over a scripted
//! provider never exceed any level's call or output-token limit, and every level's reported cost
//! adds up (a pipe's cost is the sum of its steps', inner pipes included, and the run's ledger
//! records all of it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::WithCallOptions as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use executionkit::Kit;
use executionkit::{
    Budget, ChatRequest, Consensus, LlmProvider, LlmResponse, MockProvider, Pipe, Result,
    RetryPolicy, RunContext, TokenUsage,
};
use proptest::prelude::*;
use serde_json::Value;

/// What went through one provider.
#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    input: AtomicU64,
    output: AtomicU64,
}

impl Counts {
    fn usage(&self) -> TokenUsage {
        TokenUsage::new(
            self.input.load(Ordering::SeqCst),
            self.output.load(Ordering::SeqCst),
            self.calls.load(Ordering::SeqCst),
        )
    }
}

/// Answers "v" with a scripted usage (input 1..=9, output 0..=15, never above the request's
/// `max_tokens`: the grant), counting what it answered. One per pipe of the tree; all share the
/// script position so the usage varies across the whole run.
#[derive(Debug)]
struct Scripted {
    counts: Arc<Counts>,
    next: Arc<AtomicU64>,
    seed: u64,
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        let k = self.next.fetch_add(1, Ordering::SeqCst);
        let x = k
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(self.seed)
            .rotate_left(17);
        let granted = u64::from(request.max_tokens.unwrap_or(u32::MAX));
        let input = 1 + x % 9;
        let output = ((x >> 8) % 16).min(granted);
        self.counts.calls.fetch_add(1, Ordering::SeqCst);
        // Let concurrent samples interleave. A call cancelled here (a sibling sample was
        // refused) counts as a call without tokens, as in the ledger.
        tokio::task::yield_now().await;
        self.counts.input.fetch_add(input, Ordering::SeqCst);
        self.counts.output.fetch_add(output, Ordering::SeqCst);
        Ok(LlmResponse::text("v").with_usage(input, output))
    }
}

/// Limits of one level (calls and output tokens are hard limits; input is soft, so untested).
#[derive(Debug, Clone, Copy)]
struct Limits {
    calls: Option<u64>,
    output: Option<u64>,
}

impl Limits {
    fn budget(self) -> Budget {
        let mut b = Budget::new();
        if let Some(c) = self.calls {
            b = b.max_calls(c);
        }
        if let Some(o) = self.output {
            b = b.max_output_tokens(o);
        }
        b
    }

    fn holds(self, u: TokenUsage) -> bool {
        self.calls.is_none_or(|c| u.llm_calls <= c)
            && self.output.is_none_or(|o| u.output_tokens <= o)
    }
}

#[derive(Debug, Clone)]
enum Node {
    /// A consensus step of this many samples.
    Leaf(usize),
    /// A pipe with (maybe) its own budget.
    Pipe(Option<Limits>, Vec<Node>),
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        proptest::option::of(1u64..12),
        proptest::option::of(1u64..80),
    )
        .prop_map(|(calls, output)| Limits { calls, output })
}

fn tree() -> impl Strategy<Value = Node> {
    let leaf = (1usize..=3).prop_map(Node::Leaf);
    leaf.prop_recursive(3, 24, 3, |inner| {
        (
            proptest::option::of(limits()),
            proptest::collection::vec(inner, 1..=3),
        )
            .prop_map(|(l, steps)| Node::Pipe(l, steps))
    })
}

/// A built pipe node: its own provider's counts and its children's.
struct Built {
    limits: Option<Limits>,
    counts: Arc<Counts>,
    /// One entry per step: `Some` for a pipe step.
    children: Vec<Option<Built>>,
}

impl Built {
    /// Everything its subtree sent.
    fn total(&self) -> TokenUsage {
        let mut t = self.counts.usage();
        for c in self.children.iter().flatten() {
            t += c.total();
        }
        t
    }

    /// Every level's limit held.
    fn check_limits(&self) {
        let total = self.total();
        if let Some(l) = self.limits {
            assert!(l.holds(total), "{total:?} went past {l:?}");
        }
        for c in self.children.iter().flatten() {
            c.check_limits();
        }
    }

    /// A successful pipe's cost adds up: the sum of its steps', each pipe step's the total of
    /// its subtree, recursively through `step_metadata`.
    fn check_costs(&self, cost: TokenUsage, metadata: &serde_json::Map<String, Value>) {
        assert_eq!(cost, self.total());
        let step_costs = metadata["step_costs"].as_array().unwrap();
        let sum = step_costs
            .iter()
            .map(usage_of)
            .fold(TokenUsage::default(), |a, b| a + b);
        assert_eq!(sum, cost, "the steps' costs add up to the pipe's");
        for (i, c) in self.children.iter().enumerate() {
            if let Some(c) = c {
                let meta = metadata["step_metadata"][i].as_object().unwrap();
                c.check_costs(usage_of(&step_costs[i]), meta);
            }
        }
    }
}

fn usage_of(v: &Value) -> TokenUsage {
    let f = |k: &str| v[k].as_u64().unwrap();
    TokenUsage::new(f("input_tokens"), f("output_tokens"), f("llm_calls"))
}

/// Builds `steps` into a pipe whose direct calls go to `counts` (a pipe step gets its own
/// provider, which its subtree inherits).
fn build(
    limits: Option<Limits>,
    steps: &[Node],
    counts: Arc<Counts>,
    next: &Arc<AtomicU64>,
    seed: u64,
) -> (Pipe, Built) {
    let mut pipe = Pipe::new();
    let mut children = Vec::new();
    for step in steps {
        match step {
            Node::Leaf(samples) => {
                pipe = pipe.step(Consensus::new().samples(*samples).max_tokens(12));
                children.push(None);
            }
            Node::Pipe(l, inner) => {
                let own = Arc::new(Counts::default());
                let (p, b) = build(*l, inner, Arc::clone(&own), next, seed);
                let provider = Arc::new(Scripted {
                    counts: own,
                    next: Arc::clone(next),
                    seed,
                });
                pipe = pipe.step_with_provider(provider, p);
                children.push(Some(b));
            }
        }
    }
    if let Some(l) = limits {
        pipe = pipe.max_budget(l.budget());
    }
    (
        pipe,
        Built {
            limits,
            counts,
            children,
        },
    )
}

fn run_tree(outer: Option<Limits>, root: &Node, seed: u64) {
    let (limits, steps) = match root {
        Node::Leaf(_) => (None, std::slice::from_ref(root)),
        Node::Pipe(l, s) => (*l, s.as_slice()),
    };
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let (pipe, built) = build(limits, steps, Arc::clone(&counts), &next, seed);
    let provider = Scripted { counts, next, seed };
    let mut ctx = RunContext::new().retry(RetryPolicy::none());
    if let Some(l) = outer {
        ctx = ctx.budget(l.budget());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let result = rt.block_on(pipe.run(&provider, "q", &ctx));
    let total = built.total();
    // The run's ledger saw every call of every level, and its own limit held.
    assert_eq!(ctx.ledger().spent(), total);
    if let Some(l) = outer {
        assert!(l.holds(total), "{total:?} went past the run's {l:?}");
    }
    built.check_limits();
    match result {
        Ok(r) => built.check_costs(r.cost, &r.metadata),
        Err(e) => {
            assert!(e.is_budget_exhausted(), "{e}");
            assert_eq!(e.cost(), total, "the error carries every level's spend");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn nested_budgets_hold_at_every_level_and_costs_add_up(
        outer in proptest::option::of(limits()),
        root in tree(),
        seed in any::<u64>(),
    ) {
        run_tree(outer, &root, seed);
    }
}

/// A pipe with a roomy budget of its own, run through a Kit whose session budget is tighter:
/// the session's limit wins, and the session's ledger records the pipe's calls.
#[tokio::test]
async fn kit_pipe_stays_within_the_session_budget() {
    let p = MockProvider::new([LlmResponse::text("v").with_usage(3, 1)]);
    let kit = Kit::new(p.clone()).context(
        RunContext::new()
            .budget(Budget::new().max_calls(4))
            .retry(RetryPolicy::none()),
    );
    let pipe = Pipe::new()
        .step(Consensus::new().samples(3))
        .step(Consensus::new().samples(3))
        .max_budget(Budget::new().max_calls(30));
    let e = kit.pipe("q", &pipe).await.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.metadata()["exhausted"], "llm_calls");
    assert_eq!(
        e.metadata()["budget_level"],
        1,
        "the session's limit tripped"
    );
    assert_eq!(e.metadata()["budget"]["llm_calls"], 4);
    assert_eq!(p.call_count(), 4);
    assert_eq!(kit.run_context().ledger().spent().llm_calls, 4);
    assert_eq!(kit.usage(), TokenUsage::new(12, 4, 4));
    // Nothing is left for the session, whatever the next pipe's own budget says.
    let e = kit.pipe("q", &pipe).await.unwrap_err();
    assert!(e.is_budget_exhausted());
    assert_eq!(p.call_count(), 4);
}

/// The other way round: the pipe's own limit is the tighter one, and the session keeps the rest.
#[tokio::test]
async fn kit_pipe_with_a_tighter_budget_of_its_own() {
    let p = MockProvider::new([LlmResponse::text("v").with_usage(3, 1)]);
    let kit = Kit::new(p.clone()).context(
        RunContext::new()
            .budget(Budget::new().max_calls(10))
            .retry(RetryPolicy::none()),
    );
    let pipe = Pipe::new()
        .step(Consensus::new().samples(2))
        .step(Consensus::new().samples(2))
        .max_budget(Budget::new().max_calls(3));
    let e = kit.pipe("q", &pipe).await.unwrap_err();
    assert_eq!(
        e.metadata()["budget_level"],
        0,
        "the pipe's own limit tripped"
    );
    assert_eq!(e.metadata()["budget"]["llm_calls"], 3);
    assert_eq!(kit.run_context().ledger().spent().llm_calls, 3);
    assert_eq!(kit.run_context().ledger().remaining().llm_calls, Some(7));
    // A pipe of two calls fits what is left.
    let small = Pipe::new()
        .step(Consensus::new().samples(2))
        .max_budget(Budget::new().max_calls(3));
    let r = kit.pipe("q", &small).await.unwrap();
    assert_eq!(r.cost.llm_calls, 2);
    assert_eq!(kit.run_context().ledger().spent().llm_calls, 5);
}

/// A pipe inside a pipe, each with a budget: the outer ceiling holds even though the inner one
/// alone would allow more (before, the inner pipe replaced the ledger and escaped it).
#[tokio::test]
async fn an_inner_pipe_cannot_escape_the_outer_ceiling() {
    let p = MockProvider::new([LlmResponse::text("v").with_usage(1, 1)]);
    let inner = Pipe::new()
        .step(Consensus::new().samples(3))
        .max_budget(Budget::new().max_calls(30));
    let outer = Pipe::new()
        .step(Consensus::new().samples(2))
        .step(inner)
        .max_budget(Budget::new().max_calls(4));
    let ctx = RunContext::new().retry(RetryPolicy::none());
    let e = outer.run(&p, "q", &ctx).await.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.metadata()["budget_level"], 1);
    assert_eq!(p.call_count(), 4);
    assert_eq!(e.cost().llm_calls, 4);
    assert_eq!(ctx.ledger().spent().llm_calls, 4);
}

/// Many concurrent reservations through two children of one root (and the root itself): no
/// level's call or output-token limit is passed, waiters blocked by a shared ancestor are woken
/// (no task hangs), and the root's spend is the sum of everything.
#[test]
fn concurrent_siblings_share_the_root_without_passing_any_limit() {
    use executionkit::BudgetLedger;
    use executionkit::Usage;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = Arc::new(BudgetLedger::new(
        Budget::new().max_output_tokens(3_000).max_calls(1_500),
    ));
    let a = Arc::new(BudgetLedger::child(
        Arc::clone(&root),
        Budget::new().max_output_tokens(2_000),
    ));
    let b = Arc::new(BudgetLedger::child(
        Arc::clone(&root),
        Budget::new().max_calls(700),
    ));
    let levels = [Arc::clone(&root), Arc::clone(&a), Arc::clone(&b)];
    let recorded: [Arc<Counts>; 3] = Default::default();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..3_000u64 {
            let level = usize::try_from(i % 3).unwrap();
            let ledger = Arc::clone(&levels[level]);
            let (root, a, b) = (Arc::clone(&root), Arc::clone(&a), Arc::clone(&b));
            let recorded = Arc::clone(&recorded[level]);
            tasks.push(tokio::spawn(async move {
                let r = ledger.reserve("m", 1 + i % 7, false).await?;
                tokio::task::yield_now().await;
                assert!(root.spent().output_tokens <= 3_000);
                assert!(a.spent().output_tokens <= 2_000);
                assert!(b.spent().llm_calls <= 700);
                let out = r.max_tokens() - (i % 2).min(r.max_tokens());
                recorded.calls.fetch_add(1, Ordering::SeqCst);
                recorded.output.fetch_add(out, Ordering::SeqCst);
                recorded.input.fetch_add(1, Ordering::SeqCst);
                r.settle(Usage {
                    input_tokens: 1,
                    output_tokens: out,
                    ..Usage::default()
                });
                Ok::<_, executionkit::Error>(())
            }));
        }
        // A guard against a deadlock or a lost wake-up, not a timing assertion.
        let all = futures::future::join_all(tasks);
        let results = tokio::time::timeout(std::time::Duration::from_secs(120), all)
            .await
            .expect("a reservation never woke up");
        for r in results {
            if let Err(e) = r.unwrap() {
                assert!(e.is_budget_exhausted(), "{e}");
            }
        }
    });
    // Each child's spend is what went through it; the root's is everything.
    assert_eq!(a.spent(), recorded[1].usage());
    assert_eq!(b.spent(), recorded[2].usage());
    assert_eq!(
        root.spent(),
        recorded[0].usage() + recorded[1].usage() + recorded[2].usage()
    );
    assert!(root.spent().output_tokens <= 3_000 && root.spent().llm_calls <= 1_500);
    assert!(a.spent().output_tokens <= 2_000);
    assert!(b.spent().llm_calls <= 700);
}
