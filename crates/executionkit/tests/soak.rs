//! The soak (issue 15, item 4): many calls against nginx in one process through the library,
//! then many cancelled fan-outs, watching what the process holds.
//!
//! - `EK_SOAK_CALLS` calls (default 20,000; scripts/reliability.sh runs 1,000,000 in release)
//!   through `RunContext::complete` on one `OpenAiProvider`, 64 in flight: after a warm-up of a
//!   tenth of the calls, resident memory stays within 5% (plus 1 MiB for the allocator's
//!   granularity), and open file descriptors and live tokio tasks do not grow.
//! - `EK_SOAK_FANOUTS` consensus fan-outs of 8 samples (default 2,000; the full run 10,000),
//!   each cancelled at a different moment (spread over 1.2 times a whole fan-out's time): nothing is left reserved in the ledger after any of
//!   them, the calls the ledger counted are at least the requests nginx answered, and file
//!   descriptors and tasks come back.
//!
//! Each prints one line of figures for docs/reliability.md. nginx as in tests/common/nginx.rs
//! (skips without it unless `EK_REQUIRE_SERVERS=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use executionkit::WithCallOptions as _;
use executionkit::{
    ChatRequest, Consensus, CostTracker, Message, OpenAiProvider, RetryPolicy, RunContext,
};
use futures::StreamExt;

use common::nginx::{Nginx, nginx_binary};

const REPLY: &str = r#"{"id":"chatcmpl-soak","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

const IN_FLIGHT: usize = 64;

/// The two soaks measure the whole process, so they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory in KiB (`/proc/self/statm`, pages of 4 KiB).
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

fn provider(nginx: &Nginx) -> OpenAiProvider {
    OpenAiProvider::builder(nginx.base_url(), "m")
        .api_key("sk-soak-test-key-0123456789")
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What the process holds at one moment.
#[derive(Debug, Clone, Copy)]
struct Held {
    rss_kib: u64,
    fds: usize,
    tasks: usize,
}

fn held() -> Held {
    Held {
        rss_kib: rss_kib(),
        fds: open_fds(),
        tasks: alive_tasks(),
    }
}

/// Runs `calls` calls, 64 in flight.
async fn run_calls(ctx: &RunContext, p: &OpenAiProvider, calls: u64) {
    let tracker = CostTracker::new();
    let request =
        ChatRequest::new(vec![Message::user("What is the capital of France?")]).max_tokens(4);
    futures::stream::iter(0..calls)
        .map(|_| ctx.complete(p, request.clone(), &tracker))
        .buffer_unordered(IN_FLIGHT)
        .for_each(|r| async move {
            assert_eq!(r.unwrap().content(), "Paris");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_hold_memory_descriptors_and_tasks_flat() {
    let Some(bin) = nginx_binary() else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let nginx = Nginx::start(&bin, REPLY, false);
    let p = provider(&nginx);
    let ctx = RunContext::new().retry(RetryPolicy::none());
    let calls = env_count("EK_SOAK_CALLS", 20_000).max(1_000);
    let warm_up = calls / 10;

    run_calls(&ctx, &p, warm_up).await;
    let warm = held();
    let start = Instant::now();
    run_calls(&ctx, &p, calls - warm_up).await;
    let secs = start.elapsed().as_secs_f64();
    let end = held();

    assert_eq!(ctx.ledger().spent().llm_calls, calls);
    assert_eq!(ctx.ledger().reserved_output_tokens(), 0);
    println!(
        "soak: {calls} calls, {:.0} calls/s after warm-up; RSS {} KiB after warm-up, {} KiB \
         at the end ({:+.1}%); fds {} -> {}; tokio tasks {} -> {}",
        (calls - warm_up) as f64 / secs,
        warm.rss_kib,
        end.rss_kib,
        (end.rss_kib as f64 / warm.rss_kib as f64 - 1.0) * 100.0,
        warm.fds,
        end.fds,
        warm.tasks,
        end.tasks
    );
    assert!(
        end.rss_kib <= warm.rss_kib + warm.rss_kib / 20 + 1024,
        "RSS grew from {} KiB to {} KiB",
        warm.rss_kib,
        end.rss_kib
    );
    assert!(end.fds <= warm.fds, "open fds grew: {warm:?} -> {end:?}");
    assert!(
        end.tasks <= warm.tasks,
        "tokio tasks grew: {warm:?} -> {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_fan_outs_leave_nothing_outstanding() {
    let Some(bin) = nginx_binary() else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let nginx = Nginx::start(&bin, REPLY, false);
    let p = provider(&nginx);
    let ctx = RunContext::new().retry(RetryPolicy::none());
    let fan_outs = env_count("EK_SOAK_FANOUTS", 2_000).max(100);

    // One finished fan-out first, so the pool holds its connections before the baseline; its
    // time sets the moments of cancellation.
    let first = Consensus::new()
        .samples(8)
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    assert_eq!(first.value, "Paris");
    // A fan-out on the warm pool, for the time.
    let timer = Instant::now();
    let warm = Consensus::new()
        .samples(8)
        .run(&p, "q", &ctx)
        .await
        .unwrap();
    let full = timer.elapsed();
    assert_eq!(warm.value, "Paris");
    let before = held();
    let mut cut_short = 0_u64;
    for i in 0..fan_outs {
        // Cancelled between 0 and 1.2 times a whole fan-out's time: before sending,
        // mid-request, after some replies, or not at all.
        let wait = full.mul_f64(((i * 37) % 120) as f64 / 100.0);
        let consensus = Consensus::new().samples(8).seed(i * 8);
        if tokio::time::timeout(wait, consensus.run(&p, "q", &ctx))
            .await
            .is_err()
        {
            cut_short += 1;
        }
        assert_eq!(
            ctx.ledger().reserved_output_tokens(),
            0,
            "fan-out {i} left tokens reserved"
        );
    }
    // Connections cut mid-request close; give the runtime a moment to drop them.
    let mut after = held();
    for _ in 0..100 {
        if after.fds <= before.fds + IN_FLIGHT && after.tasks <= before.tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = held();
    }
    let spent = ctx.ledger().spent();
    println!(
        "soak: {fan_outs} fan-outs of 8, {cut_short} cancelled in flight, {} calls counted; \
         fds {} -> {}; tokio tasks {} -> {}; nothing reserved after any",
        spent.llm_calls, before.fds, after.fds, before.tasks, after.tasks
    );
    assert!(
        cut_short > fan_outs / 2,
        "only {cut_short} were cancelled in flight"
    );
    // The pool may hold at most one connection per call in flight.
    assert!(
        after.fds <= before.fds + IN_FLIGHT,
        "{before:?} -> {after:?}"
    );
    assert!(after.tasks <= before.tasks, "{before:?} -> {after:?}");
}
