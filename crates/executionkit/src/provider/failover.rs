//! [`Failover`]: a provider over an ordered chain of providers. The engine runs the chain
//! itself ([`LlmProvider::route`]), so every attempt on every provider is reserved in the run's
//! one ledger and counted, and each provider's cost is reported
//! (`metadata.cost_by_provider`).

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::{ChatRequest, ChatStream, LlmProvider, LlmResponse};
use crate::error::{Error, Result};

/// One provider of a chain: its name, its own retries and its cool-down after a 429.
#[derive(Clone)]
pub(crate) struct RouteEntry {
    pub(crate) name: Arc<str>,
    pub(crate) provider: Arc<dyn LlmProvider>,
    /// The entry's own retries; `None`: the run's retry policy (a router's plain target).
    pub(crate) retries: Option<u32>,
    /// The model the entry's requests ask for, when the route sets one.
    pub(crate) model: Option<Arc<str>>,
    cooldown: Arc<Mutex<Option<tokio::time::Instant>>>,
}

impl RouteEntry {
    pub(crate) fn new(
        name: Arc<str>,
        provider: Arc<dyn LlmProvider>,
        retries: Option<u32>,
        model: Option<Arc<str>>,
    ) -> Self {
        Self {
            name,
            provider,
            retries,
            model,
            cooldown: Arc::new(Mutex::new(None)),
        }
    }

    /// When the provider may be asked again, if it is cooling down.
    pub(crate) fn cooling_until(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let until = *self.cooldown.lock().unwrap_or_else(PoisonError::into_inner);
        until.filter(|u| *u > now)
    }

    /// Skips the provider for `after` (a 429's `Retry-After`); a later deadline is kept, as
    /// for [`RateLimited`](super::RateLimited)'s penalty.
    pub(crate) fn cool_down(&self, after: Duration) {
        super::rate_limit::penalize(&self.cooldown, after);
    }

    /// `request` as this entry sends it: with the entry's model when the route sets one.
    pub(crate) fn request_for<'r>(&self, request: &'r ChatRequest) -> Cow<'r, ChatRequest> {
        match &self.model {
            Some(m) => {
                let mut r = request.clone();
                r.model = Some(m.to_string());
                Cow::Owned(r)
            }
            None => Cow::Borrowed(request),
        }
    }
}

/// The providers the engine tries for one request, in order: what
/// [`LlmProvider::route`] returns for a [`Failover`]. Opaque: only the library builds one.
///
/// ```
/// use executionkit::{ChatRequest, Failover, LlmProvider, Message, MockProvider};
/// let f = Failover::builder().provider("a", MockProvider::new(["x"])).build().unwrap();
/// let route = f.route(&ChatRequest::new(vec![Message::user("q")])).unwrap();
/// assert_eq!(route.names(), ["a"]);
/// ```
#[derive(Clone)]
pub struct Route {
    pub(crate) entries: Arc<[RouteEntry]>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("providers", &self.names())
            .finish()
    }
}

impl Route {
    /// A route of one entry.
    pub(crate) fn single(entry: RouteEntry) -> Self {
        Self {
            entries: Arc::from(vec![entry]),
        }
    }

    /// The providers' names, in the order they are tried.
    ///
    /// ```
    /// use executionkit::{ChatRequest, Failover, LlmProvider, Message, MockProvider};
    /// let f = Failover::builder()
    ///     .provider("primary", MockProvider::default())
    ///     .provider("backup", MockProvider::default())
    ///     .build()
    ///     .unwrap();
    /// let r = f.route(&ChatRequest::new(vec![Message::user("q")])).unwrap();
    /// assert_eq!(r.names(), ["primary", "backup"]);
    /// ```
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| &*e.name).collect()
    }

    /// The same route with each provider replaced by `f(provider)` (a layer around every
    /// entry); names, retries and cool-downs are kept.
    pub(crate) fn map_providers(
        &self,
        f: impl Fn(Arc<dyn LlmProvider>) -> Arc<dyn LlmProvider>,
    ) -> Self {
        Self {
            entries: self
                .entries
                .iter()
                .map(|e| RouteEntry {
                    provider: f(Arc::clone(&e.provider)),
                    ..e.clone()
                })
                .collect(),
        }
    }
}

