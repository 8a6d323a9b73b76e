//! Stop rules for consensus: when the answer is settled, stop sampling.
//!
//! * [`StopRule::Fixed`]: draw every sample (the default; today's behaviour).
//! * [`StopRule::Window`] (after ESC, "early-stopping self-consistency"): stop as soon as the
//!   last `size` answers, in the order they arrived, all agree.
//! * [`StopRule::Adaptive`] (after Adaptive-Consistency): stop as soon as the posterior
//!   probability that the leading answer beats the runner-up reaches `confidence`. With `a`
//!   votes for the leader and `b` for the runner-up and a uniform prior, the leader's share
//!   `θ` of those two is `Beta(a + 1, b + 1)`, and `P(θ > ½) = P(Binomial(a + b + 1, ½) ≤ a)`:
//!   a closed form, summed exactly.
//!
//! ```
//! use executionkit::{StopRule, internals::stop::VoteBook};
//! let mut book = VoteBook::new();
//! let rule = StopRule::window(3);
//! for k in ["a", "b", "a", "a"] {
//!     book.push(k);
//! }
//! assert!(!rule.should_stop(&book)); // b, a, a
//! book.push("a");
//! assert!(rule.should_stop(&book)); // a, a, a
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The default window of [`StopRule::Window`].
pub const DEFAULT_WINDOW: usize = 5;
/// The default confidence of [`StopRule::Adaptive`].
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// When a consensus stops drawing samples.
///
/// ```
/// use executionkit::StopRule;
/// let r: StopRule = "adaptive:0.9".parse().unwrap();
/// assert_eq!(r, StopRule::adaptive(0.9));
/// assert_eq!(r.to_string(), "adaptive:0.9");
/// assert_eq!("none".parse::<StopRule>().unwrap(), StopRule::Fixed);
/// assert_eq!("window".parse::<StopRule>().unwrap(), StopRule::window(5));
/// assert!("window:0".parse::<StopRule>().unwrap_err().is_invalid_argument());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum StopRule {
    /// Every sample is drawn.
    #[default]
    Fixed,
    /// Stop when the last `size` answers agree.
    Window {
        /// How many consecutive agreeing answers settle the vote (≥ 2).
        size: usize,
    },
    /// Stop when `P(leader beats runner-up) ≥ confidence`.
    Adaptive {
        /// The posterior probability required, in (0.5, 1).
        confidence: f64,
    },
}

impl StopRule {
    /// A window rule.
    ///
    /// ```
    /// assert_eq!(executionkit::StopRule::window(4).to_string(), "window:4");
    /// ```
    #[must_use]
    pub const fn window(size: usize) -> Self {
        Self::Window { size }
    }

    /// A posterior rule.
    ///
    /// ```
    /// assert_eq!(executionkit::StopRule::adaptive(0.95).to_string(), "adaptive:0.95");
    /// ```
    #[must_use]
    pub const fn adaptive(confidence: f64) -> Self {
        Self::Adaptive { confidence }
    }

    /// `true` unless the rule is [`StopRule::Fixed`].
    ///
    /// ```
    /// use executionkit::StopRule;
    /// assert!(!StopRule::Fixed.stops_early() && StopRule::window(3).stops_early());
    /// ```
    #[must_use]
    pub const fn stops_early(&self) -> bool {
        !matches!(self, Self::Fixed)
    }

