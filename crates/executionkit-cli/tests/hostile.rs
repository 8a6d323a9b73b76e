//! The hostile-server suite for `ek` (issue #9): the built binary against servers that
//! misbehave at the byte level (executionkit's `tests/common/hostile.rs` and `attacks.rs`,
//! included by path), over plain http, one test per class of "Why":
//!
//! 1. bounded memory: `ek consensus --samples 1` fed a flood ends in a typed error while its
//!    peak RSS (`VmHWM` of the child, read while it runs) stays under [`MAX_RSS`];
//! 2. double spend: requests received by the server = `llm_calls` reported;
//! 3. desync: `ek map-reduce` at concurrency 1 over 3 lines gets each item's own answer;
//! 4. lenient framing: `+N` lengths, `gzip, chunked` and a 101 fail, TE with CL is not reused,
//!    interim 100 / 103 replies are skipped;
//! 5. secrets: the key (or a URL password) echoed by the server is in no output of `ek`.
//!
//! Each test says what it expects, how the hand-written transport (`provider/http1.rs`) failed
//! it, and whether `ek` on the one hyper transport passes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../executionkit/tests/common/attacks.rs"]
mod attacks;
mod common;
#[path = "../../executionkit/tests/common/hostile.rs"]
mod hostile;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use attacks::{Echo, Flood, Framing, MIB};
use common::{code, command, stderr, stdout};
use hostile::{Conn, Hostile};
use serde_json::Value;

const KEY: &str = "sk-hostile-SECRET-0123456789abcdef";
/// A part of [`KEY`] found in its upper-cased and percent-encoded forms too (checked ignoring
/// case).
const KEY_TAIL: &str = "0123456789abcdef";
/// The most `ek`'s peak RSS may reach under a flood (it is about 8 MiB at rest).
const MAX_RSS: u64 = 150 * MIB as u64;

fn env_for(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("EXECUTIONKIT_BASE_URL", url.to_owned()),
        ("EXECUTIONKIT_MODEL", "test-model".to_owned()),
        ("EXECUTIONKIT_API_KEY", KEY.to_owned()),
    ]
}

async fn ek_at(server: &Hostile, args: &[&str]) -> Output {
    run(args, &env_for(&server.url())).await
}

