//! `ek consensus --inputs FILE.jsonl --total-samples N` (issue 12, item 3): JSON Lines in input
//! order with ids, then a summary; exit codes; every bad input line exits 2 before any call;
//! `--inputs` with PROMPT exits 2; the budget flags hold for the whole set; secrets redacted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Output, Stdio};

use common::{bodies, code, command, endpoint, stderr, stdout};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "sk-test-many0123456789abcdefXYZ";

/// Answers by prompt: `split` alternates A and B by seed, `fail` is a 400, `echo` returns the
/// API key, anything else gets `answer to PROMPT`.
struct ByPrompt;

impl Respond for ByPrompt {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let prompt = body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned();
        let seed = body["seed"].as_u64().unwrap_or(0);
        let text = match prompt.as_str() {
            "fail" => {
                return ResponseTemplate::new(400).set_body_json(
                    json!({"error": {"message": "bad request", "type": "invalid_request_error"}}),
                );
            }
            "split" if seed % 2 == 0 => "A".to_owned(),
            "split" => "B".to_owned(),
            "echo" => KEY.to_owned(),
            other => format!("answer to {other}"),
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

/// `ek args` with `input` on stdin (`--inputs -`), against `s` (or the offline model).
async fn ek_stdin(s: Option<&MockServer>, args: &[&str], input: &str) -> Output {
    let env = s.map(endpoint).unwrap_or_default();
    let mut c = command(args, &env);
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

/// Every stdout line, parsed: each must be one JSON object.
fn jsonl(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

fn lines(prompts: &[&str]) -> String {
    prompts
        .iter()
        .map(|p| json!({"prompt": p}).to_string() + "\n")
        .collect()
}

#[tokio::test]
async fn one_line_per_question_in_input_order_with_ids_then_a_summary() {
    let s = server().await;
    // Blank lines are skipped but count: the last question's default id is its line number, 5.
    let input = "{\"prompt\": \"one\", \"id\": \"first\"}\n\n{\"prompt\": \"two\", \"id\": 42, \"gold\": \"x\"}\n   \n{\"prompt\": \"three\"}\n";
    let o = ek_stdin(
        Some(&s),
        &[
            "consensus",
            "--inputs",
            "-",
            "--samples",
            "3",
            "--seed",
            "10",
        ],
        input,
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = jsonl(&o);
    assert_eq!(v.len(), 4);
    let ids: Vec<&Value> = v[..3].iter().map(|l| &l["id"]).collect();
    assert_eq!(ids, [&json!("first"), &json!(42), &json!(5)]);
    for (line, prompt) in v[..3].iter().zip(["one", "two", "three"]) {
        assert_eq!(line["value"], format!("answer to {prompt}"));
        assert_eq!(line["score"], 1.0);
        assert_eq!(line["cost"]["llm_calls"], 3); // default total: --samples × questions
        let m = &line["metadata"];
        assert_eq!(m["samples_used"], 3);
        assert_eq!(m["stop_rule"], "fixed");
        assert_eq!(m["stopped_early"], false);
        assert_eq!(m["agreement_ratio"], 1.0);
        assert_eq!(m["unique_responses"], 1);
        assert_eq!(m["tie_count"], 1);
        assert_eq!(m["vote_counts"][0]["count"], 3);
    }
    let summary = &v[3]["summary"];
    assert_eq!(summary["questions"], 3);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["samples_used"], 9);
    assert_eq!(summary["total_samples"], 9);
    assert_eq!(
        summary["cost"],
        json!({"input_tokens": 36, "llm_calls": 9, "output_tokens": 18})
    );
    let got = bodies(&s).await;
    assert_eq!(got.len(), 9, "requests received = calls reported");
    // Sample i of each question sends seed 10 + i.
    for prompt in ["one", "two", "three"] {
        let mut seeds: Vec<u64> = got
            .iter()
            .filter(|b| b["messages"][0]["content"] == prompt)
            .map(|b| b["seed"].as_u64().unwrap())
            .collect();
        seeds.sort_unstable();
        assert_eq!(seeds, [10, 11, 12], "{prompt}");
    }
}

#[tokio::test]
async fn a_total_goes_where_the_votes_split_and_json_changes_nothing() {
    let s = server().await;
    let args = [
        "consensus",
        "--inputs",
        "-",
        "--samples",
        "12",
        "--total-samples",
        "20",
        "--early-stop",
        "adaptive",
        "--max-concurrency",
        "1",
        "--seed",
        "0",
    ];
    let o = ek_stdin(Some(&s), &args, &lines(&["easy", "split"])).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = jsonl(&o);
    assert_eq!(v[0]["metadata"]["samples_used"], 4); // settled at 4 to 0
    assert_eq!(v[0]["metadata"]["stopped_early"], true);
    assert_eq!(v[0]["metadata"]["stop_rule"], "adaptive:0.95");
    assert_eq!(v[1]["metadata"]["samples_used"], 12); // split: up to its cap
    assert_eq!(v[2]["summary"]["samples_used"], 16);
    assert_eq!(bodies(&s).await.len(), 16);

    let mut with_json = args.to_vec();
    with_json.push("--json");
    let o2 = ek_stdin(Some(&s), &with_json, &lines(&["easy", "split"])).await;
    assert_eq!(stdout(&o2), stdout(&o));
}

#[tokio::test]
async fn a_failed_question_keeps_its_place_and_the_exit_code_is_1() {
    let s = server().await;
    let o = ek_stdin(
        Some(&s),
        &[
            "consensus",
            "--inputs",
            "-",
            "--samples",
            "2",
            "--max-retries",
            "0",
        ],
        &lines(&["one", "fail", "three"]),
    )
    .await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v = jsonl(&o);
    assert_eq!(v.len(), 4);
    assert_eq!(v[0]["value"], "answer to one");
    assert_eq!(v[1]["id"], 2);
    assert_eq!(v[1]["error"]["kind"], "permanent");
    assert!(v[1]["error"]["cost"]["llm_calls"].as_u64().unwrap() >= 1);
    assert_eq!(v[2]["value"], "answer to three");
    assert_eq!(v[3]["summary"]["failed"], 1);
    assert_eq!(v[3]["summary"]["questions"], 3);
    assert_eq!(
        v[3]["summary"]["cost"]["llm_calls"].as_u64().unwrap(),
        bodies(&s).await.len() as u64
    );
}

#[tokio::test]
async fn the_budget_flags_hold_for_the_whole_set() {
    let s = server().await;
    let o = ek_stdin(
        Some(&s),
        &[
            "consensus",
            "--inputs",
            "-",
            "--samples",
            "10",
            "--total-samples",
            "30",
            "--max-calls",
            "4",
        ],
        &lines(&["one", "split", "three"]),
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o)); // each question had a vote
    let v = jsonl(&o);
    let summary = &v[3]["summary"];
    assert_eq!(summary["cost"]["llm_calls"], 4);
    assert_eq!(summary["budget_exhausted"], true);
    assert_eq!(bodies(&s).await.len(), 4);

    // Two calls for three questions: the third fails with the budget, exit 1.
    let s = server().await;
    let o = ek_stdin(
        Some(&s),
        &["consensus", "--inputs", "-", "--max-calls", "2"],
        &lines(&["one", "two", "three"]),
    )
    .await;
    assert_eq!(code(&o), 1);
    let v = jsonl(&o);
    assert_eq!(v[2]["error"]["kind"], "budget_exhausted");
    assert_eq!(v[3]["summary"]["failed"], 1);
    assert_eq!(bodies(&s).await.len(), 2);
}

#[tokio::test]
async fn every_bad_line_exits_2_before_any_call_naming_the_line() {
    let s = server().await;
    let ok = "{\"prompt\": \"fine\"}\n";
    let cases: &[(&str, &str)] = &[
        ("not json\n", "line 2: not valid JSON"),
        ("[\"prompt\"]\n", "line 2: expected a JSON object"),
        ("\"just a string\"\n", "line 2: expected a JSON object"),
        ("{\"id\": \"x\"}\n", "line 2: no \"prompt\""),
        ("{\"prompt\": \"\"}\n", "line 2: \"prompt\" is empty"),
        ("{\"prompt\": \"  \"}\n", "line 2: \"prompt\" is empty"),
        (
            "{\"prompt\": [\"a\"]}\n",
            "line 2: \"prompt\" must be a string",
        ),
        (
            "{\"prompt\": \"a\", \"id\": null}\n",
            "line 2: \"id\" must be a string or a number",
        ),
        (
            "{\"prompt\": \"a\", \"id\": 1}\n",
            "line 2: id 1 was already used on line 1",
        ),
    ];
    for (bad, expected) in cases {
        let input = format!("{ok}{bad}{ok}");
        let o = ek_stdin(Some(&s), &["consensus", "--inputs", "-"], &input).await;
        assert_eq!(code(&o), 2, "{bad}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("--inputs stdin, {expected}")),
            "{bad}: {err}"
        );
        assert!(stdout(&o).is_empty());
        // Under --json: one invalid_argument object with zero cost.
        let o = ek_stdin(Some(&s), &["consensus", "--inputs", "-", "--json"], &input).await;
        assert_eq!(code(&o), 2);
        let v = jsonl(&o);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["error"]["kind"], "invalid_argument");
        assert_eq!(v[0]["error"]["cost"]["llm_calls"], 0);
        assert!(
            v[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{v:?}"
        );
    }
    // No question at all, a total below the questions, an unreadable file.
    let o = ek_stdin(Some(&s), &["consensus", "--inputs", "-"], "\n\n").await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("has no question"), "{}", stderr(&o));
    let o = ek_stdin(
        Some(&s),
        &["consensus", "--inputs", "-", "--total-samples", "1"],
        &lines(&["a", "b"]),
    )
    .await;
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(
            "--total-samples: total_samples must be >= the number of questions (2), got 1"
        ),
        "{}",
        stderr(&o)
    );
    let o = ek_stdin(
        Some(&s),
        &["consensus", "--inputs", "/nonexistent/q.jsonl"],
        "",
    )
    .await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot read --inputs /nonexistent/q.jsonl"));
    assert!(bodies(&s).await.is_empty(), "no call was made");
}

#[tokio::test]
async fn inputs_and_prompt_exclude_each_other_and_total_samples_needs_inputs() {
    let s = server().await;
    for args in [
        &["consensus", "hello", "--inputs", "-"][..],
        &["consensus", "hello", "--inputs", "-", "--json"][..],
        &["consensus", "hello", "--total-samples", "3"][..],
        &["consensus", "--total-samples", "3", "--json"][..],
        &["consensus", "--inputs", "-", "--strategy", "unanimous"][..],
        &["consensus"][..],
    ] {
        let o = ek_stdin(Some(&s), args, &lines(&["a"])).await;
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        if args.contains(&"--json") {
            let v = jsonl(&o);
            assert_eq!(v[0]["error"]["kind"], "invalid_argument", "{args:?}");
        }
    }
    assert!(bodies(&s).await.is_empty());
    // Every other command still requires its PROMPT.
    let o = ek_stdin(Some(&s), &["refine", "--inputs", "-"], "").await;
    assert_eq!(code(&o), 2);
}

#[tokio::test]
async fn a_file_on_the_offline_model() {
    let path = std::env::temp_dir().join(format!("ek-many-{}.jsonl", std::process::id()));
    std::fs::write(
        &path,
        lines(&["What is the capital of France?", "What is 17 * 3?"]),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let o = ek_stdin(
        None,
        &["consensus", "--inputs", p, "--total-samples", "6"],
        "",
    )
    .await;
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = jsonl(&o);
    assert_eq!(v[0]["value"], "The capital of France is Paris.");
    assert_eq!(v[1]["value"], "17 * 3 = 51");
    assert_eq!(
        (v[0]["id"].clone(), v[1]["id"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(v[2]["summary"]["samples_used"], 6);
}

#[tokio::test]
async fn a_key_in_an_answer_is_redacted() {
    let s = server().await;
    let o = ek_stdin(
        Some(&s),
        &[
            "consensus",
            "--inputs",
            "-",
            "--api-key",
            KEY,
            "--samples",
            "2",
        ],
        &lines(&["echo", "one"]),
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains(KEY), "{out}");
    assert!(out.contains("[REDACTED]"), "{out}");
}
