//! The one error type of the library.
//!
//! Every error has a [`kind`](Error::kind) from a closed set, a message that reads like help,
//! the spend so far ([`cost`](Error::cost), [`usd`](Error::usd)) and JSON
//! [`metadata`](Error::metadata). Messages that carry server or transport text are redacted
//! (see [`redact`](crate::redact::redact)), and every error a pattern returns has had the
//! provider's key removed from its message and metadata ([`Error::redacted_with`]).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::usage::TokenUsage;

/// `Result<T, executionkit::Error>`.
///
/// ```
/// fn half(n: u32) -> executionkit::Result<u32> {
///     if n % 2 == 0 {
///         Ok(n / 2)
///     } else {
///         Err(executionkit::Error::invalid_argument("n", format!("n must be even, got {n}")))
///     }
/// }
/// assert_eq!(half(4).unwrap(), 2);
/// assert!(half(3).unwrap_err().is_invalid_argument());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as one of a closed set. [`ErrorKind::as_str`] gives the name used by
/// `ek --json`.
///
/// ```
/// use executionkit::ErrorKind;
/// assert_eq!(ErrorKind::BudgetExhausted.as_str(), "budget_exhausted");
/// assert!(ErrorKind::Transport.is_retryable());
/// assert!(!ErrorKind::Permanent.is_retryable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A caller's argument was invalid; nothing was sent.
    InvalidArgument,
    /// A limit of the run's budget was reached.
    BudgetExhausted,
    /// HTTP 429 (retryable, honours `Retry-After`).
    RateLimited,
    /// A request the server will never accept (400, 401, 403, 404, 405, 413, 422, quota).
    Permanent,
    /// Any other server failure or malformed reply (retryable).
    Provider,
    /// The connection failed (retryable).
    Transport,
    /// A connect, request or stream-idle timeout (retryable).
    Timeout,
    /// A unanimous vote was not unanimous.
    ConsensusFailed,
    /// A loop ran out of iterations without an answer.
    MaxIterations,
    /// A model reply could not be parsed (judge score, JSON output).
    Parse,
    /// An approval gate said no.
    ApprovalDenied,
    /// The run was cancelled.
    Cancelled,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    ///
    /// ```
    /// assert_eq!(executionkit::ErrorKind::ALL.len(), 12);
    /// ```
    pub const ALL: [Self; 12] = [
        Self::InvalidArgument,
        Self::BudgetExhausted,
        Self::RateLimited,
        Self::Permanent,
        Self::Provider,
        Self::Transport,
        Self::Timeout,
        Self::ConsensusFailed,
        Self::MaxIterations,
        Self::Parse,
        Self::ApprovalDenied,
        Self::Cancelled,
    ];

    /// The snake_case name (`"rate_limited"`, …), as printed by `ek --json`.
    ///
    /// ```
    /// assert_eq!(executionkit::ErrorKind::InvalidArgument.as_str(), "invalid_argument");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::BudgetExhausted => "budget_exhausted",
            Self::RateLimited => "rate_limited",
            Self::Permanent => "permanent",
            Self::Provider => "provider",
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::ConsensusFailed => "consensus_failed",
            Self::MaxIterations => "max_iterations",
            Self::Parse => "parse",
            Self::ApprovalDenied => "approval_denied",
            Self::Cancelled => "cancelled",
        }
    }

    /// `true` for the kinds the default retry policy retries: rate_limited, provider,
    /// transport, timeout.
    ///
    /// ```
    /// assert!(executionkit::ErrorKind::RateLimited.is_retryable());
    /// ```
    #[must_use]
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Provider | Self::Transport | Self::Timeout
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible operation in executionkit.
///
/// ```
/// use executionkit::{Error, ErrorKind, TokenUsage};
/// let e = Error::new(ErrorKind::Provider, "boom").with_cost(TokenUsage::new(3, 2, 1));
/// assert!(e.is_provider());
/// assert_eq!(e.cost().llm_calls, 1);
/// assert_eq!(e.to_string(), "boom");
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    cost: TokenUsage,
    usd: Option<f64>,
    metadata: Map<String, Value>,
    http_status: Option<u16>,
    retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

