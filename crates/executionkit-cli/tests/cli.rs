//! `ek` as a user runs it: the built binary, its exit codes, its `--json` shapes, the offline
//! default, and the seed pipeline against scripted responses from a wiremock server on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use common::{bodies, code, command, ek, ek_at, ek_env, endpoint, json_out, stderr, stdout};

use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const SEED_PROMPT: &str = "Write a one-paragraph executive summary of the Turing test for an audience of non-technical board members.";

/// Asserts an exit-2 usage error under `--json`: `invalid_argument`, zero cost, message
/// containing every `needle`.
async fn assert_usage_error(args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let o = ek_env(&with_json, env).await;
    assert_eq!(
        code(&o),
        2,
        "args {args:?}: stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    let v = json_out(&o);
    let e = &v["error"];
    assert_eq!(e["kind"], "invalid_argument", "{v}");
    assert_eq!(
        e["cost"],
        json!({"input_tokens": 0, "output_tokens": 0, "llm_calls": 0}),
        "{v}"
    );
    let msg = e["message"].as_str().unwrap();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
    }
    // And without --json: exit 2, nothing on stdout, the reason on stderr.
    let o = ek_env(args, env).await;
    assert_eq!(code(&o), 2, "args {args:?} without --json");
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(!stderr(&o).is_empty());
    v
}

// ---------------------------------------------------------------------------------------------
// Exit 2: every usage rule, before any request.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exit2_endpoint_without_model() {
    let env = [("EXECUTIONKIT_BASE_URL", "http://127.0.0.1:9/v1")];
    assert_usage_error(&["consensus", "hi"], &env, &["model", "EXECUTIONKIT_MODEL"]).await;
    assert_usage_error(
        &["consensus", "hi", "--base-url", "http://127.0.0.1:9/v1"],
        &[],
        &["model"],
    )
    .await;
}

#[tokio::test]
async fn exit2_bad_base_url() {
    assert_usage_error(
        &[
            "consensus",
            "hi",
            "--base-url",
            "ftp://127.0.0.1/v1",
            "--model",
            "m",
        ],
        &[],
        &["http"],
    )
    .await;
    assert_usage_error(
        &["consensus", "hi", "--base-url", "not a url", "--model", "m"],
        &[],
        &["URL"],
    )
    .await;
}

#[tokio::test]
async fn exit2_max_usd_needs_prices() {
    assert_usage_error(
        &["consensus", "hi", "--max-usd", "1"],
        &[],
        &["--price-in", "--price-out"],
    )
    .await;
    assert_usage_error(
        &["consensus", "hi", "--max-usd", "1", "--price-in", "0.15"],
        &[],
        &["--price-out"],
    )
    .await;
    assert_usage_error(
        &["consensus", "hi", "--price-cache-read", "0.1"],
        &[],
        &["--price-cache-read", "--price-in", "--price-out"],
    )
    .await;
    assert_usage_error(
        &[
            "consensus",
            "hi",
            "--price-in",
            "1",
            "--price-out",
            "2",
            "--price-cache-write",
            "-1",
        ],
        &[],
        &["price_cache_write"],
    )
    .await;
    assert_usage_error(
        &[
            "consensus",
            "hi",
            "--max-usd",
            "-1",
            "--price-in",
            "1",
            "--price-out",
            "2",
        ],
        &[],
        &["max_usd"],
    )
    .await;
}

#[tokio::test]
async fn exit2_bad_common_numbers() {
    let v = assert_usage_error(
        &["refine", "hi", "--max-retries", "-1"],
        &[],
        &["max_retries"],
    )
    .await;
    assert_eq!(v["error"]["metadata"]["argument"], "max_retries");
    assert_usage_error(&["refine", "hi", "--timeout", "0"], &[], &["--timeout"]).await;
    assert_usage_error(
        &["refine", "hi", "--max-calls", "many"],
        &[],
        &["--max-calls"],
    )
    .await;
}

