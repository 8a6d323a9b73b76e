//! Which provider `ek` talks to, and with which key (CLI-CONTRACT.md "Endpoint and model").

use std::sync::Arc;
use std::time::Duration;

use executionkit::{Error, LlmProvider, OfflineModel, OpenAiProvider};

use crate::cli::Common;
use crate::config::{Builder, Config};

/// The one line `ek` prints on stderr when it falls back to the offline model.
pub const OFFLINE_NOTICE: &str = "ek: no endpoint configured; using the embedded offline model (set EXECUTIONKIT_BASE_URL to use a real one)";

/// The environment, read once (so tests and callers can pass their own).
#[derive(Debug, Default, Clone)]
pub struct Env {
    /// `EXECUTIONKIT_BASE_URL`.
    pub base_url: Option<String>,
    /// `EXECUTIONKIT_MODEL`.
    pub model: Option<String>,
    /// `EXECUTIONKIT_API_KEY`.
    pub api_key: Option<String>,
    /// `OPENAI_API_KEY`.
    pub openai_api_key: Option<String>,
    /// `EK_CONFIG`: the config file's path.
    pub config: Option<String>,
}

impl Env {
    /// Reads the process environment; empty values count as unset.
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            base_url: var("EXECUTIONKIT_BASE_URL"),
            model: var("EXECUTIONKIT_MODEL"),
            api_key: var("EXECUTIONKIT_API_KEY"),
            openai_api_key: var("OPENAI_API_KEY"),
            config: var("EK_CONFIG"),
        }
    }
}

/// The provider a run uses.
pub struct Selected {
    /// The provider.
    pub provider: Arc<dyn LlmProvider>,
    /// Whether it is the embedded offline model.
    pub offline: bool,
}

/// Picks the provider: the endpoint from `--base-url` or the environment, else the offline model.
///
/// # Errors
/// `invalid_argument` when an endpoint has no model, the URL is not valid http(s), or the
/// provider rejects its settings.
pub fn select(common: &Common, env: &Env) -> Result<Selected, Error> {
    let base_url = common
        .base_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| env.base_url.clone());
    let Some(base_url) = base_url else {
        return Ok(Selected {
            provider: Arc::new(OfflineModel::new()),
            offline: true,
        });
    };
    let model = common
        .model
        .clone()
        .filter(|m| !m.trim().is_empty())
        .or_else(|| env.model.clone())
        .ok_or_else(|| {
            Error::invalid_argument(
                "model",
                format!(
                    "an endpoint ({}) needs a model: pass --model NAME or set EXECUTIONKIT_MODEL",
                    shown(&base_url)
                ),
            )
        })?;
    let url = url::Url::parse(&base_url).map_err(|e| {
        Error::invalid_argument(
            "base_url",
            format!(
                "--base-url / EXECUTIONKIT_BASE_URL is not a valid URL ({e}): {}",
                shown(&base_url)
            ),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid_argument(
            "base_url",
            format!(
                "--base-url / EXECUTIONKIT_BASE_URL must be http:// or https://, got {}://",
                url.scheme()
            ),
        ));
    }
    let key = api_key_for(&url, common.api_key.as_deref(), env);
    let timeout = timeout(common.timeout)?;
    let mut builder = OpenAiProvider::builder(base_url, model).timeout(timeout);
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    let provider = builder.build()?;
    Ok(Selected {
        provider: Arc::new(provider),
        offline: false,
    })
}

/// The config file from `--config`, else `EK_CONFIG`, checked whole; `None` without either.
///
/// # Errors
/// `invalid_argument` for a file that cannot be read or has a mistake (naming its line).
pub fn config(common: &Common, env: &Env) -> Result<Option<Config>, Error> {
    let path = common
        .config
        .clone()
        .filter(|p| !p.trim().is_empty())
        .or_else(|| env.config.clone());
    path.map(|p| Config::load(&p)).transpose()
}

