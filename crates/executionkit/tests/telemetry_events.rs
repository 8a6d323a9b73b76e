//! Observability: every LLM call runs in a `tracing` span named `llm.call` carrying the
//! OpenTelemetry GenAI attributes; typed events arrive in order (retries with their delay); and
//! no API key reaches an event, a span field or a log line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use executionkit::CostTracker;
use executionkit::events::Event;
use executionkit::telemetry::{
    ERROR_TYPE, GEN_AI_OPERATION_NAME, GEN_AI_REQUEST_MAX_TOKENS, GEN_AI_REQUEST_MODEL,
    GEN_AI_REQUEST_TEMPERATURE, GEN_AI_RESPONSE_FINISH_REASONS, GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL, GEN_AI_USAGE_INPUT_TOKENS, GEN_AI_USAGE_OUTPUT_TOKENS, SPAN_LLM_CALL,
};
use executionkit::{
    ChatRequest, Error, ErrorKind, LlmProvider, LlmResponse, Message, MockProvider, RetryPolicy,
    RunContext, StreamEvent,
};
use futures::StreamExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

// ---------------------------------------------------------------------------------------------
// A capturing tracing layer

#[derive(Debug, Clone, Default)]
struct CapturedSpan {
    name: String,
    fields: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Captured {
    spans: Vec<(u64, CapturedSpan)>,
    events: Vec<BTreeMap<String, String>>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut span = CapturedSpan {
            name: attrs.metadata().name().to_owned(),
            ..CapturedSpan::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        self.0.lock().unwrap().spans.push((id.into_u64(), span));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut c = self.0.lock().unwrap();
        if let Some((_, span)) = c.spans.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().events.push(fields);
    }
}

impl Capture {
    fn llm_spans(&self) -> Vec<CapturedSpan> {
        self.0
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|(_, s)| s.name == SPAN_LLM_CALL)
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn everything(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }
}

/// A `fmt` log writer into a buffer, to check the log lines too.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a capturing subscriber (plus a TRACE-level log formatter into a buffer) for the
/// current thread.
/// Tests that install a scoped subscriber run one at a time: tracing caches each callsite's
/// interest across every live dispatcher, and a callsite first hit while another test's
/// subscriber was being dropped could be cached as "never" (a 1-in-40 flake seen in CI).
static SERIAL: Mutex<()> = Mutex::new(());

/// The scoped subscriber and the lock that keeps these tests apart; both end when dropped.
struct CaptureGuard {
    _subscriber: tracing::subscriber::DefaultGuard,
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn capture() -> (Capture, LogBuf, CaptureGuard) {
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cap = Capture::default();
    let log = LogBuf::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::registry().with(cap.clone()).with(
        tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL),
    );
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    (
        cap,
        log,
        CaptureGuard {
            _subscriber: guard,
            _serial: serial,
        },
    )
}

fn recording(ctx: RunContext) -> (RunContext, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let ctx = ctx.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    (ctx, events)
}

/// Fails with the scripted errors, then answers "ok"; reports `secret` as its key.
#[derive(Debug, Default)]
struct Flaky {
    errors: Mutex<VecDeque<Error>>,
    calls: AtomicUsize,
    secret: Option<String>,
}

#[async_trait]
impl LlmProvider for Flaky {
    fn model(&self) -> &str {
        "flaky"
    }
    async fn complete(&self, _: &ChatRequest) -> executionkit::Result<LlmResponse> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.errors.lock().unwrap().pop_front() {
            Some(e) => Err(e),
            None => Ok(LlmResponse::text("ok").with_usage(4, 1)),
        }
    }
    fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn llm_call_span_carries_the_gen_ai_attributes() {
    let (cap, _log, _guard) = capture();
    let mut reply = LlmResponse::text("hi").with_usage(3, 2);
    reply.model = Some("mock-v1".into());
    reply.id = Some("resp-1".into());
    let p = MockProvider::new([reply]);
    let req = ChatRequest::new(vec![Message::user("q")])
        .temperature(0.2)
        .max_tokens(50);
    RunContext::new()
        .complete(&p, req, &CostTracker::new())
        .await
        .unwrap();
    let spans = cap.llm_spans();
    assert_eq!(spans.len(), 1);
    let f = &spans[0].fields;
    assert_eq!(f[GEN_AI_OPERATION_NAME], "chat");
    assert_eq!(f[GEN_AI_REQUEST_MODEL], "mock");
    assert_eq!(f[GEN_AI_REQUEST_TEMPERATURE], "0.2");
    assert_eq!(f[GEN_AI_REQUEST_MAX_TOKENS], "50");
    assert_eq!(f[GEN_AI_RESPONSE_FINISH_REASONS], r#"["stop"]"#);
    assert_eq!(f[GEN_AI_USAGE_INPUT_TOKENS], "3");
    assert_eq!(f[GEN_AI_USAGE_OUTPUT_TOKENS], "2");
    assert_eq!(f[GEN_AI_RESPONSE_MODEL], "mock-v1");
    assert_eq!(f[GEN_AI_RESPONSE_ID], "resp-1");
    assert_eq!(f["attempt"], "1");
    assert!(!f.contains_key(ERROR_TYPE));
}

#[tokio::test]
async fn a_streamed_call_has_its_span_too() {
    let (cap, _log, _guard) = capture();
    let p = MockProvider::new([LlmResponse::text("one two").with_usage(5, 2)]);
    let ctx = RunContext::new();
    let t = CostTracker::new();
    let s = ctx
        .stream(&p, ChatRequest::new(vec![Message::user("q")]), &t)
        .await
        .unwrap();
    let items: Vec<_> = s.collect().await;
    assert!(matches!(items.last(), Some(Ok(StreamEvent::Finished(_)))));
    let spans = cap.llm_spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].fields[GEN_AI_USAGE_INPUT_TOKENS], "5");
    assert_eq!(spans[0].fields[GEN_AI_USAGE_OUTPUT_TOKENS], "2");
}