/// A provider over an ordered chain of providers: a call goes to the first, and moves to the
/// next on `rate_limited`, `transport`, `timeout`, a 5xx, 401/403/404 and
/// `insufficient_quota` (wrong for this provider, maybe fine for the next); never on a request
/// the next would refuse too (400, 413, 422, `invalid_argument`), `budget_exhausted` or
/// cancellation.
///
/// * Each entry has its own retries (default 0), with the run's [`RetryPolicy`] delays; the
///   run's retry policy does not wrap the chain a second time.
/// * A provider that answered 429 with `Retry-After` is skipped until it has cooled down. When
///   every provider is cooling down, the call waits for the first to come back if that is within
///   the retry policy's `max_delay`, else fails `rate_limited` (with the spend).
/// * Run through the engine (every pattern, [`RunContext::complete`]), each attempt on each
///   provider reserves a call in the run's ledger and is counted; the result and every error
///   carry `metadata.cost_by_provider` (`{name: {input_tokens, output_tokens, llm_calls}}`).
/// * A stream through the engine ([`RunContext::stream`], `Kit::stream`) moves to the next
///   provider only before its first delta, by the same rules and with the same counting.
/// * Called directly ([`LlmProvider::complete`] outside the engine), the chain is tried once
///   through, without retries, cool-downs honoured; [`LlmProvider::stream`] called directly
///   goes to the first provider that is not cooling down.
///
/// [`RunContext::stream`]: crate::RunContext::stream
///
/// [`RetryPolicy`]: crate::RetryPolicy
/// [`RunContext::complete`]: crate::RunContext::complete
///
/// ```
/// use executionkit::{Consensus, Error, Failover, MockProvider, RunContext};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let down = MockProvider::failing(Error::new(executionkit::ErrorKind::Transport, "connection refused"));
/// let backup = MockProvider::new(["Paris"]);
/// let f = Failover::builder().provider("primary", down).provider("backup", backup).build().unwrap();
/// let r = Consensus::new().samples(1).run(&f, "Capital of France?", &RunContext::new()).await.unwrap();
/// assert_eq!(r.value, "Paris");
/// assert_eq!(r.cost.llm_calls, 2); // the failed attempt counts
/// assert_eq!(r.metadata["cost_by_provider"]["primary"]["llm_calls"], 1);
/// assert_eq!(r.metadata["cost_by_provider"]["backup"]["llm_calls"], 1);
/// # });
/// ```
#[derive(Clone)]
pub struct Failover {
    route: Route,
}

impl fmt::Debug for Failover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field("providers", &self.route.names())
            .finish()
    }
}

/// Builds a [`Failover`]; checked by [`build`](FailoverBuilder::build).
///
/// ```
/// use executionkit::{Failover, MockProvider};
/// let f = Failover::builder()
///     .provider("primary", MockProvider::default())
///     .provider_with_retries("backup", MockProvider::default(), 2)
///     .build()
///     .unwrap();
/// # let _ = f;
/// ```
#[derive(Default)]
#[must_use]
pub struct FailoverBuilder {
    entries: Vec<RouteEntry>,
}

impl fmt::Debug for FailoverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| &*e.name).collect();
        f.debug_struct("FailoverBuilder")
            .field("providers", &names)
            .finish()
    }
}

impl FailoverBuilder {
    /// Adds a provider to the end of the chain, with no retries of its own.
    ///
    /// ```
    /// let b = executionkit::Failover::builder().provider("a", executionkit::MockProvider::default());
    /// # let _ = b;
    /// ```
    pub fn provider(self, name: impl Into<String>, provider: impl LlmProvider + 'static) -> Self {
        self.provider_with_retries(name, provider, 0)
    }

