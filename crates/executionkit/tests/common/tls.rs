//! TLS for tests, on loopback only: a throwaway CA and a server certificate for `127.0.0.1`
//! (and `localhost`) made in the test with rcgen, rustls configurations on the `ring` provider,
//! and [`TlsRelay`], a byte-for-byte TLS terminator in front of a plain-http server (wiremock,
//! llmock, a [`Hostile`](super::hostile::Hostile) server) so that every fault the server makes
//! reaches an https client unchanged.
//!
//! ```ignore
//! let relay = TlsRelay::http11(wiremock.address().to_owned()).await;
//! let p = OpenAiProvider::builder(format!("{}/v1", relay.url()), "m").root_certificate_pem(&relay.ca_pem);
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The ALPN id of HTTP/1.1.
pub const HTTP11: &[u8] = b"http/1.1";
/// The ALPN id of HTTP/2.
pub const H2: &[u8] = b"h2";

/// rustls's `ring` provider (the only one the tests build: no aws-lc-sys).
pub fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway CA and a server certificate it signed for `127.0.0.1`, `::1` and `localhost`.
pub struct TestPki {
    /// The CA's certificate, PEM: what a client must trust.
    pub ca_pem: String,
    /// The CA's certificate, DER.
    pub ca_der: CertificateDer<'static>,
    /// The server's chain: its certificate, then the CA's.
    pub chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl TestPki {
    /// A fresh CA and server certificate (ECDSA P-256, made by rcgen on `ring`).
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "executionkit test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-signed CA");

        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            chain: vec![cert.der().clone(), ca.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    /// A server configuration presenting the certificate, offering `alpn` (in order of
    /// preference; empty: no ALPN).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut c = ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .expect("server certificate and key");
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    /// Writes the CA's PEM to `dir/ek-test-ca.pem` (for `SSL_CERT_FILE`) and returns its path.
    pub fn write_ca_file(&self, dir: &Path) -> PathBuf {
        write_ca_file(&self.ca_pem, dir)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `ca_pem` to a fresh file under `dir` and returns its path.
pub fn write_ca_file(ca_pem: &str, dir: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::fs::create_dir_all(dir).expect("CA file directory");
    let path = dir.join(format!(
        "ek-test-ca-{}-{}.pem",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, ca_pem).expect("write CA file");
    path
}

/// A client configuration that trusts only the certificates in `ca_pem` and offers `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("PEM certificate")).expect("root");
    }
    let mut c = ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A TLS connection to `addr` (name `127.0.0.1`) trusting `ca_pem`, offering `alpn`.
pub async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(client_config(ca_pem, alpn))
        .connect(name, tcp)
        .await
}

/// Aborts a background task when dropped (so a test's servers stop with the test).
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TLS terminator on `127.0.0.1:0` that copies bytes both ways, unchanged, between each
/// client and a new connection to `upstream`: the server's framing, delays, closes and resets
/// reach the client as the server made them (a reset upstream resets the client). A byte relay
/// cannot translate HTTP/2, so offer `http/1.1` only ([`TlsRelay::http11`]).
pub struct TlsRelay {
    /// Where clients connect (`https://{addr}`).
    pub addr: SocketAddr,
    /// The CA certificate (PEM) that signed the relay's certificate.
    pub ca_pem: String,
    accepted: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl TlsRelay {
    /// A relay to `upstream` offering `alpn` with a fresh [`TestPki`].
    pub async fn start(upstream: SocketAddr, alpn: &[&[u8]]) -> Self {
        let pki = TestPki::new();
        let acceptor = TlsAcceptor::from(pki.server_config(alpn));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        tls.get_ref().0.set_zero_linger().ok();
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut tls, &mut up).await {
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) {
                            // Pass a reset on as a reset (no close_notify, no FIN).
                            tls.get_ref().0.set_zero_linger().ok();
                            up.set_zero_linger().ok();
                        }
                    }
                });
                // Reap finished connections so the set does not grow.
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            ca_pem: pki.ca_pem,
            accepted,
            _task: AbortOnDrop(task),
        }
    }

    /// A relay to `upstream` offering `http/1.1` only.
    pub async fn http11(upstream: SocketAddr) -> Self {
        Self::start(upstream, &[HTTP11]).await
    }

    /// `https://127.0.0.1:PORT` (no trailing `/`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The socket address of an `http://[user:pass@]host:port…` URL (e.g. `EK_LLMOCK_URL`,
/// `EK_PROXY_AUTH_URL`).
pub fn addr_of(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    authority
        .to_socket_addrs()
        .expect("resolve")
        .next()
        .expect("an address")
}
