//! `ek` through a real proxy (issue #9, 3): tinyproxy started by `scripts/start-tinyproxy.sh`
//! (`EK_PROXY_URL`, and `EK_PROXY_AUTH_URL` with `BasicAuth user secret`), for an `http://`
//! endpoint (`HTTP_PROXY`) and an `https://` one (`HTTPS_PROXY`: a CONNECT tunnel to the TLS
//! relay in front of wiremock, trusted through `SSL_CERT_FILE`). A counting relay in front of
//! the proxy shows that the request went through it. Proxy credentials are never printed, and
//! never sent inside the tunnel.
//!
//! Without `EK_PROXY_URL` every test here says it is skipping and passes, unless
//! `EK_REQUIRE_SERVERS=1` (scripts/test.sh), which makes it fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../executionkit/tests/common/counting.rs"]
mod counting;
#[path = "../../executionkit/tests/common/tls.rs"]
mod tls;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{code, command, server_url, stderr, stdout};
use counting::CountingRelay;
use serde_json::{Value, json};
use tls::{TlsRelay, addr_of};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Every proxy variable, in both cases: each test sets only the ones it means.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

async fn origin() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "proxied"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}
        })))
        .mount(&s)
        .await;
    s
}

/// `ek consensus q --samples 1 --json` at `base_url` with `env` (proxy variables and the like)
/// and no other proxy variable.
async fn ek_via(base_url: &str, env: &[(&str, String)]) -> Output {
    let mut all: Vec<(&str, String)> = vec![
        ("EXECUTIONKIT_BASE_URL", base_url.to_owned()),
        ("EXECUTIONKIT_MODEL", "test-model".to_owned()),
    ];
    all.extend(env.iter().cloned());
    let mut c = command(
        &[
            "consensus",
            "q",
            "--samples",
            "1",
            "--max-retries",
            "0",
            "--json",
        ],
        &all,
    );
    for v in PROXY_VARS {
        if !env.iter().any(|(k, _)| k == v) {
            c.env_remove(v);
        }
    }
    tokio::time::timeout(Duration::from_secs(120), c.output())
        .await
        .expect("ek hung")
        .unwrap()
}

/// A proxy URL like `proxy` (`http://[user:pass@]127.0.0.1:PORT`) with the host and port of
/// `relay` instead.
fn through(proxy: &str, relay: &CountingRelay) -> String {
    let rest = proxy.strip_prefix("http://").unwrap();
    let creds = rest.rsplit_once('@').map(|(c, _)| format!("{c}@"));
    format!("http://{}{}", creds.unwrap_or_default(), relay.addr)
}

fn ca_file(pem: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ek-proxy-tests");
    tls::write_ca_file(pem, &dir).to_string_lossy().into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert_eq!(code(o), 0, "{what}: {} {}", stdout(o), stderr(o));
    let v: Value = serde_json::from_str(stdout(o).trim_end()).unwrap();
    assert_eq!(v["value"], "proxied", "{what}: {v}");
    assert_eq!(v["cost"]["llm_calls"], 1, "{what}: {v}");
}

fn assert_not_printed(o: &Output, secret: &str, what: &str) {
    for text in [stdout(o), stderr(o)] {
        assert!(!text.contains(secret), "{what}: `{secret}` printed: {text}");
    }
}

/// The origin's requests carry no proxy credentials.
async fn assert_no_proxy_credentials_at(origin: &MockServer) {
    for r in origin.received_requests().await.unwrap() {
        assert!(
            !r.headers.contains_key("proxy-authorization"),
            "Proxy-Authorization reached the origin"
        );
    }
}

