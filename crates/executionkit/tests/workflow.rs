//! `Workflow`: true dependency order (property test over random DAGs), independent steps in
//! flight together, checks before any call, one shared budget, approval, and resume after a
//! simulated crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use executionkit::{
    ApprovalGate, ApprovalRequest, Budget, ChatRequest, Consensus, LlmProvider, LlmResponse,
    MockProvider, Result, RetryPolicy, RunContext, Step, TokenUsage, Workflow, WorkflowCheckpoint,
};
use proptest::prelude::*;
use tokio::sync::{Barrier, Notify};

fn ctx() -> RunContext {
    RunContext::new().retry(RetryPolicy::none())
}

/// A step whose prompt is its own name, so the provider knows which step calls it.
fn step(name: &str) -> Step {
    Step::new(name, Consensus::new().samples(1)).prompt(|c| c.step().to_owned())
}

/// What a step's call does before answering.
#[derive(Clone)]
enum Act {
    /// Yield to the scheduler this many times.
    Yield(usize),
    /// Wait at the barrier (every party must be in flight at once).
    Barrier(Arc<Barrier>),
    /// Wait until notified.
    Wait(Arc<Notify>),
    /// Notify, then answer.
    Wake(Arc<Notify>),
    /// Never answer.
    Hang,
}

/// Records each call's start and end (in one sequence) and answers `out:<step>` with 10 input
/// and 5 output tokens.
#[derive(Default)]
struct Recorder {
    acts: BTreeMap<String, Act>,
    log: Mutex<Vec<(bool, String)>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    fn with(acts: impl IntoIterator<Item = (&'static str, Act)>) -> Self {
        Self {
            acts: acts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            log: Mutex::default(),
        }
    }
    fn log(&self) -> Vec<(bool, String)> {
        self.log.lock().unwrap().clone()
    }
    fn started(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter_map(|(s, n)| s.then_some(n))
            .collect()
    }
}

#[async_trait]
impl LlmProvider for Recorder {
    fn model(&self) -> &str {
        "recorder"
    }
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        let name = request.messages[0].content.clone();
        self.log.lock().unwrap().push((true, name.clone()));
        match self.acts.get(&name).cloned().unwrap_or(Act::Yield(0)) {
            Act::Yield(n) => {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            }
            Act::Barrier(b) => {
                b.wait().await;
            }
            Act::Wait(n) => n.notified().await,
            Act::Wake(n) => n.notify_one(),
            Act::Hang => futures::future::pending::<()>().await,
        }
        self.log.lock().unwrap().push((false, name.clone()));
        Ok(LlmResponse::text(format!("out:{name}")).with_usage(10, 5))
    }
}