async fn run(args: &[&str], env: &[(&'static str, String)]) -> Output {
    tokio::time::timeout(Duration::from_secs(180), command(args, env).output())
        .await
        .expect("ek hung")
        .unwrap()
}

/// `VmHWM` of process `pid` in bytes, or `None` once it has exited.
fn peak_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Runs `ek args` reading its peak RSS every few milliseconds while it runs; kills it once the
/// peak passes `limit` (a test then fails at once instead of watching it grow). Returns the
/// output, the highest peak seen and whether it was killed.
async fn ek_measured(
    args: &[&str],
    env: &[(&'static str, String)],
    limit: u64,
) -> (Output, u64, bool) {
    let child = command(args, env).spawn().unwrap();
    let pid = child.id().unwrap();
    let watcher = tokio::spawn(async move {
        let (mut peak, mut killed) = (0, false);
        while let Some(p) = peak_of(pid) {
            peak = peak.max(p);
            if peak > limit && !killed {
                killed = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (peak, killed)
    });
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("ek hung")
        .unwrap();
    let (peak, killed) = watcher.await.unwrap();
    (out, peak, killed)
}

/// stdout as one JSON object.
fn json(o: &Output) -> Value {
    serde_json::from_str(stdout(o).trim_end())
        .unwrap_or_else(|e| panic!("{e}: stdout {} stderr {}", stdout(o), stderr(o)))
}

/// The `llm_calls` of a `--json` result or error.
fn llm_calls(v: &Value) -> u64 {
    v["cost"]["llm_calls"]
        .as_u64()
        .or_else(|| v["error"]["cost"]["llm_calls"].as_u64())
        .unwrap_or_else(|| panic!("no llm_calls in {v}"))
}

fn error_kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or("<none>")
}

fn temp_file(name: &str, text: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ek-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

// ---- 1. bounded memory ----

/// `ek consensus --samples 1 --timeout SECONDS` against a `kind` flood of `total` raw bytes:
/// peak RSS under [`MAX_RSS`], exit 1 with a provider or transport error (not a timeout: ek
/// must stop reading by itself), or with `timeout` too when `timeout_ok`.
async fn flood(kind: Flood, total: usize, timeout: &str, timeout_ok: bool) {
    let server = attacks::flood(kind, total).await;
    let args = [
        "consensus",
        "q",
        "--samples",
        "1",
        "--max-retries",
        "0",
        "--timeout",
        timeout,
        "--json",
    ];
    let (o, peak, killed) = ek_measured(&args, &env_for(&server.url()), MAX_RSS).await;
    eprintln!(
        "{kind:?}: ek's peak RSS {:.1} MiB, server wrote {:?} bytes",
        peak as f64 / MIB as f64,
        attacks::flooded(&server)
    );
    assert!(
        !killed && peak < MAX_RSS,
        "{kind:?}: ek's peak RSS reached {} MiB{}",
        peak / MIB as u64,
        if killed { " (killed)" } else { "" }
    );
    assert_eq!(code(&o), 1, "{kind:?}: {}", stderr(&o));
    let v = json(&o);
    assert!(
        matches!(error_kind(&v), "provider" | "transport")
            || (timeout_ok && error_kind(&v) == "timeout"),
        "{kind:?}: {v}"
    );
    assert_eq!(llm_calls(&v), 1, "{v}");
}

// Expected: a typed error with bounded RSS. Passed on http1.rs (it refused the length at
// once: 18 MiB); passes on hyper, which reads up to the 64 MiB cap first (peak 79 MiB).
#[tokio::test]
async fn memory_content_length_200_mib() {
    flood(Flood::ContentLength, 200 * MIB, "60", false).await;
}

// Expected: bounded RSS and a typed error. With the default 64 MiB cap (raw bytes), a debug
// build of `ek` needs about a minute of CPU to decode 64 MiB of 1-byte chunks, so the request
// timeout (20 s) may come first: a timeout is accepted here, the bound on memory is the test
// (the library suite checks the cap itself, with a smaller one). FAILED on http1.rs: its
// chunked decoder kept every raw byte (ek passed 150 MiB within seconds). Passes on hyper
// (19 MiB).
#[tokio::test]
async fn memory_one_byte_chunks_200_mib() {
    flood(Flood::OneByteChunks, 200 * MIB, "20", true).await;
}

// Expected: a typed error after a few KiB of extension. Passed on http1.rs (head limit) and
// passes on hyper.
#[tokio::test]
async fn memory_endless_chunk_extension() {
    flood(Flood::ChunkExtension, 1024 * MIB, "60", false).await;
}

// Expected: a typed error after a bounded amount of trailers. FAILED on http1.rs: trailer
// lines were kept without bound. Passes on hyper (15 MiB).
#[tokio::test]
async fn memory_endless_trailers() {
    flood(Flood::Trailers, 1024 * MIB, "60", false).await;
}

// Expected: a typed error at the head limit. Passed on http1.rs (64 KiB head limit) and
// passes on hyper.
#[tokio::test]
async fn memory_endless_header_line() {
    flood(Flood::HeaderLine, 1024 * MIB, "60", false).await;
}

// ---- 2. double spend ----

// Expected: each connection answers one request and closes after reading the next in full;
// the transport never sends that request again by itself, the engine's retry does and counts
// it, so requests received = llm_calls reported. FAILED on http1.rs: it re-sent the written
// request on a new connection, outside the ledger (received 3, reported 2). Passes on hyper.
#[tokio::test]
async fn double_spend_requests_received_equal_llm_calls() {
    let server = attacks::close_after_second_request().await;
    let o = ek_at(
        &server,
        &[
            "consensus",
            "q",
            "--samples",
            "2",
            "--max-concurrency",
            "1",
            "--json",
        ],
    )
    .await;
    let v = json(&o);
    let reported = llm_calls(&v);
    let received = server.requests() as u64;
    assert!(
        received <= reported,
        "the server received {received} requests, ek reported {reported} calls: {v}"
    );
    assert_eq!(received, reported, "{v}");
}

// ---- 3. desync ----

async fn map_reduce_answers(server: &Hostile) -> Output {
    let items = temp_file("items.txt", "alpha\nbravo\ncharlie\n");
    ek_at(
        server,
        &[
            "map-reduce",
            "--map-template",
            "{item}",
            "--reduce-template",
            "{mapped_outputs}",
            "--lines",
            "--max-concurrency",
            "1",
            "--json",
            &items,
        ],
    )
    .await
}

/// The reduce call echoes the map answers it was given, so the value shows every answer.
fn assert_own_answers(o: &Output, what: &str) {
    assert_eq!(code(o), 0, "{what}: {}", stderr(o));
    let v = json(o);
    let want = format!(
        "echo:{}",
        ["alpha", "bravo", "charlie"]
            .map(|i| format!("echo:{i}"))
            .join("\n\n---\n\n")
    );
    assert_eq!(v["value"], want, "{what}: an answer is another request's");
}

// Expected: every map answer is its own item's, whatever unsolicited reply follows it in the
// same write (small, or larger than a read so that part of it is still in the socket when the
// answer has been read). Passed on http1.rs and passes on hyper. An unsolicited reply that arrives later, while
// the connection is idle in the pool, is the library suite's `desync_extra_reply_while_idle`
// (which FAILS on http1.rs): only there does the test control the idle time. Through `ek`,
// a stale reply written separately right after the answer desyncs http1.rs too (the reduce
// call gets `STALE:charlie`), but whether it arrives before the next checkout or after the
// next request is written is a race no client can win, so it is not asserted here.
#[tokio::test]
async fn desync_map_reduce_answers_belong_to_their_items() {
    for (what, pad) in [("same write", 0), ("same write, large", 512 * 1024)] {
        let server = attacks::extra_reply(None, pad).await;
        let o = map_reduce_answers(&server).await;
        assert_own_answers(&o, what);
        assert_eq!(server.requests(), 4, "{what}");
    }
}

// ---- 4. lenient framing ----

async fn framing_run(kind: Framing, args: &[&str]) -> (Output, Hostile) {
    let server = attacks::framing(kind).await;
    let mut all = vec!["consensus", "q", "--json"];
    all.extend_from_slice(args);
    let o = ek_at(&server, &all).await;
    (o, server)
}

// Expected: `Content-Length: +N`, `Transfer-Encoding: gzip, chunked` (body not gzip) and a 101
// without an upgrade request each end the call in a provider or transport error. FAILED on
// http1.rs for the first two: it took the reply (exit 0). Passes on hyper.
#[tokio::test]
async fn framing_bad_replies_fail() {
    let mut wrong = Vec::new();
    for kind in [
        Framing::PlusLength,
        Framing::GzipChunked,
        Framing::SwitchingProtocols,
    ] {
        let (o, _s) = framing_run(kind, &["--samples", "1", "--max-retries", "0"]).await;
        let v = json(&o);
        if code(&o) != 1 || !matches!(error_kind(&v), "provider" | "transport") {
            wrong.push(format!("{kind:?}: exit {}: {v}", code(&o)));
        }
    }
    assert!(wrong.is_empty(), "taken as replies:\n{}", wrong.join("\n"));
}

// Expected: the connection of a reply with Transfer-Encoding and Content-Length is never used
// again, and requests received = llm_calls. FAILED on http1.rs: the connection was reused.
// Passes on hyper.
#[tokio::test]
async fn framing_te_with_cl_is_not_reused() {
    let (o, server) = framing_run(
        Framing::TeAndCl,
        &["--samples", "2", "--max-concurrency", "1"],
    )
    .await;
    let v = json(&o);
    assert!(
        !server.notes().iter().any(|n| n == "reused"),
        "the connection was reused: {v}"
    );
    assert_eq!(server.requests() as u64, llm_calls(&v), "{v}");
}

// Expected: interim 100 and 103 replies are skipped; the 200 is the answer. Passes.
#[tokio::test]
async fn framing_interim_replies_are_skipped() {
    let (o, _s) = framing_run(Framing::Interim, &["--samples", "1"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["value"], "echo:q");
}

// ---- 5. secrets ----

/// Where the key shows (ignoring case) in `o`'s stdout or stderr.
fn shown(o: &Output, secret: &str) -> Option<String> {
    let secret = secret.to_lowercase();
    [stdout(o), stderr(o)]
        .into_iter()
        .find(|t| t.to_lowercase().contains(&secret))
}

// Expected: however the server echoes the key (in an error body as sent, upper-cased or
// percent-encoded, in a malformed reply, or as the reply itself — which becomes a consensus
// value, a refine draft and judge reply, a structured reply that fails its schema), `ek`
// prints none of it, in `--json` or text mode. FAILED on the old code for the percent-encoded
// echo, the consensus value and refine's judge parse error (which quotes the reply); passes on
// main since the secrets work (issue #9, 7).
#[tokio::test]
async fn secrets_key_echoed_by_the_server_is_never_printed() {
    let schema = temp_file(
        "schema.json",
        r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#,
    );
    let consensus: &[&str] = &["consensus", "q", "--samples", "1", "--max-retries", "0"];
    let refine: &[&str] = &["refine", "q", "--max-iterations", "1", "--max-retries", "0"];
    let structured: &[&str] = &["structured", "q", "--schema", &schema, "--max-retries", "0"];
    let cases: Vec<(Echo, &[&str])> = vec![
        (Echo::Status400, consensus),
        (Echo::Status500, consensus),
        (Echo::Upper400, consensus),
        (Echo::Percent400, consensus),
        (Echo::Malformed200, consensus),
        (Echo::Content, consensus),
        (Echo::Content, refine),
        (Echo::Content, structured),
    ];
    let mut leaks = Vec::new();
    for (how, args) in cases {
        let server = attacks::key_echo(how).await;
        for json_mode in [true, false] {
            let mut all = args.to_vec();
            if json_mode {
                all.push("--json");
            }
            let o = ek_at(&server, &all).await;
            if let Some(t) = shown(&o, KEY_TAIL) {
                leaks.push(format!(
                    "{how:?} `ek {}` (exit {}): {t}",
                    all.join(" "),
                    code(&o)
                ));
            }
        }
        assert!(
            server.requests() > 0,
            "{how:?}: no request reached the server"
        );
    }
    assert!(
        leaks.is_empty(),
        "the key is printed:\n{}",
        leaks.join("\n")
    );
}

// Expected: a password in the base URL is never printed, whether the call fails at the
// transport (reset) or at the server (400). Passes today.
#[tokio::test]
async fn secrets_url_password_is_never_printed() {
    let reset = Hostile::start(|conn: Conn| async move { conn.reset() }).await;
    let refuse = attacks::key_echo(Echo::Status400).await;
    let mut leaks = Vec::new();
    for server in [&reset, &refuse] {
        let url = format!("http://user:hunter2pw@{}/v1", server.addr);
        for json_mode in [true, false] {
            let mut args = vec!["consensus", "q", "--samples", "1", "--max-retries", "0"];
            if json_mode {
                args.push("--json");
            }
            let o = run(&args, &env_for(&url)).await;
            if let Some(t) = shown(&o, "hunter2pw") {
                leaks.push(format!("{url} (exit {}): {t}", code(&o)));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "the password is printed:\n{}",
        leaks.join("\n")
    );
}
