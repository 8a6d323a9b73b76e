//! `Plan` (reference §16, scenario 156: the caller's steps in order, each seeing the earlier
//! outputs) and `Planner` (a model proposes the steps as structured output; the proposal is
//! checked, repaired or refused, then run as a workflow), all under one budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use executionkit::{
    ApprovalGate, ApprovalRequest, Budget, ChatRequest, Consensus, LlmProvider, LlmResponse,
    MockProvider, Pattern, PatternResult, Plan, PlanStep, Planner, ProposedPlan, Result,
    RetryPolicy, RunContext, StepInput, TokenUsage,
};
use serde_json::json;

fn ctx() -> RunContext {
    RunContext::new().retry(RetryPolicy::none())
}

/// A step that makes no call: its value is its prompt, with a fixed cost.
#[derive(Debug)]
struct Echo(TokenUsage);

#[async_trait]
impl Pattern for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    async fn run_step(
        &self,
        _provider: &dyn LlmProvider,
        input: StepInput<'_>,
        _ctx: &RunContext,
    ) -> Result<PatternResult<String>> {
        Ok(PatternResult::new(input.prompt().to_owned()).with_cost(self.0))
    }
}

fn echo() -> Echo {
    Echo(TokenUsage::default())
}

fn one() -> Consensus {
    Consensus::new().samples(1)
}

// ---------------------------------------------------------------------------------------------
// Plan

#[tokio::test]
async fn scenario_156_each_step_sees_the_earlier_outputs() {
    let plan = Plan::new()
        .step(PlanStep::new("draft", "Draft.", echo()).prompt(|_| "draft".into()))
        .step(
            PlanStep::new("review", "Review.", echo())
                .prompt(|c| format!("{}:ok", c.get("draft").unwrap())),
        );
    let r = plan
        .run(&MockProvider::default(), "t", &ctx())
        .await
        .unwrap();
    assert_eq!(r.value.len(), 2);
    assert_eq!(r.value["draft"], "draft");
    assert_eq!(r.value["review"], "draft:ok");
    assert_eq!(r.stats.finished, ["draft", "review"]);
}

#[tokio::test]
async fn scenario_156_duplicate_names_are_refused_before_any_call() {
    let p = MockProvider::new(["x"]);
    let plan = Plan::new()
        .step(PlanStep::new("a", "A.", one()))
        .step(PlanStep::new("b", "B.", one()))
        .step(PlanStep::new("a", "A again.", one()));
    let e = plan.run(&p, "t", &ctx()).await.unwrap_err();
    assert!(e.is_invalid_argument(), "{e}");
    assert!(e.message().contains("unique"), "{e}");
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn scenario_156_approval_denied_runs_nothing_and_allowed_runs() {
    let p = MockProvider::new(["x"]);
    let plan = Plan::new().step(PlanStep::new("a", "A.", one()));
    let e = plan
        .clone()
        .approval(ApprovalGate::deny_all("needs review"))
        .run(&p, "t", &ctx())
        .await
        .unwrap_err();
    assert!(
        e.is_approval_denied() && e.to_string().contains("needs review"),
        "{e}"
    );
    assert_eq!(p.call_count(), 0);
    let r = plan
        .approval(ApprovalGate::allow_all())
        .run(&p, "t", &ctx())
        .await
        .unwrap();
    assert_eq!(r.value["a"], "x");
    assert_eq!(p.call_count(), 1);
}

#[tokio::test]
async fn scenario_156_a_steps_pattern_result_is_unwrapped_and_its_cost_counted() {
    let plan = Plan::new().step(
        PlanStep::new("a", "A.", Echo(TokenUsage::new(10, 5, 3)))
            .prompt(|_| "unwrapped-value".into()),
    );
    let r = plan
        .run(&MockProvider::default(), "t", &ctx())
        .await
        .unwrap();
    assert_eq!(r.value["a"], "unwrapped-value");
    assert_eq!(r.cost, TokenUsage::new(10, 5, 3));
}

#[tokio::test]
async fn plan_steps_ask_the_gate_as_plan_steps_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let gate = ApprovalGate::new(move |req: ApprovalRequest| {
        s.lock().unwrap().push(req);
        async { Ok(true) }
    });
    let plan = Plan::new()
        .step(PlanStep::new("a", "Do A.", one()).metadata("risk", "low"))
        .step(PlanStep::new("b", "Do B.", one()))
        .approval(gate);
    let _ = plan
        .run(&MockProvider::new(["x"]), "t", &ctx())
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].action.as_str(), seen[0].subject.as_str()),
        ("plan_step", "a")
    );
    assert_eq!(seen[0].metadata["instruction"], "Do A.");
    assert_eq!(seen[0].metadata["risk"], "low");
    assert_eq!(seen[1].subject, "b");
    assert_eq!(seen[1].metadata["instruction"], "Do B.");
}

