//! The config file (`--config FILE` or `EK_CONFIG`): named providers, failover chains and
//! routers, picked with `--provider NAME` or a pipe step's `provider=NAME` (docs/cli.md
//! "Config file").
//!
//! The whole file is read and checked before anything else: TOML syntax, every table's keys and
//! types, every name a chain or a router refers to, the router rules' `when` expressions. Each
//! mistake is an `invalid_argument` naming the file, the line and what is wrong, and never
//! quotes a value that could be a key. Providers are built only when a run uses them; only
//! then are their key variables read.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use executionkit::{CostRates, Error};
use serde::Deserialize;
use serde::de::IgnoredAny;
use toml::Spanned;

mod build;
mod when;
pub use build::Builder;
use when::{Cond, parse_when};

/// Where an OpenAI-kind provider without `base_url` sends its requests.
const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Where an Anthropic-kind provider without `base_url` sends its requests (the API root).
const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

// The file as TOML has it. Unknown keys and tables are errors (`deny_unknown_fields`).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    providers: BTreeMap<Spanned<String>, Spanned<RawProvider>>,
    #[serde(default)]
    failover: BTreeMap<Spanned<String>, Spanned<RawFailover>>,
    #[serde(default)]
    routers: BTreeMap<Spanned<String>, Spanned<RawRouter>>,
    /// `ek serve`'s named pipes: NAME = ["consensus samples=3", "refine …"] (`--step` strings).
    #[serde(default)]
    pipes: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    model: Spanned<String>,
    api_key_env: Option<Spanned<String>>,
    /// Refused: a key is never written in the file.
    api_key: Option<Spanned<IgnoredAny>>,
    retries: Option<u32>,
    price_in: Option<Spanned<f64>>,
    price_out: Option<Spanned<f64>>,
    price_cache_read: Option<Spanned<f64>>,
    price_cache_write: Option<Spanned<f64>>,
    rpm: Option<Spanned<u32>>,
    tpm: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    providers: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    rules: Option<Vec<Spanned<RawRule>>>,
    default: Option<Spanned<String>>,
    round_robin: Option<Vec<Spanned<String>>>,
    weighted: Option<Vec<Spanned<RawWeight>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    when: Spanned<String>,
    #[serde(rename = "use")]
    target: Spanned<String>,
    model: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeight {
    #[serde(rename = "use")]
    target: Spanned<String>,
    weight: Spanned<u32>,
}

// The file, checked.

/// The wire a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenAi,
    Anthropic,
}

#[derive(Debug)]
struct ProviderDef {
    line: usize,
    kind: Kind,
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    retries: Option<u32>,
    rates: Option<CostRates>,
    rpm: Option<NonZeroU32>,
    tpm: Option<NonZeroU32>,
}

#[derive(Debug)]
struct FailoverDef {
    providers: Vec<String>,
}

#[derive(Debug)]
enum RouterDef {
    Rules {
        rules: Vec<RuleDef>,
        default: String,
    },
    RoundRobin(Vec<String>),
    Weighted(Vec<(String, u32)>),
}

#[derive(Debug, Clone)]
struct RuleDef {
    when: Vec<Cond>,
    target: String,
    model: Option<String>,
}

/// A checked config file.
#[derive(Debug)]
pub struct Config {
    /// The path as given, for messages.
    path: String,
    providers: BTreeMap<String, ProviderDef>,
    failovers: BTreeMap<String, FailoverDef>,
    routers: BTreeMap<String, RouterDef>,
    /// `[pipes]`: name → its `--step` strings, each checked.
    pipes: BTreeMap<String, Vec<String>>,
}

/// What a run's providers are built with.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// `--timeout`.
    pub timeout: Duration,
    /// `--max-retries`: the retries of a provider used on its own (or as a router's target)
    /// when the file gives it none.
    pub max_retries: u32,
}

/// The 1-based line of byte `at` of `src`.
fn line_of(src: &str, at: usize) -> usize {
    src.get(..at).unwrap_or(src).matches('\n').count() + 1
}

