//! `RateLimited` (issue #11, "RPM and TPM held against nginx") measured from the server's side:
//! a private nginx on 127.0.0.1 answers every chat completion with a fixed reply and writes one
//! access-log line per request with its time to the millisecond; an `OpenAiProvider` under a
//! `RateLimited` layer is driven through the engine at high concurrency, then the log is read
//! and every sliding window of requests is checked against the quota.
//!
//! **Quotas.** A "per minute" quota is only a rate (a governor `Quota` is an emission interval
//! plus a burst): `tokens_per_minute(n)` is `token_quota(Quota::per_minute(n))`. To run in a few
//! seconds the tests use the same mechanism with short periods: requests at one per 100 ms with
//! a burst of 3, and tokens at one per millisecond with a burst of 300 (3 requests of 100).
//!
//! **The bound.** Governor's GCRA admits `n` units at time `t` only if its theoretical arrival
//! time stays within `burst` periods of `t`, so any run of admitted requests `i..=j` carries at
//! most `burst + (t_j - t_i) / period` units. nginx sees each request a little after its permit
//! was granted, so the check allows [`SLACK_MS`] on every window (see there). A limiter that
//! let the requests through unthrottled, or at twice the rate, fails by far (the synthetic
//! cases at the end check the checker).
//!
//! nginx is `EK_NGINX`, else `nginx` on the `PATH`, else `/usr/sbin/nginx` (package
//! `nginx-light`; scripts/test.sh installs it). Without it the tests say they are skipping and
//! pass, unless `EK_REQUIRE_SERVERS=1` (scripts/test.sh), which makes it a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use executionkit::prelude::*;
use executionkit::{ChatRequest, CostTracker, Message, OpenAiProvider, RateLimited};
use governor::Quota;

use common::nginx::{Nginx, nginx_binary};

/// Slack added to every window's span. nginx's `$msec` and `$request_time` are rounded to the
/// millisecond (2 ms), and between the limiter granting a permit and nginx reading the request
/// lie the client task's wake-up, the connection's write and nginx's event loop; on a busy
/// two-core machine that delay varies by tens of milliseconds. 150 ms lets a window hold at
/// most one request (100 tokens) more than the exact bound, while an unthrottled burst or a
/// doubled rate exceeds it many times over.
const SLACK_MS: u64 = 150;

/// Requests per test.
const REQUESTS: usize = 25;

/// `max_tokens` of the TPM test's request; with its prompt ("hi": 1 token, plus 4 for the
/// message) the limiter's estimate is 100, which the fixed reply's usage matches (5 + 95), so
/// the tokens a request is charged are the tokens it reports.
const MAX_TOKENS: u32 = 95;
const TOKENS_PER_REQUEST: u64 = 100;

const REPLY: &str = r#"{"id":"chatcmpl-nginx","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":95,"total_tokens":100}}"#;

/// Stops nginx, then reads when it saw each request arrive, in milliseconds
/// (`$msec - $request_time`), sorted.
fn request_starts_ms(nginx: &mut Nginx) -> Vec<u64> {
    nginx.stop();
    let log = std::fs::read_to_string(nginx.dir.join("access.log")).unwrap();
    let mut starts: Vec<u64> = log
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 3, "log line {line:?}");
            assert_eq!(fields[2], "200", "log line {line:?}");
            millis(fields[0]) - millis(fields[1])
        })
        .collect();
    starts.sort_unstable();
    starts
}

/// `"1700000000.123"` (seconds with milliseconds, as nginx logs them) in milliseconds.
fn millis(s: &str) -> u64 {
    let (secs, frac) = s.split_once('.').unwrap();
    assert_eq!(frac.len(), 3, "{s}");
    secs.parse::<u64>().unwrap() * 1000 + frac.parse::<u64>().unwrap()
}

/// A quota in units (requests or tokens): at most `burst` at once, then one per `period`.
#[derive(Clone, Copy)]
struct Limit {
    burst: u64,
    period: Duration,
}

impl Limit {
    fn quota(self) -> Quota {
        Quota::with_period(self.period)
            .unwrap()
            .allow_burst(NonZeroU32::new(u32::try_from(self.burst).unwrap()).unwrap())
    }
}

/// Checks every window of consecutive requests `i..=j` (`starts` sorted, in ms; each request
/// `weight` units): their units are at most `burst + (span + SLACK_MS) / period`. Returns the
/// largest excess over the exact bound (`burst + span / period`, no slack) seen, in units.
fn check_windows(starts: &[u64], weight: u64, limit: Limit) -> Result<f64, String> {
    let period_ns = limit.period.as_nanos();
    let mut worst = f64::NEG_INFINITY;
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let units = (j - i + 1) as u64 * weight;
            let span_ms = u128::from(starts[j] - starts[i]);
            let allowed =
                u128::from(limit.burst) + (span_ms + u128::from(SLACK_MS)) * 1_000_000 / period_ns;
            #[allow(clippy::cast_precision_loss)]
            let exact = limit.burst as f64 + (span_ms * 1_000_000) as f64 / period_ns as f64;
            #[allow(clippy::cast_precision_loss)]
            let excess = units as f64 - exact;
            worst = worst.max(excess);
            if u128::from(units) > allowed {
                return Err(format!(
                    "requests {i}..={j} at {}..{} ms carry {units} units in {span_ms} ms; \
                     the quota (+{SLACK_MS} ms) allows {allowed}",
                    starts[i] - starts[0],
                    starts[j] - starts[0],
                ));
            }
        }
    }
    Ok(worst)
}