#[tokio::test]
async fn exit2_bad_pattern_options() {
    assert_usage_error(&["consensus", "hi", "--samples", "0"], &[], &["samples"]).await;
    assert_usage_error(
        &["consensus", "hi", "--max-concurrency", "0"],
        &[],
        &["max_concurrency"],
    )
    .await;
    assert_usage_error(
        &["consensus", "hi", "--strategy", "best"],
        &[],
        &["majority", "unanimous"],
    )
    .await;
    assert_usage_error(
        &["consensus", "hi", "--temperature", "-0.5"],
        &[],
        &["temperature"],
    )
    .await;
    assert_usage_error(
        &["consensus", "hi", "--max-tokens", "0"],
        &[],
        &["max_tokens"],
    )
    .await;
    assert_usage_error(
        &["refine", "hi", "--target-score", "1.5"],
        &[],
        &["target_score"],
    )
    .await;
    assert_usage_error(&["refine", "hi", "--patience", "0"], &[], &["patience"]).await;
    assert_usage_error(
        &["refine", "hi", "--max-eval-chars", "0"],
        &[],
        &["max_eval_chars"],
    )
    .await;
}

#[tokio::test]
async fn exit2_clap_errors_and_empty_prompt() {
    assert_usage_error(&["consensus"], &[], &["PROMPT"]).await;
    assert_usage_error(&["consensus", "hi", "--sample", "3"], &[], &["--sample"]).await;
    assert_usage_error(&["vote", "hi"], &[], &["vote"]).await;
    assert_usage_error(&["pipe", "hi"], &[], &["--step"]).await;
    assert_usage_error(&["consensus", "  "], &[], &["PROMPT"]).await;
}

