//! Properties of failover chains and routers under random faults (issue #11's promise, issue
//! #15's request-count invariant): whatever the providers answer, the run never spends more
//! calls than its budget, every call a provider received was reserved in the ledger, and the
//! per-provider shares add up to the whole spend, on results and on errors alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::prelude::*;
use executionkit::{ChatRequest, ErrorKind, Failover, LlmResponse, RetryPolicy, Router};
use proptest::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Answer,
    ServerError,
    BadRequest,
    RateLimited,
    Transport,
}

/// A provider that answers from a script (then answers for good) and counts what it received.
#[derive(Debug)]
struct Scripted {
    script: Mutex<VecDeque<Outcome>>,
    received: AtomicU64,
}

impl Scripted {
    fn new(script: Vec<Outcome>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            script: Mutex::new(script.into()),
            received: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "m"
    }

    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        self.received.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        let next = self.script.lock().unwrap().pop_front();
        match next.unwrap_or(Outcome::Answer) {
            Outcome::Answer => Ok(LlmResponse::text("yes").with_usage(2, 1)),
            Outcome::ServerError => {
                Err(Error::new(ErrorKind::Provider, "HTTP 500").with_http_status(500))
            }
            Outcome::BadRequest => {
                Err(Error::new(ErrorKind::Permanent, "HTTP 400").with_http_status(400))
            }
            Outcome::RateLimited => Err(Error::rate_limited("HTTP 429")
                .with_http_status(429)
                .with_retry_after(Duration::from_secs(3600))),
            Outcome::Transport => Err(Error::new(ErrorKind::Transport, "connection reset")),
        }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Answer),
        3 => Just(Outcome::ServerError),
        1 => Just(Outcome::BadRequest),
        1 => Just(Outcome::RateLimited),
        2 => Just(Outcome::Transport),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    scripts: Vec<Vec<Outcome>>,
    retries: Vec<u32>,
    samples: usize,
    concurrency: usize,
    max_calls: u64,
    router: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (1_usize..=3)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::collection::vec(outcome(), 0..6), n),
                prop::collection::vec(0_u32..=2, n),
                1_usize..=6,
                1_usize..=3,
                1_u64..=12,
                any::<bool>(),
            )
        })
        .prop_map(
            |(scripts, retries, samples, concurrency, max_calls, router)| Case {
                scripts,
                retries,
                samples,
                concurrency,
                max_calls,
                router,
            },
        )
}

fn shares(meta: &serde_json::Map<String, Value>) -> Vec<(String, u64)> {
    meta.get("cost_by_provider")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v["llm_calls"].as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

async fn run(c: Case) {
    let providers: Vec<_> = c.scripts.iter().map(|s| Scripted::new(s.clone())).collect();
    let mut b = Failover::builder();
    for (i, p) in providers.iter().enumerate() {
        b = b.provider_with_retries(format!("p{i}"), std::sync::Arc::clone(p), c.retries[i]);
    }
    let chain = b.build().unwrap();
    let provider: Box<dyn LlmProvider> = if c.router {
        Box::new(Router::round_robin(vec![("chain", chain)]).unwrap())
    } else {
        Box::new(chain)
    };
    let ctx = RunContext::new()
        .retry(
            RetryPolicy::new()
                .base_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(2)),
        )
        .budget(Budget::new().max_calls(c.max_calls));
    let outcome = Consensus::new()
        .samples(c.samples)
        .max_concurrency(c.concurrency)
        .run(&*provider, "q", &ctx)
        .await;
    let (cost, meta) = match &outcome {
        Ok(r) => (r.cost, r.metadata.clone()),
        Err(e) => (e.cost(), e.metadata().clone()),
    };
    let received: u64 = providers
        .iter()
        .map(|p| p.received.load(Ordering::SeqCst))
        .sum();
    let spent = ctx.ledger().spent().llm_calls;
    // The budget holds, and everything a provider received was reserved first.
    assert!(
        spent <= c.max_calls,
        "{spent} calls > {} ({c:?})",
        c.max_calls
    );
    assert!(
        received <= spent,
        "{received} received > {spent} reserved ({c:?})"
    );
    // The run reports the whole spend, and the providers' shares add up to it.
    assert_eq!(cost.llm_calls, spent, "{c:?} {outcome:?}");
    let shares = shares(&meta);
    let total: u64 = shares.iter().map(|(_, n)| n).sum();
    assert_eq!(total, spent, "{shares:?} ({c:?})");
    for (name, n) in &shares {
        let i: usize = name[1..].parse().unwrap();
        let got = providers[i].received.load(Ordering::SeqCst);
        assert!(got <= *n, "{name} received {got} > its share {n} ({c:?})");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn calls_are_counted_once_on_the_provider_they_went_to(c in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(c));
    }
}
