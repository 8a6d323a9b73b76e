//! Building the providers a run uses from a checked [`Config`](super::Config).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;

use executionkit::{
    AnthropicProvider, CostRates, Error, Failover, LlmProvider, OpenAiProvider, RateLimited,
    RouteRequest, Router,
};

use super::{BuildOptions, Config, Kind, RouterDef, shown_var};

/// Builds the providers a run uses, each once (a provider named twice, e.g. in a chain and by a
/// pipe step, shares its rate limits and cool-downs), and remembers the keys it read and the
/// prices the used providers give.
pub struct Builder<'c> {
    config: &'c Config,
    env: &'c dyn Fn(&str) -> Option<String>,
    opts: BuildOptions,
    /// HTTP providers (with their rate limits), by name.
    bases: HashMap<String, Arc<dyn LlmProvider>>,
    /// What a name stands for when picked: a named provider, a chain or a router.
    built: HashMap<String, Arc<dyn LlmProvider>>,
    keys: Vec<String>,
    /// model → (prices, the provider that gave them).
    prices: BTreeMap<String, (CostRates, String)>,
}

impl std::fmt::Debug for Builder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config.path)
            .field("built", &self.built.keys().collect::<Vec<_>>())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<'c> Builder<'c> {
    /// A builder over `config`, reading key variables through `env`.
    pub fn new(
        config: &'c Config,
        env: &'c dyn Fn(&str) -> Option<String>,
        opts: BuildOptions,
    ) -> Self {
        Self {
            config,
            env,
            opts,
            bases: HashMap::new(),
            built: HashMap::new(),
            keys: Vec::new(),
            prices: BTreeMap::new(),
        }
    }

    /// The keys read so far (for redaction).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// `(model, prices)` of every provider built so far that has prices.
    pub fn prices(&self) -> impl Iterator<Item = (&str, CostRates)> {
        self.prices.iter().map(|(m, (r, _))| (m.as_str(), *r))
    }

    /// The providers built so far without prices, for `--max-usd`'s check.
    pub fn unpriced(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .bases
            .keys()
            .filter(|n| {
                self.config
                    .providers
                    .get(*n)
                    .is_some_and(|d| d.rates.is_none())
            })
            .map(String::as_str)
            .collect();
        v.sort_unstable();
        v
    }

    /// The provider, chain or router named `name`, for `flag` (`--provider`, or a step).
    ///
    /// # Errors
    /// `invalid_argument` for an unknown name, a key variable that is not set, two providers
    /// pricing one model differently, or settings a provider refuses.
    pub fn get(&mut self, flag: &str, name: &str) -> Result<Arc<dyn LlmProvider>, Error> {
        if let Some(p) = self.built.get(name) {
            return Ok(Arc::clone(p));
        }
        let p: Arc<dyn LlmProvider> = if self.config.providers.contains_key(name) {
            let retries = self.retries(name, self.opts.max_retries);
            let base = self.base(name)?;
            Arc::new(
                Failover::builder()
                    .provider_with_retries(name, base, retries)
                    .build()?,
            )
        } else if self.config.failovers.contains_key(name) {
            Arc::new(self.chain(name)?)
        } else if self.config.routers.contains_key(name) {
            Arc::new(self.router(name)?)
        } else {
            return Err(self.config.unknown(flag, name));
        };
        self.built.insert(name.to_owned(), Arc::clone(&p));
        Ok(p)
    }

    fn retries(&self, name: &str, default: u32) -> u32 {
        self.config
            .providers
            .get(name)
            .and_then(|d| d.retries)
            .unwrap_or(default)
    }

    fn chain(&mut self, name: &str) -> Result<Failover, Error> {
        let list = self
            .config
            .failovers
            .get(name)
            .map(|d| d.providers.clone())
            .unwrap_or_default();
        let mut b = Failover::builder();
        for p in &list {
            let retries = self.retries(p, 0);
            b = b.provider_with_retries(p.clone(), self.base(p)?, retries);
        }
        b.build()
    }

    fn router(&mut self, name: &str) -> Result<Router, Error> {
        let Some(def) = self.config.routers.get(name) else {
            return Err(self.config.unknown("--provider", name));
        };
        match def {
            RouterDef::Rules { rules, default } => {
                let mut b = Router::builder();
                for rule in rules {
                    let target = self.get("use", &rule.target)?;
                    let when = rule.when.clone();
                    let pred = move |r: &RouteRequest<'_>| when.iter().all(|c| c.holds(r));
                    b = match &rule.model {
                        Some(m) => b.rule_with_model(pred, rule.target.clone(), target, m.clone()),
                        None => b.rule(pred, rule.target.clone(), target),
                    };
                }
                let target = self.get("default", default)?;
                b.default(default.clone(), target).build()
            }
            RouterDef::RoundRobin(names) => {
                let mut v = Vec::new();
                for n in names {
                    v.push((n.clone(), self.get("round_robin", n)?));
                }
                Router::round_robin(v)
            }
            RouterDef::Weighted(list) => {
                let mut v = Vec::new();
                for (n, w) in list {
                    v.push((n.clone(), self.get("weighted", n)?, *w));
                }
                Router::weighted(v)
            }
        }
    }

    /// The HTTP provider `name`, under its rate limits.
    fn base(&mut self, name: &str) -> Result<Arc<dyn LlmProvider>, Error> {
        if let Some(p) = self.bases.get(name) {
            return Ok(Arc::clone(p));
        }
        let Some(def) = self.config.providers.get(name) else {
            return Err(self.config.unknown("--provider", name));
        };
        let path = &self.config.path;
        let at = |msg: String| {
            Error::invalid_argument(
                "config",
                format!("{path}, line {} ([providers.{name}]): {msg}", def.line),
            )
        };
        let key = match &def.api_key_env {
            Some(var) => match (self.env)(var).filter(|v| !v.trim().is_empty()) {
                Some(k) => Some(k),
                None => {
                    return Err(at(format!(
                        "api_key_env names {}, which is not set (or is empty)",
                        shown_var(var)
                    )));
                }
            },
            None => None,
        };
        if let Some(rates) = def.rates {
            match self.prices.get(&def.model) {
                Some((other, by)) if *other != rates => {
                    return Err(at(format!(
                        "model `{}` has other prices in [providers.{by}]; prices are per model, so providers of one model must agree",
                        def.model
                    )));
                }
                _ => {
                    self.prices
                        .insert(def.model.clone(), (rates, name.to_owned()));
                }
            }
        }
        let http: Arc<dyn LlmProvider> = match def.kind {
            Kind::OpenAi => {
                let mut b = OpenAiProvider::builder(def.base_url.clone(), def.model.clone())
                    .timeout(self.opts.timeout);
                if let Some(k) = &key {
                    b = b.api_key(k.clone());
                }
                Arc::new(b.build().map_err(|e| at(e.message().to_owned()))?)
            }
            Kind::Anthropic => {
                let mut b = AnthropicProvider::builder(def.base_url.clone(), def.model.clone())
                    .timeout(self.opts.timeout);
                if let Some(k) = &key {
                    b = b.api_key(k.clone());
                }
                Arc::new(b.build().map_err(|e| at(e.message().to_owned()))?)
            }
        };
        let limited: Arc<dyn LlmProvider> = match (def.rpm, def.tpm) {
            (None, None) => http,
            (rpm, tpm) => {
                // Without an rpm the request limit is one no run reaches: only tokens count.
                let quota = rpm.map_or(governor::Quota::per_second(NonZeroU32::MAX), |n| {
                    governor::Quota::per_minute(n)
                });
                let mut l = RateLimited::new(http, quota);
                if let Some(t) = tpm {
                    l = l.tokens_per_minute(t);
                }
                Arc::new(l)
            }
        };
        self.keys.extend(key);
        self.bases.insert(name.to_owned(), Arc::clone(&limited));
        Ok(limited)
    }
}