#[tokio::test]
async fn exit2_step_grammar() {
    let pipe = |spec: &'static str| ["pipe", "hi", "--step", spec];
    assert_usage_error(
        &pipe("vote samples=3"),
        &[],
        &["unknown step", "consensus, refine"],
    )
    .await;
    assert_usage_error(
        &pipe("consensus sample=3"),
        &[],
        &[
            "unknown key `sample`",
            "samples",
            "max_concurrency",
            "model",
            "if_score_below",
        ],
    )
    .await;
    assert_usage_error(
        &pipe("refine samples=3"),
        &[],
        &["unknown key `samples`", "target_score", "max_eval_chars"],
    )
    .await;
    assert_usage_error(
        &pipe("consensus samples=3 samples=4"),
        &[],
        &["more than once"],
    )
    .await;
    assert_usage_error(
        &pipe("consensus samples=x"),
        &[],
        &["bad value `x` for samples"],
    )
    .await;
    assert_usage_error(&pipe("consensus samples=0"), &[], &["--step 1", "samples"]).await;
    assert_usage_error(&pipe("refine target_score=2"), &[], &["target_score"]).await;
    assert_usage_error(
        &pipe("refine if_score_below=high"),
        &[],
        &["if_score_below"],
    )
    .await;
    assert_usage_error(
        &pipe("consensus strategy=best"),
        &[],
        &["majority, unanimous"],
    )
    .await;
    assert_usage_error(&pipe("refine patience"), &[], &["KEY=VALUE"]).await;
    assert_usage_error(
        &[
            "pipe",
            "hi",
            "--step",
            "consensus",
            "--step",
            "refine max_iterations=x",
        ],
        &[],
        &["--step 2", "max_iterations"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The offline default.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn offline_default_consensus_json() {
    let o = ek(&["consensus", "What is the capital of France?", "--json"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("using the embedded offline model"),
        "{}",
        stderr(&o)
    );
    let v = json_out(&o);
    assert!(v["value"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert!(v["score"].is_number());
    assert_eq!(v["cost"]["llm_calls"], 5);
    assert!(v["cost"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["metadata"]["agreement_ratio"].is_number());
    assert!(v["metadata"]["unique_responses"].is_number());
    assert!(v["metadata"]["tie_count"].is_number());
    // Deterministic: the offline model's seed defaults to 0.
    let again = json_out(&ek(&["consensus", "What is the capital of France?", "--json"]).await);
    assert_eq!(v, again);
}

#[tokio::test]
async fn offline_default_text_output() {
    let o = ek(&[
        "refine",
        "Explain recursion briefly.",
        "--max-iterations",
        "2",
    ])
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let cost_line = out
        .lines()
        .find(|l| l.starts_with("TokenUsage(input_tokens="))
        .unwrap_or_else(|| panic!("no cost line in {out}"));
    assert!(cost_line.contains("output_tokens=") && cost_line.contains("llm_calls="));
    let meta: Value = serde_json::from_str(out.trim_end().lines().last().unwrap()).unwrap();
    assert!(meta["iterations"].is_number(), "{meta}");
    assert!(meta["termination_reason"].is_string(), "{meta}");
    assert!(stderr(&o).contains("embedded offline model"));
}

#[tokio::test]
async fn offline_stdin_prompt() {
    let mut c = command::<&str>(&["consensus", "-", "--samples", "3", "--json"], &[]);
    c.stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"What is the capital of France?\n")
        .await
        .unwrap();
    drop(stdin);
    let o = child.wait_with_output().await.unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let from_stdin = json_out(&o);
    assert_eq!(from_stdin["cost"]["llm_calls"], 3);
    let direct = json_out(
        &ek(&[
            "consensus",
            "What is the capital of France?",
            "--samples",
            "3",
            "--json",
        ])
        .await,
    );
    assert_eq!(from_stdin, direct);
}

#[tokio::test]
async fn offline_seed_pipeline() {
    let o = ek(&seed_args(&["--json"])).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["metadata"]["step_count"], 2);
    let steps = v["metadata"]["step_metadata"].as_array().unwrap();
    assert!(steps[0]["agreement_ratio"].is_number());
    assert!(steps[1]["termination_reason"].is_string());
    let calls = v["cost"]["llm_calls"].as_u64().unwrap();
    assert!((6..=20).contains(&calls), "{v}");
    assert_eq!(
        sum_costs(&v["metadata"]["step_costs"]),
        strip_usd(&v["cost"])
    );

    // The text form: value, cost, step_count, one line per step.
    let o = ek(&seed_args(&[])).await;
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.trim_end().lines().collect();
    let n = lines.len();
    assert!(lines[n - 2].starts_with("step 0: {"), "{out}");
    assert!(lines[n - 1].starts_with("step 1: {"), "{out}");
    assert_eq!(lines[n - 3], "2");
    assert!(
        lines[n - 4].starts_with("TokenUsage(input_tokens="),
        "{out}"
    );
    assert_eq!(lines[..n - 4].join("\n"), v["value"].as_str().unwrap());
}

fn seed_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "pipe",
        SEED_PROMPT,
        "--step",
        "consensus samples=5 temperature=0.9",
        "--step",
        "refine target_score=0.9 max_iterations=3",
        "--max-input-tokens",
        "20000",
        "--max-output-tokens",
        "10000",
        "--max-calls",
        "20",
    ];
    a.extend_from_slice(extra);
    a
}

fn strip_usd(cost: &Value) -> Value {
    json!({
        "input_tokens": cost["input_tokens"],
        "output_tokens": cost["output_tokens"],
        "llm_calls": cost["llm_calls"],
    })
}

/// The field-by-field sum of cost objects (the subsets such as `cache_read_input_tokens` too,
/// which appear only when non-zero).
fn sum_costs(costs: &Value) -> Value {
    let mut sum = serde_json::Map::new();
    for s in costs.as_array().unwrap() {
        for (k, v) in s.as_object().unwrap() {
            let acc = sum.get(k).and_then(Value::as_u64).unwrap_or(0);
            sum.insert(k.clone(), json!(acc + v.as_u64().unwrap()));
        }
    }
    Value::Object(sum)
}

// ---------------------------------------------------------------------------------------------
// Against a scripted OpenAI-compatible server.
// ---------------------------------------------------------------------------------------------

/// Each reply costs this much.
const IN_TOKENS: u64 = 11;
const OUT_TOKENS: u64 = 7;

/// Scripted replies: judge requests (the `<response_to_rate>` envelope) get `judge` in order
/// (the last one repeats); every other request gets `drafts` in order (the last one repeats).
struct Script {
    drafts: Vec<&'static str>,
    judge: Vec<&'static str>,
    draft_i: AtomicUsize,
    judge_i: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
    delay: Option<Duration>,
}

impl Script {
    fn new(drafts: &[&'static str], judge: &[&'static str]) -> Self {
        Self {
            drafts: drafts.to_vec(),
            judge: judge.to_vec(),
            draft_i: AtomicUsize::new(0),
            judge_i: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            delay: None,
        }
    }
}

fn is_judge(body: &Value) -> bool {
    body["messages"].as_array().is_some_and(|m| {
        m.iter().any(|m| {
            m["content"]
                .as_str()
                .is_some_and(|c| c.contains("<response_to_rate>"))
        })
    })
}

fn completion(text: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": IN_TOKENS, "completion_tokens": OUT_TOKENS, "total_tokens": IN_TOKENS + OUT_TOKENS}
    })
}

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let judge = is_judge(&body);
        if let Ok(mut b) = self.bodies.lock() {
            b.push(body);
        }
        let (list, i) = if judge {
            (&self.judge, self.judge_i.fetch_add(1, Ordering::SeqCst))
        } else {
            (&self.drafts, self.draft_i.fetch_add(1, Ordering::SeqCst))
        };
        let text = list[i.min(list.len() - 1)];
        let t = ResponseTemplate::new(200).set_body_json(completion(text));
        match self.delay {
            Some(d) => t.set_delay(d),
            None => t,
        }
    }
}

