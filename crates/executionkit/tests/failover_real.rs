//! `Failover` and `Router` (issue #11) against real loopback servers instead of wiremock: llmock
//! (PyPI `llmock==0.2.2`, scripted into a 429 or 500 storm, or left answering) and llama.cpp's
//! `llama-server` serving SmolLM2-135M. What this file proves: every request each real server
//! received in a run (counted by a [`CountingRelay`] in front of it) is a call in that run's
//! `metadata.cost_by_provider`, on the provider it went to, for results and errors alike; the
//! shares add up to the run's `cost.llm_calls`; a storm moves the call to the real model; a 429
//! with `Retry-After` cools the storming provider down for the next call; a budget of 20 calls
//! holds across both servers; round-robin and weighted routers split the requests as promised.
//!
//! Start the servers with `eval "$(scripts/start-llmock.sh)"; eval "$(scripts/start-llama.sh)";
//! export EK_LLMOCK_URL EK_LLAMA_URL EK_LLAMA_KEY`. Without them every test here says it is
//! skipping and passes, unless `EK_REQUIRE_SERVERS=1`, in which case it fails.
//!
//! llmock holds one global script: the tests take turns (`LLMOCK`), and each storm only matches
//! the model name of its own case (`realfail-…`), so no other request meets it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use executionkit::prelude::*;
use executionkit::{Failover, OpenAiProvider, RetryPolicy, Router};
use serde_json::{Map, Value, json};

use common::counting::CountingRelay;
use common::tls::addr_of;

const LLAMA_MODEL: &str = "smollm2";
const LLMOCK_KEY: &str = "sk-llmock-realfail-0123456789";

/// llmock holds one global script: one test at a time.
static LLMOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The two servers' URLs (llama-server's ends in `/v1`).
struct Servers {
    llmock: String,
    llama: String,
    llama_key: String,
    http: reqwest::Client,
}

/// Both servers from the environment, or `None` (the test skips) when one is missing.
fn servers() -> Option<Servers> {
    let llmock = common::server_url("EK_LLMOCK_URL", "scripts/start-llmock.sh")?;
    let (llama, llama_key) = common::llama()?;
    Some(Servers {
        llmock,
        llama,
        llama_key,
        http: reqwest::Client::new(),
    })
}

impl Servers {
    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) {
        let mut r = self.http.request(method, format!("{}{path}", self.llmock));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Forgets llmock's queued behaviours and journal.
    async fn reset(&self) {
        self.control(reqwest::Method::POST, "/_llmock/reset", Some(json!({})))
            .await;
    }

    /// Every llmock request for `model` answers `status` (429s with `Retry-After: 30`), for
    /// good.
    async fn storm(&self, status: u16, model: &str) {
        let mut fail = json!({"type": "fail", "status": status, "times": null,
            "match": {"model": model}});
        if status == 429 {
            fail["retry_after"] = json!(30);
        }
        self.control(
            reqwest::Method::POST,
            "/_llmock/scenario",
            Some(json!({ "behaviors": [fail] })),
        )
        .await;
    }

    /// Drops the storms (llmock answers again).
    async fn calm(&self) {
        self.control(reqwest::Method::DELETE, "/_llmock/scenario", None)
            .await;
    }

    /// How many requests for `model` llmock's own journal holds.
    async fn llmock_journal(&self, model: &str) -> usize {
        let v: Value = self
            .http
            .get(format!("{}/_llmock/requests", self.llmock))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["body"]["model"] == model)
            .count()
    }

    /// A relay in front of llmock and a provider (asking for `model`) through it.
    async fn llmock_via_relay(&self, model: &str) -> (CountingRelay, OpenAiProvider) {
        let relay = CountingRelay::start(addr_of(&self.llmock)).await;
        let p = OpenAiProvider::builder(format!("{}/v1", relay.url()), model)
            .api_key(LLMOCK_KEY)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        (relay, p)
    }

    /// A relay in front of llama-server and a provider with `key` through it.
    async fn llama_via_relay(&self, key: &str) -> (CountingRelay, OpenAiProvider) {
        let relay = CountingRelay::start(addr_of(&self.llama)).await;
        let p = OpenAiProvider::builder(
            format!("{}{}", relay.url(), path_of(&self.llama)),
            LLAMA_MODEL,
        )
        .api_key(key)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
        (relay, p)
    }
}

/// The path of `http://host:port/path` (`/v1` for llama-server's URL).
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("", |i| &rest[i..])
}

/// Retries that wait 1 to 20 ms, so a storm never sleeps long.
fn fast() -> RunContext {
    RunContext::new().retry(
        RetryPolicy::new()
            .max_retries_count(2)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(20)),
    )
}

/// One short, deterministic sample from the real model.
fn one_sample() -> Consensus {
    Consensus::new().samples(1).max_tokens(8).temperature(0.0)
}

