//! `GET /metrics`: the gateway's counters in the Prometheus text format (version 0.0.4),
//! written by hand: a few counters, one gauge and one histogram.
//!
//! Upstream calls, tokens and USD are read from the server's root [`BudgetLedger`], which
//! every request's ledger is a child of: what a cancelled request spent is there too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use executionkit::BudgetLedger;

/// The histogram's upper bounds, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Default)]
struct Counts {
    /// (route, status) → requests.
    requests: BTreeMap<(&'static str, u16), u64>,
    /// error kind → errors.
    errors: BTreeMap<String, u64>,
    /// Per bucket (not cumulative), then +Inf.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    counts: Mutex<Counts>,
    in_flight: AtomicI64,
    root: Arc<BudgetLedger>,
}

impl Metrics {
    /// Metrics reading the spend from `root`.
    pub fn new(root: Arc<BudgetLedger>) -> Self {
        Self {
            counts: Mutex::new(Counts {
                buckets: vec![0; BUCKETS.len() + 1],
                ..Counts::default()
            }),
            in_flight: AtomicI64::new(0),
            root,
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request started.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered (its headers sent) after `elapsed`.
    pub fn answered(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let mut c = self.counts();
        *c.requests.entry((route, status)).or_default() += 1;
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = c.buckets.get_mut(i) {
            *b += 1;
        }
        c.sum += secs;
        c.count += 1;
    }

    /// A request was dropped before it was answered (the client went away).
    pub fn dropped(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        *self
            .counts()
            .errors
            .entry("client_disconnected".into())
            .or_default() += 1;
    }

    /// An error of `kind` was answered.
    pub fn error(&self, kind: &str) {
        *self.counts().errors.entry(kind.to_owned()).or_default() += 1;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let spent = self.root.spent();
        let usd = self.root.spent_usd();
        let c = self.counts();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ek_requests_total HTTP requests answered, by route and status.\n# TYPE ek_requests_total counter"
        );
        for ((route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "ek_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ek_requests_in_flight HTTP requests being handled.\n# TYPE ek_requests_in_flight gauge\nek_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed).max(0)
        );
        let _ = writeln!(
            out,
            "# HELP ek_upstream_calls_total LLM calls sent upstream (retries and cancelled calls count).\n# TYPE ek_upstream_calls_total counter\nek_upstream_calls_total {}",
            spent.llm_calls
        );
        let _ = writeln!(
            out,
            "# HELP ek_tokens_total Tokens the upstream reported, by direction.\n# TYPE ek_tokens_total counter\nek_tokens_total{{direction=\"input\"}} {}\nek_tokens_total{{direction=\"output\"}} {}",
            spent.input_tokens, spent.output_tokens
        );
        if let Some(usd) = usd {
            let _ = writeln!(
                out,
                "# HELP ek_usd_total US dollars spent upstream, at the configured prices.\n# TYPE ek_usd_total counter\nek_usd_total {usd}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ek_errors_total Errors, by kind.\n# TYPE ek_errors_total counter"
        );
        for (kind, n) in &c.errors {
            let _ = writeln!(out, "ek_errors_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ek_request_duration_seconds Time to answer a request (to its headers).\n# TYPE ek_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, n) in c.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), ToString::to_string);
            let _ = writeln!(
                out,
                "ek_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "ek_request_duration_seconds_sum {}\nek_request_duration_seconds_count {}",
            c.sum, c.count
        );
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use executionkit::TokenUsage;

    use super::*;

    #[test]
    fn the_exposition_has_every_family() {
        let root = Arc::new(BudgetLedger::unlimited());
        let m = Metrics::new(Arc::clone(&root));
        m.started();
        m.answered("/v1/chat/completions", 200, Duration::from_millis(3));
        m.error("invalid_api_key");
        root.charge(TokenUsage::new(10, 4, 2), None);
        let t = m.render();
        for line in [
            "ek_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
            "ek_upstream_calls_total 2",
            "ek_tokens_total{direction=\"input\"} 10",
            "ek_tokens_total{direction=\"output\"} 4",
            "ek_errors_total{kind=\"invalid_api_key\"} 1",
            "ek_request_duration_seconds_bucket{le=\"0.0025\"} 0",
            "ek_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "ek_request_duration_seconds_bucket{le=\"+Inf\"} 1",
            "ek_request_duration_seconds_count 1",
            "ek_requests_in_flight 0",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing from:\n{t}");
        }
        assert!(!t.contains("ek_usd_total"), "no prices, no usd");
    }
}
