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
//! **Weighted votes** ([`VoteBook::push_weighted`], used by
//! [`Consensus::logprob_weights`](crate::Consensus::logprob_weights)): the leader and the
//! runner-up are the answers of highest total weight, and the adaptive rule takes `a` and `b`
//! as their weights rescaled so that all the weights sum to the number of votes (the evidence
//! stays one vote per sample; the weights only move it between answers). `a` and `b` are then
//! real numbers, and `P(θ > ½) = 1 − I½(a + 1, b + 1)` (the regularized incomplete beta
//! function) is summed as its series ([`leader_probability_weighted`]). The window rule looks
//! at the answers only, so weights do not change it. As soon as one vote comes without a
//! weight, the book counts every vote as 1 (plain counting) from then on.
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
                if book.is_weighted() {
                    let (a, b) = book.top_two_weights();
                    #[allow(clippy::cast_precision_loss)]
                    let scale = book.len() as f64 / book.total_weight();
                    a > 0.0 && leader_probability_weighted(a * scale, b * scale) >= confidence
                } else {
                    let (a, b) = book.top_two();
                    a > 0 && leader_probability(a, b) >= confidence
                }
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

/// `P(θ > ½)` for `θ ~ Beta(a + 1, b + 1)` with real `a, b ≥ 0`: the posterior probability that
/// the answer with (weighted) votes `a` beats the one with `b`. It equals
/// [`leader_probability`] at whole numbers (to about 1e-12) and is `1 − I½(a + 1, b + 1)`,
/// with `I` the regularized incomplete beta function, computed as its hypergeometric series
/// `Iₓ(p, q) = xᵖ(1 − x)^q / (p B(p, q)) · Σₙ ∏ₖ<ₙ (p + q + k) x / (p + 1 + k)` for the larger
/// of the two parameters (where it converges fastest), summed until the rest is below 1e-17 of
/// the sum. A value that is not a finite number ≥ 0 counts as 0.
///
/// ```
/// use executionkit::internals::stop::{leader_probability, leader_probability_weighted};
/// assert!((leader_probability_weighted(4.0, 0.0) - 31.0 / 32.0).abs() < 1e-12);
/// assert!((leader_probability_weighted(3.0, 1.0) - leader_probability(3, 1)).abs() < 1e-12);
/// let p = leader_probability_weighted(3.5, 0.5);
/// assert!(p > leader_probability(3, 1) && p < leader_probability(4, 0));
/// assert_eq!(leader_probability_weighted(2.0, 2.0), 0.5);
/// ```
#[must_use]
pub fn leader_probability_weighted(a: f64, b: f64) -> f64 {
    let clean = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    let (a, b) = (clean(a), clean(b));
    if a == b {
        return 0.5;
    }
    // With p ≥ q, Iₓ(p, q) at x = ½ is the smaller tail, P(θ < ½) for θ ~ Beta(p, q).
    let (p, q) = (a.max(b) + 1.0, a.min(b) + 1.0);
    let tail = incomplete_beta_half(p, q);
    if a > b { 1.0 - tail } else { tail }
}

/// `I½(p, q)` for `p ≥ q ≥ 1`, by the hypergeometric series (see
/// [`leader_probability_weighted`]). The ratio of consecutive terms,
/// `(p + q + n) / (2 (p + 1 + n))`, is below 1 and falls with `n` (as `q ≥ 1`), so after term
/// `t` the rest is at most `t r / (1 − r)`.
fn incomplete_beta_half(p: f64, q: f64) -> f64 {
    let ln_prefactor =
        -(p + q) * std::f64::consts::LN_2 - p.ln() - (ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q));
    let mut term = 1.0_f64;
    let mut sum = 1.0_f64;
    let mut n = 0.0_f64;
    loop {
        let r = (p + q + n) / (2.0 * (p + 1.0 + n));
        term *= r;
        sum += term;
        n += 1.0;
        // (The cap only matters past a + b of about 1e7, far above any sample cap.)
        if term * r / (1.0 - r) <= 1e-17 * sum || !term.is_finite() || n >= 1e8 {
            break;
        }
    }
    (ln_prefactor + sum.ln()).exp().clamp(0.0, 1.0)
}

/// `ln Γ(x)` for `x ≥ 1`: Stirling's series past 15, reached by `Γ(x + 1) = x Γ(x)` (error
/// below 1e-13 relative to the value).
fn ln_gamma(mut x: f64) -> f64 {
    let mut shift = 0.0_f64;
    while x < 15.0 {
        shift += x.ln();
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series =
        inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 * (1.0 / 1680.0))));
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series - shift
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
#[derive(Debug, Clone)]
pub struct VoteBook {
    ids: HashMap<String, usize>,
    counts: Vec<u64>,
    weights: Vec<f64>,
    order: Vec<usize>,
    /// Every vote so far came with a weight.
    weighted: bool,
}

