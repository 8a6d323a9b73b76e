//! The three wires a suite runs over: plain http/1.1, https/1.1 and https/2. A test written
//! against a plain-http server (wiremock, llmock, a raw TCP server) runs over each by putting a
//! [`Front`] before it: nothing for http/1.1, a byte-for-byte [`TlsRelay`] offering
//! `http/1.1` for https/1.1 (every byte the server writes, faults included, reaches the client
//! unchanged), and an [`H2Relay`] for https/2 (HTTP/2 terminated, each request forwarded to the
//! server over HTTP/1.1, the reply streamed back frame by frame).
//!
//! A test becomes a function of the [`Wire`], and [`over_wires!`](crate::over_wires) makes
//! one `#[tokio::test]` per wire in a module named after it (`name::http1`, `name::https1`,
//! `name::https2`), so `cargo test name` still runs them all:
//!
//! ```ignore
//! async fn s013_default_body_is_exact(wire: Wire) {
//!     let server = WireMock::start(wire).await;
//!     let p = server.builder(format!("{}/v1", server.uri()), "m").build().unwrap();
//!     …
//! }
//! over_wires!(s013_default_body_is_exact);
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::fmt;
use std::ops::Deref;

use executionkit::{
    AnthropicProvider, AnthropicProviderBuilder, OpenAiProvider, OpenAiProviderBuilder,
};
use wiremock::MockServer;

use super::h2relay::H2Relay;
use super::tls::{TlsRelay, addr_of};

/// One of the wires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Plain HTTP/1.1, straight to the server.
    Http1,
    /// HTTPS, HTTP/1.1 (ALPN `http/1.1`), through a [`TlsRelay`].
    Https1,
    /// HTTPS, HTTP/2 (ALPN `h2`), through an [`H2Relay`].
    Https2,
}

impl Wire {
    /// Every wire, in order.
    pub const ALL: [Wire; 3] = [Wire::Http1, Wire::Https1, Wire::Https2];

    /// `http` or `https`.
    pub fn scheme(self) -> &'static str {
        match self {
            Wire::Http1 => "http",
            Wire::Https1 | Wire::Https2 => "https",
        }
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wire::Http1 => "http/1.1",
            Wire::Https1 => "https/1.1",
            Wire::Https2 => "https/2",
        })
    }
}

enum Relay {
    None,
    Tls(TlsRelay),
    H2(H2Relay),
}

/// What a client talks to for one wire in front of one plain-http server; the relay (if any)
/// stops when this is dropped.
pub struct Front {
    /// The wire.
    pub wire: Wire,
    url: String,
    ca_pem: Option<String>,
    relay: Relay,
}

impl Front {
    /// A front for `wire` before the plain-http server at `upstream`
    /// (`http://127.0.0.1:PORT[/path]`; the path is kept).
    pub async fn start(wire: Wire, upstream: &str) -> Self {
        let upstream = upstream.trim_end_matches('/');
        let path = upstream
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("");
        let relay = match wire {
            Wire::Http1 => Relay::None,
            Wire::Https1 => Relay::Tls(TlsRelay::http11(addr_of(upstream)).await),
            Wire::Https2 => Relay::H2(H2Relay::start(addr_of(upstream)).await),
        };
        let (url, ca_pem) = match &relay {
            Relay::None => (upstream.to_owned(), None),
            Relay::Tls(r) => (format!("{}{path}", r.url()), Some(r.ca_pem.clone())),
            Relay::H2(r) => (format!("{}{path}", r.url()), Some(r.ca_pem.clone())),
        };
        Self {
            wire,
            url,
            ca_pem,
            relay,
        }
    }

    /// The base URL clients use (no trailing `/`).
    pub fn uri(&self) -> String {
        self.url.clone()
    }

    /// The CA (PEM) a client must trust, for the https wires.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// `OpenAiProvider::builder(base_url, model)` trusting this front's CA.
    pub fn builder(&self, base_url: impl Into<String>, model: &str) -> OpenAiProviderBuilder {
        let b = OpenAiProvider::builder(base_url, model);
        match &self.ca_pem {
            Some(pem) => b.root_certificate_pem(pem),
            None => b,
        }
    }

    /// `AnthropicProvider::builder(base_url, model)` trusting this front's CA.
    pub fn anthropic(&self, base_url: impl Into<String>, model: &str) -> AnthropicProviderBuilder {
        let b = AnthropicProvider::builder(base_url, model);
        match &self.ca_pem {
            Some(pem) => b.root_certificate_pem(pem),
            None => b,
        }
    }

    /// Connections the relay accepted (`None` on plain http, which has no relay).
    pub fn connections(&self) -> Option<usize> {
        match &self.relay {
            Relay::None => None,
            Relay::Tls(r) => Some(r.connections()),
            Relay::H2(r) => Some(r.connections()),
        }
    }
}

/// A wiremock server behind a [`Front`]: derefs to the [`MockServer`] (mount mocks on it, read
/// its requests) while [`WireMock::uri`] is the front's URL.
pub struct WireMock {
    server: MockServer,
    front: Front,
}

impl WireMock {
    /// A fresh wiremock server with `wire` in front of it.
    pub async fn start(wire: Wire) -> Self {
        let server = MockServer::start().await;
        let front = Front::start(wire, &server.uri()).await;
        Self { server, front }
    }

    /// The URL clients use (the front's; no trailing `/`).
    pub fn uri(&self) -> String {
        self.front.uri()
    }

    /// The front.
    pub fn front(&self) -> &Front {
        &self.front
    }

    /// `OpenAiProvider::builder(base_url, model)` trusting the front's CA.
    pub fn builder(&self, base_url: impl Into<String>, model: &str) -> OpenAiProviderBuilder {
        self.front.builder(base_url, model)
    }
}

impl Deref for WireMock {
    type Target = MockServer;

    fn deref(&self) -> &MockServer {
        &self.server
    }
}

/// A URL on `wire`'s scheme to a port on 127.0.0.1 where nothing listens (bound, then closed).
pub fn closed_port_url(wire: Wire) -> String {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    format!("{}://127.0.0.1:{port}/v1", wire.scheme())
}

/// `over_wires!(name, …)`: for each `async fn name(wire: Wire)` in scope, a module `name` with
/// one `#[tokio::test]` per wire (`http1`, `https1`, `https2`).
/// `over_wires!(name => [http1: Http1, https1: Https1])` runs it on the wires listed only.
#[macro_export]
macro_rules! over_wires {
    ($name:ident => [$($test:ident: $wire:ident),+ $(,)?]) => {
        mod $name {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$name($crate::common::wire::Wire::$wire).await;
                }
            )+
        }
    };
    ($($name:ident),+ $(,)?) => {
        $(
            $crate::over_wires!($name => [http1: Http1, https1: Https1, https2: Https2]);
        )+
    };
}
