//! `ek serve --keys FILE`: the gateway's API keys, stored as SHA-256 hashes, each with a name
//! and a budget per window.
//!
//! The file is TOML (or JSON when it ends in `.json`), a list of keys:
//!
//! ```toml
//! [[keys]]
//! name = "alice"
//! sha256 = "<64 hex digits: sha256 of the key>"
//! calls = 100            # LLM calls per window (optional)
//! tokens = 250000        # input + output tokens per window, checked before each request
//! input_tokens = 200000  # optional
//! output_tokens = 50000  # optional
//! usd = 1.50             # optional; needs prices (--price-in/--price-out or the config file)
//! window_seconds = 3600  # optional; without it the budget lasts as long as the process
//! ```
//!
//! Each key's budget is a [`BudgetLedger`] (a child of the server's), renewed when its window
//! ends: every upstream call a request makes reserves in it before it is sent, so a spent
//! budget refuses the call (429) instead of noticing afterwards. `tokens` (a total the ledger
//! has no limit for) is checked when a request starts: one that starts under it may end over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use executionkit::{Budget, BudgetLedger, Error};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::wire::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    sha256: String,
    calls: Option<u64>,
    tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    usd: Option<f64>,
    window_seconds: Option<u64>,
}

/// One key: its name, budget and current window.
#[derive(Debug)]
pub struct Key {
    /// The name (in logs and error messages; never the key).
    pub name: String,
    budget: Budget,
    /// Input + output tokens per window, checked when a request starts.
    tokens: Option<u64>,
    window: Option<Duration>,
    /// The current window's start and ledger.
    current: Mutex<Option<(Instant, Arc<BudgetLedger>)>>,
}

/// Every key, by the hex SHA-256 of its text.
#[derive(Debug)]
pub struct Keys {
    by_hash: HashMap<String, Arc<Key>>,
}

/// The hex SHA-256 of `text` (what the keys file stores).
pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn bad(path: &str, msg: impl std::fmt::Display) -> Error {
    Error::invalid_argument("keys", format!("--keys {path}: {msg}"))
}

impl Keys {
    /// Reads and checks the keys file; `prices`: the server's prices (a budget without limits;
    /// a `usd` budget needs prices).
    ///
    /// # Errors
    /// `invalid_argument` naming the file and the mistake (never a key).
    pub fn load(path: &str, prices: &Budget) -> Result<Self, Error> {
        let src =
            std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
        Self::parse(path, &src, prices)
    }

    /// [`Keys::load`] on the file's text.
    ///
    /// # Errors
    /// See [`Keys::load`].
    pub fn parse(path: &str, src: &str, prices: &Budget) -> Result<Self, Error> {
        let raw: RawFile = if path.ends_with(".json") {
            serde_json::from_str(src).map_err(|e| bad(path, e))?
        } else {
            toml::from_str(src).map_err(|e| bad(path, e.message().trim()))?
        };
        if raw.keys.is_empty() {
            return Err(bad(path, "no keys; list at least one [[keys]] entry"));
        }
        let mut by_hash = HashMap::new();
        let mut names = Vec::new();
        for k in raw.keys {
            let at = |msg: &str| bad(path, format!("key `{}`: {msg}", k.name));
            if k.name.trim().is_empty() {
                return Err(bad(path, "a key has an empty name"));
            }
            if names.contains(&k.name) {
                return Err(at("the name is used twice"));
            }
            let h = k.sha256.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(at(
                    "sha256 must be 64 hex digits (e.g. `printf %s \"$KEY\" | sha256sum`)",
                ));
            }
            let mut budget = prices.clone();
            if let Some(n) = k.calls {
                budget = budget.max_calls(n);
            }
            if let Some(n) = k.input_tokens {
                budget = budget.max_input_tokens(n);
            }
            if let Some(n) = k.output_tokens {
                budget = budget.max_output_tokens(n);
            }
            if let Some(usd) = k.usd {
                if !prices.has_prices() {
                    return Err(at(
                        "a usd budget needs prices: pass --price-in and --price-out, or price the config file's providers",
                    ));
                }
                budget = budget.max_usd(usd);
            }
            budget.validate().map_err(|e| at(e.message()))?;
            let window = match k.window_seconds {
                Some(0) => return Err(at("window_seconds must be >= 1")),
                s => s.map(Duration::from_secs),
            };
            let key = Arc::new(Key {
                name: k.name.clone(),
                budget,
                tokens: k.tokens,
                window,
                current: Mutex::new(None),
            });
            if by_hash.insert(h, key).is_some() {
                return Err(at("the same sha256 is listed twice"));
            }
            names.push(k.name);
        }
        Ok(Self { by_hash })
    }

    /// The key a request's `Authorization: Bearer …` names.
    ///
    /// # Errors
    /// A 401 when the header is missing, not a Bearer token, or the token is not a key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Key>, ApiError> {
        let unauthorized = |msg: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                msg,
            )
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("missing API key: send `Authorization: Bearer <key>`"))?;
        self.by_hash
            .get(&hash(token))
            .cloned()
            .ok_or_else(|| unauthorized("invalid API key"))
    }
}

