//! Approval gates (reference §17): a callback asked before an action (a tool call, a workflow
//! step) that approves or denies it, optionally under a timeout.
//!
//! ```
//! use executionkit::{ApprovalGate, ApprovalRequest};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let gate = ApprovalGate::new(|req: ApprovalRequest| async move {
//!     Ok(req.subject != "rm")
//! });
//! assert!(gate.request(ApprovalRequest::new("tool_call", "ls")).await.unwrap().approved);
//! let err = gate.require(ApprovalRequest::new("tool_call", "rm")).await.unwrap_err();
//! assert!(err.is_approval_denied());
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::engine::RunContext;
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;

/// What is asked: an action (`"tool_call"`, `"workflow_step"`), its subject (a tool name, a
/// step name) and details as JSON.
///
/// ```
/// let r = executionkit::ApprovalRequest::new("tool_call", "search")
///     .with_metadata("tool_call_id", "tc1");
/// assert_eq!(r.metadata["tool_call_id"], "tc1");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct ApprovalRequest {
    /// The kind of action.
    pub action: String,
    /// What it acts on.
    pub subject: String,
    /// Details (for a tool call: `tool_call_id` and `arguments`).
    pub metadata: Map<String, Value>,
}

impl ApprovalRequest {
    /// A request with empty metadata.
    ///
    /// ```
    /// let r = executionkit::ApprovalRequest::new("tool_call", "search");
    /// assert_eq!((r.action.as_str(), r.subject.as_str()), ("tool_call", "search"));
    /// assert!(r.metadata.is_empty());
    /// ```
    pub fn new(action: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            subject: subject.into(),
            metadata: Map::new(),
        }
    }

    /// Adds one metadata entry.
    ///
    /// ```
    /// let r = executionkit::ApprovalRequest::new("tool_call", "search")
    ///     .with_metadata("arguments", serde_json::json!({"q": "rust"}));
    /// assert_eq!(r.metadata["arguments"]["q"], "rust");
    /// ```
    pub fn with_metadata(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }
}

/// The answer: approved or not, and why.
///
/// ```
/// use executionkit::ApprovalDecision;
/// assert!(ApprovalDecision::approve().approved);
/// assert_eq!(ApprovalDecision::deny("no").reason, "no");
/// let d: ApprovalDecision = false.into();
/// assert!(!d.approved && d.reason.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalDecision {
    /// `true` to let the action run.
    pub approved: bool,
    /// Why (may be empty).
    pub reason: String,
}

impl ApprovalDecision {
    /// Approved, no reason.
    ///
    /// ```
    /// let d = executionkit::ApprovalDecision::approve();
    /// assert!(d.approved && d.reason.is_empty());
    /// ```
    #[must_use]
    pub fn approve() -> Self {
        Self {
            approved: true,
            reason: String::new(),
        }
    }

    /// Denied with `reason`.
    ///
    /// ```
    /// let d = executionkit::ApprovalDecision::deny("outside working hours");
    /// assert!(!d.approved);
    /// assert_eq!(d.reason, "outside working hours");
    /// ```
    #[must_use]
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            approved: false,
            reason: reason.into(),
        }
    }
}

impl From<bool> for ApprovalDecision {
    fn from(approved: bool) -> Self {
        Self {
            approved,
            reason: String::new(),
        }
    }
}

/// What a gate does when its callback outlives the timeout.
///
/// ```
/// use std::time::Duration;
/// use executionkit::{ApprovalGate, ApprovalRequest, OnTimeout};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// assert_eq!(OnTimeout::default(), OnTimeout::Raise);
/// let never = || ApprovalGate::new(|_r| futures::future::pending::<executionkit::Result<bool>>());
/// let raise = never().timeout(Duration::from_millis(5), OnTimeout::Raise);
/// let err = raise.request(ApprovalRequest::new("a", "b")).await.unwrap_err();
/// assert!(err.is_approval_denied());
/// assert_eq!(err.metadata()["reason"], "timeout");
/// let deny = never().timeout(Duration::from_millis(5), OnTimeout::Deny);
/// assert!(!deny.request(ApprovalRequest::new("a", "b")).await.unwrap().approved);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// Fail with an `approval_denied` error naming the action and subject, its
    /// `metadata.reason` `"timeout"` (the default). Not a `timeout` error: that kind is retried,
    /// and nobody said yes.
    #[default]
    Raise,
    /// Deny the action.
    Deny,
    /// Approve the action: **fail-open**, a privilege-escalation risk; a warning is logged when
    /// a gate is built with it.
    Approve,
}

type Callback =
    dyn Fn(ApprovalRequest) -> BoxFuture<'static, Result<ApprovalDecision>> + Send + Sync;