fn request() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")]).max_tokens(MAX_TOKENS)
}

/// Requests per period: a 25-sample consensus at a concurrency of 25 goes through the limit
/// (one permit per call), and nginx never sees more than the quota in any window.
#[tokio::test]
async fn requests_per_period_hold_at_nginx() {
    let Some(bin) = nginx_binary() else {
        return;
    };
    let mut nginx = Nginx::start(&bin, REPLY, true);
    let limit = Limit {
        burst: 3,
        period: Duration::from_millis(100),
    };
    let provider = RateLimited::new(
        OpenAiProvider::new(nginx.base_url(), "m").unwrap(),
        limit.quota(),
    );
    let r = Consensus::new()
        .samples(REQUESTS)
        .max_concurrency(REQUESTS)
        .run(&provider, "Capital of France?", &RunContext::new())
        .await
        .unwrap();
    assert_eq!(r.value, "Paris");
    assert_eq!(r.cost.llm_calls, REQUESTS as u64);
    assert_eq!(provider.permits_taken(), REQUESTS as u64);

    let starts = request_starts_ms(&mut nginx);
    assert_eq!(starts.len(), REQUESTS, "requests in nginx's log");
    let worst = check_windows(&starts, 1, limit).unwrap();
    eprintln!(
        "RPM: {REQUESTS} requests over {} ms at nginx; largest excess over the exact bound: \
         {worst:.2} requests",
        starts[REQUESTS - 1] - starts[0]
    );
}

/// Tokens per period: 25 concurrent calls through `RunContext::complete`, each charged 100
/// tokens (its estimate, which its reported usage matches), under a request quota that never
/// binds; nginx never sees more tokens than the token quota in any window.
#[tokio::test]
async fn tokens_per_period_hold_at_nginx() {
    let Some(bin) = nginx_binary() else {
        return;
    };
    let mut nginx = Nginx::start(&bin, REPLY, true);
    let tokens = Limit {
        burst: 3 * TOKENS_PER_REQUEST,
        period: Duration::from_millis(1),
    };
    let roomy = Quota::per_second(NonZeroU32::new(1_000_000).unwrap())
        .allow_burst(NonZeroU32::new(1_000).unwrap());
    let provider = RateLimited::new(OpenAiProvider::new(nginx.base_url(), "m").unwrap(), roomy)
        .token_quota(tokens.quota());
    let ctx = RunContext::new();
    let tracker = CostTracker::new();
    let calls = (0..REQUESTS).map(|_| ctx.complete(&provider, request(), &tracker));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().content(), "Paris");
    }
    let usage = tracker.usage();
    assert_eq!(usage.llm_calls, REQUESTS as u64);
    let reported = usage.input_tokens + usage.output_tokens;
    assert_eq!(reported, REQUESTS as u64 * TOKENS_PER_REQUEST);
    // Every call was charged exactly what it reported: the log's tokens are the limiter's.
    assert_eq!(provider.tokens_charged(), Some(reported));
    assert_eq!(provider.token_balance(), Some(0));

    let starts = request_starts_ms(&mut nginx);
    assert_eq!(starts.len(), REQUESTS, "requests in nginx's log");
    let worst = check_windows(&starts, TOKENS_PER_REQUEST, tokens).unwrap();
    eprintln!(
        "TPM: {reported} tokens over {} ms at nginx; largest excess over the exact bound: \
         {worst:.0} tokens",
        starts[REQUESTS - 1] - starts[0]
    );
}

/// The check fails on what an absent or too loose limiter would produce.
#[test]
fn the_window_check_catches_bursts_and_fast_rates() {
    let limit = Limit {
        burst: 3,
        period: Duration::from_millis(100),
    };
    // Throttled as the quota says: the burst at 0 ms, then one every 100 ms.
    let held: Vec<u64> = (0..25)
        .map(|i| if i < 3 { 0 } else { (i - 2) * 100 })
        .collect();
    assert!(check_windows(&held, 1, limit).is_ok());
    // Not throttled: all within 20 ms.
    let burst: Vec<u64> = (0..25).collect();
    assert!(check_windows(&burst, 1, limit).is_err());
    // Twice the rate, burst respected.
    let fast: Vec<u64> = (0..25)
        .map(|i| if i < 3 { 0 } else { (i - 2) * 50 })
        .collect();
    assert!(check_windows(&fast, 1, limit).is_err());
    // A burst of 5 instead of 3.
    let wide: Vec<u64> = (0..25)
        .map(|i| if i < 5 { 0 } else { (i - 4) * 100 })
        .collect();
    assert!(check_windows(&wide, 1, limit).is_err());
    // Tokens: 100 a request, 300 at once, one token a millisecond.
    let tokens = Limit {
        burst: 300,
        period: Duration::from_millis(1),
    };
    assert!(check_windows(&held, 100, tokens).is_ok());
    assert!(check_windows(&fast, 100, tokens).is_err());
}
