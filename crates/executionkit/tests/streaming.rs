//! Streaming through the budget (§9.5 and OVERRIDES.md): cost known once drained, the budget
//! reserved before dispatch, retries only before the first delta.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::ChatStream;
use executionkit::events::Event;
use executionkit::stream_completion;
use executionkit::{
    Budget, ChatRequest, Error, ErrorKind, LlmProvider, LlmResponse, Message, MockProvider, Result,
    RetryPolicy, RunContext, StreamEvent, TokenUsage,
};
use futures::StreamExt;

/// A streaming provider whose attempts follow a script, one list of items per attempt.
#[derive(Debug, Clone, Default)]
struct Scripted {
    attempts: Arc<Mutex<VecDeque<Vec<Result<StreamEvent>>>>>,
    calls: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(attempts: Vec<Vec<Result<StreamEvent>>>) -> Self {
        Self {
            attempts: Arc::new(Mutex::new(attempts.into())),
            calls: Arc::default(),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        Err(Error::new(ErrorKind::Permanent, "stream only"))
    }
    fn stream(&self, _request: ChatRequest) -> ChatStream {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let items = self
            .attempts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_default();
        Box::pin(futures::stream::iter(items))
    }
    fn supports_streaming(&self) -> bool {
        true
    }
    fn secret(&self) -> Option<&str> {
        Some("sk-scripted-secret-key")
    }
}

fn delta(s: &str) -> Result<StreamEvent> {
    Ok(StreamEvent::TextDelta(s.to_owned()))
}

fn finished(text: &str, i: u64, o: u64) -> Result<StreamEvent> {
    Ok(StreamEvent::Finished(
        LlmResponse::text(text).with_usage(i, o),
    ))
}

fn req() -> ChatRequest {
    ChatRequest::new(vec![Message::user("question")])
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries_count(3)
        .base_delay(Duration::ZERO)
}

async fn drain(s: &mut executionkit::StreamingResult) -> Vec<Result<String>> {
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.push(item);
    }
    out
}

#[tokio::test]
async fn cost_is_known_once_drained() {
    let p = MockProvider::new(["streamed answer"]);
    let mut s = stream_completion(Arc::new(p.clone()), req(), &RunContext::new())
        .await
        .unwrap();
    assert_eq!(s.cost(), TokenUsage::new(0, 0, 1));
    assert_eq!(s.metadata()["streaming"], true);
    assert!(s.response().is_none());
    let text: String = drain(&mut s)
        .await
        .into_iter()
        .map(|d| d.unwrap())
        .collect();
    assert_eq!(text, "streamed answer");
    assert_eq!(s.cost(), TokenUsage::new(0, 2, 1));
    assert_eq!(s.response().unwrap().content(), "streamed answer");
    assert!(p.last_call().unwrap().stream);
}

#[tokio::test]
async fn a_spent_budget_fails_before_the_provider_is_asked() {
    let p = MockProvider::new(["one"]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(1));
    let first = stream_completion(Arc::new(p.clone()), req(), &ctx)
        .await
        .unwrap();
    let r = first.collect_text().await.unwrap();
    assert_eq!(r.value, "one");
    let err = stream_completion(Arc::new(p.clone()), req(), &ctx)
        .await
        .unwrap_err();
    assert!(err.is_budget_exhausted());
    assert_eq!(err.metadata()["exhausted"], "llm_calls");
    assert_eq!(p.call_count(), 1);
}

#[tokio::test]
async fn output_tokens_are_reserved_and_returned() {
    let p = MockProvider::new(["a b c d"]);
    let ctx = RunContext::new().budget(Budget::new().max_output_tokens(10));
    let mut s = stream_completion(Arc::new(p.clone()), req().max_tokens(100), &ctx)
        .await
        .unwrap();
    // The whole remaining output budget is reserved and sent as max_tokens.
    assert_eq!(ctx.ledger().remaining().output_tokens, Some(0));
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first, "a");
    assert_eq!(p.last_call().unwrap().request.max_tokens, Some(10));
    drop(s);
    // Dropped mid-stream: the reservation came back, the call still counts.
    assert_eq!(ctx.ledger().remaining().output_tokens, Some(10));
    assert_eq!(ctx.ledger().spent().llm_calls, 1);

    let s = stream_completion(Arc::new(p), req().max_tokens(100), &ctx)
        .await
        .unwrap();
    let r = s.collect_text().await.unwrap();
    assert_eq!(r.cost.output_tokens, 4);
    assert_eq!(ctx.ledger().remaining().output_tokens, Some(6));
}

