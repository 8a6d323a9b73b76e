//! Credential redaction for every message that carries server or transport text.
//!
//! Four families of credential-shaped text are replaced by `[REDACTED]`, case-insensitively:
//! vendor token prefixes (`sk-…`, `ghp_…`, `AIza…`, `xoxb-…`, `gsk_…`), `key=value` /
//! `key:value` pairs for credential-like keys, scheme phrases (`Bearer …`, `token …`), and the
//! user information of a URL (`http://user:pass@host` → `http://[REDACTED]@host`).
//!
//! A known key is removed by [`redact_secret`], in every form a server realistically echoes it
//! (see there for the list).
//!
//! ```
//! use executionkit::redact::redact;
//! assert_eq!(redact("Authorization: Bearer abc.def-1234"), "Authorization: [REDACTED]");
//! assert_eq!(redact("https://x/?token=abcd&x=1"), "https://x/?[REDACTED]&x=1");
//! assert_eq!(redact("http://me:hunter2@host/v1"), "http://[REDACTED]@host/v1");
//! assert_eq!(redact("The monkey ate the turkey."), "The monkey ate the turkey.");
//! ```

use std::borrow::Cow;
use std::sync::LazyLock;

use base64::Engine as _;
use regex::Regex;
use serde_json::Value;

/// The placeholder that replaces a credential.
///
/// ```
/// use executionkit::redact::{REDACTED, redact};
/// assert_eq!(redact("password=hunter22"), REDACTED);
/// ```
pub const REDACTED: &str = "[REDACTED]";

/// Each pattern and what replaces a match (`$1` keeps a URL's scheme).
#[allow(clippy::expect_used)] // constant patterns, covered by tests
static PATTERNS: LazyLock<[(Regex, &str); 4]> = LazyLock::new(|| {
    [
        // The user information of a URL: everything between `scheme://` and the last `@`
        // before the host ends (a password may hold an unencoded `@`).
        (
            Regex::new(r#"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#'"<>]+@"#).expect("userinfo pattern"),
            "${1}[REDACTED]@",
        ),
        (
            Regex::new(
                r#"(?i)\b(?:gh[pousr]_[A-Za-z0-9_]{4,}|AIza[A-Za-z0-9_-]{8,}|xox[bpoa]-[A-Za-z0-9-]{8,}|gsk_[A-Za-z0-9_]{4,}|sk[-_][^\s'"<>]{4,})"#,
            )
            .expect("vendor pattern"),
            REDACTED,
        ),
        (
            Regex::new(
                r#"(?i)\b(?:api_key|apikey|access_key|accesskey|password|passwd|key|token|secret|auth)[=:][^\s'"<>&]{4,}"#,
            )
            .expect("pair pattern"),
            REDACTED,
        ),
        (
            Regex::new(r"(?i)\b(?:bearer|token|secret)\s+[A-Za-z0-9._~+/=-]{4,}")
                .expect("scheme pattern"),
            REDACTED,
        ),
    ]
});

/// Replaces credential-shaped substrings of `text` with `[REDACTED]`.
///
/// ```
/// use executionkit::redact::redact;
/// assert_eq!(redact("key sk-abc123xyz invalid"), "key [REDACTED] invalid");
/// assert_eq!(redact("sk-abc"), "sk-abc"); // too short to be a key
/// assert_eq!(redact("GET https://bot:p%40ss@api.example.com/v1"), "GET https://[REDACTED]@api.example.com/v1");
/// ```
#[must_use]
pub fn redact(text: &str) -> String {
    let mut out = Cow::Borrowed(text);
    for (re, with) in PATTERNS.iter() {
        if let Cow::Owned(s) = re.replace_all(&out, *with) {
            out = Cow::Owned(s);
        }
    }
    out.into_owned()
}

/// Removes every echo of `secret` from `text` (see [`redact_secret`]), then redacts
/// credential shapes (see [`redact`]).
#[must_use]
pub(crate) fn redact_with(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) => redact(&redact_secret(text, s)),
        None => redact(text),
    }
}

/// The shortest secret [`redact_secret`] acts on: shorter ones would match ordinary words.
pub(crate) const MIN_SECRET_LEN: usize = 4;

/// The shortest secret whose base64 forms are looked for (shorter ones give too short a
/// base64 core to be told from other base64 text).
const MIN_BASE64_SECRET_LEN: usize = 12;