/// `cost_by_provider[name].llm_calls` (0 when the provider has no entry).
fn calls(meta: &Map<String, Value>, name: &str) -> u64 {
    meta.get("cost_by_provider")
        .and_then(|by| by[name]["llm_calls"].as_u64())
        .unwrap_or(0)
}

/// The `llm_calls` of every provider in `cost_by_provider`, added up.
fn calls_sum(meta: &Map<String, Value>) -> u64 {
    meta["cost_by_provider"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["llm_calls"].as_u64().unwrap())
        .sum()
}

fn n(relay: &CountingRelay) -> u64 {
    relay.requests() as u64
}

/// A storm (500, or 429 with `Retry-After`) on llmock moves the call to llama-server, and each
/// server received exactly the calls the run reports for it.
#[tokio::test]
async fn a_storm_on_llmock_moves_to_llama_server_and_every_request_is_a_reported_call() {
    let Some(s) = servers() else { return };
    let _turn = LLMOCK.lock().await;
    s.reset().await;

    // 500 storm: llmock's entry is retried twice (3 requests), then the real model answers.
    let model = "realfail-storm-500";
    s.storm(500, model).await;
    let (mock_relay, mock) = s.llmock_via_relay(model).await;
    let (llama_relay, llama) = s.llama_via_relay(&s.llama_key).await;
    let chain = Failover::builder()
        .provider_with_retries("llmock", mock, 2)
        .provider("llama", llama)
        .build()
        .unwrap();
    let r = one_sample()
        .run(&chain, "500 storm: name a colour.", &fast())
        .await
        .unwrap();
    assert!(!r.value.trim().is_empty(), "{r:?}");
    assert!(
        !r.value.contains("LLMock"),
        "the answer came from llmock: {r:?}"
    );
    assert_eq!((n(&mock_relay), n(&llama_relay)), (3, 1));
    assert_eq!(
        calls(&r.metadata, "llmock"),
        n(&mock_relay),
        "{:?}",
        r.metadata
    );
    assert_eq!(
        calls(&r.metadata, "llama"),
        n(&llama_relay),
        "{:?}",
        r.metadata
    );
    assert_eq!(calls_sum(&r.metadata), r.cost.llm_calls);
    assert_eq!(r.cost.llm_calls, 4);
    assert!(r.metadata["cost_by_provider"]["llama"]["output_tokens"].as_u64() > Some(0));
    assert_eq!(s.llmock_journal(model).await as u64, n(&mock_relay));

    // 429 storm with Retry-After: 30 s. The first call meets one 429 (a cool-down is not
    // retried on the entry) and moves on; the second call skips llmock altogether.
    let model = "realfail-storm-429";
    s.storm(429, model).await;
    let (mock_relay, mock) = s.llmock_via_relay(model).await;
    let (llama_relay, llama) = s.llama_via_relay(&s.llama_key).await;
    let chain = Failover::builder()
        .provider_with_retries("llmock", mock, 2)
        .provider("llama", llama)
        .build()
        .unwrap();
    let first = one_sample()
        .run(&chain, "429 storm: name a fruit.", &fast())
        .await
        .unwrap();
    assert!(!first.value.trim().is_empty(), "{first:?}");
    assert_eq!((n(&mock_relay), n(&llama_relay)), (1, 1));
    assert_eq!(calls(&first.metadata, "llmock"), 1, "{:?}", first.metadata);
    assert_eq!(calls(&first.metadata, "llama"), 1, "{:?}", first.metadata);
    assert_eq!(calls_sum(&first.metadata), first.cost.llm_calls);
    assert_eq!(first.cost.llm_calls, 2);
    let second = one_sample()
        .run(&chain, "429 storm again: name a fruit.", &fast())
        .await
        .unwrap();
    assert!(!second.value.trim().is_empty(), "{second:?}");
    assert_eq!(n(&mock_relay), 1, "a cooling provider must not be asked");
    assert_eq!(n(&llama_relay), 2);
    assert_eq!(
        calls(&second.metadata, "llmock"),
        0,
        "{:?}",
        second.metadata
    );
    assert_eq!(calls(&second.metadata, "llama"), 1, "{:?}", second.metadata);
    assert_eq!(calls_sum(&second.metadata), second.cost.llm_calls);
    assert_eq!(second.cost.llm_calls, 1);
    assert_eq!(s.llmock_journal(model).await, 1);

    // A chain that ends in an error: the 500 storm, then llama-server with a wrong key (401).
    // The error carries both providers' calls, one per request each server received.
    let model = "realfail-storm-500";
    let wrong = "sk-wrong-key-for-llama-0123456789";
    let (mock_relay, mock) = s.llmock_via_relay(model).await;
    let (llama_relay, llama) = s.llama_via_relay(wrong).await;
    let chain = Failover::builder()
        .provider("llmock", mock)
        .provider("llama", llama)
        .build()
        .unwrap();
    let e = one_sample()
        .run(&chain, "500 storm, then 401: name a tree.", &fast())
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(401), "{e:?}");
    assert_eq!((n(&mock_relay), n(&llama_relay)), (1, 1));
    assert_eq!(calls(e.metadata(), "llmock"), n(&mock_relay), "{e:?}");
    assert_eq!(calls(e.metadata(), "llama"), n(&llama_relay), "{e:?}");
    assert_eq!(calls_sum(e.metadata()), e.cost().llm_calls);
    assert_eq!(e.cost().llm_calls, 2);
    for text in [e.to_string(), format!("{e:?}"), e.to_json().to_string()] {
        assert!(!text.contains(wrong), "{text}");
    }

    s.calm().await;
}

