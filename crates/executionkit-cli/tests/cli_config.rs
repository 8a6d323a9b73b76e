//! `ek --config FILE --provider NAME` (docs/cli.md "Config file"): named providers, failover
//! chains and routers from a TOML file, against wiremock servers on 127.0.0.1. Every server
//! counts what it received; the counts must equal the calls `ek` reports for it
//! (`metadata.cost_by_provider`), a config mistake must exit 2 naming its line before any
//! request, and no key may appear in any output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{code, ek_env, json_out, stderr, stdout};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const PRIMARY_KEY: &str = "sk-primary-0123456789abcdef";
const BACKUP_KEY: &str = "sk-backup-9876543210fedcba";

/// A reply: the text, or the status with an OpenAI-shaped error body.
#[derive(Clone)]
enum Reply {
    Text(&'static str),
    /// The text with the request's bearer key appended (an echoing server).
    EchoKey(&'static str),
    Status(u16),
}

impl Respond for Reply {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let text = match self {
            Self::Status(s) => {
                return ResponseTemplate::new(*s).set_body_json(
                    json!({"error": {"message": "scripted failure", "type": "server_error"}}),
                );
            }
            Self::Text(t) => (*t).to_owned(),
            Self::EchoKey(t) => {
                let auth = request
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                format!("{t} {}", auth.strip_prefix("Bearer ").unwrap_or(auth))
            }
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
}

async fn server(reply: Reply) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(reply)
        .mount(&s)
        .await;
    s
}

async fn received(s: &MockServer) -> Vec<Request> {
    s.received_requests().await.unwrap_or_default()
}

/// A config file in a fresh temporary directory (removed on drop).
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ek-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ek.toml");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two providers on two servers, a chain of both, a router with a tier rule, a weighted router.
fn two_providers(primary: &MockServer, backup: &MockServer) -> ConfigFile {
    ConfigFile::new(&format!(
        r#"
# Two endpoints of one model family.
[providers.primary]
kind = "openai"
base_url = "{}/v1"
model = "m"
api_key_env = "PRIMARY_KEY"
price_in = 1.0
price_out = 2.0

[providers.backup]
base_url = "{}/v1"
model = "m-backup"
api_key_env = "BACKUP_KEY"
retries = 1
price_in = 3.0
price_out = 4.0

[failover.main]
providers = ["primary", "backup"]

[routers.cheap]
rules = [{{ when = "tier == 'best'", use = "backup" }}, {{ when = "prompt_tokens > 100000", use = "main" }}]
default = "primary"

[routers.spread]
weighted = [{{ use = "primary", weight = 3 }}, {{ use = "backup", weight = 1 }}]
"#,
        primary.uri(),
        backup.uri()
    ))
}

fn keys() -> Vec<(&'static str, String)> {
    vec![
        ("PRIMARY_KEY", PRIMARY_KEY.to_owned()),
        ("BACKUP_KEY", BACKUP_KEY.to_owned()),
    ]
}

fn assert_no_key(o: &Output) {
    for text in [stdout(o), stderr(o)] {
        for key in [PRIMARY_KEY, BACKUP_KEY] {
            assert!(!text.contains(key), "a key was printed:\n{text}");
            assert!(
                !text.contains(&key[8..]),
                "part of a key was printed:\n{text}"
            );
        }
    }
}

fn calls(cost: &Value) -> u64 {
    cost["llm_calls"].as_u64().unwrap()
}

#[tokio::test]
async fn failover_from_config_counts_every_call_per_provider() {
    let primary = server(Reply::Status(503)).await;
    let backup = server(Reply::EchoKey("answer from backup")).await;
    // The environment's endpoint must be ignored under --provider.
    let ignored = server(Reply::Text("wrong endpoint")).await;
    let cfg = two_providers(&primary, &backup);
    let mut env = keys();
    env.push(("EXECUTIONKIT_BASE_URL", format!("{}/v1", ignored.uri())));
    env.push(("EXECUTIONKIT_MODEL", "x".to_owned()));
    env.push(("EXECUTIONKIT_API_KEY", "sk-ignored-000000000000".to_owned()));
    let o = ek_env(
        &[
            "consensus",
            "q",
            "--samples",
            "3",
            "--max-retries",
            "0",
            "--config",
            cfg.path(),
            "--provider",
            "main",
            "--json",
        ],
        &env,
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_no_key(&o);
    let v = json_out(&o);
    assert_eq!(v["value"], "answer from backup [REDACTED]");
    let by = &v["metadata"]["cost_by_provider"];
    let (p, b) = (received(&primary).await, received(&backup).await);
    assert_eq!(calls(&by["primary"]), p.len() as u64, "{by}");
    assert_eq!(calls(&by["backup"]), b.len() as u64, "{by}");
    assert_eq!(calls(&v["cost"]), (p.len() + b.len()) as u64);
    assert_eq!((p.len(), b.len()), (3, 3));
    assert!(received(&ignored).await.is_empty());
    // Each server got its own key, and the backup was asked for its own model.
    for r in &p {
        assert_eq!(
            r.headers.get("authorization").unwrap().to_str().unwrap(),
            format!("Bearer {PRIMARY_KEY}")
        );
    }
    for r in &b {
        assert_eq!(
            r.headers.get("authorization").unwrap().to_str().unwrap(),
            format!("Bearer {BACKUP_KEY}")
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["model"], "m-backup");
    }
    // The prices of the file price each provider's model: 3 × (10 in, 5 out) at 1/2 and 3/4
    // USD per million.
    let usd = v["cost"]["usd"].as_f64().unwrap();
    assert!(
        (usd - 3.0 * (10.0 * 3.0 + 5.0 * 4.0) / 1e6).abs() < 1e-12,
        "{usd}"
    );
}

#[tokio::test]
async fn twenty_samples_under_max_calls_20_with_a_failing_first_provider() {
    let primary = server(Reply::Status(500)).await;
    let backup = server(Reply::Text("42")).await;
    let cfg = two_providers(&primary, &backup);
    let o = ek_env(
        &[
            "consensus",
            "q",
            "--samples",
            "20",
            "--max-calls",
            "20",
            "--max-concurrency",
            "4",
            "--config",
            cfg.path(),
            "--provider",
            "main",
            "--json",
        ],
        &keys(),
    )
    .await;
    assert_no_key(&o);
    let v = json_out(&o);
    let (p, b) = (
        received(&primary).await.len(),
        received(&backup).await.len(),
    );
    assert!(p + b <= 20, "the servers got {p} + {b} requests");
    // Every sample costs a failed primary call and a backup call: the budget runs out.
    assert_eq!(code(&o), 1, "{v}");
    let err = &v["error"];
    assert_eq!(err["kind"], "budget_exhausted", "{v}");
    // A call cancelled in flight when the budget ran out (at most the 4 in flight) counts once
    // its request was written, and is given back if it was not: every request a server received
    // is counted, and the counts add up.
    let by = &err["metadata"]["cost_by_provider"];
    let (cp, cb) = (calls(&by["primary"]), calls(&by["backup"]));
    assert!(
        p as u64 <= cp && cp <= p as u64 + 4,
        "{by}: primary got {p}"
    );
    assert!(b as u64 <= cb && cb <= b as u64 + 4, "{by}: backup got {b}");
    assert_eq!(calls(&err["cost"]), cp + cb);
    assert!(calls(&err["cost"]) <= 20, "{v}");
}

#[tokio::test]
async fn routers_and_step_providers_and_tiers() {
    let primary = server(Reply::Text("cheap")).await;
    let backup = server(Reply::Text("best")).await;
    let cfg = two_providers(&primary, &backup);
    // The default route, then `--tier best` takes the rule.
    let o = ek_env(
        &[
            "consensus",
            "q",
            "--samples",
            "2",
            "--config",
            cfg.path(),
            "--provider",
            "cheap",
            "--json",
        ],
        &keys(),
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json_out(&o)["value"], "cheap");
    let o = ek_env(
        &[
            "consensus",
            "q",
            "--samples",
            "2",
            "--tier",
            "best",
            "--config",
            cfg.path(),
            "--provider",
            "cheap",
            "--json",
        ],
        &keys(),
    )
    .await;
    let v = json_out(&o);
    assert_eq!(v["value"], "best");
    assert_eq!(calls(&v["metadata"]["cost_by_provider"]["backup"]), 2);
    let tiers: Vec<Value> = received(&backup)
        .await
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .collect();
    assert!(
        tiers.iter().all(|b| b.get("tier").is_none()),
        "a tier was sent"
    );
    assert_eq!(received(&primary).await.len(), 2);

    // A pipe: step 1 on the router's default, step 2 tagged `best`, step 3 on the backup by
    // name; the config file comes from EK_CONFIG.
    primary.reset().await;
    backup.reset().await;
    Mock::given(method("POST"))
        .respond_with(Reply::Text("cheap"))
        .mount(&primary)
        .await;
    Mock::given(method("POST"))
        .respond_with(Reply::Text("best"))
        .mount(&backup)
        .await;
    let mut env = keys();
    env.push(("EK_CONFIG", cfg.path().to_owned()));
    let o = ek_env(
        &[
            "pipe",
            "q",
            "--provider",
            "cheap",
            "--step",
            "consensus samples=3",
            "--step",
            "consensus samples=2 tier=best",
            "--step",
            "consensus samples=1 provider=primary",
            "--json",
        ],
        &env,
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "cheap");
    assert_eq!(received(&primary).await.len(), 4);
    assert_eq!(received(&backup).await.len(), 2);
    let steps = v["metadata"]["step_metadata"].as_array().unwrap();
    assert_eq!(calls(&steps[0]["cost_by_provider"]["primary"]), 3);
    assert_eq!(calls(&steps[1]["cost_by_provider"]["backup"]), 2);
    assert_eq!(calls(&steps[2]["cost_by_provider"]["primary"]), 1);

    // The weighted router: 3 to 1, counted at the servers.
    primary.reset().await;
    backup.reset().await;
    Mock::given(method("POST"))
        .respond_with(Reply::Text("a"))
        .mount(&primary)
        .await;
    Mock::given(method("POST"))
        .respond_with(Reply::Text("a"))
        .mount(&backup)
        .await;
    let o = ek_env(
        &[
            "consensus",
            "q",
            "--samples",
            "8",
            "--max-concurrency",
            "1",
            "--config",
            cfg.path(),
            "--provider",
            "spread",
            "--json",
        ],
        &keys(),
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        (
            received(&primary).await.len(),
            received(&backup).await.len()
        ),
        (6, 2)
    );
}

#[tokio::test]
async fn step_provider_beside_the_usual_endpoint() {
    let endpoint = server(Reply::Text("from the endpoint")).await;
    let backup = server(Reply::Text("from backup")).await;
    let cfg = two_providers(&endpoint, &backup);
    let mut env = keys();
    env.push(("EXECUTIONKIT_BASE_URL", format!("{}/v1", endpoint.uri())));
    env.push(("EXECUTIONKIT_MODEL", "test-model".to_owned()));
    let o = ek_env(
        &[
            "pipe",
            "q",
            "--config",
            cfg.path(),
            "--step",
            "consensus samples=1",
            "--step",
            "consensus samples=1 provider=backup",
            "--json",
        ],
        &env,
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "from backup");
    assert_eq!(received(&endpoint).await.len(), 1);
    assert_eq!(received(&backup).await.len(), 1);
}

#[tokio::test]
async fn anthropic_kind_from_config() {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "hello from claude"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 2}
        })))
        .mount(&s)
        .await;
    let cfg = ConfigFile::new(&format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"claude-test\"\napi_key_env = \"BACKUP_KEY\"\n",
        s.uri()
    ));
    let o = ek_env(
        &[
            "consensus",
            "q",
            "--samples",
            "1",
            "--config",
            cfg.path(),
            "--provider",
            "claude",
            "--json",
        ],
        &keys(),
    )
    .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["value"], "hello from claude");
    assert_eq!(v["cost"]["input_tokens"], 9);
    let r = &received(&s).await[0];
    assert_eq!(
        r.headers.get("x-api-key").unwrap().to_str().unwrap(),
        BACKUP_KEY
    );
    assert_no_key(&o);
}

