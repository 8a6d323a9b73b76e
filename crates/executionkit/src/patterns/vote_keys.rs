//! Ready-made vote keys for [`Consensus::vote_key`](crate::Consensus::vote_key): vote on the
//! final number, a label, or the last line instead of the whole text.
//!
//! ```
//! use executionkit::{Consensus, MockProvider, RunContext, vote_keys};
//! # futures::executor::block_on(async {
//! let p = MockProvider::new(["2 + 2 = 4", "The answer is 4.0", "I think 5"]);
//! let r = Consensus::new().samples(3).vote_key(vote_keys::last_number)
//!     .run(&p, "2+2?", &RunContext::new()).await.unwrap();
//! assert_eq!(r.value, "2 + 2 = 4");
//! assert!((r.score.unwrap() - 2.0 / 3.0).abs() < 1e-12);
//! # });
//! ```

use std::sync::LazyLock;

use regex::Regex;

use crate::engine::voting::normalize;

static NUMBER: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?").ok());

/// The last number in the text, in a canonical form (`"4.0"`, `"4"` and `"4.00"` agree;
/// thousands separators are dropped); the normalised text when there is no number.
///
/// ```
/// use executionkit::vote_keys::last_number;
/// assert_eq!(last_number("so x = 1,200.50"), last_number("1200.5"));
/// assert_eq!(last_number("-3 apples"), "-3");
/// assert_eq!(last_number("no digits"), "no digits");
/// ```
#[must_use]
pub fn last_number(text: &str) -> String {
    let found = NUMBER
        .as_ref()
        .and_then(|re| re.find_iter(text).last())
        .map(|m| m.as_str().replace(',', ""));
    match found.as_deref().map(str::parse::<f64>) {
        Some(Ok(v)) if v.is_finite() => {
            // `Display` of f64 is the shortest form that round-trips: 4.0 → "4", 0.50 → "0.5".
            let v = if v == 0.0 { 0.0 } else { v };
            format!("{v}")
        }
        _ => normalize(text),
    }
}

/// A label: lower-cased, whitespace-normalised, without surrounding punctuation or quotes
/// (`"Positive."`, `"positive"` and `" **POSITIVE** "` agree).
///
/// ```
/// use executionkit::vote_keys::label;
/// assert_eq!(label(" **POSITIVE**. "), "positive");
/// assert_eq!(label("\"Neutral\""), "neutral");
/// ```
#[must_use]
pub fn label(text: &str) -> String {
    normalize(text)
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// The last non-blank line, whitespace-normalised (for answers that end with "Answer: …").
///
/// ```
/// use executionkit::vote_keys::last_line;
/// assert_eq!(last_line("Reasoning...\nAnswer:  B\n\n"), "Answer: B");
/// assert_eq!(last_line(""), "");
/// ```
#[must_use]
pub fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(normalize)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_agree_across_forms() {
        assert_eq!(last_number("4"), last_number("4.00"));
        assert_eq!(last_number("-0"), "0");
        assert_eq!(last_number("first 1 then 2"), "2");
        assert_eq!(last_number("1e999 is 3"), "3");
    }
}