/// A random DAG: step i may depend only on steps before it; and a number of yields per step.
fn dag() -> impl Strategy<Value = Vec<(Vec<usize>, usize)>> {
    (1_usize..9).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                (
                    proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i),
                    // At least one: a real call awaits I/O, so every step is in flight a while.
                    1_usize..4,
                )
            })
            .collect::<Vec<_>>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No step starts before every dependency has ended; every step runs once; the steps with
    /// no dependency are all in flight before any step ends; each output is the step's.
    #[test]
    fn steps_run_in_dependency_order(graph in dag(), shuffle in any::<u64>()) {
        let names: Vec<String> = (0..graph.len()).map(|i| format!("s{i}")).collect();
        // Declare the steps in a scrambled order: the order of declaration must not matter.
        let mut order: Vec<usize> = (0..graph.len()).collect();
        order.sort_by_key(|i| (shuffle.rotate_left(u32::try_from(*i).unwrap() * 7)) % 97);
        let mut wf = Workflow::new();
        for &i in &order {
            let deps = graph[i].0.iter().map(|d| names[*d].clone());
            wf = wf.step(step(&names[i]).after(deps));
        }
        let p = Recorder {
            acts: names.iter().zip(&graph).map(|(n, (_, y))| (n.clone(), Act::Yield(*y))).collect(),
            log: Mutex::default(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = rt.block_on(wf.run(&p, "task", &ctx())).unwrap();
        let log = p.log();
        let pos = |start: bool, n: &str| {
            let found: Vec<usize> = log.iter().enumerate()
                .filter(|(_, (s, m))| *s == start && m == n).map(|(k, _)| k).collect();
            prop_assert_eq!(found.len(), 1, "{} {} once in {:?}", if start {"start"} else {"end"}, n, log);
            Ok(found[0])
        };
        for (i, (deps, _)) in graph.iter().enumerate() {
            let start = pos(true, &names[i])?;
            for d in deps {
                let end = pos(false, &names[*d])?;
                prop_assert!(end < start, "{} started before {} ended: {:?}", names[i], names[*d], log);
            }
            prop_assert_eq!(&r.value[&names[i]], &format!("out:{}", names[i]));
        }
        let first_end = log.iter().position(|(s, _)| !s).unwrap();
        for (i, (deps, _)) in graph.iter().enumerate() {
            if deps.is_empty() {
                prop_assert!(pos(true, &names[i])? < first_end, "root {} not in flight with the others: {:?}", names[i], log);
            }
        }
        let n = graph.len() as u64;
        prop_assert_eq!(r.cost, TokenUsage::new(10 * n, 5 * n, n));
        prop_assert_eq!(r.stats.finished.len(), graph.len());
    }
}

/// Two steps that depend only on the root are in flight at the same time: each waits at a
/// barrier for the other, so run one after the other they would never finish.
#[tokio::test]
async fn independent_steps_overlap() {
    let b = Arc::new(Barrier::new(2));
    let p = Recorder::with([("x", Act::Barrier(b.clone())), ("y", Act::Barrier(b))]);
    let wf = Workflow::new()
        .step(step("root"))
        .step(step("x").after(["root"]))
        .step(step("y").after(["root"]))
        .step(step("z").after(["x", "y"]));
    let r = wf.run(&p, "t", &ctx()).await.unwrap();
    assert_eq!(r.value.len(), 4);
    assert_eq!(r.cost.llm_calls, 4);
}

/// Not waves: `c` depends only on `a` and starts while `b` (of the same "wave" as `a`) is still
/// running; `b` waits for `c` to have run, so a wave scheduler would never finish.
#[tokio::test]
async fn a_step_starts_when_its_own_dependencies_end_not_the_wave() {
    let n = Arc::new(Notify::new());
    let p = Recorder::with([("b", Act::Wait(n.clone())), ("c", Act::Wake(n))]);
    let wf = Workflow::new()
        .step(step("a"))
        .step(step("b"))
        .step(step("c").after(["a"]))
        .step(step("d").after(["b", "c"]));
    let r = wf.run(&p, "t", &ctx()).await.unwrap();
    assert_eq!(r.stats.finished, ["a", "c", "b", "d"]);
}

#[tokio::test]
async fn default_input_joins_several_dependencies() {
    let p = MockProvider::new(["A", "B", "C"]);
    let wf = Workflow::new()
        .step(Step::new("a", Consensus::new().samples(1)))
        .step(Step::new("b", Consensus::new().samples(1)).after(["a"]))
        .step(Step::new("c", Consensus::new().samples(1)).after(["a", "b"]));
    let r = wf.run(&p, "task", &ctx()).await.unwrap();
    let sent: Vec<String> = p
        .calls()
        .iter()
        .map(|c| c.request.messages[0].content.clone())
        .collect();
    assert_eq!(sent, ["task", "A", "a:\nA\n\nb:\nB"]);
    assert_eq!(r.value["c"], "C");
}

#[tokio::test]
async fn cycles_and_unknown_dependencies_are_rejected_before_any_call() {
    let p = MockProvider::new(["x"]);
    let cases = [
        (
            Workflow::new()
                .step(step("root"))
                .step(step("a").after(["root", "b"]))
                .step(step("b").after(["a"]))
                .step(step("d").after(["a"])),
            "cycle among steps a, b",
        ),
        (
            Workflow::new().step(step("a").after(["a"])),
            "cycle among steps a",
        ),
        (
            Workflow::new()
                .step(step("a"))
                .step(step("b").after(["zeta", "a", "alpha"])),
            "'b' depends on unknown steps: alpha, zeta",
        ),
        (
            Workflow::new().step(step("a")).step(step("a")),
            "names must be unique",
        ),
        (
            Workflow::new()
                .step(step("a"))
                .step(step("z"))
                .initial_context([("z", "1"), ("x", "2"), ("a", "3")]),
            "collide with step names: a, z",
        ),
    ];
    for (wf, msg) in cases {
        let e = wf.run(&p, "t", &ctx()).await.unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");
        assert!(e.message().contains(msg), "{} lacks {msg}", e.message());
        assert!(e.cost().is_zero());
    }
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn initial_context_is_seen_and_kept() {
    let p = MockProvider::new(["ok"]);
    let wf = Workflow::new().initial_context([("topic", "owls")]).step(
        Step::new("a", Consensus::new().samples(1))
            .prompt(|c| format!("About {}", c.get("topic").unwrap_or_default())),
    );
    let r = wf.run(&p, "t", &ctx()).await.unwrap();
    assert_eq!(p.calls()[0].request.messages[0].content, "About owls");
    assert_eq!(r.value["topic"], "owls");
    assert_eq!(r.value["a"], "ok");
}

/// The steps share the context's ledger: the third call of a chain of three does not fit in
/// two; the error carries the spend of the two that ran and each step's cost.
#[tokio::test]
async fn one_budget_exhausted_mid_workflow_carries_the_spend() {
    let p = Recorder::default();
    let wf = Workflow::new()
        .step(step("a"))
        .step(step("b").after(["a"]))
        .step(step("c").after(["b"]));
    let ctx = ctx().budget(Budget::new().max_calls(2));
    let e = wf.run(&p, "t", &ctx).await.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.cost(), TokenUsage::new(20, 10, 2));
    assert_eq!(e.metadata()["failed_step"], "c");
    assert_eq!(e.metadata()["step_costs"]["a"]["llm_calls"], 1);
    assert_eq!(e.metadata()["step_costs"]["b"]["llm_calls"], 1);
    assert_eq!(p.started(), ["a", "b"]);
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(20, 10, 2));
}

