//! [`Router`]: cost-aware routing. Rules pick a provider (and a model) for each request from
//! what it is (estimated prompt tokens, tools, a `tier` tag), first match wins, then a
//! default; or round-robin; or a weighted choice. The engine runs the chosen provider as a
//! route, so every call is counted as any other, and a chosen [`Failover`](super::Failover)
//! keeps its chain.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::failover::{Route, RouteEntry};
use super::rate_limit::estimate_prompt_tokens;
use super::{ChatRequest, ChatStream, LlmProvider, LlmResponse};
use crate::error::{Error, Result};

/// What a [`Router`] rule sees of a request.
///
/// ```
/// use executionkit::{ChatRequest, Message, RouteRequest};
/// let req = ChatRequest::new(vec![Message::user("hello world")]).tier("best");
/// let seen = RouteRequest::of(&req);
/// assert_eq!(seen.prompt_tokens, 7); // 11 bytes ≈ 3 tokens, plus 4 for the message
/// assert_eq!((seen.has_tools, seen.tier), (false, Some("best")));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RouteRequest<'a> {
    /// The prompt's size in tokens, estimated (about four bytes a token, four per message,
    /// the tools' JSON).
    pub prompt_tokens: u64,
    /// `true` when the request offers tools.
    pub has_tools: bool,
    /// The request's routing tag ([`ChatRequest::tier`], [`CallOptions::tier`](crate::CallOptions::tier)).
    pub tier: Option<&'a str>,
    /// The model the request asks for, if any.
    pub model: Option<&'a str>,
}

impl<'a> RouteRequest<'a> {
    /// What the rules see of `request`.
    ///
    /// ```
    /// let r = executionkit::ChatRequest::new(vec![]);
    /// assert_eq!(executionkit::RouteRequest::of(&r).prompt_tokens, 0);
    /// ```
    #[must_use]
    pub fn of(request: &'a ChatRequest) -> Self {
        Self {
            prompt_tokens: estimate_prompt_tokens(request),
            has_tools: !request.tools.is_empty(),
            tier: request.tier.as_deref(),
            model: request.model.as_deref(),
        }
    }
}

type Predicate = Arc<dyn Fn(&RouteRequest<'_>) -> bool + Send + Sync>;

/// A route target: a named provider and, optionally, the model its requests ask for.
#[derive(Clone)]
struct Target {
    name: Arc<str>,
    provider: Arc<dyn LlmProvider>,
    model: Option<Arc<str>>,
}

impl Target {
    /// The target's route: its own (a failover chain's) or a one-entry route that keeps the
    /// run's retry policy.
    fn route(&self, request: &ChatRequest) -> Route {
        match self.provider.route(request) {
            Some(r) => r,
            None => Route::single(RouteEntry::new(
                Arc::clone(&self.name),
                Arc::clone(&self.provider),
                None,
                self.model.clone(),
            )),
        }
    }
}

#[derive(Clone)]
enum Choice {
    Rules {
        rules: Arc<[(Predicate, Target)]>,
        default: Target,
    },
    RoundRobin {
        targets: Arc<[Target]>,
        next: Arc<AtomicUsize>,
    },
    /// Smooth weighted round-robin: each pick adds every weight to its running score, takes the
    /// highest and subtracts the total from it, so picks follow the weights exactly and spread
    /// out (for 3:1, a a b a, a a b a, …).
    Weighted {
        targets: Arc<[(Target, i64)]>,
        scores: Arc<Mutex<Vec<i64>>>,
    },
}

/// A provider that sends each request to one of several providers.
///
/// * [`Router::builder`]: rules on the request ([`RouteRequest`]: estimated prompt tokens,
///   tools, a `tier` tag set with [`CallOptions::tier`](crate::CallOptions::tier) or by a pipe
///   step), the first that matches wins, else the default. A rule may also set the model.
/// * [`Router::round_robin`] and [`Router::weighted`] spread the requests.
///
/// Run through the engine, the chosen provider is run as a route: every call is reserved and
/// counted once, `metadata.cost_by_provider` says which provider took what, a plain provider
/// keeps the run's retry policy and a [`Failover`](super::Failover) its chain. Routers,
/// failover chains and [`RateLimited`](super::RateLimited) stack in any order.
///
/// ```
/// use executionkit::prelude::*;
/// use executionkit::Router;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cheap = MockProvider::new(["cheap answer"]);
/// let best = MockProvider::new(["best answer"]);
/// let router = Router::builder()
///     .rule(|r| r.tier == Some("best"), "best", best.clone())
///     .rule(|r| r.prompt_tokens < 2000, "cheap", cheap.clone())
///     .default("best", best.clone())
///     .build()
///     .unwrap();
/// let ctx = RunContext::new();
/// let r = Consensus::new().samples(1).run(&router, "Short question?", &ctx).await.unwrap();
/// assert_eq!(r.value, "cheap answer");
/// let r = Consensus::new().samples(1).tier("best").run(&router, "Short question?", &ctx).await.unwrap();
/// assert_eq!(r.value, "best answer");
/// assert_eq!(r.metadata["cost_by_provider"]["best"]["llm_calls"], 1);
/// # });
/// ```
#[derive(Clone)]
pub struct Router {
    choice: Choice,
    model: Arc<str>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = match &self.choice {
            Choice::Rules { rules, default } => rules
                .iter()
                .map(|(_, t)| &*t.name)
                .chain(std::iter::once(&*default.name))
                .collect(),
            Choice::RoundRobin { targets, .. } => targets.iter().map(|t| &*t.name).collect(),
            Choice::Weighted { targets, .. } => targets.iter().map(|(t, _)| &*t.name).collect(),
        };
        f.debug_struct("Router").field("providers", &names).finish()
    }
}