#[tokio::test(start_paused = true)]
async fn retries_give_ordered_events_with_their_delay_and_a_span_per_attempt() {
    let (cap, _log, _guard) = capture();
    let p = Flaky {
        errors: Mutex::new(
            [
                Error::rate_limited("HTTP 429").with_retry_after(Duration::from_secs(2)),
                Error::new(ErrorKind::Timeout, "read timed out"),
            ]
            .into(),
        ),
        ..Flaky::default()
    };
    let policy = RetryPolicy::new().base_delay(Duration::ZERO);
    let (ctx, events) = recording(RunContext::new().retry(policy));
    let r = ctx
        .complete(
            &p,
            ChatRequest::new(vec![Message::user("q")]),
            &CostTracker::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.content(), "ok");
    let ev = events.lock().unwrap().clone();
    assert_eq!(ev.len(), 6, "{ev:#?}");
    assert!(matches!(
        ev[0],
        Event::CallStarted {
            call: 1,
            attempt: 1,
            ..
        }
    ));
    assert!(matches!(
        ev[1],
        Event::CallRetried { call: 1, attempt: 1, delay, kind: ErrorKind::RateLimited }
            if delay == Duration::from_secs(2)
    ));
    assert!(matches!(
        ev[2],
        Event::CallStarted {
            call: 2,
            attempt: 2,
            ..
        }
    ));
    assert!(matches!(
        ev[3],
        Event::CallRetried { call: 2, attempt: 2, delay, kind: ErrorKind::Timeout }
            if delay == Duration::ZERO
    ));
    assert!(matches!(
        ev[4],
        Event::CallStarted {
            call: 3,
            attempt: 3,
            ..
        }
    ));
    match &ev[5] {
        Event::CallFinished {
            call,
            spent,
            remaining,
            ..
        } => {
            assert_eq!(*call, 3);
            assert_eq!(spent.llm_calls, 3);
            assert_eq!(remaining.llm_calls, None);
        }
        other => panic!("{other:?}"),
    }
    let spans = cap.llm_spans();
    let attempts: Vec<&str> = spans.iter().map(|s| s.fields["attempt"].as_str()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(spans[0].fields[ERROR_TYPE], "rate_limited");
    assert_eq!(spans[1].fields[ERROR_TYPE], "timeout");
    assert_eq!(spans[2].fields[GEN_AI_USAGE_INPUT_TOKENS], "4");
}

#[tokio::test]
async fn a_failed_call_ends_with_call_failed() {
    // Under a capture too, so it never races the others on the llm.call callsite's interest.
    let (_cap, _log, _guard) = capture();
    let p = Flaky {
        errors: Mutex::new([Error::new(ErrorKind::Permanent, "HTTP 400")].into()),
        ..Flaky::default()
    };
    let (ctx, events) = recording(RunContext::new());
    let e = ctx
        .complete(
            &p,
            ChatRequest::new(vec![Message::user("q")]),
            &CostTracker::new(),
        )
        .await
        .unwrap_err();
    assert!(e.is_permanent());
    let ev = events.lock().unwrap().clone();
    assert!(matches!(ev[0], Event::CallStarted { call: 1, .. }));
    assert!(matches!(
        ev[1],
        Event::CallFailed {
            call: 1,
            kind: ErrorKind::Permanent
        }
    ));
    assert_eq!(ev.len(), 2);
}

#[tokio::test]
async fn no_api_key_in_any_event_field_or_log_line() {
    const KEY: &str = "sk-live-0123456789abcdefSECRET";
    let (cap, log, _guard) = capture();
    let p = Flaky {
        errors: Mutex::new(
            [
                Error::new(
                    ErrorKind::Provider,
                    format!("HTTP 500: upstream rejected Authorization: Bearer {KEY}"),
                ),
                Error::new(
                    ErrorKind::Permanent,
                    format!("HTTP 401: Incorrect API key provided: {KEY}"),
                )
                .with_metadata("raw", format!("{{\"key\": \"{KEY}\"}}"))
                .with_http_status(401),
            ]
            .into(),
        ),
        secret: Some(KEY.to_owned()),
        ..Flaky::default()
    };
    let (ctx, events) =
        recording(RunContext::new().retry(RetryPolicy::new().base_delay(Duration::ZERO)));
    let e = ctx
        .complete(
            &p,
            ChatRequest::new(vec![Message::user("q")]),
            &CostTracker::new(),
        )
        .await
        .unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.http_status(), Some(401));
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("llm.call"), "the log saw the spans: {log}");
    for (what, text) in [
        ("events", format!("{:?}", events.lock().unwrap())),
        ("spans and tracing events", cap.everything()),
        ("log", log),
        ("error display", e.to_string()),
        ("error debug", format!("{e:?}")),
        ("error json", e.to_json().to_string()),
    ] {
        assert!(!text.contains(KEY), "{what} leaked the key: {text}");
        assert!(!text.contains("SECRET"), "{what} leaked the key: {text}");
    }
    // The mock's own Debug masks its key.
    let m = MockProvider::new(["x"]).with_secret(KEY);
    assert!(!format!("{m:?}").contains("SECRET"));
}