#[tokio::test]
async fn the_default_prompt_holds_the_task_every_earlier_output_and_the_instruction() {
    let p = MockProvider::new(["one", "two", "three"]);
    let plan = Plan::new()
        .initial_context([("tone", "dry")])
        .step(PlanStep::new("a", "Start.", one()))
        .step(PlanStep::new("b", "Go on.", one()))
        .step(PlanStep::new("c", "Finish.", one()));
    let r = plan.run(&p, "The task", &ctx()).await.unwrap();
    assert_eq!(r.value["c"], "three");
    let calls = p.calls();
    let first = &calls[0].request.messages[0].content;
    assert!(first.starts_with("Task:\nThe task"), "{first}");
    assert!(first.contains("Output of step `tone`:\ndry"), "{first}");
    assert!(first.ends_with("Your step (`a`): Start."), "{first}");
    let last = &calls[2].request.messages[0].content;
    assert!(last.contains("Output of step `a`:\none"), "{last}");
    assert!(last.contains("Output of step `b`:\ntwo"), "{last}");
    assert!(last.ends_with("Your step (`c`): Finish."), "{last}");
}

#[tokio::test]
async fn a_step_may_overwrite_a_seed_of_its_name() {
    // The reference's rule for plans: no collision check; earlier steps see the seed.
    let plan = Plan::new()
        .initial_context([("b", "seed")])
        .step(PlanStep::new("a", "A.", echo()).prompt(|c| c.get("b").unwrap().to_owned()))
        .step(PlanStep::new("b", "B.", echo()).prompt(|_| "step".into()));
    let r = plan
        .run(&MockProvider::default(), "t", &ctx())
        .await
        .unwrap();
    assert_eq!(
        (r.value["a"].as_str(), r.value["b"].as_str()),
        ("seed", "step")
    );
}

#[tokio::test]
async fn a_plan_out_of_budget_carries_its_whole_spend() {
    let p = MockProvider::new(["x"]);
    let plan = Plan::new()
        .step(PlanStep::new("a", "A.", one()))
        .step(PlanStep::new("b", "B.", one()))
        .step(PlanStep::new("c", "C.", one()));
    let c = ctx().budget(Budget::new().max_calls(2));
    let e = plan.run(&p, "t", &c).await.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.cost().llm_calls, 2);
    assert_eq!(e.metadata()["failed_step"], "c");
    assert_eq!(c.ledger().spent().llm_calls, 2);
}

// ---------------------------------------------------------------------------------------------
// Planner

/// Answers the planning call (the one with a `response_format`) from a script of proposals,
/// and a step's call with `out:<step>`; records every call's prompt in order.
#[derive(Debug, Default)]
struct Scripted {
    proposals: Mutex<Vec<String>>,
    log: Mutex<Vec<(Option<String>, String)>>,
    secret: Option<&'static str>,
    fail_steps: bool,
}

impl Scripted {
    fn new<I: IntoIterator<Item = S>, S: Into<String>>(proposals: I) -> Self {
        let mut v: Vec<String> = proposals.into_iter().map(Into::into).collect();
        v.reverse();
        Self {
            proposals: Mutex::new(v),
            ..Self::default()
        }
    }

