//! The secrets `ek` knows, and their removal from everything it prints.
//!
//! A secret is every key `ek` was given (`--api-key`, `EXECUTIONKIT_API_KEY`,
//! `OPENAI_API_KEY`) and the password of every endpoint URL (`--base-url`,
//! `EXECUTIONKIT_BASE_URL`, as written and percent-decoded). Every string `ek` prints (the
//! value, the cost and metadata lines, errors, the `--json` object, the progress line) passes
//! through [`Secrets::text`] or [`Secrets::json`], which replace each secret in every form
//! [`redact_secret`] knows by `[REDACTED]`.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;

use executionkit::redact::{redact_secret, redact_secret_json};
use serde_json::Value;

use crate::endpoint::Env;

/// The secrets of one `ek` process. `Debug` shows how many, never what.
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} known)", self.0.len())
    }
}

impl Secrets {
    /// Gathers the secrets from the raw command line (read before clap, so a usage error that
    /// quotes an argument is covered too) and the environment.
    pub fn gather(args: &[OsString], env: &Env) -> Self {
        let mut keys: Vec<String> = Vec::new();
        let mut urls: Vec<String> = Vec::new();
        let mut it = args.iter().filter_map(|a| a.to_str());
        while let Some(a) = it.next() {
            for (flag, into) in [("--api-key", &mut keys), ("--base-url", &mut urls)] {
                if a == flag {
                    if let Some(v) = it.clone().next() {
                        into.push(v.to_owned());
                    }
                } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                    into.push(v.to_owned());
                }
            }
        }
        keys.extend(env.api_key.iter().cloned());
        keys.extend(env.openai_api_key.iter().cloned());
        urls.extend(env.base_url.iter().cloned());
        for u in &urls {
            keys.extend(url_password(u));
        }
        Self::new(keys)
    }

    /// The secrets `list` (empty and duplicate entries dropped; longest first, so a secret
    /// that holds another is replaced whole).
    pub fn new(list: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = list
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        v.dedup();
        Self(v)
    }

    /// These secrets and `more` (the keys a config file's providers were given).
    pub fn with(&self, more: &[String]) -> Self {
        Self::new(self.0.iter().chain(more).cloned())
    }

    /// `text` with every secret replaced; borrowed back when it holds none.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.0 {
            if let Cow::Owned(r) = redact_secret(&out, s) {
                out = Cow::Owned(r);
            }
        }
        out
    }

    /// The length in bytes of the longest secret (0 without any): how much of a stream of text
    /// to hold back so that a secret split across pieces is still caught whole.
    pub fn longest(&self) -> usize {
        self.0.first().map_or(0, String::len)
    }

    /// Replaces every secret in every string of `value` (object keys included).
    pub fn json(&self, value: &mut Value) {
        for s in &self.0 {
            redact_secret_json(value, s);
        }
    }
}

/// The password of `url` as written and percent-decoded (both, when they differ).
fn url_password(url: &str) -> Vec<String> {
    let Some(raw) = url::Url::parse(url.trim())
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    else {
        return Vec::new();
    };
    let decoded = percent_encoding::percent_decode_str(&raw)
        .decode_utf8_lossy()
        .into_owned();
    if decoded == raw {
        vec![raw]
    } else {
        vec![raw, decoded]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-0123456789abcdef";

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn gathers_flags_environment_and_url_passwords() {
        let env = Env {
            base_url: Some("http://bot:p%40ss-w0rd@127.0.0.1:1/v1".into()),
            api_key: Some("env-key-123456".into()),
            openai_api_key: Some("openai-key-123456".into()),
            ..Env::default()
        };
        let s = Secrets::gather(
            &args(&[
                "ek",
                "refine",
                "--api-key",
                KEY,
                "--base-url=https://u:flagpass1@h/v1",
                "p",
            ]),
            &env,
        );
        let text = format!(
            "{} env-key-123456 OPENAI-KEY-123456 p@ss-w0rd p%40ss-w0rd flagpass1 bot u",
            KEY.to_uppercase()
        );
        assert_eq!(
            s.text(&text),
            "[REDACTED] [REDACTED] [REDACTED] [REDACTED] [REDACTED] [REDACTED] bot u"
        );
        assert_eq!(format!("{s:?}"), "Secrets(6 known)");
        assert_eq!(s.longest(), KEY.len());
        assert_eq!(Secrets::default().longest(), 0);
        assert!(!format!("{s:?}").contains("flagpass1"));
    }

    #[test]
    fn api_key_equals_form_and_no_secrets() {
        let s = Secrets::gather(&args(&["ek", &format!("--api-key={KEY}")]), &Env::default());
        assert_eq!(s.text(&format!("x{KEY}y")), "x[REDACTED]y");
        let none = Secrets::gather(&args(&["ek", "refine", "p"]), &Env::default());
        assert!(matches!(none.text(KEY), Cow::Borrowed(_)));
    }

    #[test]
    fn json_values_and_keys() {
        let s = Secrets::new([KEY.to_owned()]);
        let mut v = serde_json::json!({"value": format!("the key: {KEY}"), KEY: 1});
        s.json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"value": "the key: [REDACTED]", "[REDACTED]": 1})
        );
    }
}
