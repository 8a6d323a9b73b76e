//! A fault-injecting TCP proxy on `127.0.0.1:0` in front of an upstream on `127.0.0.1` (a
//! [`hostile`](super::hostile) server, wiremock, …), for `tests/chaos.rs`: bytes pass unchanged
//! unless the connection's [`Fault`] says otherwise.
//!
//! ```ignore
//! let upstream = serve_each(|req| ok_json(&completion("hi"))).await;
//! let proxy = Chaos::start(upstream.addr).await;
//! proxy.set(Fault::ResetAfter(64)); // every new connection: RST after 64 bytes of reply body
//! let p = OpenAiProvider::builder(proxy.url(), "m").build()?;
//! // … calls …
//! proxy.black_hole().await; // stop accepting and fill the accept queue: connects hang
//! proxy.clear().await;      // back to clean, accepting again
//! assert_eq!(proxy.wait_closed(Duration::from_secs(10)).await, 0);
//! ```
//!
//! A connection accepted while a fault is queued with [`Chaos::push_next`] keeps that fault;
//! any other connection follows the default ([`Chaos::set`]) as it is at each chunk, so a
//! connection pooled by the client meets a fault set after it was opened. Reply-body budgets
//! ([`Fault::ResetAfter`], [`Fault::StallAfter`]) count from the head of the reply to the
//! latest request on the connection.
//!
//! The black hole is the proxy's own listener (backlog [`BACKLOG`]) that stops accepting and
//! is filled with connections until one more connect does not complete: on Linux a SYN to a
//! listener whose accept queue is full is dropped (`tcp_abort_on_overflow` = 0, the default),
//! so a client's connect hangs and retries its SYN until it gives up. Only 127.0.0.1 is used.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::tls::AbortOnDrop;

/// The proxy listener's backlog: small, so that a black hole fills quickly.
pub const BACKLOG: u32 = 8;
/// How long a probe connect may take before the accept queue counts as full.
const PROBE: Duration = Duration::from_millis(500);
/// The most connections a black hole opens to fill the queue.
const MAX_FILLERS: usize = 64;

/// What the proxy does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relays both ways unchanged.
    Clean,
    /// Waits this long before relaying each chunk read (either direction).
    Latency(Duration),
    /// Relays replies at no more than this many bytes per second, in slices of 1/20 s (requests
    /// pass at full speed).
    Bandwidth(u64),
    /// Relays the reply head and this many bytes of the reply body, then resets both sides
    /// (RST: `SO_LINGER` 0, then close).
    ResetAfter(usize),
    /// Relays the reply head and this many bytes of the reply body, then relays nothing more
    /// towards the client (what the server sends is read and dropped), keeping both sockets
    /// open: a stall mid-body.
    StallAfter(usize),
    /// Half-open: requests reach the server, nothing comes back (the server's bytes are read and
    /// dropped), both sockets stay open.
    HalfOpen,
    /// Accepts and never replies: nothing reaches the server, the client's bytes are read and
    /// dropped, the socket stays open.
    Silent,
}

/// A connection's fault: its own, or whatever the default is at each chunk.
#[derive(Debug, Clone, Copy)]
enum Assigned {
    Pinned(Fault),
    Default,
}

#[derive(Default)]
struct Shared {
    connections: AtomicUsize,
    open: AtomicUsize,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    resets: AtomicUsize,
    default: Mutex<Option<Fault>>,
    next: Mutex<VecDeque<Fault>>,
    /// Local addresses of the black hole's own connections (not counted when accepted later).
    filler_addrs: Mutex<HashSet<SocketAddr>>,
    fillers: Mutex<Vec<TcpStream>>,
}

impl Shared {
    /// The fault of a connection just accepted: the next queued one (pinned), else the
    /// default, read again at each chunk.
    fn fault_for_new(&self) -> Assigned {
        match self.next.lock().unwrap().pop_front() {
            Some(f) => Assigned::Pinned(f),
            None => Assigned::Default,
        }
    }

    fn current(&self, assigned: Assigned) -> Fault {
        match assigned {
            Assigned::Pinned(f) => f,
            Assigned::Default => self.default.lock().unwrap().unwrap_or(Fault::Clean),
        }
    }
}

/// The proxy; stops (and drops every connection) when dropped.
pub struct Chaos {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    paused: watch::Sender<bool>,
    _task: AbortOnDrop,
}