    /// The steps called, in call order.
    fn steps(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(s, _)| s.clone())
            .collect()
    }

    fn planning_prompts(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s.is_none())
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn prompt_of(&self, step: &str) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|(s, _)| s.as_deref() == Some(step))
            .map(|(_, p)| p.clone())
            .unwrap()
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }
    fn secret(&self) -> Option<&str> {
        self.secret
    }
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        let prompt = request.messages.last().unwrap().content.clone();
        if request.response_format.is_some() {
            self.log.lock().unwrap().push((None, prompt));
            let next = self.proposals.lock().unwrap().pop().unwrap_or_default();
            return Ok(LlmResponse::text(next).with_usage(100, 50));
        }
        let start = prompt.rfind("Your step (`").unwrap() + "Your step (`".len();
        let step = prompt[start..].split('`').next().unwrap().to_owned();
        self.log.lock().unwrap().push((Some(step.clone()), prompt));
        tokio::task::yield_now().await;
        if self.fail_steps {
            let key = self.secret.unwrap_or_default();
            return Err(executionkit::Error::new(
                executionkit::ErrorKind::Permanent,
                format!("rejected key {key}"),
            )
            .with_metadata("echo", key));
        }
        Ok(LlmResponse::text(format!("out:{step}")).with_usage(10, 5))
    }
}

fn step(name: &str, deps: &[&str]) -> serde_json::Value {
    json!({"name": name, "instruction": format!("Do {name}."), "depends_on": deps})
}

fn proposal(steps: &[serde_json::Value]) -> String {
    json!({ "steps": steps }).to_string()
}

#[tokio::test]
async fn planner_runs_the_proposal_in_dependency_order() {
    // Listed out of order: "report" first, the diamond's root last.
    let plan = proposal(&[
        step("report", &["left", "right"]),
        step("left", &["root"]),
        step("right", &["root"]),
        step("root", &[]),
    ]);
    let p = Scripted::new([plan]);
    let r = Planner::new().run(&p, "The task", &ctx()).await.unwrap();
    let order = p.steps();
    let at = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert_eq!(order.len(), 4);
    assert!(at("root") < at("left") && at("root") < at("right"));
    assert!(at("left") < at("report") && at("right") < at("report"));
    assert_eq!(r.value["report"], "out:report");
    assert_eq!(r.value.len(), 4);
    // A step sees its dependencies' outputs, the task and its instruction.
    let report = p.prompt_of("report");
    assert!(report.starts_with("Task:\nThe task"), "{report}");
    assert!(
        report.contains("Output of step `left`:\nout:left"),
        "{report}"
    );
    assert!(
        report.contains("Output of step `right`:\nout:right"),
        "{report}"
    );
    assert!(!report.contains("out:root"), "{report}");
    assert!(
        report.ends_with("Your step (`report`): Do report."),
        "{report}"
    );
    // One planning call; the planning prompt states the limit and the task.
    let planning = p.planning_prompts();
    assert_eq!(planning.len(), 1);
    assert!(planning[0].contains("at most 8 steps") && planning[0].contains("The task"));
    // The cost: planning + four steps.
    assert_eq!(r.cost, TokenUsage::new(100 + 40, 50 + 20, 5));
    assert_eq!(r.stats.planning.cost, TokenUsage::new(100, 50, 1));
    assert_eq!(r.stats.plan.steps.len(), 4);
    assert_eq!(r.stats.workflow.finished.len(), 4);
    assert_eq!(r.metadata["plan"]["steps"][0]["name"], "report");
}

#[tokio::test]
async fn a_bad_proposal_is_repaired_with_the_reason() {
    let bad = proposal(&[step("a", &["b"]), step("b", &["a"])]);
    let good = proposal(&[step("a", &[]), step("b", &["a"])]);
    let p = Scripted::new([bad, good]);
    let r = Planner::new().run(&p, "t", &ctx()).await.unwrap();
    assert_eq!(r.value["b"], "out:b");
    assert_eq!(r.stats.planning_stats.repair_attempts, 1);
    assert_eq!(r.stats.planning.cost.llm_calls, 2);
    let planning = p.planning_prompts();
    assert_eq!(planning.len(), 2);
    assert!(
        planning[1].contains("cycle among steps a, b"),
        "{}",
        planning[1]
    );
    assert_eq!(r.cost.llm_calls, 4);
}

