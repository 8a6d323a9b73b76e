//! [`ConvergenceDetector`]: decides when an iterative loop should stop, from its score history.

// Some items serve only the crate's tests and benchmarks (through `internals`).
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

use crate::error::{Error, Result};

/// Why a [`ConvergenceDetector`] said stop.
///
/// ```
/// use executionkit::internals::convergence::{ConvergenceDetector, StopRule};
/// let mut d = ConvergenceDetector::new(0.01, 3, Some(0.9)).unwrap();
/// assert_eq!(d.observe(0.95).unwrap(), Some(StopRule::ScoreThreshold));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRule {
    /// The score reached the threshold.
    ScoreThreshold,
    /// The score moved by at most `delta_threshold` for `patience` consecutive observations.
    Plateau,
}

/// Stops a loop when its score reaches a threshold, or stops improving.
///
/// Each score must be in [0, 1]. With a threshold, a score at or above it stops the loop. From
/// the second score on, a change of at most `delta_threshold` counts as stale (any bigger change
/// resets the count); `patience` stale observations in a row stop the loop.
///
/// ```
/// use executionkit::internals::convergence::ConvergenceDetector;
/// let mut d = ConvergenceDetector::new(0.01, 2, None).unwrap();
/// assert!(!d.should_stop(0.5).unwrap());
/// assert!(!d.should_stop(0.505).unwrap());
/// assert!(d.should_stop(0.505).unwrap());
/// assert!(d.should_stop(f64::NAN).unwrap_err().to_string().contains("Invalid score"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConvergenceDetector {
    delta_threshold: f64,
    patience: usize,
    score_threshold: Option<f64>,
    scores: Vec<f64>,
    stale_count: usize,
}

impl Default for ConvergenceDetector {
    /// `delta_threshold` 0.01, `patience` 3, no score threshold.
    fn default() -> Self {
        Self {
            delta_threshold: 0.01,
            patience: 3,
            score_threshold: None,
            scores: Vec::new(),
            stale_count: 0,
        }
    }
}

impl ConvergenceDetector {
    /// A detector; `invalid_argument` naming the field when `delta_threshold` is negative or not
    /// finite, `patience` is 0, or `score_threshold` is outside [0, 1].
    ///
    /// ```
    /// use executionkit::internals::convergence::ConvergenceDetector;
    /// let e = ConvergenceDetector::new(-0.1, 3, None).unwrap_err();
    /// assert!(e.to_string().contains("delta_threshold"));
    /// ```
    pub fn new(
        delta_threshold: f64,
        patience: usize,
        score_threshold: Option<f64>,
    ) -> Result<Self> {
        check_delta_threshold(delta_threshold)?;
        check_patience(patience)?;
        if let Some(t) = score_threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::invalid_argument(
                    "score_threshold",
                    format!("score_threshold must be in [0, 1], got {t}"),
                ));
            }
        }
        Ok(Self {
            delta_threshold,
            patience,
            score_threshold,
            scores: Vec::new(),
            stale_count: 0,
        })
    }

    /// Records `score` and says which rule, if any, stops the loop. A NaN score or one outside
    /// [0, 1] is `invalid_argument` (`Invalid score: …`) and is not recorded.
    ///
    /// ```
    /// use executionkit::internals::convergence::{ConvergenceDetector, StopRule};
    /// let mut d = ConvergenceDetector::new(0.0, 1, None).unwrap();
    /// assert_eq!(d.observe(0.5).unwrap(), None);
    /// assert_eq!(d.observe(0.5).unwrap(), Some(StopRule::Plateau));
    /// ```
    pub fn observe(&mut self, score: f64) -> Result<Option<StopRule>> {
        if !(0.0..=1.0).contains(&score) {
            return Err(Error::invalid_argument(
                "score",
                format!("Invalid score: {score} (scores must be in [0, 1])"),
            ));
        }
        let previous = self.scores.last().copied();
        self.scores.push(score);
        if matches!(self.score_threshold, Some(t) if score >= t) {
            return Ok(Some(StopRule::ScoreThreshold));
        }
        if let Some(prev) = previous {
            if (score - prev).abs() <= self.delta_threshold {
                self.stale_count += 1;
            } else {
                self.stale_count = 0;
            }
            if self.stale_count >= self.patience {
                return Ok(Some(StopRule::Plateau));
            }
        }
        Ok(None)
    }

    /// `observe(score)` as a yes/no.
    ///
    /// ```
    /// let mut d = executionkit::internals::convergence::ConvergenceDetector::new(0.01, 3, Some(0.9)).unwrap();
    /// assert!(d.should_stop(0.9).unwrap());
    /// ```
    pub fn should_stop(&mut self, score: f64) -> Result<bool> {
        Ok(self.observe(score)?.is_some())
    }

    /// Forgets every score and the stale count.
    ///
    /// ```
    /// let mut d = executionkit::internals::convergence::ConvergenceDetector::default();
    /// d.should_stop(0.5).unwrap();
    /// d.reset();
    /// assert!(d.scores().is_empty());
    /// ```
    pub fn reset(&mut self) {
        self.scores.clear();
        self.stale_count = 0;
    }

    /// The scores observed since the last reset.
    ///
    /// ```
    /// assert!(executionkit::internals::convergence::ConvergenceDetector::default().scores().is_empty());
    /// ```
    #[must_use]
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }
}

/// `delta_threshold` must be finite and ≥ 0.
pub(crate) fn check_delta_threshold(d: f64) -> Result<()> {
    if !d.is_finite() || d < 0.0 {
        return Err(Error::invalid_argument(
            "delta_threshold",
            format!("delta_threshold must be a finite number >= 0.0, got {d}"),
        ));
    }
    Ok(())
}

/// `patience` must be ≥ 1.
pub(crate) fn check_patience(p: usize) -> Result<()> {
    if p < 1 {
        return Err(Error::invalid_argument(
            "patience",
            format!("patience must be >= 1, got {p}"),
        ));
    }
    Ok(())
}