/// Asks a callback whether an action may run. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use executionkit::{ApprovalGate, ApprovalRequest, OnTimeout};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let slow = ApprovalGate::new(|_req| async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok(true)
/// })
/// .timeout(Duration::from_millis(10), OnTimeout::Deny);
/// let d = slow.request(ApprovalRequest::new("delete", "file.txt")).await.unwrap();
/// assert!(!d.approved && d.reason.contains("timed out"));
/// # });
/// ```
#[derive(Clone)]
#[must_use]
pub struct ApprovalGate {
    callback: Arc<Callback>,
    timeout: Option<Duration>,
    on_timeout: OnTimeout,
}

impl fmt::Debug for ApprovalGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApprovalGate")
            .field("timeout", &self.timeout)
            .field("on_timeout", &self.on_timeout)
            .finish_non_exhaustive()
    }
}

impl ApprovalGate {
    /// A gate asking the async callback `f`, which returns a decision or a `bool` (or fails:
    /// the error propagates to whoever asked).
    ///
    /// ```
    /// let g = executionkit::ApprovalGate::new(|_r| async { Ok(true) });
    /// # let _ = g;
    /// ```
    pub fn new<F, Fut, D>(f: F) -> Self
    where
        F: Fn(ApprovalRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<D>> + Send + 'static,
        D: Into<ApprovalDecision>,
    {
        Self {
            callback: Arc::new(move |req| f(req).map(|r| r.map(Into::into)).boxed()),
            timeout: None,
            on_timeout: OnTimeout::Raise,
        }
    }

    /// A gate whose callback is blocking (e.g. a prompt on a terminal): it runs on Tokio's
    /// blocking pool, so it cannot stall the run nor defeat the timeout. A callback abandoned
    /// by a timeout keeps running on its thread.
    ///
    /// ```
    /// use executionkit::{ApprovalGate, ApprovalRequest};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let g = ApprovalGate::blocking(|r: ApprovalRequest| Ok(r.subject == "ok"));
    /// assert!(g.request(ApprovalRequest::new("tool_call", "ok")).await.unwrap().approved);
    /// # });
    /// ```
    pub fn blocking<F, D>(f: F) -> Self
    where
        F: Fn(ApprovalRequest) -> Result<D> + Send + Sync + 'static,
        D: Into<ApprovalDecision> + Send + 'static,
    {
        let f = Arc::new(f);
        Self::new(move |req| {
            let f = Arc::clone(&f);
            async move {
                if tokio::runtime::Handle::try_current().is_err() {
                    // No blocking pool to move to: ask on this thread.
                    return f(req).map(Into::into);
                }
                match tokio::task::spawn_blocking(move || f(req).map(Into::into)).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::new(
                        ErrorKind::ApprovalDenied,
                        "the approval callback panicked",
                    )),
                }
            }
        })
    }

    /// A gate that approves everything.
    ///
    /// ```
    /// # use executionkit::{ApprovalGate, ApprovalRequest};
    /// let d = futures::executor::block_on(ApprovalGate::allow_all().request(ApprovalRequest::new("a", "b")));
    /// assert!(d.unwrap().approved);
    /// ```
    pub fn allow_all() -> Self {
        Self::new(|_| async { Ok(ApprovalDecision::approve()) })
    }

    /// A gate that denies everything with `reason`.
    ///
    /// ```
    /// # use executionkit::{ApprovalGate, ApprovalRequest};
    /// let d = futures::executor::block_on(ApprovalGate::deny_all("not permitted").request(ApprovalRequest::new("a", "b")));
    /// assert_eq!(d.unwrap().reason, "not permitted");
    /// ```
    pub fn deny_all(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(move |_| {
            let d = ApprovalDecision::deny(reason.clone());
            async move { Ok(d) }
        })
    }

    /// Bounds the wait for the callback; `on_timeout` says what an expired wait means.
    /// [`OnTimeout::Approve`] is fail-open and logs a warning.
    ///
    /// ```
    /// use std::time::Duration;
    /// use executionkit::{ApprovalGate, OnTimeout};
    /// let g = ApprovalGate::allow_all().timeout(Duration::from_secs(5), OnTimeout::Raise);
    /// # let _ = g;
    /// ```
    pub fn timeout(mut self, timeout: Duration, on_timeout: OnTimeout) -> Self {
        if on_timeout == OnTimeout::Approve {
            tracing::warn!(
                target: "executionkit",
                "approval gate with on_timeout = approve is fail-open: an unanswered request is \
                 approved (privilege-escalation risk)"
            );
        }
        self.timeout = Some(timeout);
        self.on_timeout = on_timeout;
        self
    }

    /// Asks the callback. Its errors propagate; an expired timeout is handled per
    /// [`OnTimeout`] (for [`OnTimeout::Raise`], an `approval_denied` error with
    /// `metadata.reason = "timeout"` whose message names the timeout, action and subject).
    /// Needs a Tokio runtime when a timeout is set.
    ///
    /// ```
    /// use executionkit::{ApprovalDecision, ApprovalGate, ApprovalRequest};
    /// # futures::executor::block_on(async {
    /// let gate = ApprovalGate::new(|r: ApprovalRequest| async move {
    ///     Ok(if r.subject == "rm" { ApprovalDecision::deny("destructive") } else { ApprovalDecision::approve() })
    /// });
    /// assert!(gate.request(ApprovalRequest::new("tool_call", "ls")).await.unwrap().approved);
    /// let d = gate.request(ApprovalRequest::new("tool_call", "rm")).await.unwrap();
    /// assert_eq!(d.reason, "destructive");
    /// # });
    /// ```
    pub async fn request(&self, req: ApprovalRequest) -> Result<ApprovalDecision> {
        let Some(limit) = self.timeout else {
            return (self.callback)(req).await;
        };
        let (action, subject) = (req.action.clone(), req.subject.clone());
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid_argument(
                "timeout",
                format!(
                    "approval for {action} {subject}: a gate with a timeout needs a Tokio runtime"
                ),
            ));
        }
        match tokio::time::timeout(limit, (self.callback)(req)).await {
            Ok(r) => r,
            Err(_) => {
                let secs = limit.as_secs_f64();
                match self.on_timeout {
                    OnTimeout::Approve => Ok(ApprovalDecision {
                        approved: true,
                        reason: format!("approval timed out after {secs}s and was auto-approved"),
                    }),
                    OnTimeout::Deny => Ok(ApprovalDecision::deny(format!(
                        "approval timed out after {secs}s and was auto-denied"
                    ))),
                    OnTimeout::Raise => Err(Error::new(
                        ErrorKind::ApprovalDenied,
                        format!("approval for {action} {subject} timed out after {secs}s"),
                    )
                    .with_metadata("reason", "timeout")),
                }
            }
        }
    }

    /// Asks, and fails with `approval_denied` (`Approval denied for <action> <subject>[:
    /// <reason>]`) unless approved. A timeout under [`OnTimeout::Raise`] passes through
    /// unchanged (already `approval_denied`, `metadata.reason = "timeout"`).
    ///
    /// ```
    /// # use executionkit::{ApprovalGate, ApprovalRequest};
    /// let e = futures::executor::block_on(ApprovalGate::deny_all("nope").require(ApprovalRequest::new("delete", "f"))).unwrap_err();
    /// assert_eq!(e.message(), "Approval denied for delete f: nope");
    /// ```
    pub async fn require(&self, req: ApprovalRequest) -> Result<()> {
        let (action, subject) = (req.action.clone(), req.subject.clone());
        let d = self.request(req).await?;
        required(&action, &subject, &d)
    }

    /// [`ApprovalGate::require`] under a run: the request and its outcome are events of `ctx`
    /// ([`observe_request`], [`observe_outcome`]).
    pub(crate) async fn require_in(&self, req: ApprovalRequest, ctx: &RunContext) -> Result<()> {
        let (action, subject) = (req.action.clone(), req.subject.clone());
        observe_request(ctx, &action, &subject);
        let r = self.request(req).await;
        observe_outcome(ctx, &action, &subject, &r);
        required(&action, &subject, &r?)
    }
}