/// Replaces every echo of `secret` in `text` with `[REDACTED]`; `text` is borrowed back
/// untouched when there is none (or when `secret` is shorter than 4 bytes).
///
/// An echo is any of these (what servers, proxies and models are seen to do with a key):
///
/// - the key as is, or in **any ASCII letter case** (`SK-TEST-…`, `sk-test-…`, `Sk-Test-…`);
/// - the key with **any of its bytes percent-encoded** (`sk%2Dtest…`, `sk%2dtest…`, every
///   byte encoded, mixed with case changes) or **double percent-encoded** (`sk%252Dtest…`);
/// - a **leading part of the key** of at least half its length and at least 8 bytes, in any
///   of the forms above: what is left when a message cuts a reply short in the middle of the
///   key;
/// - the key inside **base64 or base64url** text at any byte alignment, so
///   `base64("Bearer KEY")` and Basic credentials `base64("user:KEY")` are caught (keys of 12
///   bytes or more; the characters that also encode the bytes around the key are left).
///
/// Not covered: JSON `\u` escapes, HTML entities, hashes, or the key split by a line break.
///
/// ```
/// use executionkit::redact::redact_secret;
/// let key = "sk-test-0123456789abcdef";
/// assert_eq!(redact_secret("got sk-test-0123456789abcdef.", key), "got [REDACTED].");
/// assert_eq!(redact_secret("got SK-TEST-0123456789ABCDEF", key), "got [REDACTED]");
/// assert_eq!(redact_secret("k=sk%2Dtest%2D0123456789abcdef&x", key), "k=[REDACTED]&x");
/// assert_eq!(redact_secret("reply \"sk-test-01234567…\"", key), "reply \"[REDACTED]…\"");
/// // base64("Bearer sk-test-0123456789abcdef")
/// assert!(!redact_secret("QmVhcmVyIHNrLXRlc3QtMDEyMzQ1Njc4OWFiY2RlZg==", key).contains("Njc4OWFi"));
/// assert_eq!(redact_secret("nothing here", key), "nothing here");
/// ```
#[must_use]
pub fn redact_secret<'a>(text: &'a str, secret: &str) -> Cow<'a, str> {
    let key = secret.as_bytes();
    if key.len() < MIN_SECRET_LEN || text.is_empty() {
        return Cow::Borrowed(text);
    }
    let out = redact_spelled(text, key);
    if key.len() < MIN_BASE64_SECRET_LEN {
        return out;
    }
    let mut out = out;
    for needle in base64_cores(key) {
        if out.contains(needle.as_str()) {
            out = Cow::Owned(out.replace(needle.as_str(), REDACTED));
        }
    }
    out
}

/// Redacts `secret` (as [`redact_secret`]) from every string of `value`, object keys
/// included; `true` when anything changed.
///
/// ```
/// use executionkit::redact::redact_secret_json;
/// let mut v = serde_json::json!({"reply": ["the key is SK-TEST-0123456789ABCDEF"], "n": 1});
/// assert!(redact_secret_json(&mut v, "sk-test-0123456789abcdef"));
/// assert_eq!(v["reply"][0], "the key is [REDACTED]");
/// ```
pub fn redact_secret_json(value: &mut Value, secret: &str) -> bool {
    if secret.len() < MIN_SECRET_LEN {
        return false;
    }
    redact_json_by(value, &|t| redact_secret(t, secret))
}