#[tokio::test]
async fn invalid_proposals_are_refused_with_the_reason_and_the_spend() {
    let many: Vec<_> = (0..4).map(|i| step(&format!("s{i}"), &[])).collect();
    let cases = [
        (proposal(&[]), "no steps"),
        (
            proposal(&[step("a", &["b"]), step("b", &["c"]), step("c", &["a"])]),
            "cycle among steps a, b, c",
        ),
        (proposal(&[step("a", &["a"])]), "cycle among steps a"),
        (
            proposal(&[step("a", &[]), step("b", &["zz", "a", "yy"])]),
            "'b' depends on unknown steps: yy, zz",
        ),
        (
            proposal(&[step("a", &[]), step("a", &[])]),
            "unique: a repeated",
        ),
        (proposal(&many), "4 steps; at most 3"),
        (
            proposal(&[json!({"name": "a", "instruction": "  ", "depends_on": []})]),
            "'a' has an empty instruction",
        ),
        (
            proposal(&[json!({"name": "", "instruction": "x", "depends_on": []})]),
            "step 1 has an empty name",
        ),
        ("not json at all".to_owned(), "JSON parse failed"),
    ];
    for (text, want) in cases {
        let p = Scripted::new([text.clone()]);
        let c = ctx();
        let e = Planner::new()
            .max_steps(3)
            .max_repairs(0)
            .run(&p, "t", &c)
            .await
            .unwrap_err();
        assert!(e.is_parse(), "{text}: {e}");
        assert!(e.message().contains(want), "{text}: {e}");
        assert_eq!(e.cost(), TokenUsage::new(100, 50, 1), "{text}");
        assert_eq!(c.ledger().spent(), e.cost());
        assert!(p.steps().is_empty(), "{text}: no step runs");
        // The same proposal, checked directly, is an invalid argument.
        if let Ok(plan) = ProposedPlan::from_json(&text) {
            let e = plan.check(3).unwrap_err();
            assert!(e.is_invalid_argument() && e.message().contains(want), "{e}");
        }
    }
}

#[tokio::test]
async fn repairs_that_never_fix_the_plan_end_in_a_parse_error_with_every_call_counted() {
    let bad = proposal(&[step("a", &["ghost"])]);
    let p = Scripted::new([bad.clone(), bad.clone(), bad]);
    let e = Planner::new()
        .max_repairs(2)
        .run(&p, "t", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_parse() && e.message().contains("ghost"), "{e}");
    assert_eq!(e.cost().llm_calls, 3);
    assert_eq!(e.metadata()["repair_attempts"], 2);
}

#[tokio::test]
async fn zero_max_steps_is_an_invalid_argument_before_any_call() {
    let p = Scripted::new([proposal(&[step("a", &[])])]);
    let e = Planner::new()
        .max_steps(0)
        .run(&p, "t", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument(), "{e}");
    assert!(p.planning_prompts().is_empty());
}

#[tokio::test]
async fn planning_and_steps_share_one_budget() {
    let plan = proposal(&[step("a", &[]), step("b", &["a"]), step("c", &["b"])]);
    // Three calls: planning, a, b; c does not fit.
    let p = Scripted::new([plan.clone()]);
    let c = ctx().budget(Budget::new().max_calls(3));
    let e = Planner::new().run(&p, "t", &c).await.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.cost(), TokenUsage::new(120, 60, 3));
    assert_eq!(c.ledger().spent(), e.cost());
    assert_eq!(e.metadata()["failed_step"], "c");
    assert_eq!(e.metadata()["plan"]["steps"][2]["name"], "c");
    assert_eq!(p.steps(), ["a", "b"]);

    // The planner's own limit counts the planning call too.
    let p = Scripted::new([plan.clone()]);
    let e = Planner::new()
        .max_budget(Budget::new().max_calls(2))
        .run(&p, "t", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.cost(), TokenUsage::new(110, 55, 2));
    assert_eq!(p.steps(), ["a"]);

    // Enough for everything: the ledger holds exactly the result's cost.
    let p = Scripted::new([plan]);
    let c = ctx().budget(Budget::new().max_calls(4));
    let r = Planner::new().run(&p, "t", &c).await.unwrap();
    assert_eq!(r.cost, TokenUsage::new(130, 65, 4));
    assert_eq!(c.ledger().spent(), r.cost);
}