/// A crash (the run's future dropped) after `a`'s checkpoint while `b` is in flight; resuming
/// runs `b` and `c` only, starts from the checkpoint's spend (which counts `b`'s lost call) and
/// keeps the total within the budget.
#[tokio::test]
async fn resume_after_a_crash_reruns_no_finished_step_and_stays_within_budget() {
    let saved: Arc<Mutex<Vec<WorkflowCheckpoint>>> = Arc::default();
    let checkpointed = Arc::new(Notify::new());
    let (s, n) = (saved.clone(), checkpointed.clone());
    let wf = Workflow::new()
        .step(step("a"))
        .step(step("b"))
        .step(step("c").after(["a", "b"]))
        .on_checkpoint(move |cp| {
            s.lock().unwrap().push(cp.clone());
            n.notify_one();
            Ok(())
        });
    let crashing = Recorder::with([("a", Act::Yield(1)), ("b", Act::Hang)]);
    {
        let c = ctx();
        let run = wf.run(&crashing, "t", &c);
        tokio::select! {
            r = run => panic!("the run cannot finish: {r:?}"),
            () = checkpointed.notified() => {} // the future is dropped here: the crash
        }
    }
    let cp = saved.lock().unwrap().last().cloned().unwrap();
    assert_eq!(cp.finished, ["a"]);
    // a's tokens and call, and b's call (reserved, in flight) with its output grant.
    assert_eq!(cp.spent, TokenUsage::new(10, 5, 2));
    let lost = cp.in_flight_output_tokens;
    assert!(lost > 0);
    let cp = WorkflowCheckpoint::from_json(&cp.to_json()).unwrap();
    assert_eq!(cp.in_flight_output_tokens, lost);

    // Four calls in all: a, b (lost), b again, c.
    let p = Recorder::default();
    let ctx4 = ctx().budget(Budget::new().max_calls(4));
    let r = wf.resume(&p, "t", &ctx4, &cp).await.unwrap();
    assert_eq!(p.started(), ["b", "c"]);
    assert_eq!(r.value["a"], "out:a");
    assert_eq!(r.value["c"], "out:c");
    // The lost call counts its whole grant (it may have used it).
    assert_eq!(r.cost, TokenUsage::new(30, 15 + lost, 4));
    assert_eq!(r.stats.resumed, ["a"]);
    assert_eq!(r.stats.finished, ["b", "c"]);
    assert_eq!(ctx4.ledger().spent(), r.cost);
    // The checkpoints of the resumed run carry the earlier spend on.
    assert_eq!(saved.lock().unwrap().last().unwrap().spent, r.cost);

    // With three calls in all, the carried spend leaves room for one: c does not run.
    let p = Recorder::default();
    let e = wf
        .resume(&p, "t", &ctx().budget(Budget::new().max_calls(3)), &cp)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(p.started(), ["b"]);
    assert_eq!(e.cost().llm_calls, 3);

    // The lost grant counts against an output limit: with room for the known spend plus one
    // step's answer but not the lost grant too, nothing more runs.
    let p = Recorder::default();
    let tight = Budget::new().max_output_tokens(5 + lost);
    let e = wf
        .resume(&p, "t", &ctx().budget(tight), &cp)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.metadata()["exhausted"], "output_tokens");
    assert!(p.started().is_empty());
}