#[tokio::test]
async fn a_budget_refusal_is_budget_exhausted_then_call_failed() {
    let (ctx, events) =
        recording(RunContext::new().budget(executionkit::Budget::new().max_calls(1)));
    let p = MockProvider::new(["a", "b"]);
    let t = CostTracker::new();
    ctx.complete(&p, ChatRequest::new(vec![Message::user("q")]), &t)
        .await
        .unwrap();
    let e = ctx
        .complete(&p, ChatRequest::new(vec![Message::user("q")]), &t)
        .await
        .unwrap_err();
    assert!(e.is_budget_exhausted());
    let ev = events.lock().unwrap().clone();
    assert_eq!(ev.len(), 4, "{ev:?}");
    match &ev[2] {
        Event::BudgetExhausted {
            exhausted,
            spent,
            remaining,
        } => {
            assert_eq!(exhausted, "llm_calls");
            assert_eq!(spent.llm_calls, 1);
            assert_eq!(remaining.llm_calls, Some(0));
        }
        other => panic!("expected BudgetExhausted, got {other:?}"),
    }
    assert!(matches!(
        ev[3],
        Event::CallFailed {
            call: 0,
            kind: ErrorKind::BudgetExhausted
        }
    ));
}

#[tokio::test]
async fn a_failed_call_that_is_not_the_budget_gives_no_budget_event() {
    let (ctx, events) = recording(RunContext::new().retry(RetryPolicy::none()));
    let p = Flaky {
        errors: Mutex::new([Error::new(ErrorKind::Permanent, "no")].into()),
        ..Flaky::default()
    };
    let _ = ctx
        .complete(
            &p,
            ChatRequest::new(vec![Message::user("q")]),
            &CostTracker::new(),
        )
        .await
        .unwrap_err();
    let ev = events.lock().unwrap().clone();
    assert!(
        !ev.iter()
            .any(|e| matches!(e, Event::BudgetExhausted { .. })),
        "{ev:?}"
    );
}