    /// Adds a provider to the end of the chain that is retried `retries` times (with the run's
    /// retry policy's delays, on the errors it retries) before the chain moves on.
    ///
    /// ```
    /// let b = executionkit::Failover::builder()
    ///     .provider_with_retries("a", executionkit::MockProvider::default(), 3);
    /// # let _ = b;
    /// ```
    pub fn provider_with_retries(
        mut self,
        name: impl Into<String>,
        provider: impl LlmProvider + 'static,
        retries: u32,
    ) -> Self {
        self.entries.push(RouteEntry::new(
            Arc::from(name.into()),
            Arc::new(provider),
            Some(retries),
            None,
        ));
        self
    }

    /// The failover provider.
    ///
    /// # Errors
    /// `invalid_argument` for an empty chain, an empty name or a name used twice.
    ///
    /// ```
    /// use executionkit::{Failover, MockProvider};
    /// assert!(Failover::builder().build().unwrap_err().is_invalid_argument());
    /// let e = Failover::builder()
    ///     .provider("a", MockProvider::default())
    ///     .provider("a", MockProvider::default())
    ///     .build()
    ///     .unwrap_err();
    /// assert!(e.message().contains("used twice"));
    /// ```
    pub fn build(self) -> Result<Failover> {
        if self.entries.is_empty() {
            return Err(Error::invalid_argument(
                "providers",
                "a failover chain needs at least one provider",
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            if e.name.trim().is_empty() {
                return Err(Error::invalid_argument(
                    "providers",
                    format!("provider {} of the failover chain has an empty name", i + 1),
                ));
            }
            if self.entries[..i].iter().any(|p| p.name == e.name) {
                return Err(Error::invalid_argument(
                    "providers",
                    format!(
                        "the provider name `{}` is used twice in the failover chain",
                        e.name
                    ),
                ));
            }
        }
        Ok(Failover {
            route: Route {
                entries: self.entries.into(),
            },
        })
    }
}

impl Failover {
    /// An empty builder.
    ///
    /// ```
    /// let b = executionkit::Failover::builder();
    /// # let _ = b;
    /// ```
    pub fn builder() -> FailoverBuilder {
        FailoverBuilder::default()
    }

    fn first(&self) -> &RouteEntry {
        // `build` refuses an empty chain.
        &self.route.entries[0]
    }

    /// The first entry that is not cooling down, else the first.
    fn available(&self) -> &RouteEntry {
        let now = tokio::time::Instant::now();
        self.route
            .entries
            .iter()
            .find(|e| e.cooling_until(now).is_none())
            .unwrap_or_else(|| self.first())
    }
}

#[async_trait]
impl LlmProvider for Failover {
    fn model(&self) -> &str {
        self.first().provider.model()
    }

    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        let now = tokio::time::Instant::now();
        let mut last = None;
        for e in self.route.entries.iter() {
            if e.cooling_until(now).is_some() {
                continue;
            }
            match e.provider.complete(request).await {
                Ok(r) => return Ok(r),
                Err(err) => {
                    if let (true, Some(after)) = (err.is_rate_limited(), err.retry_after()) {
                        e.cool_down(after);
                    }
                    if !moves_on(&err) {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::rate_limited("every provider of the failover chain is cooling down")
        }))
    }

    fn stream(&self, request: ChatRequest) -> ChatStream {
        self.available().provider.stream(request)
    }

    fn supports_tools(&self) -> bool {
        self.route
            .entries
            .iter()
            .all(|e| e.provider.supports_tools())
    }

    fn supports_streaming(&self) -> bool {
        self.available().provider.supports_streaming()
    }

    fn supports_n(&self) -> bool {
        self.route.entries.iter().all(|e| e.provider.supports_n())
    }

    fn secret(&self) -> Option<&str> {
        self.first().provider.secret()
    }

    fn secrets(&self) -> Vec<&str> {
        self.route
            .entries
            .iter()
            .flat_map(|e| e.provider.secrets())
            .collect()
    }

    fn route(&self, _request: &ChatRequest) -> Option<Route> {
        Some(self.route.clone())
    }
}

/// `true` when the next provider of a chain may succeed where this one failed with `e`.
pub(crate) fn moves_on(e: &Error) -> bool {
    if e.is_invalid_argument()
        || e.is_budget_exhausted()
        || e.is_cancelled()
        || e.is_approval_denied()
    {
        return false;
    }
    !matches!(e.http_status(), Some(400 | 413 | 422))
}
