//! Helpers shared by the integration tests: real servers from the environment (llmock,
//! llama-server), and test servers started in the test on 127.0.0.1: [`tls`] (a throwaway CA
//! and a byte-for-byte TLS relay), [`h2`] (an HTTPS + HTTP/2 server), [`h2relay`] (an HTTP/2
//! terminating reverse proxy before a plain-http/1.1 server), [`wire`] (the three wires a suite
//! runs over: http/1.1, https/1.1, https/2, and `over_wires!`), [`hostile`] (a raw-TCP
//! server that misbehaves at the byte level) and [`counting`] (a relay that counts each test's
//! requests to a shared server), [`chaos`] (a fault-injecting TCP proxy: latency, bandwidth,
//! resets, stalls, black holes), [`nginx`] (a private fixed-reply nginx); [`attacks`] holds the
//! hostile-server suites' attacks.
//! `tests/harness_selftest.rs` tests the servers.

#![allow(dead_code)] // each test file uses part of this

pub mod attacks;
pub mod chaos;
pub mod chat;
pub mod counting;
pub mod h2;
pub mod h2relay;
pub mod hostile;
pub mod nginx;
pub mod tls;
pub mod wire;

/// The URL in the environment variable `var`, without a trailing `/`, or `None` when it is
/// unset: the test then says why and passes, unless `EK_REQUIRE_SERVERS=1` (scripts/test.sh),
/// which makes a missing server a failure. `how` is the command that starts the server.
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

/// llama-server's base URL and key (`EK_LLAMA_URL`, `EK_LLAMA_KEY`), or `None` to skip.
pub fn llama() -> Option<(String, String)> {
    let url = server_url("EK_LLAMA_URL", "scripts/start-llama.sh")?;
    let key = std::env::var("EK_LLAMA_KEY").unwrap_or_else(|_| "ek-test-key".to_owned());
    Some((url, key))
}