    /// Checks the rule's parameter: a window of at least 2, a confidence in (0.5, 1).
    ///
    /// # Errors
    /// `invalid_argument` naming `early_stop`.
    ///
    /// ```
    /// use executionkit::StopRule;
    /// assert!(StopRule::adaptive(1.0).check().is_err());
    /// assert!(StopRule::window(1).check().is_err());
    /// assert!(StopRule::window(2).check().is_ok());
    /// ```
    pub fn check(&self) -> Result<()> {
        match *self {
            Self::Window { size } if size < 2 => Err(Error::invalid_argument(
                "early_stop",
                format!("the window of early_stop must be >= 2, got {size}"),
            )),
            Self::Adaptive { confidence } if !(confidence > 0.5 && confidence < 1.0) => {
                Err(Error::invalid_argument(
                    "early_stop",
                    format!(
                        "the confidence of early_stop must be between 0.5 and 1 (exclusive), got {confidence}"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `true` when the votes so far settle the answer.
    ///
    /// ```
    /// use executionkit::{StopRule, internals::stop::VoteBook};
    /// let mut book = VoteBook::new();
    /// for _ in 0..4 { book.push("x"); }
    /// assert!(StopRule::adaptive(0.95).should_stop(&book)); // P = 31/32
    /// assert!(!StopRule::adaptive(0.99).should_stop(&book));
    /// assert!(!StopRule::Fixed.should_stop(&book));
    /// ```
    #[must_use]
    pub fn should_stop(&self, book: &VoteBook) -> bool {
        match *self {
            Self::Fixed => false,
            Self::Window { size } => {
                let n = book.order.len();
                n >= size && {
                    let last = &book.order[n - size..];
                    last.iter().all(|&k| k == last[0])
                }
            }
            Self::Adaptive { confidence } => {
                let (a, b) = book.top_two();
                a > 0 && leader_probability(a, b) >= confidence
            }
        }
    }
}

impl fmt::Display for StopRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed => f.write_str("fixed"),
            Self::Window { size } => write!(f, "window:{size}"),
            Self::Adaptive { confidence } => write!(f, "adaptive:{confidence}"),
        }
    }
}

impl FromStr for StopRule {
    type Err = Error;

    /// `none` / `fixed`, `window[:K]`, `adaptive[:P]`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid_argument(
                "early_stop",
                format!("early_stop must be none, window[:K] or adaptive[:P], got '{s}'"),
            )
        };
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let rule = match (name, arg) {
            ("none" | "fixed", None) => Self::Fixed,
            ("window", None) => Self::window(DEFAULT_WINDOW),
            ("window", Some(k)) => Self::window(k.parse().map_err(|_| bad())?),
            ("adaptive", None) => Self::adaptive(DEFAULT_CONFIDENCE),
            ("adaptive", Some(p)) => Self::adaptive(p.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        rule.check()?;
        Ok(rule)
    }
}

/// `P(θ > ½)` for `θ ~ Beta(a + 1, b + 1)`, which is `P(Binomial(a + b + 1, ½) ≤ a)`.
///
/// ```
/// use executionkit::internals::stop::leader_probability;
/// assert_eq!(leader_probability(0, 0), 0.5);
/// assert!((leader_probability(4, 0) - 31.0 / 32.0).abs() < 1e-12);
/// assert!((leader_probability(3, 1) - 26.0 / 32.0).abs() < 1e-12);
/// ```
#[must_use]
#[allow(clippy::cast_precision_loss)]
pub fn leader_probability(a: u64, b: u64) -> f64 {
    let n = a + b + 1;
    // Sum the binomial pmf in log space: ln C(n, k) grows term by term.
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    let mut ln_c = 0.0_f64; // ln C(n, 0)
    let mut total = 0.0_f64;
    for k in 0..=a {
        if k > 0 {
            ln_c += ((n - k + 1) as f64).ln() - (k as f64).ln();
        }
        total += (ln_c - ln_half_n).exp();
    }
    total.min(1.0)
}

/// The votes of one consensus in the order they arrived.
///
/// ```
/// let mut book = executionkit::internals::stop::VoteBook::new();
/// book.push("b");
/// book.push("a");
/// book.push("a");
/// assert_eq!(book.len(), 3);
/// assert_eq!(book.top_two(), (2, 1));
/// ```
#[derive(Debug, Default, Clone)]
pub struct VoteBook {
    ids: HashMap<String, usize>,
    counts: Vec<u64>,
    order: Vec<usize>,
}

impl VoteBook {
    /// An empty book.
    ///
    /// ```
    /// assert!(executionkit::internals::stop::VoteBook::new().is_empty());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one vote.
    ///
    /// ```
    /// let mut book = executionkit::internals::stop::VoteBook::new();
    /// book.push("x");
    /// assert_eq!(book.len(), 1);
    /// ```
    pub fn push(&mut self, key: &str) {
        let id = match self.ids.get(key) {
            Some(&id) => id,
            None => {
                let id = self.counts.len();
                self.ids.insert(key.to_owned(), id);
                self.counts.push(0);
                id
            }
        };
        self.counts[id] += 1;
        self.order.push(id);
    }

    /// Votes recorded.
    ///
    /// ```
    /// assert_eq!(executionkit::internals::stop::VoteBook::new().len(), 0);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// `true` before the first vote.
    ///
    /// ```
    /// assert!(executionkit::internals::stop::VoteBook::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The counts of the leading and the second answer (0 when there is none).
    ///
    /// ```
    /// let mut book = executionkit::internals::stop::VoteBook::new();
    /// for k in ["a", "b", "c", "c"] { book.push(k); }
    /// assert_eq!(book.top_two(), (2, 1));
    /// ```
    #[must_use]
    pub fn top_two(&self) -> (u64, u64) {
        let mut first = 0;
        let mut second = 0;
        for &c in &self.counts {
            if c > first {
                second = first;
                first = c;
            } else if c > second {
                second = c;
            }
        }
        (first, second)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stop_point(rule: StopRule, keys: &[&str]) -> Option<usize> {
        let mut book = VoteBook::new();
        for (i, k) in keys.iter().enumerate() {
            book.push(k);
            if rule.should_stop(&book) {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn window_stops_at_the_first_run_of_agreeing_answers() {
        let r = StopRule::window(3);
        assert_eq!(stop_point(r, &["a", "a", "a", "b"]), Some(3));
        assert_eq!(stop_point(r, &["a", "b", "a", "a", "a"]), Some(5));
        assert_eq!(stop_point(r, &["a", "b", "a", "b", "a", "b"]), None);
        assert_eq!(stop_point(r, &["a", "a"]), None);
    }

    #[test]
    fn adaptive_stops_when_the_posterior_passes() {
        let r = StopRule::adaptive(0.95);
        // 4-0 gives 31/32 = 0.969.
        assert_eq!(stop_point(r, &["a", "a", "a", "a", "a"]), Some(4));
        // a b a a a a: after 6, a=5 b=1 -> P(Bin(7) <= 5) = 120/128 = 0.9375; after 7 (a=6, b=1)
        // P(Bin(8) <= 6) = 247/256 = 0.965.
        assert_eq!(stop_point(r, &["a", "b", "a", "a", "a", "a", "a"]), Some(7));
        // A split vote never settles.
        assert_eq!(
            stop_point(r, &["a", "b", "a", "b", "a", "b", "a", "b"]),
            None
        );
    }

    #[test]
    fn leader_probability_matches_the_binomial_tail() {
        assert!((leader_probability(5, 1) - 120.0 / 128.0).abs() < 1e-12);
        assert!((leader_probability(6, 1) - 247.0 / 256.0).abs() < 1e-12);
        // Large counts stay finite and ordered.
        let p = leader_probability(600, 400);
        assert!(p > 0.999_999 && p <= 1.0);
        assert!((leader_probability(500, 500) - 0.5).abs() < 1e-9); // a tie is a coin toss
    }

    proptest::proptest! {
        #[test]
        fn leader_probability_is_monotone(a in 0u64..200, b in 0u64..200) {
            let p = leader_probability(a, b);
            proptest::prop_assert!((0.0..=1.0).contains(&p));
            proptest::prop_assert!(leader_probability(a + 1, b) >= p - 1e-12);
            proptest::prop_assert!(leader_probability(a, b + 1) <= p + 1e-12);
        }
    }
}