/// A serde message without the value it quotes (`invalid type: string "…"`): a value in the
/// wrong place could be a key.
fn unquoted(msg: &str) -> String {
    match (msg.find('"'), msg.rfind('"')) {
        (Some(a), Some(b)) if b > a => format!("{}…{}", &msg[..a], &msg[b + 1..]),
        _ => msg.to_owned(),
    }
}

impl Config {
    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// `invalid_argument` (argument `config`) naming the file, and the line for a mistake in it.
    pub fn load(path: &str) -> Result<Self, Error> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_argument("config", format!("cannot read the config file {path}: {e}"))
        })?;
        Self::parse(path, &src)
    }

    /// Checks `src`, the text of the file at `path`.
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn parse(path: &str, src: &str) -> Result<Self, Error> {
        let raw: RawFile = toml::from_str(src).map_err(|e| {
            let msg = unquoted(e.message().trim());
            match e.span() {
                Some(s) => Error::invalid_argument(
                    "config",
                    format!("{path}, line {}: {msg}", line_of(src, s.start)),
                ),
                None => Error::invalid_argument("config", format!("{path}: {msg}")),
            }
        })?;
        let at = |span: std::ops::Range<usize>, msg: String| {
            Error::invalid_argument(
                "config",
                format!("{path}, line {}: {msg}", line_of(src, span.start)),
            )
        };

        // One namespace: --provider picks by name, whatever the table.
        let mut names: HashMap<&str, (&str, usize)> = HashMap::new();
        let tables = raw
            .providers
            .keys()
            .map(|k| ("providers", k))
            .chain(raw.failover.keys().map(|k| ("failover", k)))
            .chain(raw.routers.keys().map(|k| ("routers", k)));
        for (table, key) in tables {
            let name = key.get_ref().as_str();
            if name.trim().is_empty() {
                return Err(at(key.span(), format!("[{table}] has an empty name")));
            }
            if let Some((other, line)) = names.insert(name, (table, line_of(src, key.span().start)))
            {
                return Err(at(
                    key.span(),
                    format!(
                        "the name `{name}` is already used by [{other}.{name}] (line {line}); \
                         --provider picks by name, so every name must be different"
                    ),
                ));
            }
        }

        let mut providers = BTreeMap::new();
        for (key, value) in &raw.providers {
            let def = provider_def(key, value, &at, src)?;
            providers.insert(key.get_ref().clone(), def);
        }

        let mut failovers = BTreeMap::new();
        for (key, value) in &raw.failover {
            let name = key.get_ref();
            let list = &value.get_ref().providers;
            if list.is_empty() {
                return Err(at(
                    value.span(),
                    format!("[failover.{name}]: `providers` is empty; list at least one provider"),
                ));
            }
            let mut seen = Vec::new();
            for p in list {
                let p_name = p.get_ref();
                if !providers.contains_key(p_name) {
                    return Err(at(
                        p.span(),
                        format!(
                            "[failover.{name}]: `{p_name}` is not a provider; a chain lists names from [providers.*] ({})",
                            list_or_none(providers.keys())
                        ),
                    ));
                }
                if seen.contains(&p_name) {
                    return Err(at(
                        p.span(),
                        format!("[failover.{name}]: `{p_name}` is listed twice"),
                    ));
                }
                seen.push(p_name);
            }
            failovers.insert(
                name.clone(),
                FailoverDef {
                    providers: list.iter().map(|p| p.get_ref().clone()).collect(),
                },
            );
        }

        let targets: Vec<&String> = providers.keys().chain(failovers.keys()).collect();
        let target = |t: &Spanned<String>, router: &str| -> Result<String, Error> {
            let n = t.get_ref();
            if targets.contains(&n) {
                Ok(n.clone())
            } else {
                Err(at(
                    t.span(),
                    format!(
                        "[routers.{router}]: `{n}` is neither a provider nor a failover chain ({})",
                        list_or_none(targets.iter().copied())
                    ),
                ))
            }
        };
        let mut routers = BTreeMap::new();
        for (key, value) in &raw.routers {
            let name = key.get_ref();
            let r = value.get_ref();
            let modes = [
                r.rules.is_some() || r.default.is_some(),
                r.round_robin.is_some(),
                r.weighted.is_some(),
            ];
            let def = match modes {
                [true, false, false] => {
                    let Some(default) = &r.default else {
                        return Err(at(
                            value.span(),
                            format!(
                                "[routers.{name}]: `rules` needs a `default` provider for requests no rule matches"
                            ),
                        ));
                    };
                    let mut rules = Vec::new();
                    for rule in r.rules.iter().flatten() {
                        let raw_rule = rule.get_ref();
                        let when = parse_when(raw_rule.when.get_ref()).map_err(|m| {
                            at(
                                raw_rule.when.span(),
                                format!(
                                    "[routers.{name}]: when = \"{}\": {m}",
                                    raw_rule.when.get_ref()
                                ),
                            )
                        })?;
                        let model = match &raw_rule.model {
                            Some(m) if m.get_ref().trim().is_empty() => {
                                return Err(at(
                                    m.span(),
                                    format!("[routers.{name}]: a rule's `model` is empty"),
                                ));
                            }
                            m => m.as_ref().map(|m| m.get_ref().clone()),
                        };
                        rules.push(RuleDef {
                            when,
                            target: target(&raw_rule.target, name)?,
                            model,
                        });
                    }
                    RouterDef::Rules {
                        rules,
                        default: target(default, name)?,
                    }
                }
                [false, true, false] => {
                    let list = r.round_robin.as_deref().unwrap_or_default();
                    if list.is_empty() {
                        return Err(at(
                            value.span(),
                            format!("[routers.{name}]: `round_robin` is empty"),
                        ));
                    }
                    RouterDef::RoundRobin(
                        list.iter()
                            .map(|t| target(t, name))
                            .collect::<Result<_, _>>()?,
                    )
                }
                [false, false, true] => {
                    let list = r.weighted.as_deref().unwrap_or_default();
                    if list.is_empty() {
                        return Err(at(
                            value.span(),
                            format!("[routers.{name}]: `weighted` is empty"),
                        ));
                    }
                    let mut out = Vec::new();
                    for w in list {
                        let w = w.get_ref();
                        if *w.weight.get_ref() == 0 {
                            return Err(at(
                                w.weight.span(),
                                format!("[routers.{name}]: a weight must be >= 1"),
                            ));
                        }
                        out.push((target(&w.target, name)?, *w.weight.get_ref()));
                    }
                    RouterDef::Weighted(out)
                }
                [false, false, false] => {
                    return Err(at(
                        value.span(),
                        format!(
                            "[routers.{name}]: give `rules` and `default`, or `round_robin`, or `weighted`"
                        ),
                    ));
                }
                _ => {
                    return Err(at(
                        value.span(),
                        format!(
                            "[routers.{name}]: `rules`/`default`, `round_robin` and `weighted` are three kinds of router; give one"
                        ),
                    ));
                }
            };
            routers.insert(name.clone(), def);
        }

        let defined = |n: &str| {
            providers.contains_key(n) || failovers.contains_key(n) || routers.contains_key(n)
        };
        let mut pipes = BTreeMap::new();
        for (key, value) in &raw.pipes {
            let name = key.get_ref();
            if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
                return Err(at(
                    key.span(),
                    "[pipes]: a pipe's name must be non-empty, without spaces".to_owned(),
                ));
            }
            let steps = value.get_ref();
            if steps.is_empty() {
                return Err(at(
                    value.span(),
                    format!("[pipes] {name}: the list of steps is empty; give at least one"),
                ));
            }
            for (i, step) in steps.iter().enumerate() {
                let spec = step.get_ref();
                let parsed =
                    crate::step::parse_step(i + 1, spec, &executionkit::CallOptions::new())
                        .map_err(|e| at(step.span(), format!("[pipes] {name}: {}", e.message())))?;
                if let Some(p) = parsed.provider.as_deref().filter(|p| !defined(p)) {
                    return Err(at(
                        step.span(),
                        format!(
                            "[pipes] {name}: step {} names provider `{p}`, which is not defined in this file",
                            i + 1
                        ),
                    ));
                }
            }
            pipes.insert(
                name.clone(),
                steps.iter().map(|s| s.get_ref().clone()).collect(),
            );
        }

        Ok(Self {
            path: path.to_owned(),
            providers,
            failovers,
            routers,
            pipes,
        })
    }

    /// `[pipes]`: each named pipe's `--step` strings (checked), by name.
    pub fn pipes(&self) -> &BTreeMap<String, Vec<String>> {
        &self.pipes
    }

    /// Every name the file defines, by table, for messages.
    fn defined(&self) -> String {
        let mut parts = Vec::new();
        for (table, names) in [
            ("providers", self.providers.keys().collect::<Vec<_>>()),
            ("failover", self.failovers.keys().collect()),
            ("routers", self.routers.keys().collect()),
        ] {
            if !names.is_empty() {
                let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                parts.push(format!("{} ({table})", names.join(", ")));
            }
        }
        if parts.is_empty() {
            "nothing".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// Whether `name` is defined in any table.
    #[cfg(test)]
    fn has(&self, name: &str) -> bool {
        self.providers.contains_key(name)
            || self.failovers.contains_key(name)
            || self.routers.contains_key(name)
    }

    /// The path as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `invalid_argument` for `flag NAME` naming nothing in the file.
    pub fn unknown(&self, flag: &str, name: &str) -> Error {
        Error::invalid_argument(
            "provider",
            format!(
                "{flag} `{name}`: no provider, failover chain or router of that name in {}; it defines {}",
                self.path,
                self.defined()
            ),
        )
    }
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none is defined".to_owned()
    } else {
        format!("defined: {}", v.join(", "))
    }
}