/// `Ok` when `d` approves, else the `approval_denied` error of [`ApprovalGate::require`].
fn required(action: &str, subject: &str, d: &ApprovalDecision) -> Result<()> {
    if d.approved {
        return Ok(());
    }
    let mut msg = format!("Approval denied for {action} {subject}");
    if !d.reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(&d.reason);
    }
    Err(Error::new(ErrorKind::ApprovalDenied, msg))
}

/// A gate is about to be asked: [`Event::ApprovalRequested`] and a `tracing` event (a span
/// event in an exported trace). Neither carries the request's metadata (tool arguments).
pub(crate) fn observe_request(ctx: &RunContext, action: &str, subject: &str) {
    tracing::info!(
        target: "executionkit",
        action,
        subject,
        "approval requested"
    );
    if ctx.events().is_some() {
        ctx.emit(&Event::ApprovalRequested {
            action: action.to_owned(),
            subject: subject.to_owned(),
        });
    }
}

/// What a gate answered: [`Event::ApprovalGranted`] or [`Event::ApprovalDenied`] (a denial, or
/// a failure other than cancellation, whose kind is the reason), and a `tracing` event.
pub(crate) fn observe_outcome(
    ctx: &RunContext,
    action: &str,
    subject: &str,
    outcome: &Result<ApprovalDecision>,
) {
    let (approved, reason) = match outcome {
        Ok(d) => (d.approved, d.reason.clone()),
        Err(e) if e.is_cancelled() => return,
        Err(e) => (false, format!("the gate failed: {}", e.kind())),
    };
    if approved {
        tracing::info!(
            target: "executionkit",
            action,
            subject,
            "approval granted"
        );
    } else {
        tracing::info!(
            target: "executionkit",
            action,
            subject,
            reason = reason.as_str(),
            "approval denied"
        );
    }
    if ctx.events().is_none() {
        return;
    }
    let (action, subject) = (action.to_owned(), subject.to_owned());
    ctx.emit(&if approved {
        Event::ApprovalGranted { action, subject }
    } else {
        Event::ApprovalDenied {
            action,
            subject,
            reason,
        }
    });
}