impl Key {
    /// The ledger of the key's current window (a child of `root`), renewed when the window
    /// has ended.
    pub fn ledger(&self, root: &Arc<BudgetLedger>) -> Arc<BudgetLedger> {
        self.ledger_at(root, Instant::now())
    }

    /// [`Key::ledger`] at `now`.
    fn ledger_at(&self, root: &Arc<BudgetLedger>, now: Instant) -> Arc<BudgetLedger> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some((start, l)) if self.window.is_none_or(|w| now.duration_since(*start) < w) => {
                Arc::clone(l)
            }
            _ => {
                let l = Arc::new(BudgetLedger::child(Arc::clone(root), self.budget.clone()));
                *current = Some((now, Arc::clone(&l)));
                l
            }
        }
    }

    /// Refuses a request up front (429) when a limit of `ledger` (the key's) is used up.
    ///
    /// # Errors
    /// A 429 naming the key, the limit and when the window ends.
    pub fn check(&self, ledger: &BudgetLedger) -> Result<(), ApiError> {
        let left = ledger.remaining();
        let used = ledger.spent();
        let total = used.input_tokens.saturating_add(used.output_tokens);
        let spent = [
            ("calls", left.llm_calls == Some(0)),
            ("tokens", self.tokens.is_some_and(|t| total >= t)),
            ("input tokens", left.input_tokens == Some(0)),
            ("output tokens", left.output_tokens == Some(0)),
            ("usd", left.usd.is_some_and(|u| u <= 0.0)),
        ];
        let Some((what, _)) = spent.iter().find(|(_, out)| *out) else {
            return Ok(());
        };
        Err(self.exhausted(what))
    }

    /// The 429 for an exhausted budget.
    pub fn exhausted(&self, what: &str) -> ApiError {
        let window = match (
            self.window,
            &*self.current.lock().unwrap_or_else(PoisonError::into_inner),
        ) {
            (Some(w), Some((start, _))) => {
                let left = w.saturating_sub(start.elapsed());
                format!(
                    " for this {}-second window; it renews in {} s",
                    w.as_secs(),
                    left.as_secs().max(1)
                )
            }
            _ => String::new(),
        };
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget_exhausted",
            format!(
                "the budget of API key `{}` is exhausted ({what}){window}",
                self.name
            ),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn file(extra: &str) -> String {
        format!(
            "[[keys]]\nname = \"alice\"\nsha256 = \"{}\"\ncalls = 2\n{extra}",
            hash("sk-alice")
        )
    }

    #[test]
    fn a_key_authenticates_by_its_hash_only() {
        let keys = Keys::parse("keys.toml", &file(""), &Budget::new()).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            keys.authenticate(&h).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-bob"),
        );
        let e = keys.authenticate(&h).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_api_key")
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-alice"),
        );
        assert_eq!(keys.authenticate(&h).unwrap().name, "alice");
    }

    #[test]
    fn json_works_too_and_mistakes_are_named() {
        let json = format!(
            r#"{{"keys": [{{"name": "a", "sha256": "{}", "calls": 1, "window_seconds": 60}}]}}"#,
            hash("k")
        );
        Keys::parse("keys.json", &json, &Budget::new()).unwrap();
        for (src, needle) in [
            (file("usd = 1.0\n"), "needs prices"),
            (file("window_seconds = 0\n"), "window_seconds"),
            (file("bogus = 1\n"), "bogus"),
            (
                "[[keys]]\nname = \"a\"\nsha256 = \"xyz\"\n".to_owned(),
                "64 hex",
            ),
            ("keys = []\n".to_owned(), "no keys"),
        ] {
            let e = Keys::parse("keys.toml", &src, &Budget::new()).unwrap_err();
            assert!(e.message().contains(needle), "{src}: {}", e.message());
        }
        let priced = Budget::new().default_price(executionkit::CostRates::new(1.0, 2.0).unwrap());
        assert!(Keys::parse("keys.toml", &file("usd = 1.0\n"), &priced).is_ok());
    }

    #[test]
    fn an_exhausted_key_is_refused_until_its_window_renews() {
        let keys = Keys::parse("keys.toml", &file(""), &Budget::new()).unwrap();
        let key = keys.by_hash.values().next().unwrap().clone();
        let root = Arc::new(BudgetLedger::unlimited());
        let l = key.ledger(&root);
        assert!(key.check(&l).is_ok());
        l.charge(executionkit::TokenUsage::new(1, 1, 2), None);
        let e = key.check(&l).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            e.message.contains("`alice`") && e.message.contains("calls"),
            "{}",
            e.message
        );
        // Same window (none): the same ledger.
        assert!(Arc::ptr_eq(&l, &key.ledger(&root)));
        assert_eq!(root.spent().llm_calls, 2);
    }

    #[test]
    fn a_window_renews_the_budget() {
        let keys =
            Keys::parse("keys.toml", &file("window_seconds = 60\n"), &Budget::new()).unwrap();
        let key = keys.by_hash.values().next().unwrap().clone();
        let root = Arc::new(BudgetLedger::unlimited());
        let t0 = Instant::now();
        let l = key.ledger_at(&root, t0);
        l.charge(executionkit::TokenUsage::new(1, 1, 2), None);
        let e = key.check(&l).unwrap_err();
        assert!(e.message.contains("60-second window"), "{}", e.message);
        let same = key.ledger_at(&root, t0 + Duration::from_secs(59));
        assert!(Arc::ptr_eq(&l, &same));
        let next = key.ledger_at(&root, t0 + Duration::from_secs(60));
        assert!(!Arc::ptr_eq(&l, &next));
        assert!(key.check(&next).is_ok());
        // The server's ledger keeps the whole spend.
        assert_eq!(root.spent().llm_calls, 2);
    }

    #[test]
    fn a_tokens_budget_counts_input_and_output() {
        let keys = Keys::parse(
            "keys.toml",
            &file("tokens = 10\n").replace("calls = 2\n", ""),
            &Budget::new(),
        )
        .unwrap();
        let key = keys.by_hash.values().next().unwrap().clone();
        let l = key.ledger(&Arc::new(BudgetLedger::unlimited()));
        l.charge(executionkit::TokenUsage::new(6, 3, 1), None);
        assert!(key.check(&l).is_ok());
        l.charge(executionkit::TokenUsage::new(0, 1, 0), None);
        let e = key.check(&l).unwrap_err();
        assert!(e.message.contains("(tokens)"), "{}", e.message);
    }
}
