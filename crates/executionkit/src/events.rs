//! Typed events of a run: calls started, finished, retried and failed, with tokens and the
//! budget left; tool calls; the budget running out; approvals asked, granted and denied. Subscribe with [`RunContext::on_event`](crate::RunContext::on_event); the `ek`
//! progress bar is one such subscriber. Events never carry a secret: no key, no message text.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::usage::TokenUsage;

/// What remains of the run's budget (`None` for an absent limit).
///
/// ```
/// let ctx = executionkit::RunContext::new().budget(executionkit::Budget::new().max_calls(3));
/// let left = ctx.ledger().remaining();
/// assert_eq!((left.llm_calls, left.output_tokens), (Some(3), None));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Remaining {
    /// Input tokens left.
    pub input_tokens: Option<u64>,
    /// Output tokens left (not yet spent or reserved).
    pub output_tokens: Option<u64>,
    /// Calls left.
    pub llm_calls: Option<u64>,
    /// Dollars left.
    pub usd: Option<f64>,
}

/// One event of a run. Every attempt of a call is a call with its own number; a retried call
/// gives `CallStarted`, `CallRetried` (with the wait), then `CallStarted` of the next attempt.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use executionkit::{ChatRequest, Message, MockProvider, RunContext, CostTracker, events::Event};
/// # futures::executor::block_on(async {
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let ctx = RunContext::new().on_event(move |e| s.lock().unwrap().push(e.clone()));
/// let p = MockProvider::new(["hi"]);
/// ctx.complete(&p, ChatRequest::new(vec![Message::user("q")]), &CostTracker::new()).await.unwrap();
/// let seen = seen.lock().unwrap();
/// assert!(matches!(seen[0], Event::CallStarted { call: 1, attempt: 1, .. }));
/// assert!(matches!(seen[1], Event::CallFinished { call: 1, .. }));
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A call was reserved and is about to be sent.
    CallStarted {
        /// Run-unique call number (1-based; every attempt is a call).
        call: u64,
        /// 1 for the first attempt, 2 for the first retry, …
        attempt: u32,
        /// The model asked.
        model: String,
    },
    /// A call succeeded.
    CallFinished {
        /// The call number.
        call: u64,
        /// Its usage.
        usage: TokenUsage,
        /// Its first choice's finish reason.
        finish_reason: Option<String>,
        /// Everything the run spent so far.
        spent: TokenUsage,
        /// What the budget has left.
        remaining: Remaining,
        /// The output tokens the server reported beyond this call's grant (the `max_tokens` it
        /// was sent, times its choices); `None` when it stayed within. The usage above is as
        /// reported either way.
        usage_over_grant: Option<u64>,
    },
    /// A call failed and will be retried after `delay`.
    CallRetried {
        /// The call number that failed.
        call: u64,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// Why it failed.
        kind: ErrorKind,
    },
    /// A call failed for good (no retry left, or not retryable), or the budget refused it.
    CallFailed {
        /// The call number (0 when the budget refused to reserve one).
        call: u64,
        /// Why.
        kind: ErrorKind,
    },
    /// A tool loop is about to run (or ask approval for) one tool call.
    ToolCallStarted {
        /// The tool the model named.
        tool_name: String,
        /// The call's id.
        tool_call_id: String,
        /// The arguments, each value `"[redacted]"` unless the loop was told otherwise.
        arguments: serde_json::Map<String, serde_json::Value>,
    },
    /// A tool call was answered (executed, failed, or blocked).
    ToolCallFinished {
        /// The tool the model named.
        tool_name: String,
        /// The call's id.
        tool_call_id: String,
        /// `true` when an approval gate denied it.
        blocked: bool,
    },
    /// The budget refused a call: one of its limits is reached. A [`Event::CallFailed`] with
    /// kind `budget_exhausted` follows.
    BudgetExhausted {
        /// The limit reached: `"input_tokens"`, `"output_tokens"`, `"llm_calls"` or `"usd"`.
        exhausted: String,
        /// Everything the run spent so far.
        spent: TokenUsage,
        /// What the budget has left.
        remaining: Remaining,
    },
    /// An approval gate is asked (a tool call of a ReAct loop, a workflow or plan step).
    ApprovalRequested {
        /// What is to be done (`"tool_call"`, `"workflow_step"`, …).
        action: String,
        /// On what (the tool's or the step's name).
        subject: String,
    },
    /// The gate approved.
    ApprovalGranted {
        /// The request's action.
        action: String,
        /// The request's subject.
        subject: String,
    },
    /// The gate denied, timed out under a denying policy, or failed.
    ApprovalDenied {
        /// The request's action.
        action: String,
        /// The request's subject.
        subject: String,
        /// The gate's reason (empty when it gave none), or why asking failed.
        reason: String,
    },
}

/// A subscriber to [`Event`]s; cheap to clone.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use executionkit::events::{Event, EventSink};
/// let seen = Arc::new(Mutex::new(0));
/// let s = seen.clone();
/// let sink = EventSink::new(move |_e: &Event| *s.lock().unwrap() += 1);
/// sink.emit(&Event::CallFailed { call: 1, kind: executionkit::ErrorKind::Timeout });
/// assert_eq!(*seen.lock().unwrap(), 1);
/// ```
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(&Event) + Send + Sync>);

impl EventSink {
    /// Wraps a callback. It runs on the task that made the call: keep it short.
    ///
    /// ```
    /// let sink = executionkit::events::EventSink::new(|e| eprintln!("{e:?}"));
    /// # let _ = sink;
    /// ```
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Delivers one event.
    ///
    /// ```
    /// use executionkit::{ErrorKind, events::{Event, EventSink}};
    /// EventSink::new(|e| assert!(matches!(e, Event::CallFailed { .. })))
    ///     .emit(&Event::CallFailed { call: 1, kind: ErrorKind::Timeout });
    /// ```
    pub fn emit(&self, event: &Event) {
        (self.0)(event);
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSink")
    }
}
