//! Voting over sampled responses: whitespace normalisation, majority and unanimous tallies.
//!
//! Patterns hand the tally a list of **vote keys** (by default the normalised text of each
//! sample); the tally says which sample won and how strongly. Nothing here calls a model.

// Some items serve only the crate's tests and benchmarks (through `internals`).
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};

/// How the votes of a consensus decide.
///
/// ```
/// use executionkit::VotingStrategy;
/// let s: VotingStrategy = "unanimous".parse().unwrap();
/// assert_eq!(s, VotingStrategy::Unanimous);
/// assert_eq!(s.to_string(), "unanimous");
/// assert!("plurality".parse::<VotingStrategy>().unwrap_err().is_invalid_argument());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum VotingStrategy {
    /// The most frequent answer wins; ties go to the answer seen first.
    #[default]
    Majority,
    /// Every sample must agree, or the run fails with `consensus_failed`.
    Unanimous,
}

impl VotingStrategy {
    /// `"majority"` or `"unanimous"`.
    ///
    /// ```
    /// assert_eq!(executionkit::VotingStrategy::Majority.as_str(), "majority");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Majority => "majority",
            Self::Unanimous => "unanimous",
        }
    }
}

impl fmt::Display for VotingStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VotingStrategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "majority" => Ok(Self::Majority),
            "unanimous" => Ok(Self::Unanimous),
            other => Err(Error::invalid_argument(
                "strategy",
                format!("strategy must be 'majority' or 'unanimous', got '{other}'"),
            )),
        }
    }
}

/// Trims `text` and collapses every run of whitespace to one space.
///
/// ```
/// assert_eq!(executionkit::internals::voting::normalize("  Paris\n\n is  nice "), "Paris is nice");
/// ```
#[must_use]
pub fn normalize(text: &str) -> String {
    normalized(text).into_owned()
}

/// [`normalize`], borrowing `text` when it is already normalized (the common short answer).
pub(crate) fn normalized(text: &str) -> std::borrow::Cow<'_, str> {
    let mut prev_space = true; // a leading space is not normal either
    let already = text.chars().all(|c| {
        let ok = if c == ' ' {
            !prev_space
        } else {
            !c.is_whitespace()
        };
        prev_space = c == ' ';
        ok
    }) && !prev_space;
    if already {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    std::borrow::Cow::Owned(out)
}

/// The outcome of a vote.
///
/// ```
/// use executionkit::{VotingStrategy, internals::voting::tally};
/// let t = tally(&["Paris", "Paris", "London"], VotingStrategy::Majority).unwrap();
/// assert_eq!((t.winner_index, t.unique_responses, t.tie_count), (0, 2, 1));
/// assert!((t.agreement_ratio - 2.0 / 3.0).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    /// Index of the first sample whose key is the winning key (its original text is the value).
    pub winner_index: usize,
    /// Votes of the winning key divided by the number of samples.
    pub agreement_ratio: f64,
    /// Number of distinct keys.
    pub unique_responses: usize,
    /// Number of distinct keys sharing the top count (1 = clean win; 0 for a unanimous vote).
    pub tie_count: usize,
}

/// Tallies texts by their [`normalize`]d form.
///
/// An empty list is an `invalid_argument` error (`empty response set`); a unanimous vote with
/// more than one distinct form is `consensus_failed` (`N distinct responses across M samples`).
///
/// ```
/// use executionkit::{VotingStrategy, internals::voting::tally};
/// let t = tally(&["  Paris ", "Paris", "Rome"], VotingStrategy::Majority).unwrap();
/// assert_eq!(t.winner_index, 0);
/// let e = tally(&["Paris", "London"], VotingStrategy::Unanimous).unwrap_err();
/// assert!(e.is_consensus_failed() && e.to_string().contains("2 distinct responses"));
/// ```
pub fn tally<S: AsRef<str>>(contents: &[S], strategy: VotingStrategy) -> Result<Tally> {
    let keys: Vec<String> = contents.iter().map(|c| normalize(c.as_ref())).collect();
    tally_keys(&keys, strategy)
}