impl Default for VoteBook {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            counts: Vec::new(),
            weights: Vec::new(),
            order: Vec::new(),
            weighted: true,
        }
    }
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
        self.push_weighted(key, None);
    }

    /// Records one vote of weight `weight`. A vote without a weight (`None`, or a weight that
    /// is not a finite number > 0) turns weighting off: from then on every vote counts 1.
    ///
    /// ```
    /// let mut book = executionkit::internals::stop::VoteBook::new();
    /// book.push_weighted("a", Some(0.5));
    /// book.push_weighted("b", Some(0.75));
    /// assert!(book.is_weighted());
    /// assert_eq!(book.top_two_weights(), (0.75, 0.5));
    /// book.push_weighted("a", None);
    /// assert!(!book.is_weighted());
    /// assert_eq!(book.top_two_weights(), (2.0, 1.0)); // plain counts
    /// ```
    pub fn push_weighted(&mut self, key: &str, weight: Option<f64>) {
        let id = match self.ids.get(key) {
            Some(&id) => id,
            None => {
                let id = self.counts.len();
                self.ids.insert(key.to_owned(), id);
                self.counts.push(0);
                self.weights.push(0.0);
                id
            }
        };
        self.counts[id] += 1;
        match weight.filter(|w| w.is_finite() && *w > 0.0) {
            Some(w) => self.weights[id] += w,
            None => self.weighted = false,
        }
        self.order.push(id);
    }

    /// `true` when there are votes and every one came with a weight.
    ///
    /// ```
    /// let mut book = executionkit::internals::stop::VoteBook::new();
    /// assert!(!book.is_weighted());
    /// book.push_weighted("a", Some(1.0));
    /// assert!(book.is_weighted());
    /// ```
    #[must_use]
    pub fn is_weighted(&self) -> bool {
        self.weighted && !self.order.is_empty()
    }

    /// Each answer's weight in the vote, in order of first arrival: its total weight when
    /// [`is_weighted`](Self::is_weighted), else its count.
    #[allow(clippy::cast_precision_loss)]
    fn answer_weights(&self) -> impl Iterator<Item = f64> + '_ {
        let weighted = self.is_weighted();
        self.counts
            .iter()
            .zip(&self.weights)
            .map(move |(&c, &w)| if weighted { w } else { c as f64 })
    }

    /// The sum of every answer's weight (the number of votes when not weighted).
    ///
    /// ```
    /// let mut book = executionkit::internals::stop::VoteBook::new();
    /// book.push_weighted("a", Some(0.5));
    /// book.push_weighted("b", Some(0.25));
    /// assert_eq!(book.total_weight(), 0.75);
    /// ```
    #[must_use]
    pub fn total_weight(&self) -> f64 {
        self.answer_weights().sum()
    }

    /// The weights of the leading and the second answer (counts when not weighted; 0 when
    /// there is none).
    ///
    /// ```
    /// let mut book = executionkit::internals::stop::VoteBook::new();
    /// for (k, w) in [("a", 0.2), ("a", 0.2), ("b", 0.9)] { book.push_weighted(k, Some(w)); }
    /// assert_eq!(book.top_two_weights(), (0.9, 0.4));
    /// ```
    #[must_use]
    pub fn top_two_weights(&self) -> (f64, f64) {
        let mut first = 0.0_f64;
        let mut second = 0.0_f64;
        for w in self.answer_weights() {
            if w > first {
                second = first;
                first = w;
            } else if w > second {
                second = w;
            }
        }
        (first, second)
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

    #[test]
    fn the_weighted_posterior_matches_the_binomial_tail_at_whole_numbers() {
        for a in 0..60u64 {
            for b in 0..60u64 {
                #[allow(clippy::cast_precision_loss)]
                let w = leader_probability_weighted(a as f64, b as f64);
                let exact = leader_probability(a, b);
                assert!((w - exact).abs() < 1e-11, "{a} {b}: {w} vs {exact}");
            }
        }
        for (a, b) in [(600, 400), (5000, 4900), (100_000, 99_000), (3, 2000)] {
            #[allow(clippy::cast_precision_loss)]
            let w = leader_probability_weighted(a as f64, b as f64);
            assert!((w - leader_probability(a, b)).abs() < 1e-8, "{a} {b}");
        }
        // Garbage counts as 0.
        assert_eq!(leader_probability_weighted(f64::NAN, -1.0), 0.5);
        assert!((leader_probability_weighted(f64::INFINITY, 1.0) - 0.25).abs() < 1e-12);
    }

    fn weighted_stop_point(rule: StopRule, votes: &[(&str, f64)]) -> Option<usize> {
        let mut book = VoteBook::new();
        for (i, (k, w)) in votes.iter().enumerate() {
            book.push_weighted(k, Some(*w));
            if rule.should_stop(&book) {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn adaptive_uses_the_weights_rescaled_to_the_number_of_votes() {
        let r = StopRule::adaptive(0.95);
        // Equal weights are plain counting: a b a a a a a stops at 7, as unweighted.
        let same: Vec<(&str, f64)> = ["a", "b", "a", "a", "a", "a", "a"]
            .iter()
            .map(|k| (*k, 0.6))
            .collect();
        assert_eq!(weighted_stop_point(r, &same), Some(7));
        // A confident leader and an unsure dissenter settle sooner: after a(0.9) b(0.1)
        // a(0.9) a(0.9) the rescaled weights are 4 * 2.7/2.8 and 4 * 0.1/2.8, i.e.
        // a = 3.857, b = 0.143, P = 0.9565.
        let votes = [("a", 0.9), ("b", 0.1), ("a", 0.9), ("a", 0.9), ("a", 0.9)];
        assert_eq!(weighted_stop_point(r, &votes), Some(4));
        let mut book = VoteBook::new();
        for (k, w) in &votes[..4] {
            book.push_weighted(k, Some(*w));
        }
        assert!(r.should_stop(&book));
        let p = leader_probability_weighted(4.0 * 2.7 / 2.8, 4.0 * 0.1 / 2.8);
        assert!((p - 0.9565).abs() < 5e-4, "{p}");
        // After three (a = 3 * 1.8/1.9, b = 3 * 0.1/1.9) it had not.
        assert!(leader_probability_weighted(3.0 * 1.8 / 1.9, 3.0 * 0.1 / 1.9) < 0.95);
        // The unweighted book needs 7 for the same answers (a b a a a a a).
        assert_eq!(stop_point(r, &["a", "b", "a", "a", "a", "a", "a"]), Some(7));
        // An unsure leader and a confident dissenter settle later than counting would.
        let votes = [
            ("a", 0.2),
            ("b", 0.9),
            ("a", 0.2),
            ("a", 0.2),
            ("a", 0.2),
            ("a", 0.2),
            ("a", 0.2),
            ("a", 0.2),
            ("a", 0.2),
            ("a", 0.2),
            ("a", 0.2),
        ];
        let at = weighted_stop_point(r, &votes);
        assert!(at.is_none_or(|n| n > 7), "{at:?}");
        // The leader is the heavier answer, not the more frequent one: b leads here.
        let mut book = VoteBook::new();
        for (k, w) in [("a", 0.1), ("a", 0.1), ("b", 0.9)] {
            book.push_weighted(k, Some(w));
        }
        assert_eq!(book.top_two_weights(), (0.9, 0.2));
        assert_eq!(book.top_two(), (2, 1));
    }

    #[test]
    fn a_vote_without_a_weight_turns_weighting_off() {
        let mut book = VoteBook::new();
        book.push_weighted("a", Some(0.9));
        book.push_weighted("b", Some(0.1));
        book.push_weighted("b", Some(f64::NAN));
        assert!(!book.is_weighted());
        assert_eq!(
            (book.top_two_weights(), book.total_weight()),
            ((2.0, 1.0), 3.0)
        );
        // The window rule does not look at weights.
        let w = StopRule::window(2);
        assert!(w.should_stop(&book));
    }

    proptest::proptest! {
        #[test]
        fn the_weighted_posterior_is_monotone(a in 0.0f64..300.0, b in 0.0f64..300.0, d in 0.0f64..5.0) {
            let p = leader_probability_weighted(a, b);
            proptest::prop_assert!((0.0..=1.0).contains(&p));
            proptest::prop_assert!(leader_probability_weighted(a + d, b) >= p - 1e-12);
            proptest::prop_assert!(leader_probability_weighted(a, b + d) <= p + 1e-12);
            proptest::prop_assert!((leader_probability_weighted(b, a) - (1.0 - p)).abs() < 1e-12);
        }

        #[test]
        fn leader_probability_is_monotone(a in 0u64..200, b in 0u64..200) {
            let p = leader_probability(a, b);
            proptest::prop_assert!((0.0..=1.0).contains(&p));
            proptest::prop_assert!(leader_probability(a + 1, b) >= p - 1e-12);
            proptest::prop_assert!(leader_probability(a, b + 1) <= p + 1e-12);
        }
    }
}