/// Whether `s` is a conventional environment variable name: ASCII letters, digits and `_`,
/// not starting with a digit.
fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name` as a message may show it: only an upper-case variable name (a key is never one).
fn shown_var(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        format!("`{name}`")
    } else {
        "a variable".to_owned()
    }
}

fn provider_def(
    key: &Spanned<String>,
    value: &Spanned<RawProvider>,
    at: &dyn Fn(std::ops::Range<usize>, String) -> Error,
    src: &str,
) -> Result<ProviderDef, Error> {
    let name = key.get_ref();
    let p = value.get_ref();
    let ctx = format!("[providers.{name}]");
    if let Some(k) = &p.api_key {
        return Err(at(
            k.span(),
            format!(
                "{ctx}: `api_key` is not allowed (a key is never written in the file): put the key in an environment variable and give its name as api_key_env"
            ),
        ));
    }
    let kind = match p.kind.as_ref().map(|k| k.get_ref().as_str()) {
        None | Some("openai") => Kind::OpenAi,
        Some("anthropic") => Kind::Anthropic,
        Some(other) => {
            let span = p.kind.as_ref().map_or(value.span(), Spanned::span);
            return Err(at(
                span,
                format!("{ctx}: unknown kind `{other}`; valid kinds: openai, anthropic"),
            ));
        }
    };
    let base_url = match &p.base_url {
        Some(u) => {
            let text = u.get_ref();
            // An invalid URL is not quoted: the line says where it is, and text that is not a
            // URL may hold a key in a form the redaction cannot see (found by the fuzzer:
            // `…xsk-…@host`, `…Ghsk-…` with no scheme).
            let url = url::Url::parse(text).map_err(|e| {
                at(
                    u.span(),
                    format!("{ctx}: base_url is not a valid URL ({e})"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(at(
                    u.span(),
                    format!(
                        "{ctx}: base_url must be http:// or https://, got {}://",
                        url.scheme()
                    ),
                ));
            }
            if url.password().is_some() || !url.username().is_empty() {
                return Err(at(
                    u.span(),
                    format!(
                        "{ctx}: base_url must not hold credentials (a user or password before \
                         `@`); use api_key_env"
                    ),
                ));
            }
            text.clone()
        }
        None => match kind {
            Kind::OpenAi => OPENAI_BASE_URL.to_owned(),
            Kind::Anthropic => ANTHROPIC_BASE_URL.to_owned(),
        },
    };
    if p.model.get_ref().trim().is_empty() {
        return Err(at(p.model.span(), format!("{ctx}: `model` is empty")));
    }
    let api_key_env = match &p.api_key_env {
        Some(v) if !is_var_name(v.get_ref()) => {
            return Err(at(
                v.span(),
                format!(
                    "{ctx}: api_key_env must be the NAME of an environment variable (letters, digits and _), not the key itself"
                ),
            ));
        }
        v => v.as_ref().map(|v| v.get_ref().clone()),
    };
    let price = |v: &Option<Spanned<f64>>| v.as_ref().map(|s| (*s.get_ref(), s.span()));
    let rates = match (price(&p.price_in), price(&p.price_out)) {
        (Some((i, span)), Some((o, _))) => {
            let bad = |e: Error| at(span.clone(), format!("{ctx}: {}", e.message()));
            let mut r = CostRates::new(i, o).map_err(bad)?;
            if let Some((c, span)) = price(&p.price_cache_read) {
                r = r
                    .with_cache_read(c)
                    .map_err(|e| at(span, format!("{ctx}: price_cache_read: {}", e.message())))?;
            }
            if let Some((c, span)) = price(&p.price_cache_write) {
                r = r
                    .with_cache_write(c)
                    .map_err(|e| at(span, format!("{ctx}: price_cache_write: {}", e.message())))?;
            }
            Some(r)
        }
        (None, None) => {
            if let Some((_, span)) = price(&p.price_cache_read).or(price(&p.price_cache_write)) {
                return Err(at(
                    span,
                    format!(
                        "{ctx}: price_cache_read and price_cache_write need price_in and price_out"
                    ),
                ));
            }
            None
        }
        (Some((_, span)), None) | (None, Some((_, span))) => {
            return Err(at(
                span,
                format!(
                    "{ctx}: price_in and price_out go together (USD per million input / output tokens)"
                ),
            ));
        }
    };
    let per_minute = |v: &Option<Spanned<u32>>, what: &str| -> Result<Option<NonZeroU32>, Error> {
        match v {
            None => Ok(None),
            Some(s) => NonZeroU32::new(*s.get_ref()).map(Some).ok_or_else(|| {
                at(
                    s.span(),
                    format!("{ctx}: {what} must be >= 1 (leave it out for no limit)"),
                )
            }),
        }
    };
    Ok(ProviderDef {
        line: line_of(src, key.span().start),
        kind,
        base_url,
        model: p.model.get_ref().clone(),
        api_key_env,
        retries: p.retries,
        rates,
        rpm: per_minute(&p.rpm, "rpm")?,
        tpm: per_minute(&p.tpm, "tpm")?,
    })
}

/// The fuzz target `config` (fuzz/), also replayed on its corpus by the tests: checking a config
/// file never panics, a refused file is an `invalid_argument`, and its message never quotes a
/// value shaped like an API key (`sk-` and 8 or more letters, digits or dashes).
#[cfg(any(test, fuzzing))]
pub fn fuzz_one(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    if let Err(e) = Config::parse("ek.toml", &src) {
        assert_eq!(e.kind(), executionkit::ErrorKind::InvalidArgument, "{e}");
        let msg = e.to_string();
        let mut rest = src.as_ref();
        while let Some(i) = rest.find("sk-") {
            let key: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if key.len() >= 11 {
                assert!(!msg.contains(&key), "the message quotes {key:?}: {msg}");
            }
            rest = &rest[i + 3..];
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[providers.primary]
kind = "openai"
base_url = "http://127.0.0.1:8081/v1"
model = "m"
api_key_env = "PRIMARY_KEY"
retries = 0
price_in = 0.15
price_out = 0.6

[providers.backup]
kind = "anthropic"
base_url = "http://127.0.0.1:8082"
model = "claude"
rpm = 60
tpm = 100000

[failover.main]
providers = ["primary", "backup"]

[routers.cheap]
rules = [{ when = "prompt_tokens < 2000", use = "primary" }, { when = "tier == 'best'", use = "main" }]
default = "primary"

[routers.spread]
weighted = [{ use = "primary", weight = 3 }, { use = "backup", weight = 1 }]
"#;

    fn err(src: &str) -> String {
        Config::parse("ek.toml", src)
            .unwrap_err()
            .message()
            .to_owned()
    }

    #[test]
    fn a_good_file_parses() {
        let c = Config::parse("ek.toml", GOOD).unwrap();
        assert!(c.has("primary") && c.has("main") && c.has("cheap") && c.has("spread"));
        assert!(!c.has("nope"));
        assert_eq!(c.providers["backup"].kind, Kind::Anthropic);
        assert_eq!(c.providers["primary"].line, 2);
        assert!(c.providers["primary"].rates.is_some());
    }

    #[test]
    fn mistakes_name_the_line() {
        let e = err("[providers.a]\nmodel = \"m\"\nfoo = 1\n");
        assert!(e.starts_with("ek.toml, line 3: unknown field `foo`"), "{e}");
        let e = err("[providers.a]\nkind = \"grpc\"\nmodel = \"m\"\n");
        assert!(
            e.contains("line 2") && e.contains("openai, anthropic"),
            "{e}"
        );
        let e = err("[providers.a]\nkind = \"openai\"\n");
        assert!(
            e.contains("line 1") && e.contains("missing field `model`"),
            "{e}"
        );
        let e = err("[providers.a]\nmodel = \"m\"\n\n[failover.f]\nproviders = [\"a\", \"b\"]\n");
        assert!(
            e.contains("line 5") && e.contains("`b` is not a provider"),
            "{e}"
        );
        let e = err("[providers.a]\nmodel = \"m\"\n[routers.a]\ndefault = \"a\"\n");
        assert!(
            e.contains("line 3") && e.contains("already used by [providers.a] (line 1)"),
            "{e}"
        );
        let e = err(
            "[providers.a]\nmodel = \"m\"\n[routers.r]\nrules = [{ when = \"prompt_tokens <\", use = \"a\" }]\ndefault = \"a\"\n",
        );
        assert!(e.contains("line 4") && e.contains("whole number"), "{e}");
        let e = err("[providers.a]\nmodel = \"m\"\n[routers.r]\nrules = []\n");
        assert!(e.contains("needs a `default`"), "{e}");
        let e = err(
            "[providers.a]\nmodel = \"m\"\n[routers.r]\nround_robin = [\"a\"]\ndefault = \"a\"\n",
        );
        assert!(e.contains("give one"), "{e}");
        let e = err("[providers.a]\nmodel = \"m\"\nprice_in = 1\n");
        assert!(e.contains("line 3") && e.contains("go together"), "{e}");
        let e = err("[providers.a]\nmodel = \"m\"\nrpm = 0\n");
        assert!(
            e.contains("line 3") && e.contains("rpm must be >= 1"),
            "{e}"
        );
        let e = err("[providers.a]\nmodel = \"m\"\nbase_url = \"ftp://h/\"\n");
        assert!(
            e.contains("line 3") && e.contains("http:// or https://"),
            "{e}"
        );
        let e = err("[providers.a\nmodel = \"m\"\n");
        assert!(e.starts_with("ek.toml, line 1:"), "{e}");
    }

    #[test]
    fn pipes_are_checked_step_by_step() {
        let src = "[providers.a]\nmodel = \"m\"\n[pipes]\nvote = [\"consensus samples=3\", \"refine provider=a\"]\n";
        let c = Config::parse("ek.toml", src).unwrap();
        assert_eq!(
            c.pipes()["vote"],
            vec![
                "consensus samples=3".to_owned(),
                "refine provider=a".to_owned()
            ]
        );
        let e = err("[pipes]\nvote = [\"consensus samplez=3\"]\n");
        assert!(
            e.contains("line 2") && e.contains("[pipes] vote") && e.contains("samplez"),
            "{e}"
        );
        let e = err("[pipes]\nvote = []\n");
        assert!(e.contains("line 2") && e.contains("empty"), "{e}");
        let e = err("[pipes]\nvote = [\"refine provider=nope\"]\n");
        assert!(e.contains("`nope`") && e.contains("not defined"), "{e}");
        let e = err("[pipes]\nvote = \"consensus\"\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn keys_are_refused_and_never_quoted() {
        let key = "sk-live-0123456789abcdefghij";
        for src in [
            format!("[providers.a]\nmodel = \"m\"\napi_key = \"{key}\"\n"),
            format!("[providers.a]\nmodel = \"m\"\napi_key_env = \"{key}\"\n"),
            format!("[providers.a]\nmodel = \"m\"\nretries = \"{key}\"\n"),
            format!("[providers.a]\nmodel = \"m\"\nbase_url = \"http://u:{key}@127.0.0.1/v1\"\n"),
        ] {
            let e = err(&src);
            assert!(e.contains("line 3"), "{e}");
            assert!(!e.contains(key) && !e.contains("0123456789abcdef"), "{e}");
        }
        assert!(
            err(&format!(
                "[providers.a]\nmodel = \"m\"\napi_key = \"{key}\"\n"
            ))
            .contains("api_key_env")
        );
    }

    #[test]
    fn building_reads_keys_and_shares_providers() {
        let c = Config::parse("ek.toml", GOOD).unwrap();
        let env = |v: &str| (v == "PRIMARY_KEY").then(|| "sk-primary-key-000111222".to_owned());
        let opts = BuildOptions {
            timeout: Duration::from_secs(5),
            max_retries: 3,
        };
        let mut b = Builder::new(&c, &env, opts);
        let cheap = b.get("--provider", "cheap").unwrap();
        assert_eq!(cheap.model(), "m");
        assert_eq!(b.keys(), ["sk-primary-key-000111222"]);
        assert_eq!(b.prices().map(|(m, _)| m).collect::<Vec<_>>(), ["m"]);
        assert_eq!(b.unpriced(), ["backup"]);
        // Built once: the same provider for the same name.
        let again = b.get("--step", "cheap").unwrap();
        assert!(std::sync::Arc::ptr_eq(&cheap, &again));
        let e = b.get("--provider", "nope").unwrap_err();
        assert!(
            e.message().contains("primary, backup") || e.message().contains("backup, primary"),
            "{}",
            e.message()
        );

        let none = |_: &str| None;
        let mut b = Builder::new(&c, &none, opts);
        let e = b.get("--provider", "primary").unwrap_err();
        assert!(
            e.message().contains("`PRIMARY_KEY`, which is not set"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("line 2"), "{}", e.message());
        // A provider without a key variable needs none.
        assert!(b.get("--provider", "backup").is_ok());
    }

    #[test]
    fn one_model_two_prices_is_refused_when_both_are_used() {
        let src = "[providers.a]\nmodel = \"m\"\nprice_in = 1\nprice_out = 2\n\
                   [providers.b]\nmodel = \"m\"\nprice_in = 3\nprice_out = 4\n\
                   [failover.f]\nproviders = [\"a\", \"b\"]\n";
        let c = Config::parse("ek.toml", src).unwrap();
        let none = |_: &str| None;
        let opts = BuildOptions {
            timeout: Duration::from_secs(5),
            max_retries: 0,
        };
        assert!(Builder::new(&c, &none, opts).get("--provider", "a").is_ok());
        let e = Builder::new(&c, &none, opts)
            .get("--provider", "f")
            .unwrap_err();
        assert!(e.message().contains("other prices"), "{}", e.message());
    }

    /// Found by the fuzzer (fuzz/corpus/config/crash-a508…, crash-30cd…): an invalid base_url
    /// holding a key-shaped run after other letters was quoted whole in the message.
    #[test]
    fn an_invalid_base_url_is_not_quoted() {
        for url in [
            "pxsk-abcdefghijklmnop@host",
            "hxxEGhsk-abcdefghijk",
            "not a url",
        ] {
            let src = format!("[providers.a]\nbase_url = \"{url}\"\nmodel = \"m\"\n");
            let e = Config::parse("ek.toml", &src).unwrap_err().to_string();
            assert!(e.contains("line 2") && e.contains("not a valid URL"), "{e}");
            assert!(!e.contains(url), "{e}");
        }
    }
}
