//! Retry policy: how many attempts, which errors, how long to wait. The loop itself is
//! [`backon`]'s; this module supplies the decisions as a value you can build, inspect and test.
//!
//! Attempts = 1 + `max_retries`. The wait before retry *k* is uniform in
//! `[0, min(base_delay × exponential_base^(k−1), max_delay)]` ("full jitter"). A rate-limited
//! error waits at least its `Retry-After`, but never longer than `max_delay`.

use std::time::Duration;

use rand::RngExt;

use crate::error::{Error, ErrorKind, Result};

/// When and how often to retry a failed call.
///
/// ```
/// use std::time::Duration;
/// use executionkit::RetryPolicy;
/// let p = RetryPolicy::default();
/// assert_eq!(p.max_retries(), 3);
/// assert_eq!(p.delay_cap(1), Duration::from_secs(1));
/// assert_eq!(p.delay_cap(3), Duration::from_secs(4));
/// assert_eq!(p.delay_cap(30), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    exponential_base: f64,
    retry_on: Vec<ErrorKind>,
}

impl Default for RetryPolicy {
    /// 3 retries, 1 s base, 60 s cap, factor 2, retrying rate_limited, provider, transport and
    /// timeout.
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            exponential_base: 2.0,
            retry_on: vec![
                ErrorKind::RateLimited,
                ErrorKind::Provider,
                ErrorKind::Transport,
                ErrorKind::Timeout,
            ],
        }
    }
}

impl RetryPolicy {
    /// The default policy (see [`Default`]).
    ///
    /// ```
    /// assert_eq!(executionkit::RetryPolicy::new(), executionkit::RetryPolicy::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// One attempt, no retry.
    ///
    /// ```
    /// assert_eq!(executionkit::RetryPolicy::none().max_retries(), 0);
    /// ```
    pub fn none() -> Self {
        Self::default().max_retries_count(0)
    }

    /// Sets the retries after the first attempt.
    ///
    /// ```
    /// assert_eq!(executionkit::RetryPolicy::new().max_retries_count(5).max_retries(), 5);
    /// ```
    pub fn max_retries_count(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the retries from a signed number, rejecting a negative one.
    ///
    /// ```
    /// let e = executionkit::RetryPolicy::new().try_max_retries(-1).unwrap_err();
    /// assert!(e.message().contains("max_retries must be >= 0"));
    /// ```
    pub fn try_max_retries(self, n: i64) -> Result<Self> {
        match u32::try_from(n) {
            Ok(n) => Ok(self.max_retries_count(n)),
            Err(_) if n < 0 => Err(Error::invalid_argument(
                "max_retries",
                format!("max_retries must be >= 0, got {n}"),
            )),
            Err(_) => Err(Error::invalid_argument(
                "max_retries",
                format!("max_retries is too large: {n}"),
            )),
        }
    }

    /// Sets the base delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::RetryPolicy::new().base_delay(Duration::ZERO);
    /// assert_eq!(p.delay_cap(2), Duration::ZERO);
    /// ```
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// Sets the longest wait (also the cap on `Retry-After`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::RetryPolicy::new().max_delay(Duration::from_secs(2));
    /// assert_eq!(p.delay_cap(10), Duration::from_secs(2));
    /// ```
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets the growth factor.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::RetryPolicy::new().exponential_base(3.0);
    /// assert_eq!(p.delay_cap(3), Duration::from_secs(9));
    /// ```
    pub fn exponential_base(mut self, f: f64) -> Self {
        self.exponential_base = f;
        self
    }

    /// Sets the kinds that are retried.
    ///
    /// ```
    /// use executionkit::{Error, ErrorKind, RetryPolicy};
    /// let p = RetryPolicy::new().retry_on([ErrorKind::Timeout]);
    /// assert!(p.should_retry(&Error::new(ErrorKind::Timeout, "t")));
    /// assert!(!p.should_retry(&Error::new(ErrorKind::Provider, "p")));
    /// ```
    pub fn retry_on(mut self, kinds: impl IntoIterator<Item = ErrorKind>) -> Self {
        self.retry_on = kinds.into_iter().collect();
        self
    }

    /// Retries after the first attempt.
    ///
    /// ```
    /// assert_eq!(executionkit::RetryPolicy::new().max_retries(), 3);
    /// ```
    #[must_use]
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The longest wait.
    ///
    /// ```
    /// assert_eq!(executionkit::RetryPolicy::new().max_delay_value().as_secs(), 60);
    /// ```
    #[must_use]
    pub fn max_delay_value(&self) -> std::time::Duration {
        self.max_delay
    }

    /// `true` when `err` is of a retried kind. Never true for permanent, budget, invalid
    /// argument or cancellation errors unless configured.
    ///
    /// ```
    /// use executionkit::{Error, ErrorKind, RetryPolicy};
    /// assert!(!RetryPolicy::new().should_retry(&Error::new(ErrorKind::Permanent, "401")));
    /// ```
    #[must_use]
    pub fn should_retry(&self, err: &Error) -> bool {
        self.retry_on.contains(&err.kind())
    }

    /// The upper bound of the wait before retry `attempt` (1-based):
    /// `min(base × factor^(attempt−1), max_delay)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = executionkit::RetryPolicy::new();
    /// assert_eq!(p.delay_cap(2), Duration::from_secs(2));
    /// ```
    #[must_use]
    pub fn delay_cap(&self, attempt: u32) -> Duration {
        self.schedule().cap(attempt)
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            base_delay: self.base_delay,
            max_delay: self.max_delay,
            exponential_base: self.exponential_base,
        }
    }

