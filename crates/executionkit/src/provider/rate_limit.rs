//! [`RateLimited`]: a provider layer that takes one [`governor`] permit per LLM call (requests
//! per minute), optionally a permit per token (tokens per minute: estimated before the call,
//! corrected from the reported usage), and holds every call while a `rate_limited` error's
//! `Retry-After` runs.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::{ChatRequest, ChatStream, DEFAULT_MAX_TOKENS, LlmProvider, LlmResponse, StreamEvent};
use crate::error::{Error, Result};

/// A provider wrapper that takes one permit of a [`governor`] rate limiter before every call
/// (and before every stream starts), so the limit applies per LLM call whatever the pattern.
/// Wrappers stack: a `RateLimited<Failover<…>>` limits the calls the failover makes. Clones
/// share the limiter.
///
/// A `rate_limited` error from the wrapped provider that carries a
/// [`retry_after`](Error::retry_after) puts the wrapper under a penalty (reference §8.3's
/// `drain`): every later permit waits until `now + retry_after`, on tokio's clock. Repeated 429s
/// extend the deadline, never shorten it.
///
/// ```
/// use std::num::NonZeroU32;
/// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, RateLimited};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let p = RateLimited::per_second(MockProvider::new(["ok"]), NonZeroU32::new(100).unwrap());
/// let r = p.complete(&ChatRequest::new(vec![Message::user("hi")])).await.unwrap();
/// assert_eq!(r.content(), "ok");
/// assert_eq!(p.permits_taken(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct RateLimited<P> {
    inner: P,
    limiter: Arc<DefaultDirectRateLimiter>,
    permits: Arc<AtomicU64>,
    penalty: Arc<Mutex<Option<tokio::time::Instant>>>,
    tokens: Option<Arc<TokenLimit>>,
}

/// A tokens-per-minute limit: a governor limiter whose permits are tokens, and what finished
/// calls reported beyond (or below) what they were charged, carried to the next call.
#[derive(Debug)]
struct TokenLimit {
    limiter: DefaultDirectRateLimiter,
    capacity: NonZeroU32,
    /// Reported minus charged tokens of finished calls not yet settled with the limiter
    /// (negative: a credit the next call uses).
    balance: AtomicI64,
    /// Tokens taken from the limiter so far.
    charged: AtomicU64,
}

impl TokenLimit {
    /// Takes `estimate` tokens, plus the balance carried from earlier calls, at most a full
    /// bucket at once (the rest is carried to the next call).
    async fn charge(&self, estimate: u64) {
        let carried = self.balance.swap(0, Ordering::AcqRel);
        let want = i64::try_from(estimate)
            .unwrap_or(i64::MAX)
            .saturating_add(carried);
        if want <= 0 {
            self.balance.fetch_add(want, Ordering::AcqRel);
            return;
        }
        let cap = i64::from(self.capacity.get());
        let now = want.min(cap);
        if want > cap {
            self.balance.fetch_add(want - cap, Ordering::AcqRel);
        }
        let n = u32::try_from(now)
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(self.capacity);
        // `n` is at most the burst size, so the limiter can always grant it.
        let _ = self.limiter.until_n_ready(n).await;
        self.charged
            .fetch_add(u64::from(n.get()), Ordering::Relaxed);
    }

    /// Carries the difference between what a call reported and what it was charged.
    fn correct(&self, estimate: u64, usage: &super::Usage) {
        let actual = usage.input_tokens.saturating_add(usage.output_tokens);
        let diff = i64::try_from(actual)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(estimate).unwrap_or(i64::MAX));
        self.balance.fetch_add(diff, Ordering::AcqRel);
    }
}

/// The tokens a request may use, estimated before it is sent: its text at about four bytes a
/// token, four tokens of framing per message, its tools' JSON, and `max_tokens` for each choice
/// (4096 when unset). The engine always sets `max_tokens` to the call's grant.
fn estimate_tokens(request: &ChatRequest) -> u64 {
    let choices = u64::from(request.n.unwrap_or(1).max(1));
    let output = u64::from(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)) * choices;
    estimate_prompt_tokens(request) + output
}