/// Counts the connection open until its task ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Chaos {
    /// A clean proxy to `upstream` (which must be on 127.0.0.1).
    pub async fn start(upstream: SocketAddr) -> Self {
        assert!(
            upstream.ip().is_loopback(),
            "chaos upstreams are local only"
        );
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind chaos proxy");
        let listener = socket.listen(BACKLOG).expect("listen");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let (paused, mut paused_rx) = watch::channel(false);
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                // While paused (a black hole), nothing is accepted: the queue fills.
                if paused_rx.wait_for(|p| !*p).await.is_err() {
                    return;
                }
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = paused_rx.changed() => continue,
                };
                let Ok((client, peer)) = accepted else {
                    continue;
                };
                if state.filler_addrs.lock().unwrap().remove(&peer) {
                    continue; // one of the black hole's own connections: dropped
                }
                state.connections.fetch_add(1, Ordering::SeqCst);
                state.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(Arc::clone(&state));
                let fault = state.fault_for_new();
                let state = Arc::clone(&state);
                conns.spawn(async move {
                    let _guard = guard;
                    handle(client, upstream, fault, &state).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            shared,
            paused,
            _task: AbortOnDrop(task),
        }
    }

    /// `http://127.0.0.1:PORT/v1`: a base URL for `OpenAiProvider`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The fault of every connection accepted from now on (unless one is queued).
    pub fn set(&self, fault: Fault) {
        *self.shared.default.lock().unwrap() = Some(fault);
    }

    /// Queues `fault` for the next connection accepted (before the default).
    pub fn push_next(&self, fault: Fault) {
        self.shared.next.lock().unwrap().push_back(fault);
    }

    /// Stops accepting and fills the accept queue with connections of our own until one more
    /// connect does not complete within a probe time; returns how many completed. A new
    /// connect to [`addr`](Self::addr) then hangs (its SYN is dropped).
    pub async fn black_hole(&self) -> usize {
        self.paused.send_replace(true);
        // Let the accept loop see the pause before the queue fills.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut filled = 0;
        for _ in 0..MAX_FILLERS {
            let socket = TcpSocket::new_v4().expect("socket");
            match tokio::time::timeout(PROBE, socket.connect(self.addr)).await {
                Ok(Ok(stream)) => {
                    let local = stream.local_addr().expect("filler address");
                    self.shared.filler_addrs.lock().unwrap().insert(local);
                    self.shared.fillers.lock().unwrap().push(stream);
                    filled += 1;
                }
                Ok(Err(e)) => panic!("black hole: a filler connect failed: {e}"),
                Err(_) => return filled, // the queue is full: this SYN was dropped
            }
        }
        panic!("black hole: {MAX_FILLERS} connects completed without the accept queue filling");
    }

    /// Back to clean for new connections, accepting again: returns once the black hole's own
    /// connections have been accepted and dropped (a client's SYN sent before that would still
    /// be dropped, and retried only after the kernel's 1 s SYN timeout).
    pub async fn clear(&self) {
        self.set(Fault::Clean);
        self.shared.next.lock().unwrap().clear();
        self.shared.fillers.lock().unwrap().clear();
        self.paused.send_replace(false);
        let start = tokio::time::Instant::now();
        while !self.shared.filler_addrs.lock().unwrap().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the black hole's connections were not accepted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Client connections accepted (the black hole's own excluded).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open now (until the client side closes; see [`handle`]).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes relayed client → server.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Bytes relayed server → client.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }

    /// Connections reset by [`Fault::ResetAfter`].
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Polls [`open`](Self::open) until it is 0 or `bound` passes; returns the last count.
    pub async fn wait_closed(&self, bound: Duration) -> usize {
        self.wait_open_at_most(0, bound).await
    }

    /// Polls [`open`](Self::open) until it is at most `n` or `bound` passes; returns the last
    /// count.
    pub async fn wait_open_at_most(&self, n: usize, bound: Duration) -> usize {
        let start = tokio::time::Instant::now();
        loop {
            let open = self.open();
            if open <= n || start.elapsed() >= bound {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One connection: ends when the client side closes (EOF or error) or on a reset (injected,
/// or the server's passed on); a server that closes is passed on as a FIN and the connection
/// then waits for the client to close. Dropping it closes both sockets.
async fn handle(client: TcpStream, upstream: SocketAddr, assigned: Assigned, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    if shared.current(assigned) == Fault::Silent {
        // Read and drop until the client goes away.
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        let _ = cw.as_ref().set_zero_linger();
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut sr, mut sw) = server.into_split();
    // Set by the client → server pump when a request passes: the next reply starts afresh.
    let new_request = AtomicBool::new(false);
    let mut up = Box::pin(pump_up(&mut cr, &mut sw, assigned, shared, &new_request));
    let mut down = Box::pin(pump_down(&mut sr, &mut cw, assigned, shared, &new_request));
    let mut down_done = false;
    let reset = loop {
        tokio::select! {
            _ = &mut up => break false,
            r = &mut down, if !down_done => {
                down_done = true;
                if r.is_err() {
                    break true;
                }
            }
        }
    };
    drop(up);
    drop(down);
    if reset {
        // RST both ways: SO_LINGER 0, and no FIN first (`forget` skips the halves' shutdown).
        let _ = cw.as_ref().set_zero_linger();
        let _ = sw.as_ref().set_zero_linger();
        cw.forget();
        sw.forget();
    }
    // Dropping the read halves closes the sockets.
}

/// Client → server: copies (with latency or a bandwidth cap) until the client's EOF or error.
async fn pump_up(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    assigned: Assigned,
    shared: &Shared,
    new_request: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut to_open = true;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let fault = shared.current(assigned);
        if fault == Fault::Silent || !to_open {
            continue;
        }
        new_request.store(true, Ordering::SeqCst);
        // The bandwidth cap is on replies only (requests go up at full speed).
        let fault = if let Fault::Bandwidth(_) = fault {
            Fault::Clean
        } else {
            fault
        };
        if write_shaped(to, &buf[..n], fault, &shared.bytes_up)
            .await
            .is_err()
        {
            // The server went away: keep reading the client until it closes.
            to_open = false;
        }
    }
}

/// Server → client, applying the fault: `Ok` when the server's side ended (EOF passed on as a
/// shutdown, unless stalled), `Err` for a reset (injected, or a read error from the server).
async fn pump_down(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    assigned: Assigned,
    shared: &Shared,
    new_request: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut body = BodyCounter::default();
    let mut stalled = false;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            if !stalled {
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        if new_request.swap(false, Ordering::SeqCst) {
            body = BodyCounter::default();
        }
        let fault = shared.current(assigned);
        stalled |= fault == Fault::HalfOpen;
        if stalled {
            continue; // read and drop
        }
        let chunk = &buf[..n];
        let allowed = match fault {
            Fault::ResetAfter(b) | Fault::StallAfter(b) => body.allowed(chunk, b),
            _ => n,
        };
        if allowed > 0 {
            write_shaped(to, &chunk[..allowed], fault, &shared.bytes_down).await?;
        }
        if allowed < n {
            if let Fault::ResetAfter(_) = fault {
                shared.resets.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "injected"));
            }
            stalled = true;
        }
    }
}

/// Writes `bytes` as `fault` shapes them (after a delay, or at a capped rate), adding what
/// was written to `count` as it goes.
async fn write_shaped(
    to: &mut OwnedWriteHalf,
    bytes: &[u8],
    fault: Fault,
    count: &AtomicU64,
) -> io::Result<()> {
    match fault {
        Fault::Latency(d) => tokio::time::sleep(d).await,
        Fault::Bandwidth(rate) => {
            // Slices of 1/20 s worth of bytes, each followed by its share of a second.
            let rate = rate.max(1);
            let slice = usize::try_from((rate / 20).max(1)).unwrap_or(usize::MAX);
            for part in bytes.chunks(slice) {
                to.write_all(part).await?;
                count.fetch_add(part.len() as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs_f64(part.len() as f64 / rate as f64)).await;
            }
            return Ok(());
        }
        _ => {}
    }
    to.write_all(bytes).await?;
    count.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    Ok(())
}

/// Finds where a reply head ends in the server's bytes and counts body bytes after it.
#[derive(Default)]
struct BodyCounter {
    /// The last bytes of the head seen so far (to find a `\r\n\r\n` split across reads).
    tail: Vec<u8>,
    in_body: bool,
    body: usize,
}

impl BodyCounter {
    /// How many bytes of `chunk` may pass so that at most `budget` body bytes have passed.
    fn allowed(&mut self, chunk: &[u8], budget: usize) -> usize {
        let mut head_len = 0;
        if !self.in_body {
            let mut seen = std::mem::take(&mut self.tail);
            let before = seen.len();
            seen.extend_from_slice(chunk);
            match seen.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(p) => {
                    self.in_body = true;
                    head_len = p + 4 - before;
                }
                None => {
                    let keep = seen.len().saturating_sub(3);
                    self.tail = seen[keep..].to_vec();
                    return chunk.len();
                }
            }
        }
        let room = budget.saturating_sub(self.body);
        let body_here = (chunk.len() - head_len).min(room);
        self.body += body_here;
        head_len + body_here
    }
}
