//! Whether a call's request reached the wire: the engine hands each attempt a [`WireProbe`]
//! (a task-local for the attempt's future and its stream's polls), and the HTTP transport marks
//! it when it begins the request, then when hyper first reads the request's body to write it
//! ([`WireBody`]; hyper drops a request whose caller went away before writing it). A call
//! cancelled after the transport began it but before hyper took its body (it was still
//! connecting, waiting for the pool, or queued on a connection) never reached a server: the
//! engine then gives the call back instead of counting it. A probe nothing marked (a provider
//! that is not on the transport, such as a mock, or a call cancelled before it reached the
//! transport) counts as sent.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

const UNKNOWN: u8 = 0;
const BEGUN: u8 = 1;
const HANDED: u8 = 2;

/// What the transport did with one attempt's request.
#[derive(Debug, Default)]
pub(crate) struct WireProbe(AtomicU8);

impl WireProbe {
    /// The transport began the request and gave it to no connection: it was never sent.
    pub(crate) fn never_sent(&self) -> bool {
        self.0.load(Ordering::SeqCst) == BEGUN
    }
}

tokio::task_local! {
    static WIRE: Arc<WireProbe>;
}

/// The transport begins a request (marks the probe, if it was not marked before).
pub(crate) fn begun() {
    let _ = WIRE.try_with(|p| {
        p.0.compare_exchange(UNKNOWN, BEGUN, Ordering::SeqCst, Ordering::SeqCst)
    });
}

/// The current attempt's probe, for a [`WireBody`].
pub(crate) fn current() -> Option<Arc<WireProbe>> {
    WIRE.try_with(Arc::clone).ok()
}

pin_project_lite::pin_project! {
    /// A request body that marks its attempt's probe when hyper first reads it: the request is
    /// being written.
    pub(crate) struct WireBody {
        #[pin]
        inner: Full<Bytes>,
        probe: Option<Arc<WireProbe>>,
    }
}

impl WireBody {
    /// `bytes` as a body for the current attempt (if any).
    pub(crate) fn new(bytes: Bytes) -> Self {
        Self {
            inner: Full::new(bytes),
            probe: current(),
        }
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.project();
        if let Some(p) = this.probe.take() {
            p.0.store(HANDED, Ordering::SeqCst);
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs `f` with `probe` as the attempt's probe.
pub(crate) async fn scope<F: Future>(probe: Arc<WireProbe>, f: F) -> F::Output {
    WIRE.scope(probe, f).await
}

pin_project_lite::pin_project! {
    /// A stream whose every poll runs with the attempt's probe.
    pub(crate) struct Probed<S> {
        #[pin]
        inner: S,
        probe: Arc<WireProbe>,
    }
}

impl<S> Probed<S> {
    pub(crate) fn new(inner: S, probe: Arc<WireProbe>) -> Self {
        Self { inner, probe }
    }
}

impl<S: Stream> Stream for Probed<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let probe = Arc::clone(this.probe);
        let inner = this.inner;
        WIRE.sync_scope(probe, || inner.poll_next(cx))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_probe_is_sent_unless_begun_and_its_body_never_read() {
        let p = Arc::new(WireProbe::default());
        assert!(!p.never_sent());
        let mut body = scope(Arc::clone(&p), async {
            begun();
            WireBody::new(Bytes::from_static(b"{}"))
        })
        .await;
        assert!(p.never_sent());
        assert_eq!(body.size_hint().exact(), Some(2));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"{}"));
        assert!(!p.never_sent(), "read: the request is being written");
        scope(Arc::clone(&p), async { begun() }).await;
        assert!(
            !p.never_sent(),
            "once written, a second begin changes nothing"
        );
        // Outside a scope, nothing is marked and a body has no probe.
        begun();
        assert!(WireBody::new(Bytes::new()).probe.is_none());
    }
}
