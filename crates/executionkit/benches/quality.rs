//! Quality per cost of consensus stop rules (issue 12, benchmark (a) and (c); bench/quality/).
//!
//! A loopback HTTP server on 127.0.0.1 plays a model whose answers follow known distributions.
//! Question `k` of dataset seed `s` has a correct answer with probability
//! `p ~ U(0.35, 0.95)` and 2–4 wrong answers sharing `1 - p` by Dirichlet(1). Sample `i` of a
//! question (the request's `seed`, since a consensus with seed 0 sends `seed = i` on sample
//! `i`) is a fixed draw from that distribution, so every rule reads a prefix of the same answer
//! stream as fixed N = 40: the comparison is paired. Each reply carries log-probabilities with a
//! weak, noisy signal (a correct answer's mean token log-probability is drawn from
//! N(-0.45, 0.35), a wrong one's from N(-0.65, 0.35)).
//!
//! Every rule runs every question of every seed through `OpenAiProvider` and the engine, one
//! sample in flight per question (so calls = samples: nothing is cancelled mid-flight) and many
//! questions at once. It reports accuracy, mean calls per question, calls saved against fixed
//! N = 40, and the accuracy difference to N = 40 with a 95% confidence interval (paired, over
//! questions).
//!
//! With `EK_LLAMA_URL` set (`eval "$(scripts/start-llama.sh)"`), benchmark (b) follows:
//! SmolLM2-135M through llama-server on 50 one-word factual questions (capitals, chemical
//! symbols) at N = 20, the vote key being the last word of the reply's first line; every rule again reads a
//! prefix of the same seeded answers (`seed = i` on sample `i`, one request at a time).
//!
//! Then (d): the seed pipeline (consensus of 5, then refine to 0.9 in at most 3 rounds, at most
//! 20 calls) on SmolLM2 with seeds 1–10: how many runs end with a value rather than an error
//! (issue 12 asks for at least 9 of 10; CI's test runs two seeds).
//!
//! `cargo bench -p executionkit --bench quality -- [--seeds 5] [--questions 400]
//! [--llama-only]`, or `bench/quality/run.sh`. `cargo test --all-targets` (CI) runs it as a
//! smoke test only: one seed of 8 questions, (a) and (c), no llama-server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_docs
)]

use std::convert::Infallible;
use std::net::SocketAddr;

use executionkit::{
    Budget, Consensus, ConsensusSet, OpenAiProvider, Pipe, RefineLoop, RunContext, StopRule,
    WithCallOptions,
};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The fixed-N reference.
const N: usize = 40;

