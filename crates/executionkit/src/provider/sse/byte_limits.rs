//! [`ByteLimits`]: the raw-byte limits of [`StreamLimits`] (line, event, stream), enforced on
//! the byte stream before the SSE parser buffers anything, which it is given in pieces of whole
//! lines.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;

use super::{StreamLimits, limit_err};
use crate::error::Error;

/// Why a byte stream under [`ByteLimits`] failed: its inner stream failed, or it passed one of
/// the raw-byte limits of [`StreamLimits`] (each variant holds the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ByteLimitError<E> {
    /// The inner stream failed.
    Inner(E),
    /// A line (bytes since the last `\n` or `\r`) passed [`StreamLimits::max_line_bytes`].
    Line(usize),
    /// An event (bytes since the last blank line) passed [`StreamLimits::max_event_bytes`].
    Event(usize),
    /// The stream passed [`StreamLimits::max_stream_bytes`].
    Stream(u64),
}

impl<E> ByteLimitError<E> {
    /// The crate error: a limit passed is a `provider` error naming the limit; an inner error
    /// is given to `inner`.
    pub(crate) fn into_error(self, inner: impl FnOnce(E) -> Error) -> Error {
        match self {
            Self::Inner(e) => inner(e),
            Self::Line(n) => limit_err("an SSE line", n, "bytes", "max_line_bytes"),
            Self::Event(n) => limit_err("an SSE event", n, "bytes", "max_event_bytes"),
            Self::Stream(n) => limit_err("the stream", n, "bytes", "max_stream_bytes"),
        }
    }
}

/// A raw-byte limit passed (the error without its inner stream's type, so that it can wait in
/// [`ByteLimits`] while the lines before it go on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Line(usize),
    Event(usize),
    Stream(u64),
}

impl Limit {
    fn error<E>(self) -> ByteLimitError<E> {
        match self {
            Self::Line(n) => ByteLimitError::Line(n),
            Self::Event(n) => ByteLimitError::Event(n),
            Self::Stream(n) => ByteLimitError::Stream(n),
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for ByteLimitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inner(e) => e.fmt(f),
            Self::Line(n) => write!(f, "an SSE line is over {n} bytes"),
            Self::Event(n) => write!(f, "an SSE event is over {n} bytes"),
            Self::Stream(n) => write!(f, "the stream is over {n} bytes"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ByteLimitError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Line(_) | Self::Event(_) | Self::Stream(_) => None,
        }
    }
}

/// Where a byte stream is in its SSE framing, for [`ByteLimits`]. Line endings are those of
/// the SSE grammar (and of `eventsource-stream`): `\r\n`, `\r` or `\n`; a blank line ends an
/// event.
#[derive(Debug, Clone, Copy, Default)]
struct Framing {
    /// Bytes since the last line ending.
    line: usize,
    /// Bytes since the last blank line: its lines with their endings.
    event: usize,
    /// The last byte seen was `\r` (a `\n` right after it ends nothing more).
    after_cr: AfterCr,
}

/// What the `\r` just seen ended, if the last byte was one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum AfterCr {
    #[default]
    No,
    /// A line: a `\n` next is the rest of its ending, counted in the event.
    Line,
    /// An event (it was a blank line): a `\n` next belongs to neither event.
    Event,
}

impl Framing {
    /// Counts `bytes`; the first limit passed, in byte order (a line before an event when both
    /// pass at the same byte), is the error, with the offset in `bytes` of the byte that passed
    /// it.
    fn scan(
        &mut self,
        bytes: &[u8],
        max_line: usize,
        max_event: usize,
    ) -> Result<(), (Limit, usize)> {
        let mut at = 0;
        loop {
            let rest = bytes.get(at..).unwrap_or_default();
            let (run, ending) = match memchr::memchr2(b'\n', b'\r', rest) {
                Some(i) => (i, rest.get(i).copied()),
                None => (rest.len(), None),
            };
            if run > 0 {
                let line_room = max_line.saturating_sub(self.line);
                let event_room = max_event.saturating_sub(self.event);
                let room = line_room.min(event_room);
                if run > room {
                    let limit = if line_room <= event_room {
                        Limit::Line(max_line)
                    } else {
                        Limit::Event(max_event)
                    };
                    return Err((limit, at + room));
                }
                self.line += run;
                self.event += run;
                self.after_cr = AfterCr::No;
            }
            let Some(end) = ending else {
                return Ok(());
            };
            let cr = end == b'\r';
            match self.after_cr {
                // The `\n` of a `\r\n`: the line (or event) already ended at the `\r`.
                AfterCr::Line if !cr => self.event += 1,
                AfterCr::Event if !cr => {}
                _ if self.line == 0 => {
                    // A blank line: the event ends.
                    self.event = 0;
                }
                _ => {
                    self.line = 0;
                    self.event += 1;
                }
            }
            self.after_cr = match (cr, self.line == 0 && self.event == 0) {
                (false, _) => AfterCr::No,
                (true, true) => AfterCr::Event,
                (true, false) => AfterCr::Line,
            };
            if self.event > max_event {
                return Err((Limit::Event(max_event), at + run));
            }
            at += run + 1;
        }
    }
}

/// The most line endings in one piece [`ByteLimits`] passes on (see there).
pub(super) const LINES_PER_PIECE: usize = 16;

