//! Consensus fan-out: all-or-nothing failure carrying the whole spend, budget trips that cancel
//! the other samples, and cancellation observed at the provider and at a real TCP server
//! (127.0.0.1 only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::{
    Budget, ChatRequest, Consensus, Error, ErrorKind, LlmProvider, LlmResponse, MockProvider,
    OpenAiProvider, Result, RetryPolicy, RunContext, TokenUsage,
};
use futures::FutureExt;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ctx() -> RunContext {
    RunContext::new().retry(RetryPolicy::none())
}

/// What the k-th call (0-based) of a [`Scripted`] provider does.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Answer at once with this usage.
    Answer(u64, u64),
    /// Yield once, then fail.
    Fail,
    /// Never answer (until dropped).
    Hang,
}

/// A provider acting by call order, counting calls started and calls dropped unfinished.
#[derive(Debug)]
struct Scripted {
    acts: Vec<Act>,
    started: AtomicUsize,
    dropped: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(acts: &[Act]) -> Self {
        Self {
            acts: acts.to_vec(),
            started: AtomicUsize::new(0),
            dropped: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Counts a drop unless disarmed.
struct Guard(Arc<AtomicUsize>, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        let k = self.started.fetch_add(1, Ordering::SeqCst);
        let mut guard = Guard(self.dropped.clone(), true);
        let act = self.acts.get(k).copied().unwrap_or(Act::Hang);
        let out = match act {
            Act::Answer(i, o) => Ok(LlmResponse::text("ok").with_usage(i, o)),
            Act::Fail => {
                tokio::task::yield_now().await;
                Err(Error::new(ErrorKind::Permanent, "sample failed"))
            }
            Act::Hang => futures::future::pending().await,
        };
        guard.1 = false;
        out
    }
}

#[tokio::test]
async fn first_failure_cancels_the_rest_and_carries_the_whole_spend() {
    use Act::{Answer, Fail, Hang};
    let p = Scripted::new(&[Answer(10, 5), Answer(10, 5), Fail, Hang, Hang]);
    let e = Consensus::new()
        .samples(5)
        .run(&p, "q", &ctx())
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    // One error, whose cost is the whole fan-out's: two answers' tokens, five calls sent.
    assert_eq!(e.cost(), TokenUsage::new(20, 10, 5));
    assert_eq!(p.started(), 5);
    // The two hanging samples were cancelled.
    assert_eq!(p.dropped(), 2);
}

#[tokio::test]
async fn budget_trip_mid_fanout_cancels_the_others() {
    use Act::{Answer, Hang};
    let p = Scripted::new(&[Answer(7, 3), Hang, Hang, Hang, Hang]);
    let ctx = ctx().budget(Budget::new().max_calls(3));
    let e = Consensus::new()
        .samples(5)
        .run(&p, "q", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    assert_eq!(e.metadata()["exhausted"], "llm_calls");
    assert_eq!(e.cost(), TokenUsage::new(7, 3, 3));
    assert_eq!(p.started(), 3, "no sample is sent past the limit");
    assert_eq!(p.dropped(), 2, "the in-flight samples were cancelled");
    assert_eq!(ctx.ledger().spent(), TokenUsage::new(7, 3, 3));
}

#[tokio::test]
async fn call_limit_below_samples_caps_requests_mock() {
    for limit in 1..5 {
        let p = MockProvider::new(["a"]);
        let ctx = ctx().budget(Budget::new().max_calls(limit));
        let e = Consensus::new()
            .samples(5)
            .run(&p, "q", &ctx)
            .await
            .unwrap_err();
        assert!(e.is_budget_exhausted());
        assert_eq!(p.call_count() as u64, limit);
        assert_eq!(e.cost().llm_calls, limit);
    }
}

#[tokio::test]
async fn dropping_the_future_cancels_every_sample() {
    let p = Scripted::new(&[Act::Hang; 5]);
    let c = ctx();
    let consensus = Consensus::new().samples(5);
    let fut = consensus.run(&p, "q", &c);
    // One poll sends all five samples; dropping the future then cancels them.
    assert!(fut.now_or_never().is_none());
    assert_eq!(p.started(), 5);
    assert_eq!(p.dropped(), 5);
}

fn ok_body() -> serde_json::Value {
    json!({
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    })
}

async fn wiremock_server(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body())
                .set_delay(delay),
        )
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn call_limit_below_samples_caps_requests_at_the_server() {
    // Sanity: with room for every sample, the server sees all five.
    let server = wiremock_server(Duration::ZERO).await;
    let p = OpenAiProvider::new(format!("{}/v1", server.uri()), "m").unwrap();
    let r = Consensus::new()
        .samples(5)
        .run(&p, "q", &ctx())
        .await
        .unwrap();
    assert_eq!(r.value, "Paris");
    assert_eq!(r.cost, TokenUsage::new(15, 5, 5));
    assert_eq!(server.received_requests().await.unwrap().len(), 5);

    for delay in [Duration::ZERO, Duration::from_millis(200)] {
        for limit in [1_u64, 2, 4] {
            let server = wiremock_server(delay).await;
            let p = OpenAiProvider::new(format!("{}/v1", server.uri()), "m").unwrap();
            let ctx = ctx().budget(Budget::new().max_calls(limit));
            let e = Consensus::new()
                .samples(5)
                .run(&p, "q", &ctx)
                .await
                .unwrap_err();
            assert!(e.is_budget_exhausted(), "{e}");
            // The samples in flight when the budget tripped are cancelled: those whose request
            // was written count, those still connecting are given back.
            let spent = e.cost().llm_calls;
            assert!(spent <= limit, "{spent} calls with a limit of {limit}");
            assert_eq!(ctx.ledger().spent().llm_calls, spent);
            // Give any request still on the wire time to land before counting.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let seen = server.received_requests().await.unwrap().len() as u64;
            assert!(
                seen <= spent,
                "server saw {seen} requests, {spent} calls counted (limit {limit})"
            );
        }
    }
}

/// A server that reads requests and never answers; it reports each request's arrival and each
/// connection's close.
async fn black_hole() -> (
    String,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen_tx = seen_tx.clone();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0_u8; 64 * 1024];
                let mut got = Vec::new();
                let mut reported = false;
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = closed_tx.send(());
                            return;
                        }
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if !reported && got.windows(4).any(|w| w == b"\r\n\r\n") {
                                reported = true;
                                let _ = seen_tx.send(());
                            }
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), seen_rx, closed_rx)
}

#[tokio::test]
async fn dropping_consensus_closes_in_flight_requests_at_the_server() {
    let (url, mut seen, mut closed) = black_hole().await;
    let p = OpenAiProvider::builder(url, "m")
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let c = ctx();
    let consensus = Consensus::new().samples(3).max_concurrency(3);
    let mut fut = Box::pin(consensus.run(&p, "q", &c));
    let mut arrived = 0;
    while arrived < 3 {
        tokio::select! {
            r = &mut fut => panic!("consensus finished against a silent server: {r:?}"),
            Some(()) = seen.recv() => arrived += 1,
        }
    }
    assert!(
        closed.try_recv().is_err(),
        "no connection closed before the drop"
    );
    drop(fut);
    // The drop closes all three connections (the bound only stops a broken test from hanging).
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), closed.recv())
            .await
            .expect("a connection stayed open after the consensus future was dropped")
            .unwrap();
    }
}
