//! `ek eval FILE.jsonl --step …` (issue 14, item 3): the `--json` object's shape, the table,
//! exit codes and `--min-accuracy`, bad lines exit 2 before any call, the budget flags hold for
//! the whole set, secrets redacted; the example set on the offline model; one run against
//! llama-server (skipped unless `EK_LLAMA_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Output, Stdio};

use common::{bodies, code, command, endpoint, json_out, stderr, stdout};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "sk-test-eval0123456789abcdefXYZ";

/// Answers by prompt: `fail` is a 400, `echo` returns the API key, anything else gets
/// `Answer to PROMPT`.
struct ByPrompt;

impl Respond for ByPrompt {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let prompt = body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned();
        let text = match prompt.as_str() {
            "fail" => {
                return ResponseTemplate::new(400).set_body_json(
                    json!({"error": {"message": "bad request", "type": "invalid_request_error"}}),
                );
            }
            "echo" => KEY.to_owned(),
            other => format!("Answer to {other}"),
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2}
        }))
    }
}

async fn server() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ByPrompt)
        .mount(&s)
        .await;
    s
}

/// `ek eval - args` with `input` on stdin, against `env`.
async fn eval(env: &[(&str, String)], args: &[&str], input: &str) -> Output {
    let mut all = vec!["eval", "-", "--max-retries", "0"];
    all.extend_from_slice(args);
    let mut c = command(&all, env);
    c.stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // `ek` may exit (a usage error) before it reads its stdin: a closed pipe is not a failure.
    if let Err(e) = stdin.write_all(input.as_bytes()).await {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

const CASES: &str = r#"{"id": "exact", "prompt": "one", "expected": "  answer TO one "}
{"id": 2, "prompt": "two", "contains": "TO TWO"}
{"prompt": "three", "contains": "nope"}
{"id": "err", "prompt": "fail"}
{"id": "run", "prompt": "five"}
"#;

#[tokio::test]
async fn json_is_one_object_with_report_cost_and_results() {
    let s = server().await;
    let o = eval(
        &endpoint(&s),
        &["--step", "consensus samples=1", "--json"],
        CASES,
    )
    .await;
    // Three of five pass: below the default --min-accuracy 1.0.
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v = json_out(&o);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["cost", "report", "results"]);
    assert_eq!(
        v["report"],
        json!({"cases": 5, "passed": 3, "failed": 2, "accuracy": 0.6,
               "min_accuracy": 1.0, "passed_threshold": false})
    );
    // Every case's call counts, the failed one's too.
    assert_eq!(v["cost"]["llm_calls"], 5);
    assert_eq!(bodies(&s).await.len(), 5);
    let r = v["results"].as_array().unwrap();
    let ids: Vec<&Value> = r.iter().map(|x| &x["id"]).collect();
    assert_eq!(
        ids,
        [
            &json!("exact"),
            &json!(2),
            &json!(3),
            &json!("err"),
            &json!("run")
        ]
    );
    let passed: Vec<bool> = r.iter().map(|x| x["passed"].as_bool().unwrap()).collect();
    assert_eq!(passed, [true, true, false, false, true]);
    assert_eq!(r[0]["value"], "Answer to one");
    assert_eq!(r[2]["value"], "Answer to three");
    assert_eq!(r[2]["reason"], "does not contain \"nope\"");
    assert!(r[3].get("value").is_none());
    assert_eq!(r[3]["error"]["kind"], "permanent", "{}", r[3]);
    assert_eq!(r[4]["cost"]["llm_calls"], 1);
}

#[tokio::test]
async fn min_accuracy_sets_the_exit_code() {
    let s = server().await;
    let step = ["--step", "consensus samples=1", "--json"];
    for (min, want) in [("0.6", 0), ("0.61", 1), ("0", 0)] {
        let mut args = step.to_vec();
        args.extend(["--min-accuracy", min]);
        let o = eval(&endpoint(&s), &args, CASES).await;
        assert_eq!(code(&o), want, "--min-accuracy {min}: {}", stdout(&o));
        let v = json_out(&o);
        assert_eq!(v["report"]["passed_threshold"], want == 0);
    }
    // Out of range: a usage error before any call.
    let before = bodies(&s).await.len();
    for bad in ["1.5", "-0.1", "NaN"] {
        let mut args = step.to_vec();
        args.extend(["--min-accuracy", bad]);
        let o = eval(&endpoint(&s), &args, CASES).await;
        assert_eq!(code(&o), 2, "{bad}");
        assert_eq!(json_out(&o)["error"]["kind"], "invalid_argument");
    }
    assert_eq!(bodies(&s).await.len(), before);
}

#[tokio::test]
async fn every_bad_line_exits_2_naming_it_before_any_call() {
    let s = server().await;
    let bad = [
        (
            "{\"prompt\": \"a\"}\nnot json\n",
            "stdin, line 2: not valid JSON",
        ),
        (
            "{\"prompt\": \"a\", \"expected\": \"x\", \"contains\": \"y\"}\n",
            "stdin, line 1: give \"expected\" or \"contains\", not both",
        ),
        (
            "\n{\"prompt\": \"a\", \"contains\": 3}\n",
            "stdin, line 2: \"contains\" must be a string",
        ),
        ("{\"id\": \"x\"}\n", "stdin, line 1: no \"prompt\""),
        ("\n\n", "stdin has no case"),
    ];
    for (input, want) in bad {
        let o = eval(
            &endpoint(&s),
            &["--step", "consensus samples=1", "--json"],
            input,
        )
        .await;
        assert_eq!(code(&o), 2, "{input}");
        let v = json_out(&o);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v} should name {want}"
        );
        // Without --json: `ek: invalid_argument: …` on stderr, nothing on stdout.
        let o = eval(&endpoint(&s), &["--step", "consensus samples=1"], input).await;
        assert_eq!(code(&o), 2);
        assert!(stdout(&o).is_empty());
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    // A bad step is a usage error too.
    let o = eval(&endpoint(&s), &["--step", "consensus nope=1"], CASES).await;
    assert_eq!(code(&o), 2);
    assert!(bodies(&s).await.is_empty());
}

