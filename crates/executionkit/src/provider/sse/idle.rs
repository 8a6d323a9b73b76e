//! [`IdleTimeout`]: a byte stream that fails when nothing arrives for a while.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;

/// Why a byte stream with an idle deadline failed.
#[derive(Debug)]
pub(crate) enum IdleError<E> {
    /// The inner stream failed.
    Inner(E),
    /// Nothing arrived within the idle timeout.
    Idle(Duration),
}

impl<E: std::fmt::Display> std::fmt::Display for IdleError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inner(e) => e.fmt(f),
            Self::Idle(d) => write!(f, "no data received for {:.1} s", d.as_secs_f64()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that fails with [`IdleError::Idle`] when its inner stream yields nothing for
    /// `idle`, and ends after that failure.
    pub(crate) struct IdleTimeout<S> {
        #[pin]
        inner: S,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Duration,
        finished: bool,
    }
}

impl<S> IdleTimeout<S> {
    pub(crate) fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
            finished: false,
        }
    }
}

impl<S, T, E> Stream for IdleTimeout<S>
where
    S: Stream<Item = std::result::Result<T, E>>,
{
    type Item = std::result::Result<T, IdleError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(item)) => {
                let deadline = tokio::time::Instant::now() + *this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(item.map_err(IdleError::Inner)))
            }
            Poll::Ready(None) => {
                *this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    *this.finished = true;
                    Poll::Ready(Some(Err(IdleError::Idle(*this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