/// The provider `--provider NAME` picks from the config file.
///
/// # Errors
/// `invalid_argument` when `--base-url`, `--model` or `--api-key` is given too, when there is no
/// config file, or when the name is unknown or its provider cannot be built.
pub fn from_config(
    common: &Common,
    name: &str,
    builder: Option<&mut Builder<'_>>,
) -> Result<Selected, Error> {
    let clashing: Vec<&str> = [
        ("--base-url", common.base_url.is_some()),
        ("--model", common.model.is_some()),
        ("--api-key", common.api_key.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    if !clashing.is_empty() {
        return Err(Error::invalid_argument(
            "provider",
            format!(
                "--provider takes the endpoint, model and key from the config file; drop {}",
                clashing.join(", ")
            ),
        ));
    }
    let Some(builder) = builder else {
        return Err(Error::invalid_argument(
            "provider",
            format!("--provider {name} needs a config file: pass --config FILE or set EK_CONFIG"),
        ));
    };
    Ok(Selected {
        provider: builder.get("--provider", name)?,
        offline: false,
    })
}

/// `url` as it may be printed: user information (`user:pass@`) and credential-shaped query
/// parameters replaced by `[REDACTED]`.
fn shown(url: &str) -> String {
    executionkit::redact::redact(url)
}

/// The key for `url`: `--api-key`, else `EXECUTIONKIT_API_KEY`, else `OPENAI_API_KEY` only when
/// the host is `api.openai.com` (a key is never sent to a host it was not meant for).
pub fn api_key_for(url: &url::Url, flag: Option<&str>, env: &Env) -> Option<String> {
    if let Some(k) = flag.filter(|k| !k.is_empty()) {
        return Some(k.to_owned());
    }
    if let Some(k) = &env.api_key {
        return Some(k.clone());
    }
    if url
        .host_str()
        .is_some_and(|h| h.eq_ignore_ascii_case("api.openai.com"))
    {
        return env.openai_api_key.clone();
    }
    None
}

/// Validates `--timeout` (seconds, finite, > 0).
///
/// # Errors
/// `invalid_argument` naming `timeout`.
pub fn timeout(secs: f64) -> Result<Duration, Error> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(Error::invalid_argument(
            "timeout",
            format!("--timeout must be a finite number of seconds > 0, got {secs}"),
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| {
        Error::invalid_argument("timeout", format!("--timeout is out of range: {secs}"))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(api: Option<&str>, openai: Option<&str>) -> Env {
        Env {
            api_key: api.map(str::to_owned),
            openai_api_key: openai.map(str::to_owned),
            ..Env::default()
        }
    }

    #[test]
    fn openai_key_only_goes_to_openai() {
        let openai = url::Url::parse("https://api.openai.com/v1").unwrap();
        let other = url::Url::parse("http://127.0.0.1:8080/v1").unwrap();
        let e = env(None, Some("sk-o"));
        assert_eq!(api_key_for(&openai, None, &e).as_deref(), Some("sk-o"));
        assert_eq!(api_key_for(&other, None, &e), None);
    }

    #[test]
    fn flag_then_executionkit_key_win() {
        let other = url::Url::parse("http://127.0.0.1:8080/v1").unwrap();
        let e = env(Some("ek-key"), Some("sk-o"));
        assert_eq!(
            api_key_for(&other, Some("flag"), &e).as_deref(),
            Some("flag")
        );
        assert_eq!(api_key_for(&other, None, &e).as_deref(), Some("ek-key"));
    }

    fn select_for(base_url: &str, model: Option<&str>) -> Error {
        use clap::Parser;
        let mut args = vec!["ek", "refine", "p", "--base-url", base_url];
        if let Some(m) = model {
            args.extend(["--model", m]);
        }
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        select(cli.command.common(), &Env::default()).err().unwrap()
    }

    #[test]
    fn url_credentials_are_never_in_errors() {
        for (url, model) in [
            ("http://bot:hunter2pass@127.0.0.1:8080/v1", None),
            ("http://bot:hunter2pass@127.0.0.1:99999/v1", Some("m")),
            ("ftp://bot:hunter2pass@127.0.0.1/v1", Some("m")),
        ] {
            let e = select_for(url, model);
            for text in [
                e.message().to_owned(),
                format!("{e:?}"),
                e.to_json().to_string(),
            ] {
                assert!(!text.contains("hunter2pass"), "{text}");
            }
        }
        assert!(
            select_for("http://bot:hunter2pass@127.0.0.1:8080/v1", None)
                .message()
                .contains("http://[REDACTED]@127.0.0.1:8080/v1")
        );
    }

    #[test]
    fn timeout_must_be_positive() {
        assert!(timeout(0.0).is_err());
        assert!(timeout(f64::NAN).is_err());
        assert!(timeout(-1.0).is_err());
        assert_eq!(timeout(1.5).unwrap(), Duration::from_millis(1500));
    }
}
