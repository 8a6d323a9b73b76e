//! Conformance scenarios 161–167 (evals, conversation evals; 164's golden cases without refine's
//! best-not-last), plus this crate's one-budget rules:
//! every case's calls are counted on the suite's ledger, and an exhausted budget ends the suite
//! with an error carrying the spend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use executionkit::eval::{
    ConversationScript, EvalCase, EvalReport, EvalResult, Turn, Verdict, run_conversation_script,
    run_eval_suite,
};
use executionkit::{
    Budget, Choice, Consensus, Error, ErrorKind, Kit, LlmResponse, MockProvider, ReactLoop, Role,
    RunContext, StructuredValue, Tool, ToolCall,
};
use serde_json::{Map, Value, json};

fn ok_case(name: &str, value: &'static str) -> EvalCase<'static, String> {
    EvalCase::new(
        name,
        move |_: RunContext| async move { Ok(value.to_owned()) },
        |v: &String| {
            if v == "ok" {
                String::new()
            } else {
                "expected ok".to_owned()
            }
        },
    )
}

fn results(pass: usize, fail: usize) -> Vec<EvalResult> {
    let mut v: Vec<EvalResult> = (0..pass)
        .map(|i| EvalResult::new(format!("p{i}"), true, "passed"))
        .collect();
    v.extend((0..fail).map(|i| EvalResult::new(format!("f{i}"), false, "no")));
    v
}

#[tokio::test]
async fn scenario_161_passing_failing_and_a_failing_run() {
    let cases = vec![ok_case("passing", "ok"), ok_case("failing", "nope")];
    let r = run_eval_suite(cases, &RunContext::new(), None)
        .await
        .unwrap();
    assert!(!r.passed());
    assert_eq!((r.total(), r.passed_count(), r.failed_count()), (2, 1, 1));
    assert_eq!(r.failures()[0].name, "failing");
    assert_eq!(r.failures()[0].reason, "expected ok");
    assert_eq!(r.results()[0].reason, "passed");

    // A run that fails: a failed result named by its error kind; later cases still run.
    let cases = vec![
        EvalCase::new(
            "divides",
            |_: RunContext| async {
                Err::<String, _>(Error::new(ErrorKind::Parse, "division by zero"))
            },
            |_: &String| true,
        )
        .metadata("topic", "math"),
        ok_case("after", "ok"),
    ];
    let r = run_eval_suite(cases, &RunContext::new(), None)
        .await
        .unwrap();
    assert_eq!(r.results()[0].reason, "parse: division by zero");
    assert_eq!(r.results()[0].metadata["topic"], "math");
    assert!(r.results()[0].error.as_ref().unwrap().is_parse());
    assert!(r.results()[1].passed);

    // A panicking run or check is a failed result too.
    let cases = vec![
        EvalCase::new(
            "run panics",
            |_: RunContext| async { panic!("run exploded") },
            |_: &String| true,
        ),
        EvalCase::new(
            "check panics",
            |_: RunContext| async { Ok("x".to_owned()) },
            |_: &String| -> bool { panic!("check exploded") },
        ),
    ];
    let r = run_eval_suite(cases, &RunContext::new(), None)
        .await
        .unwrap();
    assert_eq!(r.results()[0].reason, "panic: run exploded");
    assert_eq!(r.results()[1].reason, "panic: check exploded");
}

#[test]
fn verdicts_are_normalised() {
    assert_eq!(Verdict::from(()), Verdict::Pass);
    assert_eq!(Verdict::from(true), Verdict::Pass);
    assert_eq!(Verdict::from(String::new()), Verdict::Pass);
    assert_eq!(Verdict::from(None::<bool>), Verdict::Pass);
    assert_eq!(
        Verdict::from(Some(false)),
        Verdict::Fail("check returned false".into())
    );
    assert_eq!(Verdict::from("why"), Verdict::Fail("why".into()));
    assert_eq!(
        Verdict::from(Err::<bool, _>(Error::new(ErrorKind::Provider, "x"))),
        Verdict::Fail("provider: x".into())
    );
}

#[test]
fn scenario_162_min_accuracy() {
    let r = EvalReport::new(results(9, 1), Some(0.9)).unwrap();
    assert!(!r.passed());
    assert!(r.accuracy_passed());
    let r = EvalReport::new(results(1, 1), Some(0.9)).unwrap();
    assert!(!r.accuracy_passed());
    for (p, f) in [(2, 0), (1, 1), (0, 0)] {
        let r = EvalReport::new(results(p, f), None).unwrap();
        assert_eq!(r.accuracy_passed(), r.passed());
    }
    for bad in [-0.1, 1.1, f64::NAN] {
        let e = EvalReport::new(vec![], Some(bad)).unwrap_err();
        assert!(e.is_invalid_argument());
    }
}

#[test]
fn scenario_163_accuracy_and_summary() {
    let cases = [
        (2, 0, 1.0, "2/2 passed (100.0% accuracy)"),
        (1, 2, 1.0 / 3.0, "1/3 passed (33.3% accuracy)"),
        (0, 0, 0.0, "0/0 passed (0.0% accuracy)"),
        (0, 1, 0.0, "0/1 passed (0.0% accuracy)"),
        (7, 2, 7.0 / 9.0, "7/9 passed (77.8% accuracy)"),
    ];
    for (p, f, acc, summary) in cases {
        let r = EvalReport::new(results(p, f), None).unwrap();
        assert!((r.accuracy() - acc).abs() < 1e-12);
        assert_eq!(r.summary(), summary);
    }
}

#[tokio::test]
async fn scenario_164_golden_cases_pass() {
    let ctx = RunContext::new();
    let unanimous = MockProvider::new(["Paris", "Paris", "Paris"]);
    let majority = MockProvider::new(["Paris", "Lyon", "Paris"]);
    let clean = MockProvider::new([r#"{"a": 1}"#]);
    let fenced = MockProvider::new(["```json\n{\"a\": 1}\n```"]);
    let prose = MockProvider::new([r#"Here it is: {"a": 1} as asked."#]);
    let escaped = MockProvider::new([r#"{"a": "say \"hi\"\n"}"#]);
    let repair = MockProvider::new(["not json", r#"{"a": 1}"#]);
    let tie = MockProvider::new(["A", "B"]);
    let tool_call = LlmResponse {
        choices: vec![Choice {
            content: String::new(),
            tool_calls: vec![ToolCall::new("tc1", "echo", json!({"text": "hi"}))],
            finish_reason: Some("tool_calls".into()),
            logprobs: None,
        }],
        ..LlmResponse::default()
    };
    let react = MockProvider::new([tool_call, LlmResponse::text("done")]);
    let echo = Tool::new(
        "echo",
        "Echoes its text",
        json!({}),
        |args: Map<String, Value>| async move {
            Ok(args
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned())
        },
    );
    let cases: Vec<EvalCase<'_, String>> = vec![
        EvalCase::new(
            "consensus unanimous",
            |ctx: RunContext| async move {
                let r = Consensus::new()
                    .samples(3)
                    .run(&unanimous, "q", &ctx)
                    .await?;
                Ok(format!("{} {}", r.value, r.stats.tie_count))
            },
            |v: &String| v == "Paris 1",
        ),
        EvalCase::new(
            "consensus clear majority",
            |ctx: RunContext| async move {
                let r = Consensus::new()
                    .samples(3)
                    .run(&majority, "q", &ctx)
                    .await?;
                Ok(format!("{} {:.4}", r.value, r.stats.agreement_ratio))
            },
            |v: &String| v == "Paris 0.6667",
        ),
        EvalCase::new(
            "structured clean",
            |ctx: RunContext| async move {
                let r = StructuredValue::new().run(&clean, "q", &ctx).await?;
                Ok(r.value.to_string())
            },
            |v: &String| v == r#"{"a":1}"#,
        ),
        EvalCase::new(
            "structured fenced",
            |ctx: RunContext| async move {
                let r = StructuredValue::new().run(&fenced, "q", &ctx).await?;
                Ok(r.value.to_string())
            },
            |v: &String| v == r#"{"a":1}"#,
        ),
        EvalCase::new(
            "structured prose",
            |ctx: RunContext| async move {
                let r = StructuredValue::new().run(&prose, "q", &ctx).await?;
                Ok(r.value.to_string())
            },
            |v: &String| v == r#"{"a":1}"#,
        ),
        EvalCase::new(
            "structured escaped",
            |ctx: RunContext| async move {
                let r = StructuredValue::new().run(&escaped, "q", &ctx).await?;
                Ok(r.value["a"].as_str().unwrap_or_default().to_owned())
            },
            |v: &String| v == "say \"hi\"\n",
        ),
        EvalCase::new(
            "structured repair",
            |ctx: RunContext| async move {
                let r = StructuredValue::new()
                    .max_repairs(1)
                    .run(&repair, "q", &ctx)
                    .await?;
                Ok(format!("{} {}", r.value, r.stats.repair_attempts))
            },
            |v: &String| v == r#"{"a":1} 1"#,
        ),
        EvalCase::new(
            "consensus exact tie",
            |ctx: RunContext| async move {
                let r = Consensus::new().samples(2).run(&tie, "q", &ctx).await?;
                Ok(format!("{} {}", r.stats.tie_count, r.stats.agreement_ratio))
            },
            |v: &String| v == "2 0.5",
        ),
        EvalCase::new(
            "react single tool call",
            |ctx: RunContext| async move {
                let r = ReactLoop::new()
                    .tools([echo])
                    .run(&react, "q", &ctx)
                    .await?;
                Ok(format!(
                    "{} {} {}",
                    r.value, r.stats.rounds, r.cost.llm_calls
                ))
            },
            |v: &String| v == "done 2 2",
        ),
    ];
    let r = run_eval_suite(cases, &ctx, Some(1.0)).await.unwrap();
    assert!(r.passed(), "{:?}", r.failures());
    // Every case's calls are on the one ledger and in the report.
    assert_eq!(r.cost().llm_calls, 16);
    assert_eq!(ctx.ledger().spent().llm_calls, 16);
    let per_case: Vec<u64> = r.results().iter().map(|x| x.cost.llm_calls).collect();
    assert_eq!(per_case, [3, 3, 1, 1, 1, 1, 2, 2, 2]);
}

#[tokio::test]
async fn an_exhausted_budget_ends_the_suite_with_the_spend() {
    let p = MockProvider::new([LlmResponse::text("ok").with_usage(10, 2)]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(3));
    let case = |name: &str| {
        let p = p.clone();
        EvalCase::new(
            name,
            move |ctx: RunContext| async move {
                Consensus::new()
                    .samples(2)
                    .run(&p, "q", &ctx)
                    .await
                    .map(|r| r.value)
            },
            |v: &String| v == "ok",
        )
    };
    let cases = vec![case("a"), case("b"), case("c")];
    let e = run_eval_suite(cases, &ctx, None).await.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    assert_eq!(e.metadata()["eval_cases_run"], 2);
    // The first case's two calls and whatever the second spent before it ran out.
    assert_eq!(e.cost(), ctx.ledger().spent());
    assert!(e.cost().llm_calls >= 2);
    assert!(p.call_count() <= 3);
}

#[tokio::test]
async fn a_bad_min_accuracy_runs_nothing() {
    let p = MockProvider::new(["ok"]);
    let q = p.clone();
    let cases = vec![EvalCase::new(
        "a",
        move |ctx: RunContext| async move {
            Consensus::new()
                .samples(1)
                .run(&q, "q", &ctx)
                .await
                .map(|r| r.value)
        },
        |_: &String| true,
    )];
    let e = run_eval_suite(cases, &RunContext::new(), Some(2.0))
        .await
        .unwrap_err();
    assert!(e.is_invalid_argument());
    assert_eq!(p.call_count(), 0);
}

#[tokio::test]
async fn scenario_166_conversation_scripts() {
    let kit = Kit::new(MockProvider::new(["one", "two", "three"]));
    let script = ConversationScript::new(
        "greet",
        vec![
            Turn::new("a", |r| r.value == "one"),
            Turn::new("b", |_| None::<String>),
            Turn::new("c", |r| r.value == "three"),
        ],
    );
    let r = run_conversation_script(script, &kit).await.unwrap();
    assert!(r.passed());
    let names: Vec<&str> = r.results().iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["greet[0]", "greet[1]", "greet[2]"]);
    assert!(r.results().iter().all(|x| x.reason == "passed"));
    assert_eq!(r.min_accuracy(), None);

    let kit = Kit::new(MockProvider::new(["one", "two", "three", "four"]));
    let script = ConversationScript::new(
        "mixed",
        vec![
            Turn::new("a", |_| true),
            Turn::new("b", |_| "expected good"),
            Turn::new("c", |_| false),
            Turn::new("d", |_| -> bool { panic!("check exploded") }),
        ],
    );
    let r = run_conversation_script(script, &kit).await.unwrap();
    let f = r.failures();
    assert_eq!(f[0].name, "mixed[1]");
    assert_eq!(f[0].reason, "expected good");
    assert_eq!(f[1].reason, "check returned false");
    assert_eq!(f[2].reason, "panic: check exploded");
}

#[tokio::test]
async fn scenario_167_failing_turns_and_the_history() {
    let kit = Kit::new(MockProvider::failing(Error::new(
        ErrorKind::Permanent,
        "turn failed",
    )));
    let script = ConversationScript::new(
        "s",
        vec![Turn::new("a", |_| true), Turn::new("b", |_| true)],
    );
    let r = run_conversation_script(script, &kit).await.unwrap();
    assert_eq!(r.failed_count(), 2);
    assert!(
        r.results()
            .iter()
            .all(|x| x.reason.contains("permanent: turn failed"))
    );

    let p = MockProvider::new(["reply-1", "reply-2"]);
    let kit = Kit::new(p.clone());
    let script = ConversationScript::new(
        "s",
        vec![
            Turn::new("remember apples", |_| true),
            Turn::new("and bananas", |_| true),
        ],
    );
    let r = run_conversation_script(script, &kit).await.unwrap();
    assert!(r.passed());
    assert_eq!(r.cost().llm_calls, 2);
    let last = p.last_call().unwrap().request.messages;
    let roles: Vec<Role> = last.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::User]);
    assert!(last[0].content.contains("remember apples"));
    assert!(last[1].content.contains("reply-1"));
    assert!(last[2].content.ends_with("and bananas"));
}