/// Builds a rule-based [`Router`]: rules in order, then a default.
///
/// ```
/// use executionkit::{MockProvider, Router};
/// let r = Router::builder()
///     .rule(|r| r.has_tools, "tools", MockProvider::default())
///     .default("plain", MockProvider::default())
///     .build()
///     .unwrap();
/// # let _ = r;
/// ```
#[must_use]
pub struct RouterBuilder {
    rules: Vec<(Predicate, Target)>,
    default: Option<Target>,
}

impl fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("rules", &self.rules.len())
            .field("default", &self.default.as_ref().map(|t| &*t.name))
            .finish()
    }
}

fn target(name: impl Into<String>, provider: impl LlmProvider + 'static) -> Target {
    Target {
        name: Arc::from(name.into()),
        provider: Arc::new(provider),
        model: None,
    }
}

impl RouterBuilder {
    /// Sends the requests `when` matches (and no earlier rule did) to `provider`.
    ///
    /// ```
    /// let b = executionkit::Router::builder()
    ///     .rule(|r| r.prompt_tokens > 8000, "long", executionkit::MockProvider::default());
    /// # let _ = b;
    /// ```
    pub fn rule(
        mut self,
        when: impl Fn(&RouteRequest<'_>) -> bool + Send + Sync + 'static,
        name: impl Into<String>,
        provider: impl LlmProvider + 'static,
    ) -> Self {
        self.rules.push((Arc::new(when), target(name, provider)));
        self
    }

    /// As [`rule`](Self::rule), and the requests it takes ask for `model`.
    ///
    /// ```
    /// let b = executionkit::Router::builder().rule_with_model(
    ///     |r| r.tier == Some("cheap"), "mini", executionkit::MockProvider::default(), "gpt-4o-mini");
    /// # let _ = b;
    /// ```
    pub fn rule_with_model(
        mut self,
        when: impl Fn(&RouteRequest<'_>) -> bool + Send + Sync + 'static,
        name: impl Into<String>,
        provider: impl LlmProvider + 'static,
        model: impl Into<String>,
    ) -> Self {
        let mut t = target(name, provider);
        t.model = Some(Arc::from(model.into()));
        self.rules.push((Arc::new(when), t));
        self
    }

    /// Where a request no rule matches goes (required).
    ///
    /// ```
    /// let b = executionkit::Router::builder().default("main", executionkit::MockProvider::default());
    /// # let _ = b;
    /// ```
    pub fn default(
        mut self,
        name: impl Into<String>,
        provider: impl LlmProvider + 'static,
    ) -> Self {
        self.default = Some(target(name, provider));
        self
    }

    /// The router.
    ///
    /// # Errors
    /// `invalid_argument` without a default, or with an empty name.
    ///
    /// ```
    /// let e = executionkit::Router::builder().build().unwrap_err();
    /// assert!(e.message().contains("default"));
    /// ```
    pub fn build(self) -> Result<Router> {
        let Some(default) = self.default else {
            return Err(Error::invalid_argument(
                "default",
                "a router needs a default provider (RouterBuilder::default)",
            ));
        };
        check_names(
            self.rules
                .iter()
                .map(|(_, t)| &t.name)
                .chain(std::iter::once(&default.name)),
        )?;
        let model = Arc::from(default.provider.model());
        Ok(Router {
            choice: Choice::Rules {
                rules: self.rules.into(),
                default,
            },
            model,
        })
    }
}

fn check_names<'a>(names: impl Iterator<Item = &'a Arc<str>>) -> Result<()> {
    for (i, n) in names.enumerate() {
        if n.trim().is_empty() {
            return Err(Error::invalid_argument(
                "providers",
                format!("provider {} of the router has an empty name", i + 1),
            ));
        }
    }
    Ok(())
}

impl Router {
    /// A rule-based router.
    ///
    /// ```
    /// let b = executionkit::Router::builder();
    /// # let _ = b;
    /// ```
    pub fn builder() -> RouterBuilder {
        RouterBuilder {
            rules: Vec::new(),
            default: None,
        }
    }