/// splitmix64: a fixed, documented mixing function, so the answer streams are the same on every
/// machine and with every version of every crate (a library RNG may change its algorithm).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform number in (0, 1) from the words `keys`.
fn uniform(keys: &[u64]) -> f64 {
    let h = keys.iter().fold(0x5EED_u64, |acc, k| mix(acc ^ mix(*k)));
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A standard normal draw (Box–Muller) from the words `keys`.
fn normal(keys: &[u64]) -> f64 {
    let mut a = keys.to_vec();
    a.push(1);
    let u1 = uniform(&a);
    a.push(2);
    let u2 = uniform(&a);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Question `k` of dataset `seed`: the answers' probabilities; answer 0 is the correct one.
fn distribution(seed: u64, k: u64) -> Vec<f64> {
    let p = 0.35 + 0.6 * uniform(&[seed, k, 0]);
    let wrong = 2 + (uniform(&[seed, k, 1]) * 3.0) as usize; // 2..=4
    let gammas: Vec<f64> = (0..wrong)
        .map(|j| -uniform(&[seed, k, 2, j as u64]).ln())
        .collect();
    let total: f64 = gammas.iter().sum();
    std::iter::once(p)
        .chain(gammas.iter().map(|g| (1.0 - p) * g / total))
        .collect()
}

/// Sample `i` of question `k`: which answer, and its mean token log-probability.
fn sample(seed: u64, k: u64, i: u64) -> (usize, f64) {
    let d = distribution(seed, k);
    let u = uniform(&[seed, k, 3, i]);
    let mut acc = 0.0;
    let mut answer = d.len() - 1;
    for (j, p) in d.iter().enumerate() {
        acc += p;
        if u < acc {
            answer = j;
            break;
        }
    }
    let centre = if answer == 0 { -0.45 } else { -0.65 };
    let lp = (centre + 0.35 * normal(&[seed, k, 4, i])).min(-0.01);
    (answer, lp)
}

fn answer_text(k: u64, answer: usize) -> String {
    format!("q{k}-answer-{answer}")
}

/// The synthetic model: reads `dataset S question K` from the prompt and `seed` from the body.
async fn respond(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let reply = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| {
            let prompt = v["messages"].as_array()?.last()?["content"]
                .as_str()?
                .to_owned();
            let mut words = prompt.split_whitespace();
            let seed: u64 = words.nth(1)?.parse().ok()?;
            let k: u64 = words.nth(1)?.parse().ok()?;
            let i = v["seed"].as_u64().unwrap_or(0);
            let (answer, lp) = sample(seed, k, i);
            let text = answer_text(k, answer);
            let mut choice = json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"
            });
            if v["logprobs"] == json!(true) {
                // Three tokens whose mean is `lp`.
                choice["logprobs"] = json!({"content": [
                    {"token": "q", "logprob": lp - 0.1, "bytes": null, "top_logprobs": []},
                    {"token": "-answer-", "logprob": lp, "bytes": null, "top_logprobs": []},
                    {"token": "x", "logprob": lp + 0.1, "bytes": null, "top_logprobs": []}
                ]});
            }
            Some(json!({
                "id": "q", "object": "chat.completion", "created": 0, "model": "synthetic",
                "choices": [choice],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
            }))
        });
    Ok(match reply {
        Some(v) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .unwrap(),
        None => Response::builder()
            .status(400)
            .body(Full::new(Bytes::from_static(
                b"{\"error\":{\"message\":\"bad request\"}}",
            )))
            .unwrap(),
    })
}

async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(respond))
                    .await;
            });
        }
    });
    addr
}

/// One rule's outcome on one question.
#[derive(Clone, Copy)]
struct Outcome {
    correct: bool,
    calls: u64,
}

/// A rule under test: a consensus per question, or (benchmark (c)) one `ConsensusSet` over
/// each dataset's questions with `per_question` samples each on average.
#[derive(Clone)]
struct Rule {
    name: String,
    consensus: Consensus,
    set: Option<(usize, StopRule)>,
}

fn rules(n: usize) -> Vec<Rule> {
    let base = || Consensus::new().samples(n).max_concurrency(1).seed(0);
    let rule = |name: String, consensus: Consensus| Rule {
        name,
        consensus,
        set: None,
    };
    let mut v = vec![rule(format!("fixed N={n}"), base())];
    for k in [3, 4, 5] {
        v.push(rule(
            format!("window:{k}"),
            base().early_stop(StopRule::window(k)),
        ));
    }
    for c in [0.9, 0.95, 0.99] {
        v.push(rule(
            format!("adaptive:{c}"),
            base().early_stop(StopRule::adaptive(c)),
        ));
    }
    for c in [0.95, 0.99] {
        v.push(rule(
            format!("adaptive:{c} + logprob weights"),
            base()
                .early_stop(StopRule::adaptive(c))
                .logprob_weights(true),
        ));
    }
    v
}

/// Benchmark (c): the many-questions mode at a few totals, against fixed N at the same total.
fn set_rules(n: usize) -> Vec<Rule> {
    let mut v = Vec::new();
    for per_question in [8, 10, 12, 14] {
        v.push(Rule {
            name: format!("fixed N={per_question} (same total)"),
            consensus: Consensus::new()
                .samples(per_question)
                .max_concurrency(1)
                .seed(0),
            set: None,
        });
        for (c, weights) in [(0.95, false), (0.99, true)] {
            v.push(Rule {
                name: format!(
                    "set: {per_question}/question, adaptive:{c}{}",
                    if weights { " + logprob weights" } else { "" }
                ),
                consensus: Consensus::new()
                    .samples(n)
                    .max_concurrency(64)
                    .seed(0)
                    .logprob_weights(weights),
                set: Some((per_question, StopRule::adaptive(c))),
            });
        }
    }
    v
}