/// The prompt part of [`estimate_tokens`]: text at about four bytes a token, four tokens of
/// framing per message, the tools' JSON.
pub(crate) fn estimate_prompt_tokens(request: &ChatRequest) -> u64 {
    let text: usize = request
        .messages
        .iter()
        .map(|m| {
            m.content.len()
                + m.tool_calls
                    .iter()
                    .map(|c| {
                        c.name.len() + serde_json::to_string(&c.arguments).map_or(0, |s| s.len())
                    })
                    .sum::<usize>()
        })
        .sum();
    let tools: usize = if request.tools.is_empty() {
        0
    } else {
        serde_json::to_string(&request.tools).map_or(0, |s| s.len())
    };
    ((text + tools) as u64).div_ceil(4) + 4 * request.messages.len() as u64
}

impl<P: fmt::Debug> fmt::Debug for RateLimited<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimited")
            .field("inner", &self.inner)
            .field("permits_taken", &self.permits.load(Ordering::Relaxed))
            .field("penalty_until", &self.penalty_until())
            .field("tokens_charged", &self.tokens_charged())
            .finish_non_exhaustive()
    }
}

impl<P> RateLimited<P> {
    /// Wraps `inner` under a new limiter enforcing `quota`.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// let q = governor::Quota::per_minute(NonZeroU32::new(60).unwrap());
    /// let p = executionkit::RateLimited::new(executionkit::MockProvider::default(), q);
    /// assert_eq!(p.permits_taken(), 0);
    /// ```
    pub fn new(inner: P, quota: Quota) -> Self {
        Self::with_limiter(inner, Arc::new(RateLimiter::direct(quota)))
    }

    /// Wraps `inner` allowing `n` calls per second (bursts of up to `n`).
    ///
    /// ```
    /// let p = executionkit::RateLimited::per_second(
    ///     executionkit::MockProvider::default(), std::num::NonZeroU32::new(2).unwrap());
    /// # let _ = p;
    /// ```
    pub fn per_second(inner: P, n: NonZeroU32) -> Self {
        Self::new(inner, Quota::per_second(n))
    }

