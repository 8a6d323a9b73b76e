//! The `--step` grammar of `ek pipe`: `NAME KEY=VALUE …` (CLI-CONTRACT.md).
//!
//! Every step is parsed and validated before the first request: an unknown name or key, a
//! repeated key or a bad value is an `invalid_argument` naming what is valid.

use executionkit::{CallOptions, WithCallOptions as _};
use std::collections::HashSet;
use std::str::FromStr;

use executionkit::StopRule;
use executionkit::{Consensus, Error, Pattern, RefineLoop, VotingStrategy};

/// The step names `ek pipe` knows.
pub const STEP_NAMES: &[&str] = &["consensus", "refine"];

/// Keys any step takes.
const COMMON_KEYS: &[&str] = &["model", "provider", "tier", "if_score_below"];
/// Keys of a consensus step.
pub const CONSENSUS_KEYS: &[&str] = &[
    "samples",
    "temperature",
    "max_concurrency",
    "strategy",
    "max_tokens",
    "early_stop",
    "logprob_weights",
    "usc",
];
/// Keys of a refine step.
pub const REFINE_KEYS: &[&str] = &[
    "target_score",
    "max_iterations",
    "patience",
    "delta_threshold",
    "temperature",
    "max_tokens",
    "max_eval_chars",
];

/// One parsed step's pattern.
#[derive(Debug)]
pub enum StepPattern {
    /// `consensus …`.
    Consensus(Consensus),
    /// `refine …`.
    Refine(RefineLoop),
}

/// One parsed `--step`.
#[derive(Debug)]
pub struct StepSpec {
    /// The pattern with its options set.
    pub pattern: StepPattern,
    /// `if_score_below=X`: run only when the previous step's score is below X or null.
    pub if_score_below: Option<f64>,
    /// `provider=NAME`: a provider, failover chain or router of the config file.
    pub provider: Option<String>,
}