#[tokio::test]
async fn a_checkpoint_naming_unknown_steps_is_rejected() {
    let wf = Workflow::new().step(step("a"));
    let cp = WorkflowCheckpoint {
        finished: vec!["ghost".into()],
        ..WorkflowCheckpoint::default()
    };
    let p = MockProvider::new(["x"]);
    let e = wf.resume(&p, "t", &ctx(), &cp).await.unwrap_err();
    assert!(
        e.is_invalid_argument() && e.message().contains("ghost"),
        "{e}"
    );
    let cp = WorkflowCheckpoint {
        finished: vec!["a".into()],
        ..WorkflowCheckpoint::default()
    };
    let e = wf.resume(&p, "t", &ctx(), &cp).await.unwrap_err();
    assert!(
        e.is_invalid_argument() && e.message().contains("no output"),
        "{e}"
    );
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn a_failing_checkpoint_writer_aborts_the_run() {
    let p = Recorder::default();
    let wf = Workflow::new()
        .step(step("a"))
        .step(step("b").after(["a"]))
        .on_checkpoint(|_| Err(executionkit::Error::invalid_argument("cp", "disk full")));
    let e = wf.run(&p, "t", &ctx()).await.unwrap_err();
    assert!(e.message().contains("disk full"));
    assert_eq!(p.started(), ["a"]);
    assert_eq!(e.cost().llm_calls, 1);
}

/// The gate is asked per step with its dependencies; a denial aborts before the step's call.
#[tokio::test]
async fn approval_denial_stops_the_step() {
    let asked: Arc<Mutex<Vec<ApprovalRequest>>> = Arc::default();
    let a = asked.clone();
    let gate = ApprovalGate::new(move |req: ApprovalRequest| {
        a.lock().unwrap().push(req.clone());
        async move { Ok(req.subject != "b") }
    });
    let p = Recorder::default();
    let wf = Workflow::new()
        .step(step("a"))
        .step(step("b").after(["a"]).metadata("risk", "high"))
        .approval(gate);
    let e = wf.run(&p, "t", &ctx()).await.unwrap_err();
    assert!(e.is_approval_denied(), "{e}");
    assert_eq!(e.metadata()["failed_step"], "b");
    assert_eq!(e.cost(), TokenUsage::new(10, 5, 1));
    assert_eq!(p.started(), ["a"]);
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1].action, "workflow_step");
    assert_eq!(asked[1].metadata["depends_on"], serde_json::json!(["a"]));
    assert_eq!(asked[1].metadata["risk"], "high");

    let ok = Workflow::new()
        .step(step("a"))
        .approval(ApprovalGate::allow_all());
    assert_eq!(ok.run(&p, "t", &ctx()).await.unwrap().value["a"], "out:a");
}