    /// A token bucket refilling `rate` permits per second (fractions allowed: `0.5` is one call
    /// every two seconds) holding at most `capacity`; it starts full, so a burst of `capacity`
    /// calls never waits. Validated before any call: `rate` must be finite and > 0, `capacity`
    /// at least 1.
    ///
    /// # Errors
    /// `invalid_argument` "rate must be > 0" or "capacity must be >= 1", or when `rate` is so
    /// low that `capacity` permits would take longer than governor can count (centuries).
    ///
    /// ```
    /// use executionkit::{MockProvider, RateLimited};
    /// let p = RateLimited::token_bucket(MockProvider::default(), 2.5, 10).unwrap();
    /// assert!(p.limiter().check_n(std::num::NonZeroU32::new(10).unwrap()).unwrap().is_ok());
    /// let err = RateLimited::token_bucket(MockProvider::default(), 0.0, 10).unwrap_err();
    /// assert!(err.message().contains("rate must be > 0"));
    /// let err = RateLimited::token_bucket(MockProvider::default(), 1.0, 0).unwrap_err();
    /// assert!(err.message().contains("capacity must be >= 1"));
    /// ```
    pub fn token_bucket(inner: P, rate: f64, capacity: u32) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::invalid_argument(
                "rate",
                format!("rate must be > 0, got {rate}"),
            ));
        }
        let Some(burst) = NonZeroU32::new(capacity) else {
            return Err(Error::invalid_argument(
                "capacity",
                format!("capacity must be >= 1, got {capacity}"),
            ));
        };
        // governor counts in u64 nanoseconds: the period times the burst must fit.
        let period_ns = (1e9 / rate).max(1.0);
        if period_ns * f64::from(capacity) >= 1.8e19 {
            return Err(Error::invalid_argument(
                "rate",
                format!("rate {rate}/s is too low for a capacity of {capacity}"),
            ));
        }
        let period = Duration::from_secs_f64(period_ns / 1e9).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).ok_or_else(|| {
            Error::invalid_argument("rate", format!("rate must be > 0, got {rate}"))
        })?;
        Ok(Self::new(inner, quota.allow_burst(burst)))
    }

    /// Wraps `inner` under an existing limiter (shared with other providers).
    ///
    /// ```
    /// use std::{num::NonZeroU32, sync::Arc};
    /// let l = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::new(9).unwrap())));
    /// let a = executionkit::RateLimited::with_limiter(executionkit::MockProvider::default(), l.clone());
    /// let b = executionkit::RateLimited::with_limiter(executionkit::MockProvider::default(), l);
    /// # let _ = (a, b);
    /// ```
    pub fn with_limiter(inner: P, limiter: Arc<DefaultDirectRateLimiter>) -> Self {
        Self {
            inner,
            limiter,
            permits: Arc::new(AtomicU64::new(0)),
            penalty: Arc::new(Mutex::new(None)),
            tokens: None,
        }
    }

    /// Also limits tokens: at most `n` per minute (bursts of up to `n`). Each call is charged
    /// its estimate before it is sent (its prompt at about four bytes a token, plus `max_tokens`
    /// for each choice), waiting for that many tokens; when it finishes, the difference between
    /// the usage the server reported and the estimate is carried to the next call (a call that
    /// used less leaves a credit, one that used more a debt). A call larger than a whole
    /// minute's tokens waits for a full bucket and carries the rest. A failed call keeps its
    /// charge. Clones share the limit.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{ChatRequest, LlmProvider, LlmResponse, Message, MockProvider, RateLimited};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let p = RateLimited::per_second(MockProvider::new([LlmResponse::text("ok").with_usage(10, 20)]), NonZeroU32::new(10).unwrap())
    ///     .tokens_per_minute(NonZeroU32::new(100_000).unwrap());
    /// let req = ChatRequest::new(vec![Message::user("hi")]).max_tokens(100);
    /// p.complete(&req).await.unwrap();
    /// assert_eq!(p.tokens_charged(), Some(105)); // "hi" (1) + one message (4) + max_tokens (100)
    /// p.complete(&req).await.unwrap();
    /// assert_eq!(p.tokens_charged(), Some(135)); // the second call used the first one's credit
    /// # });
    /// ```
    pub fn tokens_per_minute(self, n: NonZeroU32) -> Self {
        self.token_quota(Quota::per_minute(n))
    }

    /// Also limits tokens under any governor `quota` (its burst is the most one call takes at
    /// once); see [`tokens_per_minute`](Self::tokens_per_minute).
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// let p = executionkit::RateLimited::per_second(executionkit::MockProvider::default(), NonZeroU32::new(1).unwrap())
    ///     .token_quota(governor::Quota::per_hour(NonZeroU32::new(1_000_000).unwrap()));
    /// assert_eq!(p.tokens_charged(), Some(0));
    /// ```
    pub fn token_quota(mut self, quota: Quota) -> Self {
        self.tokens = Some(Arc::new(TokenLimit {
            limiter: RateLimiter::direct(quota),
            capacity: quota.burst_size(),
            balance: AtomicI64::new(0),
            charged: AtomicU64::new(0),
        }));
        self
    }

    /// Tokens charged to the token limit so far (`None` without one).
    ///
    /// ```
    /// let p = executionkit::RateLimited::per_second(
    ///     executionkit::MockProvider::default(), std::num::NonZeroU32::new(1).unwrap());
    /// assert_eq!(p.tokens_charged(), None);
    /// ```
    #[must_use]
    pub fn tokens_charged(&self) -> Option<u64> {
        self.tokens
            .as_ref()
            .map(|t| t.charged.load(Ordering::Relaxed))
    }

    /// Tokens reported beyond what was charged, carried to the next call (negative: a credit;
    /// `None` without a token limit).
    ///
    /// ```
    /// let p = executionkit::RateLimited::per_second(
    ///     executionkit::MockProvider::default(), std::num::NonZeroU32::new(1).unwrap())
    ///     .tokens_per_minute(std::num::NonZeroU32::new(1000).unwrap());
    /// assert_eq!(p.token_balance(), Some(0));
    /// ```
    #[must_use]
    pub fn token_balance(&self) -> Option<i64> {
        self.tokens
            .as_ref()
            .map(|t| t.balance.load(Ordering::Acquire))
    }

    /// Holds every later permit until `after` from now (tokio's clock), as a 429 with that
    /// `retry_after` does; a later deadline already set is kept (penalties extend, never
    /// shorten). Clones share the penalty.
    ///
    /// ```
    /// use std::time::Duration;
    /// use executionkit::{MockProvider, RateLimited};
    /// let p = RateLimited::token_bucket(MockProvider::default(), 10.0, 10).unwrap();
    /// p.penalize(Duration::from_secs(5));
    /// let until = p.penalty_until().unwrap();
    /// p.penalize(Duration::from_secs(1)); // shorter: the deadline stays
    /// assert_eq!(p.penalty_until(), Some(until));
    /// ```
    pub fn penalize(&self, after: Duration) {
        penalize(&self.penalty, after);
    }

    /// The deadline of the current penalty, if one was ever set (it may be in the past).
    ///
    /// ```
    /// let p = executionkit::RateLimited::token_bucket(
    ///     executionkit::MockProvider::default(), 1.0, 1).unwrap();
    /// assert_eq!(p.penalty_until(), None);
    /// ```
    #[must_use]
    pub fn penalty_until(&self) -> Option<tokio::time::Instant> {
        *self.penalty.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The permits taken through this wrapper (and its clones) so far.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, RateLimited};
    /// # futures::executor::block_on(async {
    /// let p = RateLimited::per_second(MockProvider::new(["ok"]), NonZeroU32::new(100).unwrap());
    /// let clone = p.clone();
    /// clone.complete(&ChatRequest::new(vec![Message::user("q")])).await.unwrap();
    /// assert_eq!(p.permits_taken(), 1); // clones share the count
    /// # });
    /// ```
    #[must_use]
    pub fn permits_taken(&self) -> u64 {
        self.permits.load(Ordering::Relaxed)
    }

    /// The limiter.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{MockProvider, RateLimited};
    /// let p = RateLimited::per_second(MockProvider::default(), NonZeroU32::new(1).unwrap());
    /// assert!(p.limiter().check().is_ok()); // the first permit is free
    /// assert!(p.limiter().check().is_err()); // the burst of one is used up
    /// ```
    #[must_use]
    pub fn limiter(&self) -> &Arc<DefaultDirectRateLimiter> {
        &self.limiter
    }

    /// The wrapped provider.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use executionkit::{MockProvider, RateLimited};
    /// let p = RateLimited::per_second(MockProvider::default(), NonZeroU32::new(5).unwrap());
    /// assert_eq!(p.inner().call_count(), 0);
    /// ```
    #[must_use]
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for RateLimited<P> {
    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        acquire(&self.limiter, &self.penalty, &self.permits).await;
        let estimate = match &self.tokens {
            Some(t) => {
                let e = estimate_tokens(request);
                t.charge(e).await;
                e
            }
            None => 0,
        };
        let result = self.inner.complete(request).await;
        match &result {
            Ok(resp) => {
                if let Some(t) = &self.tokens {
                    t.correct(estimate, &resp.usage);
                }
            }
            Err(e) => penalize_for(&self.penalty, e),
        }
        result
    }

    fn stream(&self, request: ChatRequest) -> ChatStream {
        let limiter = Arc::clone(&self.limiter);
        let permits = Arc::clone(&self.permits);
        let penalty = Arc::clone(&self.penalty);
        let on_error = Arc::clone(&self.penalty);
        let tokens = self.tokens.clone();
        let on_finish = self.tokens.clone();
        let estimate = if tokens.is_some() {
            estimate_tokens(&request)
        } else {
            0
        };
        let inner = self.inner.stream(request).inspect(move |item| match item {
            Err(e) => penalize_for(&on_error, e),
            Ok(StreamEvent::Finished(resp)) => {
                if let Some(t) = &on_finish {
                    t.correct(estimate, &resp.usage);
                }
            }
            Ok(_) => {}
        });
        let wait = futures::stream::once(async move {
            acquire(&limiter, &penalty, &permits).await;
            if let Some(t) = &tokens {
                t.charge(estimate).await;
            }
        })
        .filter_map(|()| async { None });
        Box::pin(wait.chain(inner))
    }

    fn supports_tools(&self) -> bool {
        self.inner.supports_tools()
    }

    fn supports_streaming(&self) -> bool {
        self.inner.supports_streaming()
    }

    fn supports_n(&self) -> bool {
        self.inner.supports_n()
    }

    fn secret(&self) -> Option<&str> {
        self.inner.secret()
    }

    fn secrets(&self) -> Vec<&str> {
        self.inner.secrets()
    }

    fn response_format_refused(&self) -> bool {
        self.inner.response_format_refused()
    }

    fn note_response_format_refused(&self) {
        self.inner.note_response_format_refused();
    }

    /// The inner provider's route with every entry under this limit (the same limiter, penalty
    /// and token limit): each attempt on each provider takes its permits.
    fn route(&self, request: &ChatRequest) -> Option<super::Route> {
        let route = self.inner.route(request)?;
        Some(route.map_providers(|p| {
            Arc::new(RateLimited {
                inner: p,
                limiter: Arc::clone(&self.limiter),
                permits: Arc::clone(&self.permits),
                penalty: Arc::clone(&self.penalty),
                tokens: self.tokens.clone(),
            })
        }))
    }
}