/// Parses `--step` number `index` (1-based) of text `spec`.
///
/// # Errors
/// `invalid_argument` naming the step, the key and what is valid.
/// Every step starts from `call` (the command line's `--seed` and `--system`).
pub fn parse_step(index: usize, spec: &str, call: &CallOptions) -> Result<StepSpec, Error> {
    let at = |msg: String| format!("--step {index} (`{spec}`): {msg}");
    let mut tokens = spec.split_whitespace();
    let Some(name) = tokens.next() else {
        return Err(Error::invalid_argument(
            "step",
            at(format!(
                "empty step; expected NAME KEY=VALUE … with NAME one of: {}",
                STEP_NAMES.join(", ")
            )),
        ));
    };
    let keys: &[&str] = match name {
        "consensus" => CONSENSUS_KEYS,
        "refine" => REFINE_KEYS,
        other => {
            return Err(Error::invalid_argument(
                "step",
                at(format!(
                    "unknown step `{other}`; valid steps: {}",
                    STEP_NAMES.join(", ")
                )),
            ));
        }
    };
    let valid_keys = || {
        keys.iter()
            .chain(COMMON_KEYS)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut pattern = match name {
        "consensus" => StepPattern::Consensus(Consensus::default().options(call.clone())),
        _ => StepPattern::Refine(RefineLoop::default().options(call.clone())),
    };
    let mut if_score_below = None;
    let mut provider = None;
    let mut seen = HashSet::new();
    for token in tokens {
        let Some((key, value)) = token.split_once('=') else {
            return Err(Error::invalid_argument(
                "step",
                at(format!(
                    "`{token}` is not KEY=VALUE; valid keys for {name}: {}",
                    valid_keys()
                )),
            ));
        };
        if !keys.contains(&key) && !COMMON_KEYS.contains(&key) {
            return Err(Error::invalid_argument(
                key,
                at(format!(
                    "unknown key `{key}` for {name}; valid keys: {}",
                    valid_keys()
                )),
            ));
        }
        if !seen.insert(key.to_owned()) {
            return Err(Error::invalid_argument(
                key,
                at(format!("key `{key}` is given more than once")),
            ));
        }
        let bad = |expected: &str| {
            Error::invalid_argument(
                key,
                at(format!(
                    "bad value `{value}` for {key}: expected {expected}"
                )),
            )
        };
        pattern = match (key, pattern) {
            ("model", p) => {
                if value.trim().is_empty() {
                    return Err(bad("a model name"));
                }
                match p {
                    StepPattern::Consensus(c) => StepPattern::Consensus(c.model(value.to_owned())),
                    StepPattern::Refine(r) => StepPattern::Refine(r.model(value.to_owned())),
                }
            }
            ("tier", p) => {
                if value.trim().is_empty() {
                    return Err(bad("a tier name"));
                }
                match p {
                    StepPattern::Consensus(c) => StepPattern::Consensus(c.tier(value.to_owned())),
                    StepPattern::Refine(r) => StepPattern::Refine(r.tier(value.to_owned())),
                }
            }
            ("provider", p) => {
                if value.trim().is_empty() {
                    return Err(bad("a name from the config file"));
                }
                provider = Some(value.to_owned());
                p
            }
            ("if_score_below", p) => {
                let x = parse_f64(value).ok_or_else(|| bad("a number"))?;
                if_score_below = Some(x);
                p
            }
            ("samples", StepPattern::Consensus(c)) => StepPattern::Consensus(
                c.samples(parse(value).ok_or_else(|| bad("an integer >= 1"))?),
            ),
            ("max_concurrency", StepPattern::Consensus(c)) => StepPattern::Consensus(
                c.max_concurrency(parse(value).ok_or_else(|| bad("an integer >= 1"))?),
            ),
            ("strategy", StepPattern::Consensus(c)) => {
                let s = VotingStrategy::from_str(value)
                    .map_err(|_| bad("one of: majority, unanimous"))?;
                StepPattern::Consensus(c.strategy(s))
            }
            ("early_stop", StepPattern::Consensus(c)) => {
                let rule = StopRule::from_str(value)
                    .map_err(|_| bad("none, window[:K] (K >= 2) or adaptive[:P] (0.5 < P < 1)"))?;
                StepPattern::Consensus(c.early_stop(rule))
            }
            ("logprob_weights", StepPattern::Consensus(c)) => {
                let yes = parse(value).ok_or_else(|| bad("true or false"))?;
                StepPattern::Consensus(c.logprob_weights(yes))
            }
            ("usc", StepPattern::Consensus(c)) => {
                let yes = parse(value).ok_or_else(|| bad("true or false"))?;
                StepPattern::Consensus(c.usc(yes))
            }
            ("temperature", StepPattern::Consensus(c)) => StepPattern::Consensus(
                c.temperature(parse_f64(value).ok_or_else(|| bad("a number >= 0"))?),
            ),
            ("max_tokens", StepPattern::Consensus(c)) => StepPattern::Consensus(
                c.max_tokens(parse(value).ok_or_else(|| bad("an integer >= 1"))?),
            ),
            ("target_score", StepPattern::Refine(r)) => StepPattern::Refine(
                r.target_score(parse_f64(value).ok_or_else(|| bad("a number in [0, 1]"))?),
            ),
            ("max_iterations", StepPattern::Refine(r)) => StepPattern::Refine(
                r.max_iterations(parse(value).ok_or_else(|| bad("an integer >= 0"))?),
            ),
            ("patience", StepPattern::Refine(r)) => {
                StepPattern::Refine(r.patience(parse(value).ok_or_else(|| bad("an integer >= 1"))?))
            }
            ("delta_threshold", StepPattern::Refine(r)) => StepPattern::Refine(
                r.delta_threshold(parse_f64(value).ok_or_else(|| bad("a number >= 0"))?),
            ),
            ("temperature", StepPattern::Refine(r)) => StepPattern::Refine(
                r.temperature(parse_f64(value).ok_or_else(|| bad("a number >= 0"))?),
            ),
            ("max_tokens", StepPattern::Refine(r)) => StepPattern::Refine(
                r.max_tokens(parse(value).ok_or_else(|| bad("an integer >= 1"))?),
            ),
            ("max_eval_chars", StepPattern::Refine(r)) => StepPattern::Refine(
                r.max_eval_chars(parse(value).ok_or_else(|| bad("an integer >= 1"))?),
            ),
            (_, p) => p,
        };
    }
    let validated = match &pattern {
        StepPattern::Consensus(c) => c.validate(),
        StepPattern::Refine(r) => r.validate(),
    };
    validated.map_err(|e| {
        let arg = e
            .metadata()
            .get("argument")
            .and_then(|v| v.as_str())
            .unwrap_or("step")
            .to_owned();
        Error::invalid_argument(&arg, at(e.message().to_owned()))
    })?;
    Ok(StepSpec {
        pattern,
        if_score_below,
        provider,
    })
}

fn parse<T: FromStr>(v: &str) -> Option<T> {
    v.parse().ok()
}

fn parse_f64(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// The fuzz target `step` (fuzz/), also replayed on its corpus by the tests: the `--step`
/// grammar never panics, and a refused step is an `invalid_argument`.
#[cfg(any(test, fuzzing))]
pub fn fuzz_one(data: &[u8]) {
    let spec = String::from_utf8_lossy(data);
    if let Err(e) = parse_step(1, &spec, &CallOptions::default()) {
        assert_eq!(e.kind(), executionkit::ErrorKind::InvalidArgument, "{e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(spec: &str) -> String {
        parse_step(1, spec, &CallOptions::new())
            .unwrap_err()
            .message()
            .to_owned()
    }

    #[test]
    fn parses_the_seed_steps() {
        let s = parse_step(
            1,
            "consensus samples=5 temperature=0.9",
            &CallOptions::new(),
        )
        .unwrap();
        assert!(matches!(s.pattern, StepPattern::Consensus(_)));
        let s = parse_step(
            2,
            "refine target_score=0.9 max_iterations=3",
            &CallOptions::new(),
        )
        .unwrap();
        assert!(matches!(s.pattern, StepPattern::Refine(_)));
        let s = parse_step(2, "refine if_score_below=0.95 model=m", &CallOptions::new()).unwrap();
        assert_eq!(s.if_score_below, Some(0.95));
        let s = parse_step(1, "consensus provider=cheap tier=best", &CallOptions::new()).unwrap();
        assert_eq!(s.provider.as_deref(), Some("cheap"));
        let StepPattern::Consensus(c) = s.pattern else {
            panic!("not consensus")
        };
        assert_eq!(c.call_options().tier.as_deref(), Some("best"));
    }

    #[test]
    fn names_what_is_valid() {
        assert!(err("vote samples=5").contains("consensus, refine"));
        assert!(err("consensus sample=5").contains("samples"));
        assert!(err("consensus samples=5 samples=3").contains("more than once"));
        assert!(err("consensus samples=five").contains("bad value `five` for samples"));
        assert!(err("refine target_score=0.9 patience").contains("KEY=VALUE"));
        assert!(err("consensus strategy=best").contains("majority, unanimous"));
        assert!(err("refine samples=3").contains("target_score"));
        assert!(err("").contains("empty step"));
        assert!(err("consensus provider=").contains("a name from the config file"));
        assert!(err("refine tier=").contains("a tier name"));
    }
}