/// Rewrites every string of `value` (object keys included) with `f`, which borrows its input
/// back when it has nothing to change; `true` when anything changed.
pub(crate) fn redact_json_by(value: &mut Value, f: &dyn Fn(&str) -> Cow<'_, str>) -> bool {
    let changed_text = |t: &str| match f(t) {
        Cow::Owned(r) if r != t => Some(r),
        _ => None,
    };
    match value {
        Value::String(s) => match changed_text(s) {
            Some(r) => {
                *s = r;
                true
            }
            None => false,
        },
        Value::Array(items) => {
            let mut changed = false;
            for x in items {
                changed |= redact_json_by(x, f);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            for x in map.values_mut() {
                changed |= redact_json_by(x, f);
            }
            if map.keys().any(|k| changed_text(k).is_some()) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    let k = changed_text(&k).unwrap_or(k);
                    map.insert(k, v);
                }
                changed = true;
            }
            changed
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The literal, case-changed, percent-encoded and cut-short forms of `key` in `text`.
fn redact_spelled<'a>(text: &'a str, key: &[u8]) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    // A leading part this long is redacted too (a key cut by truncation).
    let min_part = (key.len().div_ceil(2)).max(8);
    let mut out: Option<String> = None;
    // Bytes of `text` before `copied` are already in `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' || b.eq_ignore_ascii_case(&key[0]) {
            let (matched, end) = match_key(bytes, i, key);
            if matched == key.len() || matched >= min_part {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[copied..i]);
                o.push_str(REDACTED);
                copied = end;
                i = end;
                continue;
            }
        }
        i += 1;
        while i < bytes.len() && !text.is_char_boundary(i) {
            i += 1;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// How many bytes of `key` the text spells from `start` (each byte as itself in any ASCII
/// case, or percent-encoded once or twice), and where that spelling ends (a char boundary).
fn match_key(text: &[u8], start: usize, key: &[u8]) -> (usize, usize) {
    let mut i = start;
    let mut k = 0;
    // The last (key bytes, text end) pair that ended on a char boundary of the text.
    let mut last = (0, start);
    while k < key.len() {
        let want = key[k];
        if text.get(i).is_some_and(|c| c.eq_ignore_ascii_case(&want)) {
            i += 1;
        } else if let Some(len) = percent_encoded(&text[i..], want) {
            i += len;
        } else {
            break;
        }
        k += 1;
        // Key bytes are UTF-8 and matched byte for byte (or as ASCII escapes), so the text is
        // on a boundary exactly when the key is.
        if text.get(i).is_none_or(|&c| !is_continuation(c)) {
            last = (k, i);
        }
    }
    last
}

fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// The length of `%XX` or `%25XX` at the start of `s` when it decodes to `want` (hex and
/// `want` compared without regard to ASCII case).
fn percent_encoded(s: &[u8], want: u8) -> Option<usize> {
    let hex = |i: usize| -> Option<u8> {
        let hi = (*s.get(i)? as char).to_digit(16)?;
        let lo = (*s.get(i + 1)? as char).to_digit(16)?;
        u8::try_from(hi * 16 + lo).ok()
    };
    if s.first() != Some(&b'%') {
        return None;
    }
    let once = hex(1)?;
    if once.eq_ignore_ascii_case(&want) {
        return Some(3);
    }
    // `%25` is an encoded `%`: `%252D` is `-` encoded twice.
    if once == b'%' {
        let twice = hex(3)?;
        if twice.eq_ignore_ascii_case(&want) {
            return Some(5);
        }
    }
    None
}

/// The base64 and base64url characters that encode only bytes of `key`, for each of the three
/// byte alignments the key can have in an encoded text.
fn base64_cores(key: &[u8]) -> Vec<String> {
    let engines = [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut out = Vec::with_capacity(6);
    for offset in 0..3usize {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(key);
        // Character j holds bits 6j..6j+6; the key holds bits 8*offset..8*(offset+len).
        let first = (8 * offset).div_ceil(6);
        let last = 8 * (offset + key.len()) / 6;
        for engine in engines {
            let encoded = engine.encode(&buf);
            if let Some(core) = encoded.get(first..last) {
                if !out.iter().any(|c: &String| c == core) {
                    out.push(core.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    #[test]
    fn url_user_information() {
        for (input, expected) in [
            (
                "http://user:pass@127.0.0.1:8080/v1",
                "http://[REDACTED]@127.0.0.1:8080/v1",
            ),
            ("https://user@host/v1", "https://[REDACTED]@host/v1"),
            // An unencoded `@` in the password: everything up to the last `@` goes.
            ("http://u:p@ss@host/x", "http://[REDACTED]@host/x"),
            (
                "error sending request for url (HTTP://Me:Pw@host)",
                "error sending request for url (HTTP://[REDACTED]@host)",
            ),
            // An `@` after the host is not user information.
            ("http://host/a?mail=a@b.c", "http://host/a?mail=a@b.c"),
            ("http://host/a@b", "http://host/a@b"),
            ("write to me@example.com", "write to me@example.com"),
        ] {
            assert_eq!(redact(input), expected, "input {input:?}");
        }
    }

    const KEY: &str = "sk-test-0123456789abcdef";

    fn pct(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    #[test]
    fn every_spelling_of_the_key_is_removed() {
        let upper = KEY.to_uppercase();
        let mixed: String = KEY
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        for echo in [
            KEY.to_owned(),
            upper.clone(),
            mixed,
            KEY.replace('-', "%2D"),
            KEY.replace('-', "%2d"),
            upper.replace('-', "%2D"),
            KEY.replace('-', "%252D"),
            pct(KEY, true),
            pct(KEY, false),
            format!("{}{}", &KEY[..5], pct(&KEY[5..], true)),
            // Cut short at half the key.
            KEY[..12].to_owned(),
            KEY[..20].to_uppercase(),
        ] {
            let text = format!("before {echo} after");
            let out = redact_secret(&text, KEY);
            assert_eq!(out, "before [REDACTED] after", "echo {echo:?}");
        }
    }

    #[test]
    fn base64_echoes_at_every_alignment() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        for prefix in ["", "B", "Be", "Bearer ", "user:", "u:"] {
            let plain = format!("{prefix}{KEY}");
            for encoded in [STANDARD.encode(&plain), URL_SAFE_NO_PAD.encode(&plain)] {
                let text = format!("Authorization: Basic {encoded}");
                let out = redact_secret(&text, KEY);
                assert!(out.contains(REDACTED), "{plain:?} → {encoded}");
                // What is left decodes to no more than two bytes of the key on either side.
                let left = out.replace(REDACTED, " ");
                let core = &base64_cores(KEY.as_bytes());
                assert!(core.iter().all(|c| !left.contains(c.as_str())), "{left}");
            }
        }
    }

    #[test]
    fn leaves_other_text_alone() {
        for text in [
            "",
            "sk-test-0123",   // 12 bytes: half the key is redacted …
            "sk-test-012",    // … but 11 are not
            "sk-test- other", // a common prefix only
            "%2D%2D%ZZ%",
            "aé€😀 sk-test-0123456789abcdeX",
            "100% of sk",
        ] {
            let out = redact_secret(text, KEY);
            if text == "sk-test-0123" {
                assert_eq!(out, REDACTED);
            } else if text.starts_with("aé") {
                assert_eq!(out, "aé€😀 [REDACTED]X");
            } else {
                assert!(matches!(out, Cow::Borrowed(_)), "{text:?} → {out:?}");
            }
        }
        // Short secrets are not looked for.
        assert!(matches!(redact_secret("abc abc", "abc"), Cow::Borrowed(_)));
        // A 4-byte secret is replaced whole, never in part.
        assert_eq!(redact_secret("xPASSy pas", "pass"), "x[REDACTED]y pas");
    }

    #[test]
    fn non_ascii_secrets_and_text() {
        let key = "clé-secrète-ü";
        assert_eq!(redact_secret("→ CLé-SECRèTE-ü ←", key), "→ [REDACTED] ←");
        let encoded: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(redact_secret(&format!("x{encoded}y"), key), "x[REDACTED]y");
        // A cut inside a multi-byte character leaves the text valid UTF-8.
        let text = "clé-secrè";
        let _ = redact_secret(text, key);
    }

    #[test]
    fn redact_with_removes_the_secret_before_the_shapes() {
        // The shapes alone would leave `%2Dtest…` behind `sk` (no `sk-` prefix).
        assert_eq!(
            redact_with("k sk%2Dtest%2D0123456789abcdef", Some(KEY)),
            "k [REDACTED]"
        );
        assert_eq!(redact_with("no key", None), "no key");
    }

    #[test]
    fn json_keys_and_values() {
        let mut v = serde_json::json!({
            "a": {"SK-TEST-0123456789ABCDEF": [1, "x sk-test-0123456789abcdef"]},
            "b": true,
        });
        assert!(redact_secret_json(&mut v, KEY));
        assert_eq!(
            v,
            serde_json::json!({"a": {"[REDACTED]": [1, "x [REDACTED]"]}, "b": true})
        );
        assert!(!redact_secret_json(&mut v, KEY));
    }
}

#[cfg(test)]
mod redact_with_tests {
    #[test]
    fn the_key_goes_in_any_case() {
        assert_eq!(
            super::redact_with("echo: hunter2!", Some("hunter2")),
            "echo: [REDACTED]!"
        );
        assert_eq!(
            super::redact_with("echo: HUNTER2!", Some("hunter2")),
            "echo: [REDACTED]!"
        );
    }
}