#[tokio::test]
async fn a_denied_step_stops_the_planner_with_the_planning_spend() {
    let p = Scripted::new([proposal(&[step("a", &[]), step("rm", &["a"])])]);
    let gate = ApprovalGate::new(|req: ApprovalRequest| async move { Ok(req.subject != "rm") });
    let e = Planner::new()
        .approval(gate)
        .run(&p, "t", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_approval_denied(), "{e}");
    assert_eq!(e.cost().llm_calls, 2);
    assert_eq!(p.steps(), ["a"]);
}

const KEY: &str = "sk-planner-secret-0123456789";

#[tokio::test]
async fn secrets_never_appear_in_a_planners_errors() {
    // A step's error quoting the key.
    let p = Scripted {
        secret: Some(KEY),
        fail_steps: true,
        ..Scripted::new([proposal(&[step("a", &[])])])
    };
    let e = Planner::new().run(&p, "t", &ctx()).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    for shown in [e.to_string(), format!("{e:?}"), e.to_json().to_string()] {
        assert!(!shown.contains(KEY), "{shown}");
    }
    // A proposal quoting the key, refused.
    let p = Scripted {
        secret: Some(KEY),
        ..Scripted::new([proposal(&[step(KEY, &["ghost"])])])
    };
    let e = Planner::new()
        .max_repairs(0)
        .run(&p, "t", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_parse(), "{e}");
    for shown in [e.to_string(), format!("{e:?}"), e.to_json().to_string()] {
        assert!(!shown.contains(KEY), "{shown}");
    }
}

#[tokio::test]
async fn planner_step_pattern_is_used_for_every_step() {
    let p = Scripted::new([proposal(&[step("a", &[]), step("b", &["a"])])]);
    let r = Planner::new()
        .step_pattern(Echo(TokenUsage::new(1, 1, 0)))
        .run(&p, "t", &ctx())
        .await
        .unwrap();
    assert!(p.steps().is_empty(), "echo makes no call");
    assert!(
        r.value["b"].contains("Output of step `a`:\nTask:\nt"),
        "{}",
        r.value["b"]
    );
    assert_eq!(r.cost, TokenUsage::new(102, 52, 1));
}

/// The log lines a `fmt` subscriber writes, in memory.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_plan_step_runs_in_a_span_that_opens_and_closes() {
    // The reference traces plan_step_start / plan_step_end per step: here, a `workflow.step`
    // span with `kind = "plan_step"` and the step's name, opened and closed once per step.
    let log = LogBuf::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_span_events(
            tracing_subscriber::fmt::format::FmtSpan::NEW
                | tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        )
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let plan = Plan::new()
        .step(PlanStep::new("draft", "D.", one()))
        .step(PlanStep::new("review", "R.", one()));
    let _ = plan
        .run(&MockProvider::new(["x"]), "t", &ctx())
        .await
        .unwrap();
    drop(guard);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    for step in ["draft", "review"] {
        // Lines of the step's own span (a child's line shows the parent's path before its own).
        let own = format!(
            "workflow.step{{step=\"{step}\" pattern=\"consensus\" kind=\"plan_step\"}}: executionkit: "
        );
        let count = |what: &str| {
            text.lines()
                .filter(|l| l.contains(&format!("{own}{what}")))
                .count()
        };
        assert_eq!((count("new"), count("close")), (1, 1), "{text}");
    }
}