fn approvals(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::ApprovalRequested { action, subject } => Some(format!("? {action} {subject}")),
            Event::ApprovalGranted { action, subject } => Some(format!("+ {action} {subject}")),
            Event::ApprovalDenied {
                action,
                subject,
                reason,
            } => Some(format!("- {action} {subject}: {reason}")),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn react_tool_approvals_are_requested_granted_and_denied_events() {
    use executionkit::{ApprovalDecision, ApprovalGate, ApprovalRequest, Choice, ToolCall};
    use serde_json::{Value, json};
    let round = |name: &str, id: &str| LlmResponse {
        choices: vec![Choice {
            content: String::new(),
            tool_calls: vec![ToolCall::new(id, name, json!({"text": "x"}))],
            finish_reason: Some("tool_calls".into()),
            logprobs: None,
        }],
        ..LlmResponse::default()
    };
    let tool = |name: &str| {
        executionkit::Tool::new(
            name,
            "a tool",
            json!({"type": "object"}),
            |_args: serde_json::Map<String, Value>| async move { Ok("done".to_owned()) },
        )
    };
    let gate = ApprovalGate::new(|req: ApprovalRequest| async move {
        match req.subject.as_str() {
            "ls" => Ok(ApprovalDecision::approve()),
            "rm" => Ok(ApprovalDecision::deny("destructive")),
            _ => Err(Error::new(ErrorKind::Provider, "gate broke")),
        }
    });
    let p = MockProvider::new([
        round("ls", "t1"),
        round("rm", "t2"),
        round("cp", "t3"),
        LlmResponse::text("fine"),
    ]);
    let (ctx, events) = recording(RunContext::new());
    let _ = executionkit::ReactLoop::new()
        .tools(vec![tool("ls"), tool("rm"), tool("cp")])
        .approval_gate(gate)
        .run(&p, "go", &ctx)
        .await
        .unwrap();
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        approvals(&ev),
        [
            "? tool_call ls",
            "+ tool_call ls",
            "? tool_call rm",
            "- tool_call rm: destructive",
            "? tool_call cp",
            "- tool_call cp: the gate failed: provider",
        ]
    );
    // Each approval sits between its tool call's start and finish.
    let at = |f: &dyn Fn(&Event) -> bool| ev.iter().position(f).unwrap();
    let started =
        at(&|e| matches!(e, Event::ToolCallStarted { tool_name, .. } if tool_name == "rm"));
    let denied = at(&|e| matches!(e, Event::ApprovalDenied { subject, .. } if subject == "rm"));
    let finished = at(
        &|e| matches!(e, Event::ToolCallFinished { tool_name, blocked: true, .. } if tool_name == "rm"),
    );
    assert!(started < denied && denied < finished, "{ev:?}");
}

#[tokio::test]
async fn workflow_step_approvals_are_events() {
    use executionkit::{ApprovalGate, ApprovalRequest, Consensus, Step, Workflow};
    let gate = ApprovalGate::new(|req: ApprovalRequest| async move { Ok(req.subject == "a") });
    let wf = Workflow::new()
        .step(Step::new("a", Consensus::new().samples(1)))
        .step(Step::new("b", Consensus::new().samples(1)).after(["a"]))
        .approval(gate);
    let (ctx, events) = recording(RunContext::new());
    let e = wf
        .run(&MockProvider::new(["x"]), "t", &ctx)
        .await
        .unwrap_err();
    assert!(e.is_approval_denied());
    assert_eq!(
        approvals(&events.lock().unwrap()),
        [
            "? workflow_step a",
            "+ workflow_step a",
            "? workflow_step b",
            "- workflow_step b: ",
        ]
    );
}