#[tokio::test]
async fn the_budget_flags_hold_for_the_whole_set() {
    let s = server().await;
    let o = eval(
        &endpoint(&s),
        &[
            "--step",
            "consensus samples=1",
            "--max-calls",
            "2",
            "--json",
        ],
        CASES,
    )
    .await;
    assert_eq!(code(&o), 1);
    let v = json_out(&o);
    assert_eq!(v["error"]["kind"], "budget_exhausted", "{v}");
    assert_eq!(v["error"]["cost"]["llm_calls"], 2);
    assert_eq!(v["error"]["metadata"]["eval_cases_run"], 3);
    assert_eq!(bodies(&s).await.len(), 2);
}

#[tokio::test]
async fn the_table_and_secrets() {
    let s = server().await;
    let mut env = endpoint(&s);
    env.push(("EXECUTIONKIT_API_KEY", KEY.to_owned()));
    let input = "{\"id\": \"k\", \"prompt\": \"echo\"}\n{\"id\": \"no\", \"prompt\": \"x\", \"expected\": \"y\"}\n";
    let o = eval(&env, &["--step", "consensus samples=1"], input).await;
    assert_eq!(code(&o), 1);
    let out = stdout(&o);
    assert!(!out.contains(KEY) && !stderr(&o).contains(KEY), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(
        lines[1].starts_with("k ") && lines[1].contains("PASS"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("no") && lines[2].contains("FAIL"),
        "{out}"
    );
    assert!(
        lines[2].contains("expected \"y\"; got Answer to x"),
        "{out}"
    );
    assert!(
        out.contains("1/2 passed (50.0% accuracy) (min accuracy 100.0%: NOT met)"),
        "{out}"
    );
    let o = eval(&env, &["--step", "consensus samples=1", "--json"], input).await;
    let text = stdout(&o);
    assert!(!text.contains(KEY), "{text}");
}

#[tokio::test]
async fn the_example_set_passes_on_the_offline_model() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/evals/offline.jsonl"
    );
    let o = common::ek(&["eval", file, "--step", "consensus samples=3", "--json"]).await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let v = json_out(&o);
    assert_eq!(v["report"]["failed"], 0, "{v}");
    assert_eq!(v["report"]["passed_threshold"], true);
    let n = v["report"]["cases"].as_u64().unwrap();
    assert!(n >= 5);
    assert_eq!(v["cost"]["llm_calls"].as_u64().unwrap(), 3 * n);
    // And through two steps, as a table.
    let o = common::ek(&[
        "eval",
        file,
        "--step",
        "consensus samples=1",
        "--step",
        "consensus samples=1",
    ])
    .await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("{n}/{n} passed (100.0% accuracy)")));
}

#[tokio::test]
async fn llama_server_eval() {
    let Some(url) = common::server_url("EK_LLAMA_URL", "scripts/start-llama.sh") else {
        return;
    };
    let env = [
        ("EXECUTIONKIT_BASE_URL", url),
        ("EXECUTIONKIT_MODEL", "smollm2".to_owned()),
        ("EXECUTIONKIT_API_KEY", common::llama_key()),
    ];
    // SmolLM2-135M's answers are not reliable: one case without a check (a value passes) and
    // one that may or may not pass; the exit code must agree with the report.
    let input = "{\"id\": \"a\", \"prompt\": \"Say hello.\"}\n{\"id\": \"b\", \"prompt\": \"What is the capital of France?\", \"contains\": \"paris\"}\n";
    let o = eval(
        &env,
        &[
            "--step",
            "consensus samples=1 max_tokens=32",
            "--max-calls",
            "10",
            "--json",
        ],
        input,
    )
    .await;
    let v = json_out(&o);
    assert_eq!(v["report"]["cases"], 2, "{v}");
    assert_eq!(v["cost"]["llm_calls"], 2, "{v}");
    assert_eq!(v["results"][0]["passed"], true, "{v}");
    assert!(v["cost"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(v["results"][0]["value"].is_string(), "{v}");
    let want = i32::from(v["report"]["passed_threshold"] != true);
    assert_eq!(code(&o), want);
}