    /// Sends the requests to each provider in turn.
    ///
    /// # Errors
    /// `invalid_argument` for no provider or an empty name.
    ///
    /// ```
    /// use executionkit::{MockProvider, Router};
    /// let r = Router::round_robin(vec![("a", MockProvider::default()), ("b", MockProvider::default())]).unwrap();
    /// # let _ = r;
    /// assert!(Router::round_robin(Vec::<(&str, MockProvider)>::new()).is_err());
    /// ```
    pub fn round_robin<N: Into<String>, P: LlmProvider + 'static>(
        providers: impl IntoIterator<Item = (N, P)>,
    ) -> Result<Self> {
        let targets: Vec<Target> = providers.into_iter().map(|(n, p)| target(n, p)).collect();
        let Some(first) = targets.first() else {
            return Err(Error::invalid_argument(
                "providers",
                "a round-robin router needs at least one provider",
            ));
        };
        check_names(targets.iter().map(|t| &t.name))?;
        let model = Arc::from(first.provider.model());
        Ok(Self {
            choice: Choice::RoundRobin {
                targets: targets.into(),
                next: Arc::new(AtomicUsize::new(0)),
            },
            model,
        })
    }

    /// Sends the requests in proportion to the weights, spread evenly (smooth weighted
    /// round-robin: for weights 3 and 1, `a a b a` and again).
    ///
    /// # Errors
    /// `invalid_argument` for no provider, an empty name or a weight of 0.
    ///
    /// ```
    /// use executionkit::{MockProvider, Router};
    /// let r = Router::weighted(vec![("a", MockProvider::default(), 3), ("b", MockProvider::default(), 1)]).unwrap();
    /// # let _ = r;
    /// let e = Router::weighted(vec![("a", MockProvider::default(), 0)]).unwrap_err();
    /// assert!(e.message().contains("weight"));
    /// ```
    pub fn weighted<N: Into<String>, P: LlmProvider + 'static>(
        providers: impl IntoIterator<Item = (N, P, u32)>,
    ) -> Result<Self> {
        let mut targets = Vec::new();
        for (n, p, w) in providers {
            let t = target(n, p);
            if w == 0 {
                return Err(Error::invalid_argument(
                    "weight",
                    format!("the weight of `{}` must be >= 1, got 0", t.name),
                ));
            }
            targets.push((t, i64::from(w)));
        }
        let Some((first, _)) = targets.first() else {
            return Err(Error::invalid_argument(
                "providers",
                "a weighted router needs at least one provider",
            ));
        };
        check_names(targets.iter().map(|(t, _)| &t.name))?;
        let model = Arc::from(first.provider.model());
        let scores = Arc::new(Mutex::new(vec![0; targets.len()]));
        Ok(Self {
            choice: Choice::Weighted {
                targets: targets.into(),
                scores,
            },
            model,
        })
    }

    /// The target for `request`.
    fn pick(&self, request: &ChatRequest) -> &Target {
        match &self.choice {
            Choice::Rules { rules, default } => {
                let seen = RouteRequest::of(request);
                rules
                    .iter()
                    .find(|(when, _)| when(&seen))
                    .map_or(default, |(_, t)| t)
            }
            Choice::RoundRobin { targets, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % targets.len();
                &targets[i]
            }
            Choice::Weighted { targets, scores } => {
                let mut scores = scores.lock().unwrap_or_else(PoisonError::into_inner);
                let total: i64 = targets.iter().map(|(_, w)| w).sum();
                for (s, (_, w)) in scores.iter_mut().zip(targets.iter()) {
                    *s += w;
                }
                let mut best = 0;
                for i in 1..scores.len() {
                    if scores[i] > scores[best] {
                        best = i;
                    }
                }
                scores[best] -= total;
                &targets[best].0
            }
        }
    }
}

#[async_trait]
impl LlmProvider for Router {
    fn model(&self) -> &str {
        &self.model
    }

    /// Called directly (outside the engine): the chosen provider, once.
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        let t = self.pick(request);
        match &t.model {
            Some(m) => {
                let mut r = request.clone();
                r.model = Some(m.to_string());
                t.provider.complete(&r).await
            }
            None => t.provider.complete(request).await,
        }
    }

    fn stream(&self, mut request: ChatRequest) -> ChatStream {
        let t = self.pick(&request);
        if let Some(m) = &t.model {
            request.model = Some(m.to_string());
        }
        t.provider.stream(request)
    }

    fn supports_tools(&self) -> bool {
        self.targets().all(|t| t.provider.supports_tools())
    }

    fn supports_streaming(&self) -> bool {
        self.targets().all(|t| t.provider.supports_streaming())
    }

    fn supports_n(&self) -> bool {
        self.targets().all(|t| t.provider.supports_n())
    }

    fn secret(&self) -> Option<&str> {
        self.targets().find_map(|t| t.provider.secret())
    }

    fn secrets(&self) -> Vec<&str> {
        self.targets().flat_map(|t| t.provider.secrets()).collect()
    }

    fn route(&self, request: &ChatRequest) -> Option<Route> {
        Some(self.pick(request).route(request))
    }
}

impl Router {
    fn targets(&self) -> Box<dyn Iterator<Item = &Target> + '_> {
        match &self.choice {
            Choice::Rules { rules, default } => {
                Box::new(rules.iter().map(|(_, t)| t).chain(std::iter::once(default)))
            }
            Choice::RoundRobin { targets, .. } => Box::new(targets.iter()),
            Choice::Weighted { targets, .. } => Box::new(targets.iter().map(|(t, _)| t)),
        }
    }
}