#[tokio::test]
async fn failures_before_the_first_delta_are_retried() {
    let p = Scripted::new(vec![
        vec![Err(Error::new(ErrorKind::Provider, "overloaded"))],
        vec![delta("o"), delta("k"), finished("ok", 3, 2)],
    ]);
    let (ctx, events) = {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let ctx = RunContext::new()
            .retry(fast_retry())
            .on_event(move |e| s.lock().unwrap().push(e.clone()));
        (ctx, seen)
    };
    let s = stream_completion(Arc::new(p.clone()), req(), &ctx)
        .await
        .unwrap();
    let r = s.collect_text().await.unwrap();
    assert_eq!(r.value, "ok");
    assert_eq!(r.cost, TokenUsage::new(3, 2, 2));
    assert_eq!(p.calls(), 2);
    let kinds: Vec<&str> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| match e {
            Event::CallStarted { attempt: 1, .. } => "start1",
            Event::CallRetried { .. } => "retried",
            Event::CallStarted { attempt: 2, .. } => "start2",
            Event::CallFinished { .. } => "finished",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["start1", "retried", "start2", "finished"]);

    // A stream that closes without a final response counts as a failure too.
    let p = Scripted::new(vec![vec![], vec![delta("fine"), finished("fine", 1, 1)]]);
    let s = stream_completion(
        Arc::new(p.clone()),
        req(),
        &RunContext::new().retry(fast_retry()),
    )
    .await
    .unwrap();
    assert_eq!(s.collect_text().await.unwrap().value, "fine");
    assert_eq!(p.calls(), 2);
}

#[tokio::test]
async fn no_retry_after_the_first_delta() {
    let p = Scripted::new(vec![
        vec![
            delta("He"),
            Err(Error::new(ErrorKind::Transport, "Transport failure: reset")),
        ],
        vec![delta("never"), finished("never", 1, 1)],
    ]);
    let mut s = stream_completion(
        Arc::new(p.clone()),
        req(),
        &RunContext::new().retry(fast_retry()),
    )
    .await
    .unwrap();
    let items = drain(&mut s).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].as_ref().unwrap(), "He");
    let err = items[1].as_ref().unwrap_err();
    assert!(err.is_transport());
    assert_eq!(err.cost().llm_calls, 1);
    assert_eq!(p.calls(), 1);
    assert!(s.response().is_none());
}

#[tokio::test]
async fn retries_are_bounded_by_the_policy_and_the_budget() {
    let boom = || vec![Err(Error::new(ErrorKind::Provider, "boom"))];
    let p = Scripted::new(vec![boom(), boom(), boom()]);
    let s = stream_completion(
        Arc::new(p.clone()),
        req(),
        &RunContext::new().retry(fast_retry().max_retries_count(1)),
    )
    .await
    .unwrap();
    let err = s.collect_text().await.unwrap_err();
    assert!(err.is_provider());
    assert_eq!(err.cost().llm_calls, 2);
    assert_eq!(p.calls(), 2);

    let p = Scripted::new(vec![boom(), boom()]);
    let ctx = RunContext::new()
        .retry(fast_retry())
        .budget(Budget::new().max_calls(1));
    let s = stream_completion(Arc::new(p.clone()), req(), &ctx)
        .await
        .unwrap();
    let err = s.collect_text().await.unwrap_err();
    assert!(err.is_budget_exhausted());
    assert!(err.message().contains("before retry dispatch"));
    assert_eq!(err.cost().llm_calls, 1);
    assert_eq!(p.calls(), 1);

    // Permanent errors are not retried.
    let p = Scripted::new(vec![
        vec![Err(Error::new(ErrorKind::Permanent, "bad request"))],
        vec![delta("x"), finished("x", 1, 1)],
    ]);
    let s = stream_completion(
        Arc::new(p.clone()),
        req(),
        &RunContext::new().retry(fast_retry()),
    )
    .await
    .unwrap();
    assert!(s.collect_text().await.unwrap_err().is_permanent());
    assert_eq!(p.calls(), 1);
}

#[tokio::test]
async fn stream_errors_never_carry_the_key() {
    let p = Scripted::new(vec![vec![Err(Error::new(
        ErrorKind::Permanent,
        "invalid key sk-scripted-secret-key",
    ))]]);
    let s = stream_completion(Arc::new(p), req(), &RunContext::new())
        .await
        .unwrap();
    let err = s.collect_text().await.unwrap_err();
    assert!(
        !err.message().contains("sk-scripted-secret-key"),
        "{}",
        err.message()
    );
    assert!(!format!("{err:?}").contains("sk-scripted-secret-key"));
}

#[derive(Debug)]
struct NoStream;

#[async_trait]
impl LlmProvider for NoStream {
    fn model(&self) -> &str {
        "plain"
    }
    async fn complete(&self, _request: &ChatRequest) -> Result<LlmResponse> {
        Ok(LlmResponse::text("x"))
    }
}

#[tokio::test]
async fn providers_that_cannot_stream_and_bad_requests_are_refused() {
    let err = stream_completion(Arc::new(NoStream), req(), &RunContext::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument());
    // Said in Rust terms: no type name of the Python package (`StreamingProvider`).
    assert!(err.message().contains("does not support streaming"));
    assert!(!err.message().contains("Provider"), "{}", err.message());

    let p = MockProvider::new(["x"]);
    let ctx = RunContext::new().budget(Budget::new().max_calls(5));
    let err = stream_completion(Arc::new(p.clone()), req().max_tokens(0), &ctx)
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument());
    assert_eq!(p.call_count(), 0);
    assert_eq!(ctx.ledger().spent().llm_calls, 0);
}