/// 20 samples under 20 calls, the first provider storming: never more than 20 requests reach
/// the two servers together, never more than 20 calls are reported, and the providers' shares
/// add up to the total.
#[tokio::test]
async fn a_budget_of_20_calls_holds_across_llmock_and_llama_server() {
    let Some(s) = servers() else { return };
    let _turn = LLMOCK.lock().await;
    s.reset().await;
    for status in [500, 429] {
        let model = format!("realfail-budget-{status}");
        s.storm(status, &model).await;
        let (mock_relay, mock) = s.llmock_via_relay(&model).await;
        let (llama_relay, llama) = s.llama_via_relay(&s.llama_key).await;
        let chain = Failover::builder()
            .provider("llmock", mock)
            .provider("llama", llama)
            .build()
            .unwrap();
        let ctx = fast().budget(Budget::new().max_calls(20));
        let outcome = Consensus::new()
            .samples(20)
            .max_concurrency(4)
            .max_tokens(8)
            .run(
                &chain,
                &format!("budget under a {status} storm: say yes."),
                &ctx,
            )
            .await;
        // Let requests cancelled in flight finish passing the relays before counting them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (meta, total) = match &outcome {
            Ok(r) => (r.metadata.clone(), r.cost.llm_calls),
            Err(e) => (e.metadata().clone(), e.cost().llm_calls),
        };
        let (at_mock, at_llama) = (n(&mock_relay), n(&llama_relay));
        println!(
            "{status} storm: requests llmock {at_mock}, llama {at_llama}; reported {meta:?}",
            meta = meta.get("cost_by_provider")
        );
        assert!(
            at_mock + at_llama <= 20,
            "{status}: {at_mock} + {at_llama} requests"
        );
        assert!(total <= 20, "{status}: {total} calls reported");
        assert_eq!(calls_sum(&meta), total, "{status}: {meta:?}");
        // Every request a server received was a reserved call on its provider (a call
        // cancelled before it was sent is reserved but never reaches the server).
        assert!(
            calls(&meta, "llmock") >= at_mock,
            "{status}: {at_mock} {meta:?}"
        );
        assert!(
            calls(&meta, "llama") >= at_llama,
            "{status}: {at_llama} {meta:?}"
        );
        assert!(
            at_mock >= 1 && at_llama >= 1,
            "{status}: {at_mock} {at_llama}"
        );
        // Every sample needs a call on llama-server and the storm costs at least one more, so
        // 20 calls cannot carry 20 samples.
        let e = outcome.unwrap_err();
        assert!(e.is_budget_exhausted(), "{status}: {e:?}");
        assert_eq!(total, 20, "{status}");
    }
    s.calm().await;
}

/// Round-robin and weighted (3:1) routers over llmock (answering) and llama-server: the
/// requests each server received follow the split, and match the calls reported for it.
#[tokio::test]
async fn routers_split_real_requests_as_promised() {
    let Some(s) = servers() else { return };
    let _turn = LLMOCK.lock().await;
    s.reset().await;
    for (what, weights, expected) in [
        ("round-robin", None, (4, 4)),
        ("weighted 3:1", Some((3, 1)), (6, 2)),
    ] {
        let (mock_relay, mock) = s.llmock_via_relay("realfail-router").await;
        let (llama_relay, llama) = s.llama_via_relay(&s.llama_key).await;
        let router = match weights {
            None => Router::round_robin(vec![("llmock", mock), ("llama", llama)]).unwrap(),
            Some((a, b)) => {
                Router::weighted(vec![("llmock", mock, a), ("llama", llama, b)]).unwrap()
            }
        };
        let r = Consensus::new()
            .samples(8)
            .max_concurrency(1)
            .max_tokens(8)
            .run(&router, &format!("{what}: name an animal."), &fast())
            .await
            .unwrap();
        assert_eq!((n(&mock_relay), n(&llama_relay)), expected, "{what}");
        assert_eq!(
            calls(&r.metadata, "llmock"),
            expected.0,
            "{what}: {:?}",
            r.metadata
        );
        assert_eq!(
            calls(&r.metadata, "llama"),
            expected.1,
            "{what}: {:?}",
            r.metadata
        );
        assert_eq!(calls_sum(&r.metadata), r.cost.llm_calls, "{what}");
        assert_eq!(r.cost.llm_calls, 8, "{what}");
    }
}