/// `ek args` exits 2 with an `invalid_argument` whose message holds every needle, and no server
/// is asked anything.
async fn usage_error(
    args: &[&str],
    env: &[(&str, String)],
    needles: &[&str],
    servers: &[&MockServer],
) {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let o = ek_env(&all, env).await;
    assert_eq!(code(&o), 2, "{args:?}: {}", stdout(&o));
    assert_no_key(&o);
    let v = json_out(&o);
    assert_eq!(v["error"]["kind"], "invalid_argument", "{v}");
    assert_eq!(calls(&v["error"]["cost"]), 0);
    let msg = v["error"]["message"].as_str().unwrap();
    for n in needles {
        assert!(msg.contains(n), "{args:?}: `{n}` not in: {msg}");
    }
    for s in servers {
        assert!(received(s).await.is_empty(), "{args:?}: a request was sent");
    }
    // Without --json: the message on stderr, nothing on stdout.
    let o = ek_env(args, env).await;
    assert_eq!(code(&o), 2);
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains(needles[0]), "{}", stderr(&o));
}

#[tokio::test]
async fn config_mistakes_exit_2_naming_the_line() {
    let primary = server(Reply::Text("x")).await;
    let backup = server(Reply::Text("x")).await;
    let good = two_providers(&primary, &backup);
    let sv = [&primary, &backup];
    let k = keys();
    let g = good.path();

    // --provider with the endpoint flags, or without a file, or an unknown name.
    for flag in [
        ["--base-url", "http://127.0.0.1:9/v1"],
        ["--model", "m"],
        ["--api-key", PRIMARY_KEY],
    ] {
        let args = [
            "refine",
            "q",
            "--config",
            g,
            "--provider",
            "main",
            flag[0],
            flag[1],
        ];
        usage_error(&args, &k, &["drop", flag[0]], &sv).await;
    }
    usage_error(
        &["refine", "q", "--provider", "main"],
        &k,
        &["needs a config file", "EK_CONFIG"],
        &sv,
    )
    .await;
    usage_error(
        &["refine", "q", "--config", g, "--provider", "nope"],
        &k,
        &[
            "--provider `nope`",
            "primary",
            "main (failover)",
            "cheap, spread (routers)",
        ],
        &sv,
    )
    .await;
    usage_error(
        &["pipe", "q", "--step", "consensus provider=primary"],
        &k,
        &["--step 1", "needs a config file"],
        &sv,
    )
    .await;
    usage_error(
        &[
            "pipe",
            "q",
            "--config",
            g,
            "--step",
            "consensus provider=nope",
        ],
        &k,
        &["--step 1: provider `nope`"],
        &sv,
    )
    .await;
    // A key variable that is not set.
    usage_error(
        &["refine", "q", "--config", g, "--provider", "main"],
        &[("PRIMARY_KEY", PRIMARY_KEY.to_owned())],
        &[
            "line 11",
            "[providers.backup]",
            "`BACKUP_KEY`, which is not set",
        ],
        &sv,
    )
    .await;
    // --max-usd with an unpriced provider.
    let unpriced = ConfigFile::new(&format!(
        "[providers.a]\nbase_url = \"{}/v1\"\nmodel = \"m\"\n",
        primary.uri()
    ));
    usage_error(
        &[
            "refine",
            "q",
            "--config",
            unpriced.path(),
            "--provider",
            "a",
            "--max-usd",
            "1",
        ],
        &k,
        &["--max-usd needs --price-in"],
        &sv,
    )
    .await;

    // Mistakes in the file, each on a known line; the file is checked even without --provider.
    let cases: &[(&str, &[&str])] = &[
        (
            "[providers.a]\nmodel = \"m\"\nbogus = 1\n",
            &["ek.toml, line 3", "unknown field `bogus`"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\n\n\napi_key = \"sk-primary-0123456789abcdef\"\n",
            &["line 5", "`api_key` is not allowed", "api_key_env"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\napi_key_env = \"sk-primary-0123456789abcdef\"\n",
            &["line 3", "NAME of an environment variable"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\nretries = \"sk-primary-0123456789abcdef\"\n",
            &["line 3", "invalid type"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\n[failover.f]\nproviders = [\"a\", \"zz\"]\n",
            &["line 4", "`zz` is not a provider"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\n[routers.r]\nrules = [{ when = \"prompt_tokens < lots\", use = \"a\" }]\ndefault = \"a\"\n",
            &["line 4", "prompt_tokens < lots", "whole number"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\n[routers.r]\nrules = [{ when = \"tier == 'x'\", use = \"b\" }]\ndefault = \"a\"\n",
            &["line 4", "`b` is neither a provider nor a failover chain"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\n[routers.a]\ndefault = \"a\"\n",
            &["line 3", "already used"],
        ),
        (
            "[providers.a]\nkind = \"grpc\"\nmodel = \"m\"\n",
            &["line 2", "openai, anthropic"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\nprice_in = 1\n",
            &["line 3", "go together"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\nprice_in = -1\nprice_out = 1\n",
            &["line 3"],
        ),
        (
            "[providers.a]\nmodel = \"m\"\ntpm = 0\n",
            &["line 3", "tpm must be >= 1"],
        ),
        ("[plugins]\nx = 1\n", &["line 1", "unknown field `plugins`"]),
        // `[pipes]` (ek serve's named pipes) is checked whole too.
        ("[pipes]\nx = 1\n", &["line 2", "expected a sequence"]),
        (
            "[pipes]\nx = [\"consensus samplez=2\"]\n",
            &["line 2", "[pipes] x", "samplez"],
        ),
        ("[providers.a\n", &["line 1"]),
    ];
    for (text, needles) in cases {
        let f = ConfigFile::new(text);
        let mut needles = needles.to_vec();
        needles.insert(0, f.path());
        usage_error(&["refine", "q", "--config", f.path()], &k, &needles, &sv).await;
        let mut env = k.clone();
        env.push(("EK_CONFIG", f.path().to_owned()));
        usage_error(&["refine", "q"], &env, &needles, &sv).await;
    }
    usage_error(
        &["refine", "q", "--config", "/nonexistent/ek.toml"],
        &k,
        &["cannot read the config file /nonexistent/ek.toml"],
        &sv,
    )
    .await;
}

#[tokio::test]
async fn without_a_config_file_nothing_changes() {
    // The offline model, as always; an empty EK_CONFIG counts as unset.
    let o = ek_env(&["consensus", "q", "--json"], &[("EK_CONFIG", "")]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(json_out(&o)["metadata"].get("cost_by_provider").is_none());
}