async fn server(script: Script) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(script)
        .mount(&s)
        .await;
    s
}

/// Three of five samples agree: agreement 0.6; then three improvements the judge never rates 9.
fn seed_script() -> Script {
    Script::new(
        &[
            "Draft A",
            "Draft A",
            "Draft B",
            "Draft A",
            "Draft C",
            "Improved 1",
            "Improved 2",
            "Improved 3",
        ],
        &["5", "6", "7", "8"],
    )
}

#[tokio::test]
async fn seed_pipeline_json_against_scripted_server() {
    let s = server(seed_script()).await;
    let o = ek_at(&s, &seed_args(&["--json"])).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("offline"), "{}", stderr(&o));
    let v = json_out(&o);
    // The judge never reaches 0.9: 5 samples + 1 score of the winner + 3 × (improve + score).
    assert_eq!(
        v["cost"],
        json!({"input_tokens": 12 * IN_TOKENS, "output_tokens": 12 * OUT_TOKENS, "llm_calls": 12})
    );
    assert_eq!(bodies(&s).await.len(), 12);
    assert_eq!(v["value"], "Improved 3");
    assert_eq!(v["score"], 0.8);
    let m = &v["metadata"];
    assert_eq!(m["step_count"], 2);
    assert_eq!(m["step_metadata"][0]["agreement_ratio"], 0.6);
    assert_eq!(m["step_metadata"][0]["unique_responses"], 3);
    assert_eq!(m["step_metadata"][1]["iterations"], 3);
    assert_eq!(
        m["step_metadata"][1]["termination_reason"],
        "max_iterations"
    );
    assert_eq!(m["termination_reason"], "max_iterations");
    assert_eq!(m["score_history"], json!([0.5, 0.6, 0.7, 0.8]));
    assert_eq!(
        m["step_costs"],
        json!([
            {"input_tokens": 5 * IN_TOKENS, "output_tokens": 5 * OUT_TOKENS, "llm_calls": 5},
            {"input_tokens": 7 * IN_TOKENS, "output_tokens": 7 * OUT_TOKENS, "llm_calls": 7},
        ])
    );
    // The refine step scored the consensus winner first: the first judge call rates "Draft A".
    let b = bodies(&s).await;
    let first_judge = b.iter().find(|b| is_judge(b)).unwrap();
    assert!(first_judge.to_string().contains("Draft A"));
}

