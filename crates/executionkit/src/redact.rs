//! Credential redaction for every message that carries server or transport text.
//!
//! Three families of credential-shaped text are replaced by `[REDACTED]`, case-insensitively:
//! vendor token prefixes (`sk-…`, `ghp_…`, `AIza…`, `xoxb-…`, `gsk_…`), `key=value` /
//! `key:value` pairs for credential-like keys, and scheme phrases (`Bearer …`, `token …`).
//!
//! ```
//! use executionkit::redact::redact;
//! assert_eq!(redact("Authorization: Bearer abc.def-1234"), "Authorization: [REDACTED]");
//! assert_eq!(redact("https://x/?token=abcd&x=1"), "https://x/?[REDACTED]&x=1");
//! assert_eq!(redact("The monkey ate the turkey."), "The monkey ate the turkey.");
//! ```

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// The placeholder that replaces a credential.
///
/// ```
/// use executionkit::redact::{REDACTED, redact};
/// assert_eq!(redact("password=hunter22"), REDACTED);
/// ```
pub const REDACTED: &str = "[REDACTED]";

#[allow(clippy::expect_used)] // constant patterns, covered by tests
static PATTERNS: LazyLock<[Regex; 3]> = LazyLock::new(|| {
    [
        Regex::new(
            r#"(?i)\b(?:gh[pousr]_[A-Za-z0-9_]{4,}|AIza[A-Za-z0-9_-]{8,}|xox[bpoa]-[A-Za-z0-9-]{8,}|gsk_[A-Za-z0-9_]{4,}|sk[-_][^\s'"<>]{4,})"#,
        )
        .expect("vendor pattern"),
        Regex::new(
            r#"(?i)\b(?:api_key|apikey|access_key|accesskey|password|passwd|key|token|secret|auth)[=:][^\s'"<>&]{4,}"#,
        )
        .expect("pair pattern"),
        Regex::new(r"(?i)\b(?:bearer|token|secret)\s+[A-Za-z0-9._~+/=-]{4,}")
            .expect("scheme pattern"),
    ]
});

/// Replaces credential-shaped substrings of `text` with `[REDACTED]`.
///
/// ```
/// use executionkit::redact::redact;
/// assert_eq!(redact("key sk-abc123xyz invalid"), "key [REDACTED] invalid");
/// assert_eq!(redact("sk-abc"), "sk-abc"); // too short to be a key
/// ```
#[must_use]
pub fn redact(text: &str) -> String {
    let mut out = Cow::Borrowed(text);
    for re in PATTERNS.iter() {
        if let Cow::Owned(s) = re.replace_all(&out, REDACTED) {
            out = Cow::Owned(s);
        }
    }
    out.into_owned()
}

/// Redacts `text` and also removes every occurrence of `secret` (when at least 4 characters).
///
/// ```
/// use executionkit::redact::redact_with;
/// assert_eq!(redact_with("echo: hunter2!", Some("hunter2")), "echo: [REDACTED]!");
/// ```
#[must_use]
pub fn redact_with(text: &str, secret: Option<&str>) -> String {
    let out = redact(text);
    match secret {
        Some(s) if s.len() >= 4 && out.contains(s) => out.replace(s, REDACTED),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn observed_examples() {
        for (input, expected) in [
            ("sk-abcd", "[REDACTED]"),
            ("sk-abc", "sk-abc"),
            ("key=abcd", "[REDACTED]"),
            ("key=abc", "key=abc"),
            ("token abcd", "[REDACTED]"),
            (
                "Authorization: Bearer abc.def-1234",
                "Authorization: [REDACTED]",
            ),
            ("password:hunter2", "[REDACTED]"),
            ("passwd=xyz12", "[REDACTED]"),
            ("auth=abcd1234", "[REDACTED]"),
            ("https://x/?token=abcd&x=1", "https://x/?[REDACTED]&x=1"),
            ("xoxb-12345678", "[REDACTED]"),
            ("gsk_abcd", "[REDACTED]"),
            ("ghp_abcd", "[REDACTED]"),
            ("sk_live_1234", "[REDACTED]"),
            ("The monkey ate the turkey.", "The monkey ate the turkey."),
            ("my_secret=abcdefgh", "my_secret=abcdefgh"),
            ("AIzaSyA1234", "AIzaSyA1234"),
            ("apikey: 'abcd1234'", "apikey: 'abcd1234'"),
            ("ghx_abcd", "ghx_abcd"),
            ("secretword", "secretword"),
        ] {
            assert_eq!(redact(input), expected, "input {input:?}");
        }
    }
}