macro_rules! predicates {
    ($($(#[$doc:meta])* $name:ident => $kind:ident;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(&self) -> bool {
                self.inner.kind == ErrorKind::$kind
            }
        )*
    };
}

impl Error {
    /// An error of `kind` with `message` (used as given: redact server text first).
    ///
    /// ```
    /// let e = executionkit::Error::new(executionkit::ErrorKind::Parse, "no number");
    /// assert!(e.is_parse());
    /// ```
    #[must_use]
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                cost: TokenUsage::default(),
                usd: None,
                metadata: Map::new(),
                http_status: None,
                retry_after: None,
                source: None,
            }),
        }
    }

    /// An `invalid_argument` error naming `argument` (also in `metadata.argument`).
    ///
    /// ```
    /// let e = executionkit::Error::invalid_argument("samples", "samples must be >= 1, got 0");
    /// assert!(e.is_invalid_argument());
    /// assert_eq!(e.metadata()["argument"], "samples");
    /// ```
    #[must_use]
    pub fn invalid_argument(argument: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message).with_metadata("argument", argument)
    }

    /// A `rate_limited` error. Its `Retry-After` starts at 1 s, the reference's default when
    /// the server sends none; override it with [`with_retry_after`](Self::with_retry_after).
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = executionkit::Error::rate_limited("Rate limited (HTTP 429)");
    /// assert!(e.is_rate_limited() && e.is_retryable());
    /// assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    /// ```
    #[must_use]
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RateLimited, message).with_retry_after(Duration::from_secs(1))
    }

    /// A `cancelled` error.
    ///
    /// ```
    /// assert!(executionkit::Error::cancelled().is_cancelled());
    /// ```
    #[must_use]
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "the run was cancelled")
    }

    /// The kind of failure.
    ///
    /// ```
    /// use executionkit::{Error, ErrorKind};
    /// assert_eq!(Error::new(ErrorKind::Timeout, "t").kind(), ErrorKind::Timeout);
    /// ```
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message (without the kind).
    ///
    /// ```
    /// assert_eq!(executionkit::Error::cancelled().message(), "the run was cancelled");
    /// ```
    #[must_use]
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// What was spent up to the failure.
    ///
    /// ```
    /// assert!(executionkit::Error::cancelled().cost().is_zero());
    /// ```
    #[must_use]
    pub fn cost(&self) -> TokenUsage {
        self.inner.cost
    }

    /// Money spent up to the failure, when prices are known.
    ///
    /// ```
    /// assert_eq!(executionkit::Error::cancelled().usd(), None);
    /// ```
    #[must_use]
    pub fn usd(&self) -> Option<f64> {
        self.inner.usd
    }

    /// Extra facts as JSON: `budget` and `exhausted` for budget errors, `http_status` and
    /// `retry_after_s` for HTTP failures, `step_costs` from pipe, …
    ///
    /// ```
    /// let e = executionkit::Error::cancelled().with_metadata("k", 1);
    /// assert_eq!(e.metadata()["k"], 1);
    /// ```
    #[must_use]
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.inner.metadata
    }

    /// The HTTP status of the reply that failed, if any.
    ///
    /// ```
    /// use executionkit::{Error, ErrorKind};
    /// assert_eq!(Error::new(ErrorKind::Permanent, "x").with_http_status(401).http_status(), Some(401));
    /// ```
    #[must_use]
    pub fn http_status(&self) -> Option<u16> {
        self.inner.http_status
    }

    /// The server's `Retry-After` (rate-limited errors).
    ///
    /// ```
    /// use std::time::Duration;
    /// use executionkit::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(Duration::from_secs(3));
    /// assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    /// ```
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// `true` when the default retry policy would retry this error.
    ///
    /// ```
    /// assert!(!executionkit::Error::cancelled().is_retryable());
    /// ```
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    predicates! {
        /// `kind() == InvalidArgument`.
        ///
        /// ```
        /// assert!(executionkit::Error::invalid_argument("x", "bad x").is_invalid_argument());
        /// ```
        is_invalid_argument => InvalidArgument;
        /// `kind() == BudgetExhausted`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_budget_exhausted());
        /// ```
        is_budget_exhausted => BudgetExhausted;
        /// `kind() == RateLimited`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_rate_limited());
        /// ```
        is_rate_limited => RateLimited;
        /// `kind() == Permanent`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_permanent());
        /// ```
        is_permanent => Permanent;
        /// `kind() == Provider`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_provider());
        /// ```
        is_provider => Provider;
        /// `kind() == Transport`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_transport());
        /// ```
        is_transport => Transport;
        /// `kind() == Timeout`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_timeout());
        /// ```
        is_timeout => Timeout;
        /// `kind() == ConsensusFailed`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_consensus_failed());
        /// ```
        is_consensus_failed => ConsensusFailed;
        /// `kind() == MaxIterations`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_max_iterations());
        /// ```
        is_max_iterations => MaxIterations;
        /// `kind() == Parse`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_parse());
        /// ```
        is_parse => Parse;
        /// `kind() == ApprovalDenied`.
        ///
        /// ```
        /// assert!(!executionkit::Error::cancelled().is_approval_denied());
        /// ```
        is_approval_denied => ApprovalDenied;
        /// `kind() == Cancelled`.
        ///
        /// ```
        /// assert!(executionkit::Error::cancelled().is_cancelled());
        /// ```
        is_cancelled => Cancelled;
    }

    /// Replaces the spend carried by the error.
    ///
    /// ```
    /// use executionkit::{Error, TokenUsage};
    /// assert_eq!(Error::cancelled().with_cost(TokenUsage::new(1, 1, 1)).cost(), TokenUsage::new(1, 1, 1));
    /// ```
    #[must_use]
    pub fn with_cost(mut self, cost: TokenUsage) -> Self {
        self.inner.cost = cost;
        self
    }

    /// Replaces the money spend carried by the error.
    ///
    /// ```
    /// assert_eq!(executionkit::Error::cancelled().with_usd(Some(0.5)).usd(), Some(0.5));
    /// ```
    #[must_use]
    pub fn with_usd(mut self, usd: Option<f64>) -> Self {
        self.inner.usd = usd;
        self
    }

    /// Adds `cost` (and `usd`) to the spend carried by the error (used by pipe for earlier steps).
    ///
    /// ```
    /// use executionkit::{Error, TokenUsage};
    /// let e = Error::cancelled().with_cost(TokenUsage::new(1, 0, 1)).add_cost(TokenUsage::new(2, 0, 1), None);
    /// assert_eq!(e.cost(), TokenUsage::new(3, 0, 2));
    /// ```
    #[must_use]
    pub fn add_cost(mut self, cost: TokenUsage, usd: Option<f64>) -> Self {
        self.inner.cost += cost;
        self.inner.usd = match (self.inner.usd, usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self
    }

    /// Sets one metadata key.
    ///
    /// ```
    /// let e = executionkit::Error::cancelled().with_metadata("step", 2);
    /// assert_eq!(e.metadata()["step"], 2);
    /// ```
    #[must_use]
    pub fn with_metadata(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.inner.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// Sets the HTTP status (also `metadata.http_status`).
    ///
    /// ```
    /// let e = executionkit::Error::cancelled().with_http_status(500);
    /// assert_eq!(e.metadata()["http_status"], 500);
    /// ```
    #[must_use]
    pub fn with_http_status(mut self, status: u16) -> Self {
        self.inner.http_status = Some(status);
        self.inner
            .metadata
            .insert("http_status".to_owned(), Value::from(status));
        self
    }

    /// Sets the retry delay the server asked for (also `metadata.retry_after_s`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = executionkit::Error::cancelled().with_retry_after(Duration::from_millis(2500));
    /// assert_eq!(e.metadata()["retry_after_s"], 2.5);
    /// ```
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.inner.retry_after = Some(after);
        self.inner
            .metadata
            .insert("retry_after_s".to_owned(), Value::from(after.as_secs_f64()));
        self
    }

    /// Attaches the underlying cause (its text must hold no secret: pass redacted errors only).
    ///
    /// ```
    /// use std::error::Error as _;
    /// let io = std::io::Error::other("x");
    /// let e = executionkit::Error::cancelled().with_source(io);
    /// assert!(e.source().is_some());
    /// ```
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// The same error with every echo of `secret` (the literal key, any letter case,
    /// percent-encoded, cut short or in base64: see
    /// [`redact_secret`](crate::redact::redact_secret)) replaced by `[REDACTED]` in the message
    /// and in every string of the metadata, object keys included. The source chain is dropped
    /// when any of its messages holds the secret. Kind, spend, HTTP status and `Retry-After`
    /// are kept. `None`, or a secret shorter than 4 bytes, changes nothing.
    ///
    /// Every pattern's `run` returns its errors through this with the provider's
    /// [`secret`](crate::LlmProvider::secret), so a key a server echoes into a judge reply or a
    /// structured reply never reaches the caller.
    ///
    /// ```
    /// use executionkit::{Error, ErrorKind};
    /// let key = "sk-test-0123456789abcdef";
    /// let e = Error::new(ErrorKind::Parse, "Cannot parse score from judge reply \"SK-TEST-0123456789ABCDEF\"")
    ///     .with_metadata("reply", "sk%2Dtest%2D0123456789abcdef")
    ///     .redacted_with(Some(key));
    /// assert_eq!(e.message(), "Cannot parse score from judge reply \"[REDACTED]\"");
    /// assert_eq!(e.metadata()["reply"], "[REDACTED]");
    /// assert!(e.is_parse());
    /// ```
    #[must_use]
    pub fn redacted_with(self, secret: Option<&str>) -> Self {
        match secret {
            Some(s) if s.len() >= crate::redact::MIN_SECRET_LEN => {
                self.redact_text(&|t| crate::redact::redact_secret(t, s))
            }
            _ => self,
        }
    }

    /// Rewrites the message and every metadata string with `f` (which borrows back what it
    /// leaves unchanged); drops the source chain when `f` would change any of its messages.
    pub(crate) fn redact_text(mut self, f: &dyn Fn(&str) -> Cow<'_, str>) -> Self {
        if let Cow::Owned(m) = f(&self.inner.message) {
            if m != self.inner.message {
                self.inner.message = m;
            }
        }
        if !self.inner.metadata.is_empty() {
            let mut meta = Value::Object(std::mem::take(&mut self.inner.metadata));
            crate::redact::redact_json_by(&mut meta, f);
            if let Value::Object(m) = meta {
                self.inner.metadata = m;
            }
        }
        let mut leaks = false;
        let mut src = std::error::Error::source(&self);
        while let Some(s) = src {
            let text = s.to_string();
            if matches!(f(&text), Cow::Owned(r) if r != text) {
                leaks = true;
                break;
            }
            src = s.source();
        }
        if leaks {
            self.inner.source = None;
        }
        self
    }

    /// The error as the `ek --json` failure object's inner value:
    /// `{"kind", "message", "cost", "metadata"}`.
    ///
    /// ```
    /// let j = executionkit::Error::cancelled().to_json();
    /// assert_eq!(j["kind"], "cancelled");
    /// assert_eq!(j["cost"]["llm_calls"], 0);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "kind": self.kind().as_str(),
            "message": self.message(),
            "cost": crate::result::cost_json(&self.inner.cost, self.inner.usd),
            "metadata": Value::Object(self.inner.metadata.clone()),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("cost", &self.inner.cost);
        if let Some(usd) = self.inner.usd {
            d.field("usd", &usd);
        }
        if !self.inner.metadata.is_empty() {
            d.field("metadata", &self.inner.metadata);
        }
        if let Some(s) = self.inner.http_status {
            d.field("http_status", &s);
        }
        if let Some(r) = self.inner.retry_after {
            d.field("retry_after", &r);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Clone for Error {
    /// Clones everything but the source chain (which is not `Clone`).
    fn clone(&self) -> Self {
        Self {
            inner: Box::new(Inner {
                kind: self.inner.kind,
                message: self.inner.message.clone(),
                cost: self.inner.cost,
                usd: self.inner.usd,
                metadata: self.inner.metadata.clone(),
                http_status: self.inner.http_status,
                retry_after: self.inner.retry_after,
                source: None,
            }),
        }
    }
}