pin_project_lite::pin_project! {
    /// A byte stream held to the raw-byte limits of [`StreamLimits`] (line, event and stream
    /// size), put in front of the SSE parser: `eventsource-stream` buffers an unfinished line
    /// or event without bound. Nothing depends on how the bytes are split into chunks: when a
    /// limit is passed, the whole lines before the byte that passed it go on (so the parser
    /// sees the same events however the bytes came: found by the `sse_chunked` fuzz target),
    /// then the stream yields the error and ends.
    ///
    /// The bytes are passed on re-cut at line endings, in pieces of whole lines (at most
    /// [`LINES_PER_PIECE`] line endings each), and an unfinished line is held here (at most
    /// `max_line_bytes`) until it ends or the stream does. The SSE parser's cost is quadratic
    /// otherwise: it parses its whole buffer again on every chunk while a line is unfinished
    /// (a 1 MiB line in 64-byte chunks took 6 s of CPU), and copies the rest of its buffer for
    /// every line it takes (256 KiB of blank lines in one chunk took 20 s).
    ///
    /// It goes after [`IdleTimeout`](super::IdleTimeout):
    /// `EventStream::new(ByteLimits::new(IdleTimeout::new(body, idle), &limits))`, whose errors
    /// are `EventStreamError<ByteLimitError<IdleError<E>>>`. (The other way round also builds,
    /// but the idle timer would then see only whole lines, so bytes of a line still arriving
    /// would not count as activity.)
    pub(crate) struct ByteLimits<S> {
        #[pin]
        inner: S,
        framing: Framing,
        total: u64,
        max_line: usize,
        max_event: usize,
        max_stream: u64,
        // Whole lines received and not yet passed on.
        ready: Bytes,
        // The unfinished last line.
        partial: BytesMut,
        finished: bool,
        // A limit passed, yielded once the lines before it are passed on.
        pending: Option<Limit>,
    }
}

impl<S> ByteLimits<S> {
    /// Holds `inner` to the raw-byte limits of `limits`.
    pub(crate) fn new(inner: S, limits: &StreamLimits) -> Self {
        Self {
            inner,
            framing: Framing::default(),
            total: 0,
            max_line: limits.max_line_bytes,
            max_event: limits.max_event_bytes,
            max_stream: limits.max_stream_bytes,
            ready: Bytes::new(),
            partial: BytesMut::new(),
            finished: false,
            pending: None,
        }
    }
}

/// The first piece of `ready`: up to and including its [`LINES_PER_PIECE`]-th line ending, or
/// all of it.
fn next_piece(ready: &mut Bytes) -> Bytes {
    let end = memchr::memchr2_iter(b'\n', b'\r', ready)
        .nth(LINES_PER_PIECE - 1)
        .map_or(ready.len(), |i| i + 1);
    ready.split_to(end)
}

impl<S, E> Stream for ByteLimits<S>
where
    S: Stream<Item = std::result::Result<Bytes, E>>,
{
    type Item = std::result::Result<Bytes, ByteLimitError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if !this.ready.is_empty() {
                return Poll::Ready(Some(Ok(next_piece(this.ready))));
            }
            if *this.finished {
                return Poll::Ready(this.pending.take().map(|l| Err(l.error())));
            }
            let chunk = match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // What is left of an unfinished line goes on as it is.
                    *this.finished = true;
                    *this.ready = this.partial.split().freeze();
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.finished = true;
                    return Poll::Ready(Some(Err(ByteLimitError::Inner(e))));
                }
                Poll::Ready(Some(Ok(chunk))) => chunk,
            };
            // The bytes still allowed are scanned first, so that a line or event limit passed
            // before the stream limit is the one reported, however the bytes come.
            let room = this.max_stream.saturating_sub(*this.total);
            let allowed = usize::try_from(room).map_or(chunk.len(), |r| r.min(chunk.len()));
            let verdict = this
                .framing
                .scan(
                    chunk.get(..allowed).unwrap_or_default(),
                    *this.max_line,
                    *this.max_event,
                )
                .and_then(|()| {
                    if allowed < chunk.len() {
                        Err((Limit::Stream(*this.max_stream), allowed))
                    } else {
                        Ok(())
                    }
                });
            if let Err((limit, at)) = verdict {
                // The whole lines before the byte that passed the limit go on, then the error.
                let before = chunk.get(..at).unwrap_or_default();
                if let Some(last) = memchr::memrchr2(b'\n', b'\r', before) {
                    let lines = chunk.slice(..=last);
                    *this.ready = if this.partial.is_empty() {
                        lines
                    } else {
                        this.partial.extend_from_slice(&lines);
                        this.partial.split().freeze()
                    };
                }
                this.partial.clear();
                *this.pending = Some(limit);
                *this.finished = true;
                continue;
            }
            *this.total += chunk.len() as u64;
            match memchr::memrchr2(b'\n', b'\r', &chunk) {
                // No line ends here: the bytes wait with the rest of their line.
                None => this.partial.extend_from_slice(&chunk),
                Some(last) => {
                    let mut lines = chunk;
                    let rest = lines.split_off(last + 1);
                    *this.ready = if this.partial.is_empty() {
                        lines
                    } else {
                        this.partial.extend_from_slice(&lines);
                        this.partial.split().freeze()
                    };
                    this.partial.extend_from_slice(&rest);
                }
            }
        }
    }
}