#[tokio::test]
async fn seed_pipeline_max_calls_5_fails_in_step_2() {
    let s = server(seed_script()).await;
    let mut args = seed_args(&["--json"]);
    let i = args.iter().position(|a| *a == "20").unwrap();
    args[i] = "5";
    let o = ek_at(&s, &args).await;
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let v = json_out(&o);
    let e = &v["error"];
    assert_eq!(e["kind"], "budget_exhausted", "{v}");
    assert_eq!(
        e["cost"],
        json!({"input_tokens": 5 * IN_TOKENS, "output_tokens": 5 * OUT_TOKENS, "llm_calls": 5})
    );
    assert_eq!(e["metadata"]["exhausted"], "llm_calls");
    assert_eq!(e["metadata"]["budget"]["llm_calls"], 5);
    assert_eq!(
        e["metadata"]["step_costs"],
        json!([
            {"input_tokens": 5 * IN_TOKENS, "output_tokens": 5 * OUT_TOKENS, "llm_calls": 5},
            {"input_tokens": 0, "output_tokens": 0, "llm_calls": 0},
        ])
    );
    assert_eq!(bodies(&s).await.len(), 5);
}

#[tokio::test]
async fn seed_pipeline_max_calls_7_returns_best_draft() {
    let s = server(seed_script()).await;
    let mut args = seed_args(&["--json"]);
    let i = args.iter().position(|a| *a == "20").unwrap();
    args[i] = "7";
    let o = ek_at(&s, &args).await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let v = json_out(&o);
    assert_eq!(v["cost"]["llm_calls"], 7);
    // 5 samples, the winner scored (0.5), one improvement written but never scored.
    assert_eq!(v["value"], "Draft A");
    assert_eq!(v["score"], 0.5);
    assert_eq!(v["metadata"]["termination_reason"], "budget_exhausted");
    assert_eq!(
        v["metadata"]["step_metadata"][1]["termination_reason"],
        "budget_exhausted"
    );
    assert_eq!(bodies(&s).await.len(), 7);
}

#[tokio::test]
async fn seed_pipeline_text_output_against_scripted_server() {
    let s = server(seed_script()).await;
    let o = ek_at(&s, &seed_args(&[])).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.trim_end().lines().collect();
    assert_eq!(lines[0], "Improved 3");
    assert_eq!(
        lines[1],
        format!(
            "TokenUsage(input_tokens={}, output_tokens={}, llm_calls=12)",
            12 * IN_TOKENS,
            12 * OUT_TOKENS
        )
    );
    assert_eq!(lines[2], "2");
    assert!(lines[3].starts_with("step 0: {") && lines[3].contains("\"agreement_ratio\":0.6"));
    assert!(lines[4].starts_with("step 1: {") && lines[4].contains("max_iterations"));
    assert_eq!(lines.len(), 5);
}