#[tokio::test]
async fn checkpoint_json_is_strict() {
    let cp = WorkflowCheckpoint {
        outputs: BTreeSet::from(["a"])
            .into_iter()
            .map(|k| (k.to_owned(), "x".to_owned()))
            .collect(),
        finished: vec!["a".into()],
        step_costs: [("a".to_owned(), TokenUsage::new(1, 2, 3))].into(),
        spent: TokenUsage::new(1, 2, 3),
        usd: Some(0.5),
        in_flight_output_tokens: 7,
    };
    assert_eq!(WorkflowCheckpoint::from_json(&cp.to_json()).unwrap(), cp);
    for bad in [
        "{}",
        r#"{"outputs": {}, "finished": [], "step_costs": {}}"#,
        r#"{"outputs": [], "finished": [], "step_costs": {}, "spent": {"input_tokens": 0, "output_tokens": 0, "llm_calls": 0}}"#,
        r#"{"outputs": {}, "finished": [], "step_costs": {}, "spent": {"output_tokens": 0, "llm_calls": 0}}"#,
    ] {
        let e = WorkflowCheckpoint::from_json(bad).unwrap_err();
        assert!(e.is_invalid_argument(), "{bad}: {e}");
    }
    assert!(
        WorkflowCheckpoint::from_json("{}")
            .unwrap_err()
            .message()
            .contains("outputs")
    );
}

/// Reference scenario 151: a full checkpoint runs nothing and costs what it carries; resuming
/// from the checkpoint after step 3 of 5 gives the outputs of a fresh run.
#[tokio::test]
async fn resuming_from_any_checkpoint_gives_the_fresh_outputs() {
    let saved: Arc<Mutex<Vec<WorkflowCheckpoint>>> = Arc::default();
    let s = saved.clone();
    let wf = Workflow::new()
        .initial_context([("seed", "0")])
        .step(step("s1"))
        .step(step("s2").after(["s1"]))
        .step(step("s3").after(["s1"]))
        .step(step("s4").after(["s2", "s3"]))
        .step(step("s5").after(["s4"]))
        .on_checkpoint(move |cp| {
            s.lock().unwrap().push(cp.clone());
            Ok(())
        });
    let fresh = wf.run(&Recorder::default(), "t", &ctx()).await.unwrap();
    let cps = saved.lock().unwrap().clone();
    assert_eq!(cps.len(), 5);

    let after3 = &cps[2];
    let p = Recorder::default();
    let r = wf.resume(&p, "t", &ctx(), after3).await.unwrap();
    assert_eq!(r.value, fresh.value);
    assert_eq!(p.started(), ["s4", "s5"]);
    assert_eq!(r.cost, fresh.cost);

    let full = &cps[4];
    let p = Recorder::default();
    let r = wf.resume(&p, "t", &ctx(), full).await.unwrap();
    assert!(p.started().is_empty());
    assert_eq!(r.value, fresh.value);
    assert_eq!(r.cost, full.spent);
}

/// A provider whose failure quotes its own key.
#[derive(Debug)]
struct Leaky;

const KEY: &str = "sk-workflow-secret-0123456789";

#[async_trait]
impl LlmProvider for Leaky {
    fn model(&self) -> &str {
        "leaky"
    }
    fn secret(&self) -> Option<&str> {
        Some(KEY)
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        Err(
            executionkit::Error::new(executionkit::ErrorKind::Permanent, format!("bad key {KEY}"))
                .with_metadata("echo", KEY),
        )
    }
}

#[tokio::test]
async fn a_failing_step_does_not_leak_the_providers_key() {
    let wf = Workflow::new().step(step("a"));
    let e = wf.run(&Leaky, "t", &ctx()).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(!e.to_string().contains(KEY));
    assert!(!format!("{e:?}").contains(KEY));
    assert!(!e.to_json().to_string().contains(KEY));
}