    /// A random wait in `[0, delay_cap(attempt)]`.
    ///
    /// ```
    /// let p = executionkit::RetryPolicy::new();
    /// assert!(p.delay(2) <= p.delay_cap(2));
    /// ```
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        self.schedule().jittered(attempt)
    }

    /// The wait before the next attempt after `err` failed attempt `attempt`: the jittered
    /// delay, raised to the server's `Retry-After` (of a 429, or of a 5xx that sent one) but
    /// capped at `max_delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use executionkit::{Error, ErrorKind, RetryPolicy};
    /// let p = RetryPolicy::new().base_delay(Duration::ZERO).max_delay(Duration::from_secs(1));
    /// let e = Error::new(ErrorKind::RateLimited, "429").with_retry_after(Duration::from_secs(5));
    /// assert_eq!(p.wait_after(&e, 1), Duration::from_secs(1));
    /// ```
    #[must_use]
    pub fn wait_after(&self, err: &Error, attempt: u32) -> Duration {
        let d = self.delay(attempt);
        match err.retry_after() {
            Some(ra) => d.max(ra).min(self.max_delay),
            None => d,
        }
    }

    /// The backoff schedule handed to [`backon`]: one jittered delay per retry.
    pub(crate) fn backoff(&self) -> FullJitter {
        FullJitter {
            schedule: self.schedule(),
            max_retries: self.max_retries,
            attempt: 0,
        }
    }
}

/// The numbers behind the delays (copied into every call's backoff without allocating).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    base_delay: Duration,
    max_delay: Duration,
    exponential_base: f64,
}

impl Schedule {
    fn cap(self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.base_delay.as_secs_f64() * self.exponential_base.powi(exp);
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(self.max_delay)
        }
    }

    fn jittered(self, attempt: u32) -> Duration {
        let cap = self.cap(attempt);
        if cap.is_zero() {
            return cap;
        }
        cap.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

/// A [`backon::Backoff`]: `max_retries` jittered delays.
#[derive(Debug)]
pub(crate) struct FullJitter {
    schedule: Schedule,
    max_retries: u32,
    attempt: u32,
}

impl Iterator for FullJitter {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        if self.attempt >= self.max_retries {
            return None;
        }
        self.attempt += 1;
        Some(self.schedule.jittered(self.attempt))
    }
}