#[tokio::test]
async fn http_endpoint_through_the_proxy() {
    let Some(proxy) = server_url("EK_PROXY_URL", "scripts/start-tinyproxy.sh") else {
        return;
    };
    let origin = origin().await;
    let relay = CountingRelay::start(addr_of(&proxy)).await;
    let o = ek_via(
        &format!("{}/v1", origin.uri()),
        &[("HTTP_PROXY", through(&proxy, &relay))],
    )
    .await;
    assert_ok(&o, "http via HTTP_PROXY");
    // The request went to the proxy (absolute-form), and on to the origin once.
    assert_eq!(relay.requests(), 1);
    assert_eq!(origin.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn lower_case_http_proxy_is_honoured_too() {
    let Some(proxy) = server_url("EK_PROXY_URL", "scripts/start-tinyproxy.sh") else {
        return;
    };
    let origin = origin().await;
    let relay = CountingRelay::start(addr_of(&proxy)).await;
    let o = ek_via(
        &format!("{}/v1", origin.uri()),
        &[("http_proxy", through(&proxy, &relay))],
    )
    .await;
    assert_ok(&o, "http via http_proxy");
    assert_eq!(relay.requests(), 1);
}

#[tokio::test]
async fn https_endpoint_through_a_connect_tunnel() {
    let Some(proxy) = server_url("EK_PROXY_URL", "scripts/start-tinyproxy.sh") else {
        return;
    };
    let origin = origin().await;
    let tls_relay = TlsRelay::http11(*origin.address()).await;
    let relay = CountingRelay::start(addr_of(&proxy)).await;
    let o = ek_via(
        &format!("{}/v1", tls_relay.url()),
        &[
            ("HTTPS_PROXY", through(&proxy, &relay)),
            ("SSL_CERT_FILE", ca_file(&tls_relay.ca_pem)),
        ],
    )
    .await;
    assert_ok(&o, "https via HTTPS_PROXY");
    // One CONNECT to the proxy (what follows it is TLS), one request at the origin.
    assert_eq!(relay.heads(), 1);
    assert_eq!(tls_relay.connections(), 1);
    assert_eq!(origin.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy() {
    let Some(proxy) = server_url("EK_PROXY_URL", "scripts/start-tinyproxy.sh") else {
        return;
    };
    let origin = origin().await;
    let relay = CountingRelay::start(addr_of(&proxy)).await;
    let o = ek_via(
        &format!("{}/v1", origin.uri()),
        &[
            ("HTTP_PROXY", through(&proxy, &relay)),
            ("NO_PROXY", "127.0.0.1".to_owned()),
        ],
    )
    .await;
    assert_ok(&o, "NO_PROXY=127.0.0.1");
    assert_eq!(relay.connections(), 0);
}

#[tokio::test]
async fn proxy_credentials_work_and_are_never_printed() {
    let Some(proxy) = server_url("EK_PROXY_AUTH_URL", "scripts/start-tinyproxy.sh") else {
        return;
    };
    let origin = origin().await;
    let tls_relay = TlsRelay::http11(*origin.address()).await;
    let relay = CountingRelay::start(addr_of(&proxy)).await;
    let via = through(&proxy, &relay);
    let password = via
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(c, _)| c.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("EK_PROXY_AUTH_URL carries user:password@");

    let o = ek_via(
        &format!("{}/v1", origin.uri()),
        &[("HTTP_PROXY", via.clone())],
    )
    .await;
    assert_ok(&o, "http via an authenticating proxy");
    assert_not_printed(&o, &password, "http");

    let o = ek_via(
        &format!("{}/v1", tls_relay.url()),
        &[
            ("HTTPS_PROXY", via.clone()),
            ("SSL_CERT_FILE", ca_file(&tls_relay.ca_pem)),
        ],
    )
    .await;
    assert_ok(&o, "https via an authenticating proxy");
    assert_not_printed(&o, &password, "https");
    assert_no_proxy_credentials_at(&origin).await;
    assert_eq!(relay.heads(), 2);
}

#[tokio::test]
async fn wrong_proxy_credentials_fail_without_printing_them() {
    let Some(proxy) = server_url("EK_PROXY_AUTH_URL", "scripts/start-tinyproxy.sh") else {
        return;
    };
    let origin = origin().await;
    let tls_relay = TlsRelay::http11(*origin.address()).await;
    let relay = CountingRelay::start(addr_of(&proxy)).await;
    let wrong = format!("http://user:wr0ngpassw0rd@{}", relay.addr);
    for (base, var) in [
        (format!("{}/v1", origin.uri()), "HTTP_PROXY"),
        (format!("{}/v1", tls_relay.url()), "HTTPS_PROXY"),
    ] {
        let o = ek_via(
            &base,
            &[
                (var, wrong.clone()),
                ("SSL_CERT_FILE", ca_file(&tls_relay.ca_pem)),
            ],
        )
        .await;
        assert_eq!(code(&o), 1, "{var}: {}", stdout(&o));
        let v: Value = serde_json::from_str(stdout(&o).trim_end()).unwrap();
        assert!(v["error"]["kind"].is_string(), "{var}: {v}");
        assert_not_printed(&o, "wr0ngpassw0rd", var);
    }
    assert!(origin.received_requests().await.unwrap().is_empty());
}