/// Runs `rule` on every question of `seed`, `parallel` questions at a time.
async fn run_rule(
    provider: &OpenAiProvider,
    rule: &Rule,
    seed: u64,
    questions: u64,
    parallel: usize,
) -> Vec<Outcome> {
    if let Some((per_question, stop)) = rule.set {
        let prompts: Vec<String> = (0..questions)
            .map(|k| format!("dataset {seed} question {k}"))
            .collect();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let set = ConsensusSet::new()
            .consensus(rule.consensus.clone())
            .total_samples(per_question * prompts.len())
            .stop_rule(stop);
        let r = set
            .run(provider, &prompts, &RunContext::new())
            .await
            .unwrap();
        return r
            .results
            .iter()
            .zip(0..)
            .map(|(q, k)| {
                let q = q.as_ref().unwrap();
                Outcome {
                    correct: q.value == answer_text(k, 0),
                    calls: q.cost.llm_calls,
                }
            })
            .collect();
    }
    futures::stream::iter(0..questions)
        .map(|k| {
            let c = rule.consensus.clone();
            async move {
                let ctx = RunContext::new().budget(Budget::new());
                let prompt = format!("dataset {seed} question {k}");
                let r = c.run(provider, &prompt, &ctx).await.unwrap();
                Outcome {
                    correct: r.value == answer_text(k, 0),
                    calls: r.cost.llm_calls,
                }
            }
        })
        .buffered(parallel)
        .collect()
        .await
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this file without it: then
    // a smoke run (one seed, 8 questions, no llama-server) checks that it still works.
    let smoke = !args.iter().any(|a| a == "--bench");
    let seeds = if smoke { 1 } else { arg(&args, "--seeds", 5) };
    let questions = if smoke {
        8
    } else {
        arg(&args, "--questions", 400)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let llama_only = !smoke && args.iter().any(|a| a == "--llama-only");
    rt.block_on(async {
        if llama_only {
            if let Ok(url) = std::env::var("EK_LLAMA_URL") {
                let key =
                    std::env::var("EK_LLAMA_KEY").unwrap_or_else(|_| "ek-test-key".to_owned());
                llama(&url, &key).await;
                seed_pipeline(&url, &key).await;
            }
            return;
        }
        let addr = serve().await;
        let provider = OpenAiProvider::builder(format!("http://{addr}/v1"), "synthetic")
            .no_proxy()
            .build()
            .unwrap();
        let rules = rules(N);
        // outcomes[rule][seed * questions + k]
        let mut outcomes: Vec<Vec<Outcome>> = Vec::new();
        for rule in &rules {
            let mut all = Vec::new();
            for seed in 1..=seeds {
                all.extend(run_rule(&provider, rule, seed, questions, 64).await);
            }
            outcomes.push(all);
        }
        println!(
            "(a) synthetic questions: {seeds} seeds x {questions} questions, p(correct) ~ U(0.35, 0.95), 2-4 wrong answers ~ Dirichlet(1)"
        );
        report(&rules, &outcomes);

        // (c): the reference stays fixed N = 40.
        let mut rules_c = vec![rules[0].clone()];
        rules_c.extend(set_rules(N));
        let mut outcomes_c = vec![outcomes[0].clone()];
        for rule in &rules_c[1..] {
            let mut all = Vec::new();
            for seed in 1..=seeds {
                all.extend(run_rule(&provider, rule, seed, questions, 64).await);
            }
            outcomes_c.push(all);
        }
        println!();
        println!(
            "(c) many questions, one total: each dataset's {questions} questions as one ConsensusSet (cap {N} per question), against fixed N at the same total"
        );
        report(&rules_c, &outcomes_c);
        if smoke {
            return;
        }
        if let Ok(url) = std::env::var("EK_LLAMA_URL") {
            let key = std::env::var("EK_LLAMA_KEY").unwrap_or_else(|_| "ek-test-key".to_owned());
            llama(&url, &key).await;
            seed_pipeline(&url, &key).await;
        }
    });
}

/// (d): the seed pipeline on SmolLM2, seeds 1–10.
async fn seed_pipeline(url: &str, key: &str) {
    const PROMPT: &str = "Write a one-paragraph executive summary of the Turing test for an audience of non-technical board members.";
    let provider = OpenAiProvider::builder(url, "smollm2")
        .api_key(key)
        .no_proxy()
        .build()
        .unwrap();
    let mut values = 0;
    let mut lines = Vec::new();
    for seed in 1..=10_u64 {
        let r = Pipe::new()
            .step(
                Consensus::default()
                    .samples(5)
                    .temperature(0.9)
                    .max_tokens(128)
                    .seed(seed),
            )
            .step(
                RefineLoop::default()
                    .target_score(0.9)
                    .max_iterations(3)
                    .max_tokens(128)
                    .seed(seed),
            )
            .max_budget(
                Budget::new()
                    .max_input_tokens(20_000)
                    .max_output_tokens(10_000)
                    .max_calls(20),
            )
            .run(&provider, PROMPT, &RunContext::new())
            .await;
        match r {
            Ok(r) => {
                values += 1;
                let score = r.score.map_or_else(|| "null".to_owned(), |s| s.to_string());
                lines.push(format!(
                    "| {seed} | value | {} | {score} |",
                    r.cost.llm_calls
                ));
            }
            Err(e) => lines.push(format!(
                "| {seed} | {} | {} | |",
                e.kind().as_str(),
                e.cost().llm_calls
            )),
        }
    }
    println!();
    println!("(d) the seed pipeline on SmolLM2-135M, seeds 1-10: {values} of 10 end with a value");
    println!("| seed | outcome | calls | score |");
    println!("|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
}

/// (b): 50 one-word questions and their answers.
const FACTS: &[(&str, &str)] = &[
    ("What is the capital of France?", "paris"),
    ("What is the capital of Germany?", "berlin"),
    ("What is the capital of Italy?", "rome"),
    ("What is the capital of Spain?", "madrid"),
    ("What is the capital of Japan?", "tokyo"),
    ("What is the capital of Russia?", "moscow"),
    ("What is the capital of China?", "beijing"),
    ("What is the capital of Egypt?", "cairo"),
    ("What is the capital of Greece?", "athens"),
    ("What is the capital of Portugal?", "lisbon"),
    ("What is the capital of Austria?", "vienna"),
    ("What is the capital of Norway?", "oslo"),
    ("What is the capital of Sweden?", "stockholm"),
    ("What is the capital of Finland?", "helsinki"),
    ("What is the capital of Ireland?", "dublin"),
    ("What is the capital of Poland?", "warsaw"),
    ("What is the capital of Hungary?", "budapest"),
    ("What is the capital of Canada?", "ottawa"),
    ("What is the capital of Australia?", "canberra"),
    ("What is the capital of Kenya?", "nairobi"),
    ("What is the capital of Peru?", "lima"),
    ("What is the capital of Chile?", "santiago"),
    ("What is the capital of Argentina?", "aires"),
    ("What is the capital of Thailand?", "bangkok"),
    ("What is the capital of the United Kingdom?", "london"),
    ("What is the chemical symbol of gold?", "au"),
    ("What is the chemical symbol of silver?", "ag"),
    ("What is the chemical symbol of iron?", "fe"),
    ("What is the chemical symbol of oxygen?", "o"),
    ("What is the chemical symbol of hydrogen?", "h"),
    ("What is the chemical symbol of carbon?", "c"),
    ("What is the chemical symbol of nitrogen?", "n"),
    ("What is the chemical symbol of sodium?", "na"),
    ("What is the chemical symbol of potassium?", "k"),
    ("What is the chemical symbol of copper?", "cu"),
    ("What is the chemical symbol of lead?", "pb"),
    ("What is the chemical symbol of tin?", "sn"),
    ("What is the chemical symbol of mercury?", "hg"),
    ("What is the chemical symbol of helium?", "he"),
    ("What is the chemical symbol of neon?", "ne"),
    ("What is the chemical symbol of calcium?", "ca"),
    ("What is the chemical symbol of zinc?", "zn"),
    ("What is the chemical symbol of sulfur?", "s"),
    ("What is the chemical symbol of chlorine?", "cl"),
    ("What is the chemical symbol of magnesium?", "mg"),
    ("What is the chemical symbol of aluminium?", "al"),
    ("What is the chemical symbol of silicon?", "si"),
    ("What is the chemical symbol of uranium?", "u"),
    ("What is the chemical symbol of platinum?", "pt"),
    ("What is the chemical symbol of phosphorus?", "p"),
];

/// The vote key of (b): the last word of the reply's first line, lower case, without
/// punctuation (SmolLM2 answers "The capital of France is Paris.").
fn answer_word(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .split_whitespace()
        .next_back()
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// (b): SmolLM2-135M through llama-server, N = 20.
async fn llama(url: &str, key: &str) {
    const N_LLAMA: usize = 20;
    let provider = OpenAiProvider::builder(url, "smollm2")
        .api_key(key)
        .no_proxy()
        .build()
        .unwrap();
    let rules: Vec<Rule> = rules(N_LLAMA)
        .into_iter()
        .filter(|r| !r.name.contains("logprob"))
        .map(|r| Rule {
            name: r.name,
            set: None,
            consensus: r
                .consensus
                .vote_key(answer_word)
                .temperature(0.7)
                .max_tokens(16)
                .system("Answer with one word."),
        })
        .collect();
    let mut outcomes = Vec::new();
    for rule in &rules {
        let outs: Vec<Outcome> = futures::stream::iter(FACTS)
            .map(|(q, a)| {
                let c = rule.consensus.clone();
                let provider = &provider;
                async move {
                    let r = c.run(provider, q, &RunContext::new()).await.unwrap();
                    Outcome {
                        correct: answer_word(&r.value) == *a,
                        calls: r.cost.llm_calls,
                    }
                }
            })
            // One request at a time: llama-server's batching changes its numerics, and the
            // rules must read the same answers.
            .buffered(1)
            .collect()
            .await;
        outcomes.push(outs);
    }
    println!();
    println!(
        "(b) SmolLM2-135M through llama-server: {} one-word questions (capitals, chemical symbols), N={N_LLAMA}, temperature 0.7",
        FACTS.len()
    );
    report(&rules, &outcomes);
}

/// Accuracy, calls, and the paired accuracy difference to the first rule (fixed N) with a 95%
/// normal-approximation interval over questions.
fn report(rules: &[Rule], outcomes: &[Vec<Outcome>]) {
    let n = outcomes[0].len() as f64;
    let reference = &outcomes[0];
    let ref_calls: f64 = reference.iter().map(|o| o.calls as f64).sum::<f64>() / n;
    let fixed = &rules[0].name;
    println!(
        "| rule | accuracy | mean calls | calls saved vs {fixed} | accuracy − {fixed} (95% CI), points |"
    );
    println!("|---|---|---|---|---|");
    for (rule, outs) in rules.iter().zip(outcomes) {
        let acc = outs.iter().filter(|o| o.correct).count() as f64 / n;
        let calls = outs.iter().map(|o| o.calls as f64).sum::<f64>() / n;
        let diffs: Vec<f64> = outs
            .iter()
            .zip(reference)
            .map(|(o, r)| f64::from(u8::from(o.correct)) - f64::from(u8::from(r.correct)))
            .collect();
        let mean = diffs.iter().sum::<f64>() / n;
        let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let half = 1.96 * (var / n).sqrt();
        println!(
            "| {} | {:.2}% | {:.2} | {:.1}% | {:+.2} [{:+.2}, {:+.2}] |",
            rule.name,
            acc * 100.0,
            calls,
            (1.0 - calls / ref_calls) * 100.0,
            mean * 100.0,
            (mean - half) * 100.0,
            (mean + half) * 100.0
        );
    }
}