#[tokio::test]
async fn pipe_if_score_below_skips_and_model_routes() {
    // Unanimous samples: agreement 1.0, so `if_score_below=0.95` skips the refine step.
    let s = server(Script::new(&["Same"], &["9"])).await;
    let o = ek_at(
        &s,
        &[
            "pipe",
            "q",
            "--step",
            "consensus samples=3 model=cheap",
            "--step",
            "refine if_score_below=0.95",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "Same");
    assert_eq!(v["cost"]["llm_calls"], 3);
    assert_eq!(v["metadata"]["step_count"], 2);
    assert_eq!(v["metadata"]["step_metadata"][1]["skipped"], true);
    assert_eq!(v["metadata"]["step_costs"][1]["llm_calls"], 0);
    for b in bodies(&s).await {
        assert_eq!(b["model"], "cheap");
    }

    // Disagreeing samples: agreement 0.5 < 0.95, so the refine step runs.
    let s = server(Script::new(&["X", "Y", "Better"], &["9"])).await;
    let o = ek_at(
        &s,
        &[
            "pipe",
            "q",
            "--step",
            "consensus samples=2",
            "--step",
            "refine if_score_below=0.95",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(
        v["metadata"]["step_metadata"][1]["termination_reason"],
        "target_reached"
    );
    assert!(v["cost"]["llm_calls"].as_u64().unwrap() > 2);
    for b in bodies(&s).await {
        assert_eq!(b["model"], "test-model");
    }
}

#[tokio::test]
async fn consensus_sends_seed_system_and_temperature() {
    let s = server(Script::new(&["4"], &["9"])).await;
    let o = ek_at(
        &s,
        &[
            "consensus",
            "2+2?",
            "--samples",
            "3",
            "--seed",
            "7",
            "--system",
            "Be brief.",
            "--temperature",
            "0.5",
            "--max-tokens",
            "64",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "4");
    assert_eq!(v["score"], 1.0);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 3);
    let mut seeds: Vec<u64> = b.iter().map(|b| b["seed"].as_u64().unwrap()).collect();
    seeds.sort_unstable();
    assert_eq!(seeds, vec![7, 8, 9]);
    for b in &b {
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(b["messages"][1]["content"], "2+2?");
        assert_eq!(b["temperature"], 0.5);
        assert_eq!(b["max_tokens"], 64);
        assert_eq!(b["model"], "test-model");
    }
}

#[tokio::test]
async fn endpoint_without_seed_sends_none() {
    let s = server(Script::new(&["4"], &["9"])).await;
    let o = ek_at(&s, &["consensus", "2+2?", "--samples", "2", "--json"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for b in bodies(&s).await {
        assert!(b.get("seed").is_none_or(Value::is_null), "{b}");
    }
}

#[tokio::test]
async fn api_key_rules_over_the_wire() {
    let s = server(Script::new(&["ok"], &["9"])).await;
    let base = format!("{}/v1", s.uri());
    let run = |env: Vec<(&'static str, String)>| {
        let mut env = env;
        env.push(("EXECUTIONKIT_BASE_URL", base.clone()));
        env.push(("EXECUTIONKIT_MODEL", "m".to_owned()));
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ek_env(&["consensus", "q", "--samples", "1", "--json"], &env).await
        }
    };
    // OPENAI_API_KEY is never sent to a host other than api.openai.com.
    let o = run(vec![("OPENAI_API_KEY", "sk-openai-secret".to_owned())]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(last_auth(&s).await, None);
    // EXECUTIONKIT_API_KEY is.
    let o = run(vec![("EXECUTIONKIT_API_KEY", "ek-secret".to_owned())]).await;
    assert_eq!(code(&o), 0);
    assert_eq!(last_auth(&s).await.as_deref(), Some("Bearer ek-secret"));
    // --api-key wins over the environment.
    let env = [
        ("EXECUTIONKIT_BASE_URL", base.as_str()),
        ("EXECUTIONKIT_MODEL", "m"),
        ("EXECUTIONKIT_API_KEY", "ek-secret"),
    ];
    let o = ek_env(
        &[
            "consensus",
            "q",
            "--samples",
            "1",
            "--api-key",
            "flag-secret",
        ],
        &env,
    )
    .await;
    assert_eq!(code(&o), 0);
    assert_eq!(last_auth(&s).await.as_deref(), Some("Bearer flag-secret"));
    assert!(!stdout(&o).contains("secret") && !stderr(&o).contains("secret"));
}

#[tokio::test]
async fn provider_failure_exits_1_with_error_json() {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "bad key sk-abcdefghijklmnopqrstuvwx", "type": "invalid_request_error"}})))
        .mount(&s)
        .await;
    let o = ek_at(
        &s,
        &[
            "consensus",
            "q",
            "--samples",
            "2",
            "--api-key",
            "sk-abcdefghijklmnopqrstuvwx",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let v = json_out(&o);
    assert_eq!(v["error"]["kind"], "permanent");
    assert_eq!(v["error"]["metadata"]["http_status"], 401);
    assert!(v["error"]["cost"]["llm_calls"].as_u64().unwrap() >= 1);
    assert!(
        !stdout(&o).contains("abcdefghijklmnopqrstuvwx"),
        "{}",
        stdout(&o)
    );
    // Text mode: the reason on stderr, nothing on stdout.
    let o = ek_at(&s, &["consensus", "q", "--samples", "1"]).await;
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("permanent"), "{}", stderr(&o));
}

#[tokio::test]
async fn money_budget_reports_usd() {
    let s = server(Script::new(&["ok"], &["9"])).await;
    let o = ek_at(
        &s,
        &[
            "consensus",
            "q",
            "--samples",
            "2",
            "--max-usd",
            "1",
            "--price-in",
            "1000",
            "--price-out",
            "2000",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    // 2 calls × (11 × 1000 + 7 × 2000) / 1e6 = 0.05
    let usd = v["cost"]["usd"].as_f64().unwrap();
    assert!((usd - 0.05).abs() < 1e-9, "{v}");
}

#[tokio::test]
async fn json_cost_shows_cached_and_reasoning_tokens_only_when_reported() {
    let s = MockServer::start().await;
    let mut reply = completion("ok");
    reply["usage"]["prompt_tokens_details"] = json!({"cached_tokens": 8, "audio_tokens": 0});
    reply["usage"]["completion_tokens_details"] = json!({"reasoning_tokens": 5});
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(reply))
        .mount(&s)
        .await;
    let o = ek_at(
        &s,
        &[
            "consensus",
            "q",
            "--samples",
            "2",
            "--price-in",
            "1000",
            "--price-out",
            "2000",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    let mut cost = v["cost"].clone();
    cost.as_object_mut().unwrap().remove("usd");
    assert_eq!(
        cost,
        json!({
            "input_tokens": 2 * IN_TOKENS,
            "output_tokens": 2 * OUT_TOKENS,
            "llm_calls": 2,
            "cache_read_input_tokens": 16,
            "reasoning_tokens": 10,
        }),
        "{v}"
    );
    // Without cache prices cached tokens cost the input price: 2 × (11 × 1000 + 7 × 2000) / 1e6.
    let usd = v["cost"]["usd"].as_f64().unwrap();
    assert!((usd - 0.05).abs() < 1e-9, "{v}");
    // With a cache-read price the 16 cached tokens cost 100 instead of 1000 per million:
    // 0.05 - 16 × (1000 - 100) / 1e6.
    let o = ek_at(
        &s,
        &[
            "consensus",
            "q",
            "--samples",
            "2",
            "--price-in",
            "1000",
            "--price-out",
            "2000",
            "--price-cache-read",
            "100",
            "--price-cache-write",
            "1250",
            "--max-usd",
            "1",
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let usd = json_out(&o)["cost"]["usd"].as_f64().unwrap();
    assert!((usd - (0.05 - 16.0 * 900.0 / 1e6)).abs() < 1e-9, "{usd}");
    // A server that reports no details: the cost object is exactly the three counts.
    let plain = server(Script::new(&["ok"], &["9"])).await;
    let v = json_out(&ek_at(&plain, &["consensus", "q", "--samples", "1", "--json"]).await);
    assert_eq!(
        v["cost"].to_string(),
        format!(r#"{{"input_tokens":{IN_TOKENS},"llm_calls":1,"output_tokens":{OUT_TOKENS}}}"#)
    );
}

#[tokio::test]
async fn ctrl_c_exits_130_and_reports_spend() {
    let mut script = Script::new(&["slow"], &["9"]);
    script.delay = Some(Duration::from_secs(30));
    let s = server(script).await;
    let env = endpoint(&s);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let child = command(
        &[
            "consensus",
            "q",
            "--samples",
            "3",
            "--max-retries",
            "0",
            "--json",
        ],
        &env,
    )
    .spawn()
    .unwrap();
    // Wait until every sample is in flight at the server.
    for _ in 0..200 {
        if s.received_requests().await.unwrap_or_default().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(s.received_requests().await.unwrap_or_default().len(), 3);
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("ek did not stop on SIGINT")
        .unwrap();
    assert_eq!(code(&o), 130, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["error"]["kind"], "cancelled");
    assert_eq!(v["error"]["cost"]["llm_calls"], 3);
}

#[tokio::test]
async fn help_and_version_exit_0() {
    let o = ek(&["--help"]).await;
    assert_eq!(code(&o), 0);
    for cmd in ["consensus", "refine", "pipe"] {
        assert!(stdout(&o).contains(cmd));
    }
    let o = ek(&["pipe", "--help"]).await;
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("--step"));
    let o = ek(&["--version"]).await;
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).starts_with("ek "));
}

/// The `Authorization` header of the last request the server saw.
async fn last_auth(s: &MockServer) -> Option<String> {
    let reqs = s.received_requests().await.unwrap_or_default();
    let last = reqs.last().unwrap();
    last.headers
        .get("authorization")
        .map(|h| h.to_str().unwrap().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Against a real model: llama-server + SmolLM2-135M (scripts/start-llama.sh exports
// EK_LLAMA_URL and EK_LLAMA_KEY; scripts/test.sh sets EK_REQUIRE_SERVERS=1 so a missing server
// fails instead of skipping).
// ---------------------------------------------------------------------------------------------

/// `(base_url, key)` of the llama-server, or `None` (skip) when it is not running.
fn llama() -> Option<(String, String)> {
    common::server_url("EK_LLAMA_URL", "scripts/start-llama.sh").map(|u| (u, common::llama_key()))
}

async fn ek_llama(args: &[&str], url: &str, key: &str) -> Output {
    let env = [
        ("EXECUTIONKIT_BASE_URL", url),
        ("EXECUTIONKIT_MODEL", "smollm2"),
        ("EXECUTIONKIT_API_KEY", key),
    ];
    ek_env(args, &env).await
}

#[tokio::test]
async fn llama_consensus_capital_of_france() {
    let Some((url, key)) = llama() else { return };
    let o = ek_llama(
        &[
            "consensus",
            "What is the capital of France? Answer with one word.",
            "--samples",
            "3",
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "--json",
        ],
        &url,
        &key,
    )
    .await;
    assert_eq!(code(&o), 0, "{} {}", stdout(&o), stderr(&o));
    assert!(!stderr(&o).contains("offline"));
    let v = json_out(&o);
    assert!(v["value"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(v["score"], 1.0);
    assert_eq!(v["cost"]["llm_calls"], 3);
    assert!(v["cost"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["cost"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn llama_seed_pipeline_ends_in_value_or_typed_error() {
    let Some((url, key)) = llama() else { return };
    let o = ek_llama(
        &[
            "pipe",
            SEED_PROMPT,
            "--step",
            "consensus samples=5 temperature=0.9 max_tokens=128",
            "--step",
            "refine target_score=0.9 max_iterations=3 max_tokens=128",
            "--max-input-tokens",
            "20000",
            "--max-output-tokens",
            "10000",
            "--max-calls",
            "20",
            "--seed",
            "1",
            "--json",
        ],
        &url,
        &key,
    )
    .await;
    let v = json_out(&o);
    match code(&o) {
        0 => {
            assert!(v["value"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
            assert_eq!(v["metadata"]["step_count"], 2);
            let calls = v["cost"]["llm_calls"].as_u64().unwrap();
            assert!((6..=20).contains(&calls), "{v}");
            assert_eq!(sum_costs(&v["metadata"]["step_costs"]), v["cost"]);
        }
        1 => {
            let kind = v["error"]["kind"].as_str().unwrap();
            assert!(["budget_exhausted", "parse"].contains(&kind), "{v}");
            assert!(
                v["error"]["cost"]["llm_calls"].as_u64().unwrap() >= 5,
                "{v}"
            );
        }
        c => panic!("exit {c}: {v}"),
    }
}

#[tokio::test]
async fn llama_wrong_key_is_permanent_exit_1() {
    let Some((url, _)) = llama() else { return };
    let o = ek_llama(
        &[
            "consensus",
            "hi",
            "--samples",
            "1",
            "--max-tokens",
            "4",
            "--json",
        ],
        &url,
        "wrong-key-for-test",
    )
    .await;
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let v = json_out(&o);
    assert_eq!(v["error"]["kind"], "permanent");
    assert_eq!(v["error"]["metadata"]["http_status"], 401);
    assert_eq!(v["error"]["cost"]["llm_calls"], 1);
    assert!(!stdout(&o).contains("wrong-key-for-test"));
}