/// Sets the penalty deadline to `max(existing, now + after)`.
pub(crate) fn penalize(penalty: &Mutex<Option<tokio::time::Instant>>, after: Duration) {
    let Some(until) = tokio::time::Instant::now().checked_add(after) else {
        return;
    };
    let mut slot = penalty.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none_or(|d| d < until) {
        *slot = Some(until);
    }
}

/// A `rate_limited` error with a `retry_after` penalises the limiter.
fn penalize_for(penalty: &Mutex<Option<tokio::time::Instant>>, error: &Error) {
    if let (true, Some(after)) = (error.is_rate_limited(), error.retry_after()) {
        penalize(penalty, after);
    }
}

/// Waits out any penalty (re-reading it, since another call's 429 may extend it meanwhile).
async fn wait_penalty(penalty: &Mutex<Option<tokio::time::Instant>>) {
    loop {
        let deadline = *penalty.lock().unwrap_or_else(PoisonError::into_inner);
        match deadline {
            Some(d) if d > tokio::time::Instant::now() => tokio::time::sleep_until(d).await,
            _ => return,
        }
    }
}

/// One permit: the penalty first, then the limiter, then the penalty again (a 429 seen while
/// this call waited for its permit holds it too).
async fn acquire(
    limiter: &DefaultDirectRateLimiter,
    penalty: &Mutex<Option<tokio::time::Instant>>,
    permits: &AtomicU64,
) {
    wait_penalty(penalty).await;
    limiter.until_ready().await;
    wait_penalty(penalty).await;
    permits.fetch_add(1, Ordering::Relaxed);
}
