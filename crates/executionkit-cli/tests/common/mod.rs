//! Helpers shared by the `ek` integration tests: running the built binary from a clean
//! environment, reading its output, the scripted wiremock endpoint, and real servers.

#![allow(dead_code)] // each test file uses part of this

use std::ffi::OsStr;
use std::process::{Output, Stdio};

use serde_json::Value;
use wiremock::MockServer;

pub const EK: &str = env!("CARGO_BIN_EXE_ek");

/// The environment variables `ek` reads; every test starts from none of them.
const ENV_VARS: &[&str] = &[
    "EXECUTIONKIT_BASE_URL",
    "EXECUTIONKIT_MODEL",
    "EXECUTIONKIT_API_KEY",
    "OPENAI_API_KEY",
];

/// `ek args` with only `env` of `ek`'s own variables, no stdin, output captured.
pub fn command<V: AsRef<OsStr>>(args: &[&str], env: &[(&str, V)]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(EK);
    c.args(args);
    for v in ENV_VARS {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

pub async fn ek_env<V: AsRef<OsStr>>(args: &[&str], env: &[(&str, V)]) -> Output {
    command(args, env).output().await.unwrap()
}

pub async fn ek(args: &[&str]) -> Output {
    ek_env::<&str>(args, &[]).await
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout must be exactly one JSON object (and a newline).
pub fn json_out(o: &Output) -> Value {
    let s = stdout(o);
    assert_eq!(
        s.trim_end().lines().count(),
        1,
        "one line of JSON expected, got: {s} (stderr: {})",
        stderr(o)
    );
    let v: Value = serde_json::from_str(s.trim_end()).unwrap();
    assert!(v.is_object(), "{v}");
    v
}

/// `ek`'s endpoint variables for a scripted server.
pub fn endpoint(s: &MockServer) -> Vec<(&'static str, String)> {
    vec![
        ("EXECUTIONKIT_BASE_URL", format!("{}/v1", s.uri())),
        ("EXECUTIONKIT_MODEL", "test-model".to_owned()),
    ]
}

/// `ek args` against a scripted server.
pub async fn ek_at(s: &MockServer, args: &[&str]) -> Output {
    ek_env(args, &endpoint(s)).await
}

/// The JSON bodies the server received, in order.
pub async fn bodies(s: &MockServer) -> Vec<Value> {
    s.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// The URL in the environment variable `var`, or `None` when it is unset: the test then says
/// why and passes, unless `EK_REQUIRE_SERVERS=1` (scripts/test.sh), which makes a missing
/// server a failure. `how` is the command that starts the server.
pub fn server_url(var: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().trim_end_matches('/').to_owned()),
        _ => {
            assert!(
                std::env::var("EK_REQUIRE_SERVERS").as_deref() != Ok("1"),
                "EK_REQUIRE_SERVERS=1 but {var} is unset: run {how}"
            );
            eprintln!("skipping: {var} is unset (eval \"$({how})\" to run this test)");
            None
        }
    }
}

/// The key of the test llama servers (`EK_LLAMA_KEY`, default `ek-test-key`).
pub fn llama_key() -> String {
    std::env::var("EK_LLAMA_KEY").unwrap_or_else(|_| "ek-test-key".to_owned())
}
