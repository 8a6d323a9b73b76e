//! Answers as they are generated: [`RunContext::on_text`] subscribes a callback to the text of
//! the calls whose text may be a pattern's value, delivered as [`TextEvent`]s while the server
//! streams it.
//!
//! Which calls: [`ReactLoop`](crate::ReactLoop)'s turns (the answer is the turn that calls no
//! tool), [`MapReduce`](crate::MapReduce)'s last reduce call, and
//! [`Structured`](crate::Structured)'s replies (the value is parsed from the reply no repair
//! follows). Consensus, refine and pipes forward nothing: their value is chosen among several
//! calls, or made of several steps. A call whose text turned out not to be the answer (a react
//! turn that went on to call tools, a structured reply a repair follows) is followed by
//! [`TextEvent::Superseded`].
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use executionkit::{MockProvider, ReactLoop, RunContext, TextEvent};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let seen = Arc::new(Mutex::new(String::new()));
//! let s = Arc::clone(&seen);
//! let ctx = RunContext::new().on_text(move |e| {
//!     if let TextEvent::Delta(d) = e {
//!         s.lock().unwrap().push_str(d);
//!     }
//! });
//! let p = MockProvider::new(["The answer is 4."]);
//! let r = ReactLoop::new().run(&p, "2+2?", &ctx).await.unwrap();
//! assert_eq!(*seen.lock().unwrap(), r.value); // the deltas make up the value
//! # });
//! ```

use std::fmt;
use std::sync::Arc;

/// One piece of [`RunContext::on_text`](crate::RunContext::on_text)'s text.
///
/// Which calls deliver text: [`ReactLoop`](crate::ReactLoop)'s turns (the answer is the turn
/// that calls no tool; a turn's text is delivered until its first tool-call delta),
/// [`MapReduce`](crate::MapReduce)'s last reduce call, and [`Structured`](crate::Structured)'s
/// replies (the value is parsed from the reply no repair follows). Consensus, refine, pipes,
/// workflows, plans and eval cases deliver nothing: their value is chosen among several calls,
/// or made of several steps. A call whose text turned out not to be the answer is followed by
/// [`Superseded`](Self::Superseded).
///
/// ```
/// use executionkit::TextEvent;
/// let e = TextEvent::Delta("Hel");
/// assert_eq!(e, TextEvent::Delta("Hel"));
/// assert_ne!(e, TextEvent::Superseded);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextEvent<'a> {
    /// The next piece of text, in the order the server sent it.
    Delta(&'a str),
    /// The text delivered since the start (or the previous `Superseded`) is not the value: the
    /// react turn went on to call tools, or a repair of the structured reply follows. The text
    /// of the next call follows.
    Superseded,
}

/// The callback of [`RunContext::on_text`](crate::RunContext::on_text).
#[derive(Clone)]
pub(crate) struct TextSink(Arc<dyn Fn(TextEvent<'_>) + Send + Sync>);

impl TextSink {
    pub(crate) fn new(f: impl Fn(TextEvent<'_>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn emit(&self, event: TextEvent<'_>) {
        (self.0)(event);
    }
}

impl fmt::Debug for TextSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TextSink")
    }
}