/// Tallies precomputed vote keys (one per sample, in sample order).
///
/// ```
/// use executionkit::{VotingStrategy, internals::voting::tally_keys};
/// let t = tally_keys(&["b", "a", "a", "b"], VotingStrategy::Majority).unwrap();
/// assert_eq!((t.winner_index, t.tie_count, t.agreement_ratio), (0, 2, 0.5));
/// ```
#[allow(clippy::cast_precision_loss)]
pub fn tally_keys<S: AsRef<str>>(keys: &[S], strategy: VotingStrategy) -> Result<Tally> {
    if keys.is_empty() {
        return Err(Error::invalid_argument(
            "responses",
            "cannot vote on an empty response set",
        ));
    }
    // Distinct keys in order of first appearance, with their counts.
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<(&str, usize, usize)> = Vec::new(); // (key, first index, count)
    for (i, k) in keys.iter().enumerate() {
        let k = k.as_ref();
        match first_seen.get(k) {
            Some(&slot) => order[slot].2 += 1,
            None => {
                first_seen.insert(k, order.len());
                order.push((k, i, 1));
            }
        }
    }
    let n = keys.len();
    let unique = order.len();
    match strategy {
        VotingStrategy::Unanimous => {
            if unique == 1 {
                Ok(Tally {
                    winner_index: 0,
                    agreement_ratio: 1.0,
                    unique_responses: 1,
                    tie_count: 0,
                })
            } else {
                Err(Error::new(
                    ErrorKind::ConsensusFailed,
                    format!(
                        "unanimous vote failed: {unique} distinct responses across {n} samples"
                    ),
                )
                .with_metadata("unique_responses", unique)
                .with_metadata("samples", n))
            }
        }
        VotingStrategy::Majority => {
            let top = order.iter().map(|o| o.2).max().unwrap_or(0);
            let tie_count = order.iter().filter(|o| o.2 == top).count();
            // `order` is by first appearance, so the first entry with the top count is the
            // earliest of the tied.
            let winner_index = order.iter().find(|o| o.2 == top).map_or(0, |o| o.1);
            Ok(Tally {
                winner_index,
                agreement_ratio: top as f64 / n as f64,
                unique_responses: unique,
                tie_count,
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_invalid() {
        let e = tally::<&str>(&[], VotingStrategy::Majority).unwrap_err();
        assert!(e.is_invalid_argument());
        assert!(e.to_string().contains("empty response set"));
    }

    #[test]
    fn majority_picks_earliest_tied() {
        let t = tally(&["red", "blue"], VotingStrategy::Majority).unwrap();
        assert_eq!((t.winner_index, t.tie_count), (0, 2));
        assert!((t.agreement_ratio - 0.5).abs() < f64::EPSILON);
    }

    proptest::proptest! {
        #[test]
        fn majority_tally_invariants(keys in proptest::collection::vec("[ab]{0,2}", 1..20)) {
            let t = tally_keys(&keys, VotingStrategy::Majority).unwrap();
            let count = |k: &str| keys.iter().filter(|x| x.as_str() == k).count();
            let winner = keys[t.winner_index].as_str();
            let top = count(winner);
            // The winner has the top count and is the first sample with that key.
            proptest::prop_assert!(keys.iter().all(|k| count(k) <= top));
            proptest::prop_assert_eq!(keys.iter().position(|k| k == winner), Some(t.winner_index));
            // Among the tied keys, the winner appears first.
            let first_tied = keys.iter().position(|k| count(k) == top);
            proptest::prop_assert_eq!(first_tied, Some(t.winner_index));
            #[allow(clippy::cast_precision_loss)]
            let ratio = top as f64 / keys.len() as f64;
            proptest::prop_assert!((t.agreement_ratio - ratio).abs() < 1e-12);
            let mut distinct = keys.clone();
            distinct.sort();
            distinct.dedup();
            proptest::prop_assert_eq!(t.unique_responses, distinct.len());
            proptest::prop_assert_eq!(
                t.tie_count,
                distinct.iter().filter(|k| count(k) == top).count()
            );
        }

        #[test]
        fn normalize_is_idempotent(s in "[ a-z\\t\\n]{0,30}") {
            let once = normalize(&s);
            proptest::prop_assert!(normalize(&once) == once);
            proptest::prop_assert!(!once.starts_with(' ') && !once.ends_with(' '));
            proptest::prop_assert!(!once.contains("  "));
        }

        #[test]
        fn normalized_borrows_only_what_is_already_normal(
            s in "[ a-z\t\n\u{a0}\u{3000}é]{0,30}"
        ) {
            let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
            let n = normalized(&s);
            proptest::prop_assert_eq!(n.as_ref(), joined.as_str());
            proptest::prop_assert_eq!(matches!(n, std::borrow::Cow::Borrowed(_)), !s.is_empty() && s == joined);
        }
    }
}
